"""Budget forcing as a Hugging Face logits processor, in the real ``model.generate``.

A tiny random-weight Llama is made offline here; an attention bias gives the
end-of-thinking token a steady probability so that early ends (Wait injection),
natural ends and forced ends at the maximum all happen.
"""
import os
import sys

import pytest
import torch

import tts_kernels as tk
from tts_kernels.integrations import common
from tts_kernels.sampling.reference import filter_mask

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "vllm"))
from budget_checker import check_sequence  # noqa: E402

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install transformers)")
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList  # noqa: E402

from tts_kernels.integrations.hf import BudgetForcingLogitsProcessor  # noqa: E402

END, WAIT, ANS = [100, 101], [102, 103], [104, 105, 106]
V, P = 112, 5
MIN, MAX, MINW = [6, 0, 10, 0], [20, 6, 30, -1], [1, 0, 2, 0]   # last row: no budget


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                      attention_bias=True, bos_token_id=1, eos_token_id=111, pad_token_id=110)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.model.layers[-1].self_attn.o_proj.bias.zero_()
        m.model.layers[-1].self_attn.o_proj.bias[0] = 100.0
        m.lm_head.weight[END[0]].zero_()
        m.lm_head.weight[END[0], 0] = 0.25
    return m


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    return torch.randint(2, 99, (4, P), generator=g)


def _generate(model, prompts, proc, **kw):
    lp = LogitsProcessorList([proc]) if proc is not None else None
    with torch.no_grad():
        return model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=45,
                              logits_processor=lp, **kw)


def _check_rows(out, proc, beams=False):
    results = []
    for r in range(3):
        toks = out[r, P:].tolist()
        repl = None if beams else set(proc.replaced_positions[r])
        res = check_sequence(toks, MIN[r], MAX[r], MINW[r], END, WAIT, ANS, replaced=repl)
        assert res["finished"], (r, toks, res)
        assert MIN[r] <= res["thinking"] <= MAX[r]
        if res["forced_end"]:  # forced end + answer prefix exact
            e = res["end_pos"]
            assert toks[e:e + len(END) + len(ANS)] == END + ANS
        results.append(res)
    return results


@pytest.mark.parametrize("seed", [0, 1])
def test_hf_sampling(model, prompts, seed):
    bf = tk.BudgetForcing(END, WAIT, ANS)
    kw = dict(do_sample=True, temperature=0.9, top_k=50, top_p=0.95)
    proc = BudgetForcingLogitsProcessor(bf, MIN, MAX, MINW, seed=seed, record=True, **kw)
    torch.manual_seed(seed)
    out = _generate(model, prompts, proc, **kw)
    res = _check_rows(out, proc)
    assert sum(r["waits"] for r in res) >= MINW[0] + MINW[2]
    # the unbudgeted row is identical to a run without the processor (same torch seed)
    torch.manual_seed(seed)
    plain = _generate(model, prompts, None, **kw)
    assert out[3].tolist() == plain[3].tolist()


def test_hf_greedy_and_forced_max(model, prompts):
    bf = tk.BudgetForcing(END, WAIT, ANS)
    proc = BudgetForcingLogitsProcessor(bf, MIN, MAX, MINW, do_sample=False, record=True)
    out = _generate(model, prompts, proc, do_sample=False)
    _check_rows(out, proc)
    plain = _generate(model, prompts, None, do_sample=False)
    assert out[3].tolist() == plain[3].tolist()
    # a budget of 0 thinking tokens: the end and answer prefix come first, exactly
    proc0 = BudgetForcingLogitsProcessor(bf, 0, 0, 0, do_sample=False)
    out0 = _generate(model, prompts, proc0, do_sample=False)
    for r in range(4):
        assert out0[r, P:P + 5].tolist() == END + ANS


