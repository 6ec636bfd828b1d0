// bfloat16 / IEEE float16 <-> float32 conversions without ATen, bit-identical
// to c10::BFloat16 / c10::Half (exact widening; round to nearest even when
// narrowing, the float16 code is the FP16 library's that c10 uses).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace tts {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Storage types of the 16-bit formats (the bits only).
struct bf16_t {
  uint16_t x;
};
struct f16_t {
  uint16_t x;
};

inline float fp32_from_bits(uint32_t w) {
  float f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}
inline uint32_t fp32_to_bits(float f) {
  uint32_t w;
  std::memcpy(&w, &f, sizeof(w));
  return w;
}

inline float bf16_to_float(uint16_t h) { return fp32_from_bits(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  if (std::isnan(f)) return UINT16_C(0x7FC0);
  const uint32_t u = fp32_to_bits(f);
  const uint32_t rounding_bias = ((u >> 16) & 1u) + UINT32_C(0x7FFF);
  return static_cast<uint16_t>((u + rounding_bias) >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & UINT32_C(0x80000000);
  const uint32_t two_w = w + w;
  const uint32_t exp_offset = UINT32_C(0xE0) << 23;
  const float normalized = fp32_from_bits((two_w >> 4) + exp_offset) * 0x1.0p-112f;
  const uint32_t magic_mask = UINT32_C(126) << 23;
  const float denormalized = fp32_from_bits((two_w >> 17) | magic_mask) - 0.5f;
  const uint32_t denormalized_cutoff = UINT32_C(1) << 27;
  return fp32_from_bits(sign | (two_w < denormalized_cutoff ? fp32_to_bits(denormalized) : fp32_to_bits(normalized)));
}

inline uint16_t float_to_f16(float f) {
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = fp32_to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & UINT32_C(0x80000000);
  uint32_t bias = shl1_w & UINT32_C(0xFF000000);
  if (bias < UINT32_C(0x71000000)) bias = UINT32_C(0x71000000);
  base = fp32_from_bits((bias >> 1) + UINT32_C(0x07800000)) + base;
  const uint32_t bits = fp32_to_bits(base);
  const uint32_t exp_bits = (bits >> 13) & UINT32_C(0x00007C00);
  const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > UINT32_C(0xFF000000) ? UINT16_C(0x7E00) : nonsign));
}

inline float to_float(float x) { return x; }
inline float to_float(bf16_t x) { return bf16_to_float(x.x); }
inline float to_float(f16_t x) { return f16_to_float(x.x); }

template <typename T>
inline T from_float(float f);
template <>
inline float from_float<float>(float f) {
  return f;
}
template <>
inline bf16_t from_float<bf16_t>(float f) {
  return bf16_t{float_to_bf16(f)};
}
template <>
inline f16_t from_float<f16_t>(float f) {
  return f16_t{float_to_f16(f)};
}

}  // namespace tts
