#include "moelab/models/vision.h"

#include <torch/torch.h>

#include <cmath>

#include "moelab/config/fields.h"
#include "moelab/nn/conv_layout.h"
#include "moelab/nn/options_yaml.h"
#include "moelab/nn/pooling.h"

namespace moelab::models {

template <typename V>
void visit(V& v, ConvNetOptions& o) {
  v.field("in_channels", o.in_channels());
  v.field("image_size", o.image_size());
  v.field("num_classes", o.num_classes());
  v.field("width", o.width());
  v.field("depth", o.depth());
  v.field("hidden", o.hidden());
  v.field("width_multiplier", o.width_multiplier());
}

template <typename V>
void visit(V& v, VisionMoEOptions& o) {
  // The image and class sizes are the model's; the expert group holds the CNN's shape.
  v.field("in_channels", o.expert().in_channels());
  v.field("image_size", o.expert().image_size());
  v.field("num_classes", o.expert().num_classes());
  v.field("num_experts", o.num_experts());
  v.field("router_width", o.router_width());
  v.group("expert", [&](V& sub) {
    sub.field("width", o.expert().width());
    sub.field("depth", o.expert().depth());
    sub.field("hidden", o.expert().hidden());
  });
  v.nested("router", o.router());
  v.nested("aux", o.aux());
  v.nested("dispatch", o.dispatch());
}

template <typename V>
void visit(V& v, ResNet18Options& o) {
  v.field("in_channels", o.in_channels());
  v.field("image_size", o.image_size());
  v.field("num_classes", o.num_classes());
  v.field("width", o.width());
}

MOELAB_DEFINE_OPTIONS_YAML(ConvNetOptions)
MOELAB_DEFINE_OPTIONS_YAML(VisionMoEOptions)
MOELAB_DEFINE_OPTIONS_YAML(ResNet18Options)

namespace {

using nn::count_parameters;

// Side of a conv3x3 (padding 1) output with this stride.
int64_t conv3x3_out(int64_t size, int64_t stride) { return (size - 1) / stride + 1; }

at::Tensor as_images(const at::Tensor& x, int64_t channels, int64_t size) {
  if (x.dim() == 4) return x;
  TORCH_CHECK(x.dim() == 2 && x.size(1) == channels * size * size, "expected images (n, ",
              channels, ", ", size, ", ", size, ") or (n, ", channels * size * size, "), got ",
              x.sizes());
  return x.view({x.size(0), channels, size, size});
}

void check_images(const at::Tensor& x, int64_t channels, int64_t size, const char* model) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == channels && x.size(2) == size && x.size(3) == size,
              model, ": expected images (B, ", channels, ", ", size, ", ", size, "), got ",
              x.sizes());
}

}  // namespace

// ---- ConvNet ---------------------------------------------------------------------------------

int64_t stage_channels(const ConvNetOptions& o, int64_t stage) {
  return std::max<int64_t>(1, std::llround(o.width() * o.width_multiplier() * std::pow(2.0, stage)));
}

int64_t hidden_units(const ConvNetOptions& o) {
  return o.hidden() > 0 ? std::max<int64_t>(1, std::llround(o.hidden() * o.width_multiplier())) : 0;
}

namespace {
int64_t final_side(const ConvNetOptions& o) {
  int64_t side = o.image_size();
  for (int64_t s = 0; s < o.depth(); ++s) side /= 2;
  return side;
}
}  // namespace

int64_t convnet_parameters(const ConvNetOptions& o) {
  int64_t params = 0, in = o.in_channels();
  for (int64_t s = 0; s < o.depth(); ++s) {
    const int64_t out = stage_channels(o, s);
    params += out * in * 9 + out;
    in = out;
  }
  const int64_t features = in * final_side(o) * final_side(o), hidden = hidden_units(o);
  if (hidden > 0) return params + features * hidden + hidden + hidden * o.num_classes() + o.num_classes();
  return params + features * o.num_classes() + o.num_classes();
}

double convnet_activations(const ConvNetOptions& o) {
  double side = static_cast<double>(o.image_size());
  double floats = static_cast<double>(o.in_channels()) * side * side;
  for (int64_t s = 0; s < o.depth(); ++s) {
    const double out = static_cast<double>(stage_channels(o, s));
    floats += 2 * out * side * side + out * (side / 2) * (side / 2);  // conv, ReLU, pool outputs
    side /= 2;
  }
  return floats + 2 * static_cast<double>(hidden_units(o)) + static_cast<double>(o.num_classes());
}

