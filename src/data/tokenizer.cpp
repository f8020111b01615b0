#include "moelab/data/tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <type_traits>
#include <unordered_map>

#include "moelab/io/file.h"
#include "moelab_build_paths.h"
#include "moelab/util/errors.h"

namespace moelab::data {

namespace {

constexpr const char* kUnknown = "<unk>";
constexpr const char* kEndOfDocument = "</s>";
constexpr int kFormatVersion = 1;

std::string lower(std::string word) {
  for (char& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return word;
}

class WordTokenizer : public Tokenizer {
 public:
  WordTokenizer(std::vector<std::string> tokens, std::vector<int64_t> counts, WordTokenizerOptions options)
      : tokens_(std::move(tokens)), counts_(std::move(counts)), options_(options) {
    for (size_t i = 0; i < tokens_.size(); ++i) ids_.emplace(tokens_[i], static_cast<int32_t>(i));
  }
  std::string kind() const override { return "word"; }
  int64_t vocab_size() const override { return static_cast<int64_t>(tokens_.size()); }
  std::vector<int32_t> encode(const std::vector<std::string>& words,
                              std::vector<int32_t>* word_of) const override {
    std::vector<int32_t> ids;
    ids.reserve(words.size() + 1);
    for (const auto& word : words) {
      auto it = ids_.find(options_.lowercase ? lower(word) : word);
      ids.push_back(it == ids_.end() ? 0 : it->second);
    }
    ids.push_back(1);
    if (word_of) {
      word_of->resize(ids.size());
      for (size_t i = 0; i < ids.size(); ++i) (*word_of)[i] = static_cast<int32_t>(i);
    }
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    for (int32_t id : ids) {
      if (id == 1) {
        text += "\n";
        continue;
      }
      if (!text.empty() && text.back() != '\n') text += ' ';
      text += token(id);
    }
    return text;
  }
  std::string token(int32_t id) const override {
    return id >= 0 && id < vocab_size() ? tokens_[static_cast<size_t>(id)] : kUnknown;
  }
  int32_t end_of_document() const override { return 1; }
  void save(const std::string& dir) const override {
    std::filesystem::create_directories(dir);
    std::string vocab;
    for (size_t i = 0; i < tokens_.size(); ++i) vocab += tokens_[i] + "\t" + std::to_string(counts_[i]) + "\n";
    io::write_file_atomic(dir + "/vocab.txt", vocab);
    const nlohmann::json meta{{"kind", "word"},
                              {"format_version", kFormatVersion},
                              {"vocab_size", vocab_size()},
                              {"min_count", options_.min_count},
                              {"lowercase", options_.lowercase}};
    io::write_file_atomic(dir + "/tokenizer.json", meta.dump(2) + "\n");
  }

  static std::shared_ptr<Tokenizer> load(const std::string& dir, const nlohmann::json& meta) {
    WordTokenizerOptions options;
    options.min_count = meta.at("min_count").get<int64_t>();
    options.lowercase = meta.at("lowercase").get<bool>();
    const std::string path = dir + "/vocab.txt";
    std::istringstream lines(io::read_file(path));
    std::vector<std::string> tokens;
    std::vector<int64_t> counts;
    std::string line;
    while (std::getline(lines, line)) {
      const size_t tab = line.rfind('\t');
      if (tab == std::string::npos || tab == 0) {
        throw DataError(path + ":" + std::to_string(tokens.size() + 1) +
                        ": expected TOKEN<tab>COUNT");
      }
      tokens.push_back(line.substr(0, tab));
      counts.push_back(std::stoll(line.substr(tab + 1)));
    }
    if (tokens.size() < 2 || tokens[0] != kUnknown || tokens[1] != kEndOfDocument ||
        static_cast<int64_t>(tokens.size()) != meta.at("vocab_size").get<int64_t>()) {
      throw DataError(path + ": expected " + std::to_string(meta.at("vocab_size").get<int64_t>()) +
                      " tokens starting <unk>, </s>; found " + std::to_string(tokens.size()));
    }
    return std::make_shared<WordTokenizer>(std::move(tokens), std::move(counts), options);
  }

 private:
  std::vector<std::string> tokens_;
  std::vector<int64_t> counts_;
  std::unordered_map<std::string, int32_t> ids_;
  WordTokenizerOptions options_;
};

// SentencePiece through moelab's shim library (shims/sentencepiece/shim.cpp says why it is
// loaded with dlopen rather than linked).
constexpr const char* kShimName = "libmoelab_sentencepiece.so";

struct SentencePieceLibrary {
  void* (*load)(const char*, size_t, char*, size_t);
  void (*free_processor)(void*);
  int (*size)(void*);
  int (*piece_to_id)(void*, const char*);
  int (*is_unknown)(void*, int);
  long (*encode)(void*, const char*, size_t, int*, size_t, char*, size_t);
  size_t (*id_to_piece)(void*, int, char*, size_t);
  size_t (*decode)(void*, const int*, size_t, char*, size_t);
  int (*train)(const char* const*, size_t, const char* const*, size_t, char**, size_t*, char*, size_t);
  void (*free_buffer)(char*);

  static const SentencePieceLibrary& get() {
    static const SentencePieceLibrary library = open();
    return library;
  }

 private:
  static SentencePieceLibrary open() {
#if defined(__SANITIZE_ADDRESS__)
    // AddressSanitizer refuses RTLD_DEEPBIND, and without it the two protobuf copies clash.
    throw DataError("sentencepiece: not available in an AddressSanitizer build (the shim needs "
                    "dlopen with RTLD_DEEPBIND, which ASan refuses)");
#endif
    // Beside the program (build tree: bin/ and lib/; installed: bin/ and lib/), then where it
    // was installed, then the loader's search path.
    std::vector<std::string> candidates;
    if (const char* path = std::getenv("MOELAB_SENTENCEPIECE_SHIM"); path && *path) candidates.push_back(path);
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
      self[n] = '\0';
      const std::string bin = std::filesystem::path(self).parent_path().string();
      candidates.push_back(bin + "/../lib/" + kShimName);
      candidates.push_back(bin + "/" + kShimName);
    }
    candidates.push_back(MOELAB_SENTENCEPIECE_SHIM_INSTALLED);
    candidates.push_back(kShimName);
    void* handle = nullptr;
    std::string errors;
    for (const auto& candidate : candidates) {
      handle = ::dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (handle) break;
      errors += "\n  " + std::string(::dlerror());
    }
    if (!handle) throw DataError("sentencepiece: cannot load moelab's SentencePiece library:" + errors);
    SentencePieceLibrary library{};
    auto bind = [&](auto& function, const char* name) {
      void* symbol = ::dlsym(handle, name);
      if (!symbol) throw DataError(std::string("sentencepiece: the shim library lacks ") + name);
      function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(symbol);
    };
    bind(library.load, "moelab_spm_load");
    bind(library.free_processor, "moelab_spm_free");
    bind(library.size, "moelab_spm_size");
    bind(library.piece_to_id, "moelab_spm_piece_to_id");
    bind(library.is_unknown, "moelab_spm_is_unknown");
    bind(library.encode, "moelab_spm_encode");
    bind(library.id_to_piece, "moelab_spm_id_to_piece");
    bind(library.decode, "moelab_spm_decode");
    bind(library.train, "moelab_spm_train");
    bind(library.free_buffer, "moelab_spm_free_buffer");
    return library;
  }
};

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::string model)
      : library_(SentencePieceLibrary::get()), model_(std::move(model)) {
    char error[512] = {0};
    processor_ = library_.load(model_.data(), model_.size(), error, sizeof(error));
    if (!processor_) throw DataError(std::string("sentencepiece model: ") + error);
    end_of_document_ = library_.piece_to_id(processor_, kEndOfDocument);
    if (library_.is_unknown(processor_, end_of_document_)) {
      throw DataError("sentencepiece model: no </s> piece (train it with moelab tokenizer train)");
    }
    for (int id = 0; id < library_.size(processor_); ++id) {
      const size_t length = library_.id_to_piece(processor_, id, nullptr, 0);
      std::string piece(length, '\0');
      library_.id_to_piece(processor_, id, piece.data(), length);
      pieces_.push_back(std::move(piece));
    }
  }
  ~SentencePieceTokenizer() override { library_.free_processor(processor_); }
  std::string kind() const override { return "sentencepiece"; }
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  std::vector<int32_t> encode(const std::vector<std::string>& words,
                              std::vector<int32_t>* word_of) const override {
    // Word by word: pieces never cross whitespace, so this is the encoding of the joined text,
    // and each piece's word is known exactly.
    std::vector<int32_t> ids;
    if (word_of) word_of->clear();
    std::vector<int> pieces(64);
    char error[512] = {0};
    for (size_t w = 0; w < words.size(); ++w) {
      long n = library_.encode(processor_, words[w].data(), words[w].size(), pieces.data(),
                               pieces.size(), error, sizeof(error));
      if (n > static_cast<long>(pieces.size())) {
        pieces.resize(static_cast<size_t>(n));
        n = library_.encode(processor_, words[w].data(), words[w].size(), pieces.data(),
                            pieces.size(), error, sizeof(error));
      }
      if (n < 0) throw DataError(std::string("sentencepiece: ") + error);
      for (long i = 0; i < n; ++i) {
        ids.push_back(pieces[static_cast<size_t>(i)]);
        if (word_of) word_of->push_back(static_cast<int32_t>(w));
      }
    }
    ids.push_back(end_of_document_);
    if (word_of) word_of->push_back(static_cast<int32_t>(words.size()));
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    std::vector<int> segment;
    auto flush = [&] {
      const size_t length = library_.decode(processor_, segment.data(), segment.size(), nullptr, 0);
      std::string part(length, '\0');
      library_.decode(processor_, segment.data(), segment.size(), part.data(), length);
      text += part;
      segment.clear();
    };
    for (int32_t id : ids) {
      if (id == end_of_document_) {
        flush();
        text += "\n";
      } else if (id >= 0 && id < vocab_size()) {
        segment.push_back(id);
      }
    }
    flush();
    return text;
  }
  std::string token(int32_t id) const override {
    return id >= 0 && id < vocab_size() ? pieces_[static_cast<size_t>(id)] : kUnknown;
  }
  int32_t end_of_document() const override { return end_of_document_; }
  void save(const std::string& dir) const override {
    std::filesystem::create_directories(dir);
    io::write_file_atomic(dir + "/tokenizer.model", model_);
    const nlohmann::json meta{{"kind", "sentencepiece"},
                              {"format_version", kFormatVersion},
                              {"vocab_size", vocab_size()}};
    io::write_file_atomic(dir + "/tokenizer.json", meta.dump(2) + "\n");
  }

