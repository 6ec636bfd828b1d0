// ATen adapter of CPU tree attention: checks the tensors, converts them to the
// kernel's params (tree_attention.h), allocates the outputs and registers the
// op declared in csrc/registration.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "tree_attention.h"

namespace tts_attention {
namespace {

void check_int32(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), "tree_attention_cpu: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kInt, "tree_attention_cpu: ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "tree_attention_cpu: ", name, " must have ", dim, " dimensions, got ", t.dim());
}

std::tuple<at::Tensor, at::Tensor> tree_attention_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& block_tables_in,
    const at::Tensor& seq_lens, const at::Tensor& chunk_row_in, const at::Tensor& chunk_start_in,
    const at::Tensor& chunk_len_in, const at::Tensor& chunk_q_ptr_in, const at::Tensor& q_rows_in,
    const at::Tensor& row_pair_ptr_in, const at::Tensor& row_pairs_in, double scale) {
  TORCH_CHECK(q_in.device().is_cpu() && k_in.device().is_cpu() && v_in.device().is_cpu(),
              "tree_attention_cpu: tensors must be on the CPU");
  TORCH_CHECK(q_in.dim() == 3, "tree_attention_cpu: q must be [N, Hq, D], got ", q_in.sizes());
  TORCH_CHECK(k_in.dim() == 4 && v_in.dim() == 4,
              "tree_attention_cpu: k_cache/v_cache must be [num_blocks, block_size, Hkv, D]");
  TORCH_CHECK(k_in.sizes() == v_in.sizes(), "tree_attention_cpu: k_cache and v_cache shapes differ: ", k_in.sizes(),
              " vs ", v_in.sizes());
  const auto dt = q_in.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "tree_attention_cpu: q must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(k_in.scalar_type() == dt && v_in.scalar_type() == dt,
              "tree_attention_cpu: k_cache/v_cache dtype must match q (", dt, ")");
  const int64_t N = q_in.size(0), Hq = q_in.size(1), D = q_in.size(2);
  const int64_t Hkv = k_in.size(2);
  TORCH_CHECK(k_in.size(3) == D, "tree_attention_cpu: head dim of the cache (", k_in.size(3), ") != q's (", D, ")");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "tree_attention_cpu: Hq (", Hq, ") must be a multiple of Hkv (", Hkv, ")");
  TORCH_CHECK(k_in.size(1) > 0, "tree_attention_cpu: block_size must be positive");
  check_int32(block_tables_in, "block_tables", 2);
  check_int32(seq_lens, "seq_lens", 1);
  check_int32(chunk_row_in, "chunk_row", 1);
  check_int32(chunk_start_in, "chunk_start", 1);
  check_int32(chunk_len_in, "chunk_len", 1);
  check_int32(chunk_q_ptr_in, "chunk_q_ptr", 1);
  check_int32(q_rows_in, "q_rows", 1);
  check_int32(row_pair_ptr_in, "row_pair_ptr", 1);
  check_int32(row_pairs_in, "row_pairs", 1);
  TORCH_CHECK(block_tables_in.size(0) == N, "tree_attention_cpu: block_tables must have N = ", N, " rows");
  TORCH_CHECK(seq_lens.size(0) == N, "tree_attention_cpu: seq_lens must have N = ", N, " entries");
  const int64_t C = chunk_row_in.size(0);
  TORCH_CHECK(chunk_start_in.size(0) == C && chunk_len_in.size(0) == C && chunk_q_ptr_in.size(0) == C + 1,
              "tree_attention_cpu: chunk_row/chunk_start/chunk_len must be [C] and chunk_q_ptr [C + 1]");
  TORCH_CHECK(row_pair_ptr_in.size(0) == N + 1, "tree_attention_cpu: row_pair_ptr must be [N + 1]");

  // Head dim must be unit-stride for the row loads; the rest may be strided.
  const at::Tensor q = q_in.stride(2) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k_cache = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v_cache = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  const at::Tensor block_tables = block_tables_in.stride(1) == 1 ? block_tables_in : block_tables_in.contiguous();
  const at::Tensor chunk_row = chunk_row_in.contiguous(), chunk_start = chunk_start_in.contiguous(),
                   chunk_len = chunk_len_in.contiguous(), chunk_q_ptr = chunk_q_ptr_in.contiguous(),
                   q_rows = q_rows_in.contiguous(), row_pair_ptr = row_pair_ptr_in.contiguous(),
                   row_pairs = row_pairs_in.contiguous();

  const int64_t P = q_rows.size(0);
  auto fopts = q.options().dtype(at::kFloat);
  at::Tensor out_partial = at::empty({P, Hq, D}, fopts);
  at::Tensor lse_partial = at::empty({P, Hq}, fopts);
  at::Tensor out = at::empty({N, Hq, D}, q.options());
  at::Tensor lse = at::empty({N, Hq}, fopts);
  if (N == 0) return {out, lse};
  TreeAttentionParams a{};
  a.dtype = dt == at::kFloat ? tts::DType::kFloat32 : (dt == at::kBFloat16 ? tts::DType::kBFloat16 : tts::DType::kFloat16);
  a.q = q.data_ptr();
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  for (int i = 0; i < 2; ++i) a.q_stride[i] = q.stride(i);
  for (int i = 0; i < 3; ++i) {
    a.k_stride[i] = k_cache.stride(i);
    a.v_stride[i] = v_cache.stride(i);
  }
  a.N = N;
  a.Hq = Hq;
  a.D = D;
  a.Hkv = Hkv;
  a.num_blocks = k_cache.size(0);
  a.block_size = k_cache.size(1);
  a.block_tables = block_tables.data_ptr<int32_t>();
  a.block_tables_rows = block_tables.size(0);
  a.max_blocks = block_tables.size(1);
  a.block_tables_stride0 = block_tables.stride(0);
  a.chunk_row = chunk_row.data_ptr<int32_t>();
  a.chunk_start = chunk_start.data_ptr<int32_t>();
  a.chunk_len = chunk_len.data_ptr<int32_t>();
  a.chunk_q_ptr = chunk_q_ptr.data_ptr<int32_t>();
  a.q_rows = q_rows.data_ptr<int32_t>();
  a.row_pair_ptr = row_pair_ptr.data_ptr<int32_t>();
  a.row_pairs = row_pairs.data_ptr<int32_t>();
  a.C = C;
  a.P = P;
  a.RP = row_pairs.size(0);
  a.scale = static_cast<float>(scale);
  a.out_partial = out_partial.data_ptr<float>();
  a.lse_partial = lse_partial.data_ptr<float>();
  a.out = out.data_ptr();
  a.lse = lse.data_ptr<float>();
  const std::string err = tree_attention(a);
  TORCH_CHECK(err.empty(), err);
  return {out, lse};
}

}  // namespace
}  // namespace tts_attention

TORCH_LIBRARY_IMPL(tts_kernels_C, CPU, m) {
  m.impl("tree_attention_cpu", &tts_attention::tree_attention_cpu);
}

