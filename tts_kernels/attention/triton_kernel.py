"""Triton kernels of tree attention (decode attention that reads each shared KV prefix once).

The plan (``tts_kernels/attention/plan.py``) splits the KV into chunks; each chunk
lists the query rows that share it (pairs ``chunk_q_ptr[c] .. chunk_q_ptr[c+1]``).

Stage 1 works through a *work list* of (chunk, row tile) items x KV heads:

* item ``i < C`` takes the first ``BLOCK_R`` pairs of chunk ``i``;
* item ``C + k - 1`` (``k >= 1``) takes the window of pairs ``[k * BLOCK_R, (k + 1) * BLOCK_R)``
  minus the first tiles of their chunks. Rests of two chunks are at least
  ``BLOCK_R`` pairs apart (a first tile separates them), so a window meets at
  most one chunk's rest: the program finds that chunk by a binary search of
  ``chunk_q_ptr`` and takes ``[max(k * BLOCK_R, p0 + BLOCK_R), min((k + 1) * BLOCK_R, p1))``.

Every (chunk, tile of BLOCK_R pairs) of the plan is covered exactly once. The
programs are persistent: ``CTAS_PER_SM`` per SM (at most one per slot), each
takes the next slot from a counter (an atomic add; windows first: the rest of a
chunk exists only for chunks wider than a tile, so the longest items start
first) until the list is exhausted. Slots with nothing to do (padding chunks,
windows that hold only first tiles) cost a few scalar loads, not a program: no
program of the launch is idle unless the whole list is shorter than the grid.
The grid depends only on the plan's capacity (C, P), ``BLOCK_R`` and the SM
count: no host sync, CUDA-graph capturable. The plan's sizes are runtime
integers that Triton does not specialise on, and the only tile choice that
follows the batch (:func:`wide_tiles`, via :func:`tile_rows`) looks at N
whenever the plan shares a chunk, not at the widest chunk: a widening search
never recompiles. :func:`plan_launches` is the one place a plan's tiles are
chosen; :func:`parallelism` tells the planner how many programs run at once
(its load-balanced chunk length).

Two launches of stage 1 when the plan has chunks of both kinds: the chunks of a
few rows (every row's own tail, the narrow branches of a search: at most the
narrow tile's ``BLOCK_R`` rows, :func:`narrow_config`) take a 16-row query tile
with longer KV tiles, the others the wide tile. One tile for all would issue the
wide tile's instructions (its softmax, rescale and partial store over
``BLOCK_M`` rows) for the few live rows of every narrow chunk. Each launch skips
the other's chunks (constexprs ``MIN_ROWS`` / ``MAX_ROWS``; their first-tile
slots cost it a few scalar loads and a counter increment each: which chunks are
narrow is known on the device only) and has its own counter.

Each item stacks its rows' GQA groups of query heads into a ``[BLOCK_M, D]``
query tile (``BLOCK_M = BLOCK_R * GROUP_PAD``), so every ``BLOCK_N``-token K/V
tile gathered from the paged cache serves all of them: ``tl.dot`` for the
scores, online softmax in float32 (base 2), ``acc += tl.dot(p, V)``. Tile sizes
are chosen per dtype so that no variant spills (float32 keeps an IEEE dot and
small tiles; 16-bit inputs take 128-row query tiles at D <= 128). Query tiles of
128 rows or more rescale lazily (``LAZY_RESCALE``): a row's reference max moves
only when a KV tile's max exceeds it by more than ``2**RESCALE_LOG2`` (a branch
uniform over the CTA, after a CTA-wide reduction: one barrier per tile), so a
tile whose rows' maxima stay within that skips the rescale of the ``[BLOCK_M, D]``
accumulator (128 FMULs per thread per tile in a 256-row tile, a quarter of its
KV loop). The probabilities stay below ``2**RESCALE_LOG2`` up to rounding, and the
partial output and LSE do not depend on which reference max they end with (the
same online-softmax algebra, with a stale max).

Paged gather: the block size is a constexpr. When it is a power of two, tiles
are aligned to blocks (chunks start on block boundaries): a multiple of
``BLOCK_N`` puts a K/V tile inside one block (one block-id load per tile), a
smaller one loads the ``BLOCK_N // BS`` ids of the tile's blocks and broadcasts
them (one load per block, shift/mask offsets). Other block sizes look up a block
id per token (constant division).

Partials are written in the input dtype for bfloat16/float16 (normalised outputs,
one rounding like the final output) and float32 for float32; LSEs in float32.

Stage 2, grid ``(N, cdiv(Hq, BLOCK_H))``: merges each row's pairs by log-sum-exp,
``BLOCK_P`` pairs per step (independent loads: no serial pair walk): a pass over
the LSEs for the max, then a pass that accumulates the weighted partials.
"""
from __future__ import annotations

import os
from typing import Dict, List, NamedTuple

import torch
import triton
import triton.language as tl

from .. import _platform, _triton_layout
from .plan import Parallelism, TreeAttentionPlan

