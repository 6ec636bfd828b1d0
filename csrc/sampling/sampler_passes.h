// Internal header of the CPU sampler: the passes over a row of logits, in a
// portable and an AVX2 version each (sampler_passes.cpp), chosen at run time
// through Ops (common/cpu_features.h), and the types they share with the row
// algorithm (sampler.cpp). No ATen.
#pragma once

#include <cstdint>
#include <vector>

#include "common/float16.h"
#include "sampler_math.h"

namespace tts_sampling {

constexpr int kNumBins = 4096;       // histogram of zmax - z for top-p
constexpr float kBinScale = 128.0f;  // bins of width 1/128 over [0, 32)
constexpr int64_t kBlock = 64;       // block of the block maxima (top-k bound)
constexpr int64_t kSmallSet = 4096;  // top-k sets up to this size finish on the list
static_assert(kGroupSize % kBlock == 0, "a group is made of whole blocks");

struct Best {
  float s = -kInf;
  int64_t i = -1;
};

inline void merge_best(Best& a, const Best& b) {
  if (b.i < 0) return;
  if (a.i < 0 || b.s > a.s || (b.s == a.s && b.i < a.i)) a = b;
}

// The keep rule of a sampled row and what the group passes need: token i is
// kept when lo <= z <= FLT_MAX for z = x[i] / T (lo >= -FLT_MAX: finite z only)
// and, with min-p on, exp(z - zmax) >= min_p.
struct KeepRule {
  const float* x;
  int64_t V;
  float T, lo;
  bool minp_on;
  float zmax, min_p;
  PhiloxKey key;
};

// A group's kept tokens: m = their largest z (-inf: none kept), s = sum of exp(z - m).
struct GroupSum {
  float m = -kInf;
  float s = 0.0f;
};

// A candidate token: z = x / T, e = exp(z - zmax), index.
struct Cand {
  float z;
  float e;
  int32_t i;
};

// The passes, dispatched to AVX2 or portable code.
struct Ops {
  bool avx2;
  // with_sum false: sum is left 0 (no exp per token; the logprobs' logsumexp only needs it)
  void stats(const float* x, int64_t b, int64_t e, float* bmax, float& mx, bool& nan, double& sum,
             bool with_sum) const;
  void hist(const float* x, int64_t b, int64_t e, float T, float zmax, float tk, double* h) const;
  void collect_bin(const float* x, int64_t V, float T, float zmax, float tk, int bsel, std::vector<Cand>& out) const;
  bool collect_kept(const float* x, int64_t V, float T, float thr, std::vector<int32_t>& out, size_t cap) const;
  // Group noise (stream 1) of groups [0, ng) into h, which holds ng rounded up to 32.
  void group_noise(const PhiloxKey& key, int64_t ng, float* h) const;
  // Kept maximum and sum of exp(z - m) of group j.
  GroupSum group_sum(const KeepRule& a, int64_t j) const;
  // First index of the maximum of z + token noise over the kept tokens of group j.
  Best group_token(const KeepRule& a, int64_t j) const;
  int64_t find_first(const float* x, int64_t V, float val) const;
  void collect_ge(const float* x, int64_t V, float lo, std::vector<int32_t>& out) const;
  void to_float(tts::DType dt, const void* src, float* dst, int64_t b, int64_t e) const;
};

}  // namespace tts_sampling
