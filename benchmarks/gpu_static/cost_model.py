"""Cost model of the Triton kernels on an H100, from the statically compiled specializations.

Pure arithmetic, no GPU: bounds, never measurements. Inputs are the compiled stats of
``check.py`` (per-thread SASS instructions per loop iteration, warps, CTAs per SM) and the
launches the wrappers make for each benchmark shape (grids, tile sizes, the real plan), recorded
as an H100 would get them (the sampler's slice count is :func:`slices_for` with 132 SMs, not the
one program per row the wrapper picks on a CPU). ``python -m benchmarks.gpu_static.cost_model
--from RESULTS.json --out X.json`` recomputes it from a results JSON without compiling.

Assumptions (:data:`H100`): H100 SXM5, 132 SMs, HBM3 3.35 TB/s, 50 MB L2, 1.755 GHz boost
clock, 4 warp-instructions issued per clock per SM (one per sub-partition). "Instructions" are
SASS instructions counted statically: a loop body counts every path of the body once (so a body
with a runtime branch, e.g. pass 1's ``if do_draw``, is counted with the branch taken; the one
exception is tree attention's KV loop, below), each
executed by every warp of the CTA once per iteration; the code outside a kernel's top-level loops
(*straight-line*: ``sass_instructions`` minus those loops, every path once, so an over-estimate)
is executed once per CTA by every warp; a config whose rows skip functions (:func:`skipped_roles`:
temperature and greedy every filter's code; min-p alone the top-k / top-p thresholds; a filtered row
whose chosen group stands, the bounds' low side, the rescoring) counts the straight-line code without
the instructions inlined from them (by the SASS's inlining info, ``nvdisasm -gi``; inferred from the call
graph where a Triton's cubin has none, 3.5.1's, or LLVM cut them short: ``aot.infer_chains``, which kept 0-29%
more of this code than Triton 3.9's own chains on its sampler specializations of V > 256, never less; the other
paths still once each). The issue bound assumes perfect issue (no stalls, no
latency) and CTAs spread evenly over the SMs: it is a floor on time, as is the bandwidth bound; a
kernel is at best ``max(issue bound, bandwidth bound)``, and kernels launched one after the other
on a stream add up (no overlap between them).

* Sampler, one program per row (``_sample_kernel``: ``B >= 132``, or ``slices_for`` gives 1): the busiest SM runs
  ``ceil(B / 132)`` rows; a row costs ``V x (pass-1 + selects x select + draws x draw)``
  thread-instructions per token / 32 warp-instructions (pass 1's loop: only the row's whole tiles;
  its partial last tile is straight-line code, the module's ``tile`` role), plus the finish's scan over the row's
  ``ceil(V / 256)`` group stats (``groups`` per group; + ``list`` per group for the candidate-group list of the
  compaction and of the filtered draw, each where it runs; + ``draw_groups`` per group where the filtered draw
  runs: its scores' pass over the groups) and the kernel's straight-line code; the row's time is at least
  its MUFU time (ex2 and the like: 16 per clock per SM): pass 1's per token, and where the filtered draw's pass
  runs, its own per token over the share of the row it reads.
* Sampler, split rows (``B < 132`` and ``S = slices_for(B, V, 132) > 1`` slices of ``CHUNK`` tokens):
  ``_partial_kernel`` runs pass 1 on ``B x S`` CTAs (the busiest SM runs ``ceil(B S / 132)`` of
  them, each ``CHUNK x pass-1 / 32`` warp-instructions plus its straight-line code; a slice shorter than
  pass 1's tile, whole groups at small B, is its one masked tile: straight-line code only);
  ``_merge_kernel`` (one CTA per row, ``ceil(B / 132)`` rows on the busiest SM) scans the group
  stats and runs the selects and the filtered draw over the whole row on one SM:
  ``V x (selects x select + draws x draw) / 32`` (+ the scan's, the lists' and, with a draw, ``draw_groups`` per
  group); each kernel's time is at least its MUFU time (pass 1's in a slice, the filtered draw's in the merge).
* Both: full-row passes: 1 (greedy, temperature); with top-k or top-p + 1 compaction of the
  candidates (the tokens at or above the selects' bound, written to a per-row buffer); + 0-1
  filtered draw (only when the chosen group's filtered score no longer beats the others'); the
  compaction and the draw read only the candidate groups, a share of the row
  (:func:`candidate_fraction`: ``50 x 256 / V`` with the benchmarks' top-k of 50; top-p or
  min-p alone: one group to the whole row), so they count as that share of a full pass, rounded up to
  whole tiles of their loops (they walk a list of the candidate groups, a tile of listed groups at a time). The
  top-k / top-p thresholds come from the buffer, not the row, over :data:`BUFFER_ENTRIES` values
  (from k, the least top-k's bound leaves, to the buffer's capacity): at most
  :data:`SORTED_ENTRIES` of them by one sort (straight-line code, counted there); more by a
  bisection over the values' keys, ``select_passes`` reads of the buffer per select (data
  dependent: one per key bit from the highest one where the smallest and largest key differ down, until
  one value or, for top-k, exactly k remain, plus the key range and the final read: at most 34,
  default range (20, 34); the values rounded up to whole loop iterations), each read its loop over the
  values (the largest rate of the selects' loops, counting or weighing) plus the step's own code
  (``select_step``, warp-instructions of the loop around the values' loop, less an unrolled values'
  loop's remainder); they add instructions and L2 reads of 4 B per value, no row pass. A row with
  more candidates than the capacity reads its candidate groups per select level instead (the
  design before the buffer): data dependent, not in these bounds.
  Bytes that must move (floor): the logits once (``B x V x itemsize``) plus 12 B of output per
  row; this design adds the group-stats workspace (12 B per 256 tokens, written and read).
  Select and draw passes re-read the row from L2 when the rows in flight fit in it
  (``l2_working_set_fits``), which the bounds assume.
* Sampler, pass 1 pipelined (``sampler_pipelined``, the shapes of :data:`PIPELINED_SAMPLER`: the GPU
  benchmark's pipeline suite; :func:`sampler_variants`): the same bounds from the specializations with ``STAGES`` 3
  (``tl.range(num_stages=3)``: more instructions per tile, shared memory for the prefetched tiles, so
  possibly fewer CTAs per SM), and their :func:`loads_in_flight` with the tiles kept in flight while a
  program computes. Perfect issue hides latency in both, so the bound can only show the prefetch's cost;
  what it buys (latency hidden) is for a GPU run to measure.
* Tree attention: from the real plan (:data:`ATTENTION_PLANS`: the default chunks, the
  ``wide_chunk_rows`` variant and the load-balanced chunks the engine and ``tree_attention``
  plan on CUDA, ``parallelism`` of the modelled GPU). Stage 1 is one launch, or two one after
  the other (each bound as below, their times add) when the plan has chunks of at most the narrow tile's rows
  and wider ones: the wide launch takes the wider chunks, the narrow launch the others, one item
  each (``C x Hkv`` slots), with its own tile, grid and SASS counts. The wide launch is a
  work list of ``(C + (P - 1) // BLOCK_R) x Hkv`` slots, worked through by persistent CTAs (the
  recorded grid: ``CTAS_PER_SM`` per SM of the modelled GPU, at most one per slot); live items =
  per non-empty chunk with ``r`` rows (pairs ``[p0, p0 + r)``), 1 first tile + the windows of
  ``BLOCK_R`` pairs that meet the rest ``[p0 + BLOCK_R, p0 + r)``, times Hkv; live CTAs =
  min(launched, live items); dead = launched - live (a CTA that finds the list empty). Empty
  slots cost a CTA a few scalar loads (not counted). L2-to-SM KV bytes = each live
  CTA reads its chunk's K and V for its KV head once (re-reads per row tile); shared-KV read
  factor = the same over chunks with more than one row only; unique KV bytes = each chunk
  once. Partials: ``P x Hq x (D x partial itemsize + 4)`` (outputs in the input dtype for
  bf16/fp16, float32 for fp32; LSE float32) written by stage 1 and read by stage 2. The floor
  = unique KV + q + out; this design adds q per pair and the partials. Issue bound: stage 1 =
  ``max(total warp-instructions / (132 x 4 x clock), the largest CTA / (4 x clock))``; stage 2
  (``N x cdiv(Hq, BLOCK_H)`` CTAs) likewise, a CTA walking its row's pairs ``BLOCK_P`` at a time
  with its two loops (LSE max, weighted sum). Arithmetic bound: a 16-bit
  launch's MMAs (two dots per KV tile, ``4 x BLOCK_M x BLOCK_N x BLOCK_D`` FLOP, padded query rows
  included) at the dense 16-bit tensor-core rate (4096 FLOP per clock per SM: 989 TFLOPS at the spec
  sheet's 1.83 GHz; sm_90's wgmma rate, optimistic for the narrow tile's mma.sync; the float32 tiles'
  FMA dot is in their SASS, hence in the issue time). HBM bound per launch: a stage-1 launch reads its
  chunks' K and V once and each of its pairs' q, and writes their partials; stage 2 reads the partials
  and writes the output. The launches run one after the other (stage-1 wide, narrow, stage 2): each
  takes the largest of its issue, MMA and HBM times, and the call their sum (``bound``: each launch's
  resource, one per launch joined by " + ", or one word when they all agree). Compute floor: the
  useful FLOP (``4 x rows x Hq x chunk tokens x D`` over the live chunks) at that rate (16-bit) or at
  256 FP32 FLOP per clock per SM (float32). A shared prefix of N = 256 rows at 32/8 heads is 1024 query
  rows per KV token, 1024 FLOP per byte of its KV (the H100's ridge at the model's clock: ~280), so
  the compute floor can exceed the HBM floor (8192 + 64 tokens: 36 us vs 31 us; with 512 own tokens per
  row the own KV makes it HBM-bound: 38 vs 172 us). ``t_floor_s`` is the larger of the two floors;
  ``frac_of_floor_time`` stays the HBM floor's share (the issue's floor), and
  ``frac_of_compute_or_hbm_floor_time`` is ``t_floor_s``'s. Issue-14 targets
  (:data:`ATTENTION_TARGETS`, judged per shape): shared-KV read factor <= 1.25, partial traffic
  <= 0.25 x unique KV bytes, no dead CTA.
* Stats of a shape whose exact specialization the results do not hold (the check's cases did not
  launch it: e.g. the merge kernel's partials width ``SP`` at another vocabulary, or a wide plan's
  chunk count with another divisibility) come from a compiled sibling of the same kernel that
  differs only in runtime-int specializations (divisibility by 16, == 1) or in constexprs listed
  in :data:`LOOP_NEUTRAL`; the record names it (``stats_from``) and ``stats_from_sibling`` lists
  them all.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

H100 = dict(name="H100 SXM5 (assumed, not measured)", sms=132, hbm_bytes_per_s=3.35e12, l2_bytes=50 * 2 ** 20,
            clock_hz=1.755e9, warp_instr_per_clk_per_sm=4, mufu_per_clk_per_sm=16, arch="sm_90",
            mma16_flop_per_clk_per_sm=4096, fp32_flop_per_clk_per_sm=256)

SAMPLER_CONFIGS = {  # name -> (threshold selects, filtered draw possible)
    "greedy": (0, False), "temp": (0, False), "min_p": (0, True),
    "top_k": (1, True), "top_p": (1, True), "topk_topp_minp": (2, True),
}
#: how many of a config's selects count values (top-k's) rather than weigh their masses (top-p's):
#: their steps' reads cost the counting rate (``count`` in the instruction counts)
COUNTING_SELECTS = {"top_k": 1, "topk_topp_minp": 1}
#: (low, high) reads of the candidate buffer per select (``_buffer_bisect``: a step per key bit from the
#: highest one where the buffer's smallest and largest keys differ down, at most 32, plus the final read,
#: which weighs, and the key range's, ``_buffer_keys``, one per row whatever the selects; low: 20,
#: assumed (normal values took 15-22 in a numpy emulation); the benchmark rows' low side takes the sort
#: and never uses it)
SELECT_PASSES = (20, 34)
#: k of the benchmark configs with top-k (bounds the candidate groups: candidate_fraction)
CANDIDATE_TOP_K = 50
#: (low, high) values in a row's candidate buffer: k (top-k's bound keeps at least k tokens; the
#: benchmarks' logits give 50-80, 50-77 before a5c55ea rounded the bound down) up to the capacity
#: (``_CANDIDATES``, a test keeps the two equal)
BUFFER_ENTRIES = (CANDIDATE_TOP_K, 4096)
#: buffers of at most this many values get their thresholds from one sort (``_SORTED``: straight-line
#: code, in the kernel's straight-line count), larger ones from a bisection over the buffer (a test
#: keeps the two equal)
SORTED_ENTRIES = 256
#: workspace per group of GROUP_SIZE tokens: 3 float32 group stats, written by pass 1, read by the finish
WS_BYTES_PER_GROUP = 12
#: issue-14 targets for tree attention at N = 256 (static model)
ATTENTION_TARGETS = dict(shared_kv_read_factor=1.25, partial_over_kv=0.25, dead_ctas=0)
#: the planner variant shown next to the default plan
WIDE_CHUNK_ROWS = 32
#: ``plan_kwargs`` value: the load-balanced chunks for the modelled GPU (:func:`plan_kwargs_for`)
GPU_PARALLELISM = "modelled GPU"


def _t(x: float) -> float:
    return float(f"{x:.4g}")


def _rate(gpu):
    return gpu["warp_instr_per_clk_per_sm"] * gpu["clock_hz"]


# ----------------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------------
def candidate_fraction(config: str, V: Optional[int]) -> Tuple[float, float]:
    """(low, high) share of the row the selects and the filtered draw read: only the candidate
    groups (``_candidate_bound``). With top-k: the k groups of the largest maxima
    (``CANDIDATE_TOP_K`` = the benchmarks' k), so ``k x 256 / V``, plus the groups tied with the k-th
    or within the bound's rounding below it (2**-7 of it), not counted here (the benchmarks' logits:
    50-56 groups at k = 50, 50-55 before the rounding, from bf16 ties); top-p or min-p alone: data
    dependent, from one group (peaked) to the whole row (flat). ``V=None``: the whole row."""
    if V is None:
        return (1.0, 1.0)
    one = min(1.0, _group_size() / V)
    if config in ("top_k", "topk_topp_minp"):
        f = min(1.0, CANDIDATE_TOP_K * _group_size() / V)
        return (f, f)
    return (one, 1.0)


def _whole(n: int, block: int) -> int:
    """``n`` values (tokens, buffered values) rounded up to whole loop iterations of ``block``."""
    return -(-n // block) * block


def sampler_passes(config: str, select_passes: Tuple[int, int] = SELECT_PASSES,
                   V: Optional[int] = None, buffer_entries: Tuple[int, int] = BUFFER_ENTRIES,
                   select_block: int = 1, compact_block: int = 1,
                   draw_block: int = 1) -> Dict[str, Tuple[float, float]]:
    """(low, high) full-row-equivalent passes by kind for a sampling config: the compaction and
    the filtered draw scaled by the candidate share of the row (:func:`candidate_fraction`), rounded up to
    whole loop iterations of ``compact_block`` / ``draw_block`` tokens (tiles of listed candidate groups);
    ``select``: the selects' reads of the candidate buffer as a share of the row (instructions
    only: ``(selects x (levels - 1) + 1) x entries / V``, the key range's read shared, the entries
    rounded up to whole loop iterations of ``select_block`` values; none for a buffer of at most
    :data:`SORTED_ENTRIES`, whose sort is straight-line code; ``V=None``: a row as long as the buffer),
    of which ``select_keys`` the key range's read (keys and masses written) and ``select_count`` the
    counting steps (top-k's, :data:`COUNTING_SELECTS`: ``levels - 2`` each; the rest weigh);
    ``select_steps``: how many times the selects' step code runs (``selects x (levels - 2)``, 0 on
    the sort); ``sorted``: whether the buffer takes
    the sort (else the bisection); ``total``: the row's passes
    (pass 1, compaction, draw)."""
    sel, draw = SAMPLER_CONFIGS[config]
    flo, fhi = candidate_fraction(config, V) if (sel or draw) else (1.0, 1.0)

    def tiles(f, block):   # a pass over the listed candidate groups runs whole tiles of ``block`` tokens
        return min(1.0, _whole(round(f * V), block) / V) if V else f
    n = V or buffer_entries[1]
    sorted_ = [min(b, n) <= SORTED_ENTRIES for b in buffer_entries]
    unit = [0.0 if srt or not sel else _whole(min(b, n), select_block) / n
            for b, srt in zip(buffer_entries, sorted_)]   # one read of the buffer, as a share of the row
    counting = COUNTING_SELECTS.get(config, 0)
    p = {"pass1": (1, 1), "compact": (_t(tiles(flo, compact_block)), _t(tiles(fhi, compact_block))) if sel else (0, 0),
         "select": tuple(_t((sel * (levels - 1) + 1) * u) for u, levels in zip(unit, select_passes)),
         "select_keys": tuple(_t(u) for u in unit),
         "select_count": tuple(_t(counting * (levels - 2) * u) for u, levels in zip(unit, select_passes)),
         "draw": (0, _t(tiles(fhi, draw_block)) if draw else 0),
         "select_steps": tuple(0 if srt else sel * (levels - 2) for levels, srt in zip(select_passes, sorted_)),
         "sorted": tuple(sorted_)}
    p["total"] = tuple(_t(sum(p[k][i] for k in ("pass1", "compact", "draw"))) for i in (0, 1))
    return p


#: the sampler's pass kinds in the instruction count (select: reads of the candidate buffer, weighing;
#: of them, count: the counting steps, and keys: the key range's read, at their own rates)
_SAMPLER_KINDS = ("pass1", "compact", "select", "draw")
#: the rates a results JSON records per specialization (``instr_per_token``)
_SAMPLER_RATES = _SAMPLER_KINDS + ("count", "keys")


def _thread_instr(passes: Dict[str, Any], k: int, instr: Dict[str, float],
                  kinds: Sequence[str] = _SAMPLER_KINDS) -> float:
    """Thread-instructions per token of a row's passes (side ``k``): each kind's share of the row at its
    rate, the selects' counting steps at the counting rate and their key range's read at its own
    (``count``, ``keys``; the select rate when the instruction counts have none)."""
    n = sum(passes[p][k] * instr.get(p, 0.0) for p in kinds)
    if "select" in kinds:
        sel = instr.get("select", 0.0)
        n += passes["select_count"][k] * (instr.get("count", sel) - sel)
        n += passes["select_keys"][k] * (instr.get("keys", sel) - sel)
    return n


#: bytes into the SMs per buffered value and read: a key (counting), a key and a mass (weighing), the
#: value (the key range's read, which writes a key and a mass back)
BUFFER_VALUE_BYTES = {"count": 4, "weigh": 8, "keys": 4}


#: loaded HBM latency (seconds) for :func:`loads_in_flight`'s Little's-law figure: published estimates for an H100,
#: 400-800 ns; an assumption, not a measurement, and not part of any bound
HBM_LATENCY_S = (4e-7, 8e-7)


def loads_in_flight(rec: Dict[str, Any], block: int, gpu: Dict[str, Any] = H100, stages: int = 0) -> Dict[str, Any]:
    """Pass 1's loads in flight on the busiest SM of a sampler record, at most: each program resident there (its
    rows or slices, up to the kernel's CTAs per SM) with one tile's loads outstanding (``block`` tokens, a slice's
    if shorter; a thread issues its tile's loads at once), against what Little's law asks of an SM's share of HBM
    at :data:`HBM_LATENCY_S`. Not a bound: the model assumes perfect issue and enough loads in flight; a program
    of the plain loop (``stages`` 0) that computes on its tile has none in flight meanwhile, so a GPU run can
    compare its shortfall with these. Pipelined (``stages`` > 1: ``tl.range(num_stages=stages)``) a program keeps
    the next ``stages - 1`` tiles in flight while it computes (``while_computing``), as many as its slice has."""
    split = rec["path"] != "row"
    progs = min(rec["slices_on_busiest_sm"] if split else rec["rows_on_busiest_sm"], rec["ctas_per_sm"])
    tokens = min(block, rec["chunk"]) if split else block
    ahead = 0
    if stages > 1:
        tiles = rec["chunk"] // block if split else rec["V"] // block
        ahead = min(stages - 1, max(tiles - 1, 0))
    return {"bytes_per_sm": progs * tokens * rec["itemsize"] * max(ahead, 1), "programs_per_sm": progs,
            "while_computing": bool(ahead),
            "little_law_bytes_per_sm": [round(gpu["hbm_bytes_per_s"] / gpu["sms"] * t) for t in HBM_LATENCY_S]}


def _sampler_common(B, V, itemsize, config, passes, rows_in_flight, gpu):
    floor = B * V * itemsize + 12 * B
    buf = {side: (passes["select_count"][k] * BUFFER_VALUE_BYTES["count"]
                  + passes["select_keys"][k] * BUFFER_VALUE_BYTES["keys"]
                  + (passes["select"][k] - passes["select_count"][k] - passes["select_keys"][k])
                  * BUFFER_VALUE_BYTES["weigh"]) * B * V
           for side, k in (("low", 0), ("high", 1))}
    out = {"B": B, "V": V, "itemsize": itemsize, "config": config, "bytes_floor": floor,
           "full_row_passes": list(passes["total"]), "rows_in_flight": rows_in_flight,
           "l2_working_set_bytes": rows_in_flight * V * itemsize, "select_buffer_bytes": buf}
    out["l2_working_set_fits"] = out["l2_working_set_bytes"] <= gpu["l2_bytes"]
    return out


def _finish_side(out, side, passes_k, thr_per_token, logits, floor, design, kernels, gpu):
    """kernels: [(name, t_issue, hbm bytes)] run one after the other."""
    t_issue = sum(k[1] for k in kernels)
    t_bw = floor / gpu["hbm_bytes_per_s"]
    per = [max(k[1], k[2] / gpu["hbm_bytes_per_s"]) for k in kernels]
    t = max(sum(per), t_bw)
    issue_bound = any(k[1] > k[2] / gpu["hbm_bytes_per_s"] for k in kernels)
    out[side] = {"full_row_passes": passes_k, "thread_instr_per_token": _t(thr_per_token),
                 "l2_to_sm_bytes": passes_k * logits + out["select_buffer_bytes"][side], "t_issue_s": _t(t_issue),
                 "t_hbm_floor_s": _t(t_bw), "t_hbm_this_design_s": _t(design / gpu["hbm_bytes_per_s"]),
                 "t_bound_s": _t(t), "bound": "issue" if issue_bound else "hbm",
                 "gbps_bound": _t(floor / t / 1e9), "frac_hbm_bw": _t(floor / t / gpu["hbm_bytes_per_s"])}
    if len(kernels) > 1:
        out[side]["kernels"] = {k[0]: {"t_issue_s": _t(k[1]), "hbm_bytes": k[2], "t_bound_s": _t(p)}
                                for k, p in zip(kernels, per)}


def _mufu_s(tokens: float, mufu_per_token: float, gpu) -> float:
    """Seconds one SM's special-function units need for ``tokens`` (MUFU ex2/lg2/rcp: 16 per clock)."""
    return tokens * mufu_per_token / (gpu["mufu_per_clk_per_sm"] * gpu["clock_hz"])


def _group_size() -> int:
    """Tokens per group of the sampler's two-level draw (``tts_kernels.sampling.philox.GROUP_SIZE``)."""
    from tts_kernels.sampling.philox import GROUP_SIZE
    return GROUP_SIZE


def _groups(V: int) -> int:
    return -(-V // _group_size())


def _per_group(instr: Dict[str, float], passes: Dict[str, Any], k: int) -> float:
    """Thread-instructions per group of a row's passes over its group stats (side ``k``): the finish's scan
    (``groups``), the candidate-group list the compaction walks (``list``, rows with a select) and, when the
    filtered draw pass runs, its own list (``draw_list``, which scores the groups; ``list`` when the counts have
    none) and the pass over their scores (``draw_groups``), every group listed."""
    lst = instr.get("list", 0.0)
    return (instr.get("groups", 0.0) + (lst if passes["compact"][k] > 0 else 0.0)
            + (instr.get("draw_list", lst) + instr.get("draw_groups", 0.0) if passes["draw"][k] > 0 else 0.0))


def sampler_bound(B: int, V: int, itemsize: int, config: str, instr: Dict[str, float],
                  ctas_per_sm: int = 1, select_passes: Tuple[int, int] = SELECT_PASSES,
                  gpu: Dict[str, Any] = H100) -> Dict[str, Any]:
    """Bounds for one launch of the one-program-per-row sampler. ``instr``: thread-instructions per
    token of a pass-1, select and draw pass (from the SASS) and, optionally, ``groups`` (per group
    of the finish's scan over the group stats), ``pass1_mufu`` / ``draw_mufu`` (MUFU operations per token of pass 1
    and of the filtered draw's pass)
    and ``cta_warp`` (the warp-instructions of a program's straight-line code). A row's time on its
    SM is the larger of its instruction issue and its MUFU time (``t_mufu_s``: pass 1's, and the filtered draw's
    pass where it runs)."""
    passes = sampler_passes(config, select_passes, V, select_block=instr.get("select_block") or 1,
                            compact_block=instr.get("compact_block") or 1, draw_block=instr.get("draw_block") or 1)
    logits = B * V * itemsize
    rows_busiest_sm = math.ceil(B / gpu["sms"])
    ws = B * _groups(V) * WS_BYTES_PER_GROUP
    out = _sampler_common(B, V, itemsize, config, passes, min(B, gpu["sms"] * ctas_per_sm), gpu)
    out.update(path="row", slices=1, active_sms=min(B, gpu["sms"]), rows_on_busiest_sm=rows_busiest_sm,
               ctas_launched=B, workspace_bytes=2 * ws, hbm_bytes_this_design=out["bytes_floor"] + 2 * ws)
    # straight-line code per side: the low side's rows keep their chosen group (no filtered draw pass)
    cta = {side: _cta_warp(instr, config, passes["draw"][k] > 0, passes["sorted"][k])
           for side, k in (("low", 0), ("high", 1))}
    out["cta_warp_this_config"] = [cta["low"], cta["high"]]
    # pass 1's loop runs the whole tiles; the partial last one is straight-line code (in the count once),
    # none when V is a multiple of the tile (a call without logprobs: the partial tile without its raw sums)
    block = instr.get("pass1_block") or 0
    loop_tokens = V // block * block if block else V
    tail = instr.get("tail_warp", 0) if loop_tokens == V else instr.get("skipped_tail_warp", 0)
    out["pass1_loop_tokens"] = loop_tokens
    for side, k in (("low", 0), ("high", 1)):
        thr_per_token = _thread_instr(passes, k, instr)
        warp_per_row = ((V * thr_per_token - (V - loop_tokens) * instr.get("pass1", 0.0)) / 32
                        + _groups(V) * _per_group(instr, passes, k) / 32 + cta[side] - tail
                        + passes["select_steps"][k] * instr.get("select_step", 0))
        # the special-function units: pass 1's and, on a side with the filtered draw's pass, its exp2 per token
        mufu_per_token = instr.get("pass1_mufu", 0.0) + passes["draw"][k] * instr.get("draw_mufu", 0.0)
        t_mufu = rows_busiest_sm * _mufu_s(V, mufu_per_token, gpu)
        t_issue = max(rows_busiest_sm * warp_per_row / _rate(gpu), t_mufu)
        _finish_side(out, side, passes["total"][k], thr_per_token, logits, out["bytes_floor"],
                     out["hbm_bytes_this_design"], [("_sample_kernel", t_issue, out["hbm_bytes_this_design"])], gpu)
        out[side]["t_mufu_s"] = _t(t_mufu)
    return out


def split_row_bound(B: int, V: int, itemsize: int, config: str, S: int, chunk: int,
                    partial_instr: Dict[str, float], merge_instr: Dict[str, float],
                    partial_ctas_per_sm: int = 1, select_passes: Tuple[int, int] = SELECT_PASSES,
                    gpu: Dict[str, Any] = H100) -> Dict[str, Any]:
    """Bounds for the split-row sampler: ``_partial_kernel`` on ``B x S`` slices of ``chunk`` tokens
    (pass 1: the group stats), then ``_merge_kernel`` on B rows (the scan over the group stats, the
    selects and the filtered draw). ``partial_instr``: ``pass1`` (thread-instructions per token),
    ``pass1_mufu`` and ``cta_warp`` (straight-line warp-instructions per CTA); ``merge_instr``:
    ``select``, ``draw``, ``groups``, ``draw_mufu`` and ``cta_warp``. Each side's ``t_mufu_s``: the merge
    kernel's MUFU time (the filtered draw's pass, where it runs)."""
    passes = sampler_passes(config, select_passes, V, select_block=merge_instr.get("select_block") or 1,
                            compact_block=merge_instr.get("compact_block") or 1,
                            draw_block=merge_instr.get("draw_block") or 1)
    logits = B * V * itemsize
    ctas = B * S
    ws = B * _groups(V) * WS_BYTES_PER_GROUP
    out = _sampler_common(B, V, itemsize, config, passes, B, gpu)
    out.update(path="split", slices=S, chunk=chunk, active_sms=min(ctas, gpu["sms"]),
               active_sms_merge=min(B, gpu["sms"]), ctas_launched=ctas + B,
               slices_on_busiest_sm=math.ceil(ctas / gpu["sms"]), rows_on_busiest_sm=math.ceil(B / gpu["sms"]),
               partial_ctas_in_flight=min(ctas, gpu["sms"] * partial_ctas_per_sm),
               workspace_bytes=2 * ws, hbm_bytes_this_design=out["bytes_floor"] + 2 * ws)
    cta = {side: _cta_warp(merge_instr, config, passes["draw"][k] > 0, passes["sorted"][k])
           for side, k in (("low", 0), ("high", 1))}
    out["merge_cta_warp_this_config"] = [cta["low"], cta["high"]]
    rate = _rate(gpu)
    # a slice of whole tiles (all but a row's last) skips the partial tile's straight-line code; a slice shorter
    # than a tile (whole groups, small B) is that code alone, the loop not run
    block = partial_instr.get("pass1_block") or chunk
    loop_tokens = chunk // block * block
    warp_slice = (loop_tokens * partial_instr["pass1"] / 32 + partial_instr.get("cta_warp", 0)
                  - (partial_instr.get("tail_warp", 0) if loop_tokens == chunk
                     else partial_instr.get("skipped_tail_warp", 0)))
    mufu_tokens = chunk if loop_tokens == chunk else loop_tokens + block     # a masked tile computes all its lanes
    t_partial = out["slices_on_busiest_sm"] * max(warp_slice / rate,
                                                  _mufu_s(mufu_tokens, partial_instr.get("pass1_mufu", 0.0), gpu))
    for side, k in (("low", 0), ("high", 1)):
        thr_merge = _thread_instr(passes, k, merge_instr, _SAMPLER_KINDS[1:])
        warp_row = (V * thr_merge / 32 + _groups(V) * _per_group(merge_instr, passes, k) / 32 + cta[side]
                    + passes["select_steps"][k] * merge_instr.get("select_step", 0))
        t_mufu = out["rows_on_busiest_sm"] * _mufu_s(passes["draw"][k] * V, merge_instr.get("draw_mufu", 0.0), gpu)
        t_merge = max(out["rows_on_busiest_sm"] * warp_row / rate, t_mufu)
        _finish_side(out, side, passes["total"][k], partial_instr["pass1"] + thr_merge, logits, out["bytes_floor"],
                     out["hbm_bytes_this_design"],
                     [("_partial_kernel", t_partial, logits + ws), ("_merge_kernel", t_merge, ws + 12 * B)], gpu)
        out[side]["merge_thread_instr_per_token"] = _t(thr_merge)
        out[side]["t_mufu_s"] = _t(t_mufu)
    return out


def _sampler_roles() -> Dict[str, str]:
    """``COST_MODEL_ROLES`` of the Triton sampler module: device function of pass 1, the select passes
    and the filtered draw (empty when the module does not declare them: loops of the kernel itself)."""
    try:
        from tts_kernels.sampling import triton_kernel
    except ImportError:
        return {}
    return dict(getattr(triton_kernel, "COST_MODEL_ROLES", {}))


def straight_line_warp_instr(compiled: Dict[str, Any], skip: Sequence[str] = ()) -> int:
    """Warp-instructions of a kernel's code outside its top-level loops (every path a converged warp can take,
    once): the SASS instruction count minus the top-level loops' bodies and the divergence fallbacks outside them
    (``aot.divergence_fallbacks``), times the warps; ``skip``: less the
    instructions inlined from those functions (``straight_line_by_function``: a row that calls none of
    them; they must be disjoint call trees, none inlined into another, or their code counts twice;
    chains that the SASS lacks or cuts short are inferred: ``aot.infer_chains``)."""
    in_loops = sum(lp["instructions"] for lp in compiled["loops"] if lp["depth"] == 0)
    n = compiled["sass_instructions"] - in_loops - compiled.get("fallback_instructions_outside_loops", 0)
    by_fn = compiled.get("straight_line_by_function") or {}
    n -= sum(by_fn.get(fn, 0) for fn in ([skip] if isinstance(skip, str) else skip))
    return max(0, n) * compiled["num_warps"]


def skipped_roles(config: str, rescored: bool, sorted_buffer: Optional[bool] = None) -> Tuple[str, ...]:
    """The module's roles (disjoint call trees) whose straight-line code a row of ``config`` does not
    run: temperature and greedy rows every filter's (``filtered``: the bounds; ``redraw``: the check of
    the chosen group and the rescoring); min-p alone the top-k / top-p thresholds'; a filtered row
    whose chosen group stands (``rescored`` False: no filtered draw pass) the rescoring's; a row
    with top-k / top-p whose candidates take the sort (``sorted_buffer`` True) the bisection's, or the
    bisection (False) the sort's (None: both counted); and a row with top-k / top-p the overflow path's
    (``overflow``: candidates beyond the buffer, which no side of the model has, :data:`BUFFER_ENTRIES`; its loops
    are not counted either)."""
    if config in ("temp", "greedy"):
        return ("filtered", "redraw")
    if config == "min_p":
        return ("thresholds",) + (() if rescored else ("rescore",))
    which = () if sorted_buffer is None else (("bisect",) if sorted_buffer else ("sort",))
    return tuple(sorted(which + ("overflow",) + (() if rescored else ("rescore",))))


def _paths_key(roles: Sequence[str]) -> str:
    return "+".join(sorted(roles))


def _cta_warp(instr: Dict[str, Any], config: str, rescored: bool = True, sorted_buffer: Optional[bool] = None) -> float:
    """Straight-line warp-instructions per program for a row of ``config`` (``cta_warp_paths``: with the
    code of :func:`skipped_roles` left out), every path when the config runs them all or the split by
    function is unknown (a results JSON without the sort / bisection split: those counted)."""
    paths = instr.get("cta_warp_paths") or {}
    for roles in (skipped_roles(config, rescored, sorted_buffer), skipped_roles(config, rescored)):
        for rs in (roles, tuple(r for r in roles if r != "overflow")):   # (a results JSON before the overflow role)
            if not rs:
                return instr.get("cta_warp", 0)
            if _paths_key(rs) in paths:
                return paths[_paths_key(rs)]
    return instr.get("cta_warp", 0)


def _loop_row(role, lp):
    return {"role": role, "source": f"{lp['source']['function']}:{lp['source']['line']}",
            "tokens_per_iter": lp["tokens_per_iter"], "instructions_per_iter": lp["instructions_excl"],
            "thread_instr_per_token": lp["thread_instr_per_token"], "ldg_ops": lp["ldg_ops"]}


def _encloses(outer: Dict[str, Any], inner: Dict[str, Any]) -> bool:
    """Whether loop ``outer`` is the one just around loop ``inner`` (``parent``: by the loops' blocks,
    not their address ranges, which interleave)."""
    return inner.get("parent") is not None and inner["parent"] == outer.get("head")


def _step_code(step: Dict[str, Any], values: Dict[str, Any]) -> float:
    """A select step's own instructions per thread: the step loop's exclusive instructions less the
    straight-line remainder of its values' loop when LLVM unrolled that one (the remainder's loads at
    the values' loop's loads per source iteration, times its instructions per source iteration: they
    are values, counted by the select's per-value rate)."""
    n = step["instructions_excl"]
    u = values.get("unroll") or 1
    loads = (values.get("ldg") or 0) / u
    if u > 1 and loads:
        n -= (step.get("ldg") or 0) / loads * values["instructions_excl"] / u
    return max(0.0, n)


def _mufu_per_token(lp: Optional[Dict[str, Any]], compiled: Dict[str, Any], key: str = "mufu") -> float:
    """MUFU operations per token of a token loop (0 without one); ``key`` ``mufu_min_path``: of its shortest
    iteration (``mufu`` where the results have no such count)."""
    if not lp:
        return 0.0
    n = lp.get("mufu") if lp.get(key) is None else lp[key]
    if n is None or not lp.get("tokens_per_iter"):
        return 0.0
    return round(n * 32 * compiled["num_warps"] / lp["tokens_per_iter"], 3)


def without_logprobs(instr: Dict[str, Any]) -> Dict[str, Any]:
    """The instruction counts of a call with ``return_logprobs=False``: pass 1's loop on its shortest iteration
    (``pass1_lean``, ``pass1_lean_mufu``), and the partial last tile without its raw sums (``skipped_tail_warp``:
    the straight-line code of the module's ``raw`` role). That loop has one branch, the raw sums of the logprobs'
    logsumexp (an exp2 per token and their reductions), which such a call skips (tests/gpu: exactly one MUFU
    operation per token fewer on the shortest iteration)."""
    return dict(instr, pass1=instr["pass1_lean"], pass1_mufu=instr["pass1_lean_mufu"],
                skipped_tail_warp=instr["raw_tail_warp"])


#: the device function the candidate-group lists' loops were attributed to before ``_list_contenders``
_LEGACY_LIST = "_list_groups"


def sampler_instr(compiled: Dict[str, Any], kernel_fn: str) -> Dict[str, Any]:
    """Thread-instructions per token of pass 1, a select pass and the filtered draw from the SASS
    loops: the row loops of the kernel function in source order (first = pass 1, last = the
    filtered draw) and the innermost loops of its helpers (the selects' reads: the largest of those
    in the module's ``select`` role, of every helper without it; ``count``: the largest of the ``count``
    role's, the counting reads, else the select rate; ``keys``: the ``keys`` role's, the key range's
    read), with ``select_step`` the warp-instructions
    of the largest loop just around one of those (a select step's own code, :func:`_encloses`); ``groups`` and
    ``draw_groups``: per group of the finish's scan and of the filtered draw's scores, ``list``: per group of a
    candidate-group list (the module's roles); ``compact_block`` / ``draw_block``: the tokens per iteration of the
    compaction's and the draw's loops (tiles of listed groups).
    A kernel without a pass-1 loop (the split-row merge) gets ``pass1`` 0. ``cta_warp``: the
    straight-line warp-instructions of one program."""
    loops = [lp for lp in compiled["loops"] if lp.get("thread_instr_per_token") and lp["source"]]
    roles = _sampler_roles()  # the kernel module names the device functions of its passes, if it splits them out
    row_fns = {kernel_fn, roles.get("pass1"), roles.get("draw")} - {None}
    # the compaction's loop: the first compaction's, not the rare second one's (its own smaller tiles, inlined with
    # the same source step: its tokens per iteration would read 8 times too many)
    compact = sorted((lp for lp in loops if lp["source"]["function"] == roles.get("compact")),
                     key=lambda lp: -lp["instructions_excl"])
    own = sorted((lp for lp in loops if lp["source"]["function"] in row_fns),
                 key=lambda lp: (lp["source"]["function"] != roles.get("pass1", kernel_fn),
                                 lp["source"]["function"] == roles.get("draw"), lp["source"]["line"]))
    scan = [lp for lp in loops if lp["source"]["function"] == roles.get("groups")]
    draw_scan = [lp for lp in loops if lp["source"]["function"] == roles.get("draw_groups")]
    # (results of commits before 135890d attribute the lists' loops to ``_list_groups``)
    listing = [lp for lp in loops if lp["source"]["function"] in (roles.get("list"), _LEGACY_LIST)]
    own_roles = {roles.get(r) for r in ("groups", "compact", "draw_groups", "list")} | {_LEGACY_LIST}
    helpers = [lp for lp in loops if lp["source"]["function"] not in row_fns | own_roles and lp["innermost"]]
    counting = [lp for lp in helpers if roles.get("count") and lp["source"]["function"] == roles["count"]]
    keys = [lp for lp in helpers if roles.get("keys") and lp["source"]["function"] == roles["keys"]]
    if roles.get("select"):  # the module names the select levels' loop: that one, not every helper loop
        helpers = [lp for lp in helpers if lp["source"]["function"] in (roles["select"], roles.get("count"))]
    if not own:
        raise ValueError(f"no row loop of {kernel_fn} found in the SASS")
    p1 = [lp for lp in own if "pass1" in roles and lp["source"]["function"] == roles["pass1"]] if roles else own[:1]
    p1 = p1[:1]
    rest = [lp for lp in own if lp not in p1]
    draw = rest[-1] if rest and (not roles or rest[-1]["source"]["function"] == roles.get("draw")) else None
    # select passes: loops in helpers, or row loops of the kernel between pass 1 and the draw
    candidates = ([lp for lp in helpers if lp not in counting]
                  + [lp for lp in rest if lp is not draw and lp["innermost"]])
    def largest(lps, default=None):   # the loop of the most instructions per value
        return max(lps, key=lambda lp: lp["thread_instr_per_token"]) if lps else default
    sel = largest(candidates)
    count, key_read = largest(counting, sel), largest(keys, sel)
    # a select step's own code: the loop just around a values' loop (the bisection's step), the largest
    steps = [_step_code(lp, h) for lp in compiled["loops"] for h in helpers if _encloses(lp, h)]
    return {"pass1": p1[0]["thread_instr_per_token"] if p1 else 0.0,
            "select": sel["thread_instr_per_token"] if sel else 0.0, "select_found": sel is not None,
            "count": count["thread_instr_per_token"] if count else 0.0,
            "keys": key_read["thread_instr_per_token"] if key_read else 0.0,
            "select_block": sel["tokens_per_iter"] if sel else None,
            "select_step": round(max(steps, default=0) * compiled["num_warps"]),
            "draw": draw["thread_instr_per_token"] if draw else (p1[0]["thread_instr_per_token"] if p1 else 0.0),
            "groups": scan[0]["thread_instr_per_token"] if scan else 0.0,
            "draw_groups": draw_scan[0]["thread_instr_per_token"] if draw_scan else 0.0,
            "compact": compact[0]["thread_instr_per_token"] if compact else 0.0,
            "compact_block": compact[0]["tokens_per_iter"] if compact else None,
            "draw_block": draw["tokens_per_iter"] if draw else None,
            "list": min(lp["thread_instr_per_token"] for lp in listing) if listing else 0.0,
            # the draw's list scores the groups it lists (the noise, a logarithm): the costliest list loop
            "draw_list": max(lp["thread_instr_per_token"] for lp in listing) if listing else 0.0,
            "pass1_mufu": _mufu_per_token(p1[0] if p1 else None, compiled),
            # a call without logprobs: pass 1's shortest iteration (:func:`without_logprobs`)
            "pass1_lean": ((p1[0].get("thread_instr_per_token_min_path") or p1[0]["thread_instr_per_token"])
                           if p1 else 0.0),
            "pass1_lean_mufu": _mufu_per_token(p1[0] if p1 else None, compiled, "mufu_min_path"),
            "draw_mufu": _mufu_per_token(draw, compiled),
            "cta_warp": straight_line_warp_instr(compiled),
            "pass1_block": p1[0]["tokens_per_iter"] if p1 else None,
            # the partial last tile of pass 1: the pass-1 tile function's straight-line instructions
            "tail_warp": ((compiled.get("straight_line_by_function") or {}).get(roles.get("tile"), 0)
                          * compiled["num_warps"] if p1 else 0),
            # of it, the raw sums (a call without logprobs skips them, :func:`without_logprobs`)
            "raw_tail_warp": ((compiled.get("straight_line_by_function") or {}).get(roles.get("raw"), 0)
                              * compiled["num_warps"] if p1 else 0),
            "cta_warp_paths": {_paths_key(rs): straight_line_warp_instr(compiled, [roles[r] for r in rs])
                               for rs in sorted({skipped_roles(c, r, s) for c in SAMPLER_CONFIGS for r in (False, True)
                                                 for s in (None, False, True)})
                               if rs and all(roles.get(r) for r in rs)},
            "pass1_ldg": p1[0]["ldg_ops"] if p1 else [],
            "loops": [_loop_row("pass1" if lp in p1 else ("draw" if lp is draw else "row loop"), lp) for lp in own]
            + [_loop_row("count" if lp in counting else "select", lp) for lp in helpers]
            + [_loop_row("keys", lp) for lp in keys]
            + [_loop_row("compact", lp) for lp in compact]
            + [_loop_row("groups", lp) for lp in scan]
            + [_loop_row("list", lp) for lp in listing]
            + [_loop_row("draw_groups", lp) for lp in draw_scan]}


# ----------------------------------------------------------------------------------------------
# tree attention
# ----------------------------------------------------------------------------------------------
def work_items(rows_per_chunk: Sequence[int], chunk_len: Sequence[int], block_r: int) -> List[int]:
    """Live stage-1 work items (per KV head) of each chunk: the first tile of ``block_r`` pairs plus
    every window ``[k block_r, (k + 1) block_r)`` of the plan's pairs that meets the rest of the chunk
    (0 for an empty chunk)."""
    out, p0 = [], 0
    for r, c in zip(rows_per_chunk, chunk_len):
        items = 0
        if c > 0 and r > 0:
            items = 1
            if r > block_r:
                a, b = p0 + block_r, p0 + r
                items += (b - 1) // block_r - a // block_r + 1
        out.append(items)
        p0 += r
    return out


def attention_bound(chunk_len: Sequence[int], rows_per_chunk: Sequence[int], pairs_per_row: Sequence[int],
                    Hq: int, Hkv: int, D: int, itemsize: int, block_r: int, block_n: int, grid1: Sequence[int],
                    warps1: int, tile_instr: float, grid2: Sequence[int], warps2: int, pair_instr: float, *,
                    block_m: int, block_size: int = 16, gpu: Dict[str, Any] = H100,
                    partial_itemsize: Optional[int] = None,
                    block_p: int = 1, cta1_warp: float = 0, cta2_warp: float = 0,
                    item_warp: float = 0, narrow: Optional[Dict[str, Any]] = None,
                    min_rows: int = 1, max_rows: int = 0) -> Dict[str, Any]:
    """Bounds for one tree-attention call. ``tile_instr``: per-thread SASS instructions of one
    stage-1 KV tile (BLOCK_N tokens); ``pair_instr``: of one stage-2 step over ``block_p`` pairs
    (both of its loops); ``partial_itemsize``: bytes of a partial output value (default: the input's
    for 16-bit inputs, 4 else); ``cta*_warp``: straight-line warp-instructions per live CTA;
    ``item_warp``: stage-1 warp-instructions per live work item outside its KV-tile loop (the
    persistent loop's body: item lookup, query load, partial store).

    ``block_m``: the first launch's query-tile rows (its ``BLOCK_M``, padding included), for its MMA
    FLOP (16-bit inputs).
    ``min_rows`` / ``max_rows``: the first launch takes the chunks of at least ``min_rows`` rows and,
    when ``max_rows`` > 0, at most ``max_rows`` (its ``MIN_ROWS`` / ``MAX_ROWS``).
    ``narrow``: the second stage-1 launch, which takes the chunks of ``min_rows`` (default 1) to
    ``max_rows`` rows (its ``MIN_ROWS`` / ``MAX_ROWS``), one work item each: a dict of those, ``block_m``,
    ``block_n``, ``grid``, ``warps``, ``tile_instr``, ``item_warp`` and ``cta_warp`` (as above). With it,
    the first launch's ``min_rows`` must leave the narrow chunks out (the kernel's wide launch has
    ``MIN_ROWS = max_rows + 1``). Which launch takes a chunk is the kernel's rule
    (``triton_kernel.Stage1Launch.takes``); a live chunk that no launch or both take is a ``ValueError``.
    The launches (stage-1 launches, then stage 2) run one after the other: each takes the largest of its
    issue, MMA and HBM times, and the call their sum."""
    from tts_kernels.attention.triton_kernel import Stage1Launch, query_tile_dims

    N = len(pairs_per_row)
    psz = partial_itemsize or (itemsize if itemsize == 2 else 4)
    kv_tok = D * 2 * itemsize  # K and V bytes of one token of one KV head
    nr = narrow["max_rows"] if narrow else 0
    first = Stage1Launch(None, min_rows, max_rows)
    second = Stage1Launch(None, narrow.get("min_rows", 1), nr) if narrow else None
    in_second = [bool(second and c > 0 and r > 0 and second.takes(r)) for c, r in zip(chunk_len, rows_per_chunk)]
    for c, r, n in zip(chunk_len, rows_per_chunk, in_second):
        if c > 0 and r > 0 and first.takes(r) == n:
            raise ValueError(f"a chunk of {r} rows is taken by {'both launches' if n else 'no launch'} "
                             f"(min_rows {min_rows}, narrow {narrow and (second.min_rows, nr)})")
    items = [0 if n else it for it, n in zip(work_items(rows_per_chunk, chunk_len, block_r), in_second)]
    n_items = [int(n) for n in in_second]
    rate = _rate(gpu)
    mma = itemsize == 2  # 16-bit inputs: tensor-core dots (float32: an FMA dot, in the SASS counts)
    flop_rate = gpu["sms"] * gpu["clock_hz"] * gpu["mma16_flop_per_clk_per_sm" if mma else "fp32_flop_per_clk_per_sm"]
    _, block_d = query_tile_dims(Hq, Hkv, D)

    hbm = gpu["hbm_bytes_per_s"]
    pair_bytes = Hq * (D * itemsize + D * psz + 4)  # a pair's q read, its partial output and LSE written

    def launch(its, bm, bn, grid, warps, t_instr, i_warp, c_warp):
        live_c = [(c, it) for c, it in zip(chunk_len, its) if it]
        hbm_bytes = sum(c * Hkv * kv_tok + r * pair_bytes for c, r, it in zip(chunk_len, rows_per_chunk, its) if it)
        tiles = [math.ceil(c / bn) for c, _ in live_c]
        iters = sum(it * Hkv * t for (_, it), t in zip(live_c, tiles))
        launched = math.prod(grid)
        live_items = sum(its) * Hkv
        live = min(launched, live_items)
        w = iters * t_instr * warps + live_items * i_warp + live * c_warp
        biggest = max([t * t_instr * warps + i_warp + c_warp for t in tiles] + [0])
        t_issue = max(w / (gpu["sms"] * rate), biggest / rate) if live_items else 0.0
        flop = 4 * iters * bm * bn * block_d if mma else 0
        times = dict(issue=t_issue, mma=flop / flop_rate, hbm=hbm_bytes / hbm)
        return dict(block_m=bm, block_n=bn, work_items_live=live_items, ctas_launched=launched, ctas_live=live,
                    kv_tiles=iters, warp_instr=w, mma_flop=flop, hbm_bytes=hbm_bytes, t_issue=t_issue,
                    t_mma=times["mma"], t_hbm=times["hbm"], t=max(times.values()), bound=_slowest(times))

    parts = [launch(items, block_m, block_n, grid1, warps1, tile_instr, item_warp, cta1_warp)]
    if narrow:
        parts.append(launch(n_items, narrow["block_m"], narrow["block_n"], narrow["grid"],
                            narrow["warps"], narrow["tile_instr"], narrow.get("item_warp", 0),
                            narrow.get("cta_warp", 0)))
    all_items = [a + b for a, b in zip(items, n_items)]
    launched = sum(p["ctas_launched"] for p in parts)
    live = sum(p["ctas_live"] for p in parts)
    live_items = sum(p["work_items_live"] for p in parts)
    live_c = [(c, r, it) for c, r, it in zip(chunk_len, rows_per_chunk, all_items) if it]
    P = sum(r for _, r, _ in live_c)
    unique_kv = sum(c * Hkv * kv_tok for c, _, _ in live_c)
    l2_kv = sum(it * Hkv * c * kv_tok for c, _, it in live_c)
    shared_u = sum(c * Hkv * kv_tok for c, r, _ in live_c if r > 1)
    shared_l2 = sum(it * Hkv * c * kv_tok for c, r, it in live_c if r > 1)
    pow2 = block_size & (block_size - 1) == 0

    def ids(c, bn):
        return math.ceil(c / bn) if pow2 and block_size % bn == 0 else math.ceil(c / block_size) if pow2 else c
    bn_of = [narrow["block_n"] if n else block_n for n in in_second]
    partial = P * Hq * (D * psz + 4)
    q_bytes = N * Hq * D * itemsize
    out_bytes = N * Hq * D * itemsize + N * Hq * 4
    floor = unique_kv + q_bytes + out_bytes
    hb = grid2[1] if len(grid2) > 1 else 1
    w1 = sum(p["warp_instr"] for p in parts)
    steps2 = sum(math.ceil(p / block_p) for p in pairs_per_row)
    w2 = steps2 * hb * pair_instr * warps2 + N * hb * cta2_warp
    t1 = sum(p["t"] for p in parts)
    useful_flop = sum(4 * r * Hq * c * D for c, r, _ in live_c)
    t_compute_floor = useful_flop / flop_rate
    biggest2 = max([math.ceil(p / block_p) * pair_instr * warps2 + cta2_warp for p in pairs_per_row] + [0])
    t2 = max(w2 / (gpu["sms"] * rate), biggest2 / rate)
    times2 = dict(issue=t2, hbm=(partial + out_bytes) / hbm)  # stage 2 reads the partials, writes the output
    design_hbm = sum(p["hbm_bytes"] for p in parts) + partial + out_bytes
    t1_issue = sum(p["t_issue"] for p in parts)
    t_issue = t1_issue + t2
    t_floor = floor / hbm
    t_design = design_hbm / hbm
    # the launches run one after the other: each is bound by its slowest resource, and their times add
    t = t1 + max(times2.values())
    kinds = [p["bound"] for p in parts] + [_slowest(times2)]
    kv_factor = _t(l2_kv / unique_kv) if unique_kv else None
    shared_factor = _t(shared_l2 / shared_u) if shared_u else None
    p_over = _t(2 * partial / unique_kv) if unique_kv else None
    tg = ATTENTION_TARGETS
    return {
        "N": N, "pairs": P, "chunks": len(chunk_len), "block_r": block_r, "block_n": block_n,
        "work_items_live": live_items,
        "ctas_launched": launched, "ctas_live": live, "ctas_dead": launched - live,
        "ctas_exit_at_once_frac": _t(1 - live / launched) if launched else 0,
        "stage1_launches": [{k: (_t(v) if k.startswith("t_") or k == "t" else v) for k, v in p.items()}
                            for p in parts],
        "narrow_rows": nr,
        "bytes_floor": floor, "unique_kv_bytes": unique_kv, "l2_to_sm_kv_bytes": l2_kv,
        "kv_reads_per_unique_byte": kv_factor, "shared_kv_read_factor": shared_factor,
        "max_items_per_chunk": max(all_items + [0]),
        "block_table_l2_to_sm_bytes": sum(it * Hkv * ids(c, bn) * 4
                                          for c, it, bn in zip(chunk_len, all_items, bn_of) if it),
        "partial_itemsize": psz, "partial_bytes_written_and_read": 2 * partial, "partial_over_kv": p_over,
        "hbm_bytes_this_design": design_hbm, "stage1_kv_tiles": sum(p["kv_tiles"] for p in parts),
        "stage1_warp_instr": int(w1), "stage2_warp_instr": int(w2),
        "stage1_mma_flop": sum(p["mma_flop"] for p in parts), "useful_flop": useful_flop,
        "t_issue_s": _t(t_issue), "t_stage1_issue_s": _t(t1_issue), "t_stage2_issue_s": _t(t2),
        "t_stage1_mma_s": _t(sum(p["t_mma"] for p in parts)), "t_stage1_s": _t(t1),
        "t_stage2_s": _t(max(times2.values())), "t_stage2_hbm_s": _t(times2["hbm"]),
        "t_hbm_floor_s": _t(t_floor), "t_hbm_this_design_s": _t(t_design),
        "t_compute_floor_s": _t(t_compute_floor), "t_floor_s": _t(max(t_floor, t_compute_floor)),
        "floor_bound": "hbm" if t_floor >= t_compute_floor else ("mma" if mma else "fp32 fma"),
        "t_bound_s": _t(t), "bound": kinds[0] if len(set(kinds)) == 1 else " + ".join(kinds),
        "frac_of_floor_time": _t(t_floor / t) if t else None,
        "frac_of_compute_or_hbm_floor_time": _t(max(t_floor, t_compute_floor) / t) if t else None,
        "targets": {
            "shared_kv_read_factor": {"value": shared_factor, "target_max": tg["shared_kv_read_factor"],
                                      "met": shared_factor is not None
                                      and shared_factor <= tg["shared_kv_read_factor"]},
            "partial_over_kv": {"value": p_over, "target_max": tg["partial_over_kv"],
                                "met": p_over is not None and p_over <= tg["partial_over_kv"]},
            "dead_ctas": {"value": launched - live, "target_max": tg["dead_ctas"],
                          "met": launched - live <= tg["dead_ctas"]},
        },
    }


def _slowest(times: Dict[str, float]) -> str:
    """The resource of the largest time ("issue", "mma", "hbm")."""
    return max(times, key=times.get)


def _innermost(compiled: Dict[str, Any]) -> List[Dict[str, Any]]:
    loops = [lp for lp in compiled["loops"] if lp["innermost"]]
    if not loops:
        raise ValueError("no loop in the SASS")
    return loops


def kv_loop(compiled1: Dict[str, Any]) -> Dict[str, Any]:
    """Stage 1's KV-tile loop in its compiled stats: the innermost loop of most instructions."""
    return max(_innermost(compiled1), key=lambda lp: lp["instructions_excl"])


def attention_instr(compiled1: Dict[str, Any], compiled2: Dict[str, Any]) -> Dict[str, Any]:
    """Stage-1 per-thread instructions of a KV tile (the hottest innermost loop) and stage 2's of one
    step over ``BLOCK_P`` pairs (its innermost loops stepping by ``BLOCK_P``: the LSE max and the
    weighted sum), plus each kernel's straight-line warp-instructions."""
    hot1 = kv_loop(compiled1)
    # a KV tile: the KV loop's shortest iteration (results without it: every path); the blocks a tile can
    # branch around (a partial last tile's mask, a lazy rescale) once per work item. An assumption: a work
    # item's first tile rescales, later ones only when a row's max grows past 2**8 (data dependent; at
    # bf16 32/8 8192 + 64 the wide launch stays MMA-bound up to about a quarter of its tiles rescaling,
    # and every tile rescaling costs it 11 us of issue). The lazy rescale's CTA-wide flag reduction adds
    # a barrier per tile that an issue count does not see. Sound for stage 1's KV loop, whose only
    # branches are those two: the static check fails a KV loop that can skip a memory, MMA or sync op,
    # or more than the mask-and-rescale budget (check.min_path_failures); the sampler's loops, with
    # branches on common paths, keep every path
    tile = hot1.get("instructions_min_path") or hot1["instructions_excl"]
    # per work item: every other loop of stage 1 once (the persistent loop's own body, one step of
    # the window lookup's binary search: first tiles skip the search, windows run it log2(C) times)
    item = sum(lp["instructions_excl"] for lp in compiled1["loops"] if lp is not hot1)
    item += hot1["instructions_excl"] - tile
    l2 = _innermost(compiled2)
    stepped = [lp for lp in l2 if lp.get("tokens_per_iter")]
    if stepped:
        pair_instr, block_p = sum(lp["instructions_excl"] for lp in stepped), stepped[0]["tokens_per_iter"]
    else:
        pair_instr, block_p = max(lp["instructions_excl"] for lp in l2), 1
    return {"tile_instr": tile, "item_instr": item, "pair_instr": pair_instr,
            "block_p": block_p,
            "cta1_warp": straight_line_warp_instr(compiled1), "cta2_warp": straight_line_warp_instr(compiled2)}


# ----------------------------------------------------------------------------------------------
# the benchmark shapes
# ----------------------------------------------------------------------------------------------
SAMPLER_SHAPES = dict(B=(1, 32, 256, 1024), V=(32000, 128256, 151936), dtypes=("fp32", "bf16"),
                      configs=("temp", "topk_topp_minp", "top_p", "min_p", "greedy"))
ATTENTION_SHAPES = [  # (N, prefix, suffix, heads name, dtype)
    (256, 8192, 64, "llama3-8b", "bf16"), (256, 8192, 512, "llama3-8b", "bf16"),
    (256, 8192, 64, "llama3-8b", "fp32"), (256, 8192, 64, "gqa8", "bf16"),
]
#: planner variants of every attention shape: name -> plan_tree_attention keyword arguments
#: (:data:`GPU_PARALLELISM` resolved per shape by :func:`plan_kwargs_for`)
ATTENTION_PLANS = {"default": {}, "wide": {"wide_chunk_rows": WIDE_CHUNK_ROWS},
                   "balanced": {"parallelism": GPU_PARALLELISM}}
QUICK_SAMPLER = dict(B=(1, 256), V=(32000,), dtypes=("fp32",), configs=("temp", "greedy"))
#: shapes of the sampler modelled with pass 1 at its other depth too (``sampler_pipelined``: the
#: ``triton_kernel.PASS1_STAGES`` entry the wrapper does not pick, ``tl.range(num_stages=3)``), the GPU benchmark's
#: pipeline suite's (B=1024 launches B=256's specialization); the quick set's one, compiled under every Triton CI runs
PIPELINED_SAMPLER = dict(B=(32, 256, 1024), V=(151936,), dtypes=("fp32", "bf16"), configs=("temp",))
QUICK_PIPELINED = dict(B=(256,), V=(32000,), dtypes=("fp32",), configs=("temp",))


def sampler_variants(quick: bool):
    """``(pass-1 depth, shapes, cost-model key)`` of the sampler's modelled launches: the depth the wrapper picks
    (``triton_kernel._pass1_stages``) at :data:`SAMPLER_SHAPES` (:data:`QUICK_SAMPLER`), then the other depth of
    ``PASS1_STAGES`` at :data:`PIPELINED_SAMPLER` (:data:`QUICK_PIPELINED`). ``spaces.benchmark_cases`` compiles
    what this lists; :func:`report` models it."""
    import torch
    from tts_kernels.sampling import triton_kernel as tkm
    default = tkm._pass1_stages(torch.device("cuda"))      # a device object only: nothing touches CUDA
    other = [s for s in tkm.PASS1_STAGES if s != default]
    return ([(default, QUICK_SAMPLER if quick else SAMPLER_SHAPES, "sampler")]
            + [(s, QUICK_PIPELINED if quick else PIPELINED_SAMPLER, "sampler_pipelined") for s in other])


def _record(fn):
    from . import aot
    with aot.recording() as launches:
        fn()
    return launches


@contextlib.contextmanager
def gpu_math():
    """The sampler's math as a GPU runs it: ``_fast_log`` True (the hardware ex2 of pass 1, ``FAST_LOG``, a
    constexpr), as on a CUDA tensor outside the interpreter; the static check records on CPU tensors, where the
    wrapper picks the exact function. Both recordings (:func:`as_gpu`, ``check.discover``) use it."""
    from tts_kernels.sampling import triton_kernel as tkm
    saved = tkm._fast_log
    tkm._fast_log = lambda t: True
    try:
        yield
    finally:
        tkm._fast_log = saved


@contextlib.contextmanager
def as_gpu(gpu=H100):
    """The wrappers' device queries answered for ``gpu`` (not the CPU): the sampler's slice count and math
    (:func:`gpu_math`), the tree-attention SM count (persistent grid, parallelism) and arch (tiles)."""
    from tts_kernels.attention import triton_kernel as tak
    from tts_kernels.sampling import triton_kernel as tkm
    saved, saved_sms, saved_arch = tkm._num_slices, tak._num_sms, tak._arch
    tkm._num_slices = lambda b, v, device: tkm.slices_for(b, v, gpu["sms"])
    tak._num_sms = lambda device: gpu["sms"]
    tak._arch = lambda device: int(gpu["arch"].split("_")[1])
    try:
        with gpu_math():
            yield
    finally:
        tkm._num_slices, tak._num_sms, tak._arch = saved, saved_sms, saved_arch


@contextlib.contextmanager
def pass1_stages(stages: int):
    """The sampler wrapper's pass-1 pipelining depth (``triton_kernel._pass1_stages``) set to ``stages``."""
    from tts_kernels.sampling import triton_kernel as tkm
    saved = tkm._pass1_stages
    tkm._pass1_stages = lambda device: stages
    try:
        yield
    finally:
        tkm._pass1_stages = saved


def _record_h100(fn, gpu=H100, stages: int = 0):
    """Record ``fn``'s launches as ``gpu`` would launch them (:func:`as_gpu`), pass 1 at pipelining depth
    ``stages`` (:func:`pass1_stages`)."""
    with as_gpu(gpu), pass1_stages(stages):
        return _record(fn)


def plan_kwargs_for(pkw: Dict[str, Any], N: int, hq: int, k_cache, gpu=H100) -> Dict[str, Any]:
    """``pkw`` with :data:`GPU_PARALLELISM` replaced by the Triton kernel's ``Parallelism`` on ``gpu``
    for N rows of ``hq`` query heads over ``k_cache``."""
    if pkw.get("parallelism") != GPU_PARALLELISM:
        return pkw
    from tts_kernels.attention import triton_kernel as tak
    _, bs, hkv, D = k_cache.shape
    with as_gpu(gpu):
        par = tak.parallelism(N, hq, hkv, D, k_cache.dtype, k_cache.device, bs)
    return dict(pkw, parallelism=par)


def _jsonable_plan_kwargs(pkw: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (v._asdict() if hasattr(v, "_asdict") else v) for k, v in pkw.items()}


_SCALAR = re.compile(r"^(i32|i64|u32|u64)(/16)?$|^1$")
#: constexprs that do not change a kernel's loops (the merge kernel's partials vector width)
LOOP_NEUTRAL = {"_merge_kernel": {"SP"}}


def _sibling(results, kernel, parts, arch_key):
    """The compiled spec of ``kernel`` closest to ``parts`` that differs only in runtime-scalar
    specializations (int divisibility, == 1) and :data:`LOOP_NEUTRAL` constexprs, or None."""
    best = None
    for r in results:
        if r["kernel"] != kernel:
            continue
        c = r["compiled"].get(arch_key)
        params = r.get("params") or {}
        if not (c and c.get("ok")) or set(params) != set(parts):
            continue
        diff = [k for k in parts if params[k] != parts[k]]
        if all(k in LOOP_NEUTRAL.get(kernel, ()) or (_SCALAR.match(parts[k]) and _SCALAR.match(params[k]))
               for k in diff):
            if best is None or len(diff) < best[0]:
                best = (len(diff), r, diff)
    return best


def _lookup(by_id, launch, arch, results=()):
    """(spec id, compiled stats or None, provenance): the exact spec, else a loop-equivalent sibling."""
    from . import aot
    b = aot.bind(launch, arch)
    sid = aot.spec_id(launch, b)
    r = by_id.get(sid)
    key = f"sm_{arch}"
    if r and r["compiled"].get(key, {}).get("ok"):
        return sid, r["compiled"][key], None
    sib = _sibling(results, launch.name, aot.spec_parts(launch, b), key)
    if sib:
        _, r, diff = sib
        return sid, r["compiled"][key], {"stats_from": r["spec"], "differs_in": diff}
    return sid, None, None


def _arg(launch, name):
    return dict(zip(launch.kernel.arg_names, launch.args), **launch.kwargs)[name]


def report(results: List[Dict[str, Any]], quick: bool = False, gpu: Dict[str, Any] = H100,
           _looked_up: Optional[list] = None) -> Dict[str, Any]:
    """Cost model for the benchmark shapes, from ``check.py``'s compiled results (sm_90 stats)."""
    import torch
    import tts_kernels as tk
    from tts_kernels.sampling import triton_kernel as tkm
    from . import spaces

    arch = int(gpu["arch"].split("_")[1])
    by_id = {r["spec"]: r for r in results}
    out = {"gpu": gpu, "select_passes_assumed": list(SELECT_PASSES), "attention_targets": ATTENTION_TARGETS,
           "sampler": [], "tree_attention": [], "not_compiled": [], "stats_from_sibling": []}

    def look(launch):
        if _looked_up is not None:
            from . import aot
            b = aot.bind(launch, arch)
            _looked_up.append({"kernel": launch.name, "spec": aot.spec_id(launch, b),
                               "params": aot.spec_parts(launch, b)})
        sid, comp, prov = _lookup(by_id, launch, arch, results)
        if comp is None:
            out["not_compiled"].append(sid)
        elif prov:
            out["stats_from_sibling"].append(dict(spec=sid, **prov))
        return sid, comp, prov

    for stages, shapes, key in sampler_variants(quick):
        out.setdefault(key, [])
        for dname, V, B in ((d, v, b) for d in shapes["dtypes"] for v in shapes["V"] for b in shapes["B"]):
            def call(B=B, V=V, dname=dname):
                tk.sample(torch.empty(B, V, dtype=spaces.DTYPES[dname]), temperature=0.8, seed=1, offset=0,
                          check_nan=False, validate=False, backend="triton")
            launches = _record_h100(call, gpu, stages)
            itemsize = spaces.DTYPES[dname].itemsize
            looked = [look(lc) for lc in launches]
            if any(c is None for _, c, _ in looked):
                continue
            names = [lc.name for lc in launches]
            if names == ["_sample_kernel"]:
                (sid, comp, prov), = looked
                instr = sampler_instr(comp, launches[0].name)
                extra = dict(spec=sid, registers=comp["registers"], ctas_per_sm=comp["ctas_per_sm"],
                             select_found=instr["select_found"], pass1_ldg=instr["pass1_ldg"],
                             instr_per_token={k: instr[k] for k in _SAMPLER_RATES},
                             select_step_warp_instr=instr["select_step"], instr_per_group=instr["groups"],
                             draw_instr_per_group=instr["draw_groups"],
                             list_instr_per_group=[instr["list"], instr["draw_list"]],
                             pass1_mufu_per_token=instr["pass1_mufu"],
                             draw_mufu_per_token=instr["draw_mufu"],
                             cta_warp_instr=instr["cta_warp"], cta_warp_paths=instr["cta_warp_paths"],
                             stats_from=prov and prov["stats_from"])
                p1_instr = instr

                block = int(_arg(launches[0], "BLOCK"))

                def bound(cfg, p1, comp=comp):
                    return sampler_bound(B, V, itemsize, cfg, p1, comp["ctas_per_sm"], gpu=gpu)
                loops = {"row": instr["loops"]}
            else:
                lp_, lm = (next(lc for lc in launches if lc.name == n)
                           for n in ("_partial_kernel", "_merge_kernel"))
                (s1, c1, p1), (s2, c2, p2) = (looked[launches.index(lc)] for lc in (lp_, lm))
                ip, im = sampler_instr(c1, lp_.name), sampler_instr(c2, lm.name)
                S, chunk, block = lp_.grid[1], int(_arg(lp_, "CHUNK")), int(_arg(lp_, "BLOCK"))
                extra = dict(spec=s1, merge_spec=s2, registers=c1["registers"], ctas_per_sm=c1["ctas_per_sm"],
                             merge_registers=c2["registers"], merge_ctas_per_sm=c2["ctas_per_sm"],
                             select_found=im["select_found"], pass1_ldg=ip["pass1_ldg"],
                             instr_per_token=dict({k: im[k] for k in _SAMPLER_RATES}, pass1=ip["pass1"]),
                             select_step_warp_instr=im["select_step"], instr_per_group=im["groups"],
                             draw_instr_per_group=im["draw_groups"],
                             list_instr_per_group=[im["list"], im["draw_list"]],
                             pass1_mufu_per_token=ip["pass1_mufu"],
                             draw_mufu_per_token=im["draw_mufu"],
                             cta_warp_instr={"partial": ip["cta_warp"], "merge": im["cta_warp"]},
                             cta_warp_paths=im["cta_warp_paths"],
                             stats_from=p1 and p1["stats_from"], merge_stats_from=p2 and p2["stats_from"])
                p1_instr = ip

                def bound(cfg, p1, S=S, chunk=chunk, im=im, c1=c1):
                    return split_row_bound(B, V, itemsize, cfg, S, chunk, p1, im, c1["ctas_per_sm"], gpu=gpu)
                loops = {"partial": ip["loops"], "merge": im["loops"]}
            # every config with the default call's pass 1 and without logprobs' (p1_instr: pass 1's counts)
            extra.update(pass1_no_logprobs=p1_instr["pass1_lean"],
                         pass1_mufu_per_token_no_logprobs=p1_instr["pass1_lean_mufu"])
            lean = without_logprobs(p1_instr)
            for cfg in shapes["configs"]:
                # greedy and T = 1 rows take the logprobs from the draw sums: pass 1 as without logprobs
                shared = tkm.shares_draw_sums(spaces.FILTERS[cfg]["temperature"])
                rec, without = bound(cfg, lean if shared else p1_instr), bound(cfg, lean)
                rec["logprobs_from_draw_sums"] = shared
                rec.update(no_logprobs={side: without[side] for side in ("low", "high")}, dtype=dname, **extra)
                rec["pass1_stages"] = stages
                rec["pass1_loads_in_flight"] = loads_in_flight(rec, block, gpu, stages)
                out[key].append(rec)
            for path, lps in loops.items():
                out.setdefault("sampler_loops", {}).setdefault(
                    f"{dname} V={V} {path}" + (f" stages={stages}" if stages else ""), lps)
    for (N, prefix, suffix, heads, dname) in ([] if quick else ATTENTION_SHAPES):
        hq, hkv, D = spaces.HEADS[heads]
        for pname, pkw in ATTENTION_PLANS.items():
            rec = attention_record(look, N, prefix, suffix, hq, hkv, D, dname, pkw, gpu)
            if isinstance(rec, str):
                out.setdefault("skipped", []).append(rec)
            elif rec is not None:
                rec.update(plan=pname, heads=heads)
                out["tree_attention"].append(rec)
    return out


def attention_record(look, N, prefix, suffix, hq, hkv, D, dname, plan_kwargs, gpu=H100, block_size=16):
    """The model of one tree-attention call: N rows sharing ``prefix`` tokens, ``suffix`` own tokens
    each, planned with ``plan_tree_attention(**plan_kwargs)``, launched as ``gpu`` would launch it.
    ``look(launch) -> (spec id, compiled stats or None, provenance)``. Returns the record, None when
    a kernel's stats are missing, or a string saying why it was skipped."""
    import tts_kernels as tk
    from . import spaces
    from tts_kernels.attention.planner import plan_tree_attention

    q, k, v, bt, sl, plan = spaces.attention_inputs(N, prefix, suffix, hq, hkv, D, spaces.DTYPES[dname],
                                                    bs=block_size)
    plan_kwargs = plan_kwargs_for(plan_kwargs, N, hq, k, gpu)
    if plan_kwargs:
        plan = plan_tree_attention(bt, sl, int(k.shape[1]), **plan_kwargs)
    launches = _record_h100(lambda: tk.tree_attention(q, k, v, bt, sl, plan=plan, validate=False,
                                                      backend="triton"), gpu)
    # one stage-1 launch, or the wide one (MAX_ROWS 0) and the narrow one (triton_kernel.rows_launches)
    s1 = sorted((lc for lc in launches if lc.name.endswith("stage1")), key=lambda lc: lc.kwargs.get("MAX_ROWS", 0))
    l1, ln = s1[0], (s1[1] if len(s1) > 1 else None)
    l2 = next(lc for lc in launches if lc.name.endswith("stage2"))
    sid1, c1, p1 = look(l1)
    sid2, c2, p2 = look(l2)
    sidn, cn, pn = look(ln) if ln is not None else (None, None, None)
    if not (c1 and c2) or (ln is not None and not cn):
        return None
    kw = l1.kwargs
    if "BLOCK_R" not in kw or "BLOCK_N" not in kw:  # the kernel changed its tile names
        return f"tree attention {hq}/{hkv}x{D} {dname}: no BLOCK_R/BLOCK_N launch argument in {l1.name}"
    ai = attention_instr(c1, c2)
    narrow = None
    if ln is not None:
        an = attention_instr(cn, c2)
        narrow = dict(min_rows=ln.kwargs["MIN_ROWS"], max_rows=ln.kwargs["MAX_ROWS"], block_m=ln.kwargs["BLOCK_M"],
                      block_n=ln.kwargs["BLOCK_N"],
                      grid=ln.grid,
                      warps=cn["num_warps"], tile_instr=an["tile_instr"], item_warp=an["item_instr"] * cn["num_warps"],
                      cta_warp=an["cta1_warp"])
    op = _arg(l1, "out_p_ptr")
    rows = (plan.chunk_q_ptr[1:] - plan.chunk_q_ptr[:-1]).tolist()
    pairs = (plan.row_pair_ptr[1:] - plan.row_pair_ptr[:-1]).tolist()
    rec = attention_bound(plan.chunk_len.tolist(), rows, pairs, hq, hkv, D, spaces.DTYPES[dname].itemsize,
                          kw["BLOCK_R"], kw["BLOCK_N"], l1.grid, c1["num_warps"], ai["tile_instr"], l2.grid,
                          c2["num_warps"], ai["pair_instr"], block_size=plan.block_size, gpu=gpu,
                          partial_itemsize=op.element_size(), block_p=ai["block_p"],
                          cta1_warp=ai["cta1_warp"], cta2_warp=ai["cta2_warp"],
                          item_warp=ai["item_instr"] * c1["num_warps"], narrow=narrow,
                          min_rows=kw["MIN_ROWS"], max_rows=kw["MAX_ROWS"], block_m=kw["BLOCK_M"])
    rec.update(plan_kwargs=_jsonable_plan_kwargs(plan_kwargs), prefix=prefix, suffix=suffix, Hq=hq, Hkv=hkv, D=D,
               dtype=dname, stage1_spec=sid1, stage1_stats_from=p1 and p1["stats_from"],
               stage2_spec=sid2, stage2_stats_from=p2 and p2["stats_from"],
               stage1_registers=c1["registers"],
               stage1_spill_bytes=c1["spill_store_bytes"] + c1["spill_load_bytes"],
               stage1_ctas_per_sm=c1["ctas_per_sm"], stage1_instr_per_tile=ai["tile_instr"],
               stage1_instr_per_item=ai["item_instr"],
               stage1_grid_ctas_per_sm=math.prod(l1.grid) / gpu["sms"],
               stage1_warp_instr_per_tile=ai["tile_instr"] * c1["num_warps"],
               stage2_instr_per_step=ai["pair_instr"], stage2_block_p=ai["block_p"])
    if narrow:
        rec.update(narrow_spec=sidn, narrow_stats_from=pn and pn["stats_from"], narrow_registers=cn["registers"],
                   narrow_spill_bytes=cn["spill_store_bytes"] + cn["spill_load_bytes"],
                   narrow_ctas_per_sm=cn["ctas_per_sm"], narrow_instr_per_tile=narrow["tile_instr"],
                   narrow_block_n=narrow["block_n"])
    return rec


#: the committed static-check results (compiled stats and the cost model) that predictions come from
STATIC_RESULTS = Path(__file__).resolve().parent.parent / "results" / "gpu_static.json"
_BENCH_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
#: benchmarks/common.CONFIGS name -> this model's sampler config name
_BENCH_CONFIGS = {"temp": "temp", "topk_topp_minp": "topk_topp_minp", "topp": "top_p", "greedy": "greedy",
                  "min_p": "min_p"}


#: the Triton sampler's benchmark entries (``benchmarks/baselines.py``) -> whether they return logprobs
_TRITON_IMPLS = {"tts_kernels.triton": True, "tts_kernels.triton-tokens": False}


def predict_for_results(results: Dict[str, Any], static_path: Optional[str] = None,
                        gpu: Dict[str, Any] = H100) -> Dict[str, Any]:
    """The model's bound beside each measurement of ``benchmarks/gpu_suite.py`` (its ``results``:
    the sampler sweep's and the tree-attention sweep's JSON), for the Triton kernels.

    Sampler shapes come from the cost model committed in ``static_path`` (default
    :data:`STATIC_RESULTS`); every measured tree-attention shape (default plan as ``tree``, the wide
    plan as ``tree_wide``, the load-balanced plan as ``tree_balanced``) is modelled here from that file's compiled stats. The model assumes
    ``gpu`` (an H100 unless told): on another GPU compare ratios, not absolute times. Returns
    ``{"sampler": [...], "tree_attention": [...], "not_modelled": [...]}`` with, per measurement,
    ``measured_s``, ``predicted_s`` (a range for the sampler: the select reads assumed, ``SELECT_PASSES``) and
    ``measured_over_predicted`` (and, for the sampler, the record's ``pass1_loads_in_flight``, which no bound
    counts: :func:`loads_in_flight`); the sweep's records and the pipeline suite's, each mode against its own
    pass 1 (``sampler_pipelined`` for ``stages`` 3); the tokens-only kernel (``tts_kernels.triton-tokens``: ``return_logprobs=False``)
    against a record's ``no_logprobs`` bounds, ``logprobs`` False."""
    path = Path(static_path or STATIC_RESULTS)
    if not path.exists():
        return {"error": f"no static-check results at {path}"}
    d = json.loads(path.read_text())
    cm = d.get("cost_model") or {}
    out = {"model": "static cost model (benchmarks/gpu_static): bounds at perfect issue, not measurements",
           "gpu_assumed": gpu["name"], "static_results": str(path),
           "static_commit": (d.get("environment") or {}).get("commit"),
           "sampler": [], "tree_attention": [], "not_modelled": []}
    by_cfg = {(r["B"], r["V"], r["dtype"], r["config"], r.get("pass1_stages", 0)): r
              for key in ("sampler", "sampler_pipelined") for r in cm.get(key, [])}
    for m in (results.get("sampler") or {}).get("records", []):
        # the sweep, and the pipeline suite's modes (pass 1 plain, the sweep's kernel, or pipelined)
        if m.get("suite") not in ("sweep", "pipeline") or m.get("impl") not in _TRITON_IMPLS:
            continue
        with_lp = _TRITON_IMPLS[m["impl"]]
        dn = _BENCH_DTYPES.get(m["dtype"], m["dtype"])
        cfg = _BENCH_CONFIGS.get(m["config"], m["config"])
        stages = m.get("stages", 0)
        r = by_cfg.get((m["B"], m["V"], dn, cfg, stages))
        name = f"sampler {cfg} B={m['B']} V={m['V']} {dn}" + (f" ({m['suite']} stages={stages})"
                                                              if m["suite"] != "sweep" else "")
        if r is None:
            out["not_modelled"].append(name)
            continue
        if not with_lp:
            if "no_logprobs" not in r:   # (a results JSON before 2d1c260)
                out["not_modelled"].append(name + " (tokens only)")
                continue
            r = dict(r, **r["no_logprobs"])
        pred = [r["low"]["t_bound_s"], r["high"]["t_bound_s"]]
        out["sampler"].append(dict(
            B=m["B"], V=m["V"], dtype=dn, config=cfg, logprobs=with_lp, suite=m["suite"], pass1_stages=stages,
            measured_s=m["median_s"], predicted_s=pred,
            bound=[r["low"]["bound"], r["high"]["bound"]],
            measured_over_predicted=[_t(m["median_s"] / x) if x else None for x in pred],
            measured_frac_copy_bw=m.get("frac_copy_bw"),
            predicted_frac_hbm=[r["low"]["frac_hbm_bw"], r["high"]["frac_hbm_bw"]],
            pass1_loads_in_flight=r.get("pass1_loads_in_flight")))   # (not in results JSONs before 52fb69a)
    measured = (results.get("tree_attention") or {}).get("records", [])
    if measured:
        from tts_kernels.attention.plan import Parallelism
        by_id = {r["spec"]: r for r in d.get("specs", [])}
        arch = int(gpu["arch"].split("_")[1])

        def look(launch):
            return _lookup(by_id, launch, arch, d.get("specs", []))

        for m in measured:
            dn = _BENCH_DTYPES.get(m["dtype"], m["dtype"])
            # the balanced plan the benchmark timed (its device's parallelism), else the modelled GPU's
            bal = ({"parallelism": Parallelism(**m["parallelism"])} if m.get("parallelism")
                   else ATTENTION_PLANS["balanced"])
            for impl, pkw in (("tree", {}), ("tree_wide", {"wide_chunk_rows": m.get("wide_chunk_rows")}),
                              ("tree_balanced", bal)):
                t = (m.get("times_s") or {}).get(impl)
                name = (f"tree attention {impl} N={m['N']} {m['prefix']}+{m['suffix']} "
                        f"{m['Hq']}/{m['Hkv']}x{m['D']} {dn}")
                if t is None or (impl == "tree_wide" and not pkw["wide_chunk_rows"]):
                    continue
                rec = attention_record(look, m["N"], m["prefix"], m["suffix"], m["Hq"], m["Hkv"], m["D"], dn,
                                       pkw, gpu, m.get("block_size", 16))
                if not isinstance(rec, dict):
                    out["not_modelled"].append(name + (f": {rec}" if rec else ": a kernel's stats are missing"))
                    continue
                out["tree_attention"].append(dict(
                    N=m["N"], prefix=m["prefix"], suffix=m["suffix"], Hq=m["Hq"], Hkv=m["Hkv"], D=m["D"], dtype=dn,
                    impl=impl, tree_impl=m.get("tree_impl"), measured_s=t, predicted_s=rec["t_bound_s"],
                    bound=rec["bound"], measured_over_predicted=_t(t / rec["t_bound_s"]) if rec["t_bound_s"] else None,
                    predicted_hbm_floor_s=rec["t_hbm_floor_s"], shared_kv_read_factor=rec["shared_kv_read_factor"],
                    partial_over_kv=rec["partial_over_kv"], ctas_launched=rec["ctas_launched"]))
    return out


# ----------------------------------------------------------------------------------------------
# CLI: recompute from a results JSON (no compiling)
# ----------------------------------------------------------------------------------------------
def needed_specs(quick: bool = False, gpu: Dict[str, Any] = H100) -> List[Dict[str, str]]:
    """The specializations (kernel, spec id, params) the cost model looks up, for the given set."""
    looked: List[Dict[str, Any]] = []
    report([], quick=quick, gpu=gpu, _looked_up=looked)
    return list({x["spec"]: x for x in looked}.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Recompute the static cost model from a gpu_static results JSON "
                                             "(no compiling, no GPU).")
    ap.add_argument("--from", dest="src", help="results JSON of benchmarks.gpu_static.check (its 'specs')")
    ap.add_argument("--out", help="write the results JSON with 'cost_model' replaced here (default: print a "
                                  "summary only)")
    ap.add_argument("--set", choices=("quick", "full"), default=None,
                    help="shapes to model (default: the JSON's own 'set')")
    ap.add_argument("--list-specs", action="store_true", help="print the specializations the model looks up")
    args = ap.parse_args(argv)
    # the wrappers must launch real JITFunctions (recorded, never run), not the interpreter's
    os.environ["TRITON_INTERPRET"] = "0"
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if args.list_specs:
        print(json.dumps(needed_specs(quick=args.set == "quick"), indent=1))
        return 0
    if not args.src:
        ap.error("--from is required")
    d = json.loads(Path(args.src).read_text())
    quick = (args.set or d.get("set", "full")) == "quick"
    d["cost_model"] = report(d["specs"], quick=quick)
    d.pop("cost_model_error", None)
    d["cost_model_recomputed"] = {"from": str(args.src), "set": "quick" if quick else "full",
                                  "by": "python -m benchmarks.gpu_static.cost_model --from"}
    cm = d["cost_model"]
    print(f"[cost-model] {len(cm['sampler'])} sampler records, {len(cm['tree_attention'])} tree-attention records, "
          f"{len(cm['not_compiled'])} not compiled, {len(cm['stats_from_sibling'])} from a sibling spec")
    for r in cm["tree_attention"]:
        tg = r["targets"]
        print(f"[cost-model] attention {r['dtype']} {r['heads']} N={r['N']} {r['prefix']}+{r['suffix']} "
              f"plan={r['plan']}: shared KV read x{tg['shared_kv_read_factor']['value']}, partials/KV "
              f"{tg['partial_over_kv']['value']}, dead CTAs {tg['dead_ctas']['value']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(d, f, indent=1, default=str)
            f.write("\n")
        print(f"[cost-model] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
