#include "moelab/data/images.h"

#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "moelab/config/fields.h"
#include "moelab/util/errors.h"

namespace fs = std::filesystem;

namespace moelab::data {

template <typename V>
void visit(V& v, ImageDataOptions& o) {
  v.field("root", o.root());
  v.field("train_limit", o.train_limit());
  v.field("test_limit", o.test_limit());
  v.field("normalize", o.normalize());
  v.field("augment", o.augment());
  v.field("labels", o.labels());
  v.field("as_sequence", o.as_sequence());
}
MOELAB_DEFINE_OPTIONS_YAML(ImageDataOptions)


namespace {

const std::vector<std::string> kFashionClasses{"T-shirt/top", "Trouser", "Pullover", "Dress",
                                               "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                               "Bag",         "Ankle boot"};
const std::vector<std::string> kCifar10Classes{"airplane", "automobile", "bird",  "cat",  "deer",
                                               "dog",      "frog",       "horse", "ship", "truck"};

struct GzFile {
  explicit GzFile(const std::string& path) : handle(gzopen(path.c_str(), "rb")) {}
  ~GzFile() {
    if (handle) gzclose(handle);
  }
  gzFile handle;
};

// Reads exactly `size` bytes, or reports how many there were. A gzip stream whose data or CRC
// is damaged is an error, not an early end.
int64_t read_bytes(GzFile& file, void* out, int64_t size, const std::string& path) {
  int64_t done = 0;
  auto* bytes = static_cast<char*>(out);
  while (done < size) {
    const auto chunk = static_cast<unsigned>(std::min<int64_t>(size - done, 1 << 30));
    const int n = gzread(file.handle, bytes + done, chunk);
    if (n < 0) {
      int code = 0;
      const char* message = gzerror(file.handle, &code);
      throw DataError(path + ": damaged gzip data (" + (message ? message : "unknown") + ")");
    }
    if (n == 0) break;
    done += n;
  }
  return done;
}

// The uncompressed size a gzip file records in its last 4 bytes (modulo 2^32).
uint64_t gzip_recorded_size(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(-4, std::ios::end);
  unsigned char b[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(b), 4);
  return uint64_t{b[0]} | uint64_t{b[1]} << 8 | uint64_t{b[2]} << 16 | uint64_t{b[3]} << 24;
}

uint32_t big_endian_u32(const unsigned char* b) {
  return uint32_t{b[0]} << 24 | uint32_t{b[1]} << 16 | uint32_t{b[2]} << 8 | uint32_t{b[3]};
}

std::vector<std::string> class_names(const std::string& name, const ImageDataOptions& options) {
  if (name == "fashion_mnist") return kFashionClasses;
  if (name == "cifar10") return kCifar10Classes;
  std::vector<std::string> names;
  const int count = name == "mnist" ? 10 : options.labels() == "coarse" ? 20 : 100;
  for (int c = 0; c < count; ++c) names.push_back(std::to_string(c));
  return names;
}

Batch first(const Batch& set, int64_t limit) {
  if (limit <= 0 || limit >= set.size()) return set;
  return set.range(0, limit);
}

Batch labelled_images(at::Tensor images, at::Tensor labels) {
  return Batch({{kInputs, std::move(images)}, {kTargets, std::move(labels)}});
}

}  // namespace

at::Tensor read_idx(const std::string& path) {
  if (!fs::exists(path)) throw DataError(path + ": no such file");
  if (fs::is_directory(path)) throw DataError(path + ": is a directory, not an IDX file");
  const auto file_bytes = static_cast<uint64_t>(fs::file_size(path));
  GzFile file(path);
  if (!file.handle) throw DataError(path + ": cannot open");
  unsigned char magic[4];
  if (read_bytes(file, magic, 4, path) != 4) throw DataError(path + ": truncated IDX header");
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08) {
    throw DataError(path + ": not an unsigned-byte IDX file (magic " + std::to_string(magic[0]) +
                    " " + std::to_string(magic[1]) + " " + std::to_string(magic[2]) +
                    ", expected 0 0 8)");
  }
  const int dims = magic[3];
  if (dims < 1 || dims > 4) throw DataError(path + ": IDX file with " + std::to_string(dims) + " dimensions");
  // Sizes are checked against what the file can hold before anything is allocated.
  constexpr uint64_t kMaxBytes = uint64_t{1} << 40;
  std::vector<int64_t> shape(dims);
  uint64_t count = 1;
  for (int d = 0; d < dims; ++d) {
    unsigned char size[4];
    if (read_bytes(file, size, 4, path) != 4) throw DataError(path + ": truncated IDX header");
    shape[d] = big_endian_u32(size);
    if (shape[d] != 0 && count > kMaxBytes / static_cast<uint64_t>(shape[d])) {
      throw DataError(path + ": the IDX header's sizes multiply to more than 2^40 bytes");
    }
    count *= static_cast<uint64_t>(shape[d]);
  }
  const uint64_t header = 4 + 4 * static_cast<uint64_t>(dims);
  const bool compressed = gzdirect(file.handle) == 0;
  // Plain: the file's size; gzip: the size its trailer records (mod 2^32), and deflate cannot
  // expand a byte into more than 1032.
  const uint64_t total = compressed ? gzip_recorded_size(path) : file_bytes;
  const uint64_t expected = compressed ? (header + count) & 0xffffffffULL : header + count;
  if ((compressed && header + count > 1032 * file_bytes) || total != expected) {
    const uint64_t available = compressed && header + count > 1032 * file_bytes
                                   ? 1032 * file_bytes
                                   : (total > header ? total - header : 0);
    if (available < count) {
      throw DataError(path + ": truncated: the header promises " + std::to_string(count) +
                      " data bytes, the file has " + std::to_string(available));
    }
    throw DataError(path + ": " + std::to_string(available - count) +
                    " bytes after the data (trailing garbage, or not an IDX file)");
  }
  at::Tensor out = at::empty(shape, at::kByte);
  const int64_t got = read_bytes(file, out.data_ptr<uint8_t>(), static_cast<int64_t>(count), path);
  if (got != static_cast<int64_t>(count)) {
    throw DataError(path + ": truncated: the header promises " + std::to_string(count) +
                    " data bytes, the file has " + std::to_string(got));
  }
  // Reading past the data checks a gzip stream's CRC and length, and finds trailing bytes.
  unsigned char extra[64];
  const int64_t trailing = read_bytes(file, extra, sizeof(extra), path);
  if (trailing > 0) {
    throw DataError(path + ": bytes after the data (trailing garbage, or not an IDX file)");
  }
  return out;
}

std::string find_idx_file(const std::string& root, const std::string& name) {
  for (const std::string& candidate : {name, name + ".gz"}) {
    const fs::path p = fs::path(root) / candidate;
    if (fs::exists(p)) return p.string();
  }
  throw DataError((fs::path(root) / name).string() + "(.gz): no such file");
}

Batch load_idx_pair(const std::string& images_path, const std::string& labels_path) {
  at::Tensor images = read_idx(images_path);
  at::Tensor labels = read_idx(labels_path);
  if (images.dim() != 3) {
    throw DataError(images_path + ": expected images (N, H, W), found " +
                    std::to_string(images.dim()) + " dimensions");
  }
  if (labels.dim() != 1) throw DataError(labels_path + ": expected a vector of labels");
  if (labels.size(0) != images.size(0)) {
    throw DataError(labels_path + ": " + std::to_string(labels.size(0)) + " labels for " +
                    std::to_string(images.size(0)) + " images in " + images_path);
  }
  return labelled_images(images.unsqueeze(1).to(at::kFloat).div_(255.0), labels.to(at::kLong));
}

Batch load_cifar_binary(const std::vector<std::string>& paths, int label_bytes,
                              int label_index) {
  constexpr int64_t kPixels = 3 * 32 * 32;
  const int64_t record = label_bytes + kPixels;
  std::vector<at::Tensor> images, labels;
  for (const auto& path : paths) {
    if (!fs::exists(path)) throw DataError(path + ": no such file");
    if (fs::is_directory(path)) throw DataError(path + ": is a directory, not a CIFAR file");
    const auto size = static_cast<int64_t>(fs::file_size(path));
    if (size == 0 || size % record != 0) {
      throw DataError(path + ": " + std::to_string(size) + " bytes is not a whole number of " +
                      std::to_string(record) + "-byte CIFAR records (truncated or another format)");
    }
    at::Tensor raw = at::empty({size / record, record}, at::kByte);
    std::ifstream in(path, std::ios::binary);
    if (!in.read(reinterpret_cast<char*>(raw.data_ptr<uint8_t>()), size)) {
      throw DataError(path + ": read failed");
    }
    labels.push_back(raw.select(1, label_index).to(at::kLong));
    images.push_back(raw.narrow(1, label_bytes, kPixels).reshape({-1, 3, 32, 32}));
  }
  return labelled_images(at::cat(images).to(at::kFloat).div_(255.0), at::cat(labels));
}

ChannelStats normalize_per_channel(Batch& train, Batch& test) {
  const at::Tensor& x = train.at(kInputs);
  const at::Tensor mean = x.mean({0, 2, 3}, /*keepdim=*/true);
  const at::Tensor std = x.std({0, 2, 3}, /*unbiased=*/false, /*keepdim=*/true).clamp_min(1e-6);
  for (Batch* set : {&train, &test}) {
    if (set->size() > 0) set->set(kInputs, (set->at(kInputs) - mean) / std);
  }
  const at::Tensor m = mean.flatten().to(at::kDouble).contiguous();
  const at::Tensor s = std.flatten().to(at::kDouble).contiguous();
  return {{m.data_ptr<double>(), m.data_ptr<double>() + m.numel()},
          {s.data_ptr<double>(), s.data_ptr<double>() + s.numel()}};
}

at::Tensor random_crop_flip(const at::Tensor& images, int64_t pad) {
  const int64_t n = images.size(0), h = images.size(2), w = images.size(3);
  at::Tensor padded = at::constant_pad_nd(images, {pad, pad, pad, pad}, 0.0);
  at::Tensor offsets = at::randint(0, 2 * pad + 1, {n, 2}, at::kLong);
  at::Tensor flips = at::rand({n}) < 0.5;
  at::Tensor out = at::empty_like(images);
  auto off = offsets.accessor<int64_t, 2>();
  auto flip = flips.accessor<bool, 1>();
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor crop = padded[i].narrow(1, off[i][0], h).narrow(2, off[i][1], w);
    out[i].copy_(flip[i] ? crop.flip({2}) : crop);
  }
  return out;
}

