"""Static GPU check: compile every Triton specialization the wrappers launch for sm_90 and sm_80,
with no GPU, and read registers, spills, shared memory, occupancy and the SASS loops.

    python -m benchmarks.gpu_static.check                 # full set, JSON to benchmarks/results/gpu_static.json
    python -m benchmarks.gpu_static.check --set quick --out /tmp/q.json
    python -m benchmarks.gpu_static.check --print-allowlist   # allow-list entries for today's hot-loop spills
    python -m benchmarks.gpu_static.check --rejudge benchmarks/results/gpu_static.json   # verdict under an edited allow-list

Exit status: 0 pass (or skip: an unsupported Triton prints ``SKIP ...``), 1 when any
specialization fails to compile or spills inside a hot loop without an entry in the
allow-list (``known_spills.json``), when a tree-attention variant cannot hold its ``CTAS_PER_SM``
(:func:`occupancy_failures`), when a pass-1 loop over aligned rows lacks 16-byte loads
(:func:`vector_load_failures`) or reduces a group across more lanes than its tile layout asks
(:func:`tile_order_failures`, as does stage 2's loop over the pairs), when stage 1's KV loop can skip more than a mask and a rescale
(:func:`min_path_failures`), or (full set) when a kernel launched as ``kernel[grid](...)`` in
the kernel modules is never reached by ``spaces.py``; 2 when triton does not import.

The rule "spill inside a hot loop": ``ptxas -v`` reports spill stores or spill loads > 0 for the
kernel, AND at least one loop of its SASS (a backward branch, from its head to its last back edge)
contains an ``STL`` or ``LDL``. Spills only outside loops (prologue/epilogue) are reported but
pass; local memory that is not a spill (a stack array) is not counted.
"""
from __future__ import annotations

import os

import argparse  # noqa: E402
import atexit  # noqa: E402
import concurrent.futures as cf  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ALLOWLIST = HERE / "known_spills.json"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_static.json"

_SPECS = []  # (key, Launch), set before the worker pool forks


def _compile_task(i: int, arch: int):
    from . import aot
    key, launch = _SPECS[i]
    t0 = time.perf_counter()
    try:
        res = aot.compile_spec(launch, arch)
        res["ok"] = True
    except Exception as exc:
        res = {"arch": f"sm_{arch}", "ok": False, "error": f"{type(exc).__name__}: {exc}"[-4000:],
               "traceback": traceback.format_exc()[-4000:]}
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    return i, arch, res


def discover(level: str, archs=None, log=print):
    """Record every launch of the wrappers over the space, once per target arch (the wrappers pick
    tiles by the GPU's compute capability) and with the sampler's GPU math (``cost_model.gpu_math``: the
    ``FAST_LOG`` variants a GPU launches); deduplicate by specialization. Returns specs as
    ``key -> (Launch, Bound, archs it was launched for)``."""
    from tts_kernels.attention import triton_kernel as tak

    from . import aot, spaces
    from .cost_model import gpu_math
    archs = archs or aot.ARCHS
    ref = [""]
    launches = []
    saved = tak._arch
    try:
        for arch in archs:
            tak._arch = lambda device, arch=arch: arch
            with gpu_math(), aot.recording(ref) as got:
                ncases = 0
                for name, case in spaces.all_cases(level):
                    ref[0] = name
                    case()
                    ncases += 1
            launches += [(lch, arch) for lch in got]
    finally:
        tak._arch = saved
    specs, cases = {}, {}
    for lch, arch in launches:
        b = aot.bind(lch, arch)
        key = aot.spec_key(lch, b)
        if key not in specs:
            specs[key] = (lch, b, [])
        if arch not in specs[key][2]:
            specs[key][2].append(arch)
        if lch.case not in cases.get(key, []):
            cases.setdefault(key, []).append(lch.case)
    log(f"[gpu-static] {ncases} cases x {len(archs)} archs, {len(launches)} launches, {len(specs)} distinct "
        f"specializations")
    missing = sorted(launched_in_source() - {lch.name for lch, _ in launches})
    return specs, cases, ncases, len(launches), missing


#: modules whose Triton kernels the wrappers launch (every kernel launched in their source must be reached)
KERNEL_MODULES = ("tts_kernels.sampling.triton_kernel", "tts_kernels.attention.triton_kernel")


