// Math building blocks of the fused CPU sampler: Philox4x32-10 (scalar and
// 8-wide AVX2) and Gumbel noise of the two streams (per token: counter word 3
// = 0; per group of kGroupSize tokens: word 3 = 1; tts_kernels/sampling/philox.py). The shared AVX2 helpers (exp, log, horizontal
// max / sums) are in common/simd_avx2.h.
//
// Everything AVX2 here is compiled with TTS_AVX2 so the library keeps the
// portable baseline ISA; callers dispatch at run time. All functions are
// `static` (internal linkage): no code compiled for AVX2 can be merged with
// baseline code by the linker.
#pragma once

#include "common/cpu_features.h"
#include "common/simd_avx2.h"

#include <cmath>
#include <cstdint>
#include <limits>

namespace tts_sampling {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kFloatMax = std::numeric_limits<float>::max();

// Tokens per group of the two-level draw; must equal
// tts_kernels/sampling/philox.py: GROUP_SIZE.
constexpr int64_t kGroupSize = 256;

// The greedy rule (tts_kernels/sampling/params.py: MIN_SAMPLING_TEMPERATURE and
// greedy_rows, where it is defined): a row is greedy below float32's smallest normal
// temperature (0 and the subnormals) or when its largest logit / T overflows (to +-inf); a NaN
// temperature makes the row invalid (process_row).
constexpr float kMinSamplingTemperature = 0x1p-126f;

static inline bool greedy_row(float T, float xmax) {
  return !(T >= kMinSamplingTemperature) || std::isinf(xmax / T);
}

// Counter word 3 of the two noise streams.
constexpr uint32_t kTokenStream = 0u;
constexpr uint32_t kGroupStream = 1u;

// Per-row Philox key and the constant counter words (c1, c2); c3 is the stream.
struct PhiloxKey {
  uint32_t k0, k1, c1, c2;
};

static inline PhiloxKey make_key(int64_t seed, int64_t offset) {
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint64_t o = static_cast<uint64_t>(offset);
  return {static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<uint32_t>(o),
          static_cast<uint32_t>(o >> 32)};
}

// Philox4x32-10 of counter (ctr, c1, c2, stream).
static inline void philox_scalar(uint32_t ctr, const PhiloxKey& key, uint32_t out[4],
                                 uint32_t stream = kTokenStream) {
  uint32_t c0 = ctr, c1 = key.c1, c2 = key.c2, c3 = stream;
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// u = (2 * (w >> 9) + 1) * 2^-24, exact in float32.
static inline float word_to_uniform(uint32_t w) {
  return static_cast<float>(((w >> 9) << 1) | 1u) * 0x1p-24f;
}

static inline float gumbel_of_word(uint32_t w) {
  const float u = word_to_uniform(w);
  return -std::log(-std::log(u));
}

// Gumbel noise of token v of a row (scalar; one Philox call per token).
static inline float gumbel_scalar(int64_t v, const PhiloxKey& key) {
  uint32_t w[4];
  philox_scalar(static_cast<uint32_t>(v >> 2), key, w);
  return gumbel_of_word(w[v & 3]);
}

// Group noise of group j of a row (tokens [kGroupSize j, kGroupSize (j + 1))):
// the second stream, word j & 3 of counter (j >> 2, c1, c2, 1).
static inline float group_gumbel_scalar(int64_t j, const PhiloxKey& key) {
  uint32_t w[4];
  philox_scalar(static_cast<uint32_t>(j >> 2), key, w, kGroupStream);
  return gumbel_of_word(w[j & 3]);
}

// ---------------------------------------------------------------------------
// AVX2
// ---------------------------------------------------------------------------
#if TTS_X86
using tts::simd::exp_avx2;
using tts::simd::hmax8;
using tts::simd::hsum4d;
using tts::simd::log_avx2;

// (hi, lo) 32-bit halves of a * m for 8 lanes (m broadcast).
TTS_AVX2 static inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i pe = _mm256_mul_epu32(a, m);
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

// Philox of the 8 counters (c0 + lane, c1, c2, stream); returns the 32 words in
// token (or group) order: out[j] holds tokens 4*c0 + 8*j + lane.
TTS_AVX2 static inline void philox8_tokens(uint32_t c0_base, const PhiloxKey& key, __m256i out[4],
                                           uint32_t stream = kTokenStream) {
  // Rounds 1 and 2 are partly uniform across lanes (only c0 varies at first):
  // their uniform halves are computed once in scalar code.
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m256i v = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c0_base)),
                                     _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  uint32_t k0 = key.k0, k1 = key.k1;
  // round 1
  const uint64_t q1 = static_cast<uint64_t>(kPhiloxM1) * key.c2;
  const uint32_t a0 = static_cast<uint32_t>(q1 >> 32) ^ key.c1 ^ k0;  // new c0 (uniform)
  const uint32_t a1 = static_cast<uint32_t>(q1);                      // new c1 (uniform)
  __m256i hi0, lo0, hi1, lo1;
  mulhilo8(v, m0, hi0, lo0);
  __m256i c2 = _mm256_xor_si256(hi0, _mm256_set1_epi32(static_cast<int>(k1 ^ stream)));
  __m256i c3 = lo0;
  k0 += kPhiloxW0;
  k1 += kPhiloxW1;
  // round 2
  const uint64_t q0 = static_cast<uint64_t>(kPhiloxM0) * a0;
  mulhilo8(c2, m1, hi1, lo1);
  __m256i c0 = _mm256_xor_si256(hi1, _mm256_set1_epi32(static_cast<int>(a1 ^ k0)));
  __m256i c1 = lo1;
  c2 = _mm256_xor_si256(c3, _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(q0 >> 32) ^ k1)));
  c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(q0)));
  k0 += kPhiloxW0;
  k1 += kPhiloxW1;
