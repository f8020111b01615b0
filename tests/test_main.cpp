// GoogleTest entry point shared by every moelab test executable: the runtime is set up exactly
// as the tool sets it up, so tests exercise the same threading and allocator policy.
#include <gtest/gtest.h>

#include <iostream>

#include "moelab/util/runtime.h"
#include "support/workers.h"

int main(int argc, char** argv) {
  moelab::select_blas_kernel(argv);  // before InitGoogleTest, which edits argv
  // A copy launched by a multi-process test runs its worker instead of the tests.
  const std::string worker = moelab::testing::env_or_empty("MOELAB_TEST_WORKER");
  if (!worker.empty()) {
    moelab::init_runtime();
    const auto found = moelab::testing::workers().find(worker);
    if (found == moelab::testing::workers().end()) {
      std::cerr << "no test worker '" << worker << "'\n";
      return 3;
    }
    try {
      return found->second();
    } catch (const std::exception& e) {
      std::cerr << "worker " << worker << ": " << e.what() << "\n";
      return 2;
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  moelab::init_runtime();
  return RUN_ALL_TESTS();
}
