"""A paged KV pool for tree search: reference-counted blocks shared between forked sequences.

Layout: per layer, ``k_cache(layer)`` and ``v_cache(layer)`` are
``[num_blocks, block_size, num_kv_heads, head_dim]`` (NHD, what
:func:`tree_attention` reads). A token at position ``t`` of a sequence lives in
slot ``block * block_size + t % block_size`` where ``block`` is the sequence's
``t // block_size``-th block; :meth:`KVPool.write` stores K/V at slots.

Sharing: :meth:`KVPool.fork` gives the children the parent's *full* blocks
(reference counted, never written again: appends always go to a block the
sequence owns alone) and a private copy of a partially filled last block.
So a full block is immutable once shared (copy-on-write by construction) and
forked sequences have identical leading block ids, which is what the
tree-attention planner shares.

Prefix caching: :meth:`add_sequence` can start a sequence with given full
blocks (shared, reference +1), e.g. blocks of a prompt prefix held by a prefix
cache (:class:`tts_kernels.decode.prefix_cache.PrefixCache`); such a holder
takes its own references with :meth:`retain` / :meth:`release`. A pool's
:attr:`reclaimer` (the cache) gives back blocks held only by itself when an
allocation would otherwise not fit; :attr:`num_free_blocks` counts them as free.

Errors: :class:`OutOfBlocksError` (a ``RuntimeError``) when the free blocks do
not suffice; every allocating call checks capacity before changing anything,
so the pool is unchanged after it. :class:`KVPoolError` (a ``ValueError``) for
misuse: unknown sequence, a sequence used or freed after it was freed, bad
arguments.

The bookkeeping lives on the host (Python lists); the caches live on ``device``.
"""
from __future__ import annotations

import weakref
from typing import Iterable, List, Optional, Protocol, Sequence, Union

import torch


class KVPoolError(ValueError):
    """Misuse of a :class:`KVPool`: unknown or already freed sequence, bad argument."""


class OutOfBlocksError(RuntimeError):
    """The pool has too few free blocks for the request; the pool was left unchanged."""


class _Seq:
    __slots__ = ("blocks", "length")

    def __init__(self, blocks: List[int], length: int):
        self.blocks = blocks
        self.length = length


def _blocks_for(tokens: int, bs: int) -> int:
    return (tokens + bs - 1) // bs


class Reclaimer(Protocol):
    """Holder of block references that it can give back on demand (a prefix cache)."""

    def reclaimable(self) -> int:
        """Blocks it would free if asked (those it alone holds)."""

    def reclaim(self, n: int) -> None:
        """Release at least ``n`` blocks it alone holds (``n <= reclaimable()``)."""


