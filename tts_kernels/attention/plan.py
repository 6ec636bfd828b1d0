"""The tree-attention plan: the contract between the planner and the kernels.

A plan splits the KV of a decode batch into *chunks*. A chunk is a run of
``chunk_len`` consecutive token positions ``[chunk_start, chunk_start + chunk_len)``
read through the block table of one representative row ``chunk_row``; every
query row that shares that run (identical leading block ids, and
``seq_len >= chunk_start + chunk_len``) is listed once for it, so the chunk's
KV is read once for all of them. ``chunk_start`` is a multiple of the block
size. A pair ``p`` is one (chunk, query row) combination.

Stage 1 (per chunk, per KV head, a tile of its query rows x the GQA group of
query heads) writes, for every pair ``p``::

    out_partial[p, h, :]  float32 [P, Hq, D]  softmax(scale * q k^T) v over the chunk
    lse_partial[p, h]     float32 [P, Hq]     log(sum(exp(scale * q k^T))) over the chunk

Stage 2 (per row) merges the row's pairs by log-sum-exp::

    LSE[i] = logsumexp_p lse_partial[p];  out[i] = sum_p exp(lse_partial[p] - LSE[i]) * out_partial[p]

Every row's pairs cover positions ``[0, seq_lens[i])`` exactly once.

Fixed capacity (CUDA graphs): a plan may be padded to ``capacity_chunks`` /
``capacity_pairs``. Padding chunks have ``chunk_len == 0`` and no pairs
(``chunk_q_ptr`` repeats); kernels skip them. Padding pairs are never listed in
``row_pair_ptr``/``row_pairs``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TreeAttentionPlan:
    """All tensors are int32 on the device of the queries.

    Attributes
    ----------
    block_size : int
        Tokens per KV block.
    num_rows : int
        N, the number of query rows (sequences).
    chunk_row : [C]       representative row whose block table gives the chunk's blocks
    chunk_start : [C]     first token position of the chunk (multiple of block_size)
    chunk_len : [C]       tokens in the chunk (0 for padding)
    chunk_q_ptr : [C + 1] CSR offsets into ``q_rows``
    q_rows : [P]          query row of each pair
    row_pair_ptr : [N + 1] CSR offsets into ``row_pairs``
    row_pairs : [P]       pair ids of each row, in increasing position order
    max_chunk_len : int   upper bound of chunk_len (kernels may size tiles by it)
    max_rows_per_chunk : int  upper bound of chunk_q_ptr[c+1] - chunk_q_ptr[c]
    """

    block_size: int
    num_rows: int
    chunk_row: torch.Tensor
    chunk_start: torch.Tensor
    chunk_len: torch.Tensor
    chunk_q_ptr: torch.Tensor
    q_rows: torch.Tensor
    row_pair_ptr: torch.Tensor
    row_pairs: torch.Tensor
    max_chunk_len: int
    max_rows_per_chunk: int

    @property
    def num_chunks(self) -> int:
        return self.chunk_row.shape[0]

    @property
    def num_pairs(self) -> int:
        return self.q_rows.shape[0]