 private:
  const SentencePieceLibrary& library_;
  std::string model_;
  void* processor_ = nullptr;
  std::vector<std::string> pieces_;
  int32_t end_of_document_ = 1;
};

}  // namespace

std::vector<std::string> Tokenizer::split_words(const std::string& text) const {
  std::vector<std::string> words;
  std::istringstream in(text);
  std::string word;
  while (in >> word) words.push_back(word);
  return words;
}

std::shared_ptr<Tokenizer> train_word_tokenizer(
    const std::vector<const std::vector<std::string>*>& documents, WordTokenizerOptions options) {
  if (options.min_count < 1) throw ConfigError("word tokenizer: min_count must be >= 1");
  std::unordered_map<std::string, int64_t> counts;
  for (const auto* words : documents) {
    for (const auto& word : *words) ++counts[options.lowercase ? lower(word) : word];
  }
  std::vector<std::pair<std::string, int64_t>> kept;
  int64_t unknown = 0;
  for (auto& [word, count] : counts) {
    if (count >= options.min_count && word != kUnknown && word != kEndOfDocument) {
      kept.emplace_back(word, count);
    } else {
      unknown += count;
    }
  }
  std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  std::vector<std::string> tokens{kUnknown, kEndOfDocument};
  std::vector<int64_t> token_counts{unknown, static_cast<int64_t>(documents.size())};
  for (auto& [word, count] : kept) {
    tokens.push_back(word);
    token_counts.push_back(count);
  }
  return std::make_shared<WordTokenizer>(std::move(tokens), std::move(token_counts), options);
}

