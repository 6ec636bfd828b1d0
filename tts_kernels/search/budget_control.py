"""Controlling thinking length as in s1 ("Simple test-time scaling"): budget forcing, baselines, metrics.

Methods (one :class:`RunRecord` per prompt; a call decodes all its prompts in one engine batch):
:func:`budget_forcing` (the engine's forcing), the prompt-conditional baselines
:func:`token_conditional`, :func:`step_conditional`, :func:`class_conditional` (the prompt states
the budget, see :class:`PromptTemplates`; decoding is unconstrained) and :func:`rejection_sampling`.
Every method's thinking length is measured the same way (:func:`thinking_length`). Metrics (s1
section 3.2, Table 3): :func:`control`, :func:`scaling`, :func:`performance`; :func:`sweep` runs all.

Honesty note: the embedded tiny-arith model was never trained on instructions and its 29-token
vocabulary cannot spell English ones, so :data:`EMBEDDED_TEMPLATES` leaves its prompts unchanged
and on it the prompt-conditional methods are unconditioned sampling (all three measured 32.2%
Control in the main job). ``models/tiny-arith-cond`` is that model fine-tuned
(``scripts/train_tiny_model.py --conditioning``) to read conditioning forms spelled with the same
vocabulary (:data:`EMBEDDED_CONDITIONED_TEMPLATES`: ``"32:"`` token budget, ``"04."`` step
budget, ``"-,"`` short, ``"+,"`` long; its config.json declares them), and the main job's sweep
runs on it. Measured there (128 problems, one sample, budgets 8-48; Control's 95% Wilson interval
takes the problems as the sample, see :func:`control_interval`; the README has the current table):
budget forcing Control 100% [97, 100], token-conditional 71.9% [64, 79], class-conditional 21.1%
[15, 29] (by construction at most 19.4% for a policy that does exactly as asked at these budgets,
see ``EMBEDDED_CONDITIONED_TEMPLATES``), rejection sampling (16 tries) 38.8% [31, 47].
The baselines read the budget (thinking grows with it: token-conditional 6 -> 58 tokens) but
overshoot at large budgets; "think short" is not shorter than no prefix. That policy is also far
more accurate than tiny-arith (fine-tuning went on teaching arithmetic), so its sweep is not
comparable with the search table.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from itertools import combinations
from typing import Callable, List, Optional, Sequence, Union

from ..decode.families import EMBEDDED_CONDITIONED_TEMPLATES, EMBEDDED_TEMPLATES, S1_TEMPLATES, PromptTemplates
from ..tasks.problem import Problem
from . import stats

ANSWER_ROOM = 24              # tokens after a forced end: delimiter, answer prefix, answer, EOS
DEFAULT_MAX_NEW_TOKENS = 160  # cap of the runs without a budget
METHODS = ("budget_forcing", "token_conditional", "step_conditional", "class_conditional", "rejection_sampling")


def _check_int(name, v, lo=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")


def _check_budget(max_thinking, min_thinking=0, min_waits=0, names=("max_thinking", "min_thinking", "min_waits")):
    for name, v in zip(names, (max_thinking, min_thinking, min_waits)):
        _check_int(name, v)
    if min_thinking > max_thinking:
        raise ValueError(f"{names[1]} ({min_thinking}) must be <= {names[0]} ({max_thinking})")


@dataclass(frozen=True)
class Budget:
    """Thinking budget: ``[min_thinking, max_thinking]`` tokens and at least ``min_waits`` forced Waits."""

    max_thinking: int
    min_thinking: int = 0
    min_waits: int = 0

    def __post_init__(self):
        _check_budget(self.max_thinking, self.min_thinking, self.min_waits)


#: Sized for the embedded model (its correct traces think ~20-45 tokens); the last two extrapolate
#: with a minimum (forced Waits), as s1 does.
DEFAULT_BUDGETS = (Budget(8), Budget(16), Budget(24), Budget(32), Budget(48),
                   Budget(64, min_thinking=48), Budget(96, min_thinking=72))


# -- problems ------------------------------------------------------------------------------
def GradedPrompt(prompt: str, check: Callable[[str], bool]) -> Problem:
    """A :class:`tts_kernels.tasks.Problem` graded by ``check(completion) -> bool`` (the former name)."""
    return Problem(prompt, grader=check)


def as_problems(items) -> List[Problem]:
    """:class:`tts_kernels.tasks.Problem` list from Problems, ``arith.Chain``s or ``(prompt, check)`` pairs."""
    from ..tasks import arith
    out = []
    for x in items:
        if isinstance(x, arith.Chain):
            x = x.problem()
        elif isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and callable(x[1]):
            x = Problem(x[0], grader=x[1])
        elif not isinstance(x, Problem):
            raise ValueError(f"problems: expected Problem, arith.Chain or (prompt, check), got {x!r}")
        out.append(x)
    return out


# -- prompt templates ----------------------------------------------------------------------
# PromptTemplates, S1_TEMPLATES and EMBEDDED_TEMPLATES live with the model families
# (tts_kernels.decode.families): each family names its templates.
def templates_for(engine) -> PromptTemplates:
    """The prompt templates of the engine's model family (:data:`EMBEDDED_TEMPLATES` for the embedded model)."""
    return engine.family.templates


