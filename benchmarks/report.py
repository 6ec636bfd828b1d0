"""Turns raw timing records into speedups, bandwidth figures, target verdicts and Markdown.

A record (one measured case) is a dict::

    {"suite": "sweep" | "budget", "impl": str, "kind": "tts_kernels" | "baseline",
     "B": int, "V": int, "dtype": "float32" | "bfloat16", "config": str, "budget": bool,
     "median_s", "min_s", "mean_s", "stddev_s": float, "rounds": int,
     "bytes": int, "gbps": float, "frac_copy_bw": float | None}

A results file (``benchmarks/results/sampling_{cpu,gpu}.json``) is::

    {"suite": ..., "meta": env_metadata(), "settings": {...}, "copy_bandwidth": {...} | None,
     "records": [...], "speedups": [...], "budget_overhead": [...], "targets": [...]}
"""
from __future__ import annotations

from common import CONFIGS, fmt_time
from baselines import KERNELS, SPEEDUP_BASELINES, TOKENS_ONLY, sort_path_sorts

CPU_TARGET = dict(impl="tts_kernels.cpp", vs="tts_kernels.reference", B=64, V=151936, min_speedup=5.0)
GPU_SORT_TARGET = dict(impl="tts_kernels.triton", vs="torch.sort", min_B=32, min_speedup=10.0)
GPU_BW_TARGET = dict(impl="tts_kernels.triton", min_B=256, min_frac=0.5)

SHORT = {"torch.sort": "sort", "torch.multinomial": "multinomial", "tts_kernels.reference": "reference",
         "tts_kernels.cpp": "cpp", "tts_kernels.triton": "triton", "tts_kernels.auto": "auto"}


def t_of(r, stat="median"):
    """The headline time of a record: its ``median_s`` or ``min_s``."""
    return r[f"{stat}_s"]


def _key(r):
    return (r["config"], r["B"], r["V"], r["dtype"])


def index(records, suite="sweep", budget=False):
    """{(config, B, V, dtype): {impl: record}}"""
    out = {}
    for r in records:
        if r.get("suite", "sweep") != suite or bool(r.get("budget")) != budget:
            continue
        out.setdefault(_key(r), {})[r["impl"]] = r
    return out


def speedups(records, stat="median"):
    rows = []
    for key, by_impl in sorted(index(records).items(), key=lambda kv: _sort_key(kv[0])):
        for k in KERNELS:
            if k not in by_impl:
                continue
            t = t_of(by_impl[k], stat)
            vs = {b: t_of(by_impl[b], stat) / t for b in SPEEDUP_BASELINES if b in by_impl}
            rows.append(dict(impl=k, config=key[0], B=key[1], V=key[2], dtype=key[3], stat=stat, vs=vs))
    return rows


def tokens_only(records, stat="median"):
    """Each tokens-only kernel (``return_logprobs=False``) against the same kernel with logprobs, per case."""
    rows = []
    for key, by in sorted(index(records).items(), key=lambda kv: _sort_key(kv[0])):
        for k, with_lp in TOKENS_ONLY.items():
            if k in by and with_lp in by:
                a, b = t_of(by[with_lp], stat), t_of(by[k], stat)
                rows.append(dict(impl=with_lp, config=key[0], B=key[1], V=key[2], dtype=key[3], stat=stat,
                                 with_s=a, tokens_s=b, speedup=a / b))
    return rows


def budget_overhead(records, stat="median"):
    plain, forced = index(records, "budget", False), index(records, "budget", True)
    rows = []
    for key in sorted(set(plain) & set(forced), key=_sort_key):
        for impl in sorted(set(plain[key]) & set(forced[key])):
            t0, t1 = t_of(plain[key][impl], stat), t_of(forced[key][impl], stat)
            rows.append(dict(impl=impl, config=key[0], B=key[1], V=key[2], dtype=key[3],
                             plain_s=t0, budget_s=t1, overhead=t1 / t0 - 1.0))
    return rows


#: the variant suites of the GPU benchmark (``bench_sampling_gpu.run_variants``: records with a ``mode``, each case's
#: baseline mode timed first)
VARIANT_SUITES = ("split", "pipeline")


def variants(records, stat="median"):
    """Each variant suite's modes timed on the same inputs, per case: every other mode against the case's first
    (the baseline: one program per row, the plain pass 1); ``speedup`` is the baseline's time over the other's
    (above 1: the other mode is faster)."""
    rows = []
    for suite in VARIANT_SUITES:
        by = {}
        for r in records:
            if r.get("suite") == suite:
                by.setdefault((r["config"], r["B"], r["V"], r["dtype"]), {}).setdefault(r["mode"], r)
        for key in sorted(by, key=_sort_key):
            (base, rb), *others = by[key].items()
            for other, ro in others:
                a, b = t_of(rb, stat), t_of(ro, stat)
                rows.append(dict(suite=suite, config=key[0], B=key[1], V=key[2], dtype=key[3], stat=stat,
                                 modes=[base, other], times_s=[a, b], speedup=a / b))
    return rows


