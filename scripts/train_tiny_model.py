"""Train the embedded tiny reasoning model (tts_kernels/models/tiny-arith) on chained arithmetic.

Reproducible: fixed seeds (torch, the problem stream), one CPU thread,
deterministic problem order. Needs ``pip install transformers tokenizers`` (used
only here: the model is a plain ``LlamaForCausalLM`` saved in Hugging Face
format, so tts_kernels' runner and transformers both load it).

Task (``tts_kernels.tasks.arith``): "49+9-3-6=?<think>" ->
"49+9=58\\n\\n58-3=55\\n\\n55-6=49\\n\\n</think>Final Answer: 49<|eos|>",
3 to 6 steps, operands in [1, 9], all values in [0, 99]; a quarter of the training completions
re-check the last step after "Wait". The loss covers the completion only.

The training budget is deliberately small, so the model is right often but
not always and test-time compute (sampling more, voting) visibly helps: the
learning-rate schedule is laid out for 700 steps and training stops after
425 (``--stop-after``), in the middle of the model's jump in arithmetic
accuracy (snapshots of the same seeded run at 400 / 425 / 700 steps: 25% /
59% / 87% greedy accuracy on 100 / 100 / 300 held-out problems).

Conditioning (``--conditioning FRAC``, usually with ``--init DIR``: fine-tune an existing checkpoint,
keeping its tokenizer): a share FRAC of the examples carries one of the prompt forms of s1's
prompt-conditional baselines, spelled with the same vocabulary
(``tts_kernels.decode.families.EMBEDDED_CONDITIONED_TEMPLATES``): a token budget
``"32:49+9-3-6=?<think>"``, a step budget ``"04.49+9-3-6=?<think>"``, think short ``"-,..."`` or
long ``"+,..."``, each with a completion that keeps to it
(``tts_kernels.tasks.arith.conditioned_example``); the rest are the plain examples. The saved
config.json then declares ``"tts_prompt_templates": "embedded-conditioned"``, and the script also
measures the baselines' Control with and without the prefix (``conditioning_eval`` in train_log.json).

Usage::

    python scripts/train_tiny_model.py                      # writes tts_kernels/models/tiny-arith
    python scripts/train_tiny_model.py --stop-after 50 --out /tmp/m --eval 20   # quick smoke run
    python scripts/train_tiny_model.py --hidden 256 --out tts_kernels/models/tiny-arith-large   # the 4x policy
    python scripts/train_tiny_model.py --init tts_kernels/models/tiny-arith --conditioning 0.6 \
        --steps 300 --stop-after 300 --lr 2e-3 --out tts_kernels/models/tiny-arith-cond   # the conditioned policy

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


def make_optimizer(model, lr: float, steps: int):
    """AdamW with 5% linear warm-up and cosine decay to 0.1x over ``steps`` (shared with train_prm.py)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    return opt, sched


def _count(tok):
    return lambda text: len(tok.encode(text).ids)


def make_batch(problems, rng, tok, pad_id, wait_prob, conditioning=0.0):
    """Token ids, labels (completion only) and attention mask of ``problems``; a share ``conditioning``
    of them carries a conditioning prefix (:func:`tts_kernels.tasks.arith.conditioned_example`)."""
    from tts_kernels.decode.families import EMBEDDED_CONDITIONED_TEMPLATES
    seqs, labels = [], []
    for p in problems:
        if conditioning and rng.random() < conditioning:
            text, done, _, _ = arith.conditioned_example(p, rng, EMBEDDED_CONDITIONED_TEMPLATES, _count(tok))
        else:
            text, done = p.prompt, p.completion(wait=rng.random() < wait_prob)
        prompt = tok.encode(text).ids
        comp = tok.encode(done).ids
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


