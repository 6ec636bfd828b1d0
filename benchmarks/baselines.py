"""What a user would otherwise run, and the tts_kernels backends, as one registry.

Baselines (written here, in the style of HF ``generate`` / vLLM's PyTorch sampler):

``torch.sort``
    temperature scale -> (top-k threshold on the sorted logits) -> (softmax +
    cumsum top-p mask on the sorted logits) -> scatter back -> (min-p mask on the
    softmax) -> softmax -> ``torch.multinomial``. Like HF and vLLM it applies
    only the filters that are enabled in the batch: with no top-k/top-p it does
    not sort (plain temperature is then the same work as ``torch.multinomial``).
    Greedy rows take ``argmax``.
``torch.multinomial``
    ``softmax(logits / T)`` + ``torch.multinomial`` with no filtering at all
    (the cheapest correct temperature sampler in PyTorch); greedy takes ``argmax``.

Both return ``(token_ids int64 [B], logprobs float32 [B])`` like the fused op:
the logprob is ``log_softmax(logits)[token]`` of the raw logits (one
``logsumexp`` + ``gather``), so that every implementation produces the same outputs.

tts_kernels entries call the public :func:`tts_kernels.sample` the way a decode
loop does (``validate=False, check_nan=False``, per-row parameter and seed
tensors made once):

``tts_kernels.reference``  the package's PyTorch reference (``backend="reference"``)
``tts_kernels.cpp``        the C++ CPU kernel (``backend="cpp"``)
``tts_kernels.triton``     the Triton kernel (``backend="triton"``, CUDA)
``tts_kernels.auto``       the registered op (C++ on CPU, Triton on CUDA)
``tts_kernels.cpp-tokens`` / ``tts_kernels.triton-tokens``  the C++ / Triton kernel with ``return_logprobs=False``
                           (the tokens only): reported against the same kernel with logprobs, not against
                           the baselines above, which return logprobs
"""
from __future__ import annotations

import importlib.util
import os

import torch

from common import Impl, Registry

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------
def _per_row(value, batch, device, dtype):
    return torch.full((batch,), value, dtype=dtype, device=device)


