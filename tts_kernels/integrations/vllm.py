"""Budget forcing as a vLLM logits processor, for the V1 runner and Model Runner V2.

One public class, :class:`BudgetForcingLogitsProcessor`, subclasses vLLM's V1
``LogitsProcessor`` and Model Runner V2's, where the installed vLLM has them, so
both loaders accept it, and builds the implementation of the runner that calls
it: :class:`BudgetForcingLogitsProcessorV1` (below) or
:class:`BudgetForcingLogitsProcessorV2` (:mod:`._vllm_v2`). vLLM 0.34 removed the
V1 runner and its interface: there the class is an MRV2 processor only. The
module imports without vLLM (then neither implementation can be built).
MRV2 refuses ``enable_batch_sharded_sampling`` whenever it is set (a request's
state lives on one tensor-parallel rank; 0.34 moves requests between ranks every
step; untested on every release).

Load it with ``LLM(model, logits_processors=[BudgetForcingLogitsProcessor])``,
``vllm serve MODEL --logits-processors tts_kernels.integrations.vllm:BudgetForcingLogitsProcessor``,
or (installed package) through the ``vllm.logits_processors`` entry point
``tts_kernels_budget_forcing``. Per request::

    SamplingParams(..., extra_args={"budget_forcing": {
        "min_tokens": 256, "max_tokens": 2048, "min_waits": 0,
        # optional token id lists; defaults from the processor configuration,
        # else from the model's tokenizer ("</think>" and "Wait" for Qwen3 /
        # DeepSeek-R1 style vocabularies):
        "end_think_ids": [...], "wait_ids": [...], "answer_prefix_ids": [...]}})

Requests without ``budget_forcing`` are untouched. Thinking starts at the first
generated token. Semantics are those of ``tts_kernels.sample``'s budget forcing
(see ``tts_kernels/sampling/budget.py``); the processor cannot see the token the
engine samples, so the three pieces of :mod:`tts_kernels.integrations.common` run
as follows under the V1 runner (MRV2: see :mod:`._vllm_v2`):

* ``update_state`` (host side): rows added / removed / moved; each budgeted
  row's new output tokens (from vLLM's live ``output_ids`` list) advance its
  int64 state row, all rows in one batched step per new token.
* ``apply`` (batched torch ops over the budgeted rows, no loop over rows):
  forced tokens (the rest of a Wait, the end sequence, the answer prefix) keep
  a single finite logit; an end that is still too early is replaced "in
  distribution": with probability ``p_end``, the end's probability under the
  request's own temperature / top_k / top_p / min_p distribution
  (``filter_mask`` semantics), the Wait sequence is forced, otherwise the end
  and the tokens outside the keep set are masked. Greedy requests
  (temperature < 1e-5) are exact: Wait is forced when the end is the argmax.

Differences from the fused op (documented in the README):

* vLLM applies penalties (repetition / frequency / presence), temperature,
  min-p, top-k and top-p after logits processors: ``p_end`` is computed on the
  logits this processor receives (exact without penalties), and when the end is
  masked vLLM re-applies top-k/top-p/min-p to the remaining tokens, which can
  drop low-probability tail tokens the fused op would keep (never adds any).
* The Wait-or-mask decision uses the package's Philox stream keyed by the
  request's ``seed`` (a random one when unset) and the output position, and the
  other tokens come from vLLM's sampler: runs are not token-identical to
  ``tts_kernels.sample`` with the same seed, only equal in distribution.
* A request that is resumed with existing output (preemption) has its state
  recomputed from the tokens: a Wait first token emitted while an end was not yet
  allowed counts as an inserted Wait.
* Speculative decoding: rejected by vLLM's V1 runner for custom logits
  processors; supported under MRV2 (every draft row forced, see :mod:`._vllm_v2`).

``validate_params`` rejects unknown keys, bad types, ``min_tokens > max_tokens``
and token ids outside the vocabulary (the vocabulary size is known once the
engine has built the processor in the same process, e.g. ``LLM(...)`` with
``VLLM_ENABLE_V1_MULTIPROCESSING=0``; otherwise an out-of-vocabulary request is
left untouched by the worker with an error logged).
"""
from __future__ import annotations

import json
import logging
import os
import random
import weakref
from typing import Any

import torch

from ..sampling.budget import BudgetForcing
from . import common

try:  # vLLM is optional: the module imports without it (for docs and tests)
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
    from vllm.v1.sample.logits_processor import LogitsProcessor as _V1Base
