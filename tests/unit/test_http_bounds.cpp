// HttpServer's bounds: connection caps with eviction of idle connections, the header timeout
// and the shared body budget (common/http_server.hpp). Real sockets on 127.0.0.1.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/http_client.hpp"
#include "common/http_server.hpp"
#include "tests/support/test_support.hpp"

namespace {

using namespace std::chrono_literals;

struct Socket {
  int fd = -1;
  explicit Socket(const std::string& address) {
    const auto [host, port] = evald::split_host_port(address);
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in peer{};
    peer.sin_family = AF_INET;
    peer.sin_port = htons(port);
    ::inet_pton(AF_INET, host.c_str(), &peer.sin_addr);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&peer), sizeof peer) != 0) {
      throw std::runtime_error("connect failed");
    }
    timeval timeout{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  }
  Socket(const Socket&) = delete;
  ~Socket() { ::close(fd); }
  void send(const std::string& text) const {
    REQUIRE(::send(fd, text.data(), text.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(text.size()));
  }
  // Everything until the server closes (or 5 s pass).
  std::string read_all() const {
    std::string out;
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }
};

struct Refusals {
  std::mutex mutex;
  std::vector<std::string> reasons;
  size_t count(const std::string& reason) {
    std::lock_guard lock(mutex);
    return static_cast<size_t>(std::count(reasons.begin(), reasons.end(), reason));
  }
};

evald::HttpHandler ok_handler() {
  return [](evald::HttpRequest request, evald::HttpRespond respond) {
    respond(evald::HttpResponse{200, "application/json",
                                "{\"bytes\":" + std::to_string(request.body.size()) + "}"});
  };
}

evald::HttpUrl url_of(const evald::HttpServer& server) {
  auto url = evald::parse_http_url("http://" + server.local_address());
  REQUIRE(url.ok());
  return url.value();
}

}  // namespace

TEST_CASE("http bounds: idle connections over the per-address cap are evicted for new ones",
          "[unit][http]") {
  Refusals refusals;
  evald::HttpServerOptions options;
  options.max_connections_per_address = 3;
  options.on_refused = [&](const std::string& reason) {
    std::lock_guard lock(refusals.mutex);
    refusals.reasons.push_back(reason);
  };
  evald::HttpServer server("127.0.0.1:0", options, ok_handler());
  server.start();
  std::vector<std::unique_ptr<Socket>> idle;
  for (int i = 0; i < 10; ++i) idle.push_back(std::make_unique<Socket>(server.local_address()));
  // A real client is still served, every time.
  for (int i = 0; i < 3; ++i) {
    const auto response = evald::http_request(url_of(server), "GET", "/x");
    REQUIRE(response.ok());
    CHECK(response->status == 200);
  }
  CHECK(evald::testing::wait_until([&] { return refusals.count("idle_evicted") >= 7; }, 2s));
  // The oldest idle connection was the first to go: the server closed it.
  CHECK(idle.front()->read_all().empty());
}

TEST_CASE("http bounds: a connection busy with a request is not evicted, the new one is refused",
          "[unit][http]") {
  Refusals refusals;
  evald::HttpServerOptions options;
  options.max_connections = 1;
  options.on_refused = [&](const std::string& reason) {
    std::lock_guard lock(refusals.mutex);
    refusals.reasons.push_back(reason);
  };
  std::mutex held_mutex;
  std::vector<evald::HttpRespond> held;
  evald::HttpServer server("127.0.0.1:0", options,
                           [&](evald::HttpRequest, evald::HttpRespond respond) {
                             std::lock_guard lock(held_mutex);
                             held.push_back(std::move(respond));
                           });
  server.start();
  Socket busy(server.local_address());
  busy.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
  for (int i = 0; i < 200; ++i) {
    {
      std::lock_guard lock(held_mutex);
      if (!held.empty()) break;
    }
    std::this_thread::sleep_for(10ms);
  }
  Socket late(server.local_address());
  const auto refused = late.read_all();
  CHECK(refused.rfind("HTTP/1.1 503", 0) == 0);
  CHECK(evald::testing::wait_until([&] { return refusals.count("connection_limit") == 1; }, 2s));
  {
    std::lock_guard lock(held_mutex);
    REQUIRE(held.size() == 1);
    held.front()(evald::HttpResponse{200, "application/json", "{}"});
  }
  char buffer[256];
  const ssize_t n = ::recv(busy.fd, buffer, sizeof buffer, 0);
  REQUIRE(n > 0);
  CHECK(std::string(buffer, static_cast<size_t>(n)).rfind("HTTP/1.1 200", 0) == 0);
}

TEST_CASE("http bounds: a header that does not complete in time closes the connection",
          "[unit][http]") {
  Refusals refusals;
  evald::HttpServerOptions options;
  options.header_timeout = 300ms;
  options.on_refused = [&](const std::string& reason) {
    std::lock_guard lock(refusals.mutex);
    refusals.reasons.push_back(reason);
  };
  evald::HttpServer server("127.0.0.1:0", options, ok_handler());
  server.start();
  Socket slow(server.local_address());
  slow.send("GET / HTTP/1.1\r\nHost: x\r\n");  // and never the blank line
  const auto started = std::chrono::steady_clock::now();
  CHECK(slow.read_all().empty());
  CHECK(std::chrono::steady_clock::now() - started < 3s);
  // The server counts the refusal as it closes the socket; the client may see the close first.
  CHECK(evald::testing::wait_until([&] { return refusals.count("header_timeout") == 1; }, 2s));
}

TEST_CASE("http bounds: bodies being read share one budget, over it is 503", "[unit][http]") {
  Refusals refusals;
  evald::HttpServerOptions options;
  options.max_body_bytes = 1000;
  options.body_budget_bytes = 1500;
  options.on_refused = [&](const std::string& reason) {
    std::lock_guard lock(refusals.mutex);
    refusals.reasons.push_back(reason);
  };
  evald::HttpServer server("127.0.0.1:0", options, ok_handler());
  server.start();
  // One client announces 1000 bytes and sends them slowly: it holds 1000 of the budget.
  Socket holder(server.local_address());
  holder.send("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + std::string(10, 'x'));
  std::this_thread::sleep_for(200ms);
  const auto refused = evald::http_request(url_of(server), "POST", "/b", std::string(800, 'y'));
  REQUIRE(refused.ok());
  CHECK(refused->status == 503);
  CHECK(evald::testing::wait_until([&] { return refusals.count("body_budget") == 1; }, 2s));
  // A small body still fits.
  const auto small = evald::http_request(url_of(server), "POST", "/c", std::string(400, 'z'));
  REQUIRE(small.ok());
  CHECK(small->status == 200);
  // Once the holder's body is complete, its reservation is released.
  holder.send(std::string(990, 'x'));
  std::this_thread::sleep_for(200ms);
  const auto after = evald::http_request(url_of(server), "POST", "/d", std::string(800, 'y'));
  REQUIRE(after.ok());
  CHECK(after->status == 200);
}
