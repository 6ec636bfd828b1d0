"""Best-of-N, beam search and DVTS against brute-force references on a scripted model and PRM.

The scripted engine implements the part of :class:`tts_kernels.decode.Engine`
the strategies use. A sequence's next step is a pure function of its prompt,
its steps so far and its *salt* (fixed when it is forked: the parent's salt,
the fork call on that parent and the child index), so the reference below can
predict every candidate without running the strategies' code.
"""
import hashlib

import pytest

from tts_kernels.search import strategies as S
from tts_kernels.search.prm import PRM


def _h(*parts) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:12], 16)


def gen_step(prompt, steps, salt, max_depth=6):
    """(step text, finished) of the scripted policy."""
    h = _h(prompt, tuple(steps), salt)
    if h % 4 == 0 or len(steps) + 1 >= max_depth:
        return f"</think>Final Answer: {h % 3}", True
    return f"s{h % 97}", False


class ScriptedEngine:
    tokenizer, eos_token_ids = None, ()
    TOKENS_PER_STEP = 3

    def __init__(self):
        self.seqs, self.next_id, self.params = {}, 0, {}

    def _new(self, prompt, steps, salt, finished=False):
        sid = self.next_id
        self.next_id += 1
        self.seqs[sid] = dict(prompt=prompt, steps=list(steps), salt=salt, forks=0, finished=finished)
        return sid

    def add(self, prompt, **params):
        sid = self._new(prompt, [], ("root",))
        self.params[sid] = dict(params)
        return sid

    def fork(self, sid, k=1):
        s = self.seqs[sid]
        call = s["forks"]
        s["forks"] += 1
        kids = [self._new(s["prompt"], s["steps"], s["salt"] + ((call, c),), s["finished"]) for c in range(k)]
        for kid in kids:
            self.params[kid] = dict(self.params[sid])
        return kids

    def set_params(self, sid, **params):
        self.params[sid].update(params)

    def generate(self, sids, max_new_tokens=256, stop=None, progress=False):
        for sid in sids:
            s = self.seqs[sid]
            while not s["finished"]:
                step, s["finished"] = gen_step(s["prompt"], s["steps"], s["salt"])
                s["steps"].append(step)
                if stop:
                    break

    def free(self, sids):
        for sid in ([sids] if isinstance(sids, int) else list(sids)):
            del self.seqs[sid]

    def text(self, sid):
        s = self.seqs[sid]
        return "".join(x + ("" if s["finished"] and i == len(s["steps"]) - 1 else "\n\n")
                       for i, x in enumerate(s["steps"]))

    def tokens(self, sid):
        return [0] * (self.TOKENS_PER_STEP * len(self.seqs[sid]["steps"]))

    def finished(self, sid):
        return self.seqs[sid]["finished"]

    @property
    def live(self):
        return list(self.seqs)


def step_score(prompt, steps):
    return (_h("prm", prompt, tuple(steps)) % 1000) / 1000


class ScriptedPRM(PRM):
    def __init__(self, constant=None):
        self.constant, self.calls = constant, 0

    def score(self, prompts, steps):
        self.calls += 1
        return [[self.constant if self.constant is not None else step_score(p, st[:k + 1]) for k in range(len(st))]
                for p, st in zip(prompts, steps)]


AGG = {"last": lambda s: s[-1], "min": min, "avg": lambda s: sum(s) / len(s)}