except ImportError:  # pragma: no cover - exercised only without vllm
    _V1Base = None
    BatchUpdate = MoveDirectionality = None
try:  # Model Runner V2 interface (vLLM >= 0.2x); import-light (no triton, no worker state)
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2Base
except ImportError:  # older vLLM, or no vLLM
    _V2Base = None

logger = logging.getLogger(__name__)

EXTRA_ARGS_KEY = "budget_forcing"
_INT_KEYS = ("min_tokens", "max_tokens", "min_waits")
_ID_KEYS = ("end_think_ids", "wait_ids", "answer_prefix_ids")
_ALLOWED = frozenset(_INT_KEYS + _ID_KEYS)
_ENV_CONFIG = "TTS_KERNELS_BUDGET_FORCING"  # JSON with default end_think_ids / wait_ids / answer_prefix_ids
_LIVE: dict = {}  # id(vllm_config) -> weakref of the acting instance
_VOCAB: dict = {"size": None}  # vocabulary size of the last processor built in this process


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_budget_args(args: Any, vocab_size: int | None = None) -> dict:
    """Check one request's ``extra_args["budget_forcing"]``; returns it normalised or raises ValueError."""
    where = f"extra_args[{EXTRA_ARGS_KEY!r}]"
    if not isinstance(args, dict):
        raise ValueError(f"{where} must be a dict, got {type(args).__name__}")
    unknown = sorted(set(args) - _ALLOWED)
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}; allowed: {sorted(_ALLOWED)}")
    if "max_tokens" not in args:
        raise ValueError(f"{where} needs 'max_tokens' (the thinking budget, an int >= 0)")
    out: dict = {}
    for k in _INT_KEYS:
        v = args.get(k, 0)
        if not _is_int(v) or v < 0:
            raise ValueError(f"{where}[{k!r}] must be an int >= 0, got {v!r}")
        out[k] = v
    if out["min_tokens"] > out["max_tokens"]:
        raise ValueError(f"{where}: min_tokens ({out['min_tokens']}) must be <= max_tokens ({out['max_tokens']})")
    for k in _ID_KEYS:
        if k not in args or args[k] is None:
            continue
        ids = args[k]
        if _is_int(ids):
            ids = [ids]
        if not isinstance(ids, (list, tuple)) or not all(_is_int(i) for i in ids):
            raise ValueError(f"{where}[{k!r}] must be a list of int token ids, got {args[k]!r}")
        bad = [i for i in ids if i < 0 or (vocab_size is not None and i >= vocab_size)]
        if bad:
            rng = f"[0, {vocab_size})" if vocab_size is not None else "[0, vocab_size)"
            raise ValueError(f"{where}[{k!r}] has token id(s) {bad} outside the vocabulary {rng}")
        if k == "end_think_ids" and not ids:
            raise ValueError(f"{where}['end_think_ids'] must not be empty")
        out[k] = tuple(ids)
    return out


def tokenizer_defaults(tokenizer) -> dict:
    """Default forcing ids for known reasoning families: ``</think>`` as one token, ``Wait`` encoded.

    Returns ``{}`` when the vocabulary has no single ``</think>`` token.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    end = tokenizer.convert_tokens_to_ids("</think>")
    if end is None or end == unk or isinstance(end, list):
        return {}
    wait = tokenizer.encode("Wait", add_special_tokens=False)
    return {"end_think_ids": (int(end),), "wait_ids": tuple(int(i) for i in wait)}


def _alloc_slot_buffers(proc, n: int, dev) -> None:
    """Per-row (V1) / per-slot (MRV2) buffers both runners keep: the budget state, the forcing table
    (ids, Wait / end / answer-prefix lengths), the request's sampling parameters and its seed."""
    proc.state = torch.zeros(n, 8, dtype=torch.int64, device=dev)
    proc.ids = torch.zeros(n, 1, dtype=torch.int64, device=dev)
    proc.lw = torch.zeros(n, dtype=torch.int64, device=dev)
    proc.le = torch.ones(n, dtype=torch.int64, device=dev)
    proc.la = torch.zeros(n, dtype=torch.int64, device=dev)
    proc.temperature = torch.ones(n, dtype=torch.float32, device=dev)
    proc.top_k = torch.zeros(n, dtype=torch.int32, device=dev)
    proc.top_p = torch.ones(n, dtype=torch.float32, device=dev)
    proc.min_p = torch.zeros(n, dtype=torch.float32, device=dev)
    proc.seed = torch.zeros(n, dtype=torch.int64, device=dev)


