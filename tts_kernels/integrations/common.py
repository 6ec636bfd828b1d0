"""Engine-independent budget forcing for logits processors (vectorised torch ops).

A logits processor (vLLM, Hugging Face) cannot see the token the engine samples
from the logits it returns; it sees it one step later in the sequence. So the
fused op's single step (``tts_kernels.sample`` with a ``BudgetState``) is split
here into three batched pieces:

* :func:`plan`: from the budget state of every row (int64 [B, 8], the columns
  of :mod:`tts_kernels.sampling.budget`), the forced token of the row (-1:
  none) and whether an end drawn now would be too early (``need``).
* :func:`transform`: the logits rewrite. A forced row keeps one finite logit
  (its forced token). A ``need`` row whose forcing has a Wait sequence gets
  "Wait injection in distribution": with probability ``p_end`` (the end's
  probability under the row's own sampling distribution, see
  :func:`end_probability`) the Wait sequence is forced, otherwise the end is
  masked, so every other token keeps exactly its fused-op probability. A
  ``need`` row without a Wait sequence gets its end masked (as the fused op).
* :func:`advance`: the state update once the emitted token is known, given
  whether that token was a Wait forced in place of an end (``replaced``,
  remembered from :func:`transform`).

Per-row forcing sequences (different ``end/wait/answer`` ids per request) are
held in a :class:`ForcingTable`. Nothing here loops over rows in Python.
"""
from __future__ import annotations

import torch

from ..sampling import philox
# the state machine itself (one definition, shared with the fused sampler's reference)
from ..sampling.budget_rules import ForcingTable, advance, init_state, plan, replay, rules  # noqa: F401
from ..sampling.params import greedy_rows
from ..sampling.reference import filter_mask

_NEG_INF = float("-inf")
#: vLLM's greedy threshold (its samplers treat a temperature below it as greedy); the adapters map such a
#: request's temperature to 0 so that the budget masking matches the token vLLM draws
VLLM_SAMPLING_EPS = 1e-5


def vllm_temperature(t) -> float:
    """A vLLM request's temperature as the sampler sees it: 0 (greedy) below :data:`VLLM_SAMPLING_EPS`."""
    t = float(t)
    return 0.0 if t < VLLM_SAMPLING_EPS else t


def end_probability(logits: torch.Tensor, end0: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                    top_p: torch.Tensor, min_p: torch.Tensor, sort: bool = True):
    """``(p_end float32 [B], keep bool [B, V])`` under each row's sampling distribution.

    The distribution of ``tts_kernels.sample``: ``softmax(logits / T)`` over the
    tokens kept by top-k, then top-p, then min-p (``filter_mask``), renormalised.
    A greedy row (``params.greedy_rows``: temperature 0, or so small that ``max(x) / T``
    overflows) has ``p_end`` 1 when the end is
    the first index of the maximum, else 0, and ``keep`` is all True.
    ``sort=False`` skips the sort of ``filter_mask`` (same result only when no
    row has top-k or top-p on; the caller knows this from the request
    settings, without reading the device).
    """
    x = logits.float()
    greedy = greedy_rows(temperature, x.amax(1))
    t = torch.where(greedy, torch.ones_like(temperature), temperature).view(-1, 1).float()
    z = x / t
    if sort:
        keep = filter_mask(z, top_k, top_p, min_p)
    else:  # filter_mask with top-k and top-p off: only min-p (relative to the maximum) remains
        mp = min_p.view(-1, 1).float()
        keep = (torch.exp(z - z.max(dim=1, keepdim=True).values) >= mp) | (mp <= 0.0)
    keep = keep | greedy.view(-1, 1)
    zmax = z.max(dim=1, keepdim=True).values
    zmax = torch.where(torch.isfinite(zmax), zmax, torch.zeros_like(zmax))
    e = torch.where(keep, torch.exp(z - zmax), torch.zeros_like(z))
    total = e.sum(1)
    p = e.gather(1, end0.view(-1, 1)).squeeze(1) / total.clamp_min(1e-38)
    p = torch.where(total > 0, p, torch.zeros_like(p))
    p_greedy = (torch.argmax(x, dim=1) == end0).float()
    return torch.where(greedy, p_greedy, p), keep


