#include "moelab/nn/pooling.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "moelab/nn/conv_layout.h"
#include "moelab/util/runtime.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

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

// Outputs [begin, out_w) of one row pair, branch-free (random activations mispredict every
// branch): a window's first maximum is the tournament of its two rows' first maxima, ties to the
// first. Returns whether a NaN was seen (the caller then redoes the row by the exact rule).
template <typename T>
bool pool_row_tail(const T* row0, const T* row1, T* o, uint8_t* k, int64_t begin, int64_t out_w) {
  using C = Compute<T>;
  int nan = 0;
  for (int64_t j = begin; j < out_w; ++j) {
    const C a = static_cast<C>(row0[2 * j]), b = static_cast<C>(row0[2 * j + 1]);
    const C c = static_cast<C>(row1[2 * j]), d = static_cast<C>(row1[2 * j + 1]);
    nan |= (a != a) | (b != b) | (c != c) | (d != d);
    const int right_top = b > a, right_bottom = d > c;
    const C top = right_top ? b : a, bottom = right_bottom ? d : c;
    const int second_row = bottom > top;
    const C best = second_row ? bottom : top;
    const int index = second_row ? 2 + right_bottom : right_top;
    const int passes = best > 0;
    o[j] = static_cast<T>(passes ? best : C(0));
    k[j] = static_cast<uint8_t>(passes ? index : kNoGradient);
  }
  return nan != 0;
}

#if defined(__SSE2__)
// The same for 4 windows of float: 8 values of each row in, 4 outputs and 4 choices out. Returns
// whether a NaN was among them.
inline bool pool4(const float* row0, const float* row1, float* o, uint8_t* k) {
  const __m128 top0 = _mm_loadu_ps(row0), top1 = _mm_loadu_ps(row0 + 4);
  const __m128 bottom0 = _mm_loadu_ps(row1), bottom1 = _mm_loadu_ps(row1 + 4);
  const __m128 a = _mm_shuffle_ps(top0, top1, _MM_SHUFFLE(2, 0, 2, 0));  // left of each window
  const __m128 b = _mm_shuffle_ps(top0, top1, _MM_SHUFFLE(3, 1, 3, 1));  // right
  const __m128 c = _mm_shuffle_ps(bottom0, bottom1, _MM_SHUFFLE(2, 0, 2, 0));
  const __m128 d = _mm_shuffle_ps(bottom0, bottom1, _MM_SHUFFLE(3, 1, 3, 1));
  auto select = [](__m128 mask, __m128 yes, __m128 no) { return _mm_or_ps(_mm_and_ps(mask, yes), _mm_andnot_ps(mask, no)); };
  const __m128 right_top = _mm_cmpgt_ps(b, a), right_bottom = _mm_cmpgt_ps(d, c);
  const __m128 top = select(right_top, b, a), bottom = select(right_bottom, d, c);
  const __m128 second_row = _mm_cmpgt_ps(bottom, top);
  const __m128 best = select(second_row, bottom, top);
  const __m128 passes = _mm_cmpgt_ps(best, _mm_setzero_ps());
  _mm_storeu_ps(o, _mm_and_ps(passes, best));
  const __m128i one = _mm_set1_epi32(1);
  const __m128i top_index = _mm_and_si128(_mm_castps_si128(right_top), one);
  const __m128i bottom_index = _mm_add_epi32(_mm_and_si128(_mm_castps_si128(right_bottom), one), _mm_set1_epi32(2));
  const __m128i second = _mm_castps_si128(second_row), pass = _mm_castps_si128(passes);
  __m128i index = _mm_or_si128(_mm_and_si128(second, bottom_index), _mm_andnot_si128(second, top_index));
  index = _mm_or_si128(_mm_and_si128(pass, index), _mm_andnot_si128(pass, _mm_set1_epi32(kNoGradient)));
  const int packed = _mm_cvtsi128_si32(_mm_packus_epi16(_mm_packs_epi32(index, index), index));
  std::memcpy(k, &packed, 4);
  return _mm_movemask_ps(_mm_or_ps(_mm_cmpunord_ps(a, b), _mm_cmpunord_ps(c, d))) != 0;
}

