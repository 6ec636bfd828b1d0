"""The fused sampler: every backend against the reference, statistics, determinism, budget forcing.

Backends: ``reference`` (pure PyTorch), ``cpp`` (C++ CPU kernel), ``triton``
(on CPU through TRITON_INTERPRET=1 when no GPU is present).
"""
from __future__ import annotations

import pytest
import torch
from scipy import stats

import tts_kernels as tk
from tts_kernels.sampling import impls
from tts_kernels.sampling.params import SamplingParams
from tts_kernels.sampling.reference import filter_mask

from helpers.sampling import call, decisive_rows, is_small, mixed_params, random_logits, reference_keep

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------------------
# Agreement with the reference
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", [(37, 1000), (5, 4099), (64, 257)])
def test_matches_reference(backend, dtype, shape):
    b, v = shape
    if is_small(backend):
        b, v = min(b, 12), min(v, 300)
    gen = torch.Generator().manual_seed(b * 7919 + v)
    logits = random_logits(b, v, gen=gen, dtype=dtype)
    params = mixed_params(b, v, gen=gen)
    out = call(backend, logits, **params)
    ref = call("reference", logits, **params)
    assert out.token_ids.dtype == torch.int64 and out.logprobs.dtype == torch.float32
    assert out.token_ids.shape == (b,) and out.logprobs.shape == (b,)

    _, keep = reference_keep(logits, params["temperature"], params["top_k"], params["top_p"], params["min_p"])
    greedy = params["temperature"] == 0
    decisive = decisive_rows(logits, **params)
    assert decisive.float().mean() > 0.9, "too few decisive rows: the comparison would be vacuous"
    assert torch.equal(out.token_ids[decisive], ref.token_ids[decisive])
    # undecided rows (float near-ties) must still draw a kept token
    rows = torch.arange(b)
    assert keep[rows[~greedy], out.token_ids[~greedy]].all()
    torch.testing.assert_close(out.logprobs[decisive], ref.logprobs[decisive], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_without_logprobs_same_tokens(backend, dtype):
    """``return_logprobs=False``: logprobs None (the op's second output empty), and the same tokens as with them,
    on mixed rows (every filter, greedy, -inf entries), a NaN row and a row of no finite logit (-1 both ways)."""
    b, v = (12, 300) if is_small(backend) else (37, 4099)
    gen = torch.Generator().manual_seed(b * 31 + v)
    logits = random_logits(b, v, gen=gen, dtype=dtype)
    logits[1, v // 2] = float("nan")
    logits[2] = float("-inf")
    params = mixed_params(b, v, gen=gen)
    with_lp = call(backend, logits, **params, check_nan=False)
    without = call(backend, logits, **params, check_nan=False, return_logprobs=False)
    assert without.logprobs is None
    assert torch.equal(without.token_ids, with_lp.token_ids)
    assert with_lp.token_ids[1] == -1 and with_lp.token_ids[2] == -1 and (with_lp.token_ids[3:] >= 0).all()
    rows = [params[n] for n in SamplingParams._fields]
    tok, lp = impls.get(backend)(logits, *rows, None, None, 0, 0, False)   # the implementation itself
    assert torch.equal(tok, with_lp.token_ids) and lp.shape == (0,) and lp.dtype == torch.float32


def test_reference_logprob_is_log_softmax_of_unmodified_logits():
    gen = torch.Generator().manual_seed(1)
    logits = random_logits(16, 333, gen=gen)
    out = tk.sample(logits, temperature=0.5, top_k=3, seed=torch.arange(16), backend="reference")
    expect = torch.log_softmax(logits, dim=1).gather(1, out.token_ids.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(out.logprobs, expect)


def test_auto_dispatch_matches_selected_backend():
    gen = torch.Generator().manual_seed(2)
    logits = random_logits(8, 500, gen=gen)
    params = mixed_params(8, 500, gen=gen)
    from tts_kernels import _ext

    expected = "cpp" if _ext.has_kernel("tts_kernels_C::sample_cpu") else "reference"
    a, b = call("auto", logits, **params), call(expected, logits, **params)
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.logprobs, b.logprobs)


# ---------------------------------------------------------------------------
# Statistics: empirical frequencies against the reference distribution
# ---------------------------------------------------------------------------
def expected_probs(logits_row, temperature, top_k, top_p, min_p):
    z = logits_row.float().view(1, -1) / temperature
    keep = filter_mask(z, torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p]))[0]
    keep &= torch.isfinite(z[0])
    p = torch.softmax(z[0].double(), dim=0) * keep
    return p / p.sum(), keep


