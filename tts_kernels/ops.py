"""The one place where the package's torch ops are registered.

Each op gets a schema, per-device kernels (C++ on CPU when built, Triton on
CUDA, the PyTorch reference elsewhere) and a fake implementation so that
``torch.compile(fullgraph=True)`` can trace through it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .sampling import impls as _sampling
from .sampling.params import BUDGET_ARGS, OUTPUT_ARGS, SAMPLE_SCHEMA, SamplingParams


# ---------------------------------------------------------------------------
# tts_kernels::sample: (logits, *SamplingParams, budget, forced_ids, num_wait, num_end, return_logprobs), schema
# from tts_kernels/sampling/params.py
# ---------------------------------------------------------------------------
def _sample(logits: Tensor, *args) -> tuple[Tensor, Tensor]:
    """Fused budget forcing + temperature/top-k/top-p/min-p sampling (see tts_kernels.sample)."""
    return _sampling.default_for(logits.device)(logits, *args)


#: where ``return_logprobs`` is among the op's arguments after ``logits``
_RETURN_LOGPROBS_AT = len(SamplingParams._fields) + len(BUDGET_ARGS) + OUTPUT_ARGS.index("return_logprobs")
sample = torch.library.custom_op("tts_kernels::sample", _sample, mutates_args=("budget",), schema=SAMPLE_SCHEMA)


@sample.register_fake
def _sample_fake(logits, *args, **kwargs):
    b = logits.shape[0]
    # return_logprobs: positional, a keyword, or left out for its default (True; the dispatcher drops defaults)
    i = _RETURN_LOGPROBS_AT
    return_logprobs = args[i] if len(args) > i else kwargs.get("return_logprobs", True)
    return (logits.new_empty((b,), dtype=torch.int64),
            logits.new_empty((b if return_logprobs else 0,), dtype=torch.float32))


# ---------------------------------------------------------------------------
# tts_kernels::tree_attention
# ---------------------------------------------------------------------------
from .attention import impls as _attention  # noqa: E402
from .attention.plan import TreeAttentionPlan as _TreeAttentionPlan  # noqa: E402


_NUM_PLAN = len(_TreeAttentionPlan.TENSORS)
_TREE_ATTENTION_SCHEMA = ("(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, "
                          + "".join(f"Tensor {n}, " for n in _TreeAttentionPlan.TENSORS)
                          + "float scale, int max_chunk_len, int max_rows_per_chunk, bool return_lse) "
                          "-> (Tensor, Tensor)")


def _tree_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
                    *rest) -> tuple[Tensor, Tensor]:
    """Paged decode attention executed by a tree-attention plan (see tts_kernels.tree_attention)."""
    tensors, (scale, max_chunk_len, max_rows_per_chunk, return_lse) = rest[:_NUM_PLAN], rest[_NUM_PLAN:]
    plan = _TreeAttentionPlan.from_tensors(k_cache.shape[1], q.shape[0], tensors, max_chunk_len,
                                           max_rows_per_chunk)
    impl = _attention.default_for(q.device)
    out, lse = impl(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse)
    return out, lse


# (q, k_cache, v_cache, block_tables, seq_lens, *TreeAttentionPlan.TENSORS, scale, max_chunk_len,
#  max_rows_per_chunk, return_lse)
tree_attention = torch.library.custom_op("tts_kernels::tree_attention", _tree_attention, mutates_args=(),
                                         schema=_TREE_ATTENTION_SCHEMA)


@tree_attention.register_fake
def _tree_attention_fake(q, *rest):
    n, hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((n, hq), dtype=torch.float32)
