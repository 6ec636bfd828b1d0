// Micro-kernels of CPU tree attention (attention_microkernels.h).
#include "attention_microkernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/cpu_features.h"
#include "common/simd_avx2.h"

namespace tts_attention {
namespace {

// ---------------------------------------------------------------------------
// micro-kernels, portable versions
// ---------------------------------------------------------------------------
// S[q][t] = sum_d Q[q][d] * KT[d][t]   (Q: [nq][D], KT: [D][kTile], S: [nq][kTile])
void qk_generic(const float* Q, const float* KT, float* S, int64_t nq, int64_t D) {
  for (int64_t q = 0; q < nq; ++q) {
    float s[kTile] = {0};
    const float* qr = Q + q * D;
    for (int64_t d = 0; d < D; ++d) {
      const float a = qr[d];
      const float* k = KT + d * kTile;
      for (int t = 0; t < kTile; ++t) s[t] += a * k[t];
    }
    std::memcpy(S + q * kTile, s, sizeof(s));
  }
}

// acc[q][:] += sum_t P[q][t] * V[t][:]   (P: [nq][kTile], V: kTile row pointers of D floats)
void pv_generic(const float* P, const float* const* V, float* acc, int64_t nq, int64_t D, int tl) {
  for (int64_t q = 0; q < nq; ++q) {
    float* a = acc + q * D;
    const float* p = P + q * kTile;
    for (int t = 0; t < tl; ++t) {
      const float w = p[t];
      if (w == 0.f) continue;
      const float* v = V[t];
      for (int64_t d = 0; d < D; ++d) a[d] += w * v[d];
    }
  }
}

// Online-softmax step for one tile. S holds scaled scores; on return S holds
// p = exp(S - m_new) (0 beyond tl). Updates m, l and rescales acc rows.
void softmax_generic(float* S, float* m, float* l, float* acc, int64_t nq, int64_t D, int tl) {
  for (int64_t q = 0; q < nq; ++q) {
    float* s = S + q * kTile;
    float mx = m[q];
    for (int t = 0; t < tl; ++t) mx = std::max(mx, s[t]);
    const float alpha = (m[q] == kNegInf) ? 0.f : std::exp(m[q] - mx);
    float sum = 0.f;
    for (int t = 0; t < tl; ++t) {
      s[t] = std::exp(s[t] - mx);
      sum += s[t];
    }
    for (int t = tl; t < kTile; ++t) s[t] = 0.f;
    l[q] = l[q] * alpha + sum;
    m[q] = mx;
    if (alpha != 1.f) {
      float* a = acc + q * D;
      for (int64_t d = 0; d < D; ++d) a[d] *= alpha;
    }
  }
}

// ---------------------------------------------------------------------------
// micro-kernels, AVX2 + FMA versions (D % 8 == 0)
// ---------------------------------------------------------------------------
#if TTS_X86
using tts::simd::exp_avx2;
using tts::simd::hmax8;
using tts::simd::hsum8;

TTS_AVX2 void qk_avx2(const float* Q, const float* KT, float* S, int64_t nq, int64_t D) {
  static_assert(kTile == 32, "the AVX2 kernel holds 32 tokens in 4 registers");
  int64_t q = 0;
  for (; q + 2 <= nq; q += 2) {
    const float* q0 = Q + q * D;
    const float* q1 = q0 + D;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(),
           b3 = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const float* k = KT + d * kTile;
      const __m256 k0 = _mm256_loadu_ps(k), k1 = _mm256_loadu_ps(k + 8), k2 = _mm256_loadu_ps(k + 16),
                   k3 = _mm256_loadu_ps(k + 24);
      const __m256 x = _mm256_broadcast_ss(q0 + d);
      const __m256 y = _mm256_broadcast_ss(q1 + d);
      a0 = _mm256_fmadd_ps(x, k0, a0);
      a1 = _mm256_fmadd_ps(x, k1, a1);
      a2 = _mm256_fmadd_ps(x, k2, a2);
      a3 = _mm256_fmadd_ps(x, k3, a3);
      b0 = _mm256_fmadd_ps(y, k0, b0);
      b1 = _mm256_fmadd_ps(y, k1, b1);
      b2 = _mm256_fmadd_ps(y, k2, b2);
      b3 = _mm256_fmadd_ps(y, k3, b3);
    }
    float* s0 = S + q * kTile;
    float* s1 = s0 + kTile;
    _mm256_storeu_ps(s0, a0);
    _mm256_storeu_ps(s0 + 8, a1);
    _mm256_storeu_ps(s0 + 16, a2);
    _mm256_storeu_ps(s0 + 24, a3);
    _mm256_storeu_ps(s1, b0);
    _mm256_storeu_ps(s1 + 8, b1);
    _mm256_storeu_ps(s1 + 16, b2);
    _mm256_storeu_ps(s1 + 24, b3);
  }
  for (; q < nq; ++q) {
    const float* q0 = Q + q * D;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const float* k = KT + d * kTile;
      const __m256 x = _mm256_broadcast_ss(q0 + d);
      a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k), a0);
      a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 8), a1);
      a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 16), a2);
      a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 24), a3);
    }
    float* s0 = S + q * kTile;
    _mm256_storeu_ps(s0, a0);
    _mm256_storeu_ps(s0 + 8, a1);
    _mm256_storeu_ps(s0 + 16, a2);
    _mm256_storeu_ps(s0 + 24, a3);
  }
}

