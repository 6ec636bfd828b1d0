"""Pure-PyTorch reference of the fused sampler (also the fallback implementation).

Every implementation takes the same materialised arguments::

    logits       float32/bfloat16/float16 [B, V]
    temperature  float32 [B]   (0 = greedy)
    top_k        int32   [B]   (<= 0 or >= V: off)
    top_p        float32 [B]   (>= 1: off)
    min_p        float32 [B]   (<= 0: off)
    seed, offset int64   [B]   (Philox key and counter, see ``philox.py``)
    budget       int32   [B, 8] or None, updated in place (see ``budget.py``)
    forced_ids   int32   [L]  = wait ++ end ++ answer_prefix  (or None)
    num_wait, num_end  int     lengths of the wait and end sequences in forced_ids

and returns ``(token_ids int64 [B], logprobs float32 [B])``.

Semantics of one row (``z = logits / temperature`` in float32):

* invalid row (any NaN or +inf, or no finite logit): token -1, logprob NaN,
  budget row untouched.
* forced token (budget rules 1 and 2): emitted as is.
* greedy row: first index of the maximum logit.
* sampled row: keep ``z >= t_k`` (t_k = k-th largest z; ties at the threshold
  are kept), then, renormalised over that set, the most likely tokens down to
  the first whose cumulative probability reaches top_p (``z >= t_p``, ties
  kept), then tokens with ``p >= min_p * p_max``; draw the first index of
  the maximum of ``z + gumbel`` over the kept tokens.
* logprob: ``log_softmax(logits.float())[token]`` of the unmodified logits.
"""
from __future__ import annotations

import torch

from . import philox
from .budget import DONE, ENDING, THINKING


def row_validity(x: torch.Tensor) -> torch.Tensor:
    """bool [B]: no NaN, no +inf, at least one finite logit."""
    return ~(torch.isnan(x).any(1) | torch.isposinf(x).any(1)) & torch.isfinite(x).any(1)


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


def sample_reference(logits, temperature, top_k, top_p, min_p, seed, offset,
                     budget=None, forced_ids=None, num_wait=0, num_end=0):
    B, V = logits.shape
    dev = logits.device
    x = logits.float()
    valid = row_validity(x)
    lse = torch.logsumexp(x, dim=1)

    # ---- budget rules 1 and 2: forced tokens; rule 3's end masking -----------
    forced_tok = torch.full((B,), -1, dtype=torch.int64, device=dev)
    free = need = None
    if budget is not None:
        d = budget.to(torch.int64)
        mn, mx, mw, nt, wu, ph, pos, stop = d.unbind(1)
        ids = forced_ids.to(torch.int64)
        end0 = ids[num_wait]
        active = valid & (mx >= 0) & (ph != DONE)
        force_end = active & (ph == THINKING) & (nt >= mx)
        pending = active & ~force_end & (pos < stop)
        free = active & ~force_end & ~pending
        need = free & ((nt < mn) | (wu < mw))
        safe_pos = pos.clamp(0, ids.numel() - 1)
        forced_tok = torch.where(force_end, end0, torch.where(pending, ids[safe_pos], forced_tok))
        if num_wait == 0:  # no Wait sequence: an early end gets probability 0
            hit = (torch.arange(V, device=dev) == end0).view(1, -1) & need.view(-1, 1)
            x = x.masked_fill(hit, float("-inf"))
            valid = valid & torch.isfinite(x).any(1)

    # ---- draw -------------------------------------------------------------------
    greedy = temperature <= 0
    t = torch.where(greedy, torch.ones_like(temperature), temperature).view(-1, 1)
    z = x / t
    keep = filter_mask(z, top_k, top_p, min_p)
    scores = torch.where(keep, z + philox.gumbel(seed, offset, V), float("-inf"))
    drawn = torch.where(greedy, torch.argmax(x, dim=1), torch.argmax(scores, dim=1))
    tok = torch.where(forced_tok >= 0, forced_tok, drawn)

    # ---- budget rule 3 and state update --------------------------------------------
    if budget is not None:
        free = free & valid
        need = need & valid
        is_end = free & (tok == end0)
        replace = is_end & need
        natural_end = is_end & ~need
        if num_wait > 0:
            tok = torch.where(replace, ids[0], tok)
        forced_pending_wait = pending & (ph == THINKING)
        nt = nt + (free & ~natural_end).long() + forced_pending_wait.long()
        wu = wu + replace.long()
        lw, le = num_wait, num_end
        la = ids.numel() - lw - le
        new_pos = torch.where(pending, pos + 1, pos)
        new_stop = stop
        new_pos = torch.where(force_end | natural_end, torch.full_like(pos, lw + 1), new_pos)
        new_stop = torch.where(force_end, torch.full_like(stop, lw + le + la), new_stop)
        new_stop = torch.where(natural_end, torch.full_like(stop, lw + le), new_stop)
        new_pos = torch.where(replace, torch.ones_like(pos), new_pos)
        new_stop = torch.where(replace, torch.full_like(stop, lw), new_stop)
        ph = torch.where(force_end | natural_end, torch.full_like(ph, ENDING), ph)
        ph = torch.where((ph == ENDING) & (new_pos >= new_stop), torch.full_like(ph, DONE), ph)
        new = torch.stack([mn, mx, mw, nt, wu, ph, new_pos, new_stop], dim=1).to(torch.int32)
        budget.copy_(torch.where(valid.view(-1, 1), new, budget))

    tok = torch.where(valid, tok, torch.full_like(tok, -1))
    logp = logits.float().gather(1, tok.clamp(min=0).view(-1, 1)).squeeze(1) - lse
    logp = torch.where(valid, logp, torch.full_like(logp, float("nan")))
    return tok, logp
