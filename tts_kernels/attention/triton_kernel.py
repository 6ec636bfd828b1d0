"""Triton kernels of tree attention (decode attention that reads each shared KV prefix once).

The plan (``tts_kernels/attention/plan.py``) splits the KV into chunks; each chunk
lists the query rows that share it.

Stage 1, grid ``(num_chunks, Hkv, cdiv(max_rows_per_chunk, BLOCK_R))``: a program
takes one chunk, one KV head and a tile of ``BLOCK_R`` of the chunk's query rows.
The rows' GQA groups of query heads are stacked into an ``[BLOCK_M, D]`` query
tile (``BLOCK_M = BLOCK_R * GROUP_PAD``, at least 16 for ``tl.dot``), so each
``BLOCK_N``-token K/V tile is gathered from the paged cache once and used for
all of them: scores are ``tl.dot([BLOCK_M, D], [D, BLOCK_N])``, online softmax
in float32 (base 2), ``acc += tl.dot(p, V)``. It writes per-pair float32
partial outputs and natural-log LSEs. Padding chunks (``chunk_len == 0``) and
tiles past a chunk's row count exit at once.

Stage 2, grid ``(N, cdiv(Hq, BLOCK_H))``: merges each row's pairs by
log-sum-exp and writes the output in q's dtype and the LSE in float32.

Both grids depend only on the plan's capacity (``num_chunks``,
``max_rows_per_chunk``) and on shapes, never on plan contents: no host sync,
CUDA-graph capturable with a fixed-capacity plan.
"""
from __future__ import annotations

import os


import torch
import triton
import triton.language as tl

