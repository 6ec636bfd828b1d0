// The one scheduler of the CPU kernels: n work items handed out dynamically
// (one shared atomic counter) to the calling thread and up to num_threads() - 1
// helpers. Items may differ a lot in cost (a shared prefix chunk can be 100x a
// private suffix), so a static split is avoided. The caller drains items
// itself and then waits only for the items taken by helpers: a helper that
// starts late (a busy machine) finds no work and touches only the shared state,
// so nobody waits for a thread to be scheduled (no barrier). Exceptions thrown
// by an item are rethrown to the caller (the first one) once every item is done.
//
// No ATen here; parallel.cpp runs the helpers on ATen's inter-op pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>

namespace tts {
namespace cpu {

// Threads the kernels may use (torch.get_num_threads()).
int64_t num_threads();

namespace detail {

struct ItemState {
  explicit ItemState(int64_t n_) : n(n_) {}
  const int64_t n;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
  std::exception_ptr error;
  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> g(mu);
    if (!error) error = e;
  }
  void finish_one() {
    if (done.fetch_add(1) + 1 == n) {
      std::lock_guard<std::mutex> g(mu);
      cv.notify_all();
    }
  }
  void wait() {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return done.load() == n; });
    if (error) std::rethrow_exception(error);
  }
};

// Runs task() on `count` helper threads (asynchronously).
void launch_helpers(int64_t count, const std::function<void()>& task);

}  // namespace detail

// make_worker() returns a callable void(int64_t item) holding one worker's
// scratch; it is called only by a thread that got an item.
template <typename MakeWorker>
void parallel_items(int64_t n, const MakeWorker& make_worker) {
  if (n <= 0) return;
  const int64_t workers = std::min<int64_t>(num_threads(), n);
  if (workers <= 1) {
    auto work = make_worker();
    for (int64_t i = 0; i < n; ++i) work(i);
    return;
  }
  auto st = std::make_shared<detail::ItemState>(n);
  auto drain = [st, &make_worker]() {
    int64_t i = st->next.fetch_add(1);
    if (i >= st->n) return;  // (make_worker is alive while items remain)
    auto work = make_worker();
    for (; i < st->n; i = st->next.fetch_add(1)) {
      try {
        work(i);
      } catch (...) {
        st->fail(std::current_exception());
      }
      st->finish_one();
    }
  };
  detail::launch_helpers(workers - 1, drain);
  drain();
  st->wait();
}

// fn(i) for i in [0, n), items scheduled as above.
template <typename Fn>
void parallel_for(int64_t n, const Fn& fn) {
  parallel_items(n, [&]() { return [&](int64_t i) { fn(i); }; });
}

}  // namespace cpu
}  // namespace tts
