// How OnInvalid reads and writes in a config ("stop", "skip"), for every data set that has the
// option (molecule_property, perturbation): one specialisation, seen by each file that visits it.
#pragma once

#include "moelab/config/fields.h"
#include "moelab/data/molecules.h"
#include "moelab/util/errors.h"

namespace moelab::config {
template <>
struct EnumNames<data::OnInvalid> {
  static data::OnInvalid parse(const std::string& s) {
    if (s == "stop") return data::OnInvalid::kStop;
    if (s == "skip") return data::OnInvalid::kSkip;
    throw ConfigError("expected stop or skip, got '" + s + "'");
  }
  static std::string print(data::OnInvalid v) { return v == data::OnInvalid::kStop ? "stop" : "skip"; }
};
}  // namespace moelab::config
