"""The paged KV pool: sharing by fork, reference counts, slots, misuse errors, exhaustion atomicity."""
from __future__ import annotations

import pytest
import torch

import tts_kernels as tk
from tts_kernels import KVPoolError, OutOfBlocksError

from helpers.attention import assert_close_to_oracle

BS, HKV, D = 4, 2, 8


def _pool(num_blocks=16, layers=2):
    return tk.KVPool(num_blocks, BS, HKV, D, num_layers=layers, dtype=torch.float32)


def _fill(pool, seq, gen, start=0):
    """Write random K/V for positions [start, len) of seq in every layer; returns them per layer."""
    slots = pool.slot_mapping(seq, start)
    kv = []
    for layer in range(pool.num_layers):
        k = torch.randn(len(slots), HKV, D, generator=gen)
        v = torch.randn(len(slots), HKV, D, generator=gen)
        pool.write(layer, slots, k, v)
        kv.append((k, v))
    return kv


def _read(pool, seq, layer=0):
    slots = pool.slot_mapping(seq)
    return (pool.k_cache(layer).view(-1, HKV, D)[slots], pool.v_cache(layer).view(-1, HKV, D)[slots])


def _snapshot(pool):
    return (list(pool._free), list(pool._ref), {s: (pool.block_ids(s), pool.seq_len(s)) for s in pool.sequences},
            [c.clone() for c in pool._k + pool._v])


def _assert_same(pool, snap):
    free, ref, seqs, caches = snap
    assert pool._free == free and pool._ref == ref
    assert {s: (pool.block_ids(s), pool.seq_len(s)) for s in pool.sequences} == seqs
    assert all(torch.equal(a, b) for a, b in zip(pool._k + pool._v, caches))


def test_add_write_read_back():
    gen = torch.Generator().manual_seed(0)
    pool = _pool()
    s = pool.add_sequence(10)
    assert pool.seq_len(s) == 10 and len(pool.block_ids(s)) == 3 and pool.num_free_blocks == 13
    kv = _fill(pool, s, gen)
    for layer in range(2):
        k, v = _read(pool, s, layer)
        assert torch.equal(k, kv[layer][0]) and torch.equal(v, kv[layer][1])
    assert pool.block_tables([s]).dtype == torch.int32 and pool.seq_lens([s]).tolist() == [10]


def test_fork_shares_full_blocks_and_copies_partial_block():
    gen = torch.Generator().manual_seed(1)
    pool = _pool()
    root = pool.add_sequence(10)  # blocks: full, full, partial (2 tokens)
    _fill(pool, root, gen)
    kids = pool.fork(root, 3)
    rb = pool.block_ids(root)
    for kid in kids:
        kb = pool.block_ids(kid)
        assert kb[:2] == rb[:2] and kb[2] != rb[2] and pool.seq_len(kid) == 10
        for layer in range(2):
            assert all(torch.equal(a, b) for a, b in zip(_read(pool, kid, layer), _read(pool, root, layer)))
    assert [pool.ref_count(b) for b in rb] == [4, 4, 1]
    assert pool.num_free_blocks == 16 - 3 - 3
    # Appending to a child writes only its private blocks: the root is unchanged.
    before = _read(pool, root)
    slots = pool.append(kids[0], 5)
    assert slots.shape == (5,)
    pool.write(0, slots, torch.ones(5, HKV, D), torch.ones(5, HKV, D))
    assert all(torch.equal(a, b) for a, b in zip(before, _read(pool, root)))
    assert pool.seq_len(kids[0]) == 15 and pool.seq_len(root) == 10


def test_fork_of_full_last_block_shares_everything_and_append_gets_fresh_block():
    pool = _pool()
    root = pool.add_sequence(8)
    kids = pool.fork(root, 2)
    assert all(pool.block_ids(k) == pool.block_ids(root) for k in kids)
    assert pool.num_free_blocks == 14
    slots = pool.append(kids, 1)  # batched: one token for each child
    assert slots.shape == (2, 1)
    assert len({pool.block_ids(k)[-1] for k in kids} | set(pool.block_ids(root))) == 4
    bt = pool.block_tables(kids + [root])
    assert bt.shape == (3, 3) and pool.seq_lens(kids + [root]).tolist() == [9, 9, 8]


