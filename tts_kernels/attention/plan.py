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
from typing import ClassVar, Dict, NamedTuple, Sequence, Tuple

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
    max_rows_per_chunk : int  upper bound of chunk_q_ptr[c+1] - chunk_q_ptr[c] (the Triton kernel's
                          launches rely on it: ``tree_attention(validate=True)`` checks it)
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

    #: the plan's tensors in the one order every layer uses: the registered op's schema, the kernels'
    #: arguments, padding, input checks and the engine's packed step buffer
    TENSORS: ClassVar[Tuple[str, ...]] = ("chunk_row", "chunk_start", "chunk_len", "chunk_q_ptr", "q_rows",
                                          "row_pair_ptr", "row_pairs")

    def tensors(self) -> Tuple[torch.Tensor, ...]:
        """The tensors in :attr:`TENSORS` order."""
        return tuple(getattr(self, name) for name in self.TENSORS)

    @staticmethod
    def lengths(num_chunks: int, num_rows: int, num_pairs: int) -> Dict[str, int]:
        """Entries of each tensor for C chunks, N rows and P pairs (in :attr:`TENSORS` order)."""
        C, N, P = num_chunks, num_rows, num_pairs
        return {"chunk_row": C, "chunk_start": C, "chunk_len": C, "chunk_q_ptr": C + 1, "q_rows": P,
                "row_pair_ptr": N + 1, "row_pairs": P}

    @classmethod
    def from_tensors(cls, block_size: int, num_rows: int, tensors: Sequence[torch.Tensor], max_chunk_len: int,
                     max_rows_per_chunk: int) -> "TreeAttentionPlan":
        """A plan from its tensors in :attr:`TENSORS` order."""
        return cls(block_size, num_rows, *tensors, max_chunk_len, max_rows_per_chunk)

    @property
    def num_chunks(self) -> int:
        return self.chunk_row.shape[0]

    @property
    def num_pairs(self) -> int:
        return self.q_rows.shape[0]


class Parallelism(NamedTuple):
    """How a backend runs a plan: what the planner's load-balanced chunk length needs
    (``plan_tree_attention(..., parallelism=...)``; the Triton kernel's comes from
    :func:`tts_kernels.attention.tree_attention_parallelism`).

    Attributes
    ----------
    rows_per_item : int
        Query rows one program takes per chunk: a chunk shared by ``R`` rows is
        ``ceil(R / rows_per_item)`` work items per KV head.
    kv_heads : int
        KV heads; every work item runs once per KV head.
    programs : int
        Programs running at once (SMs x programs per SM) on the chunks wider
        than ``narrow_rows``.
    narrow_rows : int
        Chunks of at most this many rows run in a launch of their own, one work
        item each (a smaller tile); 0 when every chunk runs in one launch.
    programs_narrow : int
        Programs running at once in that launch; 0 when there is none
        (``narrow_rows`` 0).
    """

    rows_per_item: int
    kv_heads: int
    programs: int
    narrow_rows: int
    programs_narrow: int
