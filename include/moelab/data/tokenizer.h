// Tokenizers turn a document's words into token ids and back. Two kinds:
//   word           the corpus's own tokens: a vocabulary of the training words seen at least
//                  min_count times (Bengio et al. 2003 on Brown: words seen 3 times or fewer
//                  become one unknown symbol), optionally lower-cased;
//   sentencepiece  BPE or unigram subwords (Kudo & Richardson 2018) through Debian's
//                  libsentencepiece, with byte fallback (no unknown symbol for any UTF-8 text).
// Every tokenizer has an end-of-document token, appended to each document, and knows which of
// its ids begin a word, so per-word perplexity compares tokenizers on the same text. A
// tokenizer is saved as a directory (tokenizer.json plus vocab.txt or tokenizer.model), stored
// with each run and each export.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moelab::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// "word" or "sentencepiece".
  virtual std::string kind() const = 0;
  virtual int64_t vocab_size() const = 0;
  /// A document's words -> ids, the end-of-document id last. word_of (optional) gets, per id,
  /// the index of the word it encodes (words.size() for the end-of-document id).
  virtual std::vector<int32_t> encode(const std::vector<std::string>& words,
                                      std::vector<int32_t>* word_of = nullptr) const = 0;
  /// Ids -> text: words joined by single spaces (the end-of-document token as a newline).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  /// Id -> its token as text ("<unk>", "the", "▁the", "<0xE2>").
  virtual std::string token(int32_t id) const = 0;
  virtual int32_t end_of_document() const = 0;
  /// Writes tokenizer.json and the model's file into `dir` (created), each atomically.
  virtual void save(const std::string& dir) const = 0;
  /// Splits free text (a prompt) into the words encode() takes.
  std::vector<std::string> split_words(const std::string& text) const;
};

struct WordTokenizerOptions {
  /// Words seen fewer times in the training text become <unk>. Default 1.
  int64_t min_count = 1;
  /// Lower-case every word first. Default false.
  bool lowercase = false;
};

/// Builds the word vocabulary from training documents' words: <unk> = 0, </s> = 1, then words
/// by descending count (ties in byte order).
std::shared_ptr<Tokenizer> train_word_tokenizer(
    const std::vector<const std::vector<std::string>*>& documents, WordTokenizerOptions options);

struct SentencePieceOptions {
  /// "bpe" or "unigram". Default unigram.
  std::string model_type = "unigram";
  /// Vocabulary size (pieces, specials and byte pieces included). Default 8000.
  int64_t vocab_size = 8000;
  /// Characters covered without byte fallback. Default 0.9995.
  double character_coverage = 0.9995;
  /// Sentences sampled for training (0 = all). Default 1000000.
  int64_t input_sentence_size = 1000000;
};

/// Trains a SentencePiece model on the documents (one line per document; long documents are cut
/// into lines of at most 2000 words) with byte fallback, unk = 0, </s> = 1, no <s>; one thread,
/// so the model is a function of the text and options (SentencePiece 0.1.97 seeds its sampling
/// itself).
std::shared_ptr<Tokenizer> train_sentencepiece_tokenizer(
    const std::vector<const std::vector<std::string>*>& documents, const SentencePieceOptions& options);

/// Reads a tokenizer directory save() wrote; DataError naming the file and what is wrong.
std::shared_ptr<Tokenizer> load_tokenizer(const std::string& dir);

}  // namespace moelab::data