def test_slots_follow_block_tables():
    pool = _pool()
    s = pool.add_sequence(5)
    pool.append(s, 7)
    blocks = pool.block_ids(s)
    expect = [blocks[t // BS] * BS + t % BS for t in range(12)]
    assert pool.slot_mapping(s).tolist() == expect
    assert pool.slot_mapping(s, 3, 6).tolist() == expect[3:6]


def test_free_returns_blocks_only_when_unshared():
    pool = _pool()
    root = pool.add_sequence(9)
    kids = pool.fork(root, 2)
    pool.free(root)
    assert pool.num_free_blocks == 16 - 3 - 2 + 1  # only root's private partial block came back
    for k in kids:
        pool.free(k)
    assert pool.num_free_blocks == 16 and all(pool.ref_count(b) == 0 for b in range(16))
    assert pool.sequences == []


def test_add_sequence_with_prefix_blocks_shares_or_copies_them():
    gen = torch.Generator().manual_seed(4)
    pool = _pool()
    root = pool.add_sequence(8)                     # two full blocks
    _fill(pool, root, gen)
    rb = pool.block_ids(root)
    s = pool.add_sequence(10, rb)                   # shares both, one fresh block for 2 tokens
    assert pool.block_ids(s)[:2] == rb and [pool.ref_count(b) for b in rb] == [2, 2]
    c = pool.add_sequence(8, rb, copy_last=True)    # shares the first, copies the second
    cb = pool.block_ids(c)
    assert cb[0] == rb[0] and cb[1] not in rb and [pool.ref_count(b) for b in rb] == [3, 2]
    for layer in range(2):
        assert all(torch.equal(a, b) for a, b in zip(_read(pool, c, layer), _read(pool, root, layer)))
    assert pool.num_free_blocks == 16 - 2 - 1 - 1
    for seq in (root, s, c):
        pool.free(seq)
    assert pool.num_free_blocks == 16 and not any(pool._ref)


class _Holder:
    """A reclaimer holding retained blocks, giving back the oldest ones that nobody else holds."""

    def __init__(self, pool, blocks):
        self.pool, self.blocks = pool, list(blocks)
        pool.retain(self.blocks)
        pool.reclaimer = self

    def reclaimable(self):
        return sum(self.pool.ref_count(b) == 1 for b in self.blocks)

    def reclaim(self, n):
        for b in [b for b in self.blocks if self.pool.ref_count(b) == 1][:n]:
            self.blocks.remove(b)
            self.pool.release([b])


def test_retain_release_and_reclaim_on_demand():
    pool = _pool(num_blocks=8)
    a, b = pool.add_sequence(8), pool.add_sequence(8)       # 2 + 2 blocks
    holder = _Holder(pool, pool.block_ids(a) + pool.block_ids(b))
    pool.free(a)
    assert len(pool._free) == 4 and pool.num_free_blocks == 6 and pool.num_used_blocks == 4
    snap = _snapshot(pool)
    with pytest.raises(OutOfBlocksError, match="7 needed, 6 of 8 free"):
        pool.add_sequence(7 * BS)                   # more than free + reclaimable: nothing is reclaimed
    _assert_same(pool, snap)
    assert len(holder.blocks) == 4
    s = pool.add_sequence(5 * BS)                   # 4 free + 1 reclaimed
    assert len(holder.blocks) == 3 and pool.num_free_blocks == 1 and len(set(pool.block_ids(s))) == 5
    pool.free(b)
    pool.release(holder.blocks)
    pool.free(s)
    assert len(pool._free) == 8 and not any(pool._ref)


def test_truncate_undoes_an_append():
    pool = _pool()
    root = pool.add_sequence(6)
    kid = pool.fork(root, 1)[0]
    snap = _snapshot(pool)
    pool.append(kid, 7)                             # fills its private partial block, then 2 fresh
    pool.truncate(kid, 6)
    assert pool.seq_len(kid) == 6
    assert pool._ref == snap[1] and sorted(pool._free) == sorted(snap[0])
    with pytest.raises(KVPoolError, match="shared block partly filled"):
        pool.truncate(kid, 3)                       # block 0 is shared with root
    with pytest.raises(KVPoolError, match="cannot truncate"):
        pool.truncate(kid, 7)
    pool.truncate(kid, 4)                           # a full shared block stays full
    assert pool.block_ids(kid) == pool.block_ids(root)[:1] and pool.ref_count(pool.block_ids(root)[0]) == 2


def test_pool_feeds_tree_attention():
    gen = torch.Generator().manual_seed(2)
    pool = tk.KVPool(32, BS, HKV, 64, dtype=torch.float16)
    root = pool.add_sequence(11)
    pool.write(0, pool.slot_mapping(root), torch.randn(11, HKV, 64, generator=gen),
               torch.randn(11, HKV, 64, generator=gen))
    rows = pool.fork(root, 4)
    slots = pool.append(rows, 3)
    pool.write(0, slots, torch.randn(4, 3, HKV, 64, generator=gen), torch.randn(4, 3, HKV, 64, generator=gen))
    bt, sl = pool.block_tables(rows), pool.seq_lens(rows)
    q = torch.randn(4, 8, 64, generator=gen).half()
    plan = tk.plan_tree_attention(bt, sl, BS)
    assert plan.max_rows_per_chunk == 4  # the two full prompt blocks are read once for all rows
    out, lse = tk.tree_attention(q, pool.k_cache(), pool.v_cache(), bt, sl, plan=plan, return_lse=True)
    assert_close_to_oracle(out, lse, q, pool.k_cache(), pool.v_cache(), bt, sl)


# --- exhaustion: the pool is unchanged ---------------------------------------------------------
EXHAUST = [
    ("add_sequence", lambda p, s: p.add_sequence(4 * BS)),
    ("add_sequence prefix", lambda p, s: p.add_sequence(6 * BS, p.block_ids(s["full"]))),
    ("add_sequence copy_last", lambda p, s: p.add_sequence(5 * BS, p.block_ids(s["full"]), copy_last=True)),
    ("fork partial", lambda p, s: p.fork(s["partial"], 4)),
    ("append batch", lambda p, s: p.append([s["partial"], s["full"]], 3 * BS)),
    ("append one", lambda p, s: p.append(s["full"], 3 * BS + 1)),
]


@pytest.mark.parametrize("desc,call", EXHAUST, ids=[e[0] for e in EXHAUST])
def test_out_of_blocks_leaves_pool_intact(desc, call):
    gen = torch.Generator().manual_seed(3)
    pool = _pool(num_blocks=8)
    seqs = {"partial": pool.add_sequence(6), "full": pool.add_sequence(8)}  # 2 + 2 blocks
    for s in seqs.values():
        _fill(pool, s, gen)
    pool.fork(seqs["full"], 1)
    assert pool.num_free_blocks == 4
    pool.add_sequence(1)  # 3 free
    snap = _snapshot(pool)
    with pytest.raises(OutOfBlocksError, match="out of blocks"):
        call(pool, seqs)
    assert issubclass(OutOfBlocksError, RuntimeError)
    _assert_same(pool, snap)
    # Still usable: a request that fits succeeds.
    pool.append(seqs["partial"], 2)


# --- misuse -------------------------------------------------------------------------------------
def _freed(pool):
    s = pool.add_sequence(3)
    pool.free(s)
    return s


MISUSE = [
    ("double free", lambda p: p.free(_freed(p)), "already freed"),
    ("append after free", lambda p: p.append(_freed(p), 1), "already freed"),
    ("fork after free", lambda p: p.fork(_freed(p), 2), "already freed"),
    ("block_tables after free", lambda p: p.block_tables([_freed(p)]), "already freed"),
    ("seq_lens after free", lambda p: p.seq_lens([_freed(p)]), "already freed"),
    ("slot_mapping after free", lambda p: p.slot_mapping(_freed(p)), "already freed"),
    ("unknown sequence", lambda p: p.append(12345, 1), "unknown sequence"),
    ("sequence id not int", lambda p: p.free("a"), "must be an int"),
    ("duplicate in batch", lambda p: p.append([p.add_sequence(1)] * 2, 1), "more than once"),
    ("negative tokens", lambda p: p.add_sequence(-1), "num_tokens"),
    ("negative fork", lambda p: p.fork(p.add_sequence(1), -1), "k must"),
    ("bad layer", lambda p: p.k_cache(2), "layer"),
    ("write shape", lambda p: p.write(0, p.append(p.add_sequence(1), 2), torch.zeros(3, HKV, D),
                                      torch.zeros(3, HKV, D)), "k must be a tensor of shape"),
    ("write slot range", lambda p: p.write(0, torch.tensor([16 * BS]), torch.zeros(1, HKV, D),
                                           torch.zeros(1, HKV, D)), "slots"),
    ("slot range", lambda p: p.slot_mapping(p.add_sequence(3), 2, 5), "outside"),
    ("max_blocks too small", lambda p: p.block_tables([p.add_sequence(9)], max_blocks=2), "max_blocks"),
    ("bad geometry", lambda p: tk.KVPool(0, BS, HKV, D), "num_blocks"),
    ("prefix longer than sequence", lambda p: p.add_sequence(BS, p.block_ids(p.add_sequence(2 * BS))),
     "prefix blocks hold more"),
    ("copy_last without prefix", lambda p: p.add_sequence(3, copy_last=True), "copy_last"),
    ("prefix block not in use", lambda p: p.add_sequence(BS, [5]), "not a block in use"),
    ("retain free block", lambda p: p.retain([3]), "not a block in use"),
    ("release free block", lambda p: p.release([3]), "not a block in use"),
]


@pytest.mark.parametrize("desc,call,match", MISUSE, ids=[m[0] for m in MISUSE])
def test_misuse_raises_clear_error(desc, call, match):
    pool = _pool()
    with pytest.raises(KVPoolError, match=match):
        call(pool)
    assert issubclass(KVPoolError, ValueError)


def test_failed_misuse_changes_nothing():
    pool = _pool()
    s = pool.add_sequence(5)
    snap = _snapshot(pool)
    with pytest.raises(KVPoolError):
        pool.append([s, 999], 2)  # an unknown id in a batch: no sequence grows
    _assert_same(pool, snap)