int64_t convnet_flops(const ConvNetOptions& o) {
  int64_t flops = 0, in = o.in_channels(), side = o.image_size();
  for (int64_t s = 0; s < o.depth(); ++s) {
    const int64_t out = stage_channels(o, s);
    flops += 2 * in * out * 9 * side * side;
    in = out;
    side /= 2;
  }
  const int64_t features = in * side * side, hidden = hidden_units(o);
  if (hidden > 0) return flops + 2 * features * hidden + 2 * hidden * o.num_classes();
  return flops + 2 * features * o.num_classes();
}

ConvNetImpl::ConvNetImpl(ConvNetOptions options_) : options(std::move(options_)) { reset(); }

void ConvNetImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.in_channels() >= 1 && o.num_classes() >= 2 && o.width() >= 1 && o.depth() >= 1 &&
                  o.hidden() >= 0 && o.width_multiplier() > 0,
              "ConvNet: in_channels, width, depth >= 1, num_classes >= 2, hidden >= 0 and "
              "width_multiplier > 0 required");
  TORCH_CHECK(final_side(o) >= 1, "ConvNet: ", o.depth(), " pooling stages leave nothing of a ",
              o.image_size(), "-pixel image");
  features = register_module("features", torch::nn::Sequential());
  int64_t in = o.in_channels();
  for (int64_t s = 0; s < o.depth(); ++s) {
    const int64_t out = stage_channels(o, s);
    features->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1)));
    features->push_back(torch::nn::ReLU());
    features->push_back(torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(2)));
    in = out;
  }
  classifier = register_module("classifier", torch::nn::Sequential());
  classifier->push_back(torch::nn::Flatten());
  const int64_t flat = in * final_side(o) * final_side(o), hidden = hidden_units(o);
  if (hidden > 0) {
    classifier->push_back(torch::nn::Linear(flat, hidden));
    classifier->push_back(torch::nn::ReLU());
    classifier->push_back(torch::nn::Linear(hidden, o.num_classes()));
  } else {
    classifier->push_back(torch::nn::Linear(flat, o.num_classes()));
  }
}

at::Tensor ConvNetImpl::forward(const at::Tensor& images) {
  // features holds conv, ReLU, max-pool per stage (their names are the checkpoints'); each stage
  // runs as one fused operation (nn/pooling.h), the first one whole, later ones as a convolution
  // in its fastest layout and the ReLU and pooling in one pass.
  at::Tensor h = as_images(images, options.in_channels(), options.image_size());
  for (int64_t s = 0; s < options.depth(); ++s) {
    const auto& conv = features->at<torch::nn::Conv2dImpl>(3 * s);
    h = nn::conv3x3_relu_max_pool2x2(h, conv.weight, conv.bias);
  }
  return classifier->forward(h);
}

// ---- router ----------------------------------------------------------------------------------

RouterCNNImpl::RouterCNNImpl(int64_t in_channels_, int64_t image_size_, int64_t width_,
                             int64_t num_experts_)
    : in_channels(in_channels_), image_size(image_size_), width(width_), num_experts(num_experts_) {
  reset();
}

void RouterCNNImpl::reset() {
  TORCH_CHECK(width >= 1 && num_experts >= 1, "RouterCNN: width and num_experts must be >= 1");
  conv1 = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, width, 3).stride(2).padding(1)));
  conv2 = register_module(
      "conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(width, 2 * width, 3).stride(2).padding(1)));
  score = register_module("score", torch::nn::Linear(2 * width, num_experts));
}

at::Tensor RouterCNNImpl::forward(const at::Tensor& images) {
  at::Tensor h = as_images(images, in_channels, image_size);
  h = torch::relu(conv1->forward(nn::in_fast_conv_layout(h, width)));
  h = torch::relu(conv2->forward(nn::in_fast_conv_layout(h, 2 * width)));
  return score->forward(h.mean({2, 3}));
}

int64_t RouterCNNImpl::flops() const {
  const int64_t s1 = conv3x3_out(image_size, 2), s2 = conv3x3_out(s1, 2);
  return 2 * in_channels * width * 9 * s1 * s1 + 2 * width * 2 * width * 9 * s2 * s2 +
         2 * 2 * width * num_experts;
}

// ---- MoE of CNN experts ----------------------------------------------------------------------

