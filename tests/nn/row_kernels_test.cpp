// The fused row kernels (src/nn/internal/row_kernels.h), every version this machine runs,
// against float64 references, and the LibTorch-facing SwiGLU functions against LibTorch's ops.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "moelab/nn/activation.h"
#include "nn/internal/row_kernels.h"

namespace {

using moelab::nn::internal::RowKernels;

std::vector<const RowKernels*> row_kernel_versions() {
  int count = 0;
  const RowKernels* const* versions = moelab::nn::internal::available_row_kernels(&count);
  return std::vector<const RowKernels*>(versions, versions + count);
}

uint16_t bf16_bits(float f) { return c10::BFloat16(f).x; }
float from_bf16_bits(uint16_t bits) {
  c10::BFloat16 b;
  b.x = bits;
  return static_cast<float>(b);
}

// |a - b| within `ulps` bf16 steps of b.
bool within_bf16_ulps(float a, float b, int ulps) {
  const float step = std::max(std::abs(b), 1e-30f) * std::ldexp(1.0f, -7);
  return std::abs(a - b) <= ulps * step + 1e-30f;
}

// A row of logits with a spread like a language model's.
std::vector<float> random_logits(int64_t cols, uint64_t seed) {
  torch::manual_seed(seed);
  const at::Tensor t = torch::randn({cols}) * 3;
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + cols);
}

}  // namespace

TEST(RowKernelsTest, ScalarVersionAlwaysThereAndVectorVersionsOnThisCpu) {
  const auto versions = row_kernel_versions();
  ASSERT_GE(versions.size(), 1u);
  EXPECT_STREQ(versions[0]->isa, "scalar");
  // The best one, unless MOELAB_ROW_KERNELS names another.
  const char* forced = std::getenv("MOELAB_ROW_KERNELS");
  EXPECT_STREQ(moelab::nn::internal::row_kernels().isa, forced ? forced : versions.back()->isa);
}

// nll and softmax - onehot against float64, for lengths that exercise whole vectors, tails
// and rows shorter than one vector, in float32 and bf16.
TEST(RowKernelsTest, SoftmaxCrossEntropyMatchesFloat64) {
  for (const RowKernels* k : row_kernel_versions()) {
    for (int64_t cols : {1, 5, 16, 37, 1000}) {
      const std::vector<float> logits = random_logits(cols, static_cast<uint64_t>(cols));
      const int64_t target = (cols * 7) / 11;
      for (bool bf16 : {false, true}) {
        std::vector<float> values(logits);
        std::vector<uint16_t> bits(cols);
        if (bf16) {
          for (int64_t i = 0; i < cols; ++i) {
            bits[i] = bf16_bits(logits[i]);
            values[i] = from_bf16_bits(bits[i]);
          }
        }
        double max = -std::numeric_limits<double>::infinity(), sum = 0;
        for (float v : values) max = std::max(max, static_cast<double>(v));
        for (float v : values) sum += std::exp(v - max);
        const double expected_nll = max + std::log(sum) - values[target];
        std::vector<float> scratch(cols), row(values);
        for (bool gradient : {false, true}) {
          std::vector<uint16_t> row_bits(bits);
          row = values;
          const float nll = bf16 ? k->softmax_cross_entropy_bf16(row_bits.data(), cols, target, gradient, scratch.data())
                                 : k->softmax_cross_entropy_f32(row.data(), cols, target, gradient, scratch.data());
          EXPECT_NEAR(nll, expected_nll, 2e-6 * std::max(1.0, std::abs(expected_nll)))
              << k->isa << " cols " << cols << " bf16 " << bf16;
          for (int64_t i = 0; i < cols; ++i) {
            const double p = std::exp(values[i] - max) / sum - (i == target ? 1.0 : 0.0);
            if (!gradient) {  // the row is left as it was
              ASSERT_EQ(bf16 ? row_bits[i] : 0, bf16 ? bits[i] : 0);
              ASSERT_EQ(row[i], values[i]);
            } else if (bf16) {
              ASSERT_TRUE(within_bf16_ulps(from_bf16_bits(row_bits[i]), static_cast<float>(p), 1))
                  << k->isa << " cols " << cols << " i " << i << ": " << from_bf16_bits(row_bits[i]) << " vs " << p;
            } else {
              ASSERT_NEAR(row[i], p, 1e-6 * std::max(1.0, std::abs(p))) << k->isa << " cols " << cols << " i " << i;
            }
          }
        }
      }
    }
  }
}

TEST(RowKernelsTest, NanLogitGivesNanLoss) {
  for (const RowKernels* k : row_kernel_versions()) {
    for (int64_t nan_at : {3, 35}) {  // in a vector and in the tail
      std::vector<float> row = random_logits(37, 1), scratch(37);
      row[nan_at] = std::numeric_limits<float>::quiet_NaN();
      EXPECT_TRUE(std::isnan(k->softmax_cross_entropy_f32(row.data(), 37, 0, true, scratch.data()))) << k->isa;
      EXPECT_TRUE(std::isnan(row[10])) << k->isa << ": the gradient must not hide the NaN";
    }
  }
}

