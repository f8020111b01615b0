#include "moelab/dist/launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <thread>

#include "moelab/util/errors.h"

extern char** environ;

namespace moelab::dist {

int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw TrainingError(std::string("launch: socket: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ::close(fd);
    throw TrainingError(std::string("launch: no free local port: ") + std::strerror(errno));
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

namespace {

volatile sig_atomic_t terminate_requested = 0;
void on_terminate(int) { terminate_requested = 1; }

struct Child {
  int rank = 0;
  pid_t pid = -1;
  int output = -1;      // read end of the pipe of its stdout and stderr (ranks > 0)
  std::string partial;  // an unfinished line
  bool running = true;
  int status = 0;
};

// This process's environment with the launch variables replaced.
std::vector<std::string> child_environment(const std::map<std::string, std::string>& launch_vars,
                                           const std::vector<std::string>& extra) {
  std::map<std::string, std::string> vars;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    const size_t eq = entry.find('=');
    if (eq != std::string::npos) vars[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  // A launcher of our own must not pass on the Slurm or outer torchrun place of this process.
  for (const char* name : {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "GROUP_RANK",
                           "LOCAL_WORLD_SIZE"}) {
    vars.erase(name);
  }
  for (const auto& [name, value] : launch_vars) vars[name] = value;
  for (const auto& entry : extra) {
    const size_t eq = entry.find('=');
    if (eq != std::string::npos) vars[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  std::vector<std::string> out;
  for (const auto& [name, value] : vars) out.push_back(name + "=" + value);
  return out;
}

void print_lines(std::ostream& out, Child& child, const char* data, size_t size, bool flush_partial) {
  child.partial.append(data, size);
  size_t start = 0;
  for (size_t newline; (newline = child.partial.find('\n', start)) != std::string::npos; start = newline + 1) {
    out << "[rank " << child.rank << "] " << child.partial.substr(start, newline - start) << "\n";
  }
  child.partial.erase(0, start);
  if (flush_partial && !child.partial.empty()) {
    out << "[rank " << child.rank << "] " << child.partial << "\n";
    child.partial.clear();
  }
  out.flush();
}

}  // namespace

int launch_local(const std::vector<std::string>& argv, const LocalLaunch& launch) {
  if (launch.nproc < 1) throw ConfigError("--nproc: must be >= 1, got " + std::to_string(launch.nproc));
  if (argv.empty()) throw ConfigError("launch: no command");
  std::ostream& out = launch.output ? *launch.output : std::cerr;
  const int port = launch.master_port > 0 ? launch.master_port : free_local_port();
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = launch.threads > 0 ? launch.threads
                                         : std::max(1, static_cast<int>(cores) / launch.nproc);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  // Ctrl-C reaches every process of the terminal's group: the ranks stop cleanly on their own;
  // the launcher waits for them.
  // SIGTERM sent to the launcher alone is passed on to every rank.
  struct sigaction ignore{}, forward{}, old_int{}, old_term{};
  ignore.sa_handler = SIG_IGN;
  forward.sa_handler = on_terminate;
  terminate_requested = 0;
  sigaction(SIGINT, &ignore, &old_int);
  sigaction(SIGTERM, &forward, &old_term);

  std::vector<Child> children(launch.nproc);
  for (int rank = 0; rank < launch.nproc; ++rank) {
    std::map<std::string, std::string> vars{{"RANK", std::to_string(rank)},
                                            {"LOCAL_RANK", std::to_string(rank)},
                                            {"WORLD_SIZE", std::to_string(launch.nproc)},
                                            {"LOCAL_WORLD_SIZE", std::to_string(launch.nproc)},
                                            {"MASTER_ADDR", "127.0.0.1"},
                                            {"MASTER_PORT", std::to_string(port)}};
    if (!std::getenv("OMP_NUM_THREADS")) vars["OMP_NUM_THREADS"] = std::to_string(threads);
    const std::vector<std::string> environment = child_environment(vars, launch.environment);
    std::vector<char*> envp;
    for (const auto& e : environment) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    int pipe_fds[2] = {-1, -1};
    const bool piped = rank > 0 || !launch.rank0_direct;
    if (piped && ::pipe2(pipe_fds, O_CLOEXEC) != 0) {
      throw TrainingError(std::string("launch: pipe: ") + std::strerror(errno));
    }
    const pid_t pid = ::fork();
    if (pid < 0) throw TrainingError(std::string("launch: fork: ") + std::strerror(errno));
    if (pid == 0) {  // the child: only async-signal-safe calls until execve
      struct sigaction restore{};
      restore.sa_handler = SIG_DFL;
      sigaction(SIGINT, &restore, nullptr);
      sigaction(SIGTERM, &restore, nullptr);
      if (piped) {
        ::dup2(pipe_fds[1], STDOUT_FILENO);
        ::dup2(pipe_fds[1], STDERR_FILENO);
      }
      ::execve(args[0], args.data(), envp.data());
      const char message[] = "launch: cannot execute the command\n";
      ssize_t ignored = ::write(STDERR_FILENO, message, sizeof(message) - 1);
      (void)ignored;
      ::_exit(127);
    }
    children[rank].rank = rank;
    children[rank].pid = pid;
    if (piped) {
      ::close(pipe_fds[1]);
      children[rank].output = pipe_fds[0];
    }
  }

  using Clock = std::chrono::steady_clock;
  int first_failure = 0;
  Clock::time_point deadline = Clock::time_point::max();
  size_t running = children.size();
  while (running > 0) {
    std::vector<pollfd> fds;
    std::vector<Child*> owners;
    for (auto& child : children) {
      if (child.output >= 0) {
        fds.push_back({child.output, POLLIN, 0});
        owners.push_back(&child);
      }
    }
    ::poll(fds.data(), fds.size(), 100);
    if (terminate_requested) {
      terminate_requested = 0;
      for (auto& child : children) {
        if (child.running) ::kill(child.pid, SIGTERM);
      }
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buffer[4096];
      const ssize_t n = ::read(fds[i].fd, buffer, sizeof(buffer));
      if (n > 0) {
        print_lines(out, *owners[i], buffer, static_cast<size_t>(n), false);
      } else {
        print_lines(out, *owners[i], "", 0, true);
        ::close(owners[i]->output);
        owners[i]->output = -1;
      }
    }
    for (auto& child : children) {
      if (!child.running) continue;
      int status = 0;
      if (::waitpid(child.pid, &status, WNOHANG) != child.pid) continue;
      child.running = false;
      --running;
      child.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (child.status != 0 && first_failure == 0) {
        first_failure = child.status;
        deadline = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(launch.grace_seconds * 1000));
        out << "moelab: rank " << child.rank << " exited with status " << child.status
            << "; the other ranks stop within " << launch.grace_seconds << " s" << std::endl;
      }
    }
    if (Clock::now() > deadline) {
      for (auto& child : children) {
        if (child.running) ::kill(child.pid, SIGKILL);
      }
      deadline = Clock::time_point::max();
    }
  }
  for (auto& child : children) {
    if (child.output >= 0) {
      char buffer[4096];
      for (ssize_t n; (n = ::read(child.output, buffer, sizeof(buffer))) > 0;) {
        print_lines(out, child, buffer, static_cast<size_t>(n), false);
      }
      print_lines(out, child, "", 0, true);
      ::close(child.output);
    }
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return first_failure;
}

}  // namespace moelab::dist
