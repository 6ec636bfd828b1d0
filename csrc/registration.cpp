// The one place where the C++ ops are declared. Kernels register their CPU
// implementations next to their code with TORCH_LIBRARY_IMPL(tts_kernels_C, CPU, m).
// The public ops (torch.ops.tts_kernels.*) are defined in tts_kernels/ops.py and
// call these on CPU when the library is built.
#include <torch/library.h>

#include <string>

#include "common/cpu_features.h"

TORCH_LIBRARY(tts_kernels_C, m) {
  m.def(
      "sample_cpu(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
      "Tensor seed, Tensor offset, Tensor(a!)? budget, Tensor? forced_ids, int num_wait, int num_end, "
      "bool return_logprobs=True) -> (Tensor, Tensor)");
  // The instruction set the CPU kernels use now (the CPU's, capped by TTS_KERNELS_CPU_ISA): "avx512"
  // (tree attention's products at D % 16 == 0; the rest AVX2), "avx2" or "generic".
  m.def("cpu_isa() -> str", []() -> std::string {
    return tts::cpu::use_avx512() ? "avx512" : tts::cpu::use_avx2() ? "avx2" : "generic";
  });
  m.def("tree_attention_cpu(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, Tensor chunk_row, Tensor chunk_start, Tensor chunk_len, Tensor chunk_q_ptr, Tensor q_rows, Tensor row_pair_ptr, Tensor row_pairs, float scale) -> (Tensor, Tensor)");
}
