"""Tree attention: every backend against the dense paged-attention oracle.

Backends: ``reference`` (plan executed in PyTorch), ``cpp`` (C++ CPU kernel),
``triton`` (on CPU through TRITON_INTERPRET=1 when no GPU is present), and the
registered op (``backend="auto"``).
"""
from __future__ import annotations

import zlib

import pytest
import torch

import tts_kernels as tk

from helpers.attention import (DTYPES, assert_close_to_oracle, dtype_id, is_interpreted, random_caches, random_forest)

KINDS = ("forest", "singletons", "chain", "identical")


def _run_case(backend, kind, gqa, dtype, *, seed, n_rows=6, bs=4, max_blocks=6, hkv=2, d=64, chunk_size=8,
              sharing=True, scale=None, plan_kwargs=None):
    if is_interpreted(backend):  # the Triton interpreter runs every program in Python: fewer, shorter rows
        n_rows, max_blocks = min(n_rows, 4), min(max_blocks, 4)
    gen = torch.Generator().manual_seed(seed)
    bt, sl, nblk = random_forest(kind, n_rows, bs, max_blocks, gen)
    k, v = random_caches(nblk + 1, bs, hkv, d, dtype, gen)
    q = torch.randn(n_rows, hkv * gqa, d, generator=gen).to(dtype)
    plan = tk.plan_tree_attention(bt, sl, bs, chunk_size=chunk_size, sharing=sharing, **(plan_kwargs or {}))
    out, lse = tk.tree_attention(q, k, v, bt, sl, scale=scale, plan=plan, return_lse=True, backend=backend)
    # the Triton kernel stores 16-bit partials (one more rounding); on a CPU "auto" is the C++ kernel
    rounded = backend == "triton" or (backend == "auto" and q.is_cuda)
    assert_close_to_oracle(out, lse, q, k, v, bt, sl, scale, partials_rounded=rounded)
    return plan


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("gqa", [1, 4, 8])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_dense_oracle(backend, kind, gqa, dtype):
    # a stable seed per case (hash() of a str changes with PYTHONHASHSEED, i.e. with every process)
    _run_case(backend, kind, gqa, dtype, seed=zlib.crc32(f"{kind}-{gqa}-{dtype}".encode()) % 10_000)


@pytest.mark.parametrize("seed", range(4))
def test_random_forests_float32(backend, seed):
    """Bigger random forests: many nested shared runs, partial last blocks, long chunks."""
    small = is_interpreted(backend)
    _run_case(backend, "forest", 4, torch.float32, seed=100 + seed, n_rows=8 if small else 24,
              bs=4 if small else 8, max_blocks=6 if small else 12, chunk_size=8 if small else 32)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_head_dims(backend, head_dim):
    _run_case(backend, "forest", 2, torch.bfloat16, seed=head_dim, n_rows=4, d=head_dim)


@pytest.mark.parametrize("block_size,chunk_size", [(1, 3), (16, 16), (16, 64), (256, 256)])
def test_block_sizes(backend, block_size, chunk_size):
    max_blocks = {1: 24, 16: 4, 256: 2}[block_size]
    _run_case(backend, "forest", 4, torch.float16, seed=block_size, n_rows=5, bs=block_size,
              max_blocks=max_blocks, chunk_size=chunk_size)


def test_sharing_disabled(backend):
    plan = _run_case(backend, "forest", 4, torch.float32, seed=7, sharing=False)
    assert plan.num_pairs == plan.num_chunks  # one row per chunk


def test_custom_scale(backend):
    _run_case(backend, "forest", 4, torch.float32, seed=8, scale=0.3)


def test_fixed_capacity_plan_matches(backend):
    """A padded plan (padding chunks of length 0, padding pairs) gives the same result."""
    gen = torch.Generator().manual_seed(9)
    bt, sl, nblk = random_forest("forest", 6, 4, 6, gen)
    k, v = random_caches(nblk, 4, 2, 64, torch.float32, gen)
    q = torch.randn(6, 8, 64, generator=gen)
    plan = tk.plan_tree_attention(bt, sl, 4, chunk_size=8)
    padded = tk.plan_tree_attention(bt, sl, 4, chunk_size=8, capacity=(plan.num_chunks + 5, plan.num_pairs + 7))
    a, la = tk.tree_attention(q, k, v, bt, sl, plan=plan, return_lse=True, backend=backend)
    b, lb = tk.tree_attention(q, k, v, bt, sl, plan=padded, return_lse=True, backend=backend)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    assert_close_to_oracle(b, lb, q, k, v, bt, sl)


def test_plan_reused_across_layers_with_pool(backend):
    """One plan per decode step, every layer of a KVPool reads through it."""
    gen = torch.Generator().manual_seed(11)
    hkv, d, bs, layers = 2, 64, 4, 2 if is_interpreted(backend) else 3
    pool = tk.KVPool(64, bs, hkv, d, num_layers=layers, dtype=torch.bfloat16)
    roots = [pool.add_sequence(n) for n in (13, 8)]
    for layer in range(layers):
        for r in roots:
            s = pool.slot_mapping(r)
            pool.write(layer, s, torch.randn(len(s), hkv, d, generator=gen), torch.randn(len(s), hkv, d, generator=gen))
    kids = pool.fork(roots[0], 3) + pool.fork(roots[1], 2)
    grand = pool.fork(kids[0], 2)
    rows = kids[1:] + grand + [roots[1]]
    for step in range(2):  # two decode steps: append a token, write every layer, attend
        slots = pool.append(rows, 1)
        bt, sl = pool.block_tables(rows), pool.seq_lens(rows)
        plan = tk.plan_tree_attention(bt, sl, bs, chunk_size=8)
        for layer in range(layers):
            pool.write(layer, slots, torch.randn(*slots.shape, hkv, d, generator=gen),
                       torch.randn(*slots.shape, hkv, d, generator=gen))
            q = torch.randn(len(rows), 4 * hkv, d, generator=gen).to(torch.bfloat16)
            kc, vc = pool.k_cache(layer), pool.v_cache(layer)
            out, lse = tk.tree_attention(q, kc, vc, bt, sl, plan=plan, return_lse=True, backend=backend)
            assert_close_to_oracle(out, lse, q, kc, vc, bt, sl)


def test_default_plan_and_no_lse(backend):
    gen = torch.Generator().manual_seed(12)
    bt, sl, nblk = random_forest("forest", 5, 4, 5, gen)
    k, v = random_caches(nblk, 4, 1, 64, torch.float32, gen)
    q = torch.randn(5, 8, 64, generator=gen)
    out = tk.tree_attention(q, k, v, bt, sl, backend=backend)
    assert isinstance(out, torch.Tensor)
    assert_close_to_oracle(out, None, q, k, v, bt, sl)


def test_empty_batch():
    q = torch.zeros(0, 4, 64)
    k = torch.zeros(2, 4, 2, 64)
    out, lse = tk.tree_attention(q, k, k, torch.zeros(0, 1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                                 return_lse=True)
    assert out.shape == (0, 4, 64) and lse.shape == (0, 4)
