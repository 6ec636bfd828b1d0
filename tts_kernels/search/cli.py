"""``tts-kernels evaluate``: the main job (every strategy at every N, budget control, the headline).

With no arguments it runs on the embedded default (tiny policy, its PRM, the
arithmetic task, the 4x policy for the headline) and fits in a few minutes on
2 CPU cores; ``--policy/--prm/--problems`` run it on any local checkpoint,
PRM directory and JSONL problem set (``{"prompt": ..., "answer": ...}`` per line).
"""
from __future__ import annotations

import json
import os
import typing
from dataclasses import fields
from typing import Optional, Sequence

from . import registry
from .evaluate import EvalConfig, evaluate
from .report import plot, tables
from .strategies import SearchConfig


def _ints(s):
    return tuple(int(x) for x in s.split(",") if x)


def _names(s):
    return tuple(x for x in s.split(",") if x)


_PARSERS = {int: int, float: float, str: None, Optional[str]: None, Sequence[int]: _ints, Sequence[str]: _names}
#: extra help computed when the parser is built (the registry may have grown since import)
_MORE_HELP = {"strategies": lambda: f" (some of {','.join(registry.names())})"}


def _add_fields(p, cls, values, only=None) -> None:
    """One ``--flag-name`` per dataclass field of ``cls``: its type, default (from ``values``), help, choices."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if (only is not None and f.name not in only) or hints[f.name] not in _PARSERS:
            continue
        kw = dict(default=getattr(values, f.name), help=f.metadata.get("help", "")
                  + _MORE_HELP.get(f.name, lambda: "")())
        if _PARSERS[hints[f.name]] is not None:
            kw["type"] = _PARSERS[hints[f.name]]
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        p.add_argument("--" + f.name.replace("_", "-"), **kw)


def add_arguments(p) -> None:
    """The evaluate flags: every :class:`EvalConfig` field and every flat :class:`SearchConfig` field."""
    d = EvalConfig()
    _add_fields(p, EvalConfig, d)
    _add_fields(p, SearchConfig, d.search, only=EvalConfig.search_fields())
    p.add_argument("--out", default="tts_eval", help="output prefix: writes OUT.md (the table), OUT.json and OUT.png")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> dict:
    keys = {f.name for f in fields(EvalConfig)} | set(EvalConfig.search_fields())
    cfg = EvalConfig(**{k: v for k, v in vars(args).items() if k in keys})
    res = evaluate(cfg, progress=not args.no_progress)
    table = tables(res)
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    written = {"table": args.out + ".md", "json": args.out + ".json", "plot": args.out + ".png"}
    with open(written["table"], "w") as f:
        f.write(table + "\n")
    with open(written["json"], "w") as f:
        json.dump(res, f, indent=1)
    if not plot(res, written["plot"]):
        print("note: matplotlib is not installed; no plot written (pip install matplotlib)")
        del written["plot"]
    for what, path in written.items():
        print(f"wrote the {what}: {os.path.abspath(path)}")
    return res
