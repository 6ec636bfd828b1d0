"""Public sampling API: :func:`sample`."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import _checks
from . import impls, params
from .budget import BudgetState
from .reference import row_validity


class SampleOutput(NamedTuple):
    """Result of :func:`sample`."""

    token_ids: torch.Tensor
    """int64 [B]: the emitted token of each row (-1 for an invalid row when check_nan=False)."""
    logprobs: Optional[torch.Tensor]
    """float32 [B]: ``log_softmax(logits.float())[b, token]`` of the unmodified logits; None when called with
    ``return_logprobs=False``."""


def sample(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, offset=None,
           budget=None, check_nan=True, *, return_logprobs=True, validate=True, backend="auto") -> SampleOutput:
    """Draw one token per row with budget forcing and temperature/top-k/top-p/min-p, in one op.

    Parameters
    ----------
    logits : Tensor
        ``[B, V]`` float32, bfloat16 or float16, on CPU or CUDA. Rows may be padded (row
        stride ``>= V``, unit stride along V; e.g. ``buf[:, :V]`` of a ``[B, Vpad]`` buffer): read in
        place, and with ``Vpad`` a multiple of 16 the GPU kernel uses 16-byte loads for any V.
    temperature : float or Tensor
        Softmax temperature, ``>= 0``; 0 means greedy (argmax, first index on ties) for the row, and
        so does a temperature below 2**-126 or one at which the row's largest logit / T overflows
        float32 (``params.greedy_rows``; the draw would be the argmax anyway). A NaN temperature is
        refused (with ``validate=False``: refused by ``check_nan=True`` after the draw, and with
        ``check_nan=False`` its row gets token -1, as an invalid row does).
    top_k : int or Tensor
        Keep the ``top_k`` most likely tokens (ties at the threshold kept); 0 = off.
    top_p : float or Tensor
        In ``(0, 1]``. After top-k, keep the most likely tokens down to the first
        whose renormalised cumulative probability reaches ``top_p``; 1 = off.
    min_p : float or Tensor
        In ``[0, 1]``. Drop tokens whose probability is below ``min_p`` times the
        largest; 0 = off.
    seed, offset : int or Tensor, optional
        Per-row Philox key and counter (int64). The draw of a row is a pure
        function of (seed, offset, its logits and parameters): identical rows
        with identical seed and offset draw the same token, so give each
        sequence its own seed and advance ``offset`` (e.g. its position) every
        step. ``seed=None`` draws one seed per row from torch's default
        generator of the logits' device; ``offset=None`` means 0.
    budget : BudgetState, optional
        Budget-forcing state from :meth:`BudgetForcing.init_state`; updated in place.
    check_nan : bool
        Raise ``ValueError`` for a row with a NaN or +inf logit or no finite
        logit. Costs one extra read of the logits and a host sync; pass
        ``False`` inside decode loops and CUDA graphs, where such a row gets
        token -1 (logprob NaN, budget row untouched) and other rows are unaffected.
        The other ways to get no token (a NaN temperature passed with
        ``validate=False``; a row below its thinking minimum, no Wait ids, and the
        end token its only finite logit) also raise with ``check_nan=True``, after
        the other rows' budget states have advanced.
    return_logprobs : bool, keyword-only
        Also return each token's logprob (default). ``False`` returns ``logprobs=None`` and saves the
        work of the raw logits' logsumexp: on a GPU one of pass 1's two exponentials per token (the
        special-function units' share of a bf16 row halves), on the CPU the stats pass's exponentials.
        The tokens are the same either way.
    validate : bool, keyword-only
        Check the values of tensor-valued parameters (a host sync on CUDA).
        Python scalars are always checked. Every check is skipped while
        compiling or capturing a CUDA graph.
    backend : {"auto", "reference", "cpp", "triton"}, keyword-only
        ``auto`` calls the registered op ``torch.ops.tts_kernels.sample``, which
        runs the C++ kernel on CPU (reference when not built) and Triton on CUDA.

    Returns
    -------
    SampleOutput
        ``token_ids`` int64 [B] and ``logprobs`` float32 [B] (None with ``return_logprobs=False``).

    Examples
    --------
    >>> bf = BudgetForcing(end_think_ids=[7], wait_ids=[9], answer_prefix_ids=[3, 4])
    >>> state = bf.init_state(2, min_tokens=4, max_tokens=16)
    >>> out = sample(torch.randn(2, 32), temperature=0.7, top_p=0.95, seed=torch.tensor([1, 2]),
    ...              offset=0, budget=state)
    """
    values = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, offset=offset)
    checking = _checks.checks_enabled()
    if checking:
        _checks.check_tensor("logits", logits, dim=2, dtypes=_checks.FLOAT_DTYPES)
        if logits.shape[1] == 0:
            raise ValueError("logits must have at least one column (vocabulary size V >= 1)")
        for name, flag in (("check_nan", check_nan), ("return_logprobs", return_logprobs)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        params.check_scalars(values, validate=validate)
    B, V = logits.shape
    dev = logits.device
    if logits.stride(1) != 1 or (B > 1 and logits.stride(0) < V):
        logits = logits.contiguous()   # padded rows (row stride > V, see pad_vocab) are kept as they are
    rows = params.to_rows(values, B, dev)

    state = forced = None
    num_wait = num_end = 0
    if budget is not None:
        if checking:
            _check_budget(budget, B, V, dev)
        state = budget.data
        forced = budget.forced_ids_tensor(dev)
        num_wait = len(budget.forcing.wait_ids)
        num_end = len(budget.forcing.end_think_ids)

    if checking and check_nan and B > 0:
        bad = ~row_validity(logits)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"logits row {i} has a NaN or +inf entry or no finite entry "
                             f"(pass check_nan=False to get token -1 for such rows instead)")

    needs = params.in_use(values)
    if backend == "auto":  # a filter the device's kernel lacks: this call runs on the reference
        fn = torch.ops.tts_kernels.sample if impls.covers(dev, needs) else impls.get("reference")
    else:
        impls.require(backend, needs)
        fn = impls.get(backend)
    token_ids, logprobs = fn(logits, *rows, state, forced, num_wait, num_end, bool(return_logprobs))
    if checking and check_nan and B > 0 and bool((token_ids < 0).any()):
        # passed the NaN check: a NaN temperature (validate=False), or the row's only finite logit was an end
        # token masked by budget rule 3
        i = int((token_ids < 0).nonzero()[0, 0])
        if bool(torch.isnan(rows.temperature[i])):
            raise ValueError(f"temperature[{i}] is NaN (with check_nan=False its row gets token -1)")
        raise ValueError(f"logits row {i}: no token can be drawn: its only finite logit is the end-of-thinking "
                         f"token, masked because the row is below its thinking minimum and "
                         f"budget.forcing.wait_ids is empty")
    return SampleOutput(token_ids, logprobs if return_logprobs else None)


def _check_budget(budget, batch_size, vocab_size, device):
    if not isinstance(budget, BudgetState):
        raise TypeError(f"budget must be a BudgetState from BudgetForcing.init_state, got {type(budget).__name__}")
    if budget.batch_size != batch_size:
        raise ValueError(f"budget has {budget.batch_size} rows but logits have {batch_size}")
    if budget.device != device:
        raise ValueError(f"budget is on {budget.device} but logits are on {device}")
    f = budget.forcing
    for name in ("end_think_ids", "wait_ids", "answer_prefix_ids"):
        ids = getattr(f, name)
        if ids and max(ids) >= vocab_size:
            raise ValueError(f"budget.forcing.{name} has token id {max(ids)} outside [0, {vocab_size})")
