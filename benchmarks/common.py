"""Shared helpers of the benchmark suites.

* :func:`env_metadata` - what a number was measured on (device, CPU model,
  threads, load average, versions, git commit, date).
* :func:`save_results` / :func:`load_results` - JSON files under ``benchmarks/results/``.
* :func:`sampler_bytes`, :func:`gbps` - the bytes a sampler must move and the
  bandwidth they imply.
* :class:`Registry` - named implementations (tts_kernels backends and the
  baselines a user would otherwise pick); every skipped entry is PRINTED with
  its reason, never silently dropped.
* :data:`CONFIGS`, :func:`sweep` - the sampling configurations and the
  (B, V) sweep shared by the CPU and GPU suites.

Nothing here touches a GPU at import time.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# ----------------------------------------------------------------------------
# sweep definition
# ----------------------------------------------------------------------------
FULL_BATCHES = (1, 32, 256, 1024)
FULL_VOCABS = (32000, 128256, 151936)
ANCHOR = (64, 151936)  # always measured: the CPU target is defined here

#: name -> keyword arguments of tts_kernels.sample (and of the baselines)
CONFIGS = {
    "temp": dict(temperature=0.8),
    "topk_topp_minp": dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05),
    "topp": dict(temperature=0.8, top_p=0.95),
    "greedy": dict(temperature=0.0),
}

# output bytes per row: token id (int64) + logprob (float32)
OUT_BYTES_PER_ROW = 8 + 4


def sweep(batches, vocabs, anchor=True):
    """Sorted unique (B, V) pairs of the cross product, plus the anchor shape."""
    shapes = {(b, v) for b in batches for v in vocabs}
    if anchor:
        shapes.add(ANCHOR)
    return sorted(shapes, key=lambda s: (s[1], s[0]))


def sampler_bytes(batch: int, vocab: int, itemsize: int, budget: bool = False) -> int:
    """Bytes a fused sampler must move: logits read once plus the outputs written.

    ``B*V*itemsize`` (logits) + ``B*12`` (int64 token + float32 logprob); with a
    budget state also its ``[B, 8]`` int32 rows read and written. Per-row
    parameters (temperature, seeds, ...) are ignored (< 40 bytes a row).
    """
    n = batch * vocab * itemsize + batch * OUT_BYTES_PER_ROW
    if budget:
        n += 2 * batch * 8 * 4
    return n


def gbps(nbytes: float, seconds: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second)."""
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")


def copy_bytes(numel: int, itemsize: int) -> int:
    """Bytes moved by a device-to-device copy: read + written."""
    return 2 * numel * itemsize


# ----------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------
from tts_kernels._platform import cpu_model  # noqa: E402,F401  (re-exported: the one CPU-name reader)


def git_commit() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = run("rev-parse", "HEAD")
    dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", "tts_kernels", "csrc"))
    kernels = run("log", "-1", "--format=%H", "--", "csrc", "tts_kernels/sampling")
    return {"commit": commit or None, "kernel_sources_dirty": dirty,
            "last_kernel_commit": kernels or None}


