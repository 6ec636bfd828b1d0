"""Budget forcing (s1, "Simple test-time scaling") as per-row decode state.

The state of a batch is one int32 tensor ``data`` of shape [B, 8] that the
sampler updates in place (one pointer for every kernel). Columns:

====  ==============  ============================================================
col   name            meaning
====  ==============  ============================================================
0     min_tokens      thinking tokens required before an end is allowed
1     max_tokens      thinking tokens after which the end is forced (< 0: no budget)
2     min_waits       forced "Wait" insertions required before an end is allowed
3     num_thinking    tokens emitted while thinking (forced Wait tokens included)
4     waits_used      Wait insertions so far
5     phase           0 thinking, 1 emitting the end sequence, 2 done (answer)
6     pos             next index into ``forced_ids`` to emit while ``pos < stop``
7     stop            end (exclusive) of the pending forced run in ``forced_ids``
====  ==============  ============================================================

``forced_ids`` packs ``wait_ids ++ end_think_ids ++ answer_prefix_ids``. A
pending Wait run is ``[1, Lw)``; a natural end run ``[Lw + 1, Lw + Le)``; an end
forced at the maximum ``[Lw + 1, Lw + Le + La)``.

One step of a row with a budget (``max_tokens >= 0``) and ``phase != 2``:

1. ``phase == 0`` and ``num_thinking >= max_tokens``: emit ``end[0]``, queue the
   rest of the end sequence and the answer prefix (a pending Wait is dropped).
2. else, if ``pos < stop``: emit ``forced_ids[pos]`` (a Wait token counts as thinking).
3. else draw. While ``num_thinking < min_tokens`` or ``waits_used < min_waits``
   a drawn ``end[0]`` is replaced by ``wait[0]`` (rest of Wait queued), or, with
   no Wait sequence, ``end[0]`` is given probability 0 before drawing. An
   allowed ``end[0]`` queues the rest of the end sequence; any other token
   counts as thinking.

The row is done (phase 2) once its end run (and, when forced, the answer
prefix) has been emitted; from then on it samples normally.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

MIN_TOKENS, MAX_TOKENS, MIN_WAITS, NUM_THINKING, WAITS_USED, PHASE, POS, STOP = range(8)
STATE_COLUMNS = 8
THINKING, ENDING, DONE = 0, 1, 2
_INT32 = torch.iinfo(torch.int32)


def _id_list(name: str, ids) -> list[int]:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if isinstance(ids, int):
        ids = [ids]
    try:
        out = [int(i) for i in ids]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of int token ids, got {ids!r}") from None
    for i in out:
        if i < 0:
            raise ValueError(f"{name} contains a negative token id {i}")
    return out


def _per_row(name: str, value, batch_size: int, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(batch_size)
        if value.dim() != 1 or value.shape[0] != batch_size:
            raise ValueError(f"{name} must be a scalar or a tensor of shape [{batch_size}], got {tuple(value.shape)}")
        if value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
        if value.numel() and (int(value.min()) < _INT32.min or int(value.max()) > _INT32.max):
            raise ValueError(f"{name} has values outside the int32 range")
        return value.to(device=device, dtype=torch.int32)
    if isinstance(value, (list, tuple)):
        return _per_row(name, torch.tensor(value, dtype=torch.int64), batch_size, device)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or an integer tensor, got {type(value).__name__}")
    if not _INT32.min <= value <= _INT32.max:
        raise ValueError(f"{name} = {value} is outside the int32 range")
    return torch.full((batch_size,), value, dtype=torch.int32, device=device)


@dataclass(frozen=True)
class BudgetForcing:
    """Token sequences of budget forcing for one model family.

    Parameters
    ----------
    end_think_ids : sequence of int
        The end-of-thinking delimiter (e.g. the ids of ``"</think>"``); not empty.
    wait_ids : sequence of int
        Inserted instead of an early end (e.g. the ids of ``"Wait"``). May be
        empty: then an early end is simply given probability 0.
    answer_prefix_ids : sequence of int
        Forced after the delimiter when the maximum is reached (e.g. the ids of
        ``"Final Answer:"``). May be empty.
    """

    end_think_ids: Sequence[int]
    wait_ids: Sequence[int] = ()
    answer_prefix_ids: Sequence[int] = ()

    def __post_init__(self):
        end = _id_list("end_think_ids", self.end_think_ids)
        if not end:
            raise ValueError("end_think_ids must not be empty")
        object.__setattr__(self, "end_think_ids", tuple(end))
        object.__setattr__(self, "wait_ids", tuple(_id_list("wait_ids", self.wait_ids)))
        object.__setattr__(self, "answer_prefix_ids", tuple(_id_list("answer_prefix_ids", self.answer_prefix_ids)))

    @property
    def forced_ids(self) -> list[int]:
        return [*self.wait_ids, *self.end_think_ids, *self.answer_prefix_ids]

    def init_state(self, batch_size: int, min_tokens=0, max_tokens=-1, min_waits=0, device=None) -> "BudgetState":
        """Fresh state for ``batch_size`` rows that start thinking now.

        ``min_tokens``, ``max_tokens`` and ``min_waits`` are ints or per-row
        integer tensors of length ``batch_size``. A row with ``max_tokens < 0``
        has no budget and is never touched.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        mn = _per_row("min_tokens", min_tokens, batch_size, device)
        mx = _per_row("max_tokens", max_tokens, batch_size, device)
        mw = _per_row("min_waits", min_waits, batch_size, device)
        from .budget_rules import init_state  # the state machine's module (it imports this one)

        state = BudgetState(self, init_state(mn, mx, mw, dtype=torch.int32))
        state.validate()
        return state


