"""The tree-attention planner: block tables -> :class:`TreeAttentionPlan`.

Rows whose block tables start with the same block ids form a trie; each run of
KV blocks shared by a set of rows becomes chunks that are read once for all of
them. The planner is a handful of vectorised torch ops over the ``[N, M]``
block table (no Python loop over rows, blocks or tokens) and runs on the device
of its inputs. It syncs with the host a few times (the plan's sizes are data
dependent), so build it once per decode step, outside any CUDA graph, and reuse
it for every layer.

Algorithm (``N`` rows, ``M`` block-table columns, ``bs`` tokens per block).
A row's *key* at column ``j`` is (block id, tokens of it the row uses) for the
blocks it uses; rows that share a block but use different numbers of its
tokens (a partial last block) do not share it.

1. Sort rows lexicographically by their block ids (``-1`` past a row's end),
   ties broken by ``seq_len`` (columns equal in every row are dropped first:
   they do not change the order). Rows sharing a key prefix are then contiguous.
2. ``lcp[r]`` = first column where sorted row ``r``'s key differs from row
   ``r - 1`` ("differs from previous row" flags, first set flag per row).
   Row ``r`` starts a new group at column ``j`` iff ``lcp[r] <= j``: the rows
   between two consecutive group starts share the prefix ``[0, j]`` (a trie node).
3. Groups only change at *breakpoint* columns (an ``lcp`` or a row's end), at
   most ``2N + 1`` of them; the group starts, sizes and validity are evaluated
   on that ``[N, K]`` grid only. A node's first row (its *leader*) leads it at
   every later column too, so a *segment* (a run of columns with the same row
   set) starts where a row becomes a leader or its group shrinks, and ends at
   the next start on the same row or at the row's last block.
4. Segments are split into chunks of at most ``chunk_size`` tokens (longer with
   ``wide_chunk_rows`` or ``parallelism``); each chunk lists its rows (pairs), and
   pairs are sorted per row into CSR form.

Cost: a few elementwise ops over the ``[N, M]`` table plus a row sort; the rest
is linear in breakpoints, chunks and pairs.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .. import _checks
from .plan import Parallelism, TreeAttentionPlan

DEFAULT_CHUNK_SIZE = 512
#: most that ``wide_chunk_rows`` or ``parallelism`` lengthens a chunk (x chunk_size)
WIDE_CHUNK_MAX_FACTOR = 16
#: the factors ``parallelism`` chooses from (powers of two up to :data:`WIDE_CHUNK_MAX_FACTOR`)
CHUNK_FACTORS = tuple(1 << i for i in range(WIDE_CHUNK_MAX_FACTOR.bit_length()))

_I32 = torch.int32


def plan_tree_attention(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, *,
                        chunk_size: Optional[int] = None, sharing: bool = True,
                        capacity: Optional[Tuple[int, int]] = None,
                        out: Optional[TreeAttentionPlan] = None,
                        validate: bool = True, wide_chunk_rows: Optional[int] = None,
                        parallelism: Optional[Parallelism] = None) -> TreeAttentionPlan:
    """Plan tree attention for one decode step (reusable by every layer).

    Parameters
    ----------
    block_tables : Tensor
        int32 ``[N, M]``: the KV block ids of each row (entries past a row's
        last block are ignored).
    seq_lens : Tensor
        int32 ``[N]``: tokens of each row, in ``[1, M * block_size]``.
    block_size : int
        Tokens per KV block (``k_cache.shape[1]``).
    chunk_size : int, optional
        Most tokens per chunk (rounded down to a multiple of ``block_size``,
        at least one block); default 512. Smaller chunks give the GPU more
        parallelism but more partial results to merge.
    sharing : bool
        ``False`` plans every row on its own (no KV read is shared): the
        "sharing disabled" baseline.
    capacity : (int, int), optional
        ``(capacity_chunks, capacity_pairs)``: pad the plan to this fixed size
        (for CUDA graphs, see plan.py); ``max_chunk_len`` is then the chunk
        size and ``max_rows_per_chunk`` is ``N`` so that the plan's scalars do
        not change between steps. Raises ``ValueError`` if the plan needs more.
        Bounds that always suffice: chunks and pairs ``<= sum_i ceil(seq_lens[i] / block_size)``.
    out : TreeAttentionPlan, optional
        A fixed-capacity plan (same N, block size and capacity) whose tensors
        are overwritten in place, e.g. the buffers a captured CUDA graph reads.
    validate : bool
        Check the values of ``seq_lens`` (a host sync on CUDA; planning syncs anyway).
    wide_chunk_rows : int, optional
        Longer chunks for widely shared segments: a segment shared by ``R``
        rows is cut into chunks of ``chunk_size * f`` tokens with ``f`` the
        largest power of two ``<= R / wide_chunk_rows``, clamped to
        ``[1, WIDE_CHUNK_MAX_FACTOR]``. Each chunk costs every one of its rows
        a partial output (``Hq * D`` values written and read back), so the
        partial traffic per KV byte of a segment grows as ``R / chunk_len``;
        this keeps it bounded when many rows share a prefix (Best-of-N with
        N = 256), while the kernels still split the rows into many programs.
        Default ``None``: every chunk has at most ``chunk_size`` tokens.
    parallelism : Parallelism, optional
        Load-balanced chunks for a backend that runs ``parallelism.programs``
        programs at once (the Triton kernel on a GPU:
        :func:`tts_kernels.attention.tree_attention_parallelism`; the engine and
        :func:`tree_attention` pass it on CUDA); with ``narrow_rows`` > 0 the
        chunks of at most that many rows run in a second launch of
        ``programs_narrow`` programs. The chunks of each launch are cut at
        ``chunk_size * f`` tokens, ``f`` a power of two up to
        ``WIDE_CHUNK_MAX_FACTOR``: the one of least estimated makespan over
        that launch's programs (:func:`makespan_estimate`: its work items by
        length, longest first, in rounds of one per program), the largest on a
        tie. A step has fewer, longer chunks whenever that costs no time, so
        fewer partial outputs to write and merge (a chunk costs each of its
        rows one), and short ones when the GPU would otherwise idle.
        Exclusive with ``wide_chunk_rows``.
        Costs one more host sync.
    """
    if _checks.checks_enabled():
        _check_inputs(block_tables, seq_lens, block_size, chunk_size, sharing, capacity, out, validate)
        if wide_chunk_rows is not None and (isinstance(wide_chunk_rows, bool) or not isinstance(wide_chunk_rows, int)
                                            or wide_chunk_rows < 1):
            raise ValueError(f"wide_chunk_rows must be a positive int, got {wide_chunk_rows!r}")
        _check_parallelism(parallelism, wide_chunk_rows)
    if out is not None and capacity is None:
        capacity = (out.num_chunks, out.num_pairs)
    cs = base_chunk_len(block_size, chunk_size)
    plan = _build(block_tables, seq_lens, int(block_size), cs, bool(sharing), wide_chunk_rows, parallelism)
    if capacity is not None:
        plan = pad_plan(plan, capacity[0], capacity[1],
                        max_chunk_len=max_chunk_len_bound(block_size, chunk_size,
                                                          bool(wide_chunk_rows or parallelism)))
    if out is not None:
        for dst, src in zip(out.tensors(), plan.tensors()):
            dst.copy_(src)
        out.max_chunk_len = plan.max_chunk_len
        out.max_rows_per_chunk = plan.max_rows_per_chunk
        return out
    return plan


def pad_plan(plan: TreeAttentionPlan, capacity_chunks: int, capacity_pairs: int, *,
             max_chunk_len: Optional[int] = None) -> TreeAttentionPlan:
    """Pad ``plan`` to ``capacity_chunks`` chunks and ``capacity_pairs`` pairs (see plan.py)."""
    C, P = plan.num_chunks, plan.num_pairs
    if capacity_chunks < C or capacity_pairs < P:
        raise ValueError(f"capacity ({capacity_chunks} chunks, {capacity_pairs} pairs) is too small for this "
                         f"step's plan ({C} chunks, {P} pairs)")
    dc, dp = capacity_chunks - C, capacity_pairs - P

    def pad(t, n, value):
        return torch.cat([t, t.new_full((n,), value)]) if n else t

    return TreeAttentionPlan(
        block_size=plan.block_size, num_rows=plan.num_rows,
        chunk_row=pad(plan.chunk_row, dc, 0),
        chunk_start=pad(plan.chunk_start, dc, 0),
        chunk_len=pad(plan.chunk_len, dc, 0),
        chunk_q_ptr=pad(plan.chunk_q_ptr, dc, P),
        q_rows=pad(plan.q_rows, dp, 0),
        row_pair_ptr=plan.row_pair_ptr,
        row_pairs=pad(plan.row_pairs, dp, 0),
        max_chunk_len=max(plan.max_chunk_len, max_chunk_len or 0),
        max_rows_per_chunk=max(plan.max_rows_per_chunk, plan.num_rows),
    )


def _check_parallelism(parallelism, wide_chunk_rows):
    if parallelism is None:
        return
    if not isinstance(parallelism, Parallelism):
        raise TypeError(f"parallelism must be a Parallelism (tts_kernels.attention.tree_attention_parallelism), "
                        f"got {type(parallelism).__name__}")
    for name, v in parallelism._asdict().items():
        # a narrow launch (narrow_rows > 0) needs programs; without one, programs_narrow is 0
        least = 0 if name == "narrow_rows" or (name == "programs_narrow" and not parallelism.narrow_rows) else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"parallelism.{name} must be an int >= {least}, got {v!r}")
    if wide_chunk_rows is not None:
        raise ValueError("pass wide_chunk_rows or parallelism, not both (two rules for the chunk length)")


def base_chunk_len(block_size: int, chunk_size: Optional[int] = None) -> int:
    """Tokens per chunk before any lengthening: ``chunk_size`` (default :data:`DEFAULT_CHUNK_SIZE`)
    rounded down to a multiple of ``block_size``, at least one block."""
    cs = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    return max(int(block_size), cs // int(block_size) * int(block_size))


def max_chunk_len_bound(block_size: int, chunk_size: Optional[int] = None, lengthened: bool = False) -> int:
    """The longest chunk a plan may hold (a fixed-capacity plan's ``max_chunk_len``):
    :func:`base_chunk_len`, times :data:`WIDE_CHUNK_MAX_FACTOR` when ``wide_chunk_rows`` or
    ``parallelism`` may lengthen chunks."""
    return base_chunk_len(block_size, chunk_size) * (WIDE_CHUNK_MAX_FACTOR if lengthened else 1)


def makespan_estimate(tokens: torch.Tensor, items: torch.Tensor, chunk_len: int, programs: int) -> torch.Tensor:
    """Estimated time (in tokens) of one launch of ``programs`` programs over segments of ``tokens``
    tokens, ``items[s]`` (work item, KV head) pairs each, cut into chunks of ``chunk_len`` tokens.

    The items, longest first, in rounds of one per program, each round as long as its longest item:
    the sum over rounds (a lower bound on neither side, but it sees the mean load, the longest item and
    the rounds that short leftover chunks add). A 0-d int64 tensor on the segments' device (no host
    sync): the items are the full chunks (``chunk_len`` tokens, the longest: ``ceil(F / P)`` rounds)
    and each segment's remainder, sorted, whose rounds come from the cumulative counts,
    ``sum_j len_j x (ceil(C_j / P) - ceil(C_{j-1} / P))`` with ``C_0 = F``."""
    L, P = int(chunk_len), int(programs)
    full = tokens // L
    rem = tokens - full * L
    n_full = (full * items).sum()
    order = torch.argsort(rem, descending=True)
    rem, counts = rem[order], torch.where(rem > 0, items, 0)[order]
    c = n_full + torch.cumsum(counts, 0)
    rounds = (c + P - 1) // P - (c - counts + P - 1) // P  # rounds whose longest item is this remainder
    return L * ((n_full + P - 1) // P) + (rem * rounds).sum()


def balanced_chunk_factor(makespans: Sequence[int]) -> int:
    """``f`` of ``parallelism`` for one launch: ``makespans[i]`` is its :func:`makespan_estimate` with
    chunks of ``chunk_size * CHUNK_FACTORS[i]`` tokens. The factor of the least, the largest on a tie
    (fewer partial outputs for the same time)."""
    return max(f for x, f in zip(makespans, CHUNK_FACTORS) if x == min(makespans))


def _check_inputs(block_tables, seq_lens, block_size, chunk_size, sharing, capacity, out, validate):
    _checks.check_tensor("block_tables", block_tables, dim=2, dtypes=(torch.int32,))
    _checks.check_tensor("seq_lens", seq_lens, dim=1, dtypes=(torch.int32,), device=block_tables.device)
    if seq_lens.shape[0] != block_tables.shape[0]:
        raise ValueError(f"seq_lens must have shape [{block_tables.shape[0]}] (one entry per block_tables row), "
                         f"got {tuple(seq_lens.shape)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not isinstance(sharing, bool):
        raise TypeError(f"sharing must be a bool, got {sharing!r}")
    if capacity is not None:
        if (not isinstance(capacity, (tuple, list)) or len(capacity) != 2
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in capacity)):
            raise ValueError(f"capacity must be a pair of non-negative ints (chunks, pairs), got {capacity!r}")
    if out is not None:
        if not isinstance(out, TreeAttentionPlan):
            raise TypeError(f"out must be a TreeAttentionPlan, got {type(out).__name__}")
        if out.num_rows != block_tables.shape[0] or out.block_size != block_size:
            raise ValueError(f"out was planned for {out.num_rows} rows and block size {out.block_size}, "
                             f"not {block_tables.shape[0]} rows and block size {block_size}")
        if out.chunk_row.device != block_tables.device:
            raise ValueError(f"out is on {out.chunk_row.device} but block_tables are on {block_tables.device}")
        if capacity is not None and tuple(capacity) != (out.num_chunks, out.num_pairs):
            raise ValueError(f"capacity {tuple(capacity)} differs from out's ({out.num_chunks}, {out.num_pairs})")
    if validate:
        check_seq_lens(seq_lens, block_tables.shape[1] * block_size)


def check_seq_lens(seq_lens, max_tokens):
    """seq_lens must lie in [1, max_tokens] (max_tokens = block_tables columns * block_size)."""
    if seq_lens.numel() == 0:
        return
    bad = (seq_lens <= 0) | (seq_lens > max_tokens)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        v = int(seq_lens[i])
        if v <= 0:
            raise ValueError(f"seq_lens[{i}] = {v} must be positive")
        raise ValueError(f"seq_lens[{i}] = {v} exceeds the {max_tokens} tokens that block_tables' "
                         f"columns can hold")


def segment_ids(counts: torch.Tensor, total: int) -> torch.Tensor:
    """``repeat_interleave(arange(len(counts)), counts)`` (int64, ``total`` = counts.sum()).

    By binary search over the cumulative counts: torch's CPU repeat_interleave
    costs tens of milliseconds per call regardless of size.
    """
    return torch.searchsorted(torch.cumsum(counts, 0), torch.arange(total, device=counts.device), right=True)


def _lexsort_rows(key: torch.Tensor) -> torch.Tensor:
    """Permutation that sorts the rows of an integer [N, K] tensor lexicographically."""
    N = key.shape[0]
    if N <= 1:
        return torch.arange(N, device=key.device)
    key = key[:, (key != key[:1]).any(0)]  # columns equal in all rows do not change the order
    if key.shape[1] == 1:
        return torch.argsort(key[:, 0], stable=True)
    if key.shape[1] == 0:
        return torch.arange(N, device=key.device)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # ranks of rows in lexicographic order
    return torch.argsort(inverse, stable=True)


def _build(block_tables, seq_lens, bs, cs, sharing, wide_chunk_rows=None, parallelism=None) -> TreeAttentionPlan:
    dev = block_tables.device
    N, M = block_tables.shape
    if N == 0 or M == 0:
        z = torch.zeros(0, dtype=_I32, device=dev)
        return TreeAttentionPlan(bs, N, z, z, z, torch.zeros(1, dtype=_I32, device=dev), z,
                                 torch.zeros(N + 1, dtype=_I32, device=dev), z, 0, 0)
    sl = seq_lens.to(torch.int64)
    nb = (sl + bs - 1) // bs                                   # blocks used by each row
    ridx = torch.arange(N, device=dev)

    if sharing:
        # Rows sorted by (block ids, -1 past the end), ties broken by seq_len: rows sharing a trie
        # node (same block ids and same tokens used of each) are then contiguous. Columns equal in
        # every row change neither the order nor where rows first differ: only the others are kept.
        col = torch.arange(M, device=dev, dtype=torch.int32)
        masked = torch.where(col[None, :] < nb.to(torch.int32)[:, None], block_tables, -1)
        cols = (masked != masked[:1]).any(0).nonzero()[:, 0]
        masked = masked[:, cols]
        order = _lexsort_rows(torch.cat([masked, seq_lens[:, None]], 1))
        masked, sl, nb = masked[order], sl[order], nb[order]
        # lcp[r]: first column where sorted row r's key differs from row r - 1 (M: never).
        diff = masked[1:] != masked[:-1]
        if cols.numel():
            fd = torch.where(diff.any(1), cols[diff.to(torch.uint8).argmax(1)], M)
        else:
            fd = torch.full((N - 1,), M, dtype=torch.int64, device=dev)
        m = torch.minimum(nb[1:], nb[:-1])                      # both rows use columns < m
        used_a = (sl[1:] - (m - 1) * bs).clamp(max=bs)          # tokens used of column m - 1
        used_b = (sl[:-1] - (m - 1) * bs).clamp(max=bs)
        partial_differs = (fd >= m) & (used_a != used_b)
        lcp = torch.where(partial_differs, m - 1, fd)
        lcp = torch.cat([lcp.new_zeros(1), lcp])                # row 0 starts a group everywhere
    else:
        order = ridx
        lcp = torch.zeros(N, dtype=torch.int64, device=dev)

    # Group membership only changes at breakpoint columns: an lcp or a row's end.
    X = torch.unique(torch.cat([lcp.clamp(max=M), nb, lcp.new_zeros(1)]))   # sorted
    X = X[X < M]
    newgroup = lcp[:, None] <= X[None, :]                     # [N, K]
    valid = X[None, :] < nb[:, None]
    K = X.shape[0]

    # Group size of each leader: next row that starts a group at this column, minus the leader's row.
    starts_at = torch.where(newgroup, ridx[:, None], N)
    next_start = torch.flip(torch.cummin(torch.flip(starts_at, (0,)), dim=0).values, (0,))
    next_start = torch.cat([next_start[1:], torch.full((1, K), N, device=dev, dtype=next_start.dtype)])
    size = next_start - ridx[:, None]
    leader = newgroup & valid
    seg_start = leader.clone()
    seg_start[:, 1:] &= ~leader[:, :-1] | (size[:, 1:] != size[:, :-1])

    sr, sx = seg_start.nonzero(as_tuple=True)                  # row-major: rows, then columns ascending
    same_row_next = torch.cat([sr[1:] == sr[:-1], sr.new_zeros(1, dtype=torch.bool)])
    sj = X[sx]
    ej = torch.where(same_row_next, torch.cat([sj[1:], sj.new_zeros(1)]), nb[sr])   # exclusive end column
    tok0 = sj * bs
    tok1 = torch.minimum(ej * bs, sl[sr])
    nrows = size[sr, sx]

    # Split segments into chunks of at most cs tokens (cs * f for segments shared by many rows, or for
    # the segments of each launch that parallelism balances).
    if parallelism is not None and nrows.numel():
        # Each launch is balanced over its own programs: the narrow chunks (at most narrow_rows rows, one
        # work item each) and the wider ones (ceil(R / rows_per_item) items: the kernel's windows follow
        # the global pair index, which can add one per chunk: an underestimate only). The work items of
        # each launch at every factor in one host sync.
        narrow = nrows <= parallelism.narrow_rows
        items = torch.where(narrow, 1, (nrows + parallelism.rows_per_item - 1) // parallelism.rows_per_item)
        items = items * parallelism.kv_heads
        tok = tok1 - tok0
        launches = [(~narrow, parallelism.programs)]
        if parallelism.narrow_rows:
            launches.append((narrow, parallelism.programs_narrow))
        est = torch.stack([makespan_estimate(tok, torch.where(m, items, 0), cs * f, programs)
                           for m, programs in launches for f in CHUNK_FACTORS]).tolist()
        k = len(CHUNK_FACTORS)
        f_wide = balanced_chunk_factor(est[:k])
        f_narrow = balanced_chunk_factor(est[k:]) if parallelism.narrow_rows else 1  # no narrow chunk
        cs = cs * torch.where(narrow, f_narrow, f_wide)
    elif wide_chunk_rows:
        f = (nrows // int(wide_chunk_rows)).clamp(1, WIDE_CHUNK_MAX_FACTOR)
        f = torch.pow(2, torch.floor(torch.log2(f.double())).long())
        cs = cs * f
    nchunk = (tok1 - tok0 + cs - 1) // cs
    C = int(nchunk.sum())
    seg_of = segment_ids(nchunk, C)
    first = torch.cumsum(nchunk, 0) - nchunk
    k = torch.arange(C, device=dev) - first[seg_of]
    cs_c = cs[seg_of] if torch.is_tensor(cs) else torch.full_like(k, cs)
    c_start = tok0[seg_of] + k * cs_c
    c_len = torch.minimum(tok1[seg_of] - c_start, cs_c)
    c_leader = sr[seg_of]
    c_rows = nrows[seg_of]

    # Pairs: every chunk with each of its rows.
    q_ptr = torch.cat([c_rows.new_zeros(1), torch.cumsum(c_rows, 0)])
    P = int(q_ptr[-1])
    pair_chunk = segment_ids(c_rows, P)
    within = torch.arange(P, device=dev) - q_ptr[:-1][pair_chunk]
    q_rows = order[c_leader[pair_chunk] + within]

    # CSR by row, each row's pairs by position.
    pair_key = q_rows * (int(M) * bs + 1) + c_start[pair_chunk]
    row_pairs = torch.argsort(pair_key)
    counts = torch.bincount(q_rows, minlength=N)
    row_ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

    return TreeAttentionPlan(
        block_size=bs, num_rows=N,
        chunk_row=order[c_leader].to(_I32),
        chunk_start=c_start.to(_I32),
        chunk_len=c_len.to(_I32),
        chunk_q_ptr=q_ptr.to(_I32),
        q_rows=q_rows.to(_I32),
        row_pair_ptr=row_ptr.to(_I32),
        row_pairs=row_pairs.to(_I32),
        max_chunk_len=int(c_len.max()) if C else 0,
        max_rows_per_chunk=int(c_rows.max()) if C else 0,
    )
