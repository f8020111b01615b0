#include "moelab/util/runtime.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

TEST(RuntimeTest, UsesAnOptimizedBlas) {
  // Debian's reference BLAS makes every matmul ~20x slower; install-deps must bring OpenBLAS.
  EXPECT_TRUE(moelab::blas_is_optimized()) << "BLAS in use: " << moelab::blas_library_path();
}

TEST(RuntimeTest, SetsTheRequestedThreadCount) {
  const int before = at::get_num_threads();
  EXPECT_EQ(moelab::init_runtime({/*threads=*/1, /*tune_allocator=*/true}), 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  const char* omp = std::getenv("OMP_NUM_THREADS");
  const int expected = omp != nullptr && std::atoi(omp) > 0 ? std::atoi(omp) : moelab::available_cores();
  EXPECT_EQ(moelab::init_runtime({}), expected);
  at::set_num_threads(before);
}

TEST(RuntimeTest, RejectsNegativeThreads) {
  EXPECT_THROW(moelab::init_runtime({/*threads=*/-1, true}), c10::Error);
}

TEST(RuntimeTest, MedianOfOddAndEvenCountsAndNoneRefused) {
  EXPECT_DOUBLE_EQ(moelab::median({5.0, 1.0, 3.0}), 3.0);
  EXPECT_DOUBLE_EQ(moelab::median({4.0, 1.0, 10.0, 2.0}), 3.0);  // mean of the middle two
  EXPECT_DOUBLE_EQ(moelab::median({7.5}), 7.5);
  EXPECT_THROW(moelab::median({}), c10::Error);
}

TEST(RuntimeTest, MeasuresTheMemoryReadRateAndRefusesATooSmallProbe) {
  const double gbps = moelab::measure_memory_read_gbps(int64_t{8} << 20);
  EXPECT_TRUE(std::isfinite(gbps) && gbps > 0.1) << gbps;
  try {
    moelab::measure_memory_read_gbps(100);
    FAIL() << "100 bytes accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("100 bytes is too few"),
              std::string::npos)
        << e.what_without_backtrace();
  }
}

// The BLAS kernel check (issue 15): the core in use computes float32 GEMMs within rounding of
// float64, the check catches a wrong result, and the core moelab would pick matches the CPU's
// features as /proc/cpuinfo lists them.
TEST(BlasKernelTest, TheCoreInUsePassesTheFloat64CheckAndMatchesTheCpu) {
  EXPECT_TRUE(moelab::gemm_matches_float64());
  const moelab::BlasKernel kernel = moelab::blas_kernel();
  EXPECT_FALSE(kernel.library.empty());
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string flags;
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("flags", 0) == 0) {
      flags = line + " ";
      break;
    }
  }
  auto has = [&](const char* flag) { return flags.find(std::string(" ") + flag + " ") != std::string::npos; };
  const std::string best = moelab::best_blas_core_for_cpu();
  if (has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq")) {
    EXPECT_EQ(best, "SkylakeX");
  } else if (has("avx2") && has("fma")) {
    EXPECT_EQ(best, "Haswell");
  }
  // Under OpenBLAS with no OPENBLAS_CORETYPE from outside, the tests run on that core too.
  if (!kernel.core.empty() && kernel.chosen_by != "OPENBLAS_CORETYPE" && best == "SkylakeX") {
    EXPECT_TRUE(kernel.core == "SkylakeX" || kernel.core == "Cooperlake" ||
                kernel.core == "SapphireRapids") << kernel.core << " " << kernel.note;
  }
}
