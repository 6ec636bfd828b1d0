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


# ---------------------------------------------------------------------------
# tts_kernels::sample
# ---------------------------------------------------------------------------
@torch.library.custom_op("tts_kernels::sample", mutates_args=("budget",))
def sample(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor,
           seed: Tensor, offset: Tensor, budget: Optional[Tensor], forced_ids: Optional[Tensor],
           num_wait: int, num_end: int) -> tuple[Tensor, Tensor]:
    """Fused budget forcing + temperature/top-k/top-p/min-p sampling (see tts_kernels.sample)."""
    impl = _sampling.default_for(logits.device)
    return impl(logits, temperature, top_k, top_p, min_p, seed, offset, budget, forced_ids, num_wait, num_end)


@sample.register_fake
def _sample_fake(logits, temperature, top_k, top_p, min_p, seed, offset, budget, forced_ids, num_wait, num_end):
    b = logits.shape[0]
    return logits.new_empty((b,), dtype=torch.int64), logits.new_empty((b,), dtype=torch.float32)
