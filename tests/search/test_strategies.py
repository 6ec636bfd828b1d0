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


TPS = 3          # tokens per scripted step; a step given fewer tokens is cut (no delimiter, no answer)


class ScriptedEngine:
    tokenizer, eos_token_ids = None, ()

    def __init__(self):
        self.seqs, self.next_id, self.params = {}, 0, {}

    def _new(self, prompt, state, salt):
        sid = self.next_id
        self.next_id += 1
        self.seqs[sid] = dict(prompt=prompt, steps=list(state["steps"]), ntok=state["ntok"], cut=state["cut"],
                              salt=salt, forks=0, finished=state["finished"])
        return sid

    def add(self, prompt, **params):
        sid = self._new(prompt, dict(steps=[], ntok=0, cut=False, finished=False), ("root",))
        self.params[sid] = dict(params)
        return sid

    def fork(self, sid, k=1):
        s = self.seqs[sid]
        call = s["forks"]
        s["forks"] += 1
        kids = [self._new(s["prompt"], s, s["salt"] + ((call, c),)) for c in range(k)]
        for kid in kids:
            self.params[kid] = dict(self.params[sid])
        return kids

    def set_params(self, sid, **params):
        self.params[sid].update(params)

    def generate(self, sids, max_new_tokens=256, stop=None, progress=False):
        sids = list(sids)
        limits = [max_new_tokens] * len(sids) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        for sid, room in zip(sids, limits):
            s = self.seqs[sid]
            while not s["finished"] and not s["cut"] and room > 0:
                if room < TPS:
                    s["steps"].append("x" * room)
                    s["ntok"] += room
                    s["cut"] = True
                    break
                step, s["finished"] = gen_step(s["prompt"], s["steps"], s["salt"])
                s["steps"].append(step)
                s["ntok"] += TPS
                room -= TPS
                if stop:
                    break

    def free(self, sids):
        for sid in ([sids] if isinstance(sids, int) else list(sids)):
            del self.seqs[sid]

    def text(self, sid):
        s = self.seqs[sid]
        n = len(s["steps"])
        return "".join(x + ("" if i == n - 1 and (s["finished"] or s["cut"]) else "\n\n")
                       for i, x in enumerate(s["steps"]))

    def tokens(self, sid):
        return [0] * self.seqs[sid]["ntok"]

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


class Node:
    """A candidate of the references: its steps, tokens, and whether it finished or was cut."""

    def __init__(self, steps, salt, ntok=0, finished=False, cut=False):
        self.steps, self.salt, self.ntok, self.finished, self.cut = steps, salt, ntok, finished, cut

    def grow(self, prompt, room, one_step):
        """Extend by one step (or to the end) within ``room`` tokens, like the scripted policy."""
        n = Node(list(self.steps), self.salt, self.ntok)
        while room > 0:
            if room < TPS:
                n.steps.append("x" * room)
                n.ntok += room
                n.cut = True
                break
            step, n.finished = gen_step(prompt, n.steps, n.salt)
            n.steps.append(step)
            n.ntok += TPS
            room -= TPS
            if n.finished or one_step:
                break
        return n


