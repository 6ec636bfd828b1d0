"""Static properties of the Triton tree-attention kernels (no GPU needed).

* The kernels' compile-time constants and grid shape do not follow the plan's
  contents: a search that widens (more rows per chunk, longer chunks) reuses the
  same compiled kernels, and the grid depends only on the plan's capacity and the
  GPU's SM count.
* AOT compile for sm_90 (H100) of every dtype x head-dim variant: no register
  spills (and sm_80). Slow (ptxas, minutes on a small CPU); without a GPU run
  ``TRITON_INTERPRET=0 TTS_STATIC_SM90=1 pytest tests/attention/test_triton_static.py -k sm90``.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import torch

from helpers.backends import require_triton

from test_attention_kernels import make_inputs, run_triton, simple_plan


class _Recorder:
    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        launcher = self.fn[grid]

        def run(*args, **kwargs):
            self.calls.append((grid, {k: v for k, v in kwargs.items() if k.isupper()}))
            return launcher(*args, **kwargs)

        return run


def test_constexprs_do_not_follow_the_plan(monkeypatch):
    require_triton()
    from tts_kernels.attention import triton_kernel as tri

    calls = []
    monkeypatch.setattr(tri, "_tree_attn_stage1", _Recorder(tri._tree_attn_stage1, calls))
    d, hq, hkv, bs = 16, 8, 2, 4
    for n, kind in ((3, "forest"), (9, "identical")):  # a search widening from 3 to 9 rows
        q, k, v, bt, lens = make_inputs(kind, n, bs, hq, hkv, d, torch.bfloat16, seed=n)
        plan = simple_plan(bt, lens, bs)
        run_triton(q, k, v, bt, lens, plan, 0.25)
    # 3 rows: every chunk fits the narrow launch; 9 rows sharing: the wide launch, then the narrow one again
    (g0, c0), (g1, c1), (g2, c2) = calls
    assert c0 == c2 and c0["MAX_ROWS"] == c0["BLOCK_R"] == 4 and c1["MAX_ROWS"] == 0 and c1["MIN_ROWS"] == 5
    assert len(g0) == len(g1) == len(g2) == 1  # persistent programs: a 1-D grid


def test_two_tile_variants_at_most():
    """Only 16-bit D <= 128 has a second (256-row) variant, chosen by the batch's rows N."""
    from tts_kernels.attention.triton_kernel import stage1_config, wide_tiles

    assert not wide_tiles(32, 8, 128, torch.bfloat16, 32) and wide_tiles(32, 8, 128, torch.bfloat16, 33)
    assert not wide_tiles(32, 8, 256, torch.bfloat16, 256) and not wide_tiles(32, 8, 128, torch.float32, 256)
    assert stage1_config(32, 8, 128, torch.bfloat16, True)["BLOCK_M"] == 256


def test_tiles_follow_arch_and_block_size():
    """sm_8x (mma.sync) holds smaller tiles; a block id per token (block size < 4 or not a power of
    two) takes 32-token KV tiles: the variants that spilled (static check)."""
    from tts_kernels.attention.triton_kernel import stage1_config, wide_tiles

    assert wide_tiles(32, 8, 128, torch.bfloat16, 256, 90) and not wide_tiles(32, 8, 128, torch.bfloat16, 256, 80)
    assert wide_tiles(14, 2, 64, torch.bfloat16, 256, 80)
    h, a = stage1_config(32, 8, 128, torch.bfloat16, False, 90), stage1_config(32, 8, 128, torch.bfloat16, False, 80)
    assert (h["BLOCK_M"], h["BLOCK_N"]) == (128, 64) and (a["BLOCK_M"], a["BLOCK_N"]) == (128, 32)
    for bs in (1, 2, 6, 12):
        assert stage1_config(32, 8, 128, torch.bfloat16, False, 90, bs)["BLOCK_N"] == 32
    assert stage1_config(32, 8, 128, torch.bfloat16, False, 90, 4)["BLOCK_N"] == 64
    assert stage1_config(32, 8, 128, torch.float32, False, 90, 6) == stage1_config(32, 8, 128, torch.float32)
    # archs the static check does not compile take the mma.sync tiles
    assert stage1_config(32, 8, 128, torch.bfloat16, False, 120) == a
    # the narrow launch's 16-bit KV tiles too: 32 tokens off sm_90 (64 spilled in the KV loop of Triton
    # 3.8's GQA-7 D = 64 tile on sm_80), 64 on sm_90 up to D = 128; float32 the same on both archs at D = 64
    from tts_kernels.attention.triton_kernel import narrow_config
    for dt in (torch.bfloat16, torch.float16):
        assert [narrow_config(14, 2, 64, dt, arch)["BLOCK_N"] for arch in (90, 80, 120)] == [64, 32, 32]
        assert [narrow_config(8, 2, 256, dt, arch)["BLOCK_N"] for arch in (90, 80)] == [32, 32]
    assert narrow_config(14, 2, 64, torch.float32, 90) == narrow_config(14, 2, 64, torch.float32, 80)
    assert not wide_tiles(32, 8, 128, torch.bfloat16, 256, 100)


