"""The specializations Triton's own binder gives a script's launches (no GPU, no compile).

A script records launches with ``benchmarks.gpu_static.aot.recording`` and prints, as its last
line, the JSON ``{kernel name: [spec ids]}``; it prints ``SKIP ...`` on a Triton whose private
binder it does not know. It runs in a subprocess without ``TRITON_INTERPRET`` (the binder needs
real JITFunctions).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def specializations(script: str) -> Dict[str, List[str]]:
    """Run ``script`` from the repository root; its kernels' spec ids (skips on an unknown Triton)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    if p.stdout.startswith("SKIP"):
        pytest.skip(p.stdout.strip())
    return json.loads(p.stdout.strip().splitlines()[-1])