def launched_in_source(modules=KERNEL_MODULES):
    """Names of the kernels launched as ``name[grid](...)`` in the modules' source."""
    import ast
    import importlib
    import inspect

    from triton.runtime.jit import KernelInterface

    names = set()
    for mod_name in modules:
        mod = importlib.import_module(mod_name)
        for node in ast.walk(ast.parse(inspect.getsource(mod))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript) \
                    and isinstance(node.func.value, ast.Name) \
                    and isinstance(getattr(mod, node.func.value.id, None), KernelInterface):
                names.add(node.func.value.id)
    return names


def load_allowlist(path=ALLOWLIST):
    if not Path(path).exists():
        return []
    with open(path) as f:
        data = json.load(f)
    return data.get("known_spills", [])


def allowed(entry_list, spec_id: str, arch: str):
    for e in entry_list:
        if e["spec"] == spec_id and arch in e.get("archs", [arch]):
            return e
    return None


def triton_minor(version: str) -> str:
    """``"3.8.0"`` -> ``"3.8"``: the release an allow-list entry's ``triton`` field names."""
    return ".".join(str(version).split(".")[:2])


#: kernels whose specializations follow the Triton release (the sampler's pass-1 and filtered-draw tiles,
#: axis order, ``H_AXIS``: ``tts_kernels._triton_layout.REGISTER_AXIS``): a full run checks only its own release's allow-list
#: entries of these for a launched specialization
RELEASE_SPECIALIZED = ("_sample_kernel", "_partial_kernel", "_merge_kernel")


def judge(results, allow, complete: bool = False, triton: Optional[str] = None):
    """(failures, known spills, stale allow-list entries) of compiled results.

    A failure: a compile error, or a spill inside a hot loop (``spill_in_loop``) that no allow-list
    entry names for that spec and arch; with ``complete`` (the full set: every specialization the
    wrappers launch), also an entry that names no compiled specialization (a stale id would match
    again, unnoticed, if the kernel went back to it), except another release's entries for a kernel of
    :data:`RELEASE_SPECIALIZED` (the wrappers launch other specializations of it there). Stale: an entry
    whose spec was compiled for a listed arch and no longer spills in a loop there. An entry with a
    ``triton`` list (``"3.6"``, ...) holds for runs under those Triton releases only (``triton``: this
    run's version); under the others it is neither matched nor stale.
    """
    full_allow = allow
    if triton is not None:
        allow = [e for e in allow if not e.get("triton") or triton_minor(triton) in e["triton"]]
    failures, known = [], []
    for r in results:
        for arch, res in r["compiled"].items():
            if not res.get("ok"):
                failures.append(f"compile error: {r['spec']} on {arch}: {res.get('error', '')[:500]}")
            elif res["spill_in_loop"]:
                e = allowed(allow, r["spec"], arch)
                if e:
                    known.append({"spec": r["spec"], "arch": arch, "issue": e.get("issue"),
                                  "spill_bytes": res["spill_store_bytes"] + res["spill_load_bytes"]})
                else:
                    failures.append(f"spill in a hot loop: {r['spec']} on {arch} ({res['spill_store_bytes']} B "
                                    f"stores, {res['spill_load_bytes']} B loads)")
    by_spec = {r["spec"]: r for r in results}
    if complete:
        failures += [f"allow-list entry names no specialization the wrappers launch (remove it): {e['spec']}"
                     for e in full_allow if e["spec"] not in by_spec
                     and (e in allow or e["spec"].split("[")[0] not in RELEASE_SPECIALIZED)]
    stale = []
    for e in allow:
        r = by_spec.get(e["spec"])
        if r and any(a in r["compiled"] and r["compiled"][a].get("ok") and not r["compiled"][a]["spill_in_loop"]
                     for a in e.get("archs", [])):
            stale.append(e["spec"])
    return failures, known, stale


