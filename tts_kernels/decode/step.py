"""One decode step in two halves: host preparation, then one device function with no host sync.

Host, :func:`prepare_step` (after the engine's ``pool.append``): reads the
pool's host-side bookkeeping (block ids, lengths) and the sequences'
parameters, plans tree attention on CPU tensors, and packs everything the
device needs into **one int32 buffer** (pinned on CUDA) that reaches the
device in a single transfer::

    [R, B]  row fields (ROW_FIELDS): positions, slots, write_rows, seq_lens, tokens (teacher
            forcing), then the sampler's filters in tts_kernels/sampling/params.py order (float
            ones as float32 bits), seed_lo, seed_hi
    [B, M]  block tables
    then the tree-attention plan's tensors in TreeAttentionPlan.TENSORS order and lengths

Device, :func:`decode_step` (or :func:`decode_forward` without sampling):
unpacks views of that buffer, masks EOS for rows still thinking under a
budget, samples with :func:`tts_kernels.sample` (budget forcing, per-row
seeds), writes K/V into the pool and runs the model with tree attention. Every
shape is fixed by a :class:`StepShape`; nothing reads a tensor value on the
host and no Python branch depends on one, so the function traces with
``torch.compile(fullgraph=True, dynamic=False)`` (one graph per shape) and is
captured by :class:`CudaGraphStep`.

Buckets (``bucketed=True``): the batch is padded to a power of two rows with
inert rows (token 0 at position 0, temperature 0, no budget, a one-token read
of row 0's first block; their K/V write repeats row 0's, bits and slot, so the
pool is untouched), block tables to a power of two columns, and the plan to a
power-of-two capacity (:func:`tts_kernels.attention.planner.pad_plan`). Without
buckets every size is exact (the eager engine).
"""
from __future__ import annotations

import types
from collections import namedtuple
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..attention.plan import TreeAttentionPlan
from ..sampling import BudgetState, sample
from ..sampling.params import FILTER_NAMES, FILTERS
from ..sampling.budget import DONE, MAX_TOKENS, PHASE
from .attention import StepAttention

ROW_FIELDS = ("positions", "slots", "write_rows", "seq_lens", "tokens") + FILTER_NAMES + ("seed_lo", "seed_hi")
_F = {name: i for i, name in enumerate(ROW_FIELDS)}
# an inert padding row is greedy (temperature 0) with every filter off
_PAD_VALUE = {p.name: (0.0 if p.name == "temperature" else p.off) for p in FILTERS}


class StepShape(NamedTuple):
    """Every size a step's device function depends on (the bucket key)."""

    rows: int                   # B, padded batch
    blocks: int                 # M, block-table columns
    chunks: int                 # C, plan capacity (0 for attention="torch")
    pairs: int                  # P
    max_chunk_len: int          # the plan's scalars (constant for a padded plan)
    max_rows_per_chunk: int

    @property
    def size(self) -> int:
        B, M, C, P = self.rows, self.blocks, self.chunks, self.pairs
        plan = sum(TreeAttentionPlan.lengths(C, B, P).values()) if (C or P) else 0
        return len(ROW_FIELDS) * B + B * M + plan


