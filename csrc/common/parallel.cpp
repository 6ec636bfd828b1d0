// Helpers of tts::cpu::parallel_items (parallel.h) on ATen's inter-op pool
// (at::launch), the thread count from torch's intra-op setting.
#include "common/parallel.h"

#include <ATen/Parallel.h>

namespace tts {
namespace cpu {

int64_t num_threads() { return std::max<int64_t>(1, at::get_num_threads()); }

namespace detail {

void launch_helpers(int64_t count, const std::function<void()>& task) {
  for (int64_t h = 0; h < count; ++h) at::launch(task);
}

}  // namespace detail
}  // namespace cpu
}  // namespace tts