#pragma GCC unroll 8
  for (int r = 2; r < kPhiloxRounds; ++r) {
    mulhilo8(c0, m0, hi0, lo0);
    mulhilo8(c2, m1, hi1, lo1);
    const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  // 4x8 transpose: words (counter i, word j) -> token 4 i + j.
  const __m256i a = _mm256_unpacklo_epi32(c0, c1);
  const __m256i b = _mm256_unpacklo_epi32(c2, c3);
  const __m256i c = _mm256_unpackhi_epi32(c0, c1);
  const __m256i d = _mm256_unpackhi_epi32(c2, c3);
  const __m256i t0 = _mm256_unpacklo_epi64(a, b);  // counters 0 | 4
  const __m256i t1 = _mm256_unpackhi_epi64(a, b);  // counters 1 | 5
  const __m256i t2 = _mm256_unpacklo_epi64(c, d);  // counters 2 | 6
  const __m256i t3 = _mm256_unpackhi_epi64(c, d);  // counters 3 | 7
  out[0] = _mm256_permute2x128_si256(t0, t1, 0x20);
  out[1] = _mm256_permute2x128_si256(t2, t3, 0x20);
  out[2] = _mm256_permute2x128_si256(t0, t1, 0x31);
  out[3] = _mm256_permute2x128_si256(t2, t3, 0x31);
}

// Gumbel noise -log(-log(u)) of 8 Philox words.
TTS_AVX2 static inline __m256 gumbel_avx2(__m256i w) {
  const __m256i k = _mm256_or_si256(_mm256_slli_epi32(_mm256_srli_epi32(w, 9), 1), _mm256_set1_epi32(1));
  const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(k), _mm256_set1_ps(0x1p-24f));
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 t = _mm256_xor_ps(log_avx2(u), sign);
  return _mm256_xor_ps(log_avx2(t), sign);
}

#endif  // TTS_X86

}  // namespace tts_sampling
