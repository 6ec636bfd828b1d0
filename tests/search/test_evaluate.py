"""The main job's pipeline on a few embedded problems: runs, buckets, compute-optimal choice, outputs."""
import json

import pytest

from tts_kernels.decode import DEFAULT_MODEL
from tts_kernels.search import evaluate as E
from tts_kernels.search import stats as S
from tts_kernels.search.report import plot, tables


@pytest.fixture(scope="module")
def result(prm_dir):
    cfg = E.EvalConfig(prm=prm_dir, large_policy=DEFAULT_MODEL, num_problems=6, ns=(1, 4), beam_width=2,
                       budgets=(16, 32), budget_methods=("budget_forcing",), max_tokens=90)
    return E.evaluate(cfg, progress=False, log=lambda *a: None)


def test_runs_are_consistent(result):
    runs = {(r["policy"], r["strategy"], r["n"]): r for r in result["runs"]}
    assert set(runs) == {("policy", s, n) for s in ("best_of_n", "beam_search", "dvts") for n in (1, 4)
                         if s == "best_of_n" or n == 4} | {("large", "best_of_n", 1)}
    for r in result["runs"]:
        assert r["accuracy"] == pytest.approx(sum(r["correct"]) / 6)
        assert r["pass_at_n"] >= max(r["accuracy_by_voting"].values()) - 1e-12
        assert r["policy_tokens"] > 0 and r["flops"] > 0 and r["kv_bytes_read"] <= r["kv_bytes_per_sequence"]
        iv = r["intervals"]["accuracy"]
        assert iv["point"] == r["accuracy"] and (iv["lo"], iv["hi"]) == S.wilson(sum(r["correct"]), 6)
        assert all(0 <= r["intervals"][k]["lo"] <= r["intervals"][k]["point"] <= r["intervals"][k]["hi"] <= 1
                   for k in ("pass_at_n", "majority", "prm_max", "prm_vote"))
        assert all(0 < a <= 1 for a in r["agreement"])         # every problem: some answer, from N samples
    one = runs[("policy", "best_of_n", 1)]
    assert one["prm_tokens"] == 0                       # nothing to rank with one sample
    assert one["accuracy"] == pytest.approx(sum(one["sample_accuracy"]) / 6)
    # forks share the prompt: reading KV once per shared block beats per-sequence reads
    beam = runs[("policy", "beam_search", 4)]
    assert beam["prm_tokens"] > 0 and beam["kv_bytes_read"] < beam["kv_bytes_per_sequence"]
    # the large "policy" here is the same checkpoint: sampled once with the same seeds it matches exactly
    assert runs[("large", "best_of_n", 1)]["correct"] == one["correct"]


