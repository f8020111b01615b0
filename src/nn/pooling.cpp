#include "moelab/nn/pooling.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace moelab::nn {

namespace {

// Which element of a window the gradient reaches (0-3 in row-major order), or none.
constexpr uint8_t kNoGradient = 4;

// Comparisons in float for float and bfloat16, in double for double.
template <typename T>
using Compute = at::opmath_type<T>;

// One output row of a plane with LibTorch's exact rule (scan order, NaN wins); for rows with NaN.
template <typename T>
void pool_row_exact(const T* row0, const T* row1, T* out, uint8_t* chosen, int64_t out_w) {
  using C = Compute<T>;
  for (int64_t j = 0; j < out_w; ++j) {
    const C values[4] = {static_cast<C>(row0[2 * j]), static_cast<C>(row0[2 * j + 1]),
                         static_cast<C>(row1[2 * j]), static_cast<C>(row1[2 * j + 1])};
    C best = -std::numeric_limits<C>::infinity();
    uint8_t index = 0;
    for (uint8_t k = 0; k < 4; ++k) {
      if (values[k] > best || std::isnan(values[k])) {
        best = values[k];
        index = k;
      }
    }
    const bool passes = !(best <= 0);  // relu's backward: threshold_backward(grad, out, 0)
    out[j] = static_cast<T>(passes ? best : C(0));
    chosen[j] = passes ? index : kNoGradient;
  }
}

// One plane (H, W) -> (H/2, W/2) and the window's chosen element per output. Without NaN a
// window's first maximum is a tournament of its two rows' first maxima (ties to the first), in
// selects the compiler vectorises; a row with NaN is done again by the exact rule.
template <typename T>
void pool_plane(const T* in, T* out, uint8_t* chosen, int64_t height, int64_t width) {
  using C = Compute<T>;
  const int64_t out_h = height / 2, out_w = width / 2;
  for (int64_t i = 0; i < out_h; ++i) {
    // No aliasing between the planes: without restrict the vectorised loop is guarded by a
    // runtime overlap check that fell back to the scalar one.
    const T* __restrict__ row0 = in + 2 * i * width;
    const T* __restrict__ row1 = row0 + width;
    T* __restrict__ o = out + i * out_w;
    uint8_t* __restrict__ k = chosen + i * out_w;
    int nan = 0;
    // Branch-free (random data mispredicts every branch): comparisons as 0/1 integers.
    for (int64_t j = 0; j < out_w; ++j) {
      const C a = static_cast<C>(row0[2 * j]), b = static_cast<C>(row0[2 * j + 1]);
      const C c = static_cast<C>(row1[2 * j]), d = static_cast<C>(row1[2 * j + 1]);
      nan |= (a != a) | (b != b) | (c != c) | (d != d);
      const int right_top = b > a, right_bottom = d > c;
      const C top = std::max(a, b), bottom = std::max(c, d);  // ties keep the first
      const int second_row = bottom > top;
      const C best = std::max(top, bottom);
      const int index = second_row * (2 + right_bottom) + (1 - second_row) * right_top;
      const int passes = best > 0;
      o[j] = static_cast<T>(std::max(best, C(0)));
      k[j] = static_cast<uint8_t>(passes * index + (1 - passes) * kNoGradient);
    }
    if (nan) pool_row_exact(row0, row1, o, k, out_w);
  }
}

template <typename T>
void unpool_plane(const T* __restrict__ grad_out, const uint8_t* __restrict__ chosen, T* grad_in,
                  int64_t height, int64_t width) {
  const int64_t out_h = height / 2, out_w = width / 2;
  const T zero = static_cast<T>(0.0f);
  for (int64_t i = 0; i < out_h; ++i) {
    T* __restrict__ row0 = grad_in + 2 * i * width;
    T* __restrict__ row1 = row0 + width;
    for (int64_t j = 0; j < out_w; ++j) {
      const uint8_t k = chosen[i * out_w + j];
      const T g = grad_out[i * out_w + j];
      row0[2 * j] = k == 0 ? g : zero;
      row0[2 * j + 1] = k == 1 ? g : zero;
      row1[2 * j] = k == 2 ? g : zero;
      row1[2 * j + 1] = k == 3 ? g : zero;
    }
    if (width % 2) row0[width - 1] = row1[width - 1] = zero;  // the column floor mode leaves out
  }
  if (height % 2) std::fill(grad_in + (height - 1) * width, grad_in + height * width, zero);
}

// Planes per task: enough work to be worth a thread.
int64_t plane_grain(int64_t plane_size) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_size)); }

struct ReluMaxPool2x2 : public torch::autograd::Function<ReluMaxPool2x2> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input) {
    const at::Tensor x = input.contiguous();
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    at::Tensor out = at::empty({n, c, h / 2, w / 2}, x.options());
    at::Tensor chosen = at::empty({n, c, h / 2, w / 2}, x.options().dtype(at::kByte));
    const int64_t in_plane = h * w, out_plane = (h / 2) * (w / 2);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "relu_max_pool2x2", [&] {
      const scalar_t* in = x.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      uint8_t* k = chosen.data_ptr<uint8_t>();
      at::parallel_for(0, n * c, plane_grain(in_plane), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          pool_plane(in + p * in_plane, o + p * out_plane, k + p * out_plane, h, w);
        }
      });
    });
    ctx->save_for_backward({chosen});
    ctx->saved_data["height"] = h;
    ctx->saved_data["width"] = w;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor chosen = ctx->get_saved_variables()[0];
    const at::Tensor grad_out = grads[0].contiguous();
    const int64_t h = ctx->saved_data["height"].toInt(), w = ctx->saved_data["width"].toInt();
    const int64_t n = chosen.size(0), c = chosen.size(1);
    at::Tensor grad_in = at::empty({n, c, h, w}, grad_out.options());
    const int64_t in_plane = h * w, out_plane = chosen.size(2) * chosen.size(3);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_out.scalar_type(), "relu_max_pool2x2_backward", [&] {
      const scalar_t* g = grad_out.data_ptr<scalar_t>();
      const uint8_t* k = chosen.data_ptr<uint8_t>();
      scalar_t* gi = grad_in.data_ptr<scalar_t>();
      at::parallel_for(0, n * c, plane_grain(in_plane), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) unpool_plane(g + p * out_plane, k + p * out_plane, gi + p * in_plane, h, w);
      });
    });
    return {grad_in};
  }
};

}  // namespace

at::Tensor relu_max_pool2x2(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "relu_max_pool2x2: expected (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "relu_max_pool2x2: a ", x.size(2), "x", x.size(3),
              " image has no 2x2 window");
  if (!x.device().is_cpu()) return at::max_pool2d(at::relu(x), 2);
  return ReluMaxPool2x2::apply(x);
}

}  // namespace moelab::nn
