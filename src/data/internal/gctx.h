// GCTX files (the LINCS L1000 HDF5 layout, as cmapPy writes them) through HDF5's C library:
// /0/DATA/0/matrix, a float32 matrix stored as (columns, rows) = (signatures, genes);
// /0/META/ROW/id the gene ids; /0/META/COL/id the signature ids. Other metadata datasets are
// left alone on reading and not written.
#pragma once

#include <string>
#include <vector>

namespace moelab::data::internal {

struct GctxMatrix {
  std::vector<std::string> row_ids;  // (G) genes
  std::vector<std::string> col_ids;  // (N) signatures
  std::vector<float> values;         // (N, G) row-major: values[n * G + g]
};

/// DataError "PATH: ..." naming the dataset that is missing or malformed.
GctxMatrix read_gctx(const std::string& path);
/// IoError naming the path if it cannot be written.
void write_gctx(const GctxMatrix& matrix, const std::string& path);

}  // namespace moelab::data::internal
