// Passes of the CPU sampler over a row of logits (see sampler.cpp for the
// algorithm): portable versions, AVX2 versions (x86 only) and their dispatch.
#include "sampler_passes.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/cpu_features.h"

namespace tts_sampling {

// ---------------------------------------------------------------------------
// Generic (portable) passes
// ---------------------------------------------------------------------------
// Online rescaling of a sum of exp(x - M) when the running max M grows.
static inline void raise_max(float& M, double& sum, float bm) {
  if (bm > M) {
    sum = M > -kInf ? sum * std::exp(static_cast<double>(M) - static_cast<double>(bm)) : 0.0;
    M = bm;
  }
}

// One block x[s, t) (s a multiple of 64, t - s <= 64) of the stats pass: its
// maximum into bmax, NaN flag, running max M and (with_sum) sum of exp(x - M).
static inline void stats_block(const float* x, int64_t s, int64_t t, float* bmax, float& M, double& acc, bool& n,
                               bool with_sum) {
  float bm = -kInf;
  for (int64_t i = s; i < t; ++i) {
    const float v = x[i];
    n |= (v != v);
    bm = v > bm ? v : bm;
  }
  bmax[s / kBlock] = bm;
  raise_max(M, acc, bm);
  if (with_sum && M > -kInf && M < kInf)
    for (int64_t i = s; i < t; ++i) acc += static_cast<double>(std::exp(x[i] - M));
}

// max, NaN flag, the maxima of 64-token blocks of x[b, e) (b a multiple of 64)
// and, with with_sum, the sum of exp(x - max) (else 0).
static void stats_generic(const float* x, int64_t b, int64_t e, float* bmax, float& mx, bool& nan, double& sum,
                          bool with_sum) {
  float M = -kInf;
  double acc = 0.0;
  bool n = false;
  for (int64_t s = b; s < e; s += kBlock) stats_block(x, s, std::min(e, s + kBlock), bmax, M, acc, n, with_sum);
  mx = M;
  nan = n;
  sum = acc;
}

static inline int bin_of(float d) {
  const float f = std::min(d * kBinScale, static_cast<float>(kNumBins - 1));
  return static_cast<int>(f);
}

static void hist_generic(const float* x, int64_t b, int64_t e, float T, float zmax, float tk, double* hist) {
  for (int64_t i = b; i < e; ++i) {
    const float z = x[i] / T;
    if (!(z >= tk)) continue;
    const int bi = bin_of(zmax - z);
    hist[bi] += std::exp(z - zmax);
  }
}

// Tokens with z >= tk in histogram bin bsel, with their z and e.
static void collect_bin_generic(const float* x, int64_t V, float T, float zmax, float tk, int bsel,
                                std::vector<Cand>& out) {
  for (int64_t i = 0; i < V; ++i) {
    const float z = x[i] / T;
    if (z >= tk && bin_of(zmax - z) == bsel) out.push_back({z, std::exp(z - zmax), static_cast<int32_t>(i)});
  }
}

// Tokens with z >= thr. Returns false (stopping early) once more than cap tokens are found.
static bool collect_kept_generic(const float* x, int64_t V, float T, float thr, std::vector<int32_t>& out,
                                 size_t cap) {
  for (int64_t i = 0; i < V; ++i) {
    if (x[i] / T >= thr) {
      if (out.size() >= cap) return false;
      out.push_back(static_cast<int32_t>(i));
    }
  }
  return true;
}

static inline bool kept_generic(const KeepRule& a, float z) {
  return z >= a.lo && z <= kFloatMax && (!a.minp_on || std::exp(z - a.zmax) >= a.min_p);
}

static void group_noise_generic(const PhiloxKey& key, int64_t ng, float* h) {
  for (int64_t j = 0; j < ng; ++j) h[j] = group_gumbel_scalar(j, key);
}

static GroupSum group_sum_generic(const KeepRule& a, int64_t j) {
  const int64_t b = j * kGroupSize, e = std::min(a.V, b + kGroupSize);
  GroupSum g;
  for (int64_t i = b; i < e; ++i) {
    const float z = a.x[i] / a.T;
    if (kept_generic(a, z) && z > g.m) g.m = z;
  }
  if (!(g.m > -kInf)) return g;
  double acc = 0.0;
  for (int64_t i = b; i < e; ++i) {
    const float z = a.x[i] / a.T;
    if (kept_generic(a, z)) acc += static_cast<double>(std::exp(z - g.m));
  }
  g.s = static_cast<float>(acc);
  return g;
}

static Best group_token_generic(const KeepRule& a, int64_t j) {
  const int64_t b = j * kGroupSize, e = std::min(a.V, b + kGroupSize);
  Best best;
  uint32_t w[4];
  for (int64_t v = b; v < e; ++v) {
    if ((v & 3) == 0) philox_scalar(static_cast<uint32_t>(v >> 2), a.key, w);
    const float z = a.x[v] / a.T;
    if (!kept_generic(a, z)) continue;
    const float s = z + gumbel_of_word(w[v & 3]);
    if (best.i < 0 || s > best.s) best = Best{s, v};
  }
  return best;
}

static int64_t find_first_generic(const float* x, int64_t V, float val) {
  for (int64_t i = 0; i < V; ++i)
    if (x[i] == val) return i;
  return -1;
}

static void collect_ge_generic(const float* x, int64_t V, float lo, std::vector<int32_t>& out) {
  for (int64_t i = 0; i < V; ++i)
    if (x[i] >= lo) out.push_back(static_cast<int32_t>(i));
}

#if TTS_X86
// ---------------------------------------------------------------------------
// AVX2 passes
// ---------------------------------------------------------------------------
TTS_AVX2 static void stats_avx2(const float* x, int64_t b, int64_t e, float* bmax, float& mx, bool& nan,
                                double& sum, bool with_sum) {
  __m256 vnan = _mm256_setzero_ps();
  __m256d acc = _mm256_setzero_pd();
  float M = -kInf;
  int64_t s = b;
  for (; s + kBlock <= e; s += kBlock) {
    const float* p = x + s;
    __m256 a[8];
    for (int j = 0; j < 8; ++j) a[j] = _mm256_loadu_ps(p + 8 * j);
    const __m256 u = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(a[0], a[1], _CMP_UNORD_Q), _mm256_cmp_ps(a[2], a[3], _CMP_UNORD_Q)),
                                  _mm256_or_ps(_mm256_cmp_ps(a[4], a[5], _CMP_UNORD_Q), _mm256_cmp_ps(a[6], a[7], _CMP_UNORD_Q)));
    vnan = _mm256_or_ps(vnan, u);
    const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3])),
                                   _mm256_max_ps(_mm256_max_ps(a[4], a[5]), _mm256_max_ps(a[6], a[7])));
    const float bm = hmax8(m);
    bmax[s / kBlock] = bm;
    if (bm > M) {
      acc = M > -kInf ? _mm256_mul_pd(acc, _mm256_set1_pd(std::exp(static_cast<double>(M) - static_cast<double>(bm))))
                      : _mm256_setzero_pd();
      M = bm;
    }
    if (with_sum && M > -kInf && M < kInf) {
      const __m256 vm = _mm256_set1_ps(M);
      __m256 t[8];
      for (int j = 0; j < 8; ++j) t[j] = exp_avx2(_mm256_sub_ps(a[j], vm));
      const __m256 q = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3])),
                                     _mm256_add_ps(_mm256_add_ps(t[4], t[5]), _mm256_add_ps(t[6], t[7])));
      acc = _mm256_add_pd(acc, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(q)),
                                             _mm256_cvtps_pd(_mm256_extractf128_ps(q, 1))));
    }
  }
  double total = hsum4d(acc);
  bool n = _mm256_movemask_ps(vnan) != 0;
  if (s < e) stats_block(x, s, e, bmax, M, total, n, with_sum);
  mx = M;
  nan = n;
  sum = total;
}

