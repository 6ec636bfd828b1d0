"""Tokenizer of a checkpoint directory (``tokenizer.json``).

Uses the ``tokenizers`` package when it is installed (any HF fast tokenizer:
Llama 3, Qwen2, ...). Without it, a small pure-Python reader handles the
WordLevel + regex-Split + Fuse tokenizers such as the embedded model's, so
the default model runs with torch alone.
"""
from __future__ import annotations

import json
import os
import re
from typing import List, Optional, Sequence

from .checkpoint import CheckpointError, read_json

try:  # optional dependency
    import tokenizers as _hf_tokenizers
except ImportError:  # pragma: no cover - exercised only without the package
    _hf_tokenizers = None


class Tokenizer:
    """``encode(text) -> ids``, ``decode(ids) -> text``, ``token_to_id``, ``eos_token_ids``."""

    def __init__(self, path: str, prefer_pure: bool = False):
        spec, fn = read_json(path, "tokenizer.json")
        self._spec = spec
        self._hf = None
        if _hf_tokenizers is not None and not prefer_pure:
            try:
                self._hf = _hf_tokenizers.Tokenizer.from_file(fn)
            except Exception as exc:  # noqa: BLE001
                raise CheckpointError(f"{fn}: the tokenizers package cannot load it ({exc})") from None
        else:
            self._init_pure(spec, fn)
        self.eos_token_ids = self._find_eos(path)

    # -- pure-Python WordLevel reader ------------------------------------------------
    def _init_pure(self, spec, fn):
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        if model.get("type") != "WordLevel" or pre.get("type") != "Split" or "Regex" not in pre.get("pattern", {}):
            raise CheckpointError(f"{fn}: needs the `tokenizers` package (pip install tokenizers); the built-in "
                                  f"reader handles only WordLevel models with a regex Split pre-tokenizer")
        self._vocab = dict(model["vocab"])
        for t in spec.get("added_tokens", []):
            self._vocab[t["content"]] = t["id"]
        self._inv = {i: t for t, i in self._vocab.items()}
        self._unk = self._vocab.get(model.get("unk_token"))
        self._special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
        added = sorted((t["content"] for t in spec.get("added_tokens", [])), key=len, reverse=True)
        self._added_re = re.compile("(" + "|".join(map(re.escape, added)) + ")") if added else None
        self._split_re = re.compile(pre["pattern"]["Regex"])

    def _pure_encode(self, text: str) -> List[int]:
        parts = self._added_re.split(text) if self._added_re else [text]
        ids = []
        for i, part in enumerate(parts):
            if i % 2 == 1:           # an added token
                ids.append(self._vocab[part])
                continue
            pos = 0
            for m in self._split_re.finditer(part):
                for piece in ((part[pos:m.start()],) if m.start() > pos else ()) + (m.group(0),):
                    if piece:
                        ids.append(self._vocab.get(piece, self._unk))
                pos = m.end()
            if pos < len(part):
                ids.append(self._vocab.get(part[pos:], self._unk))
        if any(i is None for i in ids):
            raise ValueError(f"text has characters outside the vocabulary and there is no unk token: {text!r}")
        return ids

    # -- API -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True) if self._hf else len(self._vocab)

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` (no BOS or other template tokens are added)."""
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=False).ids
        return self._pure_encode(text)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)
        return "".join(self._inv.get(i, "") for i in ids
                       if not (skip_special_tokens and self._inv.get(i) in self._special))

    def token_to_id(self, token: str) -> Optional[int]:
        return self._hf.token_to_id(token) if self._hf is not None else self._vocab.get(token)

    def _find_eos(self, path) -> tuple:
        out = []
        cfg_fn = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cfg_fn):
            with open(cfg_fn) as f:
                eos = json.load(f).get("eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str) and self.token_to_id(eos) is not None:
                out.append(self.token_to_id(eos))
        return tuple(out)
