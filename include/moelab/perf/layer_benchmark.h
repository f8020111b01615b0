// Times the MoE layer against the dense FFN that does the same expert work, so throughput reads
// as a ratio: one SwiGLU FFN over k * T rows has exactly the MoE's active expert FLOPs and runs
// as large GEMMs, the practical limit for any dispatch scheme. Used by `moelab bench moe-layer`.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moelab/util/runtime.h"

namespace moelab::perf {

struct LayerBenchmarkOptions {
  int64_t tokens = 4096;
  int64_t d_model = 512;
  int64_t d_ff = 1024;
  int64_t experts = 8;
  int64_t top_k = 2;
  bool backward = true;  // fwd+bwd, else forward only
  int warmup = 3;
  int iterations = 10;
  std::string router = "top_k";
  uint64_t seed = 0;
  /// bf16: both sides under bf16 autocast, as a bf16 run trains (weights float32).
  Precision precision = Precision::kFloat32;
};

struct BenchmarkResult {
  std::string name;
  double median_ms = 0;
  double tokens_per_s = 0;
  double gflops = 0;  // expert FLOPs only (the dense reference's FLOPs), per second
};

/// One timed case: the work of one iteration (forward, and backward when asked) on inputs made
/// once. The CLI's one-shot benchmark and the Google Benchmark programs time the same cases.
struct BenchmarkCase {
  std::string name;  // "moe_layer/top_k/T=4096/D=512/F=1024/E=8/k=2/fwdbwd", "dense_ffn_ref/..."
  std::function<void()> step;
  double flops_per_step = 0;  // expert FLOPs (the dense reference's)
  int64_t tokens = 0;
};

/// The MoE layer (options.router, E experts, top-k) over T tokens. ConfigError for bad options.
BenchmarkCase moe_layer_case(const LayerBenchmarkOptions& options);
/// The dense reference: one SwiGLU FFN over k * T rows, the MoE's active expert FLOPs.
BenchmarkCase dense_reference_case(const LayerBenchmarkOptions& options);

struct LayerComparison {
  BenchmarkResult moe, dense;  // each named after its configuration
  /// The MoE layer's throughput over the dense reference's: the median of dense / MoE over
  /// iterations that ran in turn (each pair on the same host speed).
  double moe_over_dense = 0;
};

/// Runs both, an iteration of each in turn.
LayerComparison benchmark_moe_layer(const LayerBenchmarkOptions& options);

}  // namespace moelab::perf
