#include "moelab/dist/process_group.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/version.h>
#if defined(MOELAB_WITH_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <yaml-cpp/yaml.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>

#include "moelab/config/fields.h"
#include "moelab/train/stopping.h"
#include "moelab/util/errors.h"

namespace moelab::dist {

// What ProcessGroupGloo and ProcessGroupNCCL derive from: c10d::Backend since LibTorch 2.0.
#if TORCH_VERSION_MAJOR >= 2
using GroupBackend = c10d::Backend;
#else
using GroupBackend = c10d::ProcessGroup;
#endif

template <typename V>
void visit(V& v, ParallelOptions& o) {
  v.field("timeout", o.timeout());
  v.field("expert", o.expert());
  v.field("bucket_mb", o.bucket_mb());
}
MOELAB_DEFINE_OPTIONS_YAML(ParallelOptions)

void validate(const ParallelOptions& options, const std::string& where) {
  if (train::parse_duration(options.timeout(), where + ".timeout") <= 0) {
    throw ConfigError(where + ".timeout: must be longer than 0");
  }
  if (options.expert() < 1) throw ConfigError(where + ".expert: must be >= 1");
  if (!(options.bucket_mb() > 0)) throw ConfigError(where + ".bucket_mb: must be > 0");
}

namespace {

// The variable's integer value, or `fallback` if it is not set.
int env_int(const char* name, int fallback, bool* found = nullptr) {
  const char* value = std::getenv(name);
  if (found) *found = value != nullptr;
  if (!value) return fallback;
  try {
    size_t used = 0;
    const int parsed = std::stoi(value, &used);
    if (used == std::string(value).size()) return parsed;
  } catch (const std::exception&) {
  }
  throw ConfigError(fmt::format("environment variable {}='{}': expected an integer", name, value));
}

std::string env_string(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value && *value ? value : fallback;
}

std::chrono::milliseconds to_milliseconds(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

#if defined(MOELAB_WITH_NCCL)
// ProcessGroupNCCL::shutdown() (LibTorch 2.4+): without it the process warns at exit that the
// group was not destroyed.
template <typename Group, typename = void>
struct HasShutdown : std::false_type {};
template <typename Group>
struct HasShutdown<Group, std::void_t<decltype(std::declval<Group&>().shutdown())>> : std::true_type {};
template <typename Group>
void shut_down(Group& group) {
  if constexpr (HasShutdown<Group>::value) group.shutdown();
}
#endif

std::string alive_key(int rank) { return "moelab/alive/" + std::to_string(rank); }
std::string error_key(int rank) { return "moelab/error/" + std::to_string(rank); }

}  // namespace

LaunchEnvironment launch_environment() {
  LaunchEnvironment env;
  bool has_rank = false, has_slurm = false;
  env.rank = env_int("RANK", 0, &has_rank);
  if (has_rank) {
    env.launcher = "torchrun";
    env.world_size = env_int("WORLD_SIZE", 1);
    env.local_rank = env_int("LOCAL_RANK", env.rank);
  } else {
    env.rank = env_int("SLURM_PROCID", 0, &has_slurm);
    if (has_slurm) {
      env.launcher = "slurm";
      env.world_size = env_int("SLURM_NTASKS", 1);
      env.local_rank = env_int("SLURM_LOCALID", 0);
      if (env.world_size > 1 && !std::getenv("MASTER_ADDR")) {
        throw ConfigError("Slurm launch: MASTER_ADDR is not set; export it in the batch script, "
                          "e.g. MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)");
      }
    }
  }
  if (env.world_size < 1) throw ConfigError(fmt::format("WORLD_SIZE={}: must be >= 1", env.world_size));
  if (env.rank < 0 || env.rank >= env.world_size) {
    throw ConfigError(fmt::format("RANK={}: must be in [0, WORLD_SIZE={})", env.rank, env.world_size));
  }
  env.master_addr = env_string("MASTER_ADDR", env.master_addr);
  env.master_port = env_int("MASTER_PORT", env.master_port);
  if (env.master_port < 1 || env.master_port > 65535) {
    throw ConfigError(fmt::format("MASTER_PORT={}: must be in [1, 65535]", env.master_port));
  }
  return env;
}

struct ProcessGroupCollective::Impl {
  LaunchEnvironment env;
  double timeout_seconds = 60;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  // The channel of start_all_reduce_sum: a second group, so that gradient buckets started
  // during the backward pass never interleave with the main group's collectives (whose order,
  // as Gloo matches them, must be the same on every rank).
  c10::intrusive_ptr<c10d::ProcessGroupGloo> background;
#if defined(MOELAB_WITH_NCCL)
  // CUDA tensors travel through NCCL (c10d's own choice for "cpu:gloo,cuda:nccl"): the same two
  // channels, made at their first CUDA collective (NCCL builds its communicators lazily anyway).
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl, nccl_background;
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> make_nccl(const std::string& prefix) const {
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = to_milliseconds(timeout_seconds);
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>(prefix, store),
                                                       env.rank, env.world_size, options);
  }
#endif
  // The group for collectives on `tensor`'s device (`in_background`: start_all_reduce_sum's).
  c10::intrusive_ptr<GroupBackend> group_for(const at::Tensor& tensor, bool in_background) {
    if (tensor.is_cuda()) {
#if defined(MOELAB_WITH_NCCL)
      auto& made = in_background ? nccl_background : nccl;
      if (!made) made = make_nccl(in_background ? "moelab/nccl-background" : "moelab/nccl");
      return made;
#else
      TORCH_CHECK(false, "collectives on CUDA tensors need NCCL: build moelab against a LibTorch with CUDA");
#endif
    }
    if (in_background) return background;
    return group;
  }
  // Heartbeats: each rank bumps its counter in the store on a thread of its own (with a client
  // of its own: a store client is not shared between threads), so that after a failure the
  // survivors can tell which rank stopped.
  c10::intrusive_ptr<c10d::Store> heartbeat_store;
  std::thread heartbeat;
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  double heartbeat_seconds = 1;

