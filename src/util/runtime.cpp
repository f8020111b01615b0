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
#include <chrono>
#include <vector>
#include <array>
#include <climits>
#include <cstdio>
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

namespace {
bool allocator_policy_applied = false;
}  // namespace

bool allocator_tuned() { return allocator_policy_applied; }

int init_runtime(const RuntimeOptions& options) {
  TORCH_CHECK(options.threads >= 0, "init_runtime: threads (", options.threads,
              ") must be >= 0 (0 = all cores)");
  if (options.tune_allocator) {
#ifdef __GLIBC__
    // Serve every block from the heap and never give the top of it back: a training step
    // allocates the same large temporaries again and again.
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
    allocator_policy_applied = true;
#endif
  }
  // 0: OMP_NUM_THREADS when it is set (as PyTorch does; `make test` sets 1 per test process, so
  // two tests in parallel do not fight over two cores), else every core.
  int threads = options.threads;
  if (threads == 0) {
    const char* omp = std::getenv("OMP_NUM_THREADS");
    const int from_environment = omp != nullptr ? std::atoi(omp) : 0;
    threads = from_environment > 0 ? from_environment : available_cores();
  }
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

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

// Markers a restart carries: the core moelab set, or the core it set and then rejected.
constexpr const char* kSelectedCore = "MOELAB_BLAS_SELECTED";
constexpr const char* kRejectedCore = "MOELAB_BLAS_REJECTED";

std::string openblas_core() {
  using CoreName = char* (*)();
  const auto corename = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (corename == nullptr) return {};
  const char* name = corename();
  return name == nullptr ? std::string() : std::string(name);
}

// 3: AVX-512 kernels, 2: AVX2 kernels, 1: anything older or generic.
int core_rank(const std::string& core) {
  for (const char* name : {"SkylakeX", "Cooperlake", "SapphireRapids"}) {
    if (core == name) return 3;
  }
  for (const char* name : {"Haswell", "Zen"}) {
    if (core == name) return 2;
  }
  return 1;
}

// Makes OpenBLAS choose its core again, in this process: the core OPENBLAS_CORETYPE now names, or
// its own detection when unset. OpenBLAS's DYNAMIC_ARCH builds export the start-up selection
// (gotoblas_dynamic_quit forgets the core, gotoblas_dynamic_init picks one and sets its block
// sizes); nothing else in the library depends on the core until the first BLAS call. Returns
// false where the library has no such functions (the caller restarts instead).
bool reselect_openblas_core() {
  using Step = void (*)();
  const auto quit = reinterpret_cast<Step>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit"));
  const auto init = reinterpret_cast<Step>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init"));
  if (quit == nullptr || init == nullptr) return false;
  quit();
  init();
  return true;
}

// MOELAB_BLAS_CHECK=fail plays a core that computes wrong (for the test of that path).
bool core_computes_right() {
  return environment("MOELAB_BLAS_CHECK") != "fail" && gemm_matches_float64();
}

// Marks moelab's core as rejected (never tried again, by this process or its children) and
// gives the choice back to OpenBLAS.
void reject_selected_core(const std::string& core) {
  ::setenv(kRejectedCore, core.c_str(), 1);
  ::unsetenv(kSelectedCore);
  ::unsetenv("OPENBLAS_CORETYPE");
}

// Replaces this process by a fresh start of the same program with the same arguments (the
// environment as changed); returns only if that fails.
void restart(char** argv) {
  if (argv == nullptr || argv[0] == nullptr) return;
  ::execv("/proc/self/exe", argv);
}

}  // namespace

std::string best_blas_core_for_cpu() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return {};
}

void select_blas_kernel(char** argv) {
  const std::string selected = environment(kSelectedCore);
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  if (!selected.empty() && coretype != nullptr && selected == coretype) {
    // Started with moelab's core set (a restart, or a child of a moelab process): check it.
    if (core_computes_right()) return;
    // Back to OpenBLAS's own choice (the original core), marked so it is not tried again.
    reject_selected_core(selected);
    if (reselect_openblas_core()) return;
    restart(argv);
    std::fprintf(stderr, "moelab: warning: OpenBLAS core %s gave wrong GEMM results and the "
                 "restart on OpenBLAS's own core failed; results may be wrong\n", selected.c_str());
    return;
  }
  // Set by the machine's owner (even to an empty value): theirs to decide.
  if (coretype != nullptr || std::getenv("OPENBLAS_L2_SIZE") != nullptr) return;
  if (!environment(kRejectedCore).empty()) return;
  const std::string core = openblas_core();
  const std::string best = best_blas_core_for_cpu();
  if (core.empty() || best.empty() || core_rank(core) >= core_rank(best)) return;
  // The variables stay set: child processes (ranks, tests) start on the same core and check it.
  ::setenv("OPENBLAS_CORETYPE", best.c_str(), 1);
  ::setenv(kSelectedCore, best.c_str(), 1);
  if (reselect_openblas_core()) {
    if (openblas_core() == best && core_computes_right()) return;
    reject_selected_core(best);
    reselect_openblas_core();
    return;
  }
  restart(argv);
  ::unsetenv("OPENBLAS_CORETYPE");  // the restart failed: go on as we are
  ::unsetenv(kSelectedCore);
}

