"""Public tree-attention API: :func:`tree_attention`, :func:`plan_tree_attention` and
:func:`tree_attention_parallelism`."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _checks
from . import impls
from .plan import Parallelism, TreeAttentionPlan
from .planner import check_seq_lens, plan_tree_attention, segment_ids



def tree_attention(q, k_cache, v_cache, block_tables, seq_lens, scale=None, plan=None, *,
                   return_lse=False, validate=True, backend="auto", chunk_size=None, sharing=True):
    """Paged decode attention for many sequences that share KV prefixes, reading shared KV once.

    The result equals ordinary paged decode attention: row ``i`` attends to the
    first ``seq_lens[i]`` tokens reached through ``block_tables[i]``. Rows whose
    block tables start with the same block ids (e.g. Best-of-N or beam search
    over one prompt, forked from a :class:`KVPool`) read those blocks once for
    all of them; partial results are merged by log-sum-exp.

    Parameters
    ----------
    q : Tensor
        ``[N, Hq, D]`` float16, bfloat16 or float32: one decode query per sequence.
    k_cache, v_cache : Tensor
        ``[num_blocks, block_size, Hkv, D]`` (the NHD paged layout of vLLM /
        flash-attn), q's dtype and device. ``Hq`` must be a multiple of ``Hkv`` (GQA).
    block_tables : Tensor
        int32 ``[N, M]``: KV block ids of each row; entries past a row's last block are ignored.
    seq_lens : Tensor
        int32 ``[N]``: tokens of each row, in ``[1, M * block_size]``.
    scale : float, optional
        Softmax scale; default ``1 / sqrt(D)``.
    plan : TreeAttentionPlan, optional
        From :func:`plan_tree_attention` for these block tables and sequence
        lengths; build it once per decode step and pass it to every layer.
        Planned here when omitted (not possible under ``torch.compile``: pass a plan there).
    return_lse : bool, keyword-only
        Also return the natural-log log-sum-exp of the scaled scores, float32 ``[N, Hq]``.
    validate : bool, keyword-only
        Check values: ``seq_lens`` in range, block ids used inside the pool,
        and that ``plan`` covers each row's ``seq_lens`` tokens (host syncs on
        CUDA). Shapes, dtypes and devices are always checked. Every check is
        skipped while compiling or capturing a CUDA graph.
    backend : {"auto", "reference", "cpp", "triton"}, keyword-only
        ``auto`` calls the registered op ``torch.ops.tts_kernels.tree_attention``,
        which runs the C++ kernel on CPU (the PyTorch reference when not built)
        and the Triton kernel on CUDA.
    chunk_size, sharing : keyword-only
        Passed to :func:`plan_tree_attention` when ``plan`` is omitted, with
        ``parallelism=tree_attention_parallelism(...)``: on CUDA (the Triton
        kernel) ``chunk_size`` is then the base length that load balancing may
        lengthen up to 16x; pass a plan built without ``parallelism`` for fixed
        chunks.

    Returns
    -------
    Tensor or (Tensor, Tensor)
        ``out [N, Hq, D]`` in q's dtype, and ``lse float32 [N, Hq]`` if ``return_lse``.

    Examples
    --------
    >>> pool = KVPool(num_blocks=64, block_size=16, num_kv_heads=2, head_dim=64)
    >>> root = pool.add_sequence(100); kids = pool.fork(root, 4)
    >>> plan = plan_tree_attention(pool.block_tables(kids), pool.seq_lens(kids), 16)
    >>> out = tree_attention(torch.randn(4, 8, 64), pool.k_cache(0), pool.v_cache(0),
    ...                      pool.block_tables(kids), pool.seq_lens(kids), plan=plan)
    """
    checking = _checks.checks_enabled()
    if checking:
        _check_inputs(q, k_cache, v_cache, block_tables, seq_lens, scale, plan, return_lse, validate, backend)
    N, Hq, D = q.shape
    bs = k_cache.shape[1]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if N == 0:
        out = q.new_empty((0, Hq, D))
        return (out, q.new_empty((0, Hq), dtype=torch.float32)) if return_lse else out
    if plan is None:
        plan = plan_tree_attention(block_tables, seq_lens, bs, chunk_size=chunk_size, sharing=sharing,
                                   validate=False,
                                   parallelism=tree_attention_parallelism(N, Hq, k_cache, backend=backend))
    elif checking and validate:
        _check_plan_covers(plan, seq_lens)
    q = q.contiguous()
    k_cache = k_cache.contiguous()
    v_cache = v_cache.contiguous()
    block_tables = block_tables.contiguous()
    if backend == "auto":
        out, lse = torch.ops.tts_kernels.tree_attention(
            q, k_cache, v_cache, block_tables, seq_lens, *plan.tensors(), float(scale),
            int(plan.max_chunk_len), int(plan.max_rows_per_chunk), bool(return_lse))
    else:
        out, lse = impls.get(backend)(q, k_cache, v_cache, block_tables, seq_lens, plan, float(scale),
                                      bool(return_lse))
    return (out, lse) if return_lse else out


def tree_attention_parallelism(num_rows: int, num_q_heads: int, k_cache: torch.Tensor, *,
                               backend: str = "auto") -> Optional[Parallelism]:
    """How the Triton kernel runs a plan on ``k_cache``'s GPU, for
    ``plan_tree_attention(..., parallelism=...)`` (load-balanced chunk lengths).

    Parameters
    ----------
    num_rows : int
        N, the query rows of the step.
    num_q_heads : int
        Query heads (a multiple of ``k_cache.shape[2]``).
    k_cache : Tensor
        ``[num_blocks, block_size, Hkv, D]``: the dtype, head dim, block size and
        device the kernel will run on.
    backend : str
        As for :func:`tree_attention`.

    Returns
    -------
    Parallelism or None
        ``None`` where the Triton kernel would not run the plan (off CUDA, or
        another backend): the planner then keeps ``chunk_size`` chunks.
    """
    if _checks.checks_enabled():
        if backend != "auto":
            impls.get(backend)  # ValueError naming the backends
        if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 0:
            raise ValueError(f"num_rows must be a non-negative int, got {num_rows!r}")
        if isinstance(num_q_heads, bool) or not isinstance(num_q_heads, int) or num_q_heads < 1:
            raise ValueError(f"num_q_heads must be a positive int, got {num_q_heads!r}")
        if len(k_cache.shape) != 4:
            raise ValueError(f"k_cache must have 4 dimensions [num_blocks, block_size, Hkv, D], "
                             f"got shape {tuple(k_cache.shape)}")
        if k_cache.shape[2] == 0 or num_q_heads % k_cache.shape[2]:
            raise ValueError(f"num_q_heads ({num_q_heads}) must be a multiple of k_cache's {k_cache.shape[2]} "
                             f"KV heads")
    if k_cache.device.type != "cuda" or backend not in ("auto", "triton"):
        return None
    if backend == "auto" and impls.default_for(k_cache.device) is not impls.get("triton"):
        return None
    from .triton_kernel import parallelism  # imports triton lazily

    _, bs, Hkv, D = k_cache.shape
    return parallelism(int(num_rows), int(num_q_heads), int(Hkv), int(D), k_cache.dtype, k_cache.device, int(bs))


def _check_inputs(q, k_cache, v_cache, block_tables, seq_lens, scale, plan, return_lse, validate, backend):
    if backend != "auto":
        impls.get(backend)  # ValueError naming the backends
    _checks.check_tensor("q", q, dim=3, dtypes=_checks.FLOAT_DTYPES)
    dev = q.device
    _checks.check_tensor("k_cache", k_cache, dim=4, device=dev)
    _checks.check_tensor("v_cache", v_cache, dim=4, device=dev)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}; they must match")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache has shape {tuple(v_cache.shape)} but k_cache has {tuple(k_cache.shape)}")
    N, Hq, D = q.shape
    nblk, bs, Hkv, Dk = k_cache.shape
    if Dk != D:
        raise ValueError(f"k_cache head dim {Dk} differs from q's head dim {D}")
    if D == 0 or Hq == 0:
        raise ValueError(f"q must have at least one head and a non-empty head dim, got shape {tuple(q.shape)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q's {Hq} heads must be a multiple of k_cache's {Hkv} KV heads (GQA)")
    if bs == 0:
        raise ValueError("k_cache must have a non-zero block size (dim 1)")
    _checks.check_tensor("block_tables", block_tables, dim=2, dtypes=(torch.int32,), device=dev)
    _checks.check_tensor("seq_lens", seq_lens, dim=1, dtypes=(torch.int32,), device=dev)
    if block_tables.shape[0] != N:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows but q has {N}")
    if seq_lens.shape[0] != N:
        raise ValueError(f"seq_lens must have shape [{N}], got {tuple(seq_lens.shape)}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a float or None, got {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {return_lse!r}")
    if plan is not None:
        _check_plan(plan, N, bs, dev)
    if validate and N > 0:
        check_seq_lens(seq_lens, block_tables.shape[1] * bs)
        _check_block_ids(block_tables, seq_lens, bs, nblk)


def _check_plan(plan, N, bs, dev):
    if not isinstance(plan, TreeAttentionPlan):
        raise TypeError(f"plan must be a TreeAttentionPlan from plan_tree_attention, got {type(plan).__name__}")
    if plan.num_rows != N:
        raise ValueError(f"plan was built for {plan.num_rows} rows but q has {N}")
    if plan.block_size != bs:
        raise ValueError(f"plan was built for block size {plan.block_size} but k_cache has {bs}")
    for name in TreeAttentionPlan.TENSORS:
        t = getattr(plan, name)
        _checks.check_tensor(f"plan.{name}", t, dim=1, dtypes=(torch.int32,), device=dev)
    for name, n in TreeAttentionPlan.lengths(plan.num_chunks, N, plan.num_pairs).items():
        if getattr(plan, name).shape[0] != n:
            raise ValueError(f"plan.{name} must have {n} entries, got {getattr(plan, name).shape[0]}")


def _check_block_ids(block_tables, seq_lens, bs, num_blocks):
    """Block ids a row uses (columns < ceil(seq_len / bs)) must lie in [0, num_blocks)."""
    nb = (seq_lens.long() + bs - 1) // bs
    used = torch.arange(block_tables.shape[1], device=block_tables.device)[None, :] < nb[:, None]
    bad = used & ((block_tables < 0) | (block_tables >= num_blocks))
    if bool(bad.any()):
        i, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"block_tables[{i}, {j}] = {int(block_tables[i, j])} is outside the pool's "
                         f"{num_blocks} blocks [0, {num_blocks})")


def _check_plan_covers(plan, seq_lens):
    """Every row's pairs must add up to its seq_lens tokens (catches a plan from another step)."""
    N = plan.num_rows
    n_listed = int(plan.row_pair_ptr[-1])
    counts = (plan.row_pair_ptr[1:] - plan.row_pair_ptr[:-1]).long()
    if n_listed > plan.num_pairs or bool((counts < 0).any()):
        raise ValueError("plan.row_pair_ptr is inconsistent with plan.row_pairs")
    pairs = plan.row_pairs[:n_listed].long()
    if n_listed and (bool((pairs < 0).any()) or bool((pairs >= plan.num_pairs).any())):
        raise ValueError("plan.row_pairs has pair ids outside [0, num_pairs)")
    rows = segment_ids(counts, n_listed)
    counts_c = (plan.chunk_q_ptr[1:] - plan.chunk_q_ptr[:-1]).long()
    if counts_c.numel() and int(counts_c.max()) > plan.max_rows_per_chunk:
        # the Triton kernel picks its launches by this bound: a wider chunk would be skipped
        raise ValueError(f"plan.max_rows_per_chunk = {plan.max_rows_per_chunk} but a chunk has "
                         f"{int(counts_c.max())} rows (it must bound chunk_q_ptr[c+1] - chunk_q_ptr[c])")
    pair_chunk = segment_ids(counts_c, int(plan.chunk_q_ptr[-1]))
    if n_listed and bool((pairs >= pair_chunk.shape[0]).any()):
        raise ValueError("plan.row_pairs lists pairs beyond plan.chunk_q_ptr")
    if n_listed and bool((plan.q_rows.long()[pairs] != rows).any()):
        raise ValueError("plan.q_rows disagrees with plan.row_pairs")
    tokens = torch.zeros(N, dtype=torch.int64, device=seq_lens.device)
    tokens.index_add_(0, rows, plan.chunk_len.long()[pair_chunk[pairs]])
    bad = tokens != seq_lens.long()
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"plan covers {int(tokens[i])} tokens of row {i} but seq_lens[{i}] = {int(seq_lens[i])}: "
                         f"the plan was built for other block tables / sequence lengths (re-plan every step)")
