"""Cost model of the Triton kernels on an H100, from the statically compiled specializations.

Pure arithmetic, no GPU: bounds, never measurements. Inputs are the compiled stats of
``check.py`` (per-thread SASS instructions per loop iteration, warps, CTAs per SM) and the
launches the wrappers make for each benchmark shape (grids, tile sizes, the real plan).

Assumptions (:data:`H100`): H100 SXM5, 132 SMs, HBM3 3.35 TB/s, 50 MB L2, 1.755 GHz boost
clock, 4 warp-instructions issued per clock per SM (one per sub-partition). "Instructions" are
SASS instructions counted statically in a loop body: every path of the body once (so a body
with a runtime branch, e.g. pass 1's ``if do_draw``, is counted with the branch taken), each
executed by every warp of the CTA once per iteration. The issue bound assumes perfect issue
(no stalls, no latency): it is a floor on time, as is the bandwidth bound; a kernel is at best
``max(issue bound, bandwidth bound)``.

* Sampler (one program per row): the busiest SM runs ``ceil(B / 132)`` rows;
  a row costs ``V x (pass-1 + selects x select + draws x draw)`` thread-instructions per token
  / 32 warp-instructions. Full-row passes: 1 (greedy, temperature); + ``select_passes`` per
  top-k/top-p radix select (data dependent: 1-8 by construction, default range (3, 7) as
  observed in issue 14); + 0-1 filtered draw. Bytes that must move: the logits once
  (``B x V x itemsize``) plus 12 B of output per row.
* Tree attention: from the real plan. Launched CTAs = the stage-1 grid; live CTAs = for every
  non-empty chunk ``ceil(rows / BLOCK_R) x Hkv``; L2-to-SM KV bytes = each live CTA reads its
  chunk's K and V for its KV head; unique KV bytes = each chunk once; partials = float32
  ``P x Hq x (D + 1)`` written by stage 1 and read by stage 2; the floor = unique KV + q + out.
  Issue bound: ``max(total warp-instructions / (132 x 4 x clock), the largest CTA / (4 x clock))``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

H100 = dict(name="H100 SXM5 (assumed, not measured)", sms=132, hbm_bytes_per_s=3.35e12, l2_bytes=50 * 2 ** 20,
            clock_hz=1.755e9, warp_instr_per_clk_per_sm=4, arch="sm_90")

SAMPLER_CONFIGS = {  # name -> (radix selects, filtered draw possible)
    "greedy": (0, False), "temp": (0, False), "min_p": (0, True),
    "top_k": (1, True), "top_p": (1, True), "topk_topp_minp": (2, True),
}
SELECT_PASSES = (3, 7)


def _t(x: float) -> float:
    return float(f"{x:.4g}")


# ----------------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------------
def sampler_passes(config: str, select_passes: Tuple[int, int] = SELECT_PASSES) -> Dict[str, Tuple[int, int]]:
    """(low, high) full-row passes by kind for a sampling config."""
    sel, draw = SAMPLER_CONFIGS[config]
    lo, hi = select_passes
    p = {"pass1": (1, 1), "select": (sel * lo, sel * hi), "draw": (0, 1 if draw else 0)}
    p["total"] = (sum(v[0] for v in p.values()), sum(v[1] for v in p.values()))
    return p


def sampler_bound(B: int, V: int, itemsize: int, config: str, instr: Dict[str, float],
                  ctas_per_sm: int = 1, select_passes: Tuple[int, int] = SELECT_PASSES,
                  gpu: Dict[str, Any] = H100) -> Dict[str, Any]:
    """Bounds for one sampler launch. ``instr``: thread-instructions per token of a pass-1,
    select and draw pass (from the SASS)."""
    passes = sampler_passes(config, select_passes)
    floor = B * V * itemsize + 12 * B
    logits = B * V * itemsize
    rate = gpu["warp_instr_per_clk_per_sm"] * gpu["clock_hz"]
    rows_busiest_sm = math.ceil(B / gpu["sms"])
    out = {"B": B, "V": V, "itemsize": itemsize, "config": config, "bytes_floor": floor,
           "full_row_passes": list(passes["total"]), "active_sms": min(B, gpu["sms"]),
           "rows_on_busiest_sm": rows_busiest_sm,
           "rows_in_flight": min(B, gpu["sms"] * ctas_per_sm),
           "l2_working_set_bytes": min(B, gpu["sms"] * ctas_per_sm) * V * itemsize}
    out["l2_working_set_fits"] = out["l2_working_set_bytes"] <= gpu["l2_bytes"]
    t_bw = floor / gpu["hbm_bytes_per_s"]
    for side, k in (("low", 0), ("high", 1)):
        thr_per_token = sum(passes[p][k] * instr[p] for p in ("pass1", "select", "draw"))
        warp_per_row = V * thr_per_token / 32
        t_issue = rows_busiest_sm * warp_per_row / rate
        t = max(t_issue, t_bw)
        out[side] = {"full_row_passes": passes["total"][k], "thread_instr_per_token": _t(thr_per_token),
                     "l2_to_sm_bytes": passes["total"][k] * logits, "t_issue_s": _t(t_issue),
                     "t_hbm_floor_s": _t(t_bw), "t_bound_s": _t(t), "bound": "issue" if t_issue > t_bw else "hbm",
                     "gbps_bound": _t(floor / t / 1e9), "frac_hbm_bw": _t(floor / t / gpu["hbm_bytes_per_s"])}
    return out


def _sampler_roles() -> Dict[str, str]:
    """``COST_MODEL_ROLES`` of the Triton sampler module: device function of pass 1, the select passes
    and the filtered draw (empty when the module does not declare them: loops of the kernel itself)."""
    try:
        from tts_kernels.sampling import triton_kernel
    except ImportError:
        return {}
    return dict(getattr(triton_kernel, "COST_MODEL_ROLES", {}))


def sampler_instr(compiled: Dict[str, Any], kernel_fn: str) -> Dict[str, Any]:
    """Thread-instructions per token of pass 1, a select pass and the filtered draw from the SASS
    loops: the row loops of the kernel function in source order (first = pass 1, last = the
    filtered draw) and the innermost loops of its helpers (the radix-select passes, the largest)."""
    loops = [lp for lp in compiled["loops"] if lp.get("thread_instr_per_token") and lp["source"]]
    roles = _sampler_roles()  # the kernel module names the device functions of its passes, if it splits them out
    row_fns = {kernel_fn, roles.get("pass1"), roles.get("draw")} - {None}
    own = sorted((lp for lp in loops if lp["source"]["function"] in row_fns),
                 key=lambda lp: (lp["source"]["function"] != roles.get("pass1", kernel_fn),
                                 lp["source"]["function"] == roles.get("draw"), lp["source"]["line"]))
    helpers = [lp for lp in loops if lp["source"]["function"] not in row_fns and lp["innermost"]]
    if not own:
        raise ValueError(f"no row loop of {kernel_fn} found in the SASS")
    # select passes: loops in helpers, or row loops of the kernel between pass 1 and the draw
    candidates = helpers + [lp for lp in own[1:-1] if lp["innermost"]]
    sel = max(candidates, key=lambda lp: lp["thread_instr_per_token"]) if candidates else None
    return {"pass1": own[0]["thread_instr_per_token"],
            "select": sel["thread_instr_per_token"] if sel else 0.0, "select_found": sel is not None,
            "draw": own[-1]["thread_instr_per_token"] if len(own) > 1 else own[0]["thread_instr_per_token"],
            "pass1_ldg": own[0]["ldg_ops"], "loops": [
                {"role": "pass1" if lp is own[0] else ("draw" if lp is own[-1] else "row loop"),
                 "source": f"{lp['source']['function']}:{lp['source']['line']}", "tokens_per_iter": lp["tokens_per_iter"],
                 "instructions_per_iter": lp["instructions_excl"], "thread_instr_per_token": lp["thread_instr_per_token"],
                 "ldg_ops": lp["ldg_ops"]} for lp in own] + [
                {"role": "select", "source": f"{lp['source']['function']}:{lp['source']['line']}",
                 "tokens_per_iter": lp["tokens_per_iter"], "instructions_per_iter": lp["instructions_excl"],
                 "thread_instr_per_token": lp["thread_instr_per_token"], "ldg_ops": lp["ldg_ops"]} for lp in helpers]}


# ----------------------------------------------------------------------------------------------
# tree attention
# ----------------------------------------------------------------------------------------------
def attention_bound(chunk_len: Sequence[int], rows_per_chunk: Sequence[int], pairs_per_row: Sequence[int],
                    Hq: int, Hkv: int, D: int, itemsize: int, block_r: int, block_n: int, grid1: Sequence[int],
                    warps1: int, tile_instr: float, grid2: Sequence[int], warps2: int, pair_instr: float,
                    block_size: int = 16, gpu: Dict[str, Any] = H100) -> Dict[str, Any]:
    """Bounds for one tree-attention call. ``tile_instr``: per-thread SASS instructions of one
    stage-1 KV tile (BLOCK_N tokens); ``pair_instr``: of one stage-2 pair iteration."""
    N = len(pairs_per_row)
    P = sum(pairs_per_row)
    kv_tok = D * 2 * itemsize  # K and V bytes of one token of one KV head
    launched = math.prod(grid1)
    live = sum(math.ceil(r / block_r) * Hkv for c, r in zip(chunk_len, rows_per_chunk) if c > 0 and r > 0)
    unique_kv = sum(c * Hkv * kv_tok for c in chunk_len)
    l2_kv = sum(math.ceil(r / block_r) * Hkv * c * kv_tok for c, r in zip(chunk_len, rows_per_chunk) if r > 0)
    tiles = [math.ceil(c / block_n) for c in chunk_len]
    iters1 = sum(math.ceil(r / block_r) * Hkv * t for t, r in zip(tiles, rows_per_chunk) if r > 0)
    partial = P * Hq * (D + 1) * 4
    q_bytes = N * Hq * D * itemsize
    out_bytes = N * Hq * D * itemsize + N * Hq * 4
    floor = unique_kv + q_bytes + out_bytes
    design_hbm = unique_kv + P * Hq * D * itemsize + 2 * partial + out_bytes
    hb = grid2[1] if len(grid2) > 1 else 1
    rate = gpu["warp_instr_per_clk_per_sm"] * gpu["clock_hz"]
    w1 = iters1 * tile_instr * warps1
    w2 = P * hb * pair_instr * warps2
    biggest_cta = max([t * tile_instr * warps1 for t in tiles] + [0])
    t_issue = max((w1 + w2) / (gpu["sms"] * rate), biggest_cta / rate)
    t_floor = floor / gpu["hbm_bytes_per_s"]
    t_design = design_hbm / gpu["hbm_bytes_per_s"]
    t = max(t_issue, t_design)
    return {
        "N": N, "pairs": P, "chunks": len(chunk_len), "block_r": block_r, "block_n": block_n,
        "ctas_launched": launched, "ctas_live": live, "ctas_exit_at_once_frac": _t(1 - live / launched) if launched else 0,
        "bytes_floor": floor, "unique_kv_bytes": unique_kv, "l2_to_sm_kv_bytes": l2_kv,
        "kv_reads_per_unique_byte": _t(l2_kv / unique_kv) if unique_kv else None,
        "block_table_l2_to_sm_bytes": sum(math.ceil(r / block_r) * Hkv * c * 4
                                          for c, r in zip(chunk_len, rows_per_chunk) if r > 0),
        "partial_bytes_written_and_read": 2 * partial, "partial_over_kv": _t(2 * partial / unique_kv) if unique_kv else None,
        "hbm_bytes_this_design": design_hbm, "stage1_kv_tiles": iters1,
        "stage1_warp_instr": int(w1), "stage2_warp_instr": int(w2),
        "t_issue_s": _t(t_issue), "t_hbm_floor_s": _t(t_floor), "t_hbm_this_design_s": _t(t_design),
        "t_bound_s": _t(t), "bound": "issue" if t_issue > t_design else "hbm",
        "frac_of_floor_time": _t(t_floor / t),
    }


def attention_instr(compiled1: Dict[str, Any], compiled2: Dict[str, Any]) -> Tuple[float, float]:
    """(per-thread instructions of a stage-1 KV tile, of a stage-2 pair iteration): the hottest
    innermost loop of each kernel."""
    def hot(c):
        loops = [lp for lp in c["loops"] if lp["innermost"]]
        if not loops:
            raise ValueError("no loop in the SASS")
        return max(loops, key=lambda lp: lp["instructions_excl"])
    return hot(compiled1)["instructions_excl"], hot(compiled2)["instructions_excl"]


# ----------------------------------------------------------------------------------------------
# the benchmark shapes
# ----------------------------------------------------------------------------------------------
SAMPLER_SHAPES = dict(B=(1, 32, 256, 1024), V=(32000, 128256, 151936), dtypes=("fp32", "bf16"),
                      configs=("temp", "topk_topp_minp", "top_p", "greedy"))
ATTENTION_SHAPES = [  # (N, prefix, suffix, heads name, dtype)
    (256, 8192, 64, "llama3-8b", "bf16"), (256, 8192, 512, "llama3-8b", "bf16"),
    (256, 8192, 64, "llama3-8b", "fp32"), (256, 8192, 64, "gqa8", "bf16"),
]
QUICK_SAMPLER = dict(B=(1, 256), V=(32000,), dtypes=("fp32",), configs=("temp",))


def _record(fn):
    from . import aot
    with aot.recording() as launches:
        fn()
    return launches


def _lookup(by_id, launch, arch):
    from . import aot
    b = aot.bind(launch, arch)
    sid = aot.spec_id(launch, b)
    r = by_id.get(sid)
    return sid, (r["compiled"].get(f"sm_{arch}") if r else None)


def report(results: List[Dict[str, Any]], quick: bool = False, gpu: Dict[str, Any] = H100) -> Dict[str, Any]:
    """Cost model for the benchmark shapes, from ``check.py``'s compiled results (sm_90 stats)."""
    import torch
    import tts_kernels as tk
    from . import spaces

    arch = int(gpu["arch"].split("_")[1])
    by_id = {r["spec"]: r for r in results}
    out = {"gpu": gpu, "select_passes_assumed": list(SELECT_PASSES), "sampler": [], "tree_attention": [],
           "not_compiled": []}
    shapes = QUICK_SAMPLER if quick else SAMPLER_SHAPES
    for dname in shapes["dtypes"]:
        for V in shapes["V"]:
            for B in shapes["B"]:
                def call(B=B, V=V, dname=dname):
                    tk.sample(torch.empty(B, V, dtype=spaces.DTYPES[dname]), temperature=0.8, seed=1, offset=0,
                              check_nan=False, validate=False, backend="triton")
                (launch,) = _record(call)
                sid, comp = _lookup(by_id, launch, arch)
                if not comp or not comp.get("ok"):
                    out["not_compiled"].append(sid)
                    continue
                instr = sampler_instr(comp, launch.name)
                for cfg in shapes["configs"]:
                    rec = sampler_bound(B, V, spaces.DTYPES[dname].itemsize, cfg, instr, comp["ctas_per_sm"],
                                        gpu=gpu)
                    rec.update(dtype=dname, spec=sid, registers=comp["registers"], ctas_per_sm=comp["ctas_per_sm"],
                               select_found=instr["select_found"],
                               pass1_ldg=instr["pass1_ldg"],
                               instr_per_token={k: instr[k] for k in ("pass1", "select", "draw")})
                    out["sampler"].append(rec)
                if B == shapes["B"][0]:
                    out.setdefault("sampler_loops", {})[f"{dname} V={V}"] = instr["loops"]
    for (N, prefix, suffix, heads, dname) in ([] if quick else ATTENTION_SHAPES):
        hq, hkv, D = spaces.HEADS[heads]
        q, k, v, bt, sl, plan = spaces.attention_inputs(N, prefix, suffix, hq, hkv, D, spaces.DTYPES[dname])
        launches = _record(lambda: tk.tree_attention(q, k, v, bt, sl, plan=plan, validate=False, backend="triton"))
        l1 = next(lc for lc in launches if lc.name.endswith("stage1"))
        l2 = next(lc for lc in launches if lc.name.endswith("stage2"))
        sid1, c1 = _lookup(by_id, l1, arch)
        sid2, c2 = _lookup(by_id, l2, arch)
        if not (c1 and c1.get("ok") and c2 and c2.get("ok")):
            out["not_compiled"] += [s for s, c in ((sid1, c1), (sid2, c2)) if not (c and c.get("ok"))]
            continue
        tile_instr, pair_instr = attention_instr(c1, c2)
        kw = l1.kwargs
        if "BLOCK_R" not in kw or "BLOCK_N" not in kw:  # the kernel changed its tile names
            out["skipped"] = out.get("skipped", []) + [f"tree attention {heads} {dname}: no BLOCK_R/BLOCK_N launch "
                                                       f"argument in {l1.name}"]
            continue
        rows = (plan.chunk_q_ptr[1:] - plan.chunk_q_ptr[:-1]).tolist()
        pairs = (plan.row_pair_ptr[1:] - plan.row_pair_ptr[:-1]).tolist()
        rec = attention_bound(plan.chunk_len.tolist(), rows, pairs, hq, hkv, D, spaces.DTYPES[dname].itemsize,
                              kw["BLOCK_R"], kw["BLOCK_N"], l1.grid, c1["num_warps"], tile_instr, l2.grid,
                              c2["num_warps"], pair_instr, block_size=plan.block_size, gpu=gpu)
        rec.update(prefix=prefix, suffix=suffix, heads=heads, Hq=hq, Hkv=hkv, D=D, dtype=dname,
                   stage1_spec=sid1, stage1_registers=c1["registers"],
                   stage1_spill_bytes=c1["spill_store_bytes"] + c1["spill_load_bytes"],
                   stage1_ctas_per_sm=c1["ctas_per_sm"], stage1_instr_per_tile=tile_instr,
                   stage1_warp_instr_per_tile=tile_instr * c1["num_warps"], stage2_instr_per_pair=pair_instr)
        out["tree_attention"].append(rec)
    return out
