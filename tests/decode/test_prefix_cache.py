"""Engine prefix cache: same results as without it, hit counts, edge cases, ref counts, eviction, errors.

Most tests use a random-weight model (block size 4, so that prompts span a few blocks);
the on/off equality test also runs the embedded policy on text prompts.
"""
import pytest
import torch

import tts_kernels as tk
from tts_kernels.decode import Engine, load
from tts_kernels.decode.prefix_cache import block_keys

from helpers.models import random_model

BS = 4
P = list(range(1, 14))          # a 13-token shared prefix: 3 full blocks and one token


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return random_model()


def _engines(model, num_blocks=64, **kw):
    return (Engine(model, num_blocks=num_blocks, block_size=BS, prefix_cache=False, **kw),
            Engine(model, num_blocks=num_blocks, block_size=BS, **kw))


def _assert_same_logits(a, sa, b, sb, tol=1e-5):
    for x, y in zip(sa, sb):
        torch.testing.assert_close(b.next_logits(y), a.next_logits(x), atol=tol, rtol=tol)


def _pool_state(pool):
    return (sorted(pool._free), list(pool._ref), {s: (pool.block_ids(s), pool.seq_len(s)) for s in pool.sequences},
            [c.clone() for c in pool._k + pool._v])


def test_on_off_equal_logits_and_greedy_on_the_embedded_model():
    model, tok = load()
    shared = "49+9-3-6=?<think>49+9=58\n\n58-3=55\n\n"
    prompts = [shared + "55-6=", shared + "55-6=49\n\n</think>", shared, "12+3=?<think>"]
    engs = [Engine(model, tok, num_blocks=128, block_size=BS, prefix_cache=on) for on in (False, True)]
    sids = [e.add_many(prompts, temperature=0.0) for e in engs]
    sids = [s + [e.add(shared + "55-6=", temperature=0.0)] for e, s in zip(engs, sids)]   # a hit across calls
    _assert_same_logits(engs[0], sids[0], engs[1], sids[1], tol=1e-4)
    assert engs[1].stats["prefix_hit_tokens"] > 0 and engs[0].stats["prefix_hit_tokens"] == 0
    assert sum(engs[1].stats[k] for k in ("prefix_hit_tokens", "prefill_tokens")) == engs[0].stats["prefill_tokens"]
    for e in engs:
        e.generate(max_new_tokens=12)
    assert [engs[1].tokens(s) for s in sids[1]] == [engs[0].tokens(s) for s in sids[0]]
    assert all(engs[0].tokens(s) for s in sids[0])


def test_hit_counts_within_one_add_many_and_across_calls(model):
    off, on = _engines(model)
    rows = [P + [20, 21], P + [22], P[:8], P[:12], P + [20, 21], [30, 31, 32, 33, 34]]
    a, b = off.add_many(rows, temperature=0.0), on.add_many(rows, temperature=0.0)
    _assert_same_logits(off, a, on, b)
    # row 0 computes blocks 0-2; rows 1 and 4 share them (12 tokens each); rows 2 and 3 are whole
    # prompts of blocks that row 0 is computing, so they run their last block again (4 and 8 hits)
    assert on.stats["prefix_hit_tokens"] == 12 + 4 + 8 + 12
    assert on.stats["prefill_tokens"] == sum(map(len, rows)) - 36
    assert on.pool.block_ids(b[1])[:3] == on.pool.block_ids(b[0])[:3] == on.pool.block_ids(b[4])[:3]
    # across calls: every full block is cached; whole prompts (rows 2, 3) run their last token only
    c = on.add_many(rows, temperature=0.0)
    _assert_same_logits(off, a, on, c)
    assert on.stats["prefix_hit_tokens"] == 36 + 12 + 12 + 7 + 11 + 12 + 4
    before = on.stats["prefix_hit_tokens"]
    d = on.add(P + [40], temperature=0.0)
    assert on.stats["prefix_hit_tokens"] == before + 12
    ref = off.add(P + [40], temperature=0.0)
    _assert_same_logits(off, [ref], on, [d])
    on.generate(max_new_tokens=5)
    off.generate(max_new_tokens=5)
    assert [on.tokens(s) for s in b] == [on.tokens(s) for s in c] == [off.tokens(s) for s in a]
    assert on.tokens(d) == off.tokens(ref)


