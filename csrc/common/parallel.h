// The one scheduler of the CPU kernels: n work items handed out dynamically
// (one shared atomic counter) to up to num_threads() workers, the caller
// included. Items may differ a lot in cost (a shared prefix chunk can be 100x a
// private suffix), so a static split is avoided. A nested call (from inside a
// worker) runs serially on the calling thread. Exceptions thrown by an item are
// rethrown to the caller (the first one) once every worker has stopped.
//
// No ATen here; parallel.cpp runs the workers on ATen's intra-op threads
// (at::parallel_for: OpenMP in this build, see CMakeLists.txt).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>

namespace tts {
namespace cpu {

// Threads the kernels may use (torch.get_num_threads()).
int64_t num_threads();

// Runs body() once on each of `workers` threads (fewer, serially, when nested or
// when fewer threads are available) and returns when all have returned.
void run_workers(int64_t workers, const std::function<void()>& body);

// make_worker() returns a callable void(int64_t item) holding one worker's
// scratch; it is called only by a worker that got an item.
template <typename MakeWorker>
void parallel_items(int64_t n, const MakeWorker& make_worker) {
  if (n <= 0) return;
  const int64_t workers = std::min<int64_t>(num_threads(), n);
  if (workers <= 1) {
    auto work = make_worker();
    for (int64_t i = 0; i < n; ++i) work(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::exception_ptr error;
  run_workers(workers, [&]() {
    int64_t i = next.fetch_add(1);
    if (i >= n) return;
    try {
      auto work = make_worker();
      for (; i < n; i = next.fetch_add(1)) work(i);
    } catch (...) {
      std::lock_guard<std::mutex> g(mu);
      if (!error) error = std::current_exception();
      next.store(n);  // stop handing out items
    }
  });
  if (error) std::rethrow_exception(error);
}

// fn(i) for i in [0, n), items scheduled as above.
template <typename Fn>
void parallel_for(int64_t n, const Fn& fn) {
  parallel_items(n, [&]() { return [&](int64_t i) { fn(i); }; });
}

}  // namespace cpu
}  // namespace tts
