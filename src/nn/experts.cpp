#include "moelab/nn/experts.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <numeric>

#include "internal/side_by_side.h"

namespace moelab::nn {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// Below this mean number of rows per expert, experts run side by side rather than each GEMM
// threaded: by default at any size. On 2 cores (AMD EPYC, 2026-11-27) side by side won or tied
// at every size measured, 512 to 8,192 rows per expert, float32 and bf16 (bench moe-layer,
// paired runs: E=8 0.99-1.07 of the dense FFN against 0.88-0.97 threaded; the Brown MoE
// decoder's step 860-920 ms against 960-1,060), since two single-threaded GEMMs never wait at a
// barrier. The schedule (run_side_by_side) still runs an expert on every thread when sharing
// would leave threads idle: one big expert, or fewer experts than threads.
// MOELAB_PARALLEL_EXPERT_ROWS sets a limit (benchmarks; 0 turns side by side off).
int64_t parallel_expert_rows() {
  static const int64_t rows = [] {
    const char* env = std::getenv("MOELAB_PARALLEL_EXPERT_ROWS");
    if (env == nullptr || *env == '\0') return std::numeric_limits<int64_t>::max();
    char* end = nullptr;
    const long long value = std::strtoll(env, &end, 10);
    TORCH_CHECK(*end == '\0' && value >= 0, "MOELAB_PARALLEL_EXPERT_ROWS=", env,
                ": not a row count (an integer >= 0)");
    return static_cast<int64_t>(value);
  }();
  return rows;
}

int64_t total_rows(const std::vector<int64_t>& counts) {
  return std::accumulate(counts.begin(), counts.end(), int64_t{0});
}

std::vector<int64_t> expert_offsets(const std::vector<int64_t>& counts) {
  std::vector<int64_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  return offsets;
}

// Whether experts should run side by side, one thread each, rather than one after another with
// every thread inside each: experts on a CPU. A threaded GEMM or convolution of ~100 rows spends
// much of its time synchronising, and larger ones still meet at barriers; OpenBLAS and oneDNN
// called inside a parallel region use one thread. On a GPU the device runs the experts' kernels
// side by side itself (and OpenMP's threads have no CUDA context).
bool suits_side_by_side(const at::Tensor& rows, const std::vector<int64_t>& counts) {
  const int64_t limit = parallel_expert_rows();  // a bad value is refused on any machine
  if (!rows.device().is_cpu() || at::get_num_threads() < 2 || at::in_parallel_region())
    return false;
  const auto busy = std::count_if(counts.begin(), counts.end(), [](int64_t n) { return n > 0; });
  const int64_t mean_rows =
      total_rows(counts) / std::max<int64_t>(static_cast<int64_t>(counts.size()), 1);
  return busy > 1 && mean_rows < limit;
}

// Whether threads taking experts largest first, each the next one when it finishes (the list
// schedule below), would finish within 1/8 of each other's ideal share: the rows stand for time.
bool shares_evenly(const std::vector<int64_t>& sorted_rows, size_t first, int64_t threads) {
  std::vector<int64_t> load(static_cast<size_t>(threads), 0);
  int64_t total = 0;
  for (size_t i = first; i < sorted_rows.size(); ++i) {
    *std::min_element(load.begin(), load.end()) += sorted_rows[i];
    total += sorted_rows[i];
  }
  const int64_t longest = *std::max_element(load.begin(), load.end());
  return longest * threads * 8 <= total * 9;
}

// Calls fn(e) for every expert with rows. Most run on every thread at once: each thread takes the
// next expert when it finishes one, largest first. When that would leave threads waiting (an
// untrained router sending most of a batch to one expert, or three equal experts on two
// threads), the largest experts run first, one after another, each on every thread, until the
// rest share evenly. An expert on one thread runs whole there (side_by_side.h), so its result
// does not depend on which thread ran it; which experts run on every thread depends only on the
// counts and the thread count.
template <typename Fn>
void run_side_by_side(const std::vector<int64_t>& counts, Fn&& fn) {
  std::vector<int64_t> order;
  for (int64_t e = 0; e < static_cast<int64_t>(counts.size()); ++e) {
    if (counts[e] > 0) order.push_back(e);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return counts[a] > counts[b]; });
  std::vector<int64_t> sorted_rows;
  for (int64_t e : order) sorted_rows.push_back(counts[e]);
  const int64_t threads = at::get_num_threads();
  size_t first_shared = 0;
  for (; first_shared < order.size() && !shares_evenly(sorted_rows, first_shared, threads);
       ++first_shared) {
    fn(order[first_shared]);
  }
  if (first_shared == order.size()) return;
  std::atomic<size_t> next{first_shared};
  internal::run_on_threads([&] {
    for (size_t i = next++; i < order.size(); i = next++) fn(order[i]);
  });
}

