"""GPU benchmark of the fused sampler (``triton.testing.do_bench`` / ``perf_report``).

Run on a CUDA machine::

    python benchmarks/bench_sampling_gpu.py                 # B in {1,32,256,1024} x V in {32000,128256,151936}, fp32 + bf16
    python benchmarks/bench_sampling_gpu.py --quick         # B in {1,256} x V in {32000,151936}
    python benchmarks/bench_sampling_gpu.py --plots out/    # also Triton perf_report plots (needs matplotlib, pandas)
    python benchmarks/bench_sampling_gpu.py --device cpu --quick   # dry run of the code path on CPU (numbers meaningless)

For every (config, B, V, dtype) it times the tts_kernels backends (Triton, the
registered op) and the baselines (sort-based PyTorch path, torch.multinomial,
the package's PyTorch reference) with ``do_bench`` (median, L2 flushed between
calls), and measures the device's copy bandwidth in the same run (a 1 GiB
device-to-device copy, bytes read + written). It reports time, GB/s of the
bytes that must move (logits read once + outputs), the fraction of the
measured copy bandwidth, speedups, the budget-forcing overhead, and checks the
targets (Triton >= 10x the sort path at B >= 32; >= 50% of copy bandwidth at
B >= 256), printing PASS/FAIL. Two variant suites time the Triton sampler two ways on the same
inputs (``run_variants``): split rows against one program per row at small B, and pass 1's loop
pipelined (``tl.range(num_stages=3)``, ``triton_kernel.PASS1_STAGES``) against the plain default.
Results go to ``benchmarks/results/sampling_gpu.json``.

Exits with a message (status 1) when no CUDA device is present, unless ``--device cpu``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (CONFIGS, FULL_BATCHES, FULL_VOCABS, copy_bytes, env_metadata, fmt_time, gbps,  # noqa: E402
                    sampler_bytes, save_results, sweep)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SWEEPS = {
    "full": sweep(FULL_BATCHES, FULL_VOCABS, anchor=False),
    "quick": sweep((1, 256), (32000, 151936), anchor=False),
    "cpu-quick": sweep((1, 8), (32000,), anchor=False),  # --device cpu --quick: exercise the code path only
}
BUDGET_SHAPES = {"full": [(1, 32000), (32, 128256), (256, 151936), (1024, 151936)],
                 "quick": [(1, 32000), (256, 151936)], "cpu-quick": [(8, 32000)]}
BUDGET_CONFIGS = ("temp", "topk_topp_minp")
# split-row suite: the Triton sampler at small B with one program per row (slices=1) against
# the split-row path (pass 1 over B x S row slices + an exact merge kernel, slices=auto)
SPLIT_SHAPES = {"full": [(1, 32000), (1, 128256), (1, 151936), (8, 151936), (32, 128256), (32, 151936),
                         (1, 32001)],
                "quick": [(1, 151936), (32, 151936)], "cpu-quick": [(1, 32000)]}
SPLIT_CONFIGS = ("temp", "greedy", "topk_topp_minp")
# pipeline suite: pass 1's loop plain against pipelined (tl.range(num_stages=3)), where the static model leaves the
# question open: B=32's one slice per SM, B=256's one or two rows per SM, B=1024's four (README, "Pass 1 pipelined")
PIPELINE_SHAPES = {"full": [(32, 151936), (256, 151936), (1024, 151936)], "quick": [(32, 151936), (256, 151936)],
                   "cpu-quick": [(8, 32000)]}
PIPELINE_CONFIGS = ("temp",)


# ----------------------------------------------------------------------------
# timers
# ----------------------------------------------------------------------------
class CudaTimer:
    """``triton.testing.do_bench``: median / min / max in seconds, L2 flushed before every call."""

    name = "triton.testing.do_bench(warmup=25, rep=100), quantiles 0.5/0.0/1.0"

    def __init__(self, warmup=25, rep=100):
        import triton.testing

        self._do_bench = triton.testing.do_bench
        self.warmup, self.rep = warmup, rep

    def __call__(self, fn):
        med, lo, hi = self._do_bench(fn, warmup=self.warmup, rep=self.rep, quantiles=[0.5, 0.0, 1.0])
        return med * 1e-3, lo * 1e-3, hi * 1e-3


class CpuTimer:
    """Wall-clock fallback for the CPU dry run (same interface as :class:`CudaTimer`)."""

    name = "time.perf_counter, 2 warm-up calls, >= 3 rounds / 0.2 s"

    def __init__(self, budget_s=0.2, min_rounds=3, max_rounds=50):
        self.budget_s, self.min_rounds, self.max_rounds = budget_s, min_rounds, max_rounds

    def __call__(self, fn):
        fn()
        t0 = time.perf_counter()
        fn()
        dt = max(time.perf_counter() - t0, 1e-7)
        n = int(min(self.max_rounds, max(self.min_rounds, self.budget_s / dt)))
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), min(ts), max(ts)


# ----------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------
def make_logits(B, V, dtype, device):
    """LLM-like peaked logits: 2*randn plus 32 boosted tokens per row (same recipe as the CPU suite)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = 2.0 * torch.randn(B, V, generator=g)
    idx = torch.randint(0, V, (B, 32), generator=g)
    x.scatter_add_(1, idx, 8.0 + 8.0 * torch.rand(B, 32, generator=g))
    return x.to(device=device, dtype=dtype).contiguous()


