"""The model runner against transformers' own forward on tiny random-weight checkpoints made here.

Covers Llama (GQA, untied, Llama-3 rope scaling with positions past the
original context; MHA, tied, linear scaling) and Qwen2 (GQA, tied, QKV bias),
prefill and step-by-step paged decode through the engine, per dtype, greedy
generations token for token, and the errors of bad checkpoint directories.
"""
import copy
import json
import os
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tts_kernels.decode import CheckpointError, Engine, Model, Tokenizer  # noqa: E402
from tts_kernels.decode.checkpoint import read_config  # noqa: E402

VOCAB = 97
CASES = {
    "llama-gqa-untied-llama3": dict(arch="llama", heads=4, kv=2, tied=False,
                                    rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "llama-mha-tied-linear": dict(arch="llama", heads=4, kv=4, tied=True, rope={"rope_type": "linear", "factor": 2.0}),
    "qwen2-gqa-tied-bias": dict(arch="qwen2", heads=4, kv=1, tied=True, rope=None),
    "qwen2-gqa-untied": dict(arch="qwen2", heads=6, kv=2, tied=False, rope=None),
}
TOL = {torch.float32: 2e-4, torch.bfloat16: 0.1, torch.float16: 2e-2}


def _make(path, arch, heads, kv, tied, rope):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=8 * heads, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256,
                  tie_word_embeddings=tied, rope_theta=500.0, eos_token_id=VOCAB - 1, initializer_range=0.2)
    if rope:
        common["rope_scaling"] = dict(rope, rope_theta=500.0)
    if arch == "llama":
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "norm" in name else 0.05))
    m.save_pretrained(path)
    return m.eval()


@pytest.fixture(scope="module", params=list(CASES))
def ckpt(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    hf = _make(path, **CASES[request.param])
    return request.param, path, hf


def _hf_logits(hf, ids, dtype):
    with torch.no_grad():
        m = hf if dtype == torch.float32 else copy.deepcopy(hf).to(dtype)   # never round hf itself
        return m(torch.as_tensor(ids)[None]).logits[0].float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_prefill_matches_transformers(ckpt, dtype):
    torch.set_num_threads(1)
    name, path, hf = ckpt
    model = Model.from_pretrained(path, dtype=dtype)
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(1))
    ref = _hf_logits(hf, ids, dtype)
    got, kv = model.prefill(ids)
    scale = ref.abs().max().item()
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert (got - ref).abs().max().item() <= TOL[dtype] * max(1.0, scale), name
    assert len(kv) == 2 and kv[0][0].shape == (40, CASES[name]["kv"], 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("attention", ["tree", "torch"])
def test_paged_decode_matches_transformers(ckpt, dtype, attention):
    """Step-by-step decode through the paged pool (blocks of 4, sequences of mixed lengths in one batch)."""
    torch.set_num_threads(1)
    name, path, hf = ckpt
    model = Model.from_pretrained(path, dtype=dtype)
    eng = Engine(model, num_blocks=128, block_size=4, attention=attention)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, VOCAB - 1, (n,), generator=g).tolist() for n in (3, 9, 17)]
    sids = [eng.add(p, temperature=0.0) for p in prompts]
    steps = 6
    for _ in range(steps):
        eng.step(sids)
    for p, sid in zip(prompts, sids):
        full = p + eng.tokens(sid)
        ref = _hf_logits(hf, full, dtype)
        # the logits the engine holds after each step = HF logits at that position
        assert torch.allclose(eng.next_logits(sid), ref[-1], atol=TOL[dtype] * max(1.0, ref.abs().max().item())), name
        lp = torch.log_softmax(ref, -1)
        want = [lp[len(p) - 1 + i, t].item() for i, t in enumerate(eng.tokens(sid))]
        assert max(abs(a - b) for a, b in zip(eng.logprobs(sid), want)) <= (1e-3 if dtype == torch.float32 else 0.2)


