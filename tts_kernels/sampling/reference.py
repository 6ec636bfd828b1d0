"""Pure-PyTorch reference of the fused sampler (also the fallback implementation).

Every implementation takes the same materialised arguments::

    logits       float32/bfloat16/float16 [B, V]
    temperature  float32 [B]   (0 = greedy; params.greedy_rows)
    top_k        int32   [B]   (<= 0 or >= V: off)
    top_p        float32 [B]   (>= 1: off)
    min_p        float32 [B]   (<= 0: off)
    seed, offset int64   [B]   (Philox key and counter, see ``philox.py``)
    budget       int32   [B, 8] or None, updated in place (see ``budget.py``)
    forced_ids   int32   [L]  = wait ++ end ++ answer_prefix  (or None)
    num_wait, num_end  int     lengths of the wait and end sequences in forced_ids

and returns ``(token_ids int64 [B], logprobs float32 [B])``.

Semantics of one row (``z = logits / temperature`` in float32):

* invalid row (any NaN or +inf, or no finite logit, or a NaN temperature): token -1,
  logprob NaN, budget row untouched.
* forced token (budget rules 1 and 2): emitted as is.
* greedy row (``params.greedy_rows``: temperature 0 or below 2**-126, or ``max(x) / T``
  overflowing float32): first index of the maximum logit.
* sampled row: keep ``z >= t_k`` (t_k = k-th largest z; ties at the threshold
  are kept), then, renormalised over that set, the most likely tokens down to
  the first whose cumulative probability reaches top_p (``z >= t_p``, ties
  kept), then tokens with ``p >= min_p * p_max``; draw by two-level
  Gumbel-max (:func:`draw`): among the groups of ``philox.GROUP_SIZE`` tokens,
  the first with the largest ``log(sum of exp(z) over its kept tokens) + group
  noise``, then in that group the first index of the maximum of ``z + token
  noise`` over its kept tokens (equal in distribution to ``softmax(z)`` over
  the kept set).
* logprob: ``log_softmax(logits.float())[token]`` of the unmodified logits.
"""
from __future__ import annotations

import torch

from . import params, philox
from .budget_rules import ForcingTable, advance, plan, rules


def row_validity(x: torch.Tensor) -> torch.Tensor:
    """bool [B]: no NaN, no +inf, at least one finite logit: the row maximum is finite (torch's max
    reductions propagate NaN; +inf is the maximum; a row of -inf has max -inf). One read of the
    logits: also the check of ``sample(..., check_nan=True)``."""
    return torch.isfinite(x.amax(1))


