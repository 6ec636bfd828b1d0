"""Helpers shared by the tree-attention tests (no tests here): backends, random forests, tolerances."""
from __future__ import annotations

import torch

from tts_kernels.attention import impls
from tts_kernels.attention.reference import paged_attention_dense

from helpers.backends import BACKENDS  # noqa: F401
from helpers.backends import require_backend as _require

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Added to the "2x the low-precision reference's error" bound (covers float32 summation-order noise).
ATOL_FLOOR = {torch.float32: 2e-5, torch.bfloat16: 2e-3, torch.float16: 3e-4}


def dtype_id(d):
    return str(d).replace("torch.", "")


def require_backend(name: str) -> None:
    """Skip (or fail in CI) when tree-attention backend ``name`` is not usable here."""
    _require(name, impls, "tts_kernels.attention.triton_kernel")


def is_interpreted(backend: str) -> bool:
    """The Triton interpreter is slow on CPU: keep its shapes small."""
    return backend == "triton" and not torch.cuda.is_available()


def random_forest(kind: str, n_rows: int, bs: int, max_blocks: int, gen: torch.Generator):
    """Block tables and seq_lens (int32) of a random batch shaped like tree search.

    kind: "forest" (a few prompts, nested shared runs, partial last blocks,
    blocks shared by rows that use different numbers of its tokens),
    "singletons" (nothing shared), "chain" (each row extends the previous
    one), "identical" (all rows the same).
    """
    def rint(lo, hi):  # inclusive
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    next_block = [0]

    def fresh(n):
        out = list(range(next_block[0], next_block[0] + n))
        next_block[0] += n
        return out

    rows, lens = [], []
    if kind == "identical":
        nb = rint(1, max_blocks)
        row, L = fresh(nb), rint((nb - 1) * bs + 1, nb * bs)
        rows, lens = [row] * n_rows, [L] * n_rows
    elif kind == "chain":
        per = max(1, max_blocks // n_rows)
        row = []
        for _ in range(n_rows):
            row = row + fresh(rint(1, per))
            rows.append(row)
            lens.append(rint((len(row) - 1) * bs + 1, len(row) * bs))
    elif kind == "singletons":
        for _ in range(n_rows):
            nb = rint(1, max_blocks)
            rows.append(fresh(nb))
            lens.append(rint((nb - 1) * bs + 1, nb * bs))
    elif kind == "forest":
        n_prompts = min(3, n_rows)
        for i in range(n_rows):
            if i < n_prompts:
                row = fresh(rint(1, max_blocks))
            else:  # fork an earlier row at some block, then grow
                parent = rows[rint(0, i - 1)]
                keep = rint(0, len(parent))
                row = parent[:keep] + fresh(rint(0 if keep else 1, max_blocks - keep))
                if not row:
                    row = fresh(1)
            rows.append(row)
            nb = len(row)
            if i >= n_prompts and rint(0, 3) == 0:
                L = nb * bs  # a full last block
            else:
                L = rint((nb - 1) * bs + 1, nb * bs)
            lens.append(L)
    else:
        raise ValueError(kind)
    width = max(len(r) for r in rows)
    table = torch.zeros(n_rows, width, dtype=torch.int32)
    for i, r in enumerate(rows):
        table[i, :len(r)] = torch.tensor(r, dtype=torch.int32)
        table[i, len(r):] = rint(0, max(next_block[0] - 1, 0))  # garbage past the end must be ignored
    return table, torch.tensor(lens, dtype=torch.int32), next_block[0]


def random_caches(num_blocks, bs, hkv, d, dtype, gen, device="cpu"):
    shape = (num_blocks, bs, hkv, d)
    k = torch.randn(shape, generator=gen).to(dtype).to(device)
    v = torch.randn(shape, generator=gen).to(dtype).to(device)
    return k, v


#: one rounding to a 16-bit dtype, relative to the magnitude (the ulp of [1, 2))
ULP_16BIT = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}


def assert_close_to_oracle(out, lse, q, k, v, bt, sl, scale=None, partials_rounded=False):
    """Flash-attention rule: error vs a float64 oracle at most 2x that of the dense reference
    computed in q's precision (plus a small floor); lse within float32 accuracy.

    ``partials_rounded``: the kernel stores its per-chunk partial outputs in the 16-bit input dtype
    (the Triton kernel does, to halve that traffic), one more rounding than the reference makes:
    one ulp of the output's magnitude more is allowed."""
    ref64, lse64 = paged_attention_dense(q, k, v, bt, sl, scale, compute_dtype=torch.float64)
    low, _ = paged_attention_dense(q, k, v, bt, sl, scale, compute_dtype=q.dtype)
    err_low = (low.double() - ref64).abs().max().item()
    err = (out.double() - ref64).abs().max().item()
    assert out.dtype == q.dtype and out.shape == q.shape
    extra = ULP_16BIT.get(q.dtype, 0.0) * ref64.abs().max().item() if partials_rounded else 0.0
    assert err <= 2 * err_low + ATOL_FLOOR[q.dtype] + extra, (
        f"error {err:.3g} vs low-precision reference {err_low:.3g} (+{extra:.3g} for rounded partials)")
    if lse is not None:
        assert lse.dtype == torch.float32 and lse.shape == q.shape[:2]
        lerr = ((lse.double() - lse64).abs() / (1 + lse64.abs())).max().item()
        assert lerr <= 1e-5, f"lse relative error {lerr:.3g}"