TTS_AVX2 void pv_avx2(const float* P, const float* const* V, float* acc, int64_t nq, int64_t D, int tl) {
  int64_t q = 0;
  for (; q + 2 <= nq; q += 2) {
    const float* p0 = P + q * kTile;
    const float* p1 = p0 + kTile;
    float* c0 = acc + q * D;
    float* c1 = c0 + D;
    int64_t d = 0;
    for (; d + 32 <= D; d += 32) {
      __m256 a0 = _mm256_loadu_ps(c0 + d), a1 = _mm256_loadu_ps(c0 + d + 8),
             a2 = _mm256_loadu_ps(c0 + d + 16), a3 = _mm256_loadu_ps(c0 + d + 24);
      __m256 b0 = _mm256_loadu_ps(c1 + d), b1 = _mm256_loadu_ps(c1 + d + 8),
             b2 = _mm256_loadu_ps(c1 + d + 16), b3 = _mm256_loadu_ps(c1 + d + 24);
      for (int t = 0; t < tl; ++t) {
        const float* v = V[t] + d;
        const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
                     v3 = _mm256_loadu_ps(v + 24);
        const __m256 x = _mm256_broadcast_ss(p0 + t);
        const __m256 y = _mm256_broadcast_ss(p1 + t);
        a0 = _mm256_fmadd_ps(x, v0, a0);
        a1 = _mm256_fmadd_ps(x, v1, a1);
        a2 = _mm256_fmadd_ps(x, v2, a2);
        a3 = _mm256_fmadd_ps(x, v3, a3);
        b0 = _mm256_fmadd_ps(y, v0, b0);
        b1 = _mm256_fmadd_ps(y, v1, b1);
        b2 = _mm256_fmadd_ps(y, v2, b2);
        b3 = _mm256_fmadd_ps(y, v3, b3);
      }
      _mm256_storeu_ps(c0 + d, a0);
      _mm256_storeu_ps(c0 + d + 8, a1);
      _mm256_storeu_ps(c0 + d + 16, a2);
      _mm256_storeu_ps(c0 + d + 24, a3);
      _mm256_storeu_ps(c1 + d, b0);
      _mm256_storeu_ps(c1 + d + 8, b1);
      _mm256_storeu_ps(c1 + d + 16, b2);
      _mm256_storeu_ps(c1 + d + 24, b3);
    }
    for (; d < D; d += 8) {
      __m256 a = _mm256_loadu_ps(c0 + d), b = _mm256_loadu_ps(c1 + d);
      for (int t = 0; t < tl; ++t) {
        const __m256 v = _mm256_loadu_ps(V[t] + d);
        a = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + t), v, a);
        b = _mm256_fmadd_ps(_mm256_broadcast_ss(p1 + t), v, b);
      }
      _mm256_storeu_ps(c0 + d, a);
      _mm256_storeu_ps(c1 + d, b);
    }
  }
  for (; q < nq; ++q) {
    const float* p0 = P + q * kTile;
    float* c0 = acc + q * D;
    for (int64_t d = 0; d < D; d += 8) {
      __m256 a = _mm256_loadu_ps(c0 + d);
      for (int t = 0; t < tl; ++t)
        a = _mm256_fmadd_ps(_mm256_broadcast_ss(p0 + t), _mm256_loadu_ps(V[t] + d), a);
      _mm256_storeu_ps(c0 + d, a);
    }
  }
}