def ref_beam(prompt, n, m, cfg, salts, prm_score=step_score):
    """search-and-learn's beam search, written from its description: [(steps, score, answer)]."""
    agg = AGG[cfg["aggregation"]]
    active = [Node([], salt) for salt in salts]
    completed = []
    for it in range(cfg["max_steps"]):
        if not active:
            break
        last = it == cfg["max_steps"] - 1
        grown = [a.grow(prompt, cfg["max_tokens"] - a.ntok if last else min(cfg["max_step_tokens"],
                                                                            cfg["max_tokens"] - a.ntok), not last)
                 for a in active]
        scores = [agg([prm_score(prompt, g.steps[:k + 1]) for k in range(len(g.steps))]) for g in grown]
        alive = []
        for g, sc in zip(grown, scores):
            if last or g.finished or g.cut or g.ntok >= cfg["max_tokens"]:
                completed.append((g.steps, sc, g.steps[-1].split(": ")[1] if g.finished else None))
            else:
                alive.append((sc, g))
        alive.sort(key=lambda x: -x[0])                 # stable: ties keep candidate order
        keep = [g for _, g in alive[:n // m]]
        active = []
        for j, g in enumerate(keep):                   # back to n candidates: each n/len ways, first ones +1
            copies = n // len(keep) + (1 if j < n % len(keep) else 0)
            active += [Node(g.steps, g.salt + ((0, c),), g.ntok) for c in range(copies)]
    return sorted(completed, key=lambda c: -c[1])[:n]


def ref_dvts_subtree(prompt, m, cfg, salt):
    """One DVTS subtree: expand the beam m ways, keep the best sibling; stop when it has ended."""
    agg = AGG[cfg["aggregation"]]
    beam = Node([], salt)
    for it in range(cfg["max_steps"]):
        last = it == cfg["max_steps"] - 1
        room = cfg["max_tokens"] - beam.ntok
        sibs = [Node(beam.steps, beam.salt + ((0, c),), beam.ntok).grow(
            prompt, room if last else min(cfg["max_step_tokens"], room), not last) for c in range(m)]
        scores = [agg([step_score(prompt, g.steps[:k + 1]) for k in range(len(g.steps))]) for g in sibs]
        best = max(range(m), key=lambda j: (scores[j], -j))
        b = sibs[best]
        if last or b.finished or b.cut or b.ntok >= cfg["max_tokens"]:
            return [(g.steps, sc, g.steps[-1].split(": ")[1] if g.finished else None) for g, sc in zip(sibs, scores)]
        beam = b
    raise AssertionError("unreachable")


PROMPTS = ["p0", "p1", "p2"]


CFGS = [dict(n=4, m=2, aggregation="last", max_steps=8, max_tokens=1024, max_step_tokens=64),
        dict(n=8, m=4, aggregation="min", max_steps=8, max_tokens=1024, max_step_tokens=64),
        dict(n=6, m=3, aggregation="avg", max_steps=3, max_tokens=1024, max_step_tokens=64),   # last iteration
        dict(n=4, m=4, aggregation="last", max_steps=8, max_tokens=10, max_step_tokens=64),    # token limit cuts
        dict(n=8, m=2, aggregation="last", max_steps=8, max_tokens=1024, max_step_tokens=2)]   # every step cut


def _cfg(c, **kw):
    return S.SearchConfig(n=c["n"], beam_width=c["m"], aggregation=c["aggregation"], max_steps=c["max_steps"],
                          max_tokens=c["max_tokens"], max_step_tokens=c["max_step_tokens"], **kw)


@pytest.mark.parametrize("c", CFGS, ids=lambda c: f"n{c['n']}m{c['m']}-{c['aggregation']}-{c['max_steps']}"
                         f"-{c['max_tokens']}-{c['max_step_tokens']}")
def test_beam_search_keeps_exactly_the_reference_candidates(c):
    eng = ScriptedEngine()
    res = S.beam_search(eng, PROMPTS, ScriptedPRM(), _cfg(c, voting="prm_max"))
    for p, r in zip(PROMPTS, res):
        # the root of a problem is forked once into the n initial candidates
        ref = ref_beam(p, c["n"], c["m"], c, [("root", (0, j)) for j in range(c["n"])])
        assert [x.steps for x in r.candidates] == [x[0] for x in ref]
        assert [x.score for x in r.candidates] == pytest.approx([x[1] for x in ref])
        assert [x.answer for x in r.candidates] == [x[2] for x in ref]
        assert all(x.num_tokens <= c["max_tokens"] for x in r.candidates)
        best = next((x.answer for x in r.candidates if x.answer is not None), None)
        assert r.answer == best                          # prm_max: the best-scored candidate with an answer
    assert eng.live == [], "the search leaked sequences"


@pytest.mark.parametrize("c", CFGS[:4], ids=lambda c: f"n{c['n']}m{c['m']}-{c['max_steps']}-{c['max_tokens']}")
def test_dvts_subtrees_are_independent_reference_subtrees(c):
    eng = ScriptedEngine()
    res = S.dvts(eng, PROMPTS, ScriptedPRM(), _cfg(c, voting="prm_vote"))
    for p, r in zip(PROMPTS, res):
        expect = []
        for t in range(c["n"] // c["m"]):            # subtree t: child t of the root's fork into n/m beams
            expect += ref_dvts_subtree(p, c["m"], c, ("root", (0, t)))
        assert [x.steps for x in r.candidates] == [x[0] for x in expect]
        assert [x.answer for x in r.candidates] == [x[2] for x in expect]
        assert len(r.candidates) == c["n"]
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
    c = CFGS[0]
    res = S.beam_search(ScriptedEngine(), ["p0"], ScriptedPRM(constant=0.5), _cfg(c, voting="prm_max"))
    ref = ref_beam("p0", 4, 2, c, [("root", (0, j)) for j in range(4)], prm_score=lambda p, s: 0.5)
    assert [x.steps for x in res[0].candidates] == [x[0] for x in ref]
    again = S.beam_search(ScriptedEngine(), ["p0"], ScriptedPRM(constant=0.5), _cfg(c, voting="prm_max"))
    assert [x.steps for x in again[0].candidates] == [x.steps for x in res[0].candidates]


class RolloutEngine(ScriptedEngine):
    """Records the temperature of every sequence that generates."""

    def __init__(self):
        super().__init__()
        self.temps = []

    def generate(self, sids, max_new_tokens=256, stop=None, progress=False):
        sids = list(sids)
        self.temps += [self.params[s].get("temperature") for s in sids]
        super().generate(sids, max_new_tokens, stop, progress)


def test_lookahead_ranks_by_the_greedy_rollout():
    """With lookahead=1 a candidate is ranked by its path plus one more greedy step."""
    class RolloutPRM(ScriptedPRM):
        def score(self, prompts, steps):
            # only the score of a rolled-out path's last step decides; candidates alone all tie at 0.5
            self.calls += 1
            return [[0.5] * (len(st) - 1) + [step_score(p, st) if len(st) > 1 else 0.5] for p, st in zip(prompts, steps)]
    eng = RolloutEngine()
    cfg = S.SearchConfig(n=4, beam_width=2, max_steps=2, lookahead=1, aggregation="last", temperature=0.9)
    res = S.beam_search(eng, ["p0"], RolloutPRM(), cfg)
    assert 0.0 in eng.temps and 0.9 in eng.temps          # rollouts are greedy, candidates sample
    # reference: after step 1, keep the 2 candidates whose one-step rollout scores best (ties: order)
    firsts = [Node([], ("root", (0, j))).grow("p0", 64, True) for j in range(4)]
    live = [j for j in range(4) if not firsts[j].finished]
    # the rollout is the candidate's first fork (call 0, child 0), one greedy step further
    ahead = {j: step_score("p0", Node(firsts[j].steps, firsts[j].salt + ((0, 0),), firsts[j].ntok)
                           .grow("p0", 64, True).steps) for j in live}
    kept = sorted(live, key=lambda j: -ahead[j])[:2]
    surviving = {tuple(x.steps[:1]) for x in res[0].candidates if len(x.steps) > 1}
    assert surviving <= {tuple(firsts[j].steps) for j in kept}
    assert eng.live == []


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
