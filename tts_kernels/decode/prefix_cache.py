"""Automatic prefix caching for the engine: full prompt blocks shared across prompts and calls.

A prompt's full KV blocks are keyed by a hash chain of their tokens: the key
of block ``j`` is ``hash((key of block j - 1, token ids of block j))`` (the
first block's parent key is 0), so one key names the whole token prefix that
ends with the block. :class:`PrefixCache` maps keys to pool blocks and holds
one pool reference on each (:meth:`tts_kernels.KVPool.retain`), so a cached
block outlives the sequence that computed it. Each entry also stores its
parent key and tokens, and a lookup compares them: a hash collision is a miss,
never a wrong hit.

Eviction: the cache is the pool's :attr:`~tts_kernels.KVPool.reclaimer`.
When an allocation would not fit, the least recently used blocks that only
the cache holds are released (a lookup touches a chain leaf first, so a
chain's leaves are evicted before its root).

:class:`PagedPrefill` is the prefill attention that reads a row's cached
prefix from the pool: one packed forward over rows of new tokens, each after
its own prefix.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch

from .model import CausalPrefill, PrefixPrefill


def block_keys(ids: Sequence[int], block_size: int) -> List[int]:
    """Hash-chain keys of the full blocks of ``ids`` (``len(ids) // block_size`` of them)."""
    keys, parent = [], 0
    for j in range(len(ids) // block_size):
        parent = hash((parent, tuple(ids[j * block_size:(j + 1) * block_size])))
        keys.append(parent)
    return keys


class RowPlan(NamedTuple):
    """How a new prompt starts (see :meth:`PrefixCache.plan`)."""
    keys: List[int]         # block_keys of the prompt
    hit: List[int]          # cached blocks it starts with
    shared: int             # blocks it shares: ``hit``, then ones an earlier row of the batch computes
    copy_last: bool         # the whole prompt is cached: the last shared block is copied, its last token run again

    def start(self, block_size: int) -> int:
        """Position of the first token to prefill."""
        return self.shared * block_size - self.copy_last


def _follow(entries, ids, keys, j, parent, bs) -> int:
    """How many blocks from ``j`` on ``entries`` (key -> (parent, tokens, ...)) hold, checking tokens."""
    n = j
    for key in keys[j:]:
        e = entries.get(key)
        if e is None or e[0] != parent or e[1] != tuple(ids[n * bs:(n + 1) * bs]):
            break
        parent, n = key, n + 1
    return n - j


class PrefixCache:
    """Full KV blocks of earlier prompts, keyed by their token prefix, LRU-evicted.

    Parameters
    ----------
    pool : :class:`tts_kernels.KVPool`
        The pool whose blocks are cached; the cache installs itself as its reclaimer.
    """

    def __init__(self, pool):
        self.pool = pool
        self._entries: "OrderedDict[int, Tuple[int, tuple, int]]" = OrderedDict()  # key -> (parent, tokens, block)
        pool.reclaimer = self

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, ids: Sequence[int], keys: Sequence[int]) -> List[int]:
        """Blocks of the longest cached prefix of ``ids`` (``keys``: its :func:`block_keys`); touches them."""
        n = _follow(self._entries, ids, keys, 0, 0, self.pool.block_size)
        self.touch(keys[:n])
        return [self._entries[k][2] for k in keys[:n]]

    def plan(self, rows: Sequence[Sequence[int]]) -> List[RowPlan]:
        """Where each new prompt of a batch starts: its cached prefix, then the full blocks that an
        earlier row of the batch computes (so the batch computes a shared prefix once).

        At least one token of each prompt is left to run (for its next-token logits): a prompt
        cached whole shares all but a copy of its last block; if an earlier row computes that
        block, the row computes it again instead.
        """
        bs = self.pool.block_size
        pending: Dict[int, tuple] = {}          # key -> (parent, tokens) of blocks earlier rows compute
        plans = []
        for ids in rows:
            keys = block_keys(ids, bs)
            hit = self.match(ids, keys)
            n = len(hit)
            n += _follow(pending, ids, keys, n, keys[n - 1] if n else 0, bs)
            copy_last = n * bs == len(ids) and n == len(hit)
            if n * bs == len(ids) and not copy_last:
                n -= 1
            parent = keys[n - 1] if n else 0
            for j in range(n, len(keys)):
                pending.setdefault(keys[j], (parent, tuple(ids[j * bs:(j + 1) * bs])))
                parent = keys[j]
            plans.append(RowPlan(keys, hit, n, copy_last))
        return plans

    def insert(self, ids: Sequence[int], keys: Sequence[int], blocks: Sequence[int]) -> None:
        """Cache the full ``blocks`` holding ``ids`` (keys already cached, or taken by another prefix, are skipped)."""
        bs, parent = self.pool.block_size, 0
        for j, (key, b) in enumerate(zip(keys, blocks)):
            if key not in self._entries:
                self.pool.retain([b])
                self._entries[key] = (parent, tuple(ids[j * bs:(j + 1) * bs]), b)
            parent = key
        self.touch(keys[:len(blocks)])

    def touch(self, keys: Sequence[int]) -> None:
        """Mark a chain most recently used, its root last (so that leaves are evicted first)."""
        for key in reversed(keys):
            if key in self._entries:
                self._entries.move_to_end(key)

    def reclaimable(self) -> int:
        """Cached blocks no sequence holds (what eviction can free)."""
        ref = self.pool.ref_count
        return sum(1 for _, _, b in self._entries.values() if ref(b) == 1)

    def reclaim(self, n: int) -> None:
        """Evict the ``n`` least recently used blocks that no sequence holds."""
        ref = self.pool.ref_count
        victims = []
        for key, (_, _, b) in self._entries.items():
            if len(victims) == n:
                break
            if ref(b) == 1:
                victims.append(key)
        for key in victims:
            self.pool.release([self._entries.pop(key)[2]])

    def clear(self) -> None:
        """Drop every entry; blocks no sequence holds return to the pool."""
        blocks = [b for _, _, b in self._entries.values()]
        self._entries.clear()
        self.pool.release(blocks)


class PagedPrefill:
    """Attention for packed rows of new tokens, row ``r`` after the first ``starts[r]`` tokens of its sequence.

    The rows' slots are reserved in ``pool`` already. Each layer first writes every row's new
    K/V at ``slots``; then row ``r``'s queries attend to its keys ``[0, starts[r] + lens[r])``
    read back from the pool at ``key_slots[r]`` (so a row may read a prefix that an earlier row
    of the same batch is computing in this forward, in blocks they share). A row with
    ``starts[r] == 0`` attends to its own K/V. ``flash``: a ``flash_attn_varlen_func``
    (one call over the packed rows), else SDPA per row through the model's
    :class:`~tts_kernels.decode.model.CausalPrefill` / ``PrefixPrefill``.
    """

    def __init__(self, pool, slots: torch.Tensor, key_slots: List[torch.Tensor], starts: Sequence[int],
                 lens: Sequence[int], groups: int, scale: float, flash=None):
        self.pool, self.slots, self.key_slots = pool, slots, key_slots
        self.starts, self.lens, self.groups, self.scale, self.flash = list(starts), list(lens), groups, scale, flash

    def __call__(self, layer, q, k, v, positions):
        kc, vc = self.pool.k_cache(layer), self.pool.v_cache(layer)
        kc, vc = kc.view(-1, *kc.shape[2:]), vc.view(-1, *vc.shape[2:])
        kc[self.slots], vc[self.slots] = k.to(kc.dtype), v.to(vc.dtype)
        if self.flash is not None:
            return self._flash(q, kc, vc)
        out, t = [], 0
        for start, n, ks in zip(self.starts, self.lens, self.key_slots):
            if start == 0:
                attn = CausalPrefill(self.groups, self.scale)
            else:
                past = {layer: (kc[ks[:start]], vc[ks[:start]])}
                attn = PrefixPrefill(self.groups, self.scale, past)
            out.append(attn(layer, q[t:t + n], k[t:t + n], v[t:t + n], positions[t:t + n]))
            t += n
        return torch.cat(out)

    def _flash(self, q, kc, vc):
        # flash-attn aligns the causal mask bottom right: query t of a row sees keys [0, start + t]
        ks = torch.cat(self.key_slots)
        cu_q = torch.tensor([0] + self.lens, device=q.device).cumsum(0).to(torch.int32)
        tot = [s + n for s, n in zip(self.starts, self.lens)]
        cu_k = torch.tensor([0] + tot, device=q.device).cumsum(0).to(torch.int32)
        return self.flash(q, kc[ks].to(q.dtype), vc[ks].to(q.dtype), cu_q, cu_k, max(self.lens), max(tot),
                          softmax_scale=self.scale, causal=True)
