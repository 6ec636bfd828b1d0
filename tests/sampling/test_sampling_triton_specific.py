"""Triton-only checks of the fused sampler kernel against the PyTorch reference.

Runs on CUDA when present, else on CPU tensors through the Triton interpreter
(``TRITON_INTERPRET=1``, set by conftest). Shapes are small because the
interpreter is slow.
"""
import contextlib
import itertools
import math

import pytest
import torch

from helpers.backends import require_triton
from helpers.sampling import decisive_rows, drawn_logits, key_floats, order_keys, reference_keep
from tts_kernels.sampling import philox
from tts_kernels.sampling.budget import BudgetForcing, DONE, ENDING, THINKING
from tts_kernels.sampling.reference import draw, filter_mask, sample_reference

require_triton()
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # interpreter: -inf - -inf in masked lanes
from tts_kernels.sampling.triton_kernel import sample_triton  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _params(B, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None, offset=None):
    def vec(v, dtype):
        if isinstance(v, torch.Tensor):
            return v.to(device=DEV, dtype=dtype)
        if isinstance(v, (list, tuple)):
            return torch.tensor(v, dtype=dtype, device=DEV)
        return torch.full((B,), v, dtype=dtype, device=DEV)

    if seed is None:
        seed = torch.arange(B) * 1000003 + 17
    if offset is None:
        offset = torch.arange(B) * 5 + 1
    return (vec(temperature, torch.float32), vec(top_k, torch.int32), vec(top_p, torch.float32),
            vec(min_p, torch.float32), vec(seed, torch.int64), vec(offset, torch.int64))


def _check_both_paths(monkeypatch, logits, params):
    """``_check`` on the per-row kernel (4 warps) and on split rows (8 warps; 3 slices, fewer for a short row,
    as the wrapper rounds them to whole tiles): their finishes' tiles
    differ (``_finish_tiles``), and so does a small candidate buffer's capacity (whole ``HBLOCK`` tiles: with
    ``_CANDIDATES`` 24, 256 values per row on the per-row path, 512 on split rows)."""
    for slices in (1, 3):
        monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device, s=slices: s)
        _check(logits, params)


def _check(logits, params, budget=None, forced=None, num_wait=0, num_end=0, allow_ties=True):
    b_ref = budget.clone() if budget is not None else None
    b_tri = budget.clone() if budget is not None else None
    tok_r, lp_r = sample_reference(logits, *params, b_ref, forced, num_wait, num_end)
    tok_t, lp_t = sample_triton(logits, *params, b_tri, forced, num_wait, num_end)
    assert tok_t.dtype == torch.int64 and lp_t.dtype == torch.float32
    assert tok_t.shape == tok_r.shape and lp_t.shape == lp_r.shape
    tok_r, lp_r, tok_t, lp_t = tok_r.cpu(), lp_r.cpu(), tok_t.cpu(), lp_t.cpu()
    diff = tok_r != tok_t
    if diff.any():
        drawn = drawn_logits(logits, budget, forced, num_wait, num_end)
        ties = ~decisive_rows(drawn, *params) if allow_ties else torch.zeros_like(diff)
        bad = diff & ~ties
        assert not bad.any(), f"rows {bad.nonzero().flatten().tolist()}: triton {tok_t[bad].tolist()} " \
                              f"reference {tok_r[bad].tolist()}"
    same = ~diff
    assert torch.equal(torch.isnan(lp_r), torch.isnan(lp_t))
    torch.testing.assert_close(lp_t[same], lp_r[same], rtol=1e-5, atol=1e-5, equal_nan=True)
    if budget is not None and not diff.any():
        assert torch.equal(b_ref.cpu(), b_tri.cpu()), f"{b_ref}\n{b_tri}"
    return tok_t, lp_t, b_tri


def test_philox_stream_plain_temperature():
    # flat logits: the group is the argmax of ln(its size) + group noise, the token the argmax of
    # the token noise inside it (checks both Philox streams, the word interleaving, 64-bit seeds
    # and offsets past 2**32, and the short last group)
    B, V = 6, 523
    seed = torch.tensor([0, 1, -1, 2 ** 62 + 12345, -(2 ** 63), 987654321987], dtype=torch.int64)
    offset = torch.tensor([0, 2 ** 32 + 7, 3, 2 ** 40 - 1, 5, -3], dtype=torch.int64)
    logits = torch.zeros(B, V, device=DEV)
    params = _params(B, seed=seed, offset=offset)
    tok, lp = sample_triton(logits, *params, None, None, 0, 0)
    want = draw(torch.zeros(B, V), torch.ones(B, V, dtype=torch.bool), seed, offset)
    assert torch.equal(tok.cpu(), want)
    assert len(set((want // philox.GROUP_SIZE).tolist())) > 1
    torch.testing.assert_close(lp.cpu(), torch.full((B,), -math.log(V)), rtol=1e-5, atol=1e-5)


def test_mixed_rows_float32():
    torch.manual_seed(0)
    B, V = 16, 600
    logits = torch.randn(B, V, device=DEV) * 3
    logits[3, ::7] = float("-inf")
    logits[9, 100:] = float("-inf")
    logits[12] = torch.round(logits[12] * 2) / 2  # many exact ties at the thresholds
    logits[13] = torch.round(logits[13])
    temperature = [1.0, 0.7, 0.0, 1.3, 1.0, 0.5, 1.0, 2.0, 0.0, 1.0, 0.8, 1.1, 1.0, 1.0, 0.9, 1.0]
    top_k = [0, 5, 0, 0, 50, 0, 3, 0, 7, 20, 1, 599, 6, 40, 600, 2]
    top_p = [1.0, 1.0, 1.0, 0.9, 0.8, 1.0, 0.5, 0.95, 0.3, 0.6, 1.0, 0.2, 0.7, 0.5, 0.05, 1.0]
    min_p = [0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.05, 0.2, 0.3, 0.0, 0.0, 0.5, 0.0, 0.0, 0.9]
    _check(logits, _params(B, temperature, top_k, top_p, min_p))


def test_strong_filters_many_seeds():
    # strong filters reject pass 1's winner often: exercises the filtered draw pass
    torch.manual_seed(1)
    B, V = 8, 257
    logits = (torch.randn(1, V, device=DEV) * 0.5).expand(B, V).contiguous()
    for cfg in ((3, 1.0, 0.0), (0, 0.3, 0.0), (0, 1.0, 0.7), (10, 0.5, 0.3)):
        tok, _, _ = _check(logits, _params(B, 1.0, *cfg, seed=torch.arange(B) + 100 * cfg[0]))
        x = logits[0].float().cpu()
        keep = filter_mask(x.view(1, -1), torch.tensor([cfg[0]]), torch.tensor([cfg[1]]),
                           torch.tensor([cfg[2]]))[0]
        assert keep[tok.cpu()].all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes(dtype):
    torch.manual_seed(2)
    B, V = 8, 300
    logits = (torch.randn(B, V, device=DEV) * 4).to(dtype)  # half rounding gives ties
    logits[2, :50] = float("-inf")
    _check(logits, _params(B, [1.0, 0.0, 0.6, 1.0, 1.5, 1.0, 0.9, 0.0], [0, 0, 10, 4, 0, 30, 0, 5],
                           [1.0, 1.0, 0.9, 1.0, 0.7, 0.85, 1.0, 0.5], [0.0, 0.0, 0.0, 0.1, 0.0, 0.05, 0.2, 0.0]))


def test_invalid_rows():
    torch.manual_seed(3)
    B, V = 8, 130
    logits = torch.randn(B, V, device=DEV)
    logits[1, 5] = float("nan")
    logits[3, 129] = float("inf")
    logits[4] = float("-inf")
    logits[6, 0] = float("nan")
    logits[6, 1] = float("inf")
    params = _params(B, [1.0, 1.0, 0.0, 0.0, 1.0, 0.7, 1.0, 0.0], 5, 0.9, 0.0)
    tok, lp, _ = _check(logits, params)
    assert tok.tolist()[1] == -1 and tok.tolist()[3] == -1 and tok.tolist()[4] == -1 and tok.tolist()[6] == -1
    assert torch.isnan(lp[[1, 3, 4, 6]]).all() and not torch.isnan(lp[[0, 2, 5, 7]]).any()


def test_slice_tiles():
    """The split rows' pass-1 tiles (``_slice_tiles``): the largest tile, 8192 tokens down to 2048, that keeps the
    slice count and adds at most a quarter to a slice's tokens; whole tiles; the count the wrapper launches."""
    st = _tk._slice_tiles
    assert st(151936, 4) == (8192, 40960)       # B=32 on an H100: 5 tiles of 8192 instead of 19 of 2048
    assert st(151936, 75) == (2048, 2048)       # B=1: 75 slices of one tile
    assert st(151936, 15) == (2048, 10240)      # 12288-token slices of 4096 would launch 13
    assert st(32000, 8) == (4096, 4096) and st(128256, 8) == (8192, 16384)
    assert st(300, 1) == (512, 512)             # a short row: one tile, to its next power of two
    def cdiv(a, b):
        return -(-a // b)

    for V in (257, 3001, 16643, 32000, 50257, 99557, 128256, 151936):
        least = _tk._tile_tokens(2048, V)
        for S in range(1, min(cdiv(V, 2048), 132) + 1):
            S0 = cdiv(V, cdiv(cdiv(V, S), least) * least)          # the count launched with tiles of 2048
            base = cdiv(cdiv(V, S0), least) * least
            tile, chunk = st(V, S0)
            assert chunk % tile == 0 and tile in (least, _tk._tile_tokens(4096, V), _tk._tile_tokens(8192, V))
            assert cdiv(V, chunk) == S0 and 4 * chunk <= 5 * base, (V, S0, tile, chunk)
        ngr = philox.num_groups(V)
        for B in (1, 2, 5, 16, 32, 64, 100):                         # the count slices_for promises is launched
            for sms in (78, 132):
                S = _tk.slices_for(B, V, sms)
                assert S == 1 or cdiv(V, st(V, S)[1]) == S, (V, B, sms)
                # a small batch spreads over half the SMs at least, or one group per slice; or it stays one
                # program per row (the whole-tile rule's 1: a row of one tile, or enough rows)
                assert S == 1 or B * S >= cdiv(sms, 2) or S == ngr, (V, B, sms, S)
                assert S == 1 or cdiv(V, 2048) > 1, (V, B, sms, S)
                if S > cdiv(V, least):                                # slices of whole groups, one masked tile
                    tile, chunk = st(V, S)
                    assert tile == least and chunk % philox.GROUP_SIZE == 0 and chunk < tile, (V, B, sms)
                    # the fewest slices of whole groups that make half the SMs' programs (one group each where
                    # none do), the groups spread evenly over them
                    counts = [n for n in {cdiv(ngr, c) for c in range(1, ngr + 1)} if B * n >= cdiv(sms, 2)]
                    assert S == min(counts, default=ngr) and chunk == cdiv(ngr, S) * philox.GROUP_SIZE, (V, B, sms)
    # B=1 on an H100: 125 slices of one group (V=32000), 72 of 7 (V=128256), 75 tiles of 2048 (V=151936); a row
    # of one tile stays whole (one launch, no merge), one token more makes 9 slices of one group
    assert [_tk.slices_for(1, V, 132) for V in (32000, 128256, 151936, 300, 2048, 2049)] == [125, 72, 75, 1, 1, 9]
    assert st(32000, 125) == (2048, 256) and st(128256, 72) == (2048, 1792)


def test_finish_tiles():
    """The finish's tiles per program of 4 and 8 warps (``_finish_tiles``): the same sizes per thread; the scan's
    steps of at most 4 group stats per thread; and the candidate bound reads every group maximum of a row up to
    262144 tokens at once (``NB``): a bound narrower than the row's groups leaves the row without one, and its
    selects then read the whole row per radix level."""
    for V in (29, 300, 32000, 50257, 65536, 65537, 128256, 151936, 262144):
        ngr = philox.num_groups(V)
        for warps, es in ((_tk._ROW_WARPS, 2), (_tk._ROW_WARPS, 4), (_tk._SPLIT_WARPS, 2), (_tk._SPLIT_WARPS, 4)):
            t = _tk._finish_tiles(V, es, warps)
            assert t["NB"] >= ngr and t["NB"] in (t["FB"], _tk._SCAN), (V, warps, t)
            assert t["FB"] <= max(_tk._SCAN_PER_THREAD * 32 * warps, triton.next_power_of_2(ngr), 16)
            assert t["DBLOCK"] == _tk._tile_tokens(32 * 32 * warps // es, V)
            assert t["HBLOCK"] == min(2 * 32 * warps, max(16, triton.next_power_of_2(V)))
            assert t["DH"] == _tk._loads_per_thread(t["DBLOCK"], es, warps)
            assert t["PW"] == min(256, max(16, triton.next_power_of_2(V)))
    pick = ("DBLOCK", "HBLOCK", "FB", "NB")
    assert [_tk._finish_tiles(151936, 2, 4)[k] for k in pick] == [2048, 256, 512, 1024]
    assert [_tk._finish_tiles(151936, 2, 8)[k] for k in pick] == [4096, 512, 1024, 1024]
    assert [_tk._finish_tiles(32000, 4, 4)[k] for k in pick] == [1024, 256, 128, 128]


def _record_slice_tiles(monkeypatch):
    """The wrapper's calls of ``_slice_tiles``, as (S, (tile, chunk)) in a list that this returns."""
    used = []
    slice_tiles = _tk._slice_tiles
    monkeypatch.setattr(_tk, "_slice_tiles", lambda V, S: used.append((S, slice_tiles(V, S))) or used[-1][1])
    return used


@pytest.mark.parametrize("dtype, pad", [(torch.float32, 0), (torch.bfloat16, 1)], ids=["fp32", "bf16-pairs"])
def test_split_rows_large_tiles(monkeypatch, dtype, pad):
    """Split rows in slices of 8192-token tiles (V=40001 in 2 slices: 3 tiles, then one and 7233 tokens, the
    last tile partial), with filters, a greedy row and a -inf stretch across the slices' border: the reference's
    tokens and logprobs; bf16 in 32-bit pairs over padded rows."""
    from tts_kernels.sampling.triton_kernel import _bf16_pairs
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: 2)
    used = _record_slice_tiles(monkeypatch)
    B, V = 4, 40001
    gen = torch.Generator().manual_seed(23)
    buf = torch.randn(B, V + pad, generator=gen) * 2
    buf[:, V:] = 60.0                                  # padding: read as a token, it would be every row's maximum
    buf[1, 24576 - 300:24576 + 300] = float("-inf")    # across the border of the two slices
    buf[2, 24576 + 5] = 9.0                            # the maximum, first group of the second slice
    buf[3, V - 1] = 9.0                                # the maximum, the row's last token
    x = buf.to(dtype=dtype, device=DEV)[:, :V]
    assert _bf16_pairs(x) == (pad > 0)
    _check(x, _params(B, [1.0, 0.7, 0.0, 1.3], [0, 40, 0, 0], [0.9, 1.0, 1.0, 0.95], [0.05, 0.0, 0.0, 0.0]))
    assert used == [(2, (8192, 24576))]                # the wrapper's split: tiles of 8192


@pytest.mark.parametrize("dtype, pad", [(torch.float32, 0), (torch.bfloat16, 1)], ids=["fp32", "bf16-pairs"])
def test_split_rows_group_slices(monkeypatch, dtype, pad):
    """Slices of whole groups, fewer tokens than a pass-1 tile (``slices_for`` at small B: B=2, V=5001 on 132
    SMs makes 20 slices of one group, each one masked tile of 2048): the last slice 137 tokens, a -inf stretch
    across two slices' borders, the maximum in a slice's first and in the row's last token, filters and a
    greedy row; the reference's tokens and logprobs; bf16 in 32-bit pairs over padded rows."""
    B, V = 2, 5001
    S = _tk.slices_for(B, V, 132)
    assert S == 20 and _tk._slice_tiles(V, S) == (2048, 256)
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: _tk.slices_for(B, V, 132))
    used = _record_slice_tiles(monkeypatch)
    gen = torch.Generator().manual_seed(29)
    for params in (_params(B, [1.0, 0.0], [0, 0], [0.9, 1.0], [0.05, 0.0]),
                   _params(B, [0.7, 1.3], [40, 0], [1.0, 0.95], [0.0, 0.1])):
        buf = torch.randn(B, V + pad, generator=gen) * 2
        buf[:, V:] = 60.0                               # padding: read as a token, it would be every row's maximum
        buf[0, 3 * 256 - 300:4 * 256 + 10] = float("-inf")
        buf[0, 7 * 256] = 9.0                           # the maximum, a slice's first token
        buf[1, V - 1] = 9.0                             # the maximum, the row's last token
        _check(buf.to(dtype=dtype, device=DEV)[:, :V], params)
    assert used == [(20, (2048, 256))] * 2


@pytest.mark.parametrize("T", [1.0, 0.5])
@pytest.mark.parametrize("want_lp", [1, 0], ids=["logprobs", "no-logprobs"])
@pytest.mark.parametrize("other_axis", [False, True], ids=["axis", "other-axis"])
@pytest.mark.parametrize("block", [2048, 8192])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-pairs"])
def test_partial_slices_write_own_groups(dtype, block, other_axis, want_lp, T, monkeypatch):
    """A slice's program writes the stats of its own groups only, each exactly: slices 0..j of a row cut in
    one-group slices (each one masked tile of ``block`` tokens: H = 1-8 loads per thread), launched alone into a
    workspace filled with a sentinel, leave every later group's stats as they were, and write each of theirs:
    the maximum exactly, the sums to float32 rounding; in both tile axis orders
    (``_triton_layout.REGISTER_AXIS``). In a whole launch the interpreter runs programs in grid order, so a
    later slice would hide an earlier one's stray stores into its groups. The raw sums' plane is written only
    with logprobs (``want_lp`` 1) at T != 1; without logprobs, or at T = 1, where the draw sums are the raw sums
    (``_own_raw_sums``), it is left as it was (pass 1 skips their exponentials) and the other two are the same."""
    if other_axis:
        monkeypatch.setattr(_triton_layout, "REGISTER_AXIS", 1 - _triton_layout.REGISTER_AXIS)
    from tts_kernels.sampling.triton_kernel import _bf16_pairs
    V, G = 5001, philox.GROUP_SIZE
    ngr = philox.num_groups(V)
    gen = torch.Generator().manual_seed(37)
    x = (torch.randn(1, V + 1, generator=gen) * 3).to(dtype)[:, :V]      # the element after an odd V in storage
    pairs = _bf16_pairs(x)
    assert pairs == (dtype == torch.bfloat16)
    x = x.to(DEV)
    warps = _tk._SPLIT_WARPS
    xf = torch.nn.functional.pad(x.float().cpu(), (0, ngr * G - V), value=float("-inf")).view(ngr, G)
    mx = xf.max(1).values
    raw = torch.exp(xf.double() - mx.double()[:, None]).sum(1).float()
    drawn = torch.exp((xf.double() - mx.double()[:, None]) / T).sum(1).float()
    own_raw = bool(want_lp) and T != 1.0
    for j in (0, 6, ngr - 1):
        ws = torch.full((_tk.WS_PLANES.value * ngr,), 12345.0, device=DEV)
        _tk._partial_kernel[(1, j + 1)](x, torch.full((1,), T, device=DEV), ws, V, x.stride(0), ngr, G, want_lp,
                                        BLOCK=block, H=_tk._loads_per_thread(block, x.element_size(), warps),
                                        PAIRS=pairs, FAST_LOG=False, H_AXIS=_triton_layout.REGISTER_AXIS, STAGES=0,
                                        num_warps=warps)
        stats = ws.cpu().view(_tk.WS_PLANES.value, ngr)[:_tk.STAT_PLANES.value]
        assert (stats[:, j + 1:] == 12345.0).all(), (j, (stats[:, j + 1:] != 12345.0).nonzero()[:4])
        assert torch.equal(stats[0, :j + 1], mx[:j + 1]), j   # each written group's maximum
        torch.testing.assert_close(stats[2, :j + 1], drawn[:j + 1], rtol=2e-6, atol=0, msg=str(j))
        if own_raw:
            torch.testing.assert_close(stats[1, :j + 1], raw[:j + 1], rtol=2e-6, atol=0, msg=str(j))
        else:
            assert (stats[1] == 12345.0).all(), j


@pytest.mark.parametrize("slices", [1, 2, 3])
@pytest.mark.parametrize("dtype, pad", [(torch.float32, 0), (torch.bfloat16, 0), (torch.bfloat16, 5)],
                         ids=["fp32", "bf16", "bf16-pairs"])
def test_long_row_multi_tile(monkeypatch, dtype, pad, slices):
    # one program per row: two whole pass-1 tiles and a partial third (_pass1's [H, groups, units / H]
    # tiles); 2 and 3 slices: the split-row path, in slices of 4096-token tiles (2 slices: 3 tiles, then one
    # tile and 259 tokens) and of 2048. An odd V, so bf16 reads 32-bit pairs only in padded rows (even stride),
    # the last word straddling the row end
    from tts_kernels.sampling.triton_kernel import _PASS1_TOKENS, _bf16_pairs
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: slices)
    torch.manual_seed(4)
    B, V = 4, 2 * _PASS1_TOKENS + 259
    if slices > 1:
        assert _tk._slice_tiles(V, slices)[0] == {2: 4096, 3: 2048}[slices]
    buf = torch.randn(B, V + pad, device=DEV) * 2
    buf[:, V:] = 60.0        # padding: read as a token, it would be every row's maximum
    logits = buf[:, :V]
    logits[1, V - 1] = 12.0  # maximum in the last, partial tile
    logits[2, :_PASS1_TOKENS + 300] = float("-inf")   # a whole tile and part of a group without a finite logit
    logits[3, _PASS1_TOKENS + 1001] = float("nan")    # an odd token: the high half of a pair
    x = buf.to(dtype)[:, :V]
    assert _bf16_pairs(x) == (pad > 0)
    tok, _, _ = _check(x, _params(B, [1.0, 0.8, 1.2, 0.0], [100, 0, 37, 0], [0.9, 0.95, 1.0, 1.0],
                                  [0.0, 0.02, 0.0, 0.0]))
    assert tok[3] == -1 and tok[2] >= _PASS1_TOKENS + 300


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_multi_tile_other_tile_axis(monkeypatch, dtype):
    """Pass 1's tiles in the axis order that this Triton does not get (``_triton_layout.REGISTER_AXIS``: ``[groups,
    H, units / H]`` under Triton 3.5 and 3.6, ``[H, groups, units / H]`` from 3.7): same tokens."""
    from tts_kernels.sampling.triton_kernel import _PASS1_TOKENS
    monkeypatch.setattr(_triton_layout, "REGISTER_AXIS", 1 - _triton_layout.REGISTER_AXIS)
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: 1)
    assert _tk._loads_per_thread(_PASS1_TOKENS, dtype.itemsize, _tk._ROW_WARPS) > 1   # the order matters
    torch.manual_seed(13)
    B, V = 3, _PASS1_TOKENS + 2 * 256 + 10
    buf = torch.randn(B, V + 6, device=DEV) * 2
    buf[:, V:] = 60.0
    buf[1, V - 2] = 11.0
    _check(buf.to(dtype)[:, :V], _params(B, [0.9, 0.0, 1.1], [0, 0, 20], 1.0, 0.0))


@pytest.mark.parametrize("B, V, vpad, slices, pairs", [
    (5, 3001, 3008, 1, True),     # odd V in padded rows: pairs, the last word straddles the row end
    (5, 3001, 3008, 2, True),     # the same through the split-row path (the last slice ends at V)
    (5, 3001, 3001, 1, False),    # odd row stride: 2-byte aligned rows, 16-bit loads
    (1, 3001, 3001, 1, False),    # one row, odd V, nothing after it in the storage
    (1, 3001, 3002, 1, True),     # one row with one element of storage after it
    (3, 2900, 2900, 2, True),     # even V
])
def test_bf16_pairs(monkeypatch, B, V, vpad, slices, pairs):
    """Pass 1 reads bfloat16 rows as 32-bit pairs when every word it loads lies in the storage
    (``_bf16_pairs``); the odd half past the row's end is masked to -inf: the padding never counts,
    not even as a zero."""
    from tts_kernels.sampling.triton_kernel import _bf16_pairs
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: slices)
    torch.manual_seed(11)
    buf = (torch.randn(B, vpad, device=DEV) * 2).to(torch.bfloat16)
    buf[:, V:] = 60.0
    x = buf[:, :V]
    x[0, :V - 1] = float("-inf")   # one finite logit, the row's last: logprob 0 (log 2 if the padding were 0)
    x[0, V - 1] = 0.0
    assert _bf16_pairs(x) == pairs
    if B > 2:
        x[1, 2 * 700 + 1] = float("nan")    # odd tokens (high halves of pairs): invalid rows
        x[2, 2 * 900 + 1] = float("inf")
    params = _params(B, [0.0] + [0.9] * (B - 1), 0, 1.0, 0.0)
    tok, lp, _ = _check(x, params)   # logprobs against the reference's
    assert tok[0] == V - 1 and lp[0] == 0.0
    if B > 2:
        assert tok[1] == -1 and tok[2] == -1


