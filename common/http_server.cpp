// HttpServer on Boost.Beast; the contract is in http_server.hpp.
//
// Threads: one io_context, run by the one thread start() creates. The acceptor, every socket and
// all Session state are touched only on that thread. The handler's respond callback may run on
// any thread: it only posts the response back onto the io_context, and only while the PostGate is
// open. stop() closes the gate first, so nothing is ever posted to an io_context that is gone.
//
// Lifetime: a Session is owned by the shared_ptrs in its pending operations and in the respond
// callback of the request it is serving, so a connection that closes while the handler works is
// still a valid object; the late write finds the stream gone and drops the response. stop()
// destroys the stream of every live session on the io thread, before the io_context is destroyed,
// so a Session released later on some other thread owns no socket or timer any more.
//
// Closing: after a response that ends the connection (the client asked for it, or the request was
// refused with 413/431/400) the server shuts down its sending side and reads and discards what
// the client still sends, for a bounded time. Closing at once with unread bytes in the socket
// would make the kernel send a reset, and the client could lose the error response it is owed.
#include "common/http_server.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <exception>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace evald {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

// A connection that sends nothing for this long is closed, so idle clients cannot pile up.
constexpr auto kIdleTimeout = std::chrono::seconds(30);
constexpr auto kWriteTimeout = std::chrono::seconds(30);
// How long a closing connection keeps draining what the client still sends (see the top).
constexpr auto kLingerTimeout = std::chrono::seconds(5);
constexpr uint32_t kHeaderLimitBytes = 64 * 1024;
constexpr size_t kDrainChunkBytes = 64 * 1024;
// After a failed accept (e.g. out of file descriptors) wait before trying again, not spin.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);

std::string error_body(const std::string& message) {
  return nlohmann::json{{"error", message}}.dump();
}

std::string format_endpoint(const tcp::endpoint& endpoint) {
  const auto address = endpoint.address();
  const std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return host + ":" + std::to_string(endpoint.port());
}

bool is_http_parse_error(const beast::error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_target).category();
}

// Statuses whose response must not carry a body (RFC 9110); Beast refuses to frame one.
bool forbids_body(unsigned status) {
  return (status >= 100 && status < 200) || status == 204 || status == 304;
}

// Closed by stop() before the io_context goes away; respond callbacks post only while it is open.
struct PostGate {
  std::mutex mutex;
  bool open = true;
};

