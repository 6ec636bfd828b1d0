"""Triton kernel of the fused sampler (budget forcing + temperature/top-k/top-p/min-p).

Semantics: ``reference.py`` (the two-level draw: ``reference.draw``); random stream:
``philox.py``; budget rules: ``budget.py``.

Design (no host sync, no data-dependent allocation or grid: CUDA-graph capturable):

* **Pass 1** (``_pass1``, one read of the row): per group of ``GROUP_SIZE`` (256) tokens, the
  maximum of the raw logits (NaN-propagating: validity), ``sum(exp(x - max))`` (logsumexp) and
  ``sum(exp((x - max) / T))`` (the group's mass for the draw), written to a workspace of
  3 float32 words per group (12 B per 256 tokens). Per token: a load, a max, two ex2 and two
  adds (one of each without logprobs, and for rows whose draw sums are the raw sums: T = 1 and rows
  greedy by the temperature rule, ``_own_raw_sums``); no random numbers. A thread's loads of a tile all fall in one group (4 lanes per group
  in the per-row kernel's tiles of 8192 tokens over 4 warps: 2 shuffle levels per reduction instead of 5);
  bfloat16 rows are read as 32-bit pairs and widened by a shift or a mask when every word lies
  in the tensor's storage (``_bf16_pairs``: 4-byte aligned rows); the loop runs the whole tiles
  unmasked and the row's partial last tile after it.
* **Grid.** ``B >= #SMs`` (or off CUDA): one program of 4 warps per row (``_sample_kernel``: pass 1, then
  ``_finish`` reads the row's group stats back; ``_ROW_WARPS``). Small B: ``_partial_kernel`` runs pass 1 over
  ``B x S`` row slices (``_num_slices``: about 2 programs per SM, slices of whole tiles) and
  ``_merge_kernel`` (one program per row) runs ``_finish``. The group stats do not depend on the
  slicing, so both paths give the same tokens. The grid is a function of (B, V) only.
* **Finish** (``_finish``, one program per row): one scan over the group stats
  (``_scan_groups``): validity, logsumexp, the greedy group and the two best draw scores
  ``M / T + ln(S_z) + group noise`` (Philox stream 1); then one group of 256 tokens is re-read:
  the greedy token, or the draw inside the chosen group with the exact per-token noise. The
  end token of budget rule 3 is masked by recomputing its group's stats only.
* **Filters** (only rows with top-k / top-p / min-p): from the group stats, a bound ``L``
  that every kept token reaches (``_candidate_bound``: a bisection over the top 16 bits of the group
  maxima's order keys, one block reduction per bit; ``tl.sort`` of the 1024 group maxima took 3.3 times the
  SASS instructions and was most of a compile's time in Triton's ``TritonGPUCoalesce`` pass); one
  read of the groups that reach it compacts the raw logits of the tokens with ``z >= L / T`` (tested as ``x >=
  _raw_below(L, L / T)``: no division per token; its readers divide, ``_buffer_z``) into a per-row buffer
  (``_compact_candidates``, at most ``_CANDIDATES``; it walks a list of those groups, ``_list_groups``, a tile of
  listed groups at a time, as the draw's pass below does: no tile runs for one candidate group among others); the
  thresholds (top-k: the k-th largest key, ties kept; top-p: by mass against ``top_p * mass(top-k set)``) come from
  the buffer, not the row: up to ``_SORTED`` values by one sort (``_sort_desc``, a bitonic network of ``tl.gather``
  stages) and a running sum (``_sorted_thresholds``), more by a bisection over their order-preserving uint32
  keys, one read of the buffer per bit with an early exit (``_buffer_thresholds``, ``_buffer_bisect``; one read
  first rewrites the values as their keys and writes their masses beside them, padded to whole tiles,
  ``_buffer_keys``, so that the bisection's reads are unmasked loads and a compare: 4.38 SASS thread-instructions
  per value and step counting, 8.12 weighing masses (5.25 and 9.12 before their pointers were loop-carried), instead
  of 12.75 and 22.5 when each read recomputed key and
  mass, and 287 per value and level for the radix levels of 4-bit digits before them; 33 reads per select at worst;
  bf16, sm_90, Triton 3.9). A row with more candidates than the buffer holds bins them (``_compact_bounded``: the
  compaction stops at the tile that would overflow the buffer, one read of the rest bins every candidate by value
  and mass, 16 bins, ``_overflow_bound``) and compacts again only the values of the bin that holds the threshold
  (with top-k and top-p both on, of the bins from it up), from the groups that reach it; the select keeps the
  values above that bin whole, so top-k takes the (k - their count)-th largest buffered value and top-p's target
  drops by their mass: a kept set larger than the buffer still takes it (SmolLM2-135M at top-p 0.99 keeps up to
  8115 tokens). If that bin's values still overflow it, the row reads its candidate groups per radix level
  (``_radix_select``, ``_row_hist``). A row with no bound that is longer than the buffer skips the compaction and
  takes the radix levels.
  Then the chosen group is re-read with the filter: if its filtered score still beats every other
  group's unfiltered score, it still wins (filtering only removes mass); otherwise one filtered
  pass over the candidate groups that can still win (``_rescore``: those whose unfiltered score reaches the best
  filtered score known, the chosen group's or a bound of the row maximum's group's; ``_list_contenders``) recomputes their
  kept masses (``_filtered_groups``: per token one
  compare with the filters' threshold on the raw logits, ``_keep``: the larger of top-k / top-p's,
  ``_raw_threshold``, and min-p's, ``_minp_raw``: ``xmax + T ln(min_p)``; then the token's exp2 and a
  sum), and one pass over the group stats scores them (``_score_groups``).
  Row passes: 1 + the candidate share
  (compaction) + at most that share again (the draw); with an overflow whose threshold bin fits the buffer,
  + the share of the groups that reach that bin (the second compaction).
* Budget rules 1-3 and the state update are scalar code per row (``_plan``, ``_finish``).
* **Loop-carried pointers.** The reads and writes of the candidate buffer (``_buffer_keys``, ``_buffer_count``,
  ``_buffer_scan``, ``_buffer_hist``) carry each load's and store's pointer tensor from one iteration to the next
  (``p += HBLOCK``): LLVM then unrolls the bisection's reads with the copies' offsets in the loads' addresses
  (4.38 and 8.12 SASS thread-instructions per value instead of 5.25 and 9.12, above), and each such op saves a
  compile some time: for every tensor load and store whose pointer an op defines, Triton's ``TritonGPUCoalesce``
  pass (3.8 and 3.9 measured here) takes the op's multi-root slice (nearly the whole fused kernel), and skips it for
  a pointer that is a block argument (11 of ``_sample_kernel``'s 54 tensor memory ops). The other loops keep index
  addressing: carried pointers there too (pass 1, the group-stat scans, the list walks) saved 10% of the static
  check's compile time under Triton 3.8 but cost registers at the 128-register cap (spills, one inside a loop) and
  pass 1 a 64-bit add per vector address (``benchmarks/gpu_static/CHANGES.md``, "Loop-carried pointers").

The token equals the reference's except at float near-ties of either level (two group scores,
or two token scores in the chosen group, within ~1e-5 relative: ex2/lg2 approximations and a
different summation order; ``tests/helpers/sampling.py: decisive_rows`` is that rule), and for a token
within rounding of min-p's boundary (the kernel keeps the raw logits ``x >= xmax + T ln(min_p)``, the
reference the tokens with ``exp(z - zmax) >= min_p``).
bf16/fp16 logits are read natively (16-byte loads) and upcast in registers.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .. import _platform, _triton_layout
from . import budget as _budget
from . import params as _params
from . import philox as _philox
from .triton_math import _exp2, _philox4, _uniform

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

#: tokens per group of the two-level draw (philox.GROUP_SIZE)
GROUP = tl.constexpr(_philox.GROUP_SIZE)
#: below it a row is greedy (params.MIN_SAMPLING_TEMPERATURE: the greedy rule, with ``max(x) / T`` overflowing)
MIN_TEMPERATURE = tl.constexpr(_params.MIN_SAMPLING_TEMPERATURE)
#: the device functions of the passes, for the static cost model (benchmarks/gpu_static/cost_model.py): pass 1, a
#: select step's read of the candidate buffer (a bisection step weighing masses; ``count``: one counting them,
#: top-k's; ``keys``: the read that writes the buffer's keys and masses), the filtered draw pass (its tokens' read,
#: and ``draw_groups``: its scores' pass over the groups), the scan over the group stats, the list of a pass's
#: candidate groups (``list``, per group: the compaction's the cheapest of its loops, the draw's, which scores the
#: groups, the costliest), the compaction of the selects' candidates; the pass-1 tile (outside the
#: loop: a row's partial last tile) and its raw sums (``raw``: a call without logprobs skips them); and the code only some rows run: ``filtered`` (the bounds of rows with a
#: filter), ``thresholds`` (rows with top-k or top-p), ``redraw`` (rows with a filter: whether the chosen group
#: stands), ``rescore`` (rows whose chosen group does not), ``sort`` / ``bisect`` (the thresholds of candidates
#: that fit one sort / of more), ``overflow`` (rows whose candidates overflow the buffer)
COST_MODEL_ROLES = {"pass1": "_pass1", "select": "_buffer_scan", "count": "_buffer_count", "keys": "_buffer_keys",
                    "draw": "_filtered_groups", "draw_groups": "_score_groups",
                    "groups": "_scan_groups", "list": "_list_contenders", "compact": "_compact_candidates",
                    "overflow": "_compact_overflow",
                    "tile": "_pass1_tile", "raw": "_group_raw",
                    "filtered": "_filter_bounds", "redraw": "_filtered_redraw", "rescore": "_rescore",
                    "thresholds": "_select_thresholds", "sort": "_sorted_thresholds", "bisect": "_buffer_thresholds"}
#: a row's group stats (pass 1's planes of its workspace): maximum, raw sum, draw sum
STAT_PLANES = tl.constexpr(3)
#: float32 words per group in a row's workspace (``_ws_row``): the group stats, then the candidate groups' list
#: (``_list_groups``: int32 group indices, written by the filters)
WS_PLANES = tl.constexpr(STAT_PLANES + 1)
#: tokens per pass-1 tile of a whole row (``_sample_kernel``): 64 per thread of its 4 warps, so that each
#: thread's 16-byte loads (8 of them for bf16/fp16, 16 for fp32) all fall in one group and a group's
#: reductions cross 4 lanes (2 shuffle levels) instead of 32 (5); a program keeps 16 KB (bf16) or 32 KB (fp32)
#: of loads in flight per tile, as with 8 warps of 32 tokens. With the bf16 pairs and the unmasked loop, pass 1
#: went from 16.4 to 10.9 thread-instructions per bf16 token and from 24.75 to 9.9 per fp32 token at 8 warps
#: (static check, Triton 3.9 and 3.8, sm_90; the tiles alone took bf16 to 12.8), and to 10.2 and 9.1 at 4
_PASS1_TOKENS = 8192
#: software-pipelining depths of pass 1's loop that the wrappers can launch (``STAGES``; :func:`_pass1_stages`): 0 is
#: the plain loop, whose loads go straight to registers; 3 is ``tl.range(num_stages=3)``, Triton's pipeliner copying
#: the next two tiles into shared memory (``LDGSTS``) while the program reduces the current one, so a program keeps
#: loads in flight while it computes (bf16 V=151936 on sm_90, Triton 3.9: 689 SASS instructions per iteration
#: instead of 636, 33.9 KB of shared memory per program instead of 17.4; fp32 66.7 KB instead of 9.2). 0 by
#: default: a GPU run has to show the prefetch pays for its instructions (``bench_sampling_gpu.py``'s pipeline
#: suite times both on the same inputs)
PASS1_STAGES = (0, 3)
#: bytes of logits per thread in a tile of the passes over the candidate groups (the compaction,
#: ``_compact_candidates``, and the filtered draw's, ``_filtered_groups``; ``DBLOCK``, :func:`_finish_tiles`):
#: 8 fp32 or 16 16-bit tokens (with 8 warps and twice that, the pass-1 tile of 8192 bf16 tokens, a budget
#: variant with an odd row stride spilled 232 B in that loop on sm_80 at 128 registers, Triton 3.9; with 4
#: warps and twice that, the bf16 V=32000 ``_sample_kernel`` spilled 164 B in a loop on sm_90)
_DRAW_BYTES_PER_THREAD = 32
#: tokens per pass-1 tile of the split-row ``_partial_kernel`` (the least; :func:`_slice_tiles` takes larger ones
#: where the slices allow): slices are whole tiles (V = 151936 -> 75 at B = 1), or whole groups where whole
#: tiles make too few (:data:`_SPREAD`)
_SLICE_TOKENS = 2048
#: a small batch's pass 1 runs on at least ``1 / _SPREAD`` of the SMs (issue 14: B = 1 on >= 64 of an H100's
#: 132): where slices of whole ``_SLICE_TOKENS`` tiles make fewer programs, :func:`slices_for` cuts slices of
#: whole groups, each one masked tile (B = 1: V = 32000 -> 125 slices of one group, V = 128256 -> 72 of 7,
#: instead of 16 and 63 of 2048 tokens)
_SPREAD = 2
#: capacity of a row's candidate buffer (``_compact_candidates``: 16 KB per row, + 16 KB of masses): the values of the
#: tokens at or above the selects' bound, which top-k's bound keeps near k for peaked logits (the
#: benchmarks' k = 50: about 60-70 of them); a row with more buffers its threshold's bin of them (``_compact_bounded``)
_CANDIDATES = 4096
#: candidates whose thresholds come from one sort and a running sum (``_sorted_thresholds``) instead of
#: a bisection over the buffer (``_buffer_thresholds``): the benchmarks' top-k of 50 buffers 50-77 values
_SORTED = 256
#: values per thread and iteration of the selects' reads (``HBLOCK``: 512 values at 8 warps, 256 at 4): the
#: radix levels over an overflowing row's candidate groups (a ``[HBLOCK, 16]`` one-hot per tile; 4 values per
#: thread need > 128 registers) and the bisection's reads of the buffer
_HBLOCK_PER_THREAD = 2
#: group stats per step of the finish's scan over them (``FB``): at most this many, and at most
#: :data:`_SCAN_PER_THREAD` per thread; and the most group maxima the candidate bound reads at once (``NB``,
#: :func:`_finish_tiles`: a row of more groups, V > 262144, gets no bound)
_SCAN = 1024
#: 1024 at 8 warps, 512 at the per-row kernel's 4 (1024 there made three of its V >= 128256 variants reload a
#: spilled value in the compaction's loop on sm_90 at 128 registers, Triton 3.9)
_SCAN_PER_THREAD = 4
#: rows of more groups than this scan them in blocks (``FB``, :func:`_finish_tiles`; one compiled variant for
#: V = 65537 to 262144 instead of two: 8 fewer specializations to compile; the scan of a V=128256 row then
#: takes 834 SASS instructions instead of 556, bf16 sm_90, Triton 3.8); fewer, in the next power of 2
_SCAN_POW2_GROUPS = 256
#: warps per program of the per-row kernel (``_sample_kernel``: B >= #SMs, and off CUDA). Its straight-line code
#: (the finish's scalar chains: the bounds' bisection, the sort, the draw's group) runs once per warp, so 4
#: warps issue half the 8 warps' instructions for it: 21568 -> 13032 warp-instructions per top-k + top-p +
#: min-p row that keeps its group (bf16 V=32000, sm_90, Triton 3.9). The finish's tiles keep their sizes per
#: thread (:func:`_finish_tiles`), pass 1's per program (:data:`_PASS1_TOKENS`: its loads in flight), and with
#: a 128-register cap an SM holds 4 programs instead of 2: the same warps per SM at B >= 4 x #SMs
_ROW_WARPS = 4
#: warps per program of the split-row kernels (``_partial_kernel``, ``_merge_kernel``: B < #SMs). A merge
#: program is alone on its SM: 8 warps keep twice the loads of 4 in flight in its passes over the candidate groups
_SPLIT_WARPS = 8
#: ptxas's register cap for the kernels that run the finish (``_sample_kernel``, ``_merge_kernel``; the
#: issue's <= 128 in every budget variant). Without it ptxas on sm_80 kept 15 of them at 80 (48) registers
#: for a third CTA per SM and spilled in the finish's loops; with it they take 86-128 and 2 CTAs per SM, as
#: on sm_90 (static check). The pass-1 ``_partial_kernel`` has none: capped, ptxas gave it 56 registers
#: instead of 40 on sm_90 (4 CTAs per SM instead of 6)
_MAX_REGISTERS = 128
#: the launch option (CUDA only: Triton's HIP backend has no ``maxnreg``)
_REGISTER_CAP = {} if torch.version.hip else {"maxnreg": _MAX_REGISTERS}
_LOG2E = 1.4426950408889634


@triton.jit
def _order_key(z):
    """uint32 key with the order of the float32 ``z`` (z has no NaN; -0 must be canonicalised to +0)."""
    b = z.to(tl.int32, bitcast=True)
    k = b ^ ((b >> 31) & 0x7FFFFFFF)          # signed-int order of the floats
    return (k ^ (-2147483648)).to(tl.uint32, bitcast=True)  # to unsigned order


@triton.jit
def _plus_zero(z):
    """``z`` with -0 as +0 (``_order_key`` tells them apart; a select, which no compiler folds as it may
    ``z + 0.0``)."""
    return tl.where(z == 0.0, 0.0, z)


@triton.jit
def _to_z(x, Tz):
    """``z = x / T`` of raw logits, -0 -> +0: the one division by the temperature that the compaction's raw bound
    (:func:`_raw_below`) and every reader of the buffered logits (:func:`_buffer_z`) must share."""
    return _plus_zero(x / Tz)


@triton.jit
def _masked(row_ptr, offs, inb, end0, mask_end, Tz):
    """(x, z): the end-masked logits in float32 and ``z = x / T`` (-0 -> +0); out-of-row entries -inf."""
    x = tl.load(row_ptr + offs, mask=inb, other=float("-inf")).to(tl.float32)
    x = tl.where(mask_end & (offs == end0), float("-inf"), x)
    return x, _to_z(x, Tz)


@triton.jit
def _scaled(row_ptr, offs, inb, end0, mask_end, Tz):
    """z = (end-masked logits) / T in float32, -0 -> +0; out-of-row entries -inf."""
    _x, z = _masked(row_ptr, offs, inb, end0, mask_end, Tz)
    return z


@triton.jit
def _is_candidate(ws_row, g, V, Tz, Lz):
    """Whether group ``g`` (of the row's ``V`` tokens) can hold a candidate: its raw maximum
    (``ws_row[g]``) divided by T reaches ``Lz`` (-inf for a group past the row: True only when ``Lz``
    is -inf, so callers mask the tokens past the row themselves)."""
    return tl.load(ws_row + g, mask=g * GROUP < V, other=float("-inf")) / Tz >= Lz


@triton.jit
def _bin_hist(d, match, z, zmax, bins, need_mass):
    """Per bin ``d`` (0-15) of the values with ``match``: their count and (when ``need_mass``) their
    mass ``exp(z - zmax)``."""
    oh = (d[:, None] == bins[None, :]) & match[:, None]
    mass = tl.zeros([16], tl.float32)
    if need_mass:
        mass = tl.sum(tl.where(oh, tl.exp(z - zmax)[:, None], 0.0), 0)
    return tl.sum(oh.to(tl.int32), 0), mass


@triton.jit
def _digit_hist(z, cand, shift, prefix, zmax, bins, need_mass):
    """:func:`_bin_hist` per 4-bit digit ``(key(z) >> shift) & 15`` of the candidates whose higher
    digits equal ``prefix``."""
    hi = _order_key(z) >> shift
    return _bin_hist((hi & 15).to(tl.int32), cand & ((hi >> 4) == prefix), z, zmax, bins, need_mass)


@triton.jit
def _z_bin(z, Lz, scale):
    """The bin of ``z`` among 16 of width ``1 / scale`` from ``Lz`` up (below ``Lz``: 0; the last one
    takes everything above)."""
    return tl.minimum(tl.maximum((z - Lz) * scale, 0.0), 15.0).to(tl.int32)


@triton.jit
def _buffer_z(bp, inb, Tz):
    """The ``z = x / T`` (-0 -> +0) of buffered logits at the pointers ``bp`` (:func:`_compact_candidates` buffers
    the raw ``x``, end token masked): exactly the value the compaction tested; -inf where not ``inb``."""
    return _to_z(tl.load(bp, mask=inb, other=float("-inf")), Tz)


@triton.jit
def _buffer_keys(buf_ptr, w_ptr, nbuf, zmax, Tz, HBLOCK: tl.constexpr):
    """One read of the ``nbuf`` buffered logits (:func:`_buffer_z`): rewrites each, in place, as the order key
    (uint32) of its ``z`` and writes its mass ``exp(z - zmax)`` to ``w_ptr``; pads both to whole ``HBLOCK`` tiles
    with key 0 (below every value's key: only a NaN has it) and mass 0, so that the bisection's reads
    need no mask and compute neither (they cost 22.5 SASS thread-instructions per value weighing and
    12.75 counting when each read recomputed both; bf16, sm_90, Triton 3.9). Returns the smallest and
    the largest key."""
    offs0 = tl.arange(0, HBLOCK)
    kmin = tl.full([HBLOCK], 0xFFFFFFFF, tl.uint32)
    kmax = tl.zeros([HBLOCK], tl.uint32)
    bp = buf_ptr + offs0                         # loop-carried pointers (module docstring)
    kp = buf_ptr.to(tl.pointer_type(tl.uint32)) + offs0   # bp's places as keys, carried too (a cast is an op)
    wp = w_ptr + offs0
    for start in range(0, nbuf, HBLOCK):      # whole tiles: the last one's tail is the padding
        inb = start + offs0 < nbuf
        z = _buffer_z(bp, inb, Tz)
        key = tl.where(inb, _order_key(z), 0)
        tl.store(kp, key)
        tl.store(wp, tl.where(inb, tl.exp(z - zmax), 0.0))
        kmin = tl.minimum(kmin, tl.where(inb, key, 0xFFFFFFFF))
        kmax = tl.maximum(kmax, key)
        bp += HBLOCK
        kp += HBLOCK
        wp += HBLOCK
    return tl.min(kmin, 0), tl.max(kmax, 0)


@triton.jit
def _buffer_count(kbuf, nbuf, t, HBLOCK: tl.constexpr):
    """One counting read of the buffered keys (top-k's steps): how many are ``>= t`` (``t >= 1``),
    unmasked over whole ``HBLOCK`` tiles (:func:`_buffer_keys` padded them with key 0)."""
    cnt = tl.zeros([HBLOCK], tl.int32)
    kp = kbuf + tl.arange(0, HBLOCK)             # loop-carried pointers (module docstring)
    for _start in range(0, nbuf, HBLOCK):
        cnt += (tl.load(kp) >= t).to(tl.int32)
        kp += HBLOCK
    return tl.sum(cnt, 0)


@triton.jit
def _buffer_scan(kbuf, w_ptr, nbuf, t, HBLOCK: tl.constexpr):
    """One read of the buffered keys (and, where the caller uses it, their masses), unmasked over
    whole ``HBLOCK`` tiles (:func:`_buffer_keys` padded them): the count and the mass of the values
    whose key is ``>= t`` and the smallest such key (0xFFFFFFFF if none); ``t >= 1`` (the padding's
    key is 0). Per-lane partials, reduced once after the loop."""
    offs0 = tl.arange(0, HBLOCK)
    cnt = tl.zeros([HBLOCK], tl.int32)
    mass = tl.zeros([HBLOCK], tl.float32)
    kmin = tl.full([HBLOCK], 0xFFFFFFFF, tl.uint32)
    kp = kbuf + offs0                            # loop-carried pointers (module docstring)
    wp = w_ptr + offs0
    for _start in range(0, nbuf, HBLOCK):
        key = tl.load(kp)
        hit = key >= t
        cnt += hit.to(tl.int32)
        w = tl.load(wp)
        mass += tl.where(key < t, 0.0, w)      # not where(hit, load): Triton folds that into a masked (scalar) load
        kmin = tl.minimum(kmin, tl.where(hit, key, 0xFFFFFFFF))
        kp += HBLOCK
        wp += HBLOCK
    return tl.sum(cnt, 0), tl.sum(mass, 0), tl.min(kmin, 0)


@triton.jit
def _buffer_bisect(kbuf, w_ptr, nbuf, lo, hi, target, BY_MASS: tl.constexpr, HBLOCK: tl.constexpr):
    """The exact threshold over the buffered keys: the largest key ``t`` such that the values with
    ``key >= t`` weigh at least ``target`` (their count, or with ``BY_MASS`` their mass) and more
    than 0, taken as the smallest buffered key at or above it; and the mass of the values it keeps.
    ``lo`` is at most the answer (or the smallest key) and ``hi`` the largest key: a bisection over
    the bits from the highest one where they differ down, one read of the buffer per bit (:func:`_buffer_count`
    counting, :func:`_buffer_scan` weighing), which stops once ``[t, t + 2 bit)`` holds one value or, counting, once
    the values at or above ``t`` are exactly ``target``; then one read for the smallest key. When no ``t`` reaches
    the target (mass rounding), every value is kept (the smallest key)."""
    d = lo ^ hi
    # the highest bit where lo and hi differ: the exponent of float(d) (rounded up at worst, which adds
    # a step that changes nothing: lo and hi agree on that bit)
    e = tl.minimum(tl.maximum((d.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127, 0), 31)
    one = tl.full([], 1, tl.uint32)
    t = lo & ~((one << e.to(tl.uint32)) - 1)                      # lo, the bits below e cleared
    bit = tl.where(d > 0, one << e.to(tl.uint32), 0)
    n_t = nbuf                  # values at or above t (at most: an upper bound until a step sets it)
    n_hi = nbuf * 0             # values at or above t + 2 bit (none: every key is <= hi)
    go = (bit > 0) & (n_t - n_hi > 1)
    if not BY_MASS:
        go = go & (n_t.to(tl.float32) != target)
    while go:
        c = t | bit             # >= 1: bit > 0
        if BY_MASS:
            n, w, _kmin = _buffer_scan(kbuf, w_ptr, nbuf, c, HBLOCK)
        else:
            n = _buffer_count(kbuf, nbuf, c, HBLOCK)
            w = n.to(tl.float32)
        ok = (w >= target) & (w > 0.0)
        t = tl.where(ok, c, t)
        n_t = tl.where(ok, n, n_t)
        n_hi = tl.where(ok, n_hi, n)
        bit = bit >> 1
        go = (bit > 0) & (n_t - n_hi > 1)
        if not BY_MASS:
            go = go & (n_t.to(tl.float32) != target)
    # t = 0 (lo's high bits cleared) would count the padding: every value's key is >= 1
    _n, mass, t_min = _buffer_scan(kbuf, w_ptr, nbuf, tl.maximum(t, 1), HBLOCK)
    return tl.where(t_min == 0xFFFFFFFF, t, t_min), mass


@triton.jit
def _buffer_thresholds(buf_ptr, w_ptr, nbuf, zmax, Tz, total, top_k, k_on, top_p, p_on, above_mass,
                       HBLOCK: tl.constexpr):
    """Top-k / top-p thresholds of a row whose candidates fit the buffer but not one sort: the same
    rules as :func:`_sorted_thresholds` (top-k: the k-th largest key, ties kept; top-p: the largest
    key whose mass from the top reaches ``top_p`` x the top-k set's mass, ``total`` without top-k),
    each by :func:`_buffer_bisect` over the buffered values' keys, which one read first writes with
    their masses (:func:`_buffer_keys`, the key range too; ``w_ptr``: room for the masses, the buffer's
    capacity rounded up to ``HBLOCK``, as the buffer's; ``above_mass``: as there). Exact keys of candidates:
    every token the draw keeps is one of them."""
    lo, hi = _buffer_keys(buf_ptr, w_ptr, nbuf, zmax, Tz, HBLOCK)
    tl.debug_barrier()  # the keys and masses written by every warp, visible to the reads
    kbuf = buf_ptr.to(tl.pointer_type(tl.uint32))
    t_key = tl.full([], 0, tl.uint32)      # keep all
    mass_k = total
    if k_on:
        t_key, mass_k = _buffer_bisect(kbuf, w_ptr, nbuf, lo, hi, top_k.to(tl.float32), False, HBLOCK)
    if p_on:
        t_p, _mass = _buffer_bisect(kbuf, w_ptr, nbuf, tl.maximum(lo, t_key), hi, top_p * mass_k - above_mass, True,
                                    HBLOCK)
        t_key = tl.maximum(t_key, t_p)
    return t_key


@triton.jit
def _row_hist(row_ptr, V, end0, mask_end, Tz, gmax_ptr, Lz, shift, prefix, zmax, need_mass, lo, scale,
              Z_BINS: tl.constexpr, HBLOCK: tl.constexpr):
    """:func:`_digit_hist` over the row's candidate groups (:func:`_is_candidate`; tiles without one
    are not read) from ``lo`` on: a select level's read when the candidates overflow the buffer. With
    ``Z_BINS``, the values ``z >= Lz`` per bin of :func:`_z_bin` instead (``shift`` and ``prefix``
    unused): :func:`_overflow_bound`'s read."""
    bins = tl.arange(0, 16)
    offs0 = tl.arange(0, HBLOCK)
    cnt = tl.zeros([16], tl.int32)
    mass = tl.zeros([16], tl.float32)
    for start in range(lo, V, HBLOCK):
        offs = start + offs0
        cand = (offs < V) & _is_candidate(gmax_ptr, offs // GROUP, V, Tz, Lz)
        if tl.max(cand.to(tl.int32), 0) > 0:
            z = _scaled(row_ptr, offs, cand, end0, mask_end, Tz)
            if Z_BINS:
                c, m = _bin_hist(_z_bin(z, Lz, scale), cand & (z >= Lz), z, zmax, bins, need_mass)
            else:
                c, m = _digit_hist(z, cand, shift, prefix, zmax, bins, need_mass)
            cnt += c
            mass += m
    return cnt, mass


@triton.jit
def _buffer_hist(buf_ptr, nbuf, Lz, scale, zmax, Tz, need_mass, HBLOCK: tl.constexpr):
    """:func:`_bin_hist` per bin of :func:`_z_bin` of the ``nbuf`` buffered values (all ``z >= Lz``)."""
    bins = tl.arange(0, 16)
    offs0 = tl.arange(0, HBLOCK)
    cnt = tl.zeros([16], tl.int32)
    mass = tl.zeros([16], tl.float32)
    bp = buf_ptr + offs0                         # loop-carried pointers (module docstring)
    for start in range(0, nbuf, HBLOCK):
        inb = start + offs0 < nbuf
        z = _buffer_z(bp, inb, Tz)
        bp += HBLOCK
        c, m = _bin_hist(_z_bin(z, Lz, scale), inb, z, zmax, bins, need_mass)
        cnt += c
        mass += m
    return cnt, mass


@triton.jit
def _overflow_bound(row_ptr, ws_row, buf_ptr, nbuf, lo, Lz, zmax, total, top_k, k_on, top_p, p_on, V, end0, mask_end,
                    Tz, CAP, HBLOCK: tl.constexpr):
    """What a row whose candidates ``z >= Lz`` overflow the buffer compacts again: their values in 16 bins
    (:func:`_z_bin`) of equal width from ``Lz`` to ``zmax``, count and mass per bin, from the ``nbuf`` the
    compaction buffered and one read of the row's candidate groups from ``lo`` on (the tile where it stopped; a
    one-hot histogram, a radix level's instructions per value); ``b``, the highest bin from which up they still
    reach top-k's count (top-k on), or weigh ``top_p x total`` (top-p alone). The threshold lies in bin ``b``.
    With one select on, the values of bin ``b`` alone (the window: bins ``b`` to ``bhi = b``), and the count and
    the mass of those above it, which the select keeps whole; with top-k and top-p (top-p's threshold can lie
    anywhere above top-k's), bins ``b`` to ``bhi = 15``. A key range under 1e-3 of the values gets no bins
    (``fit`` False). Returns ``L2``, a bound at or below every value of bin ``b`` (its lower edge less 1/16 of a
    bin for the rounding of the bins and of the bound; ``Lz`` for ``b = 0``): the candidate groups' bound for
    the second compaction, the draw and the radix selects; whether the bins' values fit the buffer (``fit``);
    ``scale``, ``b`` and ``bhi``, which the second compaction tests with the histogram's own :func:`_z_bin`
    (so that it buffers exactly the values counted, and exactly those); the count and the mass above ``bhi``."""
    L2 = Lz
    fit = Lz != Lz                           # False
    scale = tl.full([], 0.0, tl.float32)
    b = tl.full([], 0, tl.int32)
    bhi = b + 15
    above_cnt = b
    above_mass = scale
    if zmax - Lz > 1e-3 * (1.0 + tl.abs(Lz) + tl.abs(zmax)):
        scale = 16.0 / (zmax - Lz)
        need_mass = k_on == 0
        # tiles of HBLOCK / 8 values (a [64, 16] one-hot at 8 warps, [32, 16] at 4): with HBLOCK's, ptxas spilled
        # the finish's live values and reloaded them inside the compactions' loops (16-bit budget _merge_kernel,
        # sm_90, Triton 3.9); with
        # HBLOCK / 4 (and the second compaction's DBLOCK / 4) the code every row runs grew (V = 32000, bf16:
        # 9600 warp-instructions of straight-line code per program against 9200 without this path, Triton 3.8)
        cnt, mass = _row_hist(row_ptr, V, end0, mask_end, Tz, ws_row, Lz, 0, 0, zmax, need_mass, lo, scale, True,
                              HBLOCK // 8)
        cb, mb = _buffer_hist(buf_ptr, nbuf, Lz, scale, zmax, Tz, need_mass, HBLOCK // 8)
        cnt += cb
        mass += mb
        bins = tl.arange(0, 16)
        ge = bins[None, :] >= bins[:, None]       # [b, b']: b' >= b
        ge_cnt = tl.sum(tl.where(ge, cnt[None, :], 0), 1)
        ge_mass = tl.sum(tl.where(ge, mass[None, :], 0.0), 1)
        reach = tl.where(k_on, ge_cnt >= top_k, ge_mass >= top_p * total)
        # the highest bin that reaches (it holds a value: the bin above it falls short); never below the lowest
        # non-empty one (when none reaches, by the rounding of the sums: every candidate is kept)
        b = tl.maximum(tl.max(tl.where(reach, bins, -1), 0), tl.min(tl.where(cnt > 0, bins, 16), 0))
        bhi = tl.where(k_on & p_on, 15, b)
        fit = tl.sum(tl.where((bins >= b) & (bins <= bhi), cnt, 0), 0) <= CAP
        # what lies above the bins: the very sums ``reach`` compared (0 above the top bin)
        above_cnt = tl.sum(tl.where(bins == bhi + 1, ge_cnt, 0), 0)
        above_mass = tl.sum(tl.where(bins == bhi + 1, ge_mass, 0.0), 0)
        L2 = tl.where(b > 0, Lz + (b.to(tl.float32) - 0.0625) * (zmax - Lz) * 0.0625, Lz)
    return L2, fit, scale, b, bhi, above_cnt, above_mass


@triton.jit
def _key_prefix_reaching(key, w, spread, others, target, X, Tz, BITS: tl.constexpr):
    """The largest uint32 ``t`` whose low ``32 - BITS`` bits are 0 such that the entries with
    ``key >= t`` weigh at least ``target``, and more than 0; 0 if none does. At a prefix ``c`` an
    entry weighs ``max(w, spread - others x exp((_from_key(c) - X) / T))``: with ``spread`` 0, ``w``
    (unit weights count entries); with a group's maximum as the key, its mass ``exp((M - X) / T)`` as
    ``w``, its whole mass as ``spread`` and 255 (with a margin) as ``others``, at least the mass of its
    tokens at or above ``c`` (its maximum is one of them, and its other 255 below ``c`` weigh less than
    ``exp((c - X) / T)`` each), a weight that falls as ``c`` rises, so the bisection over the key's
    top ``BITS`` bits, one reduction per bit, still finds the largest such prefix. With unit weights
    ``t`` is the ``target``-th largest key truncated to those bits, so a lower bound of it."""
    t = tl.full([], 0, tl.uint32)
    bit = tl.full([], 0x80000000, tl.uint32)
    kx = 1.4426950408889634 / Tz            # no division per step (a bound: an ulp of the exponent is noise)
    for _ in tl.static_range(BITS):
        c = t | bit
        below = others * tl.exp2((_from_key(c) - X) * kx)
        s = tl.sum(tl.where(key >= c, tl.maximum(w, spread - below), 0.0), 0)
        t = tl.where((s >= target) & (s > 0.0), c, t)
        bit = bit >> 1
    return t


@triton.jit
def _from_key(t):
    """The float32 whose ``_order_key`` is ``t`` (its inverse); -inf for a key at or below -inf's
    (0x007FFFFF; the keys below it are NaNs)."""
    k = (t ^ 0x80000000).to(tl.int32, bitcast=True)
    z = (k ^ ((k >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
    return tl.where(t <= 0x007FFFFF, float("-inf"), z)


@triton.jit
def _sort_desc(x, N: tl.constexpr):
    """The ``N`` values of ``x`` (``N`` a power of 2, at most 4096) in descending order: a bitonic
    network, each stage's partner values by one ``tl.gather``. ``tl.sort`` builds each stage from a
    reshape and a reduction: its 36 stages for 256 values were 538 of the bf16 budget kernel's 3057
    TTIR ops, and 629 SASS instructions against 407 for this one; ``TritonGPUCoalesce`` went from
    2.0 to 1.3 s (V=32000, sm_90, Triton 3.8)."""
    tl.static_assert(N <= 4096, "_sort_desc: at most 4096 values")
    i = tl.arange(0, N)
    for s in tl.static_range(1, 13):
        if (1 << s) <= N:
            for u in tl.static_range(s):
                # partner distance 2**(s - 1 - u) (a constexpr cannot be reassigned in the loop)
                p = tl.gather(x, i ^ (1 << (s - 1 - u)), 0)
                # merging blocks of 2**s: the lower index of a pair keeps the larger value in the
                # blocks that go down (bit s of the index 0; the last merge: every block)
                keep_max = ((i & (1 << (s - 1 - u))) == 0) == ((i & (1 << s)) == 0)
                x = tl.where(keep_max, tl.maximum(x, p), tl.minimum(x, p))
    return x


@triton.jit
def _sorted_thresholds(buf_ptr, nbuf, zmax, Tz, total, top_k, k_on, top_p, p_on, above_mass, PW: tl.constexpr):
    """Top-k / top-p thresholds of a row whose candidates fit one sort (``nbuf <= PW``): the buffered logits
    sorted in descending order, scaled to z, and their masses (``exp(z - zmax)``) summed from the top in that
    order; top-k's threshold is the k-th largest key (ties kept), top-p's the largest key whose mass
    from the top reaches ``top_p`` x the mass of the top-k set (without top-k: ``total``, the whole
    row's mass; the candidates hold more than ``top_p`` of it, ``_candidate_bound``), less ``above_mass`` (the mass
    of the values above a buffered window, :func:`_overflow_bound`: all kept; 0 otherwise); when none reaches it
    (the rounding of the sums), every buffered value is kept: the smallest key, as :func:`_buffer_bisect` does.
    Exact keys of candidates: every token the draw keeps is one of them."""
    i = tl.arange(0, PW)
    valid = i < nbuf                        # after the sort too: the padding (-inf) goes last
    # the logits sorted, then scaled: x -> z = x / T keeps their order (:func:`_buffer_z`)
    z = _to_z(_sort_desc(tl.load(buf_ptr + i, mask=valid, other=float("-inf")), PW), Tz)
    key = _order_key(z)
    cum = tl.cumsum(tl.where(valid, tl.exp(z - zmax), 0.0), 0)
    t_key = tl.full([], 0, tl.uint32)      # keep all
    mass_k = total                         # the row's mass (relative to exp(zmax))
    if k_on:
        t_key = tl.max(tl.where(i == top_k - 1, key, 0), 0)
        mass_k = tl.max(tl.where(valid & (key >= t_key), cum, 0.0), 0)   # the mass of the top-k set, ties in
    if p_on:
        t_p = tl.max(tl.where(valid & (cum >= top_p * mass_k - above_mass), key, 0), 0)
        t_p = tl.where(t_p == 0, tl.min(tl.where(valid, key, 0xFFFFFFFF), 0), t_p)
        t_key = tl.maximum(t_key, t_p)
    return t_key


@triton.jit
def _radix_select(row_ptr, V, end0, mask_end, Tz, zmax, kk, p, base_mass, need_mass, gmax_ptr, L,
                  BY_MASS: tl.constexpr, HBLOCK: tl.constexpr):
    """Smallest key prefix T such that the kept set ``key(z) >= T`` is the top-k set (BY_MASS False,
    ``kk`` = k) or the top-p set (BY_MASS True: the largest value whose mass from the top
    reaches ``p * base_mass``; ``base_mass < 0`` means the mass of the candidates), read from the row:
    a row whose candidates overflow the buffer (the others take :func:`_sorted_thresholds` or
    :func:`_buffer_thresholds`). Returns (T, mass of the kept set); with BY_MASS False the masses are
    only accumulated when ``need_mass`` (a runtime flag: top-p follows).

    Only the *candidates* count: tokens of groups whose raw maximum ``gmax_ptr[g]`` reaches ``L``
    after the division by T (``gmax / T >= L / T``: two raw values may round to one z; tiles
    without a candidate are not read), one read of them per 4-bit digit (``_row_hist``, early exit).
    When every token of the kept set is a candidate, the candidates with ``key >= T`` are exactly the
    kept set (``_candidate_bound``); ``T`` can be a prefix below the exact threshold, so the draw keeps
    nothing outside the candidates."""
    bins = tl.arange(0, 16)
    ge = bins[None, :] >= bins[:, None]       # [b, b']: b' >= b
    prefix = tl.full([], 0, tl.uint32)        # digits chosen so far
    above_cnt = tl.full([], 0, tl.int32)      # tokens with a larger prefix (all kept)
    above_mass = tl.full([], 0.0, tl.float32)
    sel_mass = tl.full([], 0.0, tl.float32)
    target = p * base_mass
    lvl = tl.full([], 0, tl.int32)           # a tensor: loop-carried in a while loop
    done = tl.full([], 0, tl.int32)
    while (lvl < 8) & (done == 0):
        shift = 28 - 4 * lvl
        cnt, mass = _row_hist(row_ptr, V, end0, mask_end, Tz, gmax_ptr, L / Tz, shift, prefix, zmax,
                              need_mass, 0, 0.0, False, HBLOCK)
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
    return prefix << (32 - 4 * lvl), above_mass + sel_mass


@triton.jit
def _ws_row(ws_ptr, row, NGR):
    """Row ``row``'s workspace: :data:`WS_PLANES` planes of ``NGR`` words."""
    return ws_ptr + row.to(tl.int64) * (WS_PLANES * NGR)


@triton.jit
def _group_list(ws_row, NGR):
    """Where a row's candidate-group list lives: the workspace's plane after the group stats, as int32."""
    return (ws_row + STAT_PLANES * NGR).to(tl.pointer_type(tl.int32))


@triton.jit
def _list_groups(ws_row, NGR, V, Tz, Lz, FB: tl.constexpr):
    """Writes the row's candidate groups (raw maximum ``/ T >= Lz``, :func:`_is_candidate`) in increasing order to
    its list (:func:`_group_list`), ``FB`` group stats per step; returns how many. The passes over the candidate
    groups then walk the list, tiles of whole candidate groups: walking the row, a tile of 16 groups ran its whole
    work as soon as one of them was a candidate (the 50 groups of SmolLM2-135M's top-k 50 sat in 10 of its 12 bf16
    tiles, against 4 tiles of listed groups)."""
    return _list_contenders(ws_row, NGR, V, Tz, Lz, float("-inf"), 0, 0, 0, 0, FB, False)


@triton.jit
def _list_contenders(ws_row, NGR, V, Tz, Lz, floor, c1, c2, k0, k1, FB: tl.constexpr, SCORED: tl.constexpr):
    """:func:`_list_groups`; with ``SCORED``, only the candidate groups whose unfiltered draw score ``M / T +
    ln(S_z) + group noise`` (as ``_scan_groups`` scores them; the end token's group by its unmasked stats, which
    only raise it) reaches ``floor``: filtering only removes mass, so no other group's filtered score can reach
    it. Their kept masses' plane (1, :func:`_filtered_groups`) gets 0 for the candidates left out, so that
    :func:`_score_groups` skips them. ``FB`` groups per step as the scan reads them (one Philox call per 4)."""
    lst = _group_list(ws_row, NGR)
    n = tl.full([], 0, tl.int32)
    for g0 in range(0, NGR, FB):
        g = g0 + tl.arange(0, FB)
        c = _is_candidate(ws_row, g, V, Tz, Lz) & (g < NGR)
        if SCORED:
            M = tl.load(ws_row + g, mask=c, other=0.0)
            SZ = tl.load(ws_row + 2 * NGR + g, mask=c, other=1.0)
            h = tl.reshape(_group_noise4(g0 // 4 + tl.arange(0, FB // 4), c1, c2, k0, k1), [FB])
            out = c & ~(M / Tz + tl.log(SZ) + h >= floor)
            tl.store(ws_row + NGR + g, tl.zeros_like(M), mask=out)
            c = c & ~out
        ci = c.to(tl.int32)
        tl.store(lst + n + tl.cumsum(ci, 0) - 1, g, mask=c)
        n += tl.sum(ci, 0)
    tl.debug_barrier()  # the list written by every warp, visible to the passes that walk it
    return n


@triton.jit
def _listed(ws_row, NGR, nlist, t0, GT: tl.constexpr):
    """The groups of list entries ``[t0 / GROUP, + GT)`` (``t0``: a multiple of ``GROUP``, the list walked in tokens
    so that a loop's step is its tile's tokens) and which entries exist."""
    i = t0 // GROUP + tl.arange(0, GT)
    on = i < nlist
    return tl.load(_group_list(ws_row, NGR) + i, mask=on, other=0), on


@triton.jit
def _compact_candidates(row_ptr, ws_row, NGR, nlist, buf_ptr, Lz, xL, V, end0, mask_end, Tz, CAP, scale, blo, bhi,
                        DBLOCK: tl.constexpr, BINS: tl.constexpr):
    """One read of the ``nlist`` candidate groups listed (:func:`_list_groups`): writes the raw logit ``x`` (end token
    masked) of each of their tokens with ``z = x / T >= Lz`` (with ``BINS``, only those whose bin of
    :func:`_overflow_bound`'s histogram, ``_z_bin(z, Lz, scale)``, lies in ``[blo, bhi]``) to ``buf_ptr`` in row
    order, at most ``CAP`` of them; the readers scale them (:func:`_buffer_z`). The test is ``x >= xL``, ``xL`` the
    smallest float with ``x / T >= Lz`` (:func:`_raw_below`): the same set without a division per token (static
    check: 35.3 -> 31.0 SASS thread-instructions per bf16 token at V=32000, sm_90, Triton 3.9). Returns how many it
    wrote and where it stopped: ``V``, or the first token of the first tile of ``DBLOCK / GROUP`` listed groups whose
    values would overflow the buffer (none of them written: :func:`_compact_overflow` goes on from there). The
    thresholds then come from these few values, not the row (``_sorted_thresholds``, or ``_buffer_thresholds``)."""
    GT: tl.constexpr = DBLOCK // GROUP
    tok = tl.arange(0, GROUP)[None, :]
    n = tl.full([], 0, tl.int32)
    stop = n + V
    for t0 in range(0, nlist * GROUP, DBLOCK):
        if stop == V:            # (a compare per tile after the stop: a ``range`` of known step)
            g, on = _listed(ws_row, NGR, nlist, t0, GT)
            offs = g[:, None] * GROUP + tok
            inb = (offs < V) & on[:, None]
            x, z = _masked(row_ptr, offs, inb, end0, mask_end, Tz)
            take = inb & (x >= xL)
            if BINS:
                d = _z_bin(z, Lz, scale)
                take = take & (d >= blo) & (d <= bhi)
            sel = take.to(tl.int32)
            per_group = tl.sum(sel, 1)
            fits = n + tl.sum(per_group, 0) <= CAP
            pos = n + (tl.cumsum(per_group, 0) - per_group)[:, None] + tl.cumsum(sel, 1) - 1
            tl.store(buf_ptr + pos, x, mask=(sel * fits.to(tl.int32)) > 0)
            n = tl.where(fits, n + tl.sum(per_group, 0), n)
            stop = tl.where(fits, stop, tl.min(tl.where(on, g, NGR), 0) * GROUP)
    return n, stop


@triton.jit
def _compact_bounded(row_ptr, ws_row, NGR, buf_ptr, L, zmax, total, top_k, k_on, top_p, p_on, V, end0, mask_end, Tz,
                     CAP, DBLOCK: tl.constexpr, HBLOCK: tl.constexpr, FB: tl.constexpr):
    """The candidates ``z >= Lz = L / T`` of the raw bound ``L`` (``x >= xL``, :func:`_raw_below`) compacted into
    the buffer (:func:`_compact_candidates`); when they
    overflow it, a histogram of their values (:func:`_overflow_bound`: the rest of the candidate groups read from
    the tile where it stopped) tells the bin that holds the threshold, and where that bin's values (with top-k and
    top-p: the bins from it up) fit the buffer, they are compacted again, from the groups that reach the bin
    (``Lb``), and the count and mass of the values above them, which the selects keep whole, come out. Returns the
    buffered count (``CAP + 1``: they still overflow, the selects read the candidate groups above ``Lb``), the bound
    ``Lb`` (raised or not) at or above which every kept value lies, and the count and the mass (relative to
    ``exp(zmax)``) of the candidates above the threshold's bins (0 unless they overflowed; then whether those bins
    fit or not). Row reads: the candidate groups once; with an overflow, the groups that reach the threshold's bin
    once more where it fits."""
    Lz = L / Tz
    xL = _raw_below(L, Lz, Tz)
    nlist = _list_groups(ws_row, NGR, V, Tz, Lz, FB)
    zero = tl.full([], 0.0, tl.float32)   # (not Lz * 0: NaN for a bound of -inf)
    nbuf, stop = _compact_candidates(row_ptr, ws_row, NGR, nlist, buf_ptr, Lz, xL, V, end0, mask_end, Tz, CAP, zero,
                                     0, 0, DBLOCK, False)
    tl.debug_barrier()  # the values written by every warp, visible to the reads
    Lb = Lz
    above_cnt = nbuf * 0
    above_mass = zero
    if stop < V:
        nbuf, Lb, above_cnt, above_mass = _compact_overflow(row_ptr, ws_row, NGR, buf_ptr, nbuf, stop, Lz, xL, zmax,
                                                            total, top_k, k_on, top_p, p_on, V, end0, mask_end, Tz,
                                                            CAP, DBLOCK, HBLOCK, FB)
    return nbuf, Lb, above_cnt, above_mass


@triton.jit
def _compact_overflow(row_ptr, ws_row, NGR, buf_ptr, nbuf, stop, Lz, xL, zmax, total, top_k, k_on, top_p, p_on, V,
                      end0, mask_end, Tz, CAP, DBLOCK: tl.constexpr, HBLOCK: tl.constexpr, FB: tl.constexpr):
    """:func:`_compact_bounded`'s path for candidates that overflow the buffer (``nbuf`` buffered, the compaction
    stopped at ``stop``): the histogram (:func:`_overflow_bound`), then, where the threshold's bins fit the buffer,
    their values compacted again from the groups that reach them. Returns as :func:`_compact_bounded` does. Its own
    function so that the static cost model can leave its code out of the rows that fit the buffer (the module's
    ``overflow`` role)."""
    Lb, fit, scale, b, bhi, above_cnt, above_mass = _overflow_bound(
        row_ptr, ws_row, buf_ptr, nbuf, stop, Lz, zmax, total, top_k, k_on, top_p, p_on, V, end0, mask_end, Tz,
        CAP, HBLOCK)
    nbuf = CAP + 1
    if fit:
        tl.debug_barrier()  # every read of the buffer done before it is rewritten
        # in tiles of DBLOCK / 8, whole groups (V < 2048 compiles it too): with DBLOCK's, the odd-stride 16-bit
        # budget _merge_kernel reloaded spilled values inside both compactions' loops, and with DBLOCK / 2 the
        # 16-bit budget _sample_kernel of an odd V (sm_90, Triton 3.9); see _overflow_bound for / 8
        D8: tl.constexpr = DBLOCK // 8 if DBLOCK >= 8 * GROUP else GROUP
        nlist = _list_groups(ws_row, NGR, V, Tz, Lb, FB)       # the groups that reach the bin
        nbuf, stop = _compact_candidates(row_ptr, ws_row, NGR, nlist, buf_ptr, Lz, xL, V, end0, mask_end, Tz, CAP,
                                         scale, b, bhi, D8, True)
        tl.debug_barrier()
        nbuf = tl.where(stop < V, CAP + 1, nbuf)
    return nbuf, Lb, above_cnt, above_mass


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
def _sampled_temperature(temp):
    """The greedy rule's temperature test (``params.greedy_rows``, the part without the row maximum):
    whether a row at ``temp`` is sampled (False below ``MIN_TEMPERATURE`` and for a NaN temperature, an
    invalid row), and the temperature its draw sums use (1 when it is not sampled)."""
    sampled = temp >= MIN_TEMPERATURE
    return sampled, tl.where(sampled, temp, 1.0)


@triton.jit
def _plan(row, temp_ptr, topk_ptr, budget_ptr, forced_ptr, num_wait, num_forced, HAS_BUDGET: tl.constexpr):
    """Budget rules 1 and 2 (forced tokens) and rule 3's end masking, for one row: read only.
    Returns (end0, mask_end, forced_tok, do_draw, Tz); ``do_draw`` before the greedy rule's overflow
    test, which needs the row maximum (``_finish``)."""
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
    sampled, Tz = _sampled_temperature(temp)
    do_draw = sampled & (forced_tok < 0)
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
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _group_stats(a, b, kz, PAIRS: tl.constexpr, FAST_LOG: tl.constexpr, H_AXIS: tl.constexpr):
    """Float32 tiles of groups (:func:`_group_tile`; and ``b`` when PAIRS) -> per group (max, sum
    exp2((x - max) * kz)), ``kz = log2e / T``, and the max broadcast over the tile (for :func:`_group_raw`); the
    max propagates NaN; a group of -inf has max -inf and sum 0. Elementwise first, then the H axis's reductions
    in a thread; only the last axis crosses lanes."""
    if PAIRS:
        mx = _max_nan(a, b)
    else:
        mx = a
    m = tl.reduce(tl.reduce(mx, H_AXIS, _max_nan), 1, _max_nan)
    ms = _per_group(tl.where(m > float("-inf"), m, 0.0), H_AXIS)
    ez = _exp2((a - ms) * kz, FAST_LOG)
    if PAIRS:
        ez += _exp2((b - ms) * kz, FAST_LOG)
    return m, tl.sum(tl.sum(ez, H_AXIS), 1), ms


@triton.jit
def _group_raw(a, b, ms, PAIRS: tl.constexpr, FAST_LOG: tl.constexpr, H_AXIS: tl.constexpr):
    """Per group the raw sum exp2((x - max) * log2e) of a tile (``ms``: :func:`_group_stats`'s broadcast max):
    the logprobs' logsumexp, one more exp2 per token, computed only when the call returns logprobs and the row's
    draw sums are not the raw sums (:func:`_own_raw_sums`)."""
    er = _exp2((a - ms) * 1.4426950408889634, FAST_LOG)
    if PAIRS:
        er += _exp2((b - ms) * 1.4426950408889634, FAST_LOG)
    return tl.sum(tl.sum(er, H_AXIS), 1)


@triton.jit
def _group_tile(base, H: tl.constexpr, W: tl.constexpr, H_AXIS: tl.constexpr):
    """The offsets of a tile of groups: ``base[g] + h * W + t`` (``base``: a ``[GT]`` tensor, group g's
    first unit; h < H, t < W), laid out ``[H, GT, W]`` (``H_AXIS`` 0) or ``[GT, H, W]`` (1). The wrapper
    passes the order in which this Triton gives a thread the H vector loads of one group and puts the lanes
    across the groups (``_triton_layout.REGISTER_AXIS``); a group's reductions (``tl.sum(tl.sum(x, H_AXIS), 1)``) then
    cross ``W / vector`` lanes."""
    hw = tl.arange(0, H)[:, None] * W + tl.arange(0, W)[None, :]
    return _per_group(base, H_AXIS) + tl.expand_dims(hw, 1 - H_AXIS)


@triton.jit
def _per_group(v, H_AXIS: tl.constexpr):
    """A ``[GT]`` tensor of per-group values broadcastable against a :func:`_group_tile` tile."""
    return tl.expand_dims(tl.expand_dims(v, 1), H_AXIS)


@triton.jit
def _tile(row_ptr, start, hi, idx, FULL: tl.constexpr, PAIRS: tl.constexpr):
    """A pass-1 tile in float32: (a, b) = the tokens ``start + idx`` (b = a, unused), or with PAIRS
    the 32-bit words ``start / 2 + idx`` of bfloat16 pairs: a = the even tokens, b = the odd ones
    (a bfloat16 is the high half of its float32: one shift or mask per token, no convert).
    FULL: the whole tile is in range (unmasked 16-byte loads); else out-of-range tokens are -inf."""
    if PAIRS:
        w_ptr = row_ptr.to(tl.pointer_type(tl.int32))
        wo = start // 2 + idx
        if FULL:
            w = tl.load(w_ptr + wo)
        else:   # the words below hi // 2: 16-byte vectors where hi is a multiple of 8 (a slice's end, V % 16 == 0)
            w = tl.load(w_ptr + wo, mask=wo < hi // 2, other=-8323200)   # 0xff80ff80: two bf16 -inf
            if hi % 2 == 1:   # the word straddling an odd hi keeps its even token; its odd one is made -inf
                w = tl.where(wo == hi // 2, (tl.load(w_ptr + hi // 2) & 65535) | -8388608, w)   # high := 0xff80
        a = (w << 16).to(tl.float32, bitcast=True)
        b = (w & -65536).to(tl.float32, bitcast=True)
    else:
        offs = start + idx
        if FULL:
            a = tl.load(row_ptr + offs).to(tl.float32)
        else:
            a = tl.load(row_ptr + offs, mask=offs < hi, other=float("-inf")).to(tl.float32)
        b = a
    return a, b


@triton.jit
def _pass1_tile(row_ptr, ws_row, NGR, start, hi, idx, kz, own_raw, BLOCK: tl.constexpr, FULL: tl.constexpr,
                PAIRS: tl.constexpr, FAST_LOG: tl.constexpr, H_AXIS: tl.constexpr):
    """The group stats of one tile (``_tile``, ``_group_stats``) into the row's workspace planes
    ``ws_row[p * NGR + g]`` (p = max, raw sum, draw sum); only groups that start before ``hi``. The raw sum
    (``_group_raw``) only when ``own_raw`` (a runtime flag, uniform: a branch, not a specialisation;
    :func:`_own_raw_sums`); the raw plane is otherwise left unwritten: the call returns no logprobs, or the draw
    sums are the raw sums (:func:`_raw_plane`)."""
    a, b = _tile(row_ptr, start, hi, idx, FULL, PAIRS)
    m, sz, ms = _group_stats(a, b, kz, PAIRS, FAST_LOG, H_AXIS)
    g = start // GROUP + tl.arange(0, BLOCK // GROUP)
    gm = g * GROUP < hi
    tl.store(ws_row + g, m, mask=gm)
    tl.store(ws_row + 2 * NGR + g, sz, mask=gm)
    if own_raw:
        tl.store(ws_row + NGR + g, _group_raw(a, b, ms, PAIRS, FAST_LOG, H_AXIS), mask=gm)


@triton.jit
def _pass1(row_ptr, ws_row, NGR, lo, hi, kz, own_raw, BLOCK: tl.constexpr, H: tl.constexpr, PAIRS: tl.constexpr,
           FAST_LOG: tl.constexpr, H_AXIS: tl.constexpr, STAGES: tl.constexpr):
    """Pass 1 over the tokens ``[lo, hi)`` (``lo`` a multiple of GROUP): the whole tiles unmasked in
    the loop (16-byte vector loads whenever the row start is aligned: row stride a multiple of 16
    elements, padded rows of an odd vocabulary included), then the last, partial one masked (a slice of
    fewer tokens than BLOCK: that one only).
    Tiles of BLOCK tokens, ``BLOCK / GROUP`` groups of U units (tokens, or with PAIRS ``GROUP / 2``
    bfloat16 pairs) as H runs of ``U / H`` (:func:`_group_tile`): a thread's H vector loads all fall in
    one group, so a group's reductions cross ``U / (H x vector)`` lanes (4 in the per-row kernel's
    8192-token tiles over 4 warps; 32 in the split rows' 2048-token tiles of 16-bit logits).
    ``own_raw``: also the raw sums (:func:`_pass1_tile`). ``STAGES``: the loop's software-pipelining depth
    (:data:`PASS1_STAGES`)."""
    GT: tl.constexpr = BLOCK // GROUP
    U: tl.constexpr = GROUP // 2 if PAIRS else GROUP
    idx = _group_tile(tl.arange(0, GT) * U, H, U // H, H_AXIS)
    full_end = lo + (hi - lo) // BLOCK * BLOCK
    if STAGES > 1:   # pipelined (:data:`PASS1_STAGES`); the interpreter runs it as the plain loop
        for start in tl.range(lo, full_end, BLOCK, num_stages=STAGES):
            _pass1_tile(row_ptr, ws_row, NGR, start, hi, idx, kz, own_raw, BLOCK, True, PAIRS, FAST_LOG, H_AXIS)
    else:
        for start in range(lo, full_end, BLOCK):
            _pass1_tile(row_ptr, ws_row, NGR, start, hi, idx, kz, own_raw, BLOCK, True, PAIRS, FAST_LOG, H_AXIS)
    if full_end < hi:
        _pass1_tile(row_ptr, ws_row, NGR, full_end, hi, idx, kz, own_raw, BLOCK, False, PAIRS, FAST_LOG, H_AXIS)


@triton.jit
def _group_noise4(ctr, c1, c2, k0, k1):
    """Gumbel noise [R, 4] of the groups ``4 * ctr + j``: one Philox call (stream 1) per row."""
    x0, x1, x2, x3 = _philox4(ctr.to(tl.uint32), c1, c2, k0, k1, STREAM=1)
    j = tl.arange(0, 4)[None, :]
    w = tl.where(j == 0, x0[:, None], tl.where(j == 1, x1[:, None], tl.where(j == 2, x2[:, None], x3[:, None])))
    return -tl.log(-tl.log(_uniform(w)))


@triton.jit
def _gumbel(i, c1, c2, k0, k1, STREAM: tl.constexpr):
    """Gumbel noise of indices ``i`` (int32 tensor): Philox word ``i & 3`` of counter ``i >> 2``;
    stream 0 for tokens (philox.gumbel), 1 for groups (philox.group_gumbel)."""
    x0, x1, x2, x3 = _philox4((i >> 2).to(tl.uint32), c1, c2, k0, k1, STREAM=STREAM)
    j = i & 3
    w = tl.where(j == 0, x0, tl.where(j == 1, x1, tl.where(j == 2, x2, x3)))
    return -tl.log(-tl.log(_uniform(w)))


@triton.jit
def _max_mass(x, kz, AXIS: tl.constexpr):
    """(max of x, sum of exp2((x - max) * kz) over the finite entries) along AXIS; (-inf, 0) when
    none is finite."""
    m = tl.max(x, AXIS)
    ms = tl.where(m > float("-inf"), m, 0.0)
    if AXIS == 1:
        ms = ms[:, None]
    return m, tl.sum(tl.where(x > float("-inf"), tl.exp2((x - ms) * kz), 0.0), AXIS)


@triton.jit
def _raw_threshold(zt, Tz):
    """The smallest float32 ``x`` with ``x / T >= zt`` (the division the kernel scales by, monotone in
    ``x``): top-k / top-p's threshold on the raw logits, so that the draw compares without dividing; -inf
    for ``zt = -inf``. ``zt x T`` lies within a few ulp of it; four steps of an ulp each way find it."""
    x = zt * Tz
    for _i in tl.static_range(4):
        x = tl.where(x / Tz < zt, _from_key(_order_key(x) + 1), x)
    return _steps_down(x, zt, Tz)


@triton.jit
def _steps_down(x, zt, Tz):
    """From an ``x`` with ``x / T >= zt``, up to four ulp steps down while the float below still divides to
    ``>= zt``: the smallest such float when it lies within four steps (the normal range)."""
    for _i in tl.static_range(4):
        below = _from_key(_order_key(x) - 1)
        x = tl.where(below / Tz >= zt, below, x)
    return x


@triton.jit
def _raw_below(x0, zt, Tz):
    """:func:`_raw_threshold` from above: the smallest float32 ``x <= x0`` with ``x / T >= zt``, given ``x0 / T >=
    zt`` (a raw bound and its ``zt = x0 / T``): the floats that divide to one float32 value are at most 3 in the
    normal range, so four steps of an ulp down find it, half the steps and divisions of the search both ways; -inf
    for ``zt = -inf`` (a finite bound whose ``x0 / T`` overflows: every x reaches it). Not exact where ``zt`` is 0 or
    subnormal and T above 4: more floats divide to one value there (logits within ``T x 2**-126`` of zero)."""
    return tl.where(zt == float("-inf"), float("-inf"), _steps_down(x0, zt, Tz))


@triton.jit
def _rel_mass(x, xmax, kz):
    """``exp((x - xmax) / T)``: a token's draw mass relative to the row's (end-masked) maximum."""
    return tl.exp2((x - xmax) * kz)


@triton.jit
def _minp_raw(X, Tz, min_p):
    """Min-p's threshold on the raw logits, ``X + T ln(min_p)`` (``X`` the row's end-masked maximum): a token's
    probability reaches ``min_p`` times the largest's when its raw logit reaches it (the reference tests
    ``exp(z - zmax) >= min_p``: the two differ only for a logit within float32 rounding of the threshold); -inf
    when min-p is off (``min_p <= 0``)."""
    return tl.where(min_p > 0.0, X + Tz * tl.log(min_p), float("-inf"))


@triton.jit
def _keep(x, xt):
    """The filters' rule per token, on its raw logit ``x``: keep ``x >= xt``, ``xt`` the larger of top-k / top-p's
    threshold (``_raw_threshold``: ``x / T`` at or above it) and min-p's (:func:`_minp_raw`); -inf keeps every
    token."""
    return x >= xt


@triton.jit
def _argmax_first(v, idx):
    """(max of v, first index of it)."""
    best = tl.max(v)
    return best, tl.min(tl.where(v == best, idx, 2147483647))


@triton.jit
def _scan_groups(ws_row, NGR, ge, Me, SZe, Tz, want_lp, raw_at, c1, c2, k0, k1, FB: tl.constexpr):
    """One pass over a row's group stats. Group ``ge`` (the end token's, -1 if none is masked) takes
    the masked stats ``(Me, SZe)`` for the draw and the greedy maximum. Returns (bad, any finite,
    logsumexp of the raw logits (only with ``want_lp``, 0 or 1: otherwise pass 1 wrote no raw sums; from the plane at
    ``raw_at``, :func:`_raw_plane`), greedy maximum X, its first group, best draw score, its group,
    the runner-up draw score, the draw mass ``sum(exp(z - X / T))`` of the row)."""
    R: tl.constexpr = FB // 4
    r4 = tl.arange(0, R)
    fb = 4 * r4[:, None] + tl.arange(0, 4)[None, :]   # [R, 4]: group g0 + 4 r + j
    bad = tl.full([], 0, tl.int32)
    fin = tl.full([], 0, tl.int32)
    m_run = tl.full([], float("-inf"), tl.float32)
    s_run = tl.full([], 0.0, tl.float32)
    X = tl.full([], float("-inf"), tl.float32)
    gX = tl.full([], 0, tl.int32)
    b1 = tl.full([], float("-inf"), tl.float32)
    g1 = tl.full([], 0, tl.int32)
    b2 = tl.full([], float("-inf"), tl.float32)
    zs_run = tl.full([], 0.0, tl.float32)       # draw mass relative to exp(X / T)
    for g0 in range(0, NGR, FB):
        g = g0 + fb
        gm = g < NGR
        M = tl.load(ws_row + g, mask=gm, other=float("-inf"))
        SR = tl.load(ws_row + raw_at + g, mask=g < NGR * want_lp, other=0.0)
        SZ = tl.load(ws_row + 2 * NGR + g, mask=gm, other=0.0)
        bad = bad | tl.max(((M != M) | (M == float("inf"))).to(tl.int32))
        # logsumexp of the raw logits, merged over the groups
        tm = tl.max(M)
        new = tl.maximum(m_run, tm)
        safe = tl.where(new > float("-inf"), new, 0.0)
        s_run = s_run * tl.exp(m_run - safe) + tl.sum(tl.where(M > float("-inf"), SR * tl.exp(M - safe), 0.0))
        m_run = new
        # end-masked group stats: greedy maximum and draw scores
        isE = g == ge
        Mz = tl.where(isE, Me, M)
        SZz = tl.where(isE, SZe, SZ)
        fin = fin | tl.max((Mz > float("-inf")).to(tl.int32))
        tX, tg = _argmax_first(Mz, g)
        upd = tX > X
        gX = tl.where(upd, tg, gX)
        nX = tl.maximum(X, tX)
        sX = tl.where(nX > float("-inf"), nX, 0.0)
        zs_run = (zs_run * tl.exp((X - sX) / Tz)
                  + tl.sum(tl.where(Mz > float("-inf"), SZz * tl.exp((Mz - sX) / Tz), 0.0)))
        X = nX
        h = _group_noise4(g0 // 4 + r4, c1, c2, k0, k1)
        sc = tl.where(Mz > float("-inf"), Mz / Tz + tl.log(SZz) + h, float("-inf"))
        t1, ti = _argmax_first(sc, g)
        t2 = tl.max(tl.where(g == ti, float("-inf"), sc))
        win = t1 > b1
        b2 = tl.where(win, tl.maximum(b1, t2), tl.maximum(b2, t1))
        g1 = tl.where(win, ti, g1)
        b1 = tl.maximum(b1, t1)
    lse = m_run + tl.log(tl.where(s_run > 0.0, s_run, 1.0))   # (-inf + 0 for a row of no finite logit)
    return bad, fin, lse, X, gX, b1, g1, b2, zs_run


@triton.jit
def _candidate_bound(ws_row, NGR, ge, Me, SZe, X, Tz, top_k, k_on, top_p, p_on, total, NB: tl.constexpr):
    """A raw-logit bound ``L`` such that every token that top-k / top-p keep lies in a group whose
    raw maximum is ``>= L`` (from the group stats alone; -inf when it cannot tell):

    * top-k: the k-th largest group maximum (the k best groups hold k tokens at least as large);
    * top-p without top-k: the largest ``L`` at which a lower bound of the mass at or above it
      already holds ``p x total`` (with a 1e-3 margin): each group whose maximum reaches ``L``
      counts its maximum's mass, or its whole mass less 255 x ``exp((L - X) / T)`` (what its other
      tokens below ``L`` can weigh) when that is more. The maxima alone missed the mass a group
      holds beside its maximum: on SmolLM2-135M's logits (T = 0.6, top-p 0.95) 31% of the rows got
      no bound, so no compaction and radix selects over the whole row (``benchmarks/bench_candidates_real.py``);

    each a 16-bit order-key prefix (``_key_prefix_reaching``: 16 reductions instead of a sort; top-k's
    the k-th largest maximum rounded down, at most 2**-7 of ``|L|`` lower for a normal float, which
    admits the groups whose maximum lies in that margin as candidates too). Top-p's weights shave
    ``1e-4`` off each group's mass and add it to what its other tokens can weigh: the two nearly cancel
    where the bound is decided, and their rounding (the sums of pass 1, ``exp2``) must not make it
    more than a lower bound.

    ``NB`` group maxima at once (the wrapper's ``_finish_tiles``: all of a row's groups up to ``_SCAN``);
    a row of more groups gets -inf. The selects read only the groups at or above ``L``; the rescoring
    (``_rescore``) those at or above ``_minp_bound(L, ...)`` (min-p's bound too)."""
    L = tl.full([], float("-inf"), tl.float32)
    if NGR <= NB:
        fb = tl.arange(0, NB)
        gm = fb < NGR
        isE = fb == ge
        Mz = tl.where(isE, Me, tl.load(ws_row + fb, mask=gm, other=float("-inf")))
        if k_on | p_on:
            # top-k counts the maxima (the padding's -inf too: k beyond the groups gives -inf),
            # top-p weighs them by the mass they hold at least (the padding's 0)
            eM = tl.where(Mz > float("-inf"), tl.exp((Mz - X) / Tz), 0.0)
            SZ = tl.where(isE, SZe, tl.load(ws_row + 2 * NGR + fb, mask=gm, other=0.0))
            w = tl.where(k_on, 1.0, eM)
            spread = tl.where(k_on, 0.0, SZ * eM * (1.0 - 1e-4))
            target = tl.where(k_on, top_k.to(tl.float32), top_p * total * 1.001)
            L = _from_key(_key_prefix_reaching(_order_key(_plus_zero(Mz)), w, spread, (GROUP - 1) * (1.0 + 1e-4),
                                               target, X, Tz, 16))
    return L


@triton.jit
def _minp_bound(L, X, Tz, min_p, m_on):
    """``L`` raised to min-p's bound ``X + T ln(min_p)``, less a rounding margin (when min-p is on)."""
    if m_on:
        lm = _minp_raw(X, Tz, min_p)
        L = tl.maximum(L, lm - 1e-3 * (1.0 + tl.abs(X) + tl.abs(lm)))
    return L


@triton.jit
def _group_draw(row_ptr, g, V, end0, mask_end, Tz, kz, xt, cand_g, c1, c2, k0, k1):
    """Re-read group ``g`` (end token masked, the filters' threshold ``xt`` applied (:func:`_keep`), nothing
    kept unless ``cand_g``): its draw score without the noise ``M / T + ln(S_z)`` (-inf if nothing is kept)
    and the first index of the maximum of ``z + token noise`` over its kept tokens. ``xt`` -inf and ``cand_g``
    True keep every token: the unfiltered draw."""
    offs = g * GROUP + tl.arange(0, GROUP)
    x, z = _masked(row_ptr, offs, offs < V, end0, mask_end, Tz)
    # (the flag as an int vector: the interpreter cannot AND a bool scalar into a bool vector)
    kept = _keep(x, xt) & ((offs * 0 + cand_g.to(tl.int32)) > 0)
    x = tl.where(kept, x, float("-inf"))
    m, sz = _max_mass(x, kz, 0)
    score = tl.where(m > float("-inf"), m / Tz + tl.log(sz), float("-inf"))
    ts = tl.where(x > float("-inf"), z + _gumbel(offs, c1, c2, k0, k1, 0), float("-inf"))
    _b, tok = _argmax_first(ts, offs)
    return score, tok


@triton.jit
def _filtered_groups(row_ptr, ws_row, NGR, L, V, end0, mask_end, Tz, kz, xmax, xt, floor, c1, c2, k0, k1,
                     DBLOCK: tl.constexpr, DH: tl.constexpr, FB: tl.constexpr, H_AXIS: tl.constexpr):
    """The filtered draw's group choice over the candidate groups (raw maximum ``>= L``) whose unfiltered score
    reaches ``floor`` (:func:`_list_contenders`; -inf: all of them): returns the first group of
    the maximum score ``xmax / T + ln(S) + group noise``, ``S`` the group's kept mass relative to the row's maximum
    (the sum of ``_rel_mass`` over the tokens :func:`_keep` keeps; -inf when it is 0: a group whose kept mass
    underflows float32 scores about 65 or more below the group of the row's maximum, which no noise bridges: it lies
    in [-2.9, 16.7]). One read of the listed groups (their list; no other group's tokens)
    writes each listed group's ``S`` into the workspace's plane 1 (pass 1's raw sums, or nothing for a call
    without logprobs or a row whose draw sums serve as its raw sums, :func:`_own_raw_sums`: only ``_scan_groups``
    reads them, before); then :func:`_score_groups` scores them. Per token: a compare against the raw
    threshold, an exp2 and a sum (no division, no per-group maximum, no Philox or logarithm in the tokens' loop).
    Tiles of ``DBLOCK`` tokens as DH runs of ``GROUP / DH`` per group, as pass 1's (:func:`_group_tile`: a
    thread's DH vector loads fall in one group, so a group's sum crosses fewer lanes)."""
    GT: tl.constexpr = DBLOCK // GROUP
    end_at = tl.where(mask_end, end0, -1)
    Lz = L / Tz
    nlist = _list_contenders(ws_row, NGR, V, Tz, Lz, floor, c1, c2, k0, k1, FB, True)
    for t0 in range(0, nlist * GROUP, DBLOCK):
        g, on = _listed(ws_row, NGR, nlist, t0, GT)
        offs = _group_tile(g * GROUP, DH, GROUP // DH, H_AXIS)
        x = tl.load(row_ptr + offs, mask=(offs < V) & _per_group(on, H_AXIS), other=float("-inf")).to(tl.float32)
        x = tl.where(offs == end_at, float("-inf"), x)
        e = _rel_mass(x, xmax, kz)
        tl.store(ws_row + NGR + g, tl.sum(tl.sum(tl.where(_keep(x, xt), e, 0.0), H_AXIS), 1), mask=on)
    tl.debug_barrier()  # the masses written by every warp, visible to the scores' pass
    return _score_groups(ws_row, NGR, Lz, V, Tz, xmax / Tz, c1, c2, k0, k1, FB)


@triton.jit
def _score_groups(ws_row, NGR, Lz, V, Tz, zmax, c1, c2, k0, k1, FB: tl.constexpr):
    """The filtered draw's scores from the kept masses ``S`` that :func:`_filtered_groups` wrote (plane 1 of
    the workspace), ``FB`` groups per step as ``_scan_groups`` reads them (one Philox call per 4 groups):
    ``zmax + ln(S) + group noise`` for the candidate groups (scaled maximum ``>= Lz``) with ``S > 0``,
    -inf for the others. Returns the first group of the maximum score."""
    R: tl.constexpr = FB // 4
    r4 = tl.arange(0, R)
    fb = 4 * r4[:, None] + tl.arange(0, 4)[None, :]   # [R, 4]: group g0 + 4 r + j
    best = tl.full([], float("-inf"), tl.float32)
    gbest = tl.full([], 0, tl.int32)
    for g0 in range(0, NGR, FB):
        g = g0 + fb
        cg = _is_candidate(ws_row, g, V, Tz, Lz) & (g < NGR)
        S = tl.load(ws_row + NGR + g, mask=cg, other=0.0)
        sc = tl.where(S > 0.0, zmax + tl.log(S) + _group_noise4(g0 // 4 + r4, c1, c2, k0, k1), float("-inf"))
        t1, ti = _argmax_first(sc, g)
        gbest = tl.where(t1 > best, ti, gbest)
        best = tl.maximum(best, t1)
    return gbest


@triton.jit
def _select_thresholds(row_ptr, ws_row, NGR, ge, Me, SZe, g1, xmax, total, Tz, top_k, k_on, top_p, p_on, V, end0,
                       mask_end, buf_ptr, CAP, DBLOCK: tl.constexpr, HBLOCK: tl.constexpr, FB: tl.constexpr,
                       PW: tl.constexpr, NB: tl.constexpr):
    """Top-k / top-p of a row (at least one on): the selects' bound ``Ls`` (every kept token lies in a group whose raw
    maximum reaches it; it leaves min-p out, the selects count every token of the top-k set), the compaction of the
    candidates (when they overflow the buffer, of the threshold's bins, the values above them counted:
    :func:`_compact_bounded`), then the sort, the
    bisection over the buffer or, when the candidates still overflow it, the radix selects over the row's candidate
    groups. Returns (Ls, the filters' threshold on the raw logits (``_raw_threshold`` of the smallest key they
    keep), whether the chosen group ``g1`` is a candidate: the draw keeps nothing outside the candidates, because a
    radix select over the row's candidate groups (a row that overflows the buffer) can stop at a key prefix, below
    the exact threshold, which only the candidates are known to respect)."""
    zmax = xmax / Tz
    Ls = _candidate_bound(ws_row, NGR, ge, Me, SZe, xmax, Tz, top_k, k_on, top_p, p_on, total, NB)
    # the candidates' values compacted once; the selects' passes read them, not the row (when there are
    # still more than CAP of them they read the row's candidate groups instead; with no bound, Ls = -inf,
    # every token is a candidate and a row longer than the buffer overflows it: no compaction)
    compact = (Ls > float("-inf")) | (V <= CAP)
    nbuf = tl.full([], 0, tl.int32)
    above_cnt = nbuf
    above_mass = tl.full([], 0.0, tl.float32)
    if compact:
        nbuf, Lb, above_cnt, above_mass = _compact_bounded(row_ptr, ws_row, NGR, buf_ptr, Ls, zmax, total, top_k,
                                                           k_on, top_p, p_on, V, end0, mask_end, Tz, CAP, DBLOCK,
                                                           HBLOCK, FB)
        # a raised bound holds for the draw's candidates and the radix selects too: it lies 1/16 of a bin
        # below every value it keeps (_overflow_bound), far more than its rounding back to a raw logit
        Ls = tl.where(Lb > Ls / Tz, Lb * Tz, Ls)
    use_buf = compact & (nbuf <= CAP)
    # before the selects: tested after them, g1 stayed live through their loops, and ptxas reloaded a
    # spilled value in every radix level of the 16-bit budget _merge_kernel on sm_90 (Triton 3.9)
    cand1 = _is_candidate(ws_row, g1, V, Tz, Ls / Tz)
    t_key = tl.full([], 0, tl.uint32)      # keep all
    # a window of the candidates (_overflow_bound: one select on): the values above it are kept whole, so top-k
    # takes the (k - their count)-th largest buffered value, and top-p's target drops by their mass
    if use_buf & (nbuf <= PW):
        t_key = _sorted_thresholds(buf_ptr, nbuf, zmax, Tz, total, top_k - above_cnt, k_on, top_p, p_on, above_mass,
                                   PW)
    elif use_buf:
        t_key = _buffer_thresholds(buf_ptr, _buffer_masses(buf_ptr, CAP), nbuf, zmax, Tz, total, top_k - above_cnt,
                                   k_on, top_p, p_on, above_mass, HBLOCK)
    else:
        mass_k = total                     # the row's draw mass (relative to exp(zmax))
        if k_on:
            t_key, mass_k = _radix_select(row_ptr, V, end0, mask_end, Tz, zmax, top_k, 1.0, -1.0,
                                          p_on, ws_row, Ls, False, HBLOCK)
        if p_on:
            t_p, _unused = _radix_select(row_ptr, V, end0, mask_end, Tz, zmax, top_k, top_p, mass_k,
                                         p_on, ws_row, Ls, True, HBLOCK)
            t_key = tl.maximum(t_key, t_p)
    return Ls, _raw_threshold(_from_key(t_key), Tz), cand1


@triton.jit
def _filter_bounds(row_ptr, ws_row, NGR, ge, Me, SZe, g1, b1, b2, xmax, total, Tz, top_k, k_on, top_p, p_on,
                   min_p, m_on, V, end0, mask_end, buf_ptr, CAP, DBLOCK: tl.constexpr, HBLOCK: tl.constexpr,
                   FB: tl.constexpr, PW: tl.constexpr, NB: tl.constexpr):
    """The filters' bounds of a row with filters (top-k / top-p / min-p): ``xt``, the filters' threshold on the raw
    logits (:func:`_keep`: the larger of top-k / top-p's, :func:`_select_thresholds`, and min-p's,
    :func:`_minp_raw`, so that the draw's passes test one compare per token; -inf: keep all), ``Ls``, the selects'
    raw-logit bound that
    every token top-k / top-p keep reaches in its group maximum (-inf without them; :func:`_rescore` raises it to
    min-p's: the chosen group needs no bound of min-p's, its tokens are filtered one by one), ``h1``, the chosen
    group ``g1``'s noise: ``b1`` less its unfiltered score without noise ``M / T + ln(S_z)``, recomputed from its
    stats as the scan did (no Philox call; rounding moves it by about an ulp of ``b1``: a near-tie of the group
    scores; :func:`_filtered_redraw`), and whether ``g1`` is a candidate of the selects
    (:func:`_select_thresholds`). Returns (Ls, xt, h1, cand1)."""
    isE = g1 == ge
    M1 = tl.where(isE, Me, tl.load(ws_row + g1))
    SZ1 = tl.where(isE, SZe, tl.load(ws_row + 2 * NGR + g1))
    h1 = b1 - (M1 / Tz + tl.log(SZ1))
    Ls = tl.full([], float("-inf"), tl.float32)
    xt = tl.full([], float("-inf"), tl.float32)      # keep all
    cand1 = g1 == g1                       # (True: every group is a candidate without a bound)
    if k_on | p_on:
        Ls, xt, cand1 = _select_thresholds(row_ptr, ws_row, NGR, ge, Me, SZe, g1, xmax, total, Tz, top_k, k_on,
                                           top_p, p_on, V, end0, mask_end, buf_ptr, CAP, DBLOCK, HBLOCK, FB, PW, NB)
    if m_on:
        xt = tl.maximum(xt, _minp_raw(xmax, Tz, min_p))
    return Ls, xt, h1, cand1


@triton.jit
def _rescore(row_ptr, ws_row, NGR, Ls, xmax, gX, s1, V, end0, mask_end, Tz, kz, min_p, xt, c1, c2, k0, k1,
             DBLOCK: tl.constexpr, DH: tl.constexpr, FB: tl.constexpr, H_AXIS: tl.constexpr):
    """The filtered draw's rare path: one filtered pass over the candidate groups (``Ls``, the selects'
    bound, raised to min-p's) that can still win picks the group again, then the draw inside it. Returns the token.
    A group's filtered score is at most its unfiltered one, so a group whose unfiltered score stays below a
    filtered score already known cannot win: the pass reads only the candidates whose unfiltered score reaches the
    larger of the chosen group's filtered score ``s1`` (noise included; -inf when it keeps nothing) and a lower
    bound of the filtered score of ``gX``, the group of the row's maximum, which every filter keeps: ``xmax / T``
    plus its noise (its maximum's mass alone; re-reading the group for its exact score made the 16-bit budget
    ``_sample_kernel`` reload 19 spilled values in three loops on sm_80 under Triton 3.5.1), less a
    margin of 1e-4 x (1 + |xmax / T| + |that score|) for the two sums' rounding (:func:`_list_contenders`): the
    winner is the one a pass over every candidate finds. On a flat row (groups of about equal unfiltered scores)
    whose filters keep a share ``f`` of each group's mass, those are the groups whose noise lies within ``ln(1 /
    f)`` of the best, about ``1 / f`` of them whatever V, where every group is a candidate. At worst (scores spread
    so that every candidate reaches the floor) the pass reads every candidate, as before."""
    L = _minp_bound(Ls, xmax, Tz, min_p, min_p > 0.0)
    ref = tl.maximum(s1, xmax / Tz + _gumbel(gX, c1, c2, k0, k1, 1))
    floor = ref - 1e-4 * (1.0 + tl.abs(xmax / Tz) + tl.abs(ref))
    floor = tl.where(floor == floor, floor, float("-inf"))
    gf = _filtered_groups(row_ptr, ws_row, NGR, L, V, end0, mask_end, Tz, kz, xmax, xt, floor,
                          c1, c2, k0, k1, DBLOCK, DH, FB, H_AXIS)
    _sc, tok = _group_draw(row_ptr, gf, V, end0, mask_end, Tz, kz, xt,
                           _is_candidate(ws_row, gf, V, Tz, L / Tz), c1, c2, k0, k1)
    return tok


@triton.jit
def _filtered_redraw(s_tok, sc1, h1, b2, gX, row_ptr, ws_row, NGR, Ls, xmax, V, end0, mask_end, Tz, kz, min_p, xt,
                     c1, c2, k0, k1, DBLOCK: tl.constexpr, DH: tl.constexpr, FB: tl.constexpr,
                     H_AXIS: tl.constexpr):
    """Whether the draw in the chosen group (filtered score ``sc1`` without noise, ``h1`` its noise, token
    ``s_tok``) stands: filtering only removes mass, so if its filtered score plus its noise still beats the best
    unfiltered score of the other groups (``sc1 > b2 - h1``, see :func:`_filter_bounds`) it still wins;
    otherwise :func:`_rescore`."""
    if sc1 <= b2 - h1:
        s_tok = _rescore(row_ptr, ws_row, NGR, Ls, xmax, gX, sc1 + h1, V, end0, mask_end, Tz, kz, min_p, xt,
                         c1, c2, k0, k1, DBLOCK, DH, FB, H_AXIS)
    return s_tok


@triton.jit
def _finish(row, row_ptr, ws_row, NGR, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, offset_ptr,
            budget_ptr, forced_ptr, tok_ptr, logp_ptr, V, num_wait, num_end, num_forced, buf_ptr, CAP, want_lp,
            HAS_BUDGET: tl.constexpr, DBLOCK: tl.constexpr, DH: tl.constexpr, HBLOCK: tl.constexpr,
            FB: tl.constexpr, PW: tl.constexpr, NB: tl.constexpr, H_AXIS: tl.constexpr):
    """Everything after pass 1 for one row: the scan over its group stats, filters (top-k / top-p /
    min-p), the draw, budget rule 3, the state update and the outputs (the logprob only when ``want_lp``, 0 or
    1)."""
    end0, mask_end, forced_tok, do_draw, Tz = _plan(row, temp_ptr, topk_ptr, budget_ptr, forced_ptr,
                                                    num_wait, num_forced, HAS_BUDGET)
    k0, k1, c1, c2 = _philox_key(seed_ptr, offset_ptr, row)
    kz = 1.4426950408889634 / Tz
    # the end token's group, with the end token masked (budget rule 3 without a Wait sequence)
    ge = tl.where(mask_end, end0 // GROUP, -1)
    Me = tl.full([], float("-inf"), tl.float32)
    SZe = tl.full([], 0.0, tl.float32)
    if mask_end:
        offs = ge * GROUP + tl.arange(0, GROUP)
        xe, _ze = _masked(row_ptr, offs, offs < V, end0, mask_end, Tz)
        Me, SZe = _max_mass(xe, kz, 0)
    bad, fin, lse, xmax, gX, b1, g1, b2, total = _scan_groups(ws_row, NGR, ge, Me, SZe, Tz, want_lp,
                                                              _raw_plane(want_lp, kz, NGR), c1, c2, k0, k1, FB)
    temp = tl.load(temp_ptr + row)
    valid = (bad == 0) & (fin > 0) & (temp == temp)

    top_k = tl.load(topk_ptr + row)
    top_p = tl.load(topp_ptr + row)
    min_p = tl.load(minp_ptr + row)
    k_on = (top_k > 0) & (top_k < V)
    p_on = top_p < 1.0
    m_on = min_p > 0.0

    filtered = valid & do_draw & (k_on | p_on | m_on)
    s_tok = tl.full([], 0, tl.int32)

    # ---- the draw inside the group of the best score, with the filters' bounds (keep-all without) ----
    Ls = tl.full([], float("-inf"), tl.float32)
    xt = tl.full([], float("-inf"), tl.float32)
    h1 = tl.full([], 0.0, tl.float32)
    cand1 = g1 == g1
    if filtered:
        Ls, xt, h1, cand1 = _filter_bounds(row_ptr, ws_row, NGR, ge, Me, SZe, g1, b1, b2, xmax, total, Tz,
                                            top_k, k_on, top_p, p_on, min_p, m_on, V, end0, mask_end, buf_ptr, CAP,
                                            DBLOCK, HBLOCK, FB, PW, NB)
    # an unfiltered draw keeps every token: x >= -inf, every group a candidate
    if do_draw:
        sc1, s_tok = _group_draw(row_ptr, g1, V, end0, mask_end, Tz, kz, xt, cand1, c1, c2, k0, k1)
        if filtered:
            s_tok = _filtered_redraw(s_tok, sc1, h1, b2, gX, row_ptr, ws_row, NGR, Ls, xmax, V, end0, mask_end, Tz,
                                     kz,
                                     min_p, xt, c1, c2, k0, k1, DBLOCK, DH, FB, H_AXIS)

    # the greedy rule (params.greedy_rows): a tiny temperature, or z = x / T overflowing at the maximum,
    # which the best draw score shows without a division: a group's score M / T + ln(S_z) + noise is
    # infinite exactly when M / T is (S_z >= 1 and the noise are finite), so |b1| is infinite exactly
    # when xmax / T is (of a valid row; -inf: every group's M / T is). Such a row's draw above, on
    # infinite scores, is discarded. (Here, after the draw: tested before it, ptxas grew the filters'
    # code by ~110 SASS instructions, Triton 3.9, sm_90.) Triton divides with div.full.f32 (2 ulp), so
    # within a few ulp of float32's maximum the test can differ from the IEEE xmax / T of the other
    # backends; either way the token is the maximum, and only exact ties at it could differ.
    greedy = (temp < MIN_TEMPERATURE) | (tl.abs(b1) == float("inf"))
    g_tok = tl.full([], 0, tl.int32)
    if greedy:
        # the first index of the maximum in the first group that holds it
        goffs = gX * GROUP + tl.arange(0, GROUP)
        xg = tl.load(row_ptr + goffs, mask=goffs < V, other=float("-inf")).to(tl.float32)
        xg = tl.where(mask_end & (goffs == end0), float("-inf"), xg)
        g_tok = tl.min(tl.where(xg == xmax, goffs, 2147483647))
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
    x_tok = tl.load(row_ptr + tok_safe).to(tl.float32)
    logp = tl.where(valid, x_tok - lse, float("nan"))
    tok = tl.where(valid, tok, -1)
    tl.store(tok_ptr + row, tok.to(tl.int64))
    tl.store(logp_ptr + row, logp, mask=want_lp != 0)


@triton.jit
def _row_kz(temp_ptr, row):
    """log2(e) / T of a row (T = 1 below the greedy rule's temperature): the draw sums' scale."""
    _sampled, Tz = _sampled_temperature(tl.load(temp_ptr + row))
    return 1.4426950408889634 / Tz


@triton.jit
def _own_raw_sums(want_lp, kz):
    """Whether pass 1 writes a row's raw sums (plane 1): only for a call with logprobs (``want_lp``) and a row whose
    draw sums' scale ``kz`` (:func:`_row_kz`) is not log2(e). At ``kz`` = log2(e) (T = 1, and the rows greedy by
    the temperature rule, T below ``MIN_TEMPERATURE``, whose draw sums take T = 1; a row greedy because its
    ``max(x) / T`` overflows keeps its T) the draw sums are the raw sums, the same float32 operations bit for bit,
    so plane 2 serves both (:func:`_raw_plane`) and pass 1 spends one exp2 per token instead of two."""
    return (want_lp != 0) & (kz != 1.4426950408889634)


@triton.jit
def _raw_plane(want_lp, kz, NGR):
    """The offset of the plane that holds a row's raw sums for the logsumexp (:func:`_own_raw_sums`): 1 x NGR when
    pass 1 wrote them, else 2 x NGR (the draw sums)."""
    return (2 - _own_raw_sums(want_lp, kz).to(tl.int32)) * NGR


#: scalar offsets Triton would otherwise specialise on (== 1, % 16 == 0): the budget-forcing token counts (a
#: compile per tokenizer's budget strings, 2x the static check's variants, for nothing). The candidate
#: buffer's capacity ``CAP`` is specialised: always a multiple of 16 (:func:`_buffer_capacity`), one
#: variant, whose buffer reads the compiler then knows aligned (8-byte loads of the masses, not 4)
_NO_SPECIALIZE = ["num_wait", "num_end", "num_forced", "want_lp"]


def shares_draw_sums(temperature: float) -> bool:
    """Whether a row at ``temperature`` takes its logprobs' logsumexp from its draw sums (host side, for the
    static cost model): the kernels' :func:`_own_raw_sums` test, ``log2(e) / T == log2(e)`` in float32 with
    ``T = 1`` below the greedy rule's temperature (:func:`_sampled_temperature`). True at T = 1 and below
    ``MIN_SAMPLING_TEMPERATURE`` (IEEE division here; a GPU's approximate one could differ only for a T within
    an ulp or so of 1, which would then compute both sums)."""
    t = torch.tensor(float(temperature), dtype=torch.float32)
    tz = torch.where(t >= _params.MIN_SAMPLING_TEMPERATURE, t, torch.ones_like(t))
    log2e = torch.tensor(1.4426950408889634, dtype=torch.float32)
    return bool(log2e / tz == log2e)


def _buffer_capacity(V: int, hblock: int) -> int:
    """Values a row's candidate buffer holds: ``_CANDIDATES`` (or V, if fewer) rounded up to whole
    ``hblock`` tiles, so that the bisection's padded reads stay inside it; a multiple of 16."""
    cap = triton.cdiv(min(_CANDIDATES, V), hblock) * hblock
    assert cap % hblock == 0 and cap % 16 == 0, (V, hblock, cap)   # the unmasked reads rely on it
    return cap


@triton.jit
def _buffer_row(cand_ptr, row, CAP):
    """A row's candidate buffer: ``CAP`` values, then room for their masses (``_buffer_keys``)."""
    return cand_ptr + row.to(tl.int64) * (2 * CAP)


@triton.jit
def _buffer_masses(buf_ptr, CAP):
    """Where a row's buffer (``_buffer_row``) keeps its values' masses."""
    return buf_ptr + CAP


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _sample_kernel(
        logits_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, offset_ptr,
        budget_ptr, forced_ptr, tok_ptr, logp_ptr, ws_ptr, cand_ptr,
        V, stride_row, NGR, num_wait, num_end, num_forced, CAP, want_lp,
        HAS_BUDGET: tl.constexpr, BLOCK: tl.constexpr, H: tl.constexpr, PAIRS: tl.constexpr, DBLOCK: tl.constexpr,
        DH: tl.constexpr, HBLOCK: tl.constexpr, FB: tl.constexpr, PW: tl.constexpr, NB: tl.constexpr,
        H_AXIS: tl.constexpr, FAST_LOG: tl.constexpr, STAGES: tl.constexpr):
    """One program per row: pass 1 over the whole row, then ``_finish``."""
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    ws_row = _ws_row(ws_ptr, row, NGR)
    kz = _row_kz(temp_ptr, row)
    _pass1(row_ptr, ws_row, NGR, 0, V, kz, _own_raw_sums(want_lp, kz), BLOCK, H, PAIRS, FAST_LOG, H_AXIS, STAGES)
    tl.debug_barrier()  # the group stats written by every warp, visible to the finish
    _finish(row, row_ptr, ws_row, NGR, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, offset_ptr,
            budget_ptr, forced_ptr, tok_ptr, logp_ptr, V, num_wait, num_end, num_forced,
            _buffer_row(cand_ptr, row, CAP), CAP, want_lp, HAS_BUDGET, DBLOCK, DH, HBLOCK, FB, PW, NB, H_AXIS)


@triton.jit(do_not_specialize=["want_lp"])
def _partial_kernel(logits_ptr, temp_ptr, ws_ptr, V, stride_row, NGR, CHUNK, want_lp,
                    BLOCK: tl.constexpr, H: tl.constexpr, PAIRS: tl.constexpr, FAST_LOG: tl.constexpr,
                    H_AXIS: tl.constexpr, STAGES: tl.constexpr):
    """Split-row pass 1: program (row, j) writes the group stats of ``[j * CHUNK, (j + 1) * CHUNK)``."""
    row = tl.program_id(0)
    j = tl.program_id(1)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    ws_row = _ws_row(ws_ptr, row, NGR)
    lo = j * CHUNK
    kz = _row_kz(temp_ptr, row)
    _pass1(row_ptr, ws_row, NGR, lo, tl.minimum(lo + CHUNK, V), kz, _own_raw_sums(want_lp, kz), BLOCK, H,
           PAIRS, FAST_LOG, H_AXIS, STAGES)


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _merge_kernel(
        logits_ptr, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, offset_ptr,
        budget_ptr, forced_ptr, tok_ptr, logp_ptr, ws_ptr, cand_ptr,
        V, stride_row, NGR, num_wait, num_end, num_forced, CAP, want_lp,
        HAS_BUDGET: tl.constexpr, DBLOCK: tl.constexpr, DH: tl.constexpr, HBLOCK: tl.constexpr, FB: tl.constexpr,
        PW: tl.constexpr, NB: tl.constexpr, H_AXIS: tl.constexpr):
    """Split-row finish: ``_finish`` on the group stats the partial programs wrote."""
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    ws_row = _ws_row(ws_ptr, row, NGR)
    _finish(row, row_ptr, ws_row, NGR, temp_ptr, topk_ptr, topp_ptr, minp_ptr, seed_ptr, offset_ptr,
            budget_ptr, forced_ptr, tok_ptr, logp_ptr, V, num_wait, num_end, num_forced,
            _buffer_row(cand_ptr, row, CAP), CAP, want_lp, HAS_BUDGET, DBLOCK, DH, HBLOCK, FB, PW, NB, H_AXIS)


def _fast_log(t):
    """Hardware ex2 (inline PTX) on a GPU; the interpreter runs the exact one."""
    return bool(t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))


def _tile_tokens(tokens, V):
    """Tokens per tile of a pass over a row (pass 1, the filtered draw): ``tokens``, at most the row
    rounded up to a power of two, at least one group."""
    return max(_philox.GROUP_SIZE, min(tokens, triton.next_power_of_2(V)))


def _bf16_pairs(logits):
    """Whether pass 1 reads the bfloat16 logits as 32-bit pairs (``_tile``): 4-byte aligned row starts
    (an even row stride), and with an odd V the element after each row's last one in the tensor's
    storage (the last word of a row holds it; it is masked to -inf, never used). Host metadata only."""
    if logits.dtype != torch.bfloat16 or logits.data_ptr() % 4:
        return False
    B, V = logits.shape
    if B > 1 and logits.stride(0) % 2:
        return False
    if V % 2 == 0:
        return True
    end = logits.storage_offset() + (B - 1) * logits.stride(0) + V + 1   # elements up to that one
    return end * logits.element_size() <= logits.untyped_storage().nbytes()


def _threads(warps):
    """Threads of a program of ``warps`` warps."""
    return 32 * warps


def _loads_per_thread(block, element_size, warps):
    """Pass 1's ``H`` and the filtered draw's ``DH``: the 16-byte loads of one thread of a ``warps``-warp
    program per tile of ``block`` tokens (at least 1)."""
    return max(1, block // (_threads(warps) * (16 // element_size)))


def _finish_tiles(V, element_size, warps):
    """The finish's tile constexprs for programs of ``warps`` warps: ``DBLOCK`` (tokens per tile of the passes
    over the candidate groups, :data:`_DRAW_BYTES_PER_THREAD`), its ``DH``, ``HBLOCK`` (values per iteration of
    the selects' reads, :data:`_HBLOCK_PER_THREAD`, at most V's next power of two), ``FB`` (group stats per step
    of the scans over them: all of them, to the next power of two, or blocks of :data:`_SCAN` and
    :data:`_SCAN_PER_THREAD`), ``NB`` (the group maxima the candidate bound reads at once: all of a row's,
    up to ``_SCAN``; rows of more groups get no bound, so the 4-warp scan's blocks of 512 must not set it) and
    ``PW`` (the sort's width, :data:`_SORTED`, at most V's next power of two; the same for any warps)."""
    dblock = _tile_tokens(_DRAW_BYTES_PER_THREAD * _threads(warps) // element_size, V)
    hblock = min(_HBLOCK_PER_THREAD * _threads(warps), max(16, triton.next_power_of_2(V)))
    ngr = _philox.num_groups(V)
    blocked = ngr > _SCAN_POW2_GROUPS
    fb = min(_SCAN, _SCAN_PER_THREAD * _threads(warps)) if blocked else max(16, triton.next_power_of_2(ngr))
    return dict(DBLOCK=dblock, DH=_loads_per_thread(dblock, element_size, warps), HBLOCK=hblock, FB=fb,
                NB=_SCAN if blocked else fb, PW=min(_SORTED, max(16, triton.next_power_of_2(V))))


@functools.lru_cache(maxsize=1024)
def slices_for(B, V, num_sms):
    """Row slices per row on a GPU with ``num_sms`` SMs when B is small (1, one program per row, when
    ``B >= num_sms``). Slices are counted in split-row pass-1 tiles of ``_SLICE_TOKENS`` (the wrapper may
    take larger tiles that keep the count, :func:`_slice_tiles`), at most 2
    programs per SM (latency hiding; more would add per-program overhead). An SM runs its programs'
    tiles one after the other, so the count is the one that gives the busiest SM the fewest tiles
    (``ceil(B S / num_sms) x tiles per slice``), then the most programs. Returns the count the
    wrapper launches (``cdiv(V, chunk)`` after rounding the chunk to whole tiles). B=32, V=151936:
    4 slices of 19 tiles, 19 on the busiest SM ("2 programs per SM" alone gave 9 slices of 9 tiles,
    3 of them on some SMs: 27); B=100: 1 (the per-row kernel: 75 tiles of 2048 tokens' worth on each
    busy SM, against 76 with 2 slices; the per-row kernel's own tiles are 8192 tokens, cheaper per
    token, which this count does not weigh). Where that leaves more than one slice but fewer than
    ``num_sms / _SPREAD`` programs (B = 1 at 2048 < V < 133120), slices of whole groups instead: the
    longest that make that many, or one group each (B = 1, V = 32000: 125 slices of one group; V = 128256:
    72 of 7)."""
    if B >= num_sms:
        return 1

    def launched(S):
        chunk = triton.cdiv(triton.cdiv(V, S), _SLICE_TOKENS)        # tiles per slice, as the wrapper rounds
        return triton.cdiv(V, chunk * _SLICE_TOKENS), chunk

    def key(S):
        s, chunk = launched(S)
        return triton.cdiv(B * s, num_sms) * chunk, -B * s

    most = max(1, min(triton.cdiv(V, _SLICE_TOKENS), 2 * num_sms // B))
    S = launched(min(range(1, most + 1), key=key))[0]
    want = triton.cdiv(num_sms, _SPREAD)
    if S == 1 or B * S >= want:    # a row of one tile (V <= 2048) stays whole: one launch, no merge
        return S
    ngr = _philox.num_groups(V)
    # groups per slice: the most that still make ``want`` programs, or one (the count, cdiv(ngr, groups), which
    # :func:`_slice_tiles` launches exactly, is then above S: S whole tiles made fewer, and S <= ngr)
    groups = max([c for c in range(1, ngr + 1) if B * triton.cdiv(ngr, c) >= want], default=1)
    return triton.cdiv(ngr, groups)


def _slice_tiles(V, S):
    """(tokens per pass-1 tile, tokens per slice) for a row of V tokens cut into the ``S`` slices of
    :func:`slices_for`: slices of whole tiles, of the largest tile from the per-row kernel's
    (``_PASS1_TOKENS``) down to ``_SLICE_TOKENS`` that keeps the slice count and adds at most a quarter to a
    slice's tokens. A 2048-token tile puts one 16-byte load per thread in flight and spreads a group over 32
    lanes (17.1 thread-instructions per bf16 token, sm_90, Triton 3.9); an 8192-token one four, over 8 lanes
    (11.1). B=32, V=151936: 4 slices of 5 tiles of 8192 (40960 tokens) instead of 19 of 2048 (38912); B=1 keeps
    tiles of 2048 (75 slices of one). More slices than tiles of ``_SLICE_TOKENS``: slices of whole groups, each
    one masked tile of ``_SLICE_TOKENS`` (``S`` as :func:`slices_for` gives it, ``cdiv(groups, c)``)."""
    share = triton.cdiv(V, S)
    least = _tile_tokens(_SLICE_TOKENS, V)
    if S > triton.cdiv(V, least):
        return least, triton.cdiv(_philox.num_groups(V), S) * _philox.GROUP_SIZE
    base = triton.cdiv(share, least) * least
    t = _PASS1_TOKENS
    while t > _SLICE_TOKENS:
        tile = _tile_tokens(t, V)
        chunk = triton.cdiv(share, tile) * tile
        if triton.cdiv(V, chunk) == triton.cdiv(V, base) and 4 * chunk <= 5 * base:
            return tile, chunk
        t //= 2
    return least, base


def _num_slices(B, V, device):
    """:func:`slices_for` on the logits' GPU; 1 off CUDA (tests and the static check monkeypatch this)."""
    if device.type != "cuda":
        return 1
    return slices_for(B, V, _platform.num_sms(device))


def _pass1_stages(device) -> int:
    """Pass 1's pipelining depth (:data:`PASS1_STAGES`): 0, the plain loop, on every device until a GPU run shows
    the prefetch pays (the GPU benchmark's pipeline suite and the static check swap this function)."""
    return PASS1_STAGES[0]


def sample_triton(logits, temperature, top_k, top_p, min_p, seed, offset,
                  budget=None, forced_ids=None, num_wait=0, num_end=0, return_logprobs=True):
    """Triton implementation of the fused sampler (same contract as ``sample_reference``)."""
    B, V = logits.shape
    dev = logits.device
    tok = torch.empty(B, dtype=torch.int64, device=dev)
    logp = torch.empty(B if return_logprobs else 0, dtype=torch.float32, device=dev)
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
    es = logits.element_size()
    ngr = _philox.num_groups(V)
    ws = torch.empty(B * WS_PLANES.value * ngr, dtype=torch.float32, device=dev)   # group stats, the candidate list
    fast = _fast_log(logits)
    pairs = _bf16_pairs(logits)
    S = _num_slices(B, V, dev)
    stages = _pass1_stages(dev)
    warps = _ROW_WARPS if S <= 1 else _SPLIT_WARPS
    tiles = _finish_tiles(V, es, warps)
    cap = _buffer_capacity(V, tiles["HBLOCK"])
    cand = torch.empty(B * 2 * cap, dtype=torch.float32, device=dev)  # the selects' candidates and masses
    want_lp = int(bool(return_logprobs))
    lp_out = logp if want_lp else ws   # without logprobs a dummy pointer of the same type, never stored to
    if S <= 1:
        block = _tile_tokens(_PASS1_TOKENS, V)
        _sample_kernel[(B,)](
            logits, temperature, top_k, top_p, min_p, seed, offset,
            budget, forced, tok, lp_out, ws, cand,
            V, logits.stride(0), ngr, int(num_wait), int(num_end), num_forced, cap, want_lp,
            HAS_BUDGET=has_budget, BLOCK=block, H=_loads_per_thread(block, es, warps), PAIRS=pairs,
            FAST_LOG=fast, **tiles, H_AXIS=_triton_layout.REGISTER_AXIS, STAGES=stages, num_warps=warps,
            **_REGISTER_CAP)
        return tok, logp
    # split rows: slices of whole pass-1 tiles (of 2048 tokens at B=1, so that a vocabulary of 151936
    # still makes 75 slices; larger where the slices allow), or of whole groups where those make too few
    pblock, chunk = _slice_tiles(V, S)
    S = triton.cdiv(V, chunk)
    _partial_kernel[(B, S)](
        logits, temperature, ws, V, logits.stride(0), ngr, chunk, want_lp,
        BLOCK=pblock, H=_loads_per_thread(pblock, es, warps), PAIRS=pairs, FAST_LOG=fast,
        H_AXIS=_triton_layout.REGISTER_AXIS, STAGES=stages, num_warps=warps)
    _merge_kernel[(B,)](
        logits, temperature, top_k, top_p, min_p, seed, offset,
        budget, forced, tok, lp_out, ws, cand,
        V, logits.stride(0), ngr, int(num_wait), int(num_end), num_forced, cap, want_lp,
        HAS_BUDGET=has_budget, **tiles, H_AXIS=_triton_layout.REGISTER_AXIS, num_warps=warps, **_REGISTER_CAP)
    return tok, logp