// Calls fn(e, offset, rows) for every expert that has rows: side by side when they are many and
// small, else one after another, each GEMM using every thread.
template <typename Fn>
void for_each_expert(const at::Tensor& rows, const std::vector<int64_t>& counts, Fn&& fn) {
  const std::vector<int64_t> offsets = expert_offsets(counts);
  if (suits_side_by_side(rows, counts)) {
    run_side_by_side(counts, [&](int64_t e) { fn(e, offsets[e], counts[e]); });
    return;
  }
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] > 0) fn(static_cast<int64_t>(e), offsets[e], counts[e]);
  }
}

// out = in @ w_e^T (+ b_e) for one expert's rows; w_e (out, in), b_e (out) or undefined.
void expert_linear(const at::Tensor& in, const at::Tensor& w_e, const at::Tensor& b_e,
                   at::Tensor& out) {
  if (b_e.defined()) {
    at::addmm_out(out, b_e, in, w_e.t());
  } else {
    at::mm_out(out, in, w_e.t());
  }
}

// Expert e's slice of a stacked (E, ...) parameter, or undefined when the parameter is absent.
at::Tensor expert_slice(const at::Tensor& stacked, int64_t e) {
  return stacked.defined() ? stacked[e] : at::Tensor();
}

// LibTorch 1.13's custom Function cannot take undefined tensors, so absent biases travel as an
// empty placeholder. Real biases are never empty (F, D >= 1).
at::Tensor placeholder_if_absent(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}
at::Tensor absent_if_placeholder(const at::Tensor& t) {
  return t.numel() == 0 ? at::Tensor() : t;
}

// hidden = act(h) for ungated experts; silu(h[:, :F]) * h[:, F:] for gated ones. h: (S, P * F).
at::Tensor hidden_from_projection(const at::Tensor& h, int64_t d_ff, Activation activation) {
  if (!is_gated(activation)) return activate(h, activation);
  return swiglu_hidden(h, d_ff);
}

// oneDNN (LibTorch's bf16 GEMMs on the CPU) compiles a kernel for every new GEMM shape, ~1.5 ms
// each here, and keeps 1024 of them; expert row counts change every step, so unpadded bf16
// expert GEMMs compiled about 190 kernels per step of the Brown MoE decoder (~300 ms of a
// ~1,000 ms step), and an early, unbalanced router spreads the counts over thousands of values.
// Each expert's rows are therefore padded with zero rows: to a multiple of 32 up to 256 rows,
// then of 1/8 of the count's power of two, so that any count lands on one of 8 sizes per
// doubling (about 80 sizes from 32 to 32k rows, 6 GEMMs each, compiled once) for at most 12.5%
// more rows (3-6% on average). A zero row adds nothing to any gradient (its upstream gradient is
// zero too) and its outputs are dropped. float32 GEMMs (OpenBLAS) and GPUs compile nothing per
// shape and run unpadded.
int64_t padded_count(int64_t count) {
  constexpr int64_t kSmallGranule = 32, kFineUpTo = 256;
  if (count <= 0) return 0;
  int64_t granule = kSmallGranule;
  if (count > kFineUpTo) {
    int64_t power = 1;
    while (power * 2 <= count) power *= 2;
    granule = power / 8;
  }
  return (count + granule - 1) / granule * granule;
}

bool pads_expert_rows(const at::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == at::kBFloat16;
}

// Each expert's padded count, and where each row goes in the padded layout (S) int64; no index
// when nothing needs padding.
struct PaddedLayout {
  std::vector<int64_t> counts;
  at::Tensor index;
  int64_t rows = 0;
};

PaddedLayout padded_layout(const std::vector<int64_t>& counts, const at::TensorOptions& options) {
  PaddedLayout layout;
  layout.counts.reserve(counts.size());
  bool needed = false;
  for (int64_t c : counts) {
    layout.counts.push_back(padded_count(c));
    needed = needed || layout.counts.back() != c;
  }
  layout.rows = total_rows(layout.counts);
  if (!needed) return layout;
  std::vector<int64_t> index;
  index.reserve(static_cast<size_t>(total_rows(counts)));
  int64_t start = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    for (int64_t i = 0; i < counts[e]; ++i) index.push_back(start + i);
    start += layout.counts[e];
  }
  layout.index = at::tensor(index, options.dtype(at::kLong));
  return layout;
}

