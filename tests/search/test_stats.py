"""The main job's intervals (tts_kernels.search.stats) on hand-computed cases."""
import pytest

from tts_kernels.search import stats as S

Z2 = S.Z95 ** 2      # 3.8414588...


def test_wilson_known_values():
    # 5/10: centre 0.5, half-width z*sqrt(0.025 + z^2/400)/(1 + z^2/10) = 0.263407
    assert S.wilson(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    # 1/10: the textbook (0.0179, 0.4042)
    assert S.wilson(1, 10) == pytest.approx((0.017876, 0.404150), abs=1e-6)
    # 0/n: [0, z^2/(n + z^2)]; n/n its mirror image
    assert S.wilson(0, 10) == (0.0, pytest.approx(Z2 / (10 + Z2)))
    assert S.wilson(10, 10) == (pytest.approx(10 / (10 + Z2)), 1.0)
    assert S.wilson(0, 10)[1] == pytest.approx(0.277533, abs=1e-6)
    # one problem: wide, never degenerate
    assert S.wilson(1, 1) == (pytest.approx(1 / (1 + Z2)), 1.0)


def test_wilson_contains_point_and_narrows_with_n():
    for n in (1, 2, 7, 64):
        for k in range(n + 1):
            lo, hi = S.wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0 and hi > lo
    w64 = S.wilson(32, 64)
    w128 = S.wilson(64, 128)
    assert w128[1] - w128[0] < w64[1] - w64[0]
    for k, n in [(-1, 3), (4, 3), (0, 0)]:
        with pytest.raises(ValueError):
            S.wilson(k, n)


def test_accuracy_interval():
    iv = S.accuracy_interval([True, False, True, True, False, False, False, False, False, True])
    assert iv["point"] == 0.4 and (iv["lo"], iv["hi"]) == S.wilson(4, 10)
    assert S.accuracy_interval([]) is None
    assert S.accuracy_interval([False] * 6) == {"point": 0.0, "lo": 0.0, "hi": pytest.approx(Z2 / (6 + Z2))}


def test_bootstrap_deterministic_and_covers_point():
    vals = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1]
    a = S.bootstrap_mean(vals, seed=3, resamples=2000)
    assert a == S.bootstrap_mean(vals, seed=3, resamples=2000)
    assert a != S.bootstrap_mean(vals, seed=4, resamples=2000)
    mean = sum(vals) / len(vals)
    assert a[0] < mean < a[1]
    # resampled means of 16 zero/one values are multiples of 1/16
    assert all(abs(x * 16 - round(x * 16)) < 1e-9 for x in a)
    # roughly the normal-theory width, 2 * 1.96 * sqrt(p(1-p)/n) = 0.47 at p = 0.5625, n = 16
    assert 0.35 < a[1] - a[0] < 0.6
    # constant values: the interval collapses onto them
    assert S.bootstrap_mean([1, 1, 1]) == (1.0, 1.0) and S.bootstrap_mean([0.0]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        S.bootstrap_mean([])


def test_paired_difference():
    a = [True] * 8 + [False] * 2
    b = [True] * 3 + [False] * 7
    d = S.paired_difference(a, b, resamples=4000)
    assert d["difference"] == pytest.approx(0.5)
    assert d["lo"] <= 0.5 <= d["hi"] and d["zero_outside_interval"] == (d["lo"] > 0)
    assert d["lo"] > 0      # 5 wins, 0 losses, 5 ties: only an all-ties resample (1 in 1024) gives 0
    assert d == S.paired_difference(a, b, resamples=4000)
    # identical runs: the difference is exactly 0, and so is every resample
    same = S.paired_difference(a, a)
    assert (same["difference"], same["lo"], same["hi"], same["zero_outside_interval"]) == (0.0, 0.0, 0.0, False)
    assert same["method"] == S.difference_method() and "paired bootstrap" in same["method"]
    # a swap of the arguments mirrors the interval
    neg = S.paired_difference(b, a, resamples=4000)
    assert neg["difference"] == -0.5 and neg["hi"] < 0 and neg["zero_outside_interval"]
    with pytest.raises(ValueError, match="same problems"):
        S.paired_difference([True], [True, False])
