"""The budget-forcing state machine, vectorised over rows: its one Python definition.

The layout of a state row (columns, phases) and the rules in words are in
:mod:`tts_kernels.sampling.budget`; the rules themselves are written once,
here, and used by the PyTorch reference of the fused sampler
(:mod:`tts_kernels.sampling.reference`) and by the logits processors of the
integrations (:mod:`tts_kernels.integrations.common`, vLLM, transformers). The
C++ kernel's copy is ``csrc`` (its own language); the Triton kernel reads the
same named columns.

* :func:`plan`: rules 1-3 before the draw: the forced token of each row (-1: none)
  and whether an end drawn now would be too early (``need``).
* :func:`advance`: the state after the emitted token, given whether it was a Wait
  forced in place of an end (``replaced``).
* :func:`replay`: :func:`advance` over a run of generated tokens.

Per-row forcing sequences are a :class:`ForcingTable` (one row per state row).
Nothing here loops over rows in Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .budget import (DONE, ENDING, MAX_TOKENS, MIN_TOKENS, MIN_WAITS, PHASE, POS, STATE_COLUMNS, THINKING,
                     BudgetForcing)


@dataclass
class ForcingTable:
    """Per-row ``wait ++ end ++ answer_prefix`` ids, right-padded with 0."""

    ids: torch.Tensor   # int64 [B, L]
    lw: torch.Tensor    # int64 [B] length of the Wait sequence
    le: torch.Tensor    # int64 [B] length of the end sequence (>= 1)
    la: torch.Tensor    # int64 [B] length of the answer prefix

    @staticmethod
    def build(forcings: Sequence[BudgetForcing], device=None) -> "ForcingTable":
        device = torch.device(device) if device is not None else torch.device("cpu")
        seqs = [f.forced_ids for f in forcings]
        width = max([len(s) for s in seqs] + [1])
        ids = torch.zeros(len(seqs), width, dtype=torch.int64)
        for i, s in enumerate(seqs):  # host-side, once per request / processor
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.int64)
        lens = torch.tensor([[len(f.wait_ids), len(f.end_think_ids), len(f.answer_prefix_ids)] for f in forcings],
                            dtype=torch.int64).reshape(-1, 3)
        return ForcingTable(ids.to(device), *(c.contiguous().to(device) for c in lens.unbind(1)))

    @staticmethod
    def single(forced_ids: torch.Tensor, num_wait: int, num_end: int, batch_size: int) -> "ForcingTable":
        """The same forcing (``forced_ids`` = wait ++ end ++ answer prefix) for ``batch_size`` rows."""
        ids = forced_ids.to(torch.int64).view(1, -1).expand(batch_size, -1)
        full = lambda v: torch.full((batch_size,), v, dtype=torch.int64, device=ids.device)  # noqa: E731
        return ForcingTable(ids, full(num_wait), full(num_end), full(forced_ids.numel() - num_wait - num_end))

    def index_select(self, rows: torch.Tensor) -> "ForcingTable":
        return ForcingTable(self.ids[rows], self.lw[rows], self.le[rows], self.la[rows])

    @property
    def end0(self) -> torch.Tensor:
        return self.ids.gather(1, self.lw.view(-1, 1)).squeeze(1)

    @property
    def wait0(self) -> torch.Tensor:
        return self.ids[:, 0]

    @property
    def has_wait(self) -> torch.Tensor:
        return self.lw > 0


def init_state(min_tokens: torch.Tensor, max_tokens: torch.Tensor, min_waits: torch.Tensor,
               dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """[B, 8] fresh state of ``dtype`` (rows with ``max_tokens < 0`` have no budget: phase DONE)."""
    mx = max_tokens.to(dtype)
    s = torch.zeros(mx.shape[0], STATE_COLUMNS, dtype=dtype, device=mx.device)
    s[:, MIN_TOKENS] = min_tokens.to(dtype)
    s[:, MAX_TOKENS] = mx
    s[:, MIN_WAITS] = min_waits.to(dtype)
    s[:, PHASE] = torch.where(mx >= 0, THINKING, DONE).to(dtype)
    return s


def rules(state: torch.Tensor):
    """``(force_end, pending, free, need)`` bool [B]: which rule applies to each row before the draw."""
    mn, mx, mw, nt, wu, ph, pos, stop = state.unbind(1)
    active = (mx >= 0) & (ph != DONE)
    force_end = active & (ph == THINKING) & (nt >= mx)
    pending = active & ~force_end & (pos < stop)
    free = active & ~force_end & ~pending
    need = free & ((nt < mn) | (wu < mw))
    return force_end, pending, free, need


def plan(state: torch.Tensor, table: ForcingTable):
    """Budget rules 1-3 before the draw: ``(forced_tok int64 [B] (-1: none), need bool [B])``."""
    force_end, pending, _, need = rules(state)
    pos = state[:, POS].clamp(0, table.ids.shape[1] - 1)
    at_pos = table.ids.gather(1, pos.view(-1, 1)).squeeze(1)
    forced = torch.where(force_end, table.end0, torch.where(pending, at_pos, torch.full_like(at_pos, -1)))
    return forced, need


def advance(state: torch.Tensor, tok: torch.Tensor, replaced: torch.Tensor, table: ForcingTable,
            valid: torch.Tensor | None = None) -> torch.Tensor:
    """State after emitting ``tok`` (int64 [B]); ``replaced``: the token is a Wait forced instead of an end.

    The transitions of the fused op (every backend of ``tts_kernels.sample``). Rows
    where ``valid`` is False are returned unchanged.
    """
    mn, mx, mw, nt, wu, ph, pos, stop = state.unbind(1)
    force_end, pending, free, _ = rules(state)
    tok = tok.to(torch.int64)
    replace = free & replaced
    natural_end = free & ~replace & (tok == table.end0)
    nt = nt + (free & ~natural_end).long() + (pending & (ph == THINKING)).long()
    wu = wu + replace.long()
    lw, le, la = table.lw, table.le, table.la
    new_pos = torch.where(pending, pos + 1, pos)
    new_pos = torch.where(force_end | natural_end, lw + 1, new_pos)
    new_stop = torch.where(force_end, lw + le + la, torch.where(natural_end, lw + le, stop))
    new_pos = torch.where(replace, torch.ones_like(pos), new_pos)
    new_stop = torch.where(replace, lw, new_stop)
    ph = torch.where(force_end | natural_end, torch.full_like(ph, ENDING), ph)
    ph = torch.where((ph == ENDING) & (new_pos >= new_stop), torch.full_like(ph, DONE), ph)
    new = torch.stack([mn, mx, mw, nt, wu, ph, new_pos, new_stop], dim=1)
    if valid is not None:
        new = torch.where(valid.view(-1, 1), new, state)
    return new


def replay(state: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, table: ForcingTable,
           replaced: torch.Tensor | None = None) -> torch.Tensor:
    """Advance states through generated tokens ([B, L] padded, ``lengths`` [B]), one vectorised step per position.

    ``replaced`` (bool [B, L], optional) says which tokens were a Wait forced
    instead of an end (the processor's own record); a flag on a token that is
    not ``wait[0]`` is ignored (a later stage, e.g. an engine's own thinking
    budget, overrode the forced Wait). Without ``replaced`` nothing is carried:
    a Wait first token emitted at a step where an end was not yet allowed is
    taken as a Wait forced instead of an end (the processor's choice is not
    visible in the tokens).
    """
    for t in range(tokens.shape[1]):
        tok = tokens[:, t]
        if replaced is None:
            _, need = plan(state, table)
            rep = need & table.has_wait & (tok == table.wait0)
        else:
            rep = replaced[:, t] & table.has_wait & (tok == table.wait0)
        state = advance(state, tok, rep, table, valid=lengths > t)
    return state
