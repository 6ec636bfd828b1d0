"""End-to-end decode throughput: N sequences forked from one shared prompt.

Modes (same weights, same prompt, ``--new-tokens`` tokens per sequence, EOS ignored):

* ``tree``    the engine with ``tk.tree_attention`` reading shared prompt KV once per step
* ``noshare`` the engine with sharing disabled in the plan (every row reads its own KV)
* ``hf``      transformers ``generate(num_return_sequences=N, do_sample=True)`` (needs transformers)

Reported per (model, prompt length, N, mode): decode tokens/s (``N * new_tokens`` over the
decode time, prefill excluded; the engine prefills the prompt once and forks, HF prefills
it N times, so for HF the decode time is the total minus one measured 1-token generate),
and end-to-end seconds. Models: ``embedded`` (the shipped tiny model) or random weights
of a real shape: ``qwen2.5-0.5b``, ``qwen2.5-1.5b``, ``llama-3.1-8b``.

    python benchmarks/bench_decode.py --model embedded --prompt-lens 2048 8192 --n 1 16 64
    python benchmarks/bench_decode.py --model qwen2.5-1.5b --device cuda --dtype bfloat16

Results go to ``benchmarks/results/decode_<model>_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tts_kernels.decode import Engine, Model, ModelConfig, load  # noqa: E402

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab, tied, arch, rope theta
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True, "qwen2", 1e6),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936, True, "qwen2", 1e6),
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 128256, False, "llama", 5e5),
}


def random_model(name, dtype, device):
    H, I, L, nh, nkv, V, tied, arch, theta = SHAPES[name]
    scaling = ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192} if arch == "llama" else None)
    cfg = ModelConfig(arch=arch, vocab_size=V, hidden_size=H, intermediate_size=I, num_layers=L, num_heads=nh,
                      num_kv_heads=nkv, head_dim=H // nh, rope_theta=theta, rope_scaling=scaling,
                      tie_word_embeddings=tied, qkv_bias=arch == "qwen2", rms_norm_eps=1e-6,
                      max_position_embeddings=131072, torch_dtype=dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    w = {}
    for k, shape in cfg.expected_shapes().items():
        t = torch.randn(shape, generator=g, dtype=torch.float32) * 0.02
        w[k] = (t + 1.0) if "norm" in k else t
    return Model(cfg, w, dtype=dtype, device=device)


def hf_model(model):
    """The same weights as a transformers model (for the HF generate baseline)."""
    import transformers
    c = model.cfg
    kw = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
              num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
              head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps, tie_word_embeddings=c.tie_word_embeddings,
              max_position_embeddings=max(c.max_position_embeddings, 16384), rope_theta=c.rope_theta)
    if c.rope_scaling:
        kw["rope_scaling"] = dict(c.rope_scaling, rope_theta=c.rope_theta)
    cls = transformers.LlamaForCausalLM if c.arch == "llama" else transformers.Qwen2ForCausalLM
    conf = (transformers.LlamaConfig if c.arch == "llama" else transformers.Qwen2Config)(**kw)
    with torch.device(model.device):
        hf = cls(conf).to(model.dtype)
    sd = model.state_dict()
    hf.load_state_dict(sd, strict=False)
    return hf.eval()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench_engine(model, prompt, n, new_tokens, mode, block_size, device):
    blocks = (len(prompt) // block_size + 2) + n * (new_tokens // block_size + 2)
    eng = Engine(model, num_blocks=blocks, block_size=block_size, seed=0,
                 attention="tree" if mode == "tree" else "tree-noshare")
    eng.eos_token_ids = ()                      # fixed-length runs
    _sync(device)
    t0 = time.perf_counter()
    root = eng.add(prompt, temperature=1.0)
    kids = eng.fork(root, n)
    eng.free(root)
    _sync(device)
    t1 = time.perf_counter()
    eng.step(kids)                              # warm-up step (not timed as decode)
    _sync(device)
    t2 = time.perf_counter()
    eng.generate(kids, max_new_tokens=new_tokens - 1)
    _sync(device)
    t3 = time.perf_counter()
    return {"decode_tokens_per_s": n * (new_tokens - 1) / (t3 - t2), "prefill_s": t1 - t0,
            "end_to_end_s": t3 - t0, "kv_blocks_used": eng.pool.num_used_blocks}


def bench_hf(hf, prompt, n, new_tokens, device):
    ids = torch.tensor([prompt], device=device)
    att = torch.ones_like(ids)

    def gen(k):
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            hf.generate(ids, attention_mask=att, do_sample=True, num_return_sequences=n, max_new_tokens=k,
                        min_new_tokens=k, pad_token_id=0, eos_token_id=None, top_k=0)
        _sync(device)
        return time.perf_counter() - t
    t_one = gen(1)                              # prefill of the N expanded copies + 1 token
    t_all = gen(new_tokens)
    return {"decode_tokens_per_s": n * (new_tokens - 1) / max(t_all - t_one, 1e-9), "prefill_s": t_one,
            "end_to_end_s": t_all}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", help=f"embedded, a checkpoint dir, or one of {list(SHAPES)}")
    ap.add_argument("--prompt-lens", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--modes", nargs="+", default=["tree", "noshare", "hf"], choices=["tree", "noshare", "hf"])
    ap.add_argument("--hf-max-work", type=float, default=float("inf"),
                    help="skip HF when N * prompt_len exceeds this (its prefill of N copies is slow on CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model not in SHAPES:
        model, _ = load(None if args.model == "embedded" else args.model, dtype=args.dtype, device=args.device)
    else:
        dt = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
        model = random_model(args.model, getattr(torch, dt), args.device)
    hf = hf_model(model) if "hf" in args.modes else None
    g = torch.Generator().manual_seed(1)
    rows = []
    with torch.inference_mode():
        for plen in args.prompt_lens:
            prompt = torch.randint(0, min(model.cfg.vocab_size, 32000), (plen,), generator=g).tolist()
            for n in args.n:
                for mode in args.modes:
                    if mode == "hf" and n * plen > args.hf_max_work:
                        continue
                    r = (bench_hf(hf, prompt, n, args.new_tokens, args.device) if mode == "hf" else
                         bench_engine(model, prompt, n, args.new_tokens, mode, args.block_size, args.device))
                    r.update(prompt_len=plen, n=n, mode=mode)
                    rows.append(r)
                    print(f"prompt {plen:6d}  N {n:3d}  {mode:8s}  {r['decode_tokens_per_s']:10.1f} tok/s  "
                          f"end-to-end {r['end_to_end_s']:7.2f}s", flush=True)
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    except Exception:  # noqa: BLE001
        commit = None
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {"benchmark": "decode", "model": args.model, "dtype": str(model.dtype), "device": dev,
              "threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "block_size": args.block_size,
              "commit": commit, "torch": torch.__version__, "results": rows}
    out = args.out or os.path.join(ROOT, "benchmarks", "results",
                                   f"decode_{os.path.basename(args.model.rstrip('/'))}_{torch.device(args.device).type}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
