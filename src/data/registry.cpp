#include "moelab/data/registry.h"

#include <yaml-cpp/yaml.h>

#include "moelab/config/config.h"
#include "moelab/config/fields.h"
#include "moelab/data/images.h"
#include "moelab/data/molecules.h"
#include "moelab/data/perturbation.h"
#include "moelab/data/synthetic_mixture.h"
#include "moelab/data/synthetic_regression.h"
#include "moelab/data/text_data.h"

namespace moelab::data {

namespace {

using config::parse_options;

// An entry whose loader needs only its parsed options.
template <typename Options>
DataEntry add_data(const std::string& name, const std::string& description,
                   std::function<Splits(const Options&)> load, const std::string& task) {
  return {name,
          description,
          [] { return to_yaml(Options()); },
          [](const YAML::Node& section, const std::string& where) { parse_options<Options>(section, where); },
          [load](const YAML::Node& section, const std::string& where) {
            return load(parse_options<Options>(section, where));
          },
          task};
}

std::vector<DataEntry> register_data() {
  std::vector<DataEntry> entries;
  entries.push_back(add_data<SyntheticMixtureOptions>(
      "synthetic_mixture", "seeded Gaussian mixture of vectors; several clusters per class",
      [](const SyntheticMixtureOptions& options) {
        LabelledVectors all = make_synthetic_mixture(options);
        Splits splits;
        splits.train = std::make_shared<TensorSet>(
            Batch({{kInputs, all.features}, {kTargets, all.labels}}));
        for (int64_t c = 0; c < options.num_classes(); ++c) {
          splits.class_names.push_back("class " + std::to_string(c));
        }
        return splits;
      },
      "classification"));
  entries.push_back(add_data<SyntheticRegressionOptions>(
      "synthetic_regression", "seeded piecewise-linear regression target with several outputs",
      [](const SyntheticRegressionOptions& options) {
        Splits splits;
        splits.train = std::make_shared<TensorSet>(make_synthetic_regression(options));
        return splits;
      },
      "regression"));
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
        {name, image.description, [defaults] { return to_yaml(defaults); },
         [name, defaults](const YAML::Node& section, const std::string& where) {
           validate(name, parse_options(section, where, defaults), where);
         },
         [name, defaults](const YAML::Node& section, const std::string& where) {
           return load_image_data(name, parse_options(section, where, defaults));
         },
         "classification"});
  }
  struct TextEntry {
    const char* name;
    const char* description;
    TextDataOptions defaults;
  };
  for (const TextEntry& text : {
           TextEntry{"brown", "the Brown corpus (500 documents, 15 genres, POS-tagged; Bengio et al.'s split)",
                     TextDataOptions().split("bengio").min_count(4)},
           TextEntry{"text", "your own UTF-8 text: a .txt file (documents between blank lines) or a "
                     "directory of them", TextDataOptions()}}) {
    const std::string name = text.name;
    const TextDataOptions defaults = text.defaults;
    entries.push_back(
        {name, text.description, [defaults] { return to_yaml(defaults); },
         [defaults](const YAML::Node& section, const std::string& where) {
           validate(parse_options(section, where, defaults), where);
         },
         [name, defaults](const YAML::Node& section, const std::string& where) {
           return load_text_data(name, parse_options(section, where, defaults));
         },
         "language_model"});
  }
  entries.push_back(add_data<MoleculePropertyOptions>(
      "molecule_property",
      "SMILES with one value each (default: rdkit-data's NCI set with TPSA), as Morgan fingerprints",
      load_molecule_property, "regression"));
  entries.push_back(
      {"perturbation",
       "gene-expression response to compounds (LINCS-style GCTX or the CheMoE csv layout); 5-fold CV",
       [] { return to_yaml(PerturbationDataOptions()); },
       [](const YAML::Node& section, const std::string& where) {
         validate(parse_options<PerturbationDataOptions>(section, where), where);
       },
       [](const YAML::Node& section, const std::string& where) {
         return load_perturbation_data(parse_options<PerturbationDataOptions>(section, where));
       },
       "perturbation"});
  return entries;
}

}  // namespace

const std::vector<DataEntry>& data_registry() {
  static const std::vector<DataEntry> entries = register_data();
  return entries;
}

const DataEntry& find_data(const std::string& name) {
  return config::find_by_name(data_registry(), name, "data.name", "data set");
}

}  // namespace moelab::data
