"""The one problem type: a prompt and how to grade a completion of it.

Used by the main job (:mod:`tts_kernels.search.evaluate`), s1's budget control
(:mod:`tts_kernels.search.budget_control`) and the tasks (:meth:`.arith.Chain.problem`).
A problem has a gold ``answer`` (compared with a completion's final answer as
:func:`tts_kernels.search.scoring.extract_answer` reads and normalises it), a
``grader(completion) -> bool`` (an exact task checker, or any function), or both
(the grader then decides :meth:`Problem.check`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, List, Optional


def _extract_answer(text: str) -> Optional[str]:
    from ..search.scoring import extract_answer
    return extract_answer(text)


@dataclass
class Problem:
    """A prompt with its gold answer and/or a grader (module docstring)."""

    prompt: str
    answer: Optional[str] = None
    grader: Optional[Callable[[str], bool]] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.answer is None:
            if self.grader is None:
                raise ValueError(f"problem {self.prompt[:40]!r} needs an answer or a grader")
            return
        gold = _extract_answer(f"Final Answer: {self.answer}")
        if gold is None or "\n" in str(self.answer).strip():
            raise ValueError(f"answer {self.answer!r} of problem {self.prompt[:40]!r} is empty or not one line")
        self.answer = gold

    def check(self, text: str) -> bool:
        """Whether ``text`` (a completion) is right: the grader's verdict, else its final answer is the gold one."""
        if self.grader is not None:
            return bool(self.grader(text))
        return self.is_answer(_extract_answer(text))

    def is_answer(self, answer: Optional[str]) -> bool:
        """Whether an extracted (normalised) ``answer`` equals the gold answer."""
        if self.answer is None:
            raise ValueError(f"problem {self.prompt[:40]!r} has a grader but no gold answer")
        return answer is not None and answer == self.answer


def read_jsonl(path: str, limit: int = 0) -> List[Problem]:
    """Problems of a JSONL file, ``{"prompt" (or "problem"): str, "answer": ...}`` per line (``limit``: 0 = all)."""
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            prompt = row.get("prompt", row.get("problem"))
            if not isinstance(prompt, str) or "answer" not in row:
                raise ValueError(f"{path}:{i}: each line needs a 'prompt' (or 'problem') string and an 'answer'")
            out.append(Problem(prompt, str(row["answer"])))
    if not out:
        raise ValueError(f"{path}: no problems")
    return out[:limit] if limit else out
