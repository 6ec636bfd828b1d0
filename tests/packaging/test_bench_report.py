"""The sampler benchmarks' report (``benchmarks/report.py``) and registry (``benchmarks/baselines.py``): the
tokens-only kernels (``return_logprobs=False``) are timed against the same kernel with logprobs, never against the
PyTorch baselines, which compute logprobs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
from baselines import TOKENS_ONLY, default_registry  # noqa: E402


def _rec(impl, t, config="temp", B=64, V=151936):
    return dict(suite="sweep", impl=impl, config=config, B=B, V=V, dtype="float32", median_s=t, min_s=t,
                bytes=B * V * 4 + 12 * B)


def test_tokens_only_against_the_same_kernel():
    records = [_rec("torch.sort", 30e-3), _rec("tts_kernels.cpp", 3e-3), _rec("tts_kernels.cpp-tokens", 1e-3),
               _rec("tts_kernels.triton-tokens", 1e-4, B=1)]   # no Triton with logprobs at B=1: no row
    rows = report.tokens_only(records, "min")
    assert [(r["impl"], r["B"]) for r in rows] == [("tts_kernels.cpp", 64)]
    assert rows[0]["speedup"] == pytest.approx(3.0) and rows[0]["tokens_s"] == 1e-3
    # the speedups against the baselines: the kernels with logprobs only
    assert [(r["impl"], r["vs"]["torch.sort"]) for r in report.speedups(records, "min")] == [
        ("tts_kernels.cpp", pytest.approx(10.0))]
    md = report.markdown({"meta": {}, "settings": {"stat": "min"}, "records": records})
    main_table = md.split("Without logprobs")[0]
    assert "tokens" not in main_table and "| cpp | temp | 64 | 151936 | float32 |" in md and "| 3.0x |" in md


def test_registry_tokens_only_entries_skip_logprobs():
    reg = default_registry()
    assert set(TOKENS_ONLY) <= set(reg.names()) and set(TOKENS_ONLY.values()) <= set(reg.names())
    avail = {i.name: i for i in reg.available(torch.device("cpu"))}
    if "tts_kernels.cpp-tokens" not in avail:
        pytest.skip("the C++ kernel is not built")
    logits = torch.randn(3, 500)
    cfg = dict(temperature=0.8, top_p=0.9)
    tokens = avail["tts_kernels.cpp-tokens"].make(cfg)(logits)
    full = avail["tts_kernels.cpp"].make(cfg)(logits)
    assert tokens.logprobs is None and full.logprobs.shape == (3,)
    assert torch.equal(tokens.token_ids, full.token_ids)


def test_variant_suites_time_each_mode_with_its_kernel_swapped(monkeypatch):
    """``bench_sampling_gpu.run_pipeline``: each mode is timed with ``_pass1_stages`` swapped for that mode's depth
    (what the sampler sees while the timer runs), restored after it, also after a failing mode; the report pairs the
    two modes of a case."""
    import bench_sampling_gpu as bsg
    from tts_kernels.sampling import triton_kernel as tkm

    default = tkm._pass1_stages
    seen = []

    def timer(fn):
        seen.append(tkm._pass1_stages(None))
        if len(seen) == 3:
            raise RuntimeError("a failing case")
        return 2e-3 if seen[-1] == 0 else 1e-3, 1e-3, 3e-3

    monkeypatch.setattr(bsg, "make_logits", lambda B, V, dtype, device: torch.zeros(B, V, dtype=dtype))
    monkeypatch.setattr("baselines.make_tts", lambda backend: lambda cfg: lambda logits: None)
    log = []
    recs = bsg.run_pipeline([(2, 300), (3, 300)], ["float32"], torch.device("cpu"), timer, None, log=log.append)
    assert seen == [0, 3, 0, 3] and tkm._pass1_stages is default
    assert [(r["B"], r["mode"], r["stages"]) for r in recs] == [(2, "stages=0", 0), (2, "stages=3", 3),
                                                                 (3, "stages=3", 3)]
    assert any("ERROR pipeline stages=0" in line for line in log)
    rows = report.variants(recs)
    assert [(r["suite"], r["B"], r["modes"]) for r in rows] == [("pipeline", 2, ["stages=0", "stages=3"])]
    assert rows[0]["speedup"] == pytest.approx(2.0)
    md = report.markdown({"meta": {}, "settings": {"stat": "median"}, "records": recs})
    assert "| pipeline | temp | 2 | 300 | float32 | stages=0 / stages=3 |" in md
