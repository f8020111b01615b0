#include "gctx.h"

#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>

#include "moelab/util/errors.h"

namespace moelab::data::internal {

namespace {

// HDF5 handles closed on scope exit; HDF5's own error printing is off (our messages say it).
class Handle {
 public:
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() {
    if (id_ >= 0) close_(id_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

void silence_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

std::vector<std::string> read_strings(hid_t file, const std::string& path, const std::string& name) {
  Handle dataset(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.valid()) throw DataError(path + ": no dataset " + name + " (not a GCTX file?)");
  Handle type(H5Dget_type(dataset.get()), H5Tclose);
  Handle space(H5Dget_space(dataset.get()), H5Sclose);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Sget_simple_extent_ndims(space.get()) != 1) {
    throw DataError(path + ": " + name + " must be a 1-d dataset of strings");
  }
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);
  std::vector<std::string> out(n);
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle memory(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(memory.get(), H5T_VARIABLE);
    std::vector<char*> raw(n, nullptr);
    if (n > 0 && H5Dread(dataset.get(), memory.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()) < 0) {
      throw DataError(path + ": cannot read " + name);
    }
    for (hsize_t i = 0; i < n; ++i) out[i] = raw[i] ? raw[i] : "";
    if (n > 0) H5Dvlen_reclaim(memory.get(), space.get(), H5P_DEFAULT, raw.data());
  } else {
    const size_t width = H5Tget_size(type.get());
    Handle memory(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(memory.get(), width);
    std::vector<char> raw(n * width);
    if (n > 0 && H5Dread(dataset.get(), memory.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()) < 0) {
      throw DataError(path + ": cannot read " + name);
    }
    for (hsize_t i = 0; i < n; ++i) {
      const char* s = raw.data() + i * width;
      out[i] = std::string(s, strnlen(s, width));
    }
  }
  return out;
}

void write_strings(hid_t file, const std::string& path, const std::string& name,
                   const std::vector<std::string>& values) {
  size_t width = 1;
  for (const auto& v : values) width = std::max(width, v.size());
  std::vector<char> raw(values.size() * width, '\0');
  for (size_t i = 0; i < values.size(); ++i) std::copy(values[i].begin(), values[i].end(), raw.data() + i * width);
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), width);
  const hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Handle dataset(H5Dcreate2(file, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT,
                            H5P_DEFAULT),
                 H5Dclose);
  if (!dataset.valid() ||
      (n > 0 && H5Dwrite(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()) < 0)) {
    throw IoError(path + ": cannot write " + name);
  }
}

}  // namespace

GctxMatrix read_gctx(const std::string& path) {
  silence_hdf5();
  if (!std::filesystem::is_regular_file(path)) throw DataError(path + ": no such file (a GCTX file)");
  if (H5Fis_hdf5(path.c_str()) <= 0) throw DataError(path + ": not an HDF5 file (a GCTX file is one)");
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.valid()) throw DataError(path + ": cannot open as HDF5");
  GctxMatrix out;
  out.row_ids = read_strings(file.get(), path, "/0/META/ROW/id");
  out.col_ids = read_strings(file.get(), path, "/0/META/COL/id");
  Handle dataset(H5Dopen2(file.get(), "/0/DATA/0/matrix", H5P_DEFAULT), H5Dclose);
  if (!dataset.valid()) throw DataError(path + ": no dataset /0/DATA/0/matrix (not a GCTX file?)");
  Handle space(H5Dget_space(dataset.get()), H5Sclose);
  hsize_t dims[2] = {0, 0};
  if (H5Sget_simple_extent_ndims(space.get()) != 2) {
    throw DataError(path + ": /0/DATA/0/matrix must be 2-d (signatures x genes)");
  }
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  if (dims[0] != out.col_ids.size() || dims[1] != out.row_ids.size()) {
    throw DataError(path + ": /0/DATA/0/matrix is " + std::to_string(dims[0]) + " x " +
                    std::to_string(dims[1]) + " but there are " + std::to_string(out.col_ids.size()) +
                    " column ids (/0/META/COL/id) and " + std::to_string(out.row_ids.size()) +
                    " row ids (/0/META/ROW/id); expected columns x rows");
  }
  out.values.resize(dims[0] * dims[1]);
  if (!out.values.empty() && H5Dread(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                     out.values.data()) < 0) {
    throw DataError(path + ": cannot read /0/DATA/0/matrix as numbers");
  }
  return out;
}

void write_gctx(const GctxMatrix& matrix, const std::string& path) {
  silence_hdf5();
  Handle file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  if (!file.valid()) throw IoError(path + ": cannot create");
  for (const char* group : {"/0", "/0/DATA", "/0/DATA/0", "/0/META", "/0/META/ROW", "/0/META/COL"}) {
    Handle g(H5Gcreate2(file.get(), group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    if (!g.valid()) throw IoError(path + ": cannot create group " + group);
  }
  write_strings(file.get(), path, "/0/META/ROW/id", matrix.row_ids);
  write_strings(file.get(), path, "/0/META/COL/id", matrix.col_ids);
  const hsize_t dims[2] = {matrix.col_ids.size(), matrix.row_ids.size()};
  Handle space(H5Screate_simple(2, dims, nullptr), H5Sclose);
  Handle dataset(H5Dcreate2(file.get(), "/0/DATA/0/matrix", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                            H5P_DEFAULT, H5P_DEFAULT),
                 H5Dclose);
  if (!dataset.valid() || (!matrix.values.empty() &&
                           H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                    matrix.values.data()) < 0)) {
    throw IoError(path + ": cannot write /0/DATA/0/matrix");
  }
  if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0) throw IoError(path + ": cannot flush");
}

}  // namespace moelab::data::internal
