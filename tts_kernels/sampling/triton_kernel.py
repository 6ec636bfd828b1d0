"""Triton kernel of the fused sampler (budget forcing + temperature/top-k/top-p/min-p).

Semantics: ``reference.py``; random stream: ``philox.py``; budget rules: ``budget.py``.

Design (no host sync, no data-dependent allocation or grid: CUDA-graph capturable):

* **Grid.** ``B >= #SMs`` (or off CUDA): one program per row (``_sample_kernel``). Small B:
  ``_partial_kernel`` runs pass 1 over ``B x S`` row slices (``_num_slices``: about 2 programs
  per SM, slices of >= 2 tiles) and ``_merge_kernel`` (one program per row) merges the
  partials exactly and finishes the row. The grid is a function of (B, V) only.
* **Pass 1** (``_pass1``, always, one read of the row in tiles of ``BLOCK``; a thread holds
  16 contiguous bytes of logits per row of the tile: ``W`` = 4 fp32 or 8 bf16/fp16 tokens):
  the lane max (NaN-propagating: validity) and sum of ``exp`` of the raw logits (logsumexp:
  one ex2 per token), the first-index argmax of the end-masked logits (greedy rows, ``zmax``)
  and, for rows that draw, each lane's candidate for ``argmax(z + g)``: one Philox4x32 call per
  4 tokens, an approximate Gumbel (``_fast_neg_log2_e``: hardware lg2/rcp on a GPU, |error|
  <= ~5e-6) and one FFMA ``x - T ln2 * r`` (the score times T, minus a row constant). The
  BLOCK lane candidates are then **rescored exactly** with the reference's float32 formulas
  (``x / T + (-log(-log u))``) and the winner is the first index of the exact maximum. The
  token therefore equals the reference's unless two tokens of the *same lane* (tokens
  ``BLOCK`` apart) are within ~1e-5 * T of each other (a documented near-tie).
* **Split-row merge** (exact): max of the lane maxima; sums of exp rescaled to the common
  max; greedy and Gumbel argmaxes by value, then the smallest index (each partial returns
  the first index of its own maximum, so the merged index is the row's first index).
* **Filters** (``_finish``, only rows with top-k / top-p / min-p): radix select over
  order-preserving uint32 keys of ``z`` (4-bit digits; top-k by count with early exit, top-p
  by mass against ``top_p * mass(top-k set)``), then, if pass 1's winner is not kept, one
  filtered pass (exact Gumbel per token) over the kept tokens. Min-p alone costs the second
  pass only with the probability of the mass it removes.
* Budget rules 1-3 and the state update are scalar code per row (``_plan``, ``_finish``).

bf16/fp16 logits are read natively and upcast in registers.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import budget as _budget
from .triton_math import _exp2, _fast_neg_log2_e, _interleave4, _philox4, _philox_gumbel, _uniform  # noqa: F401

# Budget-state layout (columns of a row of the [B, STATE_COLUMNS] state, and the
# phases), read from budget.py: the same names as csrc/budget/budget_forcing.h.
MIN_TOKENS = tl.constexpr(_budget.MIN_TOKENS)
MAX_TOKENS = tl.constexpr(_budget.MAX_TOKENS)
MIN_WAITS = tl.constexpr(_budget.MIN_WAITS)
NUM_THINKING = tl.constexpr(_budget.NUM_THINKING)
WAITS_USED = tl.constexpr(_budget.WAITS_USED)
PHASE = tl.constexpr(_budget.PHASE)
POS = tl.constexpr(_budget.POS)
STOP = tl.constexpr(_budget.STOP)
STATE_COLUMNS = tl.constexpr(_budget.STATE_COLUMNS)
THINKING = tl.constexpr(_budget.THINKING)
ENDING = tl.constexpr(_budget.ENDING)
DONE = tl.constexpr(_budget.DONE)

# tile sizes (elements of a row per loop iteration) and warps; tune on the GPU
#: the device functions of the passes, for the static cost model (benchmarks/gpu_static/cost_model.py)
COST_MODEL_ROLES = {"pass1": "_pass1", "select": "_radix_select", "draw": "_finish"}
_BLOCK = 1024    # stats pass and filtered draw: 4 tokens (one Philox call) per thread at 8 warps
_HBLOCK = 512    # histogram passes ([HBLOCK, 16] one-hot per tile; 1024 needs > 128 registers)
_NUM_WARPS = 8


@triton.jit
def _order_key(z):
    """uint32 key with the order of the float32 ``z`` (z has no NaN; -0 must be canonicalised to +0)."""
    b = z.to(tl.int32, bitcast=True)
    k = b ^ ((b >> 31) & 0x7FFFFFFF)          # signed-int order of the floats
    return (k ^ (-2147483648)).to(tl.uint32, bitcast=True)  # to unsigned order


@triton.jit
def _scaled(row_ptr, offs, inb, end0, mask_end, Tz):
    """z = (end-masked logits) / T in float32, -0 -> +0; out-of-row entries -inf."""
    x = tl.load(row_ptr + offs, mask=inb, other=float("-inf")).to(tl.float32)
    x = tl.where(mask_end & (offs == end0), float("-inf"), x)
    z = x / Tz
    return tl.where(z == 0.0, 0.0, z)


@triton.jit
def _radix_select(row_ptr, V, end0, mask_end, Tz, zmax, kk, p, base_mass, need_mass,
                  BY_MASS: tl.constexpr, HBLOCK: tl.constexpr):
    """Smallest key T such that the kept set ``key(z) >= T`` is the top-k set (BY_MASS False,
    ``kk`` = k) or the top-p set (BY_MASS True: the largest value whose mass from the top
    reaches ``p * base_mass``; ``base_mass < 0`` means the mass of the whole row).
    Returns (T, mass of the kept set); with BY_MASS False the masses are only accumulated
    when ``need_mass`` (a runtime flag: top-p follows)."""
    bins = tl.arange(0, 16)
    ge = bins[None, :] >= bins[:, None]       # [b, b']: b' >= b
    offs0 = tl.arange(0, HBLOCK)
    prefix = tl.full([], 0, tl.uint32)        # digits chosen so far
    above_cnt = tl.full([], 0, tl.int32)      # tokens with a larger prefix (all kept)
    above_mass = tl.full([], 0.0, tl.float32)
    sel_mass = tl.full([], 0.0, tl.float32)
    target = p * base_mass
    lvl = tl.full([], 0, tl.int32)           # a tensor: loop-carried in a while loop
    done = tl.full([], 0, tl.int32)
    while (lvl < 8) & (done == 0):
        shift = 28 - 4 * lvl
        cnt = tl.zeros([16], tl.int32)
        mass = tl.zeros([16], tl.float32)
        for start in range(0, V, HBLOCK):
            offs = start + offs0
            inb = offs < V
            z = _scaled(row_ptr, offs, inb, end0, mask_end, Tz)
            key = _order_key(z)
            hi = key >> shift
            match = inb & ((hi >> 4) == prefix)
            d = (hi & 15).to(tl.int32)
            oh = (d[:, None] == bins[None, :]) & match[:, None]
            cnt += tl.sum(oh.to(tl.int32), 0)
            if need_mass:
                e = tl.exp(z - zmax)
                mass += tl.sum(tl.where(oh, e[:, None], 0.0), 0)
        ge_cnt = tl.sum(tl.where(ge, cnt[None, :], 0), 1)
        ge_mass = tl.sum(tl.where(ge, mass[None, :], 0.0), 1)
        if BY_MASS:
            if lvl == 0:
                target = tl.where(base_mass < 0, p * tl.sum(mass, 0), target)
            cond = (above_mass + ge_mass) >= target
        else:
            cond = (above_cnt + ge_cnt) >= kk
        # the largest digit that still reaches the target; never below the lowest non-empty
        # bin (guards against float rounding of the mass sums)
        b_sel = tl.maximum(tl.max(tl.where(cond, bins, -1), 0), tl.min(tl.where(cnt > 0, bins, 16), 0))
        c_sel = tl.sum(tl.where(bins == b_sel, cnt, 0), 0)
        sel_mass = tl.sum(tl.where(bins == b_sel, mass, 0.0), 0)
        above_cnt += tl.sum(tl.where(bins > b_sel, cnt, 0), 0)
        above_mass += tl.sum(tl.where(bins > b_sel, mass, 0.0), 0)
        prefix = (prefix << 4) | b_sel.to(tl.uint32)
        lvl += 1
        if BY_MASS:
            done = (c_sel <= 1).to(tl.int32)
        else:
            done = (c_sel <= kk - above_cnt).to(tl.int32)
    t = prefix << (32 - 4 * lvl)
    return t, above_mass + sel_mass


@triton.jit
def _budget_rules(budget_ptr, row):
    """A row's budget state and which of rules 1-3 applies to it (budget_rules.py's ``rules``):
    (state pointer, num_thinking, waits_used, phase, pos, stop, force_end, pending, free, need)."""
    bp = budget_ptr + row.to(tl.int64) * STATE_COLUMNS
    mn = tl.load(bp + MIN_TOKENS)
    mx = tl.load(bp + MAX_TOKENS)
    mw = tl.load(bp + MIN_WAITS)
    nt = tl.load(bp + NUM_THINKING)
    wu = tl.load(bp + WAITS_USED)
    ph = tl.load(bp + PHASE)
    pos = tl.load(bp + POS)
    stop = tl.load(bp + STOP)
    has = (mx >= 0) & (ph != DONE)
    force_end = has & (ph == THINKING) & (nt >= mx)
    pending = has & (force_end == 0) & (pos < stop)
    free = has & (force_end == 0) & (pending == 0)
    need = free & ((nt < mn) | (wu < mw))
    return bp, nt, wu, ph, pos, stop, force_end, pending, free, need


@triton.jit
def _plan(row, temp_ptr, topk_ptr, budget_ptr, forced_ptr, num_wait, num_forced, HAS_BUDGET: tl.constexpr):
    """Budget rules 1 and 2 (forced tokens) and rule 3's end masking, for one row: read only.
    Returns (end0, mask_end, forced_tok, do_draw, Tz)."""
    temp = tl.load(temp_ptr + row)
    if HAS_BUDGET:
        bp, nt, wu, ph, pos, stop, force_end, pending, free, need = _budget_rules(budget_ptr, row)
        end0 = tl.load(forced_ptr + num_wait)
        mask_end = need & (num_wait == 0)
        safe_pos = tl.minimum(tl.maximum(pos, 0), num_forced - 1)
        pend_tok = tl.load(forced_ptr + safe_pos)
        forced_tok = tl.where(force_end, end0, tl.where(pending, pend_tok, -1))
    else:
        top_k = tl.load(topk_ptr + row)
        end0 = -1
        mask_end = top_k != top_k  # False
        forced_tok = -1
    greedy = temp <= 0.0
    Tz = tl.where(greedy, 1.0, temp)
    do_draw = (temp > 0.0) & (forced_tok < 0)
    return end0, mask_end, forced_tok, do_draw, Tz


@triton.jit
def _philox_key(seed_ptr, offset_ptr, row):
    seed = tl.load(seed_ptr + row)
    off = tl.load(offset_ptr + row)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c1 = (off & 0xFFFFFFFF).to(tl.uint32)
    c2 = ((off >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return k0, k1, c1, c2


@triton.jit
def _philox_tile(start, ridx, c1, c2, k0, k1, W: tl.constexpr):
    """Philox words [R, W] of the tokens ``start + W * r + c`` (W = 4: one counter a row; W = 8:
    two, so that a thread's 8 contiguous 2-byte logits are one 16-byte load)."""
    if W == 4:
        x0, x1, x2, x3 = _philox4((start // 4 + ridx).to(tl.uint32), c1, c2, k0, k1)
        w = _interleave4(x0, x1, x2, x3)
    else:
        a0, a1, a2, a3 = _philox4((start // 4 + 2 * ridx).to(tl.uint32), c1, c2, k0, k1)
        b0, b1, b2, b3 = _philox4((start // 4 + 2 * ridx + 1).to(tl.uint32), c1, c2, k0, k1)
        col = tl.arange(0, 8)[None, :]
        w = tl.where(col == 0, a0[:, None], tl.where(col == 1, a1[:, None], tl.where(
            col == 2, a2[:, None], tl.where(col == 3, a3[:, None], tl.where(
                col == 4, b0[:, None], tl.where(col == 5, b1[:, None], tl.where(
                    col == 6, b2[:, None], b3[:, None])))))))
    return w


@triton.jit
def _pass1(row_ptr, lo, hi, end0, mask_end, Tz, do_draw, c1, c2, k0, k1,
           BLOCK: tl.constexpr, FAST_LOG: tl.constexpr, W: tl.constexpr = 4):
    """Pass 1 over the tokens ``[lo, hi)`` (``lo`` a multiple of BLOCK): validity flags,
    (max, sum of exp(x - max)) of the raw logits, the first-index argmax of the end-masked
    logits, and the first-index argmax of the *exact* ``x / T + g`` (when ``do_draw``).

    Per token: one Philox4x32 call per 4 tokens, an approximate Gumbel (``_fast_neg_log2_e``,
    hardware log2) and one FFMA give each lane's candidate; the lane candidates (BLOCK of them)
    are rescored exactly at the end. The result differs from the exact argmax only if two
    tokens of one lane are within ~1e-5 * T of each other (a documented near-tie)."""
    R: tl.constexpr = BLOCK // W
    ridx = tl.arange(0, R)
    idx2 = W * ridx[:, None] + tl.arange(0, W)[None, :]       # [R, W] token index in tile
    Tln2 = Tz * 0.6931471805599453
    # m starts at -FLT_MAX (not -inf): exp2((min - max) * log2e) never sees -inf - -inf, and a
    # -FLT_MAX logit still counts exp(0) = 1; NaN propagates through the max (validity check)
    m_vec = tl.full([R, W], -3.4028234663852886e38, tl.float32)
    s_vec = tl.zeros([R, W], tl.float32)
    g_val = tl.full([R, W], float("-inf"), tl.float32)
    g_idx = tl.zeros([R, W], tl.int32) + lo
    s_val = tl.full([R, W], float("-inf"), tl.float32)
    s_idx = tl.zeros([R, W], tl.int32) + lo
    for start in range(lo, hi, BLOCK):
        offs = start + idx2
        if start + BLOCK <= hi:
            # a full tile loads unmasked: 16-byte vector loads whenever the row start is aligned
            # (row stride a multiple of 16 elements; padded rows of an odd vocabulary included)
            x = tl.load(row_ptr + offs).to(tl.float32)
        else:  # the row's (or slice's) last, partial tile
            x = tl.load(row_ptr + offs, mask=offs < hi, other=float("-inf")).to(tl.float32)
        # logsumexp of the unmodified logits: per-lane online max/sum, one exp per element
        m_new = tl.maximum(m_vec, x, propagate_nan=tl.PropagateNan.ALL)
        d = _exp2((tl.minimum(m_vec, x) - m_new) * 1.4426950408889634, FAST_LOG)
        s_vec = tl.where(x > m_vec, s_vec * d + 1.0, s_vec + d)
        m_vec = m_new
        # greedy argmax of the end-masked logits (strict > keeps each lane's first index)
        xm = tl.where(mask_end & (offs == end0), float("-inf"), x)
        upd = xm > g_val
        g_val = tl.where(upd, xm, g_val)
        g_idx = tl.where(upd, offs, g_idx)
        if do_draw:
            # approximate score scaled by T, minus the row constant T ln2 log2(ln2): one FFMA
            sc = xm - Tln2 * _fast_neg_log2_e(_philox_tile(start, ridx, c1, c2, k0, k1, W), FAST_LOG)
            upd2 = sc > s_val
            s_val = tl.where(upd2, sc, s_val)
            s_idx = tl.where(upd2, offs, s_idx)

    # NaN or +inf anywhere <=> a lane max is NaN or +inf; a finite (end-masked) logit <=> the
    # greedy maximum is > -inf (it is +inf only in rows that are bad anyway)
    nan_any = tl.max((m_vec != m_vec).to(tl.int32))
    m_row = tl.max(m_vec)
    bad_any = nan_any | (m_row == float("inf")).to(tl.int32)
    s_row = tl.sum(s_vec * tl.exp(m_vec - m_row))
    xmax = tl.max(g_val)
    fin_any = (xmax > float("-inf")).to(tl.int32)
    g_tok = tl.min(tl.where(g_val == xmax, g_idx, 2147483647))
    # exact rescoring of the lane candidates: z + g with the reference's float32 formulas
    # (x / T, -log(-log(u))); the winner is the first index of the exact maximum
    s_best = tl.full([], float("-inf"), tl.float32)
    s_tok = tl.full([], 0, tl.int32) + lo
    if do_draw:
        cand = s_val > float("-inf")
        cx0, cx1, cx2, cx3 = _philox4((s_idx >> 2).to(tl.uint32), c1, c2, k0, k1)
        j = s_idx & 3
        cw = tl.where(j == 0, cx0, tl.where(j == 1, cx1, tl.where(j == 2, cx2, cx3)))
        cg = -tl.log(-tl.log(_uniform(cw)))
        cxv = tl.load(row_ptr + s_idx, mask=cand, other=float("-inf")).to(tl.float32)
        ex = tl.where(cand, cxv / Tz + cg, float("-inf"))
        s_best = tl.max(ex)
        s_tok = tl.min(tl.where(ex == s_best, s_idx, 2147483647))
    return bad_any, fin_any, m_row, s_row, xmax, g_tok, s_best, s_tok


@triton.jit
def _finish(row, row_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, c1, c2, k0, k1,
            budget_ptr, forced_ptr, tok_ptr, logp_ptr, V, num_wait, num_end, num_forced,
            end0, mask_end, forced_tok, do_draw, Tz, valid, lse, xmax, g_tok, s_tok,
            HAS_BUDGET: tl.constexpr, BLOCK: tl.constexpr, HBLOCK: tl.constexpr):
    """Filters (top-k / top-p / min-p), budget rule 3, the state update and the outputs of
    one row, given pass 1's merged statistics."""
    temp = tl.load(temp_ptr + row)
    top_k = tl.load(topk_ptr + row)
    top_p = tl.load(topp_ptr + row)
    min_p = tl.load(minp_ptr + row)
    greedy = temp <= 0.0
    k_on = (top_k > 0) & (top_k < V)
    p_on = top_p < 1.0
    m_on = min_p > 0.0
    zmax = xmax / Tz
    R: tl.constexpr = BLOCK // 4
    ridx = tl.arange(0, R)
    idx2 = 4 * ridx[:, None] + tl.arange(0, 4)[None, :]

    # ---- filters: threshold search, then the filtered draw if pass 1's winner is dropped --
    if valid & do_draw & (k_on | p_on | m_on):
        t_key = tl.full([], 0, tl.uint32)      # keep all
        mass_k = tl.full([], -1.0, tl.float32)  # < 0: the whole row
        if k_on:
            t_k, mass_k = _radix_select(row_ptr, V, end0, mask_end, Tz, zmax, top_k, 1.0, -1.0,
                                        p_on, False, HBLOCK)
            t_key = t_k
        if p_on:
            t_p, _unused = _radix_select(row_ptr, V, end0, mask_end, Tz, zmax, top_k, top_p, mass_k,
                                         p_on, True, HBLOCK)
            t_key = tl.maximum(t_key, t_p)
        # is pass 1's winner kept?
        xw = tl.load(row_ptr + s_tok).to(tl.float32)
        zw = xw / Tz
        zw = tl.where(zw == 0.0, 0.0, zw)
        # (exp(.) >= min_p is always true when min_p <= 0: min-p off needs no test)
        ok = (_order_key(zw) >= t_key) & (tl.exp(zw - zmax) >= min_p)
        if ok == 0:
            f_val = tl.full([R, 4], float("-inf"), tl.float32)
            f_idx = tl.zeros([R, 4], tl.int32)
            for start in range(0, V, BLOCK):
                offs = start + idx2
                inb = offs < V
                z = _scaled(row_ptr, offs, inb, end0, mask_end, Tz)
                keep = (_order_key(z) >= t_key) & (tl.exp(z - zmax) >= min_p)
                g = _philox_gumbel((start // 4 + ridx).to(tl.uint32), c1, c2, k0, k1)
                sc = tl.where(keep & inb, z + g, float("-inf"))
                upd3 = sc > f_val
                f_val = tl.where(upd3, sc, f_val)
                f_idx = tl.where(upd3, offs, f_idx)
            f_best = tl.max(f_val)
            s_tok = tl.min(tl.where(f_val == f_best, f_idx, 2147483647))

    drawn = tl.where(greedy, g_tok, s_tok)
    tok = tl.where(forced_tok >= 0, forced_tok, drawn)

    # ---- budget rule 3 and the state update ----------------------------------------------
    if HAS_BUDGET:
        bp, nt, wu, ph, pos, stop, force_end, pending, free, need = _budget_rules(budget_ptr, row)
        freev = free & valid
        needv = need & valid
        is_end = freev & (tok == end0)
        replace = is_end & needv
        natural_end = is_end & (needv == 0)
        wait0 = tl.load(forced_ptr)  # only used when num_wait > 0
        tok = tl.where(replace & (num_wait > 0), wait0, tok)
        fpw = pending & (ph == THINKING)
        nt2 = nt + (freev & (natural_end == 0)).to(tl.int32) + fpw.to(tl.int32)
        wu2 = wu + replace.to(tl.int32)
        new_pos = tl.where(pending, pos + 1, pos)
        new_pos = tl.where(force_end | natural_end, num_wait + 1, new_pos)
        new_stop = tl.where(force_end, num_forced, stop)
        new_stop = tl.where(natural_end, num_wait + num_end, new_stop)
        new_pos = tl.where(replace, 1, new_pos)
        new_stop = tl.where(replace, num_wait, new_stop)
        ph2 = tl.where(force_end | natural_end, ENDING, ph)
        ph2 = tl.where((ph2 == ENDING) & (new_pos >= new_stop), DONE, ph2)
        tl.store(bp + NUM_THINKING, nt2, mask=valid)
        tl.store(bp + WAITS_USED, wu2, mask=valid)
        tl.store(bp + PHASE, ph2, mask=valid)
        tl.store(bp + POS, new_pos, mask=valid)
        tl.store(bp + STOP, new_stop, mask=valid)

    tok_safe = tl.minimum(tl.maximum(tok, 0), V - 1)
    xt = tl.load(row_ptr + tok_safe).to(tl.float32)
    logp = tl.where(valid, xt - lse, float("nan"))
    tok = tl.where(valid, tok, -1)
    tl.store(tok_ptr + row, tok.to(tl.int64))
    tl.store(logp_ptr + row, logp)


@triton.jit
def _sample_kernel(
        logits_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, offset_ptr,
        budget_ptr, forced_ptr, tok_ptr, logp_ptr,
        V, stride_row, num_wait, num_end, num_forced,
        HAS_BUDGET: tl.constexpr, BLOCK: tl.constexpr, HBLOCK: tl.constexpr,
        FAST_LOG: tl.constexpr, W: tl.constexpr):
    """One program per row: pass 1 over the whole row, then ``_finish``."""
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    end0, mask_end, forced_tok, do_draw, Tz = _plan(row, temp_ptr, topk_ptr, budget_ptr, forced_ptr,
                                                    num_wait, num_forced, HAS_BUDGET)
    k0, k1, c1, c2 = _philox_key(seed_ptr, offset_ptr, row)
    bad_any, fin_any, m_row, s_row, xmax, g_tok, s_best, s_tok = _pass1(
        row_ptr, 0, V, end0, mask_end, Tz, do_draw, c1, c2, k0, k1, BLOCK, FAST_LOG, W)
    valid = (bad_any == 0) & (fin_any > 0)
    lse = m_row + tl.log(s_row)
    _finish(row, row_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, c1, c2, k0, k1,
            budget_ptr, forced_ptr, tok_ptr, logp_ptr, V, num_wait, num_end, num_forced,
            end0, mask_end, forced_tok, do_draw, Tz, valid, lse, xmax, g_tok, s_tok,
            HAS_BUDGET, BLOCK, HBLOCK)


# split-row workspace: per (row, slice) 4 float32 and 4 int32 words
_WS_M = tl.constexpr(0)       # float32 words: max of the raw logits, sum of exp(x - max),
_WS_S = tl.constexpr(1)       # greedy maximum (end-masked), exact best Gumbel score
_WS_XMAX = tl.constexpr(2)
_WS_SBEST = tl.constexpr(3)
_WS_FLAGS = tl.constexpr(0)   # int32 words: bad | 2 * any-finite, greedy token, drawn token
_WS_GTOK = tl.constexpr(1)
_WS_STOK = tl.constexpr(2)


@triton.jit
def _partial_kernel(
        logits_ptr, temp_ptr, topk_ptr, seed_ptr, offset_ptr, budget_ptr, forced_ptr,
        wsf_ptr, wsi_ptr, V, stride_row, num_wait, num_forced, CHUNK,
        HAS_BUDGET: tl.constexpr, BLOCK: tl.constexpr, FAST_LOG: tl.constexpr, W: tl.constexpr):
    """Split-row pass 1: program (row, j) runs pass 1 over ``[j * CHUNK, (j + 1) * CHUNK)``
    and writes its partial statistics (exact values: the merge is exact)."""
    row = tl.program_id(0)
    j = tl.program_id(1)
    S = tl.num_programs(1)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    end0, mask_end, forced_tok, do_draw, Tz = _plan(row, temp_ptr, topk_ptr, budget_ptr, forced_ptr,
                                                    num_wait, num_forced, HAS_BUDGET)
    k0, k1, c1, c2 = _philox_key(seed_ptr, offset_ptr, row)
    lo = j * CHUNK
    hi = tl.minimum(lo + CHUNK, V)
    bad_any, fin_any, m_row, s_row, xmax, g_tok, s_best, s_tok = _pass1(
        row_ptr, lo, hi, end0, mask_end, Tz, do_draw, c1, c2, k0, k1, BLOCK, FAST_LOG, W)
    base = (row * S + j) * 4
    tl.store(wsf_ptr + base + _WS_M, m_row)
    tl.store(wsf_ptr + base + _WS_S, s_row)
    tl.store(wsf_ptr + base + _WS_XMAX, xmax)
    tl.store(wsf_ptr + base + _WS_SBEST, s_best)
    tl.store(wsi_ptr + base + _WS_FLAGS, bad_any + 2 * fin_any)
    tl.store(wsi_ptr + base + _WS_GTOK, g_tok)
    tl.store(wsi_ptr + base + _WS_STOK, s_tok)


@triton.jit
def _merge_kernel(
        logits_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, offset_ptr,
        budget_ptr, forced_ptr, tok_ptr, logp_ptr, wsf_ptr, wsi_ptr,
        V, stride_row, num_wait, num_end, num_forced, S,
        HAS_BUDGET: tl.constexpr, BLOCK: tl.constexpr, HBLOCK: tl.constexpr, SP: tl.constexpr):
    """Split-row finish: exact merge of the S partials (max; sum of exp rescaled to the
    common max; argmaxes by value, then the smallest index), then ``_finish``."""
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    end0, mask_end, forced_tok, do_draw, Tz = _plan(row, temp_ptr, topk_ptr, budget_ptr, forced_ptr,
                                                    num_wait, num_forced, HAS_BUDGET)
    k0, k1, c1, c2 = _philox_key(seed_ptr, offset_ptr, row)
    js = tl.arange(0, SP)
    jm = js < S
    base = (row * S + js) * 4
    m = tl.load(wsf_ptr + base + _WS_M, mask=jm, other=float("-inf"))
    s = tl.load(wsf_ptr + base + _WS_S, mask=jm, other=0.0)
    xm = tl.load(wsf_ptr + base + _WS_XMAX, mask=jm, other=float("-inf"))
    sb = tl.load(wsf_ptr + base + _WS_SBEST, mask=jm, other=float("-inf"))
    fl = tl.load(wsi_ptr + base + _WS_FLAGS, mask=jm, other=0)
    gt = tl.load(wsi_ptr + base + _WS_GTOK, mask=jm, other=2147483647)
    st = tl.load(wsi_ptr + base + _WS_STOK, mask=jm, other=2147483647)
    valid = (tl.max(fl & 1) == 0) & (tl.max(fl >> 1) > 0)
    m_row = tl.max(m)
    lse = m_row + tl.log(tl.sum(tl.where(m == float("-inf"), 0.0, s * tl.exp(m - m_row))))
    xmax = tl.max(xm)
    g_tok = tl.min(tl.where(xm == xmax, gt, 2147483647))
    s_best = tl.max(sb)
    s_tok = tl.min(tl.where(sb == s_best, st, 2147483647))
    _finish(row, row_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, c1, c2, k0, k1,
            budget_ptr, forced_ptr, tok_ptr, logp_ptr, V, num_wait, num_end, num_forced,
            end0, mask_end, forced_tok, do_draw, Tz, valid, lse, xmax, g_tok, s_tok,
            HAS_BUDGET, BLOCK, HBLOCK)


def _fast_log(t):
    """Hardware log2/rcp (inline PTX) on a GPU; the interpreter runs the exact ones."""
    return bool(t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))


def slices_for(B, V, num_sms):
    """Row slices per row on a GPU with ``num_sms`` SMs: enough programs to fill it (2 per SM) when
    B is small, slices of at least 2 tiles (each program also rescores its BLOCK lane candidates
    exactly, about two tiles' worth of work); 1 (one program per row) when B >= num_sms."""
    if B >= num_sms:
        return 1
    max_slices = max(1, triton.cdiv(V, 2 * _BLOCK))   # >= 2 tiles a slice (+ the candidate rescoring)
    return max(1, min(max_slices, triton.cdiv(2 * num_sms, B)))


def _num_slices(B, V, device):
    """:func:`slices_for` on the logits' GPU; 1 off CUDA (tests and the static check monkeypatch this)."""
    if device.type != "cuda":
        return 1
    return slices_for(B, V, torch.cuda.get_device_properties(device).multi_processor_count)


def sample_triton(logits, temperature, top_k, top_p, min_p, seed, offset,
                  budget=None, forced_ids=None, num_wait=0, num_end=0):
    """Triton implementation of the fused sampler (same contract as ``sample_reference``)."""
    B, V = logits.shape
    dev = logits.device
    tok = torch.empty(B, dtype=torch.int64, device=dev)
    logp = torch.empty(B, dtype=torch.float32, device=dev)
    if B == 0:
        return tok, logp
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    temperature = temperature.to(torch.float32).contiguous()
    top_k = top_k.to(torch.int32).contiguous()
    top_p = top_p.to(torch.float32).contiguous()
    min_p = min_p.to(torch.float32).contiguous()
    seed = seed.to(torch.int64).contiguous()
    offset = offset.to(torch.int64).contiguous()
    has_budget = budget is not None
    if has_budget:
        assert budget.dtype == torch.int32 and budget.is_contiguous() and budget.shape == (B, _budget.STATE_COLUMNS)
        forced = forced_ids.to(torch.int32).contiguous()
        num_forced = forced.numel()
    else:
        budget = tok  # dummy pointers, never dereferenced
        forced = tok
        num_forced = 1
    # tokens per thread-row of a pass-1 tile: 16 bytes of logits (4 fp32 or 8 bf16/fp16)
    w = 8 if logits.element_size() == 2 else 4
    block = min(_BLOCK * w // 4, max(16, triton.next_power_of_2(V)))
    hblock = min(_HBLOCK, max(16, triton.next_power_of_2(V)))
    fast = _fast_log(logits)
    S = _num_slices(B, V, dev)
    if S <= 1:
        _sample_kernel[(B,)](
            logits, temperature, top_k, top_p, min_p, seed, offset,
            budget, forced, tok, logp,
            V, logits.stride(0), int(num_wait), int(num_end), num_forced,
            HAS_BUDGET=has_budget, BLOCK=block, HBLOCK=hblock, FAST_LOG=fast, W=w, num_warps=_NUM_WARPS)
        return tok, logp
    chunk = triton.cdiv(triton.cdiv(V, S), block) * block   # a multiple of the tile
    S = triton.cdiv(V, chunk)
    wsf = torch.empty(B * S * 4, dtype=torch.float32, device=dev)
    wsi = torch.empty(B * S * 4, dtype=torch.int32, device=dev)
    _partial_kernel[(B, S)](
        logits, temperature, top_k, seed, offset, budget, forced, wsf, wsi,
        V, logits.stride(0), int(num_wait), num_forced, chunk,
        HAS_BUDGET=has_budget, BLOCK=block, FAST_LOG=fast, W=w, num_warps=_NUM_WARPS)
    _merge_kernel[(B,)](
        logits, temperature, top_k, top_p, min_p, seed, offset,
        budget, forced, tok, logp, wsf, wsi,
        V, logits.stride(0), int(num_wait), int(num_end), num_forced, S,
        HAS_BUDGET=has_budget, BLOCK=block, HBLOCK=hblock, SP=max(2, triton.next_power_of_2(S)),
        num_warps=_NUM_WARPS)
    return tok, logp