@pytest.mark.parametrize("config", [
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=0.7, top_k=6, top_p=1.0, min_p=0.0),
    dict(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
    dict(temperature=0.9, top_k=10, top_p=0.9, min_p=0.02),
], ids=["plain", "top_k", "top_p", "min_p", "all"])
def test_frequencies_match_distribution(backend, config):
    v = 24
    # the interpreted Triton kernel (~0.1-0.3 s a row on this CPU) draws fewer rows, and each of its
    # decisive rows must also equal the reference's token (whose own frequencies run at 6000 rows)
    n = 240 if is_small(backend) else 6000
    gen = torch.Generator().manual_seed(11)
    row = torch.randn(v, generator=gen) * 1.5
    row[[3, 17]] = float("-inf")
    logits = row.expand(n, v).contiguous()
    seed = torch.arange(n) * 7 + 1
    out = call(backend, logits, seed=seed, offset=5, **config)
    if is_small(backend):
        full = {k: torch.full((n,), float(val)) for k, val in config.items()}
        full["top_k"] = full.get("top_k", torch.zeros(n)).int()
        full.setdefault("top_p", torch.ones(n))
        full.setdefault("min_p", torch.zeros(n))
        ok = decisive_rows(logits, full["temperature"], full["top_k"], full["top_p"], full["min_p"], seed,
                           torch.full((n,), 5))
        ref = call("reference", logits, seed=seed, offset=5, **config)
        assert ok.float().mean() > 0.9 and torch.equal(out.token_ids[ok], ref.token_ids[ok])
    p, keep = expected_probs(row, **config)
    counts = torch.bincount(out.token_ids, minlength=v).double()
    assert counts[~keep].sum() == 0, "a filtered-out or -inf token was drawn"
    exp = p[keep] * n
    obs = counts[keep]
    big = exp >= 5  # pool small bins so the chi-square approximation holds
    f_obs = torch.cat([obs[big], obs[~big].sum().view(1)]) if (~big).any() else obs
    f_exp = torch.cat([exp[big], exp[~big].sum().view(1)]) if (~big).any() else exp
    _, pvalue = stats.chisquare(f_obs.numpy(), f_exp.numpy())
    assert pvalue > 1e-4, f"frequencies differ from the distribution (p={pvalue:.2e})"


def test_frequencies_over_offsets_with_one_seed(backend):
    """Successive offsets of one seed behave like independent draws."""
    v, n = 8, (300 if is_small(backend) else 4000)
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, float("-inf")])
    logits = row.expand(n, v).contiguous()
    out = call(backend, logits, seed=1234, offset=torch.arange(n))
    p = torch.softmax(row.double(), 0)
    counts = torch.bincount(out.token_ids, minlength=v).double()
    assert counts[7] == 0
    _, pvalue = stats.chisquare(counts[:7].numpy(), (p[:7] * n).numpy())
    assert pvalue > 1e-4


def test_top_k_one_and_tiny_top_p_are_argmax(backend):
    gen = torch.Generator().manual_seed(3)
    logits = random_logits(10, 200, gen=gen)
    am = torch.argmax(logits, dim=1)
    for kw in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        out = call(backend, logits, temperature=1.0, seed=torch.arange(10), **kw)
        assert torch.equal(out.token_ids, am), kw


def test_greedy_ties_take_lowest_index(backend):
    logits = torch.zeros(3, 50)
    logits[0, [7, 30]] = 5.0
    logits[1, [0, 49]] = 1.0
    logits[2] = float("-inf")
    logits[2, [11, 12]] = -3.0
    out = call(backend, logits, temperature=0.0, seed=0)
    assert out.token_ids.tolist() == [7, 0, 11]


