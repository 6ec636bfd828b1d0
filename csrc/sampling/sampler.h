// Fused CPU sampler (budget forcing + temperature / top-k / top-p / min-p with
// Philox Gumbel-max): the kernel's interface on raw pointers and a params
// struct, free of ATen. The algorithm is described in sampler.cpp; the ATen
// adapter (checks, conversion, registration) is sample_adapter.cpp.
#pragma once

#include <cstdint>

#include "common/float16.h"

namespace tts_sampling {

struct SamplerParams {
  tts::DType dtype;    // of the logits
  const void* logits;  // [B, V], unit stride along V; row r starts at logits + r * ld elements
  int64_t B, V;
  int64_t ld;          // row stride in elements, >= V (V, or a padded vocabulary for aligned rows)
  const float* temperature;  // [B] per-row parameters
  const int32_t* top_k;
  const float* top_p;
  const float* min_p;
  const int64_t* seed;
  const int64_t* offset;
  int32_t* budget;        // [B, budget::kStateColumns] (budget/budget_forcing.h), updated in place; or nullptr
  const int32_t* forced;  // forced_ids [L], every id in [0, V) (with budget)
  int64_t L, num_wait, num_end;
  int64_t* out_tok;  // [B] token, -1 for an invalid row
  float* out_lp;     // [B] logprob, NaN for an invalid row; nullptr: no logprobs (the stats pass skips its exp)
};

// Samples every row (in parallel, common/parallel.h). The caller has checked
// the shapes and 0 <= num_wait, 1 <= num_end, num_wait + num_end <= L.
void sample_rows(const SamplerParams& p);

}  // namespace tts_sampling
