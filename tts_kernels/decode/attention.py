"""Decode attention over the paged KV pool (the engine side of the model's attention interface).

:class:`PagedDecode` is built once per decode step for the rows being
stepped: it writes each layer's new K/V into the pool at the rows' new slots
and attends over the pool with

* ``"tree"`` (default): :func:`tts_kernels.tree_attention` with one
  :func:`tts_kernels.plan_tree_attention` plan per step shared by every layer,
  reading KV shared between forked sequences once;
* ``"tree-noshare"``: the same kernel with sharing disabled (every row reads its own KV);
* ``"torch"``: gather every row's blocks and attend with plain PyTorch (a
  simple reference; no kernel involved).
"""
from __future__ import annotations

import torch

from .model import expand_kv

BACKENDS = ("tree", "tree-noshare", "torch")


def paged_attention_torch(q, k_cache, v_cache, block_tables, seq_lens, scale):
    """Reference paged decode attention: ``q [N, Hq, D]`` over ``seq_lens[i]`` tokens of row i."""
    N, Hq, D = q.shape
    bs, Hkv = k_cache.shape[1], k_cache.shape[2]
    M = block_tables.shape[1]
    bt = block_tables.long()
    k = expand_kv(k_cache[bt].reshape(N, M * bs, Hkv, D), Hq // Hkv, 2).float()
    v = expand_kv(v_cache[bt].reshape(N, M * bs, Hkv, D), Hq // Hkv, 2).float()
    s = torch.einsum("nhd,nthd->nht", q.float(), k) * scale
    valid = torch.arange(M * bs, device=q.device)[None, :] < seq_lens.long()[:, None]
    s = s.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.einsum("nht,nthd->nhd", torch.softmax(s, -1), v).to(q.dtype)


class PagedDecode:
    """Attention callable for one decode step of ``seqs`` whose new tokens go to ``slots`` [N]."""

    def __init__(self, pool, seqs, slots, scale, backend="tree", chunk_size=None):
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        self.pool, self.scale, self.backend = pool, scale, backend
        self.slots = slots.reshape(-1).to(pool.device)
        self.block_tables = pool.block_tables(seqs)
        self.seq_lens = pool.seq_lens(seqs)
        self.plan = None
        if backend != "torch":
            from ..attention import plan_tree_attention
            self.plan = plan_tree_attention(self.block_tables, self.seq_lens, pool.block_size,
                                            chunk_size=chunk_size, sharing=backend == "tree", validate=False)

    def __call__(self, layer, q, k, v, positions):
        kc, vc = self.pool.k_cache(layer), self.pool.v_cache(layer)
        hd = kc.shape[2:]
        kc.view(-1, *hd)[self.slots] = k.to(kc.dtype)
        vc.view(-1, *hd)[self.slots] = v.to(vc.dtype)
        if self.backend == "torch":
            return paged_attention_torch(q, kc, vc, self.block_tables, self.seq_lens, self.scale)
        from ..attention import tree_attention
        return tree_attention(q, kc, vc, self.block_tables, self.seq_lens, self.scale, plan=self.plan,
                              validate=False)
