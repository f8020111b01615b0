#include "moelab/util/runtime.h"

#include <unistd.h>

#include <dlfcn.h>
#include <malloc.h>
#include <sched.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <string_view>

#include "moelab/util/errors.h"

namespace moelab {

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

uint64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page_size = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page_size > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size)
                                    : 0;
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

namespace {

// LibTorch 2.4 replaced the per-device autocast functions by ones taking the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool cpu_autocast_enabled() { return at::autocast::is_autocast_enabled(at::kCPU); }
void set_cpu_autocast(bool enabled, c10::ScalarType dtype) {
  at::autocast::set_autocast_enabled(at::kCPU, enabled);
  at::autocast::set_autocast_dtype(at::kCPU, dtype);
}
c10::ScalarType cpu_autocast_dtype() { return at::autocast::get_autocast_dtype(at::kCPU); }
#else
bool cpu_autocast_enabled() { return at::autocast::is_cpu_enabled(); }
void set_cpu_autocast(bool enabled, c10::ScalarType dtype) {
  at::autocast::set_cpu_enabled(enabled);
  at::autocast::set_autocast_cpu_dtype(dtype);
}
c10::ScalarType cpu_autocast_dtype() { return at::autocast::get_autocast_cpu_dtype(); }
#endif

}  // namespace

Precision parse_precision(const std::string& name, const std::string& where) {
  if (name == "fp32") return Precision::kFloat32;
  if (name == "bf16") return Precision::kBFloat16;
  throw ConfigError(where + ": unknown precision '" + name + "'; expected fp32 or bf16");
}

void check_precision_supported(Precision precision, const std::string& where) {
  if (precision == Precision::kFloat32) return;
  try {
    AutocastScope scope(precision);
    at::Tensor x = at::ones({2, 2}, at::kFloat);
    at::Tensor y = at::matmul(x, x);
    if (y.scalar_type() != at::kBFloat16) {
      throw ConfigError(where + ": bf16 autocast is not supported by this LibTorch on the CPU "
                        "(a matmul stayed float32); use fp32");
    }
  } catch (const c10::Error& e) {
    throw ConfigError(where + ": bf16 autocast is not supported by this LibTorch on the CPU (" +
                      std::string(e.what_without_backtrace()) + "); use fp32");
  }
}

AutocastScope::AutocastScope(Precision precision) {
  if (precision == Precision::kFloat32) return;
  active_ = true;
  previous_enabled_ = cpu_autocast_enabled();
  previous_dtype_ = cpu_autocast_dtype();
  set_cpu_autocast(true, c10::ScalarType::BFloat16);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  // Casts cached for this scope must not outlive it (the weights change after each step).
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_cpu_autocast(previous_enabled_, previous_dtype_);
}

AutocastDisabled::AutocastDisabled() : previous_enabled_(cpu_autocast_enabled()) {
  if (previous_enabled_) set_cpu_autocast(false, cpu_autocast_dtype());
}

AutocastDisabled::~AutocastDisabled() {
  if (previous_enabled_) set_cpu_autocast(true, cpu_autocast_dtype());
}

}  // namespace moelab