def test_bf16_pairs_unaligned_view():
    """A view whose rows start 2 bytes past a 4-byte boundary takes the 16-bit loads (a GPU would
    fault on misaligned 32-bit loads; the interpreter would not notice)."""
    from tts_kernels.sampling.triton_kernel import _bf16_pairs
    torch.manual_seed(12)
    buf = (torch.randn(3, 1026, device=DEV) * 2).to(torch.bfloat16)
    x = buf[:, 1:1025]
    assert x.data_ptr() % 4 == 2 and not _bf16_pairs(x)
    assert _bf16_pairs(buf[:, 2:1026])
    _check(x, _params(3, [0.0, 0.7, 1.0], 0, 1.0, 0.0))


def _budget_case(forcing, rows, V, device=DEV):
    """rows: list of (min_tokens, max_tokens, min_waits, num_thinking, waits_used, phase, pos, stop)."""
    data = torch.tensor(rows, dtype=torch.int32, device=device)
    return data, torch.tensor(forcing.forced_ids, dtype=torch.int32, device=device)


@contextlib.contextmanager
def _stale_allocations(monkeypatch):
    """Every float32 buffer ``torch.empty`` makes inside the block starts NaN, as a reused allocation may; yields
    the list of the tensors it made (the wrapper's workspace among them)."""
    empty, made = torch.empty, []

    def stale(*args, **kwargs):
        t = empty(*args, **kwargs)
        made.append(t)
        return t.fill_(float("nan")) if t.dtype == torch.float32 else t

    with monkeypatch.context() as m:
        m.setattr(torch, "empty", stale)
        yield made


@pytest.mark.parametrize("slices", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_without_logprobs_ignores_a_stale_workspace(monkeypatch, dtype, slices):
    """A call without logprobs leaves the workspace's raw-sum plane unwritten (pass 1 skips it): with every float32
    buffer the wrapper allocates full of NaN, as a reused allocation may be, it draws the same tokens and budget
    states as a call with logprobs on fresh buffers; per-row and split rows (``_scan_groups`` masks that plane's
    load; the filtered draw writes the plane before its scores read it). Rows: every filter, min-p on flat rows
    (the filtered draw rescores), greedy, a NaN row, an end token masked by budget rule 3 (no Wait ids)."""
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: slices)
    gen = torch.Generator().manual_seed(71)
    B, V = 8, 1100
    x = torch.randn(B, V, generator=gen) * 2
    x[2:4] = torch.randn(2, V, generator=gen) * 0.3          # flat rows: min-p's chosen group may not stand
    x[5, 17] = float("nan")
    x[6, 7] = 30.0                                            # the end token dominates, masked below its minimum
    logits = x.to(dtype).to(DEV)
    params = _params(B, [0.9, 1.0, 1.5, 1.2, 0.7, 1.0, 1.0, 0.0], [0, 20, 0, 0, 5, 0, 0, 0],
                     [1.0, 0.9, 1.0, 1.0, 0.8, 1.0, 1.0, 1.0], [0.0, 0.05, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0])
    f = BudgetForcing(end_think_ids=[7, 8], wait_ids=[], answer_prefix_ids=[3])
    budget, forced = _budget_case(f, [(0, -1, 0, 0, 0, DONE, 0, 0)] * 6 + [(4, 16, 0, 2, 0, THINKING, 0, 0)] * 2, V)
    b_lp, b_tok = budget.clone(), budget.clone()
    tok_lp, lp = sample_triton(logits, *params, b_lp, forced, 0, 2)
    with _stale_allocations(monkeypatch):
        tok, none = sample_triton(logits, *params, b_tok, forced, 0, 2, False)
    assert none.shape == (0,) and lp.shape == (B,)
    assert tok[5] == -1 and (tok[torch.arange(B) != 5] >= 0).all() and tok[6] != 7
    assert torch.equal(tok, tok_lp) and torch.equal(b_tok, b_lp)
    ref, _ = sample_reference(logits.cpu(), *(t.cpu() for t in params), budget.cpu(), forced.cpu(), 0, 2)
    decisive = decisive_rows(drawn_logits(logits.cpu(), budget.cpu(), forced.cpu(), 0, 2), *(t.cpu() for t in params))
    assert torch.equal(tok.cpu()[decisive], ref[decisive])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("slices", [1, 3])
