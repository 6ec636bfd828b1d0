"""Train the embedded process reward model (tts_kernels/models/tiny-arith-prm) on the policy's own samples.

A tag-token PRM (Math-Shepherd style) for the chained-arithmetic task of
``tts_kernels.tasks.arith``: a ``LlamaForCausalLM`` with the policy's tokenizer, initialised
from the weights and architecture of ``--init`` (default: the policy, ``tts_kernels/models/tiny-arith``;
``tts_kernels/models/tiny-arith-large`` gives a PRM with 4x the policy's parameters) and
fine-tuned so that, at the step tag ``"\\n\\n"`` closing each step, the
next-token logits say ``"+"`` (the solution is still on track) or ``"-"``::

    input  = prompt + step_1 + "\\n\\n" + step_2 + "\\n\\n" + ... + step_K + "\\n\\n"
    score_k = sigmoid(logit["+"] - logit["-"]) at the k-th tag token after the prompt

with ``steps = tts_kernels.search.prm.split_steps(completion)``. This is the
format that ``tts_kernels.search.prm.EnginePRM`` reads (``prm_config.json``).
The prompt, each step and each tag are tokenized separately and concatenated,
as EnginePRM feeds them (for this tokenizer that equals tokenizing the whole text).

Pipeline (reproducible: fixed seeds everywhere, ``--threads`` CPU threads, default 1):

1. Data: the embedded policy, sampled at temperature 1 with the package's engine
   (``tts_kernels.decode.Engine``, per-sequence counter-based seeds), ``--samples``
   completions for each of ``--train-problems`` problems
   ``arith.make_problems(n, seed=--train-seed)`` (default seed 1_000: disjoint from the
   policy's held-out eval seed 10_000, from 20_000-29_999 (reserved for the searches'
   evaluation) and from this script's own held-out seed 30_000; prompts that occur in the
   held-out sets are dropped). Every step is labelled by ``arith.step_labels`` (the solution
   is still on the true chain after this step; the final-answer step is right iff the chain
   so far is right and the answer is right). ``--greedy`` also adds one greedy completion per problem.
2. Training: class-weighted binary cross-entropy on ``logit["+"] - logit["-"]`` at every tag
   position, AdamW with warm-up and cosine decay, in two phases:

   * steps ``[0, --phase1)``: auxiliary data only: fresh problems' reference steps up to a
     random step whose result is, half of the time, a near miss (``c`` +-1, +-2, +-10), BCE at
     every tag (labels from ``step_labels``) plus an auxiliary cross-entropy: the output of
     decoder layer ``--aux-layer`` (default 3 of the 4; must be below the last layer), through
     the final norm and the LM head, must predict the *true* result digits at the corrupted step's result positions;
   * steps ``[--phase1, --steps)``: the same plus a batch of policy samples (BCE at every tag);
     the corrupted prefixes now continue to an answer half of the time.

   Why the auxiliary: plain BCE on the policy samples (tried: 500 steps, batch 64) learns a
   position / difficulty prior and almost no verification (the step score did not depend on
   the written result; PRM-Max fell below the mean single-sample accuracy), and BCE alone did
   not learn even a one-step "is ``a+b=c`` right" check in 1,200 steps. Making layer 3 compute
   the true result at the result positions gives the last layer at the tag something to
   compare with, and the tag classifier then learns the check within a few hundred steps.
   The saved model is still a plain ``LlamaForCausalLM``; the auxiliary is training-only.
3. Saving: ``--out`` gets config.json + model.safetensors (no generation_config.json), the
   policy's tokenizer.json / tokenizer_config.json, prm_config.json and train_log.json.
4. Evaluation on held-out problems ``arith.make_problems(--eval-problems, seed=--eval-seed)``
   with fresh temperature-1 policy samples (``--eval-samples`` per problem): step-level AUC and
   accuracy at 0.5 against ``step_labels``, last-step AUC against ``arith.is_correct``, and
   the accuracy of answer selection over the samples (mean single sample, majority vote,
   PRM-Max with the last-step score, PRM-Vote = answer with the largest sum of last-step
   scores, best-of-N by the minimum step score; pass@N as the oracle bound). The saved
   checkpoint is re-loaded with transformers and run once over each full input.

Usage::

    python scripts/train_prm.py                                    # writes tts_kernels/models/tiny-arith-prm
    python scripts/train_prm.py --out /tmp/prm --train-problems 50 --steps 6 --phase1 3 --eval-problems 10   # smoke run
    python scripts/train_prm.py --init tts_kernels/models/tiny-arith-large ...  # a PRM 4x the policy

Needs ``transformers`` and ``tokenizers`` (as ``scripts/train_tiny_model.py``).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import sys
import time
from typing import List, Sequence, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tts_kernels.tasks import arith  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_tiny_model import make_optimizer  # noqa: E402

POLICY = os.path.join(ROOT, "tts_kernels", "models", "tiny-arith")
OUT = os.path.join(ROOT, "tts_kernels", "models", "tiny-arith-prm")
PRM_CONFIG = {"kind": "tag_token", "step_tag": "\n\n", "good_token": "+", "bad_token": "-"}


def split_steps(completion: str) -> List[str]:
    """Same as ``tts_kernels.search.prm.split_steps`` with its defaults (kept here so the script and
    the shipped format do not depend on that module's import)."""
    completion = completion.replace(arith.EOS, "")
    return [s for s in completion.split(arith.STEP_DELIMITER) if s.strip()]


# -- data -------------------------------------------------------------------------------------
def sample_policy(problems, k: int, temperature: float, seed: int, chunk: int = 250,
                  max_new_tokens: int = 120) -> List[List[str]]:
    """``k`` completions per problem from the embedded policy (the package's engine)."""
    from tts_kernels.decode import Engine, load
    model, tok = load(POLICY)
    out = []
    for c0 in range(0, len(problems), chunk):
        part = problems[c0:c0 + chunk]
        eng = Engine(model, tok, num_blocks=len(part) * (k + 1) * 10, block_size=16, seed=seed + c0)
        roots = [eng.add(p.prompt, temperature=temperature) for p in part]
        kids = [eng.fork(r, k) for r in roots]
        eng.free(roots)
        eng.generate([s for ks in kids for s in ks], max_new_tokens=max_new_tokens)
        out.extend([eng.text(s) for s in ks] for ks in kids)
    return out


def encode(tok, prompt: str, steps: Sequence[str]) -> Tuple[List[int], List[int]]:
    """Token ids of prompt + step_1 + tag + ... + step_K + tag, and the position of each tag's last token."""
    tag = list(tok.encode(PRM_CONFIG["step_tag"]))
    ids = list(tok.encode(prompt))
    pos = []
    for s in steps:
        ids += list(tok.encode(s)) + tag
        pos.append(len(ids) - 1)
    return ids, pos


def collate(examples, pad_id: int):
    T = max(len(e[0]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(examples), T), dtype=torch.long)
    rows, cols = [], []
    for i, e in enumerate(examples):
        ids[i, :len(e[0])] = torch.tensor(e[0])
        att[i, :len(e[0])] = 1
        rows += [i] * len(e[1])
        cols += e[1]
    return ids, att, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def tag_margins(model, ids, att, rows, cols, good: int, bad: int) -> torch.Tensor:
    """``logit[good] - logit[bad]`` of the next-token logits at the given (row, position) pairs."""
    hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state[rows, cols]
    logits = model.lm_head(hidden)
    return logits[:, good] - logits[:, bad]


@torch.no_grad()
def score_all(model, tok, items, good: int, bad: int, pad_id: int, batch: int = 256) -> List[List[float]]:
    """Per (prompt, steps) item, the PRM score of every step (one full forward per input)."""
    model.eval()
    out = []
    for b0 in range(0, len(items), batch):
        enc = [encode(tok, p, st) for p, st in items[b0:b0 + batch]]
        ids, att, rows, cols = collate(enc, pad_id)
        if len(rows):
            sc = torch.sigmoid(tag_margins(model, ids, att, rows, cols, good, bad)).tolist()
        else:
            sc = []
        it = iter(sc)
        out.extend([next(it) for _ in e[1]] for e in enc)
    return out


# -- metrics -----------------------------------------------------------------------------------
def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    pairs = sorted(zip(scores, labels))
    n_pos = sum(1 for _, l in pairs if l)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2                      # ranks i+1 .. j
        rank_sum += avg_rank * sum(1 for _, l in pairs[i:j] if l)
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def evaluate(model, tok, problems, texts, good, bad, pad_id) -> dict:
    items, owners = [], []
    for i, (p, ts) in enumerate(zip(problems, texts)):
        for t in ts:
            items.append((p.prompt, split_steps(t)))
            owners.append(i)
    scores = score_all(model, tok, items, good, bad, pad_id)
    step_s, step_l, last_s, last_ok = [], [], [], []
    first_err_found = first_err_total = 0
    for (prompt, steps), sc, i in zip(items, scores, owners):
        p = problems[i]
        lab = arith.step_labels(p, steps)
        step_s += sc
        step_l += lab
        last_s.append(sc[-1] if sc else 0.0)
        last_ok.append(arith.is_correct(p, arith.STEP_DELIMITER.join(steps)))
        if False in lab:                               # is the first wrong step flagged (< 0.5)?
            first_err_total += 1
            first_err_found += sc[lab.index(False)] < 0.5
    pred = [s > 0.5 for s in step_s]
    tp = sum(1 for a, b in zip(pred, step_l) if a and b)
    tn = sum(1 for a, b in zip(pred, step_l) if not a and not b)
    fp = sum(1 for a, b in zip(pred, step_l) if a and not b)
    fn = sum(1 for a, b in zip(pred, step_l) if not a and b)
    n_pos = sum(step_l)
    res = {
        "problems": len(problems), "completions": len(items), "steps": len(step_l),
        "step_label_positive_rate": n_pos / len(step_l),
        "step_auc": auc(step_s, step_l),
        "step_accuracy@0.5": (tp + tn) / len(step_l),
        "step_confusion@0.5": {"true_pos": tp, "true_neg": tn, "false_pos": fp, "false_neg": fn},
        "first_wrong_step_flagged@0.5": first_err_found / max(1, first_err_total),
        "final_correct_rate": sum(last_ok) / len(last_ok),
        "last_step_auc_vs_is_correct": auc(last_s, last_ok),
        "last_step_accuracy@0.5_vs_is_correct": sum((s > 0.5) == ok for s, ok in zip(last_s, last_ok)) / len(last_ok),
    }
    # answer selection over the samples of each problem
    k = len(texts[0])
    acc = collections.Counter()
    by_problem = collections.defaultdict(list)
    for n, i in enumerate(owners):
        by_problem[i].append(n)
    for i, idx in by_problem.items():
        p = problems[i]
        ts = [arith.STEP_DELIMITER.join(items[n][1]) for n in idx]
        ok = [arith.is_correct(p, t) for t in ts]
        ans = [arith.extract_answer(t) for t in ts]
        last = [scores[n][-1] if scores[n] else 0.0 for n in idx]
        mins = [min(scores[n]) if scores[n] else 0.0 for n in idx]
        acc["single_sample_mean"] += sum(ok) / len(ok)
        votes = collections.Counter(a for a in ans if a is not None)
        acc[f"majority_vote@{k}"] += bool(votes) and votes.most_common(1)[0][0] == p.answer
        acc[f"prm_max_last@{k}"] += ok[max(range(len(ok)), key=lambda j: last[j])]
        weighted = collections.defaultdict(float)
        for a, s in zip(ans, last):
            if a is not None:
                weighted[a] += s
        acc[f"prm_vote_last@{k}"] += bool(weighted) and max(weighted, key=weighted.get) == p.answer
        acc[f"best_of_{k}_min_step"] += ok[max(range(len(ok)), key=lambda j: mins[j])]
        acc[f"pass@{k}_oracle"] += any(ok)
    res["search_accuracy"] = {m: v / len(by_problem) for m, v in acc.items()}
    return res


# -- auxiliary data: reference prefixes with a corrupted result ------------------------------------
def corrupted_prefix(rng: random.Random, tok, continue_prob: float, exclude=frozenset()):
    """A fresh problem's reference steps up to a random step k, whose result ``c`` is replaced (with
    probability 1/2) by a near miss (``c`` +-1, +-2 or +-10); with probability ``continue_prob`` the
    chain then goes on consistently from the written value (as the policy does after a slip),
    optionally re-checks after "Wait", and answers. Returns ``(problem, steps, positions, targets)``:
    the token positions of step k's result digits in ``encode(tok, prompt, steps)`` and the digits of
    the true result there (the auxiliary target; empty when the digit counts differ)."""
    while True:
        p = arith.make_problem(rng)
        if p.prompt not in exclude:
            break
    ref, v = p.steps(), p.values
    k = rng.randrange(len(ref))
    a, (sign, b), c = v[k], p.ops[k], v[k + 1]
    if rng.random() < 0.5:
        c = c + rng.choice([-2, -1, -1, 1, 1, 2, 10, -10])
        if c < 0:
            c = v[k + 1] + 1
    step = f"{a}{sign}{b}={c}"
    steps = ref[:k] + [step]
    start = len(encode(tok, p.prompt, ref[:k])[0])
    got, want = list(tok.encode(step)), list(tok.encode(ref[k]))
    positions, targets = [], []
    if len(got) == len(want):
        first = got.index(tok.token_to_id("=")) + 1
        positions = [start + i for i in range(first, len(got))]
        targets = want[first:]
    if rng.random() < continue_prob:
        cur = c
        for s2, b2 in p.ops[k + 1:]:
            nxt = cur + b2 if s2 == "+" else cur - b2
            steps.append(f"{cur}{s2}{b2}={nxt}")
            cur = nxt
        if rng.random() < 0.25:
            steps += [arith.WAIT, steps[-1]]
        steps.append(f"{arith.END_THINK}{arith.ANSWER_PREFIX} {cur}")
    return p, steps, positions, targets


# -- main --------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--init", default=POLICY,
                    help="checkpoint whose weights and architecture the PRM starts from (default: the policy); "
                         "its tokenizer must be the policy's")
    ap.add_argument("--train-problems", type=int, default=2000)
    ap.add_argument("--train-seed", type=int, default=1000, help="problem seed of the training data")
    ap.add_argument("--samples", type=int, default=4, help="temperature-1 policy samples per training problem")
    ap.add_argument("--greedy", action="store_true", help="also add one greedy completion per training problem")
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps")
    ap.add_argument("--phase1", type=int, default=500,
                    help="steps on the auxiliary data alone before the policy samples join")
    ap.add_argument("--batch", type=int, default=32, help="policy samples per step (phase 2)")
    ap.add_argument("--aux-batch", type=int, default=64, help="corrupted reference prefixes per step")
    ap.add_argument("--aux-layer", type=int, default=3,
                    help="decoder layer (1 .. layers-1 of --init) whose output (final norm + LM head) must "
                         "predict the true result digits")
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--continue-prob", type=float, default=0.5,
                    help="phase 2: probability that a corrupted prefix continues to an answer")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0, help="shuffling and auxiliary-data seed")
    ap.add_argument("--no-balance", action="store_true", help="unweighted BCE (default: classes get equal total weight)")
    ap.add_argument("--eval-problems", type=int, default=200)
    ap.add_argument("--eval-seed", type=int, default=30_000)
    ap.add_argument("--eval-samples", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    for name in ("train_seed", "eval_seed"):
        s = getattr(args, name)
        if s == 10_000 or 20_000 <= s < 30_000:
            ap.error(f"--{name.replace('_', '-')} {s} overlaps the policy's eval seed 10000 or the reserved 20000-29999")
    if args.train_seed == args.eval_seed:
        ap.error("--train-seed and --eval-seed must differ")

    import transformers
    from transformers import AutoConfig, LlamaForCausalLM
    from tts_kernels.decode import Tokenizer
    n_layers = AutoConfig.from_pretrained(args.init).num_hidden_layers
    if not 1 <= args.aux_layer < n_layers:
        ap.error(f"--aux-layer {args.aux_layer}: --init has {n_layers} decoder layers; pick 1 .. {n_layers - 1} "
                 f"(the auxiliary reads an intermediate layer, the last one feeds the tag classifier)")
    with open(os.path.join(args.init, "tokenizer.json")) as f, open(os.path.join(POLICY, "tokenizer.json")) as g:
        if json.load(f) != json.load(g):
            ap.error(f"--init {args.init}: its tokenizer differs from the policy's")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng, aux_rng = random.Random(args.seed), random.Random(args.seed)
    t_start = time.time()
    tok = Tokenizer(POLICY)
    good, bad = tok.token_to_id(PRM_CONFIG["good_token"]), tok.token_to_id(PRM_CONFIG["bad_token"])
    pad_id = tok.token_to_id("<|pad|>")
    # prompts never trained on: this script's held-out problems and the policy's (seed 10_000)
    held_out = frozenset(p.prompt for p in arith.make_problems(args.eval_problems, seed=args.eval_seed)
                         + arith.make_problems(300, seed=10_000))

    # 1. data: the policy's own samples
    t0 = time.time()
    problems = [p for p in arith.make_problems(args.train_problems, seed=args.train_seed) if p.prompt not in held_out]
    texts = sample_policy(problems, args.samples, 1.0, seed=args.train_seed)
    if args.greedy:
        for ts, g in zip(texts, sample_policy(problems, 1, 0.0, seed=args.train_seed)):
            ts.extend(g)
    data, n_pos, n_neg, n_final_ok = [], 0, 0, 0
    for p, ts in zip(problems, texts):
        for t in ts:
            steps = split_steps(t)
            if not steps:
                continue
            ids, pos = encode(tok, p.prompt, steps)
            lab = arith.step_labels(p, steps)
            data.append((ids, pos, lab))
            n_pos += sum(lab)
            n_neg += len(lab) - sum(lab)
            n_final_ok += arith.is_correct(p, t)
    sample_s = time.time() - t0
    print(f"data: {len(data)} completions, {n_pos + n_neg} steps ({n_pos} +, {n_neg} -), "
          f"{n_final_ok / len(data):.1%} correct answers, sampled in {sample_s:.0f}s", flush=True)
    w_pos, w_neg = ((1.0, 1.0) if args.no_balance else
                    ((n_pos + n_neg) / (2 * n_pos), (n_pos + n_neg) / (2 * n_neg)))

    def weighted_bce(margin, y):
        w = torch.where(y > 0.5, torch.tensor(w_pos), torch.tensor(w_neg))
        return torch.nn.functional.binary_cross_entropy_with_logits(margin, y, weight=w, reduction="sum") / w.sum()

    # 2. training
    model = LlamaForCausalLM.from_pretrained(args.init)
    model.train()
    opt, sched = make_optimizer(model, args.lr, args.steps)
    t0 = time.time()
    log, window, order = [], collections.defaultdict(list), []
    n_aux = 0
    for step in range(args.steps):
        # the policy-sample stream advances every step; its batches are used from --phase1 on
        if len(order) < args.batch:
            perm = list(range(len(data)))
            rng.shuffle(perm)
            order += perm
        batch = [data[i] for i in order[:args.batch]]
        del order[:args.batch]
        loss = torch.zeros(())
        if step >= args.phase1 and batch:
            ids, att, rows, cols = collate([(b[0], b[1]) for b in batch], pad_id)
            y = torch.tensor([float(l) for b in batch for l in b[2]])
            margin = tag_margins(model, ids, att, rows, cols, good, bad)
            bce = weighted_bce(margin, y)
            loss = loss + bce
            window["bce_policy"].append(bce.item())
            window["acc_policy"].append(((margin > 0) == (y > 0.5)).float().mean().item())
        if args.aux_batch:
            aux, rc, tg = [], [], []
            for i in range(args.aux_batch):
                p, steps, positions, targets = corrupted_prefix(
                    aux_rng, tok, 0.0 if step < args.phase1 else args.continue_prob, held_out)
                ids, pos = encode(tok, p.prompt, steps)
                aux.append((ids, pos, arith.step_labels(p, steps)))
                rc += [(i, q) for q in positions]
                tg += targets
            n_aux += len(aux)
            ids, att, rows, cols = collate([(b[0], b[1]) for b in aux], pad_id)
            out = model.model(input_ids=ids, attention_mask=att, output_hidden_states=True)
            logits = model.lm_head(out.last_hidden_state[rows, cols])
            margin = logits[:, good] - logits[:, bad]
            y = torch.tensor([float(l) for b in aux for l in b[2]])
            bce = weighted_bce(margin, y)
            mid = model.model.norm(out.hidden_states[args.aux_layer])
            r_idx, c_idx = torch.tensor([r for r, _ in rc]), torch.tensor([c for _, c in rc])
            ce = torch.nn.functional.cross_entropy(model.lm_head(mid[r_idx, c_idx]), torch.tensor(tg))
            loss = loss + bce + args.aux_weight * ce
            window["bce_aux"].append(bce.item())
            window["acc_aux"].append(((margin > 0) == (y > 0.5)).float().mean().item())
            window["ce_aux_layer"].append(ce.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 25 == 0 or step == args.steps - 1:
            entry = {"step": step + 1}
            entry.update({k: round(sum(v) / len(v), 4) for k, v in window.items() if v})
            entry["elapsed_s"] = round(time.time() - t0, 1)
            log.append(entry)
            print("  ".join(f"{k} {v}" for k, v in entry.items()), flush=True)
            window = collections.defaultdict(list)
    train_s = time.time() - t0

    # 3. save
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    gen = os.path.join(args.out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(POLICY, f), os.path.join(args.out, f))
    with open(os.path.join(args.out, "prm_config.json"), "w") as f:
        json.dump(PRM_CONFIG, f, indent=2)

    # 4. held-out evaluation (the saved checkpoint, re-loaded)
    result = {
        "command": "python scripts/train_prm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "init": os.path.relpath(os.path.abspath(args.init), ROOT) + (" (policy weights)" if
                os.path.abspath(args.init) == POLICY else " (weights)"),
        "params": sum(p.numel() for p in model.parameters()),
        "data": {"train_problems": len(problems), "train_seed": args.train_seed,
                 "samples_per_problem_t1": args.samples, "greedy_per_problem": int(args.greedy),
                 "completions": len(data), "steps_labelled": n_pos + n_neg, "positive_steps": n_pos,
                 "negative_steps": n_neg, "correct_answer_rate": round(n_final_ok / len(data), 4),
                 "class_weights": {"+": round(w_pos, 4), "-": round(w_neg, 4)},
                 "aux_corrupted_prefixes": n_aux, "aux_seed": args.seed},
        "training": {"steps": args.steps, "phase1_aux_only_steps": args.phase1, "batch_policy": args.batch,
                     "batch_aux": args.aux_batch, "aux_layer": args.aux_layer, "aux_weight": args.aux_weight,
                     "continue_prob": args.continue_prob, "lr": args.lr, "seed": args.seed,
                     "optimizer": "AdamW(betas=(0.9, 0.98), weight_decay=0.01), 5% warm-up, cosine to 0.1x, clip 1.0",
                     "loss": "class-weighted BCE on logit['+'] - logit['-'] at every tag token (policy samples and "
                             "corrupted reference prefixes) + aux_weight x cross-entropy of the true result digits "
                             "read from decoder layer aux_layer (final norm + LM head) at the corrupted step"},
        "threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__,
        "seconds": {"sampling_train_data": round(sample_s, 1), "training": round(train_s, 1)},
        "log": log,
    }
    if args.eval_problems:
        t0 = time.time()
        ev_problems = arith.make_problems(args.eval_problems, seed=args.eval_seed)
        ev_texts = sample_policy(ev_problems, args.eval_samples, 1.0, seed=args.eval_seed)
        ev_sample_s = time.time() - t0
        saved = LlamaForCausalLM.from_pretrained(args.out)
        ev = evaluate(saved, tok, ev_problems, ev_texts, good, bad, pad_id)
        ev.update({"eval_seed": args.eval_seed, "samples_per_problem_t1": args.eval_samples})
        result["eval"] = ev
        result["seconds"]["eval_sampling"] = round(ev_sample_s, 1)
        result["seconds"]["eval_scoring"] = round(time.time() - t0 - ev_sample_s, 1)
        print("eval:", json.dumps(ev, indent=1))
    result["seconds"]["total"] = round(time.time() - t_start, 1)
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"done in {result['seconds']['total']:.0f}s; wrote {args.out}")


if __name__ == "__main__":
    main()