def bucket(n: int) -> int:
    """The smallest power of two >= n (and >= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@dataclass
class StepBatch:
    """Host side of one step: the packed buffer and what the engine needs to know about it."""

    shape: StepShape
    packed: torch.Tensor        # int32 [shape.size] on the host (pinned when the model is on CUDA)
    num_rows: int               # real rows (the first num_rows of the B)
    kv_tokens_read: int         # KV tokens the real rows' attention reads (shared chunks once)
    kv_tokens_noshare: int      # ... and what per-row attention would read


def _float_bits(values: List[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(torch.int32)


def prepare_step(pool, sids: Sequence[int], positions: Sequence[int], slots: torch.Tensor,
                 params: Sequence[Tuple[float, int, float, float, int]], *, attention: str = "tree",
                 chunk_size: Optional[int] = None, bucketed: bool = False,
                 tokens: Optional[Sequence[int]] = None, pin: bool = False,
                 num_q_heads: Optional[int] = None) -> StepBatch:
    """Pack one step's inputs on the host (no device work, no sync).

    ``sids`` have just been appended one token each (``pool.append(sids, 1)``):
    ``positions[i]`` is the new token's position and ``slots`` (int64 ``[n]``,
    on the host) its slot. ``params[i]`` = (the sampler's filters in
    ``FILTER_NAMES`` order, i.e. temperature, top_k, top_p, min_p; then the
    seed). ``tokens``: the rows' input tokens for :func:`decode_forward`
    (teacher forcing); a sampling step leaves them 0. ``num_q_heads``: the
    model's query heads, for the load-balanced chunks of the Triton kernel
    when the pool is on CUDA (:func:`tts_kernels.attention.tree_attention_parallelism`).
    """
    from ..attention import tree_attention_parallelism
    from ..attention.planner import max_chunk_len_bound, pad_plan, plan_tree_attention
    n = len(sids)
    bs = pool.block_size
    blocks = [pool.block_ids(s) for s in sids]
    nb = [len(b) for b in blocks]
    B = bucket(n) if bucketed else n
    M = max(nb)
    M = bucket(M) if bucketed else M
    pad = B - n
    first_block = blocks[0][0]

    # rows: the real ones, then inert padding rows (see the module docstring)
    rowf = torch.zeros(len(ROW_FIELDS), B, dtype=torch.int32)
    rowf[_F["positions"], :n] = torch.tensor(list(positions), dtype=torch.int32)
    rowf[_F["slots"], :n] = slots.reshape(-1).to(torch.int32)
    rowf[_F["write_rows"]] = torch.cat([torch.arange(n, dtype=torch.int32), torch.zeros(pad, dtype=torch.int32)])
    seq_lens = rowf[_F["seq_lens"]]
    seq_lens[:n] = rowf[_F["positions"], :n] + 1
    seq_lens[n:] = 1
    cols = dict(zip(FILTER_NAMES + ("seed",), zip(*params)))
    for f in FILTERS:
        values = list(cols[f.name]) + [_PAD_VALUE[f.name]] * pad
        rowf[_F[f.name]] = _float_bits(values) if f.dtype.is_floating_point else torch.tensor(values, dtype=f.dtype)
    seeds = cols["seed"]
    rowf[_F["seed_lo"], :n] = torch.tensor([s & 0xFFFFFFFF for s in seeds], dtype=torch.int64).to(torch.int32)
    rowf[_F["seed_hi"], :n] = torch.tensor([s >> 32 for s in seeds], dtype=torch.int32)
    if tokens is not None:
        rowf[_F["tokens"], :n] = torch.tensor(list(tokens), dtype=torch.int32)

    # block tables [B, M] (padded with block 0; a padding row holds row 0's first block)
    counts = torch.tensor(nb + [1] * pad, dtype=torch.int64)
    bt = torch.zeros(B, M, dtype=torch.int32)
    bt[torch.arange(M)[None, :] < counts[:, None]] = torch.tensor(
        [b for bl in blocks for b in bl] + [first_block] * pad, dtype=torch.int32)

    noshare = int(seq_lens[:n].sum())
    if attention == "torch":
        shape = StepShape(B, M, 0, 0, 0, 0)
        plan_parts = []
        read = noshare
    else:
        par = None if num_q_heads is None else tree_attention_parallelism(B, num_q_heads, pool.k_cache(0))
        plan = plan_tree_attention(bt, seq_lens, bs, chunk_size=chunk_size, sharing=attention == "tree",
                                   validate=False, parallelism=par)
        if bucketed:
            plan = pad_plan(plan, bucket(plan.num_chunks), bucket(plan.num_pairs),
                            max_chunk_len=max_chunk_len_bound(bs, chunk_size, par is not None))
        shape = StepShape(B, M, plan.num_chunks, plan.num_pairs, plan.max_chunk_len, plan.max_rows_per_chunk)
        plan_parts = list(plan.tensors())
        # padding rows only share chunks with each other (they use one token of a block, real rows more)
        read = int(plan.chunk_len[plan.chunk_row < n].sum())
    parts = [rowf.reshape(-1), bt.reshape(-1)] + plan_parts
    if pin:
        packed = torch.empty(shape.size, dtype=torch.int32, pin_memory=True)
        torch.cat(parts, out=packed)
    else:
        packed = torch.cat(parts)
    return StepBatch(shape, packed, n, read, noshare)


#: device views of a packed step buffer: positions, slots, write_rows (int64 [B]), seq_lens (int32 [B]),
#: tokens (int64 [B]), the sampler's filters (their dtypes, [B]), seed (int64 [B]), block_tables
#: (int32 [B, M]) and the plan (None without tree attention)
StepTensors = namedtuple("StepTensors", ("positions", "slots", "write_rows", "seq_lens", "tokens") + FILTER_NAMES
                         + ("seed", "block_tables", "plan"))


def unpack(packed: torch.Tensor, shape: StepShape, block_size: int) -> StepTensors:
    """Views of ``packed`` (see :func:`prepare_step`): slices and casts only, fixed by ``shape``."""
    B, M, C, P = shape.rows, shape.blocks, shape.chunks, shape.pairs
    off = 0

    def take(n):
        nonlocal off
        t = packed[off:off + n]
        off += n
        return t

    rowf = take(len(ROW_FIELDS) * B).view(len(ROW_FIELDS), B)
    bt = take(B * M).view(B, M)
    f = {name: rowf[i] for i, name in enumerate(ROW_FIELDS)}
    plan = None
    if C or P:
        tensors = [take(n) for n in TreeAttentionPlan.lengths(C, B, P).values()]
        plan = TreeAttentionPlan.from_tensors(block_size, B, tensors, shape.max_chunk_len, shape.max_rows_per_chunk)
    filters = {p.name: f[p.name].view(torch.float32) if p.dtype.is_floating_point else f[p.name] for p in FILTERS}
    # a seed is split in (low 32 bits, high 32 bits) on the host; rebuilt by arithmetic (no bitcast)
    seed = f["seed_hi"].long() * 4294967296 + (f["seed_lo"].long() & 0xFFFFFFFF)
    return StepTensors(f["positions"].long(), f["slots"].long(), f["write_rows"].long(), f["seq_lens"],
                       f["tokens"].long(), **filters, seed=seed, block_tables=bt, plan=plan)


def _forward(model, k_caches, v_caches, t: StepTensors, tokens, attention):
    attn = StepAttention(k_caches, v_caches, t.slots, t.block_tables, t.seq_lens, t.plan, model.scale,
                         attention, write_rows=t.write_rows)
    return model.forward(tokens, t.positions, attn)


def decode_step(model, k_caches, v_caches, packed, logits, budget, *, shape: StepShape, block_size: int,
                attention: str, forcing, forced_ids, eos_mask):
    """Sample one token per row and run the model on it; device tensors in, device tensors out.

    Parameters
    ----------
    packed : int32 ``[shape.size]`` from :func:`prepare_step`, on the model's device.
    logits : float32 ``[B, V]``: each row's next-token logits.
    budget : int32 ``[B, 8]``: each row's budget-forcing state (not modified).
    forcing, forced_ids : the :class:`tts_kernels.BudgetForcing` and its ``forced_ids`` on the device.
    eos_mask : bool ``[V]``: end-of-sequence tokens, masked while a row thinks under a budget.

    Returns
    -------
    ``(host, next_logits, budget)``: float64 ``[2, B]`` (tokens, logprobs; the
    one tensor the engine copies to the host), float32 ``[B, V]``, int32 ``[B, 8]``.
    """
    t = unpack(packed, shape, block_size)
    # a row still thinking under a budget may not end the sequence: it must close thinking first
    thinking = (budget[:, PHASE] != DONE) & (budget[:, MAX_TOKENS] >= 0)
    logits = logits.masked_fill(thinking[:, None] & eos_mask[None, :], float("-inf"))
    rows = budget.clone()
    state = BudgetState(forcing, rows)
    state._forced_cache[forced_ids.device] = forced_ids    # no host->device copy inside the step
    out = sample(logits, **{name: getattr(t, name) for name in FILTER_NAMES}, seed=t.seed,
                 offset=t.positions, budget=state, check_nan=False, validate=False)
    # a row whose logits had a NaN/+inf gets token -1: it still runs the forward on a valid id so that
    # the step completes for every row (the engine then finishes that sequence)
    nxt = _forward(model, k_caches, v_caches, t, out.token_ids.clamp(min=0), attention)
    host = torch.stack([out.token_ids.double(), out.logprobs.double()])
    return host, nxt, rows


def decode_forward(model, k_caches, v_caches, packed, *, shape: StepShape, block_size: int, attention: str):
    """The model on the rows' given ``tokens`` (teacher forcing): next logits float32 ``[B, V]``."""
    t = unpack(packed, shape, block_size)
    return _forward(model, k_caches, v_caches, t, t.tokens, attention)


