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

Host work per step: the pool's block bookkeeping, the plan, and one copy of
the new tokens to the host (stop/EOS checks); the model forward and the
sampler themselves do not synchronise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch

from ..sampling import BudgetForcing, BudgetState, sample
from ..sampling.budget import DONE, MAX_TOKENS, NUM_THINKING, PHASE, WAITS_USED
from .attention import PagedDecode


@dataclass(frozen=True)
class BudgetStrings:
    """Budget-forcing strings of a model family (tokenised with the model's tokenizer)."""

    end_think: str = "</think>"
    wait: str = "Wait"
    answer_prefix: str = "Final Answer:"


FAMILY_BUDGET_STRINGS = {
    "embedded": BudgetStrings("</think>", "Wait", "Final Answer:"),
    # DeepSeek-R1-Distill-Qwen / QwQ style
    "qwen2": BudgetStrings("</think>", "Wait", "\n\n**Final Answer**\n\n"),
    "llama": BudgetStrings("</think>", "Wait", "\n\n**Final Answer**\n\n"),
}


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
        End-of-thinking / Wait / answer-prefix strings (default ``FAMILY_BUDGET_STRINGS`` of the
        architecture; the embedded model uses "</think>", "Wait", "Final Answer:").
    seed : int
        Base of the per-sequence sampling seeds.
    attention : {"tree", "tree-noshare", "torch"}
        Decode attention over the pool (see :mod:`tts_kernels.decode.attention`).
    """

    def __init__(self, model, tokenizer=None, *, num_blocks: int = 1024, block_size: int = 16,
                 budget_strings: Optional[BudgetStrings] = None, seed: int = 0, attention: str = "tree",
                 chunk_size: Optional[int] = None, track_kv: bool = False):
        from ..attention import KVPool
        c = model.cfg
        self.model, self.tokenizer = model, tokenizer
        self.pool = KVPool(num_blocks, block_size, c.num_kv_heads, c.head_dim, c.num_layers,
                           dtype=model.dtype, device=model.device)
        self.attention, self.chunk_size, self.base_seed = attention, chunk_size, int(seed)
        self._seqs: Dict[int, _Seq] = {}
        eos = set(c.eos_token_ids) | set(getattr(tokenizer, "eos_token_ids", ()) or ())
        self.eos_token_ids = tuple(sorted(eos))
        self._eos_tensor = (torch.tensor(self.eos_token_ids, dtype=torch.long, device=model.device)
                            if self.eos_token_ids else None)
        self.forcing = None
        if tokenizer is not None:
            bs = budget_strings
            if bs is None:
                bs = FAMILY_BUDGET_STRINGS["embedded" if tokenizer.token_to_id("</think>") is not None
                                            and c.vocab_size < 1000 else c.arch]
            end = tokenizer.encode(bs.end_think)
            if end:
                self.forcing = BudgetForcing(end, tokenizer.encode(bs.wait) if bs.wait else (),
                                             tokenizer.encode(bs.answer_prefix) if bs.answer_prefix else ())
        self.track_kv = bool(track_kv)
        #: counters: tokens sampled by :meth:`step`, tokens fed by :meth:`feed`/:meth:`extend`, decode
        #: forwards, and (with ``track_kv=True``) KV tokens read by decode attention against what
        #: per-sequence attention would read (one sync per forward to count them, so off by default)
        self.stats = dict(tokens_sampled=0, tokens_fed=0, forwards=0, kv_tokens_read=0, kv_tokens_noshare=0)
        self.kv_bytes_per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * self.pool.k_cache(0).element_size()
        self._no_forcing = BudgetForcing([0])              # rows without a budget are never touched
        self._no_budget = self._no_forcing.init_state(1).data[0]

    # -- sequences ------------------------------------------------------------------------
    def add(self, prompt: Union[str, Sequence[int]], *, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, min_p: float = 0.0, min_thinking: int = 0, max_thinking: int = -1,
            min_waits: int = 0, seed: Optional[int] = None) -> int:
        """Prefill ``prompt`` (text or token ids) into the pool; returns the new sequence's id.

        ``max_thinking >= 0`` turns on budget forcing for the sequence (its
        generation is thinking until the end-of-thinking string): at least
        ``min_thinking`` tokens and ``min_waits`` forced Waits, at most
        ``max_thinking`` tokens, then the end string and the answer prefix.
        While thinking under a budget the sequence cannot emit end-of-sequence
        (its EOS logits are masked), so it always closes thinking first.
        """
        ids = self._encode(prompt)
        if not ids:
            raise ValueError("prompt must have at least one token")
        if max_thinking >= 0 and self.forcing is None:
            raise ValueError("budget forcing needs a tokenizer with an end-of-thinking string")
        budget = (self.forcing.init_state(1, min_thinking, max_thinking, min_waits).data[0]
                  if max_thinking >= 0 else self._no_budget.clone())
        sid = self.pool.add_sequence(len(ids))
        try:
            logits, kv = self.model.prefill(torch.tensor(ids, dtype=torch.int64), last_only=True)
            self._write_kv(sid, 0, kv)
        except Exception:
            self.pool.free(sid)
            raise
        params = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), min_p=float(min_p))
        self._seqs[sid] = _Seq(list(ids), logits[-1], params, self._seed(sid, seed), budget)
        return sid

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
        s = self._get(sid)
        ids = self._encode(text)
        if not ids:
            return
        start = self.pool.seq_len(sid)
        self.pool.append(sid, len(ids))
        slots = self.pool.slot_mapping(sid, 0, start)
        past = [(self.pool.k_cache(i).flatten(0, 1)[slots], self.pool.v_cache(i).flatten(0, 1)[slots])
                for i in range(self.model.cfg.num_layers)]
        logits, kv = self.model.prefill(torch.tensor(ids, dtype=torch.int64), past=past, last_only=True)
        self._write_kv(sid, start, kv)
        s.out.extend(ids)
        s.logprobs.extend([float("nan")] * len(ids))
        s.logits = logits[-1]
        self.stats["tokens_fed"] += len(ids)

    # -- decoding ---------------------------------------------------------------------------
    def step(self, sids: Optional[Iterable[int]] = None) -> Dict[int, int]:
        """Extend each given (default: every live, unfinished) sequence by one token; returns sid -> token.

        Raises :class:`tts_kernels.OutOfBlocksError` before changing anything when the pool is full.
        """
        ids = [s for s in (self.live if sids is None else list(sids)) if not self._get(s).finished]
        if not ids:
            return {}
        seqs = [self._seqs[s] for s in ids]
        positions = self.pool.seq_lens(ids).long()            # position of each new token
        slots = self.pool.append(ids, 1)                       # all or nothing (OutOfBlocksError)
        dev = self.model.device
        logits = torch.stack([s.logits for s in seqs])
        rows = torch.stack([s.budget for s in seqs])
        if self._eos_tensor is not None:
            # a row still thinking under a budget may not end the sequence: it must close thinking first
            thinking = ((rows[:, PHASE] != DONE) & (rows[:, MAX_TOKENS] >= 0)).to(dev)
            eos = self._eos_tensor
            logits[:, eos] = logits[:, eos].masked_fill(thinking[:, None], float("-inf"))
        budget = BudgetState(self.forcing or self._no_forcing, rows)
        p = {k: torch.tensor([s.params[k] for s in seqs], device=dev) for k in ("temperature", "top_p", "min_p")}
        top_k = torch.tensor([s.params["top_k"] for s in seqs], dtype=torch.int32, device=dev)
        seeds = torch.tensor([s.seed for s in seqs], dtype=torch.int64, device=dev)
        out = sample(logits, temperature=p["temperature"], top_k=top_k, top_p=p["top_p"], min_p=p["min_p"],
                     seed=seeds, offset=positions.to(dev), budget=budget, check_nan=False, validate=False)
        # a row whose logits had a NaN/+inf (token -1) still runs the forward on a valid id so the
        # step completes for every row; that row is then finished (its token stays -1)
        nxt = self._forward(ids, slots, out.token_ids.clamp(min=0), positions.to(dev))
        self.stats["tokens_sampled"] += len(ids)
        toks, lps = out.token_ids.tolist(), out.logprobs.tolist()
        eos = self.eos_token_ids
        for i, s in enumerate(seqs):
            s.out.append(toks[i])
            s.logprobs.append(lps[i])
            s.logits = nxt[i]
            s.budget = budget.data[i]
            if toks[i] in eos or toks[i] < 0:
                s.finished = True
        return dict(zip(ids, toks))

    def generate(self, sids: Optional[Iterable[int]] = None, max_new_tokens: int = 256,
                 stop: Optional[Sequence[str]] = None, progress: bool = False) -> Dict[int, List[int]]:
        """Step ``sids`` (default: all live) until each emits EOS, ends with a ``stop`` string, or
        has ``max_new_tokens`` new tokens; returns sid -> the tokens generated by this call.

        Sequences stopped by a stop string stay live (call again for the next step).
        """
        active = [s for s in (self.live if sids is None else list(sids)) if not self._get(s).finished]
        start = {s: len(self._seqs[s].out) for s in active}
        stop = [x for x in (stop or []) if x]
        if stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        bar = _progress(max_new_tokens, progress)
        for _ in range(max_new_tokens):
            if not active:
                break
            self.step(active)
            keep = []
            for sid in active:
                s = self._seqs[sid]
                if s.finished or (stop and self._hits_stop(s.out[start[sid]:], stop)):
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
        (so many short continuations cost a few batched steps, not one prefill
        each); afterwards :meth:`next_logits` is the logits after each row's
        last token. Budget counters are not changed; logprobs are NaN as for
        :meth:`extend`. Raises :class:`tts_kernels.OutOfBlocksError` before
        changing anything when the pool cannot hold every row's tokens.
        """
        sids = list(sids)
        if len(sids) != len(tokens):
            raise ValueError(f"sids and tokens must have the same length, got {len(sids)} and {len(tokens)}")
        if len(set(sids)) != len(sids):
            raise ValueError("sids lists a sequence more than once")
        rows = [self._encode(t) for t in tokens]
        seqs = [self._get(s) for s in sids]
        bs = self.pool.block_size
        need = sum(-(-(self.pool.seq_len(s) + len(r)) // bs) - len(self.pool.block_ids(s)) for s, r in zip(sids, rows))
        if need > self.pool.num_free_blocks:
            from ..attention import OutOfBlocksError
            raise OutOfBlocksError(f"feed needs {need} free KV blocks, the pool has {self.pool.num_free_blocks}")
        dev = self.model.device
        for t in range(max((len(r) for r in rows), default=0)):
            idx = [i for i, r in enumerate(rows) if len(r) > t]
            ids = [sids[i] for i in idx]
            positions = self.pool.seq_lens(ids).long().to(dev)
            slots = self.pool.append(ids, 1)
            toks = torch.tensor([rows[i][t] for i in idx], dtype=torch.int64, device=dev)
            nxt = self._forward(ids, slots, toks, positions)
            for j, i in enumerate(idx):
                seqs[i].logits = nxt[j]
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
            s.params[k] = int(v) if k == "top_k" else float(v)

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

    def _seed(self, sid, seed):
        return int(seed) if seed is not None else (self.base_seed * 1_000_003 + sid * 7919 + 1) % (2 ** 62)

    def _forward(self, ids, slots, tokens, positions):
        """One decode forward of rows ``ids`` on ``tokens`` whose K/V go to ``slots``; returns next logits."""
        attn = PagedDecode(self.pool, ids, slots, self.model.scale, self.attention, self.chunk_size)
        self.stats["forwards"] += 1
        if self.track_kv:
            self.stats["kv_tokens_noshare"] += int(attn.seq_lens.sum())
            self.stats["kv_tokens_read"] += (int(attn.plan.chunk_len.sum()) if attn.plan is not None
                                             else int(attn.seq_lens.sum()))
        return self.model.forward(tokens, positions, attn)

    def _write_kv(self, sid, start, kv):
        slots = self.pool.slot_mapping(sid, start, start + kv[0][0].shape[0])
        for i, (k, v) in enumerate(kv):
            kc, vc = self.pool.k_cache(i), self.pool.v_cache(i)
            kc.view(-1, *kc.shape[2:])[slots] = k.to(kc.dtype)
            vc.view(-1, *vc.shape[2:])[slots] = v.to(vc.dtype)

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


def _progress(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit="step", leave=False)
    except ImportError:
        return None
