"""s1 budget control on the embedded model: budget forcing, baselines, Control / Scaling / Performance, sweep."""
import json
import math

import pytest
import torch

from tts_kernels.search import budget_control as bc
from tts_kernels.tasks import arith


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    return bc.make_engine(num_sequences=128, seed=0)


@pytest.fixture(scope="module")
def prompts():
    return [p.prompt for p in arith.make_problems(12, seed=321)]


# -- thinking length and metrics on hand-made cases -------------------------------------
def test_thinking_length_hand_made():
    assert bc.thinking_length([1, 2, 5, 3], [5]) == 2
    assert bc.thinking_length([5, 1], [5]) == 0
    assert bc.thinking_length([1, 2, 3], [5]) == 3                 # never closed: everything is thinking
    assert bc.thinking_length([], [5]) == 0
    assert bc.thinking_length([1, 5, 7, 5, 6, 3], [5, 6]) == 3      # multi-token end: first full occurrence
    assert bc.thinking_length([1, 2, 5], [5, 6]) == 3               # a partial end at the tail is thinking
    with pytest.raises(ValueError, match="end_ids"):
        bc.thinking_length([1], [])


def test_control_hand_computed():
    assert bc.control([3, 5, 9, 10], 4, 9) == 0.5                  # bounds are inclusive
    assert bc.control([0, 8], 0, 8) == 1.0
    rec = bc.RunRecord("p", "t", 7, 0, "", True, True, 9, 9)
    assert bc.control([rec, rec], 0, 6) == 0.0 and bc.control([rec], 7, 7) == 1.0
    with pytest.raises(ValueError, match="records"):
        bc.control([], 0, 1)
    with pytest.raises(ValueError, match="min_tokens"):
        bc.control([1], 5, 4)


def test_scaling_and_performance_hand_computed():
    assert bc.scaling([(10, 0.2), (30, 0.6)]) == pytest.approx(0.02)
    # slopes (20-10): 0.3/10, (40-10): 0.1/30, (40-20): -0.2/20; order of the points does not matter
    three = [(40, 0.3), (10, 0.2), (20, 0.5)]
    assert bc.scaling(three) == pytest.approx((0.03 + 0.1 / 30 - 0.01) / 3)
    assert bc.scaling([(8, 0.2), (32, 0.6)], log2=True) == pytest.approx(0.2)      # per doubling
    assert bc.scaling([(10, 0.2), (10, 0.4), (20, 0.6)]) == pytest.approx((0.04 + 0.02) / 2)  # tie left out
    assert math.isnan(bc.scaling([(39.5, 25.0), (39.5, 25.0)]))
    assert bc.performance(three) == 0.5
    with pytest.raises(ValueError, match="points"):
        bc.scaling([(1, 0.5)])
    with pytest.raises(ValueError, match="points"):
        bc.performance([])


# -- budget forcing -----------------------------------------------------------------------
@pytest.mark.parametrize("budget", [bc.Budget(8), bc.Budget(24), bc.Budget(40), bc.Budget(48, min_thinking=32),
                                    bc.Budget(64, min_waits=1)])
def test_budget_forcing_control_is_100_percent(engine, prompts, budget):
    recs = bc.budget_forcing(engine, prompts, max_thinking=budget.max_thinking, min_thinking=budget.min_thinking,
                             min_waits=budget.min_waits, seed=5)
    assert len(recs) == len(prompts)
    assert all(budget.min_thinking <= r.thinking_tokens <= budget.max_thinking for r in recs)
    assert bc.control(recs, budget.min_thinking, budget.max_thinking) == 1.0
    assert all(r.closed and "Final Answer:" in r.text for r in recs)          # every run reaches an answer
    assert engine.live == []                                                     # sequences are freed


def test_shared_measure_equals_engine_counter(engine, prompts):
    end = list(engine.forcing.end_think_ids)
    sids = [engine.add(p, temperature=1.0, max_thinking=30, min_thinking=i, seed=i) for i, p in enumerate(prompts)]
    engine.generate(sids, max_new_tokens=60)
    try:
        for s in sids:
            assert bc.thinking_length(engine.tokens(s), end) == engine.thinking_tokens(s)
    finally:
        engine.free(sids)