def uniform_draw(seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """float32 [B] uniforms in (0, 1) from the package's Philox stream (independent of the batch)."""
    return philox.uniforms(seed, offset, 1)[:, 0]


def transform(logits: torch.Tensor, state: torch.Tensor, table: ForcingTable, temperature: torch.Tensor,
              top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor, uniform: torch.Tensor,
              premask: bool = True):
    """Rewrite ``logits`` [B, V] for one budget-forcing step.

    Returns ``(new_logits, replaced bool [B])``: ``replaced`` marks rows where a
    Wait is forced in place of an end (pass it to :func:`advance` with the
    emitted token). ``uniform`` [B] in (0, 1) decides the Wait injection
    (``uniform < p_end``). With ``premask`` a row whose end is masked also
    loses the tokens outside its top-k/top-p/min-p keep set, so the engine's
    own filters, applied again afterwards, cannot add tokens the fused op
    would not draw. One host sync (whether any row needs ``p_end``); see
    :func:`transform_sync_free` for the variant without it.
    """
    B, V = logits.shape
    dev = logits.device
    forced, need = plan(state, table)
    inject = need & table.has_wait
    replaced = torch.zeros(B, dtype=torch.bool, device=dev)
    keep = None
    if bool(inject.any()):  # one host sync; the sort below is only paid for these rows
        rows = inject.nonzero().squeeze(1)
        p_end, keep_rows = end_probability(logits.index_select(0, rows), table.end0[rows], temperature[rows],
                                           top_k[rows], top_p[rows], min_p[rows])
        hit = uniform[rows].float() < p_end
        replaced = replaced.index_put((rows,), hit)
        keep = torch.ones(B, V, dtype=torch.bool, device=dev).index_put((rows,), keep_rows)
    return _rewrite(logits, forced, need, inject, replaced, keep if premask else None, table), replaced


def injection_draw(logits: torch.Tensor, table: ForcingTable, temperature: torch.Tensor, top_k: torch.Tensor,
                   top_p: torch.Tensor, min_p: torch.Tensor, uniform: torch.Tensor, sort: bool = True):
    """State-independent half of the Wait injection, for every row: ``(hit bool [B], keep bool [B, V])``.

    ``hit``: ``uniform < p_end`` (a Wait would replace the end at this step if
    the end is still too early); ``keep``: the row's top-k/top-p/min-p keep set
    (see :func:`end_probability`). Combine with :func:`plan`'s ``need`` in
    :func:`transform_sync_free`. No host sync.
    """
    p_end, keep = end_probability(logits, table.end0, temperature, top_k, top_p, min_p, sort=sort)
    return uniform.float() < p_end, keep


def transform_sync_free(logits: torch.Tensor, state: torch.Tensor, table: ForcingTable, hit: torch.Tensor,
                        keep: torch.Tensor | None, premask: bool = True):
    """:func:`transform` without a host sync, from a precomputed :func:`injection_draw`.

    ``hit`` (bool [B]) and ``keep`` (bool [B, V] or None) come from
    :func:`injection_draw` on the same rows (rows that can never need an
    injection may pass ``hit`` False and ``keep`` all True). Returns
    ``(new_logits, replaced bool [B])`` exactly as :func:`transform` would
    for the same uniforms.
    """
    forced, need = plan(state, table)
    inject = need & table.has_wait
    replaced = inject & hit
    return _rewrite(logits, forced, need, inject, replaced, keep if premask else None, table), replaced


def _rewrite(logits, forced, need, inject, replaced, keep, table: ForcingTable):
    """The logits rewrite shared by both transforms (forced token, end mask, premask)."""
    V = logits.shape[1]
    dev = logits.device
    end0 = table.end0
    forced = torch.where(replaced, table.wait0, forced)
    col = torch.arange(V, device=dev).view(1, -1)
    is_forced = (forced >= 0).view(-1, 1)
    mask_end = (need & ~replaced).view(-1, 1) & (col == end0.view(-1, 1))
    drop = (is_forced & (col != forced.view(-1, 1))) | mask_end
    if keep is not None:
        drop |= (inject & ~replaced).view(-1, 1) & ~keep
    out = logits.masked_fill(drop, _NEG_INF)
    return torch.where(is_forced & (col == forced.view(-1, 1)), torch.zeros((), dtype=out.dtype, device=dev), out)
