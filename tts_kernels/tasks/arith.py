"""Synthetic chained arithmetic: the task of the embedded tiny reasoning model.

A problem is a start value in ``[0, 99]`` and a chain of 3 to 6 additions or
subtractions of operands in ``[1, 9]`` whose intermediate values all stay in
``[0, 99]``::

    prompt:      "49+9-3-6=?<think>"
    completion:  "49+9=58\\n\\n58-3=55\\n\\n55-6=49\\n\\n</think>Final Answer: 49<|eos|>"

Steps are separated by ``"\\n\\n"`` (the step delimiter of step-level search),
thinking is closed by ``"</think>"``, then ``"Final Answer: N"``. Some training
completions re-check the last step after a ``"Wait"`` before closing, so the
model knows how to continue after a forced Wait (budget forcing).

Everything is a pure function of a seed (:func:`make_problems`, which gives
:class:`Chain`s), and :func:`is_correct` is the exact checker: the last
``Final Answer:`` integer of a completion must equal the true value.
:meth:`Chain.problem` is the chain as the generic :class:`tts_kernels.tasks.Problem`.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional, Tuple

from .problem import Problem

THINK, END_THINK, EOS = "<think>", "</think>", "<|eos|>"
STEP_DELIMITER = "\n\n"
WAIT = "Wait"
ANSWER_PREFIX = "Final Answer:"
MAX_VALUE = 99
MAX_OPERAND = 9
_ANSWER_RE = re.compile(r"Final Answer:\s*(-?\d+)")


@dataclass(frozen=True)
class Chain:
    """One arithmetic chain: a start value and its operations (the task's structured instance)."""

    start: int
    ops: tuple        # ((sign, operand), ...), sign in "+-"

    def problem(self, exact: bool = True) -> Problem:
        """The generic problem; ``exact``: graded by :func:`is_correct`, else by its gold answer."""
        return Problem(self.prompt, str(self.answer), grader=partial(is_correct, self) if exact else None)

    @property
    def prompt(self) -> str:
        return str(self.start) + "".join(f"{s}{b}" for s, b in self.ops) + "=?" + THINK

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def values(self) -> List[int]:
        v = [self.start]
        for s, b in self.ops:
            v.append(v[-1] + b if s == "+" else v[-1] - b)
        return v

    def steps(self) -> List[str]:
        v = self.values
        return [f"{v[i]}{s}{b}={v[i + 1]}" for i, (s, b) in enumerate(self.ops)]

    def completion(self, wait: bool = False) -> str:
        """The reference reasoning trace (with ``wait``: re-check the last step after "Wait")."""
        return self._close(self._units() + ([self._recheck()] if wait else []))

    def _units(self) -> List[str]:
        return [s + STEP_DELIMITER for s in self.steps()]

    def _recheck(self) -> str:
        return WAIT + STEP_DELIMITER + self.steps()[-1] + STEP_DELIMITER

    def _close(self, units) -> str:
        return "".join(units) + END_THINK + f"{ANSWER_PREFIX} {self.answer}" + EOS

    def conditioned_completion(self, kind: str, value: int = 0, count: Optional[Callable[[str], int]] = None) -> str:
        """A reference trace whose thinking keeps to a stated budget (the conditioning-trained policy's data).

        ``kind``:

        * ``"token"``: at most ``value`` thinking tokens (``count(text)``: its tokens; thinking is the
          text before ``</think>``). If every step fits, re-checks ("Wait", the last step) follow
          while they still fit, so a larger budget thinks longer; otherwise as many steps as fit,
          then thinking closes and the (true) answer follows: the model learns to guess.
        * ``"step"``: at most ``value`` steps, a re-check counting as one; the same rule in steps.
        * ``"short"``: the plain trace, no re-check; ``"long"``: ``value`` re-checks.

        The answer is always the true one.
        """
        units, recheck = self._units(), self._recheck()
        if kind == "short":
            return self._close(units)
        if kind == "long":
            return self._close(units + [recheck] * value)
        if kind == "step":
            return self._close(units[:value] + [recheck] * max(0, value - len(units)))
        if kind != "token":
            raise ValueError(f"kind must be token, step, short or long, got {kind!r}")
        if count is None:
            raise ValueError("count (text -> its number of tokens) is needed for a token budget")
        body: List[str] = []
        for u in units:
            if count("".join(body + [u])) > value:
                return self._close(body)
            body.append(u)
        while count("".join(body + [recheck])) <= value:
            body.append(recheck)
        return self._close(body)


def make_problem(rng: random.Random, min_steps: int = 3, max_steps: int = 6,
                 max_operand: int = MAX_OPERAND) -> Chain:
    start = rng.randint(0, MAX_VALUE)
    ops, v = [], start
    for _ in range(rng.randint(min_steps, max_steps)):
        sign = rng.choice("+-")
        if sign == "+" and v >= MAX_VALUE:
            sign = "-"
        if sign == "-" and v <= 0:
            sign = "+"
        b = rng.randint(1, min(max_operand, MAX_VALUE - v)) if sign == "+" else rng.randint(1, min(max_operand, v))
        v = v + b if sign == "+" else v - b
        ops.append((sign, b))
    return Chain(start, tuple(ops))


def make_problems(n: int, seed: int, min_steps: int = 3, max_steps: int = 6,
                  max_operand: int = MAX_OPERAND) -> List[Chain]:
    """``n`` problems, a pure function of ``seed``."""
    rng = random.Random(seed)
    return [make_problem(rng, min_steps, max_steps, max_operand) for _ in range(n)]


#: budgets of the conditioning-trained policy's examples: token budgets cover the budget sweep's range
#: (8-48 thinking tokens, extrapolations to 96), step budgets the same in steps of ~8 tokens
COND_TOKEN_BUDGETS = (6, 99)
COND_STEP_BUDGETS = (1, 12)
COND_LONG_WAITS = (2, 3)
COND_KINDS = ("token", "step", "short", "long")


def conditioned_example(chain: Chain, rng: random.Random, templates, count: Callable[[str], int],
                        kind: Optional[str] = None) -> Tuple[str, str, str, int]:
    """One training example of a conditioning form: ``(prompt, completion, kind, value)``.

    ``kind`` (default: drawn uniformly from :data:`COND_KINDS`) and its budget (token budgets uniform
    in :data:`COND_TOKEN_BUDGETS`, step budgets in :data:`COND_STEP_BUDGETS`, long: 2-3 re-checks)
    are drawn from ``rng``; the prompt is ``templates.render`` (a
    :class:`~tts_kernels.decode.families.PromptTemplates`, e.g. ``EMBEDDED_CONDITIONED_TEMPLATES``),
    the completion :meth:`Chain.conditioned_completion`.
    """
    kind = rng.choice(COND_KINDS) if kind is None else kind
    value = (rng.randint(*COND_TOKEN_BUDGETS) if kind == "token" else rng.randint(*COND_STEP_BUDGETS)
             if kind == "step" else rng.randint(*COND_LONG_WAITS) if kind == "long" else 0)
    prompt = templates.render(kind, chain.prompt, budget=value, steps=value)
    return prompt, chain.conditioned_completion(kind, value, count), kind, value


def extract_answer(completion: str) -> Optional[int]:
    """The integer after the last ``Final Answer:`` of ``completion`` (None if there is none)."""
    found = _ANSWER_RE.findall(completion)
    return int(found[-1]) if found else None


def is_correct(problem: Chain, completion: str) -> bool:
    """Exact check: the completion's final answer equals the true value of the chain."""
    return extract_answer(completion) == problem.answer


def check_steps(problem: Chain, completion: str) -> List[bool]:
    """Per step of the completion's thinking: is ``a±b=c`` arithmetically right (a process check)?"""
    thinking = completion.split(END_THINK)[0]
    out = []
    for step in thinking.split(STEP_DELIMITER):
        m = re.fullmatch(r"(\d+)([+-])(\d+)=(-?\d+)", step.strip())
        if m:
            a, s, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            out.append((a + b if s == "+" else a - b) == c)
    return out


_STEP_RE = re.compile(r"(\d+)([+-])(\d+)=(-?\d+)")
_FINAL_STEP_RE = re.compile(END_THINK + r"\s*" + ANSWER_PREFIX + r"\s*-?\d+")


def step_labels(problem: Chain, steps: List[str]) -> List[bool]:
    """Process labels of a solution's steps: is the solution still on track after each step?

    ``steps`` are the step texts of a completion without the delimiter (as
    ``tts_kernels.search.prm.split_steps`` gives them, e.g.
    ``["49+9=58", "58-3=55", "55-6=49", "</think>Final Answer: 49"]``); each is
    compared after ``strip()``. Labels:

    * a thinking step ``a±b=c`` is True iff it is the next step of the true chain
      (equal to ``problem.steps()[j]``, ``j`` = the number of chain steps written so far);
    * a ``"Wait"`` step, and a re-check that repeats an already-written chain step,
      keep the previous label (True on a first step: nothing is wrong yet);
    * the final answer step ``"</think>Final Answer: N"`` is True iff every previous label is
      True and the answer is right (:func:`is_correct`; a short chain whose answer is right
      still counts);
    * anything else (unparseable text, a step after the answer step) is False, and once a
      label is False every later label is False.
    """
    ref = problem.steps()
    labels: List[bool] = []
    ok, j, answered = True, 0, False
    for raw in steps:
        s = raw.strip()
        if not ok or answered:
            good = False
        elif s == WAIT:
            good = True
        elif _STEP_RE.fullmatch(s):
            if j < len(ref) and s == ref[j]:
                j += 1
                good = True
            else:
                good = s in ref[:j]          # a re-check of a step already written
        elif _FINAL_STEP_RE.fullmatch(s):
            answered = True
            good = is_correct(problem, s)
        else:
            good = False
        ok = ok and good
        labels.append(ok)
    return labels