// silu(g) * u and its gradients against float64, float32 and bf16; bf16 outputs rounded as
// c10::BFloat16 rounds (NaN to 0x7FC0).
TEST(RowKernelsTest, SwiGLUForwardAndBackwardMatchFloat64) {
  const int64_t n = 37;
  torch::manual_seed(3);
  const at::Tensor g0 = torch::randn({n}) * 4, u0 = torch::randn({n}), dy0 = torch::randn({n});
  for (const RowKernels* k : row_kernel_versions()) {
    for (bool bf16 : {false, true}) {
      std::vector<float> g(n), u(n), dy(n);
      std::vector<uint16_t> gb(n), ub(n), dyb(n);
      for (int64_t i = 0; i < n; ++i) {
        gb[i] = bf16_bits(g0[i].item<float>());
        ub[i] = bf16_bits(u0[i].item<float>());
        dyb[i] = bf16_bits(dy0[i].item<float>());
        g[i] = bf16 ? from_bf16_bits(gb[i]) : g0[i].item<float>();
        u[i] = bf16 ? from_bf16_bits(ub[i]) : u0[i].item<float>();
        dy[i] = bf16 ? from_bf16_bits(dyb[i]) : dy0[i].item<float>();
      }
      std::vector<float> out(n), hidden(n), grad_gate(n), grad_up(n);
      std::vector<uint16_t> out_b(n), hidden_b(n), grad_gate_b(n), grad_up_b(n);
      if (bf16) {
        k->swiglu_forward_bf16(gb.data(), ub.data(), out_b.data(), n);
        k->swiglu_backward_bf16(gb.data(), ub.data(), dyb.data(), hidden_b.data(), grad_gate_b.data(),
                                grad_up_b.data(), n);
      } else {
        k->swiglu_forward_f32(g.data(), u.data(), out.data(), n);
        k->swiglu_backward_f32(g.data(), u.data(), dy.data(), hidden.data(), grad_gate.data(), grad_up.data(), n);
      }
      for (int64_t i = 0; i < n; ++i) {
        const double s = 1.0 / (1.0 + std::exp(-static_cast<double>(g[i]))), silu = g[i] * s;
        const double expected[4] = {silu * u[i], silu * u[i], dy[i] * u[i] * s * (1 + g[i] * (1 - s)), dy[i] * silu};
        const float got[4] = {bf16 ? from_bf16_bits(out_b[i]) : out[i], bf16 ? from_bf16_bits(hidden_b[i]) : hidden[i],
                              bf16 ? from_bf16_bits(grad_gate_b[i]) : grad_gate[i],
                              bf16 ? from_bf16_bits(grad_up_b[i]) : grad_up[i]};
        for (int j = 0; j < 4; ++j) {
          if (bf16) {
            EXPECT_TRUE(within_bf16_ulps(got[j], static_cast<float>(expected[j]), 1))
                << k->isa << " output " << j << " i " << i << ": " << got[j] << " vs " << expected[j];
          } else {
            EXPECT_NEAR(got[j], expected[j], 2e-6 * std::max(1.0, std::abs(expected[j])))
                << k->isa << " output " << j << " i " << i;
          }
        }
      }
    }
    // NaN in, the quiet NaN out, in a vector and in the tail.
    std::vector<uint16_t> gate(n, bf16_bits(1.0f)), up(n, bf16_bits(2.0f)), out(n);
    gate[2] = gate[n - 1] = 0x7FC1;
    k->swiglu_forward_bf16(gate.data(), up.data(), out.data(), n);
    EXPECT_EQ(out[2], 0x7FC0) << k->isa;
    EXPECT_EQ(out[n - 1], 0x7FC0) << k->isa;
    EXPECT_EQ(out[0], bf16_bits(static_cast<float>(2.0 / (1.0 + std::exp(-1.0))))) << k->isa;
  }
}

// The tensor-level functions: equal to LibTorch's ops within rounding, on contiguous rows (the
// kernels, on 2 threads) and on the fallback types (double).
TEST(RowKernelsTest, SwiGLUTensorsMatchLibTorchOps) {
  const int saved_threads = at::get_num_threads();
  at::set_num_threads(2);
  torch::manual_seed(4);
  const int64_t rows = 300, d_ff = 40;
  for (auto type : {at::kFloat, at::kBFloat16, at::kDouble}) {
    const at::Tensor h = torch::randn({rows, 2 * d_ff}).to(type), grad = torch::randn({rows, d_ff}).to(type);
    const at::Tensor hd = h.to(at::kDouble).clone().requires_grad_(), gate = hd.narrow(1, 0, d_ff), up = hd.narrow(1, d_ff, d_ff);
    const at::Tensor expected = at::silu(gate) * up;
    expected.backward(grad.to(at::kDouble));
    const double tolerance = type == at::kBFloat16 ? 1e-2 : 1e-6;
    const at::Tensor hidden = moelab::nn::swiglu_hidden(h, d_ff);
    EXPECT_EQ(hidden.scalar_type(), type);
    EXPECT_TRUE(torch::allclose(hidden.to(at::kDouble), expected, tolerance, tolerance)) << type;
    const moelab::nn::SwiGLUGradient back = moelab::nn::swiglu_backward(grad, h, d_ff);
    EXPECT_TRUE(torch::allclose(back.hidden.to(at::kDouble), expected, tolerance, tolerance)) << type;
    EXPECT_TRUE(torch::allclose(back.grad_h.to(at::kDouble), hd.grad(), tolerance, tolerance)) << type;
  }
  EXPECT_THROW(moelab::nn::swiglu_hidden(torch::randn({3, 5}), 3), c10::Error);
  at::set_num_threads(saved_threads);
}

