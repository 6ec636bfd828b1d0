"""The sampler's public surface: bad input, op registration (opcheck), torch.compile."""
from __future__ import annotations

import pytest
import torch

import tts_kernels as tk

B, V = 4, 32
GOOD = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0, offset=0)


def logits():
    return torch.randn(B, V)


BAD_CALLS = [
    # (description, logits factory, kwargs, exception, message fragment)
    ("logits not a tensor", lambda: [[0.0] * V] * B, {}, TypeError, "logits"),
    ("logits rank 1", lambda: torch.randn(V), {}, ValueError, "logits"),
    ("logits rank 3", lambda: torch.randn(B, V, 1), {}, ValueError, "logits"),
    ("logits int", lambda: torch.zeros(B, V, dtype=torch.int32), {}, TypeError, "logits"),
    ("logits float64", lambda: torch.zeros(B, V, dtype=torch.float64), {}, TypeError, "logits"),
    ("empty vocabulary", lambda: torch.zeros(B, 0), {}, ValueError, "logits"),
    ("negative temperature", logits, dict(temperature=-0.1), ValueError, "temperature"),
    ("nan temperature", logits, dict(temperature=float("nan")), ValueError, "temperature"),
    ("inf temperature", logits, dict(temperature=float("inf")), ValueError, "temperature"),
    ("negative temperature row", logits, dict(temperature=torch.tensor([1.0, -1.0, 1.0, 1.0])), ValueError,
     r"temperature\[1\]"),
    ("top_k negative", logits, dict(top_k=-1), ValueError, "top_k"),
    ("top_k float", logits, dict(top_k=2.5), TypeError, "top_k"),
    ("top_k float tensor", logits, dict(top_k=torch.ones(B)), TypeError, "top_k"),
    ("top_p zero", logits, dict(top_p=0.0), ValueError, "top_p"),
    ("top_p above one", logits, dict(top_p=1.5), ValueError, "top_p"),
    ("top_p row", logits, dict(top_p=torch.tensor([0.5, 0.5, 2.0, 0.5])), ValueError, r"top_p\[2\]"),
    ("min_p negative", logits, dict(min_p=-0.5), ValueError, "min_p"),
    ("min_p above one", logits, dict(min_p=1.01), ValueError, "min_p"),
    ("seed float", logits, dict(seed=1.5), TypeError, "seed"),
    ("seed wrong length", logits, dict(seed=torch.arange(B + 1)), ValueError, "seed"),
    ("offset bool", logits, dict(offset=True), TypeError, "offset"),
    ("temperature wrong shape", logits, dict(temperature=torch.ones(B, 1)), ValueError, "temperature"),
    ("budget not a state", logits, dict(budget="x"), TypeError, "budget"),
    ("budget wrong batch", logits,
     dict(budget=tk.BudgetForcing(end_think_ids=[1]).init_state(B + 1, max_tokens=3)), ValueError, "budget"),
    ("end id outside V", logits,
     dict(budget=tk.BudgetForcing(end_think_ids=[V]).init_state(B, max_tokens=3)), ValueError, "end_think_ids"),
    ("wait id outside V", logits,
     dict(budget=tk.BudgetForcing(end_think_ids=[1], wait_ids=[V + 5]).init_state(B, max_tokens=3)), ValueError,
     "wait_ids"),
    ("answer id outside V", logits,
     dict(budget=tk.BudgetForcing(end_think_ids=[1], answer_prefix_ids=[2, 99]).init_state(B, max_tokens=3)),
     ValueError, "answer_prefix_ids"),
    ("top_k beyond int32", logits, dict(top_k=2 ** 40), ValueError, "top_k"),
    ("seed beyond int64", logits, dict(seed=2 ** 70), ValueError, "seed"),
    ("check_nan not bool", logits, dict(check_nan="yes"), TypeError, "check_nan"),
    ("return_logprobs not bool", logits, dict(return_logprobs=1), TypeError, "return_logprobs"),
    ("unknown backend", logits, dict(backend="cuda-magic"), ValueError, "backend"),
]


