// Fused CPU sampler: budget forcing + temperature / top-k / top-p / min-p
// sampling with Philox Gumbel-max, one row at a time.
//
// Semantics: tts_kernels/sampling/reference.py (this kernel must agree with it).
//
// Per row (x = float32 logits, z = x / T):
//   1. one stats pass: max, NaN/+inf detection, maxima of 64-token blocks and
//      the sum of exp(x - max) (running max, rescaled when it grows) for the logprob
//   2. budget rules 1-2 (forced tokens) and rule 3's masking of end[0]
//   3. draw:
//      - greedy: first index of the maximum
//      - top-k: the k-th largest block maximum bounds the k-th largest logit
//        from below; only logits >= that bound (about k of them) are gathered
//        and the threshold is selected among them (nth_element). Small kept
//        sets then finish on the gathered list (sort of <= 4096 values for
//        top-p, scalar Philox + Gumbel for the survivors).
//      - top-p over a large set: one pass computes e = exp(z - zmax) and a
//        4096-bin histogram of the mass over (zmax - z); the bin where the
//        cumulative mass reaches top_p is located, only its tokens are sorted.
//      - the Gumbel pass: 8 Philox counters (32 tokens) at a time, keep mask
//        (z >= threshold, min-p), argmax of z + g; 32-token blocks whose
//        maximum cannot beat the best score so far (z + max Gumbel) or lies
//        below the keep threshold are skipped without computing noise.
//   4. budget state update (rule 3 and the state machine), in place.
// Rows run in parallel (the shared scheduler, common/parallel.h); with fewer
// rows than threads the passes of a row are split into chunks that run in
// parallel instead.
// Set TTS_KERNELS_CPU_ISA=generic to force the portable (non-AVX2) code paths.
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <tuple>
#include <vector>

#include "budget/budget_forcing.h"
#include "common/cpu_features.h"
#include "common/parallel.h"
#include "sampler_math.h"