// Row `row` of the input gradient for 4 windows: `first` and `second` pick which choices (0/1 for
// the top row, 2/3 for the bottom one) receive the gradient.
inline void unpool4(const float* grad, const uint8_t* k, float* row, int first) {
  int packed = 0;
  std::memcpy(&packed, k, 4);
  const __m128i zero = _mm_setzero_si128();
  const __m128i choice = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(packed), zero), zero);
  const __m128 g = _mm_loadu_ps(grad);
  const __m128 left = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(choice, _mm_set1_epi32(first))), g);
  const __m128 right = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(choice, _mm_set1_epi32(first + 1))), g);
  _mm_storeu_ps(row, _mm_unpacklo_ps(left, right));
  _mm_storeu_ps(row + 4, _mm_unpackhi_ps(left, right));
}
#endif

// One plane (H, W) -> (H/2, W/2) and the window's chosen element per output.
template <typename T>
void pool_plane(const T* in, T* out, uint8_t* chosen, int64_t height, int64_t width) {
  const int64_t out_h = height / 2, out_w = width / 2;
  for (int64_t i = 0; i < out_h; ++i) {
    const T* row0 = in + 2 * i * width;
    const T* row1 = row0 + width;
    T* o = out + i * out_w;
    uint8_t* k = chosen + i * out_w;
    bool nan = false;
    int64_t done = 0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<T, float>) {
      // Groups of 4 windows. Above the last row pair the last group may run past the row: it
      // reads the next pair's values and writes 3 outputs at most into the next row's places,
      // which that row writes again; so no row has a scalar remainder but the plane's last.
      const int64_t groups = i + 1 < out_h && out_w >= 4 ? (out_w + 3) / 4 : out_w / 4;
      for (int64_t g = 0; g < groups; ++g) nan |= pool4(row0 + 8 * g, row1 + 8 * g, o + 4 * g, k + 4 * g);
      done = std::min(out_w, 4 * groups);
    }
#endif
    nan |= pool_row_tail(row0, row1, o, k, done, out_w);
    if (nan) pool_row_exact(row0, row1, o, k, out_w);
  }
}

template <typename T>
void unpool_plane(const T* grad_out, const uint8_t* chosen, T* grad_in, int64_t height, int64_t width) {
  const int64_t out_h = height / 2, out_w = width / 2;
  const T zero = static_cast<T>(0.0f);
  for (int64_t i = 0; i < out_h; ++i) {
    T* row0 = grad_in + 2 * i * width;
    T* row1 = row0 + width;
    const T* g = grad_out + i * out_w;
    const uint8_t* k = chosen + i * out_w;
    int64_t done = 0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<T, float>) {
      // As in the forward pass, above the last row pair the last group runs past the row: the
      // top row's excess lands in the bottom row, written after it; the bottom row's in the next
      // pair's top row, written later.
      const int64_t groups = i + 1 < out_h && out_w >= 4 ? (out_w + 3) / 4 : out_w / 4;
      for (int64_t q = 0; q < groups; ++q) unpool4(g + 4 * q, k + 4 * q, row0 + 8 * q, 0);
      for (int64_t q = 0; q < groups; ++q) unpool4(g + 4 * q, k + 4 * q, row1 + 8 * q, 2);
      done = std::min(out_w, 4 * groups);
    }
#endif
    for (int64_t j = done; j < out_w; ++j) {
      row0[2 * j] = k[j] == 0 ? g[j] : zero;
      row0[2 * j + 1] = k[j] == 1 ? g[j] : zero;
      row1[2 * j] = k[j] == 2 ? g[j] : zero;
      row1[2 * j + 1] = k[j] == 3 ? g[j] : zero;
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

// ---- a first stage fused: 3x3 convolution, ReLU, 2x2 max pooling ------------------------------

constexpr int64_t kMaxFusedInputChannels = 4;  // images: gray, RGB, RGBA
constexpr int64_t kImagesPerGradientGroup = 16;

// columns (9 C + 1, H * W) of one image (C, H, W): row (c, ky, kx) holds channel c shifted by
// (ky - 1, kx - 1), zero outside the image (padding 1); the last row is ones, for the bias.
template <typename T>
void image_columns(const T* image, int64_t channels, int64_t height, int64_t width, T* columns) {
  const int64_t plane = height * width;
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t ky = 0; ky < 3; ++ky) {
      for (int64_t kx = 0; kx < 3; ++kx) {
        T* row = columns + ((c * 3 + ky) * 3 + kx) * plane;
        const int64_t dy = ky - 1, dx = kx - 1;
        const int64_t x0 = std::max<int64_t>(0, -dx), x1 = std::min(width, width - dx);
        for (int64_t y = 0; y < height; ++y) {
          T* out = row + y * width;
          const int64_t source_y = y + dy;
          if (source_y < 0 || source_y >= height) {
            std::fill(out, out + width, T(0));
            continue;
          }
          const T* source = image + c * plane + source_y * width + dx;  // out[x] = source[x]
          std::fill(out, out + x0, T(0));
          std::copy(source + x0, source + x1, out + x0);
          std::fill(out + x1, out + width, T(0));
        }
      }
    }
  }
  std::fill(columns + channels * 9 * plane, columns + (channels * 9 + 1) * plane, T(1));
}

