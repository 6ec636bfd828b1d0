"""s1's prompt-conditional baselines on the conditioning-trained embedded policy (models/tiny-arith-cond).

The forms (token budget, step budget, think short / long) are defined once
(``families.EMBEDDED_CONDITIONED_TEMPLATES``), the checkpoint declares them in its config.json,
the training data keeps to every stated budget, and the trained policy keeps to a stated token
budget more often than without the prefix (measured, fixed seed).
"""
import json
import os
import random
import shutil
from dataclasses import replace

import pytest
import torch

from tts_kernels.decode import DEFAULT_MODEL, Engine, load
from tts_kernels.decode.checkpoint import CheckpointError, read_config
from tts_kernels.decode.families import (EMBEDDED_CONDITIONED_TEMPLATES, EMBEDDED_TEMPLATES, FAMILIES,
                                         S1_TEMPLATES, TEMPLATES_KEY, family_of, templates_named)
from tts_kernels.search import budget_control as bc
from tts_kernels.search import evaluate as E
from tts_kernels.search import stats
from tts_kernels.tasks import arith

COND = E.DEFAULT_BUDGET_POLICY
T = EMBEDDED_CONDITIONED_TEMPLATES


@pytest.fixture(scope="module")
def tok():
    return load(COND)[1]


@pytest.fixture(scope="module")
def cond_engine():
    torch.set_num_threads(1)
    return bc.make_engine(num_sequences=64, path=COND, seed=0)


def _count(tok):
    return lambda text: len(tok.encode(text))


# -- the forms and the checkpoint that reads them -----------------------------------------
def test_templates_render_as_designed(tok):
    p = "49+9-3-6=?<think>"
    assert T.render("token", p, budget=32) == "32:49+9-3-6=?<think>"
    assert T.render("step", p, steps=4) == "04.49+9-3-6=?<think>" and T.render("token", p, budget=8)[:3] == "08:"
    assert T.render("short", p) == "-,49+9-3-6=?<think>" and T.render("long", p) == "+,49+9-3-6=?<think>"
    # every character of a form is a token of the 29-token vocabulary (no unknown token)
    unk = tok.token_to_id("<|unk|>")
    assert all(unk not in tok.encode(T.render(k, p, 96, 12)) for k in ("token", "step", "short", "long"))
    assert len(tok.encode("49+9=58\n\n")) == 8                              # the longest step of this task
    assert len(tok.encode("Wait\n\n49+9=58\n\n")) == T.tokens_per_step == 10   # the longest re-check
    assert [T.steps_for(b) for b in (8, 16, 24, 32, 48)] == [1, 1, 2, 3, 4]
    assert [T.class_for(b) for b in (8, 32, 47, 48, 96)] == ["short"] * 3 + ["long"] * 2
    # budgets the policy was never trained to read are refused, not rendered
    assert T.render("token", p, budget=99)[:3] == "99:" and T.render("step", p, steps=12)[:3] == "12."
    with pytest.raises(ValueError, match="budget=100"):
        T.render("token", p, budget=100)
    with pytest.raises(ValueError, match="steps=13"):
        T.render("step", p, steps=13)
    assert S1_TEMPLATES.render("token", p, budget=4096).endswith("<think>")        # no limit there
    assert templates_named("embedded-conditioned") is T and templates_named("s1-instruct") is S1_TEMPLATES


def test_checkpoint_selects_templates(tmp_path):
    cfg = read_config(COND)
    assert cfg.prompt_templates == "embedded-conditioned"
    model, tok = load(COND)
    eng = Engine(model, tok, num_blocks=8)
    assert eng.family is FAMILIES["embedded-conditioned"] and eng.family.embedded
    assert bc.templates_for(eng) is T
    assert eng.family.budget_strings == FAMILIES["embedded"].budget_strings
    # the unconditioned embedded policy keeps its unchanged prompts
    base = read_config(DEFAULT_MODEL)
    assert base.prompt_templates == "" and family_of(base, tok) is FAMILIES["embedded"]
    assert family_of(base, tok).templates is EMBEDDED_TEMPLATES
    # any known name can be declared (a family without an entry for it gets its templates replaced)
    assert family_of(replace(base, prompt_templates="s1-instruct"), tok).templates is S1_TEMPLATES
    with pytest.raises(ValueError, match=TEMPLATES_KEY):
        family_of(replace(base, prompt_templates="nope"), tok)
    # a checkpoint naming unknown templates fails clearly, naming the key
    bad = tmp_path / "bad"
    shutil.copytree(COND, bad)
    c = json.loads((bad / "config.json").read_text())
    for wrong in ("embedded-conditionned", 3, False, [], {}):
        c[TEMPLATES_KEY] = wrong
        (bad / "config.json").write_text(json.dumps(c))
        with pytest.raises(CheckpointError, match=TEMPLATES_KEY):
            read_config(str(bad))
    assert issubclass(CheckpointError, ValueError)