def evaluate(model_dir: str, n: int, seed: int = EVAL_SEED, samples: int = 8, chunk: int = 50) -> dict:
    """Accuracy with the package's engine and the exact checker on ``n`` held-out problems:
    greedy, single-sample at temperature 1 (mean over ``samples`` samples per problem),
    and, over those samples, majority vote (maj@k) and pass@k."""
    import collections
    from tts_kernels.decode import Engine, load
    model, tok = load(model_dir)
    problems = arith.make_problems(n, seed)
    greedy = single = maj = anyk = 0
    for c0 in range(0, n, chunk):
        part = problems[c0:c0 + chunk]
        eng = Engine(model, tok, num_blocks=len(part) * (samples + 1) * 8, block_size=16, seed=seed + c0)
        g_ids = [eng.add(p.prompt, temperature=0.0) for p in part]
        roots = [eng.add(p.prompt, temperature=1.0) for p in part]
        kids = [eng.fork(r, samples) for r in roots]
        eng.free(roots)
        eng.generate(g_ids + [k for ks in kids for k in ks], max_new_tokens=120)
        for p, g, ks in zip(part, g_ids, kids):
            greedy += arith.is_correct(p, eng.text(g))
            texts = [eng.text(k) for k in ks]
            ok = [arith.is_correct(p, t) for t in texts]
            single += sum(ok) / samples
            anyk += any(ok)
            votes = collections.Counter(a for a in map(arith.extract_answer, texts) if a is not None)
            maj += bool(votes) and votes.most_common(1)[0][0] == p.answer
    return {"n": n, "eval_seed": seed, "accuracy_greedy": greedy / n, "accuracy_t1_single_sample": single / n,
            f"maj@{samples}_t1": maj / n, f"pass@{samples}_t1": anyk / n}


