"""EnginePRM: tag-token scores through the engine with prefix caching equal a plain full forward."""
import json
import shutil

import pytest
import torch

from tts_kernels.decode import load
from tts_kernels.search import EnginePRM, load_prm, split_steps


def full_forward_scores(model, tok, prompt, steps):
    """Reference: one forward over prompt + every step followed by the tag; read the tag positions."""
    ids = tok.encode(prompt)
    tags = []
    for st in steps:
        ids = ids + tok.encode(st) + tok.encode("\n\n")
        tags.append(len(ids) - 1)
    logits, _ = model.prefill(torch.tensor(ids))
    good, bad = tok.token_to_id("+"), tok.token_to_id("-")
    return [float(torch.sigmoid(logits[t, good] - logits[t, bad])) for t in tags]


def test_scores_match_full_forward_and_cache_prefixes(prm_dir):
    model, tok = load(prm_dir)
    prm = EnginePRM(prm_dir, num_blocks=256, block_size=4)
    prompts = ["49+9-3-6=?<think>", "49+9-3-6=?<think>", "12+3=?<think>", "49+9-3-6=?<think>"]
    steps = [split_steps("49+9=58\n\n58-3=55\n\n55-6=49\n\n</think>Final Answer: 49<|eos|>"),
             ["49+9=58", "58-3=56"], ["12+3=15", "</think>Final Answer: 15"], []]
    got = prm.score(prompts, steps)
    assert [len(g) for g in got] == [4, 2, 2, 0]
    for p, st, g in zip(prompts, steps, got):
        assert g == pytest.approx(full_forward_scores(model, tok, p, st), abs=1e-5)
    # the shared prompt and first step were run once: the second candidate added one step only
    first = prm.tokens_scored
    once = (len(tok.encode(prompts[0])) + len(tok.encode(prompts[2]))
            + sum(len(tok.encode(s)) + 1 for s in steps[0] + steps[2]) + len(tok.encode("58-3=56")) + 1)
    assert first == once
    # re-scoring an extended candidate pays for its new step only, and returns the same old scores
    ext = steps[1] + ["56-6=50"]
    again = prm.score([prompts[1]], [ext])[0]
    assert prm.tokens_scored == first + len(tok.encode("56-6=50")) + 1
    assert again[:2] == got[1] and again == pytest.approx(full_forward_scores(model, tok, prompts[1], ext), abs=1e-5)
    # forks share the prompt's full blocks in the PRM's pool
    assert prm.engine.pool.num_used_blocks < sum(
        -(-prm.engine.pool.seq_len(s) // 4) for s in prm.engine.live)
    # only the last call's prefixes stay cached: the other candidates' sequences went back to the pool
    assert len(prm.engine.live) == 1 + len(ext)
    prm.reset()
    assert prm.engine.live == [] and prm.engine.pool.num_free_blocks == prm.engine.pool.num_blocks


def test_bad_prm_directories(tmp_path, prm_dir):
    with pytest.raises(FileNotFoundError, match="prm_config.json"):
        EnginePRM(str(tmp_path))
    bad = tmp_path / "bad"
    shutil.copytree(prm_dir, bad)
    (bad / "prm_config.json").write_text(json.dumps({"kind": "tag_token", "step_tag": "\n\n",
                                                    "good_token": "ки", "bad_token": "-"}))
    with pytest.raises(ValueError, match="not in the PRM's vocabulary"):
        EnginePRM(str(bad))
    (bad / "prm_config.json").write_text(json.dumps({"kind": "value_head"}))
    with pytest.raises(ValueError, match="unsupported PRM kind"):
        EnginePRM(str(bad))
    assert isinstance(load_prm(prm_dir), EnginePRM)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prm(str(tmp_path / "org" / "missing-prm"))
    prm = EnginePRM(prm_dir, num_blocks=64)
    with pytest.raises(ValueError, match="same length"):
        prm.score(["a"], [])


def test_new_steps_run_as_one_packed_prefill_equal_to_per_token_feeds(prm_dir):
    """Each level of new steps is one packed prefill over the cached prefixes (no decode forwards);
    the scores equal the per-token decode feeds the PRM used before, and the embedded PRM's."""
    prompts = ["49+9-3-6=?<think>", "49+9-3-6=?<think>", "12+3=?<think>"]
    steps = [["49+9=58", "58-3=55", "55-6=49"], ["49+9=58", "58-3=56"], ["12+3=15", "</think>Final Answer: 15"]]
    packed, fed = EnginePRM(prm_dir, num_blocks=256, block_size=4), EnginePRM(prm_dir, num_blocks=256, block_size=4)
    fed.engine.extend_many = fed.engine.feed          # the old path: one decode forward per token
    got, want = packed.score(prompts, steps), fed.score(prompts, steps)
    assert [len(g) for g in got] == [3, 2, 2]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-5)
    assert packed.engine.stats["forwards"] == 0 and fed.engine.stats["forwards"] > 0
    assert packed.tokens_scored == fed.tokens_scored
    # the prompts go through the engine's prefix cache too: a new problem sharing a prompt prefix hits it
    before = packed.engine.stats["prefix_hit_tokens"]
    packed.score(["49+9-3-6=?<think>49+9=58"], [["58-3=55"]])
    assert packed.engine.stats["prefix_hit_tokens"] > before
