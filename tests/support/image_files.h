// Image data files in their exact on-disk formats, for loader and training tests.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace moelab::testing {

/// A CIFAR binary file: per record its label byte(s) (one for CIFAR-10, coarse then fine for
/// CIFAR-100), then 3 planes of 32x32 bytes, pixel (c, y, x) of record r = pixel(r, c, y, x).
inline void write_cifar_file(const std::string& file, const std::vector<std::vector<uint8_t>>& labels,
                             const std::function<uint8_t(size_t, int, int, int)>& pixel) {
  std::string bytes;
  for (size_t r = 0; r < labels.size(); ++r) {
    for (uint8_t l : labels[r]) bytes.push_back(static_cast<char>(l));
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x) bytes.push_back(static_cast<char>(pixel(r, c, y, x)));
  }
  std::ofstream(file, std::ios::binary) << bytes;
}

}  // namespace moelab::testing