def make_step(model, k_caches, v_caches, *, shape: StepShape, block_size: int, attention: str, forcing,
              forced_ids, eos_mask, compile: Optional[str] = None) -> Callable:
    """``fn(packed, logits, budget) -> (host, next_logits, budget)`` for one bucket.

    With ``compile`` (a torch.compile backend name) the function is a private
    copy of the step (its own code object, so its own dynamo cache: one graph
    per bucket, and buckets never count against each other's recompile limit)
    compiled with ``fullgraph=True, dynamic=False``.
    """
    k_caches, v_caches = list(k_caches), list(v_caches)

    def step(packed, logits, budget):
        return decode_step(model, k_caches, v_caches, packed, logits, budget, shape=shape, block_size=block_size,
                           attention=attention, forcing=forcing, forced_ids=forced_ids, eos_mask=eos_mask)

    if compile is None:
        return step
    if compile not in ("eager", "aot_eager"):    # these run oneDNN's packed op as traced; Inductor needs
        model.keep_dense_weights()                # F.linear on dense weights (see Linear.keep_dense)
    name = f"decode_step_b{shape.rows}_m{shape.blocks}_c{shape.chunks}_p{shape.pairs}"
    own = types.FunctionType(step.__code__.replace(co_name=name), step.__globals__, name, step.__defaults__,
                             step.__closure__)
    return torch.compile(own, fullgraph=True, dynamic=False, backend=compile)


class CudaGraphStep:
    """A step function captured in a CUDA graph on first use, replayed afterwards.

    **Not run**: no GPU was available when this was written; the code follows
    the documented torch.cuda.graph recipe and its test runs only with CUDA.

    The first call copies its inputs into static buffers, runs the step twice
    on a side stream (Triton compilation, allocator warm-up), captures it and
    replays it. The step is idempotent for fixed inputs (the same K/V bits to
    the same slots, counter-based sampling, the budget input is not modified),
    so the warm-up runs change nothing. Later calls copy the inputs into the
    static buffers and replay. The outputs that outlive the step (next logits,
    budget rows) are cloned; ``host`` is read by the engine before the next replay.
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.graph = None
        self.static = None
        self.out = None

    def __call__(self, packed, logits, budget):
        if self.graph is None:
            self.static = (packed.clone(), logits.clone(), budget.clone())
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.fn(*self.static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.out = self.fn(*self.static)
            self.graph = graph
        else:
            for dst, src in zip(self.static, (packed, logits, budget)):
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        host, nxt, rows = self.out
        return host, nxt.clone(), rows.clone()
