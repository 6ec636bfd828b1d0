"""The process labels of the arithmetic task (``arith.step_labels``) and the shipped trained PRM.

The PRM checks use the package's own runner (``tts_kernels.decode.Model.prefill``, one full
forward per input), not ``EnginePRM``, and build the input exactly as the PRM format says:
prompt + step_1 + "\\n\\n" + ... + step_K + "\\n\\n", score of step k = sigmoid(logit["+"] -
logit["-"]) at the k-th tag token.
"""
import json
import os

import pytest
import torch

from tts_kernels.decode import DEFAULT_MODEL, Model, Tokenizer
from tts_kernels.tasks import arith
from tts_kernels.tasks.arith import Chain, step_labels

PRM_DIR = os.path.join(os.path.dirname(DEFAULT_MODEL), "tiny-arith-prm")

# 49+9-3-6: chain 49+9=58, 58-3=55, 55-6=49, answer 49
P = Chain(49, (("+", 9), ("-", 3), ("-", 6)))
ANS = "</think>Final Answer: 49"


def steps_of(completion):
    completion = completion.replace(arith.EOS, "")
    return [s for s in completion.split(arith.STEP_DELIMITER) if s.strip()]


# -- step_labels ---------------------------------------------------------------------------------
@pytest.mark.parametrize("steps, expected", [
    (["49+9=58", "58-3=55", "55-6=49", ANS], [True] * 4),                                   # reference
    (["49+9=58", "58-3=55", "55-6=49", "Wait", "55-6=49", ANS], [True] * 6),                # Wait + re-check
    (["49+9=58", "58-3=55", "Wait", "49+9=58", "55-6=49", ANS], [True] * 6),                # re-check of an earlier step
    (["49+9=57", "57-3=54", "54-6=48", "</think>Final Answer: 48"], [False] * 4),           # wrong first step
    (["49+9=58", "58-3=54", "54-6=48", "</think>Final Answer: 48"], [True] + [False] * 3),  # arithmetic slip
    (["49+9=58", "58-6=52", "52-3=49", ANS], [True] + [False] * 3),                         # right sum, wrong chain order
    (["49+9=58", "58-3=55", "55-6=49", "</think>Final Answer: 50"], [True] * 3 + [False]),  # wrong answer only
    (["49+9=58", "58-3=55", "55-6=49", "Wait", "55-6=48", ANS], [True] * 4 + [False] * 2),  # wrong re-check
    (["49+9=58", "58-3=56", "56-6=50", "Wait", "58-3=55", "55-6=49", ANS], [True] + [False] * 6),  # never recovers
    (["49+9=58", "58-3=55", "55-6=49", "55-6=49", ANS], [True] * 5),                        # repeat without Wait
    (["49+9=58", "58-3=55", "55-6=49", "49+1=50", ANS], [True] * 3 + [False] * 2),          # an extra step
    (["49+9=58", "hello", "58-3=55", "55-6=49", ANS], [True] + [False] * 4),                # unparseable
    (["49+9=58", "58-3=55", "55-6=49", "</think>", "Final Answer: 49"], [True] * 3 + [False] * 2),  # split answer
    (["49+9=58", "58-3=55", "55-6=49", ANS, "55-6=49"], [True] * 4 + [False]),              # after the answer
    (["Wait", "49+9=58", "58-3=55", "55-6=49", ANS], [True] * 5),                           # Wait first
    (["49+9=58", "58-3=55", ANS], [True] * 3),       # short chain, right answer: counts (spec: labels so far + answer)
    ([" 49+9=58", "58-3=55 ", "55-6=49", ANS], [True] * 4),                                 # surrounding space ignored
    ([], []),
])
def test_step_labels(steps, expected):
    assert step_labels(P, steps) == expected


def test_step_labels_reference_traces_and_monotone():
    for p in arith.make_problems(50, 123):
        for wait in (False, True):
            assert all(step_labels(p, steps_of(p.completion(wait))))
        bad = p.completion().replace(f"Answer: {p.answer}", f"Answer: {p.answer + 1}")
        assert step_labels(p, steps_of(bad)) == [True] * len(p.ops) + [False]
        # once False, always False; the answer step is True only if is_correct
        steps = p.steps()
        steps[1] = steps[1][:-1] + str((int(steps[1][-1]) + 1) % 10)
        lab = step_labels(p, steps + [f"</think>Final Answer: {p.answer}"])
        assert lab == [True] + [False] * (len(lab) - 1)


