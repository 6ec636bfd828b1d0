"""Counter-based random numbers shared by every sampler implementation.

All three implementations (pure PyTorch, C++ CPU, Triton) draw the same
uniforms from the same counters, so their tokens agree except where two group
scores, or two token scores inside the chosen group, are within float rounding
of each other.

Stream layout (Philox4x32-10, Salmon et al. 2011):

* key     = (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)   (seed: int64, two's complement)
* counter = (v >> 2, offset & 0xFFFFFFFF, (offset >> 32) & 0xFFFFFFFF, 0)
* token ``v`` of a row uses output word ``v & 3`` of that counter.
* uniform ``u = (2 * (word >> 9) + 1) * 2**-24``: an odd multiple of 2**-24,
  so ``0 < u < 1`` exactly and the float32 value is exact everywhere.
* Gumbel noise ``g = -log(-log(u))`` (float32).
* Group noise: a second stream, the fourth counter word set to 1: group ``j`` (tokens
  ``[GROUP_SIZE * j, GROUP_SIZE * (j + 1))``) uses word ``j & 3`` of counter
  ``(j >> 2, offset & 0xFFFFFFFF, (offset >> 32) & 0xFFFFFFFF, 1)``, same uniform and Gumbel
  formulas.

The draw (``reference.draw``) is a two-level Gumbel-max: a group is chosen by
``log(sum of exp(z) over its kept tokens) + group noise``, then a token inside it by
``z + token noise``. That is an exact sample of ``softmax(z)`` over the kept tokens, and
a kernel needs noise only for the groups and for the 256 tokens of the chosen one, not
for every token of the row.

Nothing here depends on the batch: a row's noise is a function of
(seed, offset, v) only, which is what makes sampling batch invariant.
"""
from __future__ import annotations

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
#: tokens per group of the two-level draw (csrc/sampling/sampler_math.h: kGroupSize)
GROUP_SIZE = 256
_MASK32 = 0xFFFFFFFF
_TWO_POW_M24 = 2.0 ** -24


def _mulhilo(m: int, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product m * c, in int64 without overflow."""
    a = m * (c >> 16)          # < 2**48
    b = m * (c & 0xFFFF)       # < 2**48
    t = ((a & 0xFFFF) << 16) + b
    return (a >> 16) + (t >> 32), t & _MASK32


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors holding uint32 values (broadcasting)."""
    k0 = k0 & _MASK32
    k1 = k1 & _MASK32
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = (hi1 ^ c1 ^ k0), lo1, (hi0 ^ c3 ^ k1), lo0
        k0 = (k0 + PHILOX_W0) & _MASK32
        k1 = (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def uniforms(seed: torch.Tensor, offset: torch.Tensor, vocab_size: int, stream: int = 0) -> torch.Tensor:
    """float32 [B, V] uniforms in (0, 1) for per-row int64 ``seed`` and ``offset``
    (``stream`` 0: per token; 1: per group, the fourth counter word)."""
    dev = seed.device
    seed = seed.to(torch.int64).view(-1, 1)
    offset = offset.to(torch.int64).view(-1, 1)
    n_ctr = (vocab_size + 3) // 4
    c0 = torch.arange(n_ctr, device=dev, dtype=torch.int64).view(1, -1)
    c1 = offset & _MASK32
    c2 = (offset >> 32) & _MASK32
    zero = torch.full_like(c0, stream)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    c0, c1, c2, zero = torch.broadcast_tensors(c0, c1, c2, zero)
    words = torch.stack(philox4x32(c0, c1, c2, zero, k0, k1), dim=-1)  # [B, n_ctr, 4]
    words = words.reshape(seed.shape[0], 4 * n_ctr)[:, :vocab_size]
    return ((words >> 9) * 2 + 1).to(torch.float32) * _TWO_POW_M24


def gumbel(seed: torch.Tensor, offset: torch.Tensor, vocab_size: int, stream: int = 0) -> torch.Tensor:
    """float32 [B, V] Gumbel(0, 1) noise ``-log(-log(u))`` (per token; ``stream=1``: per group)."""
    return -torch.log(-torch.log(uniforms(seed, offset, vocab_size, stream)))


def num_groups(vocab_size: int) -> int:
    """Groups of :data:`GROUP_SIZE` tokens in a row of ``vocab_size`` (the last may be short)."""
    return (vocab_size + GROUP_SIZE - 1) // GROUP_SIZE


def group_gumbel(seed: torch.Tensor, offset: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float32 [B, num_groups(V)] group noise (stream 1)."""
    return gumbel(seed, offset, num_groups(vocab_size), stream=1)
