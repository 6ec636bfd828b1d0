"""The three implementations of tree attention, selectable by name.

``reference`` executes the plan in PyTorch (any device); ``cpp`` is the C++
CPU kernel ``torch.ops.tts_kernels_C.tree_attention_cpu`` (needs the built
extension); ``triton`` is the Triton kernel in ``triton_kernel.py`` (CUDA, or
the CPU under ``TRITON_INTERPRET=1``). All take
``(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse)`` and
return ``(out [N, Hq, D] in q's dtype, lse float32 [N, Hq])``.
"""
from __future__ import annotations

import importlib.util

import torch

from .. import _ext
from .reference import tree_attention_reference

BACKENDS = ("reference", "cpp", "triton")


def cpp_available() -> bool:
    """The extension is built and contains the tree-attention kernel."""
    return _ext.has_kernel("tts_kernels_C::tree_attention_cpu")


def cpp_unavailable_reason() -> str:
    if not _ext.available():
        return f"the C++ extension is not available: {_ext.load_error}"
    return "the built C++ extension has no CPU kernel for tts_kernels_C::tree_attention_cpu"


def triton_available() -> bool:
    """triton is installed and the Triton kernel module is present."""
    return (importlib.util.find_spec("triton") is not None
            and importlib.util.find_spec(__package__ + ".triton_kernel") is not None)


def tree_attention_cpp(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse=True):
    if not cpp_available():
        raise RuntimeError(f"the C++ tree-attention kernel is not available: {cpp_unavailable_reason()}")
    return torch.ops.tts_kernels_C.tree_attention_cpu(
        q, k_cache, v_cache, block_tables, seq_lens, plan.chunk_row, plan.chunk_start, plan.chunk_len,
        plan.chunk_q_ptr, plan.q_rows, plan.row_pair_ptr, plan.row_pairs, float(scale))


def tree_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse=True):
    from .triton_kernel import tree_attention_triton as impl  # imports triton lazily

    return impl(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse)


def get(name: str):
    if name == "reference":
        return tree_attention_reference
    if name == "cpp":
        return tree_attention_cpp
    if name == "triton":
        return tree_attention_triton
    raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")


def default_for(device: torch.device):
    """Implementation the registered op uses on ``device``."""
    if device.type == "cpu":
        return tree_attention_cpp if cpp_available() else tree_attention_reference
    if device.type == "cuda":
        return tree_attention_triton if triton_available() else tree_attention_reference
    return tree_attention_reference
