"""The embedded tiny reasoning model and its task: files, tokenizer, HF parity, budget forcing Control."""
import os
import re

import pytest
import torch

from tts_kernels.decode import DEFAULT_MODEL, Engine, Tokenizer, load
from tts_kernels.tasks import arith


@pytest.fixture(scope="module")
def embedded():
    torch.set_num_threads(1)
    return load()


def test_shipped_files_small():
    for fn in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert os.path.isfile(os.path.join(DEFAULT_MODEL, fn)), fn
    total = sum(os.path.getsize(os.path.join(DEFAULT_MODEL, f)) for f in os.listdir(DEFAULT_MODEL))
    assert total < 8 * 2 ** 20


def test_task_generator_and_checker():
    a, b = arith.make_problems(50, 3), arith.make_problems(50, 3)
    assert a == b and a != arith.make_problems(50, 4)
    for p in a:
        vals = p.values
        assert all(0 <= v <= arith.MAX_VALUE for v in vals) and 3 <= len(p.ops) <= 6
        for wait in (False, True):
            c = p.completion(wait)
            assert arith.is_correct(p, c) and all(arith.check_steps(p, c))
            assert c.count(arith.END_THINK) == 1 and c.endswith(arith.EOS)
        assert not arith.is_correct(p, p.completion().replace(f"Answer: {p.answer}", f"Answer: {p.answer + 1}"))
    assert arith.extract_answer("x</think>Final Answer: 12 ... Final Answer: -3") == -3
    assert arith.extract_answer("no answer") is None
    assert arith.check_steps(a[0], "1+2=4\n\n4-1=3\n\n</think>") == [False, True]


def test_tokenizer_pure_python_agrees(embedded):
    _, tok = embedded
    pure = Tokenizer(DEFAULT_MODEL, prefer_pure=True)
    for p in arith.make_problems(20, 5):
        s = p.prompt + p.completion(wait=True)
        ids = tok.encode(s)
        assert pure.encode(s) == ids and tok.decode(ids) == s and pure.decode(ids) == s
    assert tok.encode("\n\n") == [tok.token_to_id("\n\n")]
    assert tok.eos_token_ids == (tok.token_to_id(arith.EOS),)


def test_matches_transformers(embedded):
    transformers = pytest.importorskip("transformers")
    model, tok = embedded
    hf = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL).eval()
    p = arith.make_problems(1, 9)[0]
    ids = torch.tensor(tok.encode(p.prompt + p.completion()))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    got, _ = model.prefill(ids)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)


def test_solves_some_problems_greedy(embedded):
    model, tok = embedded
    eng = Engine(model, tok, num_blocks=1024, block_size=16)
    probs = arith.make_problems(40, 777)
    sids = [eng.add(p.prompt, temperature=0.0) for p in probs]
    eng.generate(sids, max_new_tokens=100)
    texts = [eng.text(s) for s in sids]
    assert all(eng.finished(s) for s in sids)
    assert all(re.search(r"</think>Final Answer: \d+<\|eos\|>$", t) for t in texts)
    acc = sum(arith.is_correct(p, t) for p, t in zip(probs, texts)) / len(probs)
    assert 0.1 <= acc <= 0.9


def test_step_level_stop(embedded):
    model, tok = embedded
    eng = Engine(model, tok, num_blocks=256, block_size=16, seed=4)
    root = eng.add(arith.make_problems(1, 11)[0].prompt, temperature=0.7)
    kids = eng.fork(root, 6)
    out = eng.generate(kids, stop=["\n\n"], max_new_tokens=40)
    for k in kids:
        step = tok.decode(out[k])
        assert step.endswith("\n\n") and re.fullmatch(r"\d+[+-]\d+=-?\d+\n\n", step), step
    out2 = eng.generate(kids, stop=["\n\n"], max_new_tokens=40)
    assert all(tok.decode(out2[k]).endswith("\n\n") for k in kids)
    assert all(len(eng.tokens(k)) == len(out[k]) + len(out2[k]) for k in kids)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_budget_forcing_control_100(embedded, temperature):
    """s1's Control: every generation's thinking length within [min, max] (min, max and Waits mixed)."""
    model, tok = embedded
    eng = Engine(model, tok, num_blocks=2048, block_size=16, seed=5)
    assert eng.forcing.end_think_ids == tuple(tok.encode(arith.END_THINK))
    probs = arith.make_problems(8, 21)
    budgets = [(0, 8, 0), (10, 16, 0), (30, 40, 1), (45, 60, 2), (0, 200, 1), (25, 25, 0)]
    sids, want = [], []
    for i, p in enumerate(probs):
        for mn, mx, mw in budgets:
            root = eng.add(p.prompt, temperature=temperature, min_thinking=mn, max_thinking=mx, min_waits=mw)
            sids += [root] + (eng.fork(root, 1) if temperature > 0 and i < 2 else [])
            want += [(mn, mx, mw)] * (len(sids) - len(want))
    eng.generate(sids, max_new_tokens=260)
    for sid, (mn, mx, mw) in zip(sids, want):
        text, n = eng.text(sid), eng.thinking_tokens(sid)
        assert not eng.is_thinking(sid), text
        assert mn <= n <= mx, (n, mn, mx, text)
        assert eng.waits_used(sid) >= mw or n == mx   # the maximum overrides min_waits
        think = tok.encode(text.split(arith.END_THINK)[0])
        assert len(think) == n                       # the count is the tokens before </think>
        assert arith.ANSWER_PREFIX in text.split(arith.END_THINK)[1]


def test_cli_generate(capsys):
    from tts_kernels.cli import main
    main(["generate", "-n", "6", "--max-thinking", "20", "--min-thinking", "5", "--min-waits", "1",
          "--temperature", "0.8", "--max-new-tokens", "40", "--threads", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert "tokens/s" in out and "Control 100% within [5, 20]" in out and "true answer" in out
