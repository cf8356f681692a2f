// sd_notify against a real AF_UNIX datagram socket standing in for systemd: the datagram arrives
// byte for byte (path and abstract sockets, and through $NOTIFY_SOCKET), an unset variable is a
// no-op, and a bad or unreachable socket is an error that names NOTIFY_SOCKET.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>

#include "common/sd_notify.hpp"
#include "tests/support/test_support.hpp"

using evald::testing::TempDir;
using namespace std::chrono_literals;

namespace {

// What systemd does on its side: a bound datagram socket that receives the notifications.
class NotifyListener {
 public:
  // `name` is a path, or "@name" for an abstract socket.
  explicit NotifyListener(const std::string& name) : name_(name) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    REQUIRE(name.size() < sizeof(address.sun_path));
    std::memcpy(address.sun_path, name.data(), name.size());
    const bool abstract = name.front() == '@';
    if (abstract) address.sun_path[0] = '\0';
    const auto length =
        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (abstract ? 0 : 1));
    REQUIRE(::bind(fd_, reinterpret_cast<const sockaddr*>(&address), length) == 0);
  }
  ~NotifyListener() { ::close(fd_); }
  NotifyListener(const NotifyListener&) = delete;
  NotifyListener& operator=(const NotifyListener&) = delete;

  // The next datagram, or nullopt if none arrives within `timeout`.
  std::optional<std::string> receive(std::chrono::milliseconds timeout) const {
    pollfd item{fd_, POLLIN, 0};
    if (::poll(&item, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
    std::array<char, 4096> buffer{};
    const auto n = ::recv(fd_, buffer.data(), buffer.size(), 0);
    if (n < 0) return std::nullopt;
    return std::string(buffer.data(), static_cast<size_t>(n));
  }

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  int fd_ = -1;
};

// Sets an environment variable for one test and restores the old value afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// Abstract names are machine-wide (per network namespace): make them unique per run.
std::string unique_abstract_name() {
  std::random_device random;
  return "@evald-test-notify-" + std::to_string(::getpid()) + "-" + std::to_string(random());
}

}  // namespace

TEST_CASE("sd_notify_to delivers the state to a socket path", "[unit]") {
  TempDir dir("evald-sd-notify");
  NotifyListener listener((dir.path() / "notify").string());

  REQUIRE(evald::sd_notify_to(listener.name(), "READY=1").ok());
  CHECK(listener.receive(5s) == std::optional<std::string>("READY=1"));

  // Several assignments in one datagram, as systemd expects them: newline-separated.
  REQUIRE(evald::sd_notify_to(listener.name(), "STOPPING=1\nSTATUS=draining 2 shards").ok());
  CHECK(listener.receive(5s) == std::optional<std::string>("STOPPING=1\nSTATUS=draining 2 shards"));
}

TEST_CASE("sd_notify_to delivers the state to an abstract socket", "[unit]") {
  NotifyListener listener(unique_abstract_name());
  REQUIRE(evald::sd_notify_to(listener.name(), "READY=1\nSTATUS=serving").ok());
  CHECK(listener.receive(5s) == std::optional<std::string>("READY=1\nSTATUS=serving"));
}

TEST_CASE("sd_notify reads the socket from NOTIFY_SOCKET", "[unit]") {
  TempDir dir("evald-sd-notify");
  NotifyListener listener((dir.path() / "notify").string());

  SECTION("set: the datagram arrives") {
    ScopedEnv env("NOTIFY_SOCKET", listener.name().c_str());
    const auto status = evald::sd_notify("READY=1");
    INFO((status.ok() ? "" : status.error().message));
    REQUIRE(status.ok());
    CHECK(listener.receive(5s) == std::optional<std::string>("READY=1"));
  }
  SECTION("unset or empty: nothing is sent and it is not an error") {
    {
      ScopedEnv env("NOTIFY_SOCKET", nullptr);
      CHECK(evald::sd_notify("READY=1").ok());
    }
    {
      ScopedEnv env("NOTIFY_SOCKET", "");
      CHECK(evald::sd_notify("READY=1").ok());
    }
    // Nothing can be on its way: sendto() on a datagram socket has finished when it returns.
    CHECK_FALSE(listener.receive(0ms).has_value());
  }
}

TEST_CASE("sd_notify reports a bad or unreachable NOTIFY_SOCKET as an error", "[unit]") {
  TempDir dir("evald-sd-notify");

  SECTION("relative path") {
    ScopedEnv env("NOTIFY_SOCKET", "run/notify");
    const auto status = evald::sd_notify("READY=1");
    REQUIRE_FALSE(status.ok());
    CHECK(status.error().message ==
          "NOTIFY_SOCKET: 'run/notify' is neither an absolute path nor an abstract socket (@name)");
  }
  SECTION("'@' alone names nothing") {
    const auto status = evald::sd_notify_to("@", "READY=1");
    REQUIRE_FALSE(status.ok());
    CHECK(status.error().message == "NOTIFY_SOCKET: '@' names no socket");
  }
  SECTION("a path longer than sockaddr_un can hold") {
    const std::string path = "/" + std::string(200, 'x');
    const auto status = evald::sd_notify_to(path, "READY=1");
    REQUIRE_FALSE(status.ok());
    CHECK(status.error().message == "NOTIFY_SOCKET: '" + path + "' is longer than 107 bytes");
  }
  SECTION("nobody listens at the path") {
    const auto path = (dir.path() / "missing").string();
    const auto status = evald::sd_notify_to(path, "READY=1");
    REQUIRE_FALSE(status.ok());
    CHECK(status.error().message ==
          "NOTIFY_SOCKET: cannot send to '" + path + "': No such file or directory");
  }
}