def test_unit_temperature_rows_read_their_draw_sums(monkeypatch, slices, dtype):
    """With logprobs, a row whose draw sums' scale is log2(e) (T = 1, and the rows greedy by the temperature rule:
    T = 0, a subnormal T) takes its logsumexp from the draw sums, which are then the raw sums (``_own_raw_sums``):
    pass 1 writes no raw sum for it. Every float32 buffer the wrapper allocates starts NaN (a reused allocation):
    the raw-sum plane of those rows stays NaN, that of the others is written (T = 0.8, 1.5, and a row greedy
    because its max(x) / T overflows, which keeps its T = 0.5), and every row's logprob is the float64
    log-softmax's, per-row and split. Rows: plain, filters (min-p on a flat row: the filtered draw rewrites the
    plane after the scan), greedy, an end token masked by budget rule 3."""
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: slices)
    gen = torch.Generator().manual_seed(73)
    B, V = 9, 1100
    x = torch.randn(B, V, generator=gen) * 2
    x[3] = torch.randn(V, generator=gen) * 0.3               # flat: min-p's chosen group may not stand
    x[6, 7] = 30.0                                            # the end token dominates, masked below its minimum
    x[8, 300] = 3e38                                          # max(x) / T overflows at T = 0.5: greedy, T kept
    temps = [1.0, 0.8, 0.0, 1.0, 1.5, 2.0 ** -127, 1.0, 1.0, 0.5]
    params = _params(B, temps, [0, 0, 0, 0, 20, 0, 0, 30, 0], [1.0, 1.0, 1.0, 1.0, 0.9, 1.0, 1.0, 0.9, 1.0],
                     [0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.05, 0.0])
    f = BudgetForcing(end_think_ids=[7, 8], wait_ids=[], answer_prefix_ids=[3])
    budget, forced = _budget_case(f, [(0, -1, 0, 0, 0, DONE, 0, 0)] * 6 + [(4, 16, 0, 2, 0, THINKING, 0, 0)] * 2
                                  + [(0, -1, 0, 0, 0, DONE, 0, 0)], V)
    logits = x.to(dtype).to(DEV)
    with _stale_allocations(monkeypatch) as made:
        tok, lp = sample_triton(logits, *params, budget.clone(), forced, 0, 2)
    ngr = philox.num_groups(V)
    ws = [t for t in made if t.numel() == B * _tk.WS_PLANES.value * ngr]
    assert len(ws) == 1
    raw_plane = ws[0].cpu().view(B, _tk.WS_PLANES.value, ngr)[:, 1]
    unit = torch.tensor([_tk.shares_draw_sums(t) for t in temps])
    assert unit.tolist() == [True, False, True, True, False, True, True, True, False]
    filtered = torch.tensor([False, False, False, True, True, False, False, True, False])
    assert raw_plane[unit & ~filtered].isnan().all()          # never written: pass 1 skipped those raw sums
    assert raw_plane[~unit].isfinite().all()                  # written by pass 1
    assert (tok[6:8] != 7).all() and tok[8] == 300
    want = torch.log_softmax(logits.double().cpu(), 1).float()[torch.arange(B), tok.cpu()]
    torch.testing.assert_close(lp.cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("slices", [1, 2])
def test_pipelined_pass1_gives_the_same_outputs(monkeypatch, slices, dtype):
    """Pass 1's pipelined loop (``STAGES`` 3, ``tl.range(num_stages=3)``; :data:`PASS1_STAGES`) walks the same whole
    tiles as the plain one: the same tokens and logprobs bit for bit, per-row (two whole 8192-token tiles and a
    partial one) and split (slices of several whole tiles), with mixed rows (T = 1, greedy, filters, a -inf
    token). The interpreter runs both as Python loops; ``tests/gpu`` compares the compiled ones."""
    assert _tk.PASS1_STAGES[0] == _tk._pass1_stages(torch.device("cpu")) == 0
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: slices)
    gen = torch.Generator().manual_seed(91)
    B, V = 4, 2 * 8192 + 1000
    x = torch.randn(B, V, generator=gen) * 2
    x[1, 5] = float("-inf")
    params = _params(B, [1.0, 0.7, 0.0, 1.3], [0, 40, 0, 0], [1.0, 0.9, 1.0, 1.0], [0.0, 0.0, 0.0, 0.1])
    logits = x.to(dtype).to(DEV)
    outs = {}
    for stages in _tk.PASS1_STAGES:
        monkeypatch.setattr(_tk, "_pass1_stages", lambda device, s=stages: s)
        outs[stages] = [t.cpu() for t in sample_triton(logits, *params)]
    (tok0, lp0), (tok3, lp3) = outs.values()
    assert torch.equal(tok3, tok0) and torch.equal(lp3, lp0)
    _check(logits, params)


def test_shares_draw_sums_is_the_kernels_rule():
    """The host mirror of ``_own_raw_sums`` (the static cost model's): T = 1 and the greedy rule's temperatures
    (below 2**-126, NaN's invalid rows aside) share the draw sums; any other T, the smallest normal included,
    does not."""
    shared = [1.0, 0.0, 2.0 ** -127, 1e-45, -1.0]
    own = [0.8, 1.5, 2.0 ** -126, 1.0 + 2.0 ** -23, 1.0 - 2.0 ** -24, 1e30]
    assert all(_tk.shares_draw_sums(t) for t in shared)
    assert not any(_tk.shares_draw_sums(t) for t in own)


@pytest.mark.parametrize("with_wait", [True, False])
def test_budget_mid_sequence(with_wait):
    torch.manual_seed(5)
    V = 64
    end, waits, answer = [7, 8], ([9, 10, 11] if with_wait else []), [3, 4]
    f = BudgetForcing(end_think_ids=end, wait_ids=waits, answer_prefix_ids=answer)
    lw, le, L = len(waits), len(end), len(f.forced_ids)
    rows = [
        (0, -1, 0, 0, 0, DONE, 0, 0),            # no budget
        (4, 16, 0, 16, 0, THINKING, 0, 0),       # max reached: end forced
        (4, 16, 0, 3, 0, THINKING, 0, 0),        # min not reached, end likely drawn
        (4, 16, 0, 10, 0, THINKING, 0, 0),       # free, end allowed
        (0, 16, 2, 10, 1, THINKING, 1 if with_wait else 0, lw),  # pending Wait run (or not)
        (0, 16, 0, 12, 0, ENDING, lw + 1, L),    # pending end + answer run
        (0, 16, 0, 12, 0, ENDING, L - 1, L),     # last forced token: becomes done
        (0, 16, 0, 12, 0, DONE, L, L),           # done: samples normally
        (4, 16, 0, 3, 0, THINKING, 0, 0),        # greedy, end is the argmax, min not reached
        (4, 16, 0, 16, 0, THINKING, 0, 0),       # forced end with a -inf logit
        (4, 16, 0, 3, 0, THINKING, 0, 0),        # invalid row: untouched
        (0, 16, 0, 12, 0, ENDING, lw + 1, L),    # forced token with a -inf logit
    ]
    budget, forced = _budget_case(f, rows, V)
    logits = torch.randn(len(rows), V, device=DEV)
    logits[[2, 3, 8], end[0]] = 30.0  # the end token dominates
    logits[9, end[0]] = float("-inf")
    logits[10, 3] = float("nan")
    logits[11, end[1]] = float("-inf")
    temperature = [1.0] * len(rows)
    temperature[8] = 0.0
    params = _params(len(rows), temperature, [0, 5, 0, 3, 0, 0, 0, 10, 0, 0, 0, 0],
                     [1.0, 0.9, 1.0, 1.0, 0.8, 1.0, 1.0, 0.9, 1.0, 1.0, 1.0, 1.0], 0.0)
    tok, lp, state = _check(logits, params, budget, forced, lw, le, allow_ties=False)
    tok = tok.tolist()
    assert tok[1] == end[0] and tok[9] == end[0] and lp[9] == float("-inf")
    assert tok[10] == -1 and torch.equal(state[10].cpu(), budget[10].cpu())
    assert tok[11] == end[1]
    if with_wait:
        assert tok[2] == waits[0] and tok[4] == waits[1] and tok[8] == waits[0]
    else:
        assert tok[2] != end[0] and tok[8] != end[0]


def test_budget_decode_loop():
    # several steps in a row, state fed back: the whole state machine against the reference
    torch.manual_seed(6)
    B, V = 6, 40
    f = BudgetForcing(end_think_ids=[5, 6], wait_ids=[7, 8], answer_prefix_ids=[9])
    st = f.init_state(B, min_tokens=torch.tensor([0, 2, 3, 0, 1, 0]), max_tokens=torch.tensor([3, 5, 6, -1, 4, 2]),
                      min_waits=torch.tensor([0, 1, 0, 0, 2, 0]), device=DEV)
    forced = st.forced_ids_tensor(DEV)
    b_ref, b_tri = st.data.clone(), st.data.clone()
    for step in range(7):
        logits = torch.randn(B, V, device=DEV)
        logits[:, 5] += 2.5  # the end is drawn often
        params = _params(B, [1.0, 0.0, 0.9, 1.0, 1.2, 1.0], [0, 0, 5, 0, 0, 3], [1.0, 1.0, 1.0, 0.9, 1.0, 1.0],
                         0.0, offset=torch.full((B,), step))
        tr, lr = sample_reference(logits, *params, b_ref, forced, 2, 2)
        tt, lt = sample_triton(logits, *params, b_tri, forced, 2, 2)
        assert torch.equal(tr.cpu(), tt.cpu()), step
        torch.testing.assert_close(lt, lr, rtol=1e-5, atol=1e-5)
        assert torch.equal(b_ref, b_tri), step


def test_tiny_vocab_and_single_row():
    for V in (1, 2, 5):
        logits = torch.randn(3, V, device=DEV)
        _check(logits, _params(3, [1.0, 0.0, 0.5], [1, 0, 2], [0.5, 1.0, 0.9], [0.0, 0.0, 0.5]))
    logits = torch.randn(1, 77, device=DEV)
    _check(logits, _params(1, 0.8, 4, 0.9, 0.1))
    tok, lp = sample_triton(torch.randn(0, 9, device=DEV), *_params(0), None, None, 0, 0)
    assert tok.shape == (0,) and lp.shape == (0,)


# ---- the threshold search on its own: kept set {key(z) >= T} vs the reference filter ----------
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from tts_kernels.sampling.triton_kernel import (  # noqa: E402
    STAT_PLANES, WS_PLANES, _buffer_masses, _buffer_row, _buffer_thresholds, _candidate_bound, _compact_bounded,
    _filtered_groups, _from_key, _group_list, _keep, _list_contenders, _list_groups, _minp_raw, _order_key, _philox_key,
    _radix_select, _raw_threshold, _rescore, _sort_desc, _sorted_thresholds, _ws_row)


def _workspace(maxima, draw_sums=None):
    """[B, WS_PLANES, NGR] workspace as pass 1 leaves it for the finish: the group maxima, raw sums (0: unused
    here), draw sums (0 when not given), then the candidate-group list's plane (the filters write it)."""
    z = torch.zeros_like(maxima)
    planes = [maxima, z, z if draw_sums is None else draw_sums] + [z] * (WS_PLANES.value - STAT_PLANES.value)
    return torch.stack(planes, 1).contiguous()