# -- thinking length, records, batched decoding ------------------------------------------
def thinking_length(tokens: Sequence[int], end_ids: Sequence[int]) -> int:
    """Thinking length of generated ``tokens``: the index of the first ``end_ids`` sequence.

    Returns ``len(tokens)`` when thinking never closes. Works for runs with or without a budget;
    with budget forcing it equals the engine's counter (forced Waits included).
    """
    toks, end = list(tokens), list(end_ids)
    if not end:
        raise ValueError("end_ids must not be empty")
    for i in range(len(toks) - len(end) + 1):
        if toks[i:i + len(end)] == end:
            return i
    return len(toks)


@dataclass
class RunRecord:
    """One run: completion, thinking length (:func:`thinking_length`), cost, tries."""

    prompt: str               # the prompt as decoded (after the template)
    text: str                 # the completion
    thinking_tokens: int
    waits_used: int           # Waits forced by budget forcing
    answer: str               # text after the end of thinking ("" if thinking never closed)
    closed: bool              # thinking was closed
    finished: bool            # end-of-sequence emitted
    generated_tokens: int     # tokens of this completion
    cost_tokens: int          # tokens generated to obtain it (rejected tries included)
    tries: int = 1
    accepted: bool = True     # rejection sampling: a try fitted the budget


def _end_ids(engine) -> List[int]:
    if engine.forcing is None:
        raise ValueError("engine has no end-of-thinking string (it needs a tokenizer)")
    return list(engine.forcing.end_think_ids)


def _record(engine, sid, prompt, end) -> RunRecord:
    toks = [t for t in engine.tokens(sid) if t >= 0]
    n = thinking_length(toks, end)
    closed = n < len(toks)
    answer = engine.tokenizer.decode(toks[n + len(end):]) if closed else ""
    return RunRecord(prompt, engine.text(sid), n, engine.waits_used(sid), answer, closed,
                     engine.finished(sid), len(toks), len(toks))


