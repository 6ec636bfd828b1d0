"""The static GPU check (benchmarks/gpu_static): cost model on hand-computed cases, the SASS
loop finder and the spill rule on synthetic SASS, the allow-list, and the quick set compiled for
sm_90 and sm_80 end to end (no GPU; skipped with the tool's reason on an unsupported Triton)."""
from __future__ import annotations

import inspect
import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_static import aot, cost_model as cm  # noqa: E402
from benchmarks.gpu_static.check import ALLOWLIST, allowed, load_allowlist  # noqa: E402


# ------------------------------------------------------------------------------------------------
# cost model, by hand
# ------------------------------------------------------------------------------------------------
def test_sampler_passes():
    assert cm.sampler_passes("temp")["total"] == (1, 1)
    assert cm.sampler_passes("greedy")["total"] == (1, 1)
    assert cm.sampler_passes("min_p")["total"] == (1, 2)                    # + the filtered draw, if needed
    # top-k / top-p: pass 1 + the compaction of the candidates + 0..1 filtered draw (the whole row when
    # V is not given); the selects read the candidate buffer, not the row
    assert cm.sampler_passes("top_k", (3, 8))["total"] == (2, 3)
    assert cm.sampler_passes("topk_topp_minp", (3, 8))["total"] == (2, 3)
    # the compaction and the draw read only the candidate groups: with top-k (k = 50), 50 x 256 / V of the row
    f = 50 * 256 / 151936
    p = cm.sampler_passes("topk_topp_minp", (3, 8), 151936)
    lo, hi = p["total"]
    assert lo == pytest.approx(1 + f, rel=1e-3) and hi == pytest.approx(1 + 2 * f, rel=1e-3)
    # 50 buffered values: one sort (straight-line code, no select loop); 4096: 2 selects x 8 reads of
    # them, their key range's read shared (2 x 7 + 1), as a share of the row (instructions only): the
    # key range's read, top-k's 6 counting steps, the rest (its final read, top-p's 7) weigh
    u = 4096 / 151936
    assert p["select"] == (0, pytest.approx(15 * u, rel=1e-3))
    assert p["select_keys"] == (0, pytest.approx(u, rel=1e-3))
    assert p["select_count"] == (0, pytest.approx(6 * u, rel=1e-3))
    assert cm.sampler_passes("top_p", (3, 8), 151936)["select_count"] == (0, 0)
    assert cm.sampler_passes("top_p", (3, 8), 151936)["select"] == (0, pytest.approx(8 * u, rel=1e-3))
    # more than 256 values take the bisection's reads, the values rounded up to whole loop iterations
    p = cm.sampler_passes("top_k", (3, 8), 151936, buffer_entries=(257, 4000), select_block=512)
    assert p["select"] == (pytest.approx(3 * 512 / 151936, rel=1e-3), pytest.approx(8 * 4096 / 151936, rel=1e-3))
    # the compaction and the draw walk a list of the candidate groups a tile at a time: whole tiles (4096
    # bf16 tokens, 16 groups: the 50 groups take 4 tiles, 64 groups); the whole row stays one pass
    p = cm.sampler_passes("topk_topp_minp", (3, 8), 151936, compact_block=4096, draw_block=4096)
    assert p["compact"] == (pytest.approx(4 * 4096 / 151936, rel=1e-3),) * 2
    assert p["draw"] == (0, pytest.approx(4 * 4096 / 151936, rel=1e-3))
    assert cm.sampler_passes("min_p", (3, 8), 151936, draw_block=4096)["draw"] == (0, 1)
    assert cm.sampler_passes("top_p", (3, 8), 151936, compact_block=2048)["compact"] == (
        pytest.approx(2048 / 151936, rel=1e-3), 1)                           # one group: one tile
    # issue 14's "at most 3 full-row passes": V = 32000, 125 groups of which 50 are candidates
    assert cm.sampler_passes("topk_topp_minp", (3, 8), 32000)["total"] == (1.4, 1.8)
    assert cm.sampler_passes("min_p", (3, 8), 2560)["total"] == (1, 2)      # one group .. the whole row
    p = cm.sampler_passes("top_p", (3, 8), 2560)
    assert p["total"] == (1.1, 3)                                           # 1 + 0.1..1 + 0..1
    assert p["select"] == (0, 8)                                            # the buffer holds up to the row
    pytest.importorskip("triton")
    from tts_kernels.sampling import triton_kernel
    assert cm.BUFFER_ENTRIES[1] == triton_kernel._CANDIDATES
    assert cm.SORTED_ENTRIES == triton_kernel._SORTED
    # a row no longer than the sort's capacity is always sorted, whatever the buffer's capacity
    assert cm.sampler_passes("top_k", (3, 8), 200, select_block=512)["select"] == (0, 0)
    # every role the cost model looks up names a Triton function of the module (a missing one would fall
    # back to every path silently)
    for role, fn in triton_kernel.COST_MODEL_ROLES.items():   # (a JITFunction, or the interpreter's wrapper)
        assert getattr(getattr(getattr(triton_kernel, fn, None), "fn", None), "__name__", None) == fn, (role, fn)
    # the roles a row skips together are disjoint call trees (straight_line_warp_instr adds their counts)
    def calls(fn, seen=None):
        seen = set() if seen is None else seen
        src = inspect.getsource(getattr(triton_kernel, fn).fn)
        for name in re.findall(r"\b(_[a-z0-9_]+)\(", src.split(":", 1)[1]):
            if name not in seen and hasattr(getattr(triton_kernel, name, None), "fn"):
                seen.add(name)
                calls(name, seen)
        return seen
    roles = triton_kernel.COST_MODEL_ROLES
    assert "_select_thresholds" in calls(roles["filtered"]) and "_rescore" in calls(roles["redraw"])
    for rs in {cm.skipped_roles(c, r, b) for c in cm.SAMPLER_CONFIGS for r in (False, True)
               for b in (None, False, True)}:
        for a in rs:
            for b in rs:
                assert a == b or roles[b] not in calls(roles[a]), (rs, a, b)
    # ... and each is called from one place only (a second call site on a row's path would be skipped too)
    module_src = inspect.getsource(triton_kernel)
    for role in {r for c in cm.SAMPLER_CONFIGS for x in (False, True) for b in (None, False, True)
                 for r in cm.skipped_roles(c, x, b)}:
        assert len(re.findall(rf"\b{roles[role]}\(", module_src)) == 2, role   # its def and one call


def test_sampler_bound_b1_instruction_bound():
    # one program per row (what B < 132 got before the split-row path, and any B off a GPU): B=1, V=32000
    # fp32, temperature: 108 thread-instructions per token, one SM
    r = cm.sampler_bound(1, 32000, 4, "temp", {"pass1": 108.0, "select": 0.0, "draw": 0.0})
    warp_instr = 32000 * 108 / 32                       # 108,000 warp-instructions, one row
    t = warp_instr / (4 * 1.755e9)                      # 15.38 us at 4 per clock
    assert r["bytes_floor"] == 32000 * 4 + 12
    assert r["active_sms"] == 1 and r["rows_on_busiest_sm"] == 1
    assert r["low"]["t_issue_s"] == pytest.approx(t, rel=1e-3)
    assert r["low"]["bound"] == "issue"
    assert r["low"]["gbps_bound"] == pytest.approx((32000 * 4 + 12) / t / 1e9, rel=1e-3)   # ~8.3 GB/s
    assert r["low"]["l2_to_sm_bytes"] == 32000 * 4


def test_sampler_bound_waves_and_passes():
    instr = {"pass1": 100.0, "compact": 30.0, "select": 200.0, "draw": 80.0}
    r = cm.sampler_bound(264, 1000, 2, "top_p", instr, ctas_per_sm=2, select_passes=(2, 5))
    assert r["rows_on_busiest_sm"] == 2                 # 264 rows over 132 SMs
    assert r["rows_in_flight"] == 264 and r["l2_working_set_bytes"] == 264 * 1000 * 2
    assert r["full_row_passes"] == [1.256, 3]           # 1 + compaction + 0..1 draw, over 1 group .. all
    # the select: 50 buffered values sorted (straight-line code), 1000 read 5 times: the key range's
    # read (the values, 4 B each), then 4 weighing reads (top-p: a key and a mass, 8 B each)
    assert r["select_buffer_bytes"] == {"low": 0, "high": (4 + 4 * 8) * 264 * 1000}
    lo, hi = r["low"], r["high"]
    assert lo["thread_instr_per_token"] == pytest.approx(100 + 0.256 * 30, rel=1e-3)
    assert hi["thread_instr_per_token"] == 100 + 30 + 5 * 200 + 80
    assert lo["l2_to_sm_bytes"] == pytest.approx(1.256 * 264 * 1000 * 2, rel=1e-3)
    assert hi["l2_to_sm_bytes"] == 3 * 264 * 1000 * 2 + (4 + 4 * 8) * 264 * 1000
    assert hi["t_issue_s"] == pytest.approx(2 * 1000 * 1210 / 32 / (4 * 1.755e9), rel=1e-3)
    # top-k's select counts: its 3 steps at the counting rate, its final read weighs, the key range's read
    # at its own rate; top-k + top-p: 9 reads, the key range's shared
    rates = dict(instr, count=50.0, keys=70.0)
    r = cm.sampler_bound(264, 1000, 2, "top_k", rates, ctas_per_sm=2, select_passes=(2, 5))
    assert r["high"]["thread_instr_per_token"] == 100 + 30 + 70 + 3 * 50 + 200 + 80
    assert r["select_buffer_bytes"]["high"] == (4 + 3 * 4 + 8) * 264 * 1000            # counting: keys only
    r = cm.sampler_bound(264, 1000, 2, "topk_topp_minp", rates, ctas_per_sm=2, select_passes=(2, 5))
    assert r["high"]["thread_instr_per_token"] == 100 + 30 + 70 + 3 * 50 + 5 * 200 + 80
    # no count or keys rate: the select's
    r = cm.sampler_bound(264, 1000, 2, "top_k", instr, ctas_per_sm=2, select_passes=(2, 5))
    assert r["high"]["thread_instr_per_token"] == 100 + 30 + 5 * 200 + 80
    # a huge batch of a tiny row is bandwidth bound; the group stats (12 B per group of 256, written
    # and read) are this design's bytes beyond the floor
    r = cm.sampler_bound(10 ** 6, 64, 4, "greedy", {"pass1": 1.0, "select": 0, "draw": 0})
    assert r["workspace_bytes"] == 2 * 10 ** 6 * 12
    assert r["low"]["bound"] == "hbm" and r["low"]["frac_hbm_bw"] == pytest.approx(268 / (268 + 24), rel=1e-3)


def test_sampler_bound_groups_and_mufu():
    # B=264, V=151936 bf16: 2 rows on the busiest SM; 594 groups of 256 per row
    instr = {"pass1": 16.0, "select": 0.0, "draw": 0.0, "groups": 200.0, "cta_warp": 8000, "pass1_mufu": 2.0}
    r = cm.sampler_bound(264, 151936, 2, "temp", instr)
    warp_row = 151936 * 16 / 32 + 594 * 200 / 32 + 8000
    assert r["low"]["t_issue_s"] == pytest.approx(2 * warp_row / RATE, rel=1e-3)
    assert r["low"]["t_mufu_s"] == pytest.approx(2 * 151936 * 2 / (16 * 1.755e9), rel=1e-3)
    assert r["hbm_bytes_this_design"] == 264 * (151936 * 2 + 12) + 2 * 264 * 594 * 12
    # with 8 MUFU operations a token, the special-function units bound the row instead
    r8 = cm.sampler_bound(264, 151936, 2, "temp", dict(instr, pass1_mufu=8.0))
    assert r8["low"]["t_issue_s"] == pytest.approx(2 * 151936 * 8 / (16 * 1.755e9), rel=1e-3)
    # the filtered draw's scores over the groups (30 per group) count only where its pass runs: min-p's high
    # side (the whole row a candidate), not its low side nor temperature
    drawn = dict(instr, draw=40.0, draw_groups=30.0, pass1_mufu=0.0)
    r = cm.sampler_bound(264, 151936, 2, "min_p", drawn)
    assert r["low"]["t_issue_s"] == pytest.approx(2 * warp_row / RATE, rel=1e-3)
    assert r["high"]["t_issue_s"] == pytest.approx(2 * (warp_row + 151936 * 40 / 32 + 594 * 30 / 32) / RATE,
                                                   rel=1e-3)
    assert cm.sampler_bound(264, 151936, 2, "temp", drawn)["high"]["t_issue_s"] == r["low"]["t_issue_s"]
    # the filtered draw's exp2 per token takes the special-function units too, on the side where its pass runs:
    # min-p's high side counts 2 + 1 MUFU per token, its low side pass 1's 2
    mufu = dict(drawn, pass1_mufu=2.0, draw_mufu=1.0, draw=1.0, groups=0.0, draw_groups=0.0, cta_warp=0)
    r = cm.sampler_bound(264, 151936, 2, "min_p", dict(mufu, pass1=1.0))
    assert r["low"]["t_mufu_s"] == pytest.approx(2 * 151936 * 2 / (16 * 1.755e9), rel=1e-3)
    assert r["high"]["t_mufu_s"] == pytest.approx(2 * 151936 * 3 / (16 * 1.755e9), rel=1e-3)
    assert r["high"]["t_issue_s"] == r["high"]["t_mufu_s"]
    r = cm.split_row_bound(32, 151936, 2, "min_p", 4, 38912, {"pass1": 1.0}, mufu)
    assert r["high"]["kernels"]["_merge_kernel"]["t_issue_s"] == pytest.approx(151936 * 1 / (16 * 1.755e9), rel=1e-3)
    r = cm.split_row_bound(32, 151936, 2, "min_p", 4, 38912, {"pass1": 16.0}, drawn)
    assert r["high"]["t_issue_s"] - r["low"]["t_issue_s"] == pytest.approx(
        (151936 * 40 / 32 + 594 * 30 / 32) / RATE, rel=1e-3)
    # the candidate-group lists (12 per group): the compaction's on rows with a select, the draw's where it runs
    listed = dict(drawn, list=12.0)
    r = cm.sampler_bound(264, 151936, 2, "min_p", listed)
    assert r["low"]["t_issue_s"] == pytest.approx(2 * warp_row / RATE, rel=1e-3)
    assert r["high"]["t_issue_s"] == pytest.approx(
        2 * (warp_row + 151936 * 40 / 32 + 594 * (30 + 12) / 32) / RATE, rel=1e-3)
    r = cm.sampler_bound(264, 151936, 2, "top_k", listed)
    f = 50 * 256 / 151936
    assert r["low"]["t_issue_s"] == pytest.approx(2 * (warp_row + 594 * 12 / 32) / RATE, rel=1e-3)
    assert r["high"]["t_issue_s"] == pytest.approx(
        2 * (warp_row + f * 151936 * 40 / 32 + 594 * (30 + 2 * 12) / 32) / RATE, rel=1e-3)
    # the draw's own list (``draw_list``, 20 per group: it scores every candidate to list the contenders) where the
    # counts have one
    r = cm.sampler_bound(264, 151936, 2, "top_k", dict(listed, draw_list=20.0))
    assert r["low"]["t_issue_s"] == pytest.approx(2 * (warp_row + 594 * 12 / 32) / RATE, rel=1e-3)
    assert r["high"]["t_issue_s"] == pytest.approx(
        2 * (warp_row + f * 151936 * 40 / 32 + 594 * (30 + 12 + 20) / 32) / RATE, rel=1e-3)