TTS_AVX2 void softmax_avx2(float* S, float* m, float* l, float* acc, int64_t nq, int64_t D, int tl) {
  // Mask of the valid tokens of the tile, per 8-lane group.
  alignas(32) int32_t lane[kTile];
  for (int t = 0; t < kTile; ++t) lane[t] = t < tl ? -1 : 0;
  __m256 valid[kTile / 8];
  for (int j = 0; j < kTile / 8; ++j)
    valid[j] = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(lane + 8 * j)));
  const __m256 ninf = _mm256_set1_ps(kNegInf);
  for (int64_t q = 0; q < nq; ++q) {
    float* s = S + q * kTile;
    __m256 v[kTile / 8];
    __m256 mxv = _mm256_set1_ps(m[q]);
    for (int j = 0; j < kTile / 8; ++j) {
      v[j] = _mm256_blendv_ps(ninf, _mm256_loadu_ps(s + 8 * j), valid[j]);
      mxv = _mm256_max_ps(mxv, v[j]);
    }
    const float mx = hmax8(mxv);
    const float alpha = (m[q] == kNegInf) ? 0.f : std::exp(m[q] - mx);
    const __m256 mb = _mm256_set1_ps(mx);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < kTile / 8; ++j) {
      __m256 e = _mm256_and_ps(exp_avx2(_mm256_sub_ps(v[j], mb)), valid[j]);
      _mm256_storeu_ps(s + 8 * j, e);
      sum = _mm256_add_ps(sum, e);
    }
    l[q] = l[q] * alpha + hsum8(sum);
    m[q] = mx;
    if (alpha != 1.f) {
      float* a = acc + q * D;
      const __m256 al = _mm256_set1_ps(alpha);
      for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(a + d, _mm256_mul_ps(_mm256_loadu_ps(a + d), al));
    }
  }
}
#endif  // TTS_X86