VisionMoEImpl::VisionMoEImpl(VisionMoEOptions options_) : options(std::move(options_)) {
  const ConvNetOptions& e = options.expert();
  const int64_t d = e.in_channels() * e.image_size() * e.image_size();
  TORCH_CHECK(options.num_experts() >= 1, "VisionMoE: num_experts must be >= 1");
  router_network = RouterCNN(e.in_channels(), e.image_size(), options.router_width(),
                             options.num_experts());
  std::vector<torch::nn::AnyModule> modules;
  for (int64_t i = 0; i < options.num_experts(); ++i) {
    experts.push_back(ConvNet(e));
    modules.emplace_back(experts.back());
  }
  nn::MoELayerOptions layer(d, /*d_ff=*/1, options.num_experts());
  layer.router(options.router()).aux(options.aux()).dispatch(options.dispatch());
  layer.router().d_model(d).num_experts(options.num_experts());
  moe = register_module("moe", nn::MoELayer(layer, modules, torch::nn::AnyModule(router_network)));
}

ModelOutput VisionMoEImpl::forward(const data::Batch& batch) {
  const at::Tensor& images = batch.at(data::kInputs);
  const ConvNetOptions& e = options.expert();
  check_images(images, e.in_channels(), e.image_size(), "VisionMoE");
  nn::MoEOutput routed = moe->forward(images.reshape({images.size(0), -1}),
                                      batch.get(data::kPaddingMask), batch.get(data::kTokenIds));
  ModelOutput out;
  out.outputs = routed.output;
  out.aux_loss = routed.aux_loss;
  out.moe_layers.push_back(std::move(routed));
  return out;
}

const std::vector<int64_t>& VisionMoEImpl::last_rows_per_expert() const {
  return moe->module_experts->last_rows_per_expert();
}

ModelCost VisionMoEImpl::cost() const {
  ModelCost cost;
  cost.parameters_total = count_parameters(*this);
  const int64_t expert_params = convnet_parameters(options.expert());
  const int64_t router_params = count_parameters(*router_network);
  const int64_t k = options.router().top_k();
  cost.parameters_active = router_params + k * expert_params;
  cost.flops_per_sample = router_network->flops() + k * convnet_flops(options.expert());
  return cost;
}

// ---- dense baseline --------------------------------------------------------------------------

DenseCNNImpl::DenseCNNImpl(ConvNetOptions options_) : options(std::move(options_)) {
  net = register_module("net", ConvNet(options));
}

ModelOutput DenseCNNImpl::forward(const data::Batch& batch) {
  const at::Tensor& images = batch.at(data::kInputs);
  check_images(images, options.in_channels(), options.image_size(), "DenseCNN");
  ModelOutput out;
  out.outputs = net->forward(images);
  out.aux_loss = at::zeros({}, out.outputs.options());
  return out;
}

ModelCost DenseCNNImpl::cost() const {
  ModelCost cost;
  cost.parameters_total = cost.parameters_active = convnet_parameters(options);
  cost.flops_per_sample = convnet_flops(options);
  return cost;
}

double match_width_multiplier(const ConvNetOptions& base, MatchTarget what, int64_t target) {
  auto measure = [&](double m) {
    ConvNetOptions o = base;
    o.width_multiplier(m);
    return what == MatchTarget::kFlops ? convnet_flops(o) : convnet_parameters(o);
  };
  // The count grows with the multiplier (up to rounding): bisect, then keep the closest.
  double lo = 1e-3, hi = 1.0;
  while (measure(hi) < target && hi < 1e4) hi *= 2;
  for (int i = 0; i < 60; ++i) {
    const double mid = 0.5 * (lo + hi);
    (measure(mid) < target ? lo : hi) = mid;
  }
  return std::llabs(measure(lo) - target) < std::llabs(measure(hi) - target) ? lo : hi;
}

// ---- ResNet-18 -------------------------------------------------------------------------------

namespace {

class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride) {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3)
                                                            .stride(stride).padding(1).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(out));
    conv2 = register_module(
        "conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(out, out, 3).padding(1).bias(false)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(out));
    if (stride != 1 || in != out) {
      shortcut = register_module(
          "shortcut",
          torch::nn::Sequential(
              torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)),
              torch::nn::BatchNorm2d(out)));
    }
  }
  at::Tensor forward(const at::Tensor& input) {
    const at::Tensor x = nn::in_fast_conv_layout(input, conv1->options.out_channels());
    at::Tensor h = torch::relu(bn1->forward(conv1->forward(x)));
    h = bn2->forward(conv2->forward(nn::in_fast_conv_layout(h, conv2->options.out_channels())));
    return torch::relu(h + (shortcut ? shortcut->forward(x) : x));
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Sequential shortcut{nullptr};
};
TORCH_MODULE(BasicBlock);

}  // namespace

