// Tree attention on the CPU: decode attention over a paged KV cache that reads
// every shared prefix once (plan format: tts_kernels/attention/plan.py).
//
// Stage 1: work items are (chunk, kv head, tile of the chunk's query rows).
// An item gathers the queries of its rows x the GQA group (pre-scaled, float32)
// into a [nq, D] matrix and walks the chunk's tokens in tiles of kTile. Each
// K/V tile is loaded once (converted to float32, K transposed to [D][kTile])
// and consumed by all nq queries while it sits in L1: S = Q K^T (register
// blocked 2 queries x 32 tokens), online softmax in float32, acc += P V
// (register blocked 2 queries x 32 dims). The item writes one partial output
// and LSE per (pair, head). Items are sorted by cost and scheduled dynamically
// (common/parallel.h, since a shared prefix chunk can be 100x the work of a
// private suffix chunk).
//
// Stage 2: per row, merge of its pairs by log-sum-exp, written in q's dtype.
//
// AVX2+FMA micro-kernels are selected at run time (common/cpu_features.h,
// TTS_KERNELS_CPU_ISA=generic forces the portable ones); the portable
// versions are plain loops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "common/simd_avx2.h"

namespace {

constexpr int kTile = 32;  // tokens per K/V tile (K^T tile is D x 32 floats)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------
// element conversion
// ---------------------------------------------------------------------------
inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) {
  uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float to_float(c10::Half x) { return static_cast<float>(x); }

template <typename T>
inline void load_row(const T* src, float* dst, int64_t D) {
  for (int64_t d = 0; d < D; ++d) dst[d] = to_float(src[d]);
}
template <>
inline void load_row<float>(const float* src, float* dst, int64_t D) {
  std::memcpy(dst, src, sizeof(float) * D);
}
template <>
inline void load_row<c10::BFloat16>(const c10::BFloat16* src, float* dst, int64_t D) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  uint32_t* o = reinterpret_cast<uint32_t*>(dst);
  for (int64_t d = 0; d < D; ++d) o[d] = static_cast<uint32_t>(s[d]) << 16;  // vectorises
}

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

struct Kernels {
  void (*qk)(const float*, const float*, float*, int64_t, int64_t);
  void (*pv)(const float*, const float* const*, float*, int64_t, int64_t, int);
  void (*softmax)(float*, float*, float*, float*, int64_t, int64_t, int);
  void (*transpose)(const float* const*, int, int64_t, float*);
};

Kernels pick_kernels(int64_t D) {
#if TTS_X86
  if (tts::cpu::use_avx2() && D % 8 == 0) return {qk_avx2, pv_avx2, softmax_avx2, transpose_avx2};
#endif
  return {qk_generic, pv_generic, softmax_generic, transpose_generic};
}

// Work items differ a lot in size (a shared chunk with many rows vs a private
// suffix): they are scheduled dynamically by the shared scheduler
// (tts::cpu::parallel_items, common/parallel.h).
using tts::cpu::parallel_items;

// ---------------------------------------------------------------------------
// stage 1
// ---------------------------------------------------------------------------
struct WorkItem {
  int32_t chunk;
  int32_t kv_head;
  int32_t row_begin;  // rows of the chunk, relative to chunk_q_ptr[chunk]
  int32_t row_end;
  int64_t cost;
};

