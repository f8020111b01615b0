#include "side_by_side.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace moelab::nn::internal {

void run_on_threads(const std::function<void()>& work) {
  const int threads = at::get_num_threads();
  if (threads < 2 || at::in_parallel_region()) {
    work();
    return;
  }
  const at::ThreadLocalState caller;
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    at::ThreadLocalStateGuard guard(caller);
#ifdef _OPENMP
    (void)at::get_num_threads();  // LibTorch's first call on this thread sets its count
    omp_set_num_threads(1);       // for this region's task only: the caller's is unchanged after
#endif
    work();
  });
}

}  // namespace moelab::nn::internal