# -- the training data keeps to every stated budget (brute force) -------------------------
def _think(tok, completion):
    ids = tok.encode(completion)
    return bc.thinking_length(ids, tok.encode(arith.END_THINK)), completion.split(arith.END_THINK)[0]


def test_training_traces_respect_every_budget(tok):
    count = _count(tok)
    for ch in arith.make_problems(200, seed=5):
        full = len(ch.steps())
        assert ch.conditioned_completion("short") == ch.completion()
        prev = -1
        for b in range(0, 101):
            c = ch.conditioned_completion("token", b, count)
            n, text = _think(tok, c)
            assert n <= b and arith.is_correct(ch, c) and c.endswith(arith.EOS)
            assert n >= prev                                    # a larger budget never thinks less
            prev = n
            items = [x for x in text.split(arith.STEP_DELIMITER) if x]
            k = min(len(items), full)
            assert items[:k] == ch.steps()[:k]                  # the true steps, in order
            waits = len(items) - k
            assert waits % 2 == 0 and items[k:] == [arith.WAIT, ch.steps()[-1]] * (waits // 2)
            # as much as fits: the next step (or re-check) would not have fitted
            recheck = arith.WAIT + arith.STEP_DELIMITER + ch.steps()[-1] + arith.STEP_DELIMITER
            nxt = ch.steps()[k] + arith.STEP_DELIMITER if k < full else recheck
            assert count(text + nxt) > b
        for b in range(8, 100):          # a stated step budget never lets a faithful trace exceed its token budget
            assert _think(tok, ch.conditioned_completion("step", T.steps_for(b)))[0] <= b, (ch.prompt, b)
        for s in range(1, 13):
            c = ch.conditioned_completion("step", s)
            _, text = _think(tok, c)
            written = [x for x in text.split(arith.STEP_DELIMITER) if x and x != arith.WAIT]
            assert len(written) == s and arith.is_correct(ch, c)  # a re-check counts as a step
            assert text.count(arith.WAIT) == max(0, s - full)
        assert arith.WAIT not in ch.conditioned_completion("short")
        for w in (2, 3):
            assert ch.conditioned_completion("long", w).split(arith.END_THINK)[0].count(arith.WAIT) == w
    with pytest.raises(ValueError, match="kind"):
        ch.conditioned_completion("medium")


def test_sampled_examples_keep_to_their_prefix(tok):
    rng, count = random.Random(0), _count(tok)
    kinds = set()
    for ch in arith.make_problems(2000, seed=6):
        prompt, comp, kind, value = arith.conditioned_example(ch, rng, T, count)
        kinds.add(kind)
        assert prompt == T.render(kind, ch.prompt, budget=value, steps=value)
        n, text = _think(tok, comp)
        waits = text.count(arith.WAIT)
        if kind == "token":
            assert arith.COND_TOKEN_BUDGETS[0] <= value <= arith.COND_TOKEN_BUDGETS[1] and n <= value
        elif kind == "step":
            assert len([x for x in text.split(arith.STEP_DELIMITER) if x and x != arith.WAIT]) == value
        elif kind == "short":
            assert waits == 0
        else:
            assert waits >= 2
    assert kinds == set(arith.COND_KINDS)


# -- the trained policy reads the forms -----------------------------------------------------
#: measured (32 problems x budgets 16 and 24, one sample each): with the prefix 85.9% against 9.4%
#: without (problem seed 4242, sampling seed 0, this test); over five more (problem, sampling) seeds the
#: difference was 67 to 83 points (with 80-89%, without 5-14%)
MARGIN_PCT = 50.0


def test_conditioned_policy_keeps_to_a_token_budget(cond_engine):
    probs = arith.make_problems(32, seed=4242)
    prompts = [p.prompt for p in probs]
    ok = {True: 0, False: 0}
    for b in (16, 24):
        for cond in (True, False):
            recs = bc.token_conditional(cond_engine, prompts, max_thinking=b, seed=0,
                                        templates=None if cond else EMBEDDED_TEMPLATES)
            assert all(r.prompt == (T.render("token", p, budget=b) if cond else p) for r, p in zip(recs, prompts))
            ok[cond] += round(len(recs) * bc.control(recs, 0, b))
    # the policy trained without conditioning (tiny-arith), given the same prefixed prompts
    base = bc.make_engine(num_sequences=64, seed=0)
    ok_base = 0
    for b in (16, 24):
        recs = bc.token_conditional(base, prompts, max_thinking=b, seed=0, templates=T)
        ok_base += round(len(recs) * bc.control(recs, 0, b))
    with_prefix, without, untrained = 100 * ok[True] / 64, 100 * ok[False] / 64, 100 * ok_base / 64
    print(f"token-budget Control with the prefix {with_prefix:.1f}%, without {without:.1f}%, "
          f"tiny-arith (not trained on the prefix) given it {untrained:.1f}%")
    assert with_prefix >= without + MARGIN_PCT and with_prefix >= untrained + MARGIN_PCT
    # and the differences are not a fluke of 64 runs: the Wilson intervals do not overlap
    assert stats.wilson(ok[True], 64)[0] > max(stats.wilson(ok[False], 64)[1], stats.wilson(ok_base, 64)[1])


def test_sweep_on_the_conditioned_policy(cond_engine):
    probs = arith.make_problems(24, seed=99)
    res = bc.sweep(cond_engine, probs, budgets=(8, 24, 48), methods=bc.METHODS[:4], seed=3)
    m = res["methods"]
    assert res["config"]["templates"] == "embedded-conditioned"
    assert m["budget_forcing"]["control_pct"] == 100.0
    assert all(r["control_pct"] == 100.0 for r in m["budget_forcing"]["budgets"])
    per = {k: [(r["accuracy_pct"], r["avg_thinking_tokens"], r["control_pct"]) for r in m[k]["budgets"]]
           for k in ("token_conditional", "step_conditional", "class_conditional")}
    assert len(set(map(tuple, per.values()))) == 3             # no longer one unconditioned run three times
    for k, rows in per.items():                                # the stated budget changes the thinking
        assert len({t for _, t, _ in rows}) > 1, k
    tok_thinking = [t for _, t, _ in per["token_conditional"]]
    assert tok_thinking == sorted(tok_thinking)                 # more budget, more thinking
    for d in m.values():                                        # every accuracy and Control has its interval
        assert d["control_lo_pct"] <= d["control_pct"] <= d["control_hi_pct"]
        assert d["performance_lo_pct"] <= d["performance_pct"] <= d["performance_hi_pct"]
        for r in d["budgets"]:
            assert (r["accuracy_lo_pct"], r["accuracy_hi_pct"]) == pytest.approx(
                tuple(100 * x for x in stats.wilson(r["solved"], r["runs"])))
            assert r["control_lo_pct"] <= r["control_pct"] <= r["control_hi_pct"]


def test_eval_config_budget_policy():
    assert E.EvalConfig().budget_policy == COND and os.path.isdir(COND)
    logs = []
    assert E.budget_policy_path(E.EvalConfig(), logs.append) == COND and not logs
    assert E.budget_policy_path(E.EvalConfig(budget_policy=""), logs.append) is None      # the search policy
    assert E.budget_policy_path(E.EvalConfig(policy="/x"), logs.append) == "/x" and logs
    assert E.budget_policy_path(E.EvalConfig(policy="/x", budget_policy="/y")) == "/y"
    assert E._policy_name(COND) == "embedded tiny-arith-cond" and E._policy_name(None) == "embedded tiny-arith"


# -- the training script's batches and arguments -------------------------------------------
@pytest.fixture(scope="module")
def train_script():
    import importlib.util
    pytest.importorskip("transformers")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("train_tiny_model",
                                                  os.path.join(root, "scripts", "train_tiny_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_training_batches_carry_the_forms(train_script):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(COND, "tokenizer.json"))
    pad = tok.token_to_id("<|pad|>")
    probs = arith.make_problems(64, seed=8)
    plain = train_script.make_batch(probs, random.Random(1), tok, pad, 0.25)
    cond = train_script.make_batch(probs, random.Random(1), tok, pad, 0.25, conditioning=1.0)
    prefixes = {tok.decode(row[:3].tolist()) for row in cond[0]}
    assert any(p[2] == ":" for p in prefixes) and any(p[2] == "." for p in prefixes)
    assert any(p.startswith("-,") for p in prefixes) and any(p.startswith("+,") for p in prefixes)
    for ids, lab, att in (plain, cond):                       # the loss covers the completion only
        for i, p in enumerate(probs):
            n_prompt = int((lab[i] == -100).long().cumprod(0).sum())
            assert tok.decode(ids[i, :n_prompt].tolist(), skip_special_tokens=False).endswith(p.prompt)
            assert lab[i, n_prompt:int(att[i].sum())].tolist() == ids[i, n_prompt:int(att[i].sum())].tolist()
    assert all(tok.decode(row[:len(tok.encode(p.prompt).ids)].tolist(), skip_special_tokens=False) == p.prompt
               for row, p in zip(plain[0], probs))                   # no prefix without --conditioning
    with pytest.raises(SystemExit):
        train_script.main(["--conditioning", "1.5", "--out", "/tmp/x"])
    with pytest.raises(SystemExit):
        train_script.main(["--init", COND, "--out", COND])     # the initial checkpoint is never overwritten
