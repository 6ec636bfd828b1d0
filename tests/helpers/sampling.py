"""Helpers shared by the sampler tests: backends, random inputs, reference scores."""
from __future__ import annotations

import torch

import tts_kernels as tk
from tts_kernels.sampling import impls, params, philox
from tts_kernels.sampling.budget_rules import ForcingTable, plan
from tts_kernels.sampling.reference import draw_scores, filter_mask, row_validity

from helpers.backends import BACKENDS  # noqa: F401
from helpers.backends import require_backend as _require


def require_backend(name: str) -> None:
    """Skip (or fail in CI) when sampler backend ``name`` is not usable here."""
    _require(name, impls, "tts_kernels.sampling.triton_kernel")


def is_small(backend: str) -> bool:
    """The Triton interpreter is slow on CPU: keep its shapes small."""
    return backend == "triton" and not torch.cuda.is_available()


def random_logits(b, v, *, gen, dtype=torch.float32, device="cpu", scale=3.0, neg_inf_frac=0.1):
    x = torch.randn(b, v, generator=gen) * scale
    x[torch.rand(b, v, generator=gen) < neg_inf_frac] = float("-inf")
    x[:, 0] = x[:, 0].clamp(min=-1e4)  # keep one finite entry per row whatever the mask did
    return x.to(dtype=dtype, device=device)


def mixed_params(b, v, *, gen, device="cpu"):
    """Per-row parameters covering every filter alone, combined, off, and greedy rows."""
    choice = torch.randint(0, 6, (b,), generator=gen)
    temperature = torch.rand(b, generator=gen) * 1.5 + 0.3
    temperature[choice == 5] = 0.0  # greedy
    top_k = torch.where((choice == 1) | (choice == 4), torch.randint(1, max(2, v // 3), (b,), generator=gen), 0)
    top_p = torch.where((choice == 2) | (choice == 4), torch.rand(b, generator=gen) * 0.9 + 0.05, 1.0)
    min_p = torch.where((choice == 3) | (choice == 4), torch.rand(b, generator=gen) * 0.3, 0.0)
    seed = torch.randint(-(2 ** 62), 2 ** 62, (b,), generator=gen)
    offset = torch.randint(0, 2 ** 40, (b,), generator=gen)
    d = dict(temperature=temperature.float(), top_k=top_k.int(), top_p=top_p.float(), min_p=min_p.float(),
             seed=seed, offset=offset)
    return {k: t.to(device) for k, t in d.items()}


def reference_keep(logits, temperature, top_k, top_p, min_p):
    """(z, keep): the reference's scaled logits and kept tokens (bool [B, V])."""
    x = logits.float().cpu()
    t = temperature.cpu()
    z = x / torch.where(params.greedy_rows(t, x.amax(1)), torch.ones_like(t), t).view(-1, 1)
    keep = filter_mask(z, top_k.cpu(), top_p.cpu(), min_p.cpu()) & torch.isfinite(z)
    return z, keep


def order_keys(z):
    """int64 tensor: the kernel's uint32 order keys of float32 ``z`` (``_order_key``: unsigned integers in the
    floats' order, -0 just below +0)."""
    b = z.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(b < 0, b ^ 0x7FFFFFFF, b) + 2 ** 31


def key_floats(key):
    """float32 tensor: the floats of order keys ``key`` (int64; the inverse of :func:`order_keys`, as
    ``_from_key``: -inf at or below -inf's key 0x007FFFFF, whose keys below are NaNs)."""
    k = key - 2 ** 31
    b = torch.where(k < 0, k ^ 0x7FFFFFFF, k).to(torch.int32).view(torch.float32)
    return torch.where(key <= 0x007FFFFF, float("-inf"), b)


def _clear(scores, rel):
    """bool [B]: the best of ``scores`` (float64 [B, n]) beats the runner-up by more than rounding."""
    if scores.shape[1] < 2:
        return torch.ones(scores.shape[0], dtype=torch.bool)
    top2 = torch.topk(scores, 2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    return (gap > rel * top2[:, 0].abs().clamp(min=1.0)) | torch.isinf(top2[:, 1])


def drawn_logits(x, state, forced, num_wait, num_end):
    """The logits the reference draws from: end[0] masked (-inf) in the rows where budget rule 3
    gives an early end probability 0 (no Wait sequence), as ``sample_reference`` does."""
    if state is None or num_wait > 0:
        return x
    table = ForcingTable.single(forced.cpu(), num_wait, num_end, x.shape[0])
    _, need = plan(state.cpu().to(torch.int64), table)
    x = x.float().cpu().clone()
    rows = need.nonzero().view(-1)
    x[rows, table.end0[rows]] = float("-inf")
    return x


def decisive_rows(logits, temperature, top_k, top_p, min_p, seed, offset, rel=1e-5):
    """bool [B]: rows whose token no float rounding can change: greedy rows, and sampled rows
    whose best group score and best token score inside that group (``reference.draw_scores``)
    both beat their runners-up by more than ``rel`` (relative)."""
    z, keep = reference_keep(logits, temperature, top_k, top_p, min_p)
    gs, ts = draw_scores(z, keep, seed.cpu(), offset.cpu())
    g = torch.argmax(gs, dim=1)
    in_group = (torch.arange(z.shape[1]).view(1, -1) // philox.GROUP_SIZE) == g.view(-1, 1)
    ts = torch.where(in_group, ts, float("-inf"))
    greedy = params.greedy_rows(temperature.cpu(), logits.float().cpu().amax(1))
    return greedy | (_clear(gs.double(), rel) & _clear(ts.double(), rel))


def call(backend, logits, **kw):
    return tk.sample(logits, backend=backend, **kw)
