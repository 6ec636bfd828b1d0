"""The sampler's parameter record (tts_kernels/sampling/params.py) is the one list every layer follows."""
import inspect

import pytest
import torch

import tts_kernels as tk
from tts_kernels.sampling import impls, params
from tts_kernels.sampling.reference import sample_reference


def _positional_names(fn):
    return [n for n, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def test_implementations_take_the_record_in_order():
    order = ["logits", *params.SamplingParams._fields, *params.BUDGET_ARGS, *params.OUTPUT_ARGS]
    assert _positional_names(sample_reference) == order
    pytest.importorskip("triton")
    from tts_kernels.sampling.triton_kernel import sample_triton
    assert _positional_names(sample_triton) == order


def test_registered_op_schema_follows_the_record():
    names = ["logits", *params.SamplingParams._fields, *params.BUDGET_ARGS, *params.OUTPUT_ARGS]
    schema = torch.ops.tts_kernels.sample.default._schema
    assert [a.name for a in schema.arguments] == names
    assert [a.default_value for a in schema.arguments[-len(params.OUTPUT_ARGS):]] == [True] * len(params.OUTPUT_ARGS)
    if tk.extension_available():   # the C++ op spells its schema by hand (csrc/registration.cpp): the same list
        cpp = torch.ops.tts_kernels_C.sample_cpu.default._schema
        assert [a.name for a in cpp.arguments] == names
        assert [str(a.type) for a in cpp.arguments] == [str(a.type) for a in schema.arguments]
        assert [a.default_value for a in cpp.arguments] == [a.default_value for a in schema.arguments]


def test_in_use_needs_no_sync():
    values = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, offset=None)
    assert params.in_use(values) == frozenset()
    values.update(top_p=0.9, min_p=torch.zeros(3))
    assert params.in_use(values) == {"top_p", "min_p"}


@pytest.fixture
def cpp_without_min_p(monkeypatch):
    """The C++ kernel declared without min_p (as a newly added filter would be), spied on."""
    b = impls._backends
    calls = []
    real = b.impls["cpp"]
    monkeypatch.setitem(b.supports, "cpp", tuple(n for n in params.FILTER_NAMES if n != "min_p"))
    monkeypatch.setitem(b.impls, "cpp", lambda *a: (calls.append(1), real(*a))[1])
    return calls


def test_unsupported_filter_runs_on_the_reference(cpp_without_min_p):
    if not tk.extension_available():
        pytest.skip("needs the C++ extension")
    lg = torch.randn(5, 300)
    seed = torch.arange(5)
    out = tk.sample(lg, temperature=0.9, min_p=0.2, seed=seed, offset=4)
    ref = tk.sample(lg, temperature=0.9, min_p=0.2, seed=seed, offset=4, backend="reference")
    assert torch.equal(out.token_ids, ref.token_ids)
    with pytest.raises(ValueError, match="backend 'cpp' does not implement min_p"):
        tk.sample(lg, temperature=0.9, min_p=0.2, seed=seed, backend="cpp")
    tk.sample(lg, temperature=0.9, min_p=0.0, seed=seed, backend="cpp")  # off: the kernel may run it
    assert len(cpp_without_min_p) == 1


def test_greedy_rule():
    """params.greedy_rows, the one definition: below 2**-126, or max(x) / T infinite; NaN: not greedy
    (the row is invalid)."""
    T = torch.tensor([0.0, 1e-45, 2.0 ** -127, 2.0 ** -126, 2.0 ** -126, 1e-6, 0.5, 0.5, 0.5, float("nan"), 1.0])
    x = torch.tensor([5.0, 0.0, -1.0, 1.0, 300.0, 1e30, 3e38, -3e38, 1e38, 5.0, 3.4e38])
    want = [True, True, True, False, True, False, True, True, False, False, False]
    assert params.greedy_rows(T, x).tolist() == want
