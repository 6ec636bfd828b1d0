"""Triton device functions of the sampler's random stream and its fast math (used by ``triton_kernel.py``).

``_philox_gumbel`` reproduces ``philox.py`` exactly; ``_fast_neg_log2_e`` is the pass-1
approximation of the Gumbel noise (hardware lg2/rcp/ex2 on a GPU when ``FAST_LOG``, exact
functions otherwise, e.g. in Triton's CPU interpreter), bounded by a test.
"""
import triton
import triton.language as tl


@triton.jit
def _philox4(ctr, c1, c2, k0, k1):
    """Philox4x32-10 of the counters ``(ctr, c1, c2, 0)`` under key ``(k0, k1)``: four uint32 words."""
    m0 = tl.full([], 0xD2511F53, tl.uint32)
    m1 = tl.full([], 0xCD9E8D57, tl.uint32)
    w0 = tl.full([], 0x9E3779B9, tl.uint32)
    w1 = tl.full([], 0xBB67AE85, tl.uint32)
    x0 = ctr
    x1 = tl.zeros_like(ctr) + c1
    x2 = tl.zeros_like(ctr) + c2
    x3 = tl.zeros_like(ctr)
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
def _interleave4(x0, x1, x2, x3):
    """[R] x 4 -> [R, 4]: word j of counter r at [r, j]."""
    col = tl.arange(0, 4)[None, :]
    return tl.where(col == 0, x0[:, None],
                    tl.where(col == 1, x1[:, None], tl.where(col == 2, x2[:, None], x3[:, None])))


@triton.jit
def _uniform(w):
    return ((w >> 9) * 2 + 1).to(tl.float32) * 5.9604644775390625e-08  # 2**-24, exact


@triton.jit
def _philox_gumbel(ctr, c1, c2, k0, k1):
    """Gumbel noise [R, 4] for the counters ``ctr`` (uint32 [R]), exactly as ``philox.py``
    (float32 ``-log(-log(u))``)."""
    x0, x1, x2, x3 = _philox4(ctr, c1, c2, k0, k1)
    u = _uniform(_interleave4(x0, x1, x2, x3))
    return -tl.log(-tl.log(u))


@triton.jit
def _log2(x, FAST_LOG: tl.constexpr):
    """log2 of a positive normal float32; on a GPU one MUFU.LG2 (|error| <= 2**-22 on [0.5, 2],
    2 ulp elsewhere); the interpreter (no inline PTX) uses the exact log2."""
    if FAST_LOG:
        y = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        y = tl.log2(x)
    return y


@triton.jit
def _exp2(x, FAST_LOG: tl.constexpr):
    """2**x; on a GPU one MUFU.EX2 flushing results below 2**-126 to 0 (sum-exp terms only)."""
    if FAST_LOG:
        y = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        y = tl.exp2(x)
    return y


@triton.jit
def _recip(x, FAST_LOG: tl.constexpr):
    if FAST_LOG:
        y = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        y = 1.0 / x
    return y


@triton.jit
def _fast_neg_log2_e(w, FAST_LOG: tl.constexpr):
    """``log2(E / ln 2)`` for ``E = -log(u)`` of the Philox words ``w``, so that the Gumbel
    noise is ``g = -ln2 * (result + log2(ln 2))``, to about 5e-6 (absolute) in ``g``.

    ``E`` needs a small *relative* error (``g = -log(E)`` turns it into an absolute one): for
    ``u <= 3/4`` a hardware log2 is enough; above, ``E = 2 atanh(s)``, ``s = t / (2 - t)``,
    ``t = 1 - u`` (exact), by a 5-term odd series (``s <= 1/7``: truncation < 1e-9 relative).
    Only used to pick each lane's candidate in pass 1; the candidates are rescored exactly
    (``_philox_gumbel``'s float32 formula) at the end."""
    u = _uniform(w)
    t = 1.0 - u
    s = t * _recip(2.0 - t, FAST_LOG)
    s2 = s * s
    # 2 atanh(s) / ln 2 = s * sum_k 2 / ((2k+1) ln 2) s^(2k)
    e_ser = s * (2.8853900817779268 + s2 * (0.9617966939259756 + s2 * (0.5770780163555854 + s2 * (
        0.41219858311113243 + s2 * 0.3205988979753252))))
    e2 = tl.where(t < 0.25, e_ser, -_log2(u, FAST_LOG))
    return _log2(e2, FAST_LOG)