def _register_live(proc, vllm_config) -> None:
    """Loaded twice in one engine (entry point + ``logits_processors=[...]``): only the last instance acts."""
    prev = _LIVE.get(id(vllm_config))
    if prev is not None and prev() is not None:
        prev()._disabled = True
        logger.info("budget forcing processor loaded twice; the earlier instance is disabled")
    _LIVE[id(vllm_config)] = weakref.ref(proc)
    proc._disabled = False


def _set_vocab_size(n: int) -> None:
    _VOCAB["size"] = int(n)


def _resolve_defaults(proc, vllm_config, vocab_size: int) -> dict:
    """Default forcing ids: tokenizer, then ``$TTS_KERNELS_BUDGET_FORCING``, then ``configure(...)``."""
    d: dict = {}
    try:
        from transformers import AutoTokenizer

        mc = vllm_config.model_config
        tok = AutoTokenizer.from_pretrained(mc.tokenizer, trust_remote_code=mc.trust_remote_code)
        d.update(tokenizer_defaults(tok))
    except Exception as exc:  # no tokenizer (e.g. a random test checkpoint): no tokenizer defaults
        logger.debug("budget forcing: no tokenizer defaults (%s)", exc)
    env = os.environ.get(_ENV_CONFIG)
    if env:
        parsed = parse_budget_args({"max_tokens": 0, **json.loads(env)}, vocab_size)
        d.update({k: parsed[k] for k in _ID_KEYS if k in parsed})
    d.update(proc.default_forcing)
    return d


def _request_forcing(params, defaults: dict, vocab_size: int | None):
    """``(settings, BudgetForcing)`` of one request, ``None`` when it has no budget; ValueError when invalid."""
    extra = getattr(params, "extra_args", None) or {}
    if EXTRA_ARGS_KEY not in extra:
        return None
    cfg = parse_budget_args(extra[EXTRA_ARGS_KEY], vocab_size)
    ids = {k: cfg.get(k, defaults.get(k, ())) for k in _ID_KEYS}
    if not ids["end_think_ids"]:
        raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}]: no end_think_ids in the request, the processor "
                         "configuration or the tokenizer")
    bad = [i for k in _ID_KEYS for i in ids[k] if vocab_size is not None and not 0 <= i < vocab_size]
    if bad:  # defaults are checked here too
        raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}]: token id(s) {bad} outside the vocabulary [0, {vocab_size})")
    return cfg, BudgetForcing(**ids)


