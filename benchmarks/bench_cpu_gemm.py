"""The engine's CPU projections: torch's ``F.linear`` against oneDNN with a prepacked weight.

The decode engine (``tts_kernels.decode.model.Linear``) packs its projection weights for oneDNN on
the CPU; this measures why, side by side in one run, at the projection shapes of a model (default:
SmolLM2-135M: hidden 576, 9/3 heads of 64, MLP 1536, vocabulary 49152) and several row counts::

    taskset -c 0 python benchmarks/bench_cpu_gemm.py --threads 1

GFLOPS = 2 x rows x in x out / median time. Writes ``results/cpu_gemm_<dtype>.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import env_metadata, save_results  # noqa: E402
from tts_kernels.decode.model import Linear, onednn_linear_available  # noqa: E402


def _median_s(fn, min_time: float) -> float:
    fn()
    times, t_end = [], time.perf_counter() + min_time
    while time.perf_counter() < t_end or len(times) < 5:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--heads", type=int, nargs=2, default=[9, 3], metavar=("HQ", "HKV"))
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per measurement")
    args = ap.parse_args(argv)
    if not onednn_linear_available():
        sys.exit("this torch has no oneDNN prepacked linear (torch.ops.mkldnn._linear_pointwise)")
    torch.set_num_threads(args.threads)
    dt = getattr(torch, args.dtype)
    H, (hq, hkv), D, I = args.hidden, args.heads, args.head_dim, args.intermediate
    shapes = {"qkv": (H, (hq + 2 * hkv) * D), "o": (hq * D, H), "gate_up": (H, 2 * I), "down": (I, H),
              "lm_head": (H, args.vocab)}
    g = torch.Generator().manual_seed(0)
    records = []
    for name, (k, n) in shapes.items():
        w = (torch.randn(n, k, generator=g) * k ** -0.5).to(dt)
        packed = Linear(w, None, pack=True)
        for m in args.rows:
            x = torch.randn(m, k, generator=g).to(dt)
            err = (packed(x).float() - F.linear(x, w).float()).abs().max().item()
            t_dense = _median_s(lambda: F.linear(x, w), args.min_time)
            t_packed = _median_s(lambda: packed(x), args.min_time)
            flop = 2.0 * m * k * n
            rec = dict(proj=name, rows=m, k=k, n=n, f_linear_s=t_dense, onednn_packed_s=t_packed,
                       f_linear_gflops=flop / t_dense / 1e9, onednn_packed_gflops=flop / t_packed / 1e9,
                       speedup=t_dense / t_packed, max_abs_diff=err)
            records.append(rec)
            print(f"{name:8s} rows {m:5d} [{k} -> {n}]: F.linear {rec['f_linear_gflops']:6.1f} GFLOPS, "
                  f"oneDNN packed {rec['onednn_packed_gflops']:6.1f} GFLOPS ({rec['speedup']:.2f}x)", flush=True)
    out = save_results(f"cpu_gemm_{args.dtype}", dict(meta=env_metadata("cpu"), args=vars(args), records=records))
    print("wrote", out)


if __name__ == "__main__":
    main()