class BudgetState:
    """Per-row budget-forcing state, updated in place by :func:`tts_kernels.sample`."""

    def __init__(self, forcing: BudgetForcing, data: torch.Tensor):
        self.forcing = forcing
        self.data = data
        self._forced_cache: dict = {}

    # -- views -----------------------------------------------------------------
    def _col(self, i):
        return self.data[:, i]

    min_tokens = property(lambda self: self._col(MIN_TOKENS))
    max_tokens = property(lambda self: self._col(MAX_TOKENS))
    min_waits = property(lambda self: self._col(MIN_WAITS))
    num_thinking = property(lambda self: self._col(NUM_THINKING))
    waits_used = property(lambda self: self._col(WAITS_USED))
    phase = property(lambda self: self._col(PHASE))

    @property
    def batch_size(self) -> int:
        return self.data.shape[0]

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def is_thinking(self) -> torch.Tensor:
        """bool [B]: the row has not finished its end-of-thinking sequence."""
        return self.phase != DONE

    @property
    def has_pending(self) -> torch.Tensor:
        """bool [B]: the next token of the row is forced."""
        return self._col(POS) < self._col(STOP)

    def forced_ids_tensor(self, device=None) -> torch.Tensor:
        """int32 tensor of ``wait ++ end ++ answer`` ids on ``device`` (cached)."""
        device = torch.device(device) if device is not None else self.device
        t = self._forced_cache.get(device)
        if t is None:
            t = torch.tensor(self.forcing.forced_ids, dtype=torch.int32, device=device)
            self._forced_cache[device] = t
        return t

    def validate(self) -> None:
        """Check budgets on the host (syncs on CUDA)."""
        d = self.data
        if d.dim() != 2 or d.shape[1] != STATE_COLUMNS or d.dtype != torch.int32:
            raise ValueError(f"budget state must be int32 [B, {STATE_COLUMNS}], got {d.dtype} {tuple(d.shape)}")
        has = d[:, MAX_TOKENS] >= 0
        if bool((has & (d[:, MIN_TOKENS] > d[:, MAX_TOKENS])).any()):
            raise ValueError("min_tokens must be <= max_tokens for every row with a budget")
        if bool((d[:, MIN_TOKENS] < 0).any()):
            raise ValueError("min_tokens must be >= 0")
        if bool((d[:, MIN_WAITS] < 0).any()):
            raise ValueError("min_waits must be >= 0")

    # -- search support ----------------------------------------------------------
    def index_select(self, rows: torch.Tensor) -> "BudgetState":
        """New state whose row i is a copy of row ``rows[i]`` (fork/reorder)."""
        return BudgetState(self.forcing, self.data.index_select(0, rows.to(self.device)).contiguous())

    def __repr__(self) -> str:
        return f"BudgetState(batch_size={self.batch_size}, device={self.device}, forcing={self.forcing})"