double resnet18_parameters(const ResNet18Options& o) {
  const double w = static_cast<double>(o.width());
  double in = w, params = 9 * static_cast<double>(o.in_channels()) * w + 2 * w;
  for (int stage = 0; stage < 4; ++stage) {
    const double out = w * static_cast<double>(1 << stage);
    params += 9 * in * out + 9 * out * out + 4 * out;     // first block: two convs and their norms
    if (stage > 0) params += in * out + 2 * out;          // projection shortcut
    params += 2 * (9 * out * out + 2 * out);              // second block
    in = out;
  }
  return params + in * static_cast<double>(o.num_classes()) + static_cast<double>(o.num_classes());
}

double resnet18_activations(const ResNet18Options& o) {
  const double w = static_cast<double>(o.width());
  double side = static_cast<double>(o.image_size());
  double floats = static_cast<double>(o.in_channels()) * side * side + 3 * w * side * side;
  for (int stage = 0; stage < 4; ++stage) {
    if (stage > 0) side = std::ceil(side / 2);
    const double out = w * static_cast<double>(1 << stage);
    floats += 2 * (2 * 3 + 1) * out * side * side;  // two blocks: two conv-norm-ReLU, a sum each
  }
  return floats;
}

ResNet18Impl::ResNet18Impl(ResNet18Options options_) : options(std::move(options_)) {
  const int64_t w = options.width();
  TORCH_CHECK(w >= 1 && options.num_classes() >= 2, "ResNet18: width >= 1 and num_classes >= 2");
  body = register_module("body", torch::nn::Sequential());
  body->push_back(torch::nn::Conv2d(
      torch::nn::Conv2dOptions(options.in_channels(), w, 3).padding(1).bias(false)));
  body->push_back(torch::nn::BatchNorm2d(w));
  body->push_back(torch::nn::ReLU());
  int64_t in = w;
  for (int64_t stage = 0; stage < 4; ++stage) {
    const int64_t out = w << stage;
    body->push_back(BasicBlock(in, out, stage == 0 ? 1 : 2));
    body->push_back(BasicBlock(out, out, 1));
    in = out;
  }
  head = register_module("head", torch::nn::Linear(in, options.num_classes()));
}

ModelOutput ResNet18Impl::forward(const data::Batch& batch) {
  const at::Tensor& images = batch.at(data::kInputs);
  check_images(images, options.in_channels(), options.image_size(), "ResNet18");
  ModelOutput out;
  out.outputs = head->forward(body->forward(images).mean({2, 3}));
  out.aux_loss = at::zeros({}, out.outputs.options());
  return out;
}

ModelCost ResNet18Impl::cost() const {
  ModelCost cost;
  cost.parameters_total = cost.parameters_active = count_parameters(*this);
  const int64_t w = options.width();
  int64_t side = options.image_size();
  int64_t flops = 2 * options.in_channels() * w * 9 * side * side, in = w;
  for (int64_t stage = 0; stage < 4; ++stage) {
    const int64_t out = w << stage, stride = stage == 0 ? 1 : 2;
    const int64_t s = conv3x3_out(side, stride);
    flops += 2 * in * out * 9 * s * s + 2 * out * out * 9 * s * s;  // first block
    if (stride != 1 || in != out) flops += 2 * in * out * s * s;   // projection shortcut
    flops += 2 * (2 * out * out * 9 * s * s);                      // second block
    side = s;
    in = out;
  }
  cost.flops_per_sample = flops + 2 * in * options.num_classes();
  return cost;
}

nlohmann::json convnet_sizes(const ConvNetOptions& options) {
  std::vector<int64_t> channels;
  for (int64_t s = 0; s < options.depth(); ++s) channels.push_back(stage_channels(options, s));
  return {{"stage_channels", channels}, {"hidden_units", hidden_units(options)}};
}

nlohmann::json VisionMoEImpl::resolved_sizes() const {
  return {{"expert", convnet_sizes(options.expert())}};
}

nlohmann::json DenseCNNImpl::resolved_sizes() const { return convnet_sizes(options); }

ConvNetOptions dense_baseline(const VisionMoEOptions& moe, MatchTarget what) {
  const ModelCost cost = VisionMoEImpl(moe).cost();
  ConvNetOptions dense = moe.expert();
  dense.width_multiplier(1.0);
  dense.width_multiplier(match_width_multiplier(
      dense, what, what == MatchTarget::kFlops ? cost.flops_per_sample : cost.parameters_total));
  return dense;
}

}  // namespace moelab::models
