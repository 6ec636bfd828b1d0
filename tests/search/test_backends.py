"""Backend selection and bad settings (no vLLM needed; the vLLM backend itself runs in tests/integrations/vllm/check_vllm_search.py)."""
import subprocess
import sys

import pytest
import torch

from tts_kernels.decode import Engine
from tts_kernels.search import SearchConfig, load_prm, run_strategy
from tts_kernels.search.backends import BACKENDS, check_parallel, make_backend
from tts_kernels.search.evaluate import EvalConfig

try:  # (under pytest, tests/integrations/vllm/ is importable as a namespace package "vllm": look for vllm.LLM)
    import vllm
    HAS_VLLM = hasattr(vllm, "LLM")
except ImportError:
    HAS_VLLM = False


def test_engine_backend_is_the_engine_and_runs_the_strategies():
    eng = make_backend("engine", seed=3, num_blocks=2048, block_size=8)
    assert isinstance(eng, Engine) and eng.base_seed == 3
    res = run_strategy("beam_search", eng, ["49+9-3-6=?<think>"], load_prm(),
                       SearchConfig(n=4, beam_width=2, max_tokens=60))
    assert len(res[0].candidates) == 4 and eng.live == []


@pytest.mark.parametrize("name", ["sglang", "", "VLLM"])
def test_unknown_backend_names_fail_clearly(name):
    with pytest.raises(ValueError, match=r"unknown backend .*expected one of \('engine', 'vllm'\)"):
        make_backend(name)
    with pytest.raises(ValueError, match=r"backend: unknown backend"):
        EvalConfig(backend=name).check()
    with pytest.raises(ValueError, match=r"prm_backend: unknown backend"):
        EvalConfig(prm_backend=name).check()


@pytest.mark.parametrize("kw, match", [
    (dict(tensor_parallel_size=0), "tensor_parallel_size must be a positive int"),
    (dict(pipeline_parallel_size=-1), "pipeline_parallel_size must be a positive int"),
    (dict(tensor_parallel_size=1.5), "tensor_parallel_size must be a positive int"),
    (dict(tensor_parallel_size=2), r"tensor_parallel_size=2 x pipeline_parallel_size=1 needs 2 GPUs, but 0 CUDA"),
    (dict(tensor_parallel_size=2, pipeline_parallel_size=2), r"needs 4 GPUs"),
])
def test_parallel_sizes_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        check_parallel(device_count=0, **kw)
    if "needs" in match and not torch.cuda.is_available():
        # checked before vLLM is imported: the same message with or without vLLM
        with pytest.raises(ValueError, match=match):
            make_backend("vllm", **kw)


def test_parallel_sizes_pass_with_enough_gpus():
    assert check_parallel(4, 2, device_count=8) == 8
    assert check_parallel(1, 1, device_count=0) == 1


def test_parallel_sizes_apply_to_the_vllm_backend_only():
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2 applies to backend='vllm' only"):
        EvalConfig(tensor_parallel_size=2).check()
    with pytest.raises(ValueError, match=r"needs 2 GPUs"):
        EvalConfig(backend="vllm", tensor_parallel_size=2).check()


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here (the missing-vLLM message is tested without it)")
def test_vllm_backend_without_vllm_says_how_to_get_it():
    with pytest.raises(ImportError, match=r"backend='vllm' needs vLLM.*pip install vllm.*backend='engine'"):
        make_backend("vllm")
    from tts_kernels.search.backends import VLLMPRM
    with pytest.raises(ImportError, match=r"needs vLLM"):
        VLLMPRM()


def test_evaluate_cli_has_the_backend_flags():
    out = subprocess.run([sys.executable, "-m", "tts_kernels", "evaluate", "--help"], capture_output=True,
                         text=True, timeout=120).stdout
    for flag in ("--backend {engine,vllm}", "--prm-backend {engine,vllm}", "--tensor-parallel-size",
                 "--pipeline-parallel-size"):
        assert flag in out, flag
    r = subprocess.run([sys.executable, "-m", "tts_kernels", "evaluate", "--backend", "sglang"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "invalid choice: 'sglang'" in r.stderr
