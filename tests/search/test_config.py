"""The strategy registry, EvalConfig's composed SearchConfig and the evaluate flags generated from them."""
import argparse

import pytest

from tts_kernels.search import cli as search_cli
from tts_kernels.search import registry
from tts_kernels.search import strategies as S
from tts_kernels.search.evaluate import EvalConfig


def _parse(*argv):
    p = argparse.ArgumentParser()
    search_cli.add_arguments(p)
    return p, p.parse_args(list(argv))


def test_registry_traits():
    assert registry.names() == S.STRATEGIES == ("best_of_n", "beam_search", "dvts")
    bon, beam = registry.spec("best_of_n"), registry.spec("beam_search")
    assert bon.fn is S.best_of_n and not bon.needs_prm and bon.independent_samples and bon.runs_at(3, 4)
    assert beam.needs_prm and not beam.runs_at(6, 4) and beam.runs_at(8, 4) and not beam.runs_at(2, 4)
    assert registry.baseline() == "best_of_n"
    with pytest.raises(ValueError, match="unknown strategy 'mcts'.*best_of_n"):
        registry.spec("mcts")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("dvts", needs_prm=True, uses_beam_width=True)(S.dvts)


def test_a_registered_strategy_is_everywhere(monkeypatch):
    calls = []

    def greedy(engine, prompts, prm, cfg, progress=False):
        calls.append(cfg.n)
        return []

    monkeypatch.setitem(registry._REGISTRY, "greedy", registry.StrategySpec("greedy", greedy, False, False, True))
    assert S.run_strategy("greedy", None, ["p"], None, S.SearchConfig(n=3)) == [] and calls == [3]
    S.SearchConfig(n=3, voting="majority").check("greedy", None)
    EvalConfig(strategies=("greedy",)).check()                   # independent samples: a Pass@1 source
    p, _ = _parse()
    assert "greedy" in p.format_help()


def test_eval_config_composes_search_config():
    d = EvalConfig()
    assert (d.search.max_tokens, d.search.max_step_tokens, d.search.max_steps) == (120, 40, 12)
    c = EvalConfig(beam_width=2, top_k=5, lookahead=1, search=S.SearchConfig(temperature=0.5))
    assert (c.search.beam_width, c.search.top_k, c.search.lookahead, c.search.temperature) == (2, 5, 1, 0.5)
    assert c.search_config(8).n == 8 and c.search.n == S.SearchConfig().n
    assert c.to_dict()["top_k"] == 5 and "search" not in c.to_dict()
    for bad in (dict(n=4), dict(nonsense=1)):
        with pytest.raises(TypeError, match="unexpected keyword"):
            EvalConfig(**bad)
    with pytest.raises(ValueError, match="beam_width must be a positive int"):
        EvalConfig(beam_width=0).check()


def test_evaluate_flags_from_the_fields():
    _, a = _parse()
    d = EvalConfig()
    old = {"ns": d.ns, "strategies": d.strategies, "beam_width": 4, "step_delimiter": "\n\n", "temperature": 0.8,
           "top_p": 1.0, "max_tokens": 120, "max_step_tokens": 40, "max_steps": 12, "aggregation": "last",
           "voting": "prm_vote", "budgets": d.budgets, "budget_methods": d.budget_methods, "rows_per_batch": 1024,
           "seed": 0, "threads": 1, "out": "tts_eval", "no_progress": False, "policy": None, "prm": None,
           "large_policy": d.large_policy, "problems": None, "num_problems": 128, "top_k": 0, "lookahead": 0}
    assert {k: getattr(a, k) for k in old} == old
    _, a = _parse("--out", "x", "--num-problems", "6", "--ns", "1,4", "--budgets", "8,16", "--no-progress",
                  "--top-k", "5", "--lookahead", "2", "--strategies", "best_of_n,dvts", "--voting", "majority")
    assert (a.ns, a.budgets, a.num_problems, a.no_progress, a.strategies) == ((1, 4), (8, 16), 6, True,
                                                                               ("best_of_n", "dvts"))
    cfg = EvalConfig(**{k: v for k, v in vars(a).items() if k not in ("out", "no_progress")})
    assert (cfg.search.top_k, cfg.search.lookahead, cfg.search.voting) == (5, 2, "majority")
    with pytest.raises(SystemExit):
        _parse("--aggregation", "median")


def test_one_problem_type():
    from tts_kernels.search import budget_control as bc
    from tts_kernels.search import evaluate as E
    from tts_kernels.tasks import Problem, arith
    assert E.Problem is bc.Problem is arith.Problem is Problem
    chain = arith.make_problems(1, seed=0)[0]
    exact, loose = chain.problem(), chain.problem(exact=False)
    right = f"</think>Final Answer: {chain.answer}"
    assert exact.answer == loose.answer == str(chain.answer) and exact.check(right) and loose.check(right)
    assert exact.check(right + " 7") and not loose.check(right + " 7")      # the exact checker vs extraction
    graded = Problem("x", grader=lambda c: c == "ok")
    assert graded.check("ok") and not graded.check("no")
    with pytest.raises(ValueError, match="no gold answer"):
        graded.is_answer("1")
    with pytest.raises(ValueError, match="needs an answer or a grader"):
        Problem("x")
    assert bc.as_problems([chain])[0].check(right) and bc.GradedPrompt("y", bool).grader is bool
