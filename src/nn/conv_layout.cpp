#include "moelab/nn/conv_layout.h"

namespace moelab::nn {

at::Tensor in_fast_conv_layout(const at::Tensor& x, int64_t out_channels) {
  constexpr int64_t kBlock = 16;  // oneDNN's float32 channel block under AVX-512
  if (x.dim() != 4 || !x.device().is_cpu() || x.scalar_type() != at::kFloat) return x;
  const int64_t in_channels = x.size(1);
  const bool padded = in_channels % kBlock != 0 || out_channels % kBlock != 0;
  if (in_channels <= 1 || !padded) return x;
  return x.contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace moelab::nn
