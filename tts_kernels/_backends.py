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

    ``supports`` maps a kernel's name to the optional parameters it implements (the reference
    implements all of them); a call that uses another one runs on the reference (see :meth:`covers`).
    """

    def __init__(self, *, reference, cpp, triton, cpp_op: str, supports=None):
        self.impls = {"reference": reference, "cpp": cpp, "triton": triton}
        self.cpp_op = cpp_op
        self.supports = dict(supports or {})

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

    def default_name(self, device: torch.device) -> str:
        """Name of the implementation the registered op uses on ``device``."""
        if device.type == "cpu" and self.cpp_available():
            return "cpp"
        if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            return "triton"
        return "reference"

    def default_for(self, device: torch.device):
        """Implementation the registered op uses on ``device``."""
        return self.impls[self.default_name(device)]

    def unsupported(self, name: str, needs) -> list:
        """The parameters in ``needs`` that implementation ``name`` does not implement."""
        if name == "reference" or name not in self.supports:
            return []
        return sorted(set(needs) - set(self.supports[name]))

    def covers(self, device: torch.device, needs) -> bool:
        """Whether the registered op's implementation on ``device`` implements every parameter in ``needs``."""
        return not self.unsupported(self.default_name(device), needs)

    def require(self, name: str, needs) -> None:
        """Raise ValueError when the named implementation lacks a parameter the call uses."""
        self.get(name)
        missing = self.unsupported(name, needs)
        if missing:
            raise ValueError(f"backend {name!r} does not implement {', '.join(missing)}; use backend='auto' "
                             f"(which runs such calls on the reference) or backend='reference'")
