"""Pure-PyTorch tree attention: the dense oracle and the plan-executing fallback.

Every implementation takes the same materialised arguments::

    q             [N, Hq, D]                     float32 / bfloat16 / float16
    k_cache       [num_blocks, block_size, Hkv, D]  same dtype (NHD paged layout)
    v_cache       [num_blocks, block_size, Hkv, D]
    block_tables  int32 [N, M]
    seq_lens      int32 [N]
    plan          TreeAttentionPlan (see plan.py)
    scale         float
    return_lse    bool

and returns ``(out [N, Hq, D] in q's dtype, lse float32 [N, Hq])`` where
``lse[i, h] = log(sum_t exp(scale * q[i, h] . k_t))`` over the first
``seq_lens[i]`` tokens of row ``i`` (natural log).
"""
from __future__ import annotations

import torch

from .plan import TreeAttentionPlan
from .planner import segment_ids


def _gqa_scores(q, k, scale):
    """q [B, Hq, D], k [B, L, Hkv, D] -> scores float [B, Hkv, G, L]."""
    B, Hq, D = q.shape
    Hkv = k.shape[2]
    qg = q.reshape(B, Hkv, Hq // Hkv, D)
    return torch.einsum("bhgd,blhd->bhgl", qg, k) * scale


def paged_attention_dense(q, k_cache, v_cache, block_tables, seq_lens, scale=None, *,
                          compute_dtype=torch.float32):
    """Ordinary paged decode attention, row by row gathered in ``compute_dtype`` (the test oracle).

    Returns ``(out [N, Hq, D] in compute_dtype, lse [N, Hq] in compute_dtype)``.
    """
    N, Hq, D = q.shape
    bs = k_cache.shape[1]
    scale = D ** -0.5 if scale is None else scale
    M = block_tables.shape[1]
    L = M * bs
    # Gather every row's blocks: [N, M * bs, Hkv, D], positions >= seq_len masked out.
    idx = block_tables.long().clamp(0, k_cache.shape[0] - 1)
    k = k_cache[idx].reshape(N, L, *k_cache.shape[2:]).to(compute_dtype)
    v = v_cache[idx].reshape(N, L, *v_cache.shape[2:]).to(compute_dtype)
    s = _gqa_scores(q.to(compute_dtype), k, scale)                    # [N, Hkv, G, L]
    mask = torch.arange(L, device=q.device)[None, :] < seq_lens.long()[:, None]
    s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                  # [N, Hkv, G]
    p = torch.exp(s - lse[..., None])
    out = torch.einsum("bhgl,blhd->bhgd", p, v)
    return out.reshape(N, Hq, D), lse.reshape(N, Hq)


def tree_attention_dense(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse=True):
    """Implementation signature around :func:`paged_attention_dense` (ignores the plan)."""
    out, lse = paged_attention_dense(q, k_cache, v_cache, block_tables, seq_lens, scale)
    return out.to(q.dtype), lse.float()


def chunk_partials(q, k_cache, v_cache, block_tables, plan: TreeAttentionPlan, scale, *, max_pairs=4096):
    """Stage 1 of the plan: ``(out_partial float32 [P, Hq, D], lse_partial float32 [P, Hq])``.

    The KV of each chunk is gathered once; padding chunks (``chunk_len == 0``) are skipped.
    """
    N, Hq, D = q.shape
    bs = k_cache.shape[1]
    dev = q.device
    P = plan.num_pairs
    out_p = torch.zeros(P, Hq, D, dtype=torch.float32, device=dev)
    lse_p = torch.full((P, Hq), float("-inf"), dtype=torch.float32, device=dev)
    C = plan.num_chunks
    if C == 0 or P == 0:
        return out_p, lse_p
    counts = (plan.chunk_q_ptr[1:] - plan.chunk_q_ptr[:-1]).long()
    n_real = int(plan.chunk_q_ptr[-1])
    pair_chunk = segment_ids(counts, n_real)
    Lmax = max(int(plan.chunk_len.max()), 1)
    pos = plan.chunk_start.long()[:, None] + torch.arange(Lmax, device=dev)[None, :]   # [C, Lmax]
    inside = pos < (plan.chunk_start + plan.chunk_len).long()[:, None]
    col = torch.where(inside, pos // bs, 0)
    blocks = block_tables.long()[plan.chunk_row.long()[:, None], col]                   # [C, Lmax]
    slots = torch.where(inside, blocks * bs + pos % bs, 0)
    q_rows = plan.q_rows[:n_real].long()
    kf = k_cache.reshape(-1, *k_cache.shape[2:])
    vf = v_cache.reshape(-1, *v_cache.shape[2:])
    # Pairs in batches so that the expanded KV stays small.
    step = max(1, max_pairs * 256 // Lmax)
    for p0 in range(0, n_real, step):
        p1 = min(p0 + step, n_real)
        pc = pair_chunk[p0:p1]
        k = kf[slots[pc]].float()                                     # [B, Lmax, Hkv, D]
        v = vf[slots[pc]].float()
        qq = q[q_rows[p0:p1]].float()
        s = _gqa_scores(qq, k, scale)
        s = s.masked_fill(~inside[pc][:, None, None, :], float("-inf"))
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse[..., None])
        o = torch.einsum("bhgl,blhd->bhgd", p, v)
        out_p[p0:p1] = o.reshape(-1, Hq, D)
        lse_p[p0:p1] = lse.reshape(-1, Hq)
    return out_p, lse_p


def merge_partials(out_p, lse_p, plan: TreeAttentionPlan, num_rows):
    """Stage 2: merge each row's pairs by log-sum-exp -> ``(out float32 [N, Hq, D], lse float32 [N, Hq])``."""
    dev = out_p.device
    counts = (plan.row_pair_ptr[1:] - plan.row_pair_ptr[:-1]).long()
    n_listed = int(plan.row_pair_ptr[-1])
    pairs = plan.row_pairs[:n_listed].long()
    rows = segment_ids(counts, n_listed)
    Hq, D = out_p.shape[1:]
    lse_sel = lse_p[pairs]                                            # [P, Hq]
    m = torch.full((num_rows, Hq), float("-inf"), device=dev)
    m = m.scatter_reduce(0, rows[:, None].expand(-1, Hq), lse_sel, reduce="amax")
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lse_sel - m_safe[rows])                             # [P, Hq]
    denom = torch.zeros(num_rows, Hq, device=dev).index_add_(0, rows, w)
    out = torch.zeros(num_rows, Hq, D, device=dev).index_add_(0, rows, w[..., None] * out_p[pairs])
    out = out / denom[..., None]
    lse = m_safe + torch.log(denom)
    return out, lse


def tree_attention_reference(q, k_cache, v_cache, block_tables, seq_lens, plan, scale, return_lse=True):
    """Executes the plan in PyTorch: chunks -> partials -> LSE merge (the fallback implementation)."""
    out_p, lse_p = chunk_partials(q, k_cache, v_cache, block_tables, plan, scale)
    out, lse = merge_partials(out_p, lse_p, plan, q.shape[0])
    return out.to(q.dtype), lse