// rows (S, ...) placed at `index` among `padded_rows` zero rows.
at::Tensor to_padded(const at::Tensor& rows, const at::Tensor& index, int64_t padded_rows) {
  return at::zeros({padded_rows, rows.size(1)}, rows.options()).index_copy_(0, index, rows);
}

struct GroupedFFNFunction : public torch::autograd::Function<GroupedFFNFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w_in,
                            const at::Tensor& w_out, const at::Tensor& b_in_or_empty,
                            const at::Tensor& b_out_or_empty, std::vector<int64_t> counts,
                            int64_t activation_id) {
    const auto activation = static_cast<Activation>(activation_id);
    const at::Tensor b_in = absent_if_placeholder(b_in_or_empty);
    const at::Tensor b_out = absent_if_placeholder(b_out_or_empty);
    const int64_t d_model = w_out.size(1), d_ff = w_out.size(2);
    at::Tensor xc = x.contiguous();
    at::Tensor index = at::empty({0}, x.options().dtype(at::kLong));  // none: rows unpadded
    if (pads_expert_rows(x)) {
      PaddedLayout layout = padded_layout(counts, x.options());
      counts = layout.counts;
      if (layout.index.defined()) {
        index = layout.index;
        xc = to_padded(xc, index, layout.rows);
      }
    }
    const int64_t rows = xc.size(0);  // S, padded
    at::Tensor h = at::empty({rows, w_in.size(1)}, x.options());  // (S, P * F)
    at::Tensor y = at::empty({rows, d_model}, x.options());
    // Each expert's whole chain at once, so that its projection and hidden activation are still
    // in cache for the next step of it (rather than each step over all rows in turn). The hidden
    // activation is recomputed in backward: one elementwise pass is cheaper than keeping another
    // (S, F) buffer alive between forward and backward.
    for_each_expert(xc, counts, [&](int64_t e, int64_t offset, int64_t n) {
      at::Tensor h_e = h.narrow(0, offset, n);
      expert_linear(xc.narrow(0, offset, n), w_in[e], expert_slice(b_in, e), h_e);
      at::Tensor y_e = y.narrow(0, offset, n);
      expert_linear(hidden_from_projection(h_e, d_ff, activation), w_out[e], expert_slice(b_out, e),
                    y_e);
    });
    ctx->save_for_backward({xc, w_in, w_out, h, index});
    ctx->saved_data["counts"] = counts;
    ctx->saved_data["activation"] = activation_id;
    ctx->saved_data["has_bias"] = b_in.defined();
    return index.numel() > 0 ? y.index_select(0, index) : y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w_in = saved[1], &w_out = saved[2], &h = saved[3];
    const at::Tensor& index = saved[4];
    const std::vector<int64_t> counts = ctx->saved_data["counts"].toIntVector();
    const auto activation = static_cast<Activation>(ctx->saved_data["activation"].toInt());
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const int64_t rows = x.size(0), d_ff = w_out.size(2);
    at::Tensor grad_y = grads[0].contiguous();  // (S, D)
    if (index.numel() > 0) grad_y = to_padded(grad_y, index, rows);

    // Every expert with rows overwrites its slice of the weight gradients; only the idle experts'
    // slices are zeroed (zero-filling whole (E, F, D) buffers is ~400 MB of writes per step at
    // E = 64).
    at::Tensor grad_w_in = at::empty_like(w_in), grad_w_out = at::empty_like(w_out);
    at::Tensor grad_b_in, grad_b_out;
    if (has_bias) {
      grad_b_in = at::empty({w_in.size(0), w_in.size(1)}, w_in.options());
      grad_b_out = at::empty({w_out.size(0), w_out.size(1)}, w_out.options());
    }
    for (size_t e = 0; e < counts.size(); ++e) {
      if (counts[e] > 0) continue;
      for (at::Tensor* grad : {&grad_w_in, &grad_w_out, &grad_b_in, &grad_b_out}) {
        if (grad->defined()) (*grad)[e].zero_();
      }
    }

    // Per expert, its whole chain at once (its rows' activations stay in cache):
    // grad_hidden_e = grad_y_e @ W_out_e, through the activation (recomputing hidden_e) into
    // grad_h_e (n, P * F), then grad_W_out_e = grad_y_e^T @ hidden_e,
    // grad_W_in_e = grad_h_e^T @ x_e and grad_x_e = grad_h_e @ W_in_e.
    at::Tensor grad_x = at::empty_like(x);
    for_each_expert(grad_y, counts, [&](int64_t e, int64_t offset, int64_t n) {
      const at::Tensor gy = grad_y.narrow(0, offset, n), h_e = h.narrow(0, offset, n);
      const at::Tensor grad_hidden = at::mm(gy, w_out[e]);
      at::Tensor hidden, grad_h;
      if (is_gated(activation)) {
        SwiGLUGradient swiglu = swiglu_backward(grad_hidden, h_e, d_ff);
        hidden = std::move(swiglu.hidden);
        grad_h = std::move(swiglu.grad_h);
      } else {
        hidden = hidden_from_projection(h_e, d_ff, activation);
        grad_h = activate_backward(grad_hidden, h_e, activation);
      }
      at::Tensor gw_out = grad_w_out[e];
      at::mm_out(gw_out, gy.t(), hidden);
      if (has_bias) grad_b_out[e].copy_(gy.sum(0));
      at::Tensor gw = grad_w_in[e];
      at::mm_out(gw, grad_h.t(), x.narrow(0, offset, n));
      at::Tensor gx = grad_x.narrow(0, offset, n);
      at::mm_out(gx, grad_h, w_in[e]);
      if (has_bias) grad_b_in[e].copy_(grad_h.sum(0));
    });
    if (index.numel() > 0) grad_x = grad_x.index_select(0, index);
    return {grad_x, grad_w_in, grad_w_out, grad_b_in, grad_b_out, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor grouped_ffn(const at::Tensor& x, const std::vector<int64_t>& counts,
                       const at::Tensor& w_in, const at::Tensor& w_out, const at::Tensor& b_in,
                       const at::Tensor& b_out, Activation activation) {
  TORCH_CHECK(w_in.dim() == 3 && w_out.dim() == 3, "grouped_ffn: w_in and w_out must be 3-D, got ",
              w_in.sizes(), " and ", w_out.sizes());
  const int64_t num_experts = w_out.size(0), d_model = w_out.size(1), d_ff = w_out.size(2);
  const int64_t projections = is_gated(activation) ? 2 : 1;
  TORCH_CHECK(w_in.sizes() == at::IntArrayRef({num_experts, projections * d_ff, d_model}),
              "grouped_ffn: w_in must be (E, ", projections, " * F, D) = (", num_experts, ", ",
              projections * d_ff, ", ", d_model, ") for ", to_string(activation), ", got ",
              w_in.sizes());
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == num_experts, "grouped_ffn: counts has ",
              counts.size(), " entries for ", num_experts, " experts");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d_model, "grouped_ffn: input must be (S, D=", d_model,
              "), got ", x.sizes());
  TORCH_CHECK(total_rows(counts) == x.size(0), "grouped_ffn: counts sum to ", total_rows(counts),
              " but the input has ", x.size(0), " rows");
  TORCH_CHECK(b_in.defined() == b_out.defined(), "grouped_ffn: give both biases or neither");
  return GroupedFFNFunction::apply(x, w_in, w_out, placeholder_if_absent(b_in, w_in),
                                   placeholder_if_absent(b_out, w_in), counts,
                                   static_cast<int64_t>(activation));
}

