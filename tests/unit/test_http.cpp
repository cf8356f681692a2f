// HttpServer and http_request over real loopback sockets: late answers from another thread,
// body limits, malformed requests, keep-alive, unreachable servers and a prompt stop().
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "common/http_client.hpp"
#include "common/http_server.hpp"
#include "tests/support/test_support.hpp"

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using nlohmann::json;
using namespace std::chrono_literals;

// Answers queued requests from its own thread after a short delay, the way the coordinator
// answers from its core thread after a store commit.
class DelayedResponder {
 public:
  DelayedResponder() : thread_([this] { loop(); }) {}
  ~DelayedResponder() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    wakeup_.notify_all();
    thread_.join();
  }
  DelayedResponder(const DelayedResponder&) = delete;
  DelayedResponder& operator=(const DelayedResponder&) = delete;

  evald::HttpHandler handler() {
    return [this](evald::HttpRequest request, evald::HttpRespond respond) {
      std::lock_guard lock(mutex_);
      queue_.emplace_back(std::move(request), std::move(respond));
      wakeup_.notify_all();
    };
  }

  std::thread::id thread_id() const { return thread_.get_id(); }

 private:
  void loop() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wakeup_.wait(lock, [this] { return done_ || !queue_.empty(); });
      if (queue_.empty()) return;
      auto [request, respond] = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      std::this_thread::sleep_for(20ms);  // stands for the work the real core thread does
      json echo{{"method", request.method}, {"target", request.target}, {"body", request.body}};
      respond(evald::HttpResponse{200, "application/json", echo.dump()});
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable wakeup_;
  std::deque<std::pair<evald::HttpRequest, evald::HttpRespond>> queue_;
  bool done_ = false;
  std::thread thread_;  // last, so it starts after the members it uses exist
};

evald::HttpUrl url_of(const evald::HttpServer& server) {
  auto url = evald::parse_http_url("http://" + server.local_address());
  REQUIRE(url.ok());
  return url.value();
}

tcp::socket connect_raw(net::io_context& io, const evald::HttpServer& server) {
  const auto [host, port] = evald::split_host_port(server.local_address());
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(net::ip::make_address(host), port));
  return socket;
}

// A port that nothing listens on: bind one, note it, close it.
unsigned short closed_port() {
  net::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return acceptor.local_endpoint().port();
}

}  // namespace

TEST_CASE("a request is answered late from another thread", "[unit][http]") {
  DelayedResponder responder;
  evald::HttpServer server("127.0.0.1:0", 1024 * 1024, responder.handler());
  server.start();
  const auto url = url_of(server);
  CHECK(url.port != 0);

  auto response = evald::http_request(url, "POST", "/v1/echo?x=1", R"({"a":1})");
  REQUIRE(response.ok());
  CHECK(response->status == 200);
  CHECK(response->content_type == "application/json");
  const auto body = json::parse(response->body);
  CHECK(body["method"] == "POST");
  CHECK(body["target"] == "/v1/echo?x=1");
  CHECK(body["body"] == R"({"a":1})");

  // The base path of the URL is put in front of every target.
  auto prefixed = evald::parse_http_url("http://" + server.local_address() + "/api/");
  REQUIRE(prefixed.ok());
  CHECK(prefixed->base_path == "/api");
  auto get = evald::http_request(prefixed.value(), "GET", "/v1/campaigns");
  REQUIRE(get.ok());
  CHECK(json::parse(get->body)["target"] == "/api/v1/campaigns");
}

TEST_CASE("local_address reports the port actually bound", "[unit][http]") {
  evald::HttpServer server("127.0.0.1:0", 1024, [](evald::HttpRequest, evald::HttpRespond r) {
    r(evald::HttpResponse{});
  });
  const auto [host, port] = evald::split_host_port(server.local_address());
  CHECK(host == "127.0.0.1");
  CHECK(port != 0);
}

TEST_CASE("a body over the limit gets 413 with a JSON error", "[unit][http]") {
  int handled = 0;
  evald::HttpServer server("127.0.0.1:0", 1024,
                           [&handled](evald::HttpRequest, evald::HttpRespond respond) {
                             ++handled;  // the server thread is the only caller
                             respond(evald::HttpResponse{200, "application/json", "{}"});
                           });
  server.start();
  const auto url = url_of(server);

  // 8 MiB: far more than the socket buffers hold, so the server must answer before reading it.
  const std::string big(8 * 1024 * 1024, 'x');
  auto refused = evald::http_request(url, "POST", "/v1/campaigns", big);
  REQUIRE(refused.ok());
  CHECK(refused->status == 413);
  CHECK(refused->content_type == "application/json");
  CHECK(json::parse(refused->body) == json{{"error", "request body exceeds 1024 bytes"}});

  // Exactly at the limit is fine, and the handler only ever saw that one.
  auto accepted = evald::http_request(url, "POST", "/v1/campaigns", std::string(1024, 'y'));
  REQUIRE(accepted.ok());
  CHECK(accepted->status == 200);
  server.stop();
  CHECK(handled == 1);
}