// What every session needs from the server. Shared so that a session kept alive by a pending
// respond callback never points into a destroyed server.
struct ServerShared {
  HttpHandler handler;
  size_t max_body_bytes = 0;
  PostGate gate;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<ServerShared> shared)
      : executor_(socket.get_executor()), shared_(std::move(shared)) {
    beast::error_code ec;
    const auto remote = socket.remote_endpoint(ec);
    peer_ = ec ? std::string("unknown") : format_endpoint(remote);
    stream_.emplace(std::move(socket));
  }

  void start() { read_request(); }

  // io thread only. Destroys the socket and its timer now; pending operations end aborted.
  void close_stream() { stream_.reset(); }

 private:
  // The header first, so that a client which sent "Expect: 100-continue" (curl does for large
  // bodies) gets its go-ahead, or its 413, before it sends the body.
  void read_request() {
    parser_.emplace();
    parser_->body_limit(shared_->max_body_bytes);
    parser_->header_limit(kHeaderLimitBytes);
    stream_->expires_after(kIdleTimeout);
    http::async_read_header(*stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t /*bytes*/) {
                              self->on_header(ec);
                            });
  }

  void on_header(beast::error_code ec) {
    if (!stream_ || !read_succeeded(ec)) return;
    if (parser_->is_done()) {
      dispatch();
      return;
    }
    if (beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
      auto go_ahead = std::make_shared<http::response<http::empty_body>>(http::status::continue_,
                                                                         parser_->get().version());
      stream_->expires_after(kWriteTimeout);
      http::async_write(
          *stream_, *go_ahead,
          [self = shared_from_this(), go_ahead](beast::error_code write_ec, size_t /*bytes*/) {
            if (!self->stream_) return;
            if (write_ec) {
              self->close_stream();
              return;
            }
            self->read_body();
          });
      return;
    }
    read_body();
  }

  void read_body() {
    stream_->expires_after(kIdleTimeout);
    http::async_read(*stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t /*bytes*/) {
                       if (self->stream_ && self->read_succeeded(ec)) self->dispatch();
                     });
  }

  // Handles a failed read (answering 413/431/400 where the client is owed one) and returns false;
  // true when the read succeeded.
  bool read_succeeded(beast::error_code ec) {
    if (!ec) return true;
    if (ec == http::error::end_of_stream || ec == net::error::operation_aborted) {
      close_stream();
      return false;
    }
    if (ec == beast::error::timeout) {
      spdlog::debug("http_idle_timeout peer={}", peer_);
      close_stream();
      return false;
    }
    if (ec == http::error::body_limit) {
      spdlog::info("http_refused peer={} status=413 max_body_bytes={}", peer_,
                   shared_->max_body_bytes);
      send_error_and_close(
          413, "request body exceeds " + std::to_string(shared_->max_body_bytes) + " bytes");
      return false;
    }
    if (ec == http::error::header_limit) {
      spdlog::info("http_refused peer={} status=431 max_header_bytes={}", peer_, kHeaderLimitBytes);
      send_error_and_close(
          431, "request header exceeds " + std::to_string(kHeaderLimitBytes) + " bytes");
      return false;
    }
    if (is_http_parse_error(ec)) {
      spdlog::info("http_refused peer={} status=400 reason=\"{}\"", peer_, ec.message());
      send_error_and_close(400, "malformed HTTP request: " + ec.message());
      return false;
    }
    spdlog::debug("http_connection_error peer={} error=\"{}\"", peer_, ec.message());
    close_stream();
    return false;
  }

  void dispatch() {
    auto& message = parser_->get();
    keep_alive_ = message.keep_alive();
    version_ = message.version();
    HttpRequest request{std::string(message.method_string()), std::string(message.target()),
                        std::move(message.body())};
    parser_.reset();
    // The handler may take its time (a store commit); the write sets its own deadline.
    stream_->expires_never();

    auto responded = std::make_shared<std::atomic<bool>>(false);
    HttpRespond respond = [self = shared_from_this(), responded](HttpResponse response) {
      if (responded->exchange(true)) {
        spdlog::error("http_respond_twice peer={} status={}", self->peer_, response.status);
        return;
      }
      std::lock_guard lock(self->shared_->gate.mutex);
      if (!self->shared_->gate.open) return;  // the server is stopping; nobody will send it
      net::post(self->executor_, [self, response = std::move(response)]() mutable {
        self->write_response(std::move(response));
      });
    };
    try {
      shared_->handler(std::move(request), respond);
    } catch (const std::exception& e) {
      // A throwing handler is a bug in it; the client still gets an answer, the server lives on.
      spdlog::error("http_handler_exception peer={} error=\"{}\"", peer_, e.what());
      if (!responded->load())
        respond(HttpResponse{500, "application/json", error_body("internal error")});
    }
  }

  void write_response(HttpResponse response) {
    if (!stream_) return;  // the connection went away while the handler worked
    unsigned status = 500;
    if (response.status >= 100 && response.status <= 999) {
      status = static_cast<unsigned>(response.status);
    } else {
      spdlog::error("http_bad_status peer={} status={}", peer_, response.status);
      response.body = error_body("internal error");
      response.content_type = "application/json";
    }
    auto message = std::make_shared<http::response<http::string_body>>();
    message->version(version_);
    message->result(status);
    message->set(http::field::server, "evald");
    message->set(http::field::content_type, response.content_type);
    if (!forbids_body(status)) message->body() = std::move(response.body);
    message->keep_alive(keep_alive_);
    message->prepare_payload();
    send(std::move(message), !keep_alive_);
  }

  void send_error_and_close(unsigned status, const std::string& message_text) {
    keep_alive_ = false;
    auto message = std::make_shared<http::response<http::string_body>>();
    message->version(version_);
    message->result(status);
    message->set(http::field::server, "evald");
    message->set(http::field::content_type, "application/json");
    message->body() = error_body(message_text);
    message->keep_alive(false);
    message->prepare_payload();
    send(std::move(message), /*close_after=*/true);
  }

  void send(std::shared_ptr<http::response<http::string_body>> message, bool close_after) {
    stream_->expires_after(kWriteTimeout);
    http::async_write(
        *stream_, *message,
        [self = shared_from_this(), message, close_after](beast::error_code ec, size_t /*bytes*/) {
          self->on_write(ec, close_after);
        });
  }

  void on_write(beast::error_code ec, bool close_after) {
    if (!stream_) return;
    if (ec) {
      spdlog::debug("http_write_failed peer={} error=\"{}\"", peer_, ec.message());
      close_stream();
      return;
    }
    if (close_after) {
      linger_close();
      return;
    }
    read_request();
  }

  void linger_close() {
    beast::error_code ignored;
    stream_->socket().shutdown(tcp::socket::shutdown_send, ignored);
    drain_.resize(kDrainChunkBytes);
    stream_->expires_after(kLingerTimeout);  // one deadline for the whole drain
    drain();
  }

  void drain() {
    stream_->async_read_some(net::buffer(drain_),
                             [self = shared_from_this()](beast::error_code ec, size_t /*bytes*/) {
                               if (!self->stream_) return;
                               if (ec) {
                                 self->close_stream();
                                 return;
                               }
                               self->drain();
                             });
  }

  net::any_io_executor executor_;
  std::shared_ptr<ServerShared> shared_;
  std::string peer_;
  std::optional<beast::tcp_stream> stream_;  // empty once closed
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::vector<char> drain_;
  bool keep_alive_ = true;
  unsigned version_ = 11;
};

}  // namespace

