#include "moelab/util/runtime.h"

#include <dlfcn.h>
#include <malloc.h>
#include <sched.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <string_view>

namespace moelab {

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

int init_runtime(const RuntimeOptions& options) {
  TORCH_CHECK(options.threads >= 0, "init_runtime: threads (", options.threads,
              ") must be >= 0 (0 = all cores)");
  if (options.tune_allocator) {
#ifdef __GLIBC__
    // Serve every block from the heap and never give the top of it back: a training step
    // allocates the same large temporaries again and again.
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
#endif
  }
  const int threads = options.threads > 0 ? options.threads : available_cores();
  at::set_num_threads(threads);
  return at::get_num_threads();
}

std::string blas_library_path() {
  void* symbol = dlsym(RTLD_DEFAULT, "sgemm_");
  if (symbol == nullptr) return {};
  Dl_info info{};
  if (dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return {};
  char resolved[PATH_MAX];
  if (realpath(info.dli_fname, resolved) == nullptr) return info.dli_fname;
  return resolved;
}

bool blas_is_optimized() {
  std::string path = blas_library_path();
  std::transform(path.begin(), path.end(), path.begin(), ::tolower);
  constexpr std::array<std::string_view, 5> kFast{"openblas", "mkl", "blis", "accelerate",
                                                  "atlas"};
  return std::any_of(kFast.begin(), kFast.end(),
                     [&](std::string_view name) { return path.find(name) != std::string::npos; });
}

}  // namespace moelab
