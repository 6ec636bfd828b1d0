"""Two speed-ups of Triton's CPU interpreter for the test suite (``TRITON_INTERPRET=1``); the
kernels, their arguments and their results are unchanged.

The interpreter spends most of a sampler call in two places, neither of which is the kernel's work:

1. **Re-patching ``triton.language`` on every device-function call.** A launch patches the language
   modules for the whole grid (and restores them at the end); each call of a ``@triton.jit`` helper
   then patches them again, walking ``inspect.getmembers`` of ``tl``, ``tl.tensor`` and
   ``tl.math`` (about 1 ms a call, hundreds of calls per program). A helper whose language modules
   the running launch has already patched would patch nothing: its walk is skipped.
2. **``tl.reduce`` with a user combine function** (the sampler's NaN-propagating maximum) folds the
   block one element at a time in Python. Triton requires a combine function to be associative and
   elementwise, so the fold is done here in ``log2(n)`` vectorised steps over adjacent pairs (the
   operands keep their order: no commutativity assumed). Triton's element fold is kept where the
   pairwise one could differ from it: an axis that is not a power of two, a combine function that
   branches on its operands (``if`` / ``and`` / a ternary on a tensor: caught, then refolded), one
   that returns another dtype or shape, a tuple reduced over ``axis=None``. A float sum would round in
   another order (as on a GPU); no combine function here sums.

:func:`install` applies each when the interpreter has the internals it replaces (checked; otherwise
the reason is in :data:`STATUS`, printed in pytest's header: Triton 3.5's launches keep no patch
scope); ``TTS_INTERPRETER_FAST=0`` turns them off; without Triton it does nothing.
``tests/sampling/test_interpreter_fast_path.py`` checks the pairwise fold against Triton's on NaN /
-inf blocks and with order-revealing and branching combines, and the sampler's outputs with and
without both.
"""
from __future__ import annotations

import inspect
import os

import numpy as np

STATUS = "not installed"
_saved = {}


def _support(I) -> dict:
    """Per speed-up, '' when this Triton's interpreter has what it replaces, else why not."""
    patch = ("" if hasattr(I, "_LangPatchScope") and hasattr(I, "_patch_lang") and hasattr(I, "GridExecutor")
             and list(inspect.signature(I._patch_lang).parameters) == ["fn"]
             else "no _LangPatchScope / _patch_lang(fn) (launches do not restore their patch)")
    reduce = ("" if hasattr(I, "ReduceOps") and hasattr(I.ReduceOps, "generic_reduce")
              and hasattr(I.ReduceOps, "to_tensor") else "no ReduceOps.generic_reduce / to_tensor")
    return {"patch": patch, "reduce": reduce}


class _NeedsElements(Exception):
    """A combine function branched on a block (``if`` / ``and`` / a ternary on a tensor): fold by element."""


