"""Which implementations of an op can run here, and the skip-or-fail rule for the ones that cannot.

CI sets ``TTS_KERNELS_REQUIRE_EXT=1`` / ``TTS_KERNELS_REQUIRE_TRITON=1`` /
``TTS_KERNELS_REQUIRE_ALL_BACKENDS=1``: a backend that cannot run then fails the test
instead of skipping it.
"""
from __future__ import annotations

import importlib
import os

import pytest

from tts_kernels._backends import BACKENDS  # noqa: F401  ("reference", "cpp", "triton"): one definition

try:
    import triton  # noqa: F401
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False


def missing(reason: str) -> None:
    """Skip, or fail when every backend is required (CI)."""
    if os.environ.get("TTS_KERNELS_REQUIRE_ALL_BACKENDS", "0") == "1":
        pytest.fail(reason)
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def require_extension() -> None:
    """The C++ extension must be present when TTS_KERNELS_REQUIRE_EXT=1 (CI); else skip."""
    import tts_kernels
    from tts_kernels import _ext

    if tts_kernels.extension_available():
        return
    if os.environ.get("TTS_KERNELS_REQUIRE_EXT", "0") == "1":
        pytest.fail(f"C++ extension required but unavailable: {_ext.load_error}")
    pytest.skip(f"C++ extension unavailable: {_ext.load_error}")


def require_triton() -> None:
    if not HAS_TRITON:
        if os.environ.get("TTS_KERNELS_REQUIRE_TRITON", "0") == "1":
            pytest.fail("triton required but not installed")
        pytest.skip("triton not installed")


def require_backend(name: str, impls, triton_module: str) -> None:
    """Skip (or fail in CI) when implementation ``name`` of an op cannot run here.

    ``impls`` is the op's implementation table (``tts_kernels.sampling.impls`` or
    ``tts_kernels.attention.impls``); ``triton_module`` the module of its Triton kernel.
    """
    if name == "cpp":
        require_extension()
        if not impls._backends.cpp_available():
            missing(impls._backends.cpp_unavailable_reason())
    elif name == "triton":
        require_triton()
        try:
            importlib.import_module(triton_module)
        except ImportError as exc:
            missing(f"{triton_module} is not importable: {exc}")