def _sort_key(key):
    config, B, V, dtype = key
    order = list(CONFIGS)
    return (order.index(config) if config in order else 99, dtype, V, B)


def cpu_targets(records, stat="median"):
    idx = index(records)
    t = CPU_TARGET
    out = []
    for config in CONFIGS:
        by = idx.get((config, t["B"], t["V"], "float32"), {})
        name = f"cpu: {SHORT[t['impl']]} >= {t['min_speedup']:g}x {SHORT[t['vs']]} @ B={t['B']}, V={t['V']}, {config}"
        if t["impl"] not in by or t["vs"] not in by:
            missing = [m for m in (t["impl"], t["vs"]) if m not in by]
            out.append(dict(name=name, status="NOT RUN", detail=f"missing {', '.join(missing)}"))
            continue
        a, b = t_of(by[t["impl"]], stat), t_of(by[t["vs"]], stat)
        s = b / a
        out.append(dict(name=name, status="PASS" if s >= t["min_speedup"] else "FAIL", value=s,
                        detail=f"{s:.1f}x ({stat} {fmt_time(a)} vs {fmt_time(b)})"))
    return out


def gpu_targets(records, stat="median"):
    idx = index(records)
    out = []
    t = GPU_SORT_TARGET
    for key, by in sorted(idx.items(), key=lambda kv: _sort_key(kv[0])):
        config, B, V, dtype = key
        if B < t["min_B"] or not sort_path_sorts(CONFIGS.get(config, {})):
            continue
        name = f"gpu: triton >= {t['min_speedup']:g}x sort @ {config} B={B} V={V} {dtype}"
        if t["impl"] not in by or t["vs"] not in by:
            out.append(dict(name=name, status="NOT RUN", detail="missing triton or sort measurement"))
            continue
        s = t_of(by[t["vs"]], stat) / t_of(by[t["impl"]], stat)
        out.append(dict(name=name, status="PASS" if s >= t["min_speedup"] else "FAIL", value=s,
                        detail=f"{s:.1f}x"))
    t = GPU_BW_TARGET
    for key, by in sorted(idx.items(), key=lambda kv: _sort_key(kv[0])):
        config, B, V, dtype = key
        if B < t["min_B"]:
            continue
        name = f"gpu: triton >= {t['min_frac']:.0%} of copy bandwidth @ {config} B={B} V={V} {dtype}"
        r = by.get(t["impl"])
        if r is None or r.get("frac_copy_bw") is None:
            out.append(dict(name=name, status="NOT RUN", detail="missing triton measurement or copy bandwidth"))
            continue
        f = r["frac_copy_bw"]
        out.append(dict(name=name, status="PASS" if f >= t["min_frac"] else "FAIL", value=f,
                        detail=f"{f:.0%} ({r['gbps']:.0f} GB/s)"))
    return out


def summarize_targets(targets):
    """Overall verdict: FAIL if any failed, NOT RUN if none ran, else PASS."""
    st = [t["status"] for t in targets]
    if "FAIL" in st:
        return "FAIL"
    if not st or all(s == "NOT RUN" for s in st):
        return "NOT RUN"
    return "PASS" if "NOT RUN" not in st else "PASS (partial)"


# ----------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------
def _gbps(r, stat):
    return r["bytes"] / t_of(r, stat) / 1e9


def _fmt_x(v):
    return "—" if v is None else f"{v:.1f}x"