// Inputs: images (N, C_in, H, W) contiguous, taps (C_out, 9 C_in + 1) (the weights, then the
// bias or zeros). Output (N, C_out, H / 2, W / 2); backward gives the taps' gradient.
struct ConvReluMaxPool2x2 : public torch::autograd::Function<ConvReluMaxPool2x2> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& images,
                            const at::Tensor& taps_in) {
    // (Worker threads may run with grad mode on: out= GEMMs refuse inputs that need gradients.)
    const at::Tensor taps = taps_in.detach();
    const int64_t n = images.size(0), c_in = images.size(1), h = images.size(2), w = images.size(3);
    const int64_t c_out = taps.size(0), depth = taps.size(1), plane = h * w;
    const int64_t out_plane = (h / 2) * (w / 2);
    at::Tensor out = at::empty({n, c_out, h / 2, w / 2}, images.options());
    at::Tensor chosen = at::empty({n, c_out, h / 2, w / 2}, images.options().dtype(at::kByte));
    AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "conv3x3_relu_max_pool2x2", [&] {
      const scalar_t* in = images.data_ptr<scalar_t>();
      scalar_t* o = out.data_ptr<scalar_t>();
      uint8_t* k = chosen.data_ptr<uint8_t>();
      at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
        at::Tensor columns = at::empty({depth, plane}, images.options());  // (9 C_in + 1, H W)
        at::Tensor conv = at::empty({c_out, plane}, images.options());     // (C_out, H W)
        for (int64_t i = begin; i < end; ++i) {
          image_columns(in + i * c_in * plane, c_in, h, w, columns.data_ptr<scalar_t>());
          at::mm_out(conv, taps, columns);
          const scalar_t* planes = conv.data_ptr<scalar_t>();
          for (int64_t c = 0; c < c_out; ++c) {
            const int64_t offset = (i * c_out + c) * out_plane;
            pool_plane(planes + c * plane, o + offset, k + offset, h, w);
          }
        }
      });
    });
    ctx->save_for_backward({images, chosen});
    ctx->saved_data["depth"] = depth;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &images = saved[0], &chosen = saved[1];
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    TORCH_CHECK(!c10::GradMode::is_enabled(),
                "conv3x3_relu_max_pool2x2: the fused first stage has no double backward");
    const at::Tensor grad_out = grads[0].detach().contiguous();
    const int64_t n = images.size(0), c_in = images.size(1), h = images.size(2), w = images.size(3);
    const int64_t c_out = chosen.size(1), depth = ctx->saved_data["depth"].toInt();
    const int64_t plane = h * w, out_plane = chosen.size(2) * chosen.size(3);
    const int64_t groups = (n + kImagesPerGradientGroup - 1) / kImagesPerGradientGroup;
    // Each group of images sums its own gradient, in image order; the groups are summed after.
    at::Tensor partial = at::empty({groups, c_out, depth}, grad_out.options());
    AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "conv3x3_relu_max_pool2x2_backward", [&] {
      const scalar_t* in = images.data_ptr<scalar_t>();
      const scalar_t* g = grad_out.data_ptr<scalar_t>();
      const uint8_t* k = chosen.data_ptr<uint8_t>();
      at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
        at::Tensor columns = at::empty({depth, plane}, images.options());
        at::Tensor grad_conv = at::empty({c_out, plane}, grad_out.options());
        for (int64_t group = begin; group < end; ++group) {
          at::Tensor sum = partial[group];
          const int64_t first = group * kImagesPerGradientGroup;
          const int64_t last = std::min(n, first + kImagesPerGradientGroup);
          for (int64_t i = first; i < last; ++i) {
            image_columns(in + i * c_in * plane, c_in, h, w, columns.data_ptr<scalar_t>());
            scalar_t* planes = grad_conv.data_ptr<scalar_t>();
            for (int64_t c = 0; c < c_out; ++c) {
              const int64_t offset = (i * c_out + c) * out_plane;
              unpool_plane(g + offset, k + offset, planes + c * plane, h, w);
            }
            // (C_out, H W) @ (H W, 9 C_in + 1)
            if (i == first) {
              at::mm_out(sum, grad_conv, columns.t());
            } else {
              sum.addmm_(grad_conv, columns.t());
            }
          }
        }
      });
    });
    return {at::Tensor(), partial.sum(0)};
  }
};

