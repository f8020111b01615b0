// Image classification data sets in their distribution formats:
//   - MNIST and Fashion-MNIST: IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
//     t10k-...), gzip-compressed (.gz) or plain. Debian's dataset-fashion-mnist installs them
//     under /usr/share/datasets/fashion-mnist.
//   - CIFAR-10 and CIFAR-100, binary version: records of <label byte(s)><3072 pixel bytes> (the
//     red plane, then green, then blue, 32x32 each); CIFAR-100 records carry the coarse then
//     the fine label. Files: data_batch_{1..5}.bin + test_batch.bin (CIFAR-10), train.bin +
//     test.bin (CIFAR-100).
// Images become float32 (N, C, H, W) scaled to [0, 1], then normalised per channel with the
// training part's mean and standard deviation. Any file that is missing, truncated or not in the
// format raises a DataError naming the file, what was expected and what was found.
#pragma once

#include <ATen/ATen.h>
#include <torch/arg.h>

#include <string>
#include <vector>

#include "moelab/data/dataset.h"

namespace YAML {
class Node;
}

namespace moelab::data {

struct ImageDataOptions {
  /// Directory holding the files; "" = the data set's default (fashion_mnist:
  /// /usr/share/datasets/fashion-mnist, mnist: /usr/share/datasets/mnist, cifar10:
  /// data/cifar-10-batches-bin, cifar100: data/cifar-100-binary).
  TORCH_ARG(std::string, root) = "";
  /// Use only the first N training / test images; 0 = all. Default 0.
  TORCH_ARG(int64_t, train_limit) = 0;
  TORCH_ARG(int64_t, test_limit) = 0;
  /// Subtract the training mean and divide by the training std, per channel. Default true.
  TORCH_ARG(bool, normalize) = true;
  /// Random crop (zero padding 4) and horizontal flip of training batches. Default false; the
  /// CIFAR entries turn it on.
  TORCH_ARG(bool, augment) = false;
  /// cifar100 only: fine (100 classes) or coarse (20 superclasses). Default fine.
  TORCH_ARG(std::string, labels) = "fine";
  /// Each image as a sequence of its rows for sequence models: (N, H, C * W) instead of
  /// (N, C, H, W), a row's channels side by side. Not with augment. Default false.
  TORCH_ARG(bool, as_sequence) = false;
};

YAML::Node to_yaml(const ImageDataOptions& options);
void from_yaml(const YAML::Node& node, ImageDataOptions& options, const std::string& where);

/// One IDX file (gzip or plain; zlib reads both) as a uint8 tensor of the shape its header gives.
at::Tensor read_idx(const std::string& path);

/// The path of `name` or `name.gz` in `root`; DataError naming both if neither exists.
std::string find_idx_file(const std::string& root, const std::string& name);

/// An IDX image file and its label file: inputs float32 (N, 1, H, W) in [0, 1] and int64
/// targets.
Batch load_idx_pair(const std::string& images_path, const std::string& labels_path);

/// CIFAR binary files, concatenated: inputs float32 (N, 3, 32, 32) in [0, 1], int64 targets.
/// `label_bytes` is 1 (CIFAR-10) or 2 (CIFAR-100; `label_index` 0 = coarse, 1 = fine).
Batch load_cifar_binary(const std::vector<std::string>& paths, int label_bytes,
                              int label_index);

struct ChannelStats {
  std::vector<double> mean, std;  // one per channel
};

/// Normalises both sets' inputs per channel with `train`'s mean and (population) std; returns
/// them.
ChannelStats normalize_per_channel(Batch& train, Batch& test);

/// Pads each image by `pad` zeros, crops back to its size at a random offset and flips half of
/// the images horizontally; draws from the global generator.
at::Tensor random_crop_flip(const at::Tensor& images, int64_t pad = 4);

/// The registered image data sets' loaders: name is fashion_mnist, mnist, cifar10 or cifar100.
Splits load_image_data(const std::string& name, const ImageDataOptions& options);

/// ConfigError naming `where` for options the data set `name` cannot take.
void validate(const std::string& name, const ImageDataOptions& options, const std::string& where);

}  // namespace moelab::data
