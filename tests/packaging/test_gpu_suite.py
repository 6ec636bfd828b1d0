"""The one GPU command (``benchmarks/gpu_suite.py``) on a CPU: its plumbing with ``--dry-run``, run as
a GPU session would run it (from the checkout, the package not installed, a fresh interpreter), so a
lent GPU's minutes are not lost to a crash after the measurements."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


#: runs benchmarks/gpu_suite.py as ``python benchmarks/gpu_suite.py ...`` would, in an interpreter where the
#: package is importable only from the checkout's own root (an editable install's finder and path entry are
#: removed first), so that a script which does not put the root on its path fails as it did on a GPU session
_AS_A_CHECKOUT = r"""
import runpy, sys
root, args = sys.argv[1], sys.argv[2:]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path = [p for p in sys.path if p.rstrip("/") != root and "__editable__" not in p]
for name in [m for m in sys.modules if m == "tts_kernels" or m.startswith("tts_kernels.")]:
    del sys.modules[name]
try:
    import tts_kernels
except ImportError:
    pass
else:
    raise SystemExit("tts_kernels still importable without the checkout's root: " + str(tts_kernels.__file__))
sys.argv = [root + "/benchmarks/gpu_suite.py", *args]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_dry_run_writes_the_report_with_the_cost_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    out = tmp_path / "out"
    out.mkdir()
    (out / "sampling_gpu.json").write_text("{}")   # a stale file of an earlier run: not taken as a result
    stages = ["sampler", "tree_attention", "decode"]   # cuda_tests: tests/gpu, which this suite runs anyway
    p = subprocess.run([sys.executable, "-c", _AS_A_CHECKOUT, str(ROOT), "--dry-run", "--out", str(out),
                        "--stages", *stages], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert [s["name"] for s in report["stages"]] == stages and all(s["rc"] == 0 for s in report["stages"])
    assert set(report["results"]) == set(stages)
    assert report["results"]["sampler"].get("records"), "the sampler stage's own JSON, not the stale file"
    cm = report["cost_model"]
    assert "error" not in cm, cm.get("error")
    assert cm["static_results"].endswith(".json") and isinstance(cm["tree_attention"], list)
    assert report["environment"]["dry_run"] is True


def test_static_results_follow_the_running_triton():
    from benchmarks import gpu_suite

    res = ROOT / "benchmarks" / "results"
    assert gpu_suite.static_results_for("3.8.0") == res / "gpu_static_triton3.8.json"
    assert gpu_suite.static_results_for("3.9.0") == res / "gpu_static.json"      # no own file: the default
    assert gpu_suite.static_results_for(None) == res / "gpu_static.json"


def test_cost_model_failure_is_recorded_not_raised(monkeypatch):
    from benchmarks import gpu_suite
    from benchmarks.gpu_static import cost_model

    def boom(*a, **k):
        raise RuntimeError("model broke")

    monkeypatch.setattr(cost_model, "predict_for_results", boom)
    got = gpu_suite.cost_model_predictions({"sampler": {"records": []}}, "3.8.0")
    assert "model broke" in got["error"]
