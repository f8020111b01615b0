#include "moelab/models/generation.h"

#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>

#include "moelab/util/errors.h"

namespace moelab::models {

at::Tensor sampling_distribution(const at::Tensor& logits, const GenerationOptions& options) {
  TORCH_CHECK(logits.dim() == 1, "sampling_distribution: logits must be (V), got ", logits.sizes());
  TORCH_CHECK(options.temperature >= 0 && options.top_k >= 0 && options.top_p > 0 && options.top_p <= 1,
              "generate: temperature (", options.temperature, ") and top_k (", options.top_k,
              ") must be >= 0, top_p (", options.top_p, ") in (0, 1]");
  const at::Tensor z = logits.to(at::kDouble);
  const int64_t vocab = z.size(0);
  if (options.temperature == 0) {
    return at::zeros({vocab}, z.options()).index_fill_(0, z.argmax(), 1.0);
  }
  at::Tensor scaled = z / options.temperature;
  if (options.top_k > 0 && options.top_k < vocab) {
    const double kth = std::get<0>(scaled.topk(options.top_k)).min().item<double>();
    scaled = scaled.masked_fill(scaled < kth, -std::numeric_limits<double>::infinity());
  }
  at::Tensor p = at::softmax(scaled, 0);
  if (options.top_p < 1) {
    auto [sorted, order] = p.sort(0, /*descending=*/true);
    // Keep a token while the mass before it is below p: the most likely token always stays.
    const at::Tensor before = sorted.cumsum(0) - sorted;
    const at::Tensor keep_sorted = before < options.top_p;
    const at::Tensor keep = at::zeros_like(keep_sorted).scatter_(0, order, keep_sorted);
    p = p * keep.to(p.scalar_type());
    p = p / p.sum();
  }
  return p;
}

std::vector<int32_t> generate(MoEDecoderImpl& model, const std::vector<int32_t>& prompt,
                              const GenerationOptions& options,
                              const std::function<void(int32_t)>& on_token) {
  TORCH_CHECK(!prompt.empty(), "generate: the prompt has no tokens");
  TORCH_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0");
  torch::NoGradGuard no_grad;
  model.eval();
  const int64_t max_length = model.options.max_length();
  at::Generator generator = at::detail::createCPUGenerator(options.seed);
  std::vector<int32_t> context(prompt.begin(), prompt.end()), generated;
  std::vector<nn::KVCache> caches;
  auto to_tensor = [](const std::vector<int32_t>& ids, size_t from) {
    std::vector<int64_t> wide(ids.begin() + static_cast<std::ptrdiff_t>(from), ids.end());
    return at::tensor(wide, at::kLong).unsqueeze(0);  // (1, L)
  };
  // The prompt (its last max_length tokens) fills the cache.
  size_t start = context.size() > static_cast<size_t>(max_length) ? context.size() - static_cast<size_t>(max_length) : 0;
  at::Tensor logits = model.forward_tokens(to_tensor(context, start), {}, &caches).outputs;
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const at::Tensor p = sampling_distribution(logits[0][logits.size(1) - 1], options);
    const int32_t next = static_cast<int32_t>(at::multinomial(p, 1, false, generator).item<int64_t>());
    generated.push_back(next);
    context.push_back(next);
    if (on_token) on_token(next);
    if (next == options.stop_token || step + 1 == options.max_new_tokens) break;
    if (caches[0].length() >= max_length) {
      // The context is full: start again from its last half.
      caches.clear();
      start = context.size() - static_cast<size_t>(max_length / 2 > 0 ? max_length / 2 : 1);
      logits = model.forward_tokens(to_tensor(context, start), {}, &caches).outputs;
    } else {
      logits = model.forward_tokens(to_tensor(context, context.size() - 1), {}, &caches).outputs;
    }
  }
  return generated;
}

}  // namespace moelab::models
