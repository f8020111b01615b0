#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include "moelab/util/runtime.h"

TEST(RuntimeTest, UsesAnOptimizedBlas) {
  // Debian's reference BLAS makes every matmul ~20x slower; install-deps must bring OpenBLAS.
  EXPECT_TRUE(moelab::blas_is_optimized()) << "BLAS in use: " << moelab::blas_library_path();
}

TEST(RuntimeTest, SetsTheRequestedThreadCount) {
  const int before = at::get_num_threads();
  EXPECT_EQ(moelab::init_runtime({/*threads=*/1, /*tune_allocator=*/true}), 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_EQ(moelab::init_runtime({}), moelab::available_cores());
  at::set_num_threads(before);
}

TEST(RuntimeTest, RejectsNegativeThreads) {
  EXPECT_THROW(moelab::init_runtime({/*threads=*/-1, true}), c10::Error);
}
