"""Tests of the two tree-attention kernels (C++ CPU and Triton) against a float64 oracle.

The plans come from a small planner written here (a dict keyed by block-id
prefixes, one chunk per maximal run of blocks that the same set of rows
shares), so these tests do not depend on the package's planner; when
``tts_kernels.plan_tree_attention`` exists the kernels are also run with its
plans.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random

import pytest
import torch

from helpers.backends import require_extension, require_triton

from tts_kernels.attention.plan import TreeAttentionPlan


# ---------------------------------------------------------------------------
# test planner
# ---------------------------------------------------------------------------
def simple_plan(block_tables, seq_lens, block_size, *, share=True, max_chunk_blocks=None,
                pad_chunks=0, pad_pairs=0, device="cpu") -> TreeAttentionPlan:
    """A plan for the rows' KV, built the obvious way.

    Every row's positions are cut at block boundaries; the piece of block j of
    row i is keyed by (block ids 0..j of row i, piece length). Rows with equal
    keys share the piece. Consecutive pieces with the same set of rows are
    merged into one chunk (at most ``max_chunk_blocks`` blocks). With
    ``share=False`` every row gets its own single chunk (no sharing).
    """
    bt = block_tables.tolist()
    lens = [int(x) for x in seq_lens.tolist()]
    n = len(lens)
    # chunks as (rep_row, start, length, rows)
    chunks = []
    if not share:
        for i in range(n):
            if lens[i] > 0:
                chunks.append((i, 0, lens[i], [i]))
    else:
        key_rows = {}
        row_keys = []
        for i in range(n):
            keys = []
            nb = (lens[i] + block_size - 1) // block_size
            for j in range(nb):
                piece = min(block_size, lens[i] - j * block_size)
                key = (tuple(bt[i][: j + 1]), piece)
                key_rows.setdefault(key, []).append(i)
                keys.append(key)
            row_keys.append(keys)
        done = set()
        for i in range(n):
            keys = row_keys[i]
            j = 0
            while j < len(keys):
                rows = key_rows[keys[j]]
                k = j + 1
                while (k < len(keys) and key_rows[keys[k]] == rows
                       and (max_chunk_blocks is None or k - j < max_chunk_blocks)):
                    k += 1
                head = keys[j]
                if head not in done:
                    done.add(head)
                    start = j * block_size
                    length = sum(key[1] for key in keys[j:k])
                    chunks.append((rows[0], start, length, list(rows)))
                j = k
    random.Random(len(chunks)).shuffle(chunks)  # the kernels must not rely on chunk order
    chunk_row, chunk_start, chunk_len, chunk_q_ptr, q_rows = [], [], [], [0], []
    row_items = [[] for _ in range(n)]
    for rep, start, length, rows in chunks:
        chunk_row.append(rep)
        chunk_start.append(start)
        chunk_len.append(length)
        for r in rows:
            row_items[r].append((start, len(q_rows)))
            q_rows.append(r)
        chunk_q_ptr.append(len(q_rows))
    max_len = max(chunk_len, default=0)
    max_rows = max((len(c[3]) for c in chunks), default=0)
    for _ in range(pad_chunks):
        chunk_row.append(0)
        chunk_start.append(0)
        chunk_len.append(0)
        chunk_q_ptr.append(len(q_rows))
    q_rows += [0] * pad_pairs
    row_pair_ptr, row_pairs = [0], []
    for i in range(n):
        row_pairs += [p for _, p in sorted(row_items[i])]
        row_pair_ptr.append(len(row_pairs))
    row_pairs += [0] * pad_pairs

    def t(x):
        return torch.tensor(x, dtype=torch.int32, device=device)

    return TreeAttentionPlan(block_size=block_size, num_rows=n, chunk_row=t(chunk_row), chunk_start=t(chunk_start),
                             chunk_len=t(chunk_len), chunk_q_ptr=t(chunk_q_ptr), q_rows=t(q_rows),
                             row_pair_ptr=t(row_pair_ptr), row_pairs=t(row_pairs), max_chunk_len=max_len,
                             max_rows_per_chunk=max_rows)


def check_plan_covers(plan, seq_lens):
    """Each row's pairs cover [0, seq_len) exactly once, in order."""
    starts, lens, ptr = plan.chunk_start.tolist(), plan.chunk_len.tolist(), plan.chunk_q_ptr.tolist()
    pair_chunk = {}
    for c in range(plan.num_chunks):
        for p in range(ptr[c], ptr[c + 1]):
            pair_chunk[p] = c
    rp, rps, qr = plan.row_pair_ptr.tolist(), plan.row_pairs.tolist(), plan.q_rows.tolist()
    for i, L in enumerate(seq_lens.tolist()):
        pos = 0
        for p in rps[rp[i]:rp[i + 1]]:
            assert qr[p] == i
            c = pair_chunk[p]
            assert starts[c] == pos
            pos += lens[c]
        assert pos == L