def copy_bandwidth(device, timer, nbytes):
    """GB/s of a large device-to-device copy (bytes read + written)."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    med, lo, hi = timer(lambda: dst.copy_(src))
    moved = copy_bytes(n, 4)
    del src, dst
    return dict(bytes=moved, median_s=med, min_s=lo, max_s=hi, gbps=gbps(moved, med), gbps_max=gbps(moved, lo))


def _pass1_stages(device):
    from tts_kernels.sampling import triton_kernel as tkm
    return tkm._pass1_stages(device)


def run_sweep(reg, impls, shapes, dtypes, device, timer, copy_gbps, log=print):
    records = []
    for dtype_name in dtypes:
        for (B, V) in shapes:
            logits = make_logits(B, V, DTYPES[dtype_name], device)
            nbytes = sampler_bytes(B, V, logits.element_size())
            for cfg_name, cfg in CONFIGS.items():
                for impl in impls:
                    fn = impl.make(cfg)
                    try:
                        med, lo, hi = timer(lambda: fn(logits))
                    except Exception as exc:  # report and go on: one broken case must not lose the run
                        log(f"[bench] ERROR {impl.name} {cfg_name} B={B} V={V} {dtype_name}: "
                            f"{type(exc).__name__}: {exc}")
                        continue
                    r = dict(suite="sweep", impl=impl.name, kind=impl.kind, B=B, V=V, dtype=dtype_name,
                             config=cfg_name, budget=False, median_s=med, min_s=lo, max_s=hi,
                             bytes=nbytes, gbps=gbps(nbytes, med),
                             frac_copy_bw=(gbps(nbytes, med) / copy_gbps) if copy_gbps else None)
                    if impl.name.startswith("tts_kernels.triton"):   # the pass-1 depth the wrapper launched
                        r["stages"] = _pass1_stages(device)
                    records.append(r)
                    frac = f"  {r['frac_copy_bw']:5.0%} of copy BW" if r["frac_copy_bw"] is not None else ""
                    log(f"{cfg_name:>15} B={B:<5} V={V:<7} {dtype_name:<9} {impl.name:<22} "
                        f"{fmt_time(med):>10}  {r['gbps']:8.1f} GB/s{frac}")
            del logits
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return records


def run_budget(impls, shapes, device, timer, log=print):
    from baselines import make_tts, steady_thinking_budget

    records = []
    for (B, V) in shapes:
        logits = make_logits(B, V, torch.float32, device)
        for cfg_name in BUDGET_CONFIGS:
            for impl in impls:
                backend = impl.name.split(".", 1)[1]
                for with_budget in (False, True):
                    fn = make_tts(backend, steady_thinking_budget if with_budget else None)(CONFIGS[cfg_name])
                    try:
                        med, lo, hi = timer(lambda: fn(logits))
                    except Exception as exc:
                        log(f"[bench] ERROR budget {impl.name} {cfg_name} B={B} V={V}: {type(exc).__name__}: {exc}")
                        continue
                    nbytes = sampler_bytes(B, V, 4, budget=with_budget)
                    records.append(dict(suite="budget", impl=impl.name, kind=impl.kind, B=B, V=V, dtype="float32",
                                        config=cfg_name, budget=with_budget, median_s=med, min_s=lo, max_s=hi,
                                        bytes=nbytes, gbps=gbps(nbytes, med), frac_copy_bw=None))
                    log(f"budget={'yes' if with_budget else 'no ':<3} {cfg_name:>15} B={B:<5} V={V:<7} "
                        f"{impl.name:<22} {fmt_time(med):>10}")
        del logits
    return records


def run_variants(suite, shapes, configs, variants, dtypes, device, timer, copy_gbps, log=print):
    """The Triton sampler under each of ``variants`` on the same inputs, one after the other.

    ``variants``: mode name -> ``(patch, extra)``: ``patch`` maps attributes of
    ``tts_kernels.sampling.triton_kernel`` to the functions they are swapped for while the mode is timed (restored
    after it), ``extra(B, V)`` gives the record's extra fields."""
    from baselines import make_tts
    from tts_kernels.sampling import triton_kernel as tkm

    records = []
    for dtype_name in dtypes:
        for (B, V) in shapes:
            logits = make_logits(B, V, DTYPES[dtype_name], device)
            nbytes = sampler_bytes(B, V, logits.element_size())
            for cfg_name in configs:
                for mode, (patch, extra) in variants.items():
                    saved = {name: getattr(tkm, name) for name in patch}
                    try:
                        for name, fn in patch.items():
                            setattr(tkm, name, fn)
                        sampler = make_tts("triton")(CONFIGS[cfg_name])
                        med, lo, hi = timer(lambda: sampler(logits))
                    except Exception as exc:
                        log(f"[bench] ERROR {suite} {mode} {cfg_name} B={B} V={V} {dtype_name}: "
                            f"{type(exc).__name__}: {exc}")
                        continue
                    finally:
                        for name, fn in saved.items():
                            setattr(tkm, name, fn)
                    r = dict(suite=suite, impl="tts_kernels.triton", kind="tts_kernels", B=B, V=V, dtype=dtype_name,
                             config=cfg_name, budget=False, mode=mode, **extra(B, V), median_s=med, min_s=lo,
                             max_s=hi, bytes=nbytes, gbps=gbps(nbytes, med),
                             frac_copy_bw=(gbps(nbytes, med) / copy_gbps) if copy_gbps else None)
                    records.append(r)
                    log(f"{suite} {mode:<11} ({', '.join(f'{k}={v}' for k, v in extra(B, V).items())}) "
                        f"{cfg_name:>15} B={B:<5} V={V:<7} {dtype_name:<9} {fmt_time(med):>10}  {r['gbps']:8.1f} GB/s")
            del logits
    return records


