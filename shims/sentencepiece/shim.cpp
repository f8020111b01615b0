// A C interface to SentencePiece, built as its own shared library and loaded by moelab with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND).
//
// Why: Debian's libsentencepiece carries its own copy of protobuf-lite and exports every symbol of
// it; LibTorch loads the system libprotobuf. Linked into one program, the two copies' symbols
// interpose and libprotobuf's static initialisers crash before main(). Loaded locally and bound
// deep, SentencePiece uses its own copy and the rest of the process never sees it.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

void set_error(char* error, size_t size, const std::string& message) {
  if (!error || size == 0) return;
  std::strncpy(error, message.c_str(), size - 1);
  error[size - 1] = '\0';
}

size_t copy_out(const std::string& s, char* out, size_t capacity) {
  if (out && capacity > 0) std::memcpy(out, s.data(), std::min(capacity, s.size()));
  return s.size();
}

class Lines : public sentencepiece::SentenceIterator {
 public:
  Lines(const char* const* lines, size_t n) : lines_(lines), n_(n) {}
  bool done() const override { return next_ >= n_; }
  void Next() override {
    ++next_;
    if (!done()) value_ = lines_[next_];
  }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return {}; }
  void start() {
    if (n_ > 0) value_ = lines_[0];
  }

 private:
  const char* const* lines_;
  size_t n_, next_ = 0;
  std::string value_;
};

}  // namespace

extern "C" {

void* moelab_spm_load(const char* model, size_t size, char* error, size_t error_size) {
  auto* processor = new sentencepiece::SentencePieceProcessor();
  const auto status = processor->LoadFromSerializedProto(std::string(model, size));
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    delete processor;
    return nullptr;
  }
  return processor;
}

void moelab_spm_free(void* processor) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(processor);
}

int moelab_spm_size(void* processor) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->GetPieceSize();
}

int moelab_spm_piece_to_id(void* processor, const char* piece) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->PieceToId(piece);
}

int moelab_spm_is_unknown(void* processor, int id) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->IsUnknown(id) ? 1 : 0;
}

// Ids of `text` into ids[0 .. capacity); returns how many there are (call again with more room
// if that exceeds capacity), or -1 with `error` set.
long moelab_spm_encode(void* processor, const char* text, size_t size, int* ids, size_t capacity,
                       char* error, size_t error_size) {
  std::vector<int> out;
  const auto status =
      static_cast<sentencepiece::SentencePieceProcessor*>(processor)->Encode(std::string(text, size), &out);
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    return -1;
  }
  if (ids) std::memcpy(ids, out.data(), sizeof(int) * std::min(capacity, out.size()));
  return static_cast<long>(out.size());
}

size_t moelab_spm_id_to_piece(void* processor, int id, char* out, size_t capacity) {
  return copy_out(static_cast<sentencepiece::SentencePieceProcessor*>(processor)->IdToPiece(id), out, capacity);
}

size_t moelab_spm_decode(void* processor, const int* ids, size_t n, char* out, size_t capacity) {
  return copy_out(static_cast<sentencepiece::SentencePieceProcessor*>(processor)->DecodeIds(
                      std::vector<int>(ids, ids + n)),
                  out, capacity);
}

// Trains on `lines` with `args` ("key=value" each); the serialised model in *model (free with
// moelab_spm_free_buffer). Returns 0, or -1 with `error` set.
int moelab_spm_train(const char* const* lines, size_t n_lines, const char* const* args, size_t n_args,
                     char** model, size_t* model_size, char* error, size_t error_size) {
  std::unordered_map<std::string, std::string> kwargs;
  for (size_t i = 0; i < n_args; ++i) {
    const std::string arg = args[i];
    const size_t eq = arg.find('=');
    kwargs[arg.substr(0, eq)] = eq == std::string::npos ? "" : arg.substr(eq + 1);
  }
  Lines iterator(lines, n_lines);
  iterator.start();
  std::string serialized;
  const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs, &iterator, &serialized);
  if (!status.ok()) {
    set_error(error, error_size, status.ToString());
    return -1;
  }
  *model = static_cast<char*>(std::malloc(serialized.size()));
  std::memcpy(*model, serialized.data(), serialized.size());
  *model_size = serialized.size();
  return 0;
}

void moelab_spm_free_buffer(char* buffer) { std::free(buffer); }

}  // extern "C"
