"""Search strategies of compute-optimal test-time scaling: Best-of-N, beam search and DVTS.

All three run on one :class:`tts_kernels.decode.Engine` (one paged KV pool:
forks share their parent's KV blocks, so a prefix is stored once and, with
tree attention, read once per step for every candidate below it) and batch
every problem of a call into the same decode steps.

* **Best-of-N** (:func:`best_of_n`): ``n`` independent samples per problem,
  scored by the PRM (when given), answer chosen by voting.
* **Beam search** (:func:`beam_search`, search-and-learn's semantics): ``n``
  candidates, beam width ``M``. Each iteration generates one step (up to the
  step delimiter) for every active candidate and scores it with the PRM;
  candidates that ended (end of sequence, the token limit, or a step cut by
  ``max_step_tokens``) are collected; of the rest the ``n / M`` best are kept
  and expanded back to ``n`` candidates (each ``M`` ways; more when fewer
  survive). The last iteration generates to the end. The result is the ``n``
  best collected candidates.
* **DVTS** (:func:`dvts`): ``n / M`` independent subtrees per problem. Each
  iteration expands a subtree's current beam ``M`` ways by one step and keeps
  the best sibling; when that best sibling has ended, the subtree ends and its
  ``M`` final siblings are its candidates (``n`` in all per problem).

A candidate cut by a limit keeps its text and scores but has no answer (its
last line may be cut short), so it never wins a vote.

Selection is deterministic: candidates are ranked by their aggregated PRM
score (``SearchConfig.aggregation``; with ``lookahead``, by the score of their
path rolled out that many greedy steps, while a candidate's reported score
stays its own path's), ties broken by candidate order (parent rank, then child
index). Sampling is seeded per sequence by the engine (seeds follow sequence
ids), so the same call on a same-seeded engine reproduces exactly; changing the
batch (other problems, their order) changes the draws.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from .._progress import progress_bar
from . import registry
from .prm import PRM, check_scores_shape, split_steps
from .scoring import AGGREGATIONS, VOTINGS, aggregate, extract_answer, vote_all

def _opt(default, help, **meta):
    """A field with its command-line help (and ``choices``): the evaluate CLI is generated from these."""
    return field(default=default, metadata=dict(help=help, **meta))


@dataclass
class SearchConfig:
    """Parameters shared by the strategies (``n`` is the number of candidates per problem)."""

    n: int = _opt(4, "candidates per problem")
    beam_width: int = _opt(4, "beam width M (beam search / DVTS)")
    step_delimiter: str = _opt("\n\n", "step delimiter (default: a blank line)")
    max_steps: int = _opt(40, "beam search / DVTS iterations")
    max_step_tokens: int = _opt(64, "tokens per step (beam search / DVTS)")
    max_tokens: int = _opt(1024, "generated tokens per candidate")
    temperature: float = _opt(0.8, "sampling temperature")
    top_p: float = _opt(1.0, "nucleus sampling threshold")
    top_k: int = _opt(0, "top-k sampling (0: off)")
    lookahead: int = _opt(0, "greedy steps rolled out to score a candidate (beam search / DVTS)")
    aggregation: str = _opt("last", "step scores -> candidate score", choices=AGGREGATIONS)
    voting: str = _opt("prm_vote", "candidates -> final answer", choices=VOTINGS)

    def check_values(self) -> None:
        """Raise ``ValueError`` for a bad value or name (whatever the strategy and PRM)."""
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

    def check(self, strategy: str, prm: Optional[PRM]) -> None:
        """Raise ``ValueError`` for a configuration ``strategy`` cannot run (its traits: :mod:`.registry`)."""
        spec = registry.spec(strategy)
        self.check_values()
        spec.check(self.n, self.beam_width, prm)
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
    per_step = check_scores_shape(steps, prm.score(prompts, steps))
    return per_step, [aggregate(s, cfg.aggregation) for s in per_step]


def _candidate(engine, sid, steps, step_scores, score) -> Candidate:
    """A candidate; one cut by a limit (no end of sequence) has no answer: its last line may be cut short."""
    text = engine.text(sid)
    fin = engine.finished(sid)
    return Candidate(text, steps, list(step_scores), float(score), extract_answer(text) if fin else None,
                     fin, len(engine.tokens(sid)))


def _result(prompt, cands: List[Candidate], cfg) -> SearchResult:
    answers = vote_all([c.answer for c in cands], [c.score for c in cands])
    return SearchResult(prompt, answers[cfg.voting], answers, cands)


# -- Best-of-N -------------------------------------------------------------------------------------
@registry.register(needs_prm=False, uses_beam_width=False, independent_samples=True,
                   summary="n independent samples, answer by voting")
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
@registry.register(needs_prm=True, uses_beam_width=True, summary="PRM-guided beam search of width M")
def beam_search(engine, prompts: Sequence[str], prm: PRM, cfg: SearchConfig,
                progress: bool = False) -> List[SearchResult]:
    """PRM-guided beam search: ``cfg.n`` candidates per step, width ``cfg.beam_width`` (module docstring)."""
    cfg.check("beam_search", prm)
    prompts = list(prompts)
    n, m = cfg.n, cfg.beam_width
    roots = [engine.add(p, **_sampling(cfg)) for p in prompts]
    active = [engine.fork(r, n) for r in roots]
    engine.free(roots)
    done: List[List[Candidate]] = [[] for _ in prompts]
    for it, last in _iterations(cfg, progress):
        live = [i for i, a in enumerate(active) if a]
        if not live:
            break
        sids = [s for i in live for s in active[i]]
        rep = [prompts[i] for i in live for _ in active[i]]
        steps, per_step, own, rank, ended = _expand(engine, prm, rep, sids, cfg, last)
        pos = 0
        for i in live:
            k = len(active[i])
            alive = []
            for j in range(pos, pos + k):
                if ended[j]:
                    done[i].append(_candidate(engine, sids[j], steps[j], per_step[j], own[j]))
                    engine.free(sids[j])
                else:
                    alive.append((rank[j], sids[j]))
            pos += k
            keep = [s for _, s in _rank(alive)[:n // m]]
            engine.free([s for _, s in alive if s not in keep])
            active[i] = _refill(engine, keep, n)
    prm.reset()
    return [_result(p, _top(done[i], n), cfg) for i, p in enumerate(prompts)]


@registry.register(needs_prm=True, uses_beam_width=True, summary="n / M independent subtrees of width M")
def dvts(engine, prompts: Sequence[str], prm: PRM, cfg: SearchConfig, progress: bool = False) -> List[SearchResult]:
    """Diverse verifier tree search: ``n / M`` independent subtrees of width ``M`` per prompt (module docstring)."""
    cfg.check("dvts", prm)
    prompts = list(prompts)
    m, g = cfg.beam_width, cfg.n // cfg.beam_width
    roots = [engine.add(p, **_sampling(cfg)) for p in prompts]
    # (problem, subtree, current beam)
    beams = [(i, t, b) for i, r in enumerate(roots) for t, b in enumerate(engine.fork(r, g))]
    engine.free(roots)
    out: List[Dict[int, List[Candidate]]] = [{} for _ in prompts]
    for it, last in _iterations(cfg, progress):
        if not beams:
            break
        kids = []
        for _, _, b in beams:
            kids.append(engine.fork(b, m))
            engine.free(b)
        sids = [k for ks in kids for k in ks]
        rep = [prompts[i] for i, _, _ in beams for _ in range(m)]
        steps, per_step, own, rank, ended = _expand(engine, prm, rep, sids, cfg, last)
        nxt = []
        for u, (i, t, _) in enumerate(beams):
            sib = range(u * m, (u + 1) * m)
            best = max(sib, key=lambda j: (rank[j], -j))          # ties: the lowest sibling
            if ended[best]:                                        # the subtree ends: its M siblings are its output
                out[i][t] = [_candidate(engine, sids[j], steps[j], per_step[j], own[j]) for j in sib]
                engine.free([sids[j] for j in sib])
            else:
                engine.free([sids[j] for j in sib if j != best])
                nxt.append((i, t, sids[best]))
        beams = nxt
    prm.reset()
    return [_result(p, [c for t in sorted(out[i]) for c in out[i][t]], cfg) for i, p in enumerate(prompts)]


def _iterations(cfg, progress):
    bar = progress_bar(cfg.max_steps, progress)
    for it in range(cfg.max_steps):
        yield it, it == cfg.max_steps - 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def _expand(engine, prm, prompts, sids, cfg, last):
    """Generate one step for ``sids`` (the last iteration: to the end) within the token limit; score it.

    Returns steps, per-step scores, each candidate's own aggregated score, the score to rank it
    by (its lookahead rollout's when ``cfg.lookahead``), and whether it ended: end of sequence,
    the token limit, a step cut by ``max_step_tokens`` (as search-and-learn does), or the last
    iteration.
    """
    room = [cfg.max_tokens - len(engine.tokens(s)) for s in sids]
    step_limit = room if last else [min(cfg.max_step_tokens, r) for r in room]
    engine.generate(sids, max_new_tokens=step_limit, stop=None if last else [cfg.step_delimiter])
    steps = [_steps(engine, s, cfg) for s in sids]
    per_step, own = _score(prm, prompts, steps, cfg)
    ended = [last or engine.finished(s) or len(engine.tokens(s)) >= cfg.max_tokens
             or not engine.text(s).endswith(cfg.step_delimiter) for s in sids]
    rank = own
    if cfg.lookahead and not last:
        rank = _lookahead(engine, prm, prompts, sids, cfg, own, ended)
    return steps, per_step, own, rank, ended


def _refill(engine, keep: List[int], n: int) -> List[int]:
    """Expand the kept candidates back to ``n`` (each ``n / len(keep)`` ways, the first ones one more)."""
    if not keep:
        return []
    new = []
    for j, s in enumerate(keep):
        new += engine.fork(s, n // len(keep) + (1 if j < n % len(keep) else 0))
        engine.free(s)
    return new


def _rank(items):
    """Sort by descending score; ties keep their order (stable sort)."""
    return sorted(items, key=lambda x: -x[0])


def _top(cands: List[Candidate], n: int) -> List[Candidate]:
    return sorted(cands, key=lambda c: -c.score)[:n]


def _lookahead(engine, prm, prompts, sids, cfg, own, ended):
    """Rank each live candidate by its path extended ``cfg.lookahead`` greedy steps (search-and-learn style)."""
    idx = [j for j, e in enumerate(ended) if not e]
    forks = [engine.fork(sids[j], 1)[0] for j in idx]
    for f in forks:
        engine.set_params(f, temperature=0.0)
    for _ in range(cfg.lookahead):
        todo = [f for f in forks if not engine.finished(f) and len(engine.tokens(f)) < cfg.max_tokens]
        if not todo:
            break
        engine.generate(todo, max_new_tokens=[min(cfg.max_step_tokens, cfg.max_tokens - len(engine.tokens(f)))
                                              for f in todo], stop=[cfg.step_delimiter])
    _, ahead = _score(prm, [prompts[j] for j in idx], [_steps(engine, f, cfg) for f in forks], cfg)
    engine.free(forks)
    rank = list(own)
    for j, a in zip(idx, ahead):
        rank[j] = a
    return rank


def run_strategy(name: str, engine, prompts: Sequence[str], prm: Optional[PRM], cfg: SearchConfig,
                 progress: bool = False) -> List[SearchResult]:
    """Dispatch by registered name (:mod:`.registry`: ``"best_of_n"``, ``"beam_search"``, ``"dvts"``)."""
    return registry.spec(name).fn(engine, prompts, prm, cfg, progress=progress)


#: the shipped strategies' names (the registry may hold more: :func:`.registry.names`)
STRATEGIES = registry.names()