template <typename T>
void stage1(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
            const at::Tensor& block_tables, const at::Tensor& chunk_row, const at::Tensor& chunk_start,
            const at::Tensor& chunk_len, const at::Tensor& chunk_q_ptr, const at::Tensor& q_rows,
            float scale, at::Tensor& out_partial, at::Tensor& lse_partial) {
  const int64_t Hq = q.size(1), D = q.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1), Hkv = k_cache.size(2);
  const int64_t G = Hq / Hkv;
  const int64_t N = q.size(0);
  const int64_t max_blocks = block_tables.size(1);
  const int64_t C = chunk_row.size(0);

  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1);
  const int64_t ks0 = k_cache.stride(0), ks1 = k_cache.stride(1), ks2 = k_cache.stride(2);
  const int64_t vs0 = v_cache.stride(0), vs1 = v_cache.stride(1), vs2 = v_cache.stride(2);
  const int32_t* bt = block_tables.data_ptr<int32_t>();
  const int64_t bts0 = block_tables.stride(0);
  const int32_t* crow = chunk_row.data_ptr<int32_t>();
  const int32_t* cstart = chunk_start.data_ptr<int32_t>();
  const int32_t* clen = chunk_len.data_ptr<int32_t>();
  const int32_t* cptr = chunk_q_ptr.data_ptr<int32_t>();
  const int32_t* qrows = q_rows.data_ptr<int32_t>();
  const int64_t P = q_rows.size(0);
  float* op = out_partial.data_ptr<float>();
  float* lp = lse_partial.data_ptr<float>();

  // Work items: (chunk, kv head, row tile). A tile holds at most 16384 / D
  // query vectors (128 at D = 128: the Q and acc tiles, 64 KiB each, stay in
  // L2 while each K/V tile sits in L1); tiles shrink while there are too few
  // items to keep every thread busy. Every row tile re-reads the chunk's K/V.
  const int64_t nthreads = tts::cpu::num_threads();
  const int64_t max_q = std::max<int64_t>(16, 16384 / D);
  int64_t rows_per_tile = std::max<int64_t>(1, max_q / G);
  auto count_items = [&](int64_t rpt) {
    int64_t n = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t nr = cptr[c + 1] - cptr[c];
      if (clen[c] > 0 && nr > 0) n += Hkv * ((nr + rpt - 1) / rpt);
    }
    return n;
  };
  while (rows_per_tile * G > 16 && rows_per_tile > 1 && count_items(rows_per_tile) < 4 * nthreads)
    rows_per_tile = (rows_per_tile + 1) / 2;

  std::vector<WorkItem> items;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t nr = cptr[c + 1] - cptr[c];
    TORCH_CHECK(nr >= 0 && cptr[c] >= 0 && cptr[c + 1] <= P, "tree_attention_cpu: bad chunk_q_ptr at chunk ", c);
    if (clen[c] <= 0 || nr == 0) continue;
    TORCH_CHECK(crow[c] >= 0 && crow[c] < block_tables.size(0), "tree_attention_cpu: chunk_row out of range at chunk ", c);
    TORCH_CHECK(cstart[c] >= 0 && (int64_t)cstart[c] + clen[c] <= max_blocks * block_size,
                "tree_attention_cpu: chunk ", c, " exceeds the block table");
    for (int64_t r0 = 0; r0 < nr; r0 += rows_per_tile) {
      const int64_t r1 = std::min(nr, r0 + rows_per_tile);
      for (int64_t h = 0; h < Hkv; ++h)
        items.push_back({(int32_t)c, (int32_t)h, (int32_t)r0, (int32_t)r1, (int64_t)clen[c] * (r1 - r0)});
    }
  }
  TORCH_CHECK(C == 0 || (cptr[0] >= 0 && cptr[C] <= P), "tree_attention_cpu: chunk_q_ptr exceeds q_rows");
  for (int64_t p = (C ? cptr[0] : 0); p < (C ? cptr[C] : 0); ++p)
    TORCH_CHECK(qrows[p] >= 0 && qrows[p] < N, "tree_attention_cpu: q_rows out of range at pair ", p);
  // Pairs of empty chunks (not produced by the planner) contribute nothing.
  for (int64_t c = 0; c < C; ++c)
    if (clen[c] <= 0)
      for (int64_t p = cptr[c]; p < cptr[c + 1]; ++p)
        for (int64_t hh = 0; hh < Hq; ++hh) {
          lp[p * Hq + hh] = kNegInf;
          std::fill(op + (p * Hq + hh) * D, op + (p * Hq + hh + 1) * D, 0.f);
        }
  // Largest first, so that the long shared chunks do not end up last.
  std::stable_sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });

  const Kernels kern = pick_kernels(D);
  const int64_t max_nq = rows_per_tile * G;
  std::atomic<bool> bad_block{false};
  const int64_t n_items = static_cast<int64_t>(items.size());
  // float32 caches are read in place; bf16/f16 token rows are converted into Kr/Vr.
  constexpr bool kInPlace = std::is_same<T, float>::value;

  parallel_items(n_items, [&]() {
   return [&, Qb = std::vector<float>(max_nq * D), acc = std::vector<float>(max_nq * D),
           S = std::vector<float>(max_nq * kTile), m = std::vector<float>(max_nq), l = std::vector<float>(max_nq),
           KT = std::vector<float>(D * kTile), Kr = std::vector<float>(kInPlace ? 0 : kTile * D),
           Vr = std::vector<float>(kInPlace ? 0 : kTile * D)](int64_t i) mutable {
    const float* krows[kTile];
    const float* vrows[kTile];
    {
      const WorkItem& it = items[i];
      const int64_t c = it.chunk, h = it.kv_head;
      const int64_t nr = it.row_end - it.row_begin;
      const int64_t nq = nr * G;
      const int64_t pair0 = cptr[c] + it.row_begin;
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t row = qrows[pair0 + r];
        for (int64_t g = 0; g < G; ++g) {
          float* dst = Qb.data() + (r * G + g) * D;
          load_row<T>(qp + row * qs0 + (h * G + g) * qs1, dst, D);
          for (int64_t d = 0; d < D; ++d) dst[d] *= scale;
        }
      }
      std::fill(acc.begin(), acc.begin() + nq * D, 0.f);
      std::fill(m.begin(), m.begin() + nq, kNegInf);
      std::fill(l.begin(), l.begin() + nq, 0.f);
      const int32_t* btrow = bt + (int64_t)crow[c] * bts0;
      const int64_t start = cstart[c], len = clen[c];
      for (int64_t t0 = 0; t0 < len; t0 += kTile) {
        const int tl = (int)std::min<int64_t>(kTile, len - t0);
        for (int t = 0; t < tl; ++t) {
          const int64_t pos = start + t0 + t;
          int64_t blk = btrow[pos / block_size];
          if (blk < 0 || blk >= num_blocks) {
            bad_block.store(true, std::memory_order_relaxed);
            blk = 0;
          }
          const int64_t off = pos % block_size;
          const T* ksrc = kp + blk * ks0 + off * ks1 + h * ks2;
          const T* vsrc = vp + blk * vs0 + off * vs1 + h * vs2;
          if constexpr (kInPlace) {
            krows[t] = reinterpret_cast<const float*>(ksrc);
            vrows[t] = reinterpret_cast<const float*>(vsrc);
          } else {
            load_row<T>(ksrc, Kr.data() + t * D, D);
            load_row<T>(vsrc, Vr.data() + t * D, D);
            krows[t] = Kr.data() + t * D;
            vrows[t] = Vr.data() + t * D;
          }
        }
        kern.transpose(krows, tl, D, KT.data());
        kern.qk(Qb.data(), KT.data(), S.data(), nq, D);
        kern.softmax(S.data(), m.data(), l.data(), acc.data(), nq, D, tl);
        kern.pv(S.data(), vrows, acc.data(), nq, D, tl);
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t pair = pair0 + r;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t qi = r * G + g;
          const int64_t head = h * G + g;
          const float inv = 1.f / l[qi];
          float* o = op + (pair * Hq + head) * D;
          const float* a = acc.data() + qi * D;
          for (int64_t d = 0; d < D; ++d) o[d] = a[d] * inv;
          lp[pair * Hq + head] = m[qi] + std::log(l[qi]);
        }
      }
    }
   };
  });
  TORCH_CHECK(!bad_block.load(), "tree_attention_cpu: block_tables holds a block id out of [0, ", num_blocks, ")");
}