// Histogram bins of d = zmax - z (identical in every pass that uses them).
TTS_AVX2 static inline __m256i bins_avx2(__m256 z, __m256 vzmax) {
  const __m256 bf = _mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(vzmax, z), _mm256_set1_ps(kBinScale)),
                                  _mm256_set1_ps(static_cast<float>(kNumBins - 1)));
  return _mm256_cvttps_epi32(bf);
}

TTS_AVX2 static inline __m256 load8_padded(const float* x, int64_t i, int64_t e) {
  if (i + 8 <= e) return _mm256_loadu_ps(x + i);
  alignas(32) float t[8];
  for (int l = 0; l < 8; ++l) t[l] = i + l < e ? x[i + l] : -kInf;
  return _mm256_load_ps(t);
}

// Bit mask of the lanes i + l < n (padded lanes of a tail load hold -inf,
// which a threshold of -inf would keep).
static inline unsigned lanes_below(int64_t i, int64_t n) {
  return n - i >= 8 ? 0xFFu : (1u << (n - i)) - 1u;
}

TTS_AVX2 static void hist_avx2(const float* x, int64_t b, int64_t e, float T, float zmax, float tk, double* hist) {
  const __m256 vT = _mm256_set1_ps(T), vzmax = _mm256_set1_ps(zmax), vtk = _mm256_set1_ps(tk);
  const __m256 vscale = _mm256_set1_ps(kBinScale), vlast = _mm256_set1_ps(static_cast<float>(kNumBins - 1));
  // The last bin (d beyond the histogram range) is accumulated in registers:
  // with peaked logits most tokens land there.
  __m256d tail0 = _mm256_setzero_pd(), tail1 = _mm256_setzero_pd();
  alignas(32) float te[8];
  alignas(32) int32_t tb[8];
  for (int64_t i = b; i < e; i += 8) {
    const __m256 z = _mm256_div_ps(load8_padded(x, i, e), vT);
    const __m256 in = _mm256_cmp_ps(z, vtk, _CMP_GE_OQ);
    const __m256 ev = exp_avx2(_mm256_sub_ps(z, vzmax));
    const __m256 bf = _mm256_mul_ps(_mm256_sub_ps(vzmax, z), vscale);
    const __m256 inr = _mm256_cmp_ps(bf, vlast, _CMP_LT_OQ);
    const __m256 tl = _mm256_andnot_ps(inr, in);
    const __m256 et = _mm256_and_ps(ev, tl);
    tail0 = _mm256_add_pd(tail0, _mm256_cvtps_pd(_mm256_castps256_ps128(et)));
    tail1 = _mm256_add_pd(tail1, _mm256_cvtps_pd(_mm256_extractf128_ps(et, 1)));
    unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_and_ps(in, inr)));
    if (!m) continue;
    _mm256_store_ps(te, ev);
    _mm256_store_si256(reinterpret_cast<__m256i*>(tb), bins_avx2(z, vzmax));
    while (m) {
      const int l = __builtin_ctz(m);
      m &= m - 1;
      hist[tb[l]] += te[l];
    }
  }
  hist[kNumBins - 1] += hsum4d(_mm256_add_pd(tail0, tail1));
}