TEST_CASE("a malformed request gets 400 with a JSON error", "[unit][http]") {
  evald::HttpServer server("127.0.0.1:0", 1024, [](evald::HttpRequest, evald::HttpRespond r) {
    r(evald::HttpResponse{});
  });
  server.start();
  net::io_context io;
  auto socket = connect_raw(io, server);
  net::write(socket, net::buffer(std::string("NOT HTTP AT ALL\r\n\r\n")));
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(socket, buffer, response);
  CHECK(response.result_int() == 400);
  CHECK(response[http::field::content_type] == "application/json");
  const auto body = json::parse(response.body());
  REQUIRE(body.contains("error"));
  CHECK(body["error"].get<std::string>().rfind("malformed HTTP request", 0) == 0);
}

TEST_CASE("keep-alive serves two requests on one connection", "[unit][http]") {
  DelayedResponder responder;
  evald::HttpServer server("127.0.0.1:0", 1024, responder.handler());
  server.start();
  net::io_context io;
  auto socket = connect_raw(io, server);
  beast::flat_buffer buffer;
  for (const std::string target : {"/first", "/second"}) {
    http::request<http::string_body> request{http::verb::get, target, 11};
    request.set(http::field::host, "test");
    request.keep_alive(true);
    http::write(socket, request);
    http::response<http::string_body> response;
    http::read(socket, buffer, response);
    CHECK(response.result_int() == 200);
    CHECK(response[http::field::server] == "evald");
    CHECK(response[http::field::content_length] == std::to_string(response.body().size()));
    CHECK(response.keep_alive());
    CHECK(json::parse(response.body())["target"] == target);
  }
}

TEST_CASE("Expect: 100-continue gets the go-ahead, or 413 before the body", "[unit][http]") {
  DelayedResponder responder;
  evald::HttpServer server("127.0.0.1:0", 1024, responder.handler());
  server.start();
  net::io_context io;
  auto socket = connect_raw(io, server);
  beast::flat_buffer buffer;
  net::write(socket, net::buffer(std::string("POST /v1/campaigns HTTP/1.1\r\nHost: x\r\n"
                                             "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")));
  http::response<http::empty_body> go_ahead;
  http::read(socket, buffer, go_ahead);
  CHECK(go_ahead.result() == http::status::continue_);
  net::write(socket, net::buffer(std::string("hello")));
  http::response<http::string_body> response;
  http::read(socket, buffer, response);
  CHECK(response.result_int() == 200);
  CHECK(json::parse(response.body())["body"] == "hello");

  auto refused_socket = connect_raw(io, server);
  net::write(refused_socket,
             net::buffer(std::string("POST /v1/campaigns HTTP/1.1\r\nHost: x\r\n"
                                     "Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n")));
  beast::flat_buffer refused_buffer;
  http::response<http::string_body> refused;
  http::read(refused_socket, refused_buffer, refused);
  CHECK(refused.result_int() == 413);
  CHECK_FALSE(refused.keep_alive());
}

TEST_CASE("a handler that throws gets 500, and the server keeps serving", "[unit][http]") {
  evald::HttpServer server("127.0.0.1:0", 1024,
                           [](evald::HttpRequest request, evald::HttpRespond respond) {
                             if (request.target == "/throw") throw std::runtime_error("boom");
                             respond(evald::HttpResponse{204, "application/json", ""});
                           });
  server.start();
  const auto url = url_of(server);
  auto failed = evald::http_request(url, "GET", "/throw");
  REQUIRE(failed.ok());
  CHECK(failed->status == 500);
  CHECK(json::parse(failed->body) == json{{"error", "internal error"}});
  auto fine = evald::http_request(url, "GET", "/ok");
  REQUIRE(fine.ok());
  CHECK(fine->status == 204);
}

TEST_CASE("a closed port is an error value naming the address", "[unit][http]") {
  const auto port = closed_port();
  auto url = evald::parse_http_url("http://127.0.0.1:" + std::to_string(port));
  REQUIRE(url.ok());
  auto response = evald::http_request(url.value(), "GET", "/healthz", "", 5s);
  REQUIRE_FALSE(response.ok());
  CHECK(response.error().message ==
        "cannot reach http://127.0.0.1:" + std::to_string(port) + ": Connection refused");
}

