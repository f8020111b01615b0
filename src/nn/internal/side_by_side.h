// Experts side by side on OpenMP's threads (LibTorch's own), one expert per thread at a time.
//
// Inside the parallel region each thread sets its OpenMP thread count to 1 before any work, so
// that everything it calls plans for one thread: oneDNN plans a kernel for the thread count it
// sees when it creates it, but inside a parallel region runs it on one thread, and its
// convolution weight-gradient kernel then waits forever at a barrier for the second thread
// (LibTorch 1.13, oneDNN 2.6: tests/nn/experts_test.cpp trains CNN experts side by side to keep
// it so). LibTorch resets a thread's count on the thread's first parallel call, so that call is
// made first. OpenMP's threads also start with default thread-local state: the caller's (grad
// mode, autocast) goes with the work.
#pragma once

#include <functional>

namespace moelab::nn::internal {

/// Calls work() once on each of LibTorch's threads at once, the caller's included, each
/// planning its calls for one thread; returns when all have returned (an exception in one is
/// rethrown). work() shares the work out itself (a queue it drains). Inside a parallel region
/// already, work() runs once on the caller.
void run_on_threads(const std::function<void()>& work);

}  // namespace moelab::nn::internal