TTS_AVX2 static void collect_bin_avx2(const float* x, int64_t V, float T, float zmax, float tk, int bsel,
                                      std::vector<Cand>& out) {
  const __m256 vT = _mm256_set1_ps(T), vzmax = _mm256_set1_ps(zmax), vtk = _mm256_set1_ps(tk);
  const __m256i vb = _mm256_set1_epi32(bsel);
  for (int64_t i = 0; i < V; i += 8) {
    const __m256 z = _mm256_div_ps(load8_padded(x, i, V), vT);
    const __m256 in = _mm256_and_ps(_mm256_cmp_ps(z, vtk, _CMP_GE_OQ),
                                    _mm256_castsi256_ps(_mm256_cmpeq_epi32(bins_avx2(z, vzmax), vb)));
    unsigned m = static_cast<unsigned>(_mm256_movemask_ps(in)) & lanes_below(i, V);
    if (!m) continue;
    alignas(32) float tz[8];
    alignas(32) float te[8];
    _mm256_store_ps(tz, z);
    _mm256_store_ps(te, exp_avx2(_mm256_sub_ps(z, vzmax)));
    while (m) {
      const int l = __builtin_ctz(m);
      m &= m - 1;
      out.push_back({tz[l], te[l], static_cast<int32_t>(i + l)});
    }
  }
}

TTS_AVX2 static bool collect_kept_avx2(const float* x, int64_t V, float T, float thr, std::vector<int32_t>& out,
                                       size_t cap) {
  const __m256 vT = _mm256_set1_ps(T), vthr = _mm256_set1_ps(thr);
  for (int64_t i = 0; i < V; i += 8) {
    const __m256 z = _mm256_div_ps(load8_padded(x, i, V), vT);
    unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(z, vthr, _CMP_GE_OQ))) & lanes_below(i, V);
    if (!m) continue;
    if (out.size() + static_cast<size_t>(__builtin_popcount(m)) > cap) return false;
    while (m) {
      out.push_back(static_cast<int32_t>(i + __builtin_ctz(m)));
      m &= m - 1;
    }
  }
  return true;
}