struct HttpServer::Impl {
  // Declared first so it is destroyed last: the acceptor, timer and queued handlers need it.
  net::io_context io{1};
  tcp::acceptor acceptor{io};
  net::steady_timer accept_retry{io};
  std::shared_ptr<ServerShared> shared = std::make_shared<ServerShared>();
  std::vector<std::weak_ptr<Session>> sessions;  // io thread only; pruned on accept
  std::string local_address;
  std::thread thread;
  std::mutex lifecycle_mutex;
  bool started = false;
  bool stopped = false;

  void accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted) return;
      if (ec) {
        spdlog::warn("http_accept_failed address={} error=\"{}\"", local_address, ec.message());
        accept_retry.expires_after(kAcceptRetryDelay);
        accept_retry.async_wait([this](beast::error_code wait_ec) {
          if (!wait_ec) accept();
        });
        return;
      }
      std::erase_if(sessions, [](const std::weak_ptr<Session>& s) { return s.expired(); });
      auto session = std::make_shared<Session>(std::move(socket), shared);
      sessions.push_back(session);
      session->start();
      accept();
    });
  }

  void run() {
    // A handler that throws out of run() would end the thread and silently stop serving; log it
    // and keep going instead.
    for (;;) {
      try {
        io.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("http_loop_exception address={} error=\"{}\"", local_address, e.what());
      }
    }
  }

  // io thread: nothing may run after this but the destruction of queued handlers.
  void shut_down() {
    beast::error_code ignored;
    acceptor.close(ignored);
    accept_retry.cancel();
    for (auto& weak : sessions) {
      if (auto session = weak.lock()) session->close_stream();
    }
    sessions.clear();
    io.stop();
  }
};

