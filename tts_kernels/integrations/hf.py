"""Budget forcing as a Hugging Face ``transformers`` logits processor.

Example::

    from transformers import LogitsProcessorList
    import tts_kernels as tk
    from tts_kernels.integrations.hf import BudgetForcingLogitsProcessor

    bf = tk.BudgetForcing(end_think_ids=tok.encode("</think>", add_special_tokens=False),
                          wait_ids=tok.encode("Wait", add_special_tokens=False))
    proc = BudgetForcingLogitsProcessor(bf, min_tokens=256, max_tokens=2048,
                                        temperature=0.7, top_p=0.95)   # same values as generate's
    out = model.generate(**inputs, do_sample=True, temperature=0.7, top_p=0.95,
                         logits_processor=LogitsProcessorList([proc]))

Semantics are those of ``tts_kernels.sample``'s budget forcing; thinking starts
right after the prompt (the sequence length at the first call). Budgets are
scalars or per-row lists (one per prompt, or one per row of ``input_ids``, i.e.
per prompt x beam / returned sequence).

How a step works (all batched torch ops, see :mod:`tts_kernels.integrations.common`):

* State: each row's int64 budget state is carried from the previous call and
  matched to the current rows by a hash of (row group, generated tokens minus
  the last one), then advanced by the last token. This follows beam search,
  which reorders rows between calls; a row whose parent is not found (a
  processor reused in an unexpected way) is recomputed from its tokens.
* Forced tokens keep a single finite score (0), so greedy, sampling and beam
  search all emit them.
* An end that is still too early, with a Wait sequence: "Wait injection in
  distribution". In ``generate`` custom processors run *before* the sampling
  warpers (temperature, top-k, top-p, min-p), so the processor is told the
  sampling parameters (``do_sample``, ``temperature``, ``top_k``, ``top_p``,
  ``min_p``; pass the ones given to ``generate``). ``p_end`` is the end's
  probability under that distribution (the package's ``filter_mask``); with
  probability ``p_end`` the Wait sequence is forced, otherwise the end and the
  tokens outside the keep set are masked, so every other token keeps its
  fused-op probability. The warpers then run again on the masked scores, and
  top-k / top-p / min-p renormalised without the end can drop low-probability
  tail tokens (never add). With ``do_sample=False`` (greedy and beam search)
  Wait is forced when the end is the row's highest score, else the end is
  masked: exact for greedy decoding; for beam search this is the greedy rule
  applied to every beam.
* The Wait-or-mask decision draws from the package's Philox stream keyed by
  ``seed`` (per processor; rows get ``seed + row group``) and the position, so
  a run is reproducible given the seeds, but not token-identical to
  ``tts_kernels.sample`` (the other tokens come from ``generate``'s sampler).

One processor serves one ``generate`` call at a time; it resets itself when a
new call starts (the sequence length does not grow by one), or call :meth:`reset`.
"""
from __future__ import annotations

import random

import torch

from ..sampling.budget import BudgetForcing
from . import common

try:
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover
    LogitsProcessor = object

_HASH_MUL = 0x100000001B3  # FNV-style odd multiplier; int64 arithmetic wraps around


def _wrap64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= (1 << 63) else v


