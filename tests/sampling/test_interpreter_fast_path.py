"""The test suite's speed-ups of Triton's interpreter (``tests/helpers/interpreter.py``) change no result:
the pairwise ``tl.reduce`` against Triton's element-by-element fold, and the sampler's outputs and budget
state with and without the speed-ups. Interpreter only (on a GPU there is nothing to check)."""
import os

import numpy as np
import pytest
import torch

from helpers import interpreter
from helpers.backends import require_triton
from helpers.sampling import mixed_params, random_logits

require_triton()
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("checks the Triton interpreter's speed-ups (TRITON_INTERPRET=1)", allow_module_level=True)
if os.environ.get("TTS_INTERPRETER_FAST") == "0":
    pytest.skip("the interpreter's speed-ups are off (TTS_INTERPRETER_FAST=0)", allow_module_level=True)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # interpreter: -inf - -inf in masked lanes

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import tts_kernels as tk  # noqa: E402
from tts_kernels.sampling.triton_kernel import _max_nan  # noqa: E402


@triton.jit
def _first(a, b):  # associative, not commutative: the fold's order shows
    return a


@triton.jit
def _argmax_left(va, ia, vb, ib):  # (value, index), the first index of the maximum
    take_b = (vb > va) | ((vb == va) & (ib < ia))
    return tl.where(take_b, vb, va), tl.where(take_b, ib, ia)


@triton.jit
def _in_order(la, ha, sa, lb, hb, sb):  # (first, last, ascending) of a run: associative, order-revealing
    return la, hb, sa & sb & (ha < lb)


@triton.jit
def _max_branching(a, b):  # a ternary on tensors: valid Triton, must fold element by element
    return a if a > b else b


