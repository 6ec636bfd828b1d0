"""The Triton tree-attention kernels' work list, block-table fast paths and cost model.

Interpreter-sized shapes (TRITON_INTERPRET=1 on a CPU). The work-list tests
shrink the row tile (``stage1_config`` patched) so that a chunk of a few rows is
split over a first tile and several "rest" windows, at any chunk order and with
padding chunks and pairs.
"""
from __future__ import annotations

import math

import pytest
import torch

from helpers.backends import require_triton

from test_attention_kernels import (check_against_oracle, check_plan_covers, make_inputs, run_triton,
                                    simple_plan)

import tts_kernels as tk
from tts_kernels.attention.plan import TreeAttentionPlan


def _small_tiles(monkeypatch, block_r, block_n=16):
    from tts_kernels.attention import triton_kernel as tk_tri

    real = tk_tri.stage1_config

    def cfg(Hq, Hkv, D, dtype=torch.bfloat16, wide=False, arch=90, block_size=16):
        c = dict(real(Hq, Hkv, D, dtype, wide, arch, block_size))
        c["BLOCK_R"] = block_r
        c["BLOCK_M"] = max(16, block_r * c["GROUP_PAD"])
        c["BLOCK_N"] = block_n
        c["num_warps"] = 4
        return c

    monkeypatch.setattr(tk_tri, "stage1_config", cfg)


@pytest.mark.parametrize("pad_pairs", [0, 3])
@pytest.mark.parametrize("block_r", [1, 2, 3])
@pytest.mark.parametrize("kind", ["forest", "identical", "chain"])
def test_worklist_split_rows(monkeypatch, block_r, kind, pad_pairs):
    """Chunks with more rows than a tile: first tiles + rest windows cover every pair once."""
    require_triton()
    _small_tiles(monkeypatch, block_r)
    d, hq, hkv, bs = 16, 4, 2, 4
    q, k, v, bt, lens = make_inputs(kind, 9, bs, hq, hkv, d, torch.float32, seed=40 + block_r)
    plan = simple_plan(bt, lens, bs, max_chunk_blocks=2, pad_chunks=2, pad_pairs=pad_pairs)
    check_plan_covers(plan, lens)
    out, lse = run_triton(q, k, v, bt, lens, plan, 0.3)
    check_against_oracle(out, lse, q, k, v, bt, lens, 0.3)


def test_wide_tile_variant():
    """More query rows per chunk than 128: the 256-row tile variant (16-bit), rows split over items."""
    require_triton()
    d, hq, hkv, bs = 16, 8, 1, 8
    q, k, v, bt, lens = make_inputs("identical", 40, bs, hq, hkv, d, torch.float16, seed=9)
    plan = simple_plan(bt, lens, bs)
    from tts_kernels.attention.triton_kernel import tile_rows, wide_tiles

    assert wide_tiles(hq, hkv, d, torch.float16, tile_rows(plan))
    out, lse = run_triton(q, k, v, bt, lens, plan, 0.25)
    check_against_oracle(out, lse, q, k, v, bt, lens, 0.25)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_worklist_16bit_partials(monkeypatch, dtype):
    """16-bit inputs write 16-bit partials; a row merges several of them."""
    require_triton()
    _small_tiles(monkeypatch, 2)
    d, hq, hkv, bs = 32, 8, 2, 3
    q, k, v, bt, lens = make_inputs("forest", 8, bs, hq, hkv, d, dtype, seed=77)
    plan = simple_plan(bt, lens, bs, max_chunk_blocks=1)
    out, lse = run_triton(q, k, v, bt, lens, plan, 1.0 / math.sqrt(d))
    check_against_oracle(out, lse, q, k, v, bt, lens, 1.0 / math.sqrt(d))


