// HttpConnection (a client connection kept open across requests) against a scripted HTTP/1.1
// server on a real loopback socket: one connection for many requests, a new one after
// `Connection: close`, a transparent second try when the server had closed the kept connection,
// errors for an unreachable server and a timeout, and a fresh connection after a failure.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "common/http_connection.hpp"

namespace {

using namespace std::chrono_literals;

// How the scripted server treats each request.
enum class Script {
  kKeepAlive,      // answer and keep the connection
  kCloseAfter,     // answer with "Connection: close", then close
  kCloseSilently,  // answer as if keeping the connection, then close it (an idle timeout)
  kNeverAnswer,    // read the request, answer nothing
};

// One connection at a time, on its own thread; answers "request=N connection=C body=BODY".
class ScriptedServer {
 public:
  explicit ScriptedServer(Script script) : script_(script) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(::listen(listener_, 16) == 0);
    socklen_t length = sizeof address;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~ScriptedServer() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }
  ScriptedServer(const ScriptedServer&) = delete;
  ScriptedServer& operator=(const ScriptedServer&) = delete;

  evald::HttpUrl url() const {
    evald::HttpUrl url;
    url.host = "127.0.0.1";
    url.port = port_;
    url.base_path = "/v1";
    return url;
  }
  void set_script(Script script) { script_ = script; }
  int connections() const { return connections_; }
  int requests() const { return requests_; }

 private:
  // Waits for `fd` to be readable, polling the stop flag; false on stop.
  bool wait_readable(int fd) {
    while (!stop_) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) > 0) return true;
    }
    return false;
  }

  void serve() {
    while (wait_readable(listener_)) {
      const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      ++connections_;
      handle(fd);
      ::close(fd);
    }
  }

  // Serves requests on one connection until it is closed by either side.
  void handle(int fd) {
    std::string buffer;
    while (true) {
      size_t header_end = std::string::npos;
      while ((header_end = buffer.find("\r\n\r\n")) == std::string::npos) {
        if (!read_more(fd, buffer)) return;
      }
      size_t body_length = 0;
      const auto at = buffer.find("Content-Length: ");
      if (at != std::string::npos && at < header_end) {
        body_length = std::stoul(buffer.substr(at + 16));
      }
      while (buffer.size() < header_end + 4 + body_length) {
        if (!read_more(fd, buffer)) return;
      }
      const std::string body = buffer.substr(header_end + 4, body_length);
      buffer.erase(0, header_end + 4 + body_length);
      const int number = ++requests_;
      const Script script = script_;
      if (script == Script::kNeverAnswer) {
        while (wait_readable(fd)) {
          if (!read_more(fd, buffer)) return;
        }
        return;
      }
      const std::string content = "request=" + std::to_string(number) +
                                  " connection=" + std::to_string(connections_) + " body=" + body;
      std::string response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                             std::to_string(content.size()) + "\r\n";
      if (script == Script::kCloseAfter) response += "Connection: close\r\n";
      response += "\r\n" + content;
      if (::send(fd, response.data(), response.size(), MSG_NOSIGNAL) < 0) return;
      if (script != Script::kKeepAlive) return;
    }
  }

  bool read_more(int fd, std::string& buffer) {
    if (!wait_readable(fd)) return false;
    char chunk[4096];
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buffer.append(chunk, static_cast<size_t>(n));
    return true;
  }

  std::atomic<Script> script_;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("HttpConnection sends many requests on one kept connection", "[unit][http]") {
  ScriptedServer server(Script::kKeepAlive);
  evald::HttpConnection connection(server.url());
  for (int i = 1; i <= 20; ++i) {
    const std::string body = "{\"i\": " + std::to_string(i) + "}";
    auto response = connection.request("POST", "/completions", body, 5s);
    REQUIRE(response.ok());
    CHECK(response->status == 200);
    CHECK(response->body == "request=" + std::to_string(i) + " connection=1 body=" + body);
  }
  CHECK(connection.connects() == 1);
  CHECK(server.connections() == 1);
}

TEST_CASE("HttpConnection opens a new connection after Connection: close", "[unit][http]") {
  ScriptedServer server(Script::kCloseAfter);
  evald::HttpConnection connection(server.url());
  for (int i = 1; i <= 3; ++i) {
    auto response = connection.request("GET", "/models", "", 5s);
    REQUIRE(response.ok());
    CHECK(response->body ==
          "request=" + std::to_string(i) + " connection=" + std::to_string(i) + " body=");
  }
  CHECK(connection.connects() == 3);
  CHECK(server.requests() == 3);
}

TEST_CASE("HttpConnection sends again on a new connection when the kept one was closed",
          "[unit][http]") {
  ScriptedServer server(Script::kCloseSilently);
  evald::HttpConnection connection(server.url());
  for (int i = 1; i <= 3; ++i) {
    // Let the server's close arrive first, as an idle timeout's would.
    if (i > 1) std::this_thread::sleep_for(50ms);
    auto response = connection.request("POST", "/completions", "x", 5s);
    REQUIRE(response.ok());
    CHECK(response->body ==
          "request=" + std::to_string(i) + " connection=" + std::to_string(i) + " body=x");
  }
  CHECK(connection.connects() == 3);
  CHECK(server.requests() == 3);  // the request on a closed connection never reached it
}

TEST_CASE("HttpConnection: an unreachable server and a timeout are errors, then it reconnects",
          "[unit][http]") {
  evald::HttpUrl nowhere;
  {
    ScriptedServer closed(Script::kKeepAlive);
    nowhere = closed.url();
  }  // the port is closed now
  evald::HttpConnection unreachable(nowhere);
  auto refused = unreachable.request("GET", "/models", "", 2s);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.error().message,
             Catch::Contains("cannot reach http://127.0.0.1:" + std::to_string(nowhere.port)));
  CHECK(unreachable.connects() == 0);

  ScriptedServer server(Script::kNeverAnswer);
  evald::HttpConnection connection(server.url());
  const auto started = std::chrono::steady_clock::now();
  auto timed_out = connection.request("POST", "/completions", "slow", 300ms);
  REQUIRE_FALSE(timed_out.ok());
  CHECK_THAT(timed_out.error().message, Catch::Contains("timed out after 300 ms"));
  CHECK(std::chrono::steady_clock::now() - started < 3s);

  // The connection in an unknown state is not reused: the next request gets a fresh one.
  server.set_script(Script::kKeepAlive);
  auto answered = connection.request("POST", "/completions", "again", 5s);
  REQUIRE(answered.ok());
  CHECK(answered->body == "request=2 connection=2 body=again");
  CHECK(connection.connects() == 2);
}
