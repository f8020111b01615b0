// Process-wide runtime set-up: intra-op thread count, the glibc allocator policy, and a check that
// LibTorch's BLAS is a fast one. Call init_runtime() once at the start of a program (the moelab
// tool, the tests and the benchmarks do); the library never calls it behind the user's back.
#pragma once

#include <c10/core/ScalarType.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

struct RuntimeOptions {
  /// Intra-op threads; 0 = OMP_NUM_THREADS if set, else every core this process may run on.
  /// LibTorch 1.13 starts with 1.
  int threads = 0;
  /// Keep large temporaries on the heap instead of fresh mmap pages (see PERFORMANCE.md: glibc
  /// maps blocks >= 32 MB anew on every step, and the page faults cost more than the matmuls).
  bool tune_allocator = true;
};

/// Applies `options`; returns the thread count now in force.
int init_runtime(const RuntimeOptions& options = {});

/// Whether init_runtime applied the allocator policy (RuntimeOptions::tune_allocator).
bool allocator_tuned();

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

/// The BLAS kernel in use and how it was chosen.
struct BlasKernel {
  std::string library;    // blas_library_path()
  std::string core;       // OpenBLAS's core ("SkylakeX", "Haswell", "Prescott", ...); "" if not OpenBLAS
  std::string chosen_by;  // "OpenBLAS" (its own detection), "OPENBLAS_CORETYPE" (set before moelab
                          // started: never changed), or "moelab" (picked from the CPU's features
                          // and checked against float64)
  std::string note;       // why a better core was not taken, if one exists; else ""
};

/// Call first in main, before any work: on a CPU with AVX-512 or AVX2 where OpenBLAS fell back
/// to a generic core (a virtual machine that hides the CPU model), sets OPENBLAS_CORETYPE to the
/// core the CPU's features support and has OpenBLAS choose again in this process (its exported
/// start-up selection; where the library lacks it, restarts the process, execv of
/// /proc/self/exe, since OpenBLAS reads the variable when it loads). That core's GEMM results
/// are checked against float64; if they differ, OpenBLAS goes back to its own choice. Never
/// touches an OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE the environment already has.
void select_blas_kernel(char** argv);

/// The kernel in use in this process (after select_blas_kernel, if it was called).
BlasKernel blas_kernel();

/// The core OpenBLAS should use on this CPU, from cpuid: "SkylakeX" (AVX-512 F, BW, VL, DQ),
/// "Haswell" (AVX2 and FMA), or "" (nothing better than OpenBLAS's own choice).
std::string best_blas_core_for_cpu();

/// float32 matmuls (plain, transposed, matrix-vector; a few awkward shapes) against float64:
/// false if any element is further off than float32 rounding allows.
bool gemm_matches_float64();

/// GFLOP/s of an n x n x n matmul of `dtype` (float32 or bfloat16: oneDNN's AMX kernels where the
/// CPU has them) on the current threads (median of a few, after warm-up).
double measure_gemm_gflops(int64_t n = 1024, c10::ScalarType dtype = c10::ScalarType::Float);

/// Wall-clock seconds one call of fn takes (the benchmarks' and probes' one timer).
template <typename Fn>
double seconds_of(Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// The median of `values` (the mean of the middle two for an even count); values must not be
/// empty. Benchmarks report medians: on shared machines a few slow runs are the host's, not ours.
double median(std::vector<double> values);

/// GB/s at which the current threads read `bytes` of float32 from memory (a sum; median of a
/// few). With many small experts the weights, not the arithmetic, bound a step: each is read
/// from memory in forward and again in backward.
double measure_memory_read_gbps(int64_t bytes = int64_t{256} << 20);

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

/// Whether CPU autocast is on (LibTorch 1.13 and 2.x).
bool cpu_autocast_enabled();

/// Turns CPU autocast off for the scope's lifetime (restoring it after): for code that chooses
/// its precision op by op, like the MoE layer (routing in float32, expert GEMMs in the autocast
/// type) and the fused projection + cross-entropy (GEMMs in the autocast type, softmax in
/// float32).
class AutocastDisabled {
 public:
  AutocastDisabled();
  ~AutocastDisabled();
  AutocastDisabled(const AutocastDisabled&) = delete;
  AutocastDisabled& operator=(const AutocastDisabled&) = delete;
  /// Whether autocast was on when the scope began.
  bool was_enabled() const { return previous_enabled_; }
  /// The type autocast gives matmuls: its lower precision when it was on, else float32.
  c10::ScalarType matmul_type() const { return previous_enabled_ ? dtype_ : c10::ScalarType::Float; }

 private:
  bool previous_enabled_ = false;
  c10::ScalarType dtype_ = c10::ScalarType::Float;
};

}  // namespace moelab