# -- the shipped checkpoint ---------------------------------------------------------------------
def test_prm_directory_consistent():
    for fn in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "prm_config.json", "train_log.json", "README.md"):
        assert os.path.isfile(os.path.join(PRM_DIR, fn)), fn
    assert not os.path.exists(os.path.join(PRM_DIR, "generation_config.json"))
    total = sum(os.path.getsize(os.path.join(PRM_DIR, f)) for f in os.listdir(PRM_DIR))
    assert total < 8 * 2 ** 20
    with open(os.path.join(PRM_DIR, "prm_config.json")) as f:
        assert json.load(f) == {"kind": "tag_token", "step_tag": "\n\n", "good_token": "+", "bad_token": "-"}
    for fn in ("tokenizer.json", "tokenizer_config.json"):          # the policy's tokenizer, byte for byte
        with open(os.path.join(PRM_DIR, fn), "rb") as a, open(os.path.join(DEFAULT_MODEL, fn), "rb") as b:
            assert a.read() == b.read(), fn
    with open(os.path.join(PRM_DIR, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(DEFAULT_MODEL, "config.json")) as f:
        policy = json.load(f)
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "tie_word_embeddings", "eos_token_id", "pad_token_id", "bos_token_id"):
        assert cfg[k] == policy[k], k
    tok = Tokenizer(PRM_DIR)
    assert tok.vocab_size == cfg["vocab_size"]
    for t in ("+", "-", "\n\n"):
        assert tok.encode(t) == [tok.token_to_id(t)]


@pytest.fixture(scope="module")
def prm():
    torch.set_num_threads(1)
    return Model.from_pretrained(PRM_DIR), Tokenizer(PRM_DIR)


def prm_scores(prm, prompt, steps):
    """Per-step scores with one full forward (parts tokenized separately, as EnginePRM feeds them)."""
    model, tok = prm
    tag = tok.encode("\n\n")
    ids, pos = list(tok.encode(prompt)), []
    for s in steps:
        ids += tok.encode(s) + tag
        pos.append(len(ids) - 1)
    assert ids == tok.encode(prompt + "".join(s + "\n\n" for s in steps))   # same as tokenizing the text
    with torch.no_grad():
        logits, _ = model.prefill(torch.tensor(ids))
    good, bad = tok.token_to_id("+"), tok.token_to_id("-")
    return torch.sigmoid(logits[pos, good] - logits[pos, bad]).tolist()


CASES = [  # (problem, right trace, trace whose first step is wrong)
    (P, "49+9=58\n\n58-3=55\n\n55-6=49\n\n</think>Final Answer: 49<|eos|>",
     "49+9=57\n\n57-3=54\n\n54-6=48\n\n</think>Final Answer: 48<|eos|>"),
    (Chain(12, (("+", 5), ("+", 7), ("-", 4), ("+", 2))),
     "12+5=17\n\n17+7=24\n\n24-4=20\n\n20+2=22\n\n</think>Final Answer: 22<|eos|>",
     "12+5=18\n\n18+7=25\n\n25-4=21\n\n21+2=23\n\n</think>Final Answer: 23<|eos|>"),
    (Chain(80, (("-", 8), ("+", 3), ("-", 9))),
     "80-8=72\n\n72+3=75\n\n75-9=66\n\n</think>Final Answer: 66<|eos|>",
     "80-8=73\n\n73+3=76\n\n76-9=67\n\n</think>Final Answer: 67<|eos|>"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_shipped_prm_prefers_the_right_trace(prm, case):
    problem, right, wrong = CASES[case]
    assert arith.is_correct(problem, right) and not arith.is_correct(problem, wrong)
    assert all(step_labels(problem, steps_of(right))) and not any(step_labels(problem, steps_of(wrong)))
    s_right = prm_scores(prm, problem.prompt, steps_of(right))
    s_wrong = prm_scores(prm, problem.prompt, steps_of(wrong))
    assert len(s_right) == len(steps_of(right)) and len(s_wrong) == len(steps_of(wrong))
    assert s_right[-1] > s_wrong[-1]
    assert s_right[0] > s_wrong[0]
