#include "moelab/data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "moelab/io/file.h"
#include "moelab/util/errors.h"

namespace moelab::data {

namespace {

constexpr char kMagic[8] = {'M', 'L', 'T', 'O', 'K', 'E', 'N', 'S'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 32;

template <typename T>
void put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

template <typename T>
T get(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

}  // namespace

void write_token_file(const std::string& path, const std::vector<int32_t>& ids,
                      const std::vector<uint8_t>& side, int64_t vocab_size) {
  TORCH_CHECK(ids.size() == side.size(), "write_token_file: ", ids.size(), " ids but ",
              side.size(), " side bytes");
  const uint32_t id_bytes = vocab_size <= 65536 ? 2 : 4;
  io::write_file_atomic(path, [&](io::CheckedFile& file) {
    std::string header(kMagic, sizeof(kMagic));
    put<uint32_t>(header, kVersion);
    put<uint32_t>(header, id_bytes);
    put<uint64_t>(header, ids.size());
    put<uint64_t>(header, static_cast<uint64_t>(vocab_size));
    file.write(header);
    if (id_bytes == 2) {
      std::vector<uint16_t> narrow(ids.begin(), ids.end());
      file.write(narrow.data(), narrow.size() * sizeof(uint16_t));
    } else {
      file.write(ids.data(), ids.size() * sizeof(int32_t));
    }
    file.write(side.data(), side.size());
  });
}

TokenFile::TokenFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw DataError(path + ": cannot open the token file: " + std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || info.st_size < static_cast<off_t>(kHeaderBytes)) {
    ::close(fd);
    throw DataError(path + ": not a token file (shorter than its 32-byte header)");
  }
  map_size_ = static_cast<size_t>(info.st_size);
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw DataError(path + ": mmap failed: " + std::strerror(errno));
  }
  const auto* bytes = static_cast<const uint8_t*>(map_);
  auto fail = [&](const std::string& what) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw DataError(path + ": " + what);
  };
  if (std::memcmp(bytes, kMagic, sizeof(kMagic)) != 0) fail("not a token file (no MLTOKENS magic)");
  if (get<uint32_t>(bytes + 8) != kVersion) {
    fail("token file version " + std::to_string(get<uint32_t>(bytes + 8)) + " (this moelab reads 1)");
  }
  id_bytes_ = static_cast<int>(get<uint32_t>(bytes + 12));
  if (id_bytes_ != 2 && id_bytes_ != 4) fail("ids of " + std::to_string(id_bytes_) + " bytes (2 or 4)");
  const uint64_t count = get<uint64_t>(bytes + 16);
  vocab_size_ = static_cast<int64_t>(get<uint64_t>(bytes + 24));
  const uint64_t expected = kHeaderBytes + count * (static_cast<uint64_t>(id_bytes_) + 1);
  if (count > (map_size_ / (static_cast<uint64_t>(id_bytes_) + 1)) || expected != map_size_) {
    fail("size " + std::to_string(map_size_) + " bytes, the header's " + std::to_string(count) +
         " tokens need " + std::to_string(expected) + " (truncated or damaged)");
  }
  count_ = static_cast<int64_t>(count);
  ids_ = bytes + kHeaderBytes;
  side_ = ids_ + count * static_cast<uint64_t>(id_bytes_);
  for (int64_t i = 0; i < count_; ++i) {
    const int32_t value = id(i);
    if (value < 0 || value >= vocab_size_) {
      fail("token " + std::to_string(i) + " has id " + std::to_string(value) +
           ", outside the vocabulary of " + std::to_string(vocab_size_));
    }
  }
}

TokenFile::~TokenFile() {
  if (map_) ::munmap(map_, map_size_);
}

int32_t TokenFile::id(int64_t i) const {
  return id_bytes_ == 2 ? static_cast<int32_t>(get<uint16_t>(ids_ + 2 * i))
                        : get<int32_t>(ids_ + 4 * i);
}

TokenBlocks::TokenBlocks(std::shared_ptr<const TokenFile> file, int64_t block_length)
    : file_(std::move(file)), block_length_(block_length) {
  if (block_length_ < 1) throw ConfigError("data.block_length must be >= 1");
  blocks_ = file_->size() > 0 ? (file_->size() - 1) / block_length_ : 0;
}

Batch TokenBlocks::rows(const at::Tensor& index) const {
  const at::Tensor blocks = index.to(at::kLong).contiguous();
  const int64_t n = blocks.numel(), length = block_length_;
  at::Tensor inputs = at::empty({n, length}, at::kLong);
  at::Tensor targets = at::empty({n, length}, at::kLong);
  at::Tensor word_starts = at::empty({n, length}, at::kBool);
  at::Tensor tags = at::empty({n, length}, at::kLong);
  const int64_t* block = blocks.data_ptr<int64_t>();
  int64_t* in = inputs.data_ptr<int64_t>();
  int64_t* out = targets.data_ptr<int64_t>();
  bool* starts = word_starts.data_ptr<bool>();
  int64_t* tag = tags.data_ptr<int64_t>();
  for (int64_t b = 0; b < n; ++b) {
    TORCH_CHECK(block[b] >= 0 && block[b] < blocks_, "TokenBlocks: block ", block[b],
                " outside 0..", blocks_ - 1);
    const int64_t start = block[b] * length;
    for (int64_t t = 0; t < length; ++t) {
      const int64_t i = b * length + t;
      in[i] = file_->id(start + t);
      out[i] = file_->id(start + t + 1);
      starts[i] = (file_->side(start + t + 1) & kStartsWord) != 0;
      const uint8_t input_tag = file_->side(start + t) & kNoSideTag;
      tag[i] = input_tag == kNoSideTag ? -1 : input_tag;
    }
  }
  return Batch({{kTokenIds, inputs},
                {kTargets, targets},
                {kTargetWordStarts, word_starts},
                {kTokenTags, tags}});
}

}  // namespace moelab::data
