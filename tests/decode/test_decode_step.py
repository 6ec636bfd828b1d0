"""The engine's decode step split in host preparation + one device function (tts_kernels/decode/step.py).

* compiled engines (``torch.compile(fullgraph=True, dynamic=False)``, one graph per bucket) give the
  eager engine's tokens over a multi-step run with forks, frees, budget forcing on some rows and
  batches that cross buckets; ``torch._dynamo.explain`` finds no graph break in the step;
* padding rows are inert (same tokens, no KV written outside the sequences' slots);
* the packed host buffer round-trips (seeds, float parameters, plan);
* prefill through flash-attn's ``flash_attn_varlen_func`` (a plain-torch stand-in injected as the
  ``flash_attn`` module: the real package cannot be installed here) equals SDPA;
* ``cuda_graphs=True``: ValueError without CUDA; the capture test runs only on a CUDA machine.

Compile time on this 2-core CPU dominates: the aot_eager backend checks tracing (fullgraph) and
equality across many buckets; one small inductor run checks real code generation. Set
TTS_KERNELS_SLOW_TESTS=1 for the longer inductor run.
"""
import os
import sys
import types

import pytest
import torch

from tts_kernels.decode import Engine, load
from tts_kernels.decode import model as model_mod
from tts_kernels.decode import step as step_mod

from helpers.models import random_model as _random_model

SLOW = os.environ.get("TTS_KERNELS_SLOW_TESTS", "0") == "1"
PROMPTS = ["49+9-3-6=?<think>", "7*8-5=?<think>"]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load()


def _run(model, tok, padded=False, **kw):
    """Forks, frees, budget forcing on some rows only (a forced Wait, a forced end), and step batches
    of 2, 6, 4 and 2 rows (buckets 2, 8, 4, 2 when compiled); returns everything a caller can observe."""
    eng = Engine(model, tok, num_blocks=256, block_size=8, seed=11, **kw)
    if padded:
        eng._bucketed = True           # pad to buckets without compiling
    a = eng.add(PROMPTS[0], temperature=0.9, min_thinking=20, max_thinking=28, min_waits=1)
    b = eng.add(PROMPTS[1], temperature=1.0, top_k=8, top_p=0.95)          # no budget
    eng.generate([a, b], max_new_tokens=2)
    kids = eng.fork(a, 3) + eng.fork(b, 2)
    eng.set_params(kids[-1], temperature=0.0)
    eng.generate(kids + [a], max_new_tokens=14)
    eng.free(kids[:2] + kids[3:4])
    eng.generate(max_new_tokens=16)                                           # every live sequence
    eng.feed([b], [tok.encode("12")])
    eng.generate([b, kids[2]], max_new_tokens=3)
    return eng, {sid: (eng.tokens(sid), eng.logprobs(sid), eng.thinking_tokens(sid), eng.waits_used(sid),
                       eng.is_thinking(sid), eng.finished(sid)) for sid in eng.live}


def _same(got, want, exact_logprobs=True):
    assert got.keys() == want.keys()
    for sid in want:
        g, w = got[sid], want[sid]
        assert g[0] == w[0], f"sequence {sid}: tokens differ"
        assert g[2:] == w[2:], f"sequence {sid}: budget state differs"
        lg, lw = torch.tensor(g[1]), torch.tensor(w[1])
        if exact_logprobs:
            assert torch.equal(lg.isnan(), lw.isnan()) and torch.equal(lg.nan_to_num(), lw.nan_to_num())
        else:
            torch.testing.assert_close(lg, lw, atol=1e-4, rtol=1e-4, equal_nan=True)


@pytest.fixture(scope="module")
def eager_run(tiny):
    return _run(*tiny)


def test_eager_run_exercises_budget_forcing(eager_run, tiny):
    eng, res = eager_run
    tok = tiny[1]
    texts = {sid: eng.text(sid) for sid in res}
    assert any("</think>" in t and "Final Answer:" in t for t in texts.values()), texts   # forced end
    assert any(r[3] >= 1 for r in res.values())                                            # a forced Wait
    assert any(eng._seqs[s].budget[1] < 0 for s in res)                                    # rows without a budget
    assert tok is not None and len(res) >= 3


