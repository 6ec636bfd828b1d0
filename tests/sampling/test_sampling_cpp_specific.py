"""Checks specific to the C++ CPU sampler (csrc/sampling): agreement with the
PyTorch reference on many random batches, both ISA paths (AVX2 and portable),
the row-parallel and the within-row-parallel schedules, the group noise of the
two-level draw (Philox stream 1), and input checks."""
import pytest
import torch

from helpers.backends import require_extension
from helpers.sampling import decisive_rows, drawn_logits
from tts_kernels.sampling import philox
from tts_kernels.sampling.budget import BudgetForcing
from tts_kernels.sampling.reference import draw, sample_reference


@pytest.fixture(autouse=True)
def _ext():
    require_extension()


def _cpp(*args):
    return torch.ops.tts_kernels_C.sample_cpu(*args)


@pytest.fixture
def threads():
    """Sets torch's intra-op threads for one test (the kernel's pool follows them), then restores them."""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


def _logits(gen, B, V, style):
    if style == "scaled":
        x = torch.randn(B, V, generator=gen) * torch.rand(B, 1, generator=gen) * 6
    elif style == "ties":
        x = torch.randint(-4, 4, (B, V), generator=gen).float()
    elif style == "peaked":
        x = torch.randn(B, V, generator=gen) * 15
    else:  # flat
        x = torch.randn(B, V, generator=gen) * 0.01
    x[torch.rand(B, V, generator=gen) < 0.1] = float("-inf")
    x[0, min(3, V - 1)] = float("nan")
    if B > 2:
        x[1, min(5, V - 1)] = float("inf")
    if B > 3:
        x[2, :] = float("-inf")
    return x