def conditioning_eval(model_dir: str, n: int = 64, seed: int = EVAL_SEED, budgets=(8, 16, 24, 32, 48)) -> dict:
    """Control (%) of the prompt-conditional baselines on ``n`` held-out problems, with the conditioning
    prefix (the checkpoint's templates) and without it (the prompts unchanged), one sample each, as
    :func:`tts_kernels.search.budget_control.sweep` measures it; budget forcing for reference."""
    from tts_kernels.decode.families import EMBEDDED_TEMPLATES
    from tts_kernels.search import budget_control as bc
    eng = bc.make_engine(num_sequences=n, path=model_dir, seed=seed)
    problems = arith.make_problems(n, seed)
    out = {"n": n, "seed": seed, "budgets": list(budgets), "templates": bc.templates_for(eng).name}
    for label, templates in (("conditioned", None), ("unconditioned", EMBEDDED_TEMPLATES)):
        methods = bc.METHODS[:4] if templates is None else bc.METHODS[1:4]
        res = bc.sweep(eng, problems, budgets=budgets, methods=methods, seed=seed, templates=templates)
        out[label] = {m: {"control_pct": round(sum(r["control_pct"] for r in d["budgets"]) / len(d["budgets"]), 1),
                          "per_budget": [[r["max_thinking"], round(r["accuracy_pct"], 1),
                                          round(r["avg_thinking_tokens"], 1), round(r["control_pct"], 1)]
                                         for r in d["budgets"]]}
                      for m, d in res["methods"].items()}
    out["per_budget_columns"] = ["max_thinking", "accuracy_pct", "avg_thinking_tokens", "control_pct"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tts_kernels", "models", "tiny-arith"))
    ap.add_argument("--steps", type=int, default=700, help="length of the learning-rate schedule")
    ap.add_argument("--stop-after", type=int, default=425,
                    help="stop after this many steps (an early snapshot of the --steps schedule)")
    ap.add_argument("--snapshot-every", type=int, default=0, help="also save snapshots under OUT/snapshots/")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wait-prob", type=float, default=0.25)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--eval", type=int, default=300, help="held-out problems for the accuracy check (0: skip)")
    ap.add_argument("--conditioning", type=float, default=0.0,
                    help="share of examples with a conditioning prefix (token / step budget, short / long)")
    ap.add_argument("--init", default=None,
                    help="start from this checkpoint (its weights and tokenizer) instead of from scratch")
    ap.add_argument("--eval-only", action="store_true",
                    help="only measure the accuracy of the model in OUT and add it to OUT/train_log.json")
    args = ap.parse_args(argv)
    if not 0.0 <= args.conditioning <= 1.0:
        ap.error(f"--conditioning must be in [0, 1], got {args.conditioning}")
    if args.init and os.path.abspath(args.init) == os.path.abspath(args.out):
        ap.error("--out must differ from --init (the initial checkpoint is kept)")
    if args.eval_only:
        log_file = os.path.join(args.out, "train_log.json")
        result = json.load(open(log_file)) if os.path.exists(log_file) else {}
        torch.set_num_threads(1)
        result["eval"] = evaluate(args.out, args.eval)
        print("eval:", result["eval"])
        if args.conditioning:
            result["conditioning_eval"] = conditioning_eval(args.out)
            print("conditioning eval:", result["conditioning_eval"])
        with open(log_file, "w") as f:
            json.dump(result, f, indent=1)
        return

    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    if args.init:
        import shutil
        from tokenizers import Tokenizer
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(os.path.join(args.init, fn), os.path.join(args.out, fn))
        tok = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))
        vocab = tok.get_vocab()
        model = LlamaForCausalLM.from_pretrained(args.init, dtype=torch.float32)
        args.hidden, args.layers = model.config.hidden_size, model.config.num_hidden_layers
    else:
        tok, vocab = build_tokenizer(args.out)
        cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                          num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=True,
                          bos_token_id=vocab["<|bos|>"], eos_token_id=vocab[arith.EOS],
                          pad_token_id=vocab["<|pad|>"])
        model = LlamaForCausalLM(cfg)
    model.train()
    opt, sched = make_optimizer(model, args.lr, args.steps)
    t0 = time.time()
    log = []
    stop = args.steps if args.stop_after is None else min(args.stop_after, args.steps)
    for step in range(stop):
        problems = [arith.make_problem(rng) for _ in range(args.batch)]
        ids, lab, att = make_batch(problems, rng, tok, vocab["<|pad|>"], args.wait_prob, args.conditioning)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if args.snapshot_every and (step + 1) % args.snapshot_every == 0:
            model.save_pretrained(os.path.join(args.out, "snapshots", f"step{step + 1}"), safe_serialization=True)
        if step % 25 == 0 or step == stop - 1:
            log.append({"step": step, "loss": round(loss.item(), 4), "elapsed_s": round(time.time() - t0, 1)})
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:7.1f}s", flush=True)
    train_s = time.time() - t0
    model.save_pretrained(args.out, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(args.out, extra)):
            os.remove(os.path.join(args.out, extra))
    if args.conditioning:
        from tts_kernels.decode.families import EMBEDDED_CONDITIONED_TEMPLATES, TEMPLATES_KEY
        cfg_file = os.path.join(args.out, "config.json")
        with open(cfg_file) as f:
            saved = json.load(f)
        saved[TEMPLATES_KEY] = EMBEDDED_CONDITIONED_TEMPLATES.name
        with open(cfg_file, "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)
            f.write("\n")
    result = {"train_seconds": round(train_s, 1), "schedule_steps": args.steps, "steps": stop, "batch": args.batch, "lr": args.lr,
              "hidden": args.hidden, "layers": args.layers,
              "seed": args.seed, "params": sum(p.numel() for p in model.parameters()), "threads": 1,
              "torch": torch.__version__, "init": args.init and os.path.relpath(args.init, ROOT),
              "conditioning": args.conditioning, "wait_prob": args.wait_prob,
              "command": "python scripts/train_tiny_model.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "log": log}
    if args.eval:
        result["eval"] = evaluate(args.out, args.eval)
        print("eval:", result["eval"])
    if args.conditioning:
        t1 = time.time()
        result["conditioning_eval"] = conditioning_eval(args.out)
        result["conditioning_eval"]["wall_s"] = round(time.time() - t1, 1)
        print("conditioning eval:", json.dumps(result["conditioning_eval"]))
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"trained in {train_s:.0f}s; wrote {args.out}")


if __name__ == "__main__":
    main()
