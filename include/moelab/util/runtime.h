// Process-wide runtime set-up: intra-op thread count, the glibc allocator policy, and a check that
// LibTorch's BLAS is a fast one. Call init_runtime() once at the start of a program (the moelab
// tool, the tests and the benchmarks do); the library never calls it behind the user's back.
#pragma once

#include <string>

namespace moelab {

struct RuntimeOptions {
  /// Intra-op threads; 0 = every core this process may run on. LibTorch 1.13 starts with 1.
  int threads = 0;
  /// Keep large temporaries on the heap instead of fresh mmap pages (see PERFORMANCE.md: glibc
  /// maps blocks >= 32 MB anew on every step, and the page faults cost more than the matmuls).
  bool tune_allocator = true;
};

/// Applies `options`; returns the thread count now in force.
int init_runtime(const RuntimeOptions& options = {});

/// Cores this process may run on (sched affinity), at least 1.
int available_cores();

/// Real path of the shared library that provides `sgemm_` in this process (empty if none), e.g.
/// /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3.
std::string blas_library_path();

/// True when the BLAS in use is a known fast one (OpenBLAS, MKL, BLIS, Accelerate); Debian's
/// reference BLAS is ~20x slower and makes every benchmark meaningless.
bool blas_is_optimized();

}  // namespace moelab