def test_no_sharing_takes_the_narrow_launch_only():
    """A plan that shares nothing (one row per chunk) runs the narrow launch alone (16 query rows: 2
    rows of 8 heads); one that shares anything takes the wide tile of its N (so a widening search
    keeps one variant) for its wide chunks, then the narrow launch."""
    from tts_kernels.attention.triton_kernel import stage1_cost, tile_rows

    q, k, v, bt, lens = make_inputs("identical", 40, 8, 8, 1, 64, torch.float16, seed=3)
    shared, alone = simple_plan(bt, lens, 8), simple_plan(bt, lens, 8, share=False)
    assert (tile_rows(shared), tile_rows(alone)) == (40, 1)
    cs, ca = stage1_cost(shared, 8, 1, 64, torch.float16), stage1_cost(alone, 8, 1, 64, torch.float16)
    assert [(ln["block_r"], ln["min_rows"], ln["max_rows"]) for ln in cs["launches"]] == [(32, 3, 0), (2, 1, 2)]
    assert [(ln["block_r"], ln["min_rows"], ln["max_rows"]) for ln in ca["launches"]] == [(2, 1, 2)]
    # every row shares all its tokens: the narrow launch finds no live item; without sharing it takes all
    assert cs["launches"][1]["items_live"] == 0 and ca["items_live"] == ca["items"] == 40


def test_parallelism_of_the_triton_kernel(monkeypatch):
    """What the planner's load-balanced chunks are told: rows per item of the tile a shared plan of N
    rows takes, KV heads, CTAS_PER_SM x SMs, and the narrow launch's row cap and programs
    (hand-checked against the tile tables)."""
    from tts_kernels import Parallelism
    from tts_kernels.attention import triton_kernel as tak

    cpu = torch.device("cpu")
    monkeypatch.setattr(tak, "_num_sms", lambda device: 132)
    # (rows per item and programs of the N-row tile; rows and programs of the narrow launch's 16-row tile)
    assert tak.parallelism(256, 32, 8, 128, torch.bfloat16, cpu, 16) == Parallelism(64, 8, 132, 4, 396)  # 256 rows
    assert tak.parallelism(16, 32, 8, 128, torch.bfloat16, cpu, 16) == Parallelism(32, 8, 132, 4, 396)   # 128 rows
    assert tak.parallelism(256, 32, 8, 128, torch.float32, cpu, 16) == Parallelism(8, 8, 264, 4, 396)    # 2 per SM
    assert tak.parallelism(256, 8, 1, 128, torch.bfloat16, cpu, 16) == Parallelism(32, 1, 132, 2, 396)   # 2 x 8 heads
    assert tak.parallelism(256, 8, 1, 64, torch.bfloat16, cpu, 16) == Parallelism(32, 1, 132, 2, 528)    # D=64
    # a batch of 2 rows of 8 heads fits the narrow tile: one launch, its rows and programs
    assert tak.parallelism(2, 8, 1, 64, torch.bfloat16, cpu, 16) == Parallelism(2, 1, 528, 2, 528)
    monkeypatch.setattr(tak, "_arch", lambda device: 80)
    assert tak.parallelism(256, 32, 8, 128, torch.bfloat16, cpu, 16) == Parallelism(32, 8, 132, 4, 396)  # no wide
    assert tak.parallelism(256, 32, 8, 64, torch.bfloat16, cpu, 16) == Parallelism(64, 8, 132, 4, 528)


def test_plan_launches_are_what_launches(monkeypatch):
    """plan_launches: the one definition of a plan's stage-1 launches, used by the wrapper and by
    stage1_cost (a plan with wide chunks and narrow ones: both launches, in that order)."""
    require_triton()
    from tts_kernels.attention import triton_kernel as tak

    q, k, v, bt, lens = make_inputs("forest", 40, 8, 8, 1, 64, torch.float16, seed=3)
    plan = simple_plan(bt, lens, 8)
    calls = []
    monkeypatch.setattr(tak, "_tree_attn_stage1", _Recorder(tak._tree_attn_stage1, calls))
    run_triton(q, k, v, bt, lens, plan, 0.25)
    launches = tak.plan_launches(plan, 8, 1, 64, torch.float16, tak._arch(q.device))
    assert len(calls) == len(launches) == 2
    names = ("BLOCK_R", "BLOCK_M", "BLOCK_N", "BLOCK_D", "GROUP_PAD")
    for (_, got), ln in zip(calls, launches):
        assert {n: got[n] for n in names} == {n: ln.cfg[n] for n in names}
        assert (got["MIN_ROWS"], got["MAX_ROWS"]) == (ln.min_rows, ln.max_rows)
    cost = tak.stage1_cost(plan, 8, 1, 64, torch.float16)
    assert [c["block_r"] for c in cost["launches"]] == [ln.cfg["BLOCK_R"] for ln in launches] == [32, 2]
    assert all(c["items_live"] > 0 for c in cost["launches"])


