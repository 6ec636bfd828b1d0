"""Hugging Face PRM adapters on tiny random-weight models built offline.

Expected scores are computed here from token ids assembled by hand (problem
tokens, then each step's tokens and its marker), one model call on the whole
sequence, and a softmax at the marker positions we know.
"""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install transformers)")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,  # noqa: E402
                          Qwen2ForTokenClassification)

from tts_kernels.search import prm_hf  # noqa: E402
from tts_kernels.search.prm import load_prm  # noqa: E402
from tts_kernels.search.prm_hf import HFStepClassifierPRM, HFTagTokenPRM  # noqa: E402

SEP, TAG = "<extra_0>", "ки"
WORDS = ["[PAD]", "[UNK]"] + list("0123456789+-=*/?") + \
    "what is then so answer system user assistant add sub ки".split()
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")

PROBLEM = "what is 2+3*4 ?"
CANDIDATES = [["3*4=12", "2+12=14", "answer 14"],
              ["3*4=12", "2+12=15"],
              ["3*4=12", "2+12=14", "so 14"],
              ["2+3=5", "5*4=20", "answer 20", "so 20"],
              ["3*4=12"]]


def pre_tokenizer():
    return pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])


def make_tokenizer(chat_template=None):
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                  additional_special_tokens=[SEP, "<|im_start|>", "<|im_end|>"])
    if chat_template:
        tok.chat_template = chat_template
    return tok


def words(text):
    """Token ids of plain text (words, punctuation runs and single digits, all in WORDS)."""
    return [WORDS.index(w) for w, _ in pre_tokenizer().pre_tokenize_str(text)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def classifier(tok):
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, num_labels=2, initializer_range=0.3,
                      pad_token_id=tok.pad_token_id)
    return Qwen2ForTokenClassification(cfg).eval()


@pytest.fixture(scope="module")
def causal(tok):
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, initializer_range=0.3,
                      pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


def manual_scores(model, ids, positions, classes=None, positive=1):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    at = logits[positions]
    if classes is not None:
        at = at[:, classes]
    return torch.softmax(at, dim=-1)[:, positive].tolist()


def layout(prefix_ids, steps, step_ids, marker_ids):
    """ids and marker positions of prefix + step_1 + marker + ... (``step_ids`` maps a step to its ids)."""
    ids, pos = list(prefix_ids), []
    for k, s in enumerate(steps):
        ids += step_ids(k, s)
        pos.append(len(ids) + len(marker_ids) - 1)
        ids += marker_ids
    return ids, pos


def assert_close(a, b, tol=1e-5):
    assert [len(x) for x in a] == [len(x) for x in b]
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=tol)


def test_tiny_models_discriminate(classifier, causal, tok):
    # scores spread well beyond the tolerances used below, so a wrong position would be caught
    prm = HFStepClassifierPRM(classifier, tok)
    s = sum(prm.score([PROBLEM] * len(CANDIDATES), CANDIDATES), [])
    assert max(s) - min(s) > 0.05
    prm = HFTagTokenPRM(causal, tok)
    s = sum(prm.score([PROBLEM] * len(CANDIDATES), CANDIDATES), [])
    assert max(s) - min(s) > 0.05


@pytest.mark.parametrize("reuse", [False, True])
def test_step_classifier_plain_matches_manual(classifier, tok, reuse):
    prm = HFStepClassifierPRM(classifier, tok, reuse_prefix=reuse, batch_size=2)
    assert prm.use_chat_template is False
    assert prm.format("p", ["a", "b"]) == "p\na" + SEP + "b" + SEP
    sep_id = tok.convert_tokens_to_ids(SEP)
    got = prm.score([PROBLEM] * len(CANDIDATES), CANDIDATES)
    want = []
    for steps in CANDIDATES:
        ids, pos = layout(words(PROBLEM), steps, lambda k, s: words(s), [sep_id])
        want.append(manual_scores(classifier, ids, pos))
    assert_close(got, want)
    assert all(0.0 <= x <= 1.0 for row in got for x in row)


