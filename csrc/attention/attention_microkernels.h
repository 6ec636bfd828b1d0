// Micro-kernels of CPU tree attention on one K/V tile of kTile tokens (float32):
// S = Q K^T, the online-softmax step, acc += P V and the K tile transpose, in a
// portable and an AVX2 + FMA version each, and AVX-512 versions of the two
// products (attention_microkernels.cpp), chosen at run time by pick_kernels
// (common/cpu_features.h). No ATen.
#pragma once

#include <cstdint>
#include <limits>

namespace tts_attention {

constexpr int kTile = 32;  // tokens per K/V tile (K^T tile is D x 32 floats)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Kernels {
  // S[q][t] = sum_d Q[q][d] * KT[d][t]   (Q: [nq][D], KT: [D][kTile], S: [nq][kTile])
  void (*qk)(const float* Q, const float* KT, float* S, int64_t nq, int64_t D);
  // acc[q][:] += sum_t P[q][t] * V[t][:]   (P: [nq][kTile], V: kTile row pointers of D floats)
  void (*pv)(const float* P, const float* const* V, float* acc, int64_t nq, int64_t D, int tl);
  // online-softmax step of a tile of tl tokens: S -> p, updates m, l, rescales acc
  void (*softmax)(float* S, float* m, float* l, float* acc, int64_t nq, int64_t D, int tl);
  // KT[d][t] = rows[t][d] for t < tl, 0 for tl <= t < kTile
  void (*transpose)(const float* const* rows, int tl, int64_t D, float* KT);
};

// The AVX-512 products when the CPU has them, they are not disabled (TTS_KERNELS_CPU_ISA)
// and D % 16 == 0; else the AVX2 kernels likewise with D % 8 == 0; else the portable ones.
Kernels pick_kernels(int64_t D);

}  // namespace tts_attention