def test_tree_attention_parallelism_follows_the_backend(monkeypatch):
    """The Triton kernel's Parallelism where it runs the plan (CUDA, backend auto or triton); None off
    CUDA and for the other backends (no Triton launch to balance: the default plan); bad input raises."""
    import types

    import tts_kernels as tk
    from tts_kernels.attention import impls
    from tts_kernels.attention import triton_kernel as tak

    k = torch.zeros(4, 16, 2, 32)
    assert tk.tree_attention_parallelism(8, 4, k) is None
    # a k_cache that says it is on CUDA (this machine has none): shapes, dtype, device are all it reads
    cuda_k = types.SimpleNamespace(shape=torch.Size([4, 16, 2, 32]), dtype=torch.bfloat16,
                                   device=torch.device("cuda", 0))
    monkeypatch.setattr(tak, "_num_sms", lambda device: 132)
    monkeypatch.setattr(tak, "_arch", lambda device: 90)
    want = tak.parallelism(8, 4, 2, 32, torch.bfloat16, cuda_k.device, 16)
    # 8 rows of 2 heads fit the narrow tile: one launch, the narrow one's 4 programs per SM
    assert tk.tree_attention_parallelism(8, 4, cuda_k, backend="triton") == want == tk.Parallelism(8, 2, 528, 8, 528)
    assert tk.tree_attention_parallelism(8, 4, cuda_k) == want  # auto: Triton on CUDA
    for other in ("reference", "cpp"):
        assert tk.tree_attention_parallelism(8, 4, cuda_k, backend=other) is None
    monkeypatch.setattr(impls, "default_for", lambda device: impls.get("reference"))  # no Triton installed
    assert tk.tree_attention_parallelism(8, 4, cuda_k) is None
    with pytest.raises(ValueError, match="backend"):
        tk.tree_attention_parallelism(8, 4, k, backend="Triton")
    with pytest.raises(ValueError, match="num_q_heads"):
        tk.tree_attention_parallelism(8, 3, k)
    with pytest.raises(ValueError, match="num_rows"):
        tk.tree_attention_parallelism(-1, 4, k)
    with pytest.raises(ValueError, match="k_cache"):
        tk.tree_attention_parallelism(8, 4, k[0])


def test_grid_follows_capacity():
    from tts_kernels.attention.triton_kernel import Stage1Launch, num_work_items, stage1_config, stage1_grid

    cfg = stage1_config(32, 8, 128, torch.bfloat16)
    br = cfg["BLOCK_R"]
    # a narrow launch lists each chunk once (no rest windows), the others every window
    assert Stage1Launch(cfg, 1, br).items(300, 1024) == 300
    assert Stage1Launch(cfg, 5, 0).items(300, 1024) == 300 + 1023 // br
    assert num_work_items(300, 1024, br) == 300 + 1023 // br
    assert num_work_items(5, 0, br) == 5
    assert stage1_grid(num_work_items(300, 1024, br), 8, cfg, 132) == 132 * cfg["CTAS_PER_SM"]
    assert stage1_grid(num_work_items(5, 0, br), 2, cfg, 132) == 10  # fewer slots than the GPU: one CTA per slot


_SPECS_OF_A_WIDENING_SEARCH = r"""
import json, torch
import tts_kernels as tk
from benchmarks.gpu_static import aot, spaces
ok, why = aot.triton_support()
if not ok:
    print("SKIP " + why)
    raise SystemExit(0)
ids, chunks, widths = {}, set(), set()
# N = 8 rows whose shared prefix grows (a search widening its sharing), block tables of several widths
# (multiples of 16 or not), chunk and pair counts of every divisibility
for prefix, suffix, pad in ((0, 40, 0), (16, 48, 0), (32, 32, 5), (48, 16, 0), (64, 80, 7), (128, 16, 23)):
    for sharing in (True, False):
        for chunk_size in (None, 16):
            q, k, v, bt, sl, plan = spaces.attention_inputs(8, prefix, suffix, 32, 8, 128, torch.bfloat16,
                                                            table_pad=pad, sharing=sharing, chunk_size=chunk_size)
            chunks.add(plan.num_chunks % 16 == 0)
            widths.add(bt.shape[1] % 16 == 0)
            with aot.recording() as launches:
                tk.tree_attention(q, k, v, bt, sl, plan=plan, validate=False, backend="triton")
            for lc in launches:
                ids.setdefault(lc.name, set()).add(aot.spec_id(lc, aot.bind(lc, 90)))
assert chunks == widths == {True, False}, (chunks, widths)
print(json.dumps({name: sorted(v) for name, v in ids.items()}))
"""


