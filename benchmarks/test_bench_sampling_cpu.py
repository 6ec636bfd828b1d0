"""CPU benchmark suite of the fused sampler (pytest-benchmark).

Run::

    pytest benchmarks/test_bench_sampling_cpu.py --benchmark-only                        # default sweep (< 10 min, 2 cores)
    pytest benchmarks/test_bench_sampling_cpu.py --benchmark-only --bench-sweep quick    # ~1-2 min subset
    pytest benchmarks/test_bench_sampling_cpu.py --benchmark-only --bench-sweep full     # B in {1,32,256,1024} x V in {32000,128256,151936}
    pytest benchmarks/test_bench_sampling_cpu.py --benchmark-only --bench-impls tts_kernels.cpp,tts_kernels.reference

Every case samples one token per row from float32 logits ``[B, V]`` with one of
the configurations of ``common.CONFIGS`` and is timed by pytest-benchmark
(median of several rounds after a warm-up call). At the end a table with time,
GB/s (logits read once + outputs) and the speedups of each tts_kernels backend
against the sort-based PyTorch path, torch.multinomial and the package's
reference is printed, the CPU target (C++ >= 5x reference at B=64, V=151936) is
checked, and everything is saved to ``benchmarks/results/sampling_cpu.json``.

Implementations that cannot run (e.g. the C++ kernel not built) are printed as
SKIP with the reason. Without ``--benchmark-only`` the benchmark cases are skipped
(so a plain ``pytest`` over the repository stays fast); the smoke test below still runs.
"""
from __future__ import annotations

import time

import pytest
import torch

from baselines import (TOKENS_ONLY, default_registry, multinomial_sample, sort_based_sample, steady_thinking_budget,
                       make_tts)
from common import CONFIGS, FULL_BATCHES, FULL_VOCABS, ANCHOR, copy_bytes, gbps, sampler_bytes, sweep

SWEEPS = {
    # the CPU target shape plus a small one: about 1-2 minutes on 2 cores
    "quick": sweep((1,), (32000,)),
    # < 10 minutes on 2 cores (the PyTorch baselines need ~0.1 us per logit)
    "default": sweep((1, 32, 256), (32000, 151936)),
    "full": sweep(FULL_BATCHES, FULL_VOCABS),
}
# seconds of timed rounds per case (after one warm-up call), and round limits
ROUND_BUDGET_S = {"quick": 0.3, "default": 0.6, "full": 1.0}
MIN_ROUNDS, MAX_ROUNDS = 3, 200
BUDGET_SHAPES = {"quick": [ANCHOR], "default": [(1, 32000), ANCHOR], "full": [(1, 32000), ANCHOR, (256, 151936)]}
BUDGET_CONFIGS = ("temp", "topk_topp_minp")
LOGITS_DESC = ("float32 2*randn(B, V), plus 32 tokens per row raised by U(8, 16) "
               "(a peaked head like an LLM's next-token distribution); torch.manual_seed(0)")

_REGISTRY = default_registry()
_CPU = torch.device("cpu")


def _enabled(config):
    return bool(config.getoption("benchmark_only", False))


def _impls(config):
    only = {s.strip() for s in config.getoption("--bench-impls").split(",") if s.strip()} or None
    if only:
        unknown = only - set(_REGISTRY.names())
        if unknown:
            raise pytest.UsageError(f"unknown --bench-impls {sorted(unknown)}; known: {_REGISTRY.names()}")
    return _REGISTRY.available(_CPU, only=only)


def pytest_generate_tests(metafunc):
    config = metafunc.config
    sweep_name = config.getoption("--bench-sweep")
    impls = _impls(config) if _enabled(config) else []
    if "case" in metafunc.fixturenames:
        cases = [(B, V, cfg, impl.name) for (B, V) in SWEEPS[sweep_name] for cfg in CONFIGS for impl in impls]
        metafunc.parametrize("case", cases or [None],
                             ids=[f"{c}-B{B}-V{V}-{i}" for B, V, c, i in cases] or ["disabled"])
    if "budget_case" in metafunc.fixturenames:
        cases = [(B, V, cfg, impl.name)
                 for (B, V) in BUDGET_SHAPES[sweep_name] for cfg in BUDGET_CONFIGS
                 for impl in impls if impl.name.startswith("tts_kernels.") and impl.name not in TOKENS_ONLY]
        metafunc.parametrize("budget_case", cases or [None],
                             ids=[f"{c}-B{B}-V{V}-{i}" for B, V, c, i in cases] or ["disabled"])


_LOGITS: dict = {}


def make_logits(B, V, dtype=torch.float32, device="cpu"):
    """Deterministic, LLM-like peaked logits (cached: one shape at a time)."""
    key = (B, V, dtype, str(device))
    if key not in _LOGITS:
        _LOGITS.clear()
        g = torch.Generator().manual_seed(0)
        x = 2.0 * torch.randn(B, V, generator=g)
        idx = torch.randint(0, V, (B, 32), generator=g)
        x.scatter_add_(1, idx, 8.0 + 8.0 * torch.rand(B, 32, generator=g))
        _LOGITS[key] = x.to(device=device, dtype=dtype).contiguous()
    return _LOGITS[key]


def _run(benchmark, fn, logits, sweep_name):
    # warm-up calls (first-call costs: allocator, op dispatch caches); the fastest sizes the rounds
    dt = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        fn(logits)
        dt = min(dt, time.perf_counter() - t0)
        if dt > 0.5:
            break
    dt = max(dt, 1e-7)
    lo = 2 if dt > 2.0 else MIN_ROUNDS if dt > 0.5 else 2 * MIN_ROUNDS  # slow baselines: fewer rounds
    rounds = int(min(MAX_ROUNDS, max(lo, ROUND_BUDGET_S[sweep_name] / dt)))
    benchmark.pedantic(fn, args=(logits,), rounds=rounds, iterations=1, warmup_rounds=0)
    return benchmark.stats.stats


