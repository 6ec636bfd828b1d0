"""Engine prefix cache: wall time of adding N prompts that share a long prefix, cache off vs on.

Prompts are ``prefix + suffix_i`` (random token ids, fixed seed). Cases, each on a fresh engine:

* ``add_many``      one call with the N prompts (cache on: the shared prefix runs once)
* ``add x N``       one :meth:`Engine.add` per prompt (as a search adds problems one at a time)
* ``warm add_many`` N new prompts with the same prefix after the first call (cache on: all hits)

``--prm``: instead, the embedded :class:`~tts_kernels.search.EnginePRM` re-scoring N candidates
after each of 4 steps, new steps run by ``Engine.extend_many`` (one packed prefill) or by
``Engine.feed`` (one decode forward per token, the PRM's old path).

Models: ``embedded`` (the shipped tiny model) or ``smollm2-135m`` (random weights of
SmolLM2-135M's shape: 30 layers, hidden 576, 9/3 heads, vocab 49152)::

    python benchmarks/bench_prefix_cache.py --model embedded --prefix 1024 --n 8
    python benchmarks/bench_prefix_cache.py --prm --n 16
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tts_kernels.decode import Engine, Model, ModelConfig, load  # noqa: E402


def smollm2_shape():
    cfg = ModelConfig(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=1e5, tie_word_embeddings=True,
                      rms_norm_eps=1e-5, torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    return Model(cfg, {k: torch.randn(s, generator=g) * 0.02 + (1.0 if "norm" in k else 0.0)
                       for k, s in cfg.expected_shapes().items()})


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_prm(n):
    from tts_kernels.search import EnginePRM
    g = torch.Generator().manual_seed(1)
    steps = []
    for a, b in torch.randint(10, 99, (n, 2), generator=g).tolist():
        steps.append([f"{a}+{b}={a + b}", f"{a + b}-3={a + b - 3}", f"{a + b - 3}-6={a + b - 9}",
                      f"</think>Final Answer: {a + b - 9}"])
    prompts = ["49+9-3-6=?<think>"] * n
    for path in ("feed", "extend_many"):
        prm = EnginePRM(num_blocks=4096, block_size=8)
        prm.engine.extend_many = getattr(prm.engine, path)
        secs, _ = timed(lambda: [prm.score(prompts, [s[:k] for s in steps]) for k in range(1, 5)])
        print(f"  EnginePRM, {n} candidates x 4 steps, new steps by {path:12s}: {secs:6.2f} s  "
              f"({prm.tokens_scored} tokens)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded", choices=["embedded", "smollm2-135m"])
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--suffix", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cases", nargs="+", default=["add_many", "add x N", "warm add_many"])
    ap.add_argument("--prm", action="store_true", help="time the embedded EnginePRM instead")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.prm:
        return bench_prm(a.n)
    model = load()[0] if a.model == "embedded" else smollm2_shape()
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(4, model.cfg.vocab_size, (n,), generator=g).tolist()  # noqa: E731
    prefix = rand(a.prefix)
    prompts = [prefix + rand(a.suffix) for _ in range(2 * a.n)]
    first, second = prompts[:a.n], prompts[a.n:]
    blocks = 2 * a.n * -(-(a.prefix + a.suffix) // a.block_size) + 8
    print(f"{a.model}: {a.n} prompts of {a.prefix} shared + {a.suffix} own tokens, block size {a.block_size}, "
          f"{torch.get_num_threads()} threads")
    for case in a.cases:
        logits = {}
        for on in (False, True):
            eng = Engine(model, num_blocks=blocks, block_size=a.block_size, prefix_cache=on)
            if case == "warm add_many":
                eng.add_many(first, temperature=0.0)
            hit0, run0 = eng.stats["prefix_hit_tokens"], eng.stats["prefill_tokens"]
            if case == "add_many":
                secs, sids = timed(lambda: eng.add_many(first, temperature=0.0))
            elif case == "add x N":
                secs, sids = timed(lambda: [eng.add(p, temperature=0.0) for p in first])
            else:
                secs, sids = timed(lambda: eng.add_many(second, temperature=0.0))
            logits[on] = torch.stack([eng.next_logits(s) for s in sids])
            print(f"  {case:14s} cache {'on ' if on else 'off'}: {secs:7.2f} s  "
                  f"hit {eng.stats['prefix_hit_tokens'] - hit0:6d}  prefilled {eng.stats['prefill_tokens'] - run0:6d}")
        print(f"  {'':14s} max |logits on - off| = {(logits[True] - logits[False]).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
