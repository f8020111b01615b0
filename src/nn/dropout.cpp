#include "moelab/nn/dropout.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <mutex>

namespace moelab::nn {

namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per parallel task

// The random bits of element i: a hash of (seed, i) (MurmurHash3's finaliser, twice), so any
// element's draw needs no other's: the loop vectorises and threads split it anywhere.
inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6BU;
  h ^= h >> 13;
  h *= 0xC2B2AE35U;
  return h ^ (h >> 16);
}
inline uint32_t element_bits(uint64_t seed, int64_t i) {
  const auto index = static_cast<uint64_t>(i);
  const uint32_t h = fmix32(static_cast<uint32_t>(index) * 0x9E3779B9U + static_cast<uint32_t>(seed));
  return fmix32(h ^ static_cast<uint32_t>(seed >> 32) ^ static_cast<uint32_t>(index >> 32));
}

// out[i] = in[i] * scale where element i survives (bits >= threshold = p 2^32), else 0.
template <typename T>
void mask_range(const T* in, T* out, int64_t begin, int64_t end, uint64_t seed, uint32_t threshold,
                float scale) {
  for (int64_t i = begin; i < end; ++i) {
    out[i] = element_bits(seed, i) >= threshold ? static_cast<T>(static_cast<float>(in[i]) * scale)
                                                : static_cast<T>(0);
  }
}

// float32, the common case, compiled for AVX-512, AVX2 and the baseline; the loader picks one.
__attribute__((target_clones("avx512f", "avx2", "default"))) void mask_range_float(
    const float* in, float* out, int64_t begin, int64_t end, uint64_t seed, uint32_t threshold, float scale) {
  for (int64_t i = begin; i < end; ++i) {
    out[i] = element_bits(seed, i) >= threshold ? in[i] * scale : 0.0f;
  }
}

template <>
void mask_range<float>(const float* in, float* out, int64_t begin, int64_t end, uint64_t seed,
                       uint32_t threshold, float scale) {
  mask_range_float(in, out, begin, end, seed, threshold, scale);
}

// x * mask / (1 - p), written in one pass.
at::Tensor apply_mask(const at::Tensor& input, double p, uint64_t seed) {
  const at::Tensor x = input.contiguous();
  at::Tensor out = at::empty_like(x);
  const auto threshold = static_cast<uint32_t>(std::min(p * 4294967296.0, 4294967295.0));
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dropout", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      mask_range(in, o, begin, end, seed, threshold, scale);
    });
  });
  return out;
}

// The mask is never stored: backward draws it again from the seed.
struct SeededDropout : public torch::autograd::Function<SeededDropout> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double p,
                            int64_t seed) {
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    return apply_mask(x, p, static_cast<uint64_t>(seed));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const double p = ctx->saved_data["p"].toDouble();
    const auto seed = static_cast<uint64_t>(ctx->saved_data["seed"].toInt());
    return {apply_mask(grads[0], p, seed), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor dropout_mask(int64_t numel, double p, uint64_t seed, at::ScalarType dtype) {
  TORCH_CHECK(p >= 0 && p < 1, "dropout: p (", p, ") must be in [0, 1)");
  return apply_mask(at::ones({numel}, at::TensorOptions().dtype(dtype)), p, seed);
}

at::Tensor dropout(const at::Tensor& x, double p, bool training) {
  TORCH_CHECK(p >= 0 && p < 1, "dropout: p (", p, ") must be in [0, 1)");
  if (!training || p == 0 || x.numel() == 0) return x;
  if (!x.device().is_cpu()) return at::dropout(x, p, training);  // GPUs have fast generators
  uint64_t seed = 0;
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    seed = generator.get<at::CPUGeneratorImpl>()->random64();
  }
  return SeededDropout::apply(x, p, static_cast<int64_t>(seed)).view(x.sizes());
}

DropoutImpl::DropoutImpl(double p_) : p(p_) {
  TORCH_CHECK(p >= 0 && p < 1, "Dropout: p (", p, ") must be in [0, 1)");
}

void DropoutImpl::pretty_print(std::ostream& stream) const { stream << "moelab::nn::Dropout(p=" << p << ")"; }

}  // namespace moelab::nn
