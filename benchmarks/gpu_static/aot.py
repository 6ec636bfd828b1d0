"""Ahead-of-time compilation of recorded Triton launches for NVIDIA targets, with no GPU.

Three steps, each usable on its own:

1. :func:`recording` - while active, every ``JITFunction.run`` (what ``kernel[grid](...)``
   calls) records a :class:`Launch` (kernel, grid, args, kwargs) instead of compiling or
   running; an ``@triton.autotune`` kernel records one launch per config. Calling the real
   wrappers inside it captures exactly what they would launch, whatever the kernels are.
2. :func:`bind` - Triton's own binder (``create_function_from_signature`` and
   ``JITFunction._pack_args``, private API, checked by :func:`triton_support`) turns a
   launch into the signature, constexprs, divisibility attributes and options that the
   runtime would compile for a target; :func:`spec_key` / :func:`spec_id` name that
   specialization.
3. :func:`compile_spec` - ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``
   down to cubin with Triton's bundled ptxas, then :func:`ptxas_stats` (registers, spill
   bytes, stack from ``ptxas -v`` on the same PTX with Triton's ptxas flags),
   :func:`resource_usage` (``cuobjdump --dump-resource-usage`` of Triton's cubin) and
   :func:`sass_loops` (``nvdisasm -gi`` of the cubin: every loop, its instruction count per
   iteration, its STL/LDL, and the source loop it comes from) and :func:`straight_line_by_function`
   (the instructions outside the loops per function on their inlining chains; :func:`infer_chains` completes
   those cut short, and all of them where the cubin has no inlining info).
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import heapq
import io
import math
import os
import re
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

#: Triton versions whose private binder API this module is written against: the releases that the
#: supported CUDA torch wheels pin (torch 2.9: 3.5.1; 2.10, 2.11: 3.6.0; 2.12: 3.7.0; 2.14: 3.8.0;
#: 2.15: 3.9.0, the newest); create_function_from_signature / _pack_args are the same in all of them
SUPPORTED_TRITON = ("3.5", "3.6", "3.7", "3.8", "3.9")
ARCHS = (90, 80)


def triton_support() -> Tuple[bool, str]:
    """(supported, reason): Triton importable, a supported version, the private API present."""
    try:
        import triton
    except Exception as exc:  # not a skip: CI must have triton (check.py exits 2)
        raise RuntimeError(f"triton does not import ({type(exc).__name__}: {exc})") from exc
    ver = ".".join(triton.__version__.split(".")[:2])
    if ver not in SUPPORTED_TRITON:
        return False, (f"triton {triton.__version__} is not one of {', '.join(SUPPORTED_TRITON)}: the static GPU "
                       f"check binds launches with Triton's private create_function_from_signature/"
                       f"JITFunction._pack_args, whose contract changes between releases; extend "
                       f"benchmarks/gpu_static/aot.py SUPPORTED_TRITON after checking them")
    try:
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
        from triton.compiler import ASTSource, make_backend  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        if not hasattr(JITFunction, "_pack_args"):
            return False, "triton.runtime.jit.JITFunction._pack_args is missing"
    except Exception as exc:
        return False, f"triton's private compile API is missing ({type(exc).__name__}: {exc})"
    for tool in ("ptxas", "cuobjdump", "nvdisasm"):
        if not os.path.exists(tool_path(tool)):
            return False, f"Triton's bundled {tool} is missing ({tool_path(tool)})"
    return True, f"triton {triton.__version__}"


# ---------------------------------------------------------------------------------------------
# 1. recording launches
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Launch:
    kernel: Any          # the JITFunction
    grid: Tuple[int, ...]
    args: tuple
    kwargs: dict
    case: str = ""       # which driver case produced it

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


@contextlib.contextmanager
def recording(case_ref: Optional[List[str]] = None):
    """Record every Triton launch instead of running it; yields the list of :class:`Launch`.

    ``case_ref`` (a one-element list) labels the launches with the caller's current case.
    """
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    launches: List[Launch] = []
    orig_run, orig_auto = JITFunction.run, Autotuner.run

    def run(self, *args, grid, warmup, **kwargs):
        g = grid(dict(zip(self.arg_names, args), **kwargs)) if callable(grid) else grid
        launches.append(Launch(self, tuple(int(x) for x in g), args, dict(kwargs),
                               case_ref[0] if case_ref else ""))
        return None

    def auto_run(self, *args, **kwargs):  # every config, as the autotuner would try them
        for cfg in self.configs:
            self.fn.run(*args, **dict(kwargs, **cfg.all_kwargs()))

    JITFunction.run, Autotuner.run = run, auto_run
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run = orig_run, orig_auto


# ---------------------------------------------------------------------------------------------
# 2. binding a launch for a target
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Bound:
    signature: Dict[str, str]
    constexprs: Dict[tuple, Any]
    attrs: Dict[tuple, Any]
    options: Any
    target: Any


def bind(launch: Launch, arch: int) -> Bound:
    """What ``JITFunction.run`` would hand to ``compile`` for this launch on ``sm_<arch>``."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kw = dict(launch.kwargs)
    # the options JITFunction.run adds before binding (triton 3.5-3.9: each where its release has it)
    kw["debug"] = kw.get("debug", fn.debug) or knobs.runtime.debug
    if hasattr(knobs.compilation, "instrumentation_mode"):
        kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    if hasattr(knobs.compilation, "fpsan_homomorphic_casts"):
        kw["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*launch.args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound_args, specialization, options)
    return Bound(signature, constexprs, attrs, options, target)


#: launch options that are part of a specialization's name (shown when not the default)
_LAUNCH_OPTIONS = {"num_warps": 4, "num_stages": 3, "num_ctas": 1, "maxnreg": None, "enable_fp_fusion": True,
                   "debug": False}


def spec_parts(launch: Launch, b: Bound) -> Dict[str, str]:
    """Per-parameter description: constexpr value, or type with ``/16`` for 16-divisibility."""
    parts = {}
    names = list(b.signature)
    for i, name in enumerate(names):
        ty = b.signature[name]
        if ty == "constexpr":
            v = b.constexprs.get((i,))
            parts[name] = repr(v.value if hasattr(v, "value") else v)
        else:
            attr = b.attrs.get((i,), [])
            div = any(a[0] == "tt.divisibility" and a[1] >= 16 for a in attr) if attr else False
            parts[name] = ty + ("/16" if div else "")
    for opt, default in _LAUNCH_OPTIONS.items():
        v = getattr(b.options, opt, default)
        if opt in ("num_warps", "num_stages") or v != default:
            parts["@" + opt] = repr(v)
    return parts


def spec_id(launch: Launch, b: Bound) -> str:
    """Exact, readable name of a specialization: kernel[param=value|type,...,@option=value]."""
    return f"{launch.name}[" + ",".join(f"{k}={v}" for k, v in spec_parts(launch, b).items()) + "]"


def spec_key(launch: Launch, b: Bound) -> str:
    """Deduplication key (the kernel's module-qualified name plus :func:`spec_id`)."""
    return f"{launch.kernel.fn.__module__}.{spec_id(launch, b)}"


def constexpr_values(b: Bound) -> Dict[str, Any]:
    out = {}
    for i, name in enumerate(b.signature):
        if b.signature[name] == "constexpr":
            v = b.constexprs.get((i,))
            out[name] = v.value if hasattr(v, "value") else v
    return out


# ---------------------------------------------------------------------------------------------
# 3. compiling and reading the binary
# ---------------------------------------------------------------------------------------------
def tool_path(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def ptxas_path(arch: int) -> str:
    import inspect

    from triton.backends.nvidia.compiler import get_ptxas
    # triton 3.6+ picks the ptxas per arch (a Blackwell one beside the default); 3.5 has one
    return (get_ptxas(arch) if inspect.signature(get_ptxas).parameters else get_ptxas()).path


def ptxas_version(arch: int) -> str:
    out = subprocess.run([ptxas_path(arch), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return m.group(2) if m else out.strip().splitlines()[-1]


_PTXAS_RE = {
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
    "spill_store_bytes": re.compile(r"(\d+) bytes spill stores"),
    "spill_load_bytes": re.compile(r"(\d+) bytes spill loads"),
    "registers": re.compile(r"Used (\d+) registers"),
    "barriers": re.compile(r"used (\d+) barriers"),
}


def parse_ptxas_log(log: str) -> Dict[str, int]:
    out = {}
    for k, rx in _PTXAS_RE.items():
        m = rx.search(log)
        out[k] = int(m.group(1)) if m else 0
    return out


def ptxas_stats(ptx: str, arch: int, sm_name: str, enable_fp_fusion: bool, workdir: str,
                expect_cubin: Optional[bytes] = None) -> Dict[str, Any]:
    """``ptxas -v`` on Triton's PTX with the flags Triton 3.9's make_cubin passes (a cache hit only:
    a fresh compile reads Triton's own ``ptxas -v`` log, whatever the release). With ``expect_cubin``
    (Triton's cubin of that PTX), a different cubin raises: the flags were not the ones Triton used (another
    release's), so the log's registers and spills would not be those of Triton's binary."""
    src = os.path.join(workdir, "k.ptx")
    with open(src, "w") as f:
        f.write(ptx)
    cmd = [ptxas_path(arch), "-lineinfo", *([] if enable_fp_fusion else ["--fmad=false"]), "-v",
           "--regAllocOptLevel=2", f"--gpu-name={sm_name}", src, "-o", os.path.join(workdir, "v.cubin")]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ptxas -v failed ({p.returncode}): {p.stderr[-2000:]}")
    if expect_cubin is not None:
        with open(os.path.join(workdir, "v.cubin"), "rb") as f:
            if f.read() != expect_cubin:
                raise RuntimeError("ptxas -v with Triton 3.9's flags gives another cubin than Triton's own for this "
                                   "PTX (a cache hit of another release?): run the check without --keep-cache")
    stats = parse_ptxas_log(p.stderr)
    stats["log"] = p.stderr.strip()
    return stats


def resource_usage(cubin_path: str) -> Dict[str, int]:
    """``cuobjdump --dump-resource-usage``: REG, STACK, SHARED (static), LOCAL per function."""
    out = subprocess.run([tool_path("cuobjdump"), "--dump-resource-usage", cubin_path],
                         capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        if line.strip().startswith("REG:"):
            for tok in line.split():
                k, _, v = tok.partition(":")
                if v.isdigit():
                    res[k.lower()] = int(v)
    return res


@dataclasses.dataclass
class Instr:
    addr: int
    op: str          # full opcode with modifiers, e.g. LDG.E.128
    text: str
    file: Optional[str]
    line: Optional[int]
    #: (file, line) of each frame, innermost first: the source line, then the lines it was inlined at
    #: (``nvdisasm -gi``); just the source line when the cubin has no inlining info
    chain: Tuple[Tuple[str, int], ...] = ()


_INSTR_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL_RE = re.compile(r"^\s*(\.L_x_\d+):")
_LINE_RE = re.compile(r'//## File "([^"]+)", line (\d+)')
_TARGET_RE = re.compile(r"`\((\.L_x_\d+)\)")


def _nvdisasm(cubin_path: str) -> str:
    """``nvdisasm -gi -c``: SASS with line info and the lines each was inlined at (``-g`` where the
    bundled nvdisasm lacks ``-gi``)."""
    for flags in (["-gi"], ["-g"]):
        p = subprocess.run([tool_path("nvdisasm"), *flags, "-c", cubin_path], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout
    raise subprocess.CalledProcessError(p.returncode, p.args, p.stdout, p.stderr)


def parse_sass(out: str) -> Tuple[List[Instr], Dict[str, int]]:
    """Instructions (with their line-info chains) and label -> address of ``nvdisasm -g[i] -c`` output.
    A run of ``//## File`` lines before an instruction is one chain, innermost frame first; an
    instruction without one keeps the chain before it."""
    instrs, labels, pending, cur, frames = [], {}, [], (), []
    for line in out.splitlines():
        m = _LINE_RE.search(line)
        if m:
            frames.append((m.group(1), int(m.group(2))))
            continue
        if frames:
            cur, frames = tuple(frames), []
        m = _LABEL_RE.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR_RE.search(line)
        if m:
            addr = int(m.group(1), 16)
            text = m.group(2).strip()
            body = re.sub(r"^@!?U?P[T\d]+\s+", "", text)
            op = body.split()[0] if body else ""
            f, ln = cur[0] if cur else (None, None)
            instrs.append(Instr(addr, op, text, f, ln, cur))
            for lab in pending:
                labels[lab] = addr
            pending = []
    return instrs, labels


def disassemble(cubin_path: str) -> Tuple[List[Instr], Dict[str, int]]:
    """SASS with line info (:func:`parse_sass` of ``nvdisasm -gi -c``): instructions and label -> address."""
    return parse_sass(_nvdisasm(cubin_path))


@functools.lru_cache(maxsize=None)
def _source_functions(path: str) -> Tuple[Tuple[int, int, str], ...]:
    """(first line, last line, name) of each function defined in a Python source file."""
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError):
        return ()
    return tuple((n.lineno, n.end_lineno, n.name) for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def chain_functions(ins: Instr) -> set:
    """Names of the functions on an instruction's inlining chain (the innermost definition holding
    each frame's line)."""
    return {g for g in (_innermost_function(f, ln) for f, ln in ins.chain) if g}


@functools.lru_cache(maxsize=None)
def _source_references(path: str) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    """(name, names it references) of each function defined in a Python source file: the bare names it reads and
    the attribute names in its body (``_finish(...)``, ``tl.sum(...)``, ``reduce(x, 0, _sum_combine)``), less its
    parameters and the names it assigns (a local ``key`` is not the function ``key``): a superset of its callees
    once the caller keeps those that name a function."""
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError):
        return ()
    out = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local = {a.arg for a in ast.walk(n.args) if isinstance(a, ast.arg)}
            local |= {m.id for m in ast.walk(n) if isinstance(m, ast.Name) and not isinstance(m.ctx, ast.Load)}
            refs = {m.id for m in ast.walk(n) if isinstance(m, ast.Name) and isinstance(m.ctx, ast.Load)} - local
            refs |= {m.attr for m in ast.walk(n) if isinstance(m, ast.Attribute)}
            out.append((n.name, tuple(sorted(refs - {n.name}))))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _innermost_function(f: str, ln: int) -> Optional[str]:
    """The innermost function of source file ``f`` that holds line ``ln`` (None: none does)."""
    best = None
    for lo, hi, name in _source_functions(f):
        if lo <= ln <= hi and (best is None or hi - lo < best[1] - best[0]):
            best = (lo, hi, name)
    return best[2] if best else None


@functools.lru_cache(maxsize=None)
def _call_graph(files: Tuple[str, ...], entry: str):
    """The call graph :func:`infer_chains` walks, from the source files the line info names (one per kernel and
    set of files: the same for every specialization of a kernel): ``(defs, live, below, doms, shared)``, the
    definitions (name -> (file, first line)), the functions ``entry`` reaches, each one's descendants (itself
    included), its dominators (the functions every path from ``entry`` to it passes, itself included) and the
    shared ones (reached from outside their dominators). None where ``entry`` is not among them. Cached and shared by
    every caller: read them, never change them."""
    defs: Dict[str, Tuple[str, int]] = {}
    refs: Dict[str, set] = {}
    for f in files:
        for lo, _hi, name in _source_functions(f):
            defs.setdefault(name, (f, lo))
        for name, rs in _source_references(f):
            refs.setdefault(name, set()).update(rs)
    graph = {name: {r for r in rs if r in defs} for name, rs in refs.items()}

    def reach(src: str, without: Optional[str] = None) -> set:
        seen, todo = set(), [src]
        while todo:
            g = todo.pop()
            if g in seen or g == without:
                continue
            seen.add(g)
            todo.extend(graph.get(g, ()))
        return seen

    if entry not in graph:
        return None
    live = reach(entry)
    below = {g: reach(g) for g in live}                                   # descendants, g included
    cut = {d: reach(entry, without=d) for d in live}                      # what entry reaches without d
    doms = {g: {d for d in live if d == g or g not in cut[d]} for g in live}
    shared = {g for g in live if any(g in below[a] for a in live - doms[g])}
    return defs, live, below, doms, shared


def infer_chains(instrs: List[Instr], entry: str, window: int = 64) -> List[Instr]:
    """Inlining chains completed where the SASS's are cut short: every chain of Triton 3.5.1's cubins (their
    line info names the innermost line only), and under later ones a few instructions whose debug locations LLVM
    merged (code of two inlined call sites: the common scope, not the path). A chain is complete when its
    outermost frame lies in the kernel function ``entry``; the others keep their frames and get the path from
    ``entry`` to their outermost function, from the call graph of the source files the line info names. A
    function that every path from ``entry`` reaches through the same functions (every function that reaches it
    lies on each of those paths) gets them, as ``nvdisasm -gi`` would name them; a shared one (``tl.sum``, a
    function several callers share: the path is ambiguous) takes the path that the nearest instructions within
    ``window`` before and after it show (a complete chain's functions that reach it, or the dominators of a
    function that is not shared and reaches it; inlined code sits in its caller's blocks), only the functions
    both show where both sides show one; with none, its dominators only. Returns new instructions (complete
    chains unchanged)."""
    files = tuple(sorted({f for ins in instrs for f, _ln in ins.chain if f}))
    graph = _call_graph(files, entry)
    if graph is None:
        return list(instrs)
    defs, live, below, doms, shared = graph

    def frames(names) -> Tuple[Tuple[str, int], ...]:
        return tuple(defs[n] for n in sorted(names, key=lambda n: len(doms.get(n, ())), reverse=True))

    outer = [_innermost_function(*ins.chain[-1]) if ins.chain and ins.chain[-1][0] else None for ins in instrs]
    complete = [g == entry for g in outer]

    def path_to(j: int, g: str) -> Optional[set]:
        """The functions instruction ``j`` shows on a path from ``entry`` to ``g`` (None: none)."""
        if complete[j]:
            on = {h for h in chain_functions(instrs[j]) if h in live and g in below[h] and h != g}
            return on or None
        h = outer[j]
        return doms[h] if h in live and h not in shared and g in below[h] and h != g else None

    def nearest(js) -> Optional[set]:
        return next((on for on in (path_to(j, g) for j in js) if on), None)

    out = []
    for i, ins in enumerate(instrs):
        g = outer[i]
        if complete[i] or g not in live:
            out.append(ins)
            continue
        names = doms[g]
        if g in shared:
            before = nearest(range(i - 1, max(-1, i - 1 - window), -1))
            after = nearest(range(i + 1, min(len(instrs), i + 1 + window)))
            sides = [on for on in (before, after) if on]
            if sides:
                names = set.intersection(*sides) | {g}
        known = chain_functions(ins)
        out.append(dataclasses.replace(ins, chain=ins.chain + frames(names - known)))
    return out


def straight_line_by_function(instrs: List[Instr], in_loops: set) -> Dict[str, int]:
    """Per function, the instructions outside ``in_loops`` (indices) whose inlining chain passes through
    it: the straight-line code a row skips when it skips a call of that function (every call site)."""
    counts: Dict[str, int] = {}
    for i, ins in enumerate(instrs):
        if i not in in_loops:
            for fn in chain_functions(ins):
                counts[fn] = counts.get(fn, 0) + 1
    return dict(sorted(counts.items()))


def _base(op: str) -> str:
    return op.split(".")[0]


@functools.lru_cache(maxsize=None)
def _source_loops(path: str) -> Tuple[Tuple[int, int, str, str, str], ...]:
    """Runtime loops of a Python source file: (first line, last line, function, header, step expr).

    ``for`` over ``range(...)`` and ``while``; ``tl.static_range``/``tl.range(..., unroll)`` style
    compile-time loops other than plain ``range`` are unrolled by Triton and are left out.
    """
    try:
        with open(path) as f:
            src = f.read()
        tree = ast.parse(src)
    except (OSError, SyntaxError):
        return ()
    lines = src.splitlines()
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.For) and isinstance(child.iter, ast.Call):
                callee = ast.unparse(child.iter.func)
                if callee in ("range", "tl.range"):
                    a = child.iter.args
                    step = ast.unparse(a[2]) if len(a) >= 3 else "1"
                    found.append((child.lineno, child.end_lineno, f, lines[child.lineno - 1].strip(), step))
            elif isinstance(child, ast.While):
                found.append((child.lineno, child.end_lineno, f, lines[child.lineno - 1].strip(), ""))
            visit(child, f)

    visit(tree, None)
    return tuple(found)


def _attribute(body: List[Instr]) -> Optional[Tuple[str, int, str, str, str]]:
    """The source loop most of ``body``'s instructions come from (innermost loop holding each line)."""
    votes: Dict[tuple, int] = {}
    for ins in body:
        if not ins.file or ins.line is None:
            continue
        best = None
        for lo, hi, fn, header, step in _source_loops(ins.file):
            if lo <= ins.line <= hi and (best is None or hi - lo < best[1] - best[0]):
                best = (lo, hi, fn, header, step)
        if best:
            key = (ins.file, best[0], best[2], best[3], best[4])
            votes[key] = votes.get(key, 0) + 1
    if not votes:
        return None
    return max(votes.items(), key=lambda kv: kv[1])[0]


_BRANCHES = ("BRA", "JMP", "BRX", "JMX")
_UNCONDITIONAL = ("BRA", "BRA.U", "JMP", "CALL.REL.NOINC")


def _is_jump(ins: Instr) -> bool:
    """A control transfer inside the function: BRA/JMP/BRX/JMX, and ``CALL.REL.NOINC`` to a local
    label (ptxas uses it as the exit branch of loops on sm_80: no return address is pushed)."""
    base = _base(ins.op)
    return base in _BRANCHES or (base == "CALL" and ".NOINC" in ins.op and _TARGET_RE.search(ins.text) is not None)


def _predicated(ins: Instr) -> bool:
    return ins.text.startswith("@")


def control_flow(instrs: List[Instr], labels: Dict[str, int]):
    """Basic blocks (instruction index ranges) and their successors."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    targets = {}
    for i, ins in enumerate(instrs):
        if _is_jump(ins):
            m = _TARGET_RE.search(ins.text)
            if m and m.group(1) in labels and labels[m.group(1)] in index:
                targets[i] = index[labels[m.group(1)]]
    leaders = {0} | set(targets.values())
    for i, ins in enumerate(instrs):
        if (_is_jump(ins) or _base(ins.op) in ("EXIT", "RET")) and i + 1 < len(instrs):
            leaders.add(i + 1)
    starts = sorted(leaders)
    blocks = [(s, (starts[k + 1] if k + 1 < len(starts) else len(instrs)) - 1) for k, s in enumerate(starts)]
    block_of = {s: k for k, (s, _) in enumerate(blocks)}
    succ = []
    for k, (s, e) in enumerate(blocks):
        last = instrs[e]
        base = _base(last.op)
        nxt = [k + 1] if k + 1 < len(blocks) else []
        if _is_jump(last):
            t = [block_of[targets[e]]] if e in targets else []
            uncond = not _predicated(last) and last.op in _UNCONDITIONAL
            succ.append(t if uncond else t + nxt)
        elif base in ("EXIT", "RET"):
            succ.append([] if not _predicated(last) else nxt)
        else:
            succ.append(nxt)
    return blocks, succ


def _predecessors(succ: List[List[int]]) -> List[List[int]]:
    """Each block's predecessors, from the successor lists of :func:`control_flow`."""
    pred: List[List[int]] = [[] for _ in succ]
    for u, vs in enumerate(succ):
        for v in vs:
            pred[v].append(u)
    return pred


def _dominators(n: int, succ: List[List[int]]) -> List[set]:
    pred = _predecessors(succ)
    reach, stack = {0}, [0]
    while stack:
        u = stack.pop()
        for v in succ[u]:
            if v not in reach:
                reach.add(v)
                stack.append(v)
    allb = set(reach)
    dom = [set(allb) if b in reach else set() for b in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for b in sorted(reach):
            if b == 0:
                continue
            ps = [dom[p] for p in pred[b] if p in reach]
            new = (set.intersection(*ps) if ps else set()) | {b}
            if new != dom[b]:
                dom[b], changed = new, True
    return dom


def divergence_fallbacks(instrs: List[Instr], labels: Dict[str, int]) -> set:
    """Indices of the instructions only a diverged warp runs: the blocks that the target of a ``BRA.DIV``
    dominates, when that branch is the target's only way in. ptxas puts a ``BRA.DIV`` before a warp-collective
    (``SHFL``, ``VOTE``, ``REDUX``) it cannot prove converged, and the target block redoes the collective for
    the active threads (``WARPSYNC`` ... ``ENDCOLLECTIVE``) before it jumps back. Triton's control flow is
    uniform per program (a masked lane is predicated, never branched around), so every warp reaches its
    collectives converged and never takes these blocks: the counts of what a warp runs leave them out."""
    blocks, succ = control_flow(instrs, labels)
    n = len(blocks)
    pred = _predecessors(succ)
    dom = _dominators(n, succ)
    out: set = set()
    for u, (_s, e) in enumerate(blocks):
        if instrs[e].op != "BRA.DIV":
            continue
        for t in succ[u]:
            if t != u + 1 and pred[t] == [u]:       # the taken edge, the target's only predecessor
                out.update(i for b in range(n) if t in dom[b] for i in range(blocks[b][0], blocks[b][1] + 1))
    return out


def sass_loops(instrs: List[Instr], labels: Dict[str, int],
               top_level: Optional[set] = None, fallback: Optional[set] = None) -> List[Dict[str, Any]]:
    """Every natural loop of the SASS control-flow graph (a back edge: a branch to a block that
    dominates it; out-of-line blocks that jump back are not loops).

    Per loop (all loops with the same head merged): ``instructions`` (static count of the body's
    instructions: every path of the body, each once), ``instructions_excl`` (without the loops
    nested in it and without ``fallback``, the indices of :func:`divergence_fallbacks`: every path a
    converged warp can take; ``fallback_instructions``: the body's in ``fallback``, its nested loops' included),
    ``instructions_min_path`` and ``mufu_min_path`` (innermost loops: the fewest instructions an iteration can
    execute, the shortest path from the head to a back edge, and its MUFU operations; a typical iteration only where the
    blocks off that path are rare, such as a partial tile's mask or a lazy rescale: an if/else on a
    common path takes its shorter arm), ``off_min_path`` (innermost loops: what that iteration skips,
    its instruction count, op classes and source lines), ``depth``, ``innermost``, local-memory ops
    (``STL``/``LDL``; ``*_excl`` without nested loops), ``head`` (its head's address) and ``parent``
    (the head of the loop just around it, or None; ``start`` / ``end``, its lowest and highest
    addresses, do not tell nesting: loops' blocks interleave), a few opcode classes, and the source
    loop most of its instructions come from. ``top_level``, when given, gets the indices of the
    instructions in top-level loops.
    """
    if not instrs:
        return []
    blocks, succ = control_flow(instrs, labels)
    n = len(blocks)
    dom = _dominators(n, succ)
    pred = _predecessors(succ)
    never = fallback or set()
    bodies: Dict[int, set] = {}
    for u in range(n):
        for h in succ[u]:
            if h in dom[u]:  # back edge u -> h
                body = bodies.setdefault(h, {h})
                stack = [u] if u not in body else []
                body.add(u)
                while stack:
                    x = stack.pop()
                    for p in pred[x]:
                        if p not in body:
                            body.add(p)
                            stack.append(p)
    loops = [{"head": h, "blocks": b} for h, b in sorted(bodies.items())]

    def min_path(h: int, body: set) -> List[int]:
        # the blocks of the shortest head -> latch path, weighted by block sizes (Dijkstra; edges back
        # to the head cut)
        size = {b: blocks[b][1] - blocks[b][0] + 1 for b in body}
        best, via, todo = {h: size[h]}, {h: None}, [(size[h], h)]
        while todo:
            d, b = heapq.heappop(todo)
            if d > best[b]:
                continue
            for v in succ[b]:   # (not through a divergence fallback: a converged warp never runs one)
                if v in body and v != h and blocks[v][0] not in never and d + size[v] < best.get(v, 1 << 30):
                    best[v], via[v] = d + size[v], b
                    heapq.heappush(todo, (best[v], v))
        b = min((b for b in body if h in succ[b] and b in best), key=lambda b: (best[b], b))
        path = []
        while b is not None:
            path.append(b)
            b = via[b]
        return path[::-1]

    def off_path(body: set, path: List[int]) -> Dict[str, Any]:
        # what an iteration on the shortest path skips: its instructions, op classes and source lines
        skipped = [instrs[i] for b in sorted(body - set(path)) for i in range(blocks[b][0], blocks[b][1] + 1)
                   if i not in never]
        ops: Dict[str, int] = {}
        for ins in skipped:
            ops[_base(ins.op)] = ops.get(_base(ins.op), 0) + 1
        return {"instructions": len(skipped), "ops": dict(sorted(ops.items())),
                "lines": sorted({ins.line for ins in skipped if ins.line is not None})}

    out = []
    for lp in loops:
        children = [o for o in loops if o is not lp and o["blocks"] < lp["blocks"]]
        path = None if children else min_path(lp["head"], lp["blocks"])
        parents = [o for o in loops if o is not lp and lp["blocks"] < o["blocks"]]
        idx = sorted(i for b in lp["blocks"] for i in range(blocks[b][0], blocks[b][1] + 1))
        nested = {i for c in children for b in c["blocks"] for i in range(blocks[b][0], blocks[b][1] + 1)}
        body = [instrs[i] for i in idx]
        body_x = [instrs[i] for i in idx if i not in nested and i not in never]
        ops = [_base(i.op) for i in body]
        ops_x = [_base(i.op) for i in body_x]
        src = _attribute(body_x)
        if top_level is not None and not parents:
            top_level.update(idx)
        parent = min(parents, key=lambda o: len(o["blocks"]), default=None)
        out.append({
            "start": f"0x{instrs[idx[0]].addr:04x}", "end": f"0x{instrs[idx[-1]].addr:04x}",
            "head": f"0x{instrs[blocks[lp['head']][0]].addr:04x}",
            "parent": None if parent is None else f"0x{instrs[blocks[parent['head']][0]].addr:04x}",
            "instructions": len(body), "instructions_excl": len(body_x),
            "fallback_instructions": sum(i in never for i in idx),
            "instructions_min_path": None if path is None else sum(blocks[b][1] - blocks[b][0] + 1 for b in path),
            "off_min_path": None if path is None else off_path(lp["blocks"], path),
            "depth": len(parents), "innermost": not children,
            "stl": ops.count("STL"), "ldl": ops.count("LDL"),
            "stl_excl": ops_x.count("STL"), "ldl_excl": ops_x.count("LDL"),
            # global loads into registers (``ldg``), into shared memory (``ldgsts``: a pipelined loop's copies), and
            # the forms of both (``ldg_ops``)
            "ldg": ops_x.count("LDG"), "ldgsts": ops_x.count("LDGSTS"),
            "ldg_ops": sorted({i.op for i in body_x if _base(i.op) in ("LDG", "LDGSTS")}),
            "mufu": ops_x.count("MUFU"),
            # (innermost loops) the MUFU operations of the shortest iteration (``instructions_min_path``'s)
            "mufu_min_path": None if path is None else sum(
                _base(instrs[i].op) == "MUFU" for b in path for i in range(blocks[b][0], blocks[b][1] + 1)
                if i not in never),
            "mma": sum(o in ("HMMA", "IMMA", "HGMMA", "WGMMA", "DMMA") for o in ops_x),
            "ffma": sum(o in ("FFMA", "FMUL", "FADD") for o in ops_x),
            "bar": ops_x.count("BAR"), "shfl": ops_x.count("SHFL"),
            "source": None if src is None else {"file": os.path.basename(src[0]), "line": src[1],
                                                 "function": src[2], "header": src[3], "step": src[4]},
            "induction_adds": None if src is None else induction_adds(body_x, src[1]),
            "address_offsets": address_offsets(body_x),
        })
    return out


_ADD_OPS = ("VIADD", "IADD3", "IADD")
_IMM_RE = re.compile(r"^-?0x[0-9a-fA-F]+$|^-?\d+$")
#: a predicate operand other than PT (``P0``, ``!P1``, ``UP0``): an add's carry in or out, half of a 64-bit add
_CARRY_RE = re.compile(r"!?U?P\d+")


def induction_adds(body: List[Instr], line: int) -> Dict[str, List[int]]:
    """The integer adds of a loop body that can step its source loop's induction variable: ``self``,
    the immediates of adds of a register to itself on the source loop's header ``line``; ``offset``,
    the immediates added to one of those registers (with another register or not) into another one
    anywhere in the body (the copies of an unrolled body: ``start + step``, ``start + lane + 2 step``,
    ...), or to a register that holds one of them plus a lane offset (``IMAD R23, R3, 0x2, R24``, then
    ``R23 + step``: the copies of an unrolled body with aligned loads). See :func:`unroll_factor`."""
    def parse(ins):
        ops = _operands(ins)
        if ops is None:   # predicated: not every iteration's step
            return None
        if any(_CARRY_RE.fullmatch(o) for o in ops):  # half of a 64-bit (pointer) add
            return None
        ops = [o for o in ops if o not in ("RZ", "PT")]
        if not all(re.fullmatch(r"R\d+", o) or _IMM_RE.match(o) for o in ops):   # negated, uniform, constant bank
            return None
        imms = [_s32(int(o, 0)) for o in ops[1:] if _IMM_RE.match(o)]
        regs = [o for o in ops[1:] if o.startswith("R")]
        return (ops[0], regs, imms) if len(imms) == 1 and ops[0].startswith("R") else None

    adds = [(ins, parse(ins)) for ins in body if _base(ins.op) in _ADD_OPS]
    adds = [(ins, a) for ins, a in adds if a]
    self_regs = {a[0]: a[2][0] for ins, a in adds if ins.line == line and a[1] == [a[0]]}
    # start + lane: an IMAD or a LEA whose addend is a self register (``IMAD R23, R3, 0x2, R24``,
    # ``LEA R23, R3, R24, 0x1``), or a register-only add of one (``IADD3 R15, R2, R29, RZ``,
    # ``IMAD.IADD R15, R2, 0x1, R29``)
    lanes = set()
    for ins in body:
        ops = _operands(ins) if _base(ins.op) in ("IMAD", "IADD3", "IADD", "LEA") else None
        if ops is None:
            continue
        if any(_CARRY_RE.fullmatch(o) for o in ops[1:]):   # half of a 64-bit add
            continue
        srcs = [o for o in ops[1:] if o not in ("RZ", "PT")]
        if ins.op == "IMAD.IADD" and len(ops) == 4 and ops[2] == "0x1":
            srcs = [ops[1], ops[3]]
        if ins.op == "IMAD" and len(ops) == 4 and ops[3] in self_regs:
            lanes.add(ops[0])
        elif ins.op == "LEA" and len(ops) == 4 and ops[2] in self_regs and _IMM_RE.match(ops[3]):
            lanes.add(ops[0])
        elif ins.op in ("IMAD.IADD", "IADD3", "IADD") and all(re.fullmatch(r"R\d+", o) for o in srcs) \
                and any(o in self_regs for o in srcs):
            lanes.add(ops[0])
    bases = set(self_regs) | lanes
    offsets = sorted({a[2][0] for _ins, a in adds if a[0] not in self_regs and any(r in bases for r in a[1])})
    return {"self": sorted(set(self_regs.values())), "offset": offsets}


_ADDRESS_RE = re.compile(r"\[(R\d+)(?:\.64)?(?:\+(-?0x[0-9a-fA-F]+))?\]")


_WIDTH = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}


def address_offsets(body: List[Instr]) -> Dict[str, List[List[int]]]:
    """The global loads and stores of a loop body per address register, as ``[byte offset, bytes per thread]``
    (``LDG.E.64 R38, desc[UR14][R28.64+0x400]``: ``R28``, ``[1024, 8]``; no offset: 0; a plain ``LDG.E``: 4
    bytes). A loop that steps pointers instead of an index (the loads' pointers loop-carried, ``p += STEP``)
    addresses the copies of an unrolled body this way, one register and ``j x step x element size`` bytes from it
    (:func:`unroll_factor`)."""
    out: Dict[str, List[List[int]]] = {}
    for ins in body:
        if _base(ins.op) not in ("LDG", "STG"):
            continue
        m = _ADDRESS_RE.search(ins.text)
        if m:
            width = next((_WIDTH[p] for p in ins.op.split(".")[1:] if p in _WIDTH), 4)
            out.setdefault(m.group(1), []).append([_s32(int(m.group(2), 0)) if m.group(2) else 0, width])
    return {r: sorted(v) for r, v in sorted(out.items())}


def _pointer_copies(accesses: List[List[int]], u: int, step: int, threads: int) -> bool:
    """Whether one register's accesses (:func:`address_offsets`) can be ``u`` copies of one tile of ``step``
    elements: for an element size ``e`` of 1, 2, 4 or 8, copy ``j`` holds the accesses at ``[j K, (j + 1) K)``, ``K =
    step x e`` bytes, all the same offsets from ``j K`` and widths, and one copy moves a thread's share of the tile,
    ``step x e / threads`` bytes. Necessary, not sufficient: one tile of ``v`` vectors per thread has the offsets and
    the shares of ``v`` copies of a tile of ``e / v``-byte elements, so the header's index add (``u x step``,
    :func:`unroll_factor`) decides, as for an index-stepped loop; the addresses only show that its copies exist."""
    for e in (1, 2, 4, 8):
        k = step * e
        copies = [sorted([o - j * k, w] for o, w in accesses if j * k <= o < (j + 1) * k) for j in range(u)]
        if (sum(map(len, copies)) == len(accesses) and copies[0] and all(c == copies[0] for c in copies)
                and sum(w for _o, w in copies[0]) * threads == k):
            return True
    return False


def _operands(ins: Instr) -> Optional[List[str]]:
    """An unpredicated instruction's operands, destination first (``.reuse`` flags dropped); None for a
    predicated one or one without operands."""
    text = ins.text.strip()
    if text.startswith("@") or " " not in text:
        return None
    return [o.strip().replace(".reuse", "") for o in text.split(None, 1)[1].split(",")]


def _s32(v: int) -> int:
    """An immediate as a signed 32-bit value (SASS prints some as unsigned)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def unroll_factor(adds: Optional[Dict[str, List[int]]], step: Optional[int], loads: Optional[int] = None,
                  addresses: Optional[Dict[str, List[List[int]]]] = None, threads: Optional[int] = None) -> int:
    """How many source iterations one SASS iteration of a loop runs (LLVM unrolls small loops with a
    runtime trip count, 4x for the candidate buffer's scans): the largest ``u`` such that the header
    line adds ``u x step`` to a register, the copies of the body sit at ``step, 2 step, ..., (u - 1) step``
    from it and, when given, the body's global ``loads`` split into u equal copies; 1 otherwise. The
    copies: the body adds those offsets to that register (an index-stepped loop), or (``addresses``,
    :func:`address_offsets`, and the program's ``threads``) one register addresses u equal copies of a tile at
    ``j x step x e`` bytes (a pointer-stepped loop, :func:`_pointer_copies`). A 64-bit pointer stepped in bytes
    carries into its high half and is not counted as the step (:func:`induction_adds`)."""
    if not adds or not step:
        return 1
    best = 1
    for imm in adds["self"]:
        u = imm // step
        if imm % step or u < 2 or (loads is not None and loads % u):
            continue
        copies = all(j * step in adds["offset"] for j in range(1, u))
        copies = copies or bool(threads and any(_pointer_copies(acc, u, step, threads)
                                                for acc in (addresses or {}).values()))
        if copies:
            best = max(best, u)
    return best


def loop_unroll(lp: Dict[str, Any], step: Optional[int], threads: Optional[int] = None) -> int:
    """:func:`unroll_factor` of a SASS loop (``induction_adds``, ``ldg``, ``address_offsets``) whose source loop
    steps by ``step``, in a program of ``threads`` threads; 1 for a loop that holds another: LLVM unrolls
    innermost loops, and a loop around one holds the unrolled loop's remainder, whose copies' adds would read as
    an unrolled body. The loads it checks the factor against are the register loads (``ldg``); a pipelined loop's
    copies into shared memory (``ldgsts``) are not counted, so there the induction adds alone decide."""
    if not lp.get("innermost"):
        return 1
    return unroll_factor(lp.get("induction_adds"), step, lp.get("ldg"), lp.get("address_offsets"), threads)


def _eval_step(step: str, consts: Dict[str, Any]) -> Optional[int]:
    if not step:
        return None
    try:
        v = eval(compile(ast.parse(step, mode="eval"), "<step>", "eval"), {"__builtins__": {}}, dict(consts))
        return int(v) if isinstance(v, (int, float)) and v > 0 else None
    except Exception:
        return None


# per-SM limits used for the occupancy (CTAs per SM): CUDA occupancy calculator values
SM_LIMITS = {
    90: dict(regs=65536, smem=233472, smem_per_cta=232448, warps=64, ctas=32, reserved_smem=1024),
    80: dict(regs=65536, smem=167936, smem_per_cta=166912, warps=64, ctas=32, reserved_smem=1024),
}


def ctas_per_sm(arch: int, registers: int, num_warps: int, shared: int) -> Dict[str, int]:
    """Resident CTAs per SM and the limiting resource (registers allocated per warp in units of 256,
    warps per SM sub-partition limited by its 16384 registers; 1 KB shared memory reserved per CTA)."""
    lim = SM_LIMITS[arch]
    regs_warp = max(256, math.ceil(max(registers, 1) * 32 / 256) * 256)
    warps_by_regs = 4 * ((lim["regs"] // 4) // regs_warp)
    by = {"warps": lim["warps"] // num_warps, "registers": warps_by_regs // num_warps, "ctas": lim["ctas"],
          "shared": lim["smem"] // (shared + lim["reserved_smem"]) if shared + lim["reserved_smem"] else lim["ctas"]}
    n = min(by.values())
    return {"ctas_per_sm": n, "limited_by": min(by, key=by.get), "warps_per_sm": n * num_warps}


def spill_in_hot_loop(ptxas: Dict[str, int], loops: List[Dict[str, Any]]) -> bool:
    """The CI rule: ptxas reports spill stores or loads (> 0 bytes) AND some SASS loop body holds an
    STL or LDL. Spills only outside loops, and local memory that is not a spill, pass."""
    spilled = ptxas.get("spill_store_bytes", 0) + ptxas.get("spill_load_bytes", 0)
    return spilled > 0 and any(lp["stl"] + lp["ldl"] > 0 for lp in loops)


def compile_spec(launch: Launch, arch: int, workdir: Optional[str] = None) -> Dict[str, Any]:
    """Compile one launch's specialization for ``sm_<arch>`` and read its binary."""
    import triton
    from triton.backends.nvidia.compiler import sm_arch_from_capability
    from triton.compiler import ASTSource

    from triton import knobs

    b = bind(launch, arch)
    t0 = time.perf_counter()
    # Triton's make_cubin runs ptxas -v and prints its log when asked: capture it (no second ptxas run)
    buf = io.StringIO()
    with knobs.nvidia.scope():
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(buf):
            ck = triton.compile(ASTSource(launch.kernel, b.signature, b.constexprs, b.attrs), target=b.target,
                                options=b.options.__dict__)
    t_compile = time.perf_counter() - t0
    log = buf.getvalue()
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="gpu_static_")
    try:
        cubin = os.path.join(workdir, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(ck.asm["cubin"])
        sm_name = sm_arch_from_capability(arch)
        if "Used" in log and "registers" in log:  # compiled now: Triton's own ptxas -v log
            px = parse_ptxas_log(log)
            px["log"] = log.strip()
        else:  # a cache hit: run ptxas -v on the same PTX with Triton's flags (checked: the same cubin)
            px = ptxas_stats(ck.asm["ptx"], arch, sm_name, bool(getattr(b.options, "enable_fp_fusion", True)),
                             workdir, expect_cubin=ck.asm["cubin"])
        ru = resource_usage(cubin)
        instrs, labels = disassemble(cubin)
        in_loops: set = set()
        fallback = divergence_fallbacks(instrs, labels)
        loops = sass_loops(instrs, labels, in_loops, fallback)
    finally:
        if own_dir:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)
    md = ck.metadata
    num_warps = int(md.num_warps)
    shared = int(getattr(md, "shared", 0) or 0) + int(ru.get("shared", 0))
    consts = constexpr_values(b)
    for lp in loops:
        # tokens per iteration: a loop stepping by a tile size (not a literal: stage 2 walks pairs)
        src_step = lp["source"]["step"] if lp["source"] else ""
        step = None if src_step.strip().isdigit() else _eval_step(src_step, consts)
        lp["unroll"] = loop_unroll(lp, step, 32 * num_warps)
        step = step * lp["unroll"] if step else step
        lp["tokens_per_iter"] = step
        lp["warp_instr_per_iter"] = lp["instructions_excl"] * num_warps
        lp["thread_instr_per_token"] = (round(lp["instructions_excl"] * 32 * num_warps / step, 2)
                                        if step else None)
        lp["thread_instr_per_token_min_path"] = (round(lp["instructions_min_path"] * 32 * num_warps / step, 2)
                                                 if step and lp.get("instructions_min_path") is not None else None)
    ops = [_base(i.op) for i in instrs]
    inline = any(len(i.chain) > 1 for i in instrs)   # Triton 3.5.1's cubins: the innermost line only (infer_chains)
    vec_loads = sorted({i.op for i in instrs if _base(i.op) == "LDG"})
    hot_spill = spill_in_hot_loop(px, loops)
    return {
        "arch": f"sm_{arch}", "ptxas_arch": sm_name, "compile_s": round(t_compile, 2),
        "num_warps": num_warps, "num_stages": int(getattr(md, "num_stages", 0) or 0),
        "registers": px["registers"], "registers_cuobjdump": ru.get("reg"),
        "spill_store_bytes": px["spill_store_bytes"], "spill_load_bytes": px["spill_load_bytes"],
        "stack_bytes": px["stack_bytes"], "local_bytes": ru.get("local", 0),
        "shared_bytes": shared, "shared_dynamic_bytes": int(getattr(md, "shared", 0) or 0),
        **ctas_per_sm(arch, px["registers"], num_warps, shared),
        "sass_instructions": len(instrs), "stl": ops.count("STL"), "ldl": ops.count("LDL"),
        # the divergence fallbacks outside the loops (:func:`divergence_fallbacks`; the loops' own are out of
        # their ``instructions_excl``): not straight-line code a warp runs
        "fallback_instructions_outside_loops": len(fallback - in_loops),
        "global_load_ops": vec_loads,
        "spill_in_loop": hot_spill,
        "loops": loops,
        "inline_info": inline,
        "straight_line_by_function": straight_line_by_function(infer_chains(instrs, launch.kernel.fn.__name__),
                                                               in_loops | fallback),
        "ptxas_log": px["log"],
    }
