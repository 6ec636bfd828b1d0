"""The sampler's per-row parameters, defined once.

Every layer names this module instead of listing the parameters again: the
public API (:func:`tts_kernels.sample` checks and converts them from it), the
registered op (its schema is generated from it), the three implementations
(they take the parameters positionally in this order; a test checks their
signatures), and the decode engine's packed step buffer.

To add a sampling filter: add a :class:`SamplerParam` to :data:`FILTERS` and
implement it in ``reference.py``. Kernels that do not implement it yet leave it
out of their ``supports`` set (``impls.py``); a call that uses it then runs on
the reference (backend ``auto``) or is refused with a clear error (a named
backend), so the filter can land in the reference first.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from typing import Optional

import torch

from .. import _checks


@dataclass(frozen=True)
class SamplerParam:
    """One per-row sampling parameter.

    ``off`` is the value that disables it (the default); a Python scalar equal to
    ``off`` tells the dispatcher, without a host sync, that the parameter is unused.
    """

    name: str
    dtype: torch.dtype
    off: float
    lo: Optional[float]
    hi: Optional[float]
    lo_open: bool = False
    hi_open: bool = False
    doc: str = ""

    @property
    def integer(self) -> bool:
        return not self.dtype.is_floating_point


#: temperature and the filters, in the order every implementation takes them
FILTERS = (
    SamplerParam("temperature", torch.float32, 1.0, 0.0, float("inf"), hi_open=True,
                 doc="softmax temperature; 0 = greedy (see greedy_rows)"),
    SamplerParam("top_k", torch.int32, 0, 0, 2 ** 31 - 1, doc="keep the k most likely (ties kept); 0 = off"),
    SamplerParam("top_p", torch.float32, 1.0, 0.0, 1.0, lo_open=True, doc="nucleus mass; 1 = off"),
    SamplerParam("min_p", torch.float32, 0.0, 0.0, 1.0, doc="drop below min_p x the largest; 0 = off"),
)
#: the random stream of a row (Philox key and counter), after the filters
STREAM = ("seed", "offset")
#: the budget-forcing arguments that follow (state tensor, forced ids, run lengths)
BUDGET_ARGS = ("budget", "forced_ids", "num_wait", "num_end")
#: last, what the call returns: ``return_logprobs`` (default True; False: the second output is empty and the
#: kernels skip the raw logsumexp, one exp per token of pass 1)
OUTPUT_ARGS = ("return_logprobs",)

FILTER_NAMES = tuple(p.name for p in FILTERS)
#: the per-row tensors of one call, in order: ``(temperature, top_k, top_p, min_p, seed, offset)``
SamplingParams = namedtuple("SamplingParams", FILTER_NAMES + STREAM)
SamplingParams.__doc__ = "Per-row sampler tensors [B] (see :data:`FILTERS` and :data:`STREAM`), in kernel order."

#: the registered op's schema, generated from the records above
SAMPLE_SCHEMA = ("(Tensor logits, " + ", ".join(f"Tensor {n}" for n in SamplingParams._fields)
                 + ", Tensor(a!)? budget, Tensor? forced_ids, int num_wait, int num_end, "
                 + ", ".join(f"bool {n}=True" for n in OUTPUT_ARGS) + ") -> (Tensor, Tensor)")

_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1

#: The greedy rule, defined here once (the reference and the adapters call :func:`greedy_rows`; the C++
#: sampler's ``kMinSamplingTemperature`` and the Triton kernel's ``MIN_TEMPERATURE`` are this value, a test
#: checks both). A row is greedy (the first index of its largest logit) when its temperature is below
#: float32's smallest normal number, 2**-126 (0, and the subnormals, for which the kernels' scale
#: ``log2(e) / T`` would overflow), or when its largest logit divided by T overflows float32 to +-inf
#: (``z = x / T`` would be infinite; every other token's probability ``exp((x - xmax) / T)`` is then below
#: exp(-1e31), 0 in float32, so the draw is the argmax but for exact ties, which greedy breaks to the
#: first). A NaN temperature (passed with ``validate=False``) makes its row invalid: token -1, logprob NaN,
#: budget row untouched, as a NaN logit does.
MIN_SAMPLING_TEMPERATURE = 2.0 ** -126


def greedy_rows(temperature: torch.Tensor, xmax: torch.Tensor) -> torch.Tensor:
    """bool [B]: rows that take the greedy token (see :data:`MIN_SAMPLING_TEMPERATURE`), from the
    temperatures and the rows' largest (end-masked) logits, float32 [B]. False for a NaN temperature."""
    t = temperature.float()
    sampled = t >= MIN_SAMPLING_TEMPERATURE
    z = xmax.float() / torch.where(sampled, t, torch.ones_like(t))
    return (~sampled & ~torch.isnan(t)) | (sampled & torch.isinf(z))


def check_scalars(values: dict, *, validate: bool) -> None:
    """Range checks of the filters: always for Python scalars, for tensors when ``validate`` (a sync on CUDA)."""
    for p in FILTERS:
        _checks.check_range(p.name, values[p.name], p.lo, p.hi, lo_open=p.lo_open, hi_open=p.hi_open,
                            enabled=validate)


def to_rows(values: dict, batch_size: int, device: torch.device) -> SamplingParams:
    """Python scalars or per-row tensors -> :class:`SamplingParams` of contiguous [B] tensors.

    ``values`` holds every filter, ``seed`` (None: one random seed per row from torch's
    default generator of ``device``) and ``offset`` (None: 0).
    """
    rows = {p.name: _checks.per_row(p.name, values[p.name], batch_size, device, p.dtype, integer=p.integer)
            for p in FILTERS}
    seed = values["seed"]
    if seed is None:
        seed = torch.randint(_INT64_MIN, _INT64_MAX, (batch_size,), device=device, dtype=torch.int64)
    rows["seed"] = _checks.per_row("seed", seed, batch_size, device, torch.int64, integer=True)
    offset = 0 if values["offset"] is None else values["offset"]
    rows["offset"] = _checks.per_row("offset", offset, batch_size, device, torch.int64, integer=True)
    return SamplingParams(**rows)


def in_use(values: dict) -> frozenset:
    """Filters a call may use: all but those given as a Python scalar equal to their ``off`` value (no sync)."""
    return frozenset(p.name for p in FILTERS
                     if isinstance(values[p.name], torch.Tensor) or values[p.name] != p.off)