def run_split(shapes, dtypes, device, timer, copy_gbps, log=print):
    """Triton sampler, split-row path (auto slices) vs one program per row, same inputs."""
    from tts_kernels.sampling import triton_kernel as tkm

    auto = tkm._num_slices
    variants = {"slices=1": ({"_num_slices": lambda B, V, dev: 1}, lambda B, V: {"slices": 1}),
                "slices=auto": ({}, lambda B, V: {"slices": auto(B, V, device)})}
    return run_variants("split", shapes, SPLIT_CONFIGS, variants, dtypes, device, timer, copy_gbps, log)


def run_pipeline(shapes, dtypes, device, timer, copy_gbps, log=print):
    """Triton sampler with pass 1's loop plain (``stages=0``, the default) and pipelined (``stages=3``:
    ``tl.range(num_stages=3)``, the next tiles prefetched into shared memory), same inputs
    (``triton_kernel.PASS1_STAGES``)."""
    from tts_kernels.sampling import triton_kernel as tkm

    variants = {f"stages={s}": ({"_pass1_stages": lambda dev, s=s: s}, lambda B, V, s=s: {"stages": s})
                for s in tkm.PASS1_STAGES}
    return run_variants("pipeline", shapes, PIPELINE_CONFIGS, variants, dtypes, device, timer, copy_gbps, log)


