#include "moelab/data/registry.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "moelab/config/config.h"
#include "moelab/config/options_io.h"
#include "moelab/data/images.h"
#include "moelab/data/synthetic_mixture.h"
#include "moelab/util/errors.h"

namespace moelab::data {

namespace {

template <typename Options>
Options parse_data_options(const YAML::Node& section, const std::string& where) {
  Options options;
  config::from_yaml(section, options, where);
  return options;
}

std::vector<DataEntry> register_data() {
  std::vector<DataEntry> entries;
  entries.push_back(
      {"synthetic_mixture", "seeded Gaussian mixture of vectors; several clusters per class",
       [] { return config::to_yaml(SyntheticMixtureOptions()); },
       [](const YAML::Node& section, const std::string& where) {
         parse_data_options<SyntheticMixtureOptions>(section, where);
       },
       [](const YAML::Node& section, const std::string& where) {
         const auto options = parse_data_options<SyntheticMixtureOptions>(section, where);
         LabelledVectors all = make_synthetic_mixture(options);
         Splits splits;
         splits.train = {all.features, all.labels};
         for (int64_t c = 0; c < options.num_classes(); ++c) {
           splits.class_names.push_back("class " + std::to_string(c));
         }
         return splits;
       }});
  struct ImageEntry {
    const char* name;
    const char* description;
    bool augment;
  };
  for (const ImageEntry image : {
           ImageEntry{"fashion_mnist", "Fashion-MNIST, 28x28 grey, 10 classes (IDX files)", false},
           ImageEntry{"mnist", "MNIST digits, 28x28 grey, 10 classes (IDX files)", false},
           ImageEntry{"cifar10", "CIFAR-10, 32x32 colour, 10 classes (binary version)", true},
           ImageEntry{"cifar100", "CIFAR-100, 32x32 colour, 100 fine or 20 coarse classes", true}}) {
    const std::string name = image.name;
    const ImageDataOptions defaults = ImageDataOptions().augment(image.augment);
    entries.push_back(
        {name, image.description, [defaults] { return config::to_yaml(defaults); },
         [name, defaults](const YAML::Node& section, const std::string& where) {
           ImageDataOptions options = defaults;
           config::from_yaml(section, options, where);
           validate(name, options, where);
         },
         [name, defaults](const YAML::Node& section, const std::string& where) {
           ImageDataOptions options = defaults;
           config::from_yaml(section, options, where);
           return load_image_data(name, options);
         }});
  }
  return entries;
}

}  // namespace

void split_validation(Splits& splits, double fraction, uint64_t seed) {
  const int64_t n = splits.train.size();
  const auto n_val = static_cast<int64_t>(std::floor(fraction * static_cast<double>(n)));
  if (n_val == 0) return;
  at::Generator generator = at::detail::createCPUGenerator(seed * 1000003ULL + 7919ULL);
  at::Tensor order = at::randperm(n, generator, at::kLong);
  LabelledSet all = splits.train;
  splits.val = all.rows(order.narrow(0, 0, n_val));
  splits.train = all.rows(order.narrow(0, n_val, n - n_val));
}

const std::vector<DataEntry>& data_registry() {
  static const std::vector<DataEntry> entries = register_data();
  return entries;
}

const DataEntry& find_data(const std::string& name) {
  return config::find_by_name(data_registry(), name, "data.name", "data set");
}

}  // namespace moelab::data
