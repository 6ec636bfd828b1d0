"""Train the embedded tiny reasoning model (tts_kernels/models/tiny-arith) on chained arithmetic.

Reproducible: fixed seeds (torch, the problem stream), one CPU thread,
deterministic problem order. Needs ``pip install transformers tokenizers`` (used
only here: the model is a plain ``LlamaForCausalLM`` saved in Hugging Face
format, so tts_kernels' runner and transformers both load it).

Task (``tts_kernels.tasks.arith``): "37+45-12+8=?<think>" ->
"37+45=82\\n\\n82-12=70\\n\\n70+8=78\\n\\n</think>Final Answer: 78<|eos|>",
3 to 6 steps, all values in [0, 99]; a quarter of the training completions
re-check the last step after "Wait". The loss covers the completion only.

The training budget is deliberately small, so the model is right often but
not always and test-time compute (sampling more, voting) visibly helps.

Usage::

    python scripts/train_tiny_model.py                      # writes tts_kernels/models/tiny-arith
    python scripts/train_tiny_model.py --steps 50 --out /tmp/m --eval 20   # quick smoke run

Afterwards the script measures accuracy with the package's own runner and the
exact checker (greedy and temperature-1 single samples on held-out problems,
seed 10_000) and writes ``train_log.json`` next to the model.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tts_kernels.tasks import arith  # noqa: E402

SPECIALS = ["<|pad|>", "<|unk|>", "<|bos|>", arith.EOS, arith.THINK, arith.END_THINK]
WORDS = ["\n\n", "\n", arith.WAIT, "Final", "Answer"] + list("0123456789+-=?: .,")
SPLIT_REGEX = r"\n\n|\n|Wait|Final|Answer|\d|."
EVAL_SEED = 10_000


def build_tokenizer(out_dir: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers import AddedToken
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": arith.EOS,
                   "pad_token": "<|pad|>", "unk_token": "<|unk|>", "model_max_length": 256}, f, indent=2)
    return tok, vocab


def make_batch(problems, rng, tok, pad_id, wait_prob):
    seqs, labels = [], []
    for p in problems:
        prompt = tok.encode(p.prompt).ids
        comp = tok.encode(p.completion(wait=rng.random() < wait_prob)).ids
        seqs.append(prompt + comp)
        labels.append([-100] * len(prompt) + comp)
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    lab = torch.full((len(seqs), T), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, :len(s)] = torch.tensor(s)
        lab[i, :len(l)] = torch.tensor(l)
        att[i, :len(s)] = 1
    return ids, lab, att


def evaluate(model_dir: str, n: int, seed: int = EVAL_SEED) -> dict:
    """Single-sample accuracy with the package's runner (greedy and T=1), exact checker."""
    from tts_kernels.decode import Engine, load
    model, tok = load(model_dir)
    problems = arith.make_problems(n, seed)
    out = {"n": n, "eval_seed": seed}
    for name, temp in (("greedy", 0.0), ("t1", 1.0)):
        eng = Engine(model, tok, num_blocks=4096, block_size=16, seed=seed)
        ids = [eng.add(p.prompt, temperature=temp) for p in problems]
        eng.generate(ids, max_new_tokens=120)
        out[f"accuracy_{name}"] = sum(arith.is_correct(p, eng.text(i)) for p, i in zip(problems, ids)) / n
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tts_kernels", "models", "tiny-arith"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wait-prob", type=float, default=0.25)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--eval", type=int, default=300, help="held-out problems for the accuracy check (0: skip)")
    args = ap.parse_args(argv)

    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    tok, vocab = build_tokenizer(args.out)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=True,
                      bos_token_id=vocab["<|bos|>"], eos_token_id=vocab[arith.EOS], pad_token_id=vocab["<|pad|>"])
    model = LlamaForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    t0 = time.time()
    log = []
    for step in range(args.steps):
        problems = [arith.make_problem(rng) for _ in range(args.batch)]
        ids, lab, att = make_batch(problems, rng, tok, vocab["<|pad|>"], args.wait_prob)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4), "elapsed_s": round(time.time() - t0, 1)})
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:7.1f}s", flush=True)
    train_s = time.time() - t0
    model.save_pretrained(args.out, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(args.out, extra)):
            os.remove(os.path.join(args.out, extra))
    result = {"train_seconds": round(train_s, 1), "steps": args.steps, "batch": args.batch, "lr": args.lr,
              "seed": args.seed, "params": sum(p.numel() for p in model.parameters()), "threads": 1,
              "torch": torch.__version__, "log": log}
    if args.eval:
        result["eval"] = evaluate(args.out, args.eval)
        print("eval:", result["eval"])
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"trained in {train_s:.0f}s; wrote {args.out}")


if __name__ == "__main__":
    main()