def test_step_classifier_chat_template(classifier):
    tok = make_tokenizer(TEMPLATE)
    prm = HFStepClassifierPRM(classifier, tok, system_prompt="answer", reuse_prefix=False)
    assert prm.use_chat_template is True
    assert prm.format("what is 1 ?", ["1", "so 1"]) == (
        "<|im_start|>system\nanswer<|im_end|>\n<|im_start|>user\nwhat is 1 ?<|im_end|>\n"
        "<|im_start|>assistant\n1" + SEP + "so 1" + SEP + "<|im_end|>\n")
    start, end, sep_id = (tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", SEP))
    head = ([start] + words("system answer") + [end, start] + words("user " + PROBLEM) + [end, start]
            + words("assistant"))
    got = prm.score([PROBLEM] * 2, CANDIDATES[:2])
    want = []
    for steps in CANDIDATES[:2]:
        ids, pos = layout(head, steps, lambda k, s: words(s), [sep_id])
        want.append(manual_scores(classifier, ids + [end], pos))
    assert_close(got, want)
    with pytest.raises(ValueError, match="chat template"):
        HFStepClassifierPRM(classifier, make_tokenizer(), use_chat_template=True)


@pytest.mark.parametrize("reuse", [False, True])
def test_tag_token_matches_manual(causal, tok, reuse):
    prm = HFTagTokenPRM(causal, tok, reuse_prefix=reuse, batch_size=3)
    assert prm.format("p", ["a", "b"]) == "p a ки\nb ки"
    tag_id, good, bad = (WORDS.index(w) for w in (TAG, "+", "-"))
    got = prm.score([PROBLEM] * len(CANDIDATES), CANDIDATES)
    want = []
    for steps in CANDIDATES:
        ids, pos = layout(words(PROBLEM), steps, lambda k, s: words(s), [tag_id])
        want.append(manual_scores(causal, ids, pos, classes=[good, bad], positive=0))
    assert_close(got, want)


def test_tag_token_numbered_steps(causal, tok):
    prm = HFTagTokenPRM(causal, tok, number_steps=True, reuse_prefix=False)
    assert prm.format("p", ["a", "b"]) == "p Step 1: a ки\nStep 2: b ки"


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("kind", ["step_classifier", "tag_token"])
def test_batch_invariance(classifier, causal, tok, kind, reuse):
    def make(bs):
        if kind == "step_classifier":
            return HFStepClassifierPRM(classifier, tok, batch_size=bs, reuse_prefix=reuse)
        return HFTagTokenPRM(causal, tok, batch_size=bs, reuse_prefix=reuse)

    prompts = [PROBLEM, "what is 7-2 ?", PROBLEM, "what is 7-2 ?", PROBLEM]
    cands = [CANDIDATES[0], ["7-2=5"], CANDIDATES[3], ["7-2=5", "so 5"], CANDIDATES[1]]
    alone = [make(1).score([p], [c])[0] for p, c in zip(prompts, cands)]
    for bs in (1, 2, 16):
        assert_close(make(bs).score(prompts, cands), alone)
    # different batch composition: reversed order, and mixed with other candidates
    assert_close(make(4).score(prompts[::-1], cands[::-1]), alone[::-1])
    mixed = make(8).score(prompts + [PROBLEM] * 3, cands + CANDIDATES[2:5])
    assert_close(mixed[:5], alone)


@pytest.mark.parametrize("kind", ["step_classifier", "tag_token"])
def test_reuse_prefix_same_scores_fewer_tokens(classifier, causal, tok, kind):
    def make(reuse):
        if kind == "step_classifier":
            return HFStepClassifierPRM(classifier, tok, batch_size=2, reuse_prefix=reuse)
        return HFTagTokenPRM(causal, tok, batch_size=2, reuse_prefix=reuse)

    # group 1 shares the problem and the first step, group 2 the problem only, the last is alone
    prompts = [PROBLEM] * 4 + ["what is 7-2 ?"] * 2 + ["what is 1+1 ?"]
    cands = [CANDIDATES[i] for i in (0, 1, 2, 4)] + [["7-2=5"], ["7-2=5", "so 5"], ["1+1=2"]]
    full, shared = make(False), make(True)
    want, got = full.score(prompts, cands), shared.score(prompts, cands)
    assert_close(got, want)
    assert shared.reuse_active
    seqs = [full.encode(p, c) for p, c in zip(prompts, cands)]
    assert full.tokens_scored == sum(map(len, seqs))

    def common(group):
        n = 0
        while all(len(s) > n + 1 for s in group) and len({s[n] for s in group}) == 1:
            n += 1
        return n

    g1, g2 = seqs[:4], seqs[4:6]
    expected = (common(g1) + sum(len(s) - common(g1) for s in g1) + common(g2)
                + sum(len(s) - common(g2) for s in g2) + len(seqs[6]))
    assert shared.tokens_scored == expected < full.tokens_scored
    assert common(g1) > len(words(PROBLEM))  # the shared first step is reused too


class NoCacheModel(torch.nn.Module):
    """A model whose forward takes no cache arguments: prefix reuse must fall back."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return (self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits,)


def test_reuse_falls_back_without_cache_support(classifier, tok):
    prm = HFStepClassifierPRM(NoCacheModel(classifier), tok, reuse_prefix=True)
    ref = HFStepClassifierPRM(classifier, tok, reuse_prefix=False)
    got = prm.score([PROBLEM] * 3, CANDIDATES[:3])
    assert not prm.reuse_active
    assert_close(got, ref.score([PROBLEM] * 3, CANDIDATES[:3]))
    seqs = [ref.encode(PROBLEM, c) for c in CANDIDATES[:3]]
    assert prm.tokens_scored == sum(map(len, seqs))


def test_empty_steps_and_empty_batch(classifier, tok):
    prm = HFStepClassifierPRM(classifier, tok)
    assert prm.score([], []) == []
    assert prm.score([PROBLEM, PROBLEM], [[], []]) == [[], []]
    assert prm.tokens_scored == 0
    out = prm.score([PROBLEM, PROBLEM], [[], CANDIDATES[0]])
    assert out[0] == [] and len(out[1]) == 3
    assert prm.num_params == sum(p.numel() for p in classifier.parameters())


def test_bad_inputs(classifier, causal, tok):
    prm = HFStepClassifierPRM(classifier, tok)
    with pytest.raises(ValueError, match="same length"):
        prm.score([PROBLEM, PROBLEM], [CANDIDATES[0]])
    with pytest.raises(ValueError, match=r"steps\[1\]\[0\].*step_separator"):
        prm.score([PROBLEM, PROBLEM], [["1"], ["1" + SEP + "2"]])
    with pytest.raises(ValueError, match=r"prompts\[0\].*step_separator"):
        prm.score(["what" + SEP], [["1"]])
    with pytest.raises(TypeError, match=r"steps\[0\]"):
        prm.score([PROBLEM], ["1+1=2"])
    with pytest.raises(TypeError, match=r"prompts\[0\]"):
        prm.score([3], [["1"]])
    with pytest.raises(ValueError, match="batch_size"):
        HFStepClassifierPRM(classifier, tok, batch_size=0)
    with pytest.raises(ValueError, match="use_chat_template"):
        HFStepClassifierPRM(classifier, tok, use_chat_template="yes")
    with pytest.raises(ValueError, match="positive_index"):
        HFStepClassifierPRM(classifier, tok, positive_index=2).score([PROBLEM], [["1"]])
    # a separator id that never appears in the input: marker count mismatch
    with pytest.raises(RuntimeError, match="found 0 step_separator tokens"):
        HFStepClassifierPRM(classifier, tok, step_separator_id=WORDS.index("so")).score([PROBLEM], [["1"]])
    tag = HFTagTokenPRM(causal, tok)
    with pytest.raises(ValueError, match=r"steps\[0\]\[1\].*step_tag"):
        tag.score([PROBLEM], [["1", "a ки b"]])
    with pytest.raises(ValueError, match="good_token"):
        HFTagTokenPRM(causal, tok, good_token="+ +")


def test_from_pretrained_round_trip(classifier, causal, tok, tmp_path):
    prompts, cands = [PROBLEM] * 3, CANDIDATES[:3]
    tok.save_pretrained(tmp_path / "tok")
    for name, model, cls in (("cls", classifier, HFStepClassifierPRM), ("lm", causal, HFTagTokenPRM)):
        d = tmp_path / name
        model.save_pretrained(d)
        tok.save_pretrained(d)
        # transformers 5 swaps in Qwen2Tokenizer for model_type qwen2, whatever tokenizer_config.json
        # says, so the Qwen2 classifier gets its tokenizer from a directory without config.json
        kw = {"tokenizer": tmp_path / "tok"} if name == "cls" else {}
        loaded = prm_hf.from_pretrained(d, **kw)
        assert type(loaded) is cls and type(loaded.model) is type(model)
        assert loaded.encode(PROBLEM, cands[0]) == cls(model, tok).encode(PROBLEM, cands[0])
        assert_close(loaded.score(prompts, cands), cls(model, tok).score(prompts, cands))
        assert type(load_prm(str(d), **kw)) is cls
    # options from prm_config.json; explicit kwargs win; options of the other kind are refused
    (tmp_path / "cls" / "prm_config.json").write_text(json.dumps({"step_tag": "ки"}))
    with pytest.raises(ValueError, match="unknown option"):
        prm_hf.from_pretrained(tmp_path / "cls")
    (tmp_path / "cls" / "prm_config.json").write_text(json.dumps({"positive_index": 0, "batch_size": 3}))
    p = prm_hf.from_pretrained(tmp_path / "cls", tokenizer=tok, batch_size=5)
    assert (p.positive_index, p.batch_size) == (0, 5)
    with pytest.raises(ValueError, match="kind must be one of"):
        prm_hf.from_pretrained(tmp_path / "cls", kind="orm")


def test_detect_kind():
    cfg = transformers.PretrainedConfig(architectures=["Qwen2ForProcessRewardModel"])
    assert prm_hf.detect_kind(cfg) == "step_classifier"
    assert prm_hf.detect_kind(transformers.PretrainedConfig(architectures=["MistralForCausalLM"])) == "tag_token"
    with pytest.raises(ValueError, match="kind"):
        prm_hf.detect_kind(transformers.PretrainedConfig(architectures=["BertModel"]))
    with pytest.raises(ValueError, match="kind"):
        prm_hf.detect_kind(transformers.PretrainedConfig())
