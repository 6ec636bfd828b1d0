"""The compute-optimal choice: difficulty without gold answers, calibration / held-out splits, a toy case."""
import pytest

from tts_kernels.search import evaluate as E
from tts_kernels.search import stats as S

NAMES = ["easy", "medium", "hard"]


def test_agreement_reads_no_gold():
    assert E.agreement(["3", "3", None, "4"]) == 0.5          # most common answer "3": 2 of 4
    assert E.agreement(["7"] * 5) == 1.0
    assert E.agreement([None, None]) == 0.0 and E.agreement(["1", "2", "3", "4", "5"]) == 0.2
    assert [E.bucket_of(x, E.AGREEMENT_BUCKETS) for x in (1.0, 0.5, 0.49, 0.2, 0.19, 0.0)] == \
        ["easy", "easy", "medium", "medium", "hard", "hard"]
    assert E.edges_text(E.AGREEMENT_BUCKETS) == "easy >= 50%, medium 20-50%, hard < 20%"
    assert E.edges_text(E.BUCKETS) == "easy >= 50%, medium 10-50%, hard < 10%"


@pytest.mark.parametrize("n,folds", [(2, 2), (6, 2), (7, 2), (64, 2), (10, 3), (128, 2)])
def test_splits_partition_and_never_overlap(n, folds):
    sp = S.splits(n, folds)
    assert len(sp) == folds
    held = [i for _, h in sp for i in h]
    assert sorted(held) == list(range(n))                      # each problem held out exactly once
    for calib, h in sp:
        assert not set(calib) & set(h)                         # never overlap
        assert sorted(calib + h) == list(range(n))             # calibration: every other problem
        assert len(h) in (n // folds, -(-n // folds))          # balanced
        assert calib == sorted(calib) and h == sorted(h)
    assert S.splits(n, folds) == sp                            # deterministic under the seed
    if n >= 10:
        assert S.splits(n, folds, seed=1) != sp
    for bad in [(1, 2), (5, 1), (0, 2)]:
        with pytest.raises(ValueError):
            S.splits(*bad)


# toy case, worked by hand: problems 0-2 easy, 3-5 hard; A is cheaper than B
CORRECT = {"A": [1, 1, 0, 0, 1, 0], "B": [0, 1, 1, 1, 0, 1]}
COST = {"A": 1.0, "B": 2.0}
BUCKETS = ["easy"] * 3 + ["hard"] * 3
FOLDS = [([0, 1, 3], [2, 4, 5]), ([2, 4, 5], [0, 1, 3])]


def test_toy_case_by_hand():
    res = E.cross_fitted_choice(CORRECT, COST, BUCKETS, FOLDS, NAMES)
    f1, f2 = res["folds"]
    # fold 1, calibration {0, 1, 3}: easy {0, 1}: A 2, B 1 -> A; hard {3}: A 0, B 1 -> B; medium empty -> the
    # best over the calibration (A 2, B 2: tie -> cheaper A). Held out: 2 (A: no), 4 (B: no), 5 (B: yes)
    assert f1["strategy_per_bucket"] == {"easy": "A", "medium": "A", "hard": "B"}
    assert f1["held_out_accuracy"] == pytest.approx(1 / 3)
    # fold 2, calibration {2, 4, 5}: easy {2}: B; hard {4, 5}: A 1, B 1 -> tie -> cheaper A; medium -> best
    # overall (A 1, B 2 -> B). Held out: 0 (B: no), 1 (B: yes), 3 (A: no)
    assert f2["strategy_per_bucket"] == {"easy": "B", "medium": "B", "hard": "A"}
    assert f2["held_out_accuracy"] == pytest.approx(1 / 3)
    assert res["correct"] == [False, True, False, False, False, True]
    assert res["accuracy"] == pytest.approx(2 / 6)
    assert res["interval"] == {"point": pytest.approx(2 / 6), "lo": S.wilson(2, 6)[0], "hi": S.wilson(2, 6)[1]}
    # the same rule in-sample (chosen and scored on all six): easy tie -> A (2), hard B (2): 4/6, optimistic
    every = range(6)
    choice = E.choose_per_bucket(CORRECT, COST, BUCKETS, every, NAMES)
    assert choice == {"easy": "A", "medium": "B", "hard": "B"}
    assert sum(E.apply_choice(choice, CORRECT, BUCKETS, every)) == 4


def test_choice_on_calibration_is_applied_unchanged():
    res = E.cross_fitted_choice(CORRECT, COST, BUCKETS, FOLDS, NAMES)
    for (calib, held), fold in zip(FOLDS, res["folds"]):
        choice = E.choose_per_bucket(CORRECT, COST, BUCKETS, calib, NAMES)
        assert fold["strategy_per_bucket"] == choice
        assert [res["correct"][i] for i in held] == E.apply_choice(choice, CORRECT, BUCKETS, held)
        # the held-out outcomes never reach the choice: flipping them all changes nothing chosen
        flipped = {s: [1 - x if i in held else x for i, x in enumerate(v)] for s, v in CORRECT.items()}
        assert E.choose_per_bucket(flipped, COST, BUCKETS, calib, NAMES) == choice


def test_bad_splits_are_refused():
    with pytest.raises(ValueError, match="overlaps"):
        E.cross_fitted_choice(CORRECT, COST, BUCKETS, [([0, 1, 2], [2, 3, 4, 5]), ([3, 4, 5], [0, 1])], NAMES)
    with pytest.raises(ValueError, match="cover"):
        E.cross_fitted_choice(CORRECT, COST, BUCKETS, [([0, 1, 2], [3, 4]), ([3, 4, 5], [0, 1, 2])], NAMES)
    with pytest.raises(ValueError, match="twice"):
        E.cross_fitted_choice(CORRECT, COST, BUCKETS, [([0, 1, 2], [3, 4, 5]), ([0, 1], [3, 4, 5])], NAMES)