// ---------------------------------------------------------------------------
// stage 2
// ---------------------------------------------------------------------------
template <typename T>
void stage2(const at::Tensor& out_partial, const at::Tensor& lse_partial, const at::Tensor& row_pair_ptr,
            const at::Tensor& row_pairs, at::Tensor& out, at::Tensor& lse) {
  const int64_t N = out.size(0), Hq = out.size(1), D = out.size(2);
  const int64_t P = out_partial.size(0);
  const float* op = out_partial.data_ptr<float>();
  const float* lp = lse_partial.data_ptr<float>();
  const int32_t* rptr = row_pair_ptr.data_ptr<int32_t>();
  const int32_t* rp = row_pairs.data_ptr<int32_t>();
  const int64_t RP = row_pairs.size(0);
  T* o = out.data_ptr<T>();
  float* L = lse.data_ptr<float>();
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK(rptr[i] >= 0 && rptr[i] <= rptr[i + 1] && rptr[i + 1] <= RP, "tree_attention_cpu: bad row_pair_ptr at row ", i);
  for (int64_t j = 0; j < rptr[N]; ++j)
    TORCH_CHECK(rp[j] >= 0 && rp[j] < P, "tree_attention_cpu: row_pairs out of range at ", j);

  const int64_t nthreads = tts::cpu::num_threads();
  const int64_t rows_per_item = std::max<int64_t>(1, (N + 4 * nthreads - 1) / (4 * nthreads));
  const int64_t n_items = (N + rows_per_item - 1) / rows_per_item;
  parallel_items(n_items, [&]() {
   return [&, accum = std::vector<float>(D)](int64_t item) mutable {
    for (int64_t i = item * rows_per_item; i < std::min(N, (item + 1) * rows_per_item); ++i) {
      const int64_t p0 = rptr[i], p1 = rptr[i + 1];
      for (int64_t h = 0; h < Hq; ++h) {
        float mx = kNegInf;
        for (int64_t j = p0; j < p1; ++j) mx = std::max(mx, lp[(int64_t)rp[j] * Hq + h]);
        T* dst = o + (i * Hq + h) * D;
        if (mx == kNegInf) {  // no KV for this row
          for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(0.f);
          L[i * Hq + h] = kNegInf;
          continue;
        }
        std::fill(accum.begin(), accum.end(), 0.f);
        float sum = 0.f;
        for (int64_t j = p0; j < p1; ++j) {
          const int64_t p = rp[j];
          const float w = std::exp(lp[p * Hq + h] - mx);
          sum += w;
          const float* src = op + (p * Hq + h) * D;
          for (int64_t d = 0; d < D; ++d) accum[d] += w * src[d];
        }
        const float inv = 1.f / sum;
        for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(accum[d] * inv);
        L[i * Hq + h] = mx + std::log(sum);
      }
    }
   };
  });
}