def test_greedy_rule_at_extreme_temperatures(backend):
    """params.greedy_rows: below 2**-126 (0 and the subnormals) or with max(x) / T overflowing, a row is
    greedy; a tiny normal T whose z stays finite samples, which here is the argmax as well (the
    runner-up is 1e-3 below, exp(-1e-3 / 1e-30) = 0). Each row's maximum sits in a later group of
    256 than its runner-up, so a +inf z dropped or an overflowed scale would show."""
    V = 300
    temps = [0.0, 1e-45, 2.0 ** -127, 2.0 ** -126, 1e-38, 1e-30, 1e-6, 0.5, 1.0, 1e-45, 2.0 ** -126, 0.5]
    B = len(temps)
    gen = torch.Generator().manual_seed(11)
    logits = random_logits(B, V, gen=gen)
    best = torch.tensor([260 + r % 40 for r in range(B)])
    logits[torch.arange(B), best] = 20.0
    logits[torch.arange(B), best - 250] = 20.0 - 1e-3
    logits[7:9, 3] = 2e38          # huge finite logits: z = 4e38 overflows at T = 0.5, not at T = 1
    logits[[7, 8], best[7:9]] = 3e38
    logits[9] = -logits[9].abs()   # max(x) = 0: z = 0 / T stays finite, T is subnormal: greedy
    logits[9, best[9]] = 0.0
    logits[10, best[10] - 1] = 20.0   # a tie at the maximum with max(x) / T overflowing: the first index
    best[10] -= 1
    logits[11] = -3.3e38              # max(x) / T overflows to -inf: every z would be -inf
    logits[11, best[11]] = -3.0e38
    logits[11, best[11] - 250] = -3.05e38
    T = torch.tensor(temps)
    seeds = torch.arange(B)
    out = call(backend, logits, temperature=T, seed=seeds)
    ref = call("reference", logits, temperature=T, seed=seeds)
    assert out.token_ids.tolist() == best.tolist()
    assert ref.token_ids.tolist() == best.tolist()
    torch.testing.assert_close(out.logprobs, torch.log_softmax(logits.double(), 1).float()[torch.arange(B), best])
    # filters on the same rows: the greedy rule comes first, and a sampled row's filters keep its maximum
    for kw in (dict(top_k=5), dict(top_p=0.9), dict(min_p=0.5)):
        got = call(backend, logits, temperature=T, seed=seeds, **kw)
        assert got.token_ids.tolist() == best.tolist(), kw


def test_greedy_threshold_is_the_smallest_normal_temperature(backend):
    """Where each backend puts the rule's temperature: two tokens one T apart (z = -1 and 0), the
    maximum second. Below 2**-126 the row is greedy (always the maximum); at 2**-126 and at 1e-30 it
    samples (the runner-up with probability e^-1 / (1 + e^-1) = 0.27: 17 of 64 rows expected)."""
    n = 64
    seeds = torch.arange(n) * 7919 + 1
    for T, gap, greedy in ((2.0 ** -127, 2.0 ** -126, True), (2.0 ** -126, 2.0 ** -126, False),
                           (1e-30, 1e-30, False)):
        logits = torch.tensor([[-gap, 0.0]]).repeat(n, 1)
        toks = call(backend, logits, temperature=T, seed=seeds).token_ids
        runner_up = int((toks == 0).sum())
        if greedy:
            assert runner_up == 0, (T, runner_up)
        else:
            assert 4 <= runner_up <= 34, (T, runner_up)


def test_nan_temperature_is_an_invalid_row(backend):
    gen = torch.Generator().manual_seed(12)
    logits = random_logits(4, 300, gen=gen)
    T = torch.tensor([0.7, float("nan"), 0.0, float("nan")])
    with pytest.raises(ValueError, match=r"temperature\[1\]"):
        call(backend, logits, temperature=T, seed=0)
    bf = tk.BudgetForcing(end_think_ids=[2], wait_ids=[3])
    state = bf.init_state(4, min_tokens=0, max_tokens=5)
    before = state.data.clone()
    seeds = torch.arange(4)
    with pytest.raises(ValueError, match=r"temperature\[1\] is NaN"):
        call(backend, logits, temperature=T, seed=seeds, validate=False)
    out = call(backend, logits, temperature=T, seed=seeds, budget=state, validate=False, check_nan=False)
    bad = torch.isnan(T)
    assert (out.token_ids[bad] == -1).all() and torch.isnan(out.logprobs[bad]).all()
    assert torch.equal(state.data[bad], before[bad]), "an invalid row's budget state changed"
    assert not torch.equal(state.data[~bad], before[~bad])
    ok = call(backend, logits[~bad], temperature=T[~bad], seed=seeds[~bad])
    assert torch.equal(out.token_ids[~bad], ok.token_ids)
    # rows a budget rule forces (the end at max_tokens = 0) or masks (an early end, no Wait ids)
    for forcing, lo, hi in ((tk.BudgetForcing(end_think_ids=[2], wait_ids=[3]), 0, 0),
                            (tk.BudgetForcing(end_think_ids=[2]), 3, 8)):
        state = forcing.init_state(4, min_tokens=lo, max_tokens=hi)
        before = state.data.clone()
        out = call(backend, logits, temperature=T, seed=seeds, budget=state, validate=False, check_nan=False)
        assert (out.token_ids[bad] == -1).all() and torch.isnan(out.logprobs[bad]).all()
        assert torch.equal(state.data[bad], before[bad]), "an invalid row's budget state changed"
        assert (out.token_ids[~bad] >= 0).all() and not torch.equal(state.data[~bad], before[~bad])
        if hi == 0:
            assert (out.token_ids[~bad] == 2).all()


