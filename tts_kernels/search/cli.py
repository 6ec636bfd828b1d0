"""``tts-kernels evaluate``: the main job (every strategy at every N, budget control, the headline).

With no arguments it runs on the embedded default (tiny policy, its PRM, the
arithmetic task, the 4x policy for the headline) and fits in a few minutes on
2 CPU cores; ``--policy/--prm/--problems`` run it on any local checkpoint,
PRM directory and JSONL problem set (``{"prompt": ..., "answer": ...}`` per line).
"""
from __future__ import annotations

import json
import os

from .evaluate import EvalConfig, evaluate
from .report import plot, tables


def _ints(s):
    return tuple(int(x) for x in s.split(",") if x)


def _names(s):
    return tuple(x for x in s.split(",") if x)


def add_arguments(p) -> None:
    d = EvalConfig()
    p.add_argument("--policy", default=None, help="policy checkpoint dir (default: embedded tiny-arith)")
    p.add_argument("--prm", default=None, help="PRM dir (default: embedded tiny-arith-prm)")
    p.add_argument("--large-policy", default=d.large_policy,
                   help="policy sampled once for the headline ('' to skip; default: embedded tiny-arith-large)")
    p.add_argument("--problems", default=None, help="JSONL problem set (default: the embedded arithmetic task)")
    p.add_argument("--num-problems", type=int, default=d.num_problems, help="problems to use (0: all in the file)")
    p.add_argument("--ns", type=_ints, default=d.ns, help="comma-separated N values (default 1,4,16,64)")
    p.add_argument("--strategies", type=_names, default=d.strategies)
    p.add_argument("--beam-width", type=int, default=d.beam_width)
    p.add_argument("--step-delimiter", default=d.step_delimiter, help="step delimiter (default: a blank line)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--max-step-tokens", type=int, default=d.max_step_tokens)
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    p.add_argument("--aggregation", default=d.aggregation, choices=["last", "min", "avg", "prod"])
    p.add_argument("--voting", default=d.voting, choices=["majority", "prm_max", "prm_vote"])
    p.add_argument("--budgets", type=_ints, default=d.budgets, help="max thinking tokens of the budget sweep")
    p.add_argument("--budget-methods", type=_names, default=d.budget_methods, help="'' to skip budget control")
    p.add_argument("--rows-per-batch", type=int, default=d.rows_per_batch)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="tts_eval", help="output prefix: writes OUT.md (the table), OUT.json and OUT.png")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> dict:
    keys = EvalConfig.__dataclass_fields__
    cfg = EvalConfig(**{k: v for k, v in vars(args).items() if k in keys})
    res = evaluate(cfg, progress=not args.no_progress)
    table = tables(res)
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    written = {"table": args.out + ".md", "json": args.out + ".json", "plot": args.out + ".png"}
    with open(written["table"], "w") as f:
        f.write(table + "\n")
    with open(written["json"], "w") as f:
        json.dump(res, f, indent=1)
    if not plot(res, written["plot"]):
        print("note: matplotlib is not installed; no plot written (pip install matplotlib)")
        del written["plot"]
    for what, path in written.items():
        print(f"wrote the {what}: {os.path.abspath(path)}")
    return res