def test_seeded_runs_reproduce(engine, prompts):
    a = bc.budget_forcing(engine, prompts, max_thinking=32, seed=11)
    b = bc.budget_forcing(engine, prompts[:5], max_thinking=32, seed=11)          # batch invariant too
    assert [r.text for r in a[:5]] == [r.text for r in b]
    c = bc.budget_forcing(engine, prompts, max_thinking=32, seed=12)
    assert [r.text for r in a] != [r.text for r in c]


# -- baselines ------------------------------------------------------------------------------
def test_rejection_sampling_never_keeps_an_over_budget_sample(engine, prompts):
    recs = bc.rejection_sampling(engine, prompts, max_thinking=40, max_tries=6, seed=3)
    assert any(r.accepted for r in recs)
    for r in recs:
        if r.accepted:
            assert r.closed and r.thinking_tokens <= 40
        else:
            assert r.tries == 6
        assert r.cost_tokens >= r.generated_tokens
    # a window [min, max] is honoured too; an impossible budget is reported, not hidden
    for r in bc.rejection_sampling(engine, prompts, max_thinking=56, min_thinking=40, max_tries=4, seed=3):
        assert not r.accepted or 40 <= r.thinking_tokens <= 56
    none = bc.rejection_sampling(engine, prompts[:4], max_thinking=3, max_tries=3, seed=3)
    assert not any(r.accepted for r in none) and all(r.tries == 3 for r in none)
    assert bc.control(none, 0, 3) == 0.0


def test_rejection_sampling_rounds_equal_one_try_at_a_time(engine, prompts):
    one = bc.rejection_sampling(engine, prompts[:6], max_thinking=36, max_tries=4, tries_per_round=1, seed=9)
    many = bc.rejection_sampling(engine, prompts[:6], max_thinking=36, max_tries=4, tries_per_round=3, seed=9)
    assert [(r.text, r.tries, r.accepted, r.cost_tokens) for r in one] == \
           [(r.text, r.tries, r.accepted, r.cost_tokens) for r in many]


def test_templates_and_prompt_conditioning(engine, prompts):
    t = bc.S1_TEMPLATES
    assert t.render("token", "Q?<think>", budget=512) == "Q?\n\nThink for up to 512 tokens.<think>"
    assert t.render("step", "Q?", steps=4) == "Q?\n\nThink for up to 4 steps."
    assert t.steps_for(512) == 5 and t.class_for(4096) == "long" and t.class_for(100) == "short"
    # the embedded model cannot read instructions: its template leaves the prompt unchanged
    assert bc.templates_for(engine) is bc.EMBEDDED_TEMPLATES
    assert all(bc.EMBEDDED_TEMPLATES.render(k, "1+2=?<think>", 8, 1) == "1+2=?<think>"
               for k in ("token", "step", "short", "long"))
    tok = bc.token_conditional(engine, prompts, max_thinking=8, seed=4)
    step = bc.step_conditional(engine, prompts, max_steps=1, seed=4)
    cls = bc.class_conditional(engine, prompts, length_class="short", seed=4)
    assert [r.text for r in tok] == [r.text for r in step] == [r.text for r in cls]   # unconditioned
    assert [r.prompt for r in tok] == prompts
    assert all(r.waits_used == 0 for r in tok)


def test_problem_interface():
    p = arith.make_problems(1, seed=0)[0]
    g = bc.as_problems([p, ("1+1=?<think>", lambda c: c.endswith("2")), bc.GradedPrompt("x", bool)])
    assert g[0].prompt == p.prompt and g[0].check(f"</think>Final Answer: {p.answer}")
    assert g[1].check("...2") and not g[1].check("3")
    with pytest.raises(ValueError, match="problems"):
        bc.as_problems(["just a prompt"])