TTS_AVX2 static void group_noise_avx2(const PhiloxKey& key, int64_t ng, float* h) {
  for (int64_t j = 0; j < ng; j += 32) {
    __m256i w[4];
    philox8_tokens(static_cast<uint32_t>(j >> 2), key, w, kGroupStream);
    for (int q = 0; q < 4; ++q) _mm256_storeu_ps(h + j + 8 * q, gumbel_avx2(w[q]));
  }
}

// Keep mask of 8 scaled logits (padded lanes hold -inf and are never kept).
TTS_AVX2 static inline __m256 kept_avx2(const KeepRule& a, __m256 z) {
  __m256 k = _mm256_and_ps(_mm256_cmp_ps(z, _mm256_set1_ps(a.lo), _CMP_GE_OQ),
                           _mm256_cmp_ps(z, _mm256_set1_ps(kFloatMax), _CMP_LE_OQ));
  if (a.minp_on)
    k = _mm256_and_ps(k, _mm256_cmp_ps(exp_avx2(_mm256_sub_ps(z, _mm256_set1_ps(a.zmax))),
                                       _mm256_set1_ps(a.min_p), _CMP_GE_OQ));
  return k;
}

// z of tokens [v0, v0 + 8) of the row, -inf past its end.
TTS_AVX2 static inline __m256 load_z(const KeepRule& a, int64_t v0) {
  return _mm256_div_ps(load8_padded(a.x, v0, a.V), _mm256_set1_ps(a.T));
}

TTS_AVX2 static GroupSum group_sum_avx2(const KeepRule& a, int64_t j) {
  constexpr int kVecs = static_cast<int>(kGroupSize / 8);
  const int64_t b = j * kGroupSize;
  const __m256 ninf = _mm256_set1_ps(-kInf);
  alignas(32) float zk[kGroupSize];
  __m256 mx = ninf;
  for (int q = 0; q < kVecs; ++q) {
    const int64_t v0 = b + 8 * q;
    __m256 z = ninf;
    if (v0 < a.V) {
      z = load_z(a, v0);
      z = _mm256_blendv_ps(ninf, z, kept_avx2(a, z));
    }
    _mm256_store_ps(zk + 8 * q, z);
    mx = _mm256_max_ps(mx, z);
  }
  GroupSum g;
  g.m = hmax8(mx);
  if (!(g.m > -kInf)) return g;
  const __m256 vm = _mm256_set1_ps(g.m);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int q = 0; q < kVecs; ++q)  // exp(-inf) = 0 for the tokens not kept
    acc[q & 3] = _mm256_add_ps(acc[q & 3], exp_avx2(_mm256_sub_ps(_mm256_load_ps(zk + 8 * q), vm)));
  const __m256 t = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
  g.s = static_cast<float>(hsum4d(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(t)),
                                               _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)))));
  return g;
}

TTS_AVX2 static Best group_token_avx2(const KeepRule& a, int64_t j) {
  const int64_t b = j * kGroupSize, e = std::min(a.V, b + kGroupSize);
  const __m256 ninf = _mm256_set1_ps(-kInf);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 best = ninf;
  __m256i bidx = _mm256_set1_epi32(-1);
  for (int64_t v0 = b; v0 < e; v0 += 32) {
    __m256i w[4];
    philox8_tokens(static_cast<uint32_t>(v0 >> 2), a.key, w);
    for (int q = 0; q < 4; ++q) {
      const __m256 z = load_z(a, v0 + 8 * q);
      const __m256 s = _mm256_blendv_ps(ninf, _mm256_add_ps(z, gumbel_avx2(w[q])), kept_avx2(a, z));
      const __m256 upd = _mm256_cmp_ps(s, best, _CMP_GT_OQ);  // strict: the first index per lane
      best = _mm256_blendv_ps(best, s, upd);
      const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(v0 + 8 * q)), lane);
      bidx = _mm256_blendv_epi8(bidx, idx, _mm256_castps_si256(upd));
    }
  }
  alignas(32) float bs[8];
  alignas(32) int32_t bi[8];
  _mm256_store_ps(bs, best);
  _mm256_store_si256(reinterpret_cast<__m256i*>(bi), bidx);
  Best r;
  for (int l = 0; l < 8; ++l)
    if (bi[l] >= 0) merge_best(r, Best{bs[l], bi[l]});
  return r;
}

