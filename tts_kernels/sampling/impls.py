"""The three implementations of the sampler, selectable by name.

``reference`` is pure PyTorch (any device); ``cpp`` is the C++ CPU kernel in
``csrc/sampling`` (needs the built extension); ``triton`` is the Triton kernel
(CUDA, or the CPU under ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import torch

from .._backends import BACKENDS, Backends  # noqa: F401
from .._ext import check_cpu_isa_env
from .params import FILTER_NAMES
from .reference import sample_reference


def sample_cpp(*args):
    if not _backends.cpp_available():
        raise RuntimeError(f"the C++ sampler is not available: {_backends.cpp_unavailable_reason()}")
    check_cpu_isa_env()
    return torch.ops.tts_kernels_C.sample_cpu(*args)


def sample_triton(*args):
    from .triton_kernel import sample_triton as impl  # imports triton lazily

    return impl(*args)


# every implementation takes (logits, *SamplingParams, budget, forced_ids, num_wait, num_end, return_logprobs)
_backends = Backends(reference=sample_reference, cpp=sample_cpp, triton=sample_triton,
                     cpp_op="tts_kernels_C::sample_cpu",
                     supports={"cpp": FILTER_NAMES, "triton": FILTER_NAMES})  # the filters each kernel implements
get = _backends.get
default_for = _backends.default_for
covers = _backends.covers
require = _backends.require
