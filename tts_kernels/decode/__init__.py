"""Decode engine: a Llama / Qwen2 runner over Hugging Face checkpoints, a paged-KV engine, the default model.

>>> from tts_kernels.decode import Engine, load
>>> eng = Engine(*load())                        # the embedded tiny reasoning model
>>> sid = eng.add("49+9-3-6=?<think>", temperature=0.0)
>>> eng.generate([sid]); print(eng.text(sid))
"""
from __future__ import annotations

import os

from .checkpoint import CheckpointError, ModelConfig
from .engine import Engine
from .families import FAMILIES, FAMILY_BUDGET_STRINGS, BudgetStrings, ModelFamily, family_of
from .model import Model
from .tokenizer import Tokenizer

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "tiny-arith")


def load(path=None, dtype=None, device="cpu"):
    """``(Model, Tokenizer)`` of a checkpoint directory (default: the embedded tiny model)."""
    path = DEFAULT_MODEL if path is None else os.fspath(path)
    return Model.from_pretrained(path, dtype=dtype, device=device), Tokenizer(path)


__all__ = ["Engine", "Model", "Tokenizer", "ModelConfig", "CheckpointError", "BudgetStrings",
           "FAMILY_BUDGET_STRINGS", "FAMILIES", "ModelFamily", "family_of", "load", "DEFAULT_MODEL"]
