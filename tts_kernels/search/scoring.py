"""Answer extraction, step-score aggregation and answer voting for test-time search.

A search ends with ``N`` candidate completions, each with per-step PRM scores
(see :mod:`tts_kernels.search.prm`). Picking the final answer is three small steps::

    answers = [extract_answer(c) for c in completions]            # str or None
    scores = [aggregate(s, "last") for s in step_scores]            # one float per candidate
    final = vote(answers, scores, "prm_vote")                       # str or None

Every rule is deterministic: ties go to the lowest candidate index (the answer
that appears first).
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Sequence

#: names accepted by :func:`aggregate`
AGGREGATIONS = ("last", "min", "avg", "prod")
#: names accepted by :func:`vote`
VOTINGS = ("majority", "prm_max", "prm_vote")

# "Final Answer:", "**Final Answer:**", "**Final Answer**:", "**Final Answer**"
_FINAL_RE = re.compile(r"\*\*\s*Final Answer\s*:?\s*\*\*\s*:?|Final Answer\s*:", re.IGNORECASE)
_BOXED = "\\boxed"
_SPECIAL_TAIL_RE = re.compile(r"(?:\s*(?:<\|[^<>|]*\|>|</s>))+\s*$")
_INT_RE = re.compile(r"[+-]?\d+(?:\.0*)?")


def _normalize(ans: str) -> Optional[str]:
    ans = _SPECIAL_TAIL_RE.sub("", ans)
    ans = ans.strip().strip("*$").strip()
    while ans.endswith("."):
        ans = ans[:-1].rstrip().rstrip("*$").rstrip()
    if _INT_RE.fullmatch(ans):
        ans = str(int(ans.split(".")[0]))
    return ans or None


def _last_boxed(text: str):
    """(start, content) of the last ``\\boxed{...}`` with balanced braces, or None."""
    end = len(text)
    while True:
        start = text.rfind(_BOXED, 0, end)
        if start < 0:
            return None
        i = start + len(_BOXED)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return start, text[i + 1:j]
        end = start  # no braces or unbalanced (truncated): try an earlier one


def _last_final_answer(text: str):
    """(start, rest) after the last "Final Answer" marker, or None."""
    matches = list(_FINAL_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    lines = text[m.end():].split("\n")
    rest = lines[0].strip()
    if not rest:  # "**Final Answer**\n\n42": the next non-empty line
        rest = next((ln.strip() for ln in lines[1:] if ln.strip()), "")
    return m.start(), rest


def extract_answer(text: str) -> Optional[str]:
    """The final answer of a completion, lightly normalised.

    The answer is the text after the last ``Final Answer:`` marker (also
    ``**Final Answer:**``, ``**Final Answer**:`` and ``**Final Answer**``; the
    rest of that line, or the next non-empty line when the rest is empty) or
    the content of the last ``\\boxed{...}`` (nested braces balanced; an
    unclosed one is ignored), whichever starts later in the text.

    Normalisation: trailing special tokens (``<|eos|>``, ``<|im_end|>``,
    ``</s>``), surrounding whitespace, ``$`` and ``*`` and trailing periods are
    removed; an integer (``"049"``, ``"+49"``, ``"49.0"``) becomes its
    canonical form (``"49"``). Nothing else is changed.

    Parameters
    ----------
    text : str
        A completion.

    Returns
    -------
    str or None
        The answer; None when there is no marker or box, or when the answer is empty.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    found = [f for f in (_last_final_answer(text), _last_boxed(text)) if f is not None]
    if not found:
        return None
    return _normalize(max(found, key=lambda f: f[0])[1])


def aggregate(step_scores: Sequence[float], how: str) -> float:
    """One score for a candidate from its per-step PRM scores.

    Parameters
    ----------
    step_scores : sequence of float
        Per-step scores (in [0, 1] for a PRM).
    how : {"last", "min", "avg", "prod"}
        The last step's score, the minimum, the mean, or the product.

    Returns
    -------
    float
        The aggregate; ``0.0`` for an empty list (a candidate with no steps has no support).
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}")
    s = [float(x) for x in step_scores]
    if not s:
        return 0.0
    if how == "last":
        return s[-1]
    if how == "min":
        return min(s)
    if how == "avg":
        return sum(s) / len(s)
    return math.prod(s)


def vote(answers: Sequence[Optional[str]], scores: Sequence[float], how: str) -> Optional[str]:
    """The final answer among ``N`` candidates.

    Parameters
    ----------
    answers : sequence of str or None
        Each candidate's answer (None: the candidate has none; it never wins).
    scores : sequence of float
        Each candidate's score (see :func:`aggregate`); unused by ``"majority"``
        but its length must still match.
    how : {"majority", "prm_max", "prm_vote"}
        ``"majority"``: the most frequent answer. ``"prm_max"``: the answer of
        the best-scored candidate that has one. ``"prm_vote"``: the answer whose
        candidates' scores have the largest sum (compared exactly, as floats).

    Returns
    -------
    str or None
        The answer; None when no candidate has one. Ties go to the answer that
        appears first (lowest candidate index).
    """
    if how not in VOTINGS:
        raise ValueError(f"how must be one of {VOTINGS}, got {how!r}")
    if len(answers) != len(scores):
        raise ValueError(f"answers and scores must have the same length, got {len(answers)} and {len(scores)}")
    scores = [float(s) for s in scores]
    if how != "majority" and any(math.isnan(s) for s in scores):
        raise ValueError("scores must not contain NaN")
    if how == "prm_max":
        best = None
        for a, s in zip(answers, scores):
            if a is not None and (best is None or s > best[1]):
                best = (a, s)
        return None if best is None else best[0]
    totals: Dict[str, float] = {}  # insertion order = first appearance
    for a, s in zip(answers, scores):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + (1.0 if how == "majority" else s)
    best_answer, best_total = None, 0.0
    for a, t in totals.items():
        if best_answer is None or t > best_total:
            best_answer, best_total = a, t
    return best_answer


def vote_all(answers: Sequence[Optional[str]], scores: Sequence[float]) -> Dict[str, Optional[str]]:
    """``{how: vote(answers, scores, how)}`` for every ``how`` in :data:`VOTINGS`."""
    return {how: vote(answers, scores, how) for how in VOTINGS}


__all__: List[str] = ["AGGREGATIONS", "VOTINGS", "extract_answer", "aggregate", "vote", "vote_all"]