# ---------------------------------------------------------------------------
# random forests of block tables
# ---------------------------------------------------------------------------
def make_forest(kind, n, block_size, seed, max_blocks_per_row=6):
    """Block tables [n, max_blocks] and seq_lens [n] for a forest of shape ``kind``."""
    rng = random.Random(seed)
    next_block = [0]

    def fresh(k):
        ids = list(range(next_block[0], next_block[0] + k))
        next_block[0] += k
        return ids

    rows = []
    if kind == "forest":  # several prompts, nested shared runs, identical rows, singletons
        prompts = [fresh(rng.randint(1, 3)) for _ in range(rng.randint(2, 3))]
        for i in range(n):
            r = rng.random()
            if i > 0 and r < 0.25:
                base = list(rng.choice(rows))  # identical to an earlier row
                rows.append(base)
                continue
            if r < 0.35:
                rows.append(fresh(rng.randint(1, 3)))  # singleton
                continue
            parent = rng.choice(prompts + rows) if rows else rng.choice(prompts)
            cut = rng.randint(1, len(parent))
            rows.append(parent[:cut] + fresh(rng.randint(0, 2)))
    elif kind == "singletons":
        rows = [fresh(rng.randint(1, 4)) for _ in range(n)]
    elif kind == "chain":
        rows = [fresh(1)]
        for _ in range(n - 1):
            rows.append(rows[-1] + fresh(1))
    elif kind == "identical":
        row = fresh(rng.randint(2, 4))
        rows = [list(row) for _ in range(n)]
    else:
        raise ValueError(kind)
    rows = [r[:max_blocks_per_row] for r in rows]
    max_blocks = max(len(r) for r in rows) + 1
    nb = next_block[0]
    perm = list(range(nb))
    rng.shuffle(perm)  # physical block ids in random order
    bt = torch.full((n, max_blocks), -7, dtype=torch.int32)  # junk past each row's blocks
    lens = []
    full_len = {}
    for i, r in enumerate(rows):
        bt[i, : len(r)] = torch.tensor([perm[b] for b in r], dtype=torch.int32)
        key = tuple(r)
        if kind == "identical" and key in full_len:
            lens.append(full_len[key])
            continue
        L = (len(r) - 1) * block_size + rng.randint(1, block_size)  # partial last block
        full_len[key] = L
        lens.append(L)
    # Unused entries point at valid blocks too in half the cases (a kernel reading past seq_len would be wrong).
    if seed % 2:
        bt = torch.where(bt < 0, torch.randint(0, nb, bt.shape, dtype=torch.int32), bt)
    return bt, torch.tensor(lens, dtype=torch.int32), nb


def make_inputs(kind, n, block_size, hq, hkv, d, dtype, seed, max_blocks_per_row=6):
    bt, lens, nb = make_forest(kind, n, block_size, seed, max_blocks_per_row)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, hq, d, generator=g).to(dtype)
    k = torch.randn(nb + 1, block_size, hkv, d, generator=g).to(dtype)
    v = torch.randn(nb + 1, block_size, hkv, d, generator=g).to(dtype)
    return q, k, v, bt, lens


