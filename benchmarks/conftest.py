"""pytest options and end-of-run report of the benchmark suites.

Options (also settable by environment variable):

``--bench-sweep quick|default|full``  (``TTS_BENCH_SWEEP``)  which (B, V) shapes run
``--bench-impls a,b,...``             (``TTS_BENCH_IMPLS``)  only these implementations
``--bench-threads N``                 (``TTS_BENCH_THREADS``, default 2) torch CPU threads
``--bench-stat min|median``          (``TTS_BENCH_STAT``, default min) headline statistic:
                                       the min over rounds is robust to other jobs on a
                                       shared machine; both are saved
``--bench-out PATH|none``             (``TTS_BENCH_OUT``)    results JSON; default
                                       benchmarks/results/sampling_cpu.json for the
                                       default and full sweeps, sampling_cpu_quick.json for quick
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

RECORDS_KEY = pytest.StashKey[list]()
EXTRA_KEY = pytest.StashKey[dict]()


def pytest_addoption(parser):
    g = parser.getgroup("tts_kernels benchmarks")
    g.addoption("--bench-sweep", default=os.environ.get("TTS_BENCH_SWEEP", "default"),
                choices=("quick", "default", "full"), help="shape sweep of the sampler benchmarks")
    g.addoption("--bench-impls", default=os.environ.get("TTS_BENCH_IMPLS", ""),
                help="comma-separated implementations to run (default: all available)")
    g.addoption("--bench-threads", type=int, default=int(os.environ.get("TTS_BENCH_THREADS", "2")),
                help="torch.set_num_threads for the CPU benchmarks (default 2)")
    g.addoption("--bench-stat", default=os.environ.get("TTS_BENCH_STAT", "min"), choices=("min", "median"),
                help="statistic for times, speedups and targets (default min; both are saved)")
    g.addoption("--bench-out", default=os.environ.get("TTS_BENCH_OUT", ""),
                help="results JSON path, or 'none' not to save")


def pytest_configure(config):
    import torch

    from common import git_commit, snapshot_extension

    torch.set_num_threads(config.getoption("--bench-threads"))
    snapshot_extension()  # a rebuild of tts_kernels/_C.so during the run must not crash it
    config.stash[RECORDS_KEY] = []
    config.stash[EXTRA_KEY] = {"loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                               "git_at_start": git_commit()}


@pytest.fixture(scope="session")
def bench_records(pytestconfig):
    return pytestconfig.stash[RECORDS_KEY]


@pytest.fixture(scope="session")
def bench_extra(pytestconfig):
    """Session-wide dict for non-record results (copy bandwidth, skipped implementations)."""
    return pytestconfig.stash[EXTRA_KEY]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    records = config.stash.get(RECORDS_KEY, [])
    if not records:
        return
    extra = config.stash.get(EXTRA_KEY, {})
    from report import budget_overhead, cpu_targets, markdown, speedups, summarize_targets, tokens_only
    from common import env_metadata, save_results

    sweep = config.getoption("--bench-sweep")
    stat = config.getoption("--bench-stat")
    meta = env_metadata("cpu")
    meta["loadavg_at_start"] = extra.get("loadavg_start")
    meta.update(extra.get("git_at_start") or {})  # the code measured is the code at the start
    meta["loadavg_1_5_15_note"] = "load average at the end of the run; other jobs may share the cores"
    payload = {
        "suite": "sampling_cpu",
        "meta": meta,
        "settings": {"sweep": sweep, "stat": stat, "impls": config.getoption("--bench-impls") or "all",
                     "logits": extra.get("logits_desc"),
                     "bytes_model": "logits read once (B*V*itemsize) + outputs (B*12); budget adds 2*B*32"},
        "copy_bandwidth": extra.get("copy_bandwidth"),
        "skipped": extra.get("skipped", {}),
        "records": records,
    }
    payload["speedups"] = speedups(records, stat)
    payload["budget_overhead"] = budget_overhead(records, stat)
    payload["tokens_only"] = tokens_only(records, stat)
    payload["targets"] = cpu_targets(records, stat)
    tr = terminalreporter
    tr.section("tts_kernels sampler benchmark (CPU)")
    for line in markdown(payload).splitlines():
        tr.write_line(line)
    verdict = summarize_targets(payload["targets"])
    tr.write_line("")
    tr.write_line(f"CPU TARGET (cpp >= 5x reference @ B=64, V=151936): {verdict}")
    out = config.getoption("--bench-out")
    if out.lower() == "none":
        return
    if not out:
        out = "sampling_cpu_quick.json" if sweep == "quick" else "sampling_cpu.json"
    path = save_results(Path(out).name, payload, Path(out).parent if os.sep in out else None)
    tr.write_line(f"results saved to {path}")
