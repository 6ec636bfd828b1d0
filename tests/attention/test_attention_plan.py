"""The tree-attention planner: plan invariants, maximal sharing, fixed capacity, bad input."""
from __future__ import annotations

import random

import pytest
import torch

import tts_kernels as tk
from tts_kernels.attention.planner import (CHUNK_FACTORS, DEFAULT_CHUNK_SIZE, WIDE_CHUNK_MAX_FACTOR,
                                          balanced_chunk_factor, makespan_estimate)

from helpers.attention import random_forest

KINDS = ("forest", "singletons", "chain", "identical")


def _check_invariants(plan, bt, sl, bs, chunk_size):
    """Structural invariants every plan must satisfy (see plan.py)."""
    N = bt.shape[0]
    C, P = plan.num_chunks, plan.num_pairs
    for name in ("chunk_row", "chunk_start", "chunk_len", "chunk_q_ptr", "q_rows", "row_pair_ptr", "row_pairs"):
        t = getattr(plan, name)
        assert t.dtype == torch.int32 and t.dim() == 1, name
    assert plan.num_rows == N and plan.block_size == bs
    start, length, crow = plan.chunk_start.long(), plan.chunk_len.long(), plan.chunk_row.long()
    qptr = plan.chunk_q_ptr.long()
    assert qptr[0] == 0 and bool((qptr[1:] >= qptr[:-1]).all())
    assert bool((start % bs == 0).all())
    assert bool((length <= chunk_size).all()) and int(length.max()) <= plan.max_chunk_len
    assert int((qptr[1:] - qptr[:-1]).max()) <= plan.max_rows_per_chunk
    n_real = int(qptr[-1])
    pair_chunk = torch.repeat_interleave(torch.arange(C), qptr[1:] - qptr[:-1])
    # Every pair's row contains the chunk's blocks (same ids as the representative row) and its tokens.
    for p in range(n_real):
        c, r = int(pair_chunk[p]), int(plan.q_rows[p])
        s, L = int(start[c]), int(length[c])
        assert L > 0
        assert int(sl[r]) >= s + L
        cols = slice(s // bs, (s + L - 1) // bs + 1)
        assert torch.equal(bt[r, cols], bt[int(crow[c]), cols])
    # Each row's pairs cover [0, seq_len) exactly once, in increasing position order.
    rptr = plan.row_pair_ptr.long()
    assert rptr.shape == (N + 1,) and rptr[0] == 0 and int(rptr[-1]) == n_real
    listed = plan.row_pairs[:n_real].long()
    assert sorted(listed.tolist()) == list(range(n_real))  # each pair listed exactly once
    for i in range(N):
        pos = 0
        for p in listed[rptr[i]:rptr[i + 1]].tolist():
            assert int(plan.q_rows[p]) == i
            c = int(pair_chunk[p])
            assert int(start[c]) == pos
            pos += int(length[c])
        assert pos == int(sl[i])


def _nodes(bt, sl, bs):
    """Trie nodes of the batch: (prefix of (block id, tokens used) up to a column) -> rows under it."""
    nodes = {}
    for i in range(bt.shape[0]):
        L = int(sl[i])
        key = ()
        for j in range((L + bs - 1) // bs):
            key += ((int(bt[i, j]), min(bs, L - j * bs)),)
            nodes.setdefault(key, set()).add(i)
    return nodes


@pytest.mark.parametrize("bs,chunk_size", [(1, 4), (4, 8), (4, 4), (16, 512)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_plan_invariants_and_maximal_sharing(kind, seed, bs, chunk_size):
    gen = torch.Generator().manual_seed(seed)
    bt, sl, _ = random_forest(kind, 9, bs, 12, gen)
    plan = tk.plan_tree_attention(bt, sl, bs, chunk_size=chunk_size)
    _check_invariants(plan, bt, sl, bs, chunk_size)
    # Sharing: every trie node (a KV block as reached by its set of rows) is read by exactly one
    # chunk, and that chunk lists exactly the rows under the node.
    nodes = _nodes(bt, sl, bs)
    covered = {}
    qptr = plan.chunk_q_ptr.tolist()
    for c in range(plan.num_chunks):
        r = int(plan.chunk_row[c])
        s, L = int(plan.chunk_start[c]), int(plan.chunk_len[c])
        rows = set(plan.q_rows[qptr[c]:qptr[c + 1]].tolist())
        for j in range(s // bs, (s + L - 1) // bs + 1):
            key = tuple((int(bt[r, t]), min(bs, int(sl[r]) - t * bs)) for t in range(j + 1))
            covered[key] = covered.get(key, 0) + 1
            assert rows == nodes[key], "a chunk must list exactly the rows that share its blocks"
    # A block split across chunks (chunk_size < bs cannot happen) would be counted twice.
    assert set(covered) == set(nodes) and all(n == 1 for n in covered.values())


@pytest.mark.parametrize("kind", KINDS)
def test_sharing_disabled_plans_rows_alone(kind):
    gen = torch.Generator().manual_seed(5)
    bt, sl, _ = random_forest(kind, 7, 4, 10, gen)
    plan = tk.plan_tree_attention(bt, sl, 4, chunk_size=8, sharing=False)
    _check_invariants(plan, bt, sl, 4, 8)
    assert plan.num_pairs == plan.num_chunks and plan.max_rows_per_chunk == 1
    assert torch.equal(plan.q_rows, plan.chunk_row)
    assert plan.num_chunks == int(((sl.long() + 7) // 8).sum())


def test_identical_rows_share_everything():
    bt = torch.tensor([[3, 1, 2]] * 5, dtype=torch.int32)
    sl = torch.full((5,), 10, dtype=torch.int32)
    plan = tk.plan_tree_attention(bt, sl, 4, chunk_size=64)
    assert plan.num_chunks == 1 and plan.num_pairs == 5 and int(plan.chunk_len[0]) == 10


def test_partial_block_belongs_to_rows_containing_it():
    # Rows 0 and 1 share block 7 but row 0 uses 2 of its tokens and row 1 all 4: the full blocks
    # [5] are shared, block 7 is read separately for each length.
    bt = torch.tensor([[5, 7, 0], [5, 7, 9], [5, 7, 9]], dtype=torch.int32)
    sl = torch.tensor([6, 9, 10], dtype=torch.int32)
    plan = tk.plan_tree_attention(bt, sl, 4, chunk_size=4)
    _check_invariants(plan, bt, sl, 4, 4)
    qptr = plan.chunk_q_ptr.tolist()
    got = sorted((int(plan.chunk_start[c]), int(plan.chunk_len[c]), tuple(sorted(plan.q_rows[qptr[c]:qptr[c + 1]].tolist())))
                 for c in range(plan.num_chunks))
    assert got == [(0, 4, (0, 1, 2)), (4, 2, (0,)), (4, 4, (1, 2)), (8, 1, (1,)), (8, 2, (2,))]


def test_long_shared_prefix_is_chunked():
    N, prefix_blocks, bs = 16, 64, 16
    bt = torch.cat([torch.arange(prefix_blocks).repeat(N, 1), 1000 + torch.arange(N)[:, None]], 1).int()
    sl = torch.full((N,), prefix_blocks * bs + 5, dtype=torch.int32)
    plan = tk.plan_tree_attention(bt, sl, bs, chunk_size=256)
    _check_invariants(plan, bt, sl, bs, 256)
    assert plan.num_chunks == prefix_blocks * bs // 256 + N
    assert plan.num_pairs == N * (prefix_blocks * bs // 256 + 1)
    assert plan.max_rows_per_chunk == N


def test_default_chunk_size_and_rounding():
    bt, sl = torch.arange(200).view(1, 200).int(), torch.tensor([200 * 3], dtype=torch.int32)
    plan = tk.plan_tree_attention(bt, sl, 3)
    assert plan.max_chunk_len == DEFAULT_CHUNK_SIZE // 3 * 3
    plan = tk.plan_tree_attention(bt, sl, 3, chunk_size=2)  # below one block: one block per chunk
    assert plan.max_chunk_len == 3


def test_fixed_capacity_padding_and_out():
    gen = torch.Generator().manual_seed(3)
    bt, sl, _ = random_forest("forest", 6, 4, 8, gen)
    plan = tk.plan_tree_attention(bt, sl, 4, chunk_size=8)
    C, P = plan.num_chunks, plan.num_pairs
    cap = (C + 4, P + 6)
    padded = tk.plan_tree_attention(bt, sl, 4, chunk_size=8, capacity=cap)
    assert (padded.num_chunks, padded.num_pairs) == cap
    assert padded.max_chunk_len == 8 and padded.max_rows_per_chunk == 6  # static scalars
    assert torch.equal(padded.chunk_len[C:], torch.zeros(4, dtype=torch.int32))
    assert torch.equal(padded.chunk_q_ptr[C:], torch.full((5,), P, dtype=torch.int32))
    assert torch.equal(padded.row_pair_ptr, plan.row_pair_ptr)
    for name in ("chunk_row", "chunk_start", "chunk_len", "q_rows", "row_pairs"):
        n = C if name.startswith("chunk") else P
        assert torch.equal(getattr(padded, name)[:n], getattr(plan, name))
    # Re-planning a later step into the same buffers (what a captured CUDA graph reads).
    buffers = {n: getattr(padded, n) for n in ("chunk_row", "q_rows", "row_pairs")}
    sl2 = sl.clone()
    sl2[0] = max(1, int(sl2[0]) - 1)
    again = tk.plan_tree_attention(bt, sl2, 4, chunk_size=8, out=padded)
    assert again is padded and all(getattr(padded, n) is t for n, t in buffers.items())
    n_real = int(padded.chunk_q_ptr[-1])
    fresh = tk.plan_tree_attention(bt, sl2, 4, chunk_size=8, capacity=cap)
    for name in ("chunk_row", "chunk_start", "chunk_len", "chunk_q_ptr", "row_pair_ptr"):
        assert torch.equal(getattr(padded, name), getattr(fresh, name))
    assert torch.equal(padded.q_rows[:n_real], fresh.q_rows[:n_real])
    with pytest.raises(ValueError, match="capacity"):
        tk.plan_tree_attention(bt, sl, 4, chunk_size=8, capacity=(C - 1, P))
    with pytest.raises(ValueError, match="capacity"):
        tk.plan_tree_attention(bt, sl, 4, chunk_size=8, capacity=(C, P - 1))


def test_empty_batch_plan():
    plan = tk.plan_tree_attention(torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), 4)
    assert plan.num_chunks == 0 and plan.num_pairs == 0 and plan.row_pair_ptr.tolist() == [0]


def test_planner_is_vectorised_for_large_batches():
    """N=256 rows sharing a 32k-token prefix (block 16) plans quickly (the benchmark reports its time)."""
    N, bs, prefix = 256, 16, 32768
    pb = prefix // bs
    bt = torch.cat([torch.arange(pb).repeat(N, 1), pb + torch.arange(N * 4).view(N, 4)], 1).int()
    sl = torch.full((N,), prefix + 50, dtype=torch.int32)
    plan = tk.plan_tree_attention(bt, sl, bs)
    assert plan.num_chunks == prefix // DEFAULT_CHUNK_SIZE + N
    assert plan.max_rows_per_chunk == N


BS = 4


def _bt(n=2, m=3):
    return torch.zeros(n, m, dtype=torch.int32)


BAD_PLANS = [
    ("block_tables not a tensor", lambda: dict(block_tables=[[0]]), TypeError, "block_tables"),
    ("block_tables int64", lambda: dict(block_tables=_bt().long()), TypeError, "block_tables"),
    ("block_tables 1-D", lambda: dict(block_tables=torch.zeros(3, dtype=torch.int32)), ValueError, "block_tables"),
    ("seq_lens float", lambda: dict(seq_lens=torch.ones(2)), TypeError, "seq_lens"),
    ("seq_lens wrong length", lambda: dict(seq_lens=torch.ones(3, dtype=torch.int32)), ValueError, "seq_lens"),
    ("seq_lens other device", lambda: dict(seq_lens=torch.ones(2, dtype=torch.int32, device="meta")), ValueError,
     "seq_lens"),
    ("seq_lens zero", lambda: dict(seq_lens=torch.tensor([1, 0], dtype=torch.int32)), ValueError, r"seq_lens\[1\]"),
    ("seq_lens too long", lambda: dict(seq_lens=torch.tensor([13, 1], dtype=torch.int32)), ValueError,
     r"seq_lens\[0\]"),
    ("block_size zero", lambda: dict(block_size=0), ValueError, "block_size"),
    ("block_size float", lambda: dict(block_size=4.0), ValueError, "block_size"),
    ("chunk_size zero", lambda: dict(chunk_size=0), ValueError, "chunk_size"),
    ("sharing not bool", lambda: dict(sharing=1), TypeError, "sharing"),
    ("capacity malformed", lambda: dict(capacity=(3,)), ValueError, "capacity"),
    ("out not a plan", lambda: dict(out="plan"), TypeError, "out"),
    ("parallelism a tuple", lambda: dict(parallelism=(4, 2, 8, 1, 8)), TypeError, "parallelism"),
    ("parallelism zero programs", lambda: dict(parallelism=tk.Parallelism(4, 2, 0, 1, 8)), ValueError,
     "parallelism.programs"),
    ("parallelism zero narrow programs", lambda: dict(parallelism=tk.Parallelism(4, 2, 8, 1, 0)), ValueError,
     "parallelism.programs_narrow"),
    ("parallelism negative narrow programs", lambda: dict(parallelism=tk.Parallelism(4, 2, 8, 0, -1)), ValueError,
     "parallelism.programs_narrow"),
    ("parallelism negative narrow rows", lambda: dict(parallelism=tk.Parallelism(4, 2, 8, -1, 8)), ValueError,
     "parallelism.narrow_rows"),
    ("parallelism float rows", lambda: dict(parallelism=tk.Parallelism(4.0, 2, 8, 1, 8)), ValueError,
     "parallelism.rows_per_item"),
    ("parallelism with wide_chunk_rows", lambda: dict(parallelism=tk.Parallelism(4, 2, 8, 1, 8), wide_chunk_rows=2),
     ValueError, "not both"),
]


@pytest.mark.parametrize("desc,make,exc,match", BAD_PLANS, ids=[c[0] for c in BAD_PLANS])
def test_bad_planner_input(desc, make, exc, match):
    kwargs = dict(block_tables=_bt(), seq_lens=torch.tensor([5, 12], dtype=torch.int32), block_size=BS)
    kwargs.update(make())
    with pytest.raises(exc, match=match):
        tk.plan_tree_attention(kwargs.pop("block_tables"), kwargs.pop("seq_lens"), kwargs.pop("block_size"), **kwargs)


def test_plan_tensor_order_is_the_op_schema():
    """TreeAttentionPlan.TENSORS is the one order: the registered op's schema and the dataclass follow it."""
    import dataclasses

    from tts_kernels.attention.plan import TreeAttentionPlan
    schema = [a.name for a in torch.ops.tts_kernels.tree_attention.default._schema.arguments]
    assert schema[5:5 + len(TreeAttentionPlan.TENSORS)] == list(TreeAttentionPlan.TENSORS)
    fields = [f.name for f in dataclasses.fields(TreeAttentionPlan)]
    assert fields[2:2 + len(TreeAttentionPlan.TENSORS)] == list(TreeAttentionPlan.TENSORS)
    assert list(TreeAttentionPlan.lengths(3, 5, 7)) == list(TreeAttentionPlan.TENSORS)


# ---------------------------------------------------------------------------
# load-balanced chunks (parallelism)
# ---------------------------------------------------------------------------
def _est(segments, chunk_len, programs):
    """makespan_estimate of (tokens, items) segments."""
    tok = torch.tensor([t for t, _ in segments])
    items = torch.tensor([i for _, i in segments])
    return int(makespan_estimate(tok, items, chunk_len, programs))


def test_makespan_estimate():
    """Items longest first, in rounds of one per program, each round as long as its longest item."""
    # an 8192-token prefix, 4 row tiles x 8 KV heads (256 rows, 32/8 heads) on 132 programs: 512 items
    # of 512 tokens take 4 rounds, 256 of 1024 two, 128 of 2048 one: 2048 each; 64 of 4096 one round
    assert [_est([(8192, 32)], 512 * f, 132) for f in CHUNK_FACTORS] == [2048, 2048, 2048, 4096, 8192]
    # 8 row tiles x 1 KV head (8/1 heads): 128 items of 512 already fit one round
    assert [_est([(8192, 8)], 512 * f, 132) for f in CHUNK_FACTORS] == [512, 1024, 2048, 4096, 8192]
    # one program: the whole work whatever the chunks
    assert {_est([(8192, 32), (64, 8)], 512 * f, 1) for f in CHUNK_FACTORS} == {8192 * 32 + 64 * 8}
    # leftover chunks add rounds: 16 programs; segments (tokens, items) (323, 1), (1604, 8), (917, 1),
    # (1584, 1) in chunks of 1024: 9 items of 1024 and 11 shorter ones (8 of 580) -> 1024 + 580
    segs = [(323, 1), (1604, 8), (917, 1), (1584, 1)]
    assert _est(segs, 1024, 16) == 1024 + 580
    # in chunks of 512: 28 of 512, then 405, 323, 8 x 68, 48 (39 items): rounds 512, 512, 68
    assert _est(segs, 512, 16) == 512 + 512 + 68
    assert [_est(segs, 64 * f, 16) for f in CHUNK_FACTORS] == [1024, 1024, 1092, 1092, 1604]


def _makespan_by_definition(segments, chunk_len, programs):
    """Every item's length, longest first, in rounds of ``programs``; a round as long as its first."""
    lens = []
    for tok, items in segments:
        full, rem = divmod(tok, chunk_len)
        lens += [chunk_len] * (full * items) + [rem] * (items if rem else 0)
    lens.sort(reverse=True)
    return sum(lens[::programs])


def test_makespan_estimate_random():
    """The vectorised estimate (full chunks counted, only the remainders sorted) against the definition."""
    rng = random.Random(5)
    for _ in range(300):
        segs = [(rng.randint(0, 3000), rng.randint(0, 9)) for _ in range(rng.randint(1, 30))]
        chunk_len, programs = rng.choice([16, 64, 512, 1000]), rng.randint(1, 140)
        assert _est(segs, chunk_len, programs) == _makespan_by_definition(segs, chunk_len, programs)


def test_balanced_chunk_factor():
    """f: the factor of least estimated makespan, the largest on a tie."""
    assert CHUNK_FACTORS == (1, 2, 4, 8, WIDE_CHUNK_MAX_FACTOR)
    assert balanced_chunk_factor([2048, 2048, 2048, 4096, 8192]) == 4
    assert balanced_chunk_factor([512, 1024, 2048, 4096, 8192]) == 1
    assert balanced_chunk_factor([5] * 5) == WIDE_CHUNK_MAX_FACTOR
    assert balanced_chunk_factor([1024, 1024, 1092, 1092, 1604]) == 2


def _best_of_n(N, prefix, suffix, bs):
    """N rows over one shared prefix of ``prefix`` tokens, ``suffix`` own tokens each."""
    pb, sb = prefix // bs, -(-suffix // bs)
    own = pb + torch.arange(N * sb).view(N, sb)
    bt = torch.cat([torch.arange(pb).repeat(N, 1), own], 1).int()
    return bt, torch.full((N,), prefix + suffix, dtype=torch.int32)


@pytest.mark.parametrize("par,shared_len", [
    # 32/8 heads, bf16 256-row tiles (64 rows x 4 heads) on 132 SMs: the prefix is 4 items x 8 heads per
    # chunk (test_balanced_chunk_factor) -> 2048-token chunks; the own 64 tokens (the narrow launch) stay
    (tk.Parallelism(64, 8, 132, 4, 528), 2048),
    # 8/1 heads (32 rows x 8 heads): 8 items per 512-token chunk already fit one round -> the default 512
    (tk.Parallelism(32, 1, 132, 2, 528), 512),
    # one program: every factor takes the same time -> the longest chunks allowed
    (tk.Parallelism(64, 8, 1, 4, 1000), 512 * WIDE_CHUNK_MAX_FACTOR),
])
def test_balanced_plan_best_of_n(par, shared_len):
    """Hand-computed chunk lengths of the load-balanced plan (N = 256 over 8192 + 64 tokens)."""
    bs, N = 16, 256
    bt, sl = _best_of_n(N, 8192, 64, bs)
    plan = tk.plan_tree_attention(bt, sl, bs, parallelism=par)
    _check_invariants(plan, bt, sl, bs, shared_len)
    rows = (plan.chunk_q_ptr[1:] - plan.chunk_q_ptr[:-1]).tolist()
    shared = [int(n) for n, r in zip(plan.chunk_len.tolist(), rows) if r == N]
    own = [int(n) for n, r in zip(plan.chunk_len.tolist(), rows) if r == 1]
    assert shared == [shared_len] * (8192 // shared_len) and own == [64] * N
    assert plan.num_pairs == N * (8192 // shared_len) + N


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("programs", [1, 3, 1000])
def test_balanced_plan_invariants(kind, programs):
    """Load-balanced plans keep every invariant and the maximal sharing of the default plan: the same
    trie nodes, cut into chunks of chunk_size * f tokens."""
    bs, cs = 4, 8
    gen = torch.Generator().manual_seed(7 + programs)
    bt, sl, _ = random_forest(kind, 9, bs, 12, gen)
    par = tk.Parallelism(2, 2, programs, 0, 0)  # no narrow launch: one factor for every chunk
    plan = tk.plan_tree_attention(bt, sl, bs, chunk_size=cs, parallelism=par)
    # without a narrow launch its program count is not read
    other = tk.plan_tree_attention(bt, sl, bs, chunk_size=cs, parallelism=par._replace(programs_narrow=7))
    assert all(torch.equal(getattr(plan, n), getattr(other, n)) for n in plan.TENSORS)
    base = tk.plan_tree_attention(bt, sl, bs, chunk_size=cs * WIDE_CHUNK_MAX_FACTOR)
    rows = (base.chunk_q_ptr[1:] - base.chunk_q_ptr[:-1]).long()
    items = (rows + 1) // 2
    # segments are never cut at 16 x 8 tokens here: base's chunks are the segments
    est = [int(makespan_estimate(base.chunk_len.long(), items * 2, cs * g, programs)) for g in CHUNK_FACTORS]
    f = balanced_chunk_factor(est)
    assert int(sl.max()) <= cs * WIDE_CHUNK_MAX_FACTOR
    _check_invariants(plan, bt, sl, bs, cs * f)
    same = tk.plan_tree_attention(bt, sl, bs, chunk_size=cs * f)
    for name in plan.TENSORS:
        assert torch.equal(getattr(plan, name), getattr(same, name)), name
    q, k, v = _qkv(bt, sl, bs)
    ref = tk.tree_attention(q, k, v, bt, sl, plan=plan, backend="reference")
    exp = tk.tree_attention(q, k, v, bt, sl, plan=base, backend="reference")
    torch.testing.assert_close(ref, exp, rtol=1e-5, atol=1e-5)


def _qkv(bt, sl, bs, hq=4, hkv=2, d=16):
    gen = torch.Generator().manual_seed(3)
    nblk = int(bt.max()) + 1
    return (torch.randn(bt.shape[0], hq, d, generator=gen), torch.randn(nblk, bs, hkv, d, generator=gen),
            torch.randn(nblk, bs, hkv, d, generator=gen))


def test_balanced_plan_adds_no_sync_but_its_one():
    """parallelism= adds no op that syncs a CUDA host (boolean-mask indexing, nonzero, item) beyond
    its one .tolist() (which does not dispatch): counted on the CPU with a dispatch mode."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    class Syncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if name in ("aten.nonzero", "aten._local_scalar_dense", "aten.masked_select") or (
                    name == "aten.index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                                 for i in (args[1] or []) if i is not None)):
                self.n[name] += 1
            return func(*args, **(kwargs or {}))

    bt, sl = _best_of_n(8, 64, 13, 4)
    counts = []
    for par in (None, tk.Parallelism(4, 2, 132, 1, 396), tk.Parallelism(4, 2, 132, 0, 0)):
        with Syncs() as m:
            tk.plan_tree_attention(bt, sl, 4, chunk_size=8, validate=False, parallelism=par)
        counts.append(dict(m.n))
    assert counts[0] == counts[1] == counts[2], counts


def test_balanced_capacity_padding():
    """A fixed-capacity load-balanced plan bounds max_chunk_len by the longest chunk it may hold."""
    bs = 4
    bt, sl = _best_of_n(8, 64, 5, bs)
    plan = tk.plan_tree_attention(bt, sl, bs, chunk_size=8, parallelism=tk.Parallelism(4, 1, 1, 1, 1),
                                  capacity=(64, 64))
    assert plan.max_chunk_len == 8 * WIDE_CHUNK_MAX_FACTOR and plan.num_chunks == 64


def test_balanced_launches_count_their_own_programs():
    """The narrow chunks (at most ``narrow_rows`` rows: one launch) are balanced over
    ``programs_narrow``, the wider ones over ``programs`` (another launch), whatever the plan shares
    or pads. 8 rows share 64 tokens (2 items of 4 rows), then 32 own tokens each; chunk_size 8."""
    bs, few, many = 4, 1, 1000
    bt, sl = _best_of_n(8, 64, 32, bs)

    def lens(plan):
        rows = (plan.chunk_q_ptr[1:] - plan.chunk_q_ptr[:-1]).tolist()
        shared = {int(n) for n, r in zip(plan.chunk_len.tolist(), rows) if r == 8}
        own = {int(n) for n, r in zip(plan.chunk_len.tolist(), rows) if r == 1}
        return shared, own

    # wide on one program: the whole 128 token-items at every f -> f = 16, one 64-token chunk; narrow on
    # 1000: one round of the 32 items of 8 tokens, f = 1
    assert lens(tk.plan_tree_attention(bt, sl, bs, chunk_size=8, parallelism=tk.Parallelism(4, 1, few, 1, many))) \
        == ({64}, {8})
    # swapped: the wide chunks stay short, the own 32 tokens are one chunk (one program: 256 at every f)
    par = tk.Parallelism(4, 1, many, 1, few)
    assert lens(tk.plan_tree_attention(bt, sl, bs, chunk_size=8, parallelism=par)) == ({8}, {32})
    padded = tk.plan_tree_attention(bt, sl, bs, chunk_size=8, parallelism=par, capacity=(200, 200))
    assert lens(padded) == ({8}, {32}) and padded.max_rows_per_chunk == 8
    # narrow_rows 0: one launch, one factor for all (f = 1 on 1000 programs)
    assert lens(tk.plan_tree_attention(bt, sl, bs, chunk_size=8, parallelism=tk.Parallelism(4, 1, many, 0, few))) \
        == ({8}, {8})
    # no sharing: every chunk is narrow, 96 tokens each; one program: 768 at every f -> f = 16
    alone = tk.plan_tree_attention(bt, sl, bs, chunk_size=8, sharing=False, parallelism=par)
    assert alone.max_rows_per_chunk == 1 and set(alone.chunk_len.tolist()) == {96}
    # 16 programs: 6, 3, 2 rounds of 8, 16, 32 tokens; one of 64 (8 items of 64, 8 of 32); one of 96:
    # 48, 48, 64, 64, 96 -> f = 2
    alone = tk.plan_tree_attention(bt, sl, bs, chunk_size=8, sharing=False, parallelism=par._replace(programs_narrow=16))
    assert set(alone.chunk_len.tolist()) == {16}


def test_balanced_plan_of_rows_without_tokens():
    """Unvalidated rows without tokens (validate=False): no segment, no chunk, the same as the default
    plan (the work estimate must not reduce over nothing)."""
    bt, sl = torch.zeros(3, 2, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)
    plan = tk.plan_tree_attention(bt, sl, 4, validate=False, parallelism=tk.Parallelism(4, 1, 1, 1, 1))
    assert plan.num_chunks == plan.num_pairs == 0
