// Passes of the CPU sampler over a row of logits (see sampler.h for the
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
// maximum into bmax, NaN flag, running max M and sum of exp(x - M).
static inline void stats_block(const float* x, int64_t s, int64_t t, float* bmax, float& M, double& acc, bool& n) {
  float bm = -kInf;
  for (int64_t i = s; i < t; ++i) {
    const float v = x[i];
    n |= (v != v);
    bm = v > bm ? v : bm;
  }
  bmax[s / kBlock] = bm;
  raise_max(M, acc, bm);
  if (M > -kInf && M < kInf)
    for (int64_t i = s; i < t; ++i) acc += static_cast<double>(std::exp(x[i] - M));
}

// max, NaN flag, sum of exp(x - max) and the maxima of 64-token blocks of
// x[b, e) (b a multiple of 64).
static void stats_generic(const float* x, int64_t b, int64_t e, float* bmax, float& mx, bool& nan, double& sum) {
  float M = -kInf;
  double acc = 0.0;
  bool n = false;
  for (int64_t s = b; s < e; s += kBlock) stats_block(x, s, std::min(e, s + kBlock), bmax, M, acc, n);
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

// Tokens with z >= thr (and exp(z - zmax) >= min_p when on).
// Returns false (stopping early) once more than cap tokens are found.
static bool collect_kept_generic(const float* x, int64_t V, float T, float zmax, float thr, bool m_on, float mp,
                                 std::vector<int32_t>& out, size_t cap) {
  for (int64_t i = 0; i < V; ++i) {
    const float z = x[i] / T;
    if (z >= thr && (!m_on || std::exp(z - zmax) >= mp)) {
      if (out.size() >= cap) return false;
      out.push_back(static_cast<int32_t>(i));
    }
  }
  return true;
}

static Best gumbel_generic(const GumbelArgs& a, int64_t b, int64_t e) {
  Best best;
  float prune = a.prune0;
  const float lo = a.minp_on ? std::max(a.thr, a.minp_zlo) : a.thr;
  int64_t cached = -1;
  uint32_t w[4];
  for (int64_t v = b; v < e; ++v) {
    const float z = a.x[v] / a.T;
    if (z < lo || z < prune - kGumbelMax) continue;
    if (a.minp_on && !(std::exp(z - a.zmax) >= a.min_p)) continue;
    if ((v >> 2) != cached) {
      cached = v >> 2;
      philox_scalar(static_cast<uint32_t>(cached), a.key, w);
    }
    const float s = z + gumbel_of_word(w[v & 3]);
    if (s > best.s) {
      best.s = s;
      best.i = v;
      prune = std::max(prune, s);
    }
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
                                double& sum) {
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
    if (M > -kInf && M < kInf) {
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
  if (s < e) stats_block(x, s, e, bmax, M, total, n);
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

TTS_AVX2 static bool collect_kept_avx2(const float* x, int64_t V, float T, float zmax, float thr, bool m_on, float mp,
                                       std::vector<int32_t>& out, size_t cap) {
  const __m256 vT = _mm256_set1_ps(T), vzmax = _mm256_set1_ps(zmax), vthr = _mm256_set1_ps(thr),
               vmp = _mm256_set1_ps(mp);
  for (int64_t i = 0; i < V; i += 8) {
    const __m256 z = _mm256_div_ps(load8_padded(x, i, V), vT);
    __m256 in = _mm256_cmp_ps(z, vthr, _CMP_GE_OQ);
    if (_mm256_movemask_ps(in) == 0) continue;
    if (m_on) in = _mm256_and_ps(in, _mm256_cmp_ps(exp_avx2(_mm256_sub_ps(z, vzmax)), vmp, _CMP_GE_OQ));
    unsigned m = static_cast<unsigned>(_mm256_movemask_ps(in)) & lanes_below(i, V);
    if (out.size() + static_cast<size_t>(__builtin_popcount(m)) > cap) return false;
    while (m) {
      out.push_back(static_cast<int32_t>(i + __builtin_ctz(m)));
      m &= m - 1;
    }
  }
  return true;
}

TTS_AVX2 static Best gumbel_pass_avx2(const GumbelArgs& a, int64_t b, int64_t e) {
  const __m256 vT = _mm256_set1_ps(a.T), vzmax = _mm256_set1_ps(a.zmax), vthr = _mm256_set1_ps(a.thr);
  const __m256 vminp = _mm256_set1_ps(a.min_p), ninf = _mm256_set1_ps(-kInf);
  const float static_lo = a.minp_on ? std::max(a.thr, a.minp_zlo) : a.thr;
  __m256 best = ninf;
  __m256i bidx = _mm256_set1_epi32(-1);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  float prune = a.prune0;
  alignas(32) float tx[32];
  for (int64_t v0 = b; v0 < e; v0 += 32) {
    const float* p = a.x + v0;
    if (v0 + 32 > e) {
      for (int64_t l = 0; l < 32; ++l) tx[l] = v0 + l < e ? p[l] : -kInf;
      p = tx;
    }
    __m256 z[4];
    for (int j = 0; j < 4; ++j) z[j] = _mm256_div_ps(_mm256_loadu_ps(p + 8 * j), vT);
    const float zb = hmax8(_mm256_max_ps(_mm256_max_ps(z[0], z[1]), _mm256_max_ps(z[2], z[3])));
    // Skip blocks that are all dropped, or that cannot beat the best score even
    // with the largest possible noise.
    if (!(zb >= std::max(static_lo, prune - kGumbelMax))) continue;
    __m256i w[4];
    philox8_tokens(static_cast<uint32_t>(v0 >> 2), a.key, w);
    // Tighter, per lane (tokens v0 + 8 j + lane, j = 0..3): the lane's largest z
    // plus the Gumbel value of its largest uniform bounds the lane's scores.
    {
      const __m256i wm = _mm256_max_epu32(_mm256_max_epu32(w[0], w[1]), _mm256_max_epu32(w[2], w[3]));
      const __m256 zl = _mm256_max_ps(_mm256_max_ps(z[0], z[1]), _mm256_max_ps(z[2], z[3]));
      const __m256 bnd = _mm256_add_ps(zl, gumbel_avx2(wm));
      const float lim = prune - (1e-4f + 1e-5f * std::fabs(prune));
      if (_mm256_movemask_ps(_mm256_cmp_ps(bnd, _mm256_set1_ps(lim), _CMP_GE_OQ)) == 0) continue;
    }
    for (int j = 0; j < 4; ++j) {
      __m256 keep = _mm256_cmp_ps(z[j], vthr, _CMP_GE_OQ);
      if (a.minp_on)
        keep = _mm256_and_ps(keep, _mm256_cmp_ps(exp_avx2(_mm256_sub_ps(z[j], vzmax)), vminp, _CMP_GE_OQ));
      const __m256 s = _mm256_blendv_ps(ninf, _mm256_add_ps(z[j], gumbel_avx2(w[j])), keep);
      const __m256 upd = _mm256_cmp_ps(s, best, _CMP_GT_OQ);
      best = _mm256_blendv_ps(best, s, upd);
      const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(v0 + 8 * j)), lane);
      bidx = _mm256_blendv_epi8(bidx, idx, _mm256_castps_si256(upd));
    }
    prune = std::max(prune, hmax8(best));
  }
  alignas(32) float bs[8];
  alignas(32) int32_t bi[8];
  _mm256_store_ps(bs, best);
  _mm256_store_si256(reinterpret_cast<__m256i*>(bi), bidx);
  Best r;
  for (int l = 0; l < 8; ++l) {
    if (bi[l] < 0) continue;
    merge_best(r, Best{bs[l], bi[l]});
  }
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
void Ops::stats(const float* x, int64_t b, int64_t e, float* bmax, float& mx, bool& nan, double& sum) const {
  TTS_DISPATCH(avx2, stats_avx2(x, b, e, bmax, mx, nan, sum), stats_generic(x, b, e, bmax, mx, nan, sum));
}

void Ops::hist(const float* x, int64_t b, int64_t e, float T, float zmax, float tk, double* h) const {
  TTS_DISPATCH(avx2, hist_avx2(x, b, e, T, zmax, tk, h), hist_generic(x, b, e, T, zmax, tk, h));
}

void Ops::collect_bin(const float* x, int64_t V, float T, float zmax, float tk, int bsel, std::vector<Cand>& out) const {
  TTS_DISPATCH(avx2, collect_bin_avx2(x, V, T, zmax, tk, bsel, out), collect_bin_generic(x, V, T, zmax, tk, bsel, out));
}

bool Ops::collect_kept(const float* x, int64_t V, float T, float zmax, float thr, bool m_on, float mp,
                    std::vector<int32_t>& out, size_t cap) const {
  return TTS_DISPATCH(avx2, collect_kept_avx2(x, V, T, zmax, thr, m_on, mp, out, cap),
                      collect_kept_generic(x, V, T, zmax, thr, m_on, mp, out, cap));
}

Best Ops::gumbel(const GumbelArgs& a, int64_t b, int64_t e) const {
  return TTS_DISPATCH(avx2, gumbel_pass_avx2(a, b, e), gumbel_generic(a, b, e));
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
