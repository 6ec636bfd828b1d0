"""Benchmark of tree attention (a script, not a timed test).

Workload: N sequences share a prompt of ``prefix`` tokens (one set of KV
blocks) and each has its own ``suffix`` tokens (its own blocks; partial last
block), one decode query each: the shape of Best-of-N / beam search decoding.

Reported per configuration: time of each implementation, the unique KV bytes
that must move (the shared prefix once plus every suffix: what an ideal kernel
reads), the bandwidth that implies, the planning time, and the speedup of
tree attention over

* ``tree_noshare``: the same op with a plan built with ``sharing=False``
  (every row reads its whole KV: the "sharing disabled" baseline),
* ``sdpa_gathered``: torch SDPA over each row's KV gathered from the pages,
* ``flash_attn``: ``flash_attn_with_kvcache`` (paged) and ``flashinfer_cascade``
  (FlashInfer's two-level cascade) when installed (CUDA only).

With the Triton implementation each configuration also records the kernels' static
accounting (``triton_cost``: KV bytes into the SMs / unique, live / launched
CTAs, partial bytes) and times ``tree_wide``, a plan with long chunks for the
shared prefix (``--wide-chunk-rows``). On CUDA it also times ``tree_balanced``,
the load-balanced plan that ``tree_attention(plan=None)`` and the engine use there
(``plan_tree_attention(parallelism=tree_attention_parallelism(...))``).

Every skipped baseline is printed with its reason. Usage::

    python benchmarks/bench_tree_attention.py                  # GPU sweep if CUDA, else the CPU sweep
    python benchmarks/bench_tree_attention.py --device cpu     # CPU: writes results/tree_attention_cpu.json
    python benchmarks/bench_tree_attention.py --device cuda --sweep quick
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tts_kernels as tk  # noqa: E402
from tts_kernels.attention import impls as attn_impls  # noqa: E402

from common import env_metadata, fmt_time, gbps, save_results  # noqa: E402

GPU_SWEEP = dict(N=(8, 64, 256), prefix=(2048, 8192, 32768), suffix=(64, 512), heads=((32, 8), (8, 1)),
                 D=(128,), dtype=torch.bfloat16)
GPU_QUICK = dict(N=(64,), prefix=(8192,), suffix=(64,), heads=((32, 8),), D=(128,), dtype=torch.bfloat16)
CPU_SWEEP = dict(N=(64,), prefix=(2048,), suffix=(64,), heads=((8, 1), (32, 8)), D=(128, 64), dtype=torch.float32)
CPU_QUICK = dict(N=(16,), prefix=(512,), suffix=(64,), heads=((8, 1),), D=(64,), dtype=torch.float32)

SDPA_MAX_BYTES = 8 * 2 ** 30  # gathered K+V larger than this: the SDPA baseline is skipped


def log(msg):
    print(msg, flush=True)


def skip(name, reason):
    print(f"[bench] SKIP baseline {name!r}: {reason}", file=sys.stderr, flush=True)


def make_workload(N, prefix, suffix, hq, hkv, D, dtype, device, bs, gen):
    """Shared prefix blocks [0, prefix/bs) in every row, then each row's own suffix blocks."""
    pb = -(-prefix // bs)
    sb = -(-suffix // bs)
    num_blocks = pb + N * sb
    k = torch.randn(num_blocks, bs, hkv, D, generator=gen).to(dtype).to(device)
    v = torch.randn(num_blocks, bs, hkv, D, generator=gen).to(dtype).to(device)
    shared = torch.arange(pb, dtype=torch.int32).repeat(N, 1)
    own = pb + torch.arange(N * sb, dtype=torch.int32).view(N, sb)
    bt = torch.cat([shared, own], 1).to(device)
    sl = torch.full((N,), prefix + suffix, dtype=torch.int32, device=device)
    q = torch.randn(N, hq, D, generator=gen).to(dtype).to(device)
    return q, k, v, bt, sl


def unique_kv_bytes(N, prefix, suffix, hkv, D, itemsize):
    return (prefix + N * suffix) * hkv * D * itemsize * 2


def all_kv_bytes(N, prefix, suffix, hkv, D, itemsize):
    return N * (prefix + suffix) * hkv * D * itemsize * 2


def timeit(fn, device, min_time, max_reps):
    """Median seconds per call (CUDA events on GPU)."""
    fn()  # warm up (compiles Triton kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() < t_end):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def sdpa_gathered(q, k, v, bt, sl):
    """Gather each row's KV from the pages (all rows have the same length here), then SDPA."""
    N, hq, D = q.shape
    bs, hkv = k.shape[1], k.shape[2]
    L = int(sl.max())
    kk = k[bt.long()].reshape(N, -1, hkv, D)[:, :L].transpose(1, 2)
    vv = v[bt.long()].reshape(N, -1, hkv, D)[:, :L].transpose(1, 2)
    return F.scaled_dot_product_attention(q[:, :, None], kk, vv, enable_gqa=hq != hkv)[:, :, 0]


def flash_attn_fn(q, k, v, bt, sl):
    from flash_attn import flash_attn_with_kvcache

    return lambda: flash_attn_with_kvcache(q[:, None], k, v, cache_seqlens=sl, block_table=bt)[:, 0]


def flashinfer_cascade_fn(q, k, v, bt, sl, prefix, suffix):
    """Two-level cascade: level 0 = the shared prefix (one KV for all N queries), level 1 = each suffix."""
    import flashinfer

    N, hq, D = q.shape
    bs, hkv = k.shape[1], k.shape[2]
    dev = q.device
    pb, sb = -(-prefix // bs), -(-suffix // bs)
    ws = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=dev)
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, ws, "NHD")
    i32 = dict(dtype=torch.int32, device=dev)
    qo_indptr = [torch.tensor([0, N], **i32), torch.arange(N + 1, **i32)]
    kv_indptr = [torch.tensor([0, pb], **i32), torch.arange(N + 1, **i32) * sb]
    kv_indices = [bt[0, :pb].contiguous(), bt[:, pb:pb + sb].reshape(-1).contiguous()]
    last = [torch.tensor([prefix - (pb - 1) * bs], **i32), torch.full((N,), suffix - (sb - 1) * bs, **i32)]
    w.plan(qo_indptr, kv_indptr, kv_indices, last, hq, hkv, D, bs)
    kv = torch.stack([k, v], 1)  # [blocks, 2, bs, Hkv, D]
    return lambda: w.run(q, kv)


def triton_cost(plan, hq, hkv, D, dtype, device):
    """Static accounting of the Triton kernels for this plan (tts_kernels.attention.triton_kernel.stage1_cost)
    as they launch on ``device`` (its SM count and architecture; an H100's off CUDA)."""
    try:
        from tts_kernels.attention import triton_kernel as tak
    except Exception as exc:  # triton not installed
        skip("triton static cost", f"{type(exc).__name__}: {exc}")
        return None
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    return tak.stage1_cost(plan, hq, hkv, D, dtype, num_sms=tak._num_sms(dev) if on_gpu else 132,
                           arch=tak._arch(dev) if on_gpu else 90)


def bench_config(cfg, device, bs, min_time, max_reps, gen, wide_chunk_rows=None):
    N, prefix, suffix, (hq, hkv), D, dtype = cfg
    q, k, v, bt, sl = make_workload(N, prefix, suffix, hq, hkv, D, dtype, device, bs, gen)
    itemsize = k.element_size()
    ub = unique_kv_bytes(N, prefix, suffix, hkv, D, itemsize)
    ab = all_kv_bytes(N, prefix, suffix, hkv, D, itemsize)
    rec = dict(N=N, prefix=prefix, suffix=suffix, Hq=hq, Hkv=hkv, D=D, dtype=str(dtype).replace("torch.", ""),
               block_size=bs, unique_kv_bytes=ub, all_rows_kv_bytes=ab, wide_chunk_rows=wide_chunk_rows or None)

    def plan_fn(sharing):
        return lambda: tk.plan_tree_attention(bt, sl, bs, sharing=sharing)

    plan = plan_fn(True)()
    plan_ns = plan_fn(False)()
    rec["plan_s"] = timeit(plan_fn(True), device, min_time / 4, 20)
    rec["plan_noshare_s"] = timeit(plan_fn(False), device, min_time / 4, 20)
    rec["plan_chunks"], rec["plan_pairs"] = plan.num_chunks, plan.num_pairs
    rec["triton_cost"] = triton_cost(plan, hq, hkv, D, dtype, device)
    plan_wide = None
    if wide_chunk_rows:  # long chunks for the widely shared prefix: fewer partials per row
        plan_wide = tk.plan_tree_attention(bt, sl, bs, wide_chunk_rows=wide_chunk_rows)
        rec["plan_wide_chunks"], rec["plan_wide_pairs"] = plan_wide.num_chunks, plan_wide.num_pairs
        rec["triton_cost_wide"] = triton_cost(plan_wide, hq, hkv, D, dtype, device)
    # what tree_attention(plan=None) and the engine plan on this device: load-balanced chunks for the
    # Triton kernel on CUDA (None elsewhere: the default plan is what they run)
    par = tk.tree_attention_parallelism(N, hq, k)
    plan_bal = None
    if par is not None:
        plan_bal = tk.plan_tree_attention(bt, sl, bs, parallelism=par)
        rec["parallelism"] = par._asdict()
        rec["plan_balanced_chunks"], rec["plan_balanced_pairs"] = plan_bal.num_chunks, plan_bal.num_pairs
        rec["triton_cost_balanced"] = triton_cost(plan_bal, hq, hkv, D, dtype, device)
    backend = "auto"
    impl = attn_impls.default_for(device).__name__
    rec["tree_impl"] = impl
    fns = {
        "tree": lambda: tk.tree_attention(q, k, v, bt, sl, plan=plan, validate=False, backend=backend),
        "tree_noshare": lambda: tk.tree_attention(q, k, v, bt, sl, plan=plan_ns, validate=False, backend=backend),
    }
    if plan_wide is not None:
        fns["tree_wide"] = lambda: tk.tree_attention(q, k, v, bt, sl, plan=plan_wide, validate=False, backend=backend)
    if plan_bal is not None:
        fns["tree_balanced"] = lambda: tk.tree_attention(q, k, v, bt, sl, plan=plan_bal, validate=False,
                                                         backend=backend)
    if ab * 1.1 > SDPA_MAX_BYTES:
        skip("sdpa_gathered", f"gathered KV would take {ab / 2 ** 30:.1f} GiB (> {SDPA_MAX_BYTES / 2 ** 30:.0f})")
    else:
        fns["sdpa_gathered"] = lambda: sdpa_gathered(q, k, v, bt, sl)
    if device.type == "cuda":
        for name, make in (("flash_attn", lambda: flash_attn_fn(q, k, v, bt, sl)),
                           ("flashinfer_cascade", lambda: flashinfer_cascade_fn(q, k, v, bt, sl, prefix, suffix))):
            try:
                fns[name] = make()
            except Exception as exc:  # not installed, or this shape unsupported
                skip(name, f"{type(exc).__name__}: {exc}")
    else:
        skip("flash_attn / flashinfer_cascade", "CUDA only")

    ref = fns["tree"]().float()
    rec["times_s"], rec["max_abs_diff_vs_tree"] = {}, {}
    for name, fn in fns.items():
        try:
            out = fn()
            rec["max_abs_diff_vs_tree"][name] = float((out.float() - ref).abs().max())
            rec["times_s"][name] = timeit(fn, device, min_time, max_reps)
        except Exception as exc:
            skip(name, f"failed on this config: {type(exc).__name__}: {exc}")
    t = rec["times_s"]["tree"]
    rec["tree_unique_gbps"] = gbps(ub, t)
    rec["speedup_vs"] = {name: ts / t for name, ts in rec["times_s"].items() if name != "tree"}
    rec["gbps_unique_bytes"] = {name: gbps(ub, ts) for name, ts in rec["times_s"].items()}
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sweep", choices=("default", "quick"), default="default")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of timing per measurement")
    ap.add_argument("--max-reps", type=int, default=50)
    ap.add_argument("--wide-chunk-rows", type=int, default=32,
                    help="also time a plan with plan_tree_attention(wide_chunk_rows=...) ('tree_wide'); 0: off")
    ap.add_argument("--out", default=None, help="results JSON (default results/tree_attention_<device>.json; "
                                                 "'none' to skip)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        sweep = GPU_SWEEP if args.sweep == "default" else GPU_QUICK
    else:
        sweep = CPU_SWEEP if args.sweep == "default" else CPU_QUICK
    min_time = args.min_time if args.min_time is not None else (1.0 if device.type == "cuda" else 2.0)
    meta = env_metadata(device)
    log(f"device {meta['device_name']} ({meta['cpu_model']}), torch {meta['torch']}, "
        f"commit {meta.get('commit')}, load {meta.get('loadavg_1_5_15')}")
    gen = torch.Generator().manual_seed(0)
    records = []
    for cfg in itertools.product(sweep["N"], sweep["prefix"], sweep["suffix"], sweep["heads"], sweep["D"],
                                 (sweep["dtype"],)):
        rec = bench_config(cfg, device, args.block_size, min_time, args.max_reps, gen, args.wide_chunk_rows)
        records.append(rec)
        t = rec["times_s"]
        others = ", ".join(f"{n} {fmt_time(ts)} ({rec['speedup_vs'][n]:.2f}x)" for n, ts in t.items() if n != "tree")
        log(f"N={rec['N']:4d} prefix={rec['prefix']:6d} suffix={rec['suffix']:4d} Hq/Hkv={rec['Hq']}/{rec['Hkv']} "
            f"D={rec['D']} {rec['dtype']}: tree[{rec['tree_impl']}] {fmt_time(t['tree'])} "
            f"{rec['tree_unique_gbps']:.1f} GB/s of {rec['unique_kv_bytes'] / 1e6:.1f} MB unique KV; "
            f"plan {fmt_time(rec['plan_s'])} ({rec['plan_chunks']} chunks, {rec['plan_pairs']} pairs); "
            f"speedup vs {others}")
        for key in ("triton_cost", "triton_cost_wide", "triton_cost_balanced"):
            c = rec.get(key)
            if c:
                log(f"    {key}: KV into SMs {c['kv_passes']:.2f}x unique (widest chunk {c['max_passes']} passes), "
                    f"CTAs {c['ctas_live']}/{c['ctas_launched']} live, partials {c['partial_bytes'] / c['kv_unique_bytes']:.3f}x "
                    f"unique KV")
    # Planning cost at the largest shape of the issue, whatever the sweep.
    bt = torch.cat([torch.arange(2048, dtype=torch.int32).repeat(256, 1),
                    2048 + torch.arange(256 * 4, dtype=torch.int32).view(256, 4)], 1).to(device)
    sl = torch.full((256,), 32768 + 50, dtype=torch.int32, device=device)
    plan_big = timeit(lambda: tk.plan_tree_attention(bt, sl, 16), device, 1.0, 20)
    plan_big_1t = None
    if device.type == "cpu":  # planning is many small ops: on a busy machine, threads mostly wait for each other
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        plan_big_1t = timeit(lambda: tk.plan_tree_attention(bt, sl, 16), device, 1.0, 20)
        torch.set_num_threads(threads)
    log(f"planning N=256, 32k-token shared prefix, block 16: {fmt_time(plan_big)}"
        + (f" ({fmt_time(plan_big_1t)} with 1 CPU thread)" if plan_big_1t is not None else ""))
    meta["load_after"] = list(__import__("os").getloadavg())
    payload = dict(meta=meta, sweep={k: (str(v) if k == "dtype" else v) for k, v in sweep.items()},
                   block_size=args.block_size, planning_N256_prefix32k_bs16_s=plan_big,
                   planning_N256_prefix32k_bs16_1thread_s=plan_big_1t, records=records)
    if args.out != "none":
        path = save_results(args.out or f"tree_attention_{device.type}", payload)
        log(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
