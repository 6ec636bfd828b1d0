"""The decode engine: sequences over a shared paged KV pool, forked and freed at the token level.

A search algorithm drives it with a handful of calls::

    eng = Engine(*load())                                 # the embedded tiny model
    root = eng.add("49+9-3-6=?<think>", temperature=0.8, max_thinking=64)
    kids = eng.fork(root, 8)                              # share the prompt's KV blocks
    eng.generate(kids, stop=["\\n\\n"])                    # one reasoning step each
    eng.text(kids[0]), eng.tokens(kids[0]), eng.logprobs(kids[0])
    eng.free(root)

Each sequence holds the logits of its next token (from the prefill or the
previous step), so a fork copies them and its children draw their own tokens.
One :meth:`step` samples every stepped row with :func:`tts_kernels.sample`
(budget forcing per row), reserves one KV slot per row in the pool, and runs
the model on the new tokens with decode attention over the pool
(:mod:`.attention`). Sampling is keyed by (per-sequence seed, position), so a
sequence's tokens do not depend on which other sequences share its batch.

A step is split in two (:mod:`.step`):

1. host: ``pool.append`` (block bookkeeping; :class:`tts_kernels.OutOfBlocksError`
   before anything changes), then block tables, sequence lengths, slots, the
   rows' sampling parameters and the tree-attention plan, all built from host
   data on CPU tensors and packed into one buffer that goes to the device in
   one transfer (pinned, non-blocking on CUDA);
2. device: one function of fixed-shape tensors (:func:`.step.decode_step`:
   EOS masking, ``tk.sample`` with the budget state, K/V writes, the model
   forward with tree attention) with no host sync inside. The engine stacks the
   rows' next-token logits and budget rows (device tensors) as its inputs.

The **one sync per step** is the copy of the new tokens and logprobs to the
host (stop/EOS checks, :meth:`tokens`), made after the whole step is enqueued.

Prefill (:meth:`add_many`, :meth:`extend_many`) is one packed forward over
rows of new tokens, each after the KV its sequence already has in the pool
(:class:`.prefix_cache.PagedPrefill`). With the prefix cache on (the default)
the full blocks of every prompt stay in an LRU cache keyed by a hash chain of
their tokens (:mod:`.prefix_cache`), and a new prompt shares the blocks of its
longest cached prefix (and those that an earlier prompt of the same call
computes) instead of computing them again, as vLLM's automatic prefix caching
does. Cached blocks that no sequence holds are evicted when the pool needs
them (:attr:`tts_kernels.KVPool.num_free_blocks` counts them as free).

``compile=True`` runs the device function through
``torch.compile(fullgraph=True, dynamic=False)``, and ``cuda_graphs=True``
captures it in a CUDA graph; both pad the batch to power-of-two buckets
(inert padding rows; block tables and the plan padded too), one graph per
bucket. The eager engine runs exact shapes. Prefill uses flash-attn's varlen
kernel when installed (CUDA, fp16/bf16), else SDPA (:mod:`.model`).
"""
from __future__ import annotations

import functools
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch

from .._progress import progress_bar
from ..sampling import BudgetForcing
from ..sampling.budget import DONE, NUM_THINKING, PHASE, WAITS_USED
from ..sampling.params import FILTER_NAMES, FILTERS
from . import step as _step
from .attention import BACKENDS
from .families import FAMILY_BUDGET_STRINGS, BudgetStrings, ModelFamily, family_of  # noqa: F401 (re-exported)
from .prefix_cache import PagedPrefill, PrefixCache, RowPlan

_INTEGER_PARAMS = {p.name: p.integer for p in FILTERS}  # the sampler's parameter record