from .plan import TreeAttentionPlan

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@triton.jit
def _tree_attn_stage1(
    q_ptr, k_ptr, v_ptr, bt_ptr,
    chunk_row_ptr, chunk_start_ptr, chunk_len_ptr, chunk_q_ptr_ptr, q_rows_ptr,
    out_p_ptr, lse_p_ptr,
    scale_log2,
    block_size,
    stride_qn, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_btn, stride_btb,
    HQ: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    c = tl.program_id(0)
    kvh = tl.program_id(1)
    tile = tl.program_id(2)

    clen = tl.load(chunk_len_ptr + c)
    p0 = tl.load(chunk_q_ptr_ptr + c)
    nrows = tl.load(chunk_q_ptr_ptr + c + 1) - p0
    r0 = tile * BLOCK_R
    if (clen <= 0) | (r0 >= nrows):
        return

    # Query tile: row m = (r, g) -> pair p0 + r0 + r, head kvh * GROUP + g.
    offs_m = tl.arange(0, BLOCK_M)
    r = offs_m // GROUP_PAD
    g = offs_m % GROUP_PAD
    m_valid = (r < BLOCK_R) & (r0 + r < nrows) & (g < GROUP)
    pair = (p0 + r0 + r).to(tl.int64)
    qrow = tl.load(q_rows_ptr + pair, mask=m_valid, other=0).to(tl.int64)
    head = kvh * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + qrow[:, None] * stride_qn + head[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=m_valid[:, None] & d_mask[None, :], other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)

    start = tl.load(chunk_start_ptr + c)
    crow = tl.load(chunk_row_ptr + c).to(tl.int64)
    bt_row = bt_ptr + crow * stride_btn
    k_head = k_ptr + kvh.to(tl.int64) * stride_kh
    v_head = v_ptr + kvh.to(tl.int64) * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(0, clen, BLOCK_N):
        n_mask = n0 + offs_n < clen
        pos = start + n0 + offs_n
        # Per-token block lookup: block_size need not be a power of two.
        blk = tl.load(bt_row + (pos // block_size) * stride_btb, mask=n_mask, other=0).to(tl.int64)
        off = (pos % block_size).to(tl.int64)
        k = tl.load(k_head + blk[None, :] * stride_kb + off[None, :] * stride_ks + offs_d[:, None] * stride_kd,
                    mask=n_mask[None, :] & d_mask[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
        if DOT_UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2  # [BLOCK_M, BLOCK_N], log2 units
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile holds a valid token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_head + blk[:, None] * stride_vb + off[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        if DOT_UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    hp = pair * HQ + head
    tl.store(out_p_ptr + hp[:, None] * HEAD_DIM + offs_d[None, :], out, mask=m_valid[:, None] & d_mask[None, :])
    tl.store(lse_p_ptr + hp, lse, mask=m_valid)


@triton.jit
def _tree_attn_stage2(
    out_p_ptr, lse_p_ptr, row_pair_ptr_ptr, row_pairs_ptr, out_ptr, lse_ptr,
    stride_on, stride_oh, stride_od,
    HQ: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0)
    hb = tl.program_id(1)
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < HQ
    offs_d = tl.arange(0, BLOCK_D)
    hd_mask = h_mask[:, None] & (offs_d < HEAD_DIM)[None, :]

    j0 = tl.load(row_pair_ptr_ptr + i)
    j1 = tl.load(row_pair_ptr_ptr + i + 1)
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for j in range(j0, j1):
        p = tl.load(row_pairs_ptr + j).to(tl.int64)
        lp = tl.load(lse_p_ptr + p * HQ + offs_h, mask=h_mask, other=0.0)
        op = tl.load(out_p_ptr + (p * HQ + offs_h[:, None]) * HEAD_DIM + offs_d[None, :], mask=hd_mask, other=0.0)
        m_new = tl.maximum(m, lp)
        alpha = tl.exp(m - m_new)
        w = tl.exp(lp - m_new)
        acc = acc * alpha[:, None] + w[:, None] * op
        s = s * alpha + w
        m = m_new
    has = s > 0.0
    out = tl.where(has[:, None], acc / tl.where(has, s, 1.0)[:, None], 0.0)
    lse = tl.where(has, m + tl.log(tl.where(has, s, 1.0)), float("-inf"))
    row = i.to(tl.int64)
    tl.store(out_ptr + row * stride_on + offs_h[:, None] * stride_oh + offs_d[None, :] * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=hd_mask)
    tl.store(lse_ptr + row * HQ + offs_h, lse, mask=h_mask)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def stage1_config(Hq: int, Hkv: int, D: int, max_rows_per_chunk: int):
    """Tile sizes of stage 1: (GROUP_PAD, BLOCK_R, BLOCK_M, BLOCK_N, BLOCK_D)."""
    group = Hq // Hkv
    group_pad = _next_pow2(group)
    block_d = max(16, _next_pow2(D))
    # Query rows x group heads per program: bounded by the accumulator's size
    # (BLOCK_M x BLOCK_D float32 in registers).
    max_m = max(16, 8192 // block_d)  # 128 at D=64, 64 at D=128, 32 at D=256
    block_r = max(1, min(_next_pow2(max(1, max_rows_per_chunk)), max(1, max_m // group_pad)))
    block_m = max(16, block_r * group_pad)
    block_n = 64 if block_d <= 128 else 32
    return group_pad, block_r, block_m, block_n, block_d


def tree_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          block_tables: torch.Tensor, seq_lens: torch.Tensor, plan: TreeAttentionPlan,
                          scale: float, return_lse: bool = True):
    """Tree attention with the Triton kernels; returns ``(out [N, Hq, D] in q's dtype, lse float32 [N, Hq])``.

    ``seq_lens`` is not read (the plan's chunks cover every row's positions);
    ``return_lse`` is accepted for the API's sake, the LSE is always returned.
    """
    del seq_lens, return_lse
    N, Hq, D = q.shape
    Hkv = k_cache.shape[2]
    block_size = k_cache.shape[1]
    if Hq % Hkv != 0:
        raise ValueError(f"Hq ({Hq}) must be a multiple of Hkv ({Hkv})")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise TypeError(f"k_cache/v_cache dtype must match q ({q.dtype})")
    group = Hq // Hkv
    P = plan.num_pairs
    C = plan.num_chunks
    out_partial = torch.empty((P, Hq, D), dtype=torch.float32, device=q.device)
    lse_partial = torch.empty((P, Hq), dtype=torch.float32, device=q.device)
    out = torch.empty((N, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((N, Hq), dtype=torch.float32, device=q.device)
    if N == 0:
        return out, lse

    group_pad, block_r, block_m, block_n, block_d = stage1_config(Hq, Hkv, D, plan.max_rows_per_chunk)
    n_tiles = triton.cdiv(max(0, plan.max_rows_per_chunk), block_r)
    # Triton's CPU interpreter computes bf16 tl.dot wrongly (triton 3.9): upcast there only.
    upcast = q.dtype == torch.bfloat16 and _interpreting()
    precision = "ieee" if (q.dtype == torch.float32 or upcast) else "tf32"
    if C > 0 and n_tiles > 0 and P > 0:
        big = block_d >= 256 or block_m >= 128
        _tree_attn_stage1[(C, Hkv, n_tiles)](
            q, k_cache, v_cache, block_tables,
            plan.chunk_row, plan.chunk_start, plan.chunk_len, plan.chunk_q_ptr, plan.q_rows,
            out_partial, lse_partial,
            float(scale) * _LOG2E,
            block_size,
            q.stride(0), q.stride(1), q.stride(2),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), v_cache.stride(3),
            block_tables.stride(0), block_tables.stride(1),
            HQ=Hq, HEAD_DIM=D, GROUP=group, GROUP_PAD=group_pad, BLOCK_R=block_r, BLOCK_M=block_m,
            BLOCK_N=block_n, BLOCK_D=block_d, DOT_PRECISION=precision, DOT_UPCAST=upcast,
            num_warps=8 if big else 4, num_stages=2,
        )
    block_h = max(1, min(_next_pow2(Hq), max(1, 4096 // block_d)))
    _tree_attn_stage2[(N, triton.cdiv(Hq, block_h))](
        out_partial, lse_partial, plan.row_pair_ptr, plan.row_pairs, out, lse,
        out.stride(0), out.stride(1), out.stride(2),
        HQ=Hq, HEAD_DIM=D, BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=4,
    )
    return out, lse