# ----------------------------------------------------------------------------
# Triton-tutorial perf_report plots (from the measurements above; nothing is re-timed)
# ----------------------------------------------------------------------------
def make_plots(records, outdir, log=print):
    try:
        import matplotlib  # noqa: F401
        import pandas  # noqa: F401
        import triton.testing
    except ImportError as exc:
        log(f"[bench] SKIP plots: triton.testing.perf_report needs matplotlib and pandas ({exc})")
        return
    by = {(r["impl"], r["config"], r["B"], r["V"], r["dtype"]): r for r in records if r["suite"] == "sweep"}
    impls = sorted({r["impl"] for r in records if r["suite"] == "sweep"})
    batches = sorted({r["B"] for r in records})
    vocabs = sorted({r["V"] for r in records})
    dtypes = sorted({r["dtype"] for r in records})
    benches = [triton.testing.Benchmark(
        x_names=["V"], x_vals=vocabs, line_arg="provider", line_vals=impls, line_names=impls,
        ylabel="GB/s", plot_name=f"sampler-{cfg}-B{B}-{dt}", args=dict(B=B, config=cfg, dtype=dt))
        for cfg in CONFIGS for B in batches for dt in dtypes]

    @triton.testing.perf_report(benches)
    def sampler(V, provider, B, config, dtype):
        r = by.get((provider, config, B, V, dtype))
        if r is None:
            return float("nan"), float("nan"), float("nan")
        return gbps(r["bytes"], r["median_s"]), gbps(r["bytes"], r["max_s"]), gbps(r["bytes"], r["min_s"])

    os.makedirs(outdir, exist_ok=True)
    sampler.run(print_data=False, show_plots=False, save_path=str(outdir))
    log(f"[bench] perf_report plots written to {outdir}")


