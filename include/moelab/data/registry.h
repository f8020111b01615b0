// The data sets moelab can load by name, registered in one explicit function (registry.cpp). A
// config's `data:` section names the data set and sets its options.
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <string>
#include <vector>

#include "moelab/data/dataset.h"

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
};

/// Every registered data set, in registration order.
const std::vector<DataEntry>& data_registry();

/// The entry called `name`; ConfigError naming the valid ones (and the nearest) otherwise.
const DataEntry& find_data(const std::string& name);

}  // namespace moelab::data