@triton.jit
def _thresholds_kernel(z_ptr, k_ptr, p_ptr, g_ptr, l_ptr, m_ptr, buf_ptr, out_ptr, n_ptr, lb_ptr, a_ptr, V, NG, CAP,
                       CAPR, SORT, HBLOCK: tl.constexpr, DBLOCK: tl.constexpr, PW: tl.constexpr, FB: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = z_ptr + row * V
    g_row = _ws_row(g_ptr, row, NG)
    buf_row = _buffer_row(buf_ptr, row, CAPR)   # CAP values (CAPR: CAP in whole HBLOCK tiles), then the masses
    L = tl.load(l_ptr + row)
    k = tl.load(k_ptr + row)
    p = tl.load(p_ptr + row)
    k_on = (k > 0) & (k < V)
    offs = tl.arange(0, HBLOCK)
    zmax = tl.full([], float("-inf"), tl.float32)
    for start in range(0, V, HBLOCK):
        zmax = tl.maximum(zmax, tl.max(tl.load(row_ptr + start + offs, mask=start + offs < V,
                                               other=float("-inf"))))
    mass_row = tl.load(m_ptr + row)            # the row's mass, relative to exp(zmax), as the finish's scan gives it
    nbuf, Lb, above_cnt, above_mass = _compact_bounded(row_ptr, g_row, NG, buf_row, L, zmax, mass_row, k, k_on, p,
                                                       p < 1.0, V, -1, k != k, 1.0, CAP, DBLOCK, HBLOCK, FB)
    tl.store(n_ptr + row, nbuf)
    tl.store(lb_ptr + row, Lb)
    tl.store(a_ptr + row, above_cnt)
    use_buf = nbuf <= CAP
    t_key = tl.full([], 0, tl.uint32)
    mass_k = mass_row
    if (SORT != 0) & use_buf & (nbuf <= PW):   # the sort, as _select_thresholds picks it
        if k_on | (p < 1.0):
            t_key = _sorted_thresholds(buf_row, nbuf, zmax, 1.0, mass_k, k - above_cnt, k_on, p, p < 1.0, above_mass,
                                       PW)
    elif use_buf:                              # the bisection over the buffer (every size without SORT)
        if k_on | (p < 1.0):
            t_key = _buffer_thresholds(buf_row, _buffer_masses(buf_row, CAPR), nbuf, zmax, 1.0, mass_k, k - above_cnt,
                                       k_on, p, p < 1.0, above_mass, HBLOCK)
    else:                                      # overflow: the radix selects over the candidate groups
        if k_on:
            t_key, mass_k = _radix_select(row_ptr, V, -1, k != k, 1.0, zmax, k, 1.0, -1.0, p < 1.0,
                                          g_row, Lb, False, HBLOCK)
        if p < 1.0:
            t_p, _m = _radix_select(row_ptr, V, -1, k != k, 1.0, zmax, k, p, mass_k, p < 1.0, g_row, Lb,
                                    True, HBLOCK)
            t_key = tl.maximum(t_key, t_p)
    tl.store(out_ptr + row, t_key.to(tl.int64))


def _thresholds(z, top_k, top_p, gmax, L, mass, cap, sort):
    """``_thresholds_kernel`` on rows ``z`` with a buffer of ``cap`` values (``sort``: buffers of at most 64 take
    the sort): the threshold keys, the buffered counts, the bounds, the counts above a buffered window (CPU) and
    the buffers (device)."""
    B, V = z.shape
    out = torch.empty(B, dtype=torch.int64, device=DEV)
    nbuf = torch.empty(B, dtype=torch.int32, device=DEV)
    Lb = torch.empty(B, device=DEV)
    above_n = torch.empty(B, dtype=torch.int32, device=DEV)
    capr = -(-max(cap, 1) // 128) * 128
    buf = torch.full((B, 2 * capr), float("nan"), device=DEV)
    rows = [t.to(DEV).contiguous() for t in (z, top_k, top_p, L.float(), mass.float())]   # (an expanded row too)
    _thresholds_kernel[(B,)](*rows[:3], _workspace(gmax).to(DEV), *rows[3:], buf, out, nbuf, Lb, above_n, V,
                             gmax.shape[1], cap, capr, int(sort), HBLOCK=128, DBLOCK=512, PW=64, FB=64)
    return out.cpu(), nbuf.cpu().long(), Lb.cpu(), above_n.cpu().long(), buf


def _assert_window(got, keys, n_above, whole):
    """A buffer's order keys ``got`` against the keys (row order) of the values at or above the bound that the
    compaction returned: every value, or (``whole`` False: a row that overflowed and compacted again) those of one
    range of values (the histogram's bins, ``_overflow_bound``), in row order, with ``n_above`` values above it
    and the rest below it (the 1/16 of a bin under the threshold's bin that the bound admits)."""
    if whole:
        assert torch.equal(got, keys) and n_above == 0
        return
    assert got.numel() > 0
    inside = (keys >= got.min()) & (keys <= got.max())
    assert torch.equal(got, keys[inside]) and int((keys > got.max()).sum()) == n_above


@pytest.mark.parametrize("cap, sort", [(0, False), (64, False), (64, True), (1333, False), (1333, True),
                                       (2048, False), (2048, True)],
                         ids=["row", "mixed", "mixed-sorted", "row-length", "row-length-sorted", "buffer",
                              "buffer-sorted"])
@pytest.mark.parametrize("quantize", [False, True])
def test_threshold_search_exact(quantize, cap, sort):
    """The thresholds over the candidates (the groups whose raw maximum is >= L: here the k-th largest
    group maximum for top-k rows, as _candidate_bound's rule before its rounding, and for top-p alone the
    largest group maximum down to which the group maxima's weights reach 1.001 x top_p of the row's mass,
    a lower bound every kept token reaches though not the kernel's (test_candidate_bound_bisection);
    -inf, all groups, for the others): the
    candidates with key >= T are exactly the reference's kept set, whether the values ``z >= L`` are
    compacted into a buffer of ``cap`` (the bisection, _buffer_thresholds), or, for a row with more, the
    values of the bin that holds the threshold (top-k alone, row 4) or of the bins from it up (top-k and top-p,
    row 9), those above them counted (_compact_bounded; rows 4 and 9: low top-k bounds), or the radix
    selects read the row's candidate groups above the raised bound; from the buffer, ``T`` is exact: no token
    outside it has ``key >= T``. ``sort``: buffers of at most 64 values take the sort (_sorted_thresholds)
    instead of the bisection."""
    torch.manual_seed(7)
    B, V = 16, 1333
    z = torch.randn(B, V, device=DEV) * 2
    if quantize:
        z = torch.round(z * 4) / 4  # ties at the thresholds
    z[0, 10:] = float("-inf")
    z[1, :] = 1.5
    z[6, [5, 300, 700]] += 8.0    # peaked top-p rows: a few group maxima carry the mass (a finite bound)
    z[12, [10, 600]] += 7.0
    z[4, 512:1280] = z[4, 512:1280] * 0.1 - 3.0   # low groups: top-k's bound (the 4th / 6th largest group maximum)
    z[9, 1280:] = z[9, 1280:] * 0.1 - 3.0         # is low, and its candidates overflow a small buffer
    z = torch.where(z == 0, torch.zeros_like(z), z)  # -0 -> +0 as the kernel does
    top_k = torch.tensor([3, 5, 1, 2, 4, 100, 0, 0, 0, 6, 40, 1332, 0, 250, 7, 1], dtype=torch.int32)
    top_p = torch.tensor([1.0, 0.5, 1.0, 0.9, 1.0, 0.8, 0.5, 0.95, 0.01, 0.9, 0.99, 1.0, 0.3, 0.999, 1.0, 0.2])
    G = philox.GROUP_SIZE
    ng = philox.num_groups(V)
    gmax = torch.nn.functional.pad(z.cpu(), (0, ng * G - V), value=float("-inf")).view(B, ng, G).amax(2)
    srt = gmax.sort(1, descending=True).values
    on = (top_k > 0) & (top_k < V) & (top_k <= ng)
    L = torch.where(on, srt.gather(1, (top_k.long() - 1).clamp(0, ng - 1).view(-1, 1)).squeeze(1), float("-inf"))
    zmax = z.cpu().amax(1, keepdim=True)
    mass = torch.exp(z.cpu() - zmax).sum(1)                       # the row's mass, relative to exp(zmax)
    w = torch.where(srt > float("-inf"), torch.exp(srt - zmax), 0.0).cumsum(1)
    p_bound = torch.where(w >= (top_p * mass * 1.001).view(-1, 1), srt, float("-inf")).amax(1)
    p_only = ~((top_k > 0) & (top_k < V)) & (top_p < 1.0)
    L = torch.where(p_only, p_bound, L)
    assert (L > float("-inf")).sum() >= 8 and (L[p_only] > float("-inf")).sum() >= 3
    out, nbuf, Lb, above_n, buf = _thresholds(z, top_k, top_p, gmax, L, mass, cap, sort)
    zc = z.cpu()
    n_want = (zc >= L.view(-1, 1)).sum(1)
    over = n_want > cap
    # a row that fits keeps its bound; one that overflows raises it (_overflow_bound) or reads the row
    assert torch.equal(Lb[~over], L[~over].float()) and bool((Lb[over] >= L[over]).all())
    on_buf = nbuf <= cap
    assert bool((nbuf[~on_buf] == cap + 1).all()) and bool((above_n[~over] == 0).all())
    if cap == 64:   # overflowing rows whose window (or bins from the threshold's up) fits the buffer
        assert int((over & on_buf).sum()) >= 2, (n_want, nbuf)
    filtered = ((top_k > 0) & (top_k < V)) | (top_p < 1.0)
    bisected = on_buf & filtered & ~(sort & (nbuf <= 64))
    assert int(bisected.sum()) > 0 or cap == 0 or (sort and cap == 64)   # a buffer of 64 sorts every row
    for r in range(B):   # the buffer holds the candidates' values in row order (the bisection's rows: their keys)
        if not on_buf[r]:
            continue
        m = int(nbuf[r])
        vals = zc[r][zc[r] >= Lb[r]]
        got = buf.cpu()[r, :m].view(torch.int32).long() & 0xFFFFFFFF if bisected[r] else order_keys(buf.cpu()[r, :m])
        _assert_window(got, order_keys(vals), int(above_n[r]), whole=not over[r])
    if cap == 64:
        assert 0 < int(on_buf.sum()) < B
    if sort:   # rows on the sort, top-p alone among them (and, with a larger buffer, rows on the bisection)
        assert 0 < int((p_only & (n_want <= 64)).sum()) and 0 < int((~p_only & (n_want <= 64)).sum())
        assert cap == 64 or 0 < int(((n_want > 64) & on_buf).sum())
    cand = (gmax >= Lb.view(-1, 1)).repeat_interleave(G, dim=1)[:, :V]   # the radix selects' candidates too
    above = order_keys(zc) >= out.cpu().view(-1, 1)
    want = filter_mask(zc, top_k, top_p, torch.zeros(B))
    kept = above & cand
    assert torch.equal(kept, want), (kept != want).any(1).nonzero().flatten().tolist()
    assert torch.equal(above[on_buf], want[on_buf]), (above != want)[on_buf].any(1).nonzero().flatten().tolist()


# ---- split-row path (several programs per row, exact merge) and the pass-1 approximation -------
from tts_kernels import _triton_layout  # noqa: E402
from tts_kernels.sampling import triton_kernel as _tk  # noqa: E402


@pytest.mark.parametrize("slices", [2, 3, 7])
def test_split_row_matches_reference(monkeypatch, slices):
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: slices)
    torch.manual_seed(8)
    B, V = 6, 3001   # odd vocabulary, last slice partial
    logits = torch.randn(B, V, device=DEV) * 2
    logits[1, 5] = float("nan")
    logits[2, :2500] = float("-inf")        # whole slices without a finite logit
    logits[3, 3000] = 15.0                  # maximum in the last slice
    logits[4] = torch.round(logits[4])      # ties across slices: first index wins
    params = _params(B, [1.0, 0.7, 1.0, 0.0, 0.0, 1.2], [0, 0, 10, 0, 0, 50], [1.0, 0.9, 1.0, 1.0, 1.0, 0.8],
                     [0.0, 0.0, 0.05, 0.0, 0.0, 0.0])
    tok, _, _ = _check(logits, params)
    assert tok[1] == -1 and tok[3] == 3000
    assert tok[4] == int(torch.argmax(logits[4].cpu()))


def test_split_row_budget_and_bf16(monkeypatch):
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: 4)
    torch.manual_seed(9)
    V = 2100
    f = BudgetForcing(end_think_ids=[7, 8], wait_ids=[], answer_prefix_ids=[3])
    rows = [(4, 16, 0, 3, 0, THINKING, 0, 0), (4, 16, 0, 3, 0, THINKING, 0, 0),
            (0, 16, 0, 16, 0, THINKING, 0, 0), (0, -1, 0, 0, 0, DONE, 0, 0)]
    budget, forced = _budget_case(f, rows, V)
    logits = (torch.randn(len(rows), V, device=DEV) * 3).to(torch.bfloat16)
    logits[:2, 7] = 40.0   # the end dominates but is masked (no Wait sequence)
    params = _params(len(rows), [1.0, 0.0, 1.0, 0.9], [0, 0, 0, 20], [1.0, 1.0, 1.0, 0.9], 0.0)
    tok, _, _ = _check(logits, params, budget, forced, 0, 2, allow_ties=False)
    assert tok[0] != 7 and tok[1] != 7 and tok[2] == 7