def test_buckets_and_compute_optimal(result):
    a = result["analysis"]
    assert sum(a["bucket_sizes"].values()) == 6 and sum(a["oracle_bucket_sizes"].values()) == 6
    assert a["pass1_source"] == "best_of_n@4" and a["methods"]["num_problems"] == 6
    ref = next(r for r in result["runs"] if (r["policy"], r["strategy"], r["n"]) == ("policy", "best_of_n", 4))
    est = [E.bucket_of(x, E.AGREEMENT_BUCKETS) for x in ref["agreement"]]
    assert a["bucket_sizes"] == {b: est.count(b) for b in ("easy", "medium", "hard")}
    assert set(a["compute_optimal"]) == set(a["compute_optimal_in_sample_oracle"]) == {"1", "4"}
    for n, d in a["compute_optimal"].items():
        at_n = {r["strategy"]: r for r in result["runs"] if r["policy"] == "policy" and r["n"] == int(n)}
        # held out: each problem scored once, by the choice of the fold that did not see it
        assert sorted(i for f in d["folds"] for i in f["held_out"]) == list(range(6))
        for f in d["folds"]:
            assert not set(f["calibration"]) & set(f["held_out"])
            assert set(f["strategy_per_bucket"].values()) <= set(at_n)
            for i in f["held_out"]:
                assert d["correct"][i] == at_n[f["strategy_per_bucket"][est[i]]]["correct"][i]
        assert d["accuracy"] == pytest.approx(sum(d["correct"]) / 6)
        # in-sample the rule can only do as well as the best single strategy or better
        ins = a["compute_optimal_in_sample_oracle"][n]
        assert ins["accuracy"] >= max(r["accuracy"] for r in at_n.values()) - 1e-12
    h = a["headline"]
    beats = [r for r in result["runs"] if r["policy"] == "policy" and r["accuracy"] > h["large_single_sample"]["accuracy"]]
    assert h["small_beats_large"] == bool(beats)
    d = h["difference_best_small_minus_large"]
    assert d["difference"] == pytest.approx(h["best_small"]["accuracy"] - h["large_single_sample"]["accuracy"])
    assert d["lo"] <= d["difference"] <= d["hi"] and h["num_problems"] == 6
    bc = result["budget_control"]["methods"]["budget_forcing"]
    assert all(row["control_pct"] == 100.0 for row in bc["budgets"])
    # the s1 sweep runs on its own policy, the conditioning-trained one, and says so
    cfg = result["budget_control"]["config"]
    assert cfg["policy"] == "embedded tiny-arith-cond" and cfg["templates"] == "embedded-conditioned"
    assert bc["control_pct"] == 100.0 and bc["control_lo_pct"] < 100.0 == bc["control_hi_pct"]


def test_outputs(result, tmp_path):
    text = tables(result)
    assert "compute-optimal" in text and "budget_forcing" in text and "headline" in text
    assert "in-sample oracle" in text and "held-out" in text and "Wilson" in text
    assert "budget control (s1) on policy embedded tiny-arith-cond" in text
    d = result["budget_control"]["methods"]["budget_forcing"]
    assert f"Control 100.0 [{d['control_lo_pct']:.0f},100]%" in text                # Control's interval
    big = result["analysis"]["headline"]["large_single_sample"]["interval"]
    assert f"[{100 * big['lo']:4.1f},{100 * big['hi']:5.1f}]" in text     # the large policy's interval is printed
    json.dumps(result)                                   # JSON-serialisable
    pytest.importorskip("matplotlib")
    assert plot(result, str(tmp_path / "p.png")) and (tmp_path / "p.png").stat().st_size > 1000


def test_bucket_edges():
    assert [E.bucket_of(x) for x in (1.0, 0.5, 0.49, 0.1, 0.09, 0.0)] == ["easy", "easy", "medium", "medium",
                                                                          "hard", "hard"]


def test_jsonl_problems_and_bad_configs(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "1+2=?<think>", "answer": 3}\n\n{"problem": "5-1=?<think>", "answer": "4"}\n')
    probs = E.load_problems(E.EvalConfig(problems=str(f), num_problems=0))
    assert [(p.prompt, p.answer) for p in probs] == [("1+2=?<think>", "3"), ("5-1=?<think>", "4")]
    assert probs[0].check("1+2=3\n\n</think>Final Answer: 3") and not probs[1].check("Final Answer: 5")
    f.write_text('{"question": "x"}\n')
    with pytest.raises(ValueError, match="needs a 'prompt'"):
        E.load_problems(E.EvalConfig(problems=str(f)))
    for gold in ("", "$", "1\n2"):
        with pytest.raises(ValueError, match="empty or not one line"):
            E.Problem("x", gold)
    p = E.Problem("x", " 049 ")
    assert p.answer == "49" and p.check("Final Answer: 49") and not p.check("no answer at all")
    assert not p.is_answer(None)
    for kw, match in [(dict(strategies=("mcts",)), "unknown strategy"), (dict(ns=(0,)), "ns must be"),
                      (dict(strategies=("beam_search",)), "must include best_of_n"),
                      (dict(num_problems=0), "num_problems must be >= 1"),
                      (dict(aggregation="median"), "unknown aggregation"), (dict(voting="x"), "unknown voting")]:
        with pytest.raises(ValueError, match=match):
            E.evaluate(E.EvalConfig(**kw), progress=False)
