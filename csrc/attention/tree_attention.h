// Tree attention on the CPU (decode attention over a paged KV cache, shared
// prefixes read once): the kernel's interface on raw pointers and a params
// struct, free of ATen. The algorithm is described in tree_attention.cpp; the
// ATen adapter (checks, conversion, allocation) is tree_attention_adapter.cpp.
#pragma once

#include <cstdint>
#include <string>

#include "common/float16.h"

namespace tts_attention {

struct TreeAttentionParams {
  tts::DType dtype;      // of q, the caches and out
  const void* q;         // [N, Hq, D], unit stride over D
  const void* k_cache;   // [num_blocks, block_size, Hkv, D], unit stride over D
  const void* v_cache;   // same shape as k_cache
  int64_t q_stride[2];   // strides of q's first two dims (elements)
  int64_t k_stride[3];   // strides of the caches' first three dims
  int64_t v_stride[3];
  int64_t N, Hq, D, Hkv, num_blocks, block_size;
  const int32_t* block_tables;  // [block_tables_rows, max_blocks], unit stride over blocks
  int64_t block_tables_rows, max_blocks, block_tables_stride0;
  // the plan (tts_kernels/attention/plan.py), int32, contiguous
  const int32_t* chunk_row;     // [C]
  const int32_t* chunk_start;   // [C]
  const int32_t* chunk_len;     // [C]
  const int32_t* chunk_q_ptr;   // [C + 1]
  const int32_t* q_rows;        // [P]
  const int32_t* row_pair_ptr;  // [N + 1]
  const int32_t* row_pairs;     // [RP]
  int64_t C, P, RP;
  float scale;
  float* out_partial;  // [P, Hq, D] scratch
  float* lse_partial;  // [P, Hq] scratch
  void* out;           // [N, Hq, D] contiguous, dtype
  float* lse;          // [N, Hq] contiguous
};

// Runs both stages. Returns "" or the message of a failed check of the plan's
// indices (the outputs are then unspecified).
std::string tree_attention(const TreeAttentionParams& p);

}  // namespace tts_attention