namespace tts_sampling {
namespace budget = tts::budget;
namespace {

constexpr int kNumBins = 4096;       // histogram of zmax - z for top-p
constexpr float kBinScale = 128.0f;  // bins of width 1/128 over [0, 32)
constexpr int64_t kBlock = 64;       // block of the block maxima (top-k bound)
constexpr int64_t kSmallSet = 4096;  // top-k sets up to this size finish on the list

struct Best {
  float s = -kInf;
  int64_t i = -1;
};

static inline void merge_best(Best& a, const Best& b) {
  if (b.i < 0) return;
  if (a.i < 0 || b.s > a.s || (b.s == a.s && b.i < a.i)) a = b;
}

// Arguments of the Gumbel pass.
struct GumbelArgs {
  const float* x;
  float T, zmax, thr;  // keep z >= thr
  bool minp_on;
  float min_p, minp_zlo;  // tokens with z < minp_zlo surely fail min-p
  float prune0;           // a score some kept token reaches
  PhiloxKey key;
};

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

// max, NaN flag, sum of exp(x - max) and the maxima of 64-token blocks of
// x[b, e) (b a multiple of 64).
static void stats_generic(const float* x, int64_t b, int64_t e, float* bmax, float& mx, bool& nan, double& sum) {
  float M = -kInf;
  double acc = 0.0;
  bool n = false;
  for (int64_t s = b; s < e; s += kBlock) {
    const int64_t t = std::min(e, s + kBlock);
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

struct Cand {
  float z;
  float e;
  int32_t i;
};

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
  if (s < e) {
    float bm = -kInf;
    for (int64_t i = s; i < e; ++i) {
      const float v = x[i];
      n |= (v != v);
      bm = v > bm ? v : bm;
    }
    bmax[s / kBlock] = bm;
    raise_max(M, total, bm);
    if (M > -kInf && M < kInf)
      for (int64_t i = s; i < e; ++i) total += static_cast<double>(std::exp(x[i] - M));
  }
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
  for (; i < e; ++i) dst[i] = static_cast<float>(c10::Half(src[i], c10::Half::from_bits()));
}

#endif  // TTS_X86

// ---------------------------------------------------------------------------
// Dispatch (common/cpu_features.h)
// ---------------------------------------------------------------------------
struct Ops {
  bool avx2;
  void stats(const float* x, int64_t b, int64_t e, float* bmax, float& mx, bool& nan, double& sum) const {
    TTS_DISPATCH(avx2, stats_avx2(x, b, e, bmax, mx, nan, sum), stats_generic(x, b, e, bmax, mx, nan, sum));
  }
  void hist(const float* x, int64_t b, int64_t e, float T, float zmax, float tk, double* h) const {
    TTS_DISPATCH(avx2, hist_avx2(x, b, e, T, zmax, tk, h), hist_generic(x, b, e, T, zmax, tk, h));
  }
  void collect_bin(const float* x, int64_t V, float T, float zmax, float tk, int bsel, std::vector<Cand>& out) const {
    TTS_DISPATCH(avx2, collect_bin_avx2(x, V, T, zmax, tk, bsel, out), collect_bin_generic(x, V, T, zmax, tk, bsel, out));
  }
  bool collect_kept(const float* x, int64_t V, float T, float zmax, float thr, bool m_on, float mp,
                    std::vector<int32_t>& out, size_t cap) const {
    return TTS_DISPATCH(avx2, collect_kept_avx2(x, V, T, zmax, thr, m_on, mp, out, cap),
                        collect_kept_generic(x, V, T, zmax, thr, m_on, mp, out, cap));
  }
  Best gumbel(const GumbelArgs& a, int64_t b, int64_t e) const {
    return TTS_DISPATCH(avx2, gumbel_pass_avx2(a, b, e), gumbel_generic(a, b, e));
  }
  int64_t find_first(const float* x, int64_t V, float val) const {
    return TTS_DISPATCH(avx2, find_first_avx2(x, V, val), find_first_generic(x, V, val));
  }
  void collect_ge(const float* x, int64_t V, float lo, std::vector<int32_t>& out) const {
    TTS_DISPATCH(avx2, collect_ge_avx2(x, V, lo, out), collect_ge_generic(x, V, lo, out));
  }
  void to_float(at::ScalarType dt, const void* src, float* dst, int64_t b, int64_t e) const {
    const uint16_t* s = static_cast<const uint16_t*>(src);
#if TTS_X86
    if (avx2) {
      dt == at::kBFloat16 ? bf16_to_f32_avx2(s, dst, b, e) : f16_to_f32_avx2(s, dst, b, e);
      return;
    }
#endif
    if (dt == at::kBFloat16) {
      for (int64_t i = b; i < e; ++i) dst[i] = static_cast<float>(c10::BFloat16(s[i], c10::BFloat16::from_bits()));
    } else {
      for (int64_t i = b; i < e; ++i) dst[i] = static_cast<float>(c10::Half(s[i], c10::Half::from_bits()));
    }
  }
};

// Parallel loop over n work items: the shared scheduler (common/parallel.h).
template <class F>
static void par_for(int64_t n, const F& fn) {
  tts::cpu::parallel_for(n, fn);
}

// ---------------------------------------------------------------------------
// Chunking of one row's passes (parallel when the batch is smaller than the pool)
// ---------------------------------------------------------------------------
struct Chunks {
  int64_t n, size, count;
  template <class F>
  void run(F&& f) const {  // f(chunk, begin, end)
    if (count == 1) {
      f(int64_t{0}, int64_t{0}, n);
      return;
    }
    par_for(count, [&](int64_t c) { f(c, c * size, std::min(n, (c + 1) * size)); });
  }
};

static Chunks make_chunks(int64_t n, bool par) {
  if (!par) return {n, std::max<int64_t>(n, 1), 1};
  const int64_t nt = tts::cpu::num_threads();
  int64_t size = (n + 4 * nt - 1) / (4 * nt);
  size = std::max<int64_t>(size, 8192);
  size = (size + kBlock - 1) / kBlock * kBlock;
  return {n, size, (n + size - 1) / size};
}

struct Scratch {
  std::vector<float> xf, bmax, fvals;
  std::vector<Cand> cands;
  std::vector<int32_t> idx, kept;
  std::vector<double> hist;
};

static Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

struct Ctx {
  at::ScalarType dtype;
  const void* logits;
  int64_t V;
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  const float* min_p;
  const int64_t* seed;
  const int64_t* offset;
  int32_t* budget;
  const int32_t* forced;
  int64_t L, num_wait, num_end;
  int64_t* out_tok;
  float* out_lp;
  Ops ops;
};

static float logit_at(const Ctx& c, int64_t r, int64_t i) {
  const int64_t o = r * c.V + i;
  switch (c.dtype) {
    case at::kFloat: return static_cast<const float*>(c.logits)[o];
    case at::kBFloat16: return static_cast<float>(static_cast<const c10::BFloat16*>(c.logits)[o]);
    default: return static_cast<float>(static_cast<const c10::Half*>(c.logits)[o]);
  }
}

// max, NaN flag, sum of exp(x - max) and block maxima of x (into s.bmax).
static void row_stats(const Ctx& c, Scratch& s, const float* x, const Chunks& ch, float& mx, bool& nan,
                      double& sum) {
  const int64_t nblocks = (c.V + kBlock - 1) / kBlock;
  s.bmax.resize(nblocks);
  std::vector<float> pm(ch.count);
  std::vector<char> pn(ch.count);
  std::vector<double> ps(ch.count);
  float* bm = s.bmax.data();
  ch.run([&](int64_t k, int64_t b, int64_t e) {
    bool n = false;
    c.ops.stats(x, b, e, bm, pm[k], n, ps[k]);
    pn[k] = n;
  });
  mx = -kInf;
  nan = false;
  for (int64_t k = 0; k < ch.count; ++k) {
    mx = std::max(mx, pm[k]);
    nan |= pn[k] != 0;
  }
  sum = 0.0;
  if (mx > -kInf && mx < kInf)
    for (int64_t k = 0; k < ch.count; ++k)
      if (pm[k] > -kInf) sum += ps[k] * std::exp(static_cast<double>(pm[k]) - static_cast<double>(mx));
}

// Argmax of z + gumbel among the listed tokens (kept already decided).
static Best gumbel_list(const float* x, float T, const int32_t* ids, int64_t n, const PhiloxKey& key) {
  Best best;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t v = ids[j];
    const float s = x[v] / T + gumbel_scalar(v, key);
    merge_best(best, Best{s, v});
  }
  return best;
}

static void sort_desc(std::vector<Cand>& v) {
  std::sort(v.begin(), v.end(), [](const Cand& a, const Cand& b) { return a.z > b.z; });
}

// Top-p threshold on candidates sorted by z descending: the first z whose
// cumulative mass (accumulated in double from cum0, compared in float) reaches target.
static float top_p_walk(const std::vector<Cand>& cs, double cum0, float target) {
  double cum = cum0;
  for (const Cand& q : cs) {
    cum += q.e;
    if (static_cast<float>(cum) >= target) return q.z;
  }
  return cs.empty() ? kInf : cs.back().z;
}

// Sampled row on a small explicit set S (all with z >= t_k), indices in s.idx.
static int64_t finish_small(Scratch& s, const float* x, float T, float zmax, float p, bool p_on, float mp, bool m_on,
                            const PhiloxKey& key) {
  auto& cs = s.cands;
  cs.clear();
  double total = 0.0;
  for (int32_t v : s.idx) {
    const float z = x[v] / T;
    const float e = std::exp(z - zmax);
    cs.push_back({z, e, v});
  }
  sort_desc(cs);
  for (const Cand& q : cs) total += q.e;
  const float tp = p_on ? top_p_walk(cs, 0.0, p * static_cast<float>(total)) : -kInf;
  s.kept.clear();
  for (const Cand& q : cs) {
    if (q.z < tp) break;
    if (m_on && !(q.e >= mp)) continue;
    s.kept.push_back(q.i);
  }
  Best b = gumbel_list(x, T, s.kept.data(), static_cast<int64_t>(s.kept.size()), key);
  return b.i < 0 ? 0 : b.i;
}

// Draw of a sampled row (T > 0) from float logits x with maximum xmax.
static int64_t draw_row(const Ctx& c, Scratch& s, int64_t r, const float* x, float xmax, const Chunks& ch) {
  const int64_t V = c.V;
  const float T = c.temperature[r];
  const int64_t k = c.top_k[r];
  const float p = c.top_p[r];
  const float mp = c.min_p[r];
  const bool k_on = k > 0 && k < V;
  const bool p_on = p < 1.0f;
  const bool m_on = mp > 0.0f;
  const PhiloxKey key = make_key(c.seed[r], c.offset[r]);
  const float zmax = xmax / T;

  // ---- top-k threshold -----------------------------------------------------
  float tk = -kInf;
  if (k_on) {
    const int64_t nblocks = static_cast<int64_t>(s.bmax.size());
    float xk;
    bool have_set = false;
    const int64_t nb8 = (V + 7) / 8;
    if (k <= nb8) {
      // The k-th largest block maximum is <= the k-th largest logit (the k
      // blocks with the largest maxima hold k distinct logits at least that
      // large): blocks of 64 from the stats pass, or of 8 for larger k.
      if (k <= nblocks) {
        s.fvals.assign(s.bmax.begin(), s.bmax.end());
      } else {
        s.fvals.resize(nb8);
        for (int64_t j = 0; j < nb8; ++j) {
          float m = -kInf;
          for (int64_t i = 8 * j, t = std::min(V, 8 * j + 8); i < t; ++i) m = x[i] > m ? x[i] : m;
          s.fvals[j] = m;
        }
      }
      std::nth_element(s.fvals.begin(), s.fvals.begin() + (k - 1), s.fvals.end(), std::greater<float>());
      const float lo = s.fvals[k - 1];
      s.idx.clear();
      c.ops.collect_ge(x, V, lo, s.idx);
      s.fvals.resize(s.idx.size());
      for (size_t j = 0; j < s.idx.size(); ++j) s.fvals[j] = x[s.idx[j]];
      std::nth_element(s.fvals.begin(), s.fvals.begin() + (k - 1), s.fvals.end(), std::greater<float>());
      xk = s.fvals[k - 1];
      tk = xk / T;
      if (lo / T >= tk) {
        // z ties at the threshold may lie below the bound: take the full set.
        s.idx.clear();
        for (int64_t i = 0; i < V; ++i)
          if (x[i] / T >= tk) s.idx.push_back(static_cast<int32_t>(i));
      } else {
        size_t m = 0;
        for (int32_t v : s.idx)
          if (x[v] / T >= tk) s.idx[m++] = v;
        s.idx.resize(m);
      }
      have_set = true;
    } else {
      s.fvals.assign(x, x + V);
      std::nth_element(s.fvals.begin(), s.fvals.begin() + (k - 1), s.fvals.end(), std::greater<float>());
      xk = s.fvals[k - 1];
      tk = xk / T;
      s.idx.clear();
      have_set = c.ops.collect_kept(x, V, T, zmax, tk, false, 0.0f, s.idx, static_cast<size_t>(kSmallSet));
    }
    if (have_set && static_cast<int64_t>(s.idx.size()) <= kSmallSet)
      return finish_small(s, x, T, zmax, p, p_on, mp, m_on, key);
  }

  // ---- top-p threshold over a large set ---------------------------------------
  float thr = tk;
  if (p_on) {
    const int64_t nh = kNumBins;
    s.hist.assign(ch.count * nh, 0.0);
    double* hh = s.hist.data();
    ch.run([&](int64_t q, int64_t b, int64_t e) { c.ops.hist(x, b, e, T, zmax, tk, hh + q * nh); });
    for (int64_t q = 1; q < ch.count; ++q)
      for (int i = 0; i < kNumBins; ++i) hh[i] += hh[q * nh + i];
    double total = 0.0;
    for (int i = 0; i < kNumBins; ++i) total += hh[i];
    const float target = p * static_cast<float>(total);
    // First bin (from the top) where the cumulative mass reaches the target.
    double cum = 0.0;
    int bsel = -1;
    for (int i = 0; i < kNumBins; ++i) {
      if (!(hh[i] > 0.0)) continue;
      if (static_cast<float>(cum + hh[i]) >= target) {
        bsel = i;
        break;
      }
      cum += hh[i];
    }
    if (bsel < 0) {  // rounding: take the last bin with mass
      cum = 0.0;
      for (int i = 0; i < kNumBins; ++i)
        if (hh[i] > 0.0) bsel = i;
      for (int i = 0; i < bsel; ++i) cum += hh[i];
    }
    // Tokens of the crossing bin, sorted by z descending.
    auto& cs = s.cands;
    cs.clear();
    c.ops.collect_bin(x, V, T, zmax, tk, bsel, cs);
    sort_desc(cs);
    const float tp = top_p_walk(cs, cum, target);
    thr = std::max(tp, tk);
    // Few survivors: finish on the list; else the Gumbel pass with the threshold.
    s.kept.clear();
    const size_t cap = static_cast<size_t>(std::max<int64_t>(1024, V / 16));
    if (c.ops.collect_kept(x, V, T, zmax, thr, m_on, mp, s.kept, cap)) {
      Best b = gumbel_list(x, T, s.kept.data(), static_cast<int64_t>(s.kept.size()), key);
      return b.i < 0 ? 0 : b.i;
    }
  }

  // ---- Gumbel pass ----------------------------------------------------------------
  GumbelArgs a;
  a.x = x;
  a.T = T;
  a.zmax = zmax;
  a.thr = thr;
  a.minp_on = m_on;
  a.min_p = mp;
  a.minp_zlo = m_on ? zmax + std::log(mp) - (1e-3f + 1e-6f * std::fabs(zmax)) : -kInf;
  a.key = key;
  const int64_t imax = c.ops.find_first(x, V, xmax);
  a.prune0 = imax >= 0 ? zmax + gumbel_scalar(imax, key) : -kInf;
  std::vector<Best> parts(ch.count);
  ch.run([&](int64_t q, int64_t b, int64_t e) { parts[q] = c.ops.gumbel(a, b, e); });
  Best best;
  for (const auto& b : parts) merge_best(best, b);
  return best.i < 0 ? 0 : best.i;
}

static void process_row(const Ctx& c, int64_t r, bool par) {
  Scratch& s = scratch();
  const int64_t V = c.V;
  const Chunks ch = make_chunks(V, par);

  // ---- float row, stats, validity, logsumexp --------------------------------------
  const float* x;
  if (c.dtype == at::kFloat) {
    x = static_cast<const float*>(c.logits) + r * V;
  } else {
    s.xf.resize(V);
    const char* src = static_cast<const char*>(c.logits) + r * V * 2;
    float* dst = s.xf.data();
    ch.run([&](int64_t, int64_t b, int64_t e) { c.ops.to_float(c.dtype, src, dst, b, e); });
    x = dst;
  }
  float xmax;
  bool nan;
  double se;
  row_stats(c, s, x, ch, xmax, nan, se);
  bool valid = !nan && xmax > -kInf && xmax < kInf;
  if (!valid) {
    c.out_tok[r] = -1;
    c.out_lp[r] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const float lse = xmax + static_cast<float>(std::log(se));

  // ---- budget rules 1 and 2, rule 3's masking (csrc/budget/budget_forcing.h) ---------
  int32_t* st = c.budget != nullptr ? c.budget + r * budget::kStateColumns : nullptr;
  const budget::ForcedIds fids{c.forced, c.L, c.num_wait, c.num_end};
  const budget::Plan bp = st != nullptr ? budget::plan(st, fids) : budget::no_budget();
  const int64_t end0 = bp.end0, forced_tok = bp.forced_tok;

  int64_t tok = forced_tok;
  if (tok < 0) {
    const float* xd = x;
    float dmax = xmax;
    if (bp.mask_end) {  // an early end gets probability 0
      if (x != s.xf.data()) {
        s.xf.resize(V);
        std::memcpy(s.xf.data(), x, V * sizeof(float));
      }
      s.xf[end0] = -kInf;
      xd = s.xf.data();
      bool n2;
      double se2;
      row_stats(c, s, xd, ch, dmax, n2, se2);
      if (!(dmax > -kInf)) {  // nothing finite left: invalid row, budget untouched
        c.out_tok[r] = -1;
        c.out_lp[r] = std::numeric_limits<float>::quiet_NaN();
        return;
      }
    }
    const float T = c.temperature[r];
    if (!(T > 0.0f)) {
      tok = c.ops.find_first(xd, V, dmax);
    } else {
      tok = draw_row(c, s, r, xd, dmax, ch);
    }
  }

  // ---- budget rule 3 and state update ---------------------------------------------------------
  if (st != nullptr) tok = budget::advance(st, bp, fids, tok);

  c.out_tok[r] = tok;
  c.out_lp[r] = logit_at(c, r, tok) - lse;
}

static void check_row_param(const at::Tensor& t, const char* name, at::ScalarType dt, int64_t B) {
  TORCH_CHECK(t.device().is_cpu(), "sample_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dt, "sample_cpu: ", name, " must have dtype ", dt, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, "sample_cpu: ", name, " must have shape [", B, "], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "sample_cpu: ", name, " must be contiguous");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sample_cpu(const at::Tensor& logits, const at::Tensor& temperature,
                                              const at::Tensor& top_k, const at::Tensor& top_p,
                                              const at::Tensor& min_p, const at::Tensor& seed,
                                              const at::Tensor& offset, const std::optional<at::Tensor>& budget,
                                              const std::optional<at::Tensor>& forced_ids, int64_t num_wait,
                                              int64_t num_end) {
  TORCH_CHECK(logits.device().is_cpu(), "sample_cpu: logits must be a CPU tensor");
  TORCH_CHECK(logits.dim() == 2, "sample_cpu: logits must be [B, V], got ", logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "sample_cpu: logits must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(logits.is_contiguous(), "sample_cpu: logits must be contiguous");
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V >= 1, "sample_cpu: logits must have at least one column");
  TORCH_CHECK(V < (int64_t{1} << 31) - 64, "sample_cpu: vocabulary too large");
  check_row_param(temperature, "temperature", at::kFloat, B);
  check_row_param(top_k, "top_k", at::kInt, B);
  check_row_param(top_p, "top_p", at::kFloat, B);
  check_row_param(min_p, "min_p", at::kFloat, B);
  check_row_param(seed, "seed", at::kLong, B);
  check_row_param(offset, "offset", at::kLong, B);

  Ctx c;
  c.dtype = dt;
  c.logits = logits.data_ptr();
  c.V = V;
  c.temperature = temperature.data_ptr<float>();
  c.top_k = top_k.data_ptr<int32_t>();
  c.top_p = top_p.data_ptr<float>();
  c.min_p = min_p.data_ptr<float>();
  c.seed = seed.data_ptr<int64_t>();
  c.offset = offset.data_ptr<int64_t>();
  c.budget = nullptr;
  c.forced = nullptr;
  c.L = 0;
  c.num_wait = num_wait;
  c.num_end = num_end;
  if (budget.has_value() && budget->defined()) {
    const at::Tensor& bt = *budget;
    TORCH_CHECK(bt.device().is_cpu(), "sample_cpu: budget must be a CPU tensor");
    TORCH_CHECK(bt.scalar_type() == at::kInt, "sample_cpu: budget must be int32, got ", bt.scalar_type());
    TORCH_CHECK(bt.dim() == 2 && bt.size(0) == B && bt.size(1) == budget::kStateColumns,
                "sample_cpu: budget must be [", B, ", ", int(budget::kStateColumns), "], got ", bt.sizes());
    TORCH_CHECK(bt.is_contiguous(), "sample_cpu: budget must be contiguous");
    TORCH_CHECK(forced_ids.has_value() && forced_ids->defined(), "sample_cpu: forced_ids required with budget");
    const at::Tensor& f = *forced_ids;
    TORCH_CHECK(f.device().is_cpu() && f.scalar_type() == at::kInt && f.dim() == 1 && f.is_contiguous(),
                "sample_cpu: forced_ids must be a contiguous int32 CPU vector");
    c.L = f.size(0);
    TORCH_CHECK(num_wait >= 0 && num_end >= 1 && num_wait + num_end <= c.L,
                "sample_cpu: need 0 <= num_wait, 1 <= num_end, num_wait + num_end <= len(forced_ids)");
    const int32_t* fp = f.data_ptr<int32_t>();
    for (int64_t i = 0; i < c.L; ++i)
      TORCH_CHECK(fp[i] >= 0 && fp[i] < V, "sample_cpu: forced_ids[", i, "] = ", fp[i], " outside [0, ", V, ")");
    c.budget = bt.data_ptr<int32_t>();
    c.forced = fp;
  }

  at::Tensor tok = at::empty({B}, logits.options().dtype(at::kLong));
  at::Tensor lp = at::empty({B}, logits.options().dtype(at::kFloat));
  c.out_tok = tok.data_ptr<int64_t>();
  c.out_lp = lp.data_ptr<float>();
  c.ops = Ops{tts::cpu::use_avx2()};
  if (B == 0) return {tok, lp};

  const int64_t nt = tts::cpu::num_threads();
  if (B >= nt || V < 32768 || nt == 1) {
    if (B * V < 32768) {
      for (int64_t r = 0; r < B; ++r) process_row(c, r, false);
    } else {
      par_for(B, [&](int64_t r) { process_row(c, r, false); });
    }
  } else {
    for (int64_t r = 0; r < B; ++r) process_row(c, r, true);
  }
  return {tok, lp};
}

}  // namespace tts_sampling

TORCH_LIBRARY_IMPL(tts_kernels_C, CPU, m) { m.impl("sample_cpu", &tts_sampling::sample_cpu); }