def test_bad_arguments_raise(engine, prompts):
    with pytest.raises(ValueError, match="max_thinking"):
        bc.budget_forcing(engine, prompts, max_thinking=-1)
    with pytest.raises(ValueError, match="min_thinking"):
        bc.budget_forcing(engine, prompts, max_thinking=4, min_thinking=5)
    with pytest.raises(ValueError, match="min_waits"):
        bc.Budget(8, min_waits=-2)
    with pytest.raises(ValueError, match="max_thinking"):
        bc.token_conditional(engine, prompts, max_thinking=-3)
    with pytest.raises(ValueError, match="max_tries"):
        bc.rejection_sampling(engine, prompts, max_thinking=8, max_tries=0)
    with pytest.raises(ValueError, match="min_thinking"):
        bc.rejection_sampling(engine, prompts, max_thinking=8, min_thinking=9)
    with pytest.raises(ValueError, match="max_steps"):
        bc.step_conditional(engine, prompts, max_steps=0)
    with pytest.raises(ValueError, match="length_class"):
        bc.class_conditional(engine, prompts, length_class="medium")
    with pytest.raises(ValueError, match="seeds"):
        bc.budget_forcing(engine, prompts, max_thinking=8, seeds=[1])
    with pytest.raises(ValueError, match="temperature"):
        bc.budget_forcing(engine, prompts, max_thinking=8, temperature=-1.0)
    probs = arith.make_problems(2, seed=1)
    with pytest.raises(ValueError, match="methods"):
        bc.sweep(engine, probs, methods=["beam_search"])
    with pytest.raises(ValueError, match="max_tries"):
        bc.sweep(engine, probs, max_tries=0)
    with pytest.raises(ValueError, match="samples_per_problem"):
        bc.sweep(engine, probs, samples_per_problem=0)
    with pytest.raises(ValueError, match="max_thinking"):
        bc.sweep(engine, probs, budgets=[-8])
    assert engine.live == []


# -- sweep --------------------------------------------------------------------------------
def test_sweep_small_is_json_and_reproducible(engine):
    probs = arith.make_problems(6, seed=77)
    budgets = [8, 40, bc.Budget(48, min_thinking=32)]
    kw = dict(budgets=budgets, samples_per_problem=2, seed=1, max_tries=3)
    res = bc.sweep(engine, probs, **kw)
    json.dumps(res, allow_nan=False)
    m = res["methods"]
    assert set(m) == set(bc.METHODS) and res["config"]["num_problems"] == 6
    assert [b["control_pct"] for b in m["budget_forcing"]["budgets"]] == [100.0] * 3
    assert len(m["token_conditional"]["budgets"]) == 2 and m["token_conditional"]["skipped"] == [
        dict(max_thinking=48, min_thinking=32, min_waits=0)]
    assert len(m["rejection_sampling"]["budgets"]) == 3
    for r in m.values():
        pts = [(b["avg_thinking_tokens"], b["accuracy_pct"]) for b in r["budgets"]]
        assert r["performance_pct"] == max(a for _, a in pts)
        s = bc.scaling(pts)
        assert r["scaling_pct_per_token"] == (None if math.isnan(s) else pytest.approx(s))
        assert r["budgets"][0]["runs"] == 12
    # the embedded task's prompt-conditioned runs do not depend on the stated budget
    assert m["token_conditional"]["scaling_pct_per_token"] is None

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "wall_s"}
        return [strip(v) for v in x] if isinstance(x, list) else x
    assert strip(bc.sweep(engine, probs, **kw)) == strip(res)


def test_control_interval_takes_problems_as_the_sample():
    """A method's Control interval: each problem's share of its runs within budget (all budgets, all
    samples of the problem), Wilson over the problems; wider than the pooled interval over runs."""
    from tts_kernels.search import stats
    from tts_kernels.search.budget_control import control_interval
    rows = [[1, 1, 0, 0], [1, 0, 0, 0]]                 # 2 budgets x 4 runs
    lo, hi = control_interval(rows)                       # 4 problems, shares 1, 0.5, 0, 0
    want = stats.wilson(1.5, 4)
    assert (lo, hi) == pytest.approx((100 * want[0], 100 * want[1]))
    pooled = stats.wilson(3, 8)
    assert hi - lo > 100 * (pooled[1] - pooled[0])
    lo2, hi2 = control_interval(rows, samples_per_problem=2)   # 2 problems, shares 0.75, 0
    want2 = stats.wilson(0.75, 2)
    assert (lo2, hi2) == pytest.approx((100 * want2[0], 100 * want2[1]))
    assert control_interval([[1, 1, 1]]) == pytest.approx((100 * stats.wilson(3, 3)[0], 100.0))
    with pytest.raises(ValueError, match="same problems"):
        control_interval([[1, 0], [1]])
    with pytest.raises(ValueError, match="whole number"):
        control_interval([[1, 0, 1]], samples_per_problem=2)