bool fuses_first_stage(const at::Tensor& x, const at::Tensor& weight) {
  const bool floating = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  return x.device().is_cpu() && floating && weight.scalar_type() == x.scalar_type() &&
         x.size(1) <= kMaxFusedInputChannels && !x.requires_grad() && !cpu_autocast_enabled() &&
         x.size(0) > 0;
}

}  // namespace

at::Tensor conv3x3_relu_max_pool2x2(const at::Tensor& x, const at::Tensor& weight,
                                    const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 4, "conv3x3_relu_max_pool2x2: expected images (N, C, H, W), got ",
              x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 &&
                  weight.size(3) == 3,
              "conv3x3_relu_max_pool2x2: weight must be (C_out, ", x.size(1), ", 3, 3), got ",
              weight.sizes());
  TORCH_CHECK(!bias.defined() || bias.sizes() == at::IntArrayRef{weight.size(0)},
              "conv3x3_relu_max_pool2x2: bias must be (", weight.size(0), "), got ", bias.sizes());
  if (!fuses_first_stage(x, weight)) {
    const at::Tensor input = in_fast_conv_layout(x, weight.size(0));
    return relu_max_pool2x2(at::conv2d(input, weight, bias, /*stride=*/1, /*padding=*/1));
  }
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "conv3x3_relu_max_pool2x2: a ", x.size(2), "x",
              x.size(3), " image has no 2x2 window");
  const int64_t c_out = weight.size(0);
  // (C_out, 9 C_in + 1): the taps in image_columns' row order, then the bias.
  const at::Tensor taps =
      at::cat({weight.reshape({c_out, -1}),
               (bias.defined() ? bias : at::zeros({c_out}, weight.options())).reshape({c_out, 1})},
              1);
  return ConvReluMaxPool2x2::apply(x.contiguous(), taps);
}

at::Tensor relu_max_pool2x2(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "relu_max_pool2x2: expected (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "relu_max_pool2x2: a ", x.size(2), "x", x.size(3),
              " image has no 2x2 window");
  if (!x.device().is_cpu()) return at::max_pool2d(at::relu(x), 2);
  return ReluMaxPool2x2::apply(x);
}

}  // namespace moelab::nn