  // The rendezvous client of each rank counts itself in (rank 0's store waits for all of them);
  // the heartbeat and diagnosis clients do not.
  c10::intrusive_ptr<c10d::Store> connect_store(bool server, bool rendezvous) const {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(env.master_port);
    options.isServer = server;
    options.numWorkers = rendezvous ? c10::optional<std::size_t>(env.world_size) : c10::nullopt;
    options.waitWorkers = rendezvous;
    options.timeout = to_milliseconds(timeout_seconds);
    return c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  }

  void run_heartbeat() {
    int64_t beat = 0;
    std::unique_lock<std::mutex> lock(mutex);
    while (!stopping) {
      try {
        const std::string text = std::to_string(++beat);
        heartbeat_store->set(alive_key(env.rank), std::vector<uint8_t>(text.begin(), text.end()));
      } catch (const std::exception&) {
        return;  // the store is gone (rank 0 ended): the main thread finds out on its own
      }
      wake.wait_for(lock, to_milliseconds(heartbeat_seconds));
    }
  }

  // Why a collective failed, as far as the store can tell: a rank's own error message, else the
  // ranks whose heartbeat stopped.
  std::string diagnose() {
    try {
      c10::intrusive_ptr<c10d::Store> probe = connect_store(false, false);
      probe->setTimeout(to_milliseconds(std::min(5.0, timeout_seconds)));
      for (int r = 0; r < env.world_size; ++r) {
        if (r != env.rank && probe->check({error_key(r)})) {
          const std::vector<uint8_t> message = probe->get(error_key(r));
          return fmt::format("rank {} failed: {}", r, std::string(message.begin(), message.end()));
        }
      }
      auto beats = [&] {
        std::vector<std::string> out;
        for (int r = 0; r < env.world_size; ++r) {
          if (!probe->check({alive_key(r)})) {
            out.emplace_back();
            continue;
          }
          const std::vector<uint8_t> value = probe->get(alive_key(r));
          out.emplace_back(value.begin(), value.end());
        }
        return out;
      };
      const std::vector<std::string> before = beats();
      std::this_thread::sleep_for(to_milliseconds(3 * heartbeat_seconds));
      const std::vector<std::string> after = beats();
      std::string lost;
      for (int r = 0; r < env.world_size; ++r) {
        if (r != env.rank && before[r] == after[r]) lost += (lost.empty() ? "" : ", ") + std::to_string(r);
      }
      if (!lost.empty()) return "lost rank " + lost + " (its process stopped without a message)";
      return "no rank reported an error";
    } catch (const std::exception&) {
      return "lost rank 0 (it hosts the rendezvous store at " + env.master_addr + ":" +
             std::to_string(env.master_port) + ")";
    }
  }

