// Work shared out over XLA's intra-op thread pool from inside an FFI custom call.
//
// The calling thread works too, so a busy pool cannot deadlock the call. The shared state is
// kept alive by whichever thread finishes last: a worker may start after the call has returned,
// find no item left and exit without touching the call's buffers.

#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace musc {

// Runs make()(i) for every item i in [0, items): make() builds one worker's callable (its own
// scratch), called only by a thread that has an item to do.
template <typename MakeWorker>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t items, MakeWorker make) {
  struct Shared {
    MakeWorker make;
    int64_t items;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    Shared(MakeWorker m, int64_t n) : make(std::move(m)), items(n) {}

    void Work() {
      int64_t i = next.fetch_add(1);
      if (i >= items) return;
      auto worker = make();
      int64_t finished = 0;
      for (; i < items; i = next.fetch_add(1)) {
        worker(i);
        ++finished;
      }
      done.fetch_add(finished, std::memory_order_release);
    }
  };
  if (items <= 0) return;
  auto shared = std::make_shared<Shared>(std::move(make), items);
  const int64_t workers = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), items);
  for (int64_t w = 1; w < workers; ++w) pool.Schedule([shared] { shared->Work(); });
  shared->Work();
  while (shared->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
}

}  // namespace musc
