"""The three implementations of the sampler, selectable by name.

``reference`` is pure PyTorch (any device); ``cpp`` is the C++ CPU kernel in
``csrc/sampling`` (needs the built extension); ``triton`` is the Triton kernel
(CUDA, or the CPU under ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import torch

from .. import _ext
from .reference import sample_reference

BACKENDS = ("reference", "cpp", "triton")


def sample_cpp(*args):
    if not _ext.has_kernel("tts_kernels_C::sample_cpu"):
        raise RuntimeError(f"the C++ sampler is not available: {_ext.load_error or 'kernel not in the built library'}")
    return torch.ops.tts_kernels_C.sample_cpu(*args)


def sample_triton(*args):
    from .triton_kernel import sample_triton as impl  # imports triton lazily

    return impl(*args)


def get(name: str):
    if name == "reference":
        return sample_reference
    if name == "cpp":
        return sample_cpp
    if name == "triton":
        return sample_triton
    raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")


def default_for(device: torch.device):
    """Implementation the registered op uses on ``device``."""
    if device.type == "cpu":
        return sample_cpp if _ext.has_kernel("tts_kernels_C::sample_cpu") else sample_reference
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return sample_reference
        return sample_triton
    return sample_reference
