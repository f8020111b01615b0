// GoogleTest entry point shared by every moelab test executable: the runtime is set up exactly
// as the tool sets it up, so tests exercise the same threading and allocator policy.
#include <gtest/gtest.h>

#include "moelab/util/runtime.h"

int main(int argc, char** argv) {
  moelab::select_blas_kernel(argv);  // before InitGoogleTest, which edits argv
  ::testing::InitGoogleTest(&argc, argv);
  moelab::init_runtime();
  return RUN_ALL_TESTS();
}
