"""Tree attention's public surface: bad input, op registration (opcheck), torch.compile."""
from __future__ import annotations

import pytest
import torch

import tts_kernels as tk

from helpers.attention import assert_close_to_oracle, random_caches, random_forest

N, HQ, HKV, D, BS, NBLK = 3, 8, 2, 64, 4, 10


def _good():
    gen = torch.Generator().manual_seed(0)
    k, v = random_caches(NBLK, BS, HKV, D, torch.float32, gen)
    return dict(q=torch.randn(N, HQ, D, generator=gen), k_cache=k, v_cache=v,
                block_tables=torch.tensor([[0, 1, 2], [0, 1, 3], [4, 5, 0]], dtype=torch.int32),
                seq_lens=torch.tensor([11, 12, 5], dtype=torch.int32))


def _plan(**over):
    g = _good()
    g.update(over)
    return tk.plan_tree_attention(g["block_tables"], g["seq_lens"], BS)


BAD_CALLS = [
    ("q not a tensor", lambda g: dict(q=g["q"].tolist()), TypeError, "q must be a torch.Tensor"),
    ("q 2-D", lambda g: dict(q=g["q"][:, 0]), ValueError, "q must have 3 dimensions"),
    ("q int", lambda g: dict(q=g["q"].int()), TypeError, "q must have dtype"),
    ("k_cache 3-D", lambda g: dict(k_cache=g["k_cache"][0]), ValueError, "k_cache must have 4 dimensions"),
    ("k_cache dtype", lambda g: dict(k_cache=g["k_cache"].half()), TypeError, "k_cache has dtype"),
    ("v_cache dtype", lambda g: dict(v_cache=g["v_cache"].double()), TypeError, "v_cache has dtype"),
    ("k_cache device", lambda g: dict(k_cache=g["k_cache"].to("meta")), ValueError, "k_cache is on meta"),
    ("v_cache shape", lambda g: dict(v_cache=g["v_cache"][:5]), ValueError, "v_cache has shape"),
    ("head dim mismatch", lambda g: dict(k_cache=g["k_cache"][..., :32], v_cache=g["v_cache"][..., :32]),
     ValueError, "head dim"),
    ("Hq not a multiple of Hkv", lambda g: dict(q=g["q"][:, :7]), ValueError, "multiple of k_cache"),
    ("block_tables int64", lambda g: dict(block_tables=g["block_tables"].long()), TypeError, "block_tables"),
    ("block_tables 1-D", lambda g: dict(block_tables=g["block_tables"][0]), ValueError, "block_tables"),
    ("block_tables rows", lambda g: dict(block_tables=g["block_tables"][:2]), ValueError, "block_tables has 2 rows"),
    ("block_tables device", lambda g: dict(block_tables=g["block_tables"].to("meta")), ValueError, "block_tables"),
    ("seq_lens int64", lambda g: dict(seq_lens=g["seq_lens"].long()), TypeError, "seq_lens"),
    ("seq_lens shape", lambda g: dict(seq_lens=g["seq_lens"][:2]), ValueError, "seq_lens must have shape"),
    ("seq_lens zero", lambda g: dict(seq_lens=torch.tensor([11, 0, 5], dtype=torch.int32)), ValueError,
     r"seq_lens\[1\] = 0 must be positive"),
    ("seq_lens negative", lambda g: dict(seq_lens=torch.tensor([-3, 1, 5], dtype=torch.int32)), ValueError,
     r"seq_lens\[0\]"),
    ("seq_lens beyond blocks", lambda g: dict(seq_lens=torch.tensor([11, 13, 5], dtype=torch.int32)), ValueError,
     r"seq_lens\[1\] = 13 exceeds"),
    ("block id too large", lambda g: dict(block_tables=torch.tensor([[0, 1, 2], [0, 1, 10], [4, 5, 0]],
                                                                    dtype=torch.int32)),
     ValueError, r"block_tables\[1, 2\] = 10 is outside"),
    ("block id negative", lambda g: dict(block_tables=torch.tensor([[0, -1, 2], [0, 1, 3], [4, 5, 0]],
                                                                   dtype=torch.int32)),
     ValueError, r"block_tables\[0, 1\] = -1"),
    ("scale string", lambda g: dict(scale="0.1"), TypeError, "scale"),
    ("scale nan", lambda g: dict(scale=float("nan")), ValueError, "scale"),
    ("return_lse not bool", lambda g: dict(return_lse=1), TypeError, "return_lse"),
    ("backend unknown", lambda g: dict(backend="cuda"), ValueError, "backend"),
    ("plan wrong type", lambda g: dict(plan={"chunk_row": None}), TypeError, "plan must be a TreeAttentionPlan"),
    ("plan other batch", lambda g: dict(plan=tk.plan_tree_attention(g["block_tables"][:2], g["seq_lens"][:2], BS)),
     ValueError, "plan was built for 2 rows"),
    ("plan other block size", lambda g: dict(plan=tk.plan_tree_attention(g["block_tables"], g["seq_lens"], 8)),
     ValueError, "block size 8"),
    ("plan of another step", lambda g: dict(plan=_plan(seq_lens=torch.tensor([10, 12, 5], dtype=torch.int32))),
     ValueError, "re-plan every step"),
    ("plan tensor dtype", lambda g: dict(plan=_with(_plan(), chunk_len=_plan().chunk_len.long())), TypeError,
     "plan.chunk_len"),
    ("plan tensor length", lambda g: dict(plan=_with(_plan(), row_pair_ptr=_plan().row_pair_ptr[:-1])), ValueError,
     "plan.row_pair_ptr"),
    # the Triton kernel's launches follow this bound: an understated one would skip the wider chunks
    ("plan rows bound understated", lambda g: dict(plan=_with(_plan(), max_rows_per_chunk=1)), ValueError,
     "plan.max_rows_per_chunk = 1 but a chunk has 2 rows"),
]


