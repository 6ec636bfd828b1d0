"""The one place where the package's torch ops are registered.

Each op gets a schema, per-device kernels (C++ on CPU when built, Triton on
CUDA, the PyTorch reference elsewhere) and a fake implementation so that
``torch.compile(fullgraph=True)`` can trace through it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .sampling import impls as _sampling
from .sampling.params import SAMPLE_SCHEMA


# ---------------------------------------------------------------------------
# tts_kernels::sample: (logits, *SamplingParams, budget, forced_ids, num_wait, num_end), schema from
# tts_kernels/sampling/params.py
# ---------------------------------------------------------------------------
def _sample(logits: Tensor, *args) -> tuple[Tensor, Tensor]:
    """Fused budget forcing + temperature/top-k/top-p/min-p sampling (see tts_kernels.sample)."""
    return _sampling.default_for(logits.device)(logits, *args)


sample = torch.library.custom_op("tts_kernels::sample", _sample, mutates_args=("budget",), schema=SAMPLE_SCHEMA)


@sample.register_fake
def _sample_fake(logits, *args):
    b = logits.shape[0]
    return logits.new_empty((b,), dtype=torch.int64), logits.new_empty((b,), dtype=torch.float32)


# ---------------------------------------------------------------------------
# tts_kernels::tree_attention
# ---------------------------------------------------------------------------
from .attention import impls as _attention  # noqa: E402
from .attention.plan import TreeAttentionPlan as _TreeAttentionPlan  # noqa: E402


@torch.library.custom_op("tts_kernels::tree_attention", mutates_args=())
def tree_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
                   chunk_row: Tensor, chunk_start: Tensor, chunk_len: Tensor, chunk_q_ptr: Tensor,
                   q_rows: Tensor, row_pair_ptr: Tensor, row_pairs: Tensor, scale: float,
                   max_chunk_len: int, max_rows_per_chunk: int, return_lse: bool) -> tuple[Tensor, Tensor]:
    """Paged decode attention executed by a tree-attention plan (see tts_kernels.tree_attention)."""
    plan = _TreeAttentionPlan(k_cache.shape[1], q.shape[0], chunk_row, chunk_start, chunk_len, chunk_q_ptr,
                              q_rows, row_pair_ptr, row_pairs, max_chunk_len, max_rows_per_chunk)
    impl = _attention.default_for(q.device)
    out, lse = impl(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse)
    return out, lse


@tree_attention.register_fake
def _tree_attention_fake(q, k_cache, v_cache, block_tables, seq_lens, chunk_row, chunk_start, chunk_len,
                         chunk_q_ptr, q_rows, row_pair_ptr, row_pairs, scale, max_chunk_len,
                         max_rows_per_chunk, return_lse):
    n, hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((n, hq), dtype=torch.float32)