def markdown(payload, stat=None) -> str:
    """Markdown tables of a results payload (as saved by the suites).

    ``stat`` ("median" or "min") defaults to the payload's ``settings.stat``.
    """
    meta = payload.get("meta", {})
    stat = stat or payload.get("settings", {}).get("stat", "median")
    records = payload.get("records", [])
    lines = []
    dev = meta.get("device_name", "?")
    if meta.get("device_type") == "cpu":
        dev = f"{meta.get('cpu_model', '?')}, {meta.get('torch_num_threads', '?')} threads"
    load = meta.get("loadavg_1_5_15")
    lines.append(f"**{payload.get('suite', '?')}** on {dev} — torch {meta.get('torch')}, triton {meta.get('triton')}, "
                 f"commit `{(meta.get('commit') or '?')[:10]}`, {meta.get('date_utc', '?')}"
                 + (f", load avg {load[0]:.2f}" if load else ""))
    cb = payload.get("copy_bandwidth")
    if cb:
        lines.append(f"Measured copy bandwidth: {cb['gbps']:.1f} GB/s ({cb['bytes'] / 2 ** 20:.0f} MiB read+written).")
    lines.append(f"Times are the {stat} over rounds; GB/s = (logits read once + outputs) / time.")
    lines.append("")
    idx = index(records)
    present_kernels = [k for k in KERNELS if any(k in by for by in idx.values())]
    base_cols = [b for b in SPEEDUP_BASELINES if any(b in by for by in idx.values())]
    show_frac = any(r.get("frac_copy_bw") is not None for r in records) and meta.get("device_type") == "cuda"
    head = ["config", "B", "V", "dtype"] + [SHORT[b] for b in base_cols]
    if present_kernels:
        head += ["kernel", "time", "GB/s"] + (["% copy BW"] if show_frac else []) + \
                [f"vs {SHORT[b]}" for b in base_cols]
    else:
        head += ["GB/s (reference)"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if h in ("config", "dtype", "kernel") else "---:" for h in head) + "|")
    for key, by in sorted(idx.items(), key=lambda kv: _sort_key(kv[0])):
        config, B, V, dtype = key
        cells = [config, str(B), str(V), dtype] + [fmt_time(t_of(by[b], stat)) if b in by else "—" for b in base_cols]
        if not present_kernels:
            r = by.get("tts_kernels.reference")
            lines.append("| " + " | ".join(cells + [f"{_gbps(r, stat):.2f}" if r else "—"]) + " |")
            continue
        for k in present_kernels:
            r = by.get(k)
            if r is None:
                continue
            row = cells + [SHORT[k], fmt_time(t_of(r, stat)), f"{_gbps(r, stat):.1f}"]
            if show_frac:
                row.append("—" if r.get("frac_copy_bw") is None else f"{r['frac_copy_bw']:.0%}")
            row += [_fmt_x(t_of(by[b], stat) / t_of(r, stat)) if b in by else "—" for b in base_cols]
            lines.append("| " + " | ".join(row) + " |")
    tok = tokens_only(records, stat)
    if tok:
        lines += ["", "Without logprobs (`return_logprobs=False`, the tokens only) against the same kernel with them, "
                  "same run:", "", "| kernel | config | B | V | dtype | with logprobs | tokens only | speedup |",
                  "|---|---|---:|---:|---|---:|---:|---:|"]
        for r in tok:
            lines.append(f"| {SHORT.get(r['impl'], r['impl'])} | {r['config']} | {r['B']} | {r['V']} | {r['dtype']} | "
                         f"{fmt_time(r['with_s'])} | {fmt_time(r['tokens_s'])} | {_fmt_x(r['speedup'])} |")
    va = variants(records, stat)
    if va:
        lines += ["", "Triton sampler variants, same inputs, same run (split: one program per row against split rows; "
                  "pipeline: pass 1's loop plain against pipelined, `tl.range(num_stages=...)`):", "",
                  "| suite | config | B | V | dtype | modes | times | speedup of the second |",
                  "|---|---|---:|---:|---|---|---:|---:|"]
        for r in va:
            lines.append(f"| {r['suite']} | {r['config']} | {r['B']} | {r['V']} | {r['dtype']} | "
                         f"{' / '.join(r['modes'])} | {' / '.join(fmt_time(t) for t in r['times_s'])} | "
                         f"{_fmt_x(r['speedup'])} |")
    bo = budget_overhead(records, stat)
    if bo:
        lines += ["", "Budget forcing overhead (same config, with vs without a BudgetState):", "",
                  "| impl | config | B | V | dtype | without | with budget | overhead |",
                  "|---|---|---:|---:|---|---:|---:|---:|"]
        for r in bo:
            lines.append(f"| {SHORT.get(r['impl'], r['impl'])} | {r['config']} | {r['B']} | {r['V']} | {r['dtype']} | "
                         f"{fmt_time(r['plain_s'])} | {fmt_time(r['budget_s'])} | {r['overhead']:+.1%} |")
    tg = payload.get("targets")
    if stat != payload.get("settings", {}).get("stat", "median"):
        suite = payload.get("suite", "")
        tg = cpu_targets(records, stat) if "cpu" in suite else gpu_targets(records, stat) if "gpu" in suite else tg
    if tg:
        lines += ["", f"Targets: **{summarize_targets(tg)}**", ""]
        for t in tg:
            lines.append(f"- {t['status']}: {t['name']} — {t.get('detail', '')}")
    skipped = payload.get("skipped")
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    return "\n".join(lines)
