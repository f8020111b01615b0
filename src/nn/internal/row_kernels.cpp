// The portable row kernels and the choice among the versions this build has. No LibTorch here:
// the choice must not depend on how ATen was compiled, only on this CPU.
#include "row_kernels.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#define MOELAB_ROW_ISA portable
#include "row_kernels_impl.h"

namespace moelab::nn::internal {

namespace portable {
namespace {

// Eight independent float lanes in plain loops: the sums and maxima associate as the vector
// versions' do (8 partial results), and the compiler may vectorise what it can.
struct Ops {
  struct V {
    float lane[8];
  };
  static constexpr int64_t kLanes = 8;
  template <class F>
  static V map(F f) {
    V r;
    for (int i = 0; i < 8; ++i) r.lane[i] = f(i);
    return r;
  }
  static V set1(float x) { return map([&](int) { return x; }); }
  static V load(const float* p) { return map([&](int i) { return p[i]; }); }
  static V load(const uint16_t* p) { return map([&](int i) { return bf16_to_float(p[i]); }); }
  static void store(float* p, V v) {
    for (int i = 0; i < 8; ++i) p[i] = v.lane[i];
  }
  static void store(uint16_t* p, V v) {
    for (int i = 0; i < 8; ++i) p[i] = float_to_bf16(v.lane[i]);
  }
  static V add(V a, V b) { return map([&](int i) { return a.lane[i] + b.lane[i]; }); }
  static V sub(V a, V b) { return map([&](int i) { return a.lane[i] - b.lane[i]; }); }
  static V mul(V a, V b) { return map([&](int i) { return a.lane[i] * b.lane[i]; }); }
  static V div(V a, V b) { return map([&](int i) { return a.lane[i] / b.lane[i]; }); }
  // Like the vector max: the second operand when either is NaN.
  static V max(V a, V b) { return map([&](int i) { return a.lane[i] > b.lane[i] ? a.lane[i] : b.lane[i]; }); }
  static V sqrt(V v) { return map([&](int i) { return std::sqrt(v.lane[i]); }); }
  static V exp(V v) { return map([&](int i) { return std::exp(v.lane[i]); }); }
  static float reduce_max(V v) {
    float m = v.lane[0];
    for (int i = 1; i < 8; ++i) m = v.lane[i] > m ? v.lane[i] : m;
    return m;
  }
  static float reduce_add(V v) {
    float s = 0;
    for (int i = 0; i < 8; ++i) s += v.lane[i];
    return s;
  }
};

}  // namespace
}  // namespace portable

const RowKernels kScalarRowKernels = portable::make_row_kernels<portable::Ops>("scalar");

const RowKernels* const* available_row_kernels(int* count) {
  static const std::vector<const RowKernels*> versions = [] {
    std::vector<const RowKernels*> v{&kScalarRowKernels};
#if defined(MOELAB_WITH_SLEEF) && defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) v.push_back(&kAvx2RowKernels);
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma")) {
      v.push_back(&kAvx512RowKernels);
    }
#endif
    return v;
  }();
  *count = static_cast<int>(versions.size());
  return versions.data();
}

const RowKernels& row_kernels() {
  static const RowKernels* const chosen = [] {
    int count = 0;
    const RowKernels* const* versions = available_row_kernels(&count);
    const char* wanted = std::getenv("MOELAB_ROW_KERNELS");
    if (wanted == nullptr || *wanted == '\0') return versions[count - 1];
    std::string names;
    for (int i = 0; i < count; ++i) {
      if (std::strcmp(versions[i]->isa, wanted) == 0) return versions[i];
      names += std::string(i ? ", " : "") + versions[i]->isa;
    }
    throw std::invalid_argument(std::string("MOELAB_ROW_KERNELS=") + wanted +
                                ": not available on this CPU and build (available: " + names + ")");
  }();
  return *chosen;
}

}  // namespace moelab::nn::internal
