"""Triton device functions of the sampler's random stream and its fast math (used by ``triton_kernel.py``).

``_philox4`` and ``_uniform`` reproduce ``philox.py`` exactly; ``_exp2`` is pass 1's hardware ex2
on a GPU when ``FAST_LOG`` (the exact function otherwise, e.g. in Triton's CPU interpreter).
"""
import triton
import triton.language as tl


@triton.jit
def _philox4(ctr, c1, c2, k0, k1, STREAM: tl.constexpr = 0):
    """Philox4x32-10 of the counters ``(ctr, c1, c2, STREAM)`` under key ``(k0, k1)``: four uint32
    words (stream 0: per-token noise, 1: per-group noise; philox.py)."""
    m0 = tl.full([], 0xD2511F53, tl.uint32)
    m1 = tl.full([], 0xCD9E8D57, tl.uint32)
    w0 = tl.full([], 0x9E3779B9, tl.uint32)
    w1 = tl.full([], 0xBB67AE85, tl.uint32)
    x0 = ctr
    x1 = tl.zeros_like(ctr) + c1
    x2 = tl.zeros_like(ctr) + c2
    x3 = tl.zeros_like(ctr) + STREAM
    a = k0
    b = k1
    for _ in tl.static_range(10):
        p0 = x0.to(tl.uint64) * m0.to(tl.uint64)    # mul.wide.u32: hi and lo in one IMAD.WIDE
        p1 = x2.to(tl.uint64) * m1.to(tl.uint64)
        hi0 = (p0 >> 32).to(tl.uint32)
        lo0 = p0.to(tl.uint32)
        hi1 = (p1 >> 32).to(tl.uint32)
        lo1 = p1.to(tl.uint32)
        x0 = hi1 ^ x1 ^ a
        x1 = lo1
        x2 = hi0 ^ x3 ^ b
        x3 = lo0
        a = a + w0
        b = b + w1
    return x0, x1, x2, x3


@triton.jit
def _uniform(w):
    return ((w >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08  # 2**-24, exact


@triton.jit
def _exp2(x, FAST_LOG: tl.constexpr):
    """2**x; on a GPU one MUFU.EX2 flushing results below 2**-126 to 0 (sum-exp terms only)."""
    if FAST_LOG:
        y = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        y = tl.exp2(x)
    return y