class KVPool:
    """Paged K/V caches with reference-counted blocks.

    Parameters
    ----------
    num_blocks, block_size, num_kv_heads, head_dim : int
        Cache geometry; each layer's K and V caches are ``[num_blocks, block_size, num_kv_heads, head_dim]``.
    num_layers : int
        Number of (K, V) cache pairs; all layers share the block tables.
    dtype, device
        Of the caches (default float16 on CPU).
    """

    def __init__(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, num_layers: int = 1,
                 dtype: torch.dtype = torch.float16, device: Union[str, torch.device] = "cpu"):
        for name, v, lo in (("num_blocks", num_blocks, 1), ("block_size", block_size, 1),
                            ("num_kv_heads", num_kv_heads, 1), ("head_dim", head_dim, 1),
                            ("num_layers", num_layers, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise KVPoolError(f"{name} must be an int >= {lo}, got {v!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.num_layers = num_layers
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self._k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self._v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self._ref = [0] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pops 0, 1, 2, ...
        self._seqs: dict = {}
        self._freed: set = set()
        self._next_id = 0
        self._reclaimer = None   # a weak reference (see :attr:`reclaimer`)

    @property
    def reclaimer(self) -> Optional[Reclaimer]:
        """Gives back blocks when an allocation would not fit (see :class:`Reclaimer`); ``None``: none.

        Held weakly: a prefix cache holds its pool, so a strong reference back would make a cycle that
        keeps both (and the pool's K/V caches) alive after their owner drops them, until Python's cycle
        collector happens to run. Whoever installs a reclaimer keeps it alive (the engine does)."""
        return None if self._reclaimer is None else self._reclaimer()

    @reclaimer.setter
    def reclaimer(self, value: Optional[Reclaimer]) -> None:
        self._reclaimer = None if value is None else weakref.ref(value)

    # -- caches ---------------------------------------------------------------
    def k_cache(self, layer: int = 0) -> torch.Tensor:
        return self._k[self._layer(layer)]

    def v_cache(self, layer: int = 0) -> torch.Tensor:
        return self._v[self._layer(layer)]

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take: unused ones plus those the :attr:`reclaimer` would give back."""
        return len(self._free) + self._reclaimable()

    @property
    def num_used_blocks(self) -> int:
        """Blocks held by sequences or :meth:`retain` (the reclaimable ones included; see :attr:`num_free_blocks`)."""
        return self.num_blocks - len(self._free)

    def ref_count(self, block: int) -> int:
        """Number of sequences holding ``block``."""
        return self._ref[block]

    # -- sequences ------------------------------------------------------------
    @property
    def sequences(self) -> List[int]:
        """Ids of the live sequences."""
        return list(self._seqs)

    def seq_len(self, seq: int) -> int:
        return self._get(seq).length

    def block_ids(self, seq: int) -> List[int]:
        """The sequence's block ids, in position order (a copy)."""
        return list(self._get(seq).blocks)

    def add_sequence(self, num_tokens: int = 0, prefix_blocks: Sequence[int] = (), *,
                     copy_last: bool = False) -> int:
        """A new sequence with room for ``num_tokens`` tokens (e.g. a prompt); returns its id.

        Write the prompt's K/V at :meth:`slot_mapping` ``(seq)``.

        ``prefix_blocks``: full blocks (held by another sequence or a :meth:`retain`) holding the
        sequence's first ``len(prefix_blocks) * block_size`` tokens; they are shared (reference
        +1, never written again) and only the rest is allocated. ``copy_last``: the last of them is
        copied into a fresh block the sequence owns instead (so that its last positions can be
        written, e.g. when the whole prompt is cached but its last token must be run again).
        """
        self._check_count("num_tokens", num_tokens, 0)
        prefix = [self._live_block(b) for b in prefix_blocks]
        if len(prefix) * self.block_size > num_tokens:
            raise KVPoolError(f"{len(prefix)} prefix blocks hold more than num_tokens = {num_tokens} tokens")
        if copy_last and not prefix:
            raise KVPoolError("copy_last needs at least one prefix block")
        shared = prefix[:-1] if copy_last else prefix
        fresh = self._alloc(_blocks_for(num_tokens, self.block_size) - len(shared))
        for b in shared:
            self._ref[b] += 1
        if copy_last:
            self._copy_block(prefix[-1], fresh[:1])
        return self._new_seq(shared + fresh, num_tokens)

    def retain(self, blocks: Iterable[int]) -> None:
        """Take a reference on live ``blocks`` (a holder other than a sequence, e.g. a prefix cache)."""
        blocks = [self._live_block(b) for b in blocks]
        for b in blocks:
            self._ref[b] += 1

    def release(self, blocks: Iterable[int]) -> None:
        """Drop a :meth:`retain` reference; blocks nobody holds return to the pool."""
        blocks = [self._live_block(b) for b in blocks]
        for b in blocks:
            self._drop(b)

    def fork(self, seq: int, k: int = 1) -> List[int]:
        """``k`` children of ``seq`` sharing its full blocks, each with a copy of its partial last block."""
        s = self._get(seq)
        self._check_count("k", k, 0)
        partial = s.length % self.block_size != 0
        fresh = self._alloc(k if partial else 0)
        shared = s.blocks[:-1] if partial else s.blocks
        for b in shared:
            self._ref[b] += k
        if partial and k:
            self._copy_block(s.blocks[-1], fresh)
        return [self._new_seq(list(shared) + ([fresh[i]] if partial else []), s.length) for i in range(k)]

    def append(self, seqs: Union[int, Sequence[int]], num_tokens: int = 1, *, device=None) -> torch.Tensor:
        """Reserve ``num_tokens`` more tokens for each sequence; returns their slots.

        ``seqs`` an int -> int64 ``[num_tokens]``; a list -> int64 ``[len(seqs), num_tokens]``, on
        ``device`` (default: the pool's; ``"cpu"`` keeps them on the host, no transfer).
        Allocation is all or nothing: on :class:`OutOfBlocksError` no sequence grew.
        """
        single = isinstance(seqs, int) and not isinstance(seqs, bool)
        ids = [seqs] if single else list(seqs)
        self._check_count("num_tokens", num_tokens, 0)
        if len(set(ids)) != len(ids):
            raise KVPoolError(f"seqs lists a sequence more than once: {ids}")
        states = [self._get(i) for i in ids]
        bs = self.block_size
        need = [_blocks_for(s.length + num_tokens, bs) - len(s.blocks) for s in states]
        fresh = self._alloc(sum(need))
        pos = 0
        for s, n in zip(states, need):
            s.blocks.extend(fresh[pos:pos + n])
            pos += n
        starts = [s.length for s in states]
        for s in states:
            s.length += num_tokens
        slots = self._slots(states, starts, num_tokens, device)
        return slots[0] if single else slots

    def truncate(self, seq: int, length: int) -> None:
        """Drop ``seq``'s tokens from position ``length`` on (e.g. undo an :meth:`append`); blocks past it go back."""
        s = self._get(seq)
        self._check_count("length", length, 0)
        if length > s.length:
            raise KVPoolError(f"cannot truncate sequence {seq} of {s.length} tokens to {length}")
        keep = _blocks_for(length, self.block_size)
        if length % self.block_size and self._ref[s.blocks[keep - 1]] > 1:
            raise KVPoolError(f"truncating sequence {seq} to {length} tokens would leave a shared block "
                              f"partly filled (appends would write into it)")
        for b in s.blocks[keep:]:
            self._drop(b)
        del s.blocks[keep:]
        s.length = length

    def slot_mapping(self, seq: int, start: int = 0, end: int = None) -> torch.Tensor:
        """int64 slots of positions ``[start, end)`` of ``seq`` (default: all its tokens)."""
        s = self._get(seq)
        end = s.length if end is None else end
        if not (0 <= start <= end <= s.length):
            raise KVPoolError(f"positions [{start}, {end}) are outside sequence {seq}'s [0, {s.length})")
        return self._slots([s], [start], end - start)[0]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``, ``v`` (``[*slots.shape, num_kv_heads, head_dim]``) at ``slots`` of ``layer``."""
        layer = self._layer(layer)
        want = (*slots.shape, self.num_kv_heads, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                raise KVPoolError(f"{name} must be a tensor of shape {want}, got "
                                  f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        flat = slots.reshape(-1).to(self.device)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_blocks * self.block_size):
            raise KVPoolError("slots must lie in [0, num_blocks * block_size)")
        hd = (self.num_kv_heads, self.head_dim)
        self._k[layer].view(-1, *hd)[flat] = k.reshape(-1, *hd).to(self.dtype)
        self._v[layer].view(-1, *hd)[flat] = v.reshape(-1, *hd).to(self.dtype)

    def free(self, seq: int) -> None:
        """Release ``seq``: its blocks return to the pool when no other sequence holds them."""
        s = self._get(seq)
        for b in s.blocks:
            self._drop(b)
        del self._seqs[seq]
        self._freed.add(seq)

    # -- kernel inputs ----------------------------------------------------------
    def block_tables(self, seqs: Iterable[int], max_blocks: int = None) -> torch.Tensor:
        """int32 ``[len(seqs), max_blocks]`` block tables (padded with block 0) on the pool's device.

        ``max_blocks`` defaults to the longest sequence's block count (fix it for static shapes).
        """
        states = [self._get(i) for i in seqs]
        lens = [len(s.blocks) for s in states]
        width = max(lens, default=0)
        if max_blocks is not None:
            if max_blocks < width:
                raise KVPoolError(f"max_blocks = {max_blocks} but a sequence holds {width} blocks")
            width = max_blocks
        flat = torch.tensor([b for s in states for b in s.blocks], dtype=torch.int32)
        table = torch.zeros(len(states), width, dtype=torch.int32)
        table[torch.arange(width)[None, :] < torch.tensor(lens, dtype=torch.int64)[:, None]] = flat
        return table.to(self.device)

    def seq_lens(self, seqs: Iterable[int]) -> torch.Tensor:
        """int32 ``[len(seqs)]`` token counts on the pool's device."""
        return torch.tensor([self._get(i).length for i in seqs], dtype=torch.int32, device=self.device)

    # -- internals --------------------------------------------------------------
    def _layer(self, layer):
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise KVPoolError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        return layer

    @staticmethod
    def _check_count(name, v, lo):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise KVPoolError(f"{name} must be an int >= {lo}, got {v!r}")

    def _get(self, seq) -> _Seq:
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise KVPoolError(f"a sequence id must be an int, got {seq!r}")
        s = self._seqs.get(seq)
        if s is not None:
            return s
        if seq in self._freed:
            raise KVPoolError(f"sequence {seq} was already freed (use after free or double free)")
        raise KVPoolError(f"unknown sequence {seq!r}")

    def _live_block(self, b) -> int:
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < self.num_blocks or self._ref[b] == 0:
            raise KVPoolError(f"block {b!r} is not a block in use of this pool")
        return b

    def _drop(self, b: int) -> None:
        self._ref[b] -= 1
        if self._ref[b] == 0:
            self._free.append(b)

    def _copy_block(self, src: int, dst: List[int]) -> None:
        idx = torch.tensor(dst, device=self.device)
        for cache in self._k + self._v:
            cache[idx] = cache[src].clone()

    def _reclaimable(self) -> int:
        r = self.reclaimer
        return 0 if r is None else r.reclaimable()

    def _alloc(self, n: int) -> List[int]:
        """n fresh blocks with reference count 1; raises before changing anything if too few are free.

        Short of free blocks, asks the :attr:`reclaimer` for the rest, but only when it can give them all.
        """
        short = n - len(self._free)
        if short > 0:
            spare = self._reclaimable()
            if short > spare:
                raise OutOfBlocksError(f"KV pool out of blocks: {n} needed, {len(self._free) + spare} of "
                                       f"{self.num_blocks} free (free finished sequences or grow the pool)")
            self.reclaimer.reclaim(short)
        out = [self._free.pop() for _ in range(n)]
        for b in out:
            self._ref[b] = 1
        return out

    def _new_seq(self, blocks, length) -> int:
        sid = self._next_id
        self._next_id += 1
        self._seqs[sid] = _Seq(blocks, length)
        return sid

    def _slots(self, states, starts, n, device=None) -> torch.Tensor:
        # plain Python over the tokens (a torch op per row cost ~70 us/row: 140 ms for 2048 rows)
        bs = self.block_size
        flat = [s.blocks[t // bs] * bs + t % bs for s, t0 in zip(states, starts) for t in range(t0, t0 + n)]
        out = torch.tensor(flat, dtype=torch.int64).view(len(states), n)
        return out.to(self.device if device is None else device)
