"""CI: the main job wrote its table, JSON and plot (argument: the output prefix)."""
import json
import os
import sys

out = sys.argv[1]
res = json.load(open(out + ".json"))
assert res["runs"], "the main job's JSON has no runs"
assert os.path.getsize(out + ".md") > 100, "the table is empty"
assert os.path.getsize(out + ".png") > 1000, "the plot is missing or empty"
print(f"main job OK: {len(res['runs'])} runs in {out}.json, table {out}.md, plot {out}.png")