TTS_AVX2 static int64_t find_first_avx2(const float* x, int64_t V, float val) {
  const __m256 vv = _mm256_set1_ps(val);
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    const int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vv, _CMP_EQ_OQ));
    if (m) return i + __builtin_ctz(m);
  }
  for (; i < V; ++i)
    if (x[i] == val) return i;
  return -1;
}

TTS_AVX2 static void collect_ge_avx2(const float* x, int64_t V, float lo, std::vector<int32_t>& out) {
  const __m256 vlo = _mm256_set1_ps(lo);
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vlo, _CMP_GE_OQ)));
    while (m) {
      out.push_back(static_cast<int32_t>(i + __builtin_ctz(m)));
      m &= m - 1;
    }
  }
  for (; i < V; ++i)
    if (x[i] >= lo) out.push_back(static_cast<int32_t>(i));
}

TTS_AVX2 static void bf16_to_f32_avx2(const uint16_t* src, float* dst, int64_t b, int64_t e) {
  int64_t i = b;
  for (; i + 8 <= e; i += 8) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
  }
  for (; i < e; ++i) {
    const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(dst + i, &u, 4);
  }
}

TTS_AVX2 static void f16_to_f32_avx2(const uint16_t* src, float* dst, int64_t b, int64_t e) {
  int64_t i = b;
  for (; i + 8 <= e; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < e; ++i) dst[i] = tts::f16_to_float(src[i]);
}

#endif  // TTS_X86

// ---------------------------------------------------------------------------
// Dispatch (common/cpu_features.h)
// ---------------------------------------------------------------------------
void Ops::stats(const float* x, int64_t b, int64_t e, float* bmax, float& mx, bool& nan, double& sum,
                bool with_sum) const {
  TTS_DISPATCH(avx2, stats_avx2(x, b, e, bmax, mx, nan, sum, with_sum),
               stats_generic(x, b, e, bmax, mx, nan, sum, with_sum));
}

void Ops::hist(const float* x, int64_t b, int64_t e, float T, float zmax, float tk, double* h) const {
  TTS_DISPATCH(avx2, hist_avx2(x, b, e, T, zmax, tk, h), hist_generic(x, b, e, T, zmax, tk, h));
}

void Ops::collect_bin(const float* x, int64_t V, float T, float zmax, float tk, int bsel, std::vector<Cand>& out) const {
  TTS_DISPATCH(avx2, collect_bin_avx2(x, V, T, zmax, tk, bsel, out), collect_bin_generic(x, V, T, zmax, tk, bsel, out));
}

bool Ops::collect_kept(const float* x, int64_t V, float T, float thr, std::vector<int32_t>& out, size_t cap) const {
  return TTS_DISPATCH(avx2, collect_kept_avx2(x, V, T, thr, out, cap), collect_kept_generic(x, V, T, thr, out, cap));
}

void Ops::group_noise(const PhiloxKey& key, int64_t ng, float* h) const {
  TTS_DISPATCH(avx2, group_noise_avx2(key, ng, h), group_noise_generic(key, ng, h));
}

GroupSum Ops::group_sum(const KeepRule& a, int64_t j) const {
  return TTS_DISPATCH(avx2, group_sum_avx2(a, j), group_sum_generic(a, j));
}

Best Ops::group_token(const KeepRule& a, int64_t j) const {
  return TTS_DISPATCH(avx2, group_token_avx2(a, j), group_token_generic(a, j));
}

int64_t Ops::find_first(const float* x, int64_t V, float val) const {
  return TTS_DISPATCH(avx2, find_first_avx2(x, V, val), find_first_generic(x, V, val));
}

void Ops::collect_ge(const float* x, int64_t V, float lo, std::vector<int32_t>& out) const {
  TTS_DISPATCH(avx2, collect_ge_avx2(x, V, lo, out), collect_ge_generic(x, V, lo, out));
}

void Ops::to_float(tts::DType dt, const void* src, float* dst, int64_t b, int64_t e) const {
  const uint16_t* s = static_cast<const uint16_t*>(src);
#if TTS_X86
  if (avx2) {
    dt == tts::DType::kBFloat16 ? bf16_to_f32_avx2(s, dst, b, e) : f16_to_f32_avx2(s, dst, b, e);
    return;
  }
#endif
  if (dt == tts::DType::kBFloat16) {
    for (int64_t i = b; i < e; ++i) dst[i] = tts::bf16_to_float(s[i]);
  } else {
    for (int64_t i = b; i < e; ++i) dst[i] = tts::f16_to_float(s[i]);
  }
}

}  // namespace tts_sampling