def test_hf_beam_search(model, prompts):
    bf = tk.BudgetForcing(END, WAIT, ANS)
    proc = BudgetForcingLogitsProcessor(bf, MIN, MAX, MINW, do_sample=False, num_beams=3)
    out = _generate(model, prompts, proc, do_sample=False, num_beams=3, num_return_sequences=3)
    for r in range(3):  # every returned beam of budgeted prompts follows the rules
        for b in range(3):
            toks = out[3 * r + b, P:].tolist()
            res = check_sequence(toks, MIN[r], MAX[r], MINW[r], END, WAIT, ANS)
            assert res["finished"] and MIN[r] <= res["thinking"] <= MAX[r], (r, b, toks, res)
    plain = _generate(model, prompts, None, do_sample=False, num_beams=3, num_return_sequences=3)
    assert out[9:].tolist() == plain[9:].tolist()


def _fused_greedy_loop(logits_seq, bf, mn, mx, mw):
    state = bf.init_state(logits_seq.shape[1], min_tokens=mn, max_tokens=mx, min_waits=mw)
    toks = []
    for lg in logits_seq:
        toks.append(tk.sample(lg, temperature=0.0, budget=state, backend="reference").token_ids)
    return torch.stack(toks, 1)


def test_common_greedy_is_exact_vs_fused_op():
    """Greedy decoding through transform/advance gives the fused op's tokens, token for token."""
    g = torch.Generator().manual_seed(5)
    B, T = 16, 40
    logits = torch.randn(T, B, V, generator=g)
    logits[:, :, END[0]] += torch.rand(T, B, 1, generator=g).squeeze(-1) * 4  # end often the argmax
    bf = tk.BudgetForcing(END, WAIT, ANS)
    mn = torch.randint(0, 10, (B,), generator=g)
    mx = mn + torch.randint(0, 15, (B,), generator=g)
    mx[0] = -1
    mw = torch.randint(0, 3, (B,), generator=g)
    want = _fused_greedy_loop(logits, bf, mn, mx, mw)
    table = common.ForcingTable.build([bf] * B)
    st = common.init_state(mn, mx, mw)
    z = torch.zeros(B)
    got = []
    for lg in logits:
        out, repl = common.transform(lg, st, table, z, z.int(), z + 1, z, torch.rand(B))
        tok = out.argmax(1)
        st = common.advance(st, tok, repl, table)
        got.append(tok)
    assert torch.equal(torch.stack(got, 1), want)


def test_common_wait_injection_in_distribution():
    """At an early-end step: P(Wait forced) = p_end under the filtered distribution; the rest keep p_x."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, V, generator=g) * 2
    x[0, END[0]] = x.max() + 0.3
    N = 40000
    logits = x.expand(N, V).contiguous()
    bf = tk.BudgetForcing(END, WAIT, ANS)
    table = common.ForcingTable.build([bf] * N)
    st = common.init_state(torch.full((N,), 5), torch.full((N,), 9), torch.zeros(N))
    t, k, p, m = torch.full((N,), 0.8), torch.full((N,), 40, dtype=torch.int32), torch.full((N,), 0.9), \
        torch.zeros(N)
    out, repl = common.transform(logits, st, table, t, k, p, m, torch.rand(N, generator=g))
    keep = filter_mask(x / 0.8, k[:1], p[:1], m[:1])[0]
    probs = torch.where(keep, torch.softmax(x[0] / 0.8, 0), torch.zeros(V))
    probs /= probs.sum()
    p_end = float(probs[END[0]])
    frac = repl.float().mean().item()
    assert abs(frac - p_end) < 5 * (p_end * (1 - p_end) / N) ** 0.5 + 1e-3
    assert torch.all(out[repl].argmax(1) == WAIT[0]) and torch.isfinite(out[repl]).sum(1).eq(1).all()
    masked = out[~repl][0]
    assert masked[END[0]] == float("-inf")
    assert torch.equal(torch.isfinite(masked), keep & (torch.arange(V) != END[0]))


def test_hf_bad_arguments():
    bf = tk.BudgetForcing(END, WAIT, ANS)
    with pytest.raises(ValueError, match="min_tokens must be <= max_tokens"):
        BudgetForcingLogitsProcessor(bf, 10, 5)
    with pytest.raises(TypeError, match="budget_forcing"):
        BudgetForcingLogitsProcessor([100], 0, 5)
    with pytest.raises(ValueError, match="same length"):
        BudgetForcingLogitsProcessor(bf, [1, 2], [5, 6, 7])
