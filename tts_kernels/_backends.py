"""How every op picks among its three implementations (reference, cpp, triton)."""
from __future__ import annotations

import importlib.util

import torch

from . import _ext

BACKENDS = ("reference", "cpp", "triton")


class Backends:
    """The implementations of one op, by name, and the one its registered op runs on a device.

    ``cpp_op`` names the C++ op (e.g. ``"tts_kernels_C::sample_cpu"``) whose CPU kernel must be in
    the built library for ``cpp`` to be used; CUDA uses Triton when it is installed; anything
    else (and a missing kernel) falls back to the PyTorch reference.
    """

    def __init__(self, *, reference, cpp, triton, cpp_op: str):
        self.impls = {"reference": reference, "cpp": cpp, "triton": triton}
        self.cpp_op = cpp_op

    def cpp_available(self) -> bool:
        return _ext.has_kernel(self.cpp_op)

    def cpp_unavailable_reason(self) -> str:
        if not _ext.available():
            return f"the C++ extension is not available: {_ext.load_error}"
        return f"the built C++ extension has no CPU kernel for {self.cpp_op}"

    def get(self, name: str):
        try:
            return self.impls[name]
        except KeyError:
            raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}") from None

    def default_for(self, device: torch.device):
        """Implementation the registered op uses on ``device``."""
        if device.type == "cpu" and self.cpp_available():
            return self.impls["cpp"]
        if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            return self.impls["triton"]
        return self.impls["reference"]
