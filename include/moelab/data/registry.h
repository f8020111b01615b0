// The data sets moelab can load by name, registered in one explicit function (registry.cpp). A
// config's `data:` section names the data set and sets its options. Adding a data set: its file
// pair (Options with to_yaml/from_yaml, the loader) and one entry in registry.cpp.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "moelab/data/dataset.h"

namespace YAML {
class Node;
}

namespace moelab::data {

struct DataEntry {
  std::string name;
  std::string description;
  /// The data section with every option at its default (without `name`).
  std::function<YAML::Node()> defaults;
  /// Checks a data section (without `name`): ConfigError for unknown keys or wrong types.
  std::function<void(const YAML::Node& section, const std::string& where)> validate;
  /// Loads train (and test where the data set has one); DataError for missing or bad files.
  std::function<Splits(const YAML::Node& section, const std::string& where)> load;
  /// The task its targets are for (classification, regression), the default of `task.name`.
  std::string task = "classification";
};

/// Every registered data set, in registration order.
const std::vector<DataEntry>& data_registry();

/// The entry called `name`; ConfigError naming the valid ones (and the nearest) otherwise.
const DataEntry& find_data(const std::string& name);

}  // namespace moelab::data
