// Process-wide runtime set-up: intra-op thread count, the glibc allocator policy, and a check that
// LibTorch's BLAS is a fast one. Call init_runtime() once at the start of a program (the moelab
// tool, the tests and the benchmarks do); the library never calls it behind the user's back.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
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

/// Bytes of physical memory on this machine (sysconf), 0 if unknown.
uint64_t physical_memory_bytes();

/// Real path of the shared library that provides `sgemm_` in this process (empty if none), e.g.
/// /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3.
std::string blas_library_path();

/// True when the BLAS in use is a known fast one (OpenBLAS, MKL, BLIS, Accelerate); Debian's
/// reference BLAS is ~20x slower and makes every benchmark meaningless.
bool blas_is_optimized();

/// Arithmetic precision of training and evaluation: fp32, or bf16 autocast (matmuls and
/// convolutions in bfloat16, weights, optimiser state and reductions in float32).
enum class Precision { kFloat32, kBFloat16 };

/// "fp32" or "bf16"; ConfigError naming `where` otherwise.
Precision parse_precision(const std::string& name, const std::string& where);

/// ConfigError naming `where` if this LibTorch cannot autocast to `precision` on the CPU.
void check_precision_supported(Precision precision, const std::string& where);

/// Autocast to bf16 on the CPU for the scope's lifetime (nothing for fp32); restores the
/// previous autocast state.
class AutocastScope {
 public:
  explicit AutocastScope(Precision precision);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  bool previous_enabled_ = false;
  c10::ScalarType previous_dtype_ = c10::ScalarType::BFloat16;
};

/// Turns CPU autocast off for the scope's lifetime (restoring it after): for code that computes
/// in float32 whatever the caller's precision, like the MoE layer's routing and custom kernels.
class AutocastDisabled {
 public:
  AutocastDisabled();
  ~AutocastDisabled();
  AutocastDisabled(const AutocastDisabled&) = delete;
  AutocastDisabled& operator=(const AutocastDisabled&) = delete;
  /// Whether autocast was on when the scope began.
  bool was_enabled() const { return previous_enabled_; }

 private:
  bool previous_enabled_ = false;
};

}  // namespace moelab