def verdict(results, allow, level: str, arch_names: Sequence[str], not_reached: Sequence[str],
            triton: Optional[str] = None):
    """(failures, known spills, stale allow-list entries) of a run's results: :func:`judge`, complete
    when the run compiled the full set for every arch of ``aot.ARCHS`` (``arch_names``: ``"sm_90"``, ...;
    a subset of archs leaves some specializations unknown), the vector-load and occupancy rules, and,
    for a full run, a failure per launched kernel that no case of ``spaces.py`` reached. ``triton``:
    the run's Triton version (for the allow-list entries of some releases only)."""
    from . import aot

    complete = level == "full" and set(arch_names) == {f"sm_{a}" for a in aot.ARCHS}
    failures, known, stale = judge(results, allow, complete=complete, triton=triton)
    failures += (vector_load_failures(results) + tile_order_failures(results) + occupancy_failures(results)
                 + min_path_failures(results))
    if level == "full":
        failures += [f"kernel {k} is launched in {', '.join(KERNEL_MODULES)} but no case of "
                     f"benchmarks/gpu_static/spaces.py reached it: extend spaces.py" for k in not_reached]
    return failures, known, stale


#: kernels whose pass 1 streams a logits row: with aligned row starts (``stride_row`` divisible by 16
#: elements, i.e. a vocabulary divisible by 16 or padded rows) its loop must use 16-byte loads
ROW_STREAM_KERNELS = ("_sample_kernel", "_partial_kernel")


