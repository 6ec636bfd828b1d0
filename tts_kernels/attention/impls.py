"""The three implementations of tree attention, selectable by name.

``reference`` executes the plan in PyTorch (any device); ``cpp`` is the C++
CPU kernel ``torch.ops.tts_kernels_C.tree_attention_cpu`` (needs the built
extension); ``triton`` is the Triton kernel in ``triton_kernel.py`` (CUDA, or
the CPU under ``TRITON_INTERPRET=1``). All take
``(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse)`` and
return ``(out [N, Hq, D] in q's dtype, lse float32 [N, Hq])``.
"""
from __future__ import annotations

import torch

from .._backends import BACKENDS, Backends  # noqa: F401
from .._ext import check_cpu_isa_env
from .reference import tree_attention_reference


def tree_attention_cpp(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse=True):
    if not cpp_available():
        raise RuntimeError(f"the C++ tree-attention kernel is not available: {cpp_unavailable_reason()}")
    check_cpu_isa_env()
    return torch.ops.tts_kernels_C.tree_attention_cpu(
        q, k_cache, v_cache, block_tables, seq_lens, *plan.tensors(), float(scale))


def tree_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse=True):
    from .triton_kernel import tree_attention_triton as impl  # imports triton lazily

    return impl(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse)


_backends = Backends(reference=tree_attention_reference, cpp=tree_attention_cpp, triton=tree_attention_triton,
                     cpp_op="tts_kernels_C::tree_attention_cpu")
get = _backends.get
default_for = _backends.default_for
cpp_available = _backends.cpp_available
cpp_unavailable_reason = _backends.cpp_unavailable_reason