TEST(RowKernelsTest, AllFiniteFindsEveryNanAndInfinityInBodyAndTail) {
  for (const RowKernels* k : row_kernel_versions()) {
    for (int64_t n : {0, 1, 7, 16, 37, 1000}) {
      std::vector<float> x(n);
      for (int64_t i = 0; i < n; ++i)
        x[i] = std::ldexp(static_cast<float>(i % 13) - 6.0f, static_cast<int>(i % 90) - 45);
      EXPECT_TRUE(k->all_finite_f32(x.data(), n)) << k->isa << " n " << n;
      for (float bad :
           {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
            -std::numeric_limits<float>::infinity()}) {
        for (int64_t at : {int64_t{0}, n / 2, n - 1}) {  // first vector, middle, tail
          if (n == 0) continue;
          std::vector<float> y = x;
          y[at] = bad;
          EXPECT_FALSE(k->all_finite_f32(y.data(), n))
              << k->isa << " n " << n << " at " << at << " " << bad;
        }
      }
    }
    const std::vector<float> largest(5, std::numeric_limits<float>::max());
    EXPECT_TRUE(k->all_finite_f32(largest.data(), 5)) << k->isa;
  }
}

// The AdamW kernel against the update written out in float64 (torch::optim::AdamW's formula),
// with and without weight decay, lengths with and without a tail.
TEST(RowKernelsTest, AdamWMatchesFloat64) {
  const double lr = 3e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  const int64_t step = 3;
  const double bc1 = 1 - std::pow(beta1, step), bc2 = 1 - std::pow(beta2, step);
  for (const RowKernels* k : row_kernel_versions()) {
    for (double weight_decay : {0.0, 0.1}) {
      for (int64_t n : {1, 16, 37, 1000}) {
        std::vector<float> p(n), g(n), m(n), v(n);
        for (int64_t i = 0; i < n; ++i) {
          p[i] = std::sin(0.37f * i);
          g[i] = std::cos(1.3f * i) * (i % 3 == 0 ? 1e-3f : 1.0f);
          m[i] = 0.1f * std::sin(0.11f * i);
          v[i] = 0.01f * (1.0f + std::cos(0.7f * i));
        }
        moelab::nn::internal::AdamWCoefficients c;
        c.beta1 = static_cast<float>(beta1);
        c.one_minus_beta1 = static_cast<float>(1 - beta1);
        c.beta2 = static_cast<float>(beta2);
        c.one_minus_beta2 = static_cast<float>(1 - beta2);
        c.sqrt_bias_correction2 = static_cast<float>(std::sqrt(bc2));
        c.eps = static_cast<float>(eps);
        c.neg_step = static_cast<float>(-lr / bc1);
        c.decay = static_cast<float>(1 - lr * weight_decay);
        c.decays = weight_decay != 0;
        std::vector<float> p2 = p, m2 = m, v2 = v;
        k->adamw_f32(p2.data(), g.data(), m2.data(), v2.data(), n, c);
        for (int64_t i = 0; i < n; ++i) {
          const double mi = beta1 * m[i] + (1 - beta1) * g[i];
          const double vi = beta2 * v[i] + (1 - beta2) * double(g[i]) * g[i];
          const double pi = p[i] * (1 - lr * weight_decay) -
                            lr / bc1 * mi / (std::sqrt(vi) / std::sqrt(bc2) + eps);
          // float32 rounding of each term (the sums may cancel)
          const double m_scale = std::abs(beta1 * m[i]) + std::abs((1 - beta1) * g[i]);
          const double p_scale = std::abs(p[i]) + std::abs(pi - p[i]);
          ASSERT_NEAR(m2[i], mi, 1e-6 * m_scale) << k->isa << " i " << i;
          ASSERT_NEAR(v2[i], vi, 1e-6 * std::abs(vi)) << k->isa << " i " << i;
          ASSERT_NEAR(p2[i], pi, 1e-6 * p_scale) << k->isa << " i " << i << " wd " << weight_decay;
          ASSERT_NE(p2[i], p[i]) << k->isa << " i " << i;  // every element moved
        }
      }
    }
  }
}