# ----------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (default); cpu only dry-runs the code path")
    p.add_argument("--quick", action="store_true", help="small sweep: B in {1,256} x V in {32000,151936}")
    p.add_argument("--dtypes", default=None, help="comma list (default float32,bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--impls", default="", help="comma list of implementations (default: all available)")
    p.add_argument("--copy-mib", type=int, default=None, help="copy-bandwidth buffer size (default 1024 on cuda)")
    p.add_argument("--no-budget", action="store_true", help="skip the budget-forcing overhead cases")
    p.add_argument("--no-split", action="store_true", help="skip the split-row (small B) cases")
    p.add_argument("--no-pipeline", action="store_true", help="skip pass 1's plain-vs-pipelined cases")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write Triton perf_report plots to DIR")
    p.add_argument("--out", default=None,
                   help="results JSON (default benchmarks/results/sampling_gpu.json on cuda, none on cpu)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_sampling_gpu.py: no CUDA device is available (torch.cuda.is_available() is False), "
                 "so there is nothing to benchmark. Run the CPU suite instead:\n"
                 "    pytest benchmarks/test_bench_sampling_cpu.py --benchmark-only\n"
                 "or dry-run this script's code path on CPU with --device cpu --quick.")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.init()
    from common import snapshot_extension

    snapshot_extension()  # a rebuild of tts_kernels/_C.so during the run must not crash it
    from common import git_commit

    git_at_start = git_commit()
    from baselines import KERNELS, default_registry
    from report import budget_overhead, gpu_targets, markdown, speedups, summarize_targets, tokens_only, variants

    dtypes = [d.strip() for d in (args.dtypes or ("float32,bfloat16" if device.type == "cuda" else "float32"))
              .split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            sys.exit(f"unknown dtype {d!r}; choose from {sorted(DTYPES)}")
    sweep_name = ("cpu-quick" if device.type == "cpu" else "quick") if args.quick else "full"
    shapes = SWEEPS[sweep_name]
    reg = default_registry()
    only = {s.strip() for s in args.impls.split(",") if s.strip()} or None
    if only and only - set(reg.names()):
        sys.exit(f"unknown --impls {sorted(only - set(reg.names()))}; known: {reg.names()}")
    impls = reg.available(device, only=only)
    timer = CudaTimer() if device.type == "cuda" else CpuTimer()

    print(f"[bench] device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (dry run)'}; "
          f"sweep {sweep_name}: {len(shapes)} shapes x {len(CONFIGS)} configs x {dtypes}; "
          f"implementations: {[i.name for i in impls]}", flush=True)
    copy_mib = args.copy_mib or (1024 if device.type == "cuda" else 64)
    cb = copy_bandwidth(device, timer, copy_mib * 2 ** 20)
    print(f"[bench] copy bandwidth: {cb['gbps']:.1f} GB/s median ({cb['gbps_max']:.1f} best) "
          f"over {copy_mib} MiB read + written", flush=True)

    records = run_sweep(reg, impls, shapes, dtypes, device, timer, cb["gbps"])
    if not args.no_budget:
        kimpls = [i for i in impls if i.name in KERNELS or i.name == "tts_kernels.reference"]
        if device.type == "cuda":  # the reference is slow and not what the overhead case is about
            kimpls = [i for i in kimpls if i.name != "tts_kernels.reference"] or kimpls
        records += run_budget(kimpls, BUDGET_SHAPES[sweep_name], device, timer)
    if not args.no_split and any(i.name == "tts_kernels.triton" for i in impls):
        records += run_split(SPLIT_SHAPES[sweep_name], dtypes, device, timer, cb["gbps"])
    if not args.no_pipeline and any(i.name == "tts_kernels.triton" for i in impls):
        records += run_pipeline(PIPELINE_SHAPES[sweep_name], dtypes, device, timer, cb["gbps"])

    meta = env_metadata(device)
    meta.update(git_at_start)  # the code measured is the code at the start
    payload = {
        "suite": "sampling_gpu" if device.type == "cuda" else "sampling_gpu_dryrun_cpu",
        "meta": meta,
        "settings": {"sweep": sweep_name, "stat": "median", "timer": timer.name, "dtypes": dtypes,
                     "logits": "2*randn(B, V) plus 32 tokens per row raised by U(8, 16); manual_seed(0)",
                     "bytes_model": "logits read once (B*V*itemsize) + outputs (B*12); budget adds 2*B*32"},
        "copy_bandwidth": cb,
        "skipped": dict(reg.skipped),
        "records": records,
    }
    payload["speedups"] = speedups(records, "median")
    payload["budget_overhead"] = budget_overhead(records, "median")
    payload["tokens_only"] = tokens_only(records, "median")
    payload["variants"] = variants(records, "median")
    payload["targets"] = gpu_targets(records, "median")
    print()
    print(markdown(payload))
    print()
    verdict = summarize_targets(payload["targets"])
    print(f"GPU TARGETS (triton >= 10x sort @ B >= 32; >= 50% of copy BW @ B >= 256): {verdict}"
          + ("  [dry run on CPU: not a GPU result]" if device.type != "cuda" else ""))
    if args.plots:
        make_plots(records, args.plots)
    out = args.out if args.out is not None else ("sampling_gpu.json" if device.type == "cuda" else "none")
    if out.lower() != "none":
        p = Path(out)
        path = save_results(p.name, payload, p.parent if len(p.parts) > 1 else None)
        print(f"[bench] results saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