def per_sequence_limits(max_new_tokens, n: int) -> List[int]:
    """``max_new_tokens`` (one limit for all, or one per sequence) as a list of ``n`` limits."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * n
    limits = [int(x) for x in max_new_tokens]
    if len(limits) != n:
        raise ValueError(f"max_new_tokens has {len(limits)} limits for {n} sequences")
    return limits


class _Seq:
    __slots__ = ("prompt", "out", "logprobs", "logits", "params", "seed", "budget", "finished")

    def __init__(self, prompt, logits, params, seed, budget):
        self.prompt: List[int] = prompt
        self.out: List[int] = []
        self.logprobs: List[float] = []
        self.logits: torch.Tensor = logits
        self.params: dict = params
        self.seed: int = seed
        self.budget: torch.Tensor = budget
        self.finished = False

    def copy(self, seed):
        s = _Seq(self.prompt, self.logits, dict(self.params), seed, self.budget.clone())
        s.out, s.logprobs, s.finished = list(self.out), list(self.logprobs), self.finished
        return s


class Engine:
    """Sequences of one model over a shared paged KV pool (a :class:`tts_kernels.KVPool`).

    Parameters
    ----------
    model : :class:`tts_kernels.decode.Model`
    tokenizer : :class:`tts_kernels.decode.Tokenizer`, optional (needed for text prompts, stop strings, text)
    num_blocks, block_size : int
        Pool geometry; :class:`tts_kernels.OutOfBlocksError` when it is full.
    budget_strings : BudgetStrings, optional
        End-of-thinking / Wait / answer-prefix strings (default: those of the model's family,
        :attr:`family`; the embedded model uses "</think>", "Wait", "Final Answer:").
    seed : int
        Base of the per-sequence sampling seeds.
    attention : {"tree", "tree-noshare", "torch"}
        Decode attention over the pool (see :mod:`tts_kernels.decode.attention`).
    compile : bool or str
        Run the decode step through ``torch.compile(fullgraph=True, dynamic=False)``
        (``True``: the inductor backend; a string names another backend, e.g.
        ``"aot_eager"``). Batches are padded to power-of-two buckets, one graph per
        bucket; each new bucket compiles once (slow on CPU: seconds to a minute).
    cuda_graphs : bool
        Capture the decode step in a CUDA graph per bucket (static input buffers,
        copy and replay); needs the model on CUDA, else ``ValueError``. Combines
        with ``compile``. **Untested**: no GPU has been available to this project.
    prefix_cache : bool
        Keep the full KV blocks of prompts in an LRU prefix cache
        (:class:`.prefix_cache.PrefixCache`), so that a prompt starting with a
        cached prefix shares its blocks instead of computing them again; blocks
        only the cache holds are evicted when the pool needs them.
        :meth:`clear_prefix_cache` drops it.
    """

    def __init__(self, model, tokenizer=None, *, num_blocks: int = 1024, block_size: int = 16,
                 budget_strings: Optional[BudgetStrings] = None, seed: int = 0, attention: str = "tree",
                 chunk_size: Optional[int] = None, track_kv: bool = False,
                 compile: Union[bool, str] = False, cuda_graphs: bool = False, prefix_cache: bool = True):
        from ..attention import KVPool
        c = model.cfg
        if attention not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {attention!r}")
        if cuda_graphs:
            if not torch.cuda.is_available():
                raise ValueError("cuda_graphs=True needs CUDA, and torch.cuda.is_available() is False "
                                 "(use compile=True for the CPU)")
            if model.device.type != "cuda":
                raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, it is on {model.device}")
        if not isinstance(compile, (bool, str)):
            raise TypeError(f"compile must be a bool or a torch.compile backend name, got {compile!r}")
        if num_blocks * block_size >= 2 ** 31:
            raise ValueError("num_blocks * block_size must be < 2**31 (slots are packed as int32)")
        self.model, self.tokenizer = model, tokenizer
        self.pool = KVPool(num_blocks, block_size, c.num_kv_heads, c.head_dim, c.num_layers,
                           dtype=model.dtype, device=model.device)
        self.prefix_cache = PrefixCache(self.pool) if prefix_cache else None
        self.attention, self.chunk_size, self.base_seed = attention, chunk_size, int(seed)
        self.compile = ("inductor" if compile is True else compile) or None
        self.cuda_graphs = bool(cuda_graphs)
        self._bucketed = self.compile is not None or self.cuda_graphs
        self._step_fns: Dict[_step.StepShape, object] = {}
        self._seqs: Dict[int, _Seq] = {}
        eos = set(c.eos_token_ids) | set(getattr(tokenizer, "eos_token_ids", ()) or ())
        self.eos_token_ids = tuple(sorted(eos))
        dev = model.device
        self._eos_mask = torch.zeros(c.vocab_size, dtype=torch.bool, device=dev)
        self._eos_mask[[t for t in self.eos_token_ids if 0 <= t < c.vocab_size]] = True
        self._pad_logits = torch.zeros(c.vocab_size, dtype=torch.float32, device=dev)
        self.forcing = None
        if tokenizer is not None:
            bs = budget_strings
            if bs is None:
                bs = self.family.budget_strings
            end = tokenizer.encode(bs.end_think)
            if end:
                self.forcing = BudgetForcing(end, tokenizer.encode(bs.wait) if bs.wait else (),
                                             tokenizer.encode(bs.answer_prefix) if bs.answer_prefix else ())
        self.track_kv = bool(track_kv)
        #: counters: tokens sampled by :meth:`step`, tokens fed by :meth:`feed`/:meth:`extend`, decode
        #: forwards, and (with ``track_kv=True``) KV tokens read by decode attention against what
        #: per-sequence attention would read (counted on the host from the step's plan); prompt tokens
        #: taken from the prefix cache and prompt tokens run by the prefill (:meth:`add_many`)
        self.stats = dict(tokens_sampled=0, tokens_fed=0, forwards=0, kv_tokens_read=0, kv_tokens_noshare=0,
                          prefix_hit_tokens=0, prefill_tokens=0)
        self.kv_bytes_per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * self.pool.k_cache(0).element_size()
        self._no_forcing = BudgetForcing([0])              # rows without a budget are never touched
        self._no_budget = self._no_forcing.init_state(1, device=dev).data[0]
        f = self.forcing or self._no_forcing
        self._forced_ids = torch.tensor(f.forced_ids, dtype=torch.int32, device=dev)

    @functools.cached_property
    def family(self) -> ModelFamily:
        """The model's family (:mod:`.families`): budget strings, prompt templates, embedded or not."""
        return family_of(self.model.cfg, self.tokenizer)

    # -- sequences ------------------------------------------------------------------------
    def add(self, prompt: Union[str, Sequence[int]], *, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, min_p: float = 0.0, min_thinking: int = 0, max_thinking: int = -1,
            min_waits: int = 0, seed: Optional[int] = None) -> int:
        """Prefill ``prompt`` (text or token ids) into the pool; returns the new sequence's id.

        With the prefix cache on, the longest cached block-aligned prefix of the
        prompt is shared, not computed again (see :meth:`add_many`).
        ``max_thinking >= 0`` turns on budget forcing for the sequence (its
        generation is thinking until the end-of-thinking string): at least
        ``min_thinking`` tokens and ``min_waits`` forced Waits, at most
        ``max_thinking`` tokens, then the end string and the answer prefix.
        While thinking under a budget the sequence cannot emit end-of-sequence
        (its EOS logits are masked), so it always closes thinking first.
        """
        return self.add_many([prompt], temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                             min_thinking=min_thinking, max_thinking=max_thinking, min_waits=min_waits,
                             seeds=None if seed is None else [seed])[0]

    def add_many(self, prompts: Sequence[Union[str, Sequence[int]]], *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, min_thinking: int = 0, max_thinking: int = -1,
                 min_waits: int = 0, seeds: Optional[Sequence[int]] = None) -> List[int]:
        """:meth:`add` of several prompts with the same parameters in one batched prefill; returns their ids.

        The prompts' tokens are packed into one forward (flash-attn's varlen
        kernel when it is used, else SDPA per prompt; see
        :mod:`tts_kernels.decode.model`). ``seeds``: one per prompt (default:
        derived from each sequence id, as :meth:`add`). All or nothing: on an
        error (e.g. :class:`tts_kernels.OutOfBlocksError`) no sequence is added.

        Prefix cache (``prefix_cache=True``): each prompt starts with the blocks of
        its longest cached prefix and of the full blocks an earlier prompt of the
        same call computes (:meth:`.prefix_cache.PrefixCache.plan`), and only the
        rest of it runs; its full blocks are cached afterwards. At least its last
        token always runs. ``stats["prefix_hit_tokens"]`` / ``stats["prefill_tokens"]``
        count the prompt tokens shared / computed.
        """
        rows = [self._encode(p) for p in prompts]
        if not rows:
            return []
        if min(map(len, rows)) == 0:
            raise ValueError("every prompt must have at least one token")
        if seeds is not None and len(seeds) != len(rows):
            raise ValueError(f"seeds must have one entry per prompt ({len(rows)}), got {len(seeds)}")
        budget = self._budget_row(min_thinking, max_thinking, min_waits)
        bs, cache = self.pool.block_size, self.prefix_cache
        plans = cache.plan(rows) if cache is not None else [RowPlan([], [], 0, False)] * len(rows)
        starts = [p.start(bs) for p in plans]
        sids = self._new_sequences(rows, plans)
        try:
            logits = self._prefill(sids, [ids[s:] for ids, s in zip(rows, starts)], starts)
        except Exception:
            self._free_new(sids)
            raise
        if cache is not None:
            for sid, ids, p in zip(sids, rows, plans):
                cache.insert(ids, p.keys, self.pool.block_ids(sid))
        self.stats["prefix_hit_tokens"] += sum(starts)
        self.stats["prefill_tokens"] += sum(map(len, rows)) - sum(starts)
        params = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), min_p=float(min_p))
        for j, (sid, ids) in enumerate(zip(sids, rows)):
            seed = None if seeds is None else seeds[j]
            self._seqs[sid] = _Seq(list(ids), logits[j], dict(params), self._seed(sid, seed), budget.clone())
        return sids

    def clear_prefix_cache(self) -> None:
        """Drop the prefix cache; its blocks that no sequence holds return to the pool."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def fork(self, sid: int, k: int = 1) -> List[int]:
        """``k`` copies of ``sid`` (tokens, logprobs, budget state, next-token logits) sharing its KV blocks."""
        parent = self._get(sid)
        kids = self.pool.fork(sid, k)
        for kid in kids:
            self._seqs[kid] = parent.copy(self._seed(kid, None))
        return kids

    def free(self, sids: Union[int, Iterable[int]]) -> None:
        """Release sequences; their KV blocks return to the pool when no other sequence holds them."""
        for sid in ([sids] if isinstance(sids, int) else list(sids)):
            self._get(sid)
            self.pool.free(sid)
            del self._seqs[sid]

    def extend(self, sid: int, text: Union[str, Sequence[int]]) -> None:
        """Append tokens to ``sid`` without sampling them (e.g. a hint); budget counters are not changed."""
        self.extend_many([sid], [text])

    def extend_many(self, sids: Sequence[int], texts: Sequence[Union[str, Sequence[int]]]) -> None:
        """:meth:`extend` of several sequences in one packed prefill over their cached KV.

        Afterwards :meth:`next_logits` is the logits after each row's last token;
        logprobs of the new tokens are NaN. Raises
        :class:`tts_kernels.OutOfBlocksError` before changing anything when the
        pool cannot hold every row's tokens; on an error in the forward the rows'
        new slots are given back.
        """
        sids, rows = self._check_rows(sids, texts)
        keep = [i for i, r in enumerate(rows) if r]
        if not keep:
            return
        sids, rows = [sids[i] for i in keep], [rows[i] for i in keep]
        self._reserve(sids, rows)
        starts = [self.pool.seq_len(s) for s in sids]
        for sid, r in zip(sids, rows):
            self.pool.append(sid, len(r))
        try:
            logits = self._prefill(sids, rows, starts)
        except Exception:
            for sid, n in zip(sids, starts):
                self.pool.truncate(sid, n)
            raise
        for sid, r, lg in zip(sids, rows, logits.unbind(0)):
            s = self._seqs[sid]
            s.out.extend(r)
            s.logprobs.extend([float("nan")] * len(r))
            s.logits = lg
        self.stats["tokens_fed"] += sum(map(len, rows))

    # -- decoding ---------------------------------------------------------------------------
    def step(self, sids: Optional[Iterable[int]] = None) -> Dict[int, int]:
        """Extend each given (default: every live, unfinished) sequence by one token; returns sid -> token.

        Raises :class:`tts_kernels.OutOfBlocksError` before changing anything when the pool is full.
        """
        ids = [s for s in (self.live if sids is None else list(sids)) if not self._get(s).finished]
        if not ids:
            return {}
        seqs = [self._seqs[s] for s in ids]
        batch = self._prepare(ids, seqs, bucketed=self._bucketed)     # host half (pool.append first)
        B, n = batch.shape.rows, len(ids)
        logits = torch.stack([s.logits for s in seqs] + [self._pad_logits] * (B - n))
        budget = torch.stack([s.budget for s in seqs] + [self._no_budget] * (B - n))
        packed = batch.packed.to(self.model.device, non_blocking=True)
        host, nxt, rows = self._step_fn(batch.shape)(packed, logits, budget)   # device half, enqueued
        toks, lps = host.tolist()                           # the step's one device->host copy
        self._count(batch)
        self.stats["tokens_sampled"] += n
        eos = self.eos_token_ids
        for s, t, lp, lg, b in zip(seqs, toks, lps, nxt.unbind(0), rows.unbind(0)):
            t = int(t)
            s.out.append(t)
            s.logprobs.append(lp)
            s.logits, s.budget = lg, b
            if t in eos or t < 0:
                s.finished = True
        return dict(zip(ids, (s.out[-1] for s in seqs)))

    def generate(self, sids: Optional[Iterable[int]] = None, max_new_tokens: Union[int, Sequence[int]] = 256,
                 stop: Optional[Sequence[str]] = None, progress: bool = False) -> Dict[int, List[int]]:
        """Step ``sids`` (default: all live) until each emits EOS, ends with a ``stop`` string, or
        has ``max_new_tokens`` new tokens; returns sid -> the tokens generated by this call.

        ``max_new_tokens`` is one limit for all, or one per sequence of ``sids``. Sequences
        stopped by a stop string stay live (call again for the next step).
        """
        sids = self.live if sids is None else list(sids)
        limits = per_sequence_limits(max_new_tokens, len(sids))
        limit = {s: n for s, n in zip(sids, limits) if not self._get(s).finished and n > 0}
        active = list(limit)
        start = {s: len(self._seqs[s].out) for s in sids}
        stop = [x for x in (stop or []) if x]
        if stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        total = max(limit.values(), default=0)
        bar = progress_bar(total, progress)
        for i in range(total):
            if not active:
                break
            self.step(active)
            keep = []
            for sid in active:
                s = self._seqs[sid]
                if s.finished or i + 1 >= limit[sid] or (stop and self._hits_stop(s.out[start[sid]:], stop)):
                    continue
                keep.append(sid)
            active = keep
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return {sid: self._seqs[sid].out[n:] for sid, n in start.items()}

    def feed(self, sids: Sequence[int], tokens: Sequence[Sequence[int]]) -> None:
        """Append ``tokens[i]`` to ``sids[i]`` without sampling (teacher forcing), batched over sequences.

        Runs one decode forward per position over the rows that still have tokens
        (decode attention, counted in :attr:`stats`; :meth:`extend_many` runs one
        packed prefill instead); afterwards :meth:`next_logits` is the logits after each row's
        last token. Budget counters are not changed; logprobs are NaN as for
        :meth:`extend`. Raises :class:`tts_kernels.OutOfBlocksError` before
        changing anything when the pool cannot hold every row's tokens.
        """
        sids, rows = self._check_rows(sids, tokens)
        seqs = [self._seqs[s] for s in sids]
        self._reserve(sids, rows)
        for t in range(max((len(r) for r in rows), default=0)):
            idx = [i for i, r in enumerate(rows) if len(r) > t]
            batch = self._prepare([sids[i] for i in idx], [seqs[i] for i in idx], tokens=[rows[i][t] for i in idx])
            packed = batch.packed.to(self.model.device, non_blocking=True)
            nxt = _step.decode_forward(self.model, self._k_caches, self._v_caches, packed, shape=batch.shape,
                                       block_size=self.pool.block_size, attention=self.attention)
            self._count(batch)
            for i, lg in zip(idx, nxt.unbind(0)):
                seqs[i].logits = lg
        for s, r in zip(seqs, rows):
            s.out.extend(r)
            s.logprobs.extend([float("nan")] * len(r))
        self.stats["tokens_fed"] += sum(map(len, rows))

    def set_params(self, sid: int, **params) -> None:
        """Change a live sequence's sampling parameters (``temperature``, ``top_k``, ``top_p``, ``min_p``)."""
        s = self._get(sid)
        for k, v in params.items():
            if k not in s.params:
                raise ValueError(f"unknown sampling parameter {k!r}; expected one of {sorted(s.params)}")
            s.params[k] = int(v) if _INTEGER_PARAMS[k] else float(v)

    # -- reading ----------------------------------------------------------------------------
    @property
    def live(self) -> List[int]:
        return list(self._seqs)

    def tokens(self, sid: int) -> List[int]:
        """Generated token ids (the prompt excluded)."""
        return list(self._get(sid).out)

    def prompt_tokens(self, sid: int) -> List[int]:
        return list(self._get(sid).prompt)

    def logprobs(self, sid: int) -> List[float]:
        """``log_softmax`` of the model's logits at each generated token (NaN for :meth:`extend` tokens)."""
        return list(self._get(sid).logprobs)

    def next_logits(self, sid: int) -> torch.Tensor:
        """float32 ``[V]`` logits of the sequence's next token (what the next step samples from)."""
        return self._get(sid).logits

    def text(self, sid: int) -> str:
        if self.tokenizer is None:
            raise ValueError("text() needs a tokenizer")
        return self.tokenizer.decode([t for t in self._get(sid).out if t >= 0])

    def finished(self, sid: int) -> bool:
        """Whether ``sid`` emitted an end-of-sequence token (it is no longer stepped)."""
        return self._get(sid).finished

    def thinking_tokens(self, sid: int) -> int:
        """Thinking tokens counted by budget forcing (0 for a sequence without a budget)."""
        return int(self._get(sid).budget[NUM_THINKING])

    def waits_used(self, sid: int) -> int:
        return int(self._get(sid).budget[WAITS_USED])

    def is_thinking(self, sid: int) -> bool:
        return int(self._get(sid).budget[PHASE]) != DONE

    # -- internals -------------------------------------------------------------------------
    def _get(self, sid) -> _Seq:
        s = self._seqs.get(sid) if isinstance(sid, int) else None
        if s is None:
            raise KeyError(f"no live sequence {sid!r} (never added, or already freed)")
        return s

    def _encode(self, x) -> List[int]:
        if isinstance(x, str):
            if self.tokenizer is None:
                raise ValueError("text input needs a tokenizer; pass token ids")
            return list(self.tokenizer.encode(x))
        ids = [int(i) for i in x]
        bad = [i for i in ids if not 0 <= i < self.model.cfg.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.model.cfg.vocab_size})")
        return ids

    def _budget_row(self, min_thinking, max_thinking, min_waits) -> torch.Tensor:
        """A new sequence's budget-forcing row (int32 [8] on the model's device)."""
        if max_thinking < 0:
            return self._no_budget.clone()
        if self.forcing is None:
            raise ValueError("budget forcing needs a tokenizer with an end-of-thinking string")
        return self.forcing.init_state(1, min_thinking, max_thinking, min_waits, device=self.model.device).data[0]

    def _seed(self, sid, seed):
        return int(seed) if seed is not None else (self.base_seed * 1_000_003 + sid * 7919 + 1) % (2 ** 62)

    @property
    def _k_caches(self):
        return [self.pool.k_cache(i) for i in range(self.pool.num_layers)]

    @property
    def _v_caches(self):
        return [self.pool.v_cache(i) for i in range(self.pool.num_layers)]

    def _prepare(self, ids, seqs, tokens=None, bucketed=False) -> "_step.StepBatch":
        """Host half of a step: one new slot per row (all or nothing), then the packed device inputs."""
        positions = [self.pool.seq_len(s) for s in ids]
        slots = self.pool.append(ids, 1, device="cpu")     # OutOfBlocksError: nothing changed
        params = [tuple(s.params[name] for name in FILTER_NAMES) + (s.seed,) for s in seqs]
        return _step.prepare_step(self.pool, ids, positions, slots, params, attention=self.attention,
                                  chunk_size=self.chunk_size, bucketed=bucketed, tokens=tokens,
                                  pin=self.model.device.type == "cuda", num_q_heads=self.model.cfg.num_heads)

    def _step_fn(self, shape):
        """The device step for ``shape`` (compiled / captured once per bucket)."""
        fn = self._step_fns.get(shape)
        if fn is None:          # eager: exact shapes, a fresh closure each step (nothing to cache)
            fn = _step.make_step(self.model, self._k_caches, self._v_caches, shape=shape,
                                 block_size=self.pool.block_size, attention=self.attention,
                                 forcing=self.forcing or self._no_forcing, forced_ids=self._forced_ids,
                                 eos_mask=self._eos_mask, compile=self.compile)
            if self.cuda_graphs:
                fn = _step.CudaGraphStep(fn)
            if self._bucketed:
                self._step_fns[shape] = fn
        return fn

    def _count(self, batch):
        self.stats["forwards"] += 1
        if self.track_kv:
            self.stats["kv_tokens_noshare"] += batch.kv_tokens_noshare
            self.stats["kv_tokens_read"] += batch.kv_tokens_read

    def _check_rows(self, sids, texts):
        """``sids`` (live, distinct) and ``texts`` encoded, one row per sequence."""
        sids = list(sids)
        if len(sids) != len(texts):
            raise ValueError(f"sids and tokens must have the same length, got {len(sids)} and {len(texts)}")
        if len(set(sids)) != len(sids):
            raise ValueError("sids lists a sequence more than once")
        rows = [self._encode(t) for t in texts]
        for s in sids:
            self._get(s)
        return sids, rows

    def _reserve(self, sids, rows):
        """:class:`tts_kernels.OutOfBlocksError` unless the pool holds ``len(rows[i])`` more tokens of ``sids[i]``."""
        bs = self.pool.block_size
        need = sum(-(-(self.pool.seq_len(s) + len(r)) // bs) - len(self.pool.block_ids(s)) for s, r in zip(sids, rows))
        if need > self.pool.num_free_blocks:
            from ..attention import OutOfBlocksError
            raise OutOfBlocksError(f"{need} free KV blocks needed, the pool has {self.pool.num_free_blocks}")

    def _new_sequences(self, rows, plans) -> List[int]:
        """Pool sequences for new prompts as ``plans`` say (all or nothing; see :meth:`add_many`)."""
        from ..attention import OutOfBlocksError
        bs = self.pool.block_size
        hits = [b for p in plans for b in p.hit]
        self.pool.retain(hits)                  # pinned: allocations below must not evict them
        try:
            need = sum(-(-len(ids) // bs) - p.shared + p.copy_last for ids, p in zip(rows, plans))
            if need > self.pool.num_free_blocks:
                raise OutOfBlocksError(f"KV pool out of blocks: {need} needed for the prompts, "
                                       f"{self.pool.num_free_blocks} of {self.pool.num_blocks} free")
            owner: Dict[int, int] = {}          # block key -> block of an earlier row of this batch
            sids: List[int] = []
            try:
                for ids, p in zip(rows, plans):
                    prefix = p.hit + [owner[k] for k in p.keys[len(p.hit):p.shared]]
                    sid = self.pool.add_sequence(len(ids), prefix, copy_last=p.copy_last)
                    sids.append(sid)
                    for k, b in zip(p.keys[p.shared:], self.pool.block_ids(sid)[p.shared:]):
                        owner.setdefault(k, b)
            except Exception:
                self._free_new(sids)
                raise
            return sids
        finally:
            self.pool.release(hits)

    def _free_new(self, sids):
        """Undo :meth:`_new_sequences` (the engine holds no state of them yet)."""
        for sid in sids:
            self.pool.free(sid)

    def _prefill(self, sids, rows, starts) -> torch.Tensor:
        """One packed forward of ``rows[i]`` at positions ``starts[i]...`` of ``sids[i]`` (slots reserved).

        Writes the rows' K/V into the pool; returns float32 ``[len(rows), V]`` logits of each row's last token.
        """
        m, dev = self.model, self.model.device
        lens = [len(r) for r in rows]
        key_slots = [self.pool.slot_mapping(sid, 0, s + n) for sid, s, n in zip(sids, starts, lens)]
        slots = torch.cat([ks[s:] for ks, s in zip(key_slots, starts)])
        ids = torch.tensor([t for r in rows for t in r], dtype=torch.int64, device=dev)
        pos = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lens)]).to(dev)
        last = torch.tensor(lens).cumsum(0).sub(1).to(dev)
        attn = PagedPrefill(self.pool, slots, key_slots, starts, lens, m.groups, m.scale, flash=m.prefill_flash_attn())
        with torch.no_grad():
            return m.forward(ids, pos, attn, rows=last)

    def _hits_stop(self, new: List[int], stop: Sequence[str]) -> bool:
        # cheap filter: the last token's own text must hold the stop string's last character
        # (or be a partial character of a byte-level vocabulary) for the tail to end with it
        last = self._token_text(new[-1]) if new and new[-1] >= 0 else ""
        if not any(x[-1] in last for x in stop) and "\ufffd" not in last:
            return False
        tail = self.tokenizer.decode([t for t in new[-8:] if t >= 0])
        return any(tail.endswith(x) for x in stop)

    def _token_text(self, t: int) -> str:
        cache = self.__dict__.setdefault("_text_cache", {})
        if t not in cache:
            cache[t] = self.tokenizer.decode([t])
        return cache[t]