def _generate(engine, prompts, seeds, max_new_tokens, **add_kw) -> List[RunRecord]:
    """Decode every prompt in as few engine batches as the free KV pool allows (usually one)."""
    end, bs = _end_ids(engine), engine.pool.block_size
    ids = [engine.tokenizer.encode(p) for p in prompts]
    out, i = [], 0
    while i < len(prompts):
        batch, need, cap = [], 0, engine.pool.num_free_blocks
        while i < len(prompts):
            blocks = -(-(len(ids[i]) + max_new_tokens) // bs)
            if blocks > cap:
                raise ValueError(f"num_blocks: the pool ({cap} free blocks of {bs}) cannot hold a sequence of "
                                 f"{len(ids[i]) + max_new_tokens} tokens")
            if need + blocks > cap:
                break
            batch.append(i)
            need, i = need + blocks, i + 1
        sids = []
        try:
            for j in batch:
                sids.append(engine.add(ids[j], seed=seeds[j], **add_kw))
            engine.generate(sids, max_new_tokens=max_new_tokens)
            out += [_record(engine, s, prompts[j], end) for s, j in zip(sids, batch)]
        finally:
            engine.free(sids)
    return out


def _mix(*xs) -> int:
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = ((h ^ int(x)) * 0x100000001B3 + 0x632BE59BD9B4E019) % (1 << 64)
    return h % (1 << 62)


def _seeds(prompts, seed, seeds) -> List[int]:
    if seeds is None:
        return [_mix(seed, i) for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds must have one entry per prompt ({len(prompts)}), got {len(seeds)}")
    return [int(s) for s in seeds]


def _sampling(temperature, top_p) -> dict:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    return dict(temperature=float(temperature), top_p=float(top_p))


# -- methods -------------------------------------------------------------------------------
def budget_forcing(engine, prompts: Sequence[str], *, max_thinking: int, min_thinking: int = 0,
                   min_waits: int = 0, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   seeds: Optional[Sequence[int]] = None, max_new_tokens: Optional[int] = None) -> List[RunRecord]:
    """s1 budget forcing through the engine's built-in forcing.

    Parameters
    ----------
    engine : tts_kernels.decode.Engine
    prompts : sequence of str
    max_thinking, min_thinking, min_waits : int
        At most ``max_thinking`` thinking tokens (then the end delimiter and answer prefix are
        forced); at least ``min_thinking`` tokens and ``min_waits`` Waits (an earlier end becomes "Wait").
    temperature, top_p, seed, seeds, max_new_tokens
        ``seeds``: one per prompt (default derived from ``seed``); ``max_new_tokens`` default
        ``max_thinking + ANSWER_ROOM``.

    Returns
    -------
    list of RunRecord
        One per prompt, in order.
    """
    _check_budget(max_thinking, min_thinking, min_waits)
    cap = max_thinking + ANSWER_ROOM if max_new_tokens is None else max_new_tokens
    return _generate(engine, list(prompts), _seeds(prompts, seed, seeds), cap, max_thinking=max_thinking,
                     min_thinking=min_thinking, min_waits=min_waits, **_sampling(temperature, top_p))


def _unbudgeted(engine, prompts, kind, templates, fmt, temperature=1.0, top_p=1.0, seed=0, seeds=None,
                max_new_tokens=DEFAULT_MAX_NEW_TOKENS) -> List[RunRecord]:
    t = templates_for(engine) if templates is None else templates
    shown = [t.render(kind, p, **fmt) for p in prompts]
    return _generate(engine, shown, _seeds(prompts, seed, seeds), max_new_tokens, **_sampling(temperature, top_p))


def token_conditional(engine, prompts, *, max_thinking: int, templates: Optional[PromptTemplates] = None,
                      **kw) -> List[RunRecord]:
    """Token-conditional control: the prompt states ``max_thinking`` (``templates.token``; default
    :func:`templates_for` the engine). Decoding has no budget; ``kw``: ``temperature``, ``top_p``,
    ``seed``, ``seeds`` as in :func:`budget_forcing`, ``max_new_tokens`` (default 160)."""
    _check_budget(max_thinking)
    return _unbudgeted(engine, prompts, "token", templates, dict(budget=max_thinking), **kw)


def step_conditional(engine, prompts, *, max_steps: int, templates: Optional[PromptTemplates] = None,
                     **kw) -> List[RunRecord]:
    """Step-conditional control: the prompt states ``max_steps``; otherwise as :func:`token_conditional`."""
    _check_int("max_steps", max_steps, 1)
    return _unbudgeted(engine, prompts, "step", templates, dict(steps=max_steps), **kw)


def class_conditional(engine, prompts, *, length_class: str, templates: Optional[PromptTemplates] = None,
                      **kw) -> List[RunRecord]:
    """Class-conditional control: the prompt asks for "short" or "long" thinking; otherwise as
    :func:`token_conditional`."""
    if length_class not in ("short", "long"):
        raise ValueError(f"length_class must be 'short' or 'long', got {length_class!r}")
    return _unbudgeted(engine, prompts, length_class, templates, {}, **kw)


def rejection_sampling(engine, prompts, *, max_thinking: int, min_thinking: int = 0, max_tries: int = 16,
                       tries_per_round: int = 8, temperature=1.0, top_p=1.0, seed=0, seeds=None,
                       max_new_tokens=DEFAULT_MAX_NEW_TOKENS) -> List[RunRecord]:
    """Sample without a budget; keep the first try whose thinking is within ``[min_thinking, max_thinking]``.

    Try ``t`` of a prompt has its own seed, so the result is that of trying one at a time; for
    speed each round decodes the next ``tries_per_round`` tries of every unresolved prompt in one
    batch, cut at ``max_thinking + len(end)`` tokens (not closed by then: over budget). The chosen
    try is then decoded in full with its seed (sampling is keyed by seed and position, so it is
    the same sample; checked). ``cost_tokens`` counts what one-at-a-time sampling generates: the
    cut tries before the chosen one plus the chosen one in full.

    s1 reports 100% Control for rejection sampling: it sampled until a try fitted. Here at most
    ``max_tries`` (>= 1) tries are drawn, and a prompt with no fitting try keeps its last try,
    marked ``accepted=False``: Control counts it as a violation instead of hiding it. Other
    parameters and the return value as in :func:`budget_forcing` (``max_new_tokens`` default 160).
    """
    _check_budget(max_thinking, min_thinking)
    _check_int("max_tries", max_tries, 1)
    _check_int("tries_per_round", tries_per_round, 1)
    kw, base, end = _sampling(temperature, top_p), _seeds(prompts, seed, seeds), _end_ids(engine)
    window = min(max_thinking + len(end), max_new_tokens)
    todo, cost, chosen = list(range(len(prompts))), [0] * len(prompts), {}
    for first in range(0, max_tries, tries_per_round):
        jobs = [(i, t, base[i] if t == 0 else _mix(base[i], t))
                for i in todo for t in range(first, min(first + tries_per_round, max_tries))]
        recs = _generate(engine, [prompts[i] for i, _, _ in jobs], [s for _, _, s in jobs], window, **kw)
        for (i, t, s), r in zip(jobs, recs):
            if i not in chosen:
                cost[i] += r.generated_tokens
                fits = r.closed and min_thinking <= r.thinking_tokens <= max_thinking
                if fits or t == max_tries - 1:
                    chosen[i] = (t, s, r, fits)
        todo = [i for i in todo if i not in chosen]
    full = _generate(engine, list(prompts), [chosen[i][1] for i in range(len(prompts))], max_new_tokens, **kw)
    out = []
    for i, f in enumerate(full):
        t, _, r, ok = chosen[i]
        if f.thinking_tokens != r.thinking_tokens if r.closed else f.thinking_tokens <= r.generated_tokens - len(end):
            raise RuntimeError("rejection_sampling: the regenerated try differs from the sampled one")
        out.append(replace(f, cost_tokens=cost[i] - r.generated_tokens + f.generated_tokens, tries=t + 1,
                           accepted=ok))
    return out


# -- metrics -------------------------------------------------------------------------------
def control(records: Sequence[Union[RunRecord, int]], min_tokens: int, max_tokens: int) -> float:
    """s1's Control (Eq. 1): share (0..1) of runs (records or lengths) thinking ``min_tokens..max_tokens``."""
    if not records:
        raise ValueError("records must not be empty")
    _check_budget(max_tokens, min_tokens, names=("max_tokens", "min_tokens", ""))
    n = [r.thinking_tokens if isinstance(r, RunRecord) else int(r) for r in records]
    return sum(min_tokens <= x <= max_tokens for x in n) / len(n)


def scaling(points: Sequence[Sequence[float]], *, log2: bool = False) -> float:
    """s1's Scaling (Eq. 2): the average slope ``(f(b) - f(a)) / (b - a)`` over all pairs of points.

    Parameters
    ----------
    points : sequence of (float, float)
        ``(average thinking tokens, accuracy)``, one per budget (at least 2).
    log2 : bool
        Slopes against ``log2`` of the thinking tokens (per doubling; s1's figures use a log axis).

    Returns
    -------
    float
        Accuracy units per thinking token (or per doubling). Pairs with equal thinking tokens
        define no slope and are left out; NaN when no pair is left.
    """
    if len(points) < 2:
        raise ValueError(f"points: scaling needs at least 2 points, got {len(points)}")
    xs = sorted((math.log2(a) if log2 else float(a), float(f)) for a, f in points)
    slopes = [(fb - fa) / (b - a) for (a, fa), (b, fb) in combinations(xs, 2) if b != a]
    return sum(slopes) / len(slopes) if slopes else math.nan


def performance(points: Sequence[Sequence[float]]) -> float:
    """s1's Performance (Eq. 3): the best accuracy of ``(thinking tokens, accuracy)`` points."""
    if not points:
        raise ValueError("points must not be empty")
    return max(float(f) for _, f in points)


# -- sweep ---------------------------------------------------------------------------------
def _supports(method, b: Budget) -> bool:
    """Prompt-conditional baselines state only a maximum; only budget forcing forces Waits."""
    return ((b.min_thinking == 0 and b.min_waits == 0) or method == "budget_forcing"
            or (method == "rejection_sampling" and b.min_waits == 0))


def _run_method(engine, method, prompts, seeds, b: Budget, templates, kw, max_tries, max_new_tokens):
    if method == "budget_forcing":
        return budget_forcing(engine, prompts, max_thinking=b.max_thinking, min_thinking=b.min_thinking,
                              min_waits=b.min_waits, seeds=seeds, **kw)
    kw = dict(kw, seeds=seeds, max_new_tokens=max_new_tokens)
    if method == "rejection_sampling":
        return rejection_sampling(engine, prompts, max_thinking=b.max_thinking, min_thinking=b.min_thinking,
                                  max_tries=max_tries, **kw)
    if method == "token_conditional":
        return token_conditional(engine, prompts, max_thinking=b.max_thinking, templates=templates, **kw)
    if method == "step_conditional":
        return step_conditional(engine, prompts, max_steps=templates.steps_for(b.max_thinking),
                                templates=templates, **kw)
    return class_conditional(engine, prompts, length_class=templates.class_for(b.max_thinking),
                             templates=templates, **kw)


#: how the sweep's intervals are computed (stated in its JSON config)
INTERVAL_METHOD = ("per budget: Wilson score interval, 95% (stats.wilson) over its runs (accuracy, Control); "
                   "a method's Control over all its budgets: Wilson score interval with the problems as the "
                   "sample (each problem's share of its runs within budget, summed; every budget runs the "
                   "same problems, so its runs are not independent trials; conservative, a share's variance "
                   "being at most p(1-p)); Performance: the Wilson "
                   "interval of the best budget's accuracy (the best of several, picked in-sample)")


def _pct_interval(k: int, n: int) -> tuple:
    lo, hi = stats.wilson(k, n)
    return 100.0 * lo, 100.0 * hi


def _budget_row(method, b: Budget, probs, recs, wall_s) -> dict:
    n = len(recs)
    solved = sum(bool(p.check(r.text)) for p, r in zip(probs, recs))
    flags = [int(b.min_thinking <= r.thinking_tokens <= b.max_thinking) for r in recs]   # control()'s rule, per run
    within = sum(flags)
    acc_lo, acc_hi = _pct_interval(solved, n)
    ctl_lo, ctl_hi = _pct_interval(within, n)
    # run j of every budget is the same problem and sample (common random numbers): for the
    # method's Control interval (per problem), dropped from the row once it is computed
    row = dict(asdict(b), runs=n, within_by_run=flags, accuracy_pct=100.0 * solved / n, accuracy_lo_pct=acc_lo, accuracy_hi_pct=acc_hi,
               solved=solved, avg_thinking_tokens=sum(r.thinking_tokens for r in recs) / n,
               control_pct=100.0 * within / n, control_lo_pct=ctl_lo, control_hi_pct=ctl_hi, within_budget=within,
               tokens_generated=sum(r.cost_tokens for r in recs), wall_s=wall_s)
    if method == "rejection_sampling":
        row.update(accepted_pct=100.0 * sum(r.accepted for r in recs) / n, avg_tries=sum(r.tries for r in recs) / n)
    return row


def control_interval(rows_within: Sequence[Sequence[int]], samples_per_problem: int = 1) -> tuple:
    """95% interval (percent) of a method's Control over all its budgets, the problems as the sample.

    ``rows_within[b][j]``: run ``j`` of budget ``b`` kept to the budget (0/1); run ``j`` is sample
    ``j % samples_per_problem`` of problem ``j // samples_per_problem`` at every budget. Each problem
    contributes its share of runs within budget; the Wilson interval of the summed shares over the
    problems is conservative (a share's variance is at most ``p (1 - p)``).
    """
    if len({len(r) for r in rows_within}) != 1:
        raise ValueError("every budget of a method must run the same problems")
    n_runs = len(rows_within[0])
    if n_runs == 0 or n_runs % samples_per_problem:
        raise ValueError(f"{n_runs} runs per budget are not a whole number of problems x {samples_per_problem}")
    k = samples_per_problem
    shares = [sum(r[i * k + j] for r in rows_within for j in range(k)) / (k * len(rows_within))
              for i in range(n_runs // k)]
    lo, hi = stats.wilson(sum(shares), len(shares))
    return 100.0 * lo, 100.0 * hi


def _method_summary(rows, skipped, wall_s, samples_per_problem: int = 1) -> dict:
    pts = [(r["avg_thinking_tokens"], r["accuracy_pct"]) for r in rows]

    def nan_none(x):
        return None if math.isnan(x) else x
    runs, within = sum(r["runs"] for r in rows), sum(r["within_budget"] for r in rows)
    # the per-run flags serve the interval only (not kept in the JSON)
    flags = [r.pop("within_by_run") for r in rows]
    ctl = control_interval(flags, samples_per_problem) if runs else (None, None)
    best = max(rows, key=lambda r: r["accuracy_pct"]) if rows else None
    return dict(budgets=rows, skipped=skipped,
                control_pct=100.0 * within / runs if runs else None, control_lo_pct=ctl[0], control_hi_pct=ctl[1],
                scaling_pct_per_token=nan_none(scaling(pts)) if len(pts) > 1 else None,
                scaling_pct_per_doubling=(nan_none(scaling(pts, log2=True))
                                          if len(pts) > 1 and min(a for a, _ in pts) > 0 else None),
                performance_pct=performance(pts) if pts else None,
                performance_lo_pct=best["accuracy_lo_pct"] if best else None,
                performance_hi_pct=best["accuracy_hi_pct"] if best else None,
                tokens_generated=sum(r["tokens_generated"] for r in rows), wall_s=wall_s)


def sweep(engine, problems, *, budgets=DEFAULT_BUDGETS, methods=METHODS, samples_per_problem: int = 1,
          seed: int = 0, temperature: float = 1.0, top_p: float = 1.0, templates: Optional[PromptTemplates] = None,
          max_tries: int = 16, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> dict:
    """Run each method at each budget over ``problems``: accuracy, thinking, Control, Scaling, Performance.

    Parameters
    ----------
    engine : tts_kernels.decode.Engine
        Size its pool for a batch (:func:`make_engine`); a larger batch is split.
    problems : sequence of Problem, arith.Chain or (prompt, check) pairs
    budgets : sequence of int (a maximum) or Budget
        A budget with a minimum runs only for the methods that can impose it (budget forcing;
        rejection sampling for ``min_thinking``); the others list it under ``skipped``.
    methods : names from :data:`METHODS`
    samples_per_problem, seed, temperature, top_p, max_tries, max_new_tokens, templates
        Sample ``j`` of problem ``i`` has the same seed in every method and budget (common random
        numbers). ``max_new_tokens`` caps runs without a budget; ``templates``: :func:`templates_for`.

    Returns
    -------
    dict
        JSON-serialisable ``config`` and ``methods[name]``: ``budgets`` (per budget ``accuracy_pct``
        with its 95% Wilson interval ``accuracy_lo_pct`` / ``accuracy_hi_pct``, ``solved``,
        ``avg_thinking_tokens``, ``control_pct`` with ``control_lo_pct`` / ``control_hi_pct``,
        ``within_budget``, ``tokens_generated``, ``wall_s``), ``skipped``, ``control_pct`` (over all
        its runs) with ``control_lo_pct`` / ``control_hi_pct``, ``scaling_pct_per_token`` (accuracy
        points per thinking token, None when undefined), ``scaling_pct_per_doubling``,
        ``performance_pct`` with ``performance_lo_pct`` / ``performance_hi_pct``,
        ``tokens_generated``, ``wall_s``; ``config["intervals"]`` says how the intervals are computed.
    """
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"methods: unknown method {bad[0]!r} (known: {', '.join(METHODS)})")
    _check_int("samples_per_problem", samples_per_problem, 1)
    _check_int("max_tries", max_tries, 1)
    budgets = [b if isinstance(b, Budget) else Budget(b) for b in budgets]
    probs = [p for p in as_problems(problems) for _ in range(samples_per_problem)]
    if not probs or not budgets:
        raise ValueError("problems and budgets must not be empty")
    seeds = [_mix(seed, i // samples_per_problem, i % samples_per_problem) for i in range(len(probs))]
    templates = templates_for(engine) if templates is None else templates
    kw, prompts, results = _sampling(temperature, top_p), [p.prompt for p in probs], {}
    for method in methods:
        rows, skipped, t_all = [], [], time.perf_counter()
        for b in budgets:
            if not _supports(method, b):
                skipped.append(asdict(b))
                continue
            t0 = time.perf_counter()
            recs = _run_method(engine, method, prompts, seeds, b, templates, kw, max_tries, max_new_tokens)
            rows.append(_budget_row(method, b, probs, recs, time.perf_counter() - t0))
        results[method] = _method_summary(rows, skipped, time.perf_counter() - t_all, samples_per_problem)
    config = dict(num_problems=len(probs) // samples_per_problem, samples_per_problem=samples_per_problem,
                  seed=seed, temperature=temperature, top_p=top_p, max_tries=max_tries,
                  max_new_tokens=max_new_tokens, templates=templates.name, intervals=INTERVAL_METHOD)
    return dict(config=config, methods=results)


def make_engine(num_sequences: int = 320, max_len: int = 192, path=None, block_size: int = 16, seed: int = 0):
    """An :class:`~tts_kernels.decode.Engine` (default: the embedded model) whose pool holds
    ``num_sequences`` sequences of ``max_len`` tokens (prompt + generation) at once."""
    from ..decode import Engine, load
    return Engine(*load(path), num_blocks=num_sequences * -(-max_len // block_size), block_size=block_size,
                  seed=seed)
