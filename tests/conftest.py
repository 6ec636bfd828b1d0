"""Shared test setup and fixtures (each folder's conftest.py adds its own ``backend`` fixture).

Triton kernels run on the CPU through Triton's interpreter when no GPU is
present; the variable must be set before triton is first imported. Helpers
shared by several folders live in the ``helpers`` package (this folder is on
``sys.path`` because this file is here); never import from a conftest. Under the
interpreter, ``helpers/interpreter.py`` removes two of its overheads (see there).
"""
import json
import os
import shutil

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n W: the cores shared out, no oversubscribed intra-op pools
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
if os.environ.get("TRITON_INTERPRET") == "1":
    from helpers import interpreter  # noqa: E402  (the interpreter's two speed-ups; kernels unchanged)
    interpreter.install()


def pytest_report_header(config):
    if os.environ.get("TRITON_INTERPRET") == "1":
        from helpers import interpreter
        return f"Triton interpreter fast path: {interpreter.STATUS}"


def _devices():
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=_devices())
def device(request):
    return torch.device(request.param)


@pytest.fixture(scope="session")
def prm_dir(tmp_path_factory):
    """The embedded policy's weights used as a tag-token PRM (any causal LM is a valid, if poor, one)."""
    from tts_kernels.decode import DEFAULT_MODEL
    d = tmp_path_factory.mktemp("prm")
    for f in os.listdir(DEFAULT_MODEL):
        if f.endswith((".json", ".safetensors")):
            shutil.copy(os.path.join(DEFAULT_MODEL, f), d / f)
    (d / "prm_config.json").write_text(json.dumps(
        {"kind": "tag_token", "step_tag": "\n\n", "good_token": "+", "bad_token": "-"}))
    return str(d)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (100x slower on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
