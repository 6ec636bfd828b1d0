"""Search strategies of compute-optimal test-time scaling: Best-of-N, beam search and DVTS.

All three run on one :class:`tts_kernels.decode.Engine` (one paged KV pool:
forks share their parent's KV blocks, so a prefix is stored once and, with
tree attention, read once per step for every candidate below it) and batch
every problem of a call into the same decode steps.

* **Best-of-N** (:func:`best_of_n`): ``n`` independent samples per problem,
  scored by the PRM (when given), answer chosen by voting.
* **Beam search** (:func:`beam_search`): ``n`` candidates, beam width ``M``:
  generate one step (up to the step delimiter) for every active candidate,
  score it with the PRM, keep the ``n / M`` best unfinished candidates and
  expand each ``M`` ways. Candidates that finish (end of sequence, or the
  token limit) leave the beam and are collected; the search of a problem ends
  when ``n`` candidates are collected or after ``max_steps`` steps.
* **DVTS** (:func:`dvts`): ``n / M`` independent subtrees per problem, each
  the beam search above with ``M`` candidates and width ``M`` (keep the best
  one, expand it ``M`` ways); the subtrees' collected candidates are pooled
  for the vote.

Selection is deterministic: candidates are ranked by their aggregated PRM
score (``SearchConfig.aggregation``), ties broken by candidate order (the
order of creation: parent rank, then child index). Sampling is seeded per
sequence by the engine, so a seeded run reproduces exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from .prm import PRM, split_steps
from .scoring import AGGREGATIONS, VOTINGS, aggregate, extract_answer, vote_all

STRATEGIES = ("best_of_n", "beam_search", "dvts")


@dataclass
class SearchConfig:
    """Parameters shared by the strategies (``n`` is the number of candidates per problem)."""

    n: int = 4
    beam_width: int = 4                 # M (beam search / DVTS)
    step_delimiter: str = "\n\n"
    max_steps: int = 40                 # beam search / DVTS iterations
    max_step_tokens: int = 64           # tokens per step (beam search / DVTS)
    max_tokens: int = 1024              # generated tokens per candidate
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    lookahead: int = 0                  # greedy steps rolled out to score a candidate (beam / DVTS)
    aggregation: str = "last"           # step scores -> candidate score: last | min | avg | prod
    voting: str = "prm_vote"            # majority | prm_max | prm_vote

    def check(self, strategy: str, prm: Optional[PRM]) -> None:
        """Raise ``ValueError`` for a configuration ``strategy`` cannot run."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        for name in ("n", "beam_width", "max_steps", "max_step_tokens", "max_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.lookahead, int) or self.lookahead < 0:
            raise ValueError(f"lookahead must be a non-negative int, got {self.lookahead!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; expected one of {AGGREGATIONS}")
        if self.voting not in VOTINGS:
            raise ValueError(f"unknown voting {self.voting!r}; expected one of {VOTINGS}")
        if not self.step_delimiter:
            raise ValueError("step_delimiter must be a non-empty string")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if strategy != "best_of_n":
            if prm is None:
                raise ValueError(f"{strategy} needs a PRM (prm=None)")
            if self.n % self.beam_width:
                raise ValueError(f"n ({self.n}) must be divisible by beam_width ({self.beam_width}) for {strategy}")
        if prm is None and self.voting != "majority":
            raise ValueError(f"voting={self.voting!r} needs a PRM; pass prm= or use voting='majority'")


@dataclass
class Candidate:
    """One finished (or abandoned) candidate solution."""

    text: str
    steps: List[str]
    step_scores: List[float]
    score: float                  # aggregated step scores (0.0 without a PRM)
    answer: Optional[str]
    finished: bool                # reached end of sequence (False: cut by a limit)
    num_tokens: int


@dataclass
class SearchResult:
    """Outcome of one problem: the chosen answer, every voting method's answer, the candidates."""

    prompt: str
    answer: Optional[str]
    answers: Dict[str, Optional[str]]
    candidates: List[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# -- helpers ---------------------------------------------------------------------------------------
def _sampling(cfg: SearchConfig) -> dict:
    return dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)