FFNExpertsImpl::FFNExpertsImpl(FFNExpertsOptions options_) : options(std::move(options_)) {
  reset();
}

void FFNExpertsImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.d_model() >= 1, "FFNExperts: d_model (", o.d_model(), ") must be >= 1");
  TORCH_CHECK(o.d_ff() >= 1, "FFNExperts: d_ff (", o.d_ff(), ") must be >= 1");
  TORCH_CHECK(o.num_experts() >= 1, "FFNExperts: num_experts (", o.num_experts(),
              ") must be >= 1");
  const int64_t e = o.num_experts(), d = o.d_model(), f = o.d_ff();
  const int64_t projections = is_gated(o.activation()) ? 2 : 1;
  w_in = register_parameter("w_in", at::empty({e, projections * f, d}));
  w_out = register_parameter("w_out", at::empty({e, d, f}));
  if (o.bias()) {
    b_in = register_parameter("b_in", at::empty({e, projections * f}));
    b_out = register_parameter("b_out", at::empty({e, d}));
  }
  reset_parameters();
}

void FFNExpertsImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double in_bound = 1.0 / std::sqrt(static_cast<double>(options.d_model()));
  const double hidden_bound = 1.0 / std::sqrt(static_cast<double>(options.d_ff()));
  w_in.uniform_(-in_bound, in_bound);
  w_out.uniform_(-hidden_bound, hidden_bound);
  if (b_in.defined()) b_in.uniform_(-in_bound, in_bound);
  if (b_out.defined()) b_out.uniform_(-hidden_bound, hidden_bound);
}

void FFNExpertsImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::nn::FFNExperts(num_experts=" << options.num_experts()
         << ", d_model=" << options.d_model() << ", d_ff=" << options.d_ff()
         << ", activation=" << to_string(options.activation()) << ")";
}

at::Tensor FFNExpertsImpl::gate_weight(int64_t expert) const {
  return w_in[expert].narrow(0, 0, options.d_ff());
}

at::Tensor FFNExpertsImpl::up_weight(int64_t expert) const {
  TORCH_CHECK(is_gated(options.activation()), "FFNExperts: ", to_string(options.activation()),
              " experts have no up projection");
  return w_in[expert].narrow(0, options.d_ff(), options.d_ff());
}

at::Tensor FFNExpertsImpl::forward(const at::Tensor& x, const std::vector<int64_t>& counts) {
  // The experts compute in the rows' type: bf16 rows (the MoE layer under autocast) take bf16
  // copies of the float32 weights, whose gradients flow back to float32 through the casts.
  const auto type = x.scalar_type();
  const auto cast = [type](const at::Tensor& t) {
    return t.defined() && t.scalar_type() != type ? t.to(type) : t;
  };
  return grouped_ffn(x, counts, cast(w_in), cast(w_out), cast(b_in), cast(b_out),
                     options.activation());
}

int64_t FFNExpertsImpl::macs_per_row() const {
  const int64_t projections = is_gated(options.activation()) ? 3 : 2;
  return projections * options.d_model() * options.d_ff();
}

namespace {

// Whether a module draws random numbers in training (dropout): such experts run one after
// another, so that they draw from the global generator in the same order every time.
bool draws_random_numbers(const torch::nn::Module& module) {
  for (const auto& child : module.modules(/*include_self=*/true)) {
    const std::string& name = child->name();
    if (name.find("Dropout") != std::string::npos || name.find("RReLU") != std::string::npos)
      return true;
  }
  return false;
}

// The entries of experts that had rows, in expert order.
template <typename T>
std::vector<T> of_busy_experts(const std::vector<T>& per_expert,
                               const std::vector<int64_t>& counts) {
  std::vector<T> busy;
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] > 0) busy.push_back(per_expert[e]);
  }
  return busy;
}

at::Tensor checked_output(at::Tensor y, size_t expert, int64_t rows) {
  TORCH_CHECK(y.dim() >= 1 && y.size(0) == rows, "ModuleExperts: expert ", expert, " returned ",
              y.sizes(), " for ", rows, " rows; an expert must keep the batch dimension");
  return y;
}

