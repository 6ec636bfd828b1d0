"""Engine: fork / extend / free over the shared paged KV pool, out-of-blocks, determinism, stop sets.

Uses a random-weight model built directly from a ModelConfig (no transformers needed).
"""
import pytest
import torch

import tts_kernels as tk
from tts_kernels.decode import Engine

from helpers.models import random_model as _random_model


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return _random_model()


def _pool_kv(eng, sid):
    slots = eng.pool.slot_mapping(sid)
    return [(eng.pool.k_cache(i).flatten(0, 1)[slots], eng.pool.v_cache(i).flatten(0, 1)[slots])
            for i in range(eng.model.cfg.num_layers)]


@pytest.mark.parametrize("attention", ["tree", "tree-noshare", "torch"])
def test_forked_kv_equals_fresh_prefill(model, attention):
    eng = Engine(model, num_blocks=256, block_size=4, attention=attention, seed=1)
    root = eng.add(list(range(1, 11)), temperature=1.0)     # 10 tokens: a partial last block
    eng.generate([root], max_new_tokens=3)
    kids = eng.fork(root, 5)
    grand = eng.fork(kids[0], 3)
    eng.generate(kids + grand, max_new_tokens=9)
    assert len({tuple(eng.tokens(k)) for k in kids + grand}) > 1    # their own seeds: they diverge
    for sid in [root] + kids + grand:
        ids = eng.prompt_tokens(sid) + eng.tokens(sid)
        assert eng.pool.seq_len(sid) == len(ids)
        logits, fresh = model.prefill(torch.tensor(ids), last_only=True)
        for (k, v), (fk, fv) in zip(_pool_kv(eng, sid), fresh):
            torch.testing.assert_close(k, fk, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(v, fv, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(eng.next_logits(sid), logits[-1], atol=1e-4, rtol=1e-4)
    # children share the parent's full blocks
    assert eng.pool.block_ids(kids[1])[:2] == eng.pool.block_ids(root)[:2]
    eng.free([root] + kids + grand)
    assert eng.pool.num_free_blocks == eng.pool.num_blocks and eng.live == []


def test_free_returns_every_block_many_sequences(model):
    eng = Engine(model, num_blocks=512, block_size=4, seed=2)
    roots = [eng.add([5 + i] * (3 + 2 * i), temperature=0.8) for i in range(4)]
    alive = list(roots)
    for r in roots:
        alive += eng.fork(r, 6)
    g = torch.Generator().manual_seed(0)
    for round_ in range(4):
        eng.generate(alive, max_new_tokens=3)
        drop = [alive[i] for i in torch.randperm(len(alive), generator=g)[:len(alive) // 3].tolist()]
        eng.free(drop)
        alive = [s for s in alive if s not in drop]
        alive += eng.fork(alive[0], 4)
        used = sum(1 for b in range(eng.pool.num_blocks) if eng.pool.ref_count(b) > 0)
        assert used == eng.pool.num_used_blocks
    eng.free(alive)
    assert eng.pool.num_free_blocks == eng.pool.num_blocks
    with pytest.raises(KeyError, match="no live sequence"):
        eng.step([alive[0]])


def test_out_of_blocks_leaves_sequences_intact(model):
    big = Engine(model, num_blocks=256, block_size=4, seed=3)
    small = Engine(model, num_blocks=14, block_size=4, seed=3)
    results = {}
    for eng in (big, small):
        r = eng.add(list(range(1, 8)), temperature=1.0)        # 2 blocks
        kids = eng.fork(r, 4)
        eng.free(r)
        raised = False
        for _ in range(12):
            try:
                eng.step(kids)
            except tk.OutOfBlocksError as exc:
                raised = True
                assert "out of blocks" in str(exc)
                before = {k: (eng.tokens(k), eng.pool.seq_len(k), eng.next_logits(k).clone(),
                              eng.thinking_tokens(k)) for k in kids}
                free_before = eng.pool.num_free_blocks
                with pytest.raises(tk.OutOfBlocksError):
                    eng.step(kids)
                assert eng.pool.num_free_blocks == free_before
                for k in kids:
                    t, n, lg, th = before[k]
                    assert eng.tokens(k) == t and eng.pool.seq_len(k) == n and eng.thinking_tokens(k) == th
                    assert torch.equal(eng.next_logits(k), lg)
                results.setdefault("partial", {k: list(eng.tokens(k)) for k in kids})
                # finishing half of them lets the rest continue
                eng.free(kids[2:])
                kids = kids[:2]
        results[eng is small] = ({k: eng.tokens(k) for k in kids}, raised)
    assert results[True][1] and not results[False][1]
    # the survivors' tokens are exactly what they would have been in an ample pool
    for k, toks in results[True][0].items():
        assert big.tokens(k)[:len(toks)] == toks and len(toks) >= 8


def test_batch_invariance_and_determinism(model):
    def run(order, extra):
        eng = Engine(model, num_blocks=256, block_size=4, seed=7)
        sids = [eng.add([3, 4, 5, 6], temperature=1.0, top_p=0.9) for _ in range(3)]
        others = [eng.add([9] * n, temperature=0.7) for n in range(1, extra + 1)]
        eng.generate([sids[i] for i in order] + others, max_new_tokens=8)
        return [eng.tokens(s) for s in sids]
    a = run([0, 1, 2], 0)
    assert run([2, 0, 1], 3) == a
    assert len({tuple(x) for x in a}) > 1


def test_nan_logits_finish_one_sequence_and_leave_others_identical(model):
    def run(poison):
        eng = Engine(model, num_blocks=64, block_size=4, seed=3)
        a = eng.add([3, 4, 5], temperature=0.0)
        b = eng.add([6, 7, 8, 9], temperature=0.0)
        eng.generate([a, b], max_new_tokens=2)
        if poison:
            eng._seqs[a].logits = torch.full_like(eng._seqs[a].logits, float("nan"))
        eng.generate([a, b], max_new_tokens=6)
        return eng, a, b
    clean, _, b0 = run(False)
    eng, a, b = run(True)
    assert eng.tokens(b) == clean.tokens(b0), "a NaN row changed another sequence"
    assert eng.tokens(a)[-1] == -1 and eng._seqs[a].finished
    assert eng.pool.seq_len(b) == clean.pool.seq_len(b0)


def test_greedy_extend_and_budget_without_tokenizer(model):
    eng = Engine(model, num_blocks=64, block_size=4)
    sid = eng.add([1, 2, 3], temperature=0.0)
    eng.extend(sid, [7, 8])
    eng.generate([sid], max_new_tokens=5)
    ids = [1, 2, 3, 7, 8] + eng.tokens(sid)[2:]
    assert eng.tokens(sid)[2:] == model.greedy([1, 2, 3, 7, 8], 5, eos=60)[:len(ids) - 5]
    assert torch.isnan(torch.tensor(eng.logprobs(sid)[:2])).all()
    with pytest.raises(ValueError, match="budget forcing needs a tokenizer"):
        eng.add([1, 2], max_thinking=5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.add([1, 200])
    with pytest.raises(ValueError, match="text input needs a tokenizer"):
        eng.add("hello")


def test_bf16_engine_runs(model):
    m = _random_model(torch.bfloat16, arch="qwen2")
    eng = Engine(m, num_blocks=64, block_size=8)
    sid = eng.add([1, 2, 3, 4, 5], temperature=0.0)
    kids = eng.fork(sid, 3)
    eng.generate(kids, max_new_tokens=6)
    assert len({tuple(eng.tokens(k)) for k in kids}) == 1
    assert eng.pool.k_cache(0).dtype == torch.bfloat16


@pytest.mark.parametrize("attention", ["tree", "torch"])
def test_decode_forward_compiles_fullgraph(model, attention):
    """The decode forward (RoPE, paged KV write, tree attention with a precomputed plan) traces with no graph break."""
    from tts_kernels.decode.attention import PagedDecode
    eng = Engine(model, num_blocks=64, block_size=4, attention=attention)
    root = eng.add([1, 2, 3, 4, 5, 6], temperature=0.0)
    kids = eng.fork(root, 3)
    pos = eng.pool.seq_lens(kids).long()
    slots = eng.pool.append(kids, 1)
    attn = PagedDecode(eng.pool, kids, slots, model.scale, attention)
    toks = torch.tensor([7, 8, 9])
    ref = model.forward(toks, pos, attn)
    fn = torch.compile(lambda x, p: model.forward(x, p, attn), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(toks, pos), ref)


@pytest.mark.parametrize("attention", ["tree", "torch"])
def test_feed_matches_fresh_prefill_and_counts(model, attention):
    eng = Engine(model, num_blocks=128, block_size=4, attention=attention, track_kv=True)
    root = eng.add(list(range(1, 14)), temperature=0.0)     # 13 tokens: 3 full blocks shared by the forks
    kids = eng.fork(root, 3)
    conts = [[5, 6, 7, 8, 9], [11], [12, 13, 14]]
    eng.feed(kids, conts)
    for k, c in zip(kids, conts):
        logits, fresh = model.prefill(torch.tensor(list(range(1, 14)) + c), last_only=True)
        torch.testing.assert_close(eng.next_logits(k), logits[-1], atol=1e-4, rtol=1e-4)
        for (kk, vv), (fk, fv) in zip(_pool_kv(eng, k), fresh):
            torch.testing.assert_close(kk, fk, atol=1e-4, rtol=1e-4)
        assert eng.tokens(k) == c and all(x != x for x in eng.logprobs(k))
    assert eng.stats["tokens_fed"] == 9 and eng.stats["forwards"] == 5
    # per-sequence attention reads every row's whole context; the tree plan reads shared blocks once
    assert eng.stats["kv_tokens_noshare"] == 3 * 14 + 2 * 15 + 2 * 16 + 17 + 18
    if attention == "tree":
        assert eng.stats["kv_tokens_read"] < eng.stats["kv_tokens_noshare"]
    else:
        assert eng.stats["kv_tokens_read"] == eng.stats["kv_tokens_noshare"]


def test_feed_out_of_blocks_and_bad_input_change_nothing(model):
    eng = Engine(model, num_blocks=6, block_size=4)
    a, b = eng.add([1, 2, 3], temperature=0.0), eng.add([4, 5], temperature=0.0)
    before = (eng.pool.num_free_blocks, eng.pool.seq_len(a), eng.next_logits(a).clone())
    with pytest.raises(tk.OutOfBlocksError, match="free KV blocks"):
        eng.feed([a, b], [[7] * 10, [8] * 10])        # needs 3 + 2 blocks, 4 are free
    with pytest.raises(ValueError, match="same length"):
        eng.feed([a, b], [[7]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.feed([a], [[1000]])
    with pytest.raises(ValueError, match="more than once"):
        eng.feed([a, a], [[1], [2]])
    assert (eng.pool.num_free_blocks, eng.pool.seq_len(a)) == before[:2] and eng.tokens(a) == []
    assert torch.equal(eng.next_logits(a), before[2])


def test_set_params_changes_sampling(model):
    eng = Engine(model, num_blocks=64, block_size=4, seed=5)
    sid = eng.add([3, 4, 5], temperature=1.0)
    eng.set_params(sid, temperature=0.0)
    eng.generate([sid], max_new_tokens=6)
    assert eng.tokens(sid) == model.greedy([3, 4, 5], 6, eos=60)[:len(eng.tokens(sid))]
    with pytest.raises(ValueError, match="unknown sampling parameter"):
        eng.set_params(sid, temprature=0.5)


def test_add_many_equals_sequential_adds(model):
    """One packed prefill of several prompts = one add() each (logits, KV, greedy tokens); all or nothing."""
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16]]
    one = Engine(model, num_blocks=64, block_size=4)
    many = Engine(model, num_blocks=64, block_size=4)
    a = [one.add(p, temperature=0.0) for p in prompts]
    b = many.add_many(prompts, temperature=0.0)
    assert a == b
    for sa, sb, p in zip(a, b, prompts):
        torch.testing.assert_close(many.next_logits(sb), one.next_logits(sa), atol=1e-5, rtol=1e-5)
        for (k1, v1), (k2, v2) in zip(_pool_kv(one, sa), _pool_kv(many, sb)):
            torch.testing.assert_close(k2, k1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v2, v1, atol=1e-5, rtol=1e-5)
        assert many.prompt_tokens(sb) == p
    one.generate(max_new_tokens=5)
    many.generate(max_new_tokens=5)
    assert [many.tokens(s) for s in b] == [one.tokens(s) for s in a]
    small = Engine(model, num_blocks=4, block_size=4)
    with pytest.raises(tk.OutOfBlocksError):
        small.add_many(prompts)                     # 3 + 1 + 2 blocks > 4
    assert small.live == [] and small.pool.num_free_blocks == 4
    with pytest.raises(ValueError, match="seeds must have one entry per prompt"):
        small.add_many(prompts[:2], seeds=[1])
    assert small.add_many([]) == []


def test_generate_per_sequence_limits(model):
    eng = Engine(model, num_blocks=64, block_size=4, seed=9)
    a, b, c = (eng.add([3, 4, 5], temperature=1.0) for _ in range(3))
    out = eng.generate([a, b, c], max_new_tokens=[2, 0, 5])
    assert [len(out[a]), len(out[b])] == [2, 0] and 1 <= len(out[c]) <= 5
    assert len(out[c]) == 5 or eng.finished(c)
    with pytest.raises(ValueError, match="limits for 3 sequences"):
        eng.generate([a, b, c], max_new_tokens=[1, 2])


class _Tok:
    """A stand-in tokenizer: one id per character, "</think>" a token only when ``think`` is set."""

    eos_token_ids = ()

    def __init__(self, think=True):
        self.think = think

    def token_to_id(self, t):
        return 1 if self.think and t == "</think>" else None

    def encode(self, text):
        return [ord(ch) % 50 + 1 for ch in text]

    def decode(self, ids):
        return ""


def test_model_family_record(model):
    from dataclasses import replace

    from tts_kernels.decode import FAMILIES, FAMILY_BUDGET_STRINGS, family_of
    from tts_kernels.decode.checkpoint import SUPPORTED_ARCHS
    assert SUPPORTED_ARCHS == {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
    assert FAMILY_BUDGET_STRINGS["qwen2"] is FAMILIES["qwen2"].budget_strings
    # the embedded toy model is decided in one place: a small vocabulary whose tokenizer has "</think>"
    assert Engine(model, _Tok(), num_blocks=8).family is FAMILIES["embedded"]
    eng = Engine(model, _Tok(think=False), num_blocks=8)
    assert eng.family is FAMILIES["llama"] and eng.forcing.end_think_ids == tuple(_Tok().encode("</think>"))
    big = replace(model.cfg, vocab_size=50_000)
    assert family_of(big, _Tok()).name == "llama" and family_of(replace(big, arch="qwen2")).templates.name == \
        "s1-instruct"
    # an architecture without a family is a clear ValueError naming it and the known ones (not a KeyError)
    with pytest.raises(ValueError, match=r"no model family for architecture 'mistral'.*llama.*qwen2"):
        family_of(replace(big, arch="mistral"), _Tok())
    with pytest.raises(ValueError, match="'mistral'"):
        Engine(_random_model(arch="mistral"), _Tok(think=False), num_blocks=8)


def test_a_new_family_is_one_record(monkeypatch):
    from dataclasses import replace

    from tts_kernels.decode import FAMILIES, BudgetStrings, ModelConfig, ModelFamily, family_of
    fam = ModelFamily("mistral", "llama", ("MistralForCausalLM",), BudgetStrings("</think>", "Wait", "Answer:"),
                      FAMILIES["llama"].templates)
    monkeypatch.setitem(FAMILIES, "mistral", fam)
    cfg = ModelConfig.from_dict(dict(architectures=["MistralForCausalLM"], vocab_size=32_000, hidden_size=32,
                                     intermediate_size=48, num_hidden_layers=1, num_attention_heads=4))
    assert (cfg.arch, cfg.family) == ("llama", "mistral") and family_of(cfg, _Tok()) is fam
    assert family_of(replace(cfg, family=""), _Tok()) is FAMILIES["llama"]
