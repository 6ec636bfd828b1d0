"""Answer extraction, aggregation and voting: hand-computed cases."""
import math

import pytest

from tts_kernels.search.scoring import AGGREGATIONS, VOTINGS, aggregate, extract_answer, vote, vote_all


@pytest.mark.parametrize("text, want", [
    ("49+9=58\n\n</think>Final Answer: 49<|eos|>", "49"),
    ("Final Answer:  $49$. ", "49"),
    ("Final Answer: 049", "49"),
    ("Final Answer: +7.0", "7"),
    ("Final Answer: -3", "-3"),
    ("Final Answer: 2.5", "2.5"),
    ("Final Answer: x = 3\nsome trailing text", "x = 3"),
    ("**Final Answer:** 12", "12"),
    ("**Final Answer**: 12", "12"),
    ("**Final Answer: 12**", "12"),
    ("**Final Answer**\n\n12.\n", "12"),
    ("so \\boxed{5}.", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{\\frac{a}{b}} + {c}}", "\\sqrt{\\frac{a}{b}} + {c}"),
    ("\\boxed {8}", "8"),
    ("$\\boxed{ 10 }$", "10"),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_extract_answer_takes_the_last():
    assert extract_answer("Final Answer: 1\nWait\nFinal Answer: 2") == "2"
    assert extract_answer("\\boxed{1} then \\boxed{2}") == "2"
    # whichever of the two forms appears later
    assert extract_answer("\\boxed{1}\nFinal Answer: 2") == "2"
    assert extract_answer("Final Answer: 1\nactually \\boxed{2}") == "2"
    assert extract_answer("**Final Answer**\n\n$\\boxed{3}$") == "3"
    assert extract_answer("Final Answer: \\boxed{4}.") == "4"


def test_extract_answer_none_and_unbalanced():
    assert extract_answer("") is None
    assert extract_answer("no answer here, boxed{3}") is None
    assert extract_answer("Final Answer:") is None
    assert extract_answer("Final Answer: $ $") is None
    assert extract_answer("\\boxed 5") is None
    # a truncated box is ignored: the previous balanced one counts
    assert extract_answer("\\boxed{7} and then \\boxed{\\frac{1}{2}") == "7"
    assert extract_answer("\\boxed{\\frac{1}{2}") is None
    assert extract_answer(" 49 ") is None  # a bare number is not an answer
    with pytest.raises(TypeError, match="text"):
        extract_answer(None)


def test_extract_answer_equal_forms():
    forms = ["Final Answer: 49", "Final Answer:  49 ", "\\boxed{49}", "Final Answer: $49$.", "\\boxed{049}"]
    assert {extract_answer(f) for f in forms} == {"49"}


def test_aggregate():
    s = [0.5, 0.8, 0.25]
    assert AGGREGATIONS == ("last", "min", "avg", "prod")
    assert aggregate(s, "last") == 0.25
    assert aggregate(s, "min") == 0.25
    assert aggregate(s, "avg") == pytest.approx((0.5 + 0.8 + 0.25) / 3)
    assert aggregate(s, "prod") == pytest.approx(0.1)
    assert aggregate([0.9, 0.3, 0.6], "last") == 0.6
    assert aggregate([0.9, 0.3, 0.6], "min") == 0.3
    assert aggregate((0.7,), "prod") == 0.7
    for how in AGGREGATIONS:
        assert aggregate([], how) == 0.0


def test_aggregate_bad_how():
    with pytest.raises(ValueError, match="last.*min.*avg.*prod"):
        aggregate([0.5], "mean")
    with pytest.raises(ValueError, match="how"):
        aggregate([], "max")


def test_vote_rules():
    answers = ["3", "5", "5", None, "3", "3"]
    scores = [0.1, 0.9, 0.8, 1.0, 0.2, 0.3]
    assert VOTINGS == ("majority", "prm_max", "prm_vote")
    assert vote(answers, scores, "majority") == "3"      # 3 votes against 2
    assert vote(answers, scores, "prm_max") == "5"       # 0.9; the None candidate (1.0) cannot win
    assert vote(answers, scores, "prm_vote") == "5"      # 1.7 against 0.6
    assert vote_all(answers, scores) == {"majority": "3", "prm_max": "5", "prm_vote": "5"}


def test_vote_ties_go_to_first_appearance():
    # majority: 2 against 2 -> "b" appears first
    assert vote(["b", "a", "a", "b"], [0, 0, 0, 0], "majority") == "b"
    assert vote(["a", "b", "b", "a"], [0, 0, 0, 0], "majority") == "a"
    # prm_max: equal best scores -> lowest candidate index
    assert vote(["x", "y", "z"], [0.5, 0.9, 0.9], "prm_max") == "y"
    assert vote(["x", "z", "y"], [0.5, 0.9, 0.9], "prm_max") == "z"
    # prm_vote: equal sums (exact in binary) -> the answer seen first
    assert vote(["p", "q", "q"], [0.5, 0.25, 0.25], "prm_vote") == "p"
    assert vote(["q", "p", "q"], [0.25, 0.5, 0.25], "prm_vote") == "q"
    # a larger sum beats an earlier answer
    assert vote(["p", "q", "q"], [0.5, 0.25, 0.375], "prm_vote") == "q"


def test_vote_none_answers():
    for how in VOTINGS:
        assert vote([None, None], [0.5, 0.9], how) is None
        assert vote([], [], how) is None
        assert vote([None, "7", None], [1.0, 0.0, 1.0], how) == "7"
    assert vote_all([None], [0.3]) == {h: None for h in VOTINGS}
    # zero scores still elect an answer
    assert vote(["1", "2"], [0.0, 0.0], "prm_vote") == "1"


def test_vote_bad_input():
    with pytest.raises(ValueError, match="same length"):
        vote(["1", "2"], [0.5], "majority")
    with pytest.raises(ValueError, match="majority.*prm_max.*prm_vote"):
        vote(["1"], [0.5], "best")
    with pytest.raises(ValueError, match="NaN"):
        vote(["1", "2"], [0.5, math.nan], "prm_max")
    with pytest.raises(ValueError, match="same length"):
        vote_all(["1"], [])
