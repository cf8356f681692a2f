#include "common/sd_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

namespace evald {
namespace {

// Closes the socket on every return path.
class SocketFd {
 public:
  explicit SocketFd(int fd) : fd_(fd) {}
  ~SocketFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  SocketFd(const SocketFd&) = delete;
  SocketFd& operator=(const SocketFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

Error socket_error(std::string_view socket, const char* what, int error_number) {
  return make_error("NOTIFY_SOCKET: " + std::string(what) + " '" + std::string(socket) +
                    "': " + std::strerror(error_number));
}

}  // namespace

Status sd_notify(std::string_view state) {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  if (socket == nullptr || *socket == '\0') return Ok{};
  return sd_notify_to(socket, state);
}

Status sd_notify_to(std::string_view socket, std::string_view state) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  // Only the two forms systemd itself hands out; anything else is a misconfiguration that should
  // be reported rather than guessed at (a relative path would depend on the cwd).
  const bool abstract = !socket.empty() && socket.front() == '@';
  if (!abstract && (socket.empty() || socket.front() != '/')) {
    return make_error("NOTIFY_SOCKET: '" + std::string(socket) +
                      "' is neither an absolute path nor an abstract socket (@name)");
  }
  if (socket.size() < 2) {
    return make_error("NOTIFY_SOCKET: '" + std::string(socket) + "' names no socket");
  }
  // A path needs room for its terminating NUL; an abstract name replaces '@' with a NUL byte and
  // is not terminated.
  if (socket.size() + (abstract ? 0 : 1) > sizeof(address.sun_path)) {
    return make_error("NOTIFY_SOCKET: '" + std::string(socket) + "' is longer than " +
                      std::to_string(sizeof(address.sun_path) - 1) + " bytes");
  }
  std::memcpy(address.sun_path, socket.data(), socket.size());
  if (abstract) address.sun_path[0] = '\0';
  // For an abstract socket every byte of the length is part of the name, so it must be exact.
  const auto length =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket.size() + (abstract ? 0 : 1));

  SocketFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return socket_error(socket, "cannot create a socket for", errno);
  ssize_t sent = -1;
  do {
    // The address is a sockaddr_un; the sockets API takes it as the generic sockaddr.
    sent = ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
                    reinterpret_cast<const sockaddr*>(&address), length);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return socket_error(socket, "cannot send to", errno);
  // A datagram is sent whole or not at all; a short count would mean a truncated message.
  if (static_cast<size_t>(sent) != state.size()) {
    return make_error("NOTIFY_SOCKET: short send to '" + std::string(socket) + "'");
  }
  return Ok{};
}

}  // namespace evald