def occupancy_failures(results):
    """Tree-attention stage 1 runs ``CTAS_PER_SM`` persistent CTAs per SM (``stage1_config``, and
    ``narrow_config`` for the narrow launch): each
    compiled variant must fit that many by registers and shared memory. A spec whose tiles match
    no config of the package (a test's patched tiles) is not judged."""
    import torch

    from tts_kernels.attention import triton_kernel as tak
    dtypes = {"*fp32": torch.float32, "*bf16": torch.bfloat16, "*fp16": torch.float16}
    failures = []
    for r in results:
        if r["kernel"] != "_tree_attn_stage1" or "next_ptr" not in r["params"]:
            continue  # (results of the kernel before its persistent grid: nothing to judge)
        p = r["params"]
        hq, group, d, bs = int(p["HQ"]), int(p["GROUP"]), int(p["HEAD_DIM"]), int(p["BS"])
        dtype = dtypes[p["q_ptr"].split("/")[0]]
        for arch, res in r["compiled"].items():
            if not res.get("ok"):
                continue
            a = int(arch[3:])
            if p.get("MAX_ROWS", "0") != "0":  # the narrow launch (triton_kernel.rows_launches)
                cands = [("narrow_config", tak.narrow_config(hq, hq // group, d, dtype, a, bs))]
            else:
                cands = [("stage1_config", tak.stage1_config(hq, hq // group, d, dtype, wide, a, bs))
                         for wide in (False, True)]
            for name, cfg in cands:
                if all(p.get(k) == repr(cfg[k]) for k in ("BLOCK_R", "BLOCK_M", "BLOCK_N")) \
                        and p.get("@num_warps") == repr(cfg["num_warps"]):
                    if res["ctas_per_sm"] < cfg["CTAS_PER_SM"]:
                        failures.append(f"persistent grid: {r['spec']} on {arch} fits {res['ctas_per_sm']} CTA(s) "
                                        f"per SM, {name} launches {cfg['CTAS_PER_SM']}")
                    break
    return failures


#: op classes that the blocks a KV tile can skip may hold, within the instruction budget: arithmetic,
#: predicates, branches, special-register reads, and shared-memory stores (Triton 3.5 duplicates the
#: store of the scores for the PV dot into the mask's arm). Skipping any other op class (global memory,
#: MMA, barrier, fence, shuffle, shared-memory loads) fails the rule, so a new opcode is a decision,
#: not a silent pass
SKIPPABLE_OPS = frozenset({
    "FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP", "MUFU", "F2F", "F2FP", "F2I", "I2F", "HADD2", "HMUL2",
    "HFMA2", "IADD3", "IMAD", "IMNMX", "IABS", "ISETP", "LEA", "LOP3", "SHF", "SEL", "MOV", "PRMT", "VIADD",
    "VIMNMX", "PLOP3", "P2R", "R2P", "BRA", "BSSY", "BSYNC", "NOP", "S2R", "STS"})
#: the skippable blocks' bookkeeping besides one instruction per accumulator element and per score
SKIPPABLE_SLACK = 96


def min_path_failures(results):
    """Stage 1's KV loop is modelled at its shortest iteration, the blocks off that path once per
    work item (``cost_model.attention_instr``). That is sound only while those blocks are the rare
    arithmetic of a partial last tile's mask and a lazy rescale: a spec fails when its KV loop can
    skip an op outside :data:`SKIPPABLE_OPS` (a global memory access, an MMA, a barrier, a
    shuffle...), or more than one instruction per thread for each accumulator element
    and each score of a tile (the rescale's FMULs, the mask's selects) plus :data:`SKIPPABLE_SLACK`.
    Extra arithmetic within that budget passes. Results without ``off_min_path`` (an older run) are
    not judged."""
    from .cost_model import kv_loop

    failures = []
    for r in results:
        if r["kernel"] != "_tree_attn_stage1":
            continue
        p = r["params"]
        for arch, res in r["compiled"].items():
            if not res.get("ok"):
                continue
            try:
                off = kv_loop(res).get("off_min_path")
            except ValueError as e:
                failures.append(f"no KV loop in the SASS of {r['spec']} on {arch}: {e}")
                continue
            if off is None:
                continue
            threads = 32 * res["num_warps"]
            budget = int(p["BLOCK_M"]) * (int(p["BLOCK_D"]) + int(p["BLOCK_N"])) // threads + SKIPPABLE_SLACK
            bad = sorted(set(off["ops"]) - SKIPPABLE_OPS)
            if bad or off["instructions"] > budget:
                failures.append(f"KV loop can skip more than a mask and a rescale: {r['spec']} on {arch} "
                                f"({off['instructions']} instructions off its shortest iteration, at most "
                                f"{budget}; not arithmetic: {bad or 'none'}; lines {off['lines']})")
    return failures


def _aligned_row_stream(r) -> bool:
    """Whether a specialization streams logits rows (:data:`ROW_STREAM_KERNELS`) whose starts are 16-byte
    aligned (``stride_row`` and the logits pointer divisible by 16): the rows the pass-1 rules judge."""
    p = r.get("params", {})
    return (r["kernel"] in ROW_STREAM_KERNELS and str(p.get("stride_row", "")).endswith("/16")
            and str(p.get("logits_ptr", "")).endswith("/16"))


def vector_load_failures(results):
    """Specializations with aligned logits rows whose pass-1 loop does not load 16 bytes per thread
    (``LDG.E.128``; pipelined, ``STAGES`` 3, into shared memory: ``LDGSTS.E.BYPASS.128``) on some arch, and pipelined
    ones (``STAGES`` > 1) whose pass-1 loop copies nothing into shared memory (no ``LDGSTS``: Triton did not pipeline
    it, so a benchmark of the two depths would time the same loop twice). Rows with an odd stride cannot be
    vector-loaded and are not judged."""
    from .cost_model import _sampler_roles

    pass1 = _sampler_roles().get("pass1")
    failures = []
    for r in results:
        if not _aligned_row_stream(r):
            continue
        for arch, res in r["compiled"].items():
            if not res.get("ok"):
                continue
            loops = [lp for lp in res["loops"] if lp.get("source")
                     and lp["source"]["function"] in {pass1, r["kernel"]} - {None} and lp.get("ldg_ops")]
            if not loops or not any(op.endswith(".128") for op in loops[0]["ldg_ops"]):
                got = loops[0]["ldg_ops"] if loops else "no pass-1 loop found"
                failures.append(f"pass 1 without 16-byte loads on aligned rows: {r['spec']} on {arch} ({got})")
            elif int(r.get("params", {}).get("STAGES", 0)) > 1 and not any(
                    op.startswith("LDGSTS") for op in loops[0]["ldg_ops"]):
                failures.append(f"pass 1 not pipelined at STAGES > 1 (no LDGSTS): {r['spec']} on {arch} "
                                f"({loops[0]['ldg_ops']})")
    return failures


#: shuffles a stage-2 step may hold: its sums over the pairs stay in a thread (the pairs on the register axis,
#: ``P_AXIS``): 2-3 per step in the full runs of Triton 3.5-3.9 where the tile holds a 16-byte vector of (head,
#: dim) per thread (18-66 with the pairs across lanes, 3.5 and 3.6 before bc0d96b); smaller tiles spread the
#: pairs over warps in either order and take 10-12 (:data:`STAGE2_SMALL_TILE_SHUFFLES`; 34-35 for the 16-bit
#: 8 x 64 tile in the other order)
STAGE2_SHUFFLES_PER_STEP = 8
STAGE2_SMALL_TILE_SHUFFLES = 16


def tile_order_failures(results):
    """Specializations whose 3-d tiles took the layout that spreads a thread's reduction over lanes again: the
    pass-1 loop over aligned rows with more shuffles per iteration than a group's three reductions across ``U /
    (H x vector)`` lanes take (``3 log2`` of those lanes, plus one level's slack: 6 per iteration in the per-row
    kernel's tiles, 9-15 in the split rows'; in the other axis order 336 (bf16 pairs) and 864 (fp32) per-row,
    48-144 in split rows), and stage 2's loops with more than :data:`STAGE2_SHUFFLES_PER_STEP` (or
    :data:`STAGE2_SMALL_TILE_SHUFFLES` for tiles of fewer (head, dim) vectors than threads). Shuffles are counted
    per iteration of the source loop (a loop unrolled k times counts 1/k of its body). A judged specialization
    without such a loop fails too (the rule would pass it unseen). Which axis each Triton keeps in registers is a
    heuristic of its coalescing pass, keyed by release (``tts_kernels._triton_layout``): this catches a Triton
    that breaks the tie differently."""
    from .cost_model import _sampler_roles

    pass1 = _sampler_roles().get("pass1", "_pass1")
    failures = []
    for r in results:
        p = r.get("params", {})
        if r["kernel"] == "_tree_attn_stage2":
            vec = 16 // (4 if "fp32" in str(p.get("out_p_ptr")) else 2)      # elements per 16-byte load
            small = int(p["BLOCK_H"]) * int(p["BLOCK_D"]) < 32 * int(p.get("@num_warps", 4)) * vec
            limit = STAGE2_SMALL_TILE_SHUFFLES if small else STAGE2_SHUFFLES_PER_STEP
            where = r["kernel"]
        elif _aligned_row_stream(r) and "H" in p:
            pairs = p.get("PAIRS") == "True"
            unit = 4 if pairs or "fp32" in p["logits_ptr"] else 2          # bytes per unit of a vector load
            units = 128 if pairs else 256                                   # units per group of 256 tokens
            lanes = max(1, min(32, units // int(p["H"]) // (16 // unit)))
            limit, where = 3 * (lanes.bit_length() - 1) + 3, pass1
        else:
            continue
        for arch, res in r["compiled"].items():
            if not res.get("ok"):
                continue
            loops = [lp for lp in res["loops"] if lp.get("source") and lp["source"]["function"] == where]
            if not loops:
                failures.append(f"tile layout: no loop of {where} found: {r['spec']} on {arch}")
            for lp in loops:
                per_iter = lp.get("shfl", 0) / max(1, lp.get("unroll") or 1)
                if per_iter > limit:
                    failures.append(f"tile layout: {per_iter:g} shuffles per iteration of the loop at line "
                                    f"{lp['source']['line']} (at most {limit}): {r['spec']} on {arch}")
    return failures


def environment():
    from . import aot
    import torch
    import triton
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except OSError:
        commit = None
    return {"triton": triton.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "ptxas": {f"sm_{a}": f"{aot.ptxas_path(a).rsplit('/', 1)[-1]} {aot.ptxas_version(a)}"
                      for a in aot.ARCHS},
            "host": platform.machine(), "cpus": os.cpu_count(), "commit": commit, "gpu": None}


def summarise(results):
    """Per kernel and arch: ranges of registers, spills, shared memory, CTAs/SM."""
    out = {}
    for r in results:
        for arch, c in r["compiled"].items():
            if not c.get("ok"):
                continue
            s = out.setdefault(r["kernel"], {}).setdefault(arch, {"specializations": 0, "registers": [],
                                                                 "spill_bytes": [], "shared_bytes": [],
                                                                 "ctas_per_sm": [], "spilling": 0,
                                                                 "spill_in_loop": 0})
            s["specializations"] += 1
            s["registers"].append(c["registers"])
            s["spill_bytes"].append(c["spill_store_bytes"] + c["spill_load_bytes"])
            s["shared_bytes"].append(c["shared_bytes"])
            s["ctas_per_sm"].append(c["ctas_per_sm"])
            s["spilling"] += c["spill_store_bytes"] + c["spill_load_bytes"] > 0
            s["spill_in_loop"] += bool(c["spill_in_loop"])
    for k in out.values():
        for s in k.values():
            for f in ("registers", "spill_bytes", "shared_bytes", "ctas_per_sm"):
                s[f] = [min(s[f]), max(s[f])]
    return out


def rejudge(path: str, allowlist: str) -> int:
    """The verdict of a full run's results (``path``) under the current allow-list, without compiling:
    for an allow-list edited after the run that produced the results."""
    with open(path) as f:
        out = json.load(f)
    results = out["specs"]
    failures, known, stale = verdict(results, load_allowlist(allowlist), out.get("set"), out.get("archs", []),
                                     out.get("kernels_not_reached", []), out.get("environment", {}).get("triton"))
    out.update(failures=failures, known_spills=known, stale_allowlist_entries=stale)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
        f.write("\n")
    for s_ in stale:
        print(f"[gpu-static] note: allow-list entry no longer spills (remove it): {s_}")
    if failures:
        print(f"[gpu-static] FAIL: {len(failures)} problem(s):")
        for x in failures:
            print(f"  {x}")
        return 1
    print(f"[gpu-static] PASS (re-judged {path}: {len(known)} known spills)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("quick", "full"), default="full", dest="level")
    ap.add_argument("--out", default=None, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)} for "
                                                "the full set, none for quick)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes")
    ap.add_argument("--archs", default="90,80")
    ap.add_argument("--allowlist", default=str(ALLOWLIST))
    ap.add_argument("--no-cost-model", action="store_true")
    ap.add_argument("--print-allowlist", action="store_true",
                    help="print allow-list entries for every hot-loop spill found (for known_spills.json)")
    ap.add_argument("--keep-cache", action="store_true", help="use Triton's normal cache (default: a fresh one)")
    ap.add_argument("--rejudge", default=None, metavar="RESULTS_JSON",
                    help="judge a results JSON's compiled specs against the allow-list again (no compiling) and "
                         "rewrite its failures / known_spills / stale_allowlist_entries")
    args = ap.parse_args(argv)
    if args.rejudge:
        return rejudge(args.rejudge, args.allowlist)
    # The kernels must be real JITFunctions (not the interpreter's): set before triton is imported (here,
    # in the CLI process, never at import: the test suite imports this module and runs the interpreter).
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, stated to silence its warning
    t_start = time.perf_counter()
    load0 = round(os.getloadavg()[0], 2)

    from . import aot
    try:
        ok, why = aot.triton_support()
    except RuntimeError as exc:
        print(f"ERROR gpu-static: {exc}")
        return 2
    if not ok:
        print(f"SKIP gpu-static: {why}")
        return 0
    if not args.keep_cache:
        cache = tempfile.mkdtemp(prefix="gpu_static_cache_")
        os.environ["TRITON_CACHE_DIR"] = cache
        atexit.register(shutil.rmtree, cache, True)  # a few hundred MB of cubins: not left behind
    archs = tuple(int(a) for a in args.archs.split(","))

    specs, cases, ncases, nlaunch, missing = discover(args.level, archs)
    t_disc = time.perf_counter() - t_start
    _SPECS[:] = [(k, lb[0]) for k, lb in specs.items()]
    tasks = [(i, a) for i, lb in enumerate(specs.values()) for a in archs if a in lb[2]]
    compiled = {}
    t0 = time.perf_counter()
    done = 0
    if args.jobs > 1:
        ctx = mp.get_context("fork")
        with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as ex:
            futs = [ex.submit(_compile_task, i, a) for i, a in tasks]
            for f in cf.as_completed(futs):
                i, a, res = f.result()
                compiled[(i, a)] = res
                done += 1
                if done % 20 == 0 or not res["ok"]:
                    print(f"[gpu-static] compiled {done}/{len(tasks)} ({time.perf_counter() - t0:.0f} s)"
                          + ("" if res["ok"] else f"  FAILED {_SPECS[i][1].name} sm_{a}: {res['error'][:300]}"),
                          flush=True)
    else:
        for i, a in tasks:
            _, _, res = _compile_task(i, a)
            compiled[(i, a)] = res
    t_comp = time.perf_counter() - t0

    results = []
    for i, (key, launch) in enumerate(_SPECS):
        b = specs[key][1]
        results.append({"kernel": launch.name, "spec": aot.spec_id(launch, b), "params": aot.spec_parts(launch, b),
                        "grid_example": list(launch.grid), "cases": cases[key][:3], "num_cases": len(cases[key]),
                        "compiled": {f"sm_{a}": compiled[(i, a)] for a in archs if (i, a) in compiled}})
    import triton
    failures, known, stale = verdict(results, load_allowlist(args.allowlist), args.level,
                                     [f"sm_{a}" for a in archs], missing, triton.__version__)

    out = {
        "what": "static GPU check: every Triton specialization the wrappers launch, compiled ahead of time "
                "(no GPU; no GPU measurement anywhere in this file)",
        "set": args.level, "archs": [f"sm_{a}" for a in archs], "environment": environment(),
        "cases": ncases, "launches": nlaunch, "specializations": len(_SPECS), "compiles": len(tasks),
        "timing_s": {"discover": round(t_disc, 1), "compile": round(t_comp, 1), "jobs": args.jobs},
        "failures": failures, "known_spills": known, "stale_allowlist_entries": stale,
        "kernels_launched_in_source": sorted(launched_in_source()), "kernels_not_reached": missing,
        "summary": summarise(results),
        "specs": results,
    }
    if not args.no_cost_model:
        from . import cost_model
        t1 = time.perf_counter()
        try:
            out["cost_model"] = cost_model.report(results, quick=args.level == "quick")
        except Exception as exc:  # reported, not a CI failure: the model reads kernel-specific names
            out["cost_model_error"] = f"{type(exc).__name__}: {exc}"
            print(f"[gpu-static] WARNING: the cost model failed (not a check failure): {out['cost_model_error']}")
            traceback.print_exc()
        out["timing_s"]["cost_model"] = round(time.perf_counter() - t1, 1)
    out["timing_s"]["total"] = round(time.perf_counter() - t_start, 1)
    ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    out["timing_s"]["cpu"] = round(sum(r.ru_utime + r.ru_stime for r in ru), 1)
    out["timing_s"]["load_average_start_end"] = [load0, round(os.getloadavg()[0], 2)]

    for r in results:
        for a, c in r["compiled"].items():
            c.pop("ptxas_log", None) if c.get("ok") and not c.get("spill_store_bytes") else None
    path = args.out or (str(DEFAULT_OUT) if args.level == "full" else None)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=1, default=str)
            f.write("\n")
        print(f"[gpu-static] wrote {path}")

    for kern, per_arch in out["summary"].items():
        for a, s in per_arch.items():
            print(f"[gpu-static] {kern:<20} {a}: {s['specializations']:3d} specs, registers {s['registers'][0]}-"
                  f"{s['registers'][1]}, spill bytes {s['spill_bytes'][0]}-{s['spill_bytes'][1]} "
                  f"({s['spilling']} spilling, {s['spill_in_loop']} in a loop), shared {s['shared_bytes'][0]}-"
                  f"{s['shared_bytes'][1]} B, CTAs/SM {s['ctas_per_sm'][0]}-{s['ctas_per_sm'][1]}")
    for k in known:
        print(f"[gpu-static] known spill ({k['issue']}): {k['spec']} {k['arch']} {k['spill_bytes']} B")
    for s in stale:
        print(f"[gpu-static] note: allow-list entry no longer spills (remove it): {s}")
    if args.print_allowlist:
        entries = [{"spec": r["spec"], "archs": [a for a, c in r["compiled"].items() if c.get("spill_in_loop")],
                    "triton": [triton_minor(triton.__version__)], "issue": "#14"}
                   for r in results if any(c.get("spill_in_loop") for c in r["compiled"].values())]
        print(json.dumps({"known_spills": entries}, indent=1))
    print(f"[gpu-static] {len(_SPECS)} specializations x {len(archs)} archs compiled in {t_comp:.0f} s "
          f"({args.jobs} jobs); total {time.perf_counter() - t_start:.0f} s, {out['timing_s']['cpu']:.0f} CPU s, "
          f"load average {load0} -> {out['timing_s']['load_average_start_end'][1]}")
    if failures:
        print(f"[gpu-static] FAIL: {len(failures)} problem(s):")
        for f in failures:
            print("  " + f)
        return 1
    print("[gpu-static] PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
