"""Terminal tables and the accuracy-against-compute plot of an :func:`.evaluate.evaluate` result."""
from __future__ import annotations

from typing import List

from .evaluate import AGREEMENT_BUCKETS, CALIBRATION_FOLDS, flops_str


def _ci(iv) -> str:
    """An accuracy and its 95% interval, in %: ``' 48.4 [36.6, 60.4]'`` (``'-'`` for no problems)."""
    return "-" if iv is None else f"{100 * iv['point']:5.1f} [{100 * iv['lo']:4.1f},{100 * iv['hi']:5.1f}]"


def _diff(d) -> str:
    """A difference of accuracies and its interval, in points."""
    return f"{100 * d['difference']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] points"


def tables(res: dict) -> str:
    """The result as plain-text tables (runs, buckets, compute-optimal choice, headline, budget control).

    Every accuracy is printed with its 95% interval (``acc [lo, hi]``, in %), as :mod:`.stats` computes it.
    """
    lines: List[str] = []
    env = res["environment"]
    lines.append(f"{res['num_problems']} problems | policy {res['policy_params']:,} params, PRM {res['prm_params']:,}"
                 + (f", large policy {res['large_policy_params']:,}" if res.get("large_policy_params") else "")
                 + f" | {env['device']}, {env['threads']} threads, torch {env['torch']}, commit {env['commit']}")
    a = res["analysis"]
    m = a["methods"]
    lines.append(f"95% intervals: accuracies {m['accuracy_interval']}; differences {m['difference_interval']}")
    lines.append("")
    accs = ["accuracy", "majority", "prm_max", "prm_vote", "pass_at_n"]
    w = len(_ci({"point": 1, "lo": 1, "hi": 1}))
    head = (f"{'policy':<7} {'strategy':<12} {'N':>3} " + " ".join(f"{t:>{w}}" for t in
                                                                  ("acc% [95%]", "maj%", "max%", "vote%", "pass@N%"))
            + f" {'tokens':>8} {'PRM tok':>8} {'FLOPs':>7} {'tok/s':>7} {'KV read':>8} {'per-seq':>8}")
    lines += [head, "-" * len(head)]
    for r in res["runs"]:
        lines.append(f"{r['policy']:<7} {r['strategy']:<12} {r['n']:>3} "
                     + " ".join(f"{_ci(r['intervals'][k]):>{w}}" for k in accs)
                     + f" {r['policy_tokens']:>8} {r['prm_tokens']:>8} "
                     f"{flops_str(r['flops']):>7} {r['tokens_per_s']:>7.0f} {_mb(r['kv_bytes_read']):>8} "
                     f"{_mb(r['kv_bytes_per_sequence']):>8}")
    lines.append("")
    sizes = a["bucket_sizes"]
    names = [b for b, _, _ in AGREEMENT_BUCKETS]
    lines.append(f"accuracy % per difficulty bucket, estimated without gold answers: the policy's agreement "
                 f"with itself over its {a['pass1_source']} samples (" + ", ".join(f"{b} {sizes[b]}" for b in names)
                 + " problems)")
    lines.append(f"{'run':<18}" + "".join(f"{b:>{w + 2}}" for b in names))
    for k, row in a["accuracy_per_bucket"].items():
        lines.append(f"{k:<18}" + "".join(f"{_ci(row[b]):>{w + 2}}" for b in names))
    lines.append("")
    lines.append("compute-optimal strategy per agreement bucket and N: chosen on a calibration split, scored on "
                 "the held-out split (cross-fitting; analysis.methods in the JSON says how)")
    for n, d in a["compute_optimal"].items():
        vs = f"; vs the large policy {_diff(d['difference_vs_large'])}" if "difference_vs_large" in d else ""
        choice = " | ".join(", ".join(f"{b}: {s}" for b, s in f["strategy_per_bucket"].items()) for f in d["folds"])
        lines.append(f"  N={n:>3}: accuracy {_ci(d['interval'])}%{vs}  (per fold: {choice})")
    if not a["compute_optimal"]:
        lines.append(f"  none: a held-out split needs at least {CALIBRATION_FOLDS} problems")
    lines.append("in-sample oracle, optimistic by construction: buckets by the gold Pass@1, the strategy chosen and "
                 "scored on the same problems")
    for n, d in a["compute_optimal_in_sample_oracle"].items():
        choice = ", ".join(f"{b}: {s}" for b, s in d["strategy_per_bucket"].items())
        lines.append(f"  N={n:>3}: accuracy {_ci(d['interval'])}%  ({choice})")
    h = a.get("headline")
    if h:
        big = h["large_single_sample"]
        lines.append("")
        lines.append(f"headline ({h['num_problems']} problems): large policy sampled once: {_ci(big['interval'])}% "
                     f"at {flops_str(big['flops'])}FLOPs")
        c = h["cheapest_small_run_that_beats_it"]
        if c:
            lines.append(f"  the small policy beats it (point estimates) with {c['strategy']} at N={c['n']}: "
                         f"{_ci(c['interval'])}% at {flops_str(c['flops'])}FLOPs ({c['flops_ratio_vs_large']:.1f}x "
                         f"the large policy's FLOPs; {c['policy_tokens']} policy + {c['prm_tokens']} PRM tokens)")
        else:
            b = h["best_small"]
            lines.append(f"  the small policy does not beat it at any measured N (best: {b['strategy']} at "
                         f"N={b['n']}, {_ci(b['interval'])}%)")
        lines.append(f"  {h['verdict']}")
    bc = res.get("budget_control")
    if bc:
        cfg = bc.get("config", {})
        lines.append("")
        lines.append(f"budget control (s1) on policy {cfg.get('policy', '?')} (prompt templates "
                     f"{cfg.get('templates', '?')}), {cfg.get('num_problems', '?')} problems x "
                     f"{cfg.get('samples_per_problem', 1)} sample: per budget [min,max]: accuracy % [95%] / mean "
                     "thinking tokens / Control %; Control and Performance with 95% Wilson intervals")
        for m, d in bc["methods"].items():
            cells = "  ".join(f"[{r['min_thinking']},{r['max_thinking']}] {_pct_ci(r, 'accuracy')}/"
                              f"{r['avg_thinking_tokens']:.0f}/{r['control_pct']:.0f}" for r in d["budgets"])
            sc = d.get("scaling_pct_per_token")
            lines.append(f"  {m:<19} Control {_pct_ci(d, 'control', '5.1f')}%  Scaling "
                         f"{'n/a' if sc is None else f'{sc:.2f}'} pts/token  Performance "
                         f"{_pct_ci(d, 'performance', '.1f')}%")
            lines.append(f"  {'':<19} {cells}")
    lines.append("")
    lines.append(f"total wall time {res['total_wall_s']:.0f} s")
    return "\n".join(lines)