RATE = 4 * 1.755e9          # warp-instructions per second per SM (H100 model)


def test_sampler_bound_straight_line_per_config():
    # the straight-line code a config's rows run: temperature and greedy skip every filter's (8000 -> 3000
    # warp-instructions), min-p alone the thresholds' (-> 5000), top-k / top-p run every path; on the low
    # side (no filtered draw pass: the chosen group stands) a filtered row also skips the rescoring's
    instr = {"pass1": 16.0, "select": 0.0, "draw": 0.0, "cta_warp": 8000,
             "cta_warp_paths": {"filtered+redraw": 3000, "rescore+thresholds": 4500, "thresholds": 5000,
                                "rescore": 7000}}
    for config, cta in (("temp", (3000, 3000)), ("greedy", (3000, 3000)), ("min_p", (4500, 5000)),
                        ("top_k", (7000, 8000)), ("topk_topp_minp", (7000, 8000))):
        r = cm.sampler_bound(264, 1000, 2, config, instr)
        assert r["cta_warp_this_config"] == list(cta), config
        assert r["low"]["t_issue_s"] == pytest.approx(2 * (1000 * 16 / 32 + cta[0]) / RATE, rel=1e-3), config
        assert r["high"]["t_issue_s"] == pytest.approx(2 * (1000 * 16 / 32 + cta[1]) / RATE, rel=1e-3), config
    # without the split (an older results JSON), every path
    assert cm.sampler_bound(264, 1000, 2, "temp", {"pass1": 16.0, "cta_warp": 8000})["cta_warp_this_config"] == [8000, 8000]
    r = cm.split_row_bound(32, 1000, 2, "temp", 1, 1000, {"pass1": 16.0}, instr)
    assert r["merge_cta_warp_this_config"] == [3000, 3000]
    r = cm.split_row_bound(32, 1000, 2, "min_p", 1, 1000, {"pass1": 16.0}, instr)
    assert r["merge_cta_warp_this_config"] == [4500, 5000]
    # top-k / top-p: the low side's 50 candidates take the sort and skip the bisection's code, the high
    # side's 1000 (the buffer holds up to the row) the bisection and skip the sort's
    split = dict(instr, cta_warp_paths=dict(instr["cta_warp_paths"], **{"bisect+rescore": 6600, "sort": 7800}))
    for config in ("top_k", "top_p", "topk_topp_minp"):
        assert cm.sampler_bound(264, 1000, 2, config, split)["cta_warp_this_config"] == [6600, 7800], config
    assert cm.sampler_bound(264, 1000, 2, "min_p", split)["cta_warp_this_config"] == [4500, 5000]
    assert cm.skipped_roles("top_k", False, True) == ("bisect", "overflow", "rescore")
    assert cm.skipped_roles("top_k", True, False) == ("overflow", "sort")
    assert cm.skipped_roles("min_p", True, False) == ("thresholds",)
    # the roles a row skips are sibling call trees of the kernel module (never one inside another)
    assert cm.skipped_roles("temp", True) == ("filtered", "redraw")
    assert cm.skipped_roles("min_p", False) == ("thresholds", "rescore")
    assert cm.skipped_roles("top_p", True) == ("overflow",)
    # with the overflow path's own counts (no side of the model overflows the buffer), top-k / top-p rows skip it;
    # the paths above (a results JSON before it) are the same rows with it counted
    over = dict(split, cta_warp_paths=dict(split["cta_warp_paths"], **{"bisect+overflow+rescore": 6100,
                                                                        "overflow+sort": 7300}))
    for config in ("top_k", "top_p", "topk_topp_minp"):
        assert cm.sampler_bound(264, 1000, 2, config, over)["cta_warp_this_config"] == [6100, 7300], config
    assert cm.sampler_bound(264, 1000, 2, "temp", over)["cta_warp_this_config"] == [3000, 3000]


def test_sampler_instr_paths_from_the_inlining_counts():
    # sampler_instr turns the SASS's per-function straight-line counts into the per-path counts
    # _cta_warp looks up, under the module's role names: 1000 straight-line instructions (8 warps),
    # of which the bounds 300 (the thresholds 250 of them) and the redraw 200 (the rescoring 150)
    roles = cm._sampler_roles()
    if not roles:
        pytest.skip("the Triton sampler module does not load here")
    loop = {"depth": 0, "instructions": 500, "innermost": True, "thread_instr_per_token": 10.0,
            "tokens_per_iter": 8192, "instructions_excl": 500, "ldg_ops": ["LDG.E.128"], "mufu": 2,
            "source": {"function": roles["pass1"], "line": 1}}
    by_fn = {roles["filtered"]: 300, roles["thresholds"]: 250, roles["redraw"]: 200, roles["rescore"]: 150}
    compiled = {"loops": [loop], "sass_instructions": 1500, "num_warps": 8, "straight_line_by_function": by_fn}
    instr = cm.sampler_instr(compiled, "_sample_kernel")
    assert instr["cta_warp"] == 1000 * 8
    expect = {"temp": (500, 500), "greedy": (500, 500), "min_p": (600, 750), "top_k": (850, 1000),
              "top_p": (850, 1000), "topk_topp_minp": (850, 1000)}
    assert set(expect) == set(cm.SAMPLER_CONFIGS)
    for config, (lo, hi) in expect.items():
        r = cm.sampler_bound(264, 8192, 2, config, instr)
        assert r["cta_warp_this_config"] == [lo * 8, hi * 8], config


def test_sampler_bound_pass1_tail():
    # pass 1's loop runs V = 20000's 2 whole tiles of 8192; the partial one (3616 tokens) is straight-line code
    # (tail_warp of the 5000 straight-line warp-instructions), counted once, not again at the loop's rate
    instr = {"pass1": 16.0, "cta_warp": 5000, "pass1_block": 8192, "tail_warp": 1200}
    r = cm.sampler_bound(264, 20000, 2, "temp", instr)
    assert r["pass1_loop_tokens"] == 16384
    assert r["low"]["t_issue_s"] == pytest.approx(2 * (16384 * 16 / 32 + 5000) / RATE, rel=1e-3)
    # a row of whole tiles skips the partial tile's code
    r = cm.sampler_bound(264, 16384, 2, "temp", instr)
    assert r["low"]["t_issue_s"] == pytest.approx(2 * (16384 * 16 / 32 + 5000 - 1200) / RATE, rel=1e-3)
    # split rows: a slice of whole tiles skips it too
    r = cm.split_row_bound(1, 20000, 2, "temp", 10, 2048, {"pass1": 16.0, "cta_warp": 900, "tail_warp": 300},
                           {"cta_warp": 100})
    assert r["low"]["kernels"]["_partial_kernel"]["t_issue_s"] == pytest.approx((2048 * 16 / 32 + 600) / RATE,
                                                                                  rel=1e-3)


def test_sass_inlining_chains_and_straight_line_by_function(tmp_path):
    # nvdisasm -gi: a run of "//## File" lines is one chain, innermost first; the functions of each frame
    src = tmp_path / "k.py"
    src.write_text("def outer():\n    x = 1\n    inner()\n    y = 2\n\n\ndef inner():\n    z = 3\n    return z\n")
    f = str(src)
    out = "\n".join([
        f'\t//## File "{f}", line 2',
        "        /*0000*/                   MOV R0, RZ ;",
        f'\t//## File "{f}", line 8 inlined at "{f}", line 3',
        f'\t//## File "{f}", line 3',
        "        /*0010*/                   IADD3 R0, R0, 0x1, RZ ;",
        "        /*0020*/                   IADD3 R0, R0, 0x2, RZ ;",       # keeps the chain before it
        ".L_x_0:",
        f'\t//## File "{f}", line 4',
        "        /*0030*/                   FADD R1, R1, R2 ;",
        "        /*0040*/                   @P0 BRA `(.L_x_0) ;",           # a loop: lines 4
        "        /*0050*/                   EXIT ;",
    ])
    instrs, labels = aot.parse_sass(out)
    assert [i.line for i in instrs] == [2, 8, 8, 4, 4, 4]
    assert instrs[1].chain == ((f, 8), (f, 3)) and instrs[2].chain == ((f, 8), (f, 3))
    assert labels == {".L_x_0": 0x30}
    assert aot.chain_functions(instrs[1]) == {"inner", "outer"} and aot.chain_functions(instrs[0]) == {"outer"}
    in_loops = set()
    (lp,) = aot.sass_loops(instrs, labels, in_loops)
    assert in_loops == {3, 4}
    assert aot.straight_line_by_function(instrs, in_loops) == {"inner": 2, "outer": 4}
    # the cost model: the straight-line count without the code inlined from a skipped function
    compiled = {"loops": [dict(lp, depth=0)], "sass_instructions": 6, "num_warps": 8,
                "straight_line_by_function": {"inner": 2, "outer": 4}}
    assert cm.straight_line_warp_instr(compiled) == 4 * 8
    assert cm.straight_line_warp_instr(compiled, "inner") == 2 * 8
    assert cm.straight_line_warp_instr(dict(compiled, straight_line_by_function=None), "inner") == 4 * 8


def test_infer_chains_without_inlining_info(tmp_path):
    # Triton 3.5.1's cubins name only the innermost line: the chains come from the source's call graph. ``only``
    # is reached through ``a`` alone (its chain: a, kernel); ``helper`` is shared by ``a`` and ``b``: its
    # instructions take the path the nearest instructions before and after them show, only what both show
    src = tmp_path / "k.py"
    src.write_text("def kernel():\n    a()\n    b()\n\n\ndef a():\n    only()\n    helper()\n\n\n"
                   "def b(key):\n    helper()\n\n\ndef only():\n    return 1\n\n\ndef helper():\n    return 2\n\n\n"
                   "def unused():\n    helper()\n\n\ndef key():\n    helper()\n")
    f = str(src)
    # kernel, a, only, helper (in a), a, b, helper (in b), b, helper (between b and the kernel), kernel
    lines = [2, 7, 16, 20, 8, 12, 20, 12, 20, 3]
    out = "\n".join(f'\t//## File "{f}", line {ln}\n        /*{16 * i:04x}*/                   NOP ;'
                    for i, ln in enumerate(lines))
    instrs, _labels = aot.parse_sass(out)
    assert all(len(i.chain) == 1 for i in instrs)
    got = [aot.chain_functions(i) for i in aot.infer_chains(instrs, "kernel")]
    assert got == [{"kernel"}, {"kernel", "a"}, {"kernel", "a", "only"}, {"kernel", "a", "helper"}, {"kernel", "a"},
                   {"kernel", "b"}, {"kernel", "b", "helper"}, {"kernel", "b"}, {"kernel", "helper"}, {"kernel"}]
    assert aot.straight_line_by_function(aot.infer_chains(instrs, "kernel"), set()) == {
        "a": 4, "b": 3, "helper": 3, "kernel": 10, "only": 1}
    # b's parameter ``key`` is not a reference to the function ``key``; its call of helper is
    refs = dict(aot._source_references(f))
    assert "key" not in refs["b"] and "helper" in refs["b"] and {"a", "b"} <= set(refs["kernel"])
    # a helper with no caller's instruction within the window: its dominators only (the entry)
    lone = aot.parse_sass(f'\t//## File "{f}", line 20\n        /*0000*/                   NOP ;')[0]
    assert [aot.chain_functions(i) for i in aot.infer_chains(lone, "kernel")] == [{"kernel", "helper"}]
    # an unknown entry leaves them as they are
    assert aot.infer_chains(instrs, "nope") == instrs
    # Triton 3.9 names whole chains but for a few instructions whose debug locations LLVM merged: complete chains
    # (the outermost frame in the kernel) stay; a cut one keeps its frames and gets the rest of the path
    full = "\n".join([f'\t//## File "{f}", line 12\n\t//## File "{f}", line 3\n        /*0000*/      NOP ;',
                      f'\t//## File "{f}", line 20\n        /*0010*/      NOP ;',                # cut: helper only
                      f'\t//## File "{f}", line 12\n\t//## File "{f}", line 3\n        /*0020*/      NOP ;',
                      f'\t//## File "{f}", line 20\n\t//## File "{f}", line 8\n\t//## File "{f}", line 2\n'
                      "        /*0030*/      NOP ;",
                      f'\t//## File "{f}", line 20\n\t//## File "{f}", line 8\n        /*0040*/      NOP ;'])
    instrs, _labels = aot.parse_sass(full)
    inferred = aot.infer_chains(instrs, "kernel")
    assert [aot.chain_functions(i) for i in inferred] == [{"kernel", "b"}, {"kernel", "b", "helper"}, {"kernel", "b"},
                                                          {"kernel", "a", "helper"}, {"kernel", "a", "helper"}]
    assert inferred[3] == instrs[3] and inferred[4].chain[:2] == instrs[4].chain