# ---------------------------------------------------------------------------
# Determinism and batch invariance
# ---------------------------------------------------------------------------
def test_same_inputs_same_tokens(backend):
    gen = torch.Generator().manual_seed(4)
    b, v = (6, 300) if is_small(backend) else (32, 3001)
    logits = random_logits(b, v, gen=gen)
    params = mixed_params(b, v, gen=gen)
    a, c = call(backend, logits, **params), call(backend, logits, **params)
    assert torch.equal(a.token_ids, c.token_ids)
    torch.manual_seed(0)
    d = call(backend, logits, temperature=1.0)
    torch.manual_seed(0)
    e = call(backend, logits, temperature=1.0)
    assert torch.equal(d.token_ids, e.token_ids), "seed=None must follow torch's default generator"


def test_row_does_not_depend_on_batch(backend):
    gen = torch.Generator().manual_seed(5)
    b, v = (7, 250) if is_small(backend) else (40, 2000)
    logits = random_logits(b, v, gen=gen)
    params = mixed_params(b, v, gen=gen)
    full = call(backend, logits, **params)
    perm = torch.randperm(b, generator=gen)
    shuffled = call(backend, logits[perm], **{k: t[perm] for k, t in params.items()})
    assert torch.equal(shuffled.token_ids, full.token_ids[perm])
    for i in (0, b // 2, b - 1):
        alone = call(backend, logits[i:i + 1], **{k: t[i:i + 1] for k, t in params.items()})
        assert alone.token_ids.item() == full.token_ids[i].item()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_padded_rows_equal_contiguous(backend, dtype):
    """Rows of an odd vocabulary padded to a multiple of 16 (aligned row starts: the GPU kernel's
    16-byte loads) give the same tokens and logprobs as the contiguous rows; the padding (NaN
    here) is never read. A non-unit stride along V is copied, not misread."""
    gen = torch.Generator().manual_seed(11)
    b, v = (5, 201) if is_small(backend) else (33, 2049)
    vpad = (v + 15) // 16 * 16
    dense = random_logits(b, v, gen=gen, dtype=dtype)
    buf = torch.full((b, vpad), float("nan"), dtype=dtype)
    buf[:, :v] = dense
    padded = buf[:, :v]
    assert padded.stride() == (vpad, 1)
    params = mixed_params(b, v, gen=gen)
    want = call(backend, dense, **params)
    for view in (padded, dense.t().contiguous().t()):
        got = call(backend, view, **params)
        assert torch.equal(got.token_ids, want.token_ids)
        torch.testing.assert_close(got.logprobs, want.logprobs, rtol=0, atol=0, equal_nan=True)


def test_different_seeds_give_different_draws(backend):
    logits = torch.zeros(64, 100)
    out = call(backend, logits, seed=torch.arange(64))
    assert out.token_ids.unique().numel() > 30


def test_empty_batch(backend):
    out = call(backend, torch.zeros(0, 10))
    assert out.token_ids.shape == (0,) and out.logprobs.shape == (0,)


# ---------------------------------------------------------------------------
# Invalid rows
# ---------------------------------------------------------------------------
def _bad_rows_logits():
    gen = torch.Generator().manual_seed(6)
    logits = random_logits(6, 77, gen=gen)
    logits[1, 5] = float("nan")
    logits[3] = float("nan")
    logits[4] = float("-inf")
    logits[5, 9] = float("inf")
    return logits


def test_nan_rows_raise_with_check(backend):
    with pytest.raises(ValueError, match="logits row 1"):
        call(backend, _bad_rows_logits(), seed=0)


def test_nan_rows_give_minus_one_without_check(backend):
    logits = _bad_rows_logits()
    bf = tk.BudgetForcing(end_think_ids=[2], wait_ids=[3])
    state = bf.init_state(6, min_tokens=0, max_tokens=0)
    before = state.data.clone()
    seeds = torch.arange(6)
    out = call(backend, logits, seed=seeds, budget=state, check_nan=False)
    bad = torch.tensor([False, True, False, True, True, True])
    assert (out.token_ids[bad] == -1).all() and torch.isnan(out.logprobs[bad]).all()
    assert torch.equal(state.data[bad], before[bad]), "an invalid row's budget state changed"
    assert (out.token_ids[~bad] == 2).all(), "valid rows at max_tokens=0 must emit the end token"
    good = call(backend, logits[~bad], seed=seeds[~bad], check_nan=False)
    plain = call(backend, logits, seed=seeds, check_nan=False)
    assert torch.equal(plain.token_ids[~bad], good.token_ids)


# ---------------------------------------------------------------------------
# Budget forcing
# ---------------------------------------------------------------------------
END, WAIT, ANSWER = [5, 6], [7, 8, 9], [10, 11, 12]
V_BF = 48


def run_budget(backend, min_tokens, max_tokens, min_waits, end_bias, steps, *, forcing=None, seed=0,
               return_logprobs=True):
    """Decode ``steps`` tokens from a scripted model; returns (tokens [B, steps], state)."""
    b = len(min_tokens)
    forcing = forcing or tk.BudgetForcing(end_think_ids=END, wait_ids=WAIT, answer_prefix_ids=ANSWER)
    state = forcing.init_state(b, min_tokens=torch.tensor(min_tokens), max_tokens=torch.tensor(max_tokens),
                               min_waits=torch.tensor(min_waits))
    gen = torch.Generator().manual_seed(seed)
    seeds = torch.arange(b) + 100 * seed
    tokens = []
    for step in range(steps):
        logits = torch.randn(b, V_BF, generator=gen)
        logits[:, forcing.end_think_ids[0]] += torch.tensor(end_bias, dtype=torch.float32)
        for t in set(forcing.forced_ids):  # the model never produces forced tokens itself...
            if t != forcing.end_think_ids[0]:
                logits[:, t] = float("-inf")
        out = call(backend, logits, temperature=1.0, top_p=0.95, seed=seeds, offset=step, budget=state,
                   return_logprobs=return_logprobs)
        assert (out.logprobs is None) == (not return_logprobs)
        tokens.append(out.token_ids)
    return torch.stack(tokens, 1), state


def thinking_length(row_tokens, end0):
    hits = (row_tokens == end0).nonzero()
    return int(hits[0, 0]) if hits.numel() else None


# rows: eager to end early / never ends (end logit -inf) / neutral; mixed budgets
BF_MIN = [0, 4, 10, 3, 0, 6, 2, 0]
BF_MAX = [6, 12, 10, 20, 0, 30, 15, -1]
BF_WAITS = [0, 2, 0, 1, 0, 3, 0, 0]
BF_BIAS = [8.0, 8.0, float("-inf"), 0.0, 0.0, 8.0, float("-inf"), 3.0]


def test_budget_forcing_rules(backend):
    tokens, state = run_budget(backend, BF_MIN, BF_MAX, BF_WAITS, BF_BIAS, steps=40)
    for i in range(len(BF_MIN)):
        row = tokens[i]
        if BF_MAX[i] < 0:
            continue
        t = thinking_length(row, END[0])
        assert t is not None, f"row {i} never ended thinking"
        assert t <= BF_MAX[i], f"row {i} thought {t} > max {BF_MAX[i]}"
        thinking = row[:t].tolist()
        waits = [j for j, tok in enumerate(thinking) if tok == WAIT[0]]
        for j in waits:  # Wait sequences whole, unless the maximum cut them
            assert thinking[j:j + len(WAIT)] == WAIT[:min(len(WAIT), t - j)], f"row {i}: broken Wait at {j}"
        if t == BF_MAX[i] and BF_BIAS[i] == float("-inf"):
            # forced at the maximum even though the model gives the delimiter -inf
            assert row[t:t + len(END) + len(ANSWER)].tolist() == END + ANSWER
        if t < BF_MAX[i]:
            assert t >= BF_MIN[i], f"row {i} ended at {t} before min {BF_MIN[i]}"
            assert len(waits) >= BF_WAITS[i], f"row {i} ended with {len(waits)} < {BF_WAITS[i]} waits"
            assert row[t:t + len(END)].tolist() == END
        assert int(state.num_thinking[i]) == t and int(state.phase[i]) == 2
    eager = [i for i in range(len(BF_MIN)) if BF_BIAS[i] > 5 and BF_MIN[i] + BF_WAITS[i] > 0]
    assert any(int(state.waits_used[i]) > 0 for i in eager), "no Wait was ever inserted: test is vacuous"


def test_budget_rows_without_budget_are_untouched(backend):
    with_budget, _ = run_budget(backend, BF_MIN, BF_MAX, BF_WAITS, BF_BIAS, steps=25)
    none = [-1] * len(BF_MIN)
    without, state = run_budget(backend, [0] * len(BF_MIN), none, [0] * len(BF_MIN), BF_BIAS, steps=25)
    assert torch.equal(with_budget[-1], without[-1])
    assert (state.num_thinking == 0).all() and (state.phase == 2).all()


@pytest.mark.parametrize("waits", [True, False], ids=["wait", "no-wait"])
def test_budget_without_logprobs(backend, waits):
    """Budget forcing without logprobs: the same tokens and states as with them (without Wait ids the early end
    is masked: the C++ kernel's second stats pass)."""
    forcing = tk.BudgetForcing(end_think_ids=END, wait_ids=WAIT if waits else [], answer_prefix_ids=ANSWER)
    a, s1 = run_budget(backend, BF_MIN, BF_MAX, BF_WAITS, BF_BIAS, steps=20, seed=5, forcing=forcing)
    b, s2 = run_budget(backend, BF_MIN, BF_MAX, BF_WAITS, BF_BIAS, steps=20, seed=5, forcing=forcing,
                       return_logprobs=False)
    assert torch.equal(a, b)
    assert torch.equal(s1.data, s2.data)


def test_budget_matches_reference(backend):
    got, s1 = run_budget(backend, BF_MIN, BF_MAX, BF_WAITS, BF_BIAS, steps=30, seed=3)
    ref, s2 = run_budget("reference", BF_MIN, BF_MAX, BF_WAITS, BF_BIAS, steps=30, seed=3)
    assert torch.equal(got, ref)
    assert torch.equal(s1.data, s2.data)


def test_budget_exact_max_without_natural_end(backend):
    """A row that never ends on its own thinks exactly max_tokens tokens, Waits included."""
    maxes = [0, 1, 5, 9]
    tokens, state = run_budget(backend, [0, 1, 3, 9], maxes, [0, 0, 2, 0], [float("-inf")] * 4, steps=16)
    for i, m in enumerate(maxes):
        assert tokens[i, :m].ne(END[0]).all()
        assert tokens[i, m:m + 5].tolist() == END + ANSWER
        assert int(state.num_thinking[i]) == m


def test_budget_max_drops_pending_wait(backend):
    """min_waits forces a 3-token Wait at step 0; max_tokens=2 cuts it after two tokens."""
    tokens, state = run_budget(backend, [0], [2], [1], [50.0], steps=8)
    assert tokens[0, :2].tolist() == WAIT[:2]
    assert thinking_length(tokens[0], END[0]) == 2
    assert tokens[0, 2:7].tolist() == END + ANSWER
    assert int(state.waits_used[0]) == 1 and int(state.num_thinking[0]) == 2


def test_budget_without_wait_ids_masks_early_end(backend):
    forcing = tk.BudgetForcing(end_think_ids=[END[0]], wait_ids=[], answer_prefix_ids=[])
    tokens, state = run_budget(backend, [5, 0], [8, 8], [0, 0], [12.0, 12.0], steps=10, forcing=forcing)
    assert thinking_length(tokens[0], END[0]) == 5, "early end must get probability 0 until min_tokens"
    assert thinking_length(tokens[1], END[0]) == 0
    assert int(state.waits_used.sum()) == 0


def test_budget_state_fork_with_index_select():
    bf = tk.BudgetForcing(end_think_ids=[1], wait_ids=[2])
    st = bf.init_state(2, min_tokens=torch.tensor([1, 2]), max_tokens=torch.tensor([5, 6]))
    st.data[:, 3] = torch.tensor([3, 4], dtype=torch.int32)
    forked = st.index_select(torch.tensor([1, 1, 0]))
    assert forked.num_thinking.tolist() == [4, 4, 3] and forked.batch_size == 3
    forked.data[0, 3] = 0
    assert st.num_thinking.tolist() == [3, 4], "forked state must not alias the original"