@triton.jit
def _reduce_kernel(x_ptr, out_ptr, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    c = tl.arange(0, C)[None, :]
    x = tl.load(x_ptr + r * C + c)
    idx = r * C + c
    tl.store(out_ptr + tl.arange(0, C), tl.reduce(x, 0, _max_nan))
    tl.store(out_ptr + C + tl.arange(0, R), tl.reduce(x, 1, _max_nan))
    tl.store(out_ptr + C + R, tl.reduce(x, None, _max_nan))
    tl.store(out_ptr + C + R + 1 + tl.arange(0, C), tl.reduce(x, 0, _first))
    # associative without NaN; by axis (Triton 3.9's own fold flattens only the first of a tuple for axis=None)
    v, i = tl.reduce((tl.where(x == x, x, float("-inf")), idx), 1, _argmax_left)
    v, i = tl.reduce((v, i), 0, _argmax_left)
    tl.store(out_ptr + C + R + 1 + C, v)
    tl.store(out_ptr + C + R + 2 + C + tl.arange(0, R), tl.reduce(idx.to(tl.float32), 1, _first))
    tl.store(out_ptr + C + R + 2 + C + R, i.to(tl.float32))
    base = 2 * C + 2 * R + 3  # runs in order along axis 0, axis 1, and the whole (flattened) block
    ones = tl.full([R, C], 1, tl.int1)
    _, _, s0 = tl.reduce((idx, idx, ones), 0, _in_order)
    _, _, s1 = tl.reduce((idx, idx, ones), 1, _in_order)
    f = tl.reshape(idx, [R * C])
    _, _, sa = tl.reduce((f, f, tl.reshape(ones, [R * C])), 0, _in_order)
    tl.store(out_ptr + base + tl.arange(0, C), s0.to(tl.float32))
    tl.store(out_ptr + base + C + tl.arange(0, R), s1.to(tl.float32))
    tl.store(out_ptr + base + C + R, sa.to(tl.float32))
    y = tl.where(x == x, x, 0.0)
    tl.store(out_ptr + base + C + R + 1 + tl.arange(0, C), tl.reduce(y, 0, _max_branching))
    tl.store(out_ptr + base + 2 * C + R + 1 + tl.arange(0, C), tl.reshape(tl.reduce(x, 0, _max_nan, keep_dims=True), [C]))


@pytest.fixture
def both_ways():
    """Runs ``fn`` with Triton's own interpreter and with the speed-ups; leaves them as they were."""
    was = bool(interpreter._saved)

    def run(fn):
        interpreter.uninstall()
        try:
            slow = fn()
        finally:
            interpreter.install()
        assert interpreter.STATUS.startswith("on"), interpreter.STATUS
        return slow, fn()
    yield run
    if not was:
        interpreter.uninstall()


def _reduce_case(R, C, gen):
    x = torch.randn(R, C, generator=gen)
    x[torch.rand(R, C, generator=gen) < 0.2] = float("-inf")
    x[torch.rand(R, C, generator=gen) < 0.05] = float("nan")
    x[0, :] = x[0, :].round()  # ties for the argmax
    x[-1, :] = x[0, :]
    return x


@pytest.mark.parametrize("R, C", [(1, 8), (4, 16), (8, 2), (16, 32)])
def test_pairwise_reduce_equals_the_element_fold(both_ways, R, C):
    gen = torch.Generator().manual_seed(R * 100 + C)
    x = _reduce_case(R, C, gen)
    x[R // 2, 0] = float("nan")  # one NaN column; the others' maxima are finite

    def run():
        out = torch.full((5 * C + 3 * R + 4,), -7.0)
        _reduce_kernel[(1,)](x, out, R, C)
        return out
    slow, fast = both_ways(run)
    torch.testing.assert_close(fast, slow, rtol=0, atol=0, equal_nan=True)
    # and what the fold must give: NaN-propagating maxima, the first row, the first index of the maximum,
    # runs in order, the branching maximum
    ref = x.numpy()
    np.testing.assert_array_equal(fast[:C].numpy(), np.max(ref, 0))
    np.testing.assert_array_equal(fast[C:C + R].numpy(), np.max(ref, 1))
    assert fast[:C].isnan().any() and fast[:C].isfinite().any()  # both kinds of column
    np.testing.assert_array_equal(fast[C + R + 1:C + R + 1 + C].numpy(), ref[0])
    np.testing.assert_array_equal(fast[C + R + 2 + C:C + R + 2 + C + R].numpy(), np.arange(R) * C)
    nonan = np.where(np.isnan(ref), -np.inf, ref).reshape(-1)
    assert fast[2 * C + 2 * R + 2] == int(np.argmax(nonan)) and fast[2 * C + R + 1] == nonan.max()
    base = 2 * C + 2 * R + 3
    assert (fast[base:base + C + R + 1] == 1).all()
    np.testing.assert_array_equal(fast[base + C + R + 1:base + 2 * C + R + 1].numpy(),
                                  np.max(np.where(np.isnan(ref), 0.0, ref), 0))
    np.testing.assert_array_equal(fast[base + 2 * C + R + 1:base + 3 * C + R + 1].numpy(), np.max(ref, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sampler_same_with_and_without(both_ways, dtype):
    gen = torch.Generator().manual_seed(11)
    B, V = 10, 300
    x = random_logits(B, V, gen=gen, dtype=dtype)
    x[3, 17] = float("nan")
    x[5] = float("-inf")
    p = mixed_params(B, V, gen=gen)
    forcing = tk.BudgetForcing(end_think_ids=[5, 6], wait_ids=[7, 8], answer_prefix_ids=[9])
    min_t = torch.randint(0, 4, (B,), generator=gen)

    def run():
        state = forcing.init_state(B, min_tokens=min_t, max_tokens=min_t + 3)
        outs = []
        for step in range(2):
            o = tk.sample(x, backend="triton", **{**p, "offset": p["offset"] + step}, budget=state, check_nan=False)
            outs += [o.token_ids, o.logprobs]
        return outs + [state.data.clone()]
    slow, fast = both_ways(run)
    for a, b in zip(slow, fast):
        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)
    assert slow[1].isnan().any() and (slow[0] >= 0).sum() >= B - 2  # the NaN rows, and draws for the rest


def test_installed_on_the_tritons_ci_runs():
    """Both speed-ups take on Triton >= 3.8 (the test stage's is the newest release): a silent fallback
    would more than double the stage's time. A newer Triton that changed these internals fails here."""
    if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 8):
        pytest.skip(f"triton {triton.__version__}: {interpreter.STATUS}")
    assert interpreter.STATUS.startswith("on") and "not:" not in interpreter.STATUS, interpreter.STATUS