  [[noreturn]] void fail(const std::string& doing, const std::exception& e) {
    std::string cause = e.what();
    if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) cause = c10_error->what_without_backtrace();
    cause = cause.substr(0, cause.find('\n'));
    throw TrainingError(fmt::format("rank {} of {}: {} failed: {}; {}", env.rank, env.world_size,
                                    doing, diagnose(), cause));
  }

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& doing) {
    try {
      work->wait(to_milliseconds(timeout_seconds));
    } catch (const std::exception& e) {
      fail(doing, e);
    }
  }

  // Starts a sum over ranks of each tensor, concurrently, on the main or the background channel.
  std::vector<c10::intrusive_ptr<c10d::Work>> start_sums(std::vector<at::Tensor>& tensors, bool in_background) {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    try {
      for (auto& tensor : tensors) {
        TORCH_CHECK(tensor.is_contiguous(), "all-reduce: tensors must be contiguous");
        std::vector<at::Tensor> one{tensor};
        works.push_back(group_for(tensor, in_background)->allreduce(one));
      }
    } catch (const std::exception& e) {
      fail("all-reduce", e);
    }
    return works;
  }

  // Starts one collective (`start` returns its Work) and waits for it; a failure either way is
  // a TrainingError naming this rank and, where the store tells, the lost one.
  template <typename Start>
  void run(const std::string& doing, Start start) {
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = start();
    } catch (const std::exception& e) {
      fail(doing, e);
    }
    wait(work, doing);
  }
};

ProcessGroupCollective::ProcessGroupCollective(const LaunchEnvironment& env, double timeout_seconds)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.env = env;
  s.timeout_seconds = timeout_seconds;
  s.heartbeat_seconds = std::min(1.0, timeout_seconds / 10);
  try {
    s.store = s.connect_store(env.rank == 0, true);
    auto options = c10d::ProcessGroupGloo::Options::create(to_milliseconds(timeout_seconds));
    const std::string interface = env_string("GLOO_SOCKET_IFNAME", "");
    if (!interface.empty()) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    } else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost") {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    options->threads = 2;
    s.group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("moelab/gloo", s.store), env.rank, env.world_size, options);
    s.background = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("moelab/gloo-background", s.store), env.rank,
        env.world_size, options);
    s.heartbeat_store = s.connect_store(false, false);
  } catch (const std::exception& e) {
    std::string cause = e.what();
    if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) cause = c10_error->what_without_backtrace();
    throw TrainingError(fmt::format(
        "rank {} of {}: rendezvous at {}:{} failed: {} (HINT: every rank needs the same MASTER_ADDR, "
        "MASTER_PORT and WORLD_SIZE, and rank 0 must be running)",
        env.rank, env.world_size, env.master_addr, env.master_port, cause.substr(0, cause.find('\n'))));
  }
  s.heartbeat = std::thread([&s] { s.run_heartbeat(); });
}

ProcessGroupCollective::~ProcessGroupCollective() {
#if defined(MOELAB_WITH_NCCL)
  for (auto* group : {&impl_->nccl, &impl_->nccl_background}) {
    try {
      if (*group) shut_down(**group);
    } catch (const std::exception&) {
    }
  }
#endif
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  if (impl_->heartbeat.joinable()) impl_->heartbeat.join();
}

int ProcessGroupCollective::rank() const { return impl_->env.rank; }
int ProcessGroupCollective::world_size() const { return impl_->env.world_size; }

void ProcessGroupCollective::all_reduce_sum(std::vector<at::Tensor>& tensors) {
  for (auto& work : impl_->start_sums(tensors, /*in_background=*/false)) impl_->wait(work, "all-reduce");
}

