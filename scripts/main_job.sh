#!/usr/bin/env bash
# The main job in one command, from a fresh clone:
#
#     bash scripts/main_job.sh [evaluate options...]
#
# Makes a virtual environment (.venv, or $TTS_VENV) when it has no working install yet, installs
# torch ($TORCH_SPEC, default the release CI pins), the package with its C++ kernels and the
# plotting extras, then runs `python -m tts_kernels evaluate` on the embedded default (or on what
# the options say, e.g. --policy DIR --prm DIR --problems FILE) and prints where the table, the
# JSON and the PNG are. Outputs go to $TTS_OUT (default results/tts_eval.{md,json,png}).
# Set TTS_KERNELS_NO_EXT=1 to install without the C++ kernels (PyTorch reference, slower).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${TTS_VENV:-.venv}
OUT=${TTS_OUT:-results/tts_eval}
PIN=$($PY -c "exec(open('tts_kernels/_torch_support.py').read()); print(TORCH_PINNED)")
TORCH_SPEC=${TORCH_SPEC:-torch==$PIN}
PIP=(python -m pip install -q --disable-pip-version-check)

ready() {  # the venv already has the package (from this tree) and the plot's dependency
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import os, matplotlib, tqdm, tts_kernels
assert os.path.samefile(os.path.dirname(tts_kernels.__file__), "tts_kernels")
EOF
}

if ready; then
    echo "== using the environment in $VENV"
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
else
    echo "== setting up $VENV ($($PY --version)): $TORCH_SPEC, the package with its C++ kernels, matplotlib"
    $PY -m venv "$VENV"
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    "${PIP[@]}" "$TORCH_SPEC"
    "${PIP[@]}" "setuptools>=64" wheel
    command -v cmake >/dev/null || "${PIP[@]}" cmake
    "${PIP[@]}" --no-build-isolation -e ".[eval]"
fi
python -c "import torch, tts_kernels as tk; print('torch', torch.__version__, '| C++ kernels', tk.extension_available())"

echo "== the main job: python -m tts_kernels evaluate --out $OUT $*"
python -m tts_kernels evaluate --out "$OUT" "$@"