_LOG2E = 1.4426950408889634
_FLT_MIN = 1.1754943508222875e-38  # float32's smallest normal
#: pairs x query heads of a plan: the (pair, head) rows of the partials, indexed in int32 (``INT32_PAIRS``)
_MAX_PAIR_HEADS = 2 ** 31
#: lazy rescaling (``LAZY_RESCALE`` tiles): a row's reference max moves only when a KV tile's max exceeds it
#: by more than this (log2 units), so its probabilities stay below 2**8 (up to rounding) and a tile within
#: it skips the accumulator rescale
RESCALE_LOG2 = tl.constexpr(8.0)


@triton.jit(do_not_specialize=["num_chunks", "num_items", "num_kv_heads", "search_steps", "stride_btn"])
def _tree_attn_stage1(
    q_ptr, k_ptr, v_ptr, bt_ptr,
    chunk_row_ptr, chunk_start_ptr, chunk_len_ptr, chunk_q_ptr_ptr, q_rows_ptr,
    out_p_ptr, lse_p_ptr, next_ptr,
    scale_log2,
    num_chunks, num_items, num_kv_heads, search_steps,
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
    BS: tl.constexpr,
    BS_POW2: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    MIN_ROWS: tl.constexpr,
    MAX_ROWS: tl.constexpr,
    LAZY_RESCALE: tl.constexpr,
    INT32_PAIRS: tl.constexpr,
):
    # Persistent: each program takes the next (item, KV head) from the counter at next_ptr (zeroed
    # by the wrapper) until the work list is exhausted.
    total = num_items * num_kv_heads
    num_windows = num_items - num_chunks
    idx = tl.atomic_add(next_ptr, 1, sem="relaxed")
    while idx < total:
        # Rest windows first: they belong to the widest chunks (the longest items, taken first so
        # that they do not trail the launch), then the first tiles; the KV heads of an item are
        # consecutive.
        j = idx // num_kv_heads
        kvh = idx - j * num_kv_heads
        item = j - num_windows
        if item < 0:
            item = item + num_items  # windows: num_chunks + k
        _stage1_item(q_ptr, k_ptr, v_ptr, bt_ptr,
                     chunk_row_ptr, chunk_start_ptr, chunk_len_ptr, chunk_q_ptr_ptr, q_rows_ptr,
                     out_p_ptr, lse_p_ptr, scale_log2, item, kvh, num_chunks, search_steps,
                     stride_qn, stride_qh, stride_qd, stride_kb, stride_ks, stride_kh, stride_kd,
                     stride_vb, stride_vs, stride_vh, stride_vd, stride_btn, stride_btb,
                     HQ, HEAD_DIM, GROUP, GROUP_PAD, BLOCK_R, BLOCK_M, BLOCK_N, BLOCK_D, BS, BS_POW2,
                     DOT_PRECISION, DOT_UPCAST, MIN_ROWS, MAX_ROWS, LAZY_RESCALE, INT32_PAIRS)
        idx = tl.atomic_add(next_ptr, 1, sem="relaxed")


