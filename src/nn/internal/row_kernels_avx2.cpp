// The row kernels for AVX2 + FMA: 8 float lanes, SLEEF's exp. Compiled with those flags
// (CMakeLists.txt); called only where the CPU has them (row_kernels.cpp).
#include <immintrin.h>
#include <sleef.h>

#define MOELAB_ROW_ISA avx2
#include "row_kernels_impl.h"

namespace moelab::nn::internal {

namespace avx2 {
namespace {

struct Ops {
  using V = __m256;
  static constexpr int64_t kLanes = 8;
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(const uint16_t* p) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store(uint16_t* p, V v) {
    // float_to_bf16 on 8 lanes, then the 8 low halves packed (packus works per 128-bit half:
    // quadwords 0 and 2 hold lanes 0-3 and 4-7).
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lowest = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lowest, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V sqrt(V v) { return _mm256_sqrt_ps(v); }
  static V exp(V v) { return Sleef_expf8_u10avx2(v); }
  static float reduce_max(V v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
  }
  static float reduce_add(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
  }
};

}  // namespace
}  // namespace avx2

const RowKernels kAvx2RowKernels = avx2::make_row_kernels<avx2::Ops>("avx2");

}  // namespace moelab::nn::internal
