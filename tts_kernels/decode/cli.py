"""``tts-kernels generate``: sample N continuations of a prompt with budget forcing; prints tokens/s.

With no ``--model`` it runs the embedded tiny reasoning model, and with no
``--prompt`` it draws a chained-arithmetic problem (``--problem-seed``) and
scores every sample with the exact checker (plus the majority vote).
"""
from __future__ import annotations

import collections
import sys
import time


def add_arguments(p) -> None:
    from .attention import BACKENDS
    p.add_argument("--model", default=None, help="HF checkpoint dir (default: the embedded tiny model)")
    p.add_argument("--prompt", default=None, help="prompt text (default: an arithmetic problem for the tiny model)")
    p.add_argument("--problem-seed", type=int, default=0, help="seed of the default arithmetic problem")
    p.add_argument("-n", "--num-samples", type=int, default=8, help="sequences forked from the prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--min-thinking", type=int, default=0, help="budget forcing: minimum thinking tokens")
    p.add_argument("--max-thinking", type=int, default=-1, help="budget forcing: maximum thinking tokens (-1: off)")
    p.add_argument("--min-waits", type=int, default=0, help="budget forcing: minimum forced 'Wait's")
    p.add_argument("--end-think", default=None, help="end-of-thinking string (default per model family)")
    p.add_argument("--wait", default=None, help="the Wait string (default per model family)")
    p.add_argument("--answer-prefix", default=None, help="answer prefix forced at the maximum")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable), e.g. '\\n\\n'")
    p.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=None, help="KV pool blocks (default: enough for the run)")
    p.add_argument("--attention", default="tree", choices=list(BACKENDS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--show", type=int, default=4, help="samples to print in full")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> None:
    import torch

    from ..tasks import arith
    from . import Engine, load
    from .families import BudgetStrings, family_of

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load(args.model, dtype=args.dtype, device=args.device)
    load_s = time.perf_counter() - t0
    problem = None
    prompt = args.prompt
    if prompt is None:
        if args.model is not None:
            sys.exit("--prompt is required with --model")
        problem = arith.make_problems(1, args.problem_seed)[0]
        prompt = problem.prompt
    prompt = prompt.encode().decode("unicode_escape") if "\\n" in prompt else prompt
    budget_strings = None
    if args.end_think or args.wait or args.answer_prefix:
        base = family_of(model.cfg, tok).budget_strings
        budget_strings = BudgetStrings(args.end_think or base.end_think, base.wait if args.wait is None else args.wait,
                                       base.answer_prefix if args.answer_prefix is None else args.answer_prefix)
    n_prompt = len(tok.encode(prompt))
    bs = args.block_size
    blocks = args.num_blocks or (n_prompt // bs + 2 + args.num_samples * ((args.max_new_tokens + 8) // bs + 2))
    eng = Engine(model, tok, num_blocks=blocks, block_size=bs, budget_strings=budget_strings, seed=args.seed,
                 attention=args.attention)
    t1 = time.perf_counter()
    root = eng.add(prompt, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                   min_thinking=args.min_thinking, max_thinking=args.max_thinking, min_waits=args.min_waits)
    prefill_s = time.perf_counter() - t1
    kids = eng.fork(root, args.num_samples)
    eng.free(root)
    stops = [s.encode().decode("unicode_escape") for s in (args.stop or [])]
    t2 = time.perf_counter()
    eng.generate(kids, max_new_tokens=args.max_new_tokens, stop=stops,
                 progress=not args.no_progress and sys.stderr.isatty())
    decode_s = time.perf_counter() - t2
    new_tokens = sum(len(eng.tokens(k)) for k in kids)

    name = args.model or "embedded tiny-arith"
    print(f"model: {name} ({model.cfg.arch}, {model.dtype}, {args.device}); prompt: {prompt!r} ({n_prompt} tokens)")
    answers = collections.Counter()
    correct = 0
    for i, k in enumerate(kids):
        text = eng.text(k)
        if problem is not None:
            ans = arith.extract_answer(text)
            answers[ans] += 1
            correct += arith.is_correct(problem, text)
        if i < args.show:
            extra = f" [thinking {eng.thinking_tokens(k)} tokens, {eng.waits_used(k)} Waits]" \
                if args.max_thinking >= 0 else ""
            print(f"--- sample {i}{extra}\n{text}")
    if problem is not None:
        vote = max((a for a in answers if a is not None), key=lambda a: answers[a], default=None)
        print(f"--- true answer {problem.answer}: {correct}/{len(kids)} samples correct; "
              f"majority vote {vote} ({'right' if vote == problem.answer else 'wrong'})")
    if args.max_thinking >= 0:
        th = [eng.thinking_tokens(k) for k in kids]
        ok = sum(args.min_thinking <= t <= args.max_thinking for t in th)
        print(f"budget forcing: thinking tokens min {min(th)} / max {max(th)}; "
              f"Control {100 * ok / len(kids):.0f}% within [{args.min_thinking}, {args.max_thinking}]")
    print(f"load {load_s:.2f}s, prefill {prefill_s * 1e3:.1f} ms; decode: {new_tokens} tokens over "
          f"{len(kids)} sequences in {decode_s:.2f}s = {new_tokens / max(decode_s, 1e-9):.1f} tokens/s")
