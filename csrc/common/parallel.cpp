// Workers of tts::cpu::parallel_items (parallel.h) on ATen's intra-op threads.
// at::parallel_for is a header template: with ATen's OpenMP backend it runs in
// parallel only in code compiled with -fopenmp, which CMakeLists.txt requires
// (linked to torch's own libgomp, so one OpenMP runtime is loaded).
#include "common/parallel.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace tts {
namespace cpu {

int64_t num_threads() { return std::max<int64_t>(1, at::get_num_threads()); }

void run_workers(int64_t workers, const std::function<void()>& body) {
  if (workers <= 0) return;
  if (workers == 1) {
    body();
    return;
  }
  at::parallel_for(0, workers, 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) body();
  });
}

}  // namespace cpu
}  // namespace tts