def env_metadata(device: str | torch.device = "cpu") -> dict:
    """Everything needed to interpret a measurement later (no GPU call unless device is CUDA)."""
    device = torch.device(device)
    meta = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device_type": device.type,
        "device_name": "cpu",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "argv": sys.argv,
        # what selects the CPU kernels: the ISA cap of the C++ kernels and the cores the run may use
        "cpu_isa_cap": os.environ.get("TTS_KERNELS_CPU_ISA") or "best available",
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        meta["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:
        meta["loadavg_1_5_15"] = None
    try:
        import tts_kernels as tk
        from tts_kernels import _ext

        meta["tts_kernels"] = tk.__version__
        meta["cpp_extension"] = bool(tk.extension_available())
        meta["cpp_extension_error"] = _ext.load_error
    except Exception as exc:  # pragma: no cover - metadata must never fail a run
        meta["tts_kernels"] = f"import failed: {exc}"
    meta.update(git_commit())
    if _SNAPSHOT:
        meta["cpp_extension_library"] = dict(_SNAPSHOT)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["device_name"] = torch.cuda.get_device_name(device)
        meta["cuda"] = torch.version.cuda
        meta["sm_count"] = props.multi_processor_count
        meta["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        meta["capability"] = list(torch.cuda.get_device_capability(device))
    return meta


_SNAPSHOT: dict = {}


def snapshot_extension() -> dict:
    """Load a private copy of the built C++ extension (``tts_kernels/_C*.so``).

    Other work may rebuild the library in place while a long benchmark runs,
    which crashes a process that has it mapped (SIGSEGV / SIGILL). Loading a
    copy from a temporary directory makes the run immune; its sha256 and mtime
    go to the metadata. Must be called before anything loads the extension;
    set ``TTS_BENCH_NO_SNAPSHOT=1`` to load the library in place instead.
    """
    if _SNAPSHOT:
        return _SNAPSHOT
    import hashlib
    import shutil
    import tempfile

    from tts_kernels import _ext

    src = _ext.library_path()
    info = {"source": src, "snapshot": None}
    if src is None or os.environ.get("TTS_BENCH_NO_SNAPSHOT", "0") not in ("", "0") \
            or os.environ.get("TTS_KERNELS_DISABLE_EXT", "0") not in ("", "0"):
        _SNAPSHOT.update(info)
        return _SNAPSHOT
    info["mtime_utc"] = _dt.datetime.fromtimestamp(os.path.getmtime(src), _dt.timezone.utc).isoformat(
        timespec="seconds")
    if _ext._loaded:  # already loaded in place: too late to snapshot
        info["note"] = "extension was already loaded in place"
    else:
        import atexit

        d = tempfile.mkdtemp(prefix="tts_bench_ext_")
        atexit.register(shutil.rmtree, d, True)  # unlinking a mapped library is fine on POSIX
        dst = os.path.join(d, os.path.basename(src))
        shutil.copy2(src, dst)
        try:
            torch.ops.load_library(dst)
            _ext._loaded, _ext.load_error = True, None
            info["snapshot"] = dst
        except OSError as exc:
            info["note"] = f"snapshot failed to load ({exc}); using the library in place"
        with open(dst, "rb") as f:
            info["sha256"] = hashlib.sha256(f.read()).hexdigest()
    _SNAPSHOT.update(info)
    return _SNAPSHOT


def _version(mod: str) -> Optional[str]:
    try:
        return __import__(mod).__version__
    except Exception:
        return None


# ----------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------
def save_results(name: str, payload: dict, directory: Path | str | None = None) -> Path:
    """Write ``payload`` as ``<directory>/<name>.json`` (default ``benchmarks/results``)."""
    d = Path(directory) if directory is not None else RESULTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / (name if name.endswith(".json") else f"{name}.json")
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_results(path: Path | str) -> dict:
    with open(path) as f:
        return json.load(f)


def _json_default(o):
    if isinstance(o, (torch.dtype, torch.device)):
        return str(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------
# registry of implementations
# ----------------------------------------------------------------------------
@dataclass
class Impl:
    """One implementation: ``make(cfg) -> fn(logits) -> (token_ids, logprobs)``."""

    name: str
    kind: str  # "tts_kernels" or "baseline"
    make: Callable[[dict], Callable]
    check: Callable[[torch.device], Optional[str]] = field(default=lambda device: None)
    """returns None when usable on ``device``, else the reason it is skipped."""
    description: str = ""


class Registry:
    """Named implementations; :meth:`available` prints every entry it skips."""

    def __init__(self):
        self._impls: dict[str, Impl] = {}
        self.skipped: dict[str, str] = {}

    def register(self, impl: Impl) -> Impl:
        if impl.name in self._impls:
            raise ValueError(f"duplicate implementation {impl.name!r}")
        self._impls[impl.name] = impl
        return impl

    def names(self):
        return list(self._impls)

    def __getitem__(self, name) -> Impl:
        return self._impls[name]

    def available(self, device, only=None, quiet=False) -> list[Impl]:
        device = torch.device(device)
        out = []
        for impl in self._impls.values():
            if only is not None and impl.name not in only:
                continue
            try:
                reason = impl.check(device)
            except Exception as exc:  # a broken check is a skip with a reason, not a crash
                reason = f"availability check raised {type(exc).__name__}: {exc}"
            if reason is None:
                out.append(impl)
            else:
                if not quiet and self.skipped.get(impl.name) != reason:
                    print(f"[bench] SKIP {impl.kind} {impl.name!r} on {device.type}: {reason}",
                          file=sys.stderr, flush=True)
                self.skipped[impl.name] = reason
        return out


def fmt_time(seconds: float) -> str:
    if seconds != seconds:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"
