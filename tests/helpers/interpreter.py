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
   operands keep their order: no commutativity assumed). Axes that are not a power of two, as
   Triton's blocks always are, keep the element-wise fold.

:func:`install` applies each when the interpreter has the internals it replaces (checked; otherwise
the reason is in :data:`STATUS`, printed in pytest's header: Triton 3.5's launches keep no patch
scope); ``TTS_INTERPRETER_FAST=0`` turns them off. ``tests/sampling/test_interpreter_fast_path.py`` checks a fold against Triton's own on
NaN / -inf blocks and a non-commutative combine, and the sampler's outputs with and without.
"""
from __future__ import annotations

import inspect
import os

import numpy as np

STATUS = "not installed"
_saved = {}


def _support(I) -> dict:
    """Per speed-up, '' when this Triton's interpreter has what it replaces, else why not."""
    patch = ("" if hasattr(I, "_LangPatchScope") and hasattr(I, "_patch_lang")
             and list(inspect.signature(I._patch_lang).parameters) == ["fn"]
             else "no _LangPatchScope / _patch_lang(fn) (launches do not restore their patch)")
    reduce = ("" if hasattr(I, "ReduceOps") and hasattr(I.ReduceOps, "generic_reduce")
              and hasattr(I.ReduceOps, "to_tensor") else "no ReduceOps.generic_reduce / to_tensor")
    return {"patch": patch, "reduce": reduce}


def install() -> str:
    """Install both speed-ups once; returns (and keeps in :data:`STATUS`) what was done."""
    global STATUS
    if _saved:
        return STATUS
    if os.environ.get("TTS_INTERPRETER_FAST", "1") == "0":
        STATUS = "off (TTS_INTERPRETER_FAST=0)"
        return STATUS
    import triton
    import triton.language as tl
    from triton.runtime import interpreter as I
    why = _support(I)

    patch_lang = getattr(I, "_patch_lang", None)
    launches = []  # per active launch: the language modules its patches cover (ids)
    langs_of = {}

    class _Nothing:
        def restore(self):
            pass

    def langs(fn):
        key = id(fn.__globals__)
        if key not in langs_of:
            langs_of[key] = frozenset(id(v) for v in fn.__globals__.values()
                                      if inspect.ismodule(v) and v in (tl, tl.core))
        return langs_of[key]

    def fast_patch_lang(fn):
        mine = langs(fn)
        if launches:  # a device-function call: only a launch's scope is ever restored
            if mine <= launches[-1]:
                return _Nothing()  # this launch already patched every module fn sees
            scope = patch_lang(fn)  # (left unrestored, as Triton leaves it)
            launches[-1].update(mine)
            return scope
        scope = patch_lang(fn)  # a launch (GridExecutor): restores its scope when the grid is done
        launches.append(set(mine))
        restore = scope.restore

        def restore_and_forget():
            launches.pop()
            restore()
        scope.restore = restore_and_forget
        return scope

    generic_reduce = getattr(getattr(I, "ReduceOps", None), "generic_reduce", None)

    def pairwise_reduce(self, input):
        arrays = [t.handle.data for t in input]
        dtypes = [t.dtype for t in input]
        axis = self.axis
        if axis is None:
            arrays = [a.reshape(-1) for a in arrays]
            axis = 0
        n = arrays[0].shape[axis]
        if n < 2 or n & (n - 1):
            return generic_reduce(self, input)
        while n > 1:
            n //= 2
            split = [np.moveaxis(a, axis, -1).reshape(*a.shape[:axis], *a.shape[axis + 1:], n, 2)
                     for a in arrays]
            left = [self.to_tensor(np.ascontiguousarray(np.moveaxis(s[..., 0], -1, axis)), d)
                    for s, d in zip(split, dtypes)]
            right = [self.to_tensor(np.ascontiguousarray(np.moveaxis(s[..., 1], -1, axis)), d)
                     for s, d in zip(split, dtypes)]
            out = self.combine_fn.fn(*left, *right)
            out = out if isinstance(out, tuple) else (out,)
            arrays = [np.broadcast_to(o.handle.data if isinstance(o, tl.core.tensor) else o, left[0].handle.data.shape)
                      .astype(left[j].handle.data.dtype) for j, o in enumerate(out)]
        ret = []
        for a, d in zip(arrays, dtypes):
            if self.axis is None:
                ret.append(self.to_tensor(a.reshape(-1)[0], d) if not self.keep_dims
                           else self.to_tensor(a.reshape((1,) * input[0].handle.data.ndim), d))
            else:
                ret.append(self.to_tensor(a if self.keep_dims else np.squeeze(a, axis), d))
        return ret

    _saved["module"] = I
    done = []
    if not why["patch"]:
        _saved["patch_lang"] = patch_lang
        I._patch_lang = fast_patch_lang
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
    if "generic_reduce" in _saved:
        I.ReduceOps.generic_reduce = _saved.pop("generic_reduce")
    STATUS = "not installed"
