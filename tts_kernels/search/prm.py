"""Process reward models (PRMs): the interface the searches use, and the engine-backed tag-token PRM.

A PRM scores every step of a partial solution::

    scores = prm.score(prompts, steps)      # scores[i][k] in [0, 1] for step k of candidate i

``steps[i]`` are the step texts of candidate ``i`` without the step
delimiter (a completion ``"a\\n\\nb\\n\\n</think>Final Answer: 7"`` has the
steps ``["a", "b", "</think>Final Answer: 7"]``, see :func:`split_steps`).
Implementations may cache the prefixes they have seen (so that a search that
re-scores a candidate after each new step only pays for the new step);
:meth:`PRM.reset` drops that cache.

:class:`EnginePRM` runs a tag-token PRM (Math-Shepherd style) through the
package's own runner and paged KV pool: the input is
``prompt + step_1 + tag + step_2 + tag + ...`` and the score of step ``k`` is
``sigmoid(logit[good] - logit[bad])`` read at the ``k``-th tag token, i.e. the
probability of the good token against the bad one. Prefixes already scored are
kept as sequences in its pool, so candidates that share a prefix (forks of one
beam) store the prefix's KV once; scoring new steps runs only those steps'
tokens, in one packed prefill over every new candidate, each attending to its
cached prefix in the pool (:meth:`tts_kernels.decode.Engine.extend_many`).
The PRM directory holds a Hugging Face causal-LM checkpoint plus
``prm_config.json``::

    {"kind": "tag_token", "step_tag": "\\n\\n", "good_token": "+", "bad_token": "-"}

The embedded default (``tts_kernels/models/tiny-arith-prm``) is trained by
``scripts/train_prm.py`` on the embedded policy's own samples.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch

DEFAULT_PRM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "tiny-arith-prm")


def split_steps(completion: str, delimiter: str = "\n\n", eos: Sequence[str] = ("<|eos|>",)) -> List[str]:
    """Step texts of a completion: split on ``delimiter``, end-of-sequence strings and empty steps dropped."""
    for e in eos:
        completion = completion.replace(e, "")
    return [s for s in completion.split(delimiter) if s.strip()]


class PRM:
    """Interface of a process reward model (see the module docstring)."""

    def score(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> List[List[float]]:
        """Per candidate ``i``, one score in ``[0, 1]`` per step of ``steps[i]`` (the problem being ``prompts[i]``)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget cached prefixes (call between problems or searches to free memory)."""

    @property
    def num_params(self) -> int:
        """Parameter count (for FLOP accounting); 0 when unknown."""
        return 0

    #: tokens the PRM has run its model over since construction (for compute accounting)
    tokens_scored: int = 0


def model_params(cfg) -> int:
    """Parameter count of a :class:`tts_kernels.decode.ModelConfig` (from its tensor shapes)."""
    return int(sum(math.prod(shape) for shape in cfg.expected_shapes().values()))


def check_scores_shape(steps: Sequence[Sequence[str]], scores: List[List[float]]) -> List[List[float]]:
    if len(scores) != len(steps) or any(len(a) != len(b) for a, b in zip(scores, steps)):
        raise RuntimeError("PRM returned a score list whose shape does not match the steps")
    return scores


class EnginePRM(PRM):
    """Tag-token PRM over the package's runner with prefix caching (see the module docstring).

    Parameters
    ----------
    path : str, optional
        PRM directory (default: the embedded ``tiny-arith-prm``).
    num_blocks, block_size : int
        Geometry of the PRM's own KV pool; :meth:`reset` frees it.
    attention : str
        Decode attention backend of the PRM's engine (``"tree"`` shares prefix KV reads).
    keep_frontier_only : bool
        After each :meth:`score` call keep only the prefixes of that call's candidates (a search
        only ever extends its current candidates, so the rest is dead weight in the pool).
    """

    def __init__(self, path: Optional[str] = None, *, num_blocks: int = 16384, block_size: int = 8,
                 attention: str = "tree", keep_frontier_only: bool = True):
        from ..decode import Engine, load
        path = DEFAULT_PRM if path is None else os.fspath(path)
        tag_token_config(path)                   # a clear error before loading any weights
        model, tok = load(path)
        self.engine = Engine(model, tok, num_blocks=num_blocks, block_size=block_size, attention=attention)
        self.tokenizer = tok
        self.tag, self.good, self.bad = tag_token_ids(path, tok)
        self._params = model_params(model.cfg)
        self._cache: Dict[Tuple[str, ...], Tuple[int, float]] = {}   # (prompt, *steps) -> (sid, score)
        self.keep_frontier_only = keep_frontier_only
        self.tokens_scored = 0

    @property
    def num_params(self) -> int:
        return self._params

    def reset(self) -> None:
        self.engine.free(self.engine.live)
        self.engine.clear_prefix_cache()
        self._cache.clear()

    def score(self, prompts, steps):
        if len(prompts) != len(steps):
            raise ValueError(f"prompts and steps must have the same length, got {len(prompts)} and {len(steps)}")
        eng = self.engine
        # 1. prompts never seen: prefill once each
        for p in dict.fromkeys(prompts):
            if (p,) not in self._cache:
                ids = self.tokenizer.encode(p)
                self._cache[(p,)] = (eng.add(ids, temperature=0.0), math.nan)
                self.tokens_scored += len(ids)
        # 2. walk the step prefixes level by level; each level forks the cached parents of its new
        #    nodes and runs every new step (+ tag) in one packed prefill
        depth = max((len(s) for s in steps), default=0)
        for k in range(depth):
            new: Dict[Tuple[str, ...], int] = {}
            for p, st in zip(prompts, steps):
                if len(st) > k:
                    key = (p, *st[:k + 1])
                    if key not in self._cache and key not in new:
                        new[key] = eng.fork(self._cache[key[:-1]][0], 1)[0]
            if not new:
                continue
            feeds = [list(self.tokenizer.encode(key[-1])) + self.tag for key in new]
            eng.extend_many(list(new.values()), feeds)
            self.tokens_scored += sum(map(len, feeds))
            for key, sid in new.items():
                lg = eng.next_logits(sid)
                self._cache[key] = (sid, float(torch.sigmoid(lg[self.good] - lg[self.bad])))
        out = [[self._cache[(p, *st[:k + 1])][1] for k in range(len(st))] for p, st in zip(prompts, steps)]
        if self.keep_frontier_only:
            need = {(p, *st[:k]) for p, st in zip(prompts, steps) for k in range(len(st) + 1)}
            dead = [key for key in self._cache if key not in need]
            eng.free([self._cache.pop(key)[0] for key in dead])
        return check_scores_shape(steps, out)


PRM_CONFIG = "prm_config.json"


def read_prm_config(path: str) -> Optional[dict]:
    """The directory's ``prm_config.json`` as a dict, or ``None`` when it has none."""
    fn = os.path.join(os.fspath(path), PRM_CONFIG)
    if not os.path.isfile(fn):
        return None
    with open(fn) as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict):
        raise ValueError(f"{fn}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def tag_token_config(path: str) -> dict:
    """``prm_config.json`` of a tag-token PRM directory (``kind: tag_token``); a clear error otherwise."""
    cfg = read_prm_config(path)
    if cfg is None:
        raise FileNotFoundError(f"{path} is not a PRM directory: {PRM_CONFIG} is missing")
    if cfg.get("kind") != "tag_token":
        raise ValueError(f"{os.path.join(path, PRM_CONFIG)}: unsupported PRM kind {cfg.get('kind')!r} "
                         "(expected 'tag_token')")
    return cfg


def tag_token_ids(path: str, tokenizer) -> tuple:
    """``(step tag ids, good id, bad id)`` of a tag-token PRM directory under its tokenizer."""
    cfg = tag_token_config(path)
    tag = list(tokenizer.encode(cfg["step_tag"]))
    ids = [tokenizer.token_to_id(cfg[k]) for k in ("good_token", "bad_token")]
    if not tag or None in ids:
        raise ValueError(f"{os.path.join(path, PRM_CONFIG)}: step_tag / good_token / bad_token are not in "
                         "the PRM's vocabulary")
    return tag, ids[0], ids[1]


def load_prm(path: Optional[str] = None, **kwargs) -> PRM:
    """A PRM from a directory: ``prm_config.json``'s ``kind`` picks the adapter (default: the embedded PRM)."""
    path = DEFAULT_PRM if path is None else os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"PRM directory {path!r} does not exist (PRMs load from local directories only)")
    kind = (read_prm_config(path) or {}).get("kind")
    if kind == "tag_token":
        return EnginePRM(path, **kwargs)
    from . import prm_hf
    return prm_hf.from_pretrained(path, **kwargs)
