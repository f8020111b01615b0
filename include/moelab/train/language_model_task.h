// The language_model task: next-token cross-entropy over the real targets of (B, L) blocks.
//
//   outputs  (B, L, V) logits; targets (B, L) int64, < 0 = no target (padding); a padding_mask
//            (B, L), where given, removes its false positions too.
//   loss     per sample: the sample's summed token NLL divided by the batch's mean real tokens per
//            sample, so the batch mean is the token-level mean however the padding falls.
//   metrics  loss (nats per token), perplexity = exp(loss), word_perplexity = exp(total NLL /
//            words), words counted by target_word_starts (every target is a word without it), so
//            two tokenizers compare on the same text. Details: tokens, words.
#pragma once

#include <memory>

#include "moelab/train/task.h"

namespace moelab::train {

std::shared_ptr<Task> make_language_model_task();

}  // namespace moelab::train
