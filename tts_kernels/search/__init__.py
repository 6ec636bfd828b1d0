"""Test-time scaling strategies on the decode engine: budget forcing (s1) and PRM-guided search.

>>> from tts_kernels.decode import Engine, load
>>> from tts_kernels.search import SearchConfig, beam_search, load_prm
>>> eng, prm = Engine(*load(), num_blocks=4096), load_prm()   # embedded policy and PRM
>>> res = beam_search(eng, ["49+9-3-6=?<think>"], prm, SearchConfig(n=16, beam_width=4))
>>> res[0].answer

Strategies: :func:`best_of_n`, :func:`beam_search`, :func:`dvts` (:mod:`.strategies`), registered
with their traits in :mod:`.registry` (:func:`register` adds one);
PRMs: :class:`PRM`, :class:`EnginePRM`, :func:`load_prm` (:mod:`.prm`) and the Hugging Face
adapters in :mod:`.prm_hf`; aggregation, voting and answer extraction in :mod:`.scoring`;
s1's budget-control methods in :mod:`.budget_control`.
"""
from .prm import DEFAULT_PRM, PRM, EnginePRM, load_prm, split_steps
from .registry import StrategySpec, register
from .scoring import AGGREGATIONS, VOTINGS, aggregate, extract_answer, vote, vote_all
from .strategies import STRATEGIES, Candidate, SearchConfig, SearchResult, beam_search, best_of_n, dvts, run_strategy

__all__ = ["DEFAULT_PRM", "PRM", "EnginePRM", "load_prm", "split_steps", "AGGREGATIONS", "VOTINGS", "aggregate", "extract_answer",
           "vote", "vote_all", "STRATEGIES", "Candidate", "SearchConfig", "SearchResult", "beam_search",
           "best_of_n", "dvts", "run_strategy", "StrategySpec", "register"]
