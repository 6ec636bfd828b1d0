"""Print Markdown tables (for the README) from sampler benchmark results JSON.

    python benchmarks/summarize.py                                   # every benchmarks/results/sampling_*.json
    python benchmarks/summarize.py benchmarks/results/sampling_cpu.json --stat median
    python benchmarks/summarize.py --configs topk_topp_minp,greedy --batches 1,64 --dtypes float32
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, load_results  # noqa: E402
from report import markdown  # noqa: E402


def _ints(s):
    return {int(x) for x in s.split(",") if x.strip()} if s else None


def _strs(s):
    return {x.strip() for x in s.split(",") if x.strip()} if s else None


def filter_payload(payload, configs=None, batches=None, vocabs=None, dtypes=None):
    def keep(r):
        return ((configs is None or r["config"] in configs) and (batches is None or r["B"] in batches)
                and (vocabs is None or r["V"] in vocabs) and (dtypes is None or r["dtype"] in dtypes))
    out = dict(payload)
    out["records"] = [r for r in payload.get("records", []) if keep(r)]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Markdown tables from sampler benchmark results JSON.")
    p.add_argument("files", nargs="*", help="results JSON files (default: benchmarks/results/sampling_*.json)")
    p.add_argument("--stat", choices=("min", "median"), default=None,
                   help="statistic for times and speedups (default: the one the run used)")
    p.add_argument("--configs", default=None, help="comma list of configs to show")
    p.add_argument("--batches", default=None, help="comma list of batch sizes to show")
    p.add_argument("--vocabs", default=None, help="comma list of vocabulary sizes to show")
    p.add_argument("--dtypes", default=None, help="comma list of dtypes to show")
    args = p.parse_args(argv)
    files = [Path(f) for f in args.files] or sorted(RESULTS_DIR.glob("sampling_*.json"))
    if not files:
        print(f"no results found under {RESULTS_DIR} (run the benchmark suites first)", file=sys.stderr)
        return 1
    for i, f in enumerate(files):
        payload = load_results(f)
        payload = filter_payload(payload, _strs(args.configs), _ints(args.batches), _ints(args.vocabs),
                                 _strs(args.dtypes))
        if i:
            print()
        print(f"### {f.name}")
        print()
        print(markdown(payload, stat=args.stat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