def test_compiled_engine_matches_eager_aot(eager_run, tiny):
    """fullgraph=True: a graph break would raise. Buckets of 2, 4 and 8 rows and several block widths.
    aot_eager runs the same ops as eager (oneDNN's packed projections included): bit-exact."""
    eng, res = _run(*tiny, compile="aot_eager")
    _same(res, eager_run[1])
    rows = {s.rows for s in eng._step_fns}
    assert rows == {2, 4, 8}, rows
    for sid in res:
        assert torch.equal(eng.next_logits(sid), eager_run[0].next_logits(sid))


def test_padded_eager_is_inert(eager_run, tiny):
    """The eager step on padded buckets gives the same tokens and writes no KV outside the sequences."""
    model, tok = tiny
    eng, res = _run(model, tok, padded=True)
    _same(res, eager_run[1])
    used = set()
    for sid in eng.live:
        used.update(eng.pool.slot_mapping(sid).tolist())
    ref = eager_run[0]
    for layer in range(model.cfg.num_layers):
        for cache, ref_cache in ((eng.pool.k_cache(layer), ref.pool.k_cache(layer)),
                                 (eng.pool.v_cache(layer), ref.pool.v_cache(layer))):
            flat, ref_flat = cache.flatten(0, 1), ref_cache.flatten(0, 1)
            idx = torch.tensor(sorted(used))
            torch.testing.assert_close(flat[idx], ref_flat[idx], atol=1e-5, rtol=1e-5)
            # freed blocks hold stale K/V in both engines; slots never handed out stay exactly zero
            never = (ref_flat == 0).flatten(1).all(1)
            assert torch.equal(flat[never], torch.zeros_like(flat[never]))


def _bucketed_inputs(model, tok):
    """An engine and the device step's inputs for 3 rows (a budgeted root and 2 forks) padded to their bucket."""
    eng = Engine(model, tok, num_blocks=64, block_size=4, seed=1)
    a = eng.add(PROMPTS[0], temperature=0.7, max_thinking=5)
    ids = [a] + eng.fork(a, 2)
    seqs = [eng._seqs[s] for s in ids]
    batch = eng._prepare(ids, seqs, bucketed=True)
    pad = batch.shape.rows - 3
    logits = torch.stack([s.logits for s in seqs] + [eng._pad_logits] * pad)
    budget = torch.stack([s.budget for s in seqs] + [eng._no_budget] * pad)
    return eng, batch, logits, budget


def test_step_has_no_graph_break(tiny):
    model, tok = tiny
    eng, batch, logits, budget = _bucketed_inputs(model, tok)
    fn = step_mod.make_step(model, eng._k_caches, eng._v_caches, shape=batch.shape, block_size=4,
                            attention="tree", forcing=eng.forcing, forced_ids=eng._forced_ids,
                            eos_mask=eng._eos_mask)
    ex = torch._dynamo.explain(fn)(batch.packed, logits, budget)
    assert ex.graph_break_count == 0 and ex.graph_count == 1, ex.break_reasons


def test_compiled_engine_matches_eager_inductor():
    """The default backend (inductor) on one bucket; ~10-20 s of C++ compilation on this CPU."""
    m = _random_model()
    out = {}
    for comp in (False, True):
        eng = Engine(m, num_blocks=64, block_size=4, seed=3, compile=comp)
        r = eng.add([1, 2, 3, 4, 5], temperature=1.0, top_p=0.9)
        kids = eng.fork(r, 2)
        eng.generate(kids + [r], max_new_tokens=3)     # 3 rows: bucket 4, block tables of 2 columns
        out[comp] = ([eng.tokens(k) for k in kids + [r]], [eng.logprobs(k) for k in kids + [r]])
        if comp:
            assert len(eng._step_fns) == 1
    assert out[True][0] == out[False][0]
    torch.testing.assert_close(torch.tensor(out[True][1]), torch.tensor(out[False][1]), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not SLOW, reason="slow (inductor compiles a graph per bucket, minutes on this CPU): "
                                     "set TTS_KERNELS_SLOW_TESTS=1")
