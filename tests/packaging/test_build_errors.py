"""setup.py's build of the C++ extension: what is missing gets one clear message, never a wall of errors.

Each case runs ``setup.py build_ext`` in a subprocess with something taken away (a C++
compiler, cmake, a torch new enough) and checks the message names it and the way out
(``TTS_KERNELS_NO_EXT=1``) before anything is built. The successful builds against the
newest and the oldest supported torch are the CI compatibility stage (.ci/run-compat).
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _support():
    ns = {}
    exec(open(os.path.join(ROOT, "tts_kernels", "_torch_support.py")).read(), ns)
    return ns


def _bin_dir(tmp_path, tools):
    """A PATH holding only the named tools (setup.py itself runs as sys.executable)."""
    d = tmp_path / "bin"
    d.mkdir()
    for t in tools:
        found = shutil.which(t)
        if found is None:
            pytest.skip(f"{t} is not on this machine")
        (d / t).symlink_to(found)
    return str(d)


def _build(tmp_path, path, extra_env=None, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "TTS_KERNELS_NO_EXT")}
    env["PATH"] = path
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env.update(extra_env or {})
    cmd = [sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "t"),
           "--build-lib", str(tmp_path / "l")]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _built_libraries(tmp_path):
    return [f for _, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".so")]


def _assert_clear_failure(proc, tmp_path, *needles):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "tts_kernels: cannot build the C++ extension" in out, out[-2000:]
    assert "TTS_KERNELS_NO_EXT=1" in out, out[-2000:]
    for n in needles:
        assert n in out, (n, out[-2000:])
    assert _built_libraries(tmp_path) == []


def test_no_cxx_compiler(tmp_path):
    proc = _build(tmp_path, _bin_dir(tmp_path, []))
    _assert_clear_failure(proc, tmp_path, "no C++ compiler found")


def test_no_cmake(tmp_path):
    proc = _build(tmp_path, _bin_dir(tmp_path, ["c++"]))
    _assert_clear_failure(proc, tmp_path, "cmake not found")


def test_torch_below_the_floor(tmp_path):
    fake = tmp_path / "fake"  # a torch that reports an old release; nothing else is reached
    (fake / "torch" / "utils").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text('__version__ = "2.4.1"\n')
    (fake / "torch" / "utils" / "__init__.py").write_text("")
    (fake / "torch" / "utils" / "cpp_extension.py").write_text(textwrap.dedent("""
        def include_paths():
            raise AssertionError("the build went on past the torch version check")
        library_paths = include_paths
    """))
    proc = _build(tmp_path, os.environ["PATH"], pythonpath=str(fake))
    _assert_clear_failure(proc, tmp_path, "torch 2.4.1 is installed", f"needs torch >= {_support()['TORCH_MIN']}")


def test_no_ext_builds_nothing(tmp_path):
    proc = _build(tmp_path, os.environ["PATH"], extra_env={"TTS_KERNELS_NO_EXT": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert _built_libraries(tmp_path) == []


@pytest.mark.parametrize("version,expected", [("2.14.1+cu130", (2, 14, 1)), ("2.13.0+cpu", (2, 13, 0)),
                                              ("2.9.0a0+git1234", (2, 9, 0)), ("2.10", (2, 10, 0))])
def test_release_parsing(version, expected):
    assert _support()["release"](version) == expected


def test_library_built_for_another_torch_is_not_loaded(tmp_path, monkeypatch):
    """A stamp from another torch release: the loader refuses the library and says to rebuild."""
    import json

    from tts_kernels import _ext

    lib = tmp_path / "_C.so"
    lib.write_bytes(b"not a library")
    (tmp_path / "_C.json").write_text(json.dumps({"torch": "2.4.0", "cxx_standard": 17}))
    msg = _ext.built_for_other_torch(str(lib))
    assert msg and "2.4.0" in msg and "rebuild" in msg
    import torch
    (tmp_path / "_C.json").write_text(json.dumps({"torch": torch.__version__, "cxx_standard": 17}))
    assert _ext.built_for_other_torch(str(lib)) is None