def _params(gen, B, V):
    temp = torch.rand(B, generator=gen) * 1.5
    temp[torch.rand(B, generator=gen) < 0.2] = 0
    top_k = torch.randint(0, V // 2 + 2, (B,), generator=gen, dtype=torch.int32)
    small = torch.rand(B, generator=gen) < 0.5
    top_k[small] = torch.randint(1, 200, (int(small.sum()),), generator=gen, dtype=torch.int32)
    top_k[torch.rand(B, generator=gen) < 0.3] = 0
    top_p = torch.rand(B, generator=gen)
    top_p[torch.rand(B, generator=gen) < 0.4] = 1
    min_p = torch.rand(B, generator=gen) * 0.3
    min_p[torch.rand(B, generator=gen) < 0.5] = 0
    seed = torch.randint(-2 ** 62, 2 ** 62, (B,), generator=gen)
    offset = torch.randint(-2 ** 40, 2 ** 40, (B,), generator=gen)
    return temp, top_k, top_p, min_p, seed, offset


def _budget(gen, B, V, num_wait):
    end0 = int(torch.randint(0, V, (1,), generator=gen))
    bf = BudgetForcing(end_think_ids=[end0, 7 % V, 8 % V], wait_ids=[11 % V, 12 % V][:num_wait],
                       answer_prefix_ids=[3 % V, 4 % V, 5 % V])
    mx = torch.randint(0, 12, (B,), generator=gen)
    mx[torch.rand(B, generator=gen) < 0.2] = -1
    mn = torch.minimum(torch.randint(0, 8, (B,), generator=gen), mx.clamp(min=0))
    st = bf.init_state(B, min_tokens=mn, max_tokens=mx, min_waits=torch.randint(0, 3, (B,), generator=gen))
    d = st.data
    L = len(bf.forced_ids)
    d[:, 3] = torch.randint(0, 12, (B,), generator=gen).int()
    d[:, 4] = torch.randint(0, 3, (B,), generator=gen).int()
    d[:, 5] = torch.where(d[:, 1] >= 0, torch.randint(0, 3, (B,), generator=gen).int(), 2)
    pos = torch.randint(0, L + 1, (B,), generator=gen).int()
    d[:, 6] = pos
    d[:, 7] = torch.clamp(pos + torch.randint(-2, 3, (B,), generator=gen).int(), 0, L)
    return bf, st, end0


def _compare(x, params, state=None, forced=None, num_wait=0, num_end=0):
    temp, top_k, top_p, min_p, seed, offset = params
    args = (x, temp, top_k, top_p, min_p, seed, offset)
    s_ref = state.clone() if state is not None else None
    s_cpp = state.clone() if state is not None else None
    t_ref, l_ref = sample_reference(*args, s_ref, forced, num_wait, num_end)
    t_cpp, l_cpp = _cpp(*args, s_cpp, forced, num_wait, num_end)
    assert t_cpp.dtype == torch.int64 and l_cpp.dtype == torch.float32
    decisive = decisive_rows(drawn_logits(x, state, forced, num_wait, num_end), temp, top_k, top_p, min_p,
                             seed, offset)
    ties = 0
    for r in range(x.shape[0]):
        a, b = int(t_ref[r]), int(t_cpp[r])
        if a != b:
            assert a >= 0 and b >= 0 and not decisive[r], \
                f"row {r}: reference {a}, cpp {b} (T={float(temp[r])}, k={int(top_k[r])}, " \
                f"p={float(top_p[r])}, min_p={float(min_p[r])})"
            ties += 1
            continue
        torch.testing.assert_close(l_cpp[r], l_ref[r], rtol=1e-5, atol=1e-5, equal_nan=True)
        if state is not None:
            assert torch.equal(s_cpp[r], s_ref[r]), f"row {r}: budget {s_cpp[r].tolist()} != {s_ref[r].tolist()}"
    assert ties <= max(1, x.shape[0] // 8)


SHAPES = [(1, 1), (3, 7), (5, 33), (17, 1000), (64, 4099), (8, 40000), (1, 151936)]


@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize("style", ["scaled", "ties", "peaked", "flat"])
@pytest.mark.parametrize("B,V", SHAPES)
def test_matches_reference(monkeypatch, isa, style, B, V):
    if isa == "generic":
        monkeypatch.setenv("TTS_KERNELS_CPU_ISA", "generic")
    gen = torch.Generator().manual_seed(B * 1000 + V)
    x = _logits(gen, B, V, style)
    _compare(x, _params(gen, B, V))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,V", [(17, 1000), (4, 4099), (1, 70001)])
def test_half_inputs(dtype, B, V):
    gen = torch.Generator().manual_seed(V)
    x = _logits(gen, B, V, "scaled").to(dtype)
    _compare(x, _params(gen, B, V))


@pytest.mark.parametrize("num_wait", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,V", [(64, 50), (64, 1000), (2, 40000)])
def test_budget_matches_reference(num_wait, dtype, B, V):
    gen = torch.Generator().manual_seed(B + V + num_wait)
    for _ in range(3):
        x = _logits(gen, B, V, "scaled")
        params = _params(gen, B, V)
        bf, st, end0 = _budget(gen, B, V, num_wait)
        boost = torch.rand(B, generator=gen) < 0.5  # make the end token likely
        x[boost, end0] = x[boost].max(1).values.nan_to_num(0, 0, 0) + 5
        x[:, 3 % V] = float("-inf")  # an answer-prefix token with a -inf logit
        only_end = torch.rand(B, generator=gen) < 0.1  # end[0] is the only finite logit
        x[only_end] = float("-inf")
        x[only_end, end0] = 1.0
        _compare(x.to(dtype), params, st.data, st.forced_ids_tensor(), len(bf.wait_ids), len(bf.end_think_ids))


@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize("nthreads", [1, 8])
def test_batch_invariance_and_parallel_schedules(monkeypatch, threads, isa, nthreads):
    """A row's draw does not depend on the batch or on the schedule (row- or within-row-parallel,
    with up to 8 threads), and matches the reference."""
    if isa == "generic":
        monkeypatch.setenv("TTS_KERNELS_CPU_ISA", "generic")
    threads(nthreads)
    gen = torch.Generator().manual_seed(0)
    B, V = 6, 151936
    x = torch.randn(B, V, generator=gen) * 3
    x[1] *= 0.01  # flat: many groups within the pruning margin
    x[2] *= 5     # peaked
    params = [torch.full((B,), 0.8), torch.zeros(B, dtype=torch.int32), torch.tensor([0.95, 1, 1, 0.5, 1, 1]),
              torch.tensor([0, 0, 0, 0, 0.05, 0]), torch.arange(B) + 11, torch.full((B,), 5, dtype=torch.int64)]
    params[1][5] = 20000  # a large top-k set (no explicit list)
    full = _cpp(x, *params, None, None, 0, 0)
    for r in range(B):
        one = _cpp(x[r:r + 1].contiguous(), *[p[r:r + 1].contiguous() for p in params], None, None, 0, 0)
        assert int(one[0][0]) == int(full[0][r])
        torch.testing.assert_close(one[1][0], full[1][r])
    _compare(x, params)


def _one_token_per_group(B, V, gen):
    """Logits 0 at the first token of every group, -inf elsewhere, and random per-row
    (temperature, seed, offset) including negative seeds and offsets past 2**32."""
    x = torch.full((B, V), float("-inf"))
    x[:, ::philox.GROUP_SIZE] = 0.0
    temp = torch.rand(B, generator=gen) + 0.1
    seed = torch.randint(-2 ** 62, 2 ** 62, (B,), generator=gen)
    offset = torch.randint(-2 ** 40, 2 ** 40, (B,), generator=gen)
    return x, temp, seed, offset


@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize("path", ["row", "list"])
@pytest.mark.parametrize("B,V,nthreads", [(256, 64 * 256 + 17, 2), (3, 600 * 256 + 17, 8)])
def test_group_noise_is_philox_stream_1(monkeypatch, threads, isa, path, B, V, nthreads):
    """One kept token per group, all at z = 0: every group scores its noise alone, so the
    kernel's token is GROUP_SIZE * argmax(philox.group_gumbel), on the pass over the row
    and on an explicit kept list (top-k = the number of groups)."""
    if isa == "generic":
        monkeypatch.setenv("TTS_KERNELS_CPU_ISA", "generic")
    threads(nthreads)
    gen = torch.Generator().manual_seed(V)
    x, temp, seed, offset = _one_token_per_group(B, V, gen)
    ng = philox.num_groups(V)
    top_k = torch.full((B,), ng if path == "list" else 0, dtype=torch.int32)
    top_p, min_p = torch.ones(B), torch.zeros(B)
    tok, _ = _cpp(x, temp, top_k, top_p, min_p, seed, offset, None, None, 0, 0)
    h = philox.group_gumbel(seed, offset, V)
    assert h.shape == (B, ng)
    top2 = torch.topk(h, 2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-5 * top2[:, 0].abs().clamp(min=1.0)
    expected = torch.argmax(h, dim=1) * philox.GROUP_SIZE
    assert bool(clear.float().mean() > 0.9)
    assert torch.equal(tok[clear], expected[clear])


@pytest.mark.parametrize("isa", ["auto", "generic"])
def test_flat_rows_match_reference_draw(monkeypatch, isa):
    """z = 0 everywhere, V = 4 * 256 + 17 (a short last group): the group of the largest
    log(token count) + group noise, then the largest token noise in it, as reference.draw."""
    if isa == "generic":
        monkeypatch.setenv("TTS_KERNELS_CPU_ISA", "generic")
    gen = torch.Generator().manual_seed(1)
    B, V = 512, 4 * 256 + 17
    x = torch.zeros(B, V)
    temp = torch.rand(B, generator=gen) + 0.1
    seed = torch.randint(-2 ** 62, 2 ** 62, (B,), generator=gen)
    offset = torch.randint(-2 ** 40, 2 ** 40, (B,), generator=gen)
    off = (torch.zeros(B, dtype=torch.int32), torch.ones(B), torch.zeros(B))
    tok, _ = _cpp(x, temp, *off, seed, offset, None, None, 0, 0)
    expected = draw(x, torch.ones(B, V, dtype=torch.bool), seed, offset)
    decisive = decisive_rows(x, temp, *off, seed, offset)
    assert bool(decisive.float().mean() > 0.9)
    assert torch.equal(tok[decisive], expected[decisive])
    assert bool((tok >= 4 * 256).any())  # the short group is drawn too


def test_input_checks():
    x = torch.randn(2, 10)
    ok = [torch.ones(2), torch.zeros(2, dtype=torch.int32), torch.ones(2), torch.zeros(2),
          torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)]
    _cpp(x, *ok, None, None, 0, 0)
    with pytest.raises(RuntimeError, match="logits"):
        _cpp(x.t(), *ok, None, None, 0, 0)
    with pytest.raises(RuntimeError, match="logits"):
        _cpp(x.double(), *ok, None, None, 0, 0)
    with pytest.raises(RuntimeError, match="top_k"):
        _cpp(x, ok[0], ok[1].long(), *ok[2:], None, None, 0, 0)
    with pytest.raises(RuntimeError, match="temperature"):
        _cpp(x, torch.ones(3), *ok[1:], None, None, 0, 0)
    with pytest.raises(RuntimeError, match="budget"):
        _cpp(x, *ok, torch.zeros(2, 7, dtype=torch.int32), torch.tensor([1], dtype=torch.int32), 0, 1)
    with pytest.raises(RuntimeError, match="forced_ids"):
        _cpp(x, *ok, torch.zeros(2, 8, dtype=torch.int32), torch.tensor([10], dtype=torch.int32), 0, 1)
    out = _cpp(torch.empty(0, 10), *[t[:0] for t in ok], None, None, 0, 0)
    assert out[0].shape == (0,) and out[1].shape == (0,)


@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize("V", [5, 50, 1001, 4099, 70001])
def test_mostly_neg_inf_rows(monkeypatch, isa, V):
    """Thresholds of -inf (top-k beyond the finite logits) never pick a padded or -inf token."""
    if isa == "generic":
        monkeypatch.setenv("TTS_KERNELS_CPU_ISA", "generic")
    gen = torch.Generator().manual_seed(V)
    B = 24
    x = torch.full((B, V), float("-inf"))
    for r in range(B):
        n = 1 + r % 4
        x[r, torch.randperm(V, generator=gen)[:n]] = torch.randn(n, generator=gen)
    temp = torch.rand(B, generator=gen) + 0.1
    top_k = torch.randint(1, V + 1, (B,), generator=gen, dtype=torch.int32)
    top_p = torch.where(torch.rand(B, generator=gen) < 0.5, torch.ones(B), torch.rand(B, generator=gen))
    min_p = torch.where(torch.rand(B, generator=gen) < 0.5, torch.zeros(B), torch.rand(B, generator=gen) * 0.5)
    params = (temp, top_k, top_p, min_p, torch.arange(B), torch.zeros(B, dtype=torch.int64))
    tok, _ = _cpp(x, *params, None, None, 0, 0)
    assert bool(((tok >= 0) & (tok < V)).all())
    assert bool(torch.isfinite(x.gather(1, tok.view(-1, 1))).all())
    _compare(x, params)