@triton.jit
def _stage1_item(
    q_ptr, k_ptr, v_ptr, bt_ptr,
    chunk_row_ptr, chunk_start_ptr, chunk_len_ptr, chunk_q_ptr_ptr, q_rows_ptr,
    out_p_ptr, lse_p_ptr, scale_log2, item, kvh, num_chunks, search_steps,
    stride_qn, stride_qh, stride_qd, stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd, stride_btn, stride_btb,
    HQ: tl.constexpr, HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BS: tl.constexpr, BS_POW2: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    MIN_ROWS: tl.constexpr, MAX_ROWS: tl.constexpr, LAZY_RESCALE: tl.constexpr, INT32_PAIRS: tl.constexpr,
):
    """One work item: the chunk's pairs [pa, pb) (at most BLOCK_R) x KV head ``kvh``; chunks of fewer
    than ``MIN_ROWS`` or (``MAX_ROWS`` > 0) more than ``MAX_ROWS`` rows belong to another launch."""
    # ---- work item -> (chunk c, pairs [pa, pb)) ----
    if item < num_chunks:
        c = item
        p0 = tl.load(chunk_q_ptr_ptr + c)
        p1 = tl.load(chunk_q_ptr_ptr + c + 1)
        pa = p0
        pb = tl.minimum(p1, p0 + BLOCK_R)
        if MIN_ROWS > 1:
            pb = tl.where(p1 - p0 >= MIN_ROWS, pb, pa)
        if MAX_ROWS > 0:
            pb = tl.where(p1 - p0 <= MAX_ROWS, pb, pa)
    else:
        w0 = (item - num_chunks + 1) * BLOCK_R  # window 0 never holds a rest
        # largest c in [0, C) with chunk_q_ptr[c] <= w0
        lo = 0
        hi = num_chunks
        for _ in range(search_steps):
            mid = (lo + hi) // 2
            wide = hi - lo > 1
            go = tl.load(chunk_q_ptr_ptr + mid) <= w0
            lo = tl.where(wide & go, mid, lo)
            hi = tl.where(wide & (~go), mid, hi)
        c = lo
        p0 = tl.load(chunk_q_ptr_ptr + c)
        pa = tl.maximum(w0, p0 + BLOCK_R)  # a rest: the chunk has more than BLOCK_R >= MIN_ROWS rows
        pb = tl.minimum(tl.load(chunk_q_ptr_ptr + c + 1), w0 + BLOCK_R)
    clen = tl.load(chunk_len_ptr + c)
    if (clen > 0) & (pa < pb):  # padding chunks and windows of first tiles only: nothing to do
        nrows = pb - pa

        # Query tile: row m = (r, g) -> pair pa + r, head kvh * GROUP + g.
        offs_m = tl.arange(0, BLOCK_M)
        r = offs_m // GROUP_PAD
        g = offs_m % GROUP_PAD
        m_valid = (r < nrows) & (g < GROUP)
        pair = pa + r
        if not INT32_PAIRS:  # (stage1_config) int32 pair indices: the wrapper bounds num_pairs * HQ
            pair = pair.to(tl.int64)
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
            if BS_POW2 and (BS % BLOCK_N == 0):
                # The tile lies in one block (start is a multiple of BS, n0 of BLOCK_N): one id load.
                blk = tl.load(bt_row + ((start + n0) // BS) * stride_btb).to(tl.int64)
                base_k = k_head + blk * stride_kb
                base_v = v_head + blk * stride_vb
                off = (pos % BS).to(tl.int64)
                k = tl.load(base_k + off[None, :] * stride_ks + offs_d[:, None] * stride_kd,
                            mask=n_mask[None, :] & d_mask[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
            else:
                if BS_POW2:
                    # BLOCK_N // BS whole blocks per tile: one id load per block, broadcast to its tokens.
                    NB: tl.constexpr = BLOCK_N // BS
                    offs_b = tl.arange(0, NB)
                    ids = tl.load(bt_row + ((start + n0) // BS + offs_b) * stride_btb,
                                  mask=n0 + offs_b * BS < clen, other=0)
                    blk_t = tl.reshape(tl.broadcast_to(ids[:, None], [NB, BS]), [BLOCK_N]).to(tl.int64)
                else:
                    # Per-token lookup (BS constexpr: a constant division).
                    blk_t = tl.load(bt_row + (pos // BS) * stride_btb, mask=n_mask, other=0).to(tl.int64)
                off_t = (pos % BS).to(tl.int64)
                k = tl.load(k_head + blk_t[None, :] * stride_kb + off_t[None, :] * stride_ks
                            + offs_d[:, None] * stride_kd,
                            mask=n_mask[None, :] & d_mask[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
            if DOT_UPCAST:
                k = k.to(tl.float32)
            s = tl.dot(q, k, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N], unscaled
            if n0 + BLOCK_N > clen:  # the chunk's last tile, partial (a uniform branch)
                s = tl.where(n_mask[None, :], s, float("-inf"))
            # scale_log2 > 0 (the wrapper's): the row max of the scaled scores (log2 units) is the scaled
            # row max, finite (every tile holds a valid token); one FFMA per score
            m_tile = tl.max(s, 1) * scale_log2
            if LAZY_RESCALE:
                # Rescale only when some row's max grew past its reference by more than 2**RESCALE_LOG2
                # (a uniform branch): the probabilities stay below 2**RESCALE_LOG2, up to rounding.
                grow = tl.max((m_tile > m_i + RESCALE_LOG2).to(tl.int32), 0)
                if grow > 0:
                    m_new = tl.maximum(m_i, m_tile)
                    alpha = tl.exp2(m_i - m_new)
                    acc = acc * alpha[:, None]
                    l_i = l_i * alpha
                    m_i = m_new
                p = tl.exp2(s * scale_log2 - m_i[:, None])
                l_i = l_i + tl.sum(p, 1)
            else:
                m_new = tl.maximum(m_i, m_tile)
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(s * scale_log2 - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                m_i = m_new
            if BS_POW2 and (BS % BLOCK_N == 0):
                v = tl.load(base_v + off[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                            mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
            else:
                v = tl.load(v_head + blk_t[:, None] * stride_vb + off_t[:, None] * stride_vs
                            + offs_d[None, :] * stride_vd,
                            mask=n_mask[:, None] & d_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
            if DOT_UPCAST:
                v = v.to(tl.float32)
            if LAZY_RESCALE:
                acc = acc + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)

        out = acc / l_i[:, None]
        lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
        hp = pair * HQ + head
        tl.store(out_p_ptr + hp.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :], out.to(out_p_ptr.dtype.element_ty),
                 mask=m_valid[:, None] & d_mask[None, :])
        tl.store(lse_p_ptr + hp, lse, mask=m_valid)


@triton.jit
def _on_axis(x, AXIS: tl.constexpr):
    """A 1-d tensor along axis ``AXIS`` (0 or 1) of a 2-d tile."""
    return tl.expand_dims(x, 1 - AXIS)


@triton.jit
def _tree_attn_stage2(
    out_p_ptr, lse_p_ptr, row_pair_ptr_ptr, row_pairs_ptr, out_ptr, lse_ptr,
    stride_on, stride_oh, stride_od,
    HQ: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    P_AXIS: tl.constexpr,
):
    """Row ``i``'s output for heads block ``hb``: the LSE-weighted sum of its pairs' partial outputs.
    Tiles of (pair, head[, dim]) with the pairs on axis ``P_AXIS`` and the heads on the other (``[P, H, D]``
    or ``[H, P, D]``): the axis this Triton keeps in a thread's registers (``_triton_layout.REGISTER_AXIS``),
    so that the sums over the pairs stay in the thread."""
    i = tl.program_id(0)
    hb = tl.program_id(1)
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < HQ
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    offs_p = tl.arange(0, BLOCK_P)
    hh = _on_axis(offs_h, 1 - P_AXIS)
    hm = _on_axis(h_mask, 1 - P_AXIS)

    j0 = tl.load(row_pair_ptr_ptr + i)
    j1 = tl.load(row_pair_ptr_ptr + i + 1)
    # Pass 1: the max LSE over the row's pairs (BLOCK_P pairs per step, independent loads).
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    for j in range(j0, j1, BLOCK_P):
        jm = j + offs_p < j1
        p = tl.load(row_pairs_ptr + j + offs_p, mask=jm, other=0).to(tl.int64)
        lp = tl.load(lse_p_ptr + _on_axis(p, P_AXIS) * HQ + hh, mask=_on_axis(jm, P_AXIS) & hm,
                     other=float("-inf"))
        m = tl.maximum(m, tl.max(lp, P_AXIS))
    m_safe = tl.where(m > float("-inf"), m, 0.0)
    # Pass 2: exact weights, weighted sum of the partial outputs.
    s = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for j in range(j0, j1, BLOCK_P):
        jm = j + offs_p < j1
        p = tl.load(row_pairs_ptr + j + offs_p, mask=jm, other=0).to(tl.int64)
        ph = _on_axis(p, P_AXIS) * HQ + hh                 # [BLOCK_P, BLOCK_H] or [BLOCK_H, BLOCK_P]
        pm = _on_axis(jm, P_AXIS) & hm
        lp = tl.load(lse_p_ptr + ph, mask=pm, other=float("-inf"))
        w = tl.where(pm, tl.exp(lp - _on_axis(m_safe, 1 - P_AXIS)), 0.0)
        op = tl.load(out_p_ptr + ph[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                     mask=pm[:, :, None] & d_mask[None, None, :], other=0.0)
        acc += tl.sum(w[:, :, None] * op.to(tl.float32), P_AXIS)
        s += tl.sum(w, P_AXIS)
    has = s > 0.0
    out = tl.where(has[:, None], acc / tl.where(has, s, 1.0)[:, None], 0.0)
    lse = tl.where(has, m_safe + tl.log(tl.where(has, s, 1.0)), float("-inf"))
    row = i.to(tl.int64)
    tl.store(out_ptr + row * stride_on + offs_h[:, None] * stride_oh + offs_d[None, :] * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=h_mask[:, None] & d_mask[None, :])
    tl.store(lse_ptr + row * HQ + offs_h, lse, mask=h_mask)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


#: the architecture assumed off CUDA (the interpreter), as ``major * 10 + minor``
INTERPRETER_ARCH = 90


def _arch(device) -> int:
    """Compute capability of ``device`` as ``major * 10 + minor`` (cached by torch, no sync);
    :data:`INTERPRETER_ARCH` off CUDA (the static check monkeypatches this per target)."""
    if device.type != "cuda":
        return INTERPRETER_ARCH
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def _wgmma(arch: int) -> bool:
    """Hopper's warpgroup MMA tiles (sm_90); every other arch takes the mma.sync tiles checked on sm_80
    (the smaller, safe choice for archs the static check does not compile: sm_100, sm_120)."""
    return 90 <= arch < 100


def tile_rows(plan: TreeAttentionPlan) -> int:
    """The row count that picks the tile (:func:`wide_tiles`): N for a plan that shares any chunk
    (every row of a search shares its prompt from the first step, so the tile stays the same as
    the search widens), 1 for a plan without sharing (``sharing=False``: one row per chunk)."""
    return plan.num_rows if plan.max_rows_per_chunk > 1 else 1


def rows_config(num_rows: int, Hq: int, Hkv: int, D: int, dtype: torch.dtype, arch: int, block_size: int):
    """Stage-1 tiles (:func:`stage1_config`) for a batch whose tile row count (:func:`tile_rows`) is
    ``num_rows``."""
    return stage1_config(Hq, Hkv, D, dtype, wide_tiles(Hq, Hkv, D, dtype, num_rows, arch), arch, block_size)


class Stage1Launch(NamedTuple):
    """One stage-1 launch: its tiles (:func:`stage1_config` or :func:`narrow_config`) and the chunks it
    takes, those of ``min_rows`` rows or more and, when ``max_rows`` > 0, at most ``max_rows`` (one
    work item per chunk: no rest windows)."""
    cfg: Dict[str, int]
    min_rows: int
    max_rows: int

    def takes(self, rows: int) -> bool:
        """Whether a chunk of ``rows`` rows is this launch's (the kernel's ``MIN_ROWS`` / ``MAX_ROWS``)."""
        return rows >= self.min_rows and (not self.max_rows or rows <= self.max_rows)

    def items(self, num_chunks: int, num_pairs: int) -> int:
        """Work items per KV head: first tiles plus rest windows, first tiles only with ``max_rows``."""
        return num_chunks if self.max_rows else num_work_items(num_chunks, num_pairs, self.cfg["BLOCK_R"])


def rows_launches(num_rows: int, Hq: int, Hkv: int, D: int, dtype: torch.dtype, arch: int, block_size: int,
                  max_rows_per_chunk: int) -> List[Stage1Launch]:
    """The stage-1 launches of a plan whose tile row count (:func:`tile_rows`) is ``num_rows``.

    Chunks of at most the narrow tile's ``BLOCK_R`` rows (every row's own tail, the narrow branches
    of a search) take :func:`narrow_config`'s small query tile in a launch of their own; the wide
    tile would compute (and issue instructions for) all its ``BLOCK_M`` rows for a few live ones.
    One launch when the plan has no wider chunk (``max_rows_per_chunk``, a bound for padded plans)
    or when the wide tile is no larger than the narrow one.
    """
    wide = rows_config(num_rows, Hq, Hkv, D, dtype, arch, block_size)
    narrow = narrow_config(Hq, Hkv, D, dtype, arch, block_size)
    nr = narrow["BLOCK_R"]
    if wide["BLOCK_M"] <= narrow["BLOCK_M"]:
        return [Stage1Launch(wide, 1, 0)]
    if max_rows_per_chunk <= nr:
        return [Stage1Launch(narrow, 1, nr)]
    return [Stage1Launch(wide, nr + 1, 0), Stage1Launch(narrow, 1, nr)]


def plan_launches(plan: TreeAttentionPlan, Hq: int, Hkv: int, D: int, dtype: torch.dtype,
                  arch: int) -> List[Stage1Launch]:
    """Stage-1 launches of ``plan``: what :func:`tree_attention_triton` launches and :func:`stage1_cost`
    counts (the one definition of a plan's tiles)."""
    return rows_launches(tile_rows(plan), Hq, Hkv, D, dtype, arch, plan.block_size, plan.max_rows_per_chunk)


def parallelism(num_rows: int, Hq: int, Hkv: int, D: int, dtype: torch.dtype, device,
                block_size: int) -> Parallelism:
    """How stage 1 runs a plan of ``num_rows`` rows on ``device`` (see :class:`Parallelism`): rows per
    work item of the tile a plan that shares a chunk takes (:func:`tile_rows`: N), the KV heads, the
    persistent programs (``CTAS_PER_SM`` per SM) with that tile, and the narrow launch's row cap and
    programs (:func:`rows_launches`; a cap of 0 when there is no narrow launch)."""
    arch, sms = _arch(device), _num_sms(device)
    launches = rows_launches(num_rows, Hq, Hkv, D, dtype, arch, block_size, num_rows)
    wide, narrow = launches[0], launches[-1]
    if not narrow.max_rows:  # one launch takes every chunk
        return Parallelism(wide.cfg["BLOCK_R"], Hkv, sms * wide.cfg["CTAS_PER_SM"], 0, 0)
    return Parallelism(wide.cfg["BLOCK_R"], Hkv, sms * wide.cfg["CTAS_PER_SM"], narrow.max_rows,
                       sms * narrow.cfg["CTAS_PER_SM"])


def wide_tiles(Hq: int, Hkv: int, D: int, dtype: torch.dtype, num_rows: int, arch: int = 90) -> bool:
    """256-row query tiles (16-bit; D <= 128 on sm_90, D <= 64 elsewhere) when a chunk can hold more
    query rows than 128.

    Halves the passes over a widely shared chunk's KV (8 -> 4 at N = 256, 32/8 heads). Decided by
    :func:`tile_rows` (the batch's N when it shares anything), not by the plan's widest chunk, so
    that a search that widens its sharing at a fixed N never recompiles.
    """
    return (dtype in (torch.bfloat16, torch.float16) and _next_pow2(D) <= (128 if _wgmma(arch) else 64)
            and num_rows * _next_pow2(Hq // Hkv) > 128)


def query_tile_dims(Hq: int, Hkv: int, D: int):
    """``(GROUP_PAD, BLOCK_D)`` of every stage-1 tile: the GQA group and the head dim, padded to powers
    of two (a query tile holds whole padded groups)."""
    return _next_pow2(Hq // Hkv), max(16, _next_pow2(D))


def _gathered_block_n(block_n: int, dtype: torch.dtype, block_size: int) -> int:
    """KV tokens per tile once the paged gather is known: blocks of fewer than 4 tokens, or of a size
    that is not a power of two, load a block id per token, and 16-bit tiles of 64 such tokens spill."""
    if dtype != torch.float32 and (block_size < 4 or block_size & (block_size - 1)):
        return min(block_n, 32)
    return block_n


def stage1_config(Hq: int, Hkv: int, D: int, dtype: torch.dtype = torch.bfloat16, wide: bool = False,
                  arch: int = 90, block_size: int = 16):
    """Stage-1 tiles, a function of dtype, head dim, GQA group, ``wide`` (:func:`wide_tiles`), the
    architecture and the KV block size.

    Returns ``dict(GROUP_PAD, BLOCK_R, BLOCK_M, BLOCK_N, BLOCK_D, num_warps, CTAS_PER_SM, LAZY_RESCALE,
    INT32_PAIRS)`` (lazy rescaling in tiles of 128 rows or more, see the module docstring; int32 pair
    indices in the 256-row tiles). Chosen
    so that no variant spills on sm_90 or sm_80 (every launched variant is AOT-compiled by the static
    check, benchmarks/gpu_static): 16-bit inputs use 128-row query tiles (64 at D = 256),
    256-row tiles for wide batches; float32 keeps an IEEE dot (the float32 tolerance rules out
    tf32) with 32-row tiles. mma.sync (sm_8x, and archs other than sm_90) holds less: 32-token KV
    tiles for 16-bit inputs, 8 warps at D = 256, no 256-row tile at D = 128, 16-token tiles for
    float32 (16-row at D = 256). Blocks of fewer than 4 tokens, or of a size that is not a
    power of two, gather a block id per token: 32-token KV tiles for 16-bit inputs. A GQA group
    wider than the tile takes one group per tile. ``CTAS_PER_SM``: the tile's CTAs that fit an SM
    by registers (65536 per SM, counts from the static check), the persistent grid's programs
    per SM.
    """
    group_pad, block_d = query_tile_dims(Hq, Hkv, D)
    key = max(64, block_d)
    int32_pairs = False
    hopper = _wgmma(arch)
    # (query rows, KV tokens, warps, CTAs per SM) per tile. Larger tiles spill; the registers of every
    # launched variant are in benchmarks/results/gpu_static.json (the static check, which fails when a
    # variant spills in a loop or does not fit CTAS_PER_SM per SM).
    if dtype == torch.float32 and hopper:  # IEEE FMA dot
        max_m, block_n, warps, per_sm = {64: (32, 32, 4, 4),
                                         128: (32, 32, 8, 2),
                                         256: (32, 16, 8, 1)}.get(key, (32, 16, 8, 1))
    elif dtype == torch.float32:
        max_m, block_n, warps, per_sm = {64: (32, 16, 4, 4),
                                         128: (32, 16, 8, 2),
                                         256: (16, 16, 8, 2)}.get(key, (16, 16, 8, 2))
    elif wide and key <= (128 if hopper else 64):  # 256-row tiles
        # int32 pair indices: the int64 pair held across the KV loop made the D = 128 tile spill on sm_90
        # at 255 registers; the other tiles keep int64, with which ptxas spills less in three of them
        # (fp32 32-row D = 128, fp32 narrow D = 256, the narrow tile at block size 6: 8-16 B with int32)
        int32_pairs = True
        max_m, block_n, warps, per_sm = {64: (256, 64, 8, 1),
                                         128: (256, 32, 8, 1)}[key]
    elif hopper:  # wgmma
        max_m, block_n, warps, per_sm = {64: (128, 64, 4, 2),
                                         128: (128, 64, 8, 1),
                                         256: (64, 16, 4, 2)}.get(key, (64, 16, 4, 2))
    else:  # mma.sync
        max_m, block_n, warps, per_sm = {64: (128, 32, 4, 2),
                                         128: (128, 32, 8, 1),
                                         256: (64, 16, 8, 1)}.get(key, (64, 16, 8, 1))
    block_n = _gathered_block_n(block_n, dtype, block_size)
    block_r = max(1, max_m // group_pad)
    block_m = max(16, block_r * group_pad)
    return dict(GROUP_PAD=group_pad, BLOCK_R=block_r, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
                num_warps=warps, CTAS_PER_SM=per_sm, LAZY_RESCALE=block_m >= 128, INT32_PAIRS=int32_pairs)


def narrow_config(Hq: int, Hkv: int, D: int, dtype: torch.dtype = torch.bfloat16, arch: int = 90,
                  block_size: int = 16):
    """Tiles of the narrow launch (:func:`rows_launches`): chunks of at most ``BLOCK_R`` rows, one
    GQA-group-padded query tile of ``BLOCK_M = max(16, GROUP_PAD)`` rows (``BLOCK_R = BLOCK_M //
    GROUP_PAD``: 4 rows of 4 heads, 2 of 8, 1 of 16 or more), longer KV tiles than the wide tile's
    (the rescale of the accumulator and the row reductions are per tile), 4 warps (8 for float32 at
    D > 64 off sm_90). Same return as :func:`stage1_config`."""
    group_pad, block_d = query_tile_dims(Hq, Hkv, D)
    block_m = max(16, group_pad)
    # KV tokens per tile and warps (float32: the IEEE FMA dot; off sm_90 at D = 128 ptxas spills 4-8
    # bytes in the KV loop with 4 warps at 16 or 32 tokens, and with 8 warps at 32: 8 warps x 16 tokens;
    # 16-bit off sm_90: 32 tokens, as the wide mma.sync tile's: with 64, Triton 3.8's GQA-7 D = 64 tile
    # (Qwen2.5-0.5B's 14/2 heads) spilled 16 B in the KV loop on sm_80 at 80 registers)
    warps = 4
    if dtype == torch.float32:
        if _wgmma(arch) or block_d <= 64:
            block_n = 32 if block_d <= 128 else 16
        else:
            block_n, warps = 16, 8
    else:
        block_n = 64 if block_d <= 128 and _wgmma(arch) else 32
    block_n = _gathered_block_n(block_n, dtype, block_size)
    # CTAs per SM that the launched variants' registers allow (benchmarks/results/gpu_static.json)
    per_sm = 4 if block_d <= 64 else 3
    return dict(GROUP_PAD=group_pad, BLOCK_R=block_m // group_pad, BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_D=block_d, num_warps=warps, CTAS_PER_SM=per_sm, LAZY_RESCALE=False, INT32_PAIRS=False)


def stage2_config(Hq: int, D: int):
    """Stage 2's constexprs: tiles of ``BLOCK_P`` pairs x ``BLOCK_H`` heads x ``BLOCK_D``, the pairs on the
    axis this Triton keeps in registers (``P_AXIS``, :data:`_triton_layout.REGISTER_AXIS`)."""
    block_d = max(16, _next_pow2(D))
    block_p = 4
    block_h = max(1, min(_next_pow2(Hq), max(1, 4096 // (block_d * block_p))))
    return dict(BLOCK_P=block_p, BLOCK_H=block_h, BLOCK_D=block_d, P_AXIS=_triton_layout.REGISTER_AXIS)


def partial_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the stage-1 partial outputs: the input dtype for 16-bit inputs, float32 else."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def num_work_items(num_chunks: int, num_pairs: int, block_r: int) -> int:
    """Stage-1 work items per KV head: a first tile per chunk plus one per window of the rest."""
    return num_chunks + max(0, num_pairs - 1) // block_r  # rests lie in [block_r, P): windows 1..


def stage1_grid(num_items: int, num_kv_heads: int, cfg, num_sms: int) -> int:
    """Persistent programs of a stage-1 launch of ``num_items`` work items per KV head
    (:meth:`Stage1Launch.items`): ``CTAS_PER_SM`` per SM, at most one per (work item, KV head).

    A function of the plan's capacity, the tile and the GPU only: fixed for CUDA graphs.
    """
    return max(1, min(num_items * num_kv_heads, num_sms * cfg["CTAS_PER_SM"]))


#: programs-per-SM basis off CUDA (the interpreter): a few programs share the work list
INTERPRETER_SMS = 3


def _num_sms(device) -> int:
    """SMs of ``device`` (cached by torch, no sync); :data:`INTERPRETER_SMS` off CUDA (the cost model
    monkeypatches this to record an H100's launch)."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    return _platform.num_sms(device)


def stage1_cost(plan: TreeAttentionPlan, Hq: int, Hkv: int, D: int, dtype: torch.dtype = torch.bfloat16,
                num_sms: int = 132, arch: int = 90):
    """Static byte / program accounting of the Triton kernels for ``plan`` (host side, syncs).

    Returns a dict:

    * ``launches``: per stage-1 launch (:func:`plan_launches`), its ``block_r`` (query rows per work
      item), ``min_rows`` / ``max_rows`` (the chunks it takes), ``items`` (its work list's
      (work item, KV head) slots), ``items_live`` (those with work), ``ctas_launched`` (its persistent
      grid on ``num_sms`` SMs, :func:`stage1_grid`) and ``ctas_live`` = min(grid, live items);
    * ``block_r``: the first launch's (the widest tile); ``items``, ``items_live``, ``ctas_launched``,
      ``ctas_live``: summed over the launches;
    * ``kv_unique_bytes``: K and V of every live chunk once (the plan reads each unique token once
      per chunk: equal to the unique KV of the batch for a maximal-sharing plan);
    * ``kv_sm_bytes``: K and V bytes loaded by stage 1 into the SMs: each live item reads its chunk
      once; ``kv_passes`` = kv_sm_bytes / kv_unique_bytes and ``max_passes`` (the widest chunk);
    * ``partial_bytes``: stage-1 partial outputs + LSEs written and read back by stage 2;
    * ``q_bytes``, ``out_bytes``: queries read by stage 1 and the output + LSE written by stage 2.
    """
    launches = plan_launches(plan, Hq, Hkv, D, dtype, arch)
    isz = torch.empty((), dtype=dtype).element_size()
    psz = torch.empty((), dtype=partial_dtype(dtype)).element_size()
    C, P = plan.num_chunks, plan.num_pairs
    clen = plan.chunk_len.cpu().tolist()
    ptr = plan.chunk_q_ptr.cpu().tolist()
    per_launch = []
    passes_max, tok_unique, tok_sm, pairs_live = 0, 0, 0, 0
    for ln in launches:
        br, live = ln.cfg["BLOCK_R"], 0
        for c in range(C):
            r = ptr[c + 1] - ptr[c]
            if clen[c] <= 0 or r <= 0 or not ln.takes(r):
                continue
            items = 1
            if r > br:  # the rest [p0 + br, p1) meets these windows of br pairs
                a, b = ptr[c] + br, ptr[c + 1]
                items += (b - 1) // br - a // br + 1
            live += items
            passes_max = max(passes_max, items)
            tok_unique += clen[c]
            tok_sm += items * clen[c]
            pairs_live += r
        grid = stage1_grid(ln.items(C, P), Hkv, ln.cfg, num_sms)
        per_launch.append(dict(block_r=br, min_rows=ln.min_rows, max_rows=ln.max_rows,
                               items=ln.items(C, P) * Hkv, items_live=live * Hkv, ctas_launched=grid,
                               ctas_live=min(grid, live * Hkv)))
    kv_tok = Hkv * D * isz * 2
    kv_unique = tok_unique * kv_tok
    kv_sm = tok_sm * kv_tok
    total = {k: sum(ln[k] for ln in per_launch) for k in ("items", "items_live", "ctas_launched", "ctas_live")}
    return dict(launches=per_launch, block_r=per_launch[0]["block_r"], **total,
                kv_unique_bytes=kv_unique, kv_sm_bytes=kv_sm, kv_passes=kv_sm / kv_unique if kv_unique else 0.0,
                max_passes=passes_max, partial_bytes=2 * pairs_live * Hq * (D * psz + 4),
                q_bytes=pairs_live * Hq * D * isz, out_bytes=plan.num_rows * Hq * (D * isz + 4))


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
    block_size = int(k_cache.shape[1])
    if Hq % Hkv != 0:
        raise ValueError(f"Hq ({Hq}) must be a multiple of Hkv ({Hkv})")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise TypeError(f"k_cache/v_cache dtype must match q ({q.dtype})")
    group = Hq // Hkv
    P = plan.num_pairs
    C = plan.num_chunks
    if P * Hq >= _MAX_PAIR_HEADS:  # the kernel may index the partials' (pair, head) rows in int32
        raise ValueError(f"plan.num_pairs * Hq (q.shape[1]) must be below {_MAX_PAIR_HEADS}, got {P} * {Hq}")
    out_partial = torch.empty((P, Hq, D), dtype=partial_dtype(q.dtype), device=q.device)
    lse_partial = torch.empty((P, Hq), dtype=torch.float32, device=q.device)
    out = torch.empty((N, Hq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((N, Hq), dtype=torch.float32, device=q.device)
    if N == 0:
        return out, lse

    # The kernel takes scale * log2(e) as a positive normal float32 (its row max of the scaled scores is
    # the scaled row max; -inf x 0 would be NaN): a negative scale is folded into q exactly (-q); one
    # that is 0 in float32 (0, -0.0, or below float32's smallest normal) makes every score 0: q = 0,
    # scale 1 (q's values are then ignored, inf or NaN included).
    if scale < 0:
        q, scale = -q, -scale
    if scale * _LOG2E < _FLT_MIN:
        q, scale = torch.zeros_like(q), 1.0
    arch = _arch(q.device)
    launches = plan_launches(plan, Hq, Hkv, D, q.dtype, arch)
    # Triton's CPU interpreter computes bf16 tl.dot wrongly (triton 3.9): upcast there only.
    upcast = q.dtype == torch.bfloat16 and _interpreting()
    precision = "ieee" if (q.dtype == torch.float32 or upcast) else "tf32"
    if C > 0 and P > 0:
        # the persistent programs' counters, one per launch, 16 bytes apart (aligned: one specialization)
        next_item = torch.zeros(4 * len(launches), dtype=torch.int32, device=q.device)
        for i, ln in enumerate(launches):
            cfg, items = ln.cfg, ln.items(C, P)
            _tree_attn_stage1[(stage1_grid(items, Hkv, cfg, _num_sms(q.device)),)](
                q, k_cache, v_cache, block_tables,
                plan.chunk_row, plan.chunk_start, plan.chunk_len, plan.chunk_q_ptr, plan.q_rows,
                out_partial, lse_partial, next_item[4 * i:],
                float(scale) * _LOG2E,
                C, items, Hkv, max(1, int(C).bit_length()),
                q.stride(0), q.stride(1), q.stride(2),
                k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
                v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), v_cache.stride(3),
                block_tables.stride(0), block_tables.stride(1),
                HQ=Hq, HEAD_DIM=D, GROUP=group, GROUP_PAD=cfg["GROUP_PAD"], BLOCK_R=cfg["BLOCK_R"],
                BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"],
                BS=block_size, BS_POW2=(block_size & (block_size - 1)) == 0,
                DOT_PRECISION=precision, DOT_UPCAST=upcast, MIN_ROWS=ln.min_rows, MAX_ROWS=ln.max_rows,
                LAZY_RESCALE=cfg["LAZY_RESCALE"], INT32_PAIRS=cfg["INT32_PAIRS"],
                num_warps=cfg["num_warps"], num_stages=2,
            )
    c2 = stage2_config(Hq, D)
    _tree_attn_stage2[(N, triton.cdiv(Hq, c2["BLOCK_H"]))](
        out_partial, lse_partial, plan.row_pair_ptr, plan.row_pairs, out, lse,
        out.stride(0), out.stride(1), out.stride(2),
        HQ=Hq, HEAD_DIM=D, **c2,
        num_warps=4,
    )
    return out, lse
