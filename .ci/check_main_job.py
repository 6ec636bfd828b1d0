"""CI: the main job wrote its table, JSON and plot, with sane intervals (argument: the output prefix)."""
import json
import os
import sys

out = sys.argv[1]
res = json.load(open(out + ".json"))
assert res["runs"], "the main job's JSON has no runs"
assert os.path.getsize(out + ".md") > 100, "the table is empty"
assert os.path.getsize(out + ".png") > 1000, "the plot is missing or empty"
n = res["num_problems"]
eps = 1e-9


def check_interval(iv, what, point=None):
    """An accuracy interval: 0 <= lo <= point <= hi <= 1 (and the point is the reported accuracy)."""
    assert iv is not None and set(iv) >= {"point", "lo", "hi"}, f"{what}: no interval"
    assert -eps <= iv["lo"] <= iv["point"] + eps and iv["point"] <= iv["hi"] + eps and iv["hi"] <= 1 + eps, \
        f"{what}: not 0 <= lo <= point <= hi <= 1: {iv}"
    if point is not None:
        assert abs(iv["point"] - point) < eps, f"{what}: interval point {iv['point']} != accuracy {point}"


for r in res["runs"]:
    name = f"{r['policy']} {r['strategy']}@{r['n']}"
    check_interval(r["intervals"]["accuracy"], name, r["accuracy"])
    check_interval(r["intervals"]["pass_at_n"], name + " pass@N", r["pass_at_n"])
    for v, acc in r["accuracy_by_voting"].items():
        check_interval(r["intervals"][v], f"{name} {v}", acc)
a = res["analysis"]
m = a["methods"]
assert m["num_problems"] == n and m["accuracy_interval"] and m["difference_interval"] and m["difficulty_estimate"]
assert sum(a["bucket_sizes"].values()) == n and sum(a["oracle_bucket_sizes"].values()) == n
for run, row in a["accuracy_per_bucket"].items():
    for b, iv in row.items():
        assert (iv is None) == (a["bucket_sizes"][b] == 0), f"{run} {b}: interval for an empty bucket or none"
        if iv is not None:
            check_interval(iv, f"{run} {b}")
if n >= 2:
    assert a["compute_optimal"], "no held-out compute-optimal result"
for N, d in a["compute_optimal"].items():
    check_interval(d["interval"], f"compute-optimal N={N}", d["accuracy"])
    held = sorted(i for f in d["folds"] for i in f["held_out"])
    assert held == list(range(n)), f"compute-optimal N={N}: held-out splits do not partition the problems"
    for f in d["folds"]:
        assert not set(f["calibration"]) & set(f["held_out"]), f"compute-optimal N={N}: calibration overlaps held-out"
        assert sorted(f["calibration"] + f["held_out"]) == list(range(n)), f"N={N}: a fold misses problems"
for N, d in a["compute_optimal_in_sample_oracle"].items():
    check_interval(d["interval"], f"in-sample oracle N={N}", d["accuracy"])
h = a["headline"]
if h is not None:
    assert h["num_problems"] == n
    check_interval(h["large_single_sample"]["interval"], "large policy", h["large_single_sample"]["accuracy"])
    d = h["difference_best_small_minus_large"]
    assert -1 - eps <= d["lo"] <= d["difference"] + eps and d["difference"] <= d["hi"] + eps and d["hi"] <= 1 + eps, \
        f"headline difference: not lo <= difference <= hi: {d}"
    assert d["zero_outside_interval"] == (d["lo"] > 0 or d["hi"] < 0) and d["method"]
print(f"main job OK: {len(res['runs'])} runs on {n} problems in {out}.json (intervals sane, held-out splits "
      f"partition the problems), table {out}.md, plot {out}.png")
