"""The search strategies and their traits, registered in one place.

A strategy is a function ``fn(engine, prompts, prm, cfg, progress=False) -> List[SearchResult]``
decorated with :func:`register`, which records its traits. Everything that needs to know about
strategies reads this registry: :func:`.strategies.run_strategy` (dispatch),
:meth:`.strategies.SearchConfig.check` (a PRM? ``n`` a multiple of ``beam_width``?), the main
job's plan, skipping notes and validation (:mod:`.evaluate`) and the CLI's help (:mod:`.cli`).

Adding a strategy is one decorated function in a module that ``tts_kernels.search`` imports
(:mod:`.strategies` holds the three shipped ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple


@dataclass(frozen=True)
class StrategySpec:
    """One registered strategy and its traits."""

    name: str
    fn: Callable
    needs_prm: bool             # ranks candidates with a PRM while searching
    uses_beam_width: bool       # n candidates in groups of beam_width: n must be a multiple of it
    independent_samples: bool   # n i.i.d. samples: their share of correct ones estimates Pass@1
    summary: str = ""

    def check(self, n: int, beam_width: int, prm) -> None:
        """Raise ``ValueError`` when this strategy cannot run ``n`` candidates (with ``prm``)."""
        if self.needs_prm and prm is None:
            raise ValueError(f"{self.name} needs a PRM (prm=None)")
        if not self.runs_at(n, beam_width):
            raise ValueError(f"n ({n}) must be divisible by beam_width ({beam_width}) for {self.name}")

    def runs_at(self, n: int, beam_width: int) -> bool:
        """Whether ``n`` candidates fit this strategy at ``beam_width``."""
        return not self.uses_beam_width or (n >= beam_width and n % beam_width == 0)


_REGISTRY: Dict[str, StrategySpec] = {}


def register(name: Optional[str] = None, *, needs_prm: bool, uses_beam_width: bool,
             independent_samples: bool = False, summary: str = ""):
    """Decorator: register ``fn`` as strategy ``name`` (default: the function's name) with its traits."""
    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"strategy {key!r} is already registered")
        _REGISTRY[key] = StrategySpec(key, fn, needs_prm, uses_beam_width, independent_samples, summary)
        return fn
    return deco


def names() -> Tuple[str, ...]:
    """Registered strategy names, in registration order."""
    return tuple(_REGISTRY)


def spec(name: str) -> StrategySpec:
    """The record of strategy ``name``; ``ValueError`` naming the known ones when there is none."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; expected one of {names()}")
    return _REGISTRY[name]


def baseline() -> str:
    """The first strategy of independent samples (``best_of_n``): Pass@1 estimates and single samples."""
    return next(s.name for s in _REGISTRY.values() if s.independent_samples)