def filter_mask(z: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """bool [B, V]: tokens kept by top-k, then top-p, then min-p, on scaled logits ``z``."""
    B, V = z.shape
    sorted_z = torch.sort(z, dim=1, descending=True).values
    k = top_k.to(torch.int64)
    k = torch.where((k <= 0) | (k >= V), torch.full_like(k, V), k)
    t_k = sorted_z.gather(1, (k - 1).view(-1, 1))
    keep = z >= t_k
    zmax = sorted_z[:, :1]
    e_sorted = torch.exp(sorted_z - zmax) * (sorted_z >= t_k)
    cum = torch.cumsum(e_sorted, dim=1)
    reach = cum >= top_p.view(-1, 1) * cum[:, -1:]
    n = torch.argmax(reach.to(torch.uint8), dim=1, keepdim=True)  # first index reaching top_p
    t_p = sorted_z.gather(1, n)
    keep &= (z >= t_p) | (top_p.view(-1, 1) >= 1.0)
    e = torch.exp(z - zmax)
    keep &= (e >= min_p.view(-1, 1)) | (min_p.view(-1, 1) <= 0.0)
    return keep


def draw_scores(z: torch.Tensor, keep: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor):
    """The two levels of the draw, in float32: ``(group_scores [B, G], token_scores [B, V])``.

    ``group_scores[b, j] = m + log(sum(exp(z - m)))`` over the kept tokens of group ``j``
    (``m`` their maximum) plus the group noise, ``-inf`` for a group with nothing kept;
    ``token_scores = z + token noise`` on kept tokens, ``-inf`` elsewhere."""
    B, V = z.shape
    G = philox.GROUP_SIZE
    ng = philox.num_groups(V)
    zk = torch.where(keep, z, float("-inf"))
    zg = torch.nn.functional.pad(zk, (0, ng * G - V), value=float("-inf")).view(B, ng, G)
    m = zg.amax(dim=2)
    has = m > float("-inf")
    ms = torch.where(has, m, torch.zeros_like(m))
    lw = ms + torch.log(torch.exp(zg - ms.unsqueeze(2)).sum(dim=2))
    gs = torch.where(has, lw + philox.group_gumbel(seed, offset, V), float("-inf"))
    ts = torch.where(keep, z + philox.gumbel(seed, offset, V), float("-inf"))
    return gs, ts


def draw(z: torch.Tensor, keep: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """int64 [B]: the drawn token of each row (rows with at least one kept token)."""
    gs, ts = draw_scores(z, keep, seed, offset)
    G = philox.GROUP_SIZE
    g = torch.argmax(gs, dim=1)                          # first index of the maximum
    in_group = (torch.arange(z.shape[1], device=z.device).view(1, -1) // G) == g.view(-1, 1)
    return torch.argmax(torch.where(in_group, ts, float("-inf")), dim=1)


def sample_reference(logits, temperature, top_k, top_p, min_p, seed, offset,
                     budget=None, forced_ids=None, num_wait=0, num_end=0, return_logprobs=True):
    B, V = logits.shape
    dev = logits.device
    raw = logits.float()   # the unmodified logits (the logprobs'); x: as the draw sees them
    x = raw
    valid = row_validity(x) & ~torch.isnan(temperature)

    # ---- budget rules 1 and 2: forced tokens; rule 3's end masking (budget_rules.py) ----
    forced_tok = torch.full((B,), -1, dtype=torch.int64, device=dev)
    if budget is not None:
        state = budget.to(torch.int64)
        table = ForcingTable.single(forced_ids, num_wait, num_end, B)
        forced_tok, need = plan(state, table)
        if num_wait == 0:  # no Wait sequence: an early end gets probability 0
            hit = (torch.arange(V, device=dev).view(1, -1) == table.end0.view(-1, 1)) & (need & valid).view(-1, 1)
            x = x.masked_fill(hit, float("-inf"))
            valid = valid & torch.isfinite(x).any(1)

    # ---- draw -------------------------------------------------------------------
    greedy = params.greedy_rows(temperature, x.amax(1))
    t = torch.where(greedy, torch.ones_like(temperature), temperature).view(-1, 1)
    z = x / t
    keep = filter_mask(z, top_k, top_p, min_p)
    drawn = torch.where(greedy, torch.argmax(x, dim=1), draw(z, keep & torch.isfinite(z), seed, offset))
    tok = torch.where(forced_tok >= 0, forced_tok, drawn)

    # ---- budget rule 3 (an early end becomes a Wait) and the state update ----------
    if budget is not None:
        free = rules(state)[2]
        replace = free & need & (tok == table.end0)
        if num_wait > 0:
            tok = torch.where(replace, table.wait0, tok)
        budget.copy_(advance(state, tok, replace, table, valid=valid).to(budget.dtype))

    tok = torch.where(valid, tok, torch.full_like(tok, -1))
    if not return_logprobs:
        return tok, torch.empty(0, dtype=torch.float32, device=dev)
    logp = raw.gather(1, tok.clamp(min=0).view(-1, 1)).squeeze(1) - torch.logsumexp(raw, dim=1)
    logp = torch.where(valid, logp, torch.full_like(logp, float("nan")))
    return tok, logp
