"""The strategies on the real engine and the embedded models: reproducibility, sharing, the PRM's worth."""
import os

import pytest
import torch

from tts_kernels.decode import Engine, load
from tts_kernels.search import DEFAULT_PRM, SearchConfig, load_prm, run_strategy
from tts_kernels.tasks import arith


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(strategy, prm, prompts, seed, **kw):
    eng = Engine(*load(), num_blocks=8192, block_size=8, seed=seed, track_kv=True)
    res = run_strategy(strategy, eng, prompts, prm, SearchConfig(temperature=1.0, max_tokens=100, **kw))
    assert eng.live == []
    return res, eng


@pytest.mark.parametrize("strategy", ["best_of_n", "beam_search", "dvts"])
def test_seeded_runs_reproduce_exactly(strategy, prm_dir):
    prompts = [p.prompt for p in arith.make_problems(3, seed=20_000)]
    prm = load_prm(prm_dir)
    a, eng = _run(strategy, prm, prompts, seed=5, n=8, beam_width=4)
    b, _ = _run(strategy, prm, prompts, seed=5, n=8, beam_width=4)
    c, _ = _run(strategy, prm, prompts, seed=6, n=8, beam_width=4)
    key = [[(x.text, x.step_scores) for x in r.candidates] for r in a]
    assert key == [[(x.text, x.step_scores) for x in r.candidates] for r in b]
    assert key != [[(x.text, x.step_scores) for x in r.candidates] for r in c]
    # candidates forked from one prompt share its KV: tree attention read less than per-sequence attention
    assert 0 < eng.stats["kv_tokens_read"] < eng.stats["kv_tokens_noshare"]


def test_best_of_16_with_the_embedded_prm_beats_a_single_sample():
    """Measured with a fixed seed on 48 held-out problems (not a hard-coded number)."""
    assert os.path.isdir(DEFAULT_PRM), "the embedded PRM ships with the package"
    probs = arith.make_problems(48, seed=20_000)
    res, _ = _run("best_of_n", load_prm(), [p.prompt for p in probs], seed=0, n=16, voting="prm_vote")
    single = sum(sum(arith.is_correct(p, c.text) for c in r.candidates) / 16 for p, r in zip(probs, res)) / 48
    bon = sum(r.answer == str(p.answer) for p, r in zip(probs, res)) / 48
    print(f"single-sample accuracy {single:.3f}, Best-of-16 with PRM-Vote {bon:.3f}")
    assert bon > single + 0.05