// Module experts side by side under autograd. Forward: each expert records its own graph on its
// own thread (grad mode on there), from its rows detached. Backward: each expert's graph runs
// backward on its own thread again; the parameters' gradients reach .grad (and their hooks run
// once) through those inner passes, as in a plain backward. The inputs: x, and when x needs no
// gradient (images) an empty `anchor` that does, so that the node joins the graph at all.
struct SideBySideExpertsFunction : public torch::autograd::Function<SideBySideExpertsFunction> {
  static at::Tensor forward(AutogradContext* ctx, std::vector<torch::nn::AnyModule>* experts,
                            const at::Tensor& x, const std::vector<int64_t>& counts,
                            const at::Tensor& anchor) {
    const std::vector<int64_t> offsets = expert_offsets(counts);
    const bool input_gradient = x.requires_grad();
    std::vector<at::Tensor> inputs(counts.size()), outputs(counts.size());
    run_side_by_side(counts, [&](int64_t e) {
      torch::AutoGradMode grad_mode(true);
      at::Tensor rows = x.narrow(0, offsets[e], counts[e]).detach();
      if (input_gradient) rows.requires_grad_();
      outputs[e] = checked_output((*experts)[e].forward<at::Tensor>(rows), e, counts[e]);
      inputs[e] = std::move(rows);
    });
    const std::vector<at::Tensor> busy_outputs = of_busy_experts(outputs, counts);
    ctx->saved_data["inputs"] = of_busy_experts(inputs, counts);
    ctx->saved_data["outputs"] = busy_outputs;
    ctx->saved_data["counts"] = of_busy_experts(counts, counts);
    ctx->saved_data["input_gradient"] = input_gradient;
    return at::cat(busy_outputs, 0);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "ModuleExperts: experts run side by side have no "
                "double backward (MOELAB_PARALLEL_EXPERT_ROWS=0 runs them one after another)");
    const std::vector<at::Tensor> inputs = ctx->saved_data["inputs"].toTensorVector();
    const std::vector<at::Tensor> outputs = ctx->saved_data["outputs"].toTensorVector();
    const std::vector<int64_t> counts = ctx->saved_data["counts"].toIntVector();
    const std::vector<int64_t> offsets = expert_offsets(counts);
    const at::Tensor& grad = grads[0];
    if (grad.defined()) {
      run_side_by_side(counts, [&](int64_t i) {
        torch::autograd::backward({outputs[i]}, {grad.narrow(0, offsets[i], counts[i])});
      });
    }
    at::Tensor grad_x;
    if (ctx->saved_data["input_gradient"].toBool() && grad.defined()) {
      std::vector<at::Tensor> grad_rows;
      for (const auto& rows : inputs) {
        grad_rows.push_back(rows.grad().defined() ? rows.grad() : at::zeros_like(rows));
      }
      grad_x = at::cat(grad_rows, 0);
    }
    return {at::Tensor(), grad_x, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

ModuleExpertsImpl::ModuleExpertsImpl(std::vector<torch::nn::AnyModule> experts)
    : experts_(std::move(experts)) {
  reset();
}

void ModuleExpertsImpl::reset() {
  TORCH_CHECK(!experts_.empty(), "ModuleExperts: needs at least one expert module");
  for (size_t e = 0; e < experts_.size(); ++e) {
    TORCH_CHECK(!experts_[e].is_empty(), "ModuleExperts: expert ", e, " is empty");
    register_module(std::to_string(e), experts_[e].ptr());
  }
  draws_random_numbers_ = std::any_of(
      experts_.begin(), experts_.end(),
      [](const torch::nn::AnyModule& expert) { return draws_random_numbers(*expert.ptr()); });
}

at::Tensor ModuleExpertsImpl::forward(const at::Tensor& x, const std::vector<int64_t>& counts) {
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == num_experts(), "ModuleExperts: counts has ",
              counts.size(), " entries for ", num_experts(), " experts");
  TORCH_CHECK(x.dim() >= 1 && total_rows(counts) == x.size(0), "ModuleExperts: counts sum to ",
              total_rows(counts), " but the input has ", x.dim() >= 1 ? x.size(0) : 0, " rows");
  last_rows_.assign(counts.size(), 0);
  if (x.size(0) == 0) return experts_[0].forward<at::Tensor>(x);
  at::Tensor y = suits_side_by_side(x, counts) && !(is_training() && draws_random_numbers_)
                     ? forward_side_by_side(x, counts)
                     : forward_in_turn(x, counts);
  last_rows_ = counts;
  return y;
}

at::Tensor ModuleExpertsImpl::forward_in_turn(const at::Tensor& x,
                                              const std::vector<int64_t>& counts) {
  std::vector<at::Tensor> outputs;
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t n = counts[e];
    if (n == 0) continue;
    outputs.push_back(
        checked_output(experts_[e].forward<at::Tensor>(x.narrow(0, offset, n)), e, n));
    offset += n;
  }
  return outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0);
}

at::Tensor ModuleExpertsImpl::forward_side_by_side(const at::Tensor& x,
                                                   const std::vector<int64_t>& counts) {
  bool parameter_gradient = false;
  for (const auto& p : parameters()) parameter_gradient = parameter_gradient || p.requires_grad();
  at::Tensor y;
  if (torch::GradMode::is_enabled() && (x.requires_grad() || parameter_gradient)) {
    // (LibTorch 1.13's Function takes no undefined tensor: an anchor needing no gradient instead.)
    const at::Tensor anchor = at::empty({0}).requires_grad_(!x.requires_grad());
    y = SideBySideExpertsFunction::apply(&experts_, x, counts, anchor);
  } else {
    const std::vector<int64_t> offsets = expert_offsets(counts);
    std::vector<at::Tensor> outputs(counts.size());
    run_side_by_side(counts, [&](int64_t e) {
      outputs[e] = checked_output(
          experts_[e].forward<at::Tensor>(x.narrow(0, offsets[e], counts[e])), e, counts[e]);
    });
    y = at::cat(of_busy_experts(outputs, counts), 0);
  }
  return y;
}

}  // namespace moelab::nn
