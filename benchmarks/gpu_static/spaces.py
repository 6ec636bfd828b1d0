"""The parameter space the wrappers are driven over to discover their launches.

Each case calls the package's public entry points (``tts_kernels.sample(..., backend="triton")``,
``tts_kernels.tree_attention(..., backend="triton")``) on small CPU tensors inside
:func:`aot.recording`, so whatever kernels the wrappers launch, with whatever constexprs,
divisibility and options they choose, are what gets compiled. Only the inputs are chosen
here, never the kernels' specialization parameters.

What changes a specialization (triton 3.5-3.9): a tensor's dtype and 16-byte alignment; an int
argument equal to 1 (constexpr), divisible by 16, or neither, unless the kernel lists it in
``do_not_specialize`` (the sampler's budget token counts, the tree-attention plan's sizes); and
every constexpr the wrapper derives (tile sizes from V, D, groups, N, ...). The sets below cover
these for the inputs a user can give:

* sampler: logits dtype fp32/bf16/fp16; vocabularies 32000 (Llama-2, divisible by 16), 50257
  (GPT-2, odd; also in rows padded to 50272, which align the row starts), 29 (the embedded tiny model: a small tile), and in ``full`` 151936/128256
  (Qwen/Llama-3: same class as 32000, deduplicated); budget off, end-only (one end id), wait +
  end, end + answer prefix, and multi-token wait/end/answer (one specialization with a budget
  since the token counts are not specialised on; kept as cases so that a kernel change that
  specialises again is compiled and seen); the filter mix (greedy, plain,
  top-k, top-p, min-p) is runtime data, one call each for good measure.
* tree attention: q/KV dtype fp32/bf16/fp16; (Hq, Hkv, D) of Llama-3-8B (32, 8, 128),
  Qwen2.5-0.5B (14, 2, 64), a GQA-8 (8, 1, 128), MHA (8, 8, 64), D=256 (8, 4, 256) and the
  embedded model (4, 2, 32); plans from a narrow one (one row per chunk) to the widest
  (rows per chunk >= the tile cap), and every width in between for the Llama-3 shape (the
  256-row tile follows the batch's N); block size 16, plus 1, 6 (not a power of two) and 8 and
  a block table whose width is a multiple of 16 on the Llama-3 shape. The check records every
  case once per target arch: the tiles follow the compute capability.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Tuple

import torch

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
DTYPES = {"fp32": F32, "bf16": BF16, "fp16": F16}

# ----------------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------------
#: (name, wait_ids, end_think_ids, answer_prefix_ids)
BUDGETS = [
    ("none", None, None, None),
    ("end-only", (), (7,), ()),
    ("wait+end", (9,), (7,), ()),
    ("end+answer", (), (7,), (3, 4)),
    ("multi", (9, 10), (7, 8, 11), (3, 4, 5, 6)),
]
FILTERS = {
    "greedy": dict(temperature=0.0),
    "temp": dict(temperature=0.8),
    "top_k": dict(temperature=0.8, top_k=5),
    "top_p": dict(temperature=0.8, top_p=0.9),
    "min_p": dict(temperature=0.8, min_p=0.05),
    "topk_topp_minp": dict(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05),
}


def _sample_call(dtype, B, V, budget, filters, padded=False) -> None:
    """One ``tk.sample(..., backend="triton")`` call on zero logits with a budget variant of BUDGETS;
    ``padded``: the rows of a ``[B, V rounded up to 16]`` buffer (aligned row starts for any V)."""
    import tts_kernels as tk
    from tts_kernels.sampling.budget import BudgetForcing

    _, wait, end, ans = budget
    state = None
    if wait is not None:
        state = BudgetForcing(end_think_ids=end, wait_ids=wait, answer_prefix_ids=ans).init_state(
            B, min_tokens=2, max_tokens=8)
    vpad = (V + 15) // 16 * 16 if padded else V
    logits = torch.zeros(B, vpad, dtype=dtype)[:, :V]
    tk.sample(logits, seed=1, offset=0, budget=state, check_nan=False, validate=False,
              backend="triton", **filters)


def sampler_cases(level: str) -> Iterator[Tuple[str, Callable[[], None]]]:

    if level == "quick":
        grid = [("fp32", 32000, "none", ("temp",)), ("bf16", 50257, "end-only", ("topk_topp_minp",))]
    else:
        vocabs = (32000, 50257, 29, 128256, 151936)
        grid = [(d, v, b[0], tuple(FILTERS)) for d in DTYPES for v in vocabs for b in BUDGETS]
        # the odd vocabulary in padded rows (aligned row starts): no budget and the widest budget variant
        grid += [(d, -50257, b, ("temp",)) for d in DTYPES for b in ("none", "multi")]
    budgets = {b[0]: b for b in BUDGETS}
    for dname, V, bname, filters in grid:
        for fname in filters:
            def case(dname=dname, V=V, bname=bname, fname=fname):   # V < 0: |V| in padded rows
                _sample_call(DTYPES[dname], 4, abs(V), budgets[bname], FILTERS[fname], padded=V < 0)
            yield f"sample {dname} V={abs(V)}{' padded' if V < 0 else ''} budget={bname} {fname}", case


#: SMs of the GPU the split-row path is sized for when recording on a CPU (H100 SXM)
SPLIT_ROW_SMS = 132


def split_row_cases(level: str) -> Iterator[Tuple[str, Callable[[], None]]]:
    """Small batches take the split-row path on a GPU (``_partial_kernel`` + ``_merge_kernel``); on a
    CPU the wrapper picks one program per row, so the slice count is the one an H100 would get."""
    from tts_kernels.sampling import triton_kernel as tkm

    budgets = {b[0]: b for b in BUDGETS}
    if level == "quick":
        grid = [("fp32", 32000, 1, "none", ("temp",))]
    else:
        # the filters are runtime data (one call is enough); V: divisible by 16 or odd; B: 1 (a constexpr
        # specialization) or not
        grid = [(d, V, B, b, ("topk_topp_minp",)) for d in DTYPES for V in (32000, 50257) for B in (1, 32)
                for b in budgets]
    for dname, V, B, bname, filters in grid:
        for fname in filters:
            def case(dname=dname, V=V, B=B, bname=bname, fname=fname):
                saved = tkm._num_slices
                tkm._num_slices = lambda b, v, device: tkm.slices_for(b, v, SPLIT_ROW_SMS)
                try:
                    _sample_call(DTYPES[dname], B, V, budgets[bname], FILTERS[fname])
                finally:
                    tkm._num_slices = saved
            yield f"sample split-row {dname} B={B} V={V} budget={bname} {fname}", case


# ----------------------------------------------------------------------------------------------
# tree attention
# ----------------------------------------------------------------------------------------------
HEADS = {  # name -> (Hq, Hkv, D)
    "llama3-8b": (32, 8, 128),
    "qwen2.5-0.5b": (14, 2, 64),
    "gqa8": (8, 1, 128),
    "mha": (8, 8, 64),
    "d256": (8, 4, 256),
    "tiny-arith": (4, 2, 32),
}


def attention_inputs(N, prefix, suffix, hq, hkv, D, dtype, bs=16, table_pad=0, sharing=True, chunk_size=None):
    """N rows sharing ``prefix`` tokens (one set of blocks), each with ``suffix`` own tokens; KV left
    uninitialised (never read: the launch is recorded, not run). Returns (q, k, v, bt, sl, plan)."""
    from tts_kernels.attention.planner import plan_tree_attention

    pb = -(-prefix // bs) if prefix else 0
    sb = -(-suffix // bs)
    nb = pb + N * sb
    k = torch.empty(nb, bs, hkv, D, dtype=dtype)
    v = torch.empty(nb, bs, hkv, D, dtype=dtype)
    shared = torch.arange(pb, dtype=torch.int32).repeat(N, 1)
    own = pb + torch.arange(N * sb, dtype=torch.int32).view(N, sb)
    bt = torch.cat([shared, own], 1)
    if table_pad:
        bt = torch.cat([bt, torch.zeros(N, table_pad, dtype=torch.int32)], 1)
    sl = torch.full((N,), prefix + suffix, dtype=torch.int32)
    q = torch.zeros(N, hq, D, dtype=dtype)
    plan = plan_tree_attention(bt, sl, bs, sharing=sharing, chunk_size=chunk_size)
    return q, k, v, bt, sl, plan


def _widths(cap_rows: int) -> List[int]:
    out, n = [], 1
    while n <= cap_rows:
        out.append(n)
        n *= 2
    return out


def attention_cases(level: str) -> Iterator[Tuple[str, Callable[[], None]]]:
    import tts_kernels as tk

    def mk(name, N, prefix, suffix, heads, dname, **kw):
        hq, hkv, D = HEADS[heads]

        def case():
            q, k, v, bt, sl, plan = attention_inputs(N, prefix, suffix, hq, hkv, D, DTYPES[dname], **kw)
            tk.tree_attention(q, k, v, bt, sl, plan=plan, validate=False, backend="triton")
        return f"tree_attention {dname} {heads} N={N} prefix={prefix} suffix={suffix} {kw or ''}".strip(), case

    if level == "quick":  # 16 rows of 2 heads: the shared prefix in the wide launch, the rest narrow
        yield mk("", 16, 32, 16, "tiny-arith", "bf16")
        return
    for dname in DTYPES:
        for heads in HEADS:
            # narrow (sharing off: one row per chunk) and the widest tile (128 rows share a prefix)
            yield mk("", 4, 32, 16, heads, dname, sharing=False)
            yield mk("", 128, 64, 16, heads, dname)
        for n in _widths(64)[1:-1]:  # every tile width between, on the Llama-3 shape
            yield mk("", n, 64, 16, "llama3-8b", dname)
    # block sizes and a block table width that is a multiple of 16 (int specialisations)
    yield mk("", 4, 32, 16, "llama3-8b", "bf16", bs=1)
    yield mk("", 4, 32, 16, "llama3-8b", "bf16", bs=8)
    yield mk("", 4, 36, 18, "llama3-8b", "bf16", bs=6)  # not a power of two: a block id per token
    yield mk("", 4, 32, 16, "llama3-8b", "bf16", table_pad=13)


def benchmark_cases(level: str) -> Iterator[Tuple[str, Callable[[], None]]]:
    """The cost model's benchmark shapes (cost_model.SAMPLER_SHAPES / ATTENTION_SHAPES, every plan of
    cost_model.ATTENTION_PLANS), launched as an H100 would launch them (the sampler's slice count for
    132 SMs), so that the specializations the model looks up are compiled exactly (e.g. the block table
    of N=256 rows over 8192 + 512 tokens is 544 wide, a multiple of 16). Inputs are uninitialised."""
    import tts_kernels as tk
    from tts_kernels.attention.planner import plan_tree_attention
    from tts_kernels.sampling import triton_kernel as tkm
    from . import cost_model as cm

    for stages, shapes, _ in cm.sampler_variants(level == "quick"):   # pass 1 as launched, and at the other depth
        for dname, V, B in ((d, v, b) for d in shapes["dtypes"] for v in shapes["V"] for b in shapes["B"]):
            def case(B=B, V=V, dname=dname, stages=stages):
                saved = tkm._num_slices
                tkm._num_slices = lambda b, v, device: tkm.slices_for(b, v, cm.H100["sms"])
                try:
                    with cm.pass1_stages(stages):
                        tk.sample(torch.empty(B, V, dtype=DTYPES[dname]), temperature=0.8, seed=1, offset=0,
                                  check_nan=False, validate=False, backend="triton")
                finally:
                    tkm._num_slices = saved
            yield f"benchmark sample {dname} B={B} V={V} stages={stages}", case
    for (N, prefix, suffix, heads, dname) in ([] if level == "quick" else cm.ATTENTION_SHAPES):
        for pname, pkw in cm.ATTENTION_PLANS.items():
            def case(N=N, prefix=prefix, suffix=suffix, heads=heads, dname=dname, pkw=pkw):
                hq, hkv, D = HEADS[heads]
                q, k, v, bt, sl, plan = attention_inputs(N, prefix, suffix, hq, hkv, D, DTYPES[dname])
                pkw = cm.plan_kwargs_for(pkw, N, hq, k)
                if pkw:
                    plan = plan_tree_attention(bt, sl, int(k.shape[1]), **pkw)
                tk.tree_attention(q, k, v, bt, sl, plan=plan, validate=False, backend="triton")
            yield f"benchmark tree_attention {dname} {heads} N={N} prefix={prefix} suffix={suffix} plan={pname}", case


def all_cases(level: str):
    yield from sampler_cases(level)
    yield from split_row_cases(level)
    yield from attention_cases(level)
    yield from benchmark_cases(level)