def _pct_ci(d, key, fmt=".0f") -> str:
    """``d[key_pct]`` with its interval ``[key_lo_pct,key_hi_pct]`` (older results without bounds: the point;
    no value: ``n/a``); a method's Control without a pooled value: the mean over its budgets."""
    x = d.get(f"{key}_pct")
    if x is None and key == "control" and d.get("budgets"):
        x = sum(r["control_pct"] for r in d["budgets"]) / len(d["budgets"])
    if x is None:
        return "n/a"
    lo, hi = d.get(f"{key}_lo_pct"), d.get(f"{key}_hi_pct")
    return f"{x:{fmt}}" + ("" if lo is None or hi is None else f" [{lo:.0f},{hi:.0f}]")


def _mb(b: int) -> str:
    return f"{b / 2 ** 20:.1f}M"


def _yerr(runs):
    """Error-bar lengths (below, above) of the runs' accuracy intervals, in %."""
    iv = [r["intervals"]["accuracy"] for r in runs]
    return [[100 * (i["point"] - i["lo"]) for i in iv], [100 * (i["hi"] - i["point"]) for i in iv]]


def plot(res: dict, path: str) -> bool:
    """Accuracy against FLOPs per strategy (log x), with the large policy's single sample; False if no matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    runs = [r for r in res["runs"] if r["policy"] == "policy"]
    for s in dict.fromkeys(r["strategy"] for r in runs):
        pts = sorted((r for r in runs if r["strategy"] == s), key=lambda r: r["flops"])
        ax.errorbar([r["flops"] for r in pts], [100 * r["accuracy"] for r in pts], yerr=_yerr(pts), marker="o",
                    capsize=3, label=f"small policy: {s}")
        for r in pts:
            ax.annotate(f"N={r['n']}", (r["flops"], 100 * r["accuracy"]), textcoords="offset points",
                        xytext=(3, 3), fontsize=7)
    for r in res["runs"]:
        if r["policy"] == "large":
            ax.errorbar([r["flops"]], [100 * r["accuracy"]], yerr=_yerr([r]), marker="*", markersize=14,
                        color="k", capsize=4, label="large policy (4x params), one sample", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per problem set (policy + PRM)")
    ax.set_ylabel("accuracy %")
    ax.set_title(f"{res['num_problems']} problems; error bars: {res['analysis']['methods']['accuracy_interval']}; "
                 f"{res['environment']['device'][:40]}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