def test_split_row_flat_logits_philox(monkeypatch):
    # flat logits: the two-level draw over group stats written by 5 slices
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: 5)
    B, V = 4, 2053
    seed = torch.tensor([0, -1, 2 ** 62 + 3, 77], dtype=torch.int64)
    offset = torch.tensor([0, 2 ** 32 + 7, 3, -3], dtype=torch.int64)
    tok, lp = sample_triton(torch.zeros(B, V, device=DEV), *_params(B, seed=seed, offset=offset), None, None, 0, 0)
    assert torch.equal(tok.cpu(), draw(torch.zeros(B, V), torch.ones(B, V, dtype=torch.bool), seed, offset))
    torch.testing.assert_close(lp.cpu(), torch.full((B,), -math.log(V)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_filters_on_candidate_groups(dtype):
    """Top-k / top-p / min-p read only the groups whose maximum can hold a kept token
    (_candidate_bound): peaked rows (few candidate groups), flat rows (all), k beyond the number
    of groups, the end token masked in the best group; tokens equal the reference's."""
    torch.manual_seed(21)
    B, V = 12, 2900                                  # 12 groups of 256, the last short
    x = torch.randn(B, V) * 2
    x[:6, torch.randint(0, V, (6,))] += 9.0          # peaked rows: a few strong tokens
    x[6:8] *= 0.05                                   # flat rows: every group a candidate
    logits = x.to(dtype=dtype, device=DEV)
    params = _params(B, [0.7, 1.0, 1.3, 0.9, 1.0, 0.8, 1.0, 1.0, 0.6, 1.0, 1.2, 0.9],
                     [3, 0, 0, 50, 20, 0, 0, 700, 1, 0, 5, 13],
                     [1.0, 0.9, 1.0, 0.8, 1.0, 0.5, 0.95, 1.0, 1.0, 0.3, 0.99, 1.0],
                     [0.0, 0.0, 0.1, 0.0, 0.02, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5])
    _check(logits, params)
    # every row with top-k, top-p and min-p together (min-p's bound must not narrow the selects)
    _check(logits, _params(B, 1.0, [200, 5, 30, 700, 3, 1, 50, 9, 2, 13, 100, 40], 0.9, 0.05))
    f = BudgetForcing(end_think_ids=[int(x[0].argmax())], wait_ids=[], answer_prefix_ids=[3])
    budget, forced = _budget_case(f, [(4, 16, 0, 3, 0, THINKING, 0, 0)] * B, V)
    _check(logits, params, budget, forced, 0, 2)


@pytest.mark.parametrize("dtype, slices, scan, other_axis", [
    (torch.float32, 1, None, False), (torch.float32, 3, None, False), (torch.bfloat16, 1, None, False),
    (torch.bfloat16, 3, None, False), (torch.float32, 1, 8, False), (torch.bfloat16, 1, None, True),
    (torch.float32, 3, None, True)],
    ids=["fp32", "fp32-split", "bf16", "bf16-split", "fp32-scan-blocks", "bf16-other-axis", "fp32-split-other-axis"])
def test_filtered_draw_rescores(monkeypatch, dtype, slices, scan, other_axis):
    """Rows whose best unfiltered group keeps nothing after the filters, so the chosen group cannot stand
    and the filtered draw's pass (``_filtered_groups``, ``_score_groups``) picks the group again: a group of
    256 strong tokens outweighs a few stronger ones scattered over the row, which top-k / min-p / top-p keep
    alone. Rows whose kept tokens lie in more groups than one tile of the draw's pass holds (candidate groups over
    several tiles; the pass lists those that can still win: a tile or more on a few rows; an odd V), mixed
    temperatures, the end token (one of the peaks)
    masked in half the rows; the split-row finish too, and the group scores in blocks of 8 groups (``_SCAN``
    shrunk: the scores' pass over 18 groups in three blocks), and the tiles of pass 1 and the draw's pass in
    the axis order this Triton does not get (``_triton_layout.REGISTER_AXIS``). Tokens equal the reference's."""
    from tts_kernels.sampling.reference import draw_scores
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: slices)
    if other_axis:
        monkeypatch.setattr(_triton_layout, "REGISTER_AXIS", 1 - _triton_layout.REGISTER_AXIS)
    if scan:
        monkeypatch.setattr(_tk, "_SCAN", scan)
        monkeypatch.setattr(_tk, "_SCAN_POW2_GROUPS", scan // 2)
    gen = torch.Generator().manual_seed(31)
    dblock = max(_tk._finish_tiles(1 << 20, dtype.itemsize, w)["DBLOCK"] for w in (_tk._ROW_WARPS, _tk._SPLIT_WARPS))
    B, V, G = 16, 2 * dblock + 301, philox.GROUP_SIZE
    end = 777
    x = torch.randn(B, V, generator=gen) * 0.5 - 4.0
    for r in range(B):
        a = int(torch.randint(0, V // G, (1,), generator=gen)) * G
        x[r, a:a + G] = 3.0 + 0.01 * torch.randn(G, generator=gen)          # the heavy group
        peaks = torch.randperm(V, generator=gen)[:40]
        peaks = peaks[(peaks < a) | (peaks >= a + G)]
        x[r, peaks] = 4.0 + torch.rand(len(peaks), generator=gen)            # the few strong tokens
        x[r, end] = 5.5                                                      # the end token, strongest
    logits = x.to(dtype=dtype, device=DEV)
    kinds = [(1.0, 12, 1.0, 0.0), (0.8, 0, 1.0, 0.5), (1.3, 40, 0.6, 0.0), (1.0, 0, 0.15, 0.0),
             (0.7, 8, 0.9, 0.2), (1.0, 0, 1.0, 0.6), (1.2, 5, 1.0, 0.0), (1.0, 0, 1.0, 0.2)]
    T, k, p, m = (list(c) * 2 for c in zip(*kinds))
    params = _params(B, T, k, p, m, seed=torch.arange(B) * 7919 + 3, offset=torch.arange(B) + 11)
    f = BudgetForcing(end_think_ids=[end], wait_ids=[], answer_prefix_ids=[3])
    state = [(4, 64, 0, 3, 0, THINKING, 0, 0)] * (B // 2) + [(0, 64, 0, 10, 0, THINKING, 0, 0)] * (B // 2)
    budget, forced = _budget_case(f, state, V)
    _check(logits, params, budget, forced, 0, 1)
    # the rows really rescore: the reference's best unfiltered group keeps no token
    z, keep = reference_keep(drawn_logits(logits, budget, forced, 0, 1), *params[:4])
    gs, _ts = draw_scores(z, torch.isfinite(z), params[4].cpu(), params[5].cpu())
    g = gs.argmax(1)
    kept_in_best = torch.stack([keep[r, g[r] * G:(g[r] + 1) * G].any() for r in range(B)])
    assert int((~kept_in_best).sum()) >= B // 2, kept_in_best
    # and some of them keep tokens in more groups than a tile of the draw's pass (DBLOCK tokens) holds: every
    # group holding a kept token is a candidate group (the pass lists only those that can still win, which
    # test_rescoring_reads_contenders takes over several tiles)
    warps = _tk._ROW_WARPS if slices <= 1 else _tk._SPLIT_WARPS
    tile_groups = _tk._finish_tiles(V, dtype.itemsize, warps)["DBLOCK"] // G
    ngr = philox.num_groups(V)
    kept_groups = torch.nn.functional.pad(keep, (0, ngr * G - V)).view(B, ngr, G).any(2).sum(1)
    assert int(((~kept_in_best) & (kept_groups > tile_groups)).sum()) >= 2, (kept_groups, tile_groups)


@pytest.mark.parametrize("dtype, slices", [(torch.float32, 1), (torch.bfloat16, 1), (torch.float32, 3)],
                         ids=["fp32", "bf16", "fp32-split"])
def test_rescoring_reads_contenders(monkeypatch, dtype, slices):
    """Flat rows whose filters (min-p, top-p) drop part of every group's mass but keep tokens in most groups, so
    that most groups are candidates and the chosen group often does not stand: the rescoring lists only the
    groups whose unfiltered score reaches the best filtered score it knows (``_rescore``: the chosen group's and
    a bound of the row maximum's group's). Tokens equal the reference's; the rows do rescore, and the scores say (computed
    here from the reference's scores, as the kernel's rule; ``test_rescore_prunes`` reads the kernel's) that the list
    is a few groups of the row's 79 on average, and more than one tile of the draw's pass on some rows (min-p 0.2:
    its loop over several tiles of listed groups)."""
    from tts_kernels.sampling.reference import draw_scores
    monkeypatch.setattr(_tk, "_num_slices", lambda B, V, device: slices)
    gen = torch.Generator().manual_seed(8)
    B, V = 24, 20111
    x = torch.randn(B, V, generator=gen)
    T = [0.7, 1.0, 1.5] * 8
    minp = [0.05, 0.2, 0.1, 0.0] * 6
    topp = [1.0] * 12 + [0.9] * 12
    minp = [m if p < 1.0 or m > 0 else 0.05 for m, p in zip(minp, topp)]
    logits = x.to(dtype=dtype, device=DEV)
    params = _params(B, T, 0, topp, minp, seed=torch.arange(B) * 131 + 9, offset=torch.arange(B) * 3)
    _check(logits, params)
    z, keep = reference_keep(drawn_logits(logits, None, None, 0, 0), *params[:4])
    fin = torch.isfinite(z)
    gs, _ts = draw_scores(z, fin, params[4].cpu(), params[5].cpu())           # unfiltered
    gf, _tf = draw_scores(z, keep, params[4].cpu(), params[5].cpu())          # filtered
    top2 = gs.topk(2, dim=1)
    g1 = top2.indices[:, 0]
    s1 = gf.gather(1, g1[:, None])[:, 0]
    rescored = s1 <= top2.values[:, 1]
    gX = z.argmax(1) // philox.GROUP_SIZE                                   # its bound: zmax + its noise
    ref = torch.maximum(s1, z.max(1).values + philox.group_gumbel(params[4].cpu(), params[5].cpu(), V).gather(
        1, gX[:, None])[:, 0])
    contenders = (gs >= ref[:, None]).sum(1)
    ngr = philox.num_groups(V)
    cand = (torch.nn.functional.pad(keep, (0, ngr * philox.GROUP_SIZE - V)).view(B, ngr, -1).any(2)).sum(1)
    assert int(rescored.sum()) >= B // 4, rescored
    assert float(cand[rescored].float().mean()) > ngr / 2, cand
    assert float(contenders[rescored].float().mean()) < ngr / 8, contenders[rescored]
    warps = _tk._ROW_WARPS if slices <= 1 else _tk._SPLIT_WARPS
    tile_groups = _tk._finish_tiles(V, dtype.itemsize, warps)["DBLOCK"] // philox.GROUP_SIZE
    assert int((rescored & (contenders > tile_groups)).sum()) >= 2, (contenders[rescored], tile_groups)


@triton.jit
def _list_kernel(ws_ptr, lz_ptr, t_ptr, f_ptr, seed_ptr, off_ptr, n_ptr, out_ptr, V, NGR, FB: tl.constexpr,
                 SCORED: tl.constexpr):
    """A row's list (``_list_groups``; with SCORED ``_list_contenders`` at the floor ``f_ptr[row]``) and its length."""
    row = tl.program_id(0)
    ws_row = _ws_row(ws_ptr, row, NGR)
    if SCORED:
        k0, k1, c1, c2 = _philox_key(seed_ptr, off_ptr, row)
        n = _list_contenders(ws_row, NGR, V, tl.load(t_ptr + row), tl.load(lz_ptr + row), tl.load(f_ptr + row),
                             c1, c2, k0, k1, FB, True)
    else:
        n = _list_groups(ws_row, NGR, V, tl.load(t_ptr + row), tl.load(lz_ptr + row), FB)
    tl.store(n_ptr + row, n)
    i = tl.arange(0, FB)
    for i0 in range(0, NGR, FB):
        tl.store(out_ptr + row * NGR + i0 + i, tl.load(_group_list(ws_row, NGR) + i0 + i, mask=i0 + i < n, other=-1),
                 mask=i0 + i < NGR)


@pytest.mark.parametrize("FB", [16, 64])
def test_list_groups(FB):
    """``_list_groups``: the candidate groups (raw maximum / T >= the bound: ``_is_candidate``) in increasing
    order, over several blocks of group stats (FB = 16: 5 blocks of 70 groups), whatever their layout in the
    row's tiles: none, one, every group, scattered ones, -inf maxima, the bound -inf (every group)."""
    gen = torch.Generator().manual_seed(11)
    V, B = 17900, 6
    NGR = philox.num_groups(V)                                                # 70
    m = torch.randn(B, NGR, generator=gen) * 4
    m[:, 5::9] = float("-inf")
    T = torch.tensor([1.0, 0.7, 0.5, 1.3, 2.0, 1.0])
    Lz = torch.tensor([1e9, 0.0, 2.5, -1e9, 3.0, float("-inf")])  # none, ~half, one, all finite, few, all
    Lz[2] = (m[2] / T[2]).max()           # exactly one group (T = 0.5: the device's division is exact too)
    n = torch.empty(B, dtype=torch.int32, device=DEV)
    out = torch.empty(B, NGR, dtype=torch.int32, device=DEV)
    _list_kernel[(B,)](_workspace(m).to(DEV), Lz.to(DEV), T.to(DEV), T.to(DEV), n, n, n, out, V, NGR, FB=FB,
                       SCORED=False)
    n, out = n.cpu(), out.cpu()
    for r in range(B):
        want = ((m[r] / T[r]) >= Lz[r]).nonzero()[:, 0].int()
        assert int(n[r]) == len(want) and torch.equal(out[r, :len(want)], want), r
    assert n.tolist()[0] == 0 and n.tolist()[2] == 1 and n.tolist()[5] == NGR and 0 < n.tolist()[1] < NGR


@pytest.mark.parametrize("FB", [16, 64])
def test_list_contenders(FB):
    """``_list_contenders`` (the rescoring's list): the candidate groups (raw maximum / T >= the bound) whose
    unfiltered score ``M / T + ln(S_z) + group noise`` (Philox stream 1, ``philox.group_gumbel``) reaches the
    floor, in increasing order, over several blocks of group stats; the kept masses' plane (1, where the pass
    writes them over the raw sums) zeroed for the candidates left out and untouched elsewhere, the other planes
    untouched. Floors: -inf (every candidate, as ``_list_groups``), a quantile of the scores (about half), above all
    (none); groups within 1e-3 of the floor are not judged."""
    gen = torch.Generator().manual_seed(5)
    V, B = 17900, 6
    NGR = philox.num_groups(V)                                                # 70
    m = torch.randn(B, NGR, generator=gen) * 2
    m[:, 7::11] = float("-inf")
    sz = 1.0 + torch.rand(B, NGR, generator=gen) * 255
    sz[m == float("-inf")] = 0.0
    T = torch.tensor([1.0, 0.7, 1.6, 1.0, 0.5, 2.0])
    Lz = torch.tensor([float("-inf"), 0.0, -1.0, float("-inf"), 1.0, -1e9])
    seed, off = torch.arange(B) * 7 + 3, torch.arange(B) + 100
    u = (m.double() / T[:, None] + torch.log(sz.double())
         + philox.group_gumbel(seed, off, V).double())                        # -inf for the empty groups
    finite = torch.where(torch.isfinite(u), u, torch.nan)
    q = torch.nanquantile(finite, 0.5, dim=1)
    floor = torch.stack([torch.tensor(float("-inf"), dtype=torch.float64), q[1], q[2], q[3], q[4],
                         finite[5].nan_to_num(nan=-1e30).max() + 1.0]).float()
    ws = _workspace(m, sz)
    ws[:, 1] = 7.0                                                           # pass 1's raw sums
    stats = ws[:, [0, 2]].clone()
    ws = ws.to(DEV)
    n = torch.empty(B, dtype=torch.int32, device=DEV)
    out = torch.empty(B, NGR, dtype=torch.int32, device=DEV)
    _list_kernel[(B,)](ws, Lz.to(DEV), T.to(DEV), floor.to(DEV), seed.to(DEV), off.to(DEV), n, out, V, NGR, FB=FB,
                       SCORED=True)
    n, out, ws = n.cpu(), out.cpu(), ws.cpu()
    for r in range(B):
        cand = (m[r] / T[r]) >= Lz[r]
        listed = torch.zeros(NGR, dtype=torch.bool)
        listed[out[r, :int(n[r])].long()] = True
        assert torch.equal(out[r, :int(n[r])], listed.nonzero()[:, 0].int()), r       # increasing, no repeats
        judged = (u[r] - float(floor[r])).abs() > 1e-3
        want = cand & (u[r] >= float(floor[r]))
        assert torch.equal(listed[judged], want[judged]), (r, (listed != want).nonzero()[:, 0].tolist())
        assert not (listed & ~cand).any()
        plane = ws[r, 1]
        assert (plane[cand & ~listed] == 0.0).all() and (plane[listed | ~cand] == 7.0).all(), r
    assert torch.equal(ws[:, [0, 2]], stats)
    counts = n.tolist()
    assert counts[0] == NGR and counts[5] == 0          # floor -inf: every candidate (the bound -inf: every group)
    assert 0 < counts[1] < int(((m[1] / T[1]) >= Lz[1]).sum())                 # the floor leaves some out


@triton.jit
def _filtered_groups_kernel(x_ptr, ws_ptr, seed_ptr, off_ptr, g_ptr, V, NGR, L, Tz, xmax, min_p, xt, end0, mask,
                            DBLOCK: tl.constexpr, DH: tl.constexpr, FB: tl.constexpr, H_AXIS: tl.constexpr):
    k0, k1, c1, c2 = _philox_key(seed_ptr, off_ptr, 0)
    kz = 1.4426950408889634 / Tz
    xt = tl.maximum(xt, _minp_raw(xmax, Tz, min_p))     # as _filter_bounds joins min-p's threshold to the others
    g = _filtered_groups(x_ptr, ws_ptr, NGR, L, V, end0, mask != 0, Tz, kz, xmax, xt, float("-inf"), c1, c2, k0, k1,
                         DBLOCK, DH, FB, H_AXIS)
    tl.store(g_ptr, g)


@pytest.mark.parametrize("other_axis", [False, True], ids=["axis", "other-axis"])
@pytest.mark.parametrize("warps", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_filtered_groups_masses(dtype, warps, other_axis, monkeypatch):
    """The filtered draw's pass (``_filtered_groups``) on its own: each candidate group's kept mass ``S`` (written
    over its raw sum, workspace plane 1) equals the sum of ``exp((x - xmax) / T)`` over the group's tokens that the
    filters keep (``x >= xt`` and that mass ``>= min_p``; the end token masked in a row that masks it, and kept in one
    that does not), to float32 rounding, and no other
    group's is written; tiles of DH loads per thread (the per-row kernel's 4 warps, the split rows' 8) in both axis
    orders (``_triton_layout.REGISTER_AXIS``), over several tiles of listed groups and a partial last group.
    Compared mass by mass: the tokens a draw returns would not show one token missing from a group of 256."""
    if other_axis:
        monkeypatch.setattr(_triton_layout, "REGISTER_AXIS", 1 - _triton_layout.REGISTER_AXIS)
    tiles = _tk._finish_tiles(1 << 20, dtype.itemsize, warps)
    G = philox.GROUP_SIZE
    V = 3 * tiles["DBLOCK"] + 301
    NGR = philox.num_groups(V)
    gen = torch.Generator().manual_seed(43)
    x = (torch.randn(V, generator=gen) * 1.5).to(dtype).float()
    x[G * 3 + 5] = 6.0                                          # the row's maximum
    end0 = G * 5 + 17
    x[end0] = 5.0                                               # the end token: a large mass when it is kept
    xf = torch.nn.functional.pad(x, (0, NGR * G - V), value=float("-inf")).view(NGR, G)
    mid = float(xf.max(1).values.median())                      # candidate groups by L: about half of them
    cases = [(1.0, 0.0, float("-inf"), float("-inf")),          # every group, every token kept
             (0.7, 0.02, float("-inf"), mid),                   # min-p
             (1.3, 0.0, 1.0, mid)]                              # a raw threshold
    # the end token masked (a budget row under rule 3) and, the same token, not (a row that masks nothing)
    for (T, min_p, xt, L), mask in itertools.product(cases, (1, 0)):
        xm = x.clone()
        if mask:
            xm[end0] = float("-inf")
        xmax = float(xm.max())
        mass = torch.exp((xm.double() - xmax) / T)
        keep = (xm >= xt) & (mass >= min_p)
        want = torch.nn.functional.pad(torch.where(keep, mass, 0.0), (0, NGR * G - V)).view(NGR, G).sum(1)
        cand = xf.max(1).values / T >= L / T
        assert 0 < int(cand.sum()) and (L == float("-inf")) == bool(cand.all())
        assert bool(cand[end0 // G])                            # the end token's group is read: the mask matters
        ws = torch.full((WS_PLANES.value, NGR), 12345.0)
        ws[0] = xf.max(1).values
        g = torch.zeros(1, dtype=torch.int32, device=DEV)
        one = torch.ones(1, dtype=torch.int64, device=DEV)
        ws = ws.flatten().to(DEV)
        _filtered_groups_kernel[(1,)](x.to(dtype).to(DEV), ws, one, one, g, V, NGR, L, T, xmax, min_p, xt, end0, mask,
                                      DBLOCK=tiles["DBLOCK"], DH=tiles["DH"], FB=max(16, triton.next_power_of_2(NGR)),
                                      H_AXIS=_triton_layout.REGISTER_AXIS, num_warps=warps)
        S = ws.cpu().view(WS_PLANES.value, NGR)[1]
        assert (S[~cand] == 12345.0).all(), (T, (S[~cand] != 12345.0).nonzero()[:4])
        torch.testing.assert_close(S[cand].double(), want[cand], rtol=2e-6, atol=1e-30,
                                   msg=str((T, min_p, xt, L, mask)))
        assert bool(cand[int(g)]), int(g)


@triton.jit
def _rescore_kernel(x_ptr, ws_ptr, seed_ptr, off_ptr, tok_ptr, V, NGR, Tz, xmax, gX, s1, min_p,
                    DBLOCK: tl.constexpr, DH: tl.constexpr, FB: tl.constexpr, H_AXIS: tl.constexpr):
    k0, k1, c1, c2 = _philox_key(seed_ptr, off_ptr, 0)
    xt = _minp_raw(xmax, Tz, min_p)                  # min-p alone: the filters' threshold and the candidates' bound
    tok = _rescore(x_ptr, ws_ptr, NGR, float("-inf"), xmax, gX, s1, V, -1, V < 0, Tz,
                   1.4426950408889634 / Tz, min_p, xt, c1, c2, k0, k1, DBLOCK, DH, FB, H_AXIS)
    tl.store(tok_ptr, tok)


def test_rescore_prunes():
    """``_rescore`` on its own: the floor is the larger of the chosen group's filtered score (``s1``, given: that of
    the group of the best unfiltered score, as ``_finish`` passes it; or -inf, a chosen group that keeps nothing)
    and ``xmax / T`` + the row maximum's group's noise (a bound of that group's filtered score), less the margin. Flat rows (standard normal logits) under
    min-p 0.1: every group holds kept tokens (a candidate) and keeps about a quarter of its mass; the pass writes
    the kept masses of the contenders (unfiltered score at least the floor) and 0 for the other candidates, which
    it leaves unread: the zeros are the candidates whose float64 unfiltered score lies below the floor (those within
    1e-3 of it not judged); with the chosen group's score, most of them. The token is the reference's (which scores
    every group)."""
    G, T, mp = philox.GROUP_SIZE, 1.0, 0.1
    V = 20111
    NGR = philox.num_groups(V)
    tiles = _tk._finish_tiles(V, 4, _tk._ROW_WARPS)
    gen = torch.Generator().manual_seed(21)
    pruned = []
    for r in range(6):
        x = torch.randn(V, generator=gen)
        xf = torch.nn.functional.pad(x, (0, NGR * G - V), value=float("-inf")).view(NGR, G)
        M = xf.max(1).values
        sz = torch.exp((xf.double() - M.double()[:, None]) / T).sum(1).float()
        ws = _workspace(M[None], sz[None])[0]
        ws[1] = 7.0
        seed, off = torch.tensor([1000 + r]), torch.tensor([3 * r])
        xmax = float(x.max())
        gX = int(x.argmax()) // G
        # float64: the groups' unfiltered and filtered scores; the chosen group's (rows 0-3) or -inf (4, 5)
        h = philox.group_gumbel(seed, off, V)[0].double()
        u = M.double() / T + torch.log(sz.double()) + h
        keep = xf.double() >= xmax + T * math.log(mp)
        kept = torch.where(keep, torch.exp((xf.double() - xmax) / T), 0.0).sum(1)
        f = xmax / T + torch.log(kept) + h
        s1 = float(f[int(u.argmax())]) if r < 4 else float("-inf")
        tok = torch.zeros(1, dtype=torch.int32, device=DEV)
        ws = ws.flatten().to(DEV)
        _rescore_kernel[(1,)](x.to(DEV), ws, seed.to(DEV), off.to(DEV), tok, V, NGR, T, xmax, gX, s1, mp,
                              DBLOCK=tiles["DBLOCK"], DH=tiles["DH"], FB=tiles["FB"],
                              H_AXIS=_triton_layout.REGISTER_AXIS, num_warps=_tk._ROW_WARPS)
        plane = ws.cpu().view(WS_PLANES.value, NGR)[1]
        ref = max(s1, xmax / T + float(h[gX]))
        floor = ref - 1e-4 * (1 + abs(xmax / T) + abs(ref))
        lm = xmax + T * math.log(mp)
        cand = M >= lm - 1e-3 * (1 + abs(xmax) + abs(lm))                        # _minp_bound's margin
        judged = (u - floor).abs() > 1e-3
        zero = (plane == 0.0) & cand
        assert torch.equal(zero[judged], (cand & (u < floor))[judged]), r
        listed = cand & ~zero
        torch.testing.assert_close(plane[listed & judged].double(), kept[listed & judged], rtol=2e-6, atol=1e-30)
        pruned.append(int(zero.sum()) / int(cand.sum()))
        tok_r, _ = sample_reference(x[None], torch.tensor([T]), torch.zeros(1, dtype=torch.int32), torch.ones(1),
                                    torch.tensor([mp]), seed, off)
        assert int(tok) == int(tok_r), (r, int(tok), int(tok_r))
    # with the chosen group's score, about 1 / (the share of its mass a group keeps) groups are read
    assert min(pruned[:4]) > 0.8 and max(pruned[4:]) < 1.0, pruned


@triton.jit
def _minp_raw_kernel(xmax_ptr, t_ptr, p_ptr, x_ptr, o_ptr, N: tl.constexpr, M: tl.constexpr):
    """Per row of ``N``: min-p's raw threshold, and whether the filters' test (``_keep``) keeps each of ``M``
    logits."""
    i = tl.arange(0, N)
    xm = _minp_raw(tl.load(xmax_ptr + i), tl.load(t_ptr + i), tl.load(p_ptr + i))
    tl.store(o_ptr + i, xm)
    x = tl.load(x_ptr + i[:, None] * M + tl.arange(0, M)[None, :])
    tl.store(o_ptr + N + i[:, None] * M + tl.arange(0, M)[None, :], _keep(x, xm[:, None]).to(tl.float32))


def test_minp_raw():
    """``_minp_raw(xmax, T, min_p)``, min-p's threshold on the raw logits (``xmax + T ln(min_p)``), with which the
    filters' one compare (``_keep``) keeps min-p's tokens: within a few ulp of its terms of the float64 value, and
    every logit farther than that from it is kept exactly when its probability relative to the maximum's,
    ``exp((x - xmax) / T)`` in float64, reaches min_p; maxima of either sign, zero and large, temperatures
    0.05-4, min_p from 1e-30 to 1 (the maximum alone), -inf for min_p = 0 (off)."""
    gen = torch.Generator().manual_seed(11)
    N, M = 256, 16
    xmax = torch.randn(N, generator=gen) * 30
    xmax[:6] = torch.tensor([0.0, -0.0, 1e-30, -7.5, 300.0, -300.0])
    T = torch.rand(N, generator=gen) * 3.95 + 0.05
    p = 10 ** (-torch.rand(N, generator=gen) * 30)
    p[6:10] = torch.tensor([1.0, 0.5, 0.0, 1e-30])
    # logits whose relative probability is min_p x (1 +- 1e-4 .. 1e-2) (1 - ... only, at min_p = 1), and xmax
    rel = torch.tensor([1e-4, 1e-3, 1e-2, 0.3])
    above = torch.clamp(p.double()[:, None] * (1 + rel), max=1.0)
    below = p.double()[:, None] * (1 - rel)
    x = xmax.double()[:, None] + T.double()[:, None] * torch.log(torch.cat([above, below, above, below], 1))
    x[:, 0] = xmax.double()
    x = x.float()
    out = torch.zeros(N + N * M, device=DEV)
    _minp_raw_kernel[(1,)](xmax.to(DEV), T.to(DEV), p.to(DEV), x.to(DEV), out, N=N, M=M)
    xm, kept = out.cpu()[:N], out.cpu()[N:].view(N, M) > 0
    on = p > 0
    assert (xm[~on] == float("-inf")).all() and kept[~on].all()
    # float32 rounding of xmax + T ln(min_p): a few ulp of its terms
    want = xmax.double() + T.double() * torch.log(p.double())
    ulps = 6e-8 * (xmax.double().abs() + (T.double() * torch.log(p.double())).abs() + 1e-30)
    assert ((xm.double() - want).abs() <= 4 * ulps)[on].all(), ((xm.double() - want).abs() / ulps)[on].max()
    # every logit farther than that from the threshold, kept exactly when its float64 mass reaches min_p
    clear = ((x.double() - want[:, None]).abs() > 8 * ulps[:, None]) & on[:, None]
    assert clear.sum() > N * M // 2
    mass = torch.exp((x.double() - xmax.double()[:, None]) / T.double()[:, None])
    assert (kept[clear] == (mass >= p.double()[:, None])[clear]).all()
    assert kept[on, 0].all()                                     # the maximum, also at min_p = 1


@triton.jit
def _raw_threshold_kernel(z_ptr, t_ptr, o_ptr, N: tl.constexpr):
    """The threshold, and both it and the float just below it divided by T on the device (a GPU divides
    with div.full.f32, within 2 ulp: the threshold is exact for the kernel's own division)."""
    i = tl.arange(0, N)
    T = tl.load(t_ptr + i)
    x = _raw_threshold(tl.load(z_ptr + i), T)
    tl.store(o_ptr + i, x)
    tl.store(o_ptr + N + i, x / T)
    tl.store(o_ptr + 2 * N + i, _from_key(_order_key(x) - 1) / T)


def test_raw_threshold():
    """``_raw_threshold(zt, T)``: the smallest float32 x with x / T >= zt (the kernel's division), for
    thresholds that are values x / T and for any float; -inf for -inf, signed zeros, tiny and huge values,
    thresholds whose ``zt x T`` overflows (+inf: no finite x reaches them; -FLT_MAX)."""
    gen = torch.Generator().manual_seed(5)
    N = 4096
    T = torch.rand(N, generator=gen) * 1.8 + 0.2
    T[:8] = torch.tensor([1.0, 0.7, 1 / 3, 1.3, 0.6, 2.0, 0.5, 1.1])
    x = torch.randn(N, generator=gen) * 20
    zt = x / T
    zt[N // 2:] = torch.randn(N // 2, generator=gen) * 30                    # any float, not a quotient
    zt[:8] = torch.tensor([float("-inf"), 0.0, -0.0, 1e-30, -3e38 / 2, 1e-38, 3e38, -3e38])
    T[6:8] = 2.0
    res = torch.empty(3 * N, device=DEV)
    _raw_threshold_kernel[(1,)](zt.to(DEV), T.to(DEV), res, N)
    out, out_div, below_div = res.cpu().view(3, N)
    assert out[0] == float("-inf") and out[6] == float("inf") and out[7] == -torch.finfo(torch.float32).max
    fin = torch.isfinite(zt)
    assert bool((out_div[fin] >= zt[fin]).all())
    assert bool((below_div[fin] < zt[fin]).all())
    if DEV.type == "cpu":    # the interpreter divides as torch does
        assert torch.equal(out_div, out / T)


@pytest.mark.parametrize("V", [2900, 5000], ids=["one-block", "two-blocks"])
def test_scan_blocks(monkeypatch, V):
    """Rows of more than _SCAN_POW2_GROUPS groups scan their stats in blocks of _SCAN (shrunk here to
    8 and 16): 12 groups in one padded block (the candidate bound on), 20 in two (no bound: every
    group a candidate); tokens equal the reference's, every filter mix."""
    monkeypatch.setattr(_tk, "_SCAN", 16)
    monkeypatch.setattr(_tk, "_SCAN_POW2_GROUPS", 8)
    torch.manual_seed(V)
    B = 8
    x = torch.randn(B, V) * 3
    x[:4, torch.randint(0, V, (4,))] += 8.0
    _check(x.to(DEV), _params(B, [0.7, 1.0, 1.3, 1.0, 0.9, 1.1, 1.0, 0.5], [0, 5, 0, 40, 3, 0, 700, 0],
                              [1.0, 0.9, 0.7, 1.0, 0.95, 1.0, 0.8, 1.0], [0.0, 0.0, 0.1, 0.0, 0.05, 0.2, 0.0, 0.0]))


def test_candidate_bound_regressions():
    """Two rows an earlier candidate bound got wrong (review of the redesign): (1) top-k, top-p and
    min-p together, where min-p's bound dropped part of the top-k set from the selects; (2) two
    raw logits one ulp apart that divide by T = 3 to the same z, tied at the top-k threshold, in
    different groups (ties at the threshold are kept: candidacy is judged after the division)."""
    V = 1024
    x = torch.full((40, V), -30.0)
    x[:, 0] = 0.0
    x[:, 1:256] = -5.0
    x[:, 256:266] = -0.5
    x[:, 266:512] = -10.0
    x[:, 512:768] = -2.0
    tok, _, _ = _check(x.to(DEV), _params(40, 1.0, 200, 0.1, 0.3, seed=torch.arange(40)), allow_ties=False)
    assert set(tok.tolist()) - {0} and set(tok.tolist()) <= {0, *range(256, 266)}
    a = torch.tensor(3.7353096)
    b = torch.nextafter(a, torch.tensor(10.0))
    assert (a / 3) == (b / 3)
    y = torch.full((40, V), -20.0)
    y[:, 300] = a
    y[:, 5] = b
    tok, _, _ = _check(y.to(DEV), _params(40, 3.0, 1, 1.0, 0.0, seed=torch.arange(40)), allow_ties=False)
    assert set(tok.tolist()) == {5, 300}


@triton.jit
def _sort_kernel(x_ptr, o_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(o_ptr + i, _sort_desc(tl.load(x_ptr + i), N))


@pytest.mark.parametrize("N", [2, 16, 256, 4096])
def test_sort_desc(N):
    """The bitonic sort of the thresholds' buffer equals torch.sort: -inf entries, ties, zeros."""
    torch.manual_seed(N)
    for _ in range(3):
        x = torch.randn(N) * 5
        x[:: 7] = float("-inf")
        x[1:: 11] = x[4] if N > 4 else 1.0            # finite ties
        x[2:: 13] = -0.0                              # zeros of both signs (equal as values)
        x[3:: 17] = 0.0
        out = torch.empty(N, device=DEV)
        _sort_kernel[(1,)](x.to(DEV), out, N)
        assert torch.equal(out.cpu(), x.sort(descending=True).values)


@triton.jit
def _bound_kernel(ws_ptr, k_ptr, p_ptr, t_ptr, tot_ptr, x_ptr, ge_ptr, me_ptr, sze_ptr, out_ptr, NGR,
                  FB: tl.constexpr):
    row = tl.program_id(0)
    ws_row = _ws_row(ws_ptr, row, NGR)          # a row's planes: maxima, raw sums (unused), draw sums, list
    k = tl.load(k_ptr + row)
    p = tl.load(p_ptr + row)
    L = _candidate_bound(ws_row, NGR, tl.load(ge_ptr + row), tl.load(me_ptr + row), tl.load(sze_ptr + row),
                         tl.load(x_ptr + row), tl.load(t_ptr + row), k, k > 0, p, p < 1.0, tl.load(tot_ptr + row), FB)
    tl.store(out_ptr + row, L)


def _bounds(m, sz, k, p, T, FB, ge=None, me=None, sze=None):
    """_candidate_bound of rows of group maxima ``m`` and draw sums ``sz`` (each group's mass relative to
    its maximum), with the row's mass ``total`` their sum; returns (bounds, total). ``ge``: a group per
    row whose stats the kernel takes from ``me`` / ``sze`` instead of the workspace (the end-masked
    group; -1: none)."""
    R, NGR = m.shape
    if ge is None:
        ge, me, sze = torch.full((R,), -1, dtype=torch.int32), torch.zeros(R), torch.zeros(R)
    mz, szz = m.clone(), sz.clone()
    on = ge >= 0
    mz[on, ge[on].long()], szz[on, ge[on].long()] = me[on], sze[on]
    X = mz.max(1).values
    eM = torch.where(mz > float("-inf"), torch.exp((mz - X[:, None]) / T[:, None]), torch.zeros(()))
    total = (szz * eM).sum(1)
    ws = _workspace(m, sz)
    out = torch.empty(R, device=DEV)
    _bound_kernel[(R,)](ws.to(DEV), k.to(DEV), p.to(DEV), T.to(DEV), total.to(DEV), X.to(DEV), ge.to(DEV),
                        me.to(DEV), sze.to(DEV), out, NGR, FB)
    return out.cpu(), total


def _truncated(v):
    """v (-0 as +0) rounded down to the top 16 bits of its order key (-inf at or below -inf's key)."""
    key = order_keys(torch.tensor([v + 0.0 if v == 0 else v], dtype=torch.float32)) & 0xFFFF0000
    return key_floats(key).item()


def _prefix_values():
    """The float of every 16-bit order-key prefix ``j << 16`` (float64; -inf at or below -inf's key)."""
    return key_floats(torch.arange(65536, dtype=torch.int64) << 16).double()


def _top_p_bound_key(m, sz, X, T, target):
    """Top-p's bound by brute force in float64: the largest 16-bit prefix ``c`` at which the groups whose
    maximum reaches it weigh at least ``target`` (and more than 0), a group ``max(exp((M - X) / T),
    its mass (1 - 1e-4) - 255 (1 + 1e-4) exp((c - X) / T))``; as its key (0: none)."""
    vals = _prefix_values()
    m, sz = m.double(), sz.double()
    eM = torch.where(m > float("-inf"), torch.exp((m - X) / T), torch.zeros((), dtype=torch.float64))
    below = 255 * (1 + 1e-4) * torch.exp((vals - X) / T)
    w = torch.maximum(eM[None, :], (sz * eM * (1 - 1e-4))[None, :] - below[:, None])
    W = torch.where(m[None, :] >= vals[:, None], w, torch.zeros((), dtype=torch.float64)).sum(1)
    ok = ((W >= target) & (W > 0)).nonzero()
    return int(ok.max()) << 16 if len(ok) else 0


def test_candidate_bound_bisection():
    """_candidate_bound against a sort and a brute force: top-k's bound is the k-th largest group maximum
    (the padding's -inf counted: k beyond the groups gives -inf), top-p's the largest 16-bit key prefix at
    which the groups whose maximum reaches it hold 1.001 x top_p x total at least (each group its maximum's
    mass or its whole mass less what 255 tokens below the prefix can weigh, whichever is more), each
    rounded down to the top 16 bits of its order key; negative maxima, -inf groups, ties (at the top for
    top-p), groups whose mass is all in their maximum (the bound from the maxima alone) or spread over many
    tokens, a -0.0 maximum at the top-k bound (+0.0 after the kernel's canonicalisation), and rows with
    neither filter (-inf)."""
    torch.manual_seed(5)
    R, NGR, FB = 48, 37, 64
    m = torch.randn(R, NGR) * torch.tensor([0.3, 3.0, 40.0]).repeat(R // 3)[:, None]
    m[::4, 5:9] = float("-inf")
    m[1::5, 2] = -0.0
    m[2::6, 10:14] = m[2::6, 3:4]                 # ties
    m[::6, 20:23] = m[::6].max(1, keepdim=True).values   # ties at the top (top-p rows)
    m[3::12] = -m[3::12].abs() - 1.0              # top-k = 5 at a -0.0 maximum: 4 positive ones above it
    m[3::12, 30:34] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    m[3::12, 11] = -0.0
    # each group's mass over its maximum's: 1 (all in the maximum) up to 256 (flat)
    sz = 1.0 + torch.rand(R, NGR) * torch.tensor([0.0, 3.0, 255.0, 40.0, 10.0]).repeat(10)[:R, None]
    sz = torch.where(m > float("-inf"), sz, torch.zeros(()))
    k = torch.tensor([0, 1, 2, 5, 36, 37, 50, 0, 65, 3, 0, 7] * (R // 12), dtype=torch.int32)
    p = torch.tensor([0.9, 1.0, 0.5, 1.0, 1.0, 1.0, 0.3, 1.0, 1.0, 0.99, 0.02, 1.0] * (R // 12))
    T = torch.rand(R) + 0.5
    out, total = _bounds(m, sz, k, p, T, FB)
    X = m.max(1).values
    padded = torch.cat([m, torch.full((R, FB - NGR), float("-inf"))], 1)
    spread = 0
    for r in range(R):
        if 0 < k[r]:
            srt = padded[r].sort(descending=True).values
            want = _truncated(srt[k[r] - 1].item()) if k[r] <= FB else float("-inf")
            assert out[r].item() == want, (r, out[r].item(), want)
            if want > float("-inf"):
                kth = srt[k[r] - 1].item()
                assert want <= kth and kth - want <= abs(kth) * 2 ** -7
        elif p[r] < 1.0:
            # either side of a summation-order rounding of the target
            target = p[r].item() * total[r].item() * 1.001
            lo, hi = (_top_p_bound_key(m[r], sz[r], X[r].item(), T[r].item(), target * f) for f in (1 + 1e-5, 1 - 1e-5))
            got = int(order_keys(out[r:r + 1])[0]) if out[r] > float("-inf") else 0
            assert lo <= got <= hi, (r, hex(got), hex(lo), hex(hi))
            # the maxima alone: the largest maximum whose maxima from the top reach the target
            eM = torch.exp((m[r] - X[r]) / T[r]).sort(descending=True)
            reach = eM.values.cumsum(0) >= p[r] * total[r] * 1.001
            spread += int(not reach.any() and got > 0)
        else:
            assert torch.isinf(out[r])
    assert spread >= 2                              # rows that only the mass beside the maxima bounds
    assert (out[3::12] == 0.0).all()                  # the -0.0 at the bound: +0.0, not a tiny negative
    assert torch.isinf(out[7::12]).all()              # neither filter: no bound
    # the end-masked group: its stats from (ge, Me, SZe), not the workspace, give the bound of a workspace
    # that holds them
    ge = torch.randint(0, NGR, (R,), dtype=torch.int32)
    me = m.gather(1, ge[:, None].long())[:, 0] - torch.rand(R) * 2
    sze = 1.0 + torch.rand(R) * 100
    masked, _ = _bounds(m, sz, k, p, T, FB, ge, me, sze)
    m2, sz2 = m.clone(), sz.clone()
    m2[torch.arange(R), ge.long()], sz2[torch.arange(R), ge.long()] = me, sze
    direct, _ = _bounds(m2, sz2, k, p, T, FB)
    assert torch.equal(masked, direct) and not torch.equal(masked, out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_top_p_bound_counts_the_mass_beside_a_maximum(monkeypatch, dtype):
    """Top-p alone on rows whose group maxima carry less than top_p of the mass (the case that left 31%
    of SmolLM2-135M's rows at T = 0.6, top-p 0.95 without a bound: no compaction, radix selects over the
    whole row): rows 0-7, the two strongest tokens share a group over a tail of 4000 weak ones; rows
    8-11, the strongest token's other group-mates sit 3 below it and together outweigh it, so top-p
    keeps it and many of them (a bound that let fewer than 255 of them weigh below it would cut them off). The bound is
    finite, every kept token reaches it, on rows 0-7 only the strong tokens do, and the sampler's
    tokens equal the reference's with a buffer (256 values per-row, 512 on split rows) shorter than the row, which
    a row without a bound would not fill."""
    torch.manual_seed(12)
    B, V = 12, 4096
    x = torch.randn(B, V) * 0.5 - 12.0
    x[:, 10] = 2.0
    x[:8, 20] = 1.8 - 0.1 * torch.arange(8)            # same group (0) as token 10
    x[1:8:2, 700] = 1.5                                # and a third strong token elsewhere
    x[8:, 1:256] = -1.0 - 0.01 * torch.rand(4, 255)    # the group-mates of token 10 ...
    x[8:, 10] = 2.0                                    # ... which stays the strong maximum
    x[8:, 300:310] = -1.5                              # and some strong tokens elsewhere
    x = x.to(dtype).float()
    T = torch.tensor([1.0, 0.7, 1.3, 1.0, 0.9, 1.1, 1.0, 0.8, 1.0, 1.0, 1.2, 0.9])
    p = torch.tensor([0.9, 0.95, 0.8, 0.97, 0.9, 0.95, 0.85, 0.9, 0.5, 0.9, 0.95, 0.7])
    G = 256
    xg = x.view(B, V // G, G)
    m = xg.max(2).values
    sz = torch.exp((xg - m[..., None]) / T[:, None, None]).sum(2)
    k = torch.zeros(B, dtype=torch.int32)
    L, total = _bounds(m, sz, k, p, T, 64)
    eM = torch.exp((m - m.max(1, keepdim=True).values) / T[:, None])
    assert (eM.sum(1) < p * total).all()             # the maxima alone: no bound
    assert torch.isfinite(L).all()
    kept = filter_mask(x / T[:, None], k, p, torch.zeros(B))
    assert (x[kept] >= L.repeat_interleave(kept.sum(1))).all()
    assert (kept[8:, 1:256].sum(1) >= 100).all() and kept[8:, 10].all()   # the maximum and many group-mates
    assert ((x[:8] >= L[:8, None]).sum(1) <= 3).all()  # the candidates: the strong tokens only
    monkeypatch.setattr(_tk, "_CANDIDATES", 24)
    _check_both_paths(monkeypatch, x.to(dtype).to(DEV), _params(B, T, 0, p, 0.0))


@triton.jit
def _bounded_kernel(x_ptr, ws_ptr, buf_ptr, l_ptr, t_ptr, k_ptr, p_ptr, zmax_ptr, tot_ptr, n_ptr, lb_ptr, a_ptr, V, NGR,
                    CAP, HBLOCK: tl.constexpr, DBLOCK: tl.constexpr, FB: tl.constexpr = 64):
    row = tl.program_id(0)
    T = tl.load(t_ptr + row)
    k = tl.load(k_ptr + row)
    p = tl.load(p_ptr + row)
    nbuf, Lb, above_cnt, above_mass = _compact_bounded(
        x_ptr + row * V, _ws_row(ws_ptr, row, NGR), NGR, buf_ptr + row * CAP, tl.load(l_ptr + row),
        tl.load(zmax_ptr + row), tl.load(tot_ptr + row), k, k > 0, p, p < 1.0, V, -1, k != k, T, CAP, DBLOCK, HBLOCK,
        FB)
    tl.store(n_ptr + row, nbuf)
    tl.store(lb_ptr + row, Lb)
    tl.store(a_ptr + row, above_cnt)
    tl.store(a_ptr + tl.num_programs(0) + row, above_mass.to(tl.int32, bitcast=True))


def _bounded(z, ws, L, T, k, p, total, CAP):
    """``_compact_bounded`` on rows ``z`` of raw logits with the raw bound ``L`` (it derives ``Lz = L / T`` and
    ``xL = _raw_below(L, Lz, T)``): the buffered count, the bound, the count and the mass above a buffered window,
    and the buffers."""
    B, V = z.shape
    n = torch.empty(B, dtype=torch.int32, device=DEV)
    Lb = torch.empty(B, device=DEV)
    a = torch.empty(2 * B, dtype=torch.int32, device=DEV)
    buf = torch.full((B, CAP), float("nan"), device=DEV)
    _bounded_kernel[(B,)](z.to(DEV), ws.to(DEV), buf, L.to(DEV), T.to(DEV), k.to(DEV), p.to(DEV),
                          z.max(1).values.to(DEV), total.to(DEV), n, Lb, a, V, ws.shape[2], CAP, HBLOCK=512,
                          DBLOCK=2048)
    a = a.cpu()
    return n.cpu().long(), Lb.cpu(), a[:B].long(), a[B:].view(torch.float32), buf.cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_overflowing_candidates_take_the_threshold_bin(monkeypatch, dtype):
    """Rows like a language model's at T ~ 1 (a Zipf tail: the value of rank r about -1.6 s ln(r)) whose
    candidates for top-p alone overflow a buffer of 512: the compaction stops at the tile that would
    overflow it, one more read bins the candidates (_overflow_bound), and the values of the bin that holds
    top-p's threshold are compacted again, the mass above that bin kept whole. Rows 0, 1, 2, 5 and 6
    overflow, 2 and 6 with kept sets larger than the buffer (which the radix selects read 5-7 times before
    the window); all but row 6 fit then (its threshold's bin alone holds more than 512 values: the radix
    selects read the groups above the bound); rows 3, 4 and 7 never overflow. Every kept token reaches the
    returned bound, the buffer holds exactly the values of one range of values in row order, the values
    above it are the count and the mass returned, and the sampler's tokens equal the reference's on every
    path. (The kernel gets ``z = x / T`` and T = 1, so that its values are the test's on a GPU too.)"""
    torch.manual_seed(5)
    B, V, G, CAP = 8, 6007, philox.GROUP_SIZE, 512
    NGR = philox.num_groups(V)
    s = torch.tensor([1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.0])
    rank = torch.stack([torch.randperm(V) for _ in range(B)]).float()
    x = (6.0 - s[:, None] * torch.log1p(rank) * 1.6 + 0.1 * torch.randn(B, V)).to(dtype).float()
    T = torch.tensor([1.0, 1.0, 1.2, 0.9, 1.0, 1.0, 1.3, 0.7])
    p = torch.tensor([0.95, 0.99, 0.9, 0.95, 0.97, 0.9, 0.95, 0.99])
    k = torch.zeros(B, dtype=torch.int32)
    xg = torch.nn.functional.pad(x, (0, NGR * G - V), value=float("-inf")).view(B, NGR, G)
    m = xg.max(2).values
    sz = torch.exp((xg - m[..., None]) / T[:, None, None]).sum(2)
    L, total = _bounds(m, sz, k, p, T, 64)
    z, Lz = x / T[:, None], L / T
    kept = filter_mask(z, k, p, torch.zeros(B))
    n_cand = (z >= Lz[:, None]).sum(1)
    n, Lb, n_above, m_above, buf = _bounded(z, _workspace(m / T[:, None], sz), Lz, torch.ones(B), k, p, total, CAP)
    over, fits = n_cand > CAP, n <= CAP
    assert over.tolist() == [True, True, True, False, False, True, True, False]
    assert fits.tolist() == [True] * 6 + [False, True], (n_cand, n)
    assert n[6] == CAP + 1
    assert bool((kept.sum(1)[[2, 6]] > CAP).all())
    assert torch.equal(Lb[~over], Lz[~over]) and bool((Lb[over] > Lz[over]).all())
    assert bool(((z >= Lb[:, None]) | ~kept).all())                  # every kept token reaches the bound
    zmax = z.max(1, keepdim=True).values
    for r in fits.nonzero().flatten().tolist():
        vals = z[r][z[r] >= Lb[r]]
        _assert_window(order_keys(buf[r, :n[r]]), order_keys(vals), int(n_above[r]), whole=not over[r])
        hi = vals[vals > buf[r, :n[r]].max()]
        assert float(m_above[r]) == pytest.approx(float(torch.exp(hi - zmax[r]).sum()), rel=1e-5, abs=1e-30)
        # the window holds the threshold: the mass above it is short of top-p's, the window's own completes it
        assert float(m_above[r]) < float(p[r] * total[r])
        if over[r]:
            w = float(torch.exp(buf[r, :n[r]] - zmax[r]).sum())
            assert float(m_above[r]) + w >= float(p[r] * total[r]) * (1 - 1e-5), r
    monkeypatch.setattr(_tk, "_CANDIDATES", 24)   # a buffer of 256 (per-row) or 512 (split rows) in the sampler
    _check_both_paths(monkeypatch, x.to(dtype).to(DEV), _params(B, T, 0, p, 0.0))


@pytest.mark.parametrize("sort", [True, False], ids=["sorted", "bisected"])
def test_window_top_p_at_a_bin_edge(sort):
    """Top-p alone on a row whose 300 candidates overflow a buffer of 64: the window is the bin that holds the
    threshold, and ``top_p`` steps across a bin edge in steps of 1e-7 of itself, so that the mass above the
    window, summed in another order than the buffer's, falls within rounding of the target. The kept set is the
    reference's but for one token at the edge (a near-tie); when no buffered value reaches the target, every one
    of them is kept (the smallest key), never the whole row (the sort kept 512 tokens where the reference kept
    201 before that rule)."""
    torch.manual_seed(1)
    V, G = 6007, philox.GROUP_SIZE
    ng = philox.num_groups(V)
    x = torch.full((V,), -20.0)
    x[:300] = 3.0 * torch.rand(300)
    Lz = torch.tensor(-5.0)
    zmax = x.max()
    zz = x[x >= Lz]
    d = torch.clamp((zz - Lz) * (torch.tensor(16.0) / (zmax - Lz)), 0, 15).to(torch.int64)
    ge = torch.zeros(16).index_add_(0, d, torch.exp(zz - zmax)).flip(0).cumsum(0).flip(0)
    total = torch.exp(x - zmax).sum()
    edges = [float(ge[b] / total) for b in range(16) if 0.5 < float(ge[b] / total) < 0.99]
    assert len(edges) >= 2
    R = 12
    ps = torch.tensor([pe * (1 + (i - R // 2) * 1e-7) for pe in edges for i in range(R)], dtype=torch.float32)
    B = ps.numel()
    z = x.repeat(B, 1)
    gmax = torch.nn.functional.pad(z, (0, ng * G - V), value=float("-inf")).view(B, ng, G).amax(2)
    out, nbuf, Lb, _above, _buf = _thresholds(z, torch.zeros(B, dtype=torch.int32), ps, gmax, torch.full((B,), -5.0),
                                              total.expand(B), 64, sort)
    assert bool((nbuf <= 64).all()) and bool((Lb > Lz).all())       # every row's window fits the buffer
    cand = (gmax >= Lb.view(-1, 1)).repeat_interleave(G, dim=1)[:, :V]
    kept = (order_keys(z) >= out.view(-1, 1)) & cand
    want = filter_mask(z, torch.zeros(B, dtype=torch.int32), ps, torch.zeros(B))
    assert bool(((kept != want).sum(1) <= 1).all()), (kept.sum(1), want.sum(1))


def test_threshold_bin_that_overflows(monkeypatch):
    """A row whose threshold's bin alone holds more values than the buffer: 700 values within 1/32 of a bin under
    the top bin's edge, and top-k 60 reaches into them past the top bin's 40, so the second compaction overflows
    a buffer of 512, and the radix selects read the groups above the bound; the same row with 300 of those values
    and 400 far below them, whose threshold's bin fits (top-k takes its 20th largest value, the 40 above counted);
    and rows whose threshold lies in the top bin (of 100 values: top-k 60 alone, and with top-p 0.9 the bins from
    the threshold's up), which fit. The sampler's tokens equal the reference's (fp32, and bf16, where the rounding
    moves the 700 elsewhere)."""
    G, V, CAP = philox.GROUP_SIZE, 16384, 512
    NGR = V // G
    x = torch.full((4, V), -20.0)
    x[:, :100] = 9.4 + 0.001 * torch.arange(100)                      # group 0: the top bin
    x[[0, 3], 40:100] = -20.0                                         # (40 of them in rows 0 and 3)
    x[:, 4 * G::G] = -5.0 - 0.01 * torch.arange(NGR - 4)              # the other groups' maxima: top-k's bound
    x[:, G:G + 700] = 0.0                                             # groups 1-3: placed below
    T = torch.ones(4)
    k = torch.tensor([60, 60, 60, 60], dtype=torch.int32)
    p = torch.tensor([1.0, 1.0, 0.9, 1.0])

    def bound():
        xg = x.view(4, NGR, G)
        m = xg.max(2).values
        sz = torch.exp((xg - m[..., None]) / T[:, None, None]).sum(2)
        return m, sz, *_bounds(m, sz, k, p, T, 64)

    _m, _sz, L, _total = bound()
    zmax = x.max(1).values
    edge = L + 15 * (zmax - L) / 16                                   # the top bin's lower edge
    width = (zmax - L) / 16
    x[:, G:G + 700] = (edge - width / 32)[:, None] + (width / 32000)[:, None] * torch.arange(700)   # under the edge
    x[3, G + 300:G + 700] = 0.0                                       # in a bin far below
    m, sz, L2, total = bound()
    assert torch.equal(L, L2)                                         # groups 1-3 stay above the bound
    n, Lb, n_above, _m_above, buf = _bounded(x, _workspace(m, sz), L, T, k, p, total, CAP)
    assert bool(((x >= L[:, None]).sum(1) > 790).all())               # the first compaction overflows
    assert n.tolist()[0] == CAP + 1                                   # and so does the threshold's bin
    assert bool((Lb[0] > edge[0] - width[0] * 1.07) & (Lb[0] < x[0, G])), (Lb, edge, width)   # the bin under the top
    # top-k 60 alone: the top bin; with top-p 0.9: the bins from it up (the top one too), all kept ones
    assert n.tolist()[1:] == [100, 100, 300] and n_above.tolist() == [40, 0, 0, 40]
    assert torch.equal(buf[1:3, :100], x[1:3, :100]) and bool((Lb[1:3] > edge[1:3] - width[1:3] / 12).all())
    assert torch.equal(buf[3, :300], x[3, G:G + 300])                  # the bin under the top one
    monkeypatch.setattr(_tk, "_CANDIDATES", 24)           # a buffer of 256 (per-row) or 512 (split rows) in the sampler
    for dtype in (torch.float32, torch.bfloat16):
        _check_both_paths(monkeypatch, x.to(dtype).to(DEV), _params(4, T, k, p, 0.0))


@triton.jit
def _divide_kernel(x_ptr, t_ptr, o_ptr, V, N: tl.constexpr):
    """``x / T`` per row with the device's own division (a GPU's is within 2 ulp of IEEE's: the kernels' z)."""
    row = tl.program_id(0)
    i = tl.arange(0, N)
    x = tl.load(x_ptr + row * V + i, mask=i < V)
    tl.store(o_ptr + row * V + i, x / tl.load(t_ptr + row), mask=i < V)


def test_compaction_bound_under_a_temperature():
    """The compaction tests the raw logits against ``_raw_below(L, L / T, T)`` instead of dividing each one by T, and
    buffers the raw logits (the readers divide: ``_buffer_z``): with temperatures that round ``x / T`` (1/3, 0.7,
    1.3, 2.9), bounds that are some token's own ``x / T`` and the floats just above and below it, with that token's
    17 neighbouring floats in the row (``x / T`` maps several of them to one value when T > 1), ties and signed
    zeros, the buffer holds exactly the logits whose ``x / T``, divided on the device as the kernel divides, reaches
    ``Lz``, in row order (a bound ``xL = Lz x T`` misses one of them)."""
    gen = torch.Generator().manual_seed(11)
    B, V, G = 8, 1000, philox.GROUP_SIZE
    x = torch.randn(B, V, generator=gen) * 3
    x[:, ::7] = torch.round(x[:, ::7])                                # ties
    x[:, 5] = -0.0
    x[:, 6] = 0.0
    T = torch.tensor([1 / 3, 0.7, 1.3, 2.9, 1 / 3, 0.7, 1.3, 2.9])
    j = torch.randint(20, V, (B,), generator=gen)
    x[:, 100:117] = key_floats(order_keys(x[torch.arange(B), j])[:, None] + torch.arange(-8, 9)[None, :])
    L = x[torch.arange(B), j].clone()
    L[1], L[5] = 0.0, -0.0                                            # a bound at zero
    keys = order_keys(L)
    L[2:4] = key_floats(keys[2:4] + 1)                                # just above a token's logit
    L[6:8] = key_floats(keys[6:8] - 1)                                # just below one
    L[4], x[4, 7] = -3.3e38, float("-inf")    # finite, but L / T overflows to -inf: every logit reaches it, -inf too
    ng = philox.num_groups(V)
    xg = torch.nn.functional.pad(x, (0, ng * G - V), value=float("-inf")).view(B, ng, G)
    m = xg.amax(2)
    sz = torch.exp((xg - m[..., None]) / T[:, None, None]).sum(2)
    k = torch.zeros(B, dtype=torch.int32)
    p = torch.full((B,), 0.5)
    n, Lb, n_above, _m_above, buf = _bounded(x, _workspace(m, sz), L, T, k, p, sz.sum(1), 1024)
    z = torch.empty(B, V, device=DEV)
    _divide_kernel[(B,)](x.to(DEV), T.to(DEV), z, V, N=1024)
    Lz = torch.empty(B, 1, device=DEV)
    _divide_kernel[(B,)](L.to(DEV), T.to(DEV), Lz, 1, N=16)
    want = (z >= Lz).cpu()
    assert torch.equal(n, want.sum(1)) and int(n_above.abs().sum()) == 0 and torch.equal(Lb, Lz.cpu()[:, 0])
    assert int(want.sum()) < B * V and int(want[:, 100:117].sum()) > 0 and bool(want[4].all())
    assert any(bool((x[r][want[r]] < L[r]).any()) for r in range(B) if r != 4)   # a step below the bound
    for r in range(B):
        assert torch.equal(buf[r, :n[r]], x[r][want[r]]), r


@triton.jit
def _bisect_kernel(b_ptr, n_ptr, k_ptr, p_ptr, zmax_ptr, tot_ptr, out_ptr, CAP, HBLOCK: tl.constexpr):
    row = tl.program_id(0)
    k = tl.load(k_ptr + row)
    p = tl.load(p_ptr + row)
    b_row = _buffer_row(b_ptr, row, CAP)       # CAP values, then their masses
    t = _buffer_thresholds(b_row, _buffer_masses(b_row, CAP), tl.load(n_ptr + row), tl.load(zmax_ptr + row), 1.0,
                           tl.load(tot_ptr + row), k, k > 0, p, p < 1.0, 0.0, HBLOCK)
    tl.store(out_ptr + row, t.to(tl.int64))


def test_buffer_bisection():
    """_buffer_thresholds (the bisection over buffers of more than _SORTED values): an exact key of the
    buffer, whose values at or above it are the reference's kept set (filter_mask), on buffers of 1 to
    4096 values: normal values, ties, one value repeated, -inf entries among values of
    both signs and zeros, a spread of 1e-6 (keys that share most bits), masses that underflow, the
    smallest value the largest's negative (the keys differ in every bit: the start bit's clamp to 31),
    keys 2**25 - 1 apart (float(2**25 - 1) rounds up: the start bit one too high); k at, beyond and far
    below the count; top-p alone, after top-k, at 0 (the largest value only) and above the buffer's
    mass (every value kept)."""
    torch.manual_seed(21)
    CAP = 4096
    rows = [  # (values, k, p, total / the buffer's mass)
        (torch.randn(4096) * 3, 50, 1.0, 1.0), (torch.randn(4096) * 3, 0, 0.9, 1.0),
        (torch.randn(4096), 1000, 0.5, 1.0), (torch.round(torch.randn(3000) * 4) / 2, 7, 0.8, 1.0),
        (torch.full((500,), 1.5), 3, 0.3, 1.0), (torch.randn(777) * 20, 700, 0.99, 1.0),
        (torch.randn(300), 300, 1.0, 1.0), (torch.randn(300), 400, 1.0, 1.0),
        (torch.randn(600), 0, 0.0, 1.0), (torch.randn(600), 0, 0.5, 10.0), (torch.randn(1), 1, 0.5, 1.0),
        (torch.randn(2000) * 1e3, 0, 0.9, 1.0), (5 + 1e-6 * torch.randn(4096), 2000, 1.0, 1.0),
        (torch.randn(257), 10, 0.95, 1.0), (torch.round(torch.randn(4096) * 8) / 8, 0, 0.7, 1.0),
    ]
    x = torch.randn(1000).abs() + 0.5
    rows += [(torch.cat([x, -x]), 900, 0.6, 1.0), (torch.cat([x, -x]), 0, 0.3, 1.0)]   # min = -max
    lo_bits = 0x3F800000                                         # 1.0, and a value 2**25 - 1 above it in bits
    bits = torch.cat([torch.tensor([lo_bits, lo_bits + 2 ** 25 - 1]),
                      torch.randint(lo_bits, lo_bits + 2 ** 25, (1500,))])
    rows += [(bits.to(torch.int32).view(torch.float32), 300, 0.9, 1.0)]
    for _ in range(16):   # random sizes and k, top-p on half of them
        m = int(torch.randint(257, 4097, ()))
        rows.append((torch.randn(m) * 2, int(torch.randint(1, m + 1, ())), [1.0, 0.8][len(rows) % 2], 1.0))
    rows[5][0][::9] = float("-inf")
    rows[5][0][1::13] = 0.0
    R = len(rows)
    buf = torch.full((R, 2 * CAP), float("nan"))
    n = torch.tensor([len(r[0]) for r in rows], dtype=torch.int32)
    # the buffer holds raw logits (here z, T = 1), whose -0 (row 3's rounding) the reads take as +0 (_buffer_z)
    raw = [r[0] for r in rows]
    assert any(bool((torch.signbit(z) & (z == 0)).any()) for z in raw)
    rows = [(torch.where(z == 0, 0.0, z), kk, pp, f) for z, kk, pp, f in rows]
    zmax = torch.tensor([float(r[0].max()) + 0.25 for r in rows])     # the row's maximum: at least the buffer's
    total = torch.empty(R)
    for i, (z, _k, _p, f) in enumerate(rows):
        buf[i, :len(z)] = raw[i]
        total[i] = float(torch.exp(z.double() - zmax[i]).sum()) * f
    k = torch.tensor([r[1] for r in rows], dtype=torch.int32)
    p = torch.tensor([r[2] for r in rows])
    out = torch.empty(R, dtype=torch.int64, device=DEV)
    buf_dev = buf.to(DEV)
    _bisect_kernel[(R,)](buf_dev, n.to(DEV), k.to(DEV), p.to(DEV), zmax.to(DEV), total.to(DEV), out, CAP,
                         HBLOCK=128)
    after = buf_dev.cpu()
    for i, (z, kk, pp, f) in enumerate(rows):
        # the first read rewrote the values as their keys and wrote their masses, both padded to whole
        # tiles of 128 with key 0 and mass 0; the rest untouched
        m, mp = len(z), -(-len(z) // 128) * 128
        keys = after[i, :CAP].view(torch.int32).long() & 0xFFFFFFFF
        assert torch.equal(keys[:m], order_keys(z)) and (keys[m:mp] == 0).all()
        assert after[i, mp:CAP].isnan().all() and after[i, CAP + mp:].isnan().all()
        # (on a GPU tl.exp is ex2.approx of a rounded product: up to ~5e-6 relative near |z - zmax| = 88)
        torch.testing.assert_close(after[i, CAP:CAP + m], torch.exp(z - zmax[i]), rtol=1e-5, atol=1e-30)
        assert (after[i, CAP + m:CAP + mp] == 0).all()
        assert int(out[i]) in set(order_keys(z).tolist()), i                 # an exact key of the buffer
        if f != 1.0:
            continue                                                    # a mass not the buffer's: below
        kept = order_keys(z) >= int(out[i])
        # the reference's kept set, either side of a summation-order rounding of top-p's target
        ps = [pp] if pp >= 1.0 else [pp * (1 + rel) for rel in (-1e-5, 0.0, 1e-5)]
        wants = [filter_mask(z.view(1, -1), torch.tensor([kk]), torch.tensor([q]), torch.zeros(1))[0] for q in ps]
        assert any(torch.equal(kept, w) for w in wants), (i, int(kept.sum()), [int(w.sum()) for w in wants])
    assert int(out[4]) == int(order_keys(torch.tensor([1.5])))          # all tied: that value
    assert int(out[7]) == int(order_keys(rows[7][0]).min())              # k beyond the buffer: keep all
    assert int(out[8]) == int(order_keys(rows[8][0]).max())              # top_p = 0: the largest only
    assert int(out[9]) == int(order_keys(rows[9][0]).min())              # target above the buffer's mass: keep all


def test_top_p_alone_on_the_sort_keeps_the_row_share():
    """Top-p alone on a peaked row: its bound leaves a few candidates (one sort), and the kept set is the
    top of the *row's* mass, not of the candidates' (10 strong tokens over 8182 zeros, top_p = 0.02:
    the reference keeps 8 of the 10; a target relative to the candidates' mass kept only the top one)."""
    B, V = 6, 8192
    x = torch.zeros(B, V)
    for j in range(10):
        x[:, 256 * j] = 3.0 + 0.01 * j
    params = _params(B, 1.0, 0, 0.02, 0.0)
    assert filter_mask(x, params[1].cpu(), params[2].cpu(), params[3].cpu()).sum(1).tolist() == [8] * B
    tok, _, _ = _check(x.to(DEV), params, allow_ties=False)
    assert len(set(tok.tolist())) > 1      # the draws spread over the kept tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_candidate_buffer_and_overflow(monkeypatch, dtype):
    """The selects read the candidates compacted into a per-row buffer; a row with more candidates
    than it holds bins their values, and compacts those of the threshold's bin again where they fit,
    or reads its candidate groups. Every path gives the reference's tokens, and the same
    tokens whatever the capacity (here 4096: every filtered row buffered; 24, which the wrapper rounds
    up to one tile of the reads, 256 values on the per-row path: some rows buffered (the peaked rows with a
    small k), the others (flat rows, top-p alone, k beyond the 7 groups) not; 0: none)."""
    torch.manual_seed(33)
    B, V = 10, 1700
    x = torch.randn(B, V) * 2
    x[:5, torch.randint(0, V, (12,))] += 9.0          # peaked rows: a few strong tokens
    x[5:8] *= 0.05                                   # flat rows: every token a candidate
    x[9, :] = torch.round(x[9] * 2) / 2              # ties at the thresholds
    logits = x.to(dtype=dtype, device=DEV)
    params = _params(B, [0.7, 1.0, 1.3, 0.9, 1.0, 0.8, 1.0, 1.0, 0.6, 1.0],
                     [3, 5, 0, 10, 7, 20, 0, 300, 1, 40], [1.0, 0.9, 1.0, 0.8, 0.95, 1.0, 0.9, 0.5, 1.0, 0.7],
                     [0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.1, 0.0, 0.0, 0.02])
    out = {}
    for cap in (4096, 24, 0):
        monkeypatch.setattr(_tk, "_CANDIDATES", cap)
        out[cap], _, _ = _check(logits, params)
    assert torch.equal(out[4096], out[24]) and torch.equal(out[4096], out[0])