@pytest.mark.parametrize("block_size,block_n", [(32, 16), (16, 16), (8, 32), (2, 16), (6, 16)])
def test_block_table_paths(monkeypatch, block_size, block_n):
    """One id per tile (BS a multiple of BLOCK_N), one id per block (BS < BLOCK_N), per token (BS not 2^k)."""
    require_triton()
    _small_tiles(monkeypatch, 4, block_n)
    d, hq, hkv = 16, 4, 1
    q, k, v, bt, lens = make_inputs("forest", 6, block_size, hq, hkv, d, torch.float32, seed=block_size,
                                    max_blocks_per_row=4)
    plan = simple_plan(bt, lens, block_size)
    out, lse = run_triton(q, k, v, bt, lens, plan, 0.25)
    check_against_oracle(out, lse, q, k, v, bt, lens, 0.25)


@pytest.mark.parametrize("num_sms", [1, 2, 1000])
def test_persistent_programs(monkeypatch, num_sms):
    """Grids of 4 programs, 8, and one per slot: the same results, a fresh counter per call. (The
    interpreter runs programs one after another, so the first takes every slot: programs sharing
    the list concurrently need a GPU, tests/gpu.)"""
    require_triton()
    from tts_kernels.attention import triton_kernel as tk_tri

    _small_tiles(monkeypatch, 2)
    monkeypatch.setattr(tk_tri, "_num_sms", lambda device: num_sms)
    d, hq, hkv, bs = 16, 4, 2, 4
    q, k, v, bt, lens = make_inputs("forest", 7, bs, hq, hkv, d, torch.float32, seed=11)
    plan = simple_plan(bt, lens, bs, max_chunk_blocks=1, pad_chunks=3, pad_pairs=2)
    out, lse = run_triton(q, k, v, bt, lens, plan, 0.3)
    check_against_oracle(out, lse, q, k, v, bt, lens, 0.3)
    out2, lse2 = run_triton(q, k, v, bt, lens, plan, 0.3)  # a fresh counter per call
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def test_wide_chunks_package_planner():
    """Plans with long chunks for widely shared segments (planner's wide_chunk_rows) run unchanged."""
    require_triton()

    d, hq, hkv, bs = 16, 4, 2, 2
    q, k, v, bt, lens = make_inputs("identical", 8, bs, hq, hkv, d, torch.float32, seed=5, max_blocks_per_row=6)
    plan = tk.plan_tree_attention(bt, lens, bs, chunk_size=2, wide_chunk_rows=2)
    narrow = tk.plan_tree_attention(bt, lens, bs, chunk_size=2)
    assert plan.num_chunks < narrow.num_chunks and plan.max_chunk_len > 2
    check_plan_covers(plan, lens)
    out, lse = run_triton(q, k, v, bt, lens, plan, 0.25)
    check_against_oracle(out, lse, q, k, v, bt, lens, 0.25)


# ---------------------------------------------------------------------------
# cost model on hand-computed plans
# ---------------------------------------------------------------------------
def _plan(chunks, n_rows, block_size=16, pad_chunks=0, pad_pairs=0):
    """chunks: list of (start, length, rows)."""
    chunk_row, chunk_start, chunk_len, q_ptr, q_rows = [], [], [], [0], []
    row_items = [[] for _ in range(n_rows)]
    for start, length, rows in chunks:
        chunk_row.append(rows[0])
        chunk_start.append(start)
        chunk_len.append(length)
        for r in rows:
            row_items[r].append((start, len(q_rows)))
            q_rows.append(r)
        q_ptr.append(len(q_rows))
    chunk_row += [0] * pad_chunks
    chunk_start += [0] * pad_chunks
    chunk_len += [0] * pad_chunks
    q_ptr += [len(q_rows)] * pad_chunks
    q_rows += [0] * pad_pairs
    rp, rps = [0], []
    for i in range(n_rows):
        rps += [p for _, p in sorted(row_items[i])]
        rp.append(len(rps))
    rps += [0] * pad_pairs
    t = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    return TreeAttentionPlan(block_size, n_rows, t(chunk_row), t(chunk_start), t(chunk_len), t(q_ptr), t(q_rows),
                             t(rp), t(rps), max(chunk_len, default=0), max(len(c[2]) for c in chunks))