def test_split_row_bound_b1_hand_case():
    # B=1, V=32000 fp32: S = 16 slices of 2048 tokens (whole tiles; an H100 gets 125 slices of one group,
    # test_split_row_bound_group_slices)
    pi = {"pass1": 114.0, "cta_warp": 6464}            # partial: per token of pass 1; straight-line per CTA
    mi = {"compact": 40.0, "select": 218.5, "draw": 98.25, "cta_warp": 3720}
    r = cm.split_row_bound(1, 32000, 4, "temp", 16, 2048, pi, mi)
    assert r["path"] == "split" and r["slices"] == 16 and r["active_sms"] == 16 and r["active_sms_merge"] == 1
    assert r["ctas_launched"] == 16 + 1 and r["slices_on_busiest_sm"] == 1 and r["rows_on_busiest_sm"] == 1
    assert r["bytes_floor"] == 32000 * 4 + 12
    assert r["workspace_bytes"] == 2 * 125 * 12                 # 3 words per group of 256, written then read
    assert r["hbm_bytes_this_design"] == 32000 * 4 + 12 + 2 * 125 * 12
    t_partial = (2048 * 114 / 32 + 6464) / RATE                # one slice on the busiest SM: 1.96 us
    t_merge = 3720 / RATE                                       # temperature: the merge's straight-line code only
    lo = r["low"]
    assert lo["kernels"]["_partial_kernel"]["t_issue_s"] == pytest.approx(t_partial, rel=1e-3)
    assert lo["kernels"]["_merge_kernel"]["t_issue_s"] == pytest.approx(t_merge, rel=1e-3)
    assert lo["t_issue_s"] == pytest.approx(t_partial + t_merge, rel=1e-3)
    assert lo["t_bound_s"] == pytest.approx(t_partial + t_merge, rel=1e-3) and lo["bound"] == "issue"
    assert lo["gbps_bound"] == pytest.approx((32000 * 4 + 12) / (t_partial + t_merge) / 1e9, rel=1e-3)
    assert lo["l2_to_sm_bytes"] == 32000 * 4
    # the filters run in the merge kernel on one SM: the compaction and the draw over the candidate groups
    # (with top-k = 50, 50 x 256 / 32000 = 0.4 of the row), then the thresholds: 50 buffered values sorted
    # (straight-line code, in cta_warp), 4096 read by 2 selects x 8 reads, the key range's shared: 15
    # reads, 1.92 rows' worth (the key range's 0.128, 4 B a value; top-k's 6 counting steps 0.768, 4 B;
    # top-k's final read and top-p's 7, 1.024, weighing, 8 B; one rate here for all)
    f = cm.split_row_bound(1, 32000, 4, "topk_topp_minp", 16, 2048, pi, mi, select_passes=(3, 8))
    assert f["full_row_passes"] == [pytest.approx(1.4), pytest.approx(1.8)]
    thr_hi = 0.4 * 40 + 1.92 * 218.5 + 0.4 * 98.25
    thr_lo = 0.4 * 40
    t_m_hi = (32000 * thr_hi / 32 + 3720) / RATE
    t_m_lo = (32000 * thr_lo / 32 + 3720) / RATE
    assert f["high"]["t_bound_s"] == pytest.approx(t_partial + t_m_hi, rel=1e-3)
    assert f["low"]["t_bound_s"] == pytest.approx(t_partial + t_m_lo, rel=1e-3)
    assert f["high"]["merge_thread_instr_per_token"] == pytest.approx(thr_hi, rel=1e-3)
    assert f["high"]["l2_to_sm_bytes"] == pytest.approx(1.8 * 32000 * 4 + (0.128 * 4 + 0.768 * 4 + 1.024 * 8) * 32000)


def test_split_row_bound_group_slices():
    # B=1, V=32000 on an H100: 125 slices of one group (256 tokens), each one masked tile of 2048 tokens:
    # the partial tile's straight-line code alone (no loop tokens), and its MUFU work is the whole tile's.
    # Figures of the fp32 partial kernel (sm_90): 16.5 per token in the loop, 1888 warp-instructions outside
    # it, 1175 of them the masked tile's, which costs more than a loop iteration's 1056
    pi = {"pass1": 16.5, "cta_warp": 1888, "tail_warp": 1175, "pass1_block": 2048, "pass1_mufu": 2.0}
    mi = {"compact": 40.0, "select": 218.5, "draw": 98.25, "cta_warp": 3720}
    r = cm.split_row_bound(1, 32000, 4, "temp", 125, 256, pi, mi)
    assert r["active_sms"] == 125 and r["slices_on_busiest_sm"] == 1 and r["ctas_launched"] == 126
    t_partial = max(1888 / RATE, 2048 * 2.0 / (16 * cm.H100["clock_hz"]))
    assert r["low"]["kernels"]["_partial_kernel"]["t_issue_s"] == pytest.approx(t_partial, rel=1e-3)
    # whole tiles skip the masked tile's code: 16 slices of one 2048-token tile, slightly cheaper per slice
    w = cm.split_row_bound(1, 32000, 4, "temp", 16, 2048, pi, mi)
    t_whole = max((2048 * 16.5 / 32 + 1888 - 1175) / RATE, 2048 * 2.0 / (16 * cm.H100["clock_hz"]))
    assert w["low"]["kernels"]["_partial_kernel"]["t_issue_s"] == pytest.approx(t_whole, rel=1e-3)
    assert t_whole < t_partial


def test_split_row_bound_b32_waves():
    # B=32, V=32000: 8 slices of 4096 (the wrapper's S after rounding CHUNK to the tile): 256 CTAs on 132 SMs
    r = cm.split_row_bound(32, 32000, 2, "temp", 8, 4096, {"pass1": 100.0}, {"select": 0, "draw": 0})
    assert r["active_sms"] == 132 and r["slices_on_busiest_sm"] == 2 and r["rows_on_busiest_sm"] == 1
    assert r["low"]["t_issue_s"] == pytest.approx(2 * 4096 * 100 / 32 / RATE, rel=1e-3)
    # the slice count the model is fed is the wrapper's rule on an H100
    from tts_kernels.sampling.triton_kernel import slices_for
    assert slices_for(1, 32000, 132) == 125 and slices_for(32, 32000, 132) == 8 and slices_for(256, 32000, 132) == 1
    assert slices_for(1, 128256, 132) == 72            # 63 tiles of 2048 would leave 69 of the 132 SMs idle
    # the fewest tiles on the busiest SM, at most 2 programs per SM: B=32, V=151936 (75 tiles of 2048): 4 slices
    # of 19 tiles (19 on the busiest SM; 9 slices of 9 tiles put 3 programs on some SMs: 27); B=1: 75 of 1
    assert slices_for(32, 151936, 132) == 4 and slices_for(1, 151936, 132) == 75
    assert slices_for(100, 151936, 132) == 1            # one program per row: 75 tiles' worth (2 slices: 76)