def _with(plan, **fields):
    for name, value in fields.items():
        setattr(plan, name, value)
    return plan


@pytest.mark.parametrize("desc,make,exc,match", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_names_the_argument(desc, make, exc, match):
    g = _good()
    g.update(make(g))
    with pytest.raises(exc, match=match):
        tk.tree_attention(**g)


def test_value_checks_can_be_skipped():
    """Garbage past a row's end is ignored; validate=False skips the value checks (host syncs on CUDA)."""
    g = _good()
    g["block_tables"] = torch.tensor([[0, 1, 2], [0, 1, 3], [4, 5, 99]], dtype=torch.int32)  # 99 unused (len 5)
    tk.tree_attention(**g)
    stale = tk.plan_tree_attention(g["block_tables"], g["seq_lens"], BS)
    g["seq_lens"] = torch.tensor([10, 12, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="re-plan"):
        tk.tree_attention(**g, plan=stale)
    tk.tree_attention(**g, plan=stale, validate=False)  # not checked (the caller vouches for the plan)


def test_good_input_runs():
    g = _good()
    out, lse = tk.tree_attention(**g, return_lse=True)
    assert_close_to_oracle(out, lse, g["q"], g["k_cache"], g["v_cache"], g["block_tables"], g["seq_lens"])


def test_unplanned_call_plans_for_the_kernel(monkeypatch):
    """Without a plan, tree_attention plans with the Parallelism of the kernel that will run it (on CUDA
    the Triton kernel's load-balanced chunks; patched here to one program: the longest chunks)."""
    from tts_kernels.attention import api

    g = _good()
    got_par, plans = [], []
    real_plan = api.plan_tree_attention

    def par(num_rows, num_q_heads, k_cache, *, backend="auto"):
        got_par.append((num_rows, num_q_heads, backend))
        return tk.Parallelism(1, HKV, 1, 1, 1)

    def spy(*args, **kwargs):
        plans.append(real_plan(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(api, "tree_attention_parallelism", par)
    monkeypatch.setattr(api, "plan_tree_attention", spy)
    out, lse = tk.tree_attention(**g, return_lse=True, chunk_size=4)
    assert got_par == [(N, HQ, "auto")]
    assert plans[0].max_chunk_len > 4 and plans[0].num_chunks < real_plan(g["block_tables"], g["seq_lens"], BS,
                                                                          chunk_size=4).num_chunks
    assert_close_to_oracle(out, lse, g["q"], g["k_cache"], g["v_cache"], g["block_tables"], g["seq_lens"])


def _op_args(padded=False):
    g = _good()
    p = tk.plan_tree_attention(g["block_tables"], g["seq_lens"], BS, chunk_size=4)
    if padded:
        p = tk.plan_tree_attention(g["block_tables"], g["seq_lens"], BS, chunk_size=4,
                                   capacity=(p.num_chunks + 3, p.num_pairs + 4))
    return (g["q"], g["k_cache"], g["v_cache"], g["block_tables"], g["seq_lens"], p.chunk_row, p.chunk_start,
            p.chunk_len, p.chunk_q_ptr, p.q_rows, p.row_pair_ptr, p.row_pairs, 0.125, p.max_chunk_len,
            p.max_rows_per_chunk, True)


@pytest.mark.parametrize("padded", [False, True])
def test_opcheck(padded):
    torch.library.opcheck(torch.ops.tts_kernels.tree_attention.default, _op_args(padded))


@pytest.mark.parametrize("compile_backend", ["aot_eager"])  # inductor works too but takes ~1 min to build
def test_torch_compile_fullgraph_with_precomputed_plan(compile_backend):
    gen = torch.Generator().manual_seed(4)
    bt, sl, nblk = random_forest("forest", 6, 4, 5, gen)
    layers = [random_caches(nblk, 4, 2, 64, torch.float32, gen) for _ in range(2)]
    plan = tk.plan_tree_attention(bt, sl, 4, chunk_size=8)
    w = torch.randn(64, 64, generator=gen) / 8

    def decode(x, sl, plan):  # a toy two-layer "model": attention, then a projection
        for k, v in layers:
            a, lse = tk.tree_attention(x, k, v, bt, sl, plan=plan, return_lse=True)
            x = x + a @ w
        return x, lse

    compiled = torch.compile(decode, fullgraph=True, backend=compile_backend)
    x = torch.randn(6, 8, 64, generator=gen)
    for step in range(2):  # the next step re-plans (other seq_lens); the compiled graph takes the new plan
        if step:
            sl = sl.clone()
            sl[0] -= 1
            plan = tk.plan_tree_attention(bt, sl, 4, chunk_size=8)
        ref = decode(x, sl, plan)
        got = compiled(x, sl, plan)
        torch.testing.assert_close(got[0], ref[0])
        torch.testing.assert_close(got[1], ref[1])