def test_compiled_engine_matches_eager_inductor_full(eager_run, tiny):
    _, res = _run(*tiny, compile=True)
    _same(res, eager_run[1], exact_logprobs=False)


def test_prepare_step_round_trip(tiny):
    model, tok = tiny
    eng = Engine(model, tok, num_blocks=64, block_size=4)
    a = eng.add(PROMPTS[0], temperature=0.25, top_k=3, top_p=0.5, min_p=0.125, seed=-(2 ** 63))
    b = eng.add(PROMPTS[1], seed=2 ** 63 - 1)
    c = eng.fork(a, 1)[0]
    ids = [a, b, c]
    positions = [eng.pool.seq_len(s) for s in ids]
    slots = eng.pool.append(ids, 1, device="cpu").view(-1)
    params = [(0.25, 3, 0.5, 0.125, -(2 ** 63)), (1.0, 0, 1.0, 0.0, 2 ** 63 - 1), (0.25, 3, 0.5, 0.125, 12345)]
    batch = step_mod.prepare_step(eng.pool, ids, positions, slots, params, bucketed=True, tokens=[4, 5, 6])
    assert batch.shape.rows == 4 and batch.num_rows == 3 and batch.packed.shape == (batch.shape.size,)
    t = step_mod.unpack(batch.packed, batch.shape, 4)
    assert t.seed.tolist()[:3] == [-(2 ** 63), 2 ** 63 - 1, 12345]
    assert t.temperature.tolist() == [0.25, 1.0, 0.25, 0.0] and t.top_p.tolist() == [0.5, 1.0, 0.5, 1.0]
    assert t.min_p.tolist() == [0.125, 0.0, 0.125, 0.0] and t.top_k.tolist() == [3, 0, 3, 0]
    assert t.positions.tolist() == positions + [0] and t.tokens.tolist() == [4, 5, 6, 0]
    assert t.slots.tolist()[:3] == slots.tolist() and t.write_rows.tolist() == [0, 1, 2, 0]
    assert t.seq_lens.tolist() == [p + 1 for p in positions] + [1]
    want_bt = eng.pool.block_tables(ids)
    assert torch.equal(t.block_tables[:3, :want_bt.shape[1]], want_bt)
    assert t.block_tables[3, 0] == want_bt[0, 0]
    import tts_kernels as tk
    plan = tk.plan_tree_attention(t.block_tables, t.seq_lens, 4)
    assert t.plan.num_chunks >= plan.num_chunks and t.plan.max_rows_per_chunk == 4
    q = torch.randn(4, 4, 32)
    got = tk.tree_attention(q, eng.pool.k_cache(0), eng.pool.v_cache(0), t.block_tables, t.seq_lens, plan=t.plan)
    want = tk.tree_attention(q, eng.pool.k_cache(0), eng.pool.v_cache(0), t.block_tables, t.seq_lens, plan=plan)
    torch.testing.assert_close(got, want)


def test_cuda_graphs_needs_cuda(tiny):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the ValueError path does not apply")
    with pytest.raises(ValueError, match="cuda_graphs=True needs CUDA"):
        Engine(*tiny, cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA-graph capture); never run so far: "
                                                          "no GPU has been available to this project")
def test_cuda_graph_engine_matches_eager_on_gpu():
    model, tok = load(device="cuda")
    _, want = _run(model, tok, padded=True)       # eager on the same padded shapes (same GEMM kernels)
    eng, got = _run(model, tok, cuda_graphs=True)
    _same(got, want, exact_logprobs=False)
    assert all(isinstance(f, step_mod.CudaGraphStep) and f.graph is not None for f in eng._step_fns.values())


# -- prefill through flash-attn's varlen interface --------------------------------------------------

