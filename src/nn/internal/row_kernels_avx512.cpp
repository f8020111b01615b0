// The row kernels for AVX-512 (F, BW, VL, DQ) + FMA: 16 float lanes, SLEEF's exp. Compiled with
// those flags (CMakeLists.txt); called only where the CPU has them (row_kernels.cpp).
#include <immintrin.h>
#include <sleef.h>

#define MOELAB_ROW_ISA avx512
#include "row_kernels_impl.h"

namespace moelab::nn::internal {

namespace avx512 {
namespace {

struct Ops {
  using V = __m512;
  static constexpr int64_t kLanes = 16;
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(const uint16_t* p) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store(uint16_t* p, V v) {
    // float_to_bf16 on 16 lanes: add 0x7FFF + the kept part's lowest bit, keep the top half.
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lowest = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded =
        _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lowest, _mm512_set1_epi32(0x7FFF))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
  }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V sqrt(V v) { return _mm512_sqrt_ps(v); }
  static V exp(V v) { return Sleef_expf16_u10avx512f(v); }
  static float reduce_max(V v) { return _mm512_reduce_max_ps(v); }
  static float reduce_add(V v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace
}  // namespace avx512

const RowKernels kAvx512RowKernels = avx512::make_row_kernels<avx512::Ops>("avx512");

}  // namespace moelab::nn::internal