def _record(benchmark, bench_records, *, suite, impl, B, V, cfg, budget, stats, sweep_name):
    nbytes = sampler_bytes(B, V, 4, budget=budget)
    rec = dict(suite=suite, impl=impl, kind=_REGISTRY[impl].kind, B=B, V=V, dtype="float32", config=cfg,
               budget=budget, median_s=stats.median, min_s=stats.min, mean_s=stats.mean,
               stddev_s=stats.stddev, rounds=stats.rounds, bytes=nbytes, gbps=gbps(nbytes, stats.median),
               frac_copy_bw=None)
    if suite != "budget":
        benchmark.extra_info.update(gbps=rec["gbps"], bytes=nbytes, B=B, V=V, config=cfg, impl=impl)
    bench_records.append(rec)


@pytest.fixture(autouse=True)
def _bench_setup(request, bench_extra):
    bench_extra.setdefault("logits_desc", LOGITS_DESC)
    bench_extra["skipped"] = dict(_REGISTRY.skipped)


@pytest.fixture
def _require_benchmark_only(request):
    if not _enabled(request.config):
        pytest.skip("benchmark cases run only with --benchmark-only")


def test_copy_bandwidth(benchmark, bench_extra, _require_benchmark_only):
    """Memory copy bandwidth of this machine (256 MiB float32, read + written), for context."""
    n = 64 * 2 ** 20
    src = torch.rand(n)
    dst = torch.empty_like(src)
    benchmark.group = "copy bandwidth"
    benchmark.pedantic(dst.copy_, args=(src,), rounds=10, iterations=1, warmup_rounds=2)
    t = benchmark.stats.stats.median
    nbytes = copy_bytes(n, 4)
    bench_extra["copy_bandwidth"] = dict(bytes=nbytes, median_s=t, gbps=gbps(nbytes, t),
                                         threads=torch.get_num_threads())
    benchmark.extra_info.update(gbps=gbps(nbytes, t))


def test_sample(benchmark, case, bench_records, pytestconfig, _require_benchmark_only):
    B, V, cfg, impl = case
    sweep_name = pytestconfig.getoption("--bench-sweep")
    logits = make_logits(B, V)
    fn = _REGISTRY[impl].make(CONFIGS[cfg])
    benchmark.group = f"{cfg} B={B} V={V}"
    benchmark.name = impl
    stats = _run(benchmark, fn, logits, sweep_name)
    _record(benchmark, bench_records, suite="sweep", impl=impl, B=B, V=V, cfg=cfg, budget=False,
            stats=stats, sweep_name=sweep_name)


def test_budget_overhead(benchmark, budget_case, bench_records, pytestconfig, _require_benchmark_only):
    """The fused op with a BudgetState vs without, same sampling config.

    The two variants are called alternately in every round (plain, then with the
    budget) so that load from other jobs hits both alike; pytest-benchmark times
    the pair, and each variant's own times are recorded.
    """
    B, V, cfg, impl = budget_case
    sweep_name = pytestconfig.getoption("--bench-sweep")
    logits = make_logits(B, V)
    backend = impl.split(".", 1)[1]
    plain = make_tts(backend)(CONFIGS[cfg])
    forced = make_tts(backend, steady_thinking_budget)(CONFIGS[cfg])
    times = {False: [], True: []}

    def pair():
        for with_budget, fn in ((False, plain), (True, forced)):
            t0 = time.perf_counter()
            fn(logits)
            times[with_budget].append(time.perf_counter() - t0)

    benchmark.group = f"budget pair (plain + budget) {cfg} B={B} V={V}"
    _run(benchmark, lambda _x: pair(), logits, sweep_name)
    n_warm = len(times[False]) - benchmark.stats.stats.rounds
    for with_budget, ts in times.items():
        ts = torch.tensor(ts[n_warm:], dtype=torch.float64)
        stats = _Stats(min=float(ts.min()), median=float(ts.median()), mean=float(ts.mean()),
                       stddev=float(ts.std()) if len(ts) > 1 else 0.0, rounds=len(ts))
        _record(benchmark, bench_records, suite="budget", impl=impl, B=B, V=V, cfg=cfg, budget=with_budget,
                stats=stats, sweep_name=sweep_name)


class _Stats:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_baselines_smoke():
    """Cheap correctness check of the baselines (runs without --benchmark-only too)."""
    from tts_kernels.sampling.reference import filter_mask

    x = make_logits(4, 1000)
    for name, cfg in CONFIGS.items():
        for fn in (sort_based_sample, multinomial_sample):
            tok, lp = fn(x, **cfg)
            assert tok.shape == (4,) and tok.dtype == torch.int64
            torch.testing.assert_close(lp, torch.log_softmax(x, 1).gather(1, tok.view(-1, 1)).squeeze(1))
        if cfg["temperature"] == 0:
            assert torch.equal(tok, x.argmax(1))
            continue
        B = x.shape[0]
        keep = filter_mask(x / cfg["temperature"], torch.full((B,), cfg.get("top_k", 0), dtype=torch.int32),
                           torch.full((B,), cfg.get("top_p", 1.0)), torch.full((B,), cfg.get("min_p", 0.0)))
        for _ in range(20):
            tok, _ = sort_based_sample(x, **cfg)
            assert bool(keep.gather(1, tok.view(-1, 1)).all()), name