def test_greedy_generation_identical(ckpt):
    torch.set_num_threads(1)
    name, path, hf = ckpt
    model = Model.from_pretrained(path, dtype=torch.float32)
    prompt = torch.randint(0, VOCAB - 1, (7,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                          pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    ref = ref[0, len(prompt):].tolist()
    if VOCAB - 1 in ref:                      # the engine stops at EOS (config eos_token_id)
        ref = ref[:ref.index(VOCAB - 1) + 1]
    eng = Engine(model, num_blocks=64, block_size=4)
    sid = eng.add(prompt, temperature=0.0)
    kid = eng.fork(sid, 1)[0]
    eng.generate([sid, kid], max_new_tokens=24)
    assert eng.tokens(sid) == ref, name
    assert eng.tokens(kid) == eng.tokens(sid)
    assert model.greedy(prompt, 24)[:len(ref)] == ref


def test_config_parsing_llama3_rope(ckpt):
    name, path, hf = ckpt
    cfg = read_config(path)
    c = CASES[name]
    assert cfg.arch == c["arch"] and cfg.num_kv_heads == c["kv"] and cfg.tie_word_embeddings == c["tied"]
    assert cfg.qkv_bias == (c["arch"] == "qwen2")
    assert (cfg.rope_scaling or {}).get("rope_type") == (c["rope"] or {}).get("rope_type")


# -- bad checkpoint directories -------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("good"))
    _make(path, **CASES["qwen2-gqa-tied-bias"])
    return path


def _copy(good_dir, tmp_path):
    d = str(tmp_path / "ck")
    shutil.copytree(good_dir, d)
    return d


def _edit_config(d, **changes):
    fn = os.path.join(d, "config.json")
    cfg = json.load(open(fn))
    cfg.update(changes)
    json.dump(cfg, open(fn, "w"))


def test_bad_checkpoints(good_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Model.from_pretrained(str(tmp_path / "nope"))
    d = _copy(good_dir, tmp_path)
    os.remove(os.path.join(d, "model.safetensors"))
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        Model.from_pretrained(d)
    shutil.rmtree(d)

    d = _copy(good_dir, tmp_path)
    os.remove(os.path.join(d, "config.json"))
    with pytest.raises(CheckpointError, match="missing config.json"):
        Model.from_pretrained(d)
    shutil.rmtree(d)

    d = _copy(good_dir, tmp_path)
    _edit_config(d, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(CheckpointError, match="unsupported architecture.*GPT2LMHeadModel"):
        Model.from_pretrained(d)
    _edit_config(d, architectures=["Qwen2ForCausalLM"], intermediate_size=48)
    with pytest.raises(CheckpointError, match=r"mlp.*shape \(40, 32\).*implies \(48, 32\)"):
        Model.from_pretrained(d)
    _edit_config(d, intermediate_size=40, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="weights missing.*layers.2"):
        Model.from_pretrained(d)
    _edit_config(d, num_hidden_layers=2, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    with pytest.raises(CheckpointError, match="rope_type 'yarn' is not supported"):
        Model.from_pretrained(d)
    _edit_config(d, rope_parameters={"rope_type": "default", "rope_theta": 1e4}, num_key_value_heads=3)
    with pytest.raises(CheckpointError, match="multiple of num_key_value_heads"):
        Model.from_pretrained(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Model.from_pretrained(d)
    with pytest.raises(CheckpointError, match="missing tokenizer.json"):
        Tokenizer(d)
    shutil.rmtree(d)

    d = _copy(good_dir, tmp_path)
    with open(os.path.join(d, "model.safetensors"), "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CheckpointError, match="truncated|not a valid safetensors"):
        Model.from_pretrained(d)


# -- projections: oneDNN-prepacked on the CPU (tts_kernels.decode.model.Linear) --------------------
from tts_kernels.decode import model as model_mod  # noqa: E402


def _pair(path, dtype):
    """The same checkpoint with prepacked projections (the CPU default) and with F.linear."""
    return Model.from_pretrained(path, dtype=dtype), Model.from_pretrained(path, dtype=dtype, onednn=False)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_packed_projections_match_dense(ckpt, dtype, one_thread):
    """Packed (float32/bfloat16 on the CPU when oneDNN is there) and F.linear give the same logits to the
    dtype's tolerance; the dense weights rebuilt from packed ones are bit-exact (state_dict round trip)."""
    name, path, _ = ckpt
    packed, dense = _pair(path, dtype)
    want_packed = model_mod.onednn_linear_available() and (dtype == torch.float32 or (
        dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    assert all(lin.packed == want_packed for lin in packed.linears()), name
    assert not any(lin.packed for lin in dense.linears())
    sd_p, sd_d = packed.state_dict(), dense.state_dict()
    assert sd_p.keys() == sd_d.keys()
    for k in sd_d:
        assert torch.equal(sd_p[k], sd_d[k]), (name, k)
    ids = torch.randint(0, VOCAB, (33,), generator=torch.Generator().manual_seed(4))
    a, b = packed.prefill(ids)[0], dense.prefill(ids)[0]
    assert (a - b).abs().max().item() <= TOL[dtype] * max(1.0, b.abs().max().item()), name


def test_packed_projection_rows_do_not_depend_on_the_batch(one_thread):
    """oneDNN's packed projection on one thread: a row's output is the same bits whatever the other rows
    (batch sizes 1..80; measured on this project's CPU, not a oneDNN guarantee); the dense weight comes
    back exactly, inf included."""
    if not model_mod.onednn_linear_available():
        pytest.skip("this torch has no oneDNN prepacked linear")
    g = torch.Generator().manual_seed(5)
    w = torch.randn(96, 40, generator=g)
    w[3, 7] = float("inf")
    lin = model_mod.Linear(w, None, pack=True)
    assert lin.packed and torch.equal(lin.weight, w)
    w[3, 7] = 0.5
    lin = model_mod.Linear(w, torch.randn(96, generator=g), pack=True)
    x = torch.randn(80, 40, generator=g)
    full = lin(x)
    torch.testing.assert_close(full, x @ lin.weight.t() + lin.bias, atol=1e-4, rtol=1e-4)
    for m in (1, 2, 3, 7, 8, 16, 17, 64, 79):
        assert torch.equal(lin(x[:m]), full[:m]), m
    assert torch.equal(lin(x[::2]), full[::2])         # strided input


def test_onednn_forced_without_it_raises(ckpt, monkeypatch):
    _, path, _ = ckpt
    monkeypatch.setattr(model_mod, "onednn_linear_available", lambda: False)
    monkeypatch.setattr(Model, "onednn", True)
    with pytest.raises(RuntimeError, match="onednn"):
        Model.from_pretrained(path)
    monkeypatch.setattr(Model, "onednn", None)
    assert not any(lin.packed for lin in Model.from_pretrained(path).linears())
    with pytest.raises(RuntimeError, match="onednn"):
        Model.from_pretrained(path, onednn=True)
