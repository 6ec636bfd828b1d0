"""Build and install tts_kernels.

The C++ CPU kernels in csrc/ are built by CMake (CMakeLists.txt), driven from
here against the torch that is installed, so install without build isolation::

    pip install --no-build-isolation .

Set TTS_KERNELS_NO_EXT=1 to skip the C++ build (the package then runs its
PyTorch reference on CPU). Nothing here probes the hardware.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if os.environ.get("TTS_KERNELS_NO_EXT", "0") not in ("", "0"):
            print("TTS_KERNELS_NO_EXT set: skipping the C++ extension")
            return
        try:
            import torch
            from torch.utils import cpp_extension
        except ImportError as exc:
            raise RuntimeError("building tts_kernels needs torch installed first; "
                               "use `pip install --no-build-isolation .`") from exc
        if shutil.which("cmake") is None:
            raise RuntimeError("cmake not found; install it (pip install cmake) or set TTS_KERNELS_NO_EXT=1")
        dest = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        out_dir = build_dir / "out"
        abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
        cfg = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DTORCH_INCLUDE_DIRS={';'.join(cpp_extension.include_paths())}",
            f"-DTORCH_LIBRARY_DIRS={';'.join(cpp_extension.library_paths())}",
            f"-DTORCH_CXX11_ABI={abi}",
            f"-DTTS_OUTPUT_DIR={out_dir}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('TTS_KERNELS_BUILD_TYPE', 'Release')}",
        ]
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(cfg)
        subprocess.check_call(["cmake", "--build", str(build_dir), "-j", jobs])
        dest.parent.mkdir(parents=True, exist_ok=True)
        # copy, then rename into place: a process that has the old library mapped keeps it intact
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copy2(out_dir / "_C.so", tmp)
        os.replace(tmp, dest)


setup(
    name="tts_kernels",
    version="0.1.0",
    description="Fused decoding kernels for test-time scaling of reasoning LLMs",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["tts_kernels", "tts_kernels.*"]),
    # the embedded models: tiny policy, its PRM, the 4x policy (HF format; tts_kernels/models/ is data)
    package_data={"tts_kernels": [f"models/{m}/*.{ext}" for m in ("tiny-arith", "tiny-arith-prm", "tiny-arith-large")
                                  for ext in ("json", "safetensors", "md")]},
    ext_modules=[CMakeExtension("tts_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["torch>=2.5", "numpy"],
    extras_require={
        "cuda": ["triton>=3.0"],
        "eval": ["matplotlib", "tqdm"],
        "test": ["pytest", "scipy", "triton>=3.0", "pytest-benchmark", "transformers", "matplotlib", "tqdm"],
    },
    entry_points={"console_scripts": ["tts-kernels = tts_kernels.cli:main"],
                  "vllm.logits_processors": [
                      "tts_kernels_budget_forcing = tts_kernels.integrations.vllm:BudgetForcingLogitsProcessor"]},
    zip_safe=False,
)