std::shared_ptr<Tokenizer> train_sentencepiece_tokenizer(
    const std::vector<const std::vector<std::string>*>& documents, const SentencePieceOptions& options) {
  if (options.model_type != "bpe" && options.model_type != "unigram") {
    throw ConfigError("sentencepiece: model_type must be bpe or unigram, got '" + options.model_type + "'");
  }
  if (options.vocab_size < 260) {
    throw ConfigError("sentencepiece: vocab_size must be >= 260 (256 byte pieces and the specials), got " +
                      std::to_string(options.vocab_size));
  }
  // Documents as training lines of at most 2000 words.
  std::vector<std::string> lines;
  for (const auto* words : documents) {
    for (size_t start = 0; start < words->size(); start += 2000) {
      std::string line;
      for (size_t w = start; w < std::min(words->size(), start + 2000); ++w) {
        line += (w > start ? " " : "") + (*words)[w];
      }
      lines.push_back(std::move(line));
    }
  }
  if (lines.empty()) throw DataError("sentencepiece: no training text");
  const std::vector<std::string> arguments{
      "model_type=" + options.model_type,
      "vocab_size=" + std::to_string(options.vocab_size),
      "character_coverage=" + std::to_string(options.character_coverage),
      "input_sentence_size=" + std::to_string(options.input_sentence_size),
      "shuffle_input_sentence=true",
      "byte_fallback=true",
      "unk_id=0",
      "eos_id=1",
      "bos_id=-1",
      "pad_id=-1",
      "num_threads=1",
      "max_sentence_length=100000",
      "minloglevel=2",
      "hard_vocab_limit=false"};
  std::vector<const char*> line_pointers, argument_pointers;
  for (const auto& line : lines) line_pointers.push_back(line.c_str());
  for (const auto& argument : arguments) argument_pointers.push_back(argument.c_str());
  const SentencePieceLibrary& library = SentencePieceLibrary::get();
  char* buffer = nullptr;
  size_t size = 0;
  char error[512] = {0};
  if (library.train(line_pointers.data(), line_pointers.size(), argument_pointers.data(),
                    argument_pointers.size(), &buffer, &size, error, sizeof(error)) != 0) {
    throw DataError(std::string("sentencepiece training: ") + error);
  }
  std::string model(buffer, size);
  library.free_buffer(buffer);
  return std::make_shared<SentencePieceTokenizer>(std::move(model));
}

