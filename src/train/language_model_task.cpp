#include "moelab/train/language_model_task.h"

#include <cmath>

#include "moelab/nn/linear_cross_entropy.h"
#include "moelab/util/errors.h"

namespace moelab::train {

namespace {

// (B, L) bool: the positions that have a target.
at::Tensor real_targets(const data::Batch& batch) {
  at::Tensor real = batch.at(data::kTargets).ge(0);
  const at::Tensor mask = batch.get(data::kPaddingMask);
  if (mask.defined()) real = real.logical_and(mask.to(at::kBool));
  return real;
}

// (B, L) float32 NLL per position, 0 where there is no target.
at::Tensor token_nll(const models::ModelOutput& output, const data::Batch& batch,
                     const at::Tensor& real) {
  const at::Tensor& targets = batch.at(data::kTargets);
  if (!output.outputs.defined() && output.hidden.defined()) {
    // The model left the projection to the fused loss.
    const at::Tensor& hidden = output.hidden;
    TORCH_CHECK(hidden.dim() == 3 && hidden.size(0) == targets.size(0) && hidden.size(1) == targets.size(1),
                "task language_model: the model's hidden states ", hidden.sizes(), " do not fit targets ",
                targets.sizes());
    const at::Tensor masked = at::where(real, targets, at::full_like(targets, -1));
    return nn::linear_cross_entropy(hidden.reshape({-1, hidden.size(2)}), output.output_weight,
                                    masked.reshape({-1}))
        .view(targets.sizes());
  }
  const at::Tensor& logits = output.outputs;
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == targets.size(0) && logits.size(1) == targets.size(1),
              "task language_model: the model outputs ", logits.sizes(), " for targets ",
              targets.sizes(), " (expected (B, L, vocabulary) logits)");
  const int64_t vocab = logits.size(2);
  const at::Tensor nll = at::cross_entropy_loss(logits.reshape({-1, vocab}).to(at::kFloat),
                                                targets.clamp_min(0).reshape({-1}), {},
                                                at::Reduction::None);
  return nll.view(targets.sizes()) * real.to(at::kFloat);
}

class LanguageModelAccumulator : public MetricAccumulator {
 public:
  void add(const models::ModelOutput& /*output*/, const data::Batch& batch,
           const at::Tensor& sample_loss) override {
    const at::Tensor real = real_targets(batch);
    const int64_t tokens = real.sum().item<int64_t>();
    // sample_loss is each sample's NLL over the batch's mean real tokens per sample.
    nll_ += sample_loss.to(at::kDouble).sum().item<double>() * static_cast<double>(tokens) /
            static_cast<double>(batch.size());
    tokens_ += tokens;
    const at::Tensor starts = batch.get(data::kTargetWordStarts);
    words_ += starts.defined() ? starts.to(at::kBool).logical_and(real).sum().item<int64_t>() : tokens;
    samples_ += batch.size();
  }
  Metrics result() const override {
    Metrics m;
    m.samples = samples_;
    const double loss = tokens_ > 0 ? nll_ / static_cast<double>(tokens_) : 0.0;
    const double per_word = words_ > 0 ? nll_ / static_cast<double>(words_) : 0.0;
    m.values = {{"loss", loss}, {"perplexity", std::exp(loss)}, {"word_perplexity", std::exp(per_word)}};
    m.details = {{"tokens", tokens_}, {"words", words_}, {"nll", nll_}};
    return m;
  }
  nlohmann::json state() const override {
    return {{"nll", nll_}, {"tokens", tokens_}, {"words", words_}, {"samples", samples_}};
  }
  void load_state(const nlohmann::json& state) override {
    nll_ = state.at("nll").get<double>();
    tokens_ = state.at("tokens").get<int64_t>();
    words_ = state.at("words").get<int64_t>();
    samples_ = state.at("samples").get<int64_t>();
  }

 private:
  double nll_ = 0;
  int64_t tokens_ = 0, words_ = 0, samples_ = 0;
};

class LanguageModelTask : public Task {
 public:
  std::string name() const override { return "language_model"; }
  std::vector<MetricInfo> metrics() const override {
    return {{"loss", false}, {"perplexity", false}, {"word_perplexity", false}};
  }
  at::Tensor sample_loss(const models::ModelOutput& output,
                         const data::Batch& batch) const override {
    const at::Tensor real = real_targets(batch);
    const at::Tensor per_sample = token_nll(output, batch, real).sum(1);  // (B)
    // Divided by the mean real tokens per sample: the batch mean is the token-level mean.
    const at::Tensor tokens_per_sample =
        real.sum().to(at::kFloat).clamp_min(1.0) / static_cast<double>(batch.size());
    return per_sample / tokens_per_sample;
  }
  std::unique_ptr<MetricAccumulator> accumulator() const override {
    return std::make_unique<LanguageModelAccumulator>();
  }
  void check_batch(const data::Batch& batch) const override {
    if (!batch.has(data::kTokenIds)) {
      throw DataError("task language_model: the data has no token_ids (HINT: a text data set: "
                      "data.name: brown or text)");
    }
    const at::Tensor& targets = batch.at(data::kTargets);
    if (targets.dim() != 2 || targets.scalar_type() != at::kLong ||
        targets.sizes() != batch.at(data::kTokenIds).sizes()) {
      throw DataError("task language_model: targets must be (B, L) int64 next tokens like "
                      "token_ids, got " + std::string(c10::toString(targets.scalar_type())) +
                      " of " + std::to_string(targets.dim()) + " dimensions");
    }
  }
};

}  // namespace

std::shared_ptr<Task> make_language_model_task() { return std::make_shared<LanguageModelTask>(); }

}  // namespace moelab::train