def install() -> str:
    """Install both speed-ups once; returns (and keeps in :data:`STATUS`) what was done."""
    global STATUS
    if _saved:
        return STATUS
    if os.environ.get("TTS_INTERPRETER_FAST", "1") == "0":
        STATUS = "off (TTS_INTERPRETER_FAST=0)"
        return STATUS
    try:
        import triton
        import triton.language as tl
        from triton.runtime import interpreter as I
    except ImportError as exc:  # Triton is optional: the reference and C++ tests run without it
        STATUS = f"off (no triton: {exc})"
        return STATUS
    why = _support(I)

    # ---- 1. a launch patches triton.language once; its device-function calls reuse that ----
    patch_lang = getattr(I, "_patch_lang", None)
    grid_call = I.GridExecutor.__call__
    launches = []  # per running launch: ids of the language modules patched during it
    langs_of = {}  # id(globals) -> (globals, ids of the language modules they hold)

    class _Nothing:
        def restore(self):
            pass

    def langs(fn):
        got = langs_of.get(id(fn.__globals__))
        if got is None or got[0] is not fn.__globals__:
            got = (fn.__globals__, frozenset(id(v) for v in fn.__globals__.values()
                                             if inspect.ismodule(v) and v in (tl, tl.core)))
            langs_of[id(fn.__globals__)] = got
        return got[1]

    def launch(self, *args, **kwargs):
        launches.append(set())
        try:
            return grid_call(self, *args, **kwargs)
        finally:
            launches.pop()

    def fast_patch_lang(fn):
        mine = langs(fn)
        if launches and mine and mine <= launches[-1]:
            return _Nothing()  # this launch already patched every language module fn sees
        scope = patch_lang(fn)  # the launch's own patch (restored by it), or a helper's (never restored)
        if launches:
            launches[-1].update(mine)
        return scope

    # ---- 2. tl.reduce with a user combine function: pairwise over adjacent elements ----
    generic_reduce = getattr(getattr(I, "ReduceOps", None), "generic_reduce", None)

    def strict_bool(self):
        if self.handle.data.size != 1:
            raise _NeedsElements
        return bool(self.handle.data)

    def pairwise_reduce(self, input):
        arrays = [t.handle.data for t in input]
        dtypes = [t.dtype for t in input]
        axis = self.axis
        if axis is None:
            if len(input) > 1:  # as Triton's fold does (it flattens only the first operand)
                return generic_reduce(self, input)
            arrays = [a.reshape(-1) for a in arrays]
            axis = 0
        n = arrays[0].shape[axis]
        if n < 2 or n & (n - 1):
            return generic_reduce(self, input)
        bool_was = tl.core.tensor.__bool__
        tl.core.tensor.__bool__ = strict_bool
        try:
            while n > 1:
                n //= 2
                # elements 0, 2, 4, ... of the axis against 1, 3, 5, ...: adjacent pairs, in order
                halves = [[self.to_tensor(np.take(a, np.arange(k, 2 * n, 2), axis=axis), d)
                           for a, d in zip(arrays, dtypes)] for k in (0, 1)]
                out = self.combine_fn.fn(*halves[0], *halves[1])
                out = out if isinstance(out, tuple) else (out,)
                if len(out) != len(arrays) or any(
                        not isinstance(o, tl.core.tensor) or o.dtype != d or o.handle.data.shape != h.handle.data.shape
                        for o, d, h in zip(out, dtypes, halves[0])):
                    return generic_reduce(self, input)  # another dtype or shape: Triton's fold says what it makes of it
                arrays = [o.handle.data for o in out]
        except _NeedsElements:
            return generic_reduce(self, input)
        finally:
            tl.core.tensor.__bool__ = bool_was
        ret = []
        for a, d in zip(arrays, dtypes):
            if self.axis is None:  # Triton's fold: a scalar, or [1] with keep_dims
                ret.append(self.to_tensor(a.reshape(1) if self.keep_dims else a.reshape(-1)[0], d))
            else:
                ret.append(self.to_tensor(a if self.keep_dims else np.squeeze(a, axis), d))
        return ret

    _saved["module"] = I
    done = []
    if not why["patch"]:
        _saved.update(patch_lang=patch_lang, grid_call=grid_call)
        I._patch_lang = fast_patch_lang
        I.GridExecutor.__call__ = launch
        done.append("device calls reuse the launch's patch")
    if not why["reduce"]:
        _saved["generic_reduce"] = generic_reduce
        I.ReduceOps.generic_reduce = pairwise_reduce
        done.append("pairwise tl.reduce")
    off = [w for w in why.values() if w]
    STATUS = (f"on (triton {triton.__version__}): " + ", ".join(done) if done else f"off (triton {triton.__version__})") \
        + ("; not: " + "; ".join(off) if off else "")
    return STATUS


def uninstall() -> None:
    """Undo :func:`install` (the tests that compare both)."""
    global STATUS
    if not _saved:
        return
    I = _saved.pop("module")
    if "patch_lang" in _saved:
        I._patch_lang = _saved.pop("patch_lang")
        I.GridExecutor.__call__ = _saved.pop("grid_call")
    if "generic_reduce" in _saved:
        I.ReduceOps.generic_reduce = _saved.pop("generic_reduce")
    STATUS = "not installed"