std::shared_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  const std::string meta_path = dir + "/tokenizer.json";
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(io::read_file(meta_path));
    const std::string kind = meta.at("kind").get<std::string>();
    if (meta.at("format_version").get<int>() != kFormatVersion) {
      throw DataError(meta_path + ": format_version " + meta.at("format_version").dump() +
                      " (this moelab reads " + std::to_string(kFormatVersion) + ")");
    }
    if (kind == "word") return WordTokenizer::load(dir, meta);
    if (kind == "sentencepiece") {
      auto tokenizer = std::make_shared<SentencePieceTokenizer>(io::read_file(dir + "/tokenizer.model"));
      if (tokenizer->vocab_size() != meta.at("vocab_size").get<int64_t>()) {
        throw DataError(dir + "/tokenizer.model: " + std::to_string(tokenizer->vocab_size()) +
                        " pieces, tokenizer.json says " + meta.at("vocab_size").dump());
      }
      return tokenizer;
    }
    throw DataError(meta_path + ": unknown tokenizer kind '" + kind + "' (word, sentencepiece)");
  } catch (const nlohmann::json::exception& e) {
    throw DataError(meta_path + ": " + e.what());
  } catch (const std::invalid_argument&) {
    throw DataError(dir + "/vocab.txt: a count is not a number");
  }
}

}  // namespace moelab::data
