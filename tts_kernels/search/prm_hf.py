"""Hugging Face process reward models behind the :class:`~tts_kernels.search.prm.PRM` interface.

Two families of published PRMs are covered:

* :class:`HFStepClassifierPRM`: a token-classification head (Qwen2.5-Math-PRM
  style). Every step is followed by a separator token (``"<extra_0>"``); the
  step's score is the probability of the positive class at that token.
* :class:`HFTagTokenPRM`: a causal LM (Math-Shepherd style). Every step is
  followed by a tag token (``"ки"``); the step's score is
  ``softmax([logit(good), logit(bad)])[0]`` read at that token.

Both run the model once per candidate over the whole formatted text, batched
(right padding with an attention mask, at most ``batch_size`` sequences a
forward) under ``torch.no_grad()``. With ``reuse_prefix=True`` the candidates
of one problem are scored against a shared KV cache: the longest common token
prefix of the group is run once, its cache is expanded to the group and only
the continuations are run. Models whose forward does not take a transformers
``Cache`` (or leaves it empty) fall back, silently, to full recompute; see
:attr:`_HFPRM.reuse_active`. ``tokens_scored`` counts the tokens actually run.

:func:`from_pretrained` loads either kind from a directory or hub name
(transformers is imported only then, and by the prefix-reuse path).
"""
from __future__ import annotations

import copy
import inspect
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .prm import PRM, check_scores_shape

KINDS = ("step_classifier", "tag_token")
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("tts_kernels.search.prm_hf needs transformers: pip install transformers") from e
    return transformers


def _marker_id(tokenizer, marker: str, name: str) -> int:
    """Token id of a step marker: the last token of ``marker`` encoded alone (as Math-Shepherd does)."""
    ids = tokenizer.encode(marker, add_special_tokens=False)
    if not ids:
        raise ValueError(f"{name}={marker!r} encodes to no token")
    return int(ids[-1])


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs):
            return k
    return n