@pytest.mark.parametrize("desc,make,kwargs,exc,match", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises(desc, make, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tk.sample(make(), **kwargs)


BAD_BUDGETS = [
    (dict(end_think_ids=[]), {}, ValueError, "end_think_ids"),
    (dict(end_think_ids=[-1]), {}, ValueError, "end_think_ids"),
    (dict(end_think_ids=["a"]), {}, TypeError, "end_think_ids"),
    (dict(end_think_ids=[1]), dict(min_tokens=5, max_tokens=3), ValueError, "min_tokens"),
    (dict(end_think_ids=[1]), dict(min_tokens=torch.tensor([0, 9]), max_tokens=torch.tensor([4, 4])), ValueError,
     "min_tokens"),
    (dict(end_think_ids=[1]), dict(max_tokens=torch.tensor([1, 2, 3])), ValueError, "max_tokens"),
    (dict(end_think_ids=[1]), dict(max_tokens=2.5), TypeError, "max_tokens"),
    (dict(end_think_ids=[1]), dict(min_waits=-1, max_tokens=4), ValueError, "min_waits"),
    (dict(end_think_ids=[1]), dict(max_tokens=2 ** 33), ValueError, "max_tokens"),
    (dict(end_think_ids=[1]), dict(max_tokens=torch.tensor([5, 2 ** 32 + 5])), ValueError, "max_tokens"),
]


@pytest.mark.parametrize("forcing,state_kw,exc,match", BAD_BUDGETS)
def test_bad_budget_raises(forcing, state_kw, exc, match):
    with pytest.raises(exc, match=match):
        tk.BudgetForcing(**forcing).init_state(2, **state_kw)


def test_masked_only_end_token_raises_with_check_nan():
    """Below its minimum with no Wait ids, a row whose only finite logit is the end has nothing to draw."""
    lg = torch.full((2, 8), float("-inf"))
    lg[:, 3] = 0.0
    lg[1, 5] = 0.0
    st = tk.BudgetForcing(end_think_ids=[3]).init_state(2, min_tokens=4, max_tokens=9)
    with pytest.raises(ValueError, match="logits row 0: no token can be drawn"):
        tk.sample(lg, seed=0, budget=st)
    out = tk.sample(lg, seed=0, budget=st, check_nan=False)
    assert out.token_ids.tolist() == [-1, 5]


def test_device_mismatch_is_rejected():
    meta = torch.empty(B, V, device="meta")
    with pytest.raises(ValueError, match="seed"):
        tk.sample(meta, seed=torch.arange(B))


def test_no_budget_row_with_min_above_negative_max_is_allowed():
    st = tk.BudgetForcing(end_think_ids=[1]).init_state(2, min_tokens=5, max_tokens=torch.tensor([-1, 7]))
    assert st.phase.tolist() == [2, 0]


# ---------------------------------------------------------------------------
# Registered op
# ---------------------------------------------------------------------------
def _op_args(with_budget: bool, return_logprobs: bool = True):
    lg = torch.randn(B, V)
    t = torch.tensor([1.0, 0.0, 0.7, 1.2])
    k = torch.tensor([0, 0, 5, 3], dtype=torch.int32)
    p = torch.tensor([1.0, 1.0, 0.9, 0.5])
    mp = torch.tensor([0.0, 0.0, 0.05, 0.0])
    seed = torch.arange(B, dtype=torch.int64)
    off = torch.full((B,), 3, dtype=torch.int64)
    if not with_budget:
        return (lg, t, k, p, mp, seed, off, None, None, 0, 0, return_logprobs)
    st = tk.BudgetForcing(end_think_ids=[1, 2], wait_ids=[3], answer_prefix_ids=[4]).init_state(
        B, min_tokens=torch.tensor([0, 2, 1, 0]), max_tokens=torch.tensor([0, 5, 3, -1]))
    return (lg, t, k, p, mp, seed, off, st.data, st.forced_ids_tensor(), 1, 2, return_logprobs)


@pytest.mark.parametrize("return_logprobs", [True, False], ids=["logprobs", "no-logprobs"])
@pytest.mark.parametrize("with_budget", [False, True])
def test_opcheck(with_budget, return_logprobs):
    torch.library.opcheck(torch.ops.tts_kernels.sample.default, _op_args(with_budget, return_logprobs))


def test_op_default_returns_logprobs():
    """The schema's default (``return_logprobs=True``) serves callers that pass the arguments before it only."""
    tok, lp = torch.ops.tts_kernels.sample(*_op_args(False)[:-1])
    assert tok.shape == (B,) and lp.shape == (B,) and torch.isfinite(lp).all()


def test_torch_compile_fullgraph_matches_eager():
    bf = tk.BudgetForcing(end_think_ids=[1], wait_ids=[2], answer_prefix_ids=[3])

    def step(lg, seeds, offset, state):
        out = tk.sample(lg, temperature=0.8, top_p=0.9, min_p=0.01, seed=seeds, offset=offset, budget=state,
                        check_nan=False)
        return out.token_ids, out.logprobs

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")

    def step_tokens(lg, seeds, offset, state):   # without logprobs: the fake's empty second output
        out = tk.sample(lg, temperature=0.8, top_p=0.9, min_p=0.01, seed=seeds, offset=offset, budget=state,
                        check_nan=False, return_logprobs=False)
        assert out.logprobs is None
        return out.token_ids

    compiled_tokens = torch.compile(step_tokens, fullgraph=True, backend="aot_eager")
    s_tokens = bf.init_state(B, min_tokens=1, max_tokens=4)
    s_eager = bf.init_state(B, min_tokens=1, max_tokens=4)
    s_comp = bf.init_state(B, min_tokens=1, max_tokens=4)
    seeds = torch.arange(B)
    for i in range(6):
        lg = torch.randn(B, V)
        a = step(lg, seeds, i, s_eager)
        b = compiled(lg, seeds, i, s_comp)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(s_eager.data, s_comp.data)
        assert torch.equal(compiled_tokens(lg, seeds, i, s_tokens), a[0])
        assert torch.equal(s_tokens.data, s_eager.data)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_row_validity(dtype):
    """The invalid-row rule (no NaN, no +inf, a finite logit), on rows long enough for vectorised
    reductions, each defect alone and at either end of the row; -inf entries are valid."""
    from tts_kernels.sampling.reference import row_validity

    V = 4099
    x = torch.randn(9, V).to(dtype)
    x[1, 0] = float("nan")
    x[2, V - 1] = float("nan")
    x[3, V - 1] = float("inf")
    x[4] = float("-inf")
    x[5, :V - 1] = float("-inf")           # one finite logit at the end: valid
    x[6, 17] = float("-inf")               # -inf entries: valid
    x[7] = float("-inf")
    x[7, 3] = float("nan")                 # NaN among -inf
    x[8, 5] = float("-inf")
    x[8, 6] = float("inf")                 # +inf beside -inf
    assert row_validity(x).tolist() == [True, False, False, False, False, True, True, False, False]


@pytest.mark.parametrize("row,kind", [(2, "nan"), (3, "+inf"), (4, "no finite")])
def test_check_nan_names_the_row(row, kind):
    """check_nan=True raises naming the bad row (one read of the logits); without it the row gets -1."""
    logits = torch.randn(6, 301)
    if kind == "nan":
        logits[row, 300] = float("nan")
    elif kind == "+inf":
        logits[row, 0] = float("inf")
    else:
        logits[row] = float("-inf")
    with pytest.raises(ValueError, match=f"logits row {row} has a NaN"):
        tk.sample(logits, seed=0)
    out = tk.sample(logits, seed=0, check_nan=False)
    assert out.token_ids[row] == -1 and (out.token_ids[torch.arange(6) != row] >= 0).all()