def _steps(engine, sid, cfg) -> List[str]:
    return split_steps(engine.text(sid), cfg.step_delimiter, _eos_strings(engine))


def _eos_strings(engine) -> tuple:
    tok = engine.tokenizer
    return tuple(tok.decode([t]) for t in engine.eos_token_ids) if tok is not None else ()


def _score(prm, prompts, steps, cfg) -> List[float]:
    if prm is None:
        return [[] for _ in steps], [0.0] * len(steps)
    per_step = prm.score(prompts, steps)
    return per_step, [aggregate(s, cfg.aggregation) for s in per_step]


def _candidate(engine, sid, steps, step_scores, score) -> Candidate:
    text = engine.text(sid)
    return Candidate(text, steps, list(step_scores), float(score), extract_answer(text),
                     engine.finished(sid), len(engine.tokens(sid)))


def _result(prompt, cands: List[Candidate], cfg) -> SearchResult:
    answers = vote_all([c.answer for c in cands], [c.score for c in cands])
    return SearchResult(prompt, answers[cfg.voting], answers, cands)


# -- Best-of-N -------------------------------------------------------------------------------------
def best_of_n(engine, prompts: Sequence[str], prm: Optional[PRM], cfg: SearchConfig,
              progress: bool = False) -> List[SearchResult]:
    """``cfg.n`` independent samples per prompt, scored by ``prm``, answer by ``cfg.voting``."""
    cfg.check("best_of_n", prm)
    prompts = list(prompts)
    roots = [engine.add(p, **_sampling(cfg)) for p in prompts]
    kids = [engine.fork(r, cfg.n) for r in roots]
    engine.free(roots)
    flat = [k for ks in kids for k in ks]
    engine.generate(flat, max_new_tokens=cfg.max_tokens, progress=progress)
    rep = [p for p, ks in zip(prompts, kids) for _ in ks]
    steps = [_steps(engine, k, cfg) for k in flat]
    per_step, agg = _score(prm, rep, steps, cfg)
    cands = [_candidate(engine, k, st, ps, a) for k, st, ps, a in zip(flat, steps, per_step, agg)]
    engine.free(flat)
    if prm is not None:
        prm.reset()
    return [_result(p, cands[i * cfg.n:(i + 1) * cfg.n], cfg) for i, p in enumerate(prompts)]


# -- beam search and DVTS --------------------------------------------------------------------------
class _Group:
    """One independent beam search: ``n`` candidates, keep ``n // width`` per step, expand ``width`` ways."""

    def __init__(self, problem: int, n: int, width: int):
        self.problem, self.n, self.width = problem, n, width
        self.active: List[int] = []
        self.completed: List[Candidate] = []
        self.done = False


def beam_search(engine, prompts: Sequence[str], prm: PRM, cfg: SearchConfig,
                progress: bool = False) -> List[SearchResult]:
    """PRM-guided beam search: ``cfg.n`` candidates per step, width ``cfg.beam_width`` (module docstring)."""
    cfg.check("beam_search", prm)
    return _grouped_search(engine, list(prompts), prm, cfg, groups=1, group_n=cfg.n, progress=progress)


