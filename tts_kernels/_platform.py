"""The host's and the GPU's description: the CPU model for results files (one reader of /proc/cpuinfo for
the package and its benchmarks) and the SM count the Triton wrappers size their grids by."""
from __future__ import annotations

import platform

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def num_sms(device) -> int:
    """Streaming multiprocessors of the CUDA ``device`` (torch caches the device properties: no sync)."""
    return torch.cuda.get_device_properties(device).multi_processor_count
