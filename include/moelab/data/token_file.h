// Token streams on disk: a corpus encoded once into a token file, memory-mapped and cut into
// fixed-length blocks, so no step computes on padding and a corpus larger than memory streams
// from the page cache.
//
// File layout (little-endian): "MLTOKENS", uint32 version (1), uint32 bytes per id (2 or 4),
// uint64 token count n, uint64 vocabulary size; the n ids; then n side bytes: bit 7 set when
// the token begins a word (the end-of-document token counts as a word), bits 0-6 the word's
// part-of-speech class (127: none).
//
// A block b is the tokens [b L, b L + L]: inputs are its first L, targets its last L (so
// consecutive blocks share one token and every token but the first is a target once).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moelab/data/dataset.h"

namespace moelab::data {

inline constexpr uint8_t kStartsWord = 0x80;
inline constexpr uint8_t kNoSideTag = 0x7F;

/// Writes ids and side bytes (same length) atomically; ids are stored in 2 bytes when
/// vocab_size <= 65536, else 4. IoError naming the path and the cause.
void write_token_file(const std::string& path, const std::vector<int32_t>& ids,
                      const std::vector<uint8_t>& side, int64_t vocab_size);

/// A token file, memory-mapped read-only.
class TokenFile {
 public:
  /// DataError naming the file and what is wrong (magic, version, size, an id >= vocab_size).
  explicit TokenFile(const std::string& path);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t size() const { return count_; }
  int64_t vocab_size() const { return vocab_size_; }
  const std::string& path() const { return path_; }
  int32_t id(int64_t i) const;
  uint8_t side(int64_t i) const { return side_[i]; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  int64_t count_ = 0, vocab_size_ = 0;
  int id_bytes_ = 2;
  const uint8_t* ids_ = nullptr;
  const uint8_t* side_ = nullptr;
};

/// A token file as a data source of blocks of block_length targets. rows(index) gives
///   token_ids           (B, L) int64 inputs
///   targets             (B, L) int64 next tokens
///   target_word_starts  (B, L) bool: the target begins a word (per-word perplexity)
///   token_tags          (B, L) int64: each input token's part-of-speech class, -1 if none
class TokenBlocks : public DataSource {
 public:
  TokenBlocks(std::shared_ptr<const TokenFile> file, int64_t block_length);
  int64_t size() const override { return blocks_; }
  Batch rows(const at::Tensor& index) const override;
  int64_t block_length() const { return block_length_; }
  const TokenFile& file() const { return *file_; }

 private:
  std::shared_ptr<const TokenFile> file_;
  int64_t block_length_, blocks_;
};

}  // namespace moelab::data
