"""Loads the optional C++ extension (``tts_kernels/_C*.so``) built by CMake.

The package works without it: every op then falls back to its PyTorch
reference on CPU. Set ``TTS_KERNELS_DISABLE_EXT=1`` to ignore a built library.
A library built against another torch release (``_C.json`` beside it records
which) is not loaded: C++ ops compiled against one torch's headers can crash
under another, so the package says so and runs the reference instead.
"""
from __future__ import annotations

import glob
import json
import os

import torch

from ._torch_support import release

_loaded: bool | None = None
load_error: str | None = None


def library_path() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for pattern in ("_C*.so", "_C*.pyd", "_C*.dylib", "lib_C*.so"):
        hits = sorted(glob.glob(os.path.join(here, pattern)))
        if hits:
            return hits[0]
    return None


def available() -> bool:
    """True when the C++ ops (``torch.ops.tts_kernels_C.*``) are loaded."""
    global _loaded, load_error
    if _loaded is None:
        _loaded = False
        if os.environ.get("TTS_KERNELS_DISABLE_EXT", "0") not in ("", "0"):
            load_error = "disabled by TTS_KERNELS_DISABLE_EXT"
            return False
        path = library_path()
        if path is None:
            load_error = "extension not built (no tts_kernels/_C*.so)"
            return False
        mismatch = built_for_other_torch(path)
        if mismatch:
            load_error = mismatch
            return False
        try:
            torch.ops.load_library(path)
            _loaded = True
        except OSError as exc:  # e.g. built against another torch
            load_error = f"failed to load {path}: {exc}"
    return _loaded


def built_for_other_torch(path: str) -> str | None:
    """A message when the library beside ``path`` was built against another torch release, else None."""
    stamp = os.path.join(os.path.dirname(path), "_C.json")
    try:
        with open(stamp) as f:
            built = str(json.load(f)["torch"])
    except (OSError, ValueError, KeyError):
        return None  # no record (an older build): try to load it
    if release(built) != release(torch.__version__):
        return (f"{path} was built against torch {built} but torch {torch.__version__} is running; "
                "rebuild it (pip install --no-build-isolation .) to use the C++ kernels")
    return None


@torch.compiler.assume_constant_result  # fixed once the library is loaded; lets torch.compile trace dispatch
def has_kernel(op: str, dispatch_key: str = "CPU") -> bool:
    """True when the built library registers ``op`` (e.g. "tts_kernels_C::sample_cpu") for ``dispatch_key``."""
    if not available():
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op, dispatch_key)
    except RuntimeError:
        return False


#: values of TTS_KERNELS_CPU_ISA, the cap on the C++ kernels' instruction set (unset or "": the CPU's best)
CPU_ISA_CAPS = ("", "avx512", "avx2", "generic")


def check_cpu_isa_env() -> None:
    """``ValueError`` naming ``TTS_KERNELS_CPU_ISA`` when it holds a value the C++ kernels do not know."""
    v = os.environ.get("TTS_KERNELS_CPU_ISA")
    if v is not None and v not in CPU_ISA_CAPS:
        raise ValueError(f"TTS_KERNELS_CPU_ISA={v!r}: expected one of {', '.join(repr(c) for c in CPU_ISA_CAPS)}")


def cpu_isa() -> str | None:
    """The instruction set the C++ CPU kernels use now ("avx512", "avx2" or "generic"), or None without them."""
    if not available():
        return None
    check_cpu_isa_env()
    return torch.ops.tts_kernels_C.cpu_isa()

