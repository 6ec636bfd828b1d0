"""Decode attention over the paged KV pool (the engine side of the model's attention interface).

:class:`StepAttention` is the device half: given the step's tensors (new-token
slots, block tables, sequence lengths and, for the tree backends, a
:class:`tts_kernels.TreeAttentionPlan`), each layer writes its new K/V into
the pool at the rows' slots and attends over the pool with

* ``"tree"`` (default): :func:`tts_kernels.tree_attention` with one
  :func:`tts_kernels.plan_tree_attention` plan per step shared by every layer,
  reading KV shared between forked sequences once;
* ``"tree-noshare"``: the same kernel with sharing disabled (every row reads its own KV);
* ``"torch"``: gather every row's blocks and attend with plain PyTorch (a
  simple reference; no kernel involved).

It only runs tensor ops on fixed shapes (no host sync, no Python branch on
tensor values), so it traces with ``torch.compile(fullgraph=True)`` and can be
captured in a CUDA graph. :class:`PagedDecode` builds those tensors from the
pool for a list of sequences (the simple one-call form; the engine builds them
on the host instead, see :mod:`tts_kernels.decode.step`).
"""
from __future__ import annotations

from typing import Optional, Sequence

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


class StepAttention:
    """Attention callable of one decode step, from device tensors only.

    Parameters
    ----------
    k_caches, v_caches : sequence of Tensor
        The pool's per-layer caches ``[num_blocks, block_size, Hkv, D]``.
    slots : Tensor
        int64 ``[N]``: where each row's new K/V go.
    block_tables, seq_lens : Tensor
        int32 ``[N, M]`` and ``[N]`` (the new token included).
    plan : TreeAttentionPlan or None
        For the tree backends (``None`` with ``"torch"``).
    write_rows : Tensor, optional
        int64 ``[N]``: row ``i`` stores the K/V of row ``write_rows[i]`` at
        ``slots[write_rows[i]]``. The engine pads a batch with rows that point at
        row 0, so a padding row rewrites row 0's exact values (the same bits to
        the same slot) and never touches the rest of the pool.
    """

    def __init__(self, k_caches: Sequence[torch.Tensor], v_caches: Sequence[torch.Tensor], slots: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, plan, scale: float, backend: str = "tree",
                 write_rows: Optional[torch.Tensor] = None):
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        self.k_caches, self.v_caches = k_caches, v_caches
        self.block_tables, self.seq_lens, self.plan = block_tables, seq_lens, plan
        self.scale, self.backend, self.write_rows = scale, backend, write_rows
        self.slots = slots if write_rows is None else slots.index_select(0, write_rows)

    def __call__(self, layer, q, k, v, positions):
        kc, vc = self.k_caches[layer], self.v_caches[layer]
        if self.write_rows is not None:
            k, v = k.index_select(0, self.write_rows), v.index_select(0, self.write_rows)
        hd = kc.shape[2:]
        kc.view(-1, *hd)[self.slots] = k.to(kc.dtype)
        vc.view(-1, *hd)[self.slots] = v.to(vc.dtype)
        if self.backend == "torch":
            return paged_attention_torch(q, kc, vc, self.block_tables, self.seq_lens, self.scale)
        from ..attention import tree_attention
        return tree_attention(q, kc, vc, self.block_tables, self.seq_lens, self.scale, plan=self.plan,
                              validate=False)


class PagedDecode(StepAttention):
    """Attention callable for one decode step of ``seqs`` whose new tokens go to ``slots`` [N].

    Reads block tables and sequence lengths from ``pool`` and plans on the
    pool's device (the planner syncs with the host there); the engine prepares
    these on the host instead (:func:`tts_kernels.decode.step.prepare_step`).
    ``num_q_heads``: the model's query heads, for the load-balanced chunks of the
    Triton kernel on CUDA (as the engine plans them); ``None`` keeps ``chunk_size``.
    """

    def __init__(self, pool, seqs, slots, scale, backend="tree", chunk_size=None, num_q_heads=None):
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        self.pool = pool
        block_tables, seq_lens = pool.block_tables(seqs), pool.seq_lens(seqs)
        plan = None
        if backend != "torch":
            from ..attention import plan_tree_attention, tree_attention_parallelism
            par = None if num_q_heads is None else tree_attention_parallelism(len(seqs), num_q_heads,
                                                                              pool.k_cache(0))
            plan = plan_tree_attention(block_tables, seq_lens, pool.block_size, chunk_size=chunk_size,
                                       sharing=backend == "tree", validate=False, parallelism=par)
        super().__init__([pool.k_cache(i) for i in range(pool.num_layers)],
                         [pool.v_cache(i) for i in range(pool.num_layers)],
                         slots.reshape(-1).to(pool.device), block_tables, seq_lens, plan, scale, backend)