void check_int32(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), "tree_attention_cpu: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kInt, "tree_attention_cpu: ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "tree_attention_cpu: ", name, " must have ", dim, " dimensions, got ", t.dim());
}

std::tuple<at::Tensor, at::Tensor> tree_attention_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& block_tables_in,
    const at::Tensor& seq_lens, const at::Tensor& chunk_row_in, const at::Tensor& chunk_start_in,
    const at::Tensor& chunk_len_in, const at::Tensor& chunk_q_ptr_in, const at::Tensor& q_rows_in,
    const at::Tensor& row_pair_ptr_in, const at::Tensor& row_pairs_in, double scale) {
  TORCH_CHECK(q_in.device().is_cpu() && k_in.device().is_cpu() && v_in.device().is_cpu(),
              "tree_attention_cpu: tensors must be on the CPU");
  TORCH_CHECK(q_in.dim() == 3, "tree_attention_cpu: q must be [N, Hq, D], got ", q_in.sizes());
  TORCH_CHECK(k_in.dim() == 4 && v_in.dim() == 4,
              "tree_attention_cpu: k_cache/v_cache must be [num_blocks, block_size, Hkv, D]");
  TORCH_CHECK(k_in.sizes() == v_in.sizes(), "tree_attention_cpu: k_cache and v_cache shapes differ: ", k_in.sizes(),
              " vs ", v_in.sizes());
  const auto dt = q_in.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "tree_attention_cpu: q must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(k_in.scalar_type() == dt && v_in.scalar_type() == dt,
              "tree_attention_cpu: k_cache/v_cache dtype must match q (", dt, ")");
  const int64_t N = q_in.size(0), Hq = q_in.size(1), D = q_in.size(2);
  const int64_t Hkv = k_in.size(2);
  TORCH_CHECK(k_in.size(3) == D, "tree_attention_cpu: head dim of the cache (", k_in.size(3), ") != q's (", D, ")");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "tree_attention_cpu: Hq (", Hq, ") must be a multiple of Hkv (", Hkv, ")");
  TORCH_CHECK(k_in.size(1) > 0, "tree_attention_cpu: block_size must be positive");
  check_int32(block_tables_in, "block_tables", 2);
  check_int32(seq_lens, "seq_lens", 1);
  check_int32(chunk_row_in, "chunk_row", 1);
  check_int32(chunk_start_in, "chunk_start", 1);
  check_int32(chunk_len_in, "chunk_len", 1);
  check_int32(chunk_q_ptr_in, "chunk_q_ptr", 1);
  check_int32(q_rows_in, "q_rows", 1);
  check_int32(row_pair_ptr_in, "row_pair_ptr", 1);
  check_int32(row_pairs_in, "row_pairs", 1);
  TORCH_CHECK(block_tables_in.size(0) == N, "tree_attention_cpu: block_tables must have N = ", N, " rows");
  TORCH_CHECK(seq_lens.size(0) == N, "tree_attention_cpu: seq_lens must have N = ", N, " entries");
  const int64_t C = chunk_row_in.size(0);
  TORCH_CHECK(chunk_start_in.size(0) == C && chunk_len_in.size(0) == C && chunk_q_ptr_in.size(0) == C + 1,
              "tree_attention_cpu: chunk_row/chunk_start/chunk_len must be [C] and chunk_q_ptr [C + 1]");
  TORCH_CHECK(row_pair_ptr_in.size(0) == N + 1, "tree_attention_cpu: row_pair_ptr must be [N + 1]");

  // Head dim must be unit-stride for the row loads; the rest may be strided.
  const at::Tensor q = q_in.stride(2) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k_cache = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v_cache = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  const at::Tensor block_tables = block_tables_in.stride(1) == 1 ? block_tables_in : block_tables_in.contiguous();
  const at::Tensor chunk_row = chunk_row_in.contiguous(), chunk_start = chunk_start_in.contiguous(),
                   chunk_len = chunk_len_in.contiguous(), chunk_q_ptr = chunk_q_ptr_in.contiguous(),
                   q_rows = q_rows_in.contiguous(), row_pair_ptr = row_pair_ptr_in.contiguous(),
                   row_pairs = row_pairs_in.contiguous();

  const int64_t P = q_rows.size(0);
  auto fopts = q.options().dtype(at::kFloat);
  at::Tensor out_partial = at::empty({P, Hq, D}, fopts);
  at::Tensor lse_partial = at::empty({P, Hq}, fopts);
  at::Tensor out = at::empty({N, Hq, D}, q.options());
  at::Tensor lse = at::empty({N, Hq}, fopts);
  if (N == 0) return {out, lse};
  const float s = static_cast<float>(scale);

  switch (dt) {
    case at::kFloat:
      stage1<float>(q, k_cache, v_cache, block_tables, chunk_row, chunk_start, chunk_len, chunk_q_ptr, q_rows, s,
                    out_partial, lse_partial);
      stage2<float>(out_partial, lse_partial, row_pair_ptr, row_pairs, out, lse);
      break;
    case at::kBFloat16:
      stage1<c10::BFloat16>(q, k_cache, v_cache, block_tables, chunk_row, chunk_start, chunk_len, chunk_q_ptr,
                            q_rows, s, out_partial, lse_partial);
      stage2<c10::BFloat16>(out_partial, lse_partial, row_pair_ptr, row_pairs, out, lse);
      break;
    default:
      stage1<c10::Half>(q, k_cache, v_cache, block_tables, chunk_row, chunk_start, chunk_len, chunk_q_ptr, q_rows,
                        s, out_partial, lse_partial);
      stage2<c10::Half>(out_partial, lse_partial, row_pair_ptr, row_pairs, out, lse);
      break;
  }
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(tts_kernels_C, CPU, m) {
  m.impl("tree_attention_cpu", &tree_attention_cpu);
}