def _fake_flash_attn(calls):
    """A plain-torch flash_attn_varlen_func: packed q [Tq, Hq, D], k/v [Tk, Hkv, D], causal aligned
    to the bottom right (flash-attn >= 2.1), GQA by head groups."""
    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, **kw):
        calls.append((tuple(cu_seqlens_q.tolist()), tuple(cu_seqlens_k.tolist()), max_seqlen_q, max_seqlen_k))
        assert cu_seqlens_q.dtype == torch.int32 and causal
        g = q.shape[1] // k.shape[1]
        out = torch.empty_like(q)
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        for i in range(len(cq) - 1):
            qs, ks = q[cq[i]:cq[i + 1]].float(), k[ck[i]:ck[i + 1]].float().repeat_interleave(g, 1)
            vs = v[ck[i]:ck[i + 1]].float().repeat_interleave(g, 1)
            T, S = qs.shape[0], ks.shape[0]
            s = torch.einsum("thd,shd->hts", qs, ks) * softmax_scale
            allowed = torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T)
            s = s.masked_fill(~allowed, float("-inf"))
            out[cq[i]:cq[i + 1]] = torch.einsum("hts,shd->thd", s.softmax(-1), vs).to(q.dtype)
        return out
    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)


@pytest.mark.parametrize("heads", [(4, 2), (4, 4)])
def test_prefill_flash_attn_plumbing_equals_sdpa(monkeypatch, heads):
    from tts_kernels.decode import Model, ModelConfig
    cfg = ModelConfig(arch="qwen2", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=heads[0], num_kv_heads=heads[1], head_dim=8, qkv_bias=True,
                      tie_word_embeddings=True, eos_token_ids=(60,))
    g = torch.Generator().manual_seed(0)
    w = {k: torch.randn(s, generator=g) * 0.3 for k, s in cfg.expected_shapes().items()}
    model = Model(cfg, w)
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash_attn(calls))
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]

    def run(flash):
        model.flash_attn = flash
        eng = Engine(model, num_blocks=64, block_size=4, seed=2)
        one = eng.add(prompts[0], temperature=0.0)
        many = eng.add_many(prompts, temperature=0.0)
        eng.extend(one, [14, 15, 16])                        # a prefill after a cached prefix
        eng.generate(max_new_tokens=4)
        kv = [eng.pool.k_cache(i).clone() for i in range(cfg.num_layers)]
        return eng, [one] + many, kv

    try:
        ref, sids, ref_kv = run(False)
        assert calls == []
        got, sids2, got_kv = run(True)
    finally:
        model.flash_attn = None
    assert sids == sids2
    # one prefill, one packed prefill of three prompts (the first one's full block is in the prefix
    # cache: 3 of its 7 tokens run), one prefix prefill (3 new tokens after 7), per layer
    assert ((0, 7), (0, 7), 7, 7) in calls and ((0, 3, 5, 9), (0, 7, 9, 13), 4, 7) in calls
    assert ((0, 3), (0, 10), 3, 10) in calls and len(calls) == 3 * cfg.num_layers
    for sid in sids:
        assert got.tokens(sid) == ref.tokens(sid)
        torch.testing.assert_close(got.next_logits(sid), ref.next_logits(sid), atol=1e-5, rtol=1e-5)
    for a, b in zip(got_kv, ref_kv):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # auto selection: CPU float32 never uses flash-attn even when it imports
    calls.clear()
    Engine(model, num_blocks=16, block_size=4).add([1, 2, 3])
    assert calls == [] and model_mod.flash_attn_varlen() is not None