void validate(const std::string& name, const ImageDataOptions& options, const std::string& where) {
  if (options.train_limit() < 0) throw ConfigError(where + ".train_limit: must be >= 0");
  if (options.test_limit() < 0) throw ConfigError(where + ".test_limit: must be >= 0");
  if (options.labels() != "fine" && options.labels() != "coarse") {
    throw ConfigError(where + ".labels: expected fine or coarse, got '" + options.labels() + "'");
  }
  if (options.labels() == "coarse" && name != "cifar100") {
    throw ConfigError(where + ".labels: coarse labels exist only for cifar100");
  }
  if (options.as_sequence() && options.augment()) {
    throw ConfigError(where + ".as_sequence: cannot be combined with " + where +
                      ".augment (crops and flips act on images)");
  }
}

Splits load_image_data(const std::string& name, const ImageDataOptions& options) {
  validate(name, options, "data");
  Batch train, test;
  std::string root_used;  // for messages
  if (name == "fashion_mnist" || name == "mnist") {
    const std::string root = root_used = !options.root().empty() ? options.root()
                             : name == "mnist"       ? "/usr/share/datasets/mnist"
                                                     : "/usr/share/datasets/fashion-mnist";
    if (!fs::is_directory(root)) {
      throw DataError(root + ": no such directory" +
                      (name == "fashion_mnist" ? std::string(" (apt-get install dataset-fashion-mnist)")
                                               : std::string(" (set data.root)")));
    }
    train = load_idx_pair(find_idx_file(root, "train-images-idx3-ubyte"),
                                 find_idx_file(root, "train-labels-idx1-ubyte"));
    test = load_idx_pair(find_idx_file(root, "t10k-images-idx3-ubyte"),
                                find_idx_file(root, "t10k-labels-idx1-ubyte"));
  } else if (name == "cifar10" || name == "cifar100") {
    const bool c10 = name == "cifar10";
    const std::string root = root_used = !options.root().empty() ? options.root()
                             : c10 ? "data/cifar-10-batches-bin"
                                   : "data/cifar-100-binary";
    std::vector<std::string> train_files;
    if (c10) {
      for (int b = 1; b <= 5; ++b) train_files.push_back(root + "/data_batch_" + std::to_string(b) + ".bin");
    } else {
      train_files.push_back(root + "/train.bin");
    }
    const std::string test_file = root + (c10 ? "/test_batch.bin" : "/test.bin");
    const int label_bytes = c10 ? 1 : 2;
    const int label_index = c10 ? 0 : options.labels() == "coarse" ? 0 : 1;
    train = load_cifar_binary(train_files, label_bytes, label_index);
    test = load_cifar_binary({test_file}, label_bytes, label_index);
  } else {
    throw ConfigError("data.name: '" + name + "' is not an image data set");
  }
  train = first(train, options.train_limit());
  test = first(test, options.test_limit());
  Splits splits;
  splits.class_names = class_names(name, options);
  const auto num_classes = static_cast<int64_t>(splits.class_names.size());
  for (const auto& [set, split] : {std::pair<const Batch*, const char*>{&train, "training"},
                                   std::pair<const Batch*, const char*>{&test, "test"}}) {
    if (set->size() == 0) continue;
    const at::Tensor bad = (set->at(kTargets) >= num_classes).nonzero();
    if (bad.numel() > 0) {
      const int64_t record = bad[0][0].item<int64_t>();
      throw DataError("data." + name + " (" + root_used + "): " + split + " record " +
                      std::to_string(record) + " has label " +
                      std::to_string(set->at(kTargets)[record].item<int64_t>()) +
                      ", but there are only " +
                      std::to_string(num_classes) + " classes");
    }
  }
  if (options.normalize()) {
    ChannelStats stats = normalize_per_channel(train, test);
    splits.input_mean = std::move(stats.mean);
    splits.input_std = std::move(stats.std);
  }
  if (options.as_sequence()) {
    // (N, C, H, W) -> (N, H, C * W): row h is position h.
    for (Batch* set : {&train, &test}) {
      const at::Tensor images = set->at(kInputs);
      set->set(kInputs, images.permute({0, 2, 1, 3})
                            .reshape({images.size(0), images.size(2), images.size(1) * images.size(3)})
                            .contiguous());
    }
  }
  splits.train = std::make_shared<TensorSet>(std::move(train));
  if (test.size() > 0) splits.test = std::make_shared<TensorSet>(std::move(test));
  if (options.augment()) {
    splits.augment = [](Batch batch) {
      batch.set(kInputs, random_crop_flip(batch.at(kInputs)));
      return batch;
    };
  }
  return splits;
}

}  // namespace moelab::data