HttpServer::HttpServer(const std::string& listen_address, size_t max_body_bytes,
                       HttpHandler handler)
    : impl_(std::make_unique<Impl>()) {
  impl_->shared->handler = std::move(handler);
  impl_->shared->max_body_bytes = max_body_bytes;

  const auto [host, port] = split_host_port(listen_address);
  const auto fail = [&](const std::string& why) {
    return std::runtime_error("cannot listen on " + listen_address + ": " + why);
  };
  beast::error_code ec;
  tcp::resolver resolver(impl_->io);
  const auto endpoints = resolver.resolve(
      host, std::to_string(port), tcp::resolver::numeric_service | tcp::resolver::passive, ec);
  if (ec) throw fail(ec.message());
  if (endpoints.empty()) throw fail("host '" + host + "' has no address");
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();

  auto& acceptor = impl_->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (ec) throw fail(ec.message());
  acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (ec) throw fail(ec.message());
  acceptor.bind(endpoint, ec);
  if (ec) throw fail(ec.message());
  acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw fail(ec.message());
  const auto bound = acceptor.local_endpoint(ec);
  if (ec) throw fail(ec.message());
  impl_->local_address = format_endpoint(bound);
}

HttpServer::~HttpServer() {
  stop();
}

std::string HttpServer::local_address() const {
  return impl_->local_address;
}

void HttpServer::start() {
  std::lock_guard lock(impl_->lifecycle_mutex);
  if (impl_->started || impl_->stopped) return;
  impl_->started = true;
  impl_->accept();
  impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
  spdlog::info("http_listening address={} max_body_bytes={}", impl_->local_address,
               impl_->shared->max_body_bytes);
}

void HttpServer::stop() {
  std::lock_guard lock(impl_->lifecycle_mutex);
  if (impl_->stopped) return;
  impl_->stopped = true;
  {
    std::lock_guard gate_lock(impl_->shared->gate.mutex);
    impl_->shared->gate.open = false;
  }
  if (impl_->thread.joinable()) {
    net::post(impl_->io, [impl = impl_.get()] { impl->shut_down(); });
    impl_->thread.join();
    spdlog::info("http_stopped address={}", impl_->local_address);
  } else {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  }
}

std::pair<std::string, unsigned short> split_host_port(const std::string& address) {
  const auto fail = [&](const std::string& why) {
    return std::runtime_error("invalid address '" + address + "': " + why +
                              " (expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080)");
  };
  std::string host;
  std::string port_text;
  if (!address.empty() && address.front() == '[') {
    const auto close = address.find(']');
    if (close == std::string::npos) throw fail("missing ']' after the IPv6 address");
    host = address.substr(1, close - 1);
    if (close + 1 >= address.size() || address[close + 1] != ':') {
      throw fail("missing ':PORT' after ']'");
    }
    port_text = address.substr(close + 2);
  } else {
    const auto colon = address.rfind(':');
    if (colon == std::string::npos) throw fail("missing ':PORT'");
    host = address.substr(0, colon);
    port_text = address.substr(colon + 1);
    if (host.find(':') != std::string::npos) throw fail("an IPv6 address must be in brackets");
  }
  if (host.empty()) throw fail("the host is empty");
  for (const char c : host) {
    if (c == ' ' || c == '\t' || c == '/' || c == '[' || c == ']' || c == '@') {
      throw fail("the host contains '" + std::string(1, c) + "'");
    }
  }
  if (port_text.empty()) throw fail("the port is empty");
  if (port_text.size() > 5) throw fail("port '" + port_text + "' is not a number in 0-65535");
  unsigned long port = 0;
  for (const char c : port_text) {
    if (c < '0' || c > '9') throw fail("port '" + port_text + "' is not a number in 0-65535");
    port = port * 10 + static_cast<unsigned long>(c - '0');
  }
  if (port > 65535) throw fail("port '" + port_text + "' is not a number in 0-65535");
  return {host, static_cast<unsigned short>(port)};
}

}  // namespace evald