TEST_CASE("a server that never answers times out", "[unit][http]") {
  std::mutex mutex;
  std::optional<evald::HttpRespond> held;  // answered only after the client gave up
  evald::HttpServer server("127.0.0.1:0", 1024,
                           [&](evald::HttpRequest, evald::HttpRespond respond) {
                             std::lock_guard lock(mutex);
                             held = std::move(respond);
                           });
  server.start();
  const auto url = url_of(server);
  auto response = evald::http_request(url, "GET", "/slow", "", 200ms);
  REQUIRE_FALSE(response.ok());
  CHECK(response.error().message ==
        "timed out after 200 ms waiting for http://" + server.local_address());
  REQUIRE(evald::testing::wait_until(
      [&] {
        std::lock_guard lock(mutex);
        return held.has_value();
      },
      5s));
  server.stop();
  // Answering after the client left and the server stopped is dropped, not a crash.
  (*held)(evald::HttpResponse{});
}

TEST_CASE("stop() returns promptly with an idle connection open", "[unit][http]") {
  evald::HttpServer server("127.0.0.1:0", 1024, [](evald::HttpRequest, evald::HttpRespond r) {
    r(evald::HttpResponse{});
  });
  server.start();
  net::io_context io;
  // One finished request first, so the server has surely accepted the connection: one still in
  // the listen backlog would be reset by the kernel, not closed by the server.
  auto idle = connect_raw(io, server);
  http::request<http::string_body> request{http::verb::get, "/", 11};
  request.set(http::field::host, "test");
  http::write(idle, request);
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(idle, buffer, response);
  REQUIRE(response.keep_alive());
  auto half_sent = connect_raw(io, server);
  net::write(half_sent, net::buffer(std::string("GET / HTTP/1.1\r\nHost: x\r\n")));

  const auto started = std::chrono::steady_clock::now();
  server.stop();
  CHECK(std::chrono::steady_clock::now() - started < 2s);

  // The server closed its side: the client sees end of stream, not a hang.
  char byte = 0;
  beast::error_code ec;
  idle.read_some(net::buffer(&byte, 1), ec);
  CHECK(ec == net::error::eof);
  server.stop();  // idempotent
}

TEST_CASE("binding a taken port names the address", "[unit][http]") {
  evald::HttpServer first("127.0.0.1:0", 1024, [](evald::HttpRequest, evald::HttpRespond r) {
    r(evald::HttpResponse{});
  });
  const auto address = first.local_address();
  try {
    evald::HttpServer second(
        address, 1024, [](evald::HttpRequest, evald::HttpRespond r) { r(evald::HttpResponse{}); });
    FAIL("second bind succeeded");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "cannot listen on " + address + ": Address already in use");
  }
}

TEST_CASE("split_host_port accepts HOST:PORT forms and names bad input", "[unit][http]") {
  CHECK(evald::split_host_port("127.0.0.1:0") ==
        std::pair<std::string, unsigned short>{"127.0.0.1", 0});
  CHECK(evald::split_host_port("localhost:8080") ==
        std::pair<std::string, unsigned short>{"localhost", 8080});
  CHECK(evald::split_host_port("[::1]:80") == std::pair<std::string, unsigned short>{"::1", 80});
  for (const std::string bad :
       {"", "garbage", "host:", ":80", "host:http", "host:65536", "::1:80", "[::1]80", "[::1"}) {
    INFO(bad);
    try {
      evald::split_host_port(bad);
      FAIL("accepted");
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()).rfind("invalid address '" + bad + "': ", 0) == 0);
    }
  }
}

TEST_CASE("parse_http_url reads host, port and prefix, refuses the rest", "[unit][http]") {
  auto plain = evald::parse_http_url("http://127.0.0.1:8080");
  REQUIRE(plain.ok());
  CHECK(plain->host == "127.0.0.1");
  CHECK(plain->port == 8080);
  CHECK(plain->base_path.empty());

  auto no_port = evald::parse_http_url("http://coordinator.lan/evald/");
  REQUIRE(no_port.ok());
  CHECK(no_port->host == "coordinator.lan");
  CHECK(no_port->port == 80);
  CHECK(no_port->base_path == "/evald");

  auto v6 = evald::parse_http_url("http://[::1]:9000");
  REQUIRE(v6.ok());
  CHECK(v6->host == "::1");
  CHECK(v6->port == 9000);

  auto tls = evald::parse_http_url("https://example.org/api");
  REQUIRE(tls.ok());
  CHECK(tls->tls);
  CHECK(tls->host == "example.org");
  CHECK(tls->port == 443);
  CHECK(tls->base_path == "/api");
  CHECK(evald::describe(tls.value()) == "https://example.org:443");

  for (const std::string bad : {"127.0.0.1:8080", "ftp://x", "http://", "http://host:abc",
                                "http://user@host:80", "http://host:80/?q=1"}) {
    INFO(bad);
    auto parsed = evald::parse_http_url(bad);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.error().message.rfind("invalid server URL '" + bad + "': ", 0) == 0);
  }
}