class _HFPRM(PRM):
    """Shared batching / prefix reuse of the adapters; subclasses format the text and read the scores."""

    marker_name = "marker"

    def __init__(self, model, tokenizer, *, marker: str, marker_id: Optional[int], batch_size: int,
                 device, reuse_prefix: bool):
        if not isinstance(marker, str) or not marker:
            raise ValueError(f"{self.marker_name} must be a non-empty string, got {marker!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.marker = marker
        self.marker_id = _marker_id(tokenizer, marker, self.marker_name) if marker_id is None else int(marker_id)
        self.batch_size = batch_size
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.reuse_prefix = bool(reuse_prefix)
        #: False once the model was found unable to run on a shared cache (prefix reuse then falls back)
        self.reuse_active = self.reuse_prefix
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self._params = sum(p.numel() for p in model.parameters())
        self.tokens_scored = 0

    @property
    def num_params(self) -> int:
        return self._params

    # --- subclass hooks -------------------------------------------------------------------------
    def format(self, problem: str, steps: Sequence[str]) -> str:
        """The text the model reads for one candidate."""
        raise NotImplementedError

    def encode(self, problem: str, steps: Sequence[str]) -> List[int]:
        """Token ids of :meth:`format`'s text."""
        return list(self.tokenizer.encode(self.format(problem, steps), add_special_tokens=True))

    def _reduce(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, T, *] model logits -> [B, T, C] float32, the classes :meth:`_probs` needs."""
        raise NotImplementedError

    def _probs(self, reduced: torch.Tensor) -> torch.Tensor:
        """[n, C] reduced logits at marker tokens -> [n] step scores."""
        raise NotImplementedError

    # --- scoring --------------------------------------------------------------------------------
    def _check(self, prompts, steps):
        if isinstance(prompts, str) or isinstance(steps, str):
            raise TypeError("prompts and steps must be sequences (of problems and of step lists), not a str")
        if len(prompts) != len(steps):
            raise ValueError(f"prompts and steps must have the same length, got {len(prompts)} and {len(steps)}")
        for i, (p, st) in enumerate(zip(prompts, steps)):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
            if self.marker in p:
                raise ValueError(f"prompts[{i}] contains the {self.marker_name} {self.marker!r}")
            if isinstance(st, str):
                raise TypeError(f"steps[{i}] must be a sequence of step strings, not a str")
            for k, s in enumerate(st):
                if not isinstance(s, str):
                    raise TypeError(f"steps[{i}][{k}] must be a str, got {type(s).__name__}")
                if self.marker in s:
                    raise ValueError(f"steps[{i}][{k}] contains the {self.marker_name} {self.marker!r}")

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache=None) -> torch.Tensor:
        kw = {} if cache is None else {"past_key_values": cache, "use_cache": True}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kw)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return self._reduce(logits)

    def _pad(self, seqs: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, :len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _run_full(self, seqs: Dict[int, List[int]]) -> Dict[int, torch.Tensor]:
        """Reduced logits [len, C] of every sequence, run whole (sorted by length to limit padding)."""
        order = sorted(seqs, key=lambda j: len(seqs[j]))
        out = {}
        for c in range(0, len(order), self.batch_size):
            chunk = order[c:c + self.batch_size]
            ids, mask = self._pad([seqs[j] for j in chunk])
            pos = torch.arange(ids.shape[1], device=self.device).unsqueeze(0)
            red = self._forward(ids, mask, pos)
            for r, j in enumerate(chunk):
                out[j] = red[r, :len(seqs[j])]
            self.tokens_scored += int(mask.sum())
        return out

    def _new_cache(self):
        from transformers import DynamicCache
        try:
            return DynamicCache(config=self.model.config)
        except Exception:  # configs the cache cannot read: plain full-attention layers
            return DynamicCache()

    def _run_shared(self, seqs: Dict[int, List[int]], n_prefix: int) -> Optional[Dict[int, torch.Tensor]]:
        """Like :meth:`_run_full` for one group whose first ``n_prefix`` tokens agree; None if unsupported."""
        first = next(iter(seqs.values()))
        ids = torch.tensor([first[:n_prefix]], dtype=torch.long, device=self.device)
        ones = torch.ones_like(ids)
        pos = torch.arange(n_prefix, device=self.device).unsqueeze(0)
        try:
            cache = self._new_cache()
            red_prefix = self._forward(ids, ones, pos, cache)[0]
        except (ImportError, TypeError):  # no transformers Cache support in this model's forward
            self.reuse_active = False
            return None
        if cache.get_seq_length() != n_prefix:  # the model did not fill the cache
            self.reuse_active = False
            return None
        self.tokens_scored += n_prefix
        members = sorted(seqs, key=lambda j: len(seqs[j]))
        out = {}
        for c in range(0, len(members), self.batch_size):
            chunk = members[c:c + self.batch_size]
            rest, mask = self._pad([seqs[j][n_prefix:] for j in chunk])
            n = len(chunk)
            cc = copy.deepcopy(cache)
            cc.batch_repeat_interleave(n)
            full_mask = torch.cat([torch.ones((n, n_prefix), dtype=mask.dtype, device=self.device), mask], dim=1)
            pos = torch.arange(n_prefix, n_prefix + rest.shape[1], device=self.device).unsqueeze(0).expand(n, -1)
            red = self._forward(rest, full_mask, pos, cc)
            for r, j in enumerate(chunk):
                out[j] = torch.cat([red_prefix, red[r, :len(seqs[j]) - n_prefix]], dim=0)
            self.tokens_scored += int(mask.sum())
        return out

    @torch.no_grad()
    def score(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> List[List[float]]:
        """Per candidate ``i``, one score in ``[0, 1]`` per step of ``steps[i]`` (problem ``prompts[i]``).

        Raises
        ------
        ValueError
            Lengths differ, or a problem / step contains the step marker.
        RuntimeError
            The tokenized input does not hold exactly one marker token per step.
        """
        self._check(prompts, steps)
        seqs = {i: self.encode(p, st) for i, (p, st) in enumerate(zip(prompts, steps)) if len(st)}
        marks = {}
        for i, s in seqs.items():
            where = [t for t, tok in enumerate(s) if tok == self.marker_id]
            if len(where) != len(steps[i]):
                raise RuntimeError(f"candidate {i}: found {len(where)} {self.marker_name} tokens "
                                   f"(id {self.marker_id}) for {len(steps[i])} steps; the tokenizer does not keep "
                                   f"{self.marker!r} as one token after each step")
            marks[i] = where
        reduced: Dict[int, torch.Tensor] = {}
        rest = dict(seqs)
        if self.reuse_prefix and self.reuse_active:
            groups: Dict[str, List[int]] = {}
            for i in seqs:
                groups.setdefault(prompts[i], []).append(i)
            for members in groups.values():
                if len(members) < 2 or not self.reuse_active:
                    continue
                group = {i: seqs[i] for i in members}
                # leave at least one token to every continuation
                n_prefix = min(_common_prefix(list(group.values())), min(map(len, group.values())) - 1)
                if n_prefix < 1:
                    continue
                got = self._run_shared(group, n_prefix)
                if got is not None:
                    reduced.update(got)
                    for i in members:
                        del rest[i]
        if rest:
            reduced.update(self._run_full(rest))
        result: List[List[float]] = [[] for _ in steps]
        for i, where in marks.items():
            idx = torch.tensor(where, dtype=torch.long, device=reduced[i].device)
            result[i] = self._probs(reduced[i][idx]).tolist()
        return check_scores_shape(steps, result)


class HFStepClassifierPRM(_HFPRM):
    """Token-classification PRM, Qwen2.5-Math-PRM style.

    Input: with a chat template, the conversation ``system = system_prompt``,
    ``user = problem``, ``assistant = step_1 + sep + step_2 + sep + ...``
    rendered by the tokenizer's template; without one, the plain text
    ``problem + "\\n" + step_1 + sep + step_2 + sep + ...`` (``system_prompt``
    unused). The score of step ``k`` is ``softmax(logits)[positive_index]`` at
    its separator token (``sigmoid`` for a single-logit head).

    Parameters
    ----------
    model : torch.nn.Module
        Returns per-token logits ``[B, T, num_classes]`` as ``.logits`` or its first output.
    tokenizer : transformers tokenizer
        ``step_separator`` must encode to one token (an added special token).
    step_separator : str
        Marker after every step (``"<extra_0>"`` for Qwen2.5-Math-PRM).
    positive_index : int
        Class whose probability is the score.
    system_prompt : str
        System message of the chat template.
    use_chat_template : bool or "auto"
        ``"auto"``: use the tokenizer's chat template when it has one.
    batch_size : int
        Most sequences per forward.
    device : torch.device or str, optional
        Where inputs go (default: the model's device).
    reuse_prefix : bool
        Share a problem's common token prefix through the KV cache (see the module docstring).
    step_separator_id : int, optional
        Token id of the separator (default: the last token of the separator encoded alone).
    """

    marker_name = "step_separator"

    def __init__(self, model, tokenizer, *, step_separator: str = "<extra_0>", positive_index: int = 1,
                 system_prompt: str = QWEN_PRM_SYSTEM, use_chat_template: Union[bool, str] = "auto",
                 batch_size: int = 16, device=None, reuse_prefix: bool = True,
                 step_separator_id: Optional[int] = None):
        super().__init__(model, tokenizer, marker=step_separator, marker_id=step_separator_id,
                         batch_size=batch_size, device=device, reuse_prefix=reuse_prefix)
        if isinstance(positive_index, bool) or not isinstance(positive_index, int) or positive_index < 0:
            raise ValueError(f"positive_index must be a non-negative int, got {positive_index!r}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template == "auto":
            use_chat_template = has_template
        elif not isinstance(use_chat_template, bool):
            raise ValueError(f"use_chat_template must be True, False or 'auto', got {use_chat_template!r}")
        elif use_chat_template and not has_template:
            raise ValueError("use_chat_template=True but the tokenizer has no chat template")
        if self.marker in system_prompt:
            raise ValueError(f"system_prompt contains the step_separator {self.marker!r}")
        self.positive_index = positive_index
        self.system_prompt = system_prompt
        self.use_chat_template = use_chat_template

    def format(self, problem, steps):
        answer = "".join(s + self.marker for s in steps)
        if not self.use_chat_template:
            return problem + "\n" + answer
        messages = [{"role": "system", "content": self.system_prompt},
                    {"role": "user", "content": problem},
                    {"role": "assistant", "content": answer}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def encode(self, problem, steps):
        # a rendered chat template already holds its special tokens
        return list(self.tokenizer.encode(self.format(problem, steps), add_special_tokens=not self.use_chat_template))

    def _reduce(self, logits):
        return logits.float()

    def _probs(self, reduced):
        if reduced.shape[-1] == 1:
            return torch.sigmoid(reduced[:, 0])
        if self.positive_index >= reduced.shape[-1]:
            raise ValueError(f"positive_index={self.positive_index} but the model has {reduced.shape[-1]} classes")
        return torch.softmax(reduced, dim=-1)[:, self.positive_index]


class HFTagTokenPRM(_HFPRM):
    """Causal-LM PRM with a step tag, Math-Shepherd style.

    Input: ``problem + " " + step_1 + " " + tag + "\\n" + step_2 + " " + tag + ...``
    (``"Step k: "`` before each step when ``number_steps``; Math-Shepherd was
    trained on steps written that way). The score of step ``k`` is
    ``softmax([logit(good), logit(bad)])[0]`` at its tag token.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM returning ``[B, T, vocab]`` logits.
    tokenizer : transformers tokenizer
    step_tag, good_token, bad_token : str
        ``"ки"``, ``"+"``, ``"-"`` for Math-Shepherd. The tag's id is the last
        token of the tag encoded alone; ``good_token + " " + bad_token`` must
        encode to exactly two tokens (their ids), unless the ids are given.
    number_steps : bool
        Prefix each step with ``"Step k: "``.
    batch_size, device, reuse_prefix
        As for :class:`HFStepClassifierPRM`.
    step_tag_id, good_token_id, bad_token_id : int, optional
        Explicit token ids.
    """

    marker_name = "step_tag"

    def __init__(self, model, tokenizer, *, step_tag: str = "ки", good_token: str = "+", bad_token: str = "-",
                 number_steps: bool = False, batch_size: int = 16, device=None, reuse_prefix: bool = True,
                 step_tag_id: Optional[int] = None, good_token_id: Optional[int] = None,
                 bad_token_id: Optional[int] = None):
        super().__init__(model, tokenizer, marker=step_tag, marker_id=step_tag_id,
                         batch_size=batch_size, device=device, reuse_prefix=reuse_prefix)
        if good_token_id is None or bad_token_id is None:
            ids = tokenizer.encode(f"{good_token} {bad_token}", add_special_tokens=False)
            if len(ids) != 2:
                raise ValueError(f"good_token={good_token!r} and bad_token={bad_token!r} must each be one token "
                                 f"(got ids {ids}); pass good_token_id and bad_token_id")
            good_token_id = ids[0] if good_token_id is None else good_token_id
            bad_token_id = ids[1] if bad_token_id is None else bad_token_id
        if int(good_token_id) == int(bad_token_id):
            raise ValueError(f"good and bad tokens must differ, both are id {good_token_id}")
        self.good_id, self.bad_id = int(good_token_id), int(bad_token_id)
        self.number_steps = bool(number_steps)

    def format(self, problem, steps):
        lines = [(f"Step {k + 1}: " if self.number_steps else "") + f"{s} {self.marker}" for k, s in enumerate(steps)]
        return problem + " " + "\n".join(lines)

    def _reduce(self, logits):
        return logits[..., [self.good_id, self.bad_id]].float()

    def _probs(self, reduced):
        return torch.softmax(reduced, dim=-1)[:, 0]


_ADAPTERS = {"step_classifier": HFStepClassifierPRM, "tag_token": HFTagTokenPRM}


def detect_kind(config) -> str:
    """``"step_classifier"`` or ``"tag_token"`` from a transformers config's ``architectures``."""
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForTokenClassification") or a.endswith("ProcessRewardModel") for a in archs):
        return "step_classifier"
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "tag_token"
    raise ValueError(f"cannot tell the PRM kind from config.architectures={archs}; "
                     f"pass kind='step_classifier' or kind='tag_token'")


def from_pretrained(path: Union[str, os.PathLike], kind: Optional[str] = None, *, tokenizer=None,
                    trust_remote_code: bool = False, dtype=None, device=None, **kwargs) -> _HFPRM:
    """A PRM adapter over a Hugging Face checkpoint.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory or hub name.
    kind : {"step_classifier", "tag_token"}, optional
        Default: ``kind`` of the directory's ``prm_config.json`` if any, else
        detected from ``config.architectures`` (``*ForTokenClassification`` /
        ``*ProcessRewardModel`` -> step_classifier, ``*ForCausalLM`` -> tag_token).
    tokenizer : tokenizer, str or os.PathLike, optional
        The tokenizer, or where ``AutoTokenizer`` loads it from (default: ``path``).
        Note that transformers 5 loads some model types' own tokenizer class
        (e.g. ``Qwen2Tokenizer`` for ``qwen2``) whatever ``tokenizer_config.json`` names.
    trust_remote_code : bool
        Passed to transformers (needed by Qwen2.5-Math-PRM's ``Qwen2ForProcessRewardModel``).
    dtype : torch.dtype, optional
        Weights dtype (default: the checkpoint's loading default).
    device : torch.device or str, optional
        Where the model is moved.
    **kwargs
        Adapter options (:class:`HFStepClassifierPRM` / :class:`HFTagTokenPRM`);
        the other keys of ``prm_config.json`` are defaults for them.
    """
    tf = _transformers()
    path = os.fspath(path)
    from .prm import PRM_CONFIG, read_prm_config
    opts: Dict = dict(read_prm_config(path) or {})
    file_kind = opts.pop("kind", None)
    kind = kind or file_kind
    config = tf.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if kind is None:
        kind = detect_kind(config)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    adapter = _ADAPTERS[kind]
    allowed = set(inspect.signature(adapter.__init__).parameters) - {"self", "model", "tokenizer"}
    unknown = set(opts) - allowed
    if unknown:
        raise ValueError(f"{os.path.join(path, PRM_CONFIG)}: unknown option(s) {sorted(unknown)} for kind {kind!r}")
    opts.update(kwargs)
    load_kw = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        load_kw["dtype"] = dtype
    archs = list(getattr(config, "architectures", None) or [])
    if kind == "tag_token":
        auto = tf.AutoModelForCausalLM
    elif any(a.endswith("ProcessRewardModel") for a in archs):
        # a remote-code head (Qwen2ForProcessRewardModel): the built-in token-classification class
        # would load it with a freshly initialised head
        if not trust_remote_code:
            raise ValueError(f"{path}: architecture {archs} is defined by the checkpoint's own code; "
                             f"pass trust_remote_code=True")
        auto = tf.AutoModel
    else:
        auto = tf.AutoModelForTokenClassification
    model = auto.from_pretrained(path, **load_kw)
    if device is not None:
        model = model.to(device)
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = tf.AutoTokenizer.from_pretrained(os.fspath(tokenizer if tokenizer is not None else path),
                                                     trust_remote_code=trust_remote_code)
    return adapter(model, tokenizer, device=device, **opts)


__all__ = ["HFStepClassifierPRM", "HFTagTokenPRM", "from_pretrained", "detect_kind", "KINDS", "QWEN_PRM_SYSTEM"]