# ---------------------------------------------------------------------------
# oracle and same-precision reference
# ---------------------------------------------------------------------------
def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, dtype):
    """Per-row attention over the paged cache, computed in ``dtype`` (float64: the oracle)."""
    n, hq, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    out = torch.empty(n, hq, d, dtype=dtype)
    lse = torch.empty(n, hq, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: intra-op threads only add latency (and noise on a busy machine)
    try:
        for i in range(n):
            L = int(seq_lens[i])
            pos = torch.arange(L)
            blk = block_tables[i].long()[pos // bs]
            off = pos % bs
            k = k_cache[blk, off].to(dtype).repeat_interleave(group, dim=1).transpose(0, 1)  # [hq, L, d]
            v = v_cache[blk, off].to(dtype).repeat_interleave(group, dim=1).transpose(0, 1)
            s = torch.bmm(k, q[i].to(dtype)[:, :, None])[:, :, 0] * scale  # [hq, L]
            lse[i] = torch.logsumexp(s.double() if dtype == torch.float64 else s.float(), dim=-1).double()
            p = torch.softmax(s, dim=-1)
            out[i] = torch.bmm(p[:, None, :], v)[:, 0]
    finally:
        torch.set_num_threads(threads)
    return out, lse


TOL_FLOOR = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-2, 1e-3), torch.float16: (2e-3, 1e-3)}


def check_against_oracle(out, lse, q, k, v, bt, lens, scale):
    ref64, lse64 = paged_attention(q, k, v, bt, lens, scale, torch.float64)
    ref_lp, lse_lp = paged_attention(q, k, v, bt, lens, scale, q.dtype)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:2]
    assert torch.isfinite(out.float()).all()
    err = (out.double() - ref64).abs().max().item()
    err_ref = (ref_lp.double() - ref64).abs().max().item()
    floor_out, floor_lse = TOL_FLOOR[q.dtype]
    assert err <= 2 * err_ref + floor_out, f"out error {err:.3g} vs same-precision torch {err_ref:.3g}"
    lerr = (lse.double() - lse64).abs().max().item()
    lerr_ref = (lse_lp - lse64).abs().max().item()
    assert lerr <= 2 * lerr_ref + floor_lse, f"lse error {lerr:.3g} vs same-precision torch {lerr_ref:.3g}"


# ---------------------------------------------------------------------------
# kernel entry points
# ---------------------------------------------------------------------------
def run_cpp(q, k, v, bt, lens, plan, scale):
    return torch.ops.tts_kernels_C.tree_attention_cpu(
        q, k, v, bt, lens, plan.chunk_row, plan.chunk_start, plan.chunk_len, plan.chunk_q_ptr, plan.q_rows,
        plan.row_pair_ptr, plan.row_pairs, scale)


def run_triton(q, k, v, bt, lens, plan, scale):
    """The Triton kernel: on the GPU when there is one, else on the CPU through the interpreter."""
    from tts_kernels.attention.triton_kernel import tree_attention_triton

    if not torch.cuda.is_available():
        return tree_attention_triton(q, k, v, bt, lens, plan, scale, True)
    dev = torch.device("cuda")
    plan = dataclasses.replace(plan, **{f.name: getattr(plan, f.name).to(dev) for f in dataclasses.fields(plan)
                                        if isinstance(getattr(plan, f.name), torch.Tensor)})
    out, lse = tree_attention_triton(q.to(dev), k.to(dev), v.to(dev), bt.to(dev), lens.to(dev), plan, scale, True)
    return out.cpu(), lse.cpu()


KERNELS = ["cpp", "triton"]


def _runner(name):
    if name == "cpp":
        require_extension()
        return run_cpp
    require_triton()
    return run_triton


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["forest", "singletons", "chain", "identical"])
@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_forests_f32(kernel, kind, block_size):
    run = _runner(kernel)
    d, hq, hkv = (32, 4, 1) if kernel == "triton" else (64, 8, 2)
    n = 6 if kernel == "triton" else 12
    mb = 6 if block_size > 1 else 40
    if kernel == "triton" and block_size == 1:
        mb = 30
    seed = sum(map(ord, kind)) * 7 + block_size
    q, k, v, bt, lens = make_inputs(kind, n, block_size, hq, hkv, d, torch.float32, seed, mb)
    plan = simple_plan(bt, lens, block_size)
    check_plan_covers(plan, lens)
    scale = 1.0 / math.sqrt(d)
    out, lse = run(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (8, 1)])
