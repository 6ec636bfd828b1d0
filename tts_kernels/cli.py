"""Command line: ``python -m tts_kernels <command>`` (or ``tts-kernels``).

Commands
--------
demo
    Budget forcing on a scripted random "model" (s1's Control metric over many
    rows with mixed budgets), then the fused sampler's time per backend on a
    [batch, vocab] logits tensor against the PyTorch reference and against
    softmax + torch.multinomial.
generate
    Sample N continuations of a prompt with the decode engine (budget forcing
    options; the embedded tiny model when no --model is given); prints tokens/s.
evaluate
    The main job: Best-of-N, beam search and DVTS with a PRM at N in {1, 4, 16, 64},
    s1's budget-control methods, difficulty buckets, the compute-optimal choice and
    the small-vs-large headline; a table, a JSON file and a PNG plot.
"""
from __future__ import annotations

import argparse
import time

import torch

from . import _ext
from .sampling import BudgetForcing, sample


def _budget_demo(rows: int, vocab: int, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    bf = BudgetForcing(end_think_ids=[1], wait_ids=[2, 3], answer_prefix_ids=[4, 5, 6])
    max_t = torch.randint(8, 64, (rows,), generator=gen)
    min_t = (max_t.float() * torch.rand(rows, generator=gen)).long()
    min_w = torch.randint(0, 3, (rows,), generator=gen)
    state = bf.init_state(rows, min_tokens=min_t, max_tokens=max_t, min_waits=min_w, device=device)
    seeds = torch.arange(rows, device=device)
    # the scripted model wants to stop early (end-of-thinking strongly favoured) on half of the rows
    end_bias = torch.where(torch.arange(rows) % 2 == 0, 4.0, -2.0).to(device)
    steps = 0
    while bool(state.is_thinking.any()) and steps < 200:
        logits = torch.randn(rows, vocab, generator=gen).to(device)
        logits[:, 1] += end_bias
        sample(logits, temperature=1.0, top_p=0.95, seed=seeds, offset=steps, budget=state, check_nan=False)
        steps += 1
    n = state.num_thinking.cpu()
    within = ((n >= min_t) & (n <= max_t)).float().mean().item()
    print(f"budget forcing: {rows} rows, min/max thinking tokens per row in [0, 63], up to 2 forced Waits")
    print(f"  Control (thinking length within [min, max]): {100 * within:.1f}%")
    print(f"  mean thinking tokens {n.float().mean():.1f}, Waits inserted {int(state.waits_used.sum())}, "
          f"ended at the maximum {int((n == max_t).sum())}/{rows}, decode steps {steps}")


def _time(fn, reps: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def _speed_demo(batch: int, vocab: int, device: torch.device, reps: int) -> None:
    logits = torch.randn(batch, vocab, device=device)
    seeds = torch.arange(batch, device=device)
    backends = ["reference"]
    if device.type == "cpu":
        if _ext.has_kernel("tts_kernels_C::sample_cpu"):
            backends.append("cpp")
        else:
            print(f"  (C++ kernel skipped: {_ext.load_error or 'not in the built library'})")
    else:
        backends.append("triton")
    configs = {"T=0.8": dict(temperature=0.8),
               "T=0.8 top_k=50 top_p=0.9 min_p=0.05": dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05)}
    nbytes = logits.numel() * logits.element_size()
    t_mult = _time(lambda: torch.multinomial(torch.softmax(logits / 0.8, -1), 1), reps, device)
    print(f"sampler: logits [{batch}, {vocab}] float32 on {device}, {reps} reps; "
          f"softmax + torch.multinomial: {t_mult * 1e3:.2f} ms")
    for name, cfg in configs.items():
        times = {b: _time(lambda b=b: sample(logits, seed=seeds, check_nan=False, validate=False, backend=b, **cfg),
                          reps, device) for b in backends}
        for b, t in times.items():
            print(f"  {name:<38} {b:<10} {t * 1e3:8.2f} ms  {nbytes / t / 1e9:7.2f} GB/s  "
                  f"x{times['reference'] / t:5.1f} vs reference  x{t_mult / t:5.2f} vs multinomial")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="tts-kernels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="budget forcing + sampler timing")
    demo.add_argument("--batch", type=int, default=64)
    demo.add_argument("--vocab", type=int, default=151936)
    demo.add_argument("--rows", type=int, default=256, help="rows of the budget-forcing demo")
    demo.add_argument("--reps", type=int, default=5)
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    from .decode import cli as decode_cli
    gen = sub.add_parser("generate", help="sample with the decode engine (default: embedded tiny model)")
    decode_cli.add_arguments(gen)
    from .search import cli as search_cli
    ev = sub.add_parser("evaluate", help="the main job: TTS strategies x N with a PRM (default: embedded task)")
    search_cli.add_arguments(ev)
    args = parser.parse_args(argv)
    if args.command == "generate":
        return decode_cli.run(args)
    if args.command == "evaluate":
        search_cli.run(args)
        return None
    device = torch.device(args.device)
    _budget_demo(args.rows, 64, device)
    _speed_demo(args.batch, args.vocab, device, args.reps)