BlasKernel blas_kernel() {
  BlasKernel kernel;
  kernel.library = blas_library_path();
  kernel.core = openblas_core();
  const std::string selected = environment(kSelectedCore);
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  if (!selected.empty() && coretype != nullptr && selected == coretype) {
    kernel.chosen_by = "moelab";
  } else if (coretype != nullptr) {
    kernel.chosen_by = "OPENBLAS_CORETYPE";
  } else {
    kernel.chosen_by = "OpenBLAS";
  }
  const std::string rejected = environment(kRejectedCore);
  const std::string best = best_blas_core_for_cpu();
  if (!rejected.empty()) {
    kernel.note = rejected + " was tried and gave wrong GEMM results on this CPU";
  } else if (!kernel.core.empty() && !best.empty() && core_rank(kernel.core) < core_rank(best)) {
    kernel.note = "this CPU supports " + best + "; unset OPENBLAS_CORETYPE to let moelab use it";
  }
  return kernel;
}

bool gemm_matches_float64() {
  // Fixed values, no RNG: the global generator's state belongs to the program.
  auto values = [](int64_t rows, int64_t cols, double phase) {
    return at::sin(at::arange(rows * cols, at::kDouble) * 0.7 + phase).reshape({rows, cols});
  };
  auto close = [](const at::Tensor& got, const at::Tensor& a, const at::Tensor& b,
                  const at::Tensor& reference) {
    // float32 rounding: a few ulps of each product term's magnitude, summed.
    const at::Tensor bound = at::matmul(a.abs(), b.abs()) * 1e-5 + 1e-30;
    return (got.to(at::kDouble) - reference).abs().le(bound).all().item<bool>();
  };
  const std::array<std::array<int64_t, 3>, 6> shapes{
      {{1, 1, 1}, {7, 5, 3}, {64, 64, 64}, {129, 257, 65}, {300, 33, 100}, {2, 1000, 513}}};
  for (const auto& [m, k, n] : shapes) {
    const at::Tensor a = values(m, k, 0.1), b = values(k, n, 0.3), v = values(k, 1, 0.5);
    const at::Tensor reference = at::matmul(a, b);
    const at::Tensor af = a.to(at::kFloat), bf = b.to(at::kFloat);
    // Row-major, column-major (a transposed copy viewed back) and transposed operands take
    // different kernels; a matrix-vector product takes gemv.
    const at::Tensor af_columns = af.t().contiguous().t(), bf_columns = bf.t().contiguous().t();
    if (!close(at::matmul(af, bf), a, b, reference) ||
        !close(at::matmul(af_columns, bf_columns), a, b, reference) ||
        !close(at::matmul(bf.t(), af.t()), b.t(), a.t(), reference.t()) ||
        !close(at::mv(af, v.to(at::kFloat).squeeze(1)).unsqueeze(1), a, v, at::matmul(a, v))) {
      return false;
    }
  }
  return true;
}

double median(std::vector<double> values) {
  TORCH_CHECK(!values.empty(), "median of no values");
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

namespace {

// Median seconds of `runs` calls of fn after `warmup` untimed ones.
template <typename Fn>
double median_seconds(int warmup, int runs, Fn&& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> seconds;
  for (int i = 0; i < runs; ++i) seconds.push_back(seconds_of(fn));
  return median(std::move(seconds));
}

}  // namespace

double measure_gemm_gflops(int64_t n, c10::ScalarType dtype) {
  const at::Tensor a = at::sin(at::arange(n * n, at::kFloat)).reshape({n, n}).to(dtype);
  const at::Tensor b = at::cos(at::arange(n * n, at::kFloat)).reshape({n, n}).to(dtype);
  at::Tensor c = at::empty({n, n}, a.options());
  const double seconds = median_seconds(3, 5, [&] { at::mm_out(c, a, b); });
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  return flops / seconds / 1e9;
}

double measure_memory_read_gbps(int64_t bytes) {
  TORCH_CHECK(bytes >= 4096, "measure_memory_read_gbps: ", bytes, " bytes is too few to measure");
  const at::Tensor data = at::ones({bytes / 4}, at::kFloat);  // written once: pages are mapped
  const double seconds = median_seconds(1, 5, [&] {
    const float total = at::sum(data).item<float>();
    TORCH_CHECK(total > 0, "measure_memory_read_gbps: the sum of ones is ", total);
  });
  return static_cast<double>(data.numel() * 4) / seconds / 1e9;
}

// LibTorch 2.4 replaced the per-device autocast functions by ones taking the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool cpu_autocast_enabled() { return at::autocast::is_autocast_enabled(at::kCPU); }

namespace {

void set_cpu_autocast(bool enabled, c10::ScalarType dtype) {
  at::autocast::set_autocast_enabled(at::kCPU, enabled);
  at::autocast::set_autocast_dtype(at::kCPU, dtype);
}
c10::ScalarType cpu_autocast_dtype() { return at::autocast::get_autocast_dtype(at::kCPU); }
#else
bool cpu_autocast_enabled() { return at::autocast::is_cpu_enabled(); }

namespace {

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

AutocastDisabled::AutocastDisabled()
    : previous_enabled_(cpu_autocast_enabled()), dtype_(cpu_autocast_dtype()) {
  if (previous_enabled_) set_cpu_autocast(false, dtype_);
}

AutocastDisabled::~AutocastDisabled() {
  if (previous_enabled_) set_cpu_autocast(true, dtype_);
}

}  // namespace moelab
