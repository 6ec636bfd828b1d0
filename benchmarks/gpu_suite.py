"""Every CUDA test and GPU benchmark in one command, for the few sessions that have a GPU.

    python benchmarks/gpu_suite.py --out "$OUT"          # on an H100/H200: about 6-8 minutes
    python benchmarks/gpu_suite.py --out /tmp/x --dry-run  # on a CPU: the same plumbing, tiny CPU shapes

Stages, each a subprocess with its own time limit (a stage that fails or times out is
recorded, the next one still runs):

1. the CUDA tests: ``tests/gpu`` (the Triton kernels compiled, on users' shapes, against the
   reference) and the engine's CUDA-graph test;
2. the sampler sweep (``bench_sampling_gpu.py``: B in {1, 32, 256, 1024} x V in {32000, 128256,
   151936}, fp32 and bf16, against the sort-based PyTorch path and torch.multinomial, as a share
   of the device's measured copy bandwidth; then the Triton sampler's variants on the same inputs:
   split rows against one program per row at small B, and pass 1's loop pipelined,
   ``tl.range(num_stages=3)``, against the plain default at B = 32, 256, 1024);
3. the tree-attention sweep (``bench_tree_attention.py --device cuda``: against sharing disabled,
   SDPA over gathered KV and, when installed, flash-attn / FlashInfer);
4. the decode engine (``bench_decode.py --device cuda``: tree vs sharing disabled, CUDA graphs).

Writes ``OUT/gpu_suite.json`` (environment, every stage's command, exit status, seconds and
output tail, and each benchmark's JSON) beside the benchmarks' own JSON files, and prints a
summary. Numbers come only from this run; nothing is filled in. Where the static cost model
(``benchmarks/gpu_static``) is present, its predictions are put beside the measurements.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
if str(ROOT) not in sys.path:  # the cost model imports the package: run from a checkout, not installed
    sys.path.insert(0, str(ROOT))
STAGES = ("cuda_tests", "sampler", "tree_attention", "decode")


def stages(out: Path, dry_run: bool):
    """(name, argv, seconds allowed, JSON the stage writes or None)."""
    py = sys.executable
    if dry_run:  # the same scripts on tiny CPU shapes: checks the plumbing only
        return [
            ("cuda_tests", [py, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider", "-rs"], 300, None),
            ("sampler", [py, str(BENCH / "bench_sampling_gpu.py"), "--device", "cpu", "--quick", "--no-budget",
                         "--impls", "tts_kernels.reference", "--out", str(out / "sampling_gpu.json")], 300,
             out / "sampling_gpu.json"),
            ("tree_attention", [py, str(BENCH / "bench_tree_attention.py"), "--device", "cpu", "--sweep", "quick",
                                "--max-reps", "2", "--out", str(out / "tree_attention_gpu.json")], 300,
             out / "tree_attention_gpu.json"),
            ("decode", [py, str(BENCH / "bench_decode.py"), "--device", "cpu", "--prompt-lens", "64", "--n", "4",
                        "--new-tokens", "4", "--modes", "tree", "noshare", "--out", str(out / "decode_gpu.json")],
             300, out / "decode_gpu.json"),
        ]
    return [
        ("cuda_tests", [py, "-m", "pytest", "tests/gpu",
                        "tests/decode/test_decode_step.py::test_cuda_graph_engine_matches_eager_on_gpu",
                        "-q", "-p", "no:cacheprovider", "-rs"], 180, None),
        ("sampler", [py, str(BENCH / "bench_sampling_gpu.py"), "--out", str(out / "sampling_gpu.json")], 210,
         out / "sampling_gpu.json"),
        ("tree_attention", [py, str(BENCH / "bench_tree_attention.py"), "--device", "cuda",
                            "--out", str(out / "tree_attention_gpu.json")], 120, out / "tree_attention_gpu.json"),
        ("decode", [py, str(BENCH / "bench_decode.py"), "--device", "cuda", "--modes", "tree", "noshare",
                    "--prompt-lens", "2048", "8192", "--n", "16", "64", "--out", str(out / "decode_gpu.json")],
         90, out / "decode_gpu.json"),
    ]


def environment(dry_run: bool) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "dry_run": dry_run,
           "cuda_available": torch.cuda.is_available(), "commit": _git("rev-parse", "HEAD"),
           "dirty": bool(_git("status", "--porcelain"))}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(device=p.name, sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2 ** 30, 1))
    return env


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_stage(name, argv, limit, log) -> dict:
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = "timeout"
        text = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
        text += f"\n[gpu_suite] stage {name} stopped at its {limit} s limit"
    secs = time.perf_counter() - t0
    log.write(f"\n===== {name} (rc {rc}, {secs:.1f} s): {' '.join(map(str, argv))}\n{text}\n")
    log.flush()
    print(f"  {name:15s} rc {str(rc):8s} {secs:7.1f} s", flush=True)
    return {"name": name, "argv": [str(a) for a in argv], "rc": rc, "seconds": round(secs, 2),
            "limit_s": limit, "output_tail": text[-4000:]}


def static_results_for(triton_version) -> Path:
    """The committed static-check JSON of the running Triton's release when there is one
    (``results/gpu_static_triton<major.minor>.json``), else the default (``results/gpu_static.json``)."""
    if triton_version:
        own = BENCH / "results" / f"gpu_static_triton{'.'.join(str(triton_version).split('.')[:2])}.json"
        if own.exists():
            return own
    return BENCH / "results" / "gpu_static.json"


def cost_model_predictions(results: dict, triton_version=None) -> dict:
    """Predictions of the static cost model for the measured shapes. Never raises: a failure is
    recorded in the report (the measurements are written whatever happens here)."""
    try:
        from benchmarks.gpu_static import cost_model

        return cost_model.predict_for_results(results, str(static_results_for(triton_version)))
    except Exception:  # noqa: BLE001
        import traceback
        return {"error": traceback.format_exc()[-3000:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(BENCH / "results" / "gpu"),
                    help="folder for gpu_suite.json, the benchmarks' JSON and gpu_suite.log (default $OUT)")
    ap.add_argument("--dry-run", action="store_true", help="CPU: run the plumbing on tiny shapes")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                    help="run only these stages (default: all, in order)")
    args = ap.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device here; use --dry-run to check the plumbing on a CPU", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {"environment": environment(args.dry_run), "stages": [], "results": {}}
    print(f"gpu_suite: {report['environment']}", flush=True)
    with open(out / "gpu_suite.log", "w") as log:
        for name, cmd, limit, produced in stages(out, args.dry_run):
            if name not in args.stages:
                continue
            if produced is not None:
                Path(produced).unlink(missing_ok=True)   # a stale file from an earlier run is not a result
            report["stages"].append(run_stage(name, cmd, limit, log))
            if produced is not None and Path(produced).exists():
                try:   # a stage stopped at its limit may leave its JSON cut short
                    report["results"][name] = json.loads(Path(produced).read_text())
                except ValueError as exc:
                    report["results"][name] = {"error": f"{produced}: {exc}"}
    report["cost_model"] = cost_model_predictions(report["results"], report["environment"].get("triton"))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    path = out / "gpu_suite.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    failed = [s["name"] for s in report["stages"] if s["rc"] != 0]
    if "error" in report["cost_model"]:
        print("gpu_suite: the cost model's predictions failed (the measurements are written):\n"
              + report["cost_model"]["error"].strip().splitlines()[-1])
    print(f"gpu_suite: {report['seconds']} s in all; wrote {path}; "
          + (f"FAILED: {', '.join(failed)}" if failed else "every stage passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
