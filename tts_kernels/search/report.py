"""Terminal tables and the accuracy-against-compute plot of an :func:`.evaluate.evaluate` result."""
from __future__ import annotations

from typing import List

from .evaluate import BUCKETS, flops_str


def _pct(x) -> str:
    return "  -  " if x is None else f"{100 * x:5.1f}"


def tables(res: dict) -> str:
    """The result as plain-text tables (runs, buckets, compute-optimal choice, headline, budget control)."""
    lines: List[str] = []
    env = res["environment"]
    lines.append(f"{res['num_problems']} problems | policy {res['policy_params']:,} params, PRM {res['prm_params']:,}"
                 + (f", large policy {res['large_policy_params']:,}" if res.get("large_policy_params") else "")
                 + f" | {env['device']}, {env['threads']} threads, torch {env['torch']}, commit {env['commit']}")
    lines.append("")
    head = (f"{'policy':<7} {'strategy':<12} {'N':>3} {'acc%':>6} {'maj%':>6} {'max%':>6} {'vote%':>6} "
            f"{'pass@N%':>8} {'tokens':>8} {'PRM tok':>8} {'FLOPs':>7} {'tok/s':>7} {'KV read':>8} {'per-seq':>8}")
    lines += [head, "-" * len(head)]
    for r in res["runs"]:
        v = r["accuracy_by_voting"]
        lines.append(f"{r['policy']:<7} {r['strategy']:<12} {r['n']:>3} {_pct(r['accuracy']):>6} "
                     f"{_pct(v['majority']):>6} {_pct(v['prm_max']):>6} {_pct(v['prm_vote']):>6} "
                     f"{_pct(r['pass_at_n']):>8} {r['policy_tokens']:>8} {r['prm_tokens']:>8} "
                     f"{flops_str(r['flops']):>7} {r['tokens_per_s']:>7.0f} {_mb(r['kv_bytes_read']):>8} "
                     f"{_mb(r['kv_bytes_per_sequence']):>8}")
    a = res["analysis"]
    lines.append("")
    sizes = a["bucket_sizes"]
    names = [b for b, _, _ in BUCKETS]
    lines.append(f"accuracy % per difficulty bucket (Pass@1 from {a['pass1_source']}: "
                 + ", ".join(f"{b} {sizes[b]}" for b in names) + " problems)")
    lines.append(f"{'run':<18}" + "".join(f"{b:>8}" for b in names))
    for k, row in a["accuracy_per_bucket"].items():
        lines.append(f"{k:<18}" + "".join(f"{_pct(row[b]):>8}" for b in names))
    lines.append("")
    lines.append("compute-optimal strategy per bucket (chosen in-sample on these problems)")
    for n, d in a["compute_optimal"].items():
        choice = ", ".join(f"{b}: {s}" for b, s in d["strategy_per_bucket"].items())
        lines.append(f"  N={n:>3}: accuracy {_pct(d['accuracy'])}%  ({choice})")
    h = a.get("headline")
    if h:
        big = h["large_single_sample"]
        lines.append("")
        lines.append(f"headline: large policy sampled once: {_pct(big['accuracy'])}% at {flops_str(big['flops'])}FLOPs")
        c = h["cheapest_small_run_that_beats_it"]
        if c:
            lines.append(f"  the small policy beats it with {c['strategy']} at N={c['n']}: {_pct(c['accuracy'])}% "
                         f"at {flops_str(c['flops'])}FLOPs ({c['flops_ratio_vs_large']:.1f}x the large policy's "
                         f"FLOPs; {c['policy_tokens']} policy + {c['prm_tokens']} PRM tokens)")
        else:
            b = h["best_small"]
            lines.append(f"  the small policy does not beat it at any measured N (best: {b['strategy']} at "
                         f"N={b['n']}, {_pct(b['accuracy'])}%)")
    bc = res.get("budget_control")
    if bc:
        lines.append("")
        lines.append("budget control (s1): per budget [min,max]: accuracy % / mean thinking tokens / Control %")
        for m, d in bc["methods"].items():
            cells = "  ".join(f"[{r['min_thinking']},{r['max_thinking']}] {r['accuracy_pct']:.0f}/"
                              f"{r['avg_thinking_tokens']:.0f}/{r['control_pct']:.0f}" for r in d["budgets"])
            sc = d.get("scaling_pct_per_token")
            lines.append(f"  {m:<19} Control {_mean_control(d):5.1f}%  Scaling "
                         f"{'n/a' if sc is None else f'{sc:.2f}'} pts/token  Performance {d['performance_pct']:.1f}%")
            lines.append(f"  {'':<19} {cells}")
    lines.append("")
    lines.append(f"total wall time {res['total_wall_s']:.0f} s")
    return "\n".join(lines)


def _mean_control(d) -> float:
    rows = d["budgets"]
    return sum(r["control_pct"] for r in rows) / max(1, len(rows))


def _mb(b: int) -> str:
    return f"{b / 2 ** 20:.1f}M"


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
        pts = sorted((r["flops"], 100 * r["accuracy"], r["n"]) for r in runs if r["strategy"] == s)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"small policy: {s}")
        for x, y, n in pts:
            ax.annotate(f"N={n}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    for r in res["runs"]:
        if r["policy"] == "large":
            ax.scatter([r["flops"]], [100 * r["accuracy"]], marker="*", s=160, color="k",
                       label="large policy (4x params), one sample", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per problem set (policy + PRM)")
    ax.set_ylabel("accuracy %")
    ax.set_title(f"{res['num_problems']} problems; {res['environment']['device'][:40]}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
