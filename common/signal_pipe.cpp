#include "common/signal_pipe.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cassert>
#include <csignal>
#include <cstdlib>
#include <system_error>

namespace evald {
namespace {

// Reached only from the signal handler; see the header for why it must be process-wide.
std::atomic<int> g_signal_write_fd{
    -1};  // NOLINT(cppcoreguidelines-avoid-non-const-global-variables)

extern "C" void on_signal(int signo) {
  const int fd = g_signal_write_fd.load();
  if (fd >= 0) {
    const auto byte = static_cast<unsigned char>(signo);
    [[maybe_unused]] auto n = ::write(fd, &byte, 1);
  }
}

}  // namespace

SignalPipe::SignalPipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw std::system_error(errno, std::generic_category(), "pipe2");
  }
  read_fd_ = fds[0];
  write_fd_ = fds[1];
  int expected = -1;
  if (!g_signal_write_fd.compare_exchange_strong(expected, write_fd_)) {
    assert(false && "only one SignalPipe may exist at a time");
    std::abort();
  }
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGTERM, &action, nullptr);
  ::sigaction(SIGINT, &action, nullptr);
}

SignalPipe::~SignalPipe() {
  ::signal(SIGTERM, SIG_DFL);
  ::signal(SIGINT, SIG_DFL);
  g_signal_write_fd.store(-1);
  ::close(read_fd_);
  ::close(write_fd_);
}

int SignalPipe::take() const {
  unsigned char byte = 0;
  if (::read(read_fd_, &byte, 1) == 1) return byte;
  return 0;
}

}  // namespace evald