def ref_beam(prompt, n, m, max_steps, agg, salts, prm_score=step_score):
    """Brute-force beam search of one group: returns [(steps, score, finished)] of its collected candidates."""
    active = [([], salt) for salt in salts]
    completed = []
    for it in range(max_steps):
        scored = []
        for steps, salt in active:
            step, fin = gen_step(prompt, steps, salt)
            path = steps + [step]
            scores = [prm_score(prompt, path[:k + 1]) for k in range(len(path))]
            scored.append((AGG[agg](scores), path, salt, fin))
        completed += [(p, sc, True) for sc, p, _, fin in scored if fin]
        alive = [x for x in scored if not x[3]]
        if len(completed) >= n or it == max_steps - 1 or not alive:
            if not completed:
                completed = [(p, sc, False) for sc, p, _, _ in sorted(alive, key=lambda x: -x[0])[:n]]
            return sorted(completed, key=lambda c: -c[1])[:n]
        keep = sorted(alive, key=lambda x: -x[0])[:n // m]
        active = [(p, salt + ((0, c),)) for _, p, salt, _ in keep for c in range(m)]
    raise AssertionError("unreachable")


PROMPTS = ["p0", "p1", "p2"]


@pytest.mark.parametrize("n,m,agg", [(4, 2, "last"), (8, 4, "min"), (6, 3, "avg"), (4, 4, "last")])
def test_beam_search_keeps_exactly_the_reference_candidates(n, m, agg):
    eng = ScriptedEngine()
    cfg = S.SearchConfig(n=n, beam_width=m, max_steps=8, aggregation=agg, voting="prm_max")
    res = S.beam_search(eng, PROMPTS, ScriptedPRM(), cfg)
    for i, (p, r) in enumerate(zip(PROMPTS, res)):
        # the root of problem i is sequence i; its first fork call gives the n initial candidates
        ref = ref_beam(p, n, m, 8, agg, [("root", (0, c)) for c in range(n)])
        assert [c.steps for c in r.candidates] == [x[0] for x in ref]
        assert [c.score for c in r.candidates] == pytest.approx([x[1] for x in ref])
        assert r.answer == r.candidates[0].answer          # prm_max: best-scored candidate's answer
    assert eng.live == [], "the search leaked sequences"


def test_dvts_subtrees_are_independent_beam_searches():
    n, m = 8, 2
    eng = ScriptedEngine()
    cfg = S.SearchConfig(n=n, beam_width=m, max_steps=8, aggregation="last", voting="prm_vote")
    res = S.dvts(eng, PROMPTS, ScriptedPRM(), cfg)
    for p, r in zip(PROMPTS, res):
        expect = []
        for j in range(n // m):       # subtree j: the j-th fork call on the root, m candidates, keep 1
            expect += ref_beam(p, m, m, 8, "last", [("root", (j, c)) for c in range(m)])
        assert [c.steps for c in r.candidates] == [x[0] for x in expect]
        assert len({tuple(c.steps) for c in r.candidates}) > m      # the subtrees explored different paths
    assert eng.live == []


def test_best_of_n_scores_every_sample_and_votes():
    eng = ScriptedEngine()
    cfg = S.SearchConfig(n=5, aggregation="min", voting="prm_max")
    res = S.best_of_n(eng, PROMPTS, ScriptedPRM(), cfg)
    for i, (p, r) in enumerate(zip(PROMPTS, res)):
        assert len(r.candidates) == 5 and all(c.finished for c in r.candidates)
        for c, c_idx in zip(r.candidates, range(5)):
            salt = ("root", (0, c_idx))
            steps = []
            while not steps or not steps[-1].startswith("</think>"):
                steps.append(gen_step(p, steps, salt)[0])
            assert c.steps == steps
            assert c.score == pytest.approx(min(step_score(p, steps[:k + 1]) for k in range(len(steps))))
        best = max(range(5), key=lambda k: (r.candidates[k].score, -k))
        assert r.answer == r.candidates[best].answer == r.answers["prm_max"]
    assert eng.live == []


def test_ties_are_broken_by_candidate_order():
    eng = ScriptedEngine()
    cfg = S.SearchConfig(n=4, beam_width=2, max_steps=8, aggregation="last", voting="prm_max")
    res = S.beam_search(eng, ["p0"], ScriptedPRM(constant=0.5), cfg)
    ref = ref_beam("p0", 4, 2, 8, "last", [("root", (0, c)) for c in range(4)], prm_score=lambda p, s: 0.5)
    assert [c.steps for c in res[0].candidates] == [x[0] for x in ref]
    again = S.beam_search(ScriptedEngine(), ["p0"], ScriptedPRM(constant=0.5), cfg)
    assert [c.steps for c in again[0].candidates] == [c.steps for c in res[0].candidates]


def test_lookahead_ranks_by_the_rolled_out_path():
    eng = ScriptedEngine()
    cfg = S.SearchConfig(n=4, beam_width=2, max_steps=8, lookahead=1, aggregation="last")
    res = S.beam_search(eng, PROMPTS, ScriptedPRM(), cfg)
    assert eng.live == [] and all(r.candidates for r in res)
    # lookahead forks are greedy (temperature 0) and freed; the kept candidates carry no lookahead steps
    for r in res:
        for c in r.candidates:
            assert c.steps[-1].startswith("</think>") or not c.finished


@pytest.mark.parametrize("strategy,kwargs,prm,match", [
    ("beam_search", dict(n=6, beam_width=4), ScriptedPRM(), "divisible"),
    ("dvts", dict(n=5, beam_width=2), ScriptedPRM(), "divisible"),
    ("beam_search", dict(n=4, beam_width=2), None, "needs a PRM"),
    ("dvts", dict(n=4, beam_width=2), None, "needs a PRM"),
    ("best_of_n", dict(n=4, aggregation="median"), ScriptedPRM(), "unknown aggregation"),
    ("best_of_n", dict(n=4, voting="borda"), ScriptedPRM(), "unknown voting"),
    ("best_of_n", dict(n=4, voting="prm_vote"), None, "needs a PRM"),
    ("best_of_n", dict(n=0), ScriptedPRM(), "n must be a positive int"),
    ("best_of_n", dict(n=4, step_delimiter=""), ScriptedPRM(), "step_delimiter"),
    ("beam_search", dict(n=4, beam_width=2, lookahead=-1), ScriptedPRM(), "lookahead"),
])
def test_bad_configurations_fail_clearly(strategy, kwargs, prm, match):
    eng = ScriptedEngine()
    with pytest.raises(ValueError, match=match):
        S.run_strategy(strategy, eng, ["p0"], prm, S.SearchConfig(**kwargs))
    assert eng.live == [], "a rejected configuration must not start a search"
    with pytest.raises(ValueError, match="unknown strategy"):
        S.run_strategy("mcts", eng, ["p0"], prm, S.SearchConfig())