def _logprobs(x: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    return x.gather(1, tok.view(-1, 1)).squeeze(1) - torch.logsumexp(x, dim=1)


def sort_based_sample(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """Sort-based top-k / top-p / min-p sampling as in HF / vLLM (PyTorch ops only)."""
    x = logits.float()
    B, V = x.shape
    if temperature <= 0:
        tok = torch.argmax(x, dim=1)
        return tok, _logprobs(x, tok)
    dev = x.device
    # per-row parameter tensors, as a serving engine keeps them
    t = _per_row(temperature, B, dev, torch.float32)
    z = x / t.unsqueeze(1)
    use_k = 0 < top_k < V
    use_p = top_p < 1.0
    if use_k or use_p:
        zs, idx = torch.sort(z, dim=1, descending=False)
        if use_k:
            k = _per_row(top_k, B, dev, torch.int64)
            thr = zs.gather(1, (V - k).unsqueeze(1))
            zs.masked_fill_(zs < thr, NEG_INF)
        if use_p:
            p = _per_row(top_p, B, dev, torch.float32)
            cum = torch.softmax(zs, dim=1).cumsum_(dim=1)
            drop = cum <= (1.0 - p).unsqueeze(1)
            drop[:, -1] = False  # always keep the most likely token
            zs.masked_fill_(drop, NEG_INF)
        z = torch.empty_like(zs).scatter_(1, idx, zs)
    probs = torch.softmax(z, dim=1)
    if min_p > 0:
        mp = _per_row(min_p, B, dev, torch.float32)
        pmax = probs.amax(dim=1, keepdim=True)
        probs = probs.masked_fill(probs < mp.unsqueeze(1) * pmax, 0.0)
    tok = torch.multinomial(probs, num_samples=1).squeeze(1)
    return tok, _logprobs(x, tok)


def multinomial_sample(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """Plain ``softmax(logits / T)`` + ``torch.multinomial``; filters are ignored."""
    x = logits.float()
    if temperature <= 0:
        tok = torch.argmax(x, dim=1)
    else:
        tok = torch.multinomial(torch.softmax(x / temperature, dim=1), num_samples=1).squeeze(1)
    return tok, _logprobs(x, tok)


# ----------------------------------------------------------------------------
# tts_kernels backends
# ----------------------------------------------------------------------------
def make_tts(backend: str, budget_factory=None, return_logprobs=True):
    """``make(cfg) -> fn(logits)`` calling tts_kernels.sample with ``backend`` (``return_logprobs=False``: the
    tokens only).

    The per-row parameters (temperature, top_k, top_p, min_p, seed, offset) are
    made once as ``[B]`` tensors on the logits' device, the way a serving engine
    keeps them, so a call costs the op itself plus the API's scalar checks.
    ``budget_factory(B, V, device) -> BudgetState`` adds budget forcing.
    """
    def make(cfg):
        import tts_kernels as tk

        cache = {}

        def fn(logits):
            B, V = logits.shape
            key = (B, V, logits.device)
            if key not in cache:
                dev = logits.device
                args = dict(
                    temperature=torch.full((B,), float(cfg.get("temperature", 1.0)), device=dev),
                    top_k=torch.full((B,), int(cfg.get("top_k", 0)), dtype=torch.int32, device=dev),
                    top_p=torch.full((B,), float(cfg.get("top_p", 1.0)), device=dev),
                    min_p=torch.full((B,), float(cfg.get("min_p", 0.0)), device=dev),
                    seed=torch.arange(1, B + 1, dtype=torch.int64, device=dev),
                    offset=torch.zeros(B, dtype=torch.int64, device=dev),
                    budget=budget_factory(B, V, dev) if budget_factory else None)
                cache.clear()
                cache[key] = args
            return tk.sample(logits, **cache[key], check_nan=False, validate=False, backend=backend,
                             return_logprobs=return_logprobs)
        return fn
    return make


def steady_thinking_budget(B, V, device):
    """Budget state whose rows stay in the thinking phase forever (the common decode case).

    min_tokens = max_tokens = 2**30: the end token is never forced and a drawn
    end is replaced by a one-token Wait, so every call runs the full budget
    logic and updates every row in place.
    """
    from tts_kernels import BudgetForcing

    bf = BudgetForcing(end_think_ids=[V - 1], wait_ids=[V - 2], answer_prefix_ids=[V - 3, V - 4])
    return bf.init_state(B, min_tokens=2 ** 30, max_tokens=2 ** 30, device=device)


def _check_cpp(device):
    if device.type != "cpu":
        return "the C++ kernel runs on CPU only"
    import tts_kernels as tk
    from tts_kernels import _ext

    if not tk.extension_available():
        return f"C++ extension unavailable ({_ext.load_error})"
    try:
        has = torch._C._dispatch_has_kernel_for_dispatch_key("tts_kernels_C::sample_cpu", "CPU")
    except RuntimeError:
        has = False
    if not has:
        return ("extension loaded but tts_kernels_C::sample_cpu has no CPU kernel "
                "(C++ sampler not built in; rebuild with pip install --no-build-isolation -e .)")
    return None


def _check_triton(device):
    if importlib.util.find_spec("triton") is None:
        return "triton not installed"
    if importlib.util.find_spec("tts_kernels.sampling.triton_kernel") is None:
        return "tts_kernels.sampling.triton_kernel not present yet"
    if device.type == "cuda":
        return None
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return None  # dry run of the code path only; the timing is meaningless
    return "Triton needs CUDA (set TRITON_INTERPRET=1 for an interpreted dry run)"


def _check_auto(device):
    if device.type == "cpu":
        reason = _check_cpp(device)
        return None if reason is None else f"would fall back to the reference: {reason}"
    if device.type == "cuda":
        reason = _check_triton(device)
        return None if reason is None else f"would fall back to the reference: {reason}"
    return "no kernel for this device"


def default_registry(include_auto: bool = True) -> Registry:
    reg = Registry()
    reg.register(Impl("tts_kernels.cpp", "tts_kernels", make_tts("cpp"), _check_cpp,
                      "C++ CPU kernel"))
    reg.register(Impl("tts_kernels.triton", "tts_kernels", make_tts("triton"), _check_triton,
                      "Triton kernel"))
    # the same kernels returning the tokens only (return_logprobs=False)
    reg.register(Impl("tts_kernels.cpp-tokens", "tts_kernels", make_tts("cpp", return_logprobs=False), _check_cpp,
                      "C++ CPU kernel, tokens only (return_logprobs=False)"))
    reg.register(Impl("tts_kernels.triton-tokens", "tts_kernels", make_tts("triton", return_logprobs=False),
                      _check_triton, "Triton kernel, tokens only (return_logprobs=False)"))
    if include_auto:
        reg.register(Impl("tts_kernels.auto", "tts_kernels", make_tts("auto"), _check_auto,
                          "registered op torch.ops.tts_kernels.sample"))
    reg.register(Impl("tts_kernels.reference", "baseline", make_tts("reference"),
                      description="package's own PyTorch reference"))
    reg.register(Impl("torch.sort", "baseline",
                      lambda cfg: (lambda logits: sort_based_sample(logits, **cfg)),
                      description="HF/vLLM-style sort + cumsum + torch.multinomial"))
    reg.register(Impl("torch.multinomial", "baseline",
                      lambda cfg: (lambda logits: multinomial_sample(logits, **cfg)),
                      description="softmax + torch.multinomial, no filtering"))
    return reg


#: the baselines every tts_kernels backend is compared with (speedup columns)
SPEEDUP_BASELINES = ("torch.sort", "torch.multinomial", "tts_kernels.reference")
#: tts_kernels backends whose speedups are reported
KERNELS = ("tts_kernels.cpp", "tts_kernels.triton", "tts_kernels.auto")
#: the kernels called with ``return_logprobs=False``, each reported against the same kernel with logprobs
#: (``report.tokens_only``; the baselines compute logprobs), not in the budget-overhead runs
TOKENS_ONLY = {"tts_kernels.cpp-tokens": "tts_kernels.cpp", "tts_kernels.triton-tokens": "tts_kernels.triton"}


def sort_path_sorts(cfg: dict) -> bool:
    """True when the sort-based baseline really sorts for this config."""
    return cfg.get("temperature", 1.0) > 0 and (cfg.get("top_k", 0) > 0 or cfg.get("top_p", 1.0) < 1.0)
