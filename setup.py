"""Build and install tts_kernels.

The C++ CPU kernels in csrc/ are built by CMake (CMakeLists.txt), driven from
here against the torch that is installed, so install without build isolation::

    pip install --no-build-isolation .

The C++ standard follows the installed torch (its ATen headers say which they
need: C++17 up to torch 2.13, C++20 from 2.14). Set TTS_KERNELS_NO_EXT=1 to
skip the C++ build, for regular and editable installs alike (the package then
runs its PyTorch reference on CPU). Nothing here probes the hardware.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
SUPPORT = {}  # TORCH_MIN, TRITON_MIN, release(): one definition, shared with the package and CI
exec((ROOT / "tts_kernels" / "_torch_support.py").read_text(), SUPPORT)
TORCH_MIN = SUPPORT["TORCH_MIN"]
TRITON_MIN = SUPPORT["TRITON_MIN"]
NO_EXT = os.environ.get("TTS_KERNELS_NO_EXT", "0") not in ("", "0")
HOW_TO_SKIP = ("To install without the C++ extension (the package then runs its PyTorch reference on CPU):\n"
               "    TTS_KERNELS_NO_EXT=1 pip install --no-build-isolation .")


def fail(what: str) -> None:
    """Stop the build with one message that says what is missing and how to proceed."""
    raise SystemExit(f"\n*** tts_kernels: cannot build the C++ extension: {what}\n{HOW_TO_SKIP}\n")


def torch_cxx_standard(include_dirs) -> int:
    """The C++ standard the installed torch's headers require (ATen/ATen.h #errors below it)."""
    for d in include_dirs:
        header = Path(d) / "ATen" / "ATen.h"
        if header.exists():
            m = re.search(r"__cplusplus\s*<\s*(\d{4})\d\dL", header.read_text(errors="ignore"))
            if m:
                return {"2017": 17, "2020": 20, "2023": 23}.get(m.group(1), 17)
    return 17


def find_cxx_compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        try:
            import torch
            from torch.utils import cpp_extension
        except ImportError:
            fail("torch is not installed in this environment. Install torch first "
                 f"(>= {TORCH_MIN}), then `pip install --no-build-isolation .`; an isolated build "
                 "(plain `pip install .`) cannot see your torch.")
        if SUPPORT["release"](torch.__version__) < SUPPORT["release"](TORCH_MIN):
            fail(f"torch {torch.__version__} is installed; tts_kernels needs torch >= {TORCH_MIN}. "
                 f"Upgrade torch (pip install 'torch>={TORCH_MIN}') and rebuild.")
        cxx = find_cxx_compiler()
        if cxx is None:
            fail("no C++ compiler found ($CXX, c++, g++ or clang++ on PATH). Install one "
                 "(Debian/Ubuntu: apt-get install g++) and rebuild.")
        if shutil.which("cmake") is None:
            fail("cmake not found on PATH. Install it (pip install cmake) and rebuild.")
        include_dirs = cpp_extension.include_paths()
        std = torch_cxx_standard(include_dirs)
        dest = Path(self.get_ext_fullpath(ext.name)).resolve()
        # one CMake tree per torch release and standard: a rebuild against another torch never reuses a stale cache
        build_dir = Path(self.build_temp).resolve() / f"cmake-torch{torch.__version__}-cxx{std}"
        build_dir.mkdir(parents=True, exist_ok=True)
        out_dir = build_dir / "out"
        abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
        cfg = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_CXX_COMPILER={cxx}",
            f"-DTORCH_INCLUDE_DIRS={';'.join(include_dirs)}",
            f"-DTORCH_LIBRARY_DIRS={';'.join(cpp_extension.library_paths())}",
            f"-DTORCH_CXX11_ABI={abi}",
            f"-DTTS_CXX_STANDARD={std}",
            f"-DTTS_OUTPUT_DIR={out_dir}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('TTS_KERNELS_BUILD_TYPE', 'Release')}",
        ]
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        print(f"tts_kernels: building the C++ extension against torch {torch.__version__} "
              f"(C++{std}, {cxx})", flush=True)
        try:
            subprocess.check_call(cfg)
            subprocess.check_call(["cmake", "--build", str(build_dir), "-j", jobs])
        except subprocess.CalledProcessError:
            fail(f"CMake failed against torch {torch.__version__} (C++{std}, {cxx}); its messages are above.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # copy, then rename into place: a process that has the old library mapped keeps it intact
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copy2(out_dir / "_C.so", tmp)
        os.replace(tmp, dest)
        # what it was built against: the loader refuses the library under another torch release
        (dest.parent / "_C.json").write_text(json.dumps({"torch": torch.__version__, "cxx_standard": std}) + "\n")

setup(
    name="tts_kernels",
    version="0.1.0",
    description="Fused decoding kernels for test-time scaling of reasoning LLMs",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["tts_kernels", "tts_kernels.*"]),
    # the embedded models: tiny policy, its PRM, the 4x policy, the conditioning-trained policy of the s1
    # sweep (HF format; tts_kernels/models/ is data)
    package_data={"tts_kernels": [f"models/{m}/*.{ext}" for m in ("tiny-arith", "tiny-arith-prm", "tiny-arith-large",
                                                                "tiny-arith-cond")
                                  for ext in ("json", "safetensors", "md")]},
    # TTS_KERNELS_NO_EXT=1: no extension at all, so regular and editable installs copy nothing
    ext_modules=[] if NO_EXT else [CMakeExtension("tts_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[f"torch>={TORCH_MIN}", "numpy"],
    extras_require={
        "cuda": [f"triton>={TRITON_MIN}"],
        "eval": ["matplotlib", "tqdm"],
        "test": ["pytest", "scipy", f"triton>={TRITON_MIN}", "pytest-benchmark", "transformers", "matplotlib", "tqdm"],
    },
    entry_points={"console_scripts": ["tts-kernels = tts_kernels.cli:main"],
                  "vllm.logits_processors": [
                      "tts_kernels_budget_forcing = tts_kernels.integrations.vllm:BudgetForcingLogitsProcessor"]},
    zip_safe=False,
)