#if TTS_X86
// ---------------------------------------------------------------------------
// micro-kernels, AVX-512 versions of the two products (D % 16 == 0): more
// queries per pass over a K^T / V tile than AVX2 (32 zmm registers), so each
// loaded K / V vector feeds R FMAs. softmax and transpose stay AVX2 (cheap).
// ---------------------------------------------------------------------------
// R queries x the 32 tokens of the tile (2 zmm each): 2R accumulators.
template <int R>
TTS_AVX512 inline void qk_rows_avx512(const float* Q, const float* KT, float* S, int64_t D) {
  __m512 lo[R], hi[R];
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const __m512 k0 = _mm512_loadu_ps(KT + d * kTile), k1 = _mm512_loadu_ps(KT + d * kTile + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(Q[r * D + d]);
      lo[r] = _mm512_fmadd_ps(x, k0, lo[r]);
      hi[r] = _mm512_fmadd_ps(x, k1, hi[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(S + r * kTile, lo[r]);
    _mm512_storeu_ps(S + r * kTile + 16, hi[r]);
  }
}

TTS_AVX512 void qk_avx512(const float* Q, const float* KT, float* S, int64_t nq, int64_t D) {
  static_assert(kTile == 32, "the AVX-512 kernel holds 32 tokens in 2 registers");
  constexpr int R = 8;
  int64_t q = 0;
  for (; q + R <= nq; q += R) qk_rows_avx512<R>(Q + q * D, KT, S + q * kTile, D);
  for (; q + 2 <= nq; q += 2) qk_rows_avx512<2>(Q + q * D, KT, S + q * kTile, D);
  if (q < nq) qk_rows_avx512<1>(Q + q * D, KT, S + q * kTile, D);
}

// acc[R queries][W x 16 dims from d0] += P V over the tile's tl tokens: R x W accumulators.
template <int R, int W>
TTS_AVX512 inline void pv_block_avx512(const float* P, const float* const* V, float* acc, int64_t D, int tl,
                                       int64_t d0) {
  __m512 a[R][W];
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) a[r][w] = _mm512_loadu_ps(acc + r * D + d0 + 16 * w);
  for (int t = 0; t < tl; ++t) {
    __m512 v[W];
    for (int w = 0; w < W; ++w) v[w] = _mm512_loadu_ps(V[t] + d0 + 16 * w);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(P[r * kTile + t]);
      for (int w = 0; w < W; ++w) a[r][w] = _mm512_fmadd_ps(x, v[w], a[r][w]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) _mm512_storeu_ps(acc + r * D + d0 + 16 * w, a[r][w]);
}

template <int R>
TTS_AVX512 inline void pv_rows_avx512(const float* P, const float* const* V, float* acc, int64_t D, int tl) {
  int64_t d = 0;
  for (; d + 64 <= D; d += 64) pv_block_avx512<R, 4>(P, V, acc, D, tl, d);
  for (; d < D; d += 16) pv_block_avx512<R, 1>(P, V, acc, D, tl, d);
}

TTS_AVX512 void pv_avx512(const float* P, const float* const* V, float* acc, int64_t nq, int64_t D, int tl) {
  constexpr int R = 4;
  int64_t q = 0;
  for (; q + R <= nq; q += R) pv_rows_avx512<R>(P + q * kTile, V, acc + q * D, D, tl);
  for (; q < nq; ++q) pv_rows_avx512<1>(P + q * kTile, V, acc + q * D, D, tl);
}
#endif  // TTS_X86

#if TTS_X86
// KT[d][t] = rows[t][d] for t < tl, 0 for tl <= t < kTile; 8 x 8 register transposes.
TTS_AVX2 void transpose_avx2(const float* const* rows, int tl, int64_t D, float* KT) {
  for (int t0 = 0; t0 < kTile; t0 += 8) {
    if (t0 >= tl) {
      for (int64_t d = 0; d < D; ++d) _mm256_storeu_ps(KT + d * kTile + t0, _mm256_setzero_ps());
      continue;
    }
    for (int64_t d0 = 0; d0 < D; d0 += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j) r[j] = t0 + j < tl ? _mm256_loadu_ps(rows[t0 + j] + d0) : _mm256_setzero_ps();
      const __m256 a0 = _mm256_unpacklo_ps(r[0], r[1]), a1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 a2 = _mm256_unpacklo_ps(r[2], r[3]), a3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 a4 = _mm256_unpacklo_ps(r[4], r[5]), a5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 a6 = _mm256_unpacklo_ps(r[6], r[7]), a7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);
      const __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
      const __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE);
      const __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
      float* o = KT + d0 * kTile + t0;
      _mm256_storeu_ps(o + 0 * kTile, _mm256_permute2f128_ps(b0, b4, 0x20));
      _mm256_storeu_ps(o + 1 * kTile, _mm256_permute2f128_ps(b1, b5, 0x20));
      _mm256_storeu_ps(o + 2 * kTile, _mm256_permute2f128_ps(b2, b6, 0x20));
      _mm256_storeu_ps(o + 3 * kTile, _mm256_permute2f128_ps(b3, b7, 0x20));
      _mm256_storeu_ps(o + 4 * kTile, _mm256_permute2f128_ps(b0, b4, 0x31));
      _mm256_storeu_ps(o + 5 * kTile, _mm256_permute2f128_ps(b1, b5, 0x31));
      _mm256_storeu_ps(o + 6 * kTile, _mm256_permute2f128_ps(b2, b6, 0x31));
      _mm256_storeu_ps(o + 7 * kTile, _mm256_permute2f128_ps(b3, b7, 0x31));
    }
  }
}
#endif

void transpose_generic(const float* const* rows, int tl, int64_t D, float* KT) {
  for (int t = 0; t < kTile; ++t) {
    if (t < tl) {
      const float* r = rows[t];
      for (int64_t d = 0; d < D; ++d) KT[d * kTile + t] = r[d];
    } else {
      for (int64_t d = 0; d < D; ++d) KT[d * kTile + t] = 0.f;
    }
  }
}

}  // namespace

Kernels pick_kernels(int64_t D) {
#if TTS_X86
  if (tts::cpu::use_avx512() && D % 16 == 0) return {qk_avx512, pv_avx512, softmax_avx2, transpose_avx2};
  if (tts::cpu::use_avx2() && D % 8 == 0) return {qk_avx2, pv_avx2, softmax_avx2, transpose_avx2};
#endif
  return {qk_generic, pv_generic, softmax_generic, transpose_generic};
}

}  // namespace tts_attention
