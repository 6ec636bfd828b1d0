"""Markdown tables from a gpu_static JSON (the README's "Static GPU check" subsection).

    python -m benchmarks.gpu_static.summary [benchmarks/results/gpu_static.json]

The cost-model tables read the JSON's ``cost_model``; to refresh it without compiling:
``python -m benchmarks.gpu_static.cost_model --from RESULTS.json --out X.json``, then summarise X.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "results" / "gpu_static.json"
_DTYPE_PARAM = {"_sample_kernel": "logits_ptr", "_tree_attn_stage1": "q_ptr", "_tree_attn_stage2": "out_ptr"}


def _dtype(r):
    p = r["params"].get(_DTYPE_PARAM.get(r["kernel"], ""))
    if p is None:
        p = next((v for v in r["params"].values() if v.startswith("*")), "?")
    return p.lstrip("*").split("/")[0]


def _rng(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    lo, hi = min(xs), max(xs)
    f = (lambda v: f"{v:g}") if isinstance(lo, float) else str
    return f(lo) if lo == hi else f"{f(lo)}-{f(hi)}"


def spec_table(d):
    rows = {}
    for r in d["specs"]:
        for arch, c in r["compiled"].items():
            if c.get("ok"):
                rows.setdefault((r["kernel"], _dtype(r), arch), []).append(c)
    out = ["| kernel | dtype | arch | specs | registers | spill bytes (st+ld) | shared B | CTAs/SM | "
           "hot loops: instr/iter (thread instr/token) |",
           "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for (k, dt, arch), cs in sorted(rows.items()):
        hot = [lp for c in cs for lp in c["loops"] if lp["innermost"] and lp["source"]]
        per_tok = [lp["thread_instr_per_token"] for lp in hot]
        out.append(f"| `{k}` | {dt} | {arch} | {len(cs)} | {_rng([c['registers'] for c in cs])} | "
                   f"{_rng([c['spill_store_bytes'] + c['spill_load_bytes'] for c in cs])} | "
                   f"{_rng([c['shared_bytes'] for c in cs])} | {_rng([c['ctas_per_sm'] for c in cs])} | "
                   f"{_rng([lp['instructions_excl'] for lp in hot])}"
                   + (f" ({_rng(per_tok)})" if any(per_tok) else "") + " |")
    return "\n".join(out)


def spill_list(d):
    out = []
    for r in d["specs"]:
        for arch, c in r["compiled"].items():
            if c.get("ok") and c["spill_store_bytes"] + c["spill_load_bytes"]:
                p = r["params"]
                short = ",".join(f"{k}={p[k]}" for k in p if not k.endswith("_ptr") and not k.startswith("stride")
                                 and not k.startswith("@"))
                out.append(f"- `{r['kernel']}` {_dtype(r)} {arch} [{short}, warps {p.get('@num_warps')}]: "
                           f"{c['spill_store_bytes']} B stores + {c['spill_load_bytes']} B loads, "
                           f"{c['registers']} registers, {'in a loop' if c['spill_in_loop'] else 'outside loops'}")
    return "\n".join(out) or "- none"


def sampler_table(d, configs=("temp", "topk_topp_minp")):
    cm = d.get("cost_model", {})
    out = ["| dtype | B | V | config | passes | thread instr/token | bound | GB/s bound | % of HBM |",
           "|---|---:|---:|---|---:|---:|---|---:|---:|"]
    for r in cm.get("sampler", []):
        if r["config"] not in configs:
            continue
        lo, hi = r["low"], r["high"]
        passes = f"{lo['full_row_passes']}" + ("" if lo == hi else f"-{hi['full_row_passes']}")
        ins = f"{lo['thread_instr_per_token']:g}" + ("" if lo == hi else f"-{hi['thread_instr_per_token']:g}")
        gb = f"{lo['gbps_bound']:g}" + ("" if lo == hi else f" / {hi['gbps_bound']:g}")
        pct = f"{100 * lo['frac_hbm_bw']:.1f}" + ("" if lo == hi else f" / {100 * hi['frac_hbm_bw']:.1f}")
        bound = lo["bound"] + ("" if lo["bound"] == hi["bound"] else f"/{hi['bound']}")
        out.append(f"| {r['dtype']} | {r['B']} | {r['V']} | {r['config']} | {passes} | {ins} | {bound} | {gb} | {pct} |")
    return "\n".join(out)


def sampler_compact(d, V=151936):
    """One row per (dtype, B) at one V: the temperature-only and the top-k + top-p + min-p bounds."""
    cm = d.get("cost_model", {})
    recs = {(r["dtype"], r["B"], r["config"]): r for r in cm.get("sampler", []) if r["V"] == V}
    out = [f"| dtype | B | grid on an H100 | SMs busy | temperature: bound, GB/s (% of HBM) | top-k + top-p + min-p: "
           f"passes, GB/s (% of HBM) |", "|---|---:|---|---:|---|---|"]
    for (dt, B, cfg), r in sorted(recs.items(), key=lambda kv: (kv[0][0] != "fp32", kv[0][1])):
        if cfg != "temp":
            continue
        f = recs.get((dt, B, "topk_topp_minp"))
        t = r["low"]
        grid = (f"split: {B} x {r['slices']} slices of {r['chunk']} + {B} merge" if r.get("path") == "split"
                else f"{B} rows")
        cell = f"{t['bound']}, {t['gbps_bound']:.4g} ({100 * t['frac_hbm_bw']:.1f}%)"
        cell2 = "-" if not f else (f"{f['low']['full_row_passes']}-{f['high']['full_row_passes']}, "
                                  f"{f['high']['gbps_bound']:.3g}-{f['low']['gbps_bound']:.3g} "
                                  f"({100 * f['high']['frac_hbm_bw']:.2g}-{100 * f['low']['frac_hbm_bw']:.2g}%)")
        out.append(f"| {dt} | {B} | {grid} | {r['active_sms']} | {cell} | {cell2} |")
    return "\n".join(out)


def _met(tg):
    return f"{tg['value']:g} {'met' if tg['met'] else 'not met'}"


def _kwarg(k, v):
    if k == "parallelism" and isinstance(v, dict):  # Parallelism: rows per item, KV heads, programs (each launch)
        narrow = f"; narrow <= {v['narrow_rows']} rows, {v['programs_narrow']}" if v.get("narrow_rows") else ""
        return f"{v['rows_per_item']} rows/item x {v['kv_heads']} heads, {v['programs']} programs{narrow}"
    return f"{k}={v}"


def _launches(r):
    """BLOCK_R and CTAs live / launched of stage 1, per launch (wide + narrow) when there are two."""
    ls = r.get("stage1_launches") or []
    if len(ls) < 2:
        return f"{r['block_r']}", f"{r['ctas_live']} / {r['ctas_launched']}"
    return (f"{r['block_r']} + {r['narrow_rows']}",
            " + ".join(f"{x['ctas_live']} / {x['ctas_launched']}" for x in ls))


def _compute_floor(r):
    """The useful FLOP at the modelled tensor-core (16-bit) or FP32 rate; bold when above the HBM floor."""
    if "t_compute_floor_s" not in r:  # results from before the arithmetic bound
        return "-"
    cell = f"{r['t_compute_floor_s'] * 1e6:.0f} us ({'mma' if r['dtype'] != 'fp32' else 'fp32 fma'})"
    return f"**{cell}**" if r["floor_bound"] != "hbm" else cell


def attention_table(d):
    cm = d.get("cost_model", {})
    out = ["| dtype | Hq/Hkv, D | N, prefix + suffix | plan | chunks, pairs | BLOCK_R (wide + narrow) | "
           "CTAs live / launched (wide + narrow) | "
           "dead CTAs (target 0) | KV into SMs / unique | shared-KV read factor (target <= 1.25) | "
           "partials / KV (target <= 0.25) | bound | t bound | HBM floor | compute floor |",
           "|---|---|---|---|---:|---:|---:|---|---:|---|---|---|---:|---:|---:|"]
    for r in cm.get("tree_attention", []):
        tg = r.get("targets", {})
        plan = r.get("plan", "default") + (f" ({', '.join(_kwarg(k, v) for k, v in r['plan_kwargs'].items())})"
                                           if r.get("plan_kwargs") else "")
        br, ctas = _launches(r)
        out.append(f"| {r['dtype']} | {r['Hq']}/{r['Hkv']}, {r['D']} | {r['N']}, {r['prefix']} + {r['suffix']} | "
                   f"{plan} | {r['chunks']}, {r['pairs']} | {br} | {ctas} | "
                   f"{_met(tg['dead_ctas']) if tg else '-'} | "
                   f"{r['l2_to_sm_kv_bytes'] / 1e6:.0f} / {r['unique_kv_bytes'] / 1e6:.0f} MB | "
                   f"{_met(tg['shared_kv_read_factor']) if tg else '-'} | "
                   f"{_met(tg['partial_over_kv']) if tg else r['partial_over_kv']} | {r['bound']} | "
                   f"{r['t_bound_s'] * 1e6:.0f} us | {r['t_hbm_floor_s'] * 1e6:.0f} us | "
                   f"{_compute_floor(r)} |")
    return "\n".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    d = json.loads(Path(argv[0] if argv else DEFAULT).read_text())
    print(f"{d['specializations']} specializations, {d['compiles']} compiles, failures: {len(d['failures'])}; "
          f"timing {d['timing_s']}\n")
    print(spec_table(d), "\n")
    print("Spilling specializations:\n" + spill_list(d), "\n")
    print(sampler_compact(d), "\n")
    print(sampler_table(d), "\n")
    print(attention_table(d))


if __name__ == "__main__":
    main()