def dvts(engine, prompts: Sequence[str], prm: PRM, cfg: SearchConfig, progress: bool = False) -> List[SearchResult]:
    """Diverse verifier tree search: ``n / M`` independent subtrees of width ``M`` per prompt."""
    cfg.check("dvts", prm)
    m = cfg.beam_width
    return _grouped_search(engine, list(prompts), prm, cfg, groups=cfg.n // m, group_n=m, progress=progress)


def _grouped_search(engine, prompts, prm, cfg, groups, group_n, progress=False):
    roots = [engine.add(p, **_sampling(cfg)) for p in prompts]
    state = [_Group(i, group_n, cfg.beam_width) for i in range(len(prompts)) for _ in range(groups)]
    for g in state:
        g.active = engine.fork(roots[g.problem], group_n)
    engine.free(roots)
    bar = _bar(cfg.max_steps, progress)
    for it in range(cfg.max_steps):
        live = [g for g in state if not g.done]
        if not live:
            break
        sids = [s for g in live for s in g.active]
        engine.generate(sids, max_new_tokens=cfg.max_step_tokens, stop=[cfg.step_delimiter])
        rep = [prompts[g.problem] for g in live for _ in g.active]
        steps = [_steps(engine, s, cfg) for s in sids]
        per_step, agg = _score(prm, rep, steps, cfg)
        if cfg.lookahead:
            agg = _lookahead(engine, prm, rep, sids, cfg, agg)
        pos = 0
        last = it == cfg.max_steps - 1
        for g in live:
            k = len(g.active)
            _advance(engine, g, g.active, steps[pos:pos + k], per_step[pos:pos + k], agg[pos:pos + k], cfg, last)
            pos += k
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    prm.reset()
    out = []
    for i, p in enumerate(prompts):
        cands = [c for g in state if g.problem == i for c in g.completed]
        out.append(_result(p, cands, cfg))
    return out


def _advance(engine, g: _Group, sids, steps, per_step, agg, cfg, last: bool) -> None:
    """Move finished candidates of ``g`` to its collection, keep the best, expand them."""
    alive = []
    for s, st, ps, a in zip(sids, steps, per_step, agg):
        if engine.finished(s) or len(engine.tokens(s)) >= cfg.max_tokens:
            g.completed.append(_candidate(engine, s, st, ps, a))
            engine.free(s)
        else:
            alive.append((a, s, st, ps))
    if len(g.completed) >= g.n or last or not alive:
        if not g.completed:                      # nothing finished: keep the best unfinished ones
            for a, s, st, ps in sorted(alive, key=lambda x: -x[0])[:g.n]:
                g.completed.append(_candidate(engine, s, st, ps, a))
        g.completed = _top(g.completed, g.n)
        engine.free([s for _, s, _, _ in alive])
        g.active, g.done = [], True
        return
    keep = _rank(alive)[:max(1, g.n // g.width)]
    drop = [x[1] for x in alive if x[1] not in {k[1] for k in keep}]
    engine.free(drop)
    nxt = []
    for _, s, _, _ in keep:
        nxt += engine.fork(s, g.width)
        engine.free(s)
    g.active = nxt


def _rank(items):
    """Sort by descending score; ties keep their order (stable sort)."""
    return sorted(items, key=lambda x: -x[0])


def _top(cands: List[Candidate], n: int) -> List[Candidate]:
    return sorted(cands, key=lambda c: -c.score)[:n]


def _lookahead(engine, prm, prompts, sids, cfg, agg):
    """Score each candidate by its path extended ``cfg.lookahead`` greedy steps (search-and-learn style)."""
    forks = [engine.fork(s, 1)[0] for s in sids]
    for f in forks:
        engine.set_params(f, temperature=0.0)
    for _ in range(cfg.lookahead):
        todo = [f for f in forks if not engine.finished(f)]
        if not todo:
            break
        engine.generate(todo, max_new_tokens=cfg.max_step_tokens, stop=[cfg.step_delimiter])
    steps = [_steps(engine, f, cfg) for f in forks]
    _, ahead = _score(prm, prompts, steps, cfg)
    engine.free(forks)
    return ahead


def _bar(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="step", leave=False)


def run_strategy(name: str, engine, prompts: Sequence[str], prm: Optional[PRM], cfg: SearchConfig,
                 progress: bool = False) -> List[SearchResult]:
    """Dispatch by name (``"best_of_n"``, ``"beam_search"``, ``"dvts"``)."""
    fns = {"best_of_n": best_of_n, "beam_search": beam_search, "dvts": dvts}
    if name not in fns:
        raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")
    return fns[name](engine, prompts, prm, cfg, progress=progress)