def test_work_items_launched_equals_live():
    # pairs [0, 3) for chunk 0 (one tile), [3, 8) for chunk 1 (BLOCK_R 4): its rest [7, 8) lies in window 1
    assert cm.work_items([3, 5], [16, 16], 4) == [1, 2]
    r = cm.attention_bound([16, 16], [3, 5], [2] * 3 + [1] * 2, Hq=2, Hkv=1, D=8, itemsize=2, block_r=4,
                           block_n=16, grid1=(2 + 7 // 4,), warps1=4, tile_instr=10, grid2=(5, 1), warps2=4,
                           pair_instr=5, block_m=16)  # one program per slot
    assert r["ctas_launched"] == r["ctas_live"] == 3 and r["ctas_dead"] == 0 and r["targets"]["dead_ctas"]["met"]
    assert cm.work_items([0, 2], [0, 16], 1) == [0, 2]            # an empty (padding) chunk has no live item


def test_attention_bound_hand_case():
    # chunks: a 32-token prefix shared by 2 rows, then each row's own 16 tokens; BLOCK_R 1
    # work list: C + (P - 1) // BLOCK_R = 3 + 3 = 6 items per KV head, 12 slots; a grid of 12 programs
    r = cm.attention_bound(chunk_len=[32, 16, 16], rows_per_chunk=[2, 1, 1], pairs_per_row=[2, 2],
                           Hq=4, Hkv=2, D=8, itemsize=2, block_r=1, block_n=16, grid1=(6, 2), warps1=4,
                           tile_instr=10, grid2=(2, 1), warps2=4, pair_instr=5, block_m=16)
    kv_tok = 8 * 2 * 2                                   # K and V of one token of one head, bf16
    assert r["ctas_launched"] == 12
    # chunk 0: its first tile (pair 0) + window 1 (pair 1); chunks 1, 2: a first tile each; windows 2, 3 hold
    # only first tiles: 8 live slots for 12 programs, 4 of which find none
    assert r["ctas_live"] == (2 + 1 + 1) * 2 and r["ctas_dead"] == 4
    assert r["ctas_exit_at_once_frac"] == pytest.approx(1 - 8 / 12, rel=1e-3)
    assert r["targets"]["dead_ctas"] == {"value": 4, "target_max": 0, "met": False}
    assert r["unique_kv_bytes"] == (32 + 16 + 16) * 2 * kv_tok == 4096
    assert r["l2_to_sm_kv_bytes"] == 4 * 32 * kv_tok + 2 * 16 * kv_tok + 2 * 16 * kv_tok == 6144
    assert r["kv_reads_per_unique_byte"] == 1.5
    assert r["shared_kv_read_factor"] == 2.0             # the shared chunk is read by its 2 row tiles
    assert r["stage1_kv_tiles"] == 4 * 2 + 2 + 2
    assert r["stage1_warp_instr"] == 12 * 10 * 4 and r["stage2_warp_instr"] == 4 * 1 * 5 * 4
    # 16-bit partials: 4 pairs x 4 heads x (8 bf16 + a float32 LSE), written and read back
    assert r["partial_itemsize"] == 2
    assert r["partial_bytes_written_and_read"] == 2 * 4 * 4 * (8 * 2 + 4) == 640
    assert r["partial_over_kv"] == pytest.approx(640 / 4096, rel=1e-3)
    assert r["bytes_floor"] == 4096 + 2 * 4 * 8 * 2 + (2 * 4 * 8 * 2 + 2 * 4 * 4)
    assert r["hbm_bytes_this_design"] == 4096 + 4 * 4 * 8 * 2 + 640 + (2 * 4 * 8 * 2 + 2 * 4 * 4)
    # tiny: the largest CTAs bound issue time; stage 1 (2 tiles x 10 x 4 warps), then stage 2 (2 steps x 5 x 4)
    assert r["t_issue_s"] == pytest.approx(80 / RATE + 40 / RATE, rel=1e-3)
    # float32 inputs keep float32 partials
    r32 = cm.attention_bound([32, 16, 16], [2, 1, 1], [2, 2], Hq=4, Hkv=2, D=8, itemsize=4, block_r=1,
                             block_n=16, grid1=(6, 2), warps1=4, tile_instr=10, grid2=(2, 1), warps2=4, pair_instr=5,
                             block_m=16)
    assert r32["partial_bytes_written_and_read"] == 2 * 4 * 4 * (8 * 4 + 4)
    # persistent programs: 4 CTAs work through the 8 live (item, head) slots, none idle; every live item
    # also costs its instructions outside the KV-tile loop
    rp = cm.attention_bound([32, 16, 16], [2, 1, 1], [2, 2], Hq=4, Hkv=2, D=8, itemsize=2, block_r=1,
                            block_n=16, grid1=(4,), warps1=4, tile_instr=10, grid2=(2, 1), warps2=4, pair_instr=5,
                            item_warp=7, block_m=16)
    assert rp["ctas_launched"] == rp["ctas_live"] == 4 and rp["ctas_dead"] == 0 and rp["work_items_live"] == 8
    assert rp["targets"]["dead_ctas"]["met"]
    assert rp["stage1_warp_instr"] == 12 * 10 * 4 + 8 * 7


def test_attention_bound_narrow_launch():
    # the hand case above with the own chunks (1 row) in a second, narrow launch (max_rows 1): the first
    # launch takes the shared chunk's 2 items x 2 heads on 4 programs, the narrow one 2 chunks x 2 heads
    # on 6 programs (2 find nothing); their issue times add
    r = cm.attention_bound(chunk_len=[32, 16, 16], rows_per_chunk=[2, 1, 1], pairs_per_row=[2, 2],
                           Hq=4, Hkv=2, D=8, itemsize=2, block_r=1, block_n=16, grid1=(4,), warps1=4,
                           tile_instr=10, grid2=(2, 1), warps2=4, pair_instr=5, block_m=16,
                           narrow=dict(max_rows=1, block_m=16, block_n=16, grid=(6,), warps=2, tile_instr=3),
                           min_rows=2)
    wide, narrow = r["stage1_launches"]
    assert (wide["work_items_live"], wide["ctas_launched"], wide["ctas_live"], wide["kv_tiles"]) == (4, 4, 4, 8)
    assert (narrow["work_items_live"], narrow["ctas_launched"], narrow["ctas_live"], narrow["kv_tiles"]) == (4, 6, 4, 4)
    assert r["ctas_launched"] == 10 and r["ctas_dead"] == 2 and r["narrow_rows"] == 1
    assert r["stage1_warp_instr"] == 8 * 10 * 4 + 4 * 3 * 2
    # the KV each item reads is as in one launch
    assert r["l2_to_sm_kv_bytes"] == 6144 and r["stage1_kv_tiles"] == 12 and r["shared_kv_read_factor"] == 2.0
    # tiny: each launch's largest CTA (2 tiles x 10 x 4 warps; 1 tile x 3 x 2), then stage 2
    assert r["t_stage1_issue_s"] == pytest.approx(80 / RATE + 6 / RATE, rel=1e-3)
    assert r["t_issue_s"] == pytest.approx(126 / RATE, rel=1e-3)
    # each launch's own bytes: its chunks' K and V (32 B per token and KV head) and, per pair, q (4 heads x
    # 8 x 2 B) and the partial (4 x (8 x 2 + 4) B) = 144 B; stage 2 reads the partials (4 pairs x 80 B) and
    # writes the output (2 rows x 80 B); together this design's bytes
    assert wide["hbm_bytes"] == 32 * 2 * 32 + 2 * 144 and narrow["hbm_bytes"] == 2 * (16 * 2 * 32 + 144)
    assert wide["hbm_bytes"] + narrow["hbm_bytes"] + 4 * 80 + 2 * 80 == r["hbm_bytes_this_design"] == 5152
    # tiny: every launch issue-bound, their times add
    assert r["bound"] == "issue" and r["t_bound_s"] == pytest.approx(126 / RATE, rel=1e-3)
    # the launches' row ranges must split the chunks: the own chunks in both launches, or in neither
    kw = dict(chunk_len=[32, 16, 16], rows_per_chunk=[2, 1, 1], pairs_per_row=[2, 2], Hq=4, Hkv=2, D=8,
              itemsize=2, block_r=1, block_n=16, grid1=(4,), warps1=4, tile_instr=10, grid2=(2, 1), warps2=4,
              pair_instr=5, block_m=16, narrow=dict(max_rows=1, block_m=16, block_n=16, grid=(6,), warps=2,
                                                    tile_instr=3))
    with pytest.raises(ValueError, match="both launches"):
        cm.attention_bound(**kw)
    with pytest.raises(ValueError, match="no launch"):
        cm.attention_bound(**kw, min_rows=3)


def test_attention_bound_mma():
    # 128 rows x 32/8 heads over one 4096-token chunk, 256-row tiles (BLOCK_R 64): 2 items x 8 heads x 128
    # KV tiles of 32 tokens; every query row is live, so the MMA FLOP executed are the useful ones:
    # 4 x 128 rows x 32 heads x 4096 x 128 = 2**33. 16-bit: at 4096 FLOP / clock / SM they take longer
    # than the (tiny) issue and than this design's HBM bytes, and exceed the HBM floor
    kw = dict(chunk_len=[4096], rows_per_chunk=[128], pairs_per_row=[1] * 128, Hq=32, Hkv=8, D=128,
              block_r=64, block_n=32, grid1=(132,), warps1=8, tile_instr=1, grid2=(128, 1), warps2=4,
              pair_instr=1, block_m=256)
    r = cm.attention_bound(itemsize=2, **kw)
    assert r["stage1_mma_flop"] == r["useful_flop"] == 2 ** 33
    t_mma = 2 ** 33 / (132 * 1.755e9 * 4096)
    assert r["t_stage1_mma_s"] == pytest.approx(t_mma, rel=1e-3) and r["t_stage1_s"] == pytest.approx(t_mma, rel=1e-3)
    assert r["t_stage1_issue_s"] < t_mma / 10
    assert r["t_compute_floor_s"] == pytest.approx(t_mma, rel=1e-3)
    assert r["t_hbm_floor_s"] < r["t_compute_floor_s"] == r["t_floor_s"] and r["floor_bound"] == "mma"
    # each launch takes its slowest resource: stage 1 its MMAs (its 16.8 MB of KV + 2.1 MB of q and partials
    # take 5.6 us of HBM), stage 2 its bytes (the partials read, the output written: 128 x 32 x 260 B each)
    s1_bytes = 4096 * 8 * 128 * 2 * 2 + 128 * 32 * (128 * 2 * 2 + 4)
    assert r["stage1_launches"][0]["hbm_bytes"] == s1_bytes and r["stage1_launches"][0]["bound"] == "mma"
    t_s2 = 2 * 128 * 32 * (128 * 2 + 4) / 3.35e12
    assert r["t_stage2_s"] == pytest.approx(t_s2, rel=1e-3) and r["t_stage2_issue_s"] < t_s2
    assert r["bound"] == "mma + hbm" and r["t_bound_s"] == pytest.approx(t_mma + t_s2, rel=1e-3)
    assert r["hbm_bytes_this_design"] == s1_bytes + 2 * 128 * 32 * (128 * 2 + 4)
    # padded query rows count as executed: a 512-row tile would do twice the MMA work
    assert cm.attention_bound(itemsize=2, **dict(kw, block_m=512, block_r=128))["stage1_mma_flop"] == 2 ** 33
    assert cm.attention_bound(itemsize=2, **dict(kw, block_m=512))["stage1_mma_flop"] == 2 ** 34
    # float32: no MMA (the FMA dot is in the issue counts); the floor at 256 FP32 FLOP / clock / SM
    r32 = cm.attention_bound(itemsize=4, **kw)
    assert r32["stage1_mma_flop"] == 0 and r32["t_stage1_mma_s"] == 0
    assert r32["t_compute_floor_s"] == pytest.approx(2 ** 33 / (132 * 1.755e9 * 256), rel=1e-3)
    assert r32["floor_bound"] == "fp32 fma" and r32["bound"] == "hbm"
    assert r32["t_bound_s"] == pytest.approx(r32["hbm_bytes_this_design"] / 3.35e12, rel=1e-3)


def test_attention_bound_wide_plan():
    # N=256 rows sharing 8192 tokens in 16 chunks of 512, then 256 own chunks of 64; BLOCK_R 16, Hkv 8;
    # (272 + 271) x 8 slots of which (16 x 16 + 256) x 8 live, worked through by 132 persistent programs
    chunks = [512] * 16 + [64] * 256
    rows = [256] * 16 + [1] * 256
    P = 16 * 256 + 256
    r = cm.attention_bound(chunks, rows, [17] * 256, Hq=32, Hkv=8, D=128, itemsize=2, block_r=16, block_n=64,
                           grid1=(132,), warps1=4, tile_instr=300, grid2=(256, 1), warps2=4,
                           pair_instr=50, block_p=4, block_m=64)
    assert r["ctas_launched"] == r["ctas_live"] == 132 and r["ctas_dead"] == 0
    assert r["work_items_live"] == (16 * 16 + 256) * 8
    # issue time: every tile of every live item spread over the 132 SMs (no item dominates)
    tiles = 16 * 16 * 8 * (512 // 64) + 256 * 8 * 1
    assert r["t_stage1_issue_s"] == pytest.approx(tiles * 300 * 4 / (132 * RATE), rel=1e-3)
    assert r["shared_kv_read_factor"] == 16.0 and not r["targets"]["shared_kv_read_factor"]["met"]
    assert r["kv_reads_per_unique_byte"] == pytest.approx((16 * 16 * 512 + 256 * 64) / (8192 + 256 * 64), rel=1e-3)
    assert r["partial_bytes_written_and_read"] == 2 * P * 32 * (128 * 2 + 4)
    assert r["stage2_warp_instr"] == 256 * math.ceil(17 / 4) * 50 * 4


@pytest.mark.parametrize("dtype_name", ["bf16", "fp32"])
@pytest.mark.parametrize("wide", [None, 2])
def test_attention_bound_matches_the_kernels_accounting(dtype_name, wide):
    # a real plan (16 rows share 64 tokens, 16 own each; chunks of 16 tokens, or longer shared ones with
    # wide_chunk_rows): the model agrees with the kernel module's own stage1_cost, launch by launch
    from benchmarks.gpu_static import spaces
    from tts_kernels.attention.planner import plan_tree_attention
    from tts_kernels.attention import triton_kernel as tak

    dt = spaces.DTYPES[dtype_name]
    Hq, Hkv, D = 4, 2, 32
    q, k, v, bt, sl, _ = spaces.attention_inputs(16, 64, 16, Hq, Hkv, D, dt)
    plan = plan_tree_attention(bt, sl, 16, chunk_size=16, wide_chunk_rows=wide)
    launches = tak.plan_launches(plan, Hq, Hkv, D, dt, 90)
    assert [ln.max_rows for ln in launches] == [0, 8]  # 16 rows share the prefix: wide; own chunks: narrow
    rows = (plan.chunk_q_ptr[1:] - plan.chunk_q_ptr[:-1]).tolist()
    pairs = (plan.row_pair_ptr[1:] - plan.row_pair_ptr[:-1]).tolist()
    C, P = plan.num_chunks, plan.num_pairs
    for sms in (2, 132):
        grid, grid_n = (tak.stage1_grid(ln.items(C, P), Hkv, ln.cfg, sms) for ln in launches)
        cfg, ncfg = launches[0].cfg, launches[1].cfg
        r = cm.attention_bound(plan.chunk_len.tolist(), rows, pairs, Hq, Hkv, D, dt.itemsize, cfg["BLOCK_R"],
                               cfg["BLOCK_N"], (grid,), 4, 10, (8, 1), 4, 5,
                               partial_itemsize=tak.partial_dtype(dt).itemsize, block_m=cfg["BLOCK_M"],
                               narrow=dict(min_rows=launches[1].min_rows, max_rows=launches[1].max_rows,
                                           block_m=ncfg["BLOCK_M"], block_n=ncfg["BLOCK_N"], grid=(grid_n,), warps=4, tile_instr=3),
                               min_rows=launches[0].min_rows)
        c = tak.stage1_cost(plan, Hq, Hkv, D, dt, num_sms=sms)
        assert (r["ctas_launched"], r["ctas_live"]) == (c["ctas_launched"], c["ctas_live"])
        assert r["work_items_live"] == c["items_live"]
        for got, want in zip(r["stage1_launches"], c["launches"]):
            assert (got["ctas_launched"], got["ctas_live"], got["work_items_live"]) == \
                (want["ctas_launched"], want["ctas_live"], want["items_live"])
    assert r["l2_to_sm_kv_bytes"] == c["kv_sm_bytes"] and r["unique_kv_bytes"] == c["kv_unique_bytes"]
    assert r["partial_bytes_written_and_read"] == c["partial_bytes"]
    assert r["max_items_per_chunk"] == c["max_passes"]
    if wide:  # longer shared chunks: fewer pairs, less partial traffic per KV byte
        base = plan_tree_attention(bt, sl, 16, chunk_size=16)
        assert plan.num_pairs < base.num_pairs


# ------------------------------------------------------------------------------------------------
# --from: the cost model recomputed from a results JSON (no compiling), on a synthetic one
# ------------------------------------------------------------------------------------------------
def _loop(fn, line, tokens, instr, innermost=True, depth=0, warps=8, mufu=0, min_path=None, mufu_min_path=None):
    lp = {"source": {"function": fn, "line": line, "file": "x.py", "header": "", "step": ""}, "innermost": innermost,
          "depth": depth, "tokens_per_iter": tokens, "instructions": instr, "instructions_excl": instr,
          "thread_instr_per_token": instr * 32 * warps / tokens, "ldg_ops": ["LDG.E.128"], "mufu": mufu}
    if min_path is not None:   # a loop with a branch: its shortest iteration
        lp.update(instructions_min_path=min_path, thread_instr_per_token_min_path=min_path * 32 * warps / tokens,
                  mufu_min_path=mufu_min_path)
    return lp


def _synthetic_compiled(kernel):
    """sm_90 stats: pass 1 100, a select pass 200 (the buffer's loop; the row's, 450, is not in the bounds), the
    compaction 40, the draw 80 thread-instructions per token, the scan over the group stats 25 per group, the
    draw's scores 10 per group, the candidate lists 12 (the compaction's) and 40 (the draw's, which scores them) per
    group; 100 straight-line instructions (800 warp-instructions at 8 warps) outside the
    loops; MUFU operations per token: pass 1 2, the draw 1 (8 and 4 per thread and iteration of 1024 tokens). Pass
    1's shortest iteration (a call without logprobs): 68 per token, 1 MUFU (272 and 4 per thread and iteration)."""
    p1 = _loop("_pass1", 1, 1024, 400, mufu=8, min_path=272, mufu_min_path=4)
    draw = _loop("_filtered_groups", 4, 1024, 320, mufu=4)
    loops = {"_sample_kernel": [p1, _loop("_scan_groups", 2, 1024, 100),
                                _loop("_buffer_scan", 3, 512, 400), _loop("_row_hist", 6, 512, 900), _loop("_compact_candidates", 5, 1024, 160),
                                draw, _loop("_score_groups", 7, 1024, 40), _loop("_list_contenders", 8, 1024, 48),
                                _loop("_list_contenders", 8, 1024, 160)],
             "_partial_kernel": [p1],
             "_merge_kernel": [_loop("_scan_groups", 2, 1024, 100), _loop("_buffer_scan", 3, 512, 400), _loop("_row_hist", 6, 512, 900),
                               _loop("_compact_candidates", 5, 1024, 160), draw,
                               _loop("_score_groups", 7, 1024, 40), _loop("_list_contenders", 8, 1024, 160),
                               _loop("_list_contenders", 8, 1024, 48)]}[kernel]
    return {"ok": True, "registers": 64, "ctas_per_sm": 2, "num_warps": 8, "spill_store_bytes": 0,
            "spill_load_bytes": 0, "loops": loops, "sass_instructions": sum(lp["instructions"] for lp in loops) + 100,
            # of the 100 straight-line instructions, 30 the partial pass-1 tile's, 10 of them its raw sums
            "straight_line_by_function": {"_pass1_tile": 30, "_group_raw": 10} if kernel != "_merge_kernel" else {}}


def _run_cost_model(*args):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_static.cost_model", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return p.stdout


def test_cost_model_from_results_json(tmp_path):
    pytest.importorskip("triton")
    if not aot.triton_support()[0]:
        pytest.skip(aot.triton_support()[1])
    specs = json.loads(_run_cost_model("--list-specs", "--set", "quick"))
    # quick shapes: fp32 V=32000 at B=1 (split rows on an H100: partial + merge) and B=256 (one program per row,
    # with pass 1 plain and pipelined)
    assert sorted(s["kernel"] for s in specs) == ["_merge_kernel", "_partial_kernel", "_sample_kernel",
                                                  "_sample_kernel"]
    assert sorted(s["params"]["STAGES"] for s in specs if s["kernel"] != "_merge_kernel") == ["0", "0", "3"]
    src = tmp_path / "results.json"
    src.write_text(json.dumps({"set": "quick", "specs": [
        {"kernel": s["kernel"], "spec": s["spec"], "params": s["params"],
         "compiled": {"sm_90": _synthetic_compiled(s["kernel"])}} for s in specs]}))
    out = tmp_path / "cm.json"
    _run_cost_model("--from", str(src), "--out", str(out))
    d = json.loads(out.read_text())
    assert d["cost_model_recomputed"]["set"] == "quick" and d["specs"]      # the input, cost model replaced
    c = d["cost_model"]
    assert c["not_compiled"] == [] and c["stats_from_sibling"] == []
    b1 = next(r for r in c["sampler"] if r["B"] == 1)
    b256 = next(r for r in c["sampler"] if r["B"] == 256)
    # B=1: 125 slices of one group (256 tokens), one per SM, each one masked tile (the partial's straight-line
    # code, no loop tokens); then the merge (temperature: its straight-line code)
    assert (b1["path"], b1["slices"], b1["chunk"], b1["active_sms"]) == ("split", 125, 256, 125)
    assert b1["instr_per_token"] == {"pass1": 100.0, "compact": 40.0, "select": 200.0, "count": 200.0, "keys": 200.0,
                                     "draw": 80.0}
    assert b1["instr_per_group"] == 25.0 and b1["draw_instr_per_group"] == 10.0
    assert b1["list_instr_per_group"] == [12.0, 40.0] and b256["list_instr_per_group"] == [12.0, 40.0]
    # MUFU per token from the loops' counts: pass 1's (the partial kernel's) and the filtered draw's (the merge's)
    for r in (b1, b256):
        assert (r["pass1_mufu_per_token"], r["draw_mufu_per_token"]) == (2.0, 1.0), r["B"]
    # the quick set's rows are temperature rows: no filtered draw pass, pass 1's MUFU alone (2 rows on an SM at
    # B=256; the split row's merge none) on both sides (test_sampler_bound_groups_and_mufu: where the draw runs)
    for side in ("low", "high"):
        assert b256[side]["t_mufu_s"] == pytest.approx(2 * 32000 * 2 / (16 * 1.755e9), rel=1e-3)
        assert b1[side]["t_mufu_s"] == 0
    scan = 125 * 25 / 32                      # the merge's scan over 125 groups of 256
    assert b1["low"]["t_issue_s"] == pytest.approx((800 + scan + 800) / RATE, rel=1e-3)
    # B=256: one program per row, 2 rows on the busiest SM
    assert (b256["path"], b256["rows_on_busiest_sm"]) == ("row", 2)
    # pass 1's loop: the 31 whole tiles of 1024 (the partial one is straight-line code, none in this SASS)
    assert b256["low"]["t_issue_s"] == pytest.approx(2 * (31744 * 100 / 32 + scan + 800) / RATE, rel=1e-3)
    # without logprobs: pass 1's shortest iteration, its instructions and its MUFU operations
    for r in (b1, b256):
        assert (r["pass1_no_logprobs"], r["pass1_mufu_per_token_no_logprobs"]) == (68.0, 1.0), r["B"]
    lean = b256["no_logprobs"]
    for side in ("low", "high"):
        assert lean[side]["t_mufu_s"] == pytest.approx(b256[side]["t_mufu_s"] / 2, rel=1e-3)
    # ... and the partial tile's raw sums (10 instructions x 8 warps) left out: B=256's last tile of 256 tokens,
    # B=1's slices (each one masked tile, no loop)
    assert lean["low"]["t_issue_s"] == pytest.approx(2 * (31744 * 68 / 32 + scan + 800 - 80) / RATE, rel=1e-3)
    assert b1["no_logprobs"]["low"]["t_issue_s"] == pytest.approx((800 - 80 + scan + 800) / RATE, rel=1e-3)
    # pass 1's loads in flight on the busiest SM, at most (not a bound): B=256's two resident rows with a tile of
    # 8192 fp32 tokens each; B=1's one slice of a group; against Little's law at 400-800 ns
    assert b256["pass1_loads_in_flight"] == {"bytes_per_sm": 2 * 8192 * 4, "programs_per_sm": 2,
                                             "while_computing": False, "little_law_bytes_per_sm": [10152, 20303]}
    assert b1["pass1_loads_in_flight"]["bytes_per_sm"] == 256 * 4
    # greedy rows (T = 0) take their logprobs from the draw sums (the kernels' _own_raw_sums): with logprobs they
    # get the counts without, where a temperature row (T = 0.8) keeps both sums
    for B, r in ((1, b1), (256, b256)):
        g = next(x for x in c["sampler"] if x["B"] == B and x["config"] == "greedy")
        assert g["logprobs_from_draw_sums"] and not r["logprobs_from_draw_sums"]
        for side in ("low", "high"):
            assert g[side] == g["no_logprobs"][side], (B, side)
            assert g[side]["t_issue_s"] < r[side]["t_issue_s"], (B, side)


def test_sibling_stats_only_for_loop_neutral_differences():
    ok = {"sm_90": {"ok": True}}
    results = [{"kernel": "_merge_kernel", "spec": "m8", "compiled": ok,
                "params": {"V": "i32/16", "S": "i32", "BLOCK": "1024", "SP": "8"}},
               {"kernel": "_merge_kernel", "spec": "m16", "compiled": ok,
                "params": {"V": "i32/16", "S": "i32/16", "BLOCK": "1024", "SP": "16"}}]
    want = {"V": "i32/16", "S": "i32", "BLOCK": "1024", "SP": "64"}
    n, r, diff = cm._sibling(results, "_merge_kernel", want, "sm_90")
    assert r["spec"] == "m8" and diff == ["SP"]                   # the fewest differences
    assert cm._sibling(results, "_merge_kernel", dict(want, BLOCK="2048"), "sm_90") is None   # a tile size: no
    assert cm._sibling(results, "_merge_kernel", dict(want, V="i32"), "sm_90")[2] == ["V", "SP"]
    assert cm._sibling(results, "_partial_kernel", want, "sm_90") is None


def test_ctas_per_sm():
    assert aot.ctas_per_sm(90, 160, 8, 0)["ctas_per_sm"] == 1          # 5120 regs/warp: 3 warps per SMSP
    assert aot.ctas_per_sm(90, 160, 8, 0)["limited_by"] == "registers"
    assert aot.ctas_per_sm(90, 120, 8, 4096)["ctas_per_sm"] == 2
    assert aot.ctas_per_sm(90, 32, 4, 0) == {"ctas_per_sm": 16, "limited_by": "warps", "warps_per_sm": 64}
    assert aot.ctas_per_sm(90, 32, 4, 100 * 1024)["ctas_per_sm"] == 233472 // (101 * 1024)
    assert aot.ctas_per_sm(80, 32, 4, 100 * 1024)["ctas_per_sm"] == 1


# ------------------------------------------------------------------------------------------------
# SASS loops and the spill rule, on synthetic SASS
# ------------------------------------------------------------------------------------------------
def _sass(lines):
    """lines: (label or None, text) -> (instrs, labels) as aot.disassemble returns them."""
    instrs, labels = [], {}
    for i, (label, text) in enumerate(lines):
        addr = 16 * i
        if label:
            labels[label] = addr
        body = text[text.index(" ") + 1:] if text.startswith("@") else text
        instrs.append(aot.Instr(addr, body.split()[0], text, None, None))
    return instrs, labels


def test_sass_loops_nested_and_out_of_line():
    instrs, labels = _sass([
        (None, "MOV R0, RZ"),
        (".L_x_0", "IADD3 R0, R0, 0x1, RZ"),           # outer head
        (".L_x_1", "FADD R1, R1, R2"),                 # inner head
        (None, "STL [R1], R3"),
        (None, "@P0 BRA `(.L_x_1)"),                   # inner back edge
        (None, "ISETP.GE.AND P1, PT, R0, 0x10, PT"),
        (None, "@P2 BRA `(.L_x_3)"),                   # to the out-of-line block
        (".L_x_2", "@!P1 BRA `(.L_x_0)"),              # outer back edge
        (None, "EXIT"),
        (".L_x_3", "LDL R4, [R1]"),                    # out-of-line: jumps back, not a loop
        (None, "BRA `(.L_x_2)"),
        (".L_x_4", "BRA `(.L_x_4)"),                   # the end-of-kernel self loop
    ])
    loops = aot.sass_loops(instrs, labels)
    by_start = {lp["start"]: lp for lp in loops}
    outer, inner = by_start["0x0010"], by_start["0x0020"]
    assert inner["innermost"] and inner["depth"] == 1 and inner["instructions"] == 3 and inner["stl"] == 1
    assert not outer["innermost"] and outer["depth"] == 0
    assert (outer["head"], outer["parent"], inner["head"], inner["parent"]) == ("0x0010", None, "0x0020", "0x0010")
    assert outer["instructions"] == 7 + 2          # head..back edge plus the out-of-line block it reaches
    assert outer["instructions_excl"] == 9 - 3
    assert "0x0090" not in by_start                # the out-of-line block is not a loop head
    assert not aot.spill_in_hot_loop({"spill_store_bytes": 0, "spill_load_bytes": 0}, loops)   # no spill reported
    assert aot.spill_in_hot_loop({"spill_store_bytes": 8, "spill_load_bytes": 8}, loops)
    # a spill outside every loop passes
    assert not aot.spill_in_hot_loop({"spill_store_bytes": 8}, [dict(lp, stl=0, ldl=0) for lp in loops])


def test_unroll_factor_from_the_induction_adds():
    """A loop LLVM unrolled 4x (the candidate buffer's scans: ``start`` stepped by 4 x HBLOCK on the
    header line, the copies at start + HBLOCK, + 2 HBLOCK, + 3 HBLOCK) counts 4 x HBLOCK values per SASS
    iteration; a plain loop, a pointer stepped in bytes (no copies) and a missing copy count 1."""
    def body(lines):   # (the opcode after a predicate, as aot.parse_sass gives it)
        return [aot.Instr(16 * i, t.split()[1 if t.startswith("@") else 0], t, "k.py", ln)
                for i, (t, ln) in enumerate(lines)]

    unrolled = body([("VIADD R18, R22.reuse, 0x200", 196), ("IMAD R25, R3, 0x2, R18", 197),
                     ("IADD3 R16, R2, 0x400, R22", 201), ("@!P2 VIADD R9, R22, 0x1000", 196),
                     ("VIADD R18, R22, 0x600", 196), ("VIADD R22, R22, 0x800", 196), ("IADD3 R7, R7, 0x1, RZ", 199)])
    adds = aot.induction_adds(unrolled, 196)
    assert adds == {"self": [0x800], "offset": [0x200, 0x400, 0x600]}     # predicated adds left out
    assert aot.unroll_factor(adds, 512) == 4
    assert aot.unroll_factor(adds, 256) == 1          # 0x800 = 8 x 256, but no copies at 256 x 1, 3, 5, 7
    assert aot.unroll_factor(adds, None) == 1 and aot.unroll_factor(None, 512) == 1
    assert aot.unroll_factor(adds, 512, loads=8) == 4 and aot.unroll_factor(adds, 512, loads=6) == 1
    # a 64-bit pointer's low half (a carry out), a negated operand and a constant-bank operand are not
    # induction adds; an immediate printed unsigned reads as signed
    odd = aot.induction_adds(body([("IADD3 R4, P0, R4, 0x8000, RZ", 196), ("IADD3 R5, -R4, 0x800, R5", 196),
                                   ("IADD3 R6, R6, c[0x0][0x10], RZ", 196), ("VIADD R7, R7, 0xffffffe0", 196),
                                   ("VIADD R8, R7, 0x10", 197)]), 196)
    assert odd == {"self": [-32], "offset": [0x10]}
    plain = aot.induction_adds(body([("IADD3 R22, R22, 0x200, RZ", 196)]), 196)
    assert plain == {"self": [0x200], "offset": []} and aot.unroll_factor(plain, 512) == 1
    missing = aot.induction_adds(body([("VIADD R18, R22, 0x200", 196), ("VIADD R22, R22, 0x800", 196)]), 196)
    assert aot.unroll_factor(missing, 512) == 1       # the copies at + 2 and + 3 HBLOCK are not there
    other_line = aot.induction_adds(body([("VIADD R22, R22, 0x800", 197), ("VIADD R18, R22, 0x200", 196)]), 196)
    assert other_line == {"self": [], "offset": []}
    # the copies stepped from start + lane (aligned 8-byte loads, Triton 3.9): R23 = 2 x lane + start
    lane = aot.induction_adds(body([("IMAD R23, R3, 0x2, R24", 226), ("VIADD R33, R23.reuse, 0x200", 226),
                                    ("VIADD R37, R23, 0x400", 226), ("VIADD R25, R23, 0x600", 226),
                                    ("IMAD.WIDE R16, R23, 0x4, R20", 226), ("VIADD R24, R24, 0x800", 224)]), 224)
    assert lane == {"self": [0x800], "offset": [0x200, 0x400, 0x600]} and aot.unroll_factor(lane, 512) == 4
    # a register-only add of start is a lane base too; a product of start is not
    regs = aot.induction_adds(body([("IADD3 R15, R2, R29, RZ", 224), ("VIADD R16, R15, 0x200", 224),
                                    ("IMAD R17, R29, 0x4, R2", 224), ("VIADD R18, R17, 0x400", 224),
                                    ("VIADD R29, R29, 0x800", 224)]), 224)
    assert regs == {"self": [0x800], "offset": [0x200]}
    # the same lane bases as IMAD.IADD (SASS prints its multiplier 0x1) and LEA (a shifted lane plus start);
    # a LEA carrying into a high half is a pointer's, not a lane base
    more = aot.induction_adds(body([("IMAD.IADD R15, R2, 0x1, R29", 224), ("VIADD R16, R15, 0x200", 224),
                                    ("LEA R17, R3, R29, 0x1", 224), ("VIADD R18, R17, 0x400", 224),
                                    ("LEA R19, P0, R3, R29, 0x2", 224), ("VIADD R20, R19, 0x600", 224),
                                    ("IADD3 R21, PT, PT, R4, R29, RZ", 224), ("VIADD R22, R21, 0xa00", 224),
                                    ("VIADD R29, R29, 0x800", 224)]), 224)
    assert more == {"self": [0x800], "offset": [0x200, 0x400, 0xa00]}
    # only an innermost loop gets a factor: a loop around one holds its remainder's copies
    lp = {"innermost": True, "induction_adds": lane, "ldg": 8}
    assert aot.loop_unroll(lp, 512) == 4 and aot.loop_unroll(dict(lp, innermost=False), 512) == 1
    assert aot.loop_unroll(lp, None) == 1


def test_unroll_factor_of_a_pointer_stepped_loop():
    """A loop whose loads take loop-carried pointers (``kp += HBLOCK``, the buffer's bisection reads) and that
    LLVM unrolled 4x addresses its copies from one register, ``j x HBLOCK x 4`` bytes on (uint32 keys), while
    the index it compares against the trip count steps by 4 x HBLOCK: 4 x HBLOCK values per SASS iteration (the
    SASS of ``_buffer_count``, bf16 ``_sample_kernel``, sm_90, Triton 3.9). Accesses that move more or less than a
    thread's share of a tile per copy, a missing copy, copies under two registers and unequal copies do not count."""
    def body(lines):
        return [aot.Instr(16 * i, t.split()[1 if t.startswith("@") else 0], t, "k.py", 315)
                for i, t in enumerate(lines)]

    sass = ["IMAD.MOV.U32 R28, RZ, RZ, R46", "IADD3 R46, P2, R28, 0x1000, RZ", "LDG.E.64 R42, desc[UR14][R28.64]",
            "IMAD.X R47, RZ, RZ, R29, P2", "LDG.E.64 R44, desc[UR14][R28.64+0xc00]",
            "LDG.E.64 R38, desc[UR14][R28.64+0x400]", "LDG.E.64 R38, desc[UR14][R28.64+0x800]",
            "VIADD R41, R41, 0x400", "ISETP.GE.AND P2, PT, R41, R48, PT"]
    unrolled = body(sass)
    adds, offs = aot.induction_adds(unrolled, 315), aot.address_offsets(unrolled)
    assert adds == {"self": [0x400], "offset": []}
    assert offs == {"R28": [[0, 8], [0x400, 8], [0x800, 8], [0xc00, 8]]}
    assert aot.unroll_factor(adds, 256) == 1                        # the index adds alone: no copies
    assert aot.unroll_factor(adds, 256, loads=4, addresses=offs, threads=128) == 4   # 2 keys per thread per copy
    assert aot.unroll_factor(adds, 256, loads=4, addresses=offs) == 1   # no thread count: no share to check
    assert aot.unroll_factor(adds, 256, loads=3, addresses=offs, threads=128) == 1   # the loads do not split in 4
    # 8 bytes per thread and copy at 256 threads: two shares of a 1024-byte tile, not one
    assert aot.unroll_factor(adds, 256, loads=4, addresses=offs, threads=256) == 1
    # and at 64 threads: half a share (16 bytes per thread and copy)
    assert aot.unroll_factor(adds, 256, loads=4, addresses=offs, threads=64) == 1
    lp = {"innermost": True, "induction_adds": adds, "ldg": 4, "address_offsets": offs}
    assert aot.loop_unroll(lp, 256, 128) == 4 and aot.loop_unroll(lp, 256) == 1
    # the same offsets with 16-byte accesses: 2048 bytes per copy at 128 threads, not a tile of 256 values of 1-8 bytes
    wide = aot.address_offsets(body([t.replace("LDG.E.64", "LDG.E.128") for t in sass]))
    assert aot.unroll_factor(adds, 256, loads=4, addresses=wide, threads=128) == 1
    missing = aot.address_offsets(body([t for t in sass if "0x800]" not in t]))
    assert aot.unroll_factor(adds, 256, addresses=missing, threads=128) == 1
    split = aot.address_offsets(body(["LDG.E.64 R42, desc[UR14][R28.64]",
                                      "LDG.E.64 R44, desc[UR14][R28.64+0x400]",
                                      "LDG.E.64 R42, desc[UR14][R30.64+0x800]",
                                      "LDG.E.64 R44, desc[UR14][R30.64+0xc00]"]))
    assert sorted(split) == ["R28", "R30"] and aot.unroll_factor(adds, 256, addresses=split, threads=128) == 1
    unequal = aot.address_offsets(body(["LDG.E.64 R2, desc[UR4][R28.64]", "LDG.E.64 R4, desc[UR4][R28.64+0x400]",
                                        "LDG.E.64 R6, desc[UR4][R28.64+0x800]", "LDG.E R8, desc[UR4][R28.64+0xc00]"]))
    assert aot.unroll_factor(adds, 256, addresses=unequal, threads=128) == 1   # the last copy is 4 bytes, not 8
    # stores count too (the keys' rewrite), their widths read as loads'; other memory ops (shared, local) do not
    stores = aot.address_offsets(body(["STG.E.64 desc[UR14][R28.64], R2", "STG.E.U16 desc[UR14][R28.64+0x400], R2",
                                       "LDS.64 R2, [R28+0x800]", "STL.64 [R28+0xc00], R2",
                                       "LDG.E.128 R4, desc[UR4][R6.64]"]))
    assert stores == {"R28": [[0, 8], [0x400, 2]], "R6": [[0, 16]]}


def test_select_step_code_counts_per_step():
    """The selects' step code (the loop around the values' loop: the bisection's step) counts once per
    select step: ``selects x levels`` warp-instructions of it on the high side, none on the sort."""
    values = {"source": {"function": "_buffer_scan", "line": 3, "file": "x.py", "header": "", "step": ""},
              "innermost": True, "depth": 1, "start": "0x0100", "end": "0x0200", "head": "0x0100",
              "parent": "0x0080", "tokens_per_iter": 2048, "unroll": 4, "ldg": 8,
              "instructions": 100, "instructions_excl": 100, "thread_instr_per_token": 12.5, "ldg_ops": ["LDG.E"]}
    step = dict(values, innermost=False, depth=0, start="0x0080", end="0x0300", head="0x0080", parent=None,
                instructions=260, instructions_excl=160, thread_instr_per_token=80.0, unroll=1, ldg=6)
    # a loop whose address range spans the values' loop without holding it (blocks interleave)
    wide = dict(values, depth=0, start="0x0000", end="0x0500", head="0x0040", parent=None, instructions_excl=400,
                thread_instr_per_token=5.0, source=dict(values["source"], function="_compact_candidates"))
    other = dict(values, depth=0, start="0x0400", end="0x0480", head="0x0400", parent=None, instructions_excl=40,
                 thread_instr_per_token=20.0)
    p1 = {"source": {"function": "_pass1", "line": 1, "file": "x.py", "header": "", "step": ""}, "innermost": True,
          "depth": 0, "start": "0x0000", "end": "0x0070", "tokens_per_iter": 1024, "instructions": 50,
          "instructions_excl": 50, "thread_instr_per_token": 12.5, "ldg_ops": ["LDG.E.128"]}
    compiled = {"loops": [p1, wide, step, values, other], "num_warps": 8, "sass_instructions": 1000}
    instr = cm.sampler_instr(compiled, "_sample_kernel")
    assert instr["select"] == 20.0                    # the values' loops: the largest per value
    assert instr["count"] == 20.0                     # no counting loop: the select's rate
    # a counting read (the module's ``count`` role) has its own rate, and is not the select's
    counting = dict(values, head="0x0600", start="0x0600", end="0x0680", parent=None, thread_instr_per_token=50.0,
                    source=dict(values["source"], function="_buffer_count"))
    ci = cm.sampler_instr(dict(compiled, loops=compiled["loops"] + [counting]), "_sample_kernel")
    assert ci["count"] == 50.0 and ci["select"] == 20.0
    # so has the key range's read (the ``keys`` role), the select rate without one
    keys = dict(counting, head="0x0700", start="0x0700", end="0x0780", thread_instr_per_token=30.0,
                source=dict(values["source"], function="_buffer_keys"))
    ki = cm.sampler_instr(dict(compiled, loops=compiled["loops"] + [counting, keys]), "_sample_kernel")
    assert (ki["keys"], ki["count"], ki["select"]) == (30.0, 50.0, 20.0) and ci["keys"] == 20.0
    # the step's own code: not the values' loop in it, nor that loop's unrolled remainder (6 loads at 2 per
    # source iteration: 3 iterations of 100 / 4 instructions)
    assert instr["select_step"] == (160 - 3 * 25) * 8
    assert cm._encloses(step, values) and not cm._encloses(step, other) and not cm._encloses(values, step)
    assert not cm._encloses(wide, values)
    base = {"pass1": 10.0, "compact": 30.0, "select": 20.0, "draw": 80.0}
    a = cm.sampler_bound(132, 151936, 2, "topk_topp_minp", base, select_passes=(3, 8))
    b = cm.sampler_bound(132, 151936, 2, "topk_topp_minp", dict(base, select_step=1280), select_passes=(3, 8))
    assert cm.sampler_passes("topk_topp_minp", (3, 8), 151936)["select_steps"] == (0, 12)   # 2 x (8 - 2)
    assert b["low"]["t_issue_s"] == a["low"]["t_issue_s"]                  # 50 values: the sort
    assert b["high"]["t_issue_s"] == pytest.approx(a["high"]["t_issue_s"] + 12 * 1280 / RATE, rel=1e-3)


def test_divergence_fallbacks_left_out():
    # ptxas's BRA.DIV before a shuffle: the target redoes the shuffle for a diverged warp and jumps back; a
    # converged warp (every Triton program's) never takes it, in a loop or outside one
    instrs, labels = _sass([
        (None, "MOV R0, RZ"),
        (None, "BRA.DIV UR4, `(.L_x_8)"),              # outside the loop
        (None, "SHFL.BFLY PT, R1, R0, 0x1, 0x1f"),
        (".L_x_1", "FADD R2, R2, R1"),
        (".L_x_0", "FADD R3, R3, R4"),                 # loop head
        (None, "BRA.DIV UR4, `(.L_x_9)"),
        (None, "SHFL.BFLY PT, R5, R3, 0x1, 0x1f"),
        (".L_x_2", "FADD R3, R3, R5"),
        (None, "@P0 BRA `(.L_x_0)"),                   # back edge
        (None, "EXIT"),
        (".L_x_8", "WARPSYNC.ALL"),                    # the fallbacks: 3 + 4 instructions
        (None, "SHFL.BFLY PT, R1, R0, 0x1, 0x1f"),
        (None, "BRA `(.L_x_1)"),
        (".L_x_9", "WARPSYNC.ALL"),
        (None, "SHFL.BFLY PT, R5, R3, 0x1, 0x1f"),
        (None, "ENDCOLLECTIVE"),
        (None, "BRA `(.L_x_2)"),
    ])
    fb = aot.divergence_fallbacks(instrs, labels)
    assert fb == set(range(10, 17))
    top = set()
    (lp,) = aot.sass_loops(instrs, labels, top, fb)
    assert lp["instructions"] == 5 + 4 and lp["fallback_instructions"] == 4       # the loop's fallback is its body
    assert lp["instructions_excl"] == 5 and lp["instructions_min_path"] == 5
    assert lp["off_min_path"]["instructions"] == 0 and lp["shfl"] == 1
    assert aot.sass_loops(instrs, labels)[0]["instructions_excl"] == 9         # without the set: every path
    # straight-line code: 17 instructions less the loop's 9 and the outside fallback's 3
    c = {"loops": [lp], "sass_instructions": 17, "num_warps": 2, "fallback_instructions_outside_loops": len(fb - top)}
    assert c["fallback_instructions_outside_loops"] == 3
    assert cm.straight_line_warp_instr(c) == (17 - 9 - 3) * 2
    # a block that normal flow also reaches is not a fallback
    instrs, labels = _sass([
        (None, "@P0 BRA `(.L_x_1)"),
        (None, "BRA.DIV UR4, `(.L_x_1)"),
        (None, "SHFL.BFLY PT, R1, R0, 0x1, 0x1f"),
        (".L_x_1", "FADD R2, R2, R1"),
        (None, "EXIT"),
    ])
    assert aot.divergence_fallbacks(instrs, labels) == set()


def test_sass_loop_shortest_iteration():
    # a loop whose iteration can branch around a block (a partial tile's mask, a lazy rescale)
    instrs, labels = _sass([
        (".L_x_0", "FADD R1, R1, R2"),                 # head
        (None, "@P0 BRA `(.L_x_1)"),                   # skips the next 3
        (None, "FMUL R3, R3, R4"),
        (None, "FMUL R5, R5, R4"),
        (None, "FMUL R6, R6, R4"),
        (".L_x_1", "FADD R7, R7, R1"),
        (None, "@P1 BRA `(.L_x_0)"),                   # back edge
        (None, "EXIT"),
    ])
    (lp,) = aot.sass_loops(instrs, labels)
    assert lp["instructions_excl"] == 7 and lp["instructions_min_path"] == 4
    assert lp["off_min_path"] == {"instructions": 3, "ops": {"FMUL": 3}, "lines": []}
    # the model: a tile is the shortest iteration, the skippable block counts once per work item
    c = {"loops": [lp], "sass_instructions": 8, "num_warps": 1}
    ai = cm.attention_instr(c, c)
    assert ai["tile_instr"] == 4 and ai["item_instr"] == 3
    # an if/else whose shorter arm is the later block: the iteration takes it, skips the longer one
    instrs, labels = _sass([
        (".L_x_0", "FADD R1, R1, R2"),                 # head
        (None, "@P0 BRA `(.L_x_1)"),
        (None, "FMUL R3, R3, R4"),                     # the longer arm: 3 instructions and a jump
        (None, "FMUL R5, R5, R4"),
        (None, "MUFU.EX2 R6, R6"),
        (None, "BRA `(.L_x_2)"),
        (".L_x_1", "FSEL R7, R7, RZ, P1"),             # the shorter arm
        (".L_x_2", "FADD R8, R8, R1"),
        (None, "@P1 BRA `(.L_x_0)"),                   # back edge
        (None, "EXIT"),
    ])
    (dia,) = aot.sass_loops(instrs, labels)
    assert dia["instructions_excl"] == 9 and dia["instructions_min_path"] == 5
    assert dia["off_min_path"] == {"instructions": 4, "ops": {"BRA": 1, "FMUL": 2, "MUFU": 1}, "lines": []}
    assert dia["off_min_path"]["instructions"] == dia["instructions_excl"] - dia["instructions_min_path"]
    assert dia["mufu"] == 1 and dia["mufu_min_path"] == 0   # the MUFU of the longer arm: not on the shortest path
    # an outer loop has no shortest iteration (its nested loop runs a data-dependent number of times)
    instrs, labels = _sass([
        (".L_x_0", "IADD3 R0, R0, 0x1, RZ"),
        (".L_x_1", "FADD R1, R1, R2"),
        (None, "@P0 BRA `(.L_x_1)"),
        (None, "@P1 BRA `(.L_x_0)"),
        (None, "EXIT"),
    ])
    outer, inner = aot.sass_loops(instrs, labels)
    assert outer["instructions_min_path"] is None and inner["instructions_min_path"] == 2
    assert outer["off_min_path"] is None and inner["off_min_path"]["instructions"] == 0


def test_min_path_rule_allows_only_a_mask_and_a_rescale():
    # stage 1's KV loop is modelled at its shortest iteration: what it skips may be arithmetic only
    # (the mask's selects, the rescale's FMULs), at most one per accumulator element and per score of a
    # thread plus a slack; the KV loop is the innermost loop of most instructions; the sampler's loops
    # and specs that failed to compile are not judged
    from benchmarks.gpu_static.check import SKIPPABLE_SLACK, min_path_failures

    def spec(kernel, ops, n, ok=True, other=None):
        loop = {"innermost": True, "instructions_excl": 500, "off_min_path": {"instructions": n, "ops": ops,
                                                                             "lines": [245]}}
        loops = [loop] + ([{"innermost": True, "instructions_excl": 20, "off_min_path": other}] if other else [])
        return {"kernel": kernel, "spec": f"{kernel}[{n}]",
                "params": {"BLOCK_M": "256", "BLOCK_N": "32", "BLOCK_D": "128"},
                "compiled": {"sm_90": {"ok": ok, "num_warps": 8, "loops": loops}}}
    budget = 256 * (128 + 32) // 256 + SKIPPABLE_SLACK
    assert min_path_failures([spec("_tree_attn_stage1", {"FMUL": 132, "FSEL": 32, "MUFU": 4}, budget)]) == []
    over = min_path_failures([spec("_tree_attn_stage1", {"FMUL": 200}, budget + 1)])
    assert len(over) == 1 and f"at most {budget}" in over[0]
    skips_loads = min_path_failures([spec("_tree_attn_stage1", {"LDG": 2, "HGMMA": 1, "FMUL": 1}, 4)])
    assert len(skips_loads) == 1 and "['HGMMA', 'LDG']" in skips_loads[0]
    # an opcode the rule does not know fails too (a decision, not a silent pass); shared-memory stores
    # (a duplicated tail's, Triton 3.5) count in the budget only
    assert len(min_path_failures([spec("_tree_attn_stage1", {"REDUX": 1}, 1)])) == 1
    assert min_path_failures([spec("_tree_attn_stage1", {"STS": 4, "FSEL": 8}, 12)]) == []
    # skipped loads, MMAs and barriers fail (a conditional extra tile), however many of them the shortest
    # iteration itself holds
    extra = spec("_tree_attn_stage1", {"LDGSTS": 4, "HMMA": 8, "LDSM": 8, "BAR": 1}, 21)
    (f,) = min_path_failures([extra])
    assert "['BAR', 'HMMA', 'LDGSTS', 'LDSM']" in f
    # only the KV loop is judged: a smaller innermost loop (the window search) may skip a load
    small = {"instructions": 3, "ops": {"LDG": 1, "ISETP": 2}, "lines": [180]}
    assert min_path_failures([spec("_tree_attn_stage1", {"FSEL": 8}, 8, other=small)]) == []
    assert min_path_failures([spec("_tree_attn_stage1", {"LDG": 2}, 2, ok=False)]) == []
    assert min_path_failures([spec("_sample_kernel", {"LDG": 2}, budget + 1)]) == []
    old = spec("_tree_attn_stage1", {}, 0)
    del old["compiled"]["sm_90"]["loops"][0]["off_min_path"]
    assert min_path_failures([old]) == []                          # an older run's results: not judged
    no_loop = spec("_tree_attn_stage1", {}, 0)
    no_loop["compiled"]["sm_90"]["loops"] = []
    (f,) = min_path_failures([no_loop])
    assert f.startswith("no KV loop in the SASS")


def test_call_noinc_is_a_loop_exit():
    instrs, labels = _sass([
        (".L_x_0", "FADD R1, R1, R2"),
        (None, "@P1 CALL.REL.NOINC `(.L_x_1)"),        # sm_80 loop exit
        (None, "BRA `(.L_x_0)"),
        (".L_x_1", "EXIT"),
    ])
    (lp,) = [lp for lp in aot.sass_loops(instrs, labels) if lp["instructions"] > 1]
    assert lp["instructions"] == 3 and lp["innermost"]


def test_ptxas_log_parse():
    log = ("ptxas info    : Function properties for _k\n    16 bytes stack frame, 12 bytes spill stores, "
           "8 bytes spill loads\nptxas info    : Used 255 registers, used 1 barriers, 472 bytes cmem[0]\n")
    assert aot.parse_ptxas_log(log) == {"stack_bytes": 16, "spill_store_bytes": 12, "spill_load_bytes": 8,
                                        "registers": 255, "barriers": 1}


def test_allowlist_file():
    entries = load_allowlist()
    for e in entries:
        assert set(e) >= {"spec", "archs", "issue"} and e["issue"]
        assert all(a in ("sm_90", "sm_80") for a in e["archs"])
    # at most one entry per (spec, arch, Triton release); releases the static check supports
    assert all(e["triton"] and set(e["triton"]) <= set(aot.SUPPORTED_TRITON) for e in entries if "triton" in e)
    releases = [list(aot.SUPPORTED_TRITON) if "triton" not in e else e["triton"] for e in entries]
    covered = [(e["spec"], a, t) for e, rs in zip(entries, releases) for a in e["archs"] for t in rs]
    assert len(set(covered)) == len(covered)
    fake = [{"spec": "k[x=1]", "archs": ["sm_90"], "issue": "#14"}]
    assert allowed(fake, "k[x=1]", "sm_90") and not allowed(fake, "k[x=1]", "sm_80")
    assert not allowed(fake, "k[x=2]", "sm_90")
    assert ALLOWLIST.exists()


# ------------------------------------------------------------------------------------------------
# end to end: the quick set, compiled (a subprocess: the tool needs real JITFunctions, not the
# interpreter the test suite runs under)
# ------------------------------------------------------------------------------------------------
def test_ptxas_stats_checks_the_cubin(tmp_path):
    """A cache hit's ``ptxas -v`` (:func:`aot.ptxas_stats`, Triton 3.9's flags) must rebuild Triton's own cubin:
    the same bytes pass, others raise (the registers and spills read would not be those of Triton's binary)."""
    ok, why = aot.triton_support()
    if not ok:
        pytest.skip(why)
    ptx = "\n".join([".version 8.0", ".target sm_90a", ".address_size 64",
                     ".visible .entry k(.param .u64 p)", "{", ".reg .b64 %rd<2>;", ".reg .b32 %r<2>;",
                     "ld.param.u64 %rd1, [p];", "mov.u32 %r1, 7;", "st.global.u32 [%rd1], %r1;", "ret;", "}", ""])
    st = aot.ptxas_stats(ptx, 90, "sm_90a", True, str(tmp_path))
    assert st["registers"] > 0 and st["spill_store_bytes"] == 0
    cubin = (tmp_path / "v.cubin").read_bytes()
    assert aot.ptxas_stats(ptx, 90, "sm_90a", True, str(tmp_path), expect_cubin=cubin)["registers"] == st["registers"]
    with pytest.raises(RuntimeError, match="another cubin"):
        aot.ptxas_stats(ptx, 90, "sm_90a", True, str(tmp_path), expect_cubin=cubin + b"\0")


def test_quick_set_compiles(tmp_path):
    """The quick set, compiled by ``check.py --set quick`` with this venv's Triton: here, or, in CI, by
    the static stage just before (``TTS_GPU_STATIC_QUICK_JSON``: the same command and Triton release, from the
    venv or a ``pip --target`` copy of it, its compiles cache hits where the full set's release is the same; this
    test checks its JSON instead of compiling the same kernels again). Without that JSON (run alone,
    or a Triton the check skips, which writes none) the test compiles the quick set itself."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    stage = os.environ.get("TTS_GPU_STATIC_QUICK_JSON")
    if stage and Path(stage).is_file():
        out = Path(stage)
    else:
        out = tmp_path / "quick.json"
        p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_static.check", "--set", "quick", "--out",
                            str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if p.stdout.startswith("SKIP"):
            pytest.skip(p.stdout.strip())
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    d = json.loads(out.read_text())
    import triton
    assert d["set"] == "quick" and d["environment"]["triton"] == triton.__version__
    # the quick set: two one-program-per-row sampler variants, one split-row launch (partial + merge), one
    # tree attention call (stage 1 wide and narrow, stage 2); its bf16 stage-1 launches, wide and narrow,
    # take different KV tiles on sm_90 (wgmma: 64 tokens) and sm_80 (mma.sync: 32): one specialization per
    # arch, each compiled for its arch only; and the per-row sampler with pass 1 pipelined (cost_model.QUICK_PIPELINED)
    assert d["specializations"] == 10 and d["compiles"] == 16 and not d["failures"]
    assert d["kernels_launched_in_source"] == ["_merge_kernel", "_partial_kernel", "_sample_kernel",
                                               "_tree_attn_stage1", "_tree_attn_stage2"]
    assert d["kernels_not_reached"] == []
    kernels = sorted(r["kernel"] for r in d["specs"])
    assert kernels == ["_merge_kernel", "_partial_kernel", "_sample_kernel", "_sample_kernel", "_sample_kernel",
                       "_tree_attn_stage1", "_tree_attn_stage1", "_tree_attn_stage1", "_tree_attn_stage1",
                       "_tree_attn_stage2"]
    for r in d["specs"]:
        archs = sorted(r["compiled"])
        stage1 = r["kernel"] == "_tree_attn_stage1"
        assert archs == (["sm_80"] if stage1 and "BLOCK_N=32" in r["spec"] else ["sm_90"] if stage1
                         else ["sm_80", "sm_90"]), r["spec"]
        for arch in archs:
            c = r["compiled"][arch]
            assert c["ok"] and c["registers"] > 0 and c["registers"] == c["registers_cuobjdump"]
            assert c["ctas_per_sm"] >= 1 and c["sass_instructions"] > 0
            hot = [lp for lp in c["loops"] if lp["innermost"] and lp["source"]]
            assert hot, f"no source-attributed loop in {r['spec']} {arch}"
        if r["kernel"] == "_sample_kernel":
            loops = [lp for lp in r["compiled"]["sm_90"]["loops"] if lp["thread_instr_per_token"]]
            # a buffer read: a load per 2 values, a compare, an add at least; pass 1: 2 ex2, 2 FMUL, 2 FADD, a max
            assert loops and all(2 < lp["thread_instr_per_token"] < 2000 for lp in loops)
            pass1 = [lp["thread_instr_per_token"] for lp in loops if lp["source"]["function"] == "_pass1"]
            assert pass1 and all(x > 5 for x in pass1)
    # a call without logprobs (pass 1's shortest iteration): exactly the raw sums' exp2 fewer per token, fewer
    # instructions, and the partial tile's raw-sum code (``_group_raw``, straight-line) left out
    for x in d["cost_model"]["sampler"]:
        assert x["pass1_mufu_per_token_no_logprobs"] == x["pass1_mufu_per_token"] - 1 == 1.0, x["spec"]
        assert 0 < x["pass1_no_logprobs"] < x["instr_per_token"]["pass1"], x["spec"]
        for side in ("low", "high"):
            assert x["no_logprobs"][side]["t_bound_s"] <= x[side]["t_bound_s"]
    s = d["cost_model"]["sampler"]
    assert {(x["B"], x["V"]) for x in s} == {(1, 32000), (256, 32000)}
    assert {x["config"] for x in s} == {"temp", "greedy"}
    b1 = next(x for x in s if x["B"] == 1)
    assert b1["low"]["bound"] == "issue" and math.isfinite(b1["low"]["gbps_bound"])
    # B=1 is modelled as an H100 launches it: split rows (125 slices of one group), the quick set's own partial
    # and merge specs
    assert (b1["path"], b1["slices"], b1["chunk"]) == ("split", 125, 256)
    assert not b1["stats_from"] and not b1["merge_stats_from"]
    assert d["cost_model"]["not_compiled"] == []
    # the GPU suite's predictions from these results: a measured sampler shape the model holds, one it
    # does not, another implementation (ignored), and a tree-attention shape with the three plans (the
    # balanced one as the benchmark planned it: the parallelism it recorded, here one program, so the
    # 1024-token prefix is one chunk, not the two an H100's 264 programs would keep)
    measured = {
        "sampler": {"records": [
            dict(suite="sweep", impl="tts_kernels.triton", B=256, V=32000, dtype="float32", config="temp",
                 median_s=1e-4, frac_copy_bw=0.5),
            dict(suite="sweep", impl="tts_kernels.triton", B=3, V=77, dtype="float32", config="temp", median_s=1e-5),
            dict(suite="sweep", impl="tts_kernels.triton-tokens", B=256, V=32000, dtype="float32", config="temp",
                 median_s=8e-5),
            dict(suite="sweep", impl="torch.sort", B=256, V=32000, dtype="float32", config="temp", median_s=1e-3),
            # the pipeline suite's modes: the plain loop against the sweep's record, the pipelined one against
            # ``sampler_pipelined``'s (the quick set's B=256 only)
            dict(suite="pipeline", impl="tts_kernels.triton", B=256, V=32000, dtype="float32", config="temp",
                 mode="stages=0", stages=0, median_s=2e-4),
            dict(suite="pipeline", impl="tts_kernels.triton", B=256, V=32000, dtype="float32", config="temp",
                 mode="stages=3", stages=3, median_s=1.5e-4),
            dict(suite="pipeline", impl="tts_kernels.triton", B=1, V=32000, dtype="float32", config="temp",
                 mode="stages=3", stages=3, median_s=1.5e-5)]},
        "tree_attention": {"records": [
            dict(N=4, prefix=1024, suffix=16, Hq=4, Hkv=2, D=32, dtype="bfloat16", block_size=16, wide_chunk_rows=2,
                 parallelism=dict(rows_per_item=64, kv_heads=2, programs=1, narrow_rows=8, programs_narrow=1),
                 times_s={"tree": 2e-5, "tree_wide": 3e-5, "tree_balanced": 4e-5, "sdpa_gathered": 1e-4})]},
    }
    script = ("import json, sys; from benchmarks.gpu_static import cost_model as cm; "
              "print(json.dumps(cm.predict_for_results(json.loads(sys.argv[1]), sys.argv[2])))")
    p = subprocess.run([sys.executable, "-c", script, json.dumps(measured), str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    pred = json.loads(p.stdout.strip().splitlines()[-1])
    assert pred["not_modelled"] == ["sampler temp B=3 V=77 fp32", "sampler temp B=1 V=32000 fp32 (pipeline stages=3)"]
    sp, tokens, plain, piped = pred["sampler"]
    assert (plain["suite"], plain["pass1_stages"], plain["measured_s"]) == ("pipeline", 0, 2e-4)
    assert plain["predicted_s"] == sp["predicted_s"] and sp["pass1_stages"] == 0
    model3 = next(x for x in d["cost_model"]["sampler_pipelined"] if x["B"] == 256)
    assert (model3["pass1_stages"], piped["pass1_stages"], piped["measured_s"]) == (3, 3, 1.5e-4)
    assert piped["predicted_s"] == [model3["low"]["t_bound_s"], model3["high"]["t_bound_s"]]
    assert piped["pass1_loads_in_flight"] == model3["pass1_loads_in_flight"]
    model = next(x for x in s if x["B"] == 256)
    assert sp["logprobs"] and sp["predicted_s"] == [model["low"]["t_bound_s"], model["high"]["t_bound_s"]]
    lean = model["no_logprobs"]      # the tokens-only kernel against the bounds without logprobs
    assert not tokens["logprobs"] and tokens["predicted_s"] == [lean["low"]["t_bound_s"], lean["high"]["t_bound_s"]]
    assert sp["measured_over_predicted"][0] == pytest.approx(1e-4 / model["low"]["t_bound_s"], rel=1e-3)
    # beside each prediction, the loads in flight the model does not bound (a shortfall to hold against them)
    assert sp["pass1_loads_in_flight"] == model["pass1_loads_in_flight"] and sp["pass1_loads_in_flight"]["bytes_per_sm"]
    assert [t["impl"] for t in pred["tree_attention"]] == ["tree", "tree_wide", "tree_balanced"]
    tree, _, bal = pred["tree_attention"]
    assert bal["partial_over_kv"] < tree["partial_over_kv"]  # 4 + 4 pairs instead of 8 + 4
    assert bal["partial_over_kv"] == pytest.approx(tree["partial_over_kv"] * 8 / 12, rel=1e-3)
    for t, secs in zip(pred["tree_attention"], (2e-5, 3e-5, 4e-5)):
        assert t["measured_s"] == secs and t["predicted_s"] > 0
        assert t["measured_over_predicted"] == pytest.approx(secs / t["predicted_s"], rel=1e-3)


#: the head of the scripts ``helpers.specializations`` runs: a skip on a Triton whose binder the check does not know
_BINDER_SCRIPT_HEAD = r"""
import json, torch
from benchmarks.gpu_static import aot
from tts_kernels.sampling import triton_kernel as tkm
ok, why = aot.triton_support()
if not ok:
    print("SKIP " + why)
    raise SystemExit(0)
"""

_SPECS_OF_BUDGET_STRINGS = _BINDER_SCRIPT_HEAD + r"""
from benchmarks.gpu_static import spaces
ids = {}
# every budget variant (wait, end and answer-prefix strings of 0-4 tokens), one program per row and
# split rows (B = 4 and B = 32 on an H100's 132 SMs)
for slices in (False, True):
    for b in spaces.BUDGETS[1:]:
        saved = tkm._num_slices
        if slices:
            tkm._num_slices = lambda B, V, device: tkm.slices_for(B, V, 132)
        try:
            with aot.recording() as launches:
                spaces._sample_call(torch.bfloat16, 32 if slices else 4, 32000, b, spaces.FILTERS["top_p"])
        finally:
            tkm._num_slices = saved
        for lc in launches:
            ids.setdefault(lc.name, set()).add(aot.spec_id(lc, aot.bind(lc, 90)))
print(json.dumps({name: sorted(v) for name, v in ids.items()}))
"""


def test_budget_strings_do_not_recompile():
    """The token counts of the wait / end / answer strings are not specialised on: one sampler
    specialization for every budget variant (Triton's own binder), per kernel."""
    from helpers.specializations import specializations

    ids = specializations(_SPECS_OF_BUDGET_STRINGS)
    assert set(ids) == {"_sample_kernel", "_partial_kernel", "_merge_kernel"}, ids
    assert all(len(v) == 1 for v in ids.values()), ids


_SPECS_OF_PASS1_DEPTHS = _BINDER_SCRIPT_HEAD + r"""
import contextlib
import tts_kernels as tk
from benchmarks.gpu_static import cost_model as cm
ids = {}
# per-row (B = 256) and split rows (B = 32) as an H100 launches them: by default and at each depth of PASS1_STAGES
for depth in ["default"] + list(tkm.PASS1_STAGES):
    for B in (256, 32):
        depth_set = contextlib.nullcontext() if depth == "default" else cm.pass1_stages(depth)
        with cm.as_gpu(), depth_set, aot.recording() as launches:
            tk.sample(torch.empty(B, 151936, dtype=torch.bfloat16), temperature=0.8, seed=1, offset=0,
                      check_nan=False, validate=False, backend="triton")
        for lc in launches:
            ids.setdefault(f"{depth} {lc.name}", []).append(aot.spec_parts(lc, aot.bind(lc, 90)).get("STAGES"))
print(json.dumps(ids))
"""


def test_the_wrappers_launch_the_pass1_depth_they_are_given():
    """The pass-1 kernels (not the merge) are launched at the depth ``_pass1_stages`` gives, per-row and split: 0 by
    default (the plain loop), and each depth of ``PASS1_STAGES`` when the benchmark or the static check swap it in
    (``cost_model.pass1_stages``); the cost model's variants list the default depth first."""
    from helpers.specializations import specializations

    from tts_kernels.sampling import triton_kernel as tkm
    ids = specializations(_SPECS_OF_PASS1_DEPTHS)
    assert tkm.PASS1_STAGES == (0, 3)
    assert ids["default _sample_kernel"] == ["0"] and ids["default _partial_kernel"] == ["0"]
    for depth in tkm.PASS1_STAGES:
        assert ids[f"{depth} _sample_kernel"] == [str(depth)] and ids[f"{depth} _partial_kernel"] == [str(depth)]
        assert ids[f"{depth} _merge_kernel"] == [None]
    assert [(d, key) for d, _, key in cm.sampler_variants(False)] == [(0, "sampler"), (3, "sampler_pipelined")]


def test_other_triton_version_is_a_skip(monkeypatch):
    import triton
    monkeypatch.setattr(triton, "__version__", "3.10.0")
    ok, why = aot.triton_support()
    assert not ok and "3.10.0" in why and "SUPPORTED_TRITON" in why


def test_judge_fails_on_unlisted_hot_loop_spills():
    from benchmarks.gpu_static.check import judge

    def res(spill_in_loop, ok=True):
        return {"ok": ok, "spill_in_loop": spill_in_loop, "spill_store_bytes": 8 * spill_in_loop,
                "spill_load_bytes": 4 * spill_in_loop, "error": "" if ok else "PTXASError: boom"}
    results = [{"spec": "k[a]", "compiled": {"sm_90": res(True), "sm_80": res(True)}},
               {"spec": "k[b]", "compiled": {"sm_90": res(False), "sm_80": res(False, ok=False)}},
               {"spec": "k[c]", "compiled": {"sm_90": res(False), "sm_80": res(False)}}]
    allow = [{"spec": "k[a]", "archs": ["sm_90"], "issue": "#14"},
             {"spec": "k[c]", "archs": ["sm_90"], "issue": "#14"},      # fixed since: stale
             {"spec": "k[z]", "archs": ["sm_90"], "issue": "#14"}]      # not compiled in this run: not judged
    failures, known, stale = judge(results, allow)
    assert known == [{"spec": "k[a]", "arch": "sm_90", "issue": "#14", "spill_bytes": 12}]
    assert len(failures) == 2
    assert any(f.startswith("spill in a hot loop: k[a] on sm_80") for f in failures)
    assert any(f.startswith("compile error: k[b] on sm_80") for f in failures)
    assert stale == ["k[c]"]
    assert judge(results[2:], [])[0] == []
    # a full run (every launched specialization compiled): an entry naming none of them fails
    failures_full = judge(results, allow, complete=True)[0]
    assert failures_full == failures + ["allow-list entry names no specialization the wrappers launch "
                                        "(remove it): k[z]"]
    # an entry for some Triton releases only: matched under those, neither matched nor stale under others
    only36 = [dict(allow[0], triton=["3.6"]), dict(allow[1], triton=["3.6"])]
    failures36, known36, stale36 = judge(results, only36, triton="3.6.0")
    assert (failures36, known36, stale36) == (failures, known, stale)
    failures39, known39, stale39 = judge(results, only36, triton="3.9.0")
    assert known39 == [] and stale39 == [] and len(failures39) == 3
    assert any(f.startswith("spill in a hot loop: k[a] on sm_90") for f in failures39)
    assert judge(results, only36, triton=None)[1] == known               # no version given: every entry
    # a full run checks that every entry names a launched specialization, except other releases' entries
    # of the kernels whose specializations follow the release
    gone = "allow-list entry names no specialization the wrappers launch (remove it): "
    z36 = [dict(allow[2], triton=["3.6"])]
    assert judge(results[2:], z36, complete=True, triton="3.9.0")[0] == [gone + "k[z]"]
    for kernel in ("_sample_kernel", "_partial_kernel", "_merge_kernel"):   # pass-1 / draw tiles follow it
        s36 = [dict(allow[2], spec=f"{kernel}[z]", triton=["3.6"])]
        assert judge(results[2:], s36, complete=True, triton="3.9.0")[0] == []
        assert judge(results[2:], s36, complete=True, triton="3.6.0")[0] == [gone + f"{kernel}[z]"]


def test_verdict_is_complete_only_for_a_full_run_on_every_arch(tmp_path):
    # one rule for a fresh run (check.main) and a re-judged one (check.rejudge): an allow-list entry that
    # names no specialization fails only a full run on every arch; a kernel no case reached fails a full run
    import json
    from benchmarks.gpu_static.check import KERNEL_MODULES, rejudge, verdict

    ok = {"ok": True, "spill_in_loop": False, "spill_store_bytes": 0, "spill_load_bytes": 0}
    results = [{"kernel": "_k", "spec": "k[a]", "params": {}, "compiled": {f"sm_{a}": ok for a in aot.ARCHS}}]
    allow = [{"spec": "k[z]", "archs": ["sm_90"], "issue": "#14"}]
    every = [f"sm_{a}" for a in aot.ARCHS]
    stale_entry = "allow-list entry names no specialization the wrappers launch (remove it): k[z]"
    not_reached = ("kernel _x is launched in " + ", ".join(KERNEL_MODULES) + " but no case of "
                   "benchmarks/gpu_static/spaces.py reached it: extend spaces.py")
    assert verdict(results, allow, "full", every, ["_x"])[0] == [stale_entry, not_reached]
    assert verdict(results, allow, "full", every[:1], ["_x"])[0] == [not_reached]
    assert verdict(results, allow, "quick", every, ["_x"])[0] == []
    path, allow_path = tmp_path / "gs.json", tmp_path / "allow.json"
    for level, archs, want in (("full", every, [stale_entry, not_reached]), ("full", every[:1], [not_reached]),
                               ("quick", every, [])):
        path.write_text(json.dumps({"set": level, "archs": archs, "specs": results,
                                    "kernels_not_reached": ["_x"]}))
        allow_path.write_text(json.dumps({"known_spills": allow}))
        assert rejudge(str(path), str(allow_path)) == (1 if want else 0)
        assert json.loads(path.read_text())["failures"] == want


def test_register_axis_by_release():
    """The tile axis a thread keeps in registers (``tts_kernels._triton_layout``): 1 under Triton 3.5 and 3.6, 0 from
    3.7 on (local and pre-release tags ignored); the installed Triton's is the module's constant."""
    import triton

    from tts_kernels import _triton_layout
    got = [_triton_layout.register_axis(v) for v in ("3.5.1", "3.6.0", "3.7.0", "3.8.0", "3.9.0+git1a2b", "4.0.0rc1")]
    assert got == [1, 1, 0, 0, 0, 0]
    assert _triton_layout.REGISTER_AXIS == _triton_layout.register_axis(triton.__version__)


def test_tile_order_rule():
    """The pass-1 loop may shuffle as much as a group's three reductions across ``U / (H x vector)`` lanes take
    (plus a level), stage 2's loops at most ``STAGE2_SHUFFLES_PER_STEP`` where its tile holds a vector of (head, dim)
    per thread and ``STAGE2_SMALL_TILE_SHUFFLES`` where it does not; per iteration of the source loop (an unrolled
    body counts once per unrolled iteration); a judged specialization without such a loop fails; misaligned rows
    are not judged. The counts are those of the full runs: 6 / 336 (per-row bf16 pairs, H=8, this Triton's order /
    the other), 15 (split rows, H=1), 2 / 50 (stage 2), 12 / 34 (stage 2's 16-bit 8 x 64 tile)."""
    from benchmarks.gpu_static.check import STAGE2_SHUFFLES_PER_STEP, tile_order_failures

    def spec(name, kernel, params, shfl, fn="_pass1", unroll=1):
        loop = {"source": {"function": fn, "line": 1}, "shfl": shfl, "unroll": unroll}
        return {"kernel": kernel, "spec": name, "params": params, "compiled": {"sm_90": {"ok": True, "loops": [loop]}}}
    row = {"logits_ptr": "*bf16/16", "stride_row": "i32/16", "H": "8", "PAIRS": "True"}
    split = {"logits_ptr": "*bf16/16", "stride_row": "i32/16", "H": "1", "PAIRS": "True"}
    fp32 = {"logits_ptr": "*fp32/16", "stride_row": "i32/16", "H": "16", "PAIRS": "False"}
    odd = {"logits_ptr": "*bf16/16", "stride_row": "i32", "H": "8", "PAIRS": "False"}
    st2 = {"out_p_ptr": "*bf16/16", "BLOCK_H": "8", "BLOCK_D": "128", "@num_warps": "4"}
    small = {"out_p_ptr": "*bf16/16", "BLOCK_H": "8", "BLOCK_D": "64", "@num_warps": "4"}
    results = [spec("row-ok", "_sample_kernel", row, 6), spec("row-bad", "_sample_kernel", row, 336),
               spec("row-slack", "_sample_kernel", row, 9), spec("row-over", "_sample_kernel", row, 10),
               spec("split-ok", "_partial_kernel", split, 15), spec("fp32-ok", "_sample_kernel", fp32, 6),
               spec("fp32-bad", "_sample_kernel", fp32, 48), spec("odd", "_sample_kernel", odd, 120),
               spec("st2-ok", "_tree_attn_stage2", st2, 2, "_tree_attn_stage2"),
               spec("st2-bad", "_tree_attn_stage2", st2, 50, "_tree_attn_stage2"),
               spec("st2-edge", "_tree_attn_stage2", st2, STAGE2_SHUFFLES_PER_STEP, "_tree_attn_stage2"),
               spec("st2-small", "_tree_attn_stage2", small, 12, "_tree_attn_stage2"),
               spec("st2-small-bad", "_tree_attn_stage2", small, 34, "_tree_attn_stage2"),
               spec("row-unrolled", "_sample_kernel", row, 12, unroll=2),
               spec("row-no-loop", "_sample_kernel", row, 6, fn="_finish")]
    failed = sorted(f.split(": ")[-1].split(" on ")[0] for f in tile_order_failures(results))
    assert failed == ["fp32-bad", "row-bad", "row-no-loop", "row-over", "st2-bad", "st2-small-bad"], failed


def test_vector_load_rule_judges_aligned_rows_only():
    from benchmarks.gpu_static.check import vector_load_failures

    def spec(name, stride, ldg, stages="0"):
        loop = {"source": {"function": "_pass1", "line": 1}, "ldg_ops": ldg}
        return {"kernel": "_sample_kernel", "spec": name, "compiled": {"sm_90": {"ok": True, "loops": [loop]}},
                "params": {"logits_ptr": "*bf16/16", "stride_row": stride, "STAGES": stages}}
    results = [spec("aligned-vec", "i32/16", ["LDG.E.128"]),
               spec("aligned-pipelined", "i32/16", ["LDGSTS.E.BYPASS.128"], "3"),   # 16 B into shared memory
               spec("aligned-scalar", "i32/16", ["LDG.E.U16"]),     # aligned rows without 16-byte loads: a failure
               spec("aligned-pipelined-scalar", "i32/16", ["LDGSTS.E"], "3"),
               spec("aligned-not-pipelined", "i32/16", ["LDG.E.128"], "3"),  # STAGES 3 that Triton did not pipeline
               spec("odd-scalar", "i32", ["LDG.E.U16"])]            # misaligned rows cannot vector-load: not judged
    failures = vector_load_failures(results)
    assert len(failures) == 3 and all("sm_90" in f for f in failures)
    assert "aligned-scalar" in failures[0] and "aligned-pipelined-scalar" in failures[1]
    assert "not pipelined" in failures[2] and "aligned-not-pipelined" in failures[2]


def test_loads_in_flight_of_the_pipelined_loop():
    """Pipelined (``stages`` 3) a program keeps the next two tiles in flight while it computes, as many as its row or
    slice has after the current one; the plain loop one tile, only while it waits."""
    row = dict(path="row", rows_on_busiest_sm=2, ctas_per_sm=4, itemsize=2, V=151936)
    split = dict(path="split", slices_on_busiest_sm=1, ctas_per_sm=4, itemsize=2, V=151936, chunk=40960)
    f = cm.loads_in_flight
    assert f(row, 8192)["bytes_per_sm"] == 2 * 8192 * 2 and not f(row, 8192)["while_computing"]
    assert f(row, 8192, stages=3)["bytes_per_sm"] == 2 * 2 * 8192 * 2 and f(row, 8192, stages=3)["while_computing"]
    assert f(dict(row, ctas_per_sm=1), 8192, stages=3)["bytes_per_sm"] == 2 * 8192 * 2   # one resident program
    assert f(split, 8192, stages=3)["bytes_per_sm"] == 2 * 8192 * 2                      # 5 tiles per slice
    assert f(dict(split, chunk=16384), 8192, stages=3)["bytes_per_sm"] == 8192 * 2        # 2 tiles: one ahead
    one = f(dict(split, chunk=2048), 2048, stages=3)                                         # 1 tile: nothing ahead
    assert one["bytes_per_sm"] == 2048 * 2 and not one["while_computing"]