def test_no_recompile_as_a_search_widens():
    """One specialization of each launch for every plan of an N-row batch (Triton's own binder): the
    wide and the narrow stage-1 launch, stage 2."""
    from helpers.specializations import specializations

    ids = specializations(_SPECS_OF_A_WIDENING_SEARCH)
    assert set(ids) == {"_tree_attn_stage1", "_tree_attn_stage2"}
    assert len(ids["_tree_attn_stage2"]) == 1, ids
    stage1 = ids["_tree_attn_stage1"]
    assert len(stage1) == 2 and sorted("MAX_ROWS=0," in sid for sid in stage1) == [False, True], stage1


# ---------------------------------------------------------------------------
# sm_90 AOT compile
# ---------------------------------------------------------------------------
_TY = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_UNIT_STRIDES = ("stride_qd", "stride_kd", "stride_vd", "stride_btb", "stride_od")


def _resources(compiled):
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return dict(regs=int(m.group(1)), stack=int(m.group(2)), stl=sass.count("STL"), ldl=sass.count("LDL"))


def _compile(fn, ptr_types, constexprs, num_warps, arch=90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {n: ("constexpr" if n in constexprs else ptr_types.get(n, "i32")) for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items() if t.startswith("*")}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps, num_stages=2))


def _sm90():
    if os.environ.get("TTS_STATIC_SM90", "0") in ("", "0"):
        pytest.skip("sm_90 AOT compile is slow: set TTS_STATIC_SM90=1")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("AOT compile needs the compiled (not interpreted) @triton.jit functions: run without "
                    "TRITON_INTERPRET")
    pytest.importorskip("triton")


@pytest.mark.parametrize("dtype", list(_TY), ids=lambda t: _TY[t])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("hq,hkv", [(32, 8), (8, 1)])
@pytest.mark.parametrize("wide", [False, True], ids=["tiles", "wide"])
@pytest.mark.parametrize("arch", [90, 80])
def test_stage1_no_spills_sm90(dtype, d, hq, hkv, wide, arch):
    _sm90()
    from tts_kernels.attention import triton_kernel as tri

    if wide and not tri.wide_tiles(hq, hkv, d, dtype, 256, arch):
        pytest.skip("no wide variant")
    cfg = tri.stage1_config(hq, hkv, d, dtype, wide, arch)
    t = _TY[dtype]
    ptrs = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "out_p_ptr": f"*{_TY[tri.partial_dtype(dtype)]}",
            "lse_p_ptr": "*fp32", "scale_log2": "fp32", "next_ptr": "*i32"}
    ptrs.update({n: "*i32" for n in ("bt_ptr", "chunk_row_ptr", "chunk_start_ptr", "chunk_len_ptr",
                                     "chunk_q_ptr_ptr", "q_rows_ptr")})
    cons = dict(HQ=hq, HEAD_DIM=d, GROUP=hq // hkv, BS=16, BS_POW2=True,
                DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32", DOT_UPCAST=False,
                **{k: v for k, v in cfg.items() if k not in ("num_warps", "CTAS_PER_SM")})
    cons.update({n: 1 for n in _UNIT_STRIDES if n in tri._tree_attn_stage1.arg_names})
    res = _resources(_compile(tri._tree_attn_stage1, ptrs, cons, cfg["num_warps"], arch))
    assert res["stack"] == 0 and res["stl"] == 0 and res["ldl"] == 0, res
    # the persistent grid's CTAs per SM fit by registers
    assert 65536 // (-(-res["regs"] // 8) * 8 * 32 * cfg["num_warps"]) >= cfg["CTAS_PER_SM"], res


@pytest.mark.parametrize("dtype", list(_TY), ids=lambda t: _TY[t])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_stage2_no_spills_sm90(dtype, d):
    _sm90()
    from tts_kernels.attention import triton_kernel as tri

    t = _TY[dtype]
    ptrs = {"out_p_ptr": f"*{_TY[tri.partial_dtype(dtype)]}", "lse_p_ptr": "*fp32", "row_pair_ptr_ptr": "*i32",
            "row_pairs_ptr": "*i32", "out_ptr": f"*{t}", "lse_ptr": "*fp32"}
    cons = dict(HQ=32, HEAD_DIM=d, **tri.stage2_config(32, d))
    cons.update({n: 1 for n in _UNIT_STRIDES if n in tri._tree_attn_stage2.arg_names})
    res = _resources(_compile(tri._tree_attn_stage2, ptrs, cons, 4))
    assert res["stack"] == 0 and res["stl"] == 0 and res["ldl"] == 0, res