def test_dtypes_gqa(kernel, dtype, hq, hkv):
    run = _runner(kernel)
    d = 32 if kernel == "triton" else 64
    n = 7 if kernel == "triton" else 16
    q, k, v, bt, lens = make_inputs("forest", n, 3, hq, hkv, d, dtype, seed=11 + hq + hkv)
    plan = simple_plan(bt, lens, 3, max_chunk_blocks=2)
    scale = 1.0 / math.sqrt(d)
    out, lse = run(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("hq,hkv", [(12, 4), (16, 1), (10, 2)])
def test_uneven_and_large_groups(kernel, hq, hkv):
    """GQA group sizes that are not powers of two, and a group of 16."""
    run = _runner(kernel)
    d = 16 if kernel == "triton" else 32
    q, k, v, bt, lens = make_inputs("forest", 6, 4, hq, hkv, d, torch.float16, seed=hq * 10 + hkv)
    plan = simple_plan(bt, lens, 4)
    out, lse = run(q, k, v, bt, lens, plan, 0.3)
    check_against_oracle(out, lse, q, k, v, bt, lens, 0.3)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scale", [-0.7, 0.0, -0.0, 1e-300])
def test_any_finite_scale(kernel, scale):
    """A negative, zero or vanishing softmax scale (the Triton kernel takes the scaled row max as the row
    max times a positive normal float32 scale: its wrapper negates q for a negative one and zeroes q for
    one that is 0 in float32)."""
    run = _runner(kernel)
    d, hq, hkv = 16, 8, 2
    q, k, v, bt, lens = make_inputs("forest", 7, 16, hq, hkv, d, torch.float32, seed=38, max_blocks_per_row=9)
    q = q * 16  # scores far apart: a row max taken on the wrong side overflows exp2
    plan = simple_plan(bt, lens, 16)
    # 32-token KV tiles here: a chunk of whole tiles, chunks of a full tile and a partial one
    assert 32 in plan.chunk_len.tolist() and int(plan.chunk_len.max()) > 32
    out, lse = run(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_inputs(kernel):
    """q a slice of a fused projection, K and V views into one interleaved KV tensor."""
    run = _runner(kernel)
    d, hq, hkv, bs = 16, 4, 2, 5
    q0, k0, v0, bt, lens = make_inputs("forest", 6, bs, hq, hkv, d, torch.float32, seed=8)
    qkv = torch.randn(6, hq + 2 * hkv, d)
    qkv[:, :hq] = q0
    kv = torch.randn(k0.shape[0], bs, 2, hkv, d)
    kv[:, :, 0] = k0
    kv[:, :, 1] = v0
    q, k, v = qkv[:, :hq], kv[:, :, 0], kv[:, :, 1]
    assert not q.is_contiguous() and not k.is_contiguous()
    plan = simple_plan(bt, lens, bs)
    out, lse = run(q, k, v, bt, lens, plan, 0.25)
    check_against_oracle(out, lse, q0, k0, v0, bt, lens, 0.25)


@pytest.mark.parametrize("kernel", KERNELS)
def test_padding_and_capacity(kernel):
    """Padding chunks/pairs are skipped; a per-row (unshared) plan gives the same result."""
    run = _runner(kernel)
    d, hq, hkv = 16, 8, 2
    q, k, v, bt, lens = make_inputs("forest", 8, 16, hq, hkv, d, torch.float32, seed=5)
    scale = 0.3
    shared = simple_plan(bt, lens, 16, pad_chunks=3, pad_pairs=5)
    alone = simple_plan(bt, lens, 16, share=False, pad_chunks=1)
    out_s, lse_s = run(q, k, v, bt, lens, shared, scale)
    out_a, lse_a = run(q, k, v, bt, lens, alone, scale)
    check_against_oracle(out_s, lse_s, q, k, v, bt, lens, scale)
    torch.testing.assert_close(out_s, out_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse_s, lse_a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_many_rows_per_chunk(kernel):
    """More rows share a chunk than one program's tile holds (several row tiles)."""
    run = _runner(kernel)
    d, hq, hkv = 16, 8, 1
    n = 8 if kernel == "triton" else 40
    q, k, v, bt, lens = make_inputs("identical", n, 16, hq, hkv, d, torch.float32, seed=3)
    plan = simple_plan(bt, lens, 16)
    assert plan.max_rows_per_chunk == n
    scale = 0.25
    out, lse = run(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)


@pytest.mark.parametrize("d", [64, 128, 256])
def test_cpp_head_dims(d):
    require_extension()
    q, k, v, bt, lens = make_inputs("forest", 10, 16, 8, 2, d, torch.bfloat16, seed=d)
    plan = simple_plan(bt, lens, 16)
    scale = 1.0 / math.sqrt(d)
    out, lse = run_cpp(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)


@pytest.mark.parametrize("d", [64, 128, 256])
def test_triton_head_dims(d):
    require_triton()
    if d > 64 and not torch.cuda.is_available():
        pytest.skip("large head dims only on the GPU (the interpreter is slow)")
    n = 5 if not torch.cuda.is_available() else 16
    q, k, v, bt, lens = make_inputs("forest", n, 16, 8, 2, d, torch.bfloat16, seed=d + 1)
    plan = simple_plan(bt, lens, 16)
    scale = 1.0 / math.sqrt(d)
    out, lse = run_triton(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_triton_stage2_other_pair_axis(dtype, monkeypatch):
    """Stage 2's (pair, head, dim) tiles in the axis order this Triton does not get
    (``_triton_layout.REGISTER_AXIS``: ``[H, P, D]`` under Triton 3.5 and 3.6, ``[P, H, D]`` from 3.7): rows of
    more pairs than one step's ``BLOCK_P`` (a chain of rows in one-block chunks: row i has i + 1 pairs; partial
    last steps) and a heads block with masked heads (12 of 16)."""
    require_triton()
    from tts_kernels import _triton_layout
    from tts_kernels.attention import triton_kernel as tri

    monkeypatch.setattr(_triton_layout, "REGISTER_AXIS", 1 - _triton_layout.REGISTER_AXIS)
    cfg = tri.stage2_config(12, 32)
    assert cfg["P_AXIS"] == _triton_layout.REGISTER_AXIS and cfg["BLOCK_H"] == 16, cfg
    q, k, v, bt, lens = make_inputs("chain", 7, 2, 12, 4, 32, dtype, 29, 10)
    plan = simple_plan(bt, lens, 2, max_chunk_blocks=1)
    pairs = plan.row_pair_ptr[1:] - plan.row_pair_ptr[:-1]
    assert int(pairs.max()) > cfg["BLOCK_P"] and bool((pairs % cfg["BLOCK_P"] != 0).any()), pairs
    out, lse = run_triton(q, k, v, bt, lens, plan, 0.25)
    check_against_oracle(out, lse, q, k, v, bt, lens, 0.25)


@pytest.mark.parametrize("isa", ["best", "avx2", "generic"])
@pytest.mark.parametrize("d", [16, 24, 48, 80, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cpp_isa_paths(isa, d, dtype, monkeypatch):
    """Every CPU micro-kernel set (AVX-512 products at D % 16 == 0, AVX2 at D % 8 == 0, portable),
    capped by TTS_KERNELS_CPU_ISA, against the oracle: query counts that leave remainders of the
    8- and 4-query blocks, shared and private chunks, head dims that leave remainders of 64."""
    require_extension()
    from tts_kernels import _ext
    if isa != "best":
        monkeypatch.setenv("TTS_KERNELS_CPU_ISA", isa)
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    best = "avx512" if {"avx512f", "avx512vl", "avx512dq", "avx512bw"} <= set(flags) else (
        "avx2" if {"avx2", "fma", "f16c"} <= set(flags) else "generic")
    want = {"best": best, "avx2": "avx2" if best != "generic" else "generic", "generic": "generic"}[isa]
    if flags:
        assert _ext.cpu_isa() == want          # the kernels under test are the ones this test names
    for kind, n, hq, hkv in (("identical", 13, 9, 3), ("forest", 11, 6, 1), ("chain", 7, 4, 2)):
        q, k, v, bt, lens = make_inputs(kind, n, 16, hq, hkv, d, dtype, seed=d + n, max_blocks_per_row=9)
        plan = simple_plan(bt, lens, 16)
        scale = 1.0 / math.sqrt(d)
        out, lse = run_cpp(q, k, v, bt, lens, plan, scale)
        check_against_oracle(out, lse, q, k, v, bt, lens, scale)


def test_cpp_unknown_isa_cap_is_refused(monkeypatch):
    require_extension()
    from tts_kernels import _ext
    monkeypatch.setenv("TTS_KERNELS_CPU_ISA", "AVX2")
    q, k, v, bt, lens = make_inputs("chain", 3, 16, 4, 2, 16, torch.float32, seed=1)
    from tts_kernels.attention.impls import tree_attention_cpp
    with pytest.raises(ValueError, match="TTS_KERNELS_CPU_ISA"):
        tree_attention_cpp(q, k, v, bt, lens, simple_plan(bt, lens, 16), 0.25)
    with pytest.raises(ValueError, match="TTS_KERNELS_CPU_ISA"):
        _ext.cpu_isa()


def test_cpp_odd_head_dim():
    """D not a multiple of 8 takes the portable path."""
    require_extension()
    q, k, v, bt, lens = make_inputs("forest", 6, 5, 6, 3, 20, torch.float32, seed=1)
    plan = simple_plan(bt, lens, 5)
    out, lse = run_cpp(q, k, v, bt, lens, plan, 0.2)
    check_against_oracle(out, lse, q, k, v, bt, lens, 0.2)


def test_cpp_long_context_gqa():
    """Longer shared prefixes (many K/V tiles), many rows, GQA 4."""
    require_extension()
    q, k, v, bt, lens = make_inputs("forest", 24, 16, 16, 4, 128, torch.float32, seed=9, max_blocks_per_row=40)
    plan = simple_plan(bt, lens, 16)
    scale = 1.0 / math.sqrt(128)
    out, lse = run_cpp(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)


def test_cpp_checks():
    require_extension()
    q, k, v, bt, lens = make_inputs("forest", 4, 16, 4, 2, 16, torch.float32, seed=2)
    plan = simple_plan(bt, lens, 16)
    with pytest.raises(RuntimeError, match="dtype"):
        run_cpp(q, k.half(), v.half(), bt, lens, plan, 1.0)
    with pytest.raises(RuntimeError, match="multiple"):
        run_cpp(q[:, :3], k, v, bt, lens, plan, 1.0)
    with pytest.raises(RuntimeError, match="int32"):
        run_cpp(q, k, v, bt.long(), lens, plan, 1.0)
    bad = bt.clone()
    bad[:, 0] = 10_000
    with pytest.raises(RuntimeError, match="block"):
        run_cpp(q, k, v, bad, lens, plan, 1.0)


def _package_planner():
    import tts_kernels

    return getattr(tts_kernels, "plan_tree_attention", None)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["forest", "chain", "identical"])
@pytest.mark.parametrize("fixed", [False, True], ids=["exact", "capacity"])
def test_with_package_planner(kernel, kind, fixed):
    planner = _package_planner()
    if planner is None:
        pytest.skip("tts_kernels.plan_tree_attention not available yet")
    run = _runner(kernel)
    d, hq, hkv = 32, 8, 2
    q, k, v, bt, lens = make_inputs(kind, 7, 3, hq, hkv, d, torch.bfloat16, seed=21)
    if fixed:  # padded to a fixed capacity (CUDA-graph style), small chunks
        bound = int(((lens + 2) // 3).sum()) + 4
        plan = planner(bt, lens, 3, chunk_size=6, capacity=(bound, bound))
    else:
        plan = planner(bt, lens, 3)
    check_plan_covers(plan, lens)
    scale = 1.0 / math.sqrt(d)
    out, lse = run(q, k, v, bt, lens, plan, scale)
    check_against_oracle(out, lse, q, k, v, bt, lens, scale)