class BudgetForcingLogitsProcessor(LogitsProcessor):
    """s1-style budget forcing for ``model.generate`` (see the module docstring)."""

    def __init__(self, budget_forcing: BudgetForcing, min_tokens=0, max_tokens=-1, min_waits=0, *,
                 do_sample: bool = True, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, num_beams: int = 1, seed: int | None = None, record: bool = False):
        if not isinstance(budget_forcing, BudgetForcing):
            raise TypeError(f"budget_forcing must be a tts_kernels.BudgetForcing, got {type(budget_forcing).__name__}")
        self.forcing = budget_forcing
        self.budgets = {}
        for name, v in (("min_tokens", min_tokens), ("max_tokens", max_tokens), ("min_waits", min_waits)):
            t = torch.as_tensor(v)
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() > 1:
                raise TypeError(f"{name} must be an int or a list of ints, got {v!r}")
            self.budgets[name] = t.to(torch.int64).reshape(-1)
        mn, mx, mw = self.budgets["min_tokens"], self.budgets["max_tokens"], self.budgets["min_waits"]
        if bool((mn < 0).any()) or bool((mw < 0).any()):
            raise ValueError("min_tokens and min_waits must be >= 0")
        n = max(mn.numel(), mx.numel(), mw.numel())
        if {mn.numel(), mx.numel(), mw.numel()} - {1, n}:
            raise ValueError("per-row min_tokens / max_tokens / min_waits must have the same length")
        if bool(((mx >= 0) & (mn.expand(n) > mx.expand(n))).any()):
            raise ValueError("min_tokens must be <= max_tokens for every row with a budget")
        if not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
        self.do_sample = bool(do_sample)
        self.sampling = (0.0 if not do_sample else float(temperature), int(top_k or 0), float(top_p),
                         float(min_p or 0.0))
        self.num_beams = num_beams
        self.seed = int(seed) if seed is not None else random.getrandbits(62)
        self.record = record
        self.reset()

    def reset(self) -> None:
        """Forget the current generation (the next call starts a new one)."""
        self.prompt_len = None
        self._last_len = -1
        self._keys = self._state = self._replaced = None
        self.replaced_positions: list[list[int]] | None = None  # with record=True: per row, Wait-for-end steps

    # -- helpers -------------------------------------------------------------------
    def _per_row(self, t: torch.Tensor, rows: int, device) -> torch.Tensor:
        if t.numel() == 1:
            return t.to(device).expand(rows)
        if rows % t.numel():
            raise ValueError(f"per-row budgets have {t.numel()} entries but input_ids has {rows} rows "
                             f"(need one per prompt or one per row)")
        return t.to(device).repeat_interleave(rows // t.numel())

    def _hash(self, gen: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """int64 [B] hash of (group, tokens) per row, vectorised (wrapping int64 arithmetic)."""
        L = gen.shape[1]
        pw = [1]
        for _ in range(L):
            pw.append(_wrap64(pw[-1] * _HASH_MUL))
        powers = torch.tensor(pw[::-1], dtype=torch.int64, device=gen.device)  # M^L ... M^0
        vals = torch.cat([groups.view(-1, 1) + 1, gen.to(torch.int64) + 2], dim=1)
        return (vals * powers.view(1, -1)).sum(1)

    # -- the processor -------------------------------------------------------------------
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, cur = input_ids.shape
        dev = scores.device
        if self.prompt_len is None or cur != self._last_len + 1 or self._state is None \
                or self._state.shape[0] != B:
            self.reset()
            self.prompt_len = cur
        self._last_len = cur
        table = self._table(B, dev)
        groups = torch.arange(B, device=dev) // self.num_beams
        gen = input_ids[:, self.prompt_len:]
        keys = self._hash(gen, groups)
        if gen.shape[1] == 0:
            state = common.init_state(*(self._per_row(self.budgets[k], B, dev)
                                        for k in ("min_tokens", "max_tokens", "min_waits")))
            if self.record:
                self.replaced_positions = [[] for _ in range(B)]
        else:
            parent = self._hash(gen[:, :-1], groups)
            eq = parent.view(-1, 1) == self._keys.view(1, -1)
            found = eq.any(1)
            src = torch.argmax(eq.to(torch.uint8), dim=1)
            state = common.advance(self._state[src], gen[:, -1], self._replaced[src], table)
            if not bool(found.all()):  # unknown lineage: recompute those rows from their tokens
                fresh = common.init_state(*(self._per_row(self.budgets[k], B, dev)
                                            for k in ("min_tokens", "max_tokens", "min_waits")))
                lens = torch.full((B,), gen.shape[1], dtype=torch.int64, device=dev)
                state = torch.where(found.view(-1, 1), state, common.replay(fresh, gen, lens, table))
            if self.record:
                srcl, fl = src.tolist(), found.tolist()
                self.replaced_positions = [list(self.replaced_positions[s]) if f else [] for s, f in zip(srcl, fl)]
        # identical (group, prefix) rows (beam copies at the first step) share one draw
        first = torch.argmax((keys.view(-1, 1) == keys.view(1, -1)).to(torch.uint8), dim=1)
        seed = torch.full((B,), self.seed, dtype=torch.int64, device=dev) + groups
        uniform = common.uniform_draw(seed, torch.full((B,), gen.shape[1], dtype=torch.int64, device=dev))[first]
        t, k, p, m = self.sampling
        full = lambda v, dt: torch.full((B,), v, dtype=dt, device=dev)  # noqa: E731
        out, replaced = common.transform(scores, state, table, full(t, torch.float32), full(k, torch.int32),
                                         full(p, torch.float32), full(m, torch.float32), uniform,
                                         premask=self.do_sample)
        if self.record:
            for r in replaced.nonzero().flatten().tolist():
                self.replaced_positions[r].append(gen.shape[1])
        self._keys, self._state, self._replaced = keys, state, replaced
        return out

    def _table(self, B: int, dev) -> common.ForcingTable:
        cache = getattr(self, "_table_cache", None)
        if cache is None or cache[0] != (B, dev):
            one = common.ForcingTable.build([self.forcing], dev)
            idx = torch.zeros(B, dtype=torch.int64, device=dev)
            self._table_cache = ((B, dev), one.index_select(idx))
        return self._table_cache[1]

    @property
    def state(self) -> torch.Tensor | None:
        """int64 [B, 8] budget state of the rows at the last call (before its token), or None."""
        return self._state