def test_eager_step_runs_no_host_sync_op(tiny):
    """Dispatch-level check of the device function: no op that reads a value on the host
    (item/_local_scalar_dense) or has a data-dependent shape (nonzero, masked_select, unique)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    model, tok = tiny
    eng, batch, logits, budget = _bucketed_inputs(model, tok)
    fn = eng._step_fn(batch.shape)
    seen = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with Record():
        host, nxt, rows = fn(batch.packed, logits, budget)
    bad = {f for f in seen if any(x in f for x in ("_local_scalar_dense", "nonzero", "masked_select", "unique",
                                                  "is_nonzero", "aten.equal", "allclose"))}
    assert not bad, bad
    assert "tts_kernels.sample" in seen and "tts_kernels.tree_attention" in seen
    assert host.shape == (2, 4) and nxt.shape == (4, model.cfg.vocab_size) and rows.shape == (4, 8)


def test_prepare_step_plans_balanced_chunks_for_the_gpu(tiny, monkeypatch):
    """Where tree_attention_parallelism describes a GPU (here: patched), the step's plan has the
    load-balanced chunks of that description, padded to the longest chunk it may hold; each chunk
    counts the programs of the launch its rows give it, padded or not; off CUDA (None) the step keeps the
    default chunks. The engine's steps and PagedDecode ask for it with the model's query heads."""
    import tts_kernels as tk
    import tts_kernels.attention as tka
    from tts_kernels.attention.planner import WIDE_CHUNK_MAX_FACTOR
    from tts_kernels.decode.attention import PagedDecode

    model, tok = tiny
    H = model.cfg.num_heads
    eng = Engine(model, tok, num_blocks=256, block_size=4)
    a = eng.add([3 + i % 25 for i in range(37)], seed=1)
    kids = eng.fork(a, 3)
    ids = [a] + kids
    positions = [eng.pool.seq_len(s) for s in ids]
    slots = eng.pool.append(ids, 1, device="cpu").view(-1)
    params = [(1.0, 0, 1.0, 0.0, 7)] * len(ids)
    seen = []

    def fake(num_rows, num_q_heads, k_cache, *, backend="auto"):
        seen.append((num_rows, num_q_heads))
        # one program for the shared chunks, many for the one-row chunks (the narrow launch)
        return tk.Parallelism(4, model.cfg.num_kv_heads, 1, 1, 1000)

    def step(attention, bucketed, **kw):
        b = step_mod.prepare_step(eng.pool, ids, positions, slots, params, chunk_size=8, attention=attention,
                                  bucketed=bucketed, **kw)
        return b, step_mod.unpack(b.packed, b.shape, 4)

    default, _ = step("tree", False, num_q_heads=H)
    monkeypatch.setattr(tka, "tree_attention_parallelism", fake)
    for attention, bucketed, longer in (("tree", False, True), ("tree", True, True),
                                        ("paged", False, False),   # shares nothing: 1000 programs, f = 1
                                        ("paged", True, False)):   # padded too: the chunks decide
        batch, t = step(attention, bucketed, num_q_heads=H)
        lens = t.plan.chunk_len[t.plan.chunk_len > 0]
        assert (int(lens.max()) > 8) == longer, (attention, bucketed)
        if attention == "tree" and not bucketed:
            assert t.plan.num_chunks < default.shape.chunks
        if bucketed:
            assert t.plan.max_chunk_len == 8 * WIDE_CHUNK_MAX_FACTOR
        q = torch.randn(t.seq_lens.shape[0], H, model.cfg.head_dim)
        got = tk.tree_attention(q, eng.pool.k_cache(0), eng.pool.v_cache(0), t.block_tables, t.seq_lens, plan=t.plan)
        want = tk.tree_attention(q, eng.pool.k_cache(0), eng.pool.v_cache(0), t.block_tables, t.seq_lens,
                                 backend="reference", plan=tk.plan_tree_attention(t.block_tables, t.seq_lens, 4))
        torch.testing.assert_close(got, want)
    assert seen == [(4, H)] * 4
    assert int(step_mod.unpack(default.packed, default.shape, 4).plan.chunk_len.max()) == 8
    # without num_q_heads nothing is asked: the default chunks
    _, t = step("tree", False)
    assert len(seen) == 4 and int(t.plan.chunk_len.max()) == 8
    # the engine's own steps and PagedDecode pass the model's query heads
    seen.clear()
    eng.step(ids)
    assert seen == [(4, H)]
    PagedDecode(eng.pool, ids, eng.pool.append(ids, 1).view(-1), model.scale, "tree", num_q_heads=H)
    assert seen == [(4, H), (4, H)]
