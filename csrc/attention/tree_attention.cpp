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
// AVX-512 / AVX2+FMA micro-kernels are selected at run time (common/cpu_features.h,
// TTS_KERNELS_CPU_ISA=generic forces the portable ones); the portable
// versions are plain loops.
//
// This file holds stages 1 and 2 on raw pointers (no ATen); the micro-kernels
// are in attention_microkernels.cpp, the ATen adapter in tree_attention_adapter.cpp.
#include "tree_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "attention_microkernels.h"
#include "common/float16.h"
#include "common/parallel.h"

namespace tts_attention {
namespace {

// Error message of a failed input check (the adapter raises it).
template <typename... Args>
std::string message(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  return s.str();
}
#define TTS_CHECK_OR_RETURN(cond, ...) \
  do {                                 \
    if (!(cond)) return message(__VA_ARGS__); \
  } while (0)

// ---------------------------------------------------------------------------
// element conversion (common/float16.h)
// ---------------------------------------------------------------------------
using tts::to_float;

template <typename T>
inline void load_row(const T* src, float* dst, int64_t D) {
  for (int64_t d = 0; d < D; ++d) dst[d] = to_float(src[d]);
}
template <>
inline void load_row<float>(const float* src, float* dst, int64_t D) {
  std::memcpy(dst, src, sizeof(float) * D);
}
template <>
inline void load_row<tts::bf16_t>(const tts::bf16_t* src, float* dst, int64_t D) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  uint32_t* o = reinterpret_cast<uint32_t*>(dst);
  for (int64_t d = 0; d < D; ++d) o[d] = static_cast<uint32_t>(s[d]) << 16;  // vectorises
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
std::string stage1(const TreeAttentionParams& a) {
  const int64_t Hq = a.Hq, D = a.D;
  const int64_t num_blocks = a.num_blocks, block_size = a.block_size, Hkv = a.Hkv;
  const int64_t G = Hq / Hkv;
  const int64_t N = a.N;
  const int64_t max_blocks = a.max_blocks;
  const int64_t C = a.C;
  const float scale = a.scale;

  const T* qp = static_cast<const T*>(a.q);
  const T* kp = static_cast<const T*>(a.k_cache);
  const T* vp = static_cast<const T*>(a.v_cache);
  const int64_t qs0 = a.q_stride[0], qs1 = a.q_stride[1];
  const int64_t ks0 = a.k_stride[0], ks1 = a.k_stride[1], ks2 = a.k_stride[2];
  const int64_t vs0 = a.v_stride[0], vs1 = a.v_stride[1], vs2 = a.v_stride[2];
  const int32_t* bt = a.block_tables;
  const int64_t bts0 = a.block_tables_stride0;
  const int32_t* crow = a.chunk_row;
  const int32_t* cstart = a.chunk_start;
  const int32_t* clen = a.chunk_len;
  const int32_t* cptr = a.chunk_q_ptr;
  const int32_t* qrows = a.q_rows;
  const int64_t P = a.P;
  float* op = a.out_partial;
  float* lp = a.lse_partial;

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
    TTS_CHECK_OR_RETURN(nr >= 0 && cptr[c] >= 0 && cptr[c + 1] <= P, "tree_attention_cpu: bad chunk_q_ptr at chunk ", c);
    if (clen[c] <= 0 || nr == 0) continue;
    TTS_CHECK_OR_RETURN(crow[c] >= 0 && crow[c] < a.block_tables_rows, "tree_attention_cpu: chunk_row out of range at chunk ", c);
    TTS_CHECK_OR_RETURN(cstart[c] >= 0 && (int64_t)cstart[c] + clen[c] <= max_blocks * block_size,
                "tree_attention_cpu: chunk ", c, " exceeds the block table");
    for (int64_t r0 = 0; r0 < nr; r0 += rows_per_tile) {
      const int64_t r1 = std::min(nr, r0 + rows_per_tile);
      for (int64_t h = 0; h < Hkv; ++h)
        items.push_back({(int32_t)c, (int32_t)h, (int32_t)r0, (int32_t)r1, (int64_t)clen[c] * (r1 - r0)});
    }
  }
  TTS_CHECK_OR_RETURN(C == 0 || (cptr[0] >= 0 && cptr[C] <= P), "tree_attention_cpu: chunk_q_ptr exceeds q_rows");
  for (int64_t p = (C ? cptr[0] : 0); p < (C ? cptr[C] : 0); ++p)
    TTS_CHECK_OR_RETURN(qrows[p] >= 0 && qrows[p] < N, "tree_attention_cpu: q_rows out of range at pair ", p);
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
  TTS_CHECK_OR_RETURN(!bad_block.load(), "tree_attention_cpu: block_tables holds a block id out of [0, ", num_blocks, ")");
  return {};
}

// ---------------------------------------------------------------------------
// stage 2
// ---------------------------------------------------------------------------
template <typename T>
std::string stage2(const TreeAttentionParams& a) {
  const int64_t N = a.N, Hq = a.Hq, D = a.D;
  const int64_t P = a.P;
  const float* op = a.out_partial;
  const float* lp = a.lse_partial;
  const int32_t* rptr = a.row_pair_ptr;
  const int32_t* rp = a.row_pairs;
  const int64_t RP = a.RP;
  T* o = static_cast<T*>(a.out);
  float* L = a.lse;
  for (int64_t i = 0; i < N; ++i)
    TTS_CHECK_OR_RETURN(rptr[i] >= 0 && rptr[i] <= rptr[i + 1] && rptr[i + 1] <= RP, "tree_attention_cpu: bad row_pair_ptr at row ", i);
  for (int64_t j = 0; j < rptr[N]; ++j)
    TTS_CHECK_OR_RETURN(rp[j] >= 0 && rp[j] < P, "tree_attention_cpu: row_pairs out of range at ", j);

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
          for (int64_t d = 0; d < D; ++d) dst[d] = tts::from_float<T>(0.f);
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
        for (int64_t d = 0; d < D; ++d) dst[d] = tts::from_float<T>(accum[d] * inv);
        L[i * Hq + h] = mx + std::log(sum);
      }
    }
   };
  });
  return {};
}


}  // namespace

std::string tree_attention(const TreeAttentionParams& a) {
  if (a.N == 0) return {};
  std::string err;
  switch (a.dtype) {
    case tts::DType::kFloat32:
      err = stage1<float>(a);
      if (err.empty()) err = stage2<float>(a);
      break;
    case tts::DType::kBFloat16:
      err = stage1<tts::bf16_t>(a);
      if (err.empty()) err = stage2<tts::bf16_t>(a);
      break;
    default:
      err = stage1<tts::f16_t>(a);
      if (err.empty()) err = stage2<tts::f16_t>(a);
      break;
  }
  return err;
}

}  // namespace tts_attention