@pytest.mark.parametrize("n", [3, 4, 8, 9, 12])
def test_block_boundaries_and_whole_prompt_cached(model, n):
    off, on = _engines(model)
    ids = P[:n]
    first, again = on.add(ids, temperature=0.0), on.add(ids, temperature=0.0)
    hits = on.stats["prefix_hit_tokens"]
    assert hits == (n - 1 if n % BS == 0 else n // BS * BS)
    blocks1, blocks2 = on.pool.block_ids(first), on.pool.block_ids(again)
    shared = n // BS - (n % BS == 0)                      # a whole cached prompt copies its last block
    assert blocks1[:shared] == blocks2[:shared] and set(blocks1[shared:]).isdisjoint(blocks2[shared:])
    ref = off.add(ids, temperature=0.0)
    _assert_same_logits(off, [ref, ref], on, [first, again])
    slots = [on.pool.slot_mapping(s) for s in (first, again)]
    for layer in range(model.cfg.num_layers):
        torch.testing.assert_close(on.pool.k_cache(layer).flatten(0, 1)[slots[1]],
                                   on.pool.k_cache(layer).flatten(0, 1)[slots[0]], atol=1e-5, rtol=1e-5)


def test_free_and_clear_return_every_block(model):
    _, on = _engines(model)
    sids = on.add_many([P + [20], P + [21], P[:5]], temperature=0.8)
    kids = on.fork(sids[0], 3)
    on.generate(max_new_tokens=6)
    cached = len(on.prefix_cache)
    assert cached == 3                                     # P's full blocks (P[:5]'s full block is P's first)
    assert on.pool.ref_count(on.pool.block_ids(sids[0])[0]) == 1 + 3 + 3      # cache, prompts, forks
    on.free(sids + kids)
    # cached blocks stay held (by the cache alone) but count as free: an allocation evicts them
    assert len(on.pool._free) == on.pool.num_blocks - cached and on.pool.num_free_blocks == on.pool.num_blocks
    on.clear_prefix_cache()
    assert len(on.prefix_cache) == 0 and len(on.pool._free) == on.pool.num_blocks and not any(on.pool._ref)
    on.clear_prefix_cache()                                # idempotent
    assert Engine(model, num_blocks=8, block_size=BS, prefix_cache=False).prefix_cache is None


def test_eviction_under_a_small_pool_is_lru(model):
    off, on = _engines(model, num_blocks=8)
    A, B = [5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41, 42, 43, 44, 45, 46, 47, 48]   # 2 full blocks + 1 token
    for ids in (A, B):
        on.free(on.add(ids))
    assert len(on.prefix_cache) == 4 and len(on.pool._free) == 4
    on.free(on.add(A))                                     # A is the most recently used now
    assert on.stats["prefix_hit_tokens"] == 8
    big = on.add(list(range(1, 25)), temperature=0.0)      # 6 blocks: evicts B's two blocks (not A's)
    assert len(on.pool._free) == 0 and on.pool.num_free_blocks == 2
    kept = on.prefix_cache._entries
    assert all(k in kept for k in block_keys(A, BS)) and not any(k in kept for k in block_keys(B, BS))
    ref = off.add(list(range(1, 25)), temperature=0.0)
    _assert_same_logits(off, [ref], on, [big])
    on.free(big)
    off.free(ref)
    hits = on.stats["prefix_hit_tokens"]
    b = on.add(B, temperature=0.0)
    assert on.stats["prefix_hit_tokens"] == hits           # B was evicted
    _assert_same_logits(off, [off.add(B, temperature=0.0)], on, [b])


def test_out_of_blocks_leaves_the_pool_and_cache_unchanged(model):
    _, on = _engines(model, num_blocks=8)
    live = on.add(P + [20], temperature=0.0)               # 4 blocks, 3 cached and held by `live`
    on.free(on.add([50, 51, 52, 53, 54]))                  # one more cached block, held by the cache only
    state, entries = _pool_state(on.pool), dict(on.prefix_cache._entries)
    with pytest.raises(tk.OutOfBlocksError, match="out of blocks"):
        on.add_many([P + [21] * 8, [1] * 9])               # 3 + 3 fresh blocks, 4 free (evicting 1)
    with pytest.raises(tk.OutOfBlocksError):
        on.extend_many([live], [[7] * 20])
    assert _pool_state(on.pool)[:3] == state[:3] and dict(on.prefix_cache._entries) == entries
    assert all(torch.equal(x, y) for x, y in zip(on.pool._k + on.pool._v, state[3]))
    assert on.live == [live] and on.tokens(live) == []
    kid = on.add(P + [22], temperature=0.0)                # fits (3 shared + 1 fresh) and still works
    assert on.pool.block_ids(kid)[:3] == on.pool.block_ids(live)[:3]


def test_forks_of_cached_sequences(model):
    off, on = _engines(model)
    for e in (off, on):
        e.add(P, temperature=0.0)
    a, b = off.add(P + [30, 31], temperature=0.8, seed=3), on.add(P + [30, 31], temperature=0.8, seed=3)
    ka, kb = off.fork(a, 3), on.fork(b, 3)
    for e, s in ((off, ka), (on, kb)):
        e.generate(s, max_new_tokens=6)
        e.extend_many(s[:2], [[9, 10], [11]])
        e.generate(s, max_new_tokens=3)
    assert [on.tokens(s) for s in kb] == [off.tokens(s) for s in ka] and len(set(map(tuple, map(on.tokens, kb)))) > 1
    _assert_same_logits(off, ka, on, kb, tol=1e-4)
    on.free(on.live)
    on.clear_prefix_cache()
    assert len(on.pool._free) == on.pool.num_blocks and not any(on.pool._ref)


def test_extend_many_matches_fresh_prefill(model):
    _, eng = _engines(model, num_blocks=128, track_kv=True)
    root = eng.add(P, temperature=0.0)
    kids = eng.fork(root, 3)
    conts = [[5, 6, 7, 8, 9], [11], []]
    eng.extend_many(kids, conts)
    for k, c in zip(kids, conts):
        logits, fresh = model.prefill(torch.tensor(P + c), last_only=True)
        torch.testing.assert_close(eng.next_logits(k), logits[-1], atol=1e-4, rtol=1e-4)
        slots = eng.pool.slot_mapping(k)
        for i, (fk, fv) in enumerate(fresh):
            torch.testing.assert_close(eng.pool.k_cache(i).flatten(0, 1)[slots], fk, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(eng.pool.v_cache(i).flatten(0, 1)[slots], fv, atol=1e-4, rtol=1e-4)
        assert eng.tokens(k) == c and all(x != x for x in eng.logprobs(k))
    assert eng.stats["tokens_fed"] == 6 and eng.stats["forwards"] == 0     # a prefill, no decode steps


def test_errors_in_the_forward_change_nothing(model, monkeypatch):
    _, on = _engines(model)
    root = on.add(P, temperature=0.0)
    kid = on.fork(root, 1)[0]
    state, entries = _pool_state(on.pool)[:3], dict(on.prefix_cache._entries)

    def boom(*args, **kwargs):
        raise RuntimeError("device lost")
    monkeypatch.setattr(model, "forward", boom)
    with pytest.raises(RuntimeError, match="device lost"):
        on.extend_many([root, kid], [[1, 2, 3, 4, 5], [6]])
    with pytest.raises(RuntimeError, match="device lost"):
        on.add_many([P + [7], [8, 9, 10, 11, 12]])
    assert _pool_state(on.pool)[:3] == state and dict(on.prefix_cache._entries) == entries
    assert on.live == [root, kid] and on.tokens(root) == on.tokens(kid) == []


BAD = [
    ("empty prompt", lambda e: e.add([]), ValueError, "at least one token"),
    ("empty prompt in a batch", lambda e: e.add_many([P, []]), ValueError, "every prompt"),
    ("token outside the vocabulary", lambda e: e.add_many([P, [61]]), ValueError, "outside the vocabulary"),
    ("text without a tokenizer", lambda e: e.add("abc"), ValueError, "needs a tokenizer"),
    ("seeds per prompt", lambda e: e.add_many([P, P], seeds=[1]), ValueError, "one entry per prompt"),
    ("extend_many lengths", lambda e: e.extend_many([0], []), ValueError, "same length"),
    ("extend_many twice", lambda e: e.extend_many([0, 0], [[1], [2]]), ValueError, "more than once"),
    ("extend_many freed", lambda e: e.extend_many([12345], [[1]]), KeyError, "no live sequence"),
]


@pytest.mark.parametrize("desc,call,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_clear_errors_and_changes_nothing(model, desc, call, exc, match):
    _, on = _engines(model)
    on.add(P, temperature=0.0)
    state, entries = _pool_state(on.pool)[:3], dict(on.prefix_cache._entries)
    with pytest.raises(exc, match=match):
        call(on)
    assert _pool_state(on.pool)[:3] == state and dict(on.prefix_cache._entries) == entries
    assert on.live == [0]


def test_block_keys_are_a_chain():
    keys = block_keys(list(range(10)), 4)
    assert len(keys) == 2 and block_keys(list(range(8)) + [99], 4) == keys
    assert block_keys([9, 1, 2, 3, 4, 5, 6, 7], 4)[1] != keys[1]      # same tokens after another prefix


def test_dropped_engine_frees_its_pool_without_the_cycle_collector():
    """The pool holds its prefix cache weakly: no pool <-> cache cycle keeps the K/V caches alive
    after the engine is dropped (with the cycle collector off, as between its runs)."""
    import gc
    import weakref

    from tts_kernels.decode import Engine, load

    model, tok = load()
    enabled = gc.isenabled()
    gc.disable()
    try:
        eng = Engine(model, tok, num_blocks=64, prefix_cache=True)
        eng.add_many(["1+2=", "1+2=3"])
        assert eng.pool.reclaimer is eng.prefix_cache
        pool = weakref.ref(eng.pool)
        del eng
        assert pool() is None, "the KV pool outlived its engine (reference cycle)"
    finally:
        if enabled:
            gc.enable()