def test_cost_model_best_of_n():
    """N = 256 rows over an 8k shared prefix (2 chunks of 4096) + 64 own tokens each; 32/8 heads, D 128, bf16."""
    from tts_kernels.attention.triton_kernel import stage1_config, stage1_cost

    N, Hq, Hkv, D = 256, 32, 8, 128
    rows = list(range(N))
    chunks = [(0, 4096, rows), (4096, 4096, rows)] + [(8192, 64, [i]) for i in range(N)]
    plan = _plan(chunks, N)
    assert stage1_config(Hq, Hkv, D, torch.bfloat16)["BLOCK_R"] == 32  # 128 query rows = 32 rows x 4 heads
    cost = stage1_cost(plan, Hq, Hkv, D, torch.bfloat16)
    assert cost["block_r"] == 64  # 256 rows per chunk: the 256-query-row variant, 64 rows x 4 heads
    wide, narrow = cost["launches"]
    C, P = 2 + N, 2 * N + N
    # the shared chunks: 4 row tiles each, on one 256-row CTA per SM; 64 items leave 68 of the 132
    # programs without work (4096-token chunks: the planner's parallelism cuts them shorter)
    assert (wide["min_rows"], wide["max_rows"]) == (5, 0)
    assert wide["items"] == (C + (P - 1) // 64) * Hkv == (258 + 11) * 8
    assert wide["items_live"] == 2 * 4 * Hkv and (wide["ctas_launched"], wide["ctas_live"]) == (132, 64)
    # the own chunks (1 row): the narrow launch, 16-row tiles (4 rows x 4 heads), 3 CTAs per SM, one item each
    assert (narrow["block_r"], narrow["min_rows"], narrow["max_rows"]) == (4, 1, 4)
    assert narrow["items"] == C * Hkv and narrow["items_live"] == N * Hkv
    assert (narrow["ctas_launched"], narrow["ctas_live"]) == (396, 396)
    assert cost["items_live"] == (2 * 4 + N) * Hkv and cost["ctas_launched"] == 132 + 396
    tok = Hkv * D * 2 * 2  # K and V bytes per token
    assert cost["kv_unique_bytes"] == (8192 + N * 64) * tok
    assert cost["kv_sm_bytes"] == (4 * 8192 + N * 64) * tok
    assert cost["max_passes"] == 4
    assert cost["partial_bytes"] == 2 * (3 * N) * Hq * (D * 2 + 4)
    assert cost["partial_bytes"] / cost["kv_unique_bytes"] < 0.13


def test_cost_model_padding_and_misaligned_rest():
    """Padding chunks/pairs are launched but not live; a rest window that straddles two tiles counts twice."""
    from tts_kernels.attention.triton_kernel import stage1_cost

    Hq, Hkv, D = 4, 1, 16  # fp32: BLOCK_R = 32 // 4 = 8
    chunks = [(0, 16, [0, 1, 2]), (16, 32, list(range(20)))]  # pairs [0, 3) and [3, 23)
    plan = _plan(chunks, 20, pad_chunks=3, pad_pairs=9)
    cost = stage1_cost(plan, Hq, Hkv, D, torch.float32)
    assert cost["block_r"] == 8
    wide, narrow = cost["launches"]
    # chunk 1 (20 rows, the wide launch): first tile [3, 11), rest [11, 23) meets windows [8,16), [16,24):
    # 3 passes; chunk 0 (3 rows) is the narrow launch's (4 rows x 4 heads), one item
    assert wide["items"] == (5 + 31 // 8) * Hkv and wide["items_live"] == 3
    assert narrow["items"] == 5 * Hkv and narrow["items_live"] == 1
    # lists shorter than the GPU: one CTA per slot (8 + 5), most of them find no live item
    assert cost["ctas_launched"] == 8 + 5 and cost["ctas_live"] == 3 + 1
    assert stage1_cost(plan, Hq, Hkv, D, torch.float32, num_sms=1)["ctas_launched"] == 4 + 4  # 4 CTAs/SM each
    assert cost["max_passes"] == 3
    assert cost["kv_sm_bytes"] == (16 + 3 * 32) * Hkv * D * 4 * 2
    assert cost["partial_bytes"] == 2 * 23 * Hq * (D * 4 + 4)


def _groups_forest(groups, bs, prefix_blocks=2, own_blocks=3):
    """Rows in groups: all share block 0, a group shares ``prefix_blocks`` more, each row owns
    ``own_blocks`` (its last one partly used): chunks of every group's size and of one row."""
    rows, nb = [], 1
    for g in groups:
        pre = list(range(nb, nb + prefix_blocks))
        nb += prefix_blocks
        for _ in range(g):
            rows.append([0] + pre + list(range(nb, nb + own_blocks)))
            nb += own_blocks
    bt = torch.tensor(rows, dtype=torch.int32)
    return bt, torch.full((len(rows),), bt.shape[1] * bs - 1, dtype=torch.int32), nb


@pytest.mark.parametrize("hq,hkv,dtype,groups", [
    (4, 1, torch.float32, [9, 5, 4, 3, 1]),      # narrow <= 4 rows, wide 8-row tiles: 9 has a rest window
    (16, 1, torch.float32, [3, 2, 1]),           # a group of 16: narrow is one row
    (4, 4, torch.bfloat16, [17, 16, 15, 1]),     # no GQA: narrow <= 16 rows
])
@pytest.mark.parametrize("how", ["plan", "padded", "balanced"])
def test_two_launches_at_the_row_boundary(hq, hkv, dtype, groups, how):
    """Chunks of exactly the narrow tile's rows and one more, rest windows, padding chunks and pairs, a
    load-balanced plan: every (chunk, row tile) is done once across the wide and the narrow launch."""
    require_triton()
    from tts_kernels.attention import triton_kernel as tak

    bs, d = 4, 16
    bt, sl, nb = _groups_forest(groups, bs)
    gen = torch.Generator().manual_seed(hq * 100 + len(groups))
    q = torch.randn(bt.shape[0], hq, d, generator=gen).to(dtype)
    k = torch.randn(nb, bs, hkv, d, generator=gen).to(dtype)
    v = torch.randn(nb, bs, hkv, d, generator=gen).to(dtype)
    kw = dict(padded=dict(capacity=(400, 400)), balanced=dict(parallelism=tk.Parallelism(8, hkv, 3, 4, 5)))
    plan = tk.plan_tree_attention(bt, sl, bs, chunk_size=8, **kw.get(how, {}))
    launches = tak.plan_launches(plan, hq, hkv, d, dtype, tak._arch(q.device))
    nr = launches[-1].max_rows
    rows = set((plan.chunk_q_ptr[1:] - plan.chunk_q_ptr[:-1]).tolist())
    assert len(launches) == 2 and {nr, nr + 1} <= rows, (nr, rows)
    out, lse = run_triton(q, k, v, bt, sl, plan, 0.3)
    check_against_oracle(out, lse, q, k, v, bt, sl, 0.3)


def test_partials_indexed_in_int32_are_bounded(monkeypatch):
    """The kernel may index the partial outputs' (pair, head) rows in int32: a plan whose pairs x query
    heads reach the bound (2**31; lowered here) is refused before anything is allocated or launched, one
    just below it runs."""
    require_triton()
    from tts_kernels.attention import triton_kernel as tk_tri

    assert tk_tri._MAX_PAIR_HEADS == 2 ** 31
    d, hq, hkv, bs = 16, 4, 2, 4
    q, k, v, bt, lens = make_inputs("forest", 5, bs, hq, hkv, d, torch.float32, seed=3)
    plan = simple_plan(bt, lens, bs)
    monkeypatch.setattr(tk_tri, "_MAX_PAIR_HEADS", plan.num_pairs * hq)
    def no_alloc(*args, **kwargs):
        raise AssertionError("allocated before the bound check")

    for name in ("empty", "zeros", "empty_like", "zeros_like"):  # nothing may be allocated before the check
        monkeypatch.setattr(torch, name, no_alloc)
    with pytest.raises(ValueError, match=r"plan.num_pairs \* Hq"):
        tk_tri.tree_attention_triton(q, k, v, bt, lens, plan, 0.3)
    monkeypatch.undo()
    monkeypatch.setattr(tk_tri, "_MAX_PAIR_HEADS", plan.num_pairs * hq + 1)
    out, lse = run_triton(q, k, v, bt, lens, plan, 0.3)
    check_against_oracle(out, lse, q, k, v, bt, lens, 0.3)


def _lazy_small_tiles(monkeypatch, lazy):
    """16-row query tiles (2 rows of a padded GQA group), 16-token KV tiles, LAZY_RESCALE forced."""
    from tts_kernels.attention import triton_kernel as tk_tri

    real = tk_tri.stage1_config

    def cfg(Hq, Hkv, D, dtype=torch.bfloat16, wide=False, arch=90, block_size=16):
        c = dict(real(Hq, Hkv, D, dtype, wide, arch, block_size))
        c.update(BLOCK_R=2, BLOCK_M=max(16, 2 * c["GROUP_PAD"]), BLOCK_N=16, num_warps=4, LAZY_RESCALE=lazy)
        return c

    monkeypatch.setattr(tk_tri, "stage1_config", cfg)
    return tk_tri


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_lazy_rescale(monkeypatch, dtype, lazy):
    """LAZY_RESCALE tiles move a row's reference max only when a KV tile's max exceeds it by more than
    2**RESCALE_LOG2 (the accumulator and sum are rescaled then, not every tile). Scores that grow along
    the rows (later blocks' keys scaled up), sometimes past the threshold and sometimes not, against the
    oracle, with both settings."""
    require_triton()
    tk_tri = _lazy_small_tiles(monkeypatch, lazy)
    d, hq, hkv, bs, scale = 16, 4, 2, 16, 0.25
    q, k, v, bt, lens = make_inputs("chain", 6, bs, hq, hkv, d, dtype, seed=12, max_blocks_per_row=8)
    k = (k.float() * (1 + 0.6 * torch.arange(k.shape[0]).view(-1, 1, 1, 1))).to(dtype)  # later blocks: larger scores
    q = (q.float() * 4).to(dtype)
    # some row's scores rise by more than 2**8 (log2 units) from its first block to a later one
    s = torch.einsum("nhd,bshd->nhbs", q.float()[:, ::hq // hkv], k.float()) * scale * 1.4426950408889634
    blk = s.amax(3)  # [N, Hkv, blocks]: each block's max per row and KV head
    assert ((blk - blk[..., :1]).amax() > tk_tri.RESCALE_LOG2.value)
    plan = simple_plan(bt, lens, bs, max_chunk_blocks=3)
    out, lse = run_triton(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_lazy_rescale_overflows_without_it(monkeypatch, dtype):
    """Within one chunk, one head's scores grow by far more than 2**128 (log2 units) while the other's
    fall: a lazy tile that stopped rescaling (a threshold too high, or the flag reduced over the rows with
    a min instead of a max) would overflow exp2 and give non-finite outputs; the kernel matches the
    oracle."""
    require_triton()
    _lazy_small_tiles(monkeypatch, True)
    d, hq, hkv, bs, scale = 16, 4, 2, 16, 1.0
    nb = 6
    bt = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 6, 7, 8]], dtype=torch.int32)  # 3 shared blocks
    lens = torch.tensor([nb * bs, nb * bs - 5], dtype=torch.int32)
    pos = torch.arange(9 * bs, dtype=torch.float32).view(9, bs)
    k = torch.zeros(9, bs, hkv, d)
    k[..., 0] = 0.5 * pos[..., None]                                   # grows along the blocks
    k[..., 1:] = 0.1 * torch.randn(9, bs, hkv, d - 1, generator=torch.Generator().manual_seed(4))
    v = torch.randn(9, bs, hkv, d, generator=torch.Generator().manual_seed(5))
    q = torch.zeros(2, hq, d)
    q[:, 0::2, 0] = 8.0     # even heads: scores rise by 8 x 0.5 x log2(e) = 5.8 per token (log2 units)
    q[:, 1::2, 0] = -8.0    # odd heads: they fall (their tiles never ask for a rescale)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    plan = simple_plan(bt, lens, bs, max_chunk_blocks=nb)
    # a chunk of several 16-token tiles: its last tile's max is > 128 (log2) above its first tile's
    assert int(plan.chunk_len.max()) >= 3 * bs and 5.77 * (int(plan.chunk_len.max()) - bs) > 128
    out, lse = run_triton(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)
