// ATen adapter of the CPU sampler: checks the tensors, converts them to the
// kernel's params (sampler.h) and registers the op declared in
// csrc/registration.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "budget/budget_forcing.h"
#include "sampler.h"

namespace tts_sampling {
namespace budget = tts::budget;
namespace {

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
                                              int64_t num_end, bool return_logprobs) {
  TORCH_CHECK(logits.device().is_cpu(), "sample_cpu: logits must be a CPU tensor");
  TORCH_CHECK(logits.dim() == 2, "sample_cpu: logits must be [B, V], got ", logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "sample_cpu: logits must be float32, bfloat16 or float16, got ", dt);
  const int64_t B = logits.size(0), V = logits.size(1);
  // Rows may be padded (row stride >= V, e.g. a vocabulary padded for aligned loads); V must be unit-stride.
  TORCH_CHECK(logits.stride(1) == 1 || V == 1, "sample_cpu: logits must have unit stride along V, got strides ",
              logits.strides());
  TORCH_CHECK(B <= 1 || logits.stride(0) >= V, "sample_cpu: logits rows overlap (row stride ", logits.stride(0),
              " < V = ", V, ")");
  TORCH_CHECK(V >= 1, "sample_cpu: logits must have at least one column");
  TORCH_CHECK(V < (int64_t{1} << 31) - 64, "sample_cpu: vocabulary too large");
  check_row_param(temperature, "temperature", at::kFloat, B);
  check_row_param(top_k, "top_k", at::kInt, B);
  check_row_param(top_p, "top_p", at::kFloat, B);
  check_row_param(min_p, "min_p", at::kFloat, B);
  check_row_param(seed, "seed", at::kLong, B);
  check_row_param(offset, "offset", at::kLong, B);

  SamplerParams c{};
  c.dtype = dt == at::kFloat ? tts::DType::kFloat32 : (dt == at::kBFloat16 ? tts::DType::kBFloat16 : tts::DType::kFloat16);
  c.B = B;
  c.logits = logits.data_ptr();
  c.V = V;
  c.ld = B <= 1 ? V : logits.stride(0);
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
  at::Tensor lp = at::empty({return_logprobs ? B : 0}, logits.options().dtype(at::kFloat));
  c.out_tok = tok.data_ptr<int64_t>();
  c.out_lp = return_logprobs ? lp.data_ptr<float>() : nullptr;
  sample_rows(c);
  return {tok, lp};
}

}  // namespace tts_sampling

TORCH_LIBRARY_IMPL(tts_kernels_C, CPU, m) { m.impl("sample_cpu", &tts_sampling::sample_cpu); }