namespace {
class PendingWorks : public PendingSum {
 public:
  PendingWorks(std::function<void(const c10::intrusive_ptr<c10d::Work>&)> wait,
               std::vector<c10::intrusive_ptr<c10d::Work>> works)
      : wait_(std::move(wait)), works_(std::move(works)) {}
  void wait() override {
    for (auto& work : works_) wait_(work);
    works_.clear();
  }

 private:
  std::function<void(const c10::intrusive_ptr<c10d::Work>&)> wait_;
  std::vector<c10::intrusive_ptr<c10d::Work>> works_;
};
}  // namespace

std::unique_ptr<PendingSum> ProcessGroupCollective::start_all_reduce_sum(std::vector<at::Tensor> tensors) {
  std::vector<c10::intrusive_ptr<c10d::Work>> works = impl_->start_sums(tensors, /*in_background=*/true);
  Impl* impl = impl_.get();
  return std::make_unique<PendingWorks>(
      [impl](const c10::intrusive_ptr<c10d::Work>& work) { impl->wait(work, "all-reduce"); }, std::move(works));
}

std::vector<std::string> ProcessGroupCollective::all_gather_text(const std::string& text) {
  const int n = impl_->env.world_size;
  // Lengths first, then the texts padded to the longest.
  std::vector<at::Tensor> length{at::tensor({static_cast<int64_t>(text.size())}, at::kLong)};
  std::vector<std::vector<at::Tensor>> lengths(1);
  for (int r = 0; r < n; ++r) lengths[0].push_back(at::empty({1}, at::kLong));
  impl_->run("all-gather", [&] { return impl_->group->allgather(lengths, length); });
  int64_t longest = 0;
  for (const auto& l : lengths[0]) longest = std::max(longest, l.item<int64_t>());
  at::Tensor mine = at::zeros({std::max<int64_t>(longest, 1)}, at::kByte);
  std::memcpy(mine.data_ptr<uint8_t>(), text.data(), text.size());
  std::vector<at::Tensor> input{mine};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < n; ++r) outputs[0].push_back(at::empty_like(mine));
  impl_->run("all-gather", [&] { return impl_->group->allgather(outputs, input); });
  std::vector<std::string> texts;
  for (int r = 0; r < n; ++r) {
    const auto* bytes = reinterpret_cast<const char*>(outputs[0][r].data_ptr<uint8_t>());
    texts.emplace_back(bytes, static_cast<size_t>(lengths[0][r].item<int64_t>()));
  }
  return texts;
}

at::Tensor ProcessGroupCollective::all_to_all_rows(const at::Tensor& input,
                                                   const std::vector<int64_t>& send_counts,
                                                   const std::vector<int64_t>& recv_counts) {
  const int n = impl_->env.world_size;
  TORCH_CHECK(static_cast<int>(send_counts.size()) == n && static_cast<int>(recv_counts.size()) == n,
              "all_to_all_rows: one count per rank expected (", n, ")");
  int64_t sent = 0, received = 0;
  for (int r = 0; r < n; ++r) {
    sent += send_counts[r];
    received += recv_counts[r];
  }
  TORCH_CHECK(input.dim() >= 1 && input.size(0) == sent, "all_to_all_rows: input has ",
              input.dim() >= 1 ? input.size(0) : 0, " rows, the send counts add up to ", sent);
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape[0] = received;
  at::Tensor output = at::empty(out_shape, input.options());
  at::Tensor in = input.contiguous();
  // Gloo's all-to-all counts in rows of dimension 0.
  std::vector<int64_t> out_counts = recv_counts, in_counts = send_counts;
  impl_->run("all-to-all", [&] {
    return impl_->group_for(in, false)->alltoall_base(output, in, out_counts, in_counts);
  });
  return output;
}

void ProcessGroupCollective::report_failure(const std::string& message) noexcept {
  try {
    impl_->heartbeat_store->set(error_key(impl_->env.rank), std::vector<uint8_t>(message.begin(), message.end()));
  } catch (...) {
  }
}

void ProcessGroupCollective::barrier() {
  impl_->run("barrier", [&] { return impl_->group->barrier(); });
}

}  // namespace moelab::dist