class _Shared:
    """What both runner implementations share: defaults, per-request validation."""

    #: processor-level defaults (``end_think_ids``, ``wait_ids``, ``answer_prefix_ids``); see :meth:`configure`
    default_forcing: dict = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Raise ValueError for an invalid ``extra_args["budget_forcing"]`` (runs at request admission)."""
        extra = getattr(sampling_params, "extra_args", None) or {}
        if EXTRA_ARGS_KEY in extra:
            parse_budget_args(extra[EXTRA_ARGS_KEY], _VOCAB["size"])

    def is_argmax_invariant(self) -> bool:
        return False  # forcing tokens and masking the end change the argmax


class BudgetForcingLogitsProcessorV1(_Shared, *((_V1Base,) if _V1Base is not None else ())):
    """The V1-interface implementation (vLLM's V1 model runner); see the module docstring.

    Built by :class:`BudgetForcingLogitsProcessor` when vLLM calls it as
    ``cls(vllm_config, device, is_pin_memory)``. Subclass this one (not the
    public class) to extend the V1 behaviour.
    """

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        _register_live(self, vllm_config)
        self.device = torch.device(device)
        self.vocab_size = int(vllm_config.model_config.get_vocab_size())
        _set_vocab_size(self.vocab_size)
        n = int(vllm_config.scheduler_config.max_num_seqs)
        self.defaults = _resolve_defaults(self, vllm_config, self.vocab_size)
        dev = self.device
        _alloc_slot_buffers(self, n, dev)
        self.replaced = torch.zeros(n, dtype=torch.bool, device=dev)
        self.emitted = torch.zeros(n, dtype=torch.int64, device=dev)  # output tokens consumed (Philox offset)
        self.rows: dict[int, list] = {}   # batch index -> [output_ids (live list), tokens consumed]
        self._sorted_rows: torch.Tensor | None = None

    # -- rows ------------------------------------------------------------------------
    def _add(self, index: int, params, output_ids: list[int]) -> None:
        self.rows.pop(index, None)
        try:
            parsed = _request_forcing(params, self.defaults, self.vocab_size)
        except ValueError as exc:  # normally caught by validate_params at admission
            logger.error("budget forcing disabled for a request: %s", exc)
            return
        if parsed is None:
            return
        cfg, forcing = parsed
        fids = forcing.forced_ids
        if len(fids) > self.ids.shape[1]:
            self.ids = torch.cat([self.ids, self.ids.new_zeros(self.ids.shape[0], len(fids) - self.ids.shape[1])], 1)
        self.ids[index].zero_()
        self.ids[index, :len(fids)] = torch.tensor(fids, dtype=torch.int64)
        self.lw[index], self.le[index], self.la[index] = (len(forcing.wait_ids), len(forcing.end_think_ids),
                                                           len(forcing.answer_prefix_ids))
        self.temperature[index] = common.vllm_temperature(params.temperature)
        self.top_k[index] = int(params.top_k or 0)
        self.top_p[index] = float(params.top_p)
        self.min_p[index] = float(params.min_p or 0.0)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.seed[index] = int(seed) & (2 ** 63 - 1)
        self.replaced[index] = False
        one = lambda v: torch.tensor([v], dtype=torch.int64, device=self.device)  # noqa: E731
        st = common.init_state(one(cfg["min_tokens"]), one(cfg["max_tokens"]), one(cfg["min_waits"]))
        done = [t for t in output_ids if t >= 0]
        if done:  # resumed request: recompute from its tokens
            table = self._table(torch.tensor([index], device=self.device))
            st = common.replay(st, torch.tensor([done], dtype=torch.int64, device=self.device),
                               one(len(done)), table)
        self.state[index] = st[0]
        self.emitted[index] = len(done)
        self.rows[index] = [output_ids, len(done)]

    def _move(self, a: int, b: int, swap: bool) -> None:
        ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
        for t in (self.state, self.ids, self.lw, self.le, self.la, self.temperature, self.top_k, self.top_p,
                  self.min_p, self.seed, self.replaced, self.emitted):
            if swap:
                t[[a, b]] = t[[b, a]]
            else:
                t[b] = t[a]
        if ra is not None:
            self.rows[b] = ra
        if swap and rb is not None:
            self.rows[a] = rb

    def _table(self, rows: torch.Tensor) -> common.ForcingTable:
        return common.ForcingTable(self.ids[rows], self.lw[rows], self.le[rows], self.la[rows])

    def update_state(self, batch_update) -> None:
        if batch_update is not None:
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for index, params, _prompt, output_ids in batch_update.added:
                self._add(index, params, output_ids)
            for a, b, direction in batch_update.moved:
                self._move(a, b, direction == MoveDirectionality.SWAP)
            self._sorted_rows = None
        self._catch_up()

    def _catch_up(self) -> None:
        """Advance every budgeted row by the tokens appended to its output since the last call."""
        if not self.rows or self._disabled:
            return
        idx, new = [], []
        for index, entry in self.rows.items():  # host side: read vLLM's live Python lists
            out, seen = entry
            n = len(out)
            while n > seen and out[n - 1] < 0:  # async-scheduling placeholders: not sampled yet
                n -= 1
            if n > seen:
                idx.append(index)
                new.append(out[seen:n])
                entry[1] = n
        if not idx:
            return
        width = max(len(t) for t in new)
        toks = torch.tensor([t + [-1] * (width - len(t)) for t in new], dtype=torch.int64, device=self.device)
        lens = torch.tensor([len(t) for t in new], dtype=torch.int64, device=self.device)
        rows = torch.tensor(idx, dtype=torch.int64, device=self.device)
        st, table = self.state[rows], self._table(rows)
        st = common.advance(st, toks[:, 0], self.replaced[rows], table)
        if width > 1:  # several tokens in one step: no record of our choice for the later ones
            st = common.replay(st, toks[:, 1:], lens - 1, table)
        self.state[rows] = st
        self.replaced[rows] = False
        self.emitted[rows] += lens

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows or self._disabled:
            return logits
        if self._sorted_rows is None:
            self._sorted_rows = torch.tensor(sorted(self.rows), dtype=torch.int64, device=self.device)
        rows = self._sorted_rows
        rows = rows[rows < logits.shape[0]]
        if rows.numel() == 0:
            return logits
        uniform = common.uniform_draw(self.seed[rows], self.emitted[rows])
        sub, replaced = common.transform(logits.index_select(0, rows), self.state[rows], self._table(rows),
                                         self.temperature[rows], self.top_k[rows], self.top_p[rows],
                                         self.min_p[rows], uniform)
        logits.index_copy_(0, rows, sub.to(logits.dtype))
        self.replaced[rows] = replaced
        return logits


if _V2Base is not None:
    from ._vllm_v2 import V2Impl as _V2Impl

    class BudgetForcingLogitsProcessorV2(_Shared, _V2Impl, _V2Base):
        """The Model Runner V2 implementation (see :mod:`tts_kernels.integrations._vllm_v2`).

        Built by :class:`BudgetForcingLogitsProcessor` when vLLM calls it as
        ``cls(vllm_config, req_states)``.
        """

        __init__ = _V2Impl.__init__
        apply = _V2Impl.apply
else:  # pragma: no cover - vLLM without Model Runner V2
    BudgetForcingLogitsProcessorV2 = None


def _public_bases() -> tuple:
    bases = tuple(b for b in (_V1Base, _V2Base) if b is not None)
    return bases or (object,)


class BudgetForcingLogitsProcessor(_Shared, *_public_bases()):
    """s1-style budget forcing per request, for both vLLM model runners (see the module docstring).

    The one name to give vLLM (``logits_processors=[...]``, the FQCN
    ``tts_kernels.integrations.vllm:BudgetForcingLogitsProcessor`` or the
    ``tts_kernels_budget_forcing`` entry point). It subclasses the V1
    ``LogitsProcessor`` and Model Runner V2's, each where the installed vLLM
    has it (0.34 has MRV2 only), so both loaders accept it; calling it builds
    the implementation for the runner that calls:
    ``cls(vllm_config, device, is_pin_memory)`` (V1) gives a
    :class:`BudgetForcingLogitsProcessorV1`, ``cls(vllm_config, req_states)``
    (MRV2) a :class:`BudgetForcingLogitsProcessorV2`, each carrying this class's
    :attr:`default_forcing`.
    """

    def __new__(cls, *args, **kwargs):
        req_states = kwargs.get("req_states", args[1] if len(args) > 1 else None)
        if len(args) + len(kwargs) == 2 and hasattr(req_states, "all_token_ids"):
            if BudgetForcingLogitsProcessorV2 is None:  # pragma: no cover
                raise TypeError("this vLLM has no Model Runner V2 logits-processor interface")
            impl = BudgetForcingLogitsProcessorV2
        else:
            if _V1Base is None:
                raise TypeError("vLLM's V1 logits-processor interface is not importable: vLLM is not installed, "
                                "or it is 0.34 or later, which has only Model Runner V2 (built as "
                                "cls(vllm_config, req_states))")
            impl = BudgetForcingLogitsProcessorV1
        if cls.default_forcing is not impl.default_forcing:  # a configure()d subclass: carry its defaults
            impl = _configured(impl, cls.default_forcing)
        obj = impl.__new__(impl)
        obj.__init__(*args, **kwargs)  # obj is not an instance of cls, so Python will not call __init__ itself
        return obj

    @classmethod
    def configure(cls, **defaults) -> type:
        """A subclass with processor-level default token ids.

        Parameters
        ----------
        **defaults
            ``end_think_ids``, ``wait_ids``, ``answer_prefix_ids`` (lists of int
            token ids), used for requests that do not give their own.

        Returns
        -------
        type
            A subclass of :class:`BudgetForcingLogitsProcessor` to pass to vLLM.
        """
        parsed = parse_budget_args({"max_tokens": 0, **defaults})
        keep = {k: parsed[k] for k in _ID_KEYS if k in parsed}
        return type(cls.__name__, (cls,), {"default_forcing": keep, "__module__": cls.__module__})

    def apply(self, *args, **kwargs):  # never reached: __new__ returns an implementation instance
        raise TypeError("BudgetForcingLogitsProcessor is built by vLLM; use the instance it returns")


_CONFIGURED: dict = {}


def _configured(impl: type, defaults: dict) -> type:
    key = (impl, tuple(sorted((k, tuple(v)) for k, v in defaults.items())))
    if key not in _CONFIGURED:
        _CONFIGURED[key] = type(impl.__name__, (impl,), {"default_forcing": dict(defaults),
                                                          "__module__": impl.__module__})
    return _CONFIGURED[key]
