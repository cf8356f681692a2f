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
// Bounds: every live session has an entry in the Registry (io thread only), which counts
// connections in total and per client address. The entry is released by close_stream(); an entry
// whose session died without it (a respond callback dropped unanswered) is pruned on the next
// accept. The body budget is reserved when a header announces a body and released when the body
// has been read (or the read failed).
//
// Closing: after a response that ends the connection (the client asked for it, or the request was
// refused with 413/431/400) the server shuts down its sending side and reads and discards what
// the client still sends, for a bounded time. Closing at once with unread bytes in the socket
// would make the kernel send a reset, and the client could lose the error response it is owed.
#include "common/http_server.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <cstdint>
#include <exception>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace evald {
namespace {

namespace net = boost::asio;
namespace ssl = net::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

// Once a request header has arrived, the body and the next request get this long.
constexpr auto kBodyTimeout = std::chrono::seconds(30);
constexpr auto kWriteTimeout = std::chrono::seconds(30);
// How long a closing connection keeps draining what the client still sends (see the top).
constexpr auto kLingerTimeout = std::chrono::seconds(5);
constexpr uint32_t kHeaderLimitBytes = 64 * 1024;
constexpr size_t kDrainChunkBytes = 64 * 1024;
// After a failed accept (e.g. out of file descriptors) wait before trying again, not spin.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);
// The connection cap never exceeds this share of RLIMIT_NOFILE: RocksDB, ZeroMQ (one descriptor
// per worker) and the logs need the rest.
constexpr size_t kConnectionShareDivisor = 2;
constexpr size_t kMinConnections = 8;

std::string error_body(const std::string& message) {
  // The message may quote bytes a client sent: never let them make dump() throw.
  return nlohmann::json{{"error", message}}.dump(-1, ' ', false,
                                                 nlohmann::json::error_handler_t::replace);
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

class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // io thread only. Destroys the socket and its timer now; pending operations end aborted.
  virtual void close_stream() = 0;
  virtual void release_stream() = 0;
  // Waiting for (the rest of) a request header: evictable when a cap is reached.
  bool awaiting_header = true;
  Clock::time_point idle_since = Clock::now();
};

// Live connections, io thread only.
struct Registry {
  struct Entry {
    std::weak_ptr<SessionBase> session;
    std::string address;
  };
  std::list<Entry> entries;
  std::unordered_map<std::string, size_t> per_address;

  std::list<Entry>::iterator add(std::weak_ptr<SessionBase> session, const std::string& address) {
    ++per_address[address];
    return entries.insert(entries.end(), Entry{std::move(session), address});
  }
  void remove(std::list<Entry>::iterator it) {
    if (auto found = per_address.find(it->address); found != per_address.end()) {
      if (--found->second == 0) per_address.erase(found);
    }
    entries.erase(it);
  }
  size_t count(const std::string& address) const {
    const auto it = per_address.find(address);
    return it == per_address.end() ? 0 : it->second;
  }
  void prune() {
    for (auto it = entries.begin(); it != entries.end();) {
      auto next = std::next(it);
      if (it->session.expired()) remove(it);
      it = next;
    }
  }
  // The session (of `address`, or any when empty) that has waited longest for a header.
  std::shared_ptr<SessionBase> oldest_waiting(const std::string& address) const {
    std::shared_ptr<SessionBase> oldest;
    for (const auto& entry : entries) {
      if (!address.empty() && entry.address != address) continue;
      auto session = entry.session.lock();
      if (!session || !session->awaiting_header) continue;
      if (!oldest || session->idle_since < oldest->idle_since) oldest = std::move(session);
    }
    return oldest;
  }
};

// What every session needs from the server. Shared so that a session kept alive by a pending
// respond callback never points into a destroyed server.
struct ServerShared {
  HttpHandler handler;
  HttpServerOptions options;
  size_t max_connections = 0;  // effective: options capped by the file limit
  std::optional<ssl::context> tls;
  PostGate gate;
  Registry registry;         // io thread only
  size_t body_reserved = 0;  // io thread only

  void refused(const std::string& reason) const {
    if (options.on_refused) options.on_refused(reason);
  }
};

using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

template <class Stream>
class Session : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
 public:
  Session(tcp::socket socket, std::shared_ptr<ServerShared> shared, std::string peer,
          std::string address)
      : executor_(socket.get_executor()),
        shared_(std::move(shared)),
        peer_(std::move(peer)),
        address_(std::move(address)) {
    if constexpr (std::is_same_v<Stream, TlsStream>) {
      stream_.emplace(std::move(socket), *shared_->tls);
    } else {
      stream_.emplace(std::move(socket));
    }
  }

  void start(std::list<Registry::Entry>::iterator slot) {
    slot_ = slot;
    if constexpr (std::is_same_v<Stream, TlsStream>) {
      lowest().expires_after(shared_->options.header_timeout);
      stream_->async_handshake(ssl::stream_base::server,
                               [self = this->shared_from_this()](beast::error_code ec) {
                                 if (!self->open_) return;
                                 if (ec) {
                                   spdlog::info(
                                       "http_refused peer={} reason=tls_handshake "
                                       "error=\"{}\"",
                                       self->peer_, ec.message());
                                   self->shared_->refused("tls_handshake");
                                   self->close_stream();
                                   return;
                                 }
                                 self->read_request();
                               });
    } else {
      read_request();
    }
  }

  // Closing cancels every pending operation (they complete on the io thread and find the session
  // closed); the stream object itself lives until the session does, because an operation of an
  // ssl_stream still refers to it until its aborted completion has run. See HttpServer::stop().
  // After stop(), when no operation is pending any more: drop the socket while the io_context
  // still exists.
  void release_stream() override { stream_.reset(); }

  void close_stream() override {
    if (!open_) return;
    open_ = false;
    release_body_budget();
    beast::get_lowest_layer(*stream_).close();
    if (slot_) {
      shared_->registry.remove(*slot_);
      slot_.reset();
    }
  }

 private:
  beast::tcp_stream& lowest() { return beast::get_lowest_layer(*stream_); }

  // The header first, so that a client which sent "Expect: 100-continue" (curl does for large
  // bodies) gets its go-ahead, or its 413, before it sends the body.
  void read_request() {
    parser_.emplace();
    parser_->body_limit(shared_->options.max_body_bytes);
    parser_->header_limit(kHeaderLimitBytes);
    awaiting_header = true;
    idle_since = Clock::now();
    lowest().expires_after(shared_->options.header_timeout);
    http::async_read_header(
        *stream_, buffer_, *parser_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (!open_) return;
    awaiting_header = false;
    if (ec == beast::error::timeout && buffer_.size() > 0) {
      // Bytes arrived but never a whole header: a slow (or slowloris) client.
      spdlog::info("http_refused peer={} reason=header_timeout", peer_);
      shared_->refused("header_timeout");
      close_stream();
      return;
    }
    if (!read_succeeded(ec)) return;
    if (parser_->is_done()) {
      dispatch();
      return;
    }
    // A body follows: reserve its size from the shared budget (all of max_body_bytes when chunked
    // and the size is unknown), or refuse it before reading a byte of it.
    const size_t max_body = shared_->options.max_body_bytes;
    const auto length = parser_->content_length();
    const size_t wanted =
        length ? static_cast<size_t>(std::min<uint64_t>(*length, max_body)) : max_body;
    if (shared_->body_reserved + wanted > shared_->options.body_budget_bytes) {
      spdlog::info("http_refused peer={} reason=body_budget bytes={} reserved={} budget={}", peer_,
                   wanted, shared_->body_reserved, shared_->options.body_budget_bytes);
      shared_->refused("body_budget");
      send_error_and_close(503,
                           "the server is reading too many request bodies at once; retry later");
      return;
    }
    body_reserved_ = wanted;
    shared_->body_reserved += wanted;
    if (beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
      auto go_ahead = std::make_shared<http::response<http::empty_body>>(http::status::continue_,
                                                                         parser_->get().version());
      lowest().expires_after(kWriteTimeout);
      http::async_write(
          *stream_, *go_ahead,
          [self = this->shared_from_this(), go_ahead](beast::error_code write_ec, size_t) {
            if (!self->open_) return;
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
    lowest().expires_after(kBodyTimeout);
    http::async_read(*stream_, buffer_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t) {
                       if (!self->open_) return;
                       self->release_body_budget();
                       if (self->read_succeeded(ec)) self->dispatch();
                     });
  }

  void release_body_budget() {
    shared_->body_reserved -= std::min(shared_->body_reserved, body_reserved_);
    body_reserved_ = 0;
  }

  // Handles a failed read (answering 413/431/400 where the client is owed one) and returns false;
  // true when the read succeeded.
  bool read_succeeded(beast::error_code ec) {
    if (!ec) return true;
    release_body_budget();
    if (ec == http::error::end_of_stream || ec == net::error::operation_aborted ||
        ec == ssl::error::stream_truncated) {
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
                   shared_->options.max_body_bytes);
      send_error_and_close(413, "request body exceeds " +
                                    std::to_string(shared_->options.max_body_bytes) + " bytes");
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
                        std::move(message.body()), std::string(message[http::field::authorization]),
                        address_};
    parser_.reset();
    // The handler may take its time (a store commit); the write sets its own deadline.
    lowest().expires_never();

    auto responded = std::make_shared<std::atomic<bool>>(false);
    HttpRespond respond = [self = this->shared_from_this(), responded](HttpResponse response) {
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
    if (!open_) return;  // the connection went away while the handler worked
    unsigned status = 500;
    if (response.status >= 100 && response.status <= 999) {
      status = static_cast<unsigned>(response.status);
    } else {
      spdlog::error("http_bad_status peer={} status={}", peer_, response.status);
      response.body = error_body("internal error");
      response.content_type = "application/json";
      response.headers.clear();
    }
    auto message = std::make_shared<http::response<http::string_body>>();
    message->version(version_);
    message->result(status);
    message->set(http::field::server, "evald");
    message->set(http::field::content_type, response.content_type);
    for (const auto& [name, value] : response.headers) message->set(name, value);
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
    lowest().expires_after(kWriteTimeout);
    http::async_write(*stream_, *message,
                      [self = this->shared_from_this(), message, close_after](
                          beast::error_code ec, size_t) { self->on_write(ec, close_after); });
  }

  void on_write(beast::error_code ec, bool close_after) {
    if (!open_) return;
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
    lowest().expires_after(kLingerTimeout);  // one deadline for the whole close
    if constexpr (std::is_same_v<Stream, TlsStream>) {
      // close_notify tells the client the response is complete; then the socket goes.
      stream_->async_shutdown(
          [self = this->shared_from_this()](beast::error_code) { self->close_stream(); });
    } else {
      beast::error_code ignored;
      stream_->socket().shutdown(tcp::socket::shutdown_send, ignored);
      drain_.resize(kDrainChunkBytes);
      drain();
    }
  }

  void drain() {
    lowest().async_read_some(net::buffer(drain_),
                             [self = this->shared_from_this()](beast::error_code ec, size_t) {
                               if (!self->open_) return;
                               if (ec) {
                                 self->close_stream();
                                 return;
                               }
                               self->drain();
                             });
  }

  net::any_io_executor executor_;
  std::shared_ptr<ServerShared> shared_;
  bool open_ = true;
  std::string peer_;
  std::string address_;
  std::optional<std::list<Registry::Entry>::iterator> slot_;
  std::optional<Stream> stream_;  // emptied only by release_stream()
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::vector<char> drain_;
  size_t body_reserved_ = 0;
  bool keep_alive_ = true;
  unsigned version_ = 11;
};

// Tells a client that is turned away at once why, without waiting on it: one non-blocking write
// of a complete 503 (plain HTTP only; a TLS client gets the connection closed).
void refuse_connection(tcp::socket& socket, const std::string& why) {
  const std::string body = error_body(why);
  const std::string response =
      "HTTP/1.1 503 Service Unavailable\r\nServer: evald\r\n"
      "Content-Type: application/json\r\nConnection: close\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  beast::error_code ignored;
  socket.non_blocking(true, ignored);
  socket.write_some(net::buffer(response), ignored);
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
}

}  // namespace

struct HttpServer::Impl {
  // Declared first so it is destroyed last: the acceptor, timer and queued handlers need it.
  net::io_context io{1};
  tcp::acceptor acceptor{io};
  net::steady_timer accept_retry{io};
  std::shared_ptr<ServerShared> shared = std::make_shared<ServerShared>();
  std::string local_address;
  std::vector<std::shared_ptr<SessionBase>> closed_at_stop;  // see stop()
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
      admit(std::move(socket));
      accept();
    });
  }

  // Applies the connection caps (evicting an idle connection where one is waiting) and starts a
  // session for the socket, or closes it.
  void admit(tcp::socket socket) {
    beast::error_code ec;
    const auto remote = socket.remote_endpoint(ec);
    const std::string peer = ec ? std::string("unknown") : format_endpoint(remote);
    const std::string address = ec ? std::string("unknown") : remote.address().to_string();
    auto& registry = shared->registry;
    registry.prune();
    const auto make_room = [&](const std::string& scope, const char* cap_reason) -> bool {
      auto victim = registry.oldest_waiting(scope);
      if (victim) {
        spdlog::info("http_refused reason=idle_evicted for_peer={} cap={}", peer, cap_reason);
        shared->refused("idle_evicted");
        victim->close_stream();
        return true;
      }
      spdlog::warn("http_refused peer={} reason={}", peer, cap_reason);
      shared->refused(cap_reason);
      if (!shared->tls) refuse_connection(socket, "too many connections; retry later");
      return false;
    };
    if (registry.count(address) >= shared->options.max_connections_per_address &&
        !make_room(address, "address_limit")) {
      return;
    }
    if (registry.entries.size() >= shared->max_connections && !make_room("", "connection_limit")) {
      return;
    }
    if (shared->tls) {
      auto session = std::make_shared<Session<TlsStream>>(std::move(socket), shared, peer, address);
      session->start(registry.add(session, address));
    } else {
      auto session =
          std::make_shared<Session<PlainStream>>(std::move(socket), shared, peer, address);
      session->start(registry.add(session, address));
    }
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
    std::vector<std::shared_ptr<SessionBase>> live;
    for (auto& entry : shared->registry.entries) {
      if (auto session = entry.session.lock()) live.push_back(std::move(session));
    }
    for (auto& session : live) session->close_stream();
    closed_at_stop = std::move(live);
    io.stop();
  }
};

namespace {
HttpServerOptions with_body_limit(size_t max_body_bytes) {
  HttpServerOptions options;
  options.max_body_bytes = max_body_bytes;
  return options;
}
}  // namespace

HttpServer::HttpServer(const std::string& listen_address, size_t max_body_bytes,
                       HttpHandler handler)
    : HttpServer(listen_address, with_body_limit(max_body_bytes), std::move(handler)) {}

HttpServer::HttpServer(const std::string& listen_address, HttpServerOptions options,
                       HttpHandler handler)
    : impl_(std::make_unique<Impl>()) {
  auto& shared = *impl_->shared;
  shared.handler = std::move(handler);
  shared.options = std::move(options);
  const auto fail = [&](const std::string& why) {
    return std::runtime_error("cannot listen on " + listen_address + ": " + why);
  };
  rlimit limit{};
  size_t by_file_limit = shared.options.max_connections;
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    by_file_limit =
        std::max(kMinConnections, static_cast<size_t>(limit.rlim_cur) / kConnectionShareDivisor);
  }
  shared.max_connections =
      std::max<size_t>(1, std::min(shared.options.max_connections, by_file_limit));
  shared.options.max_connections_per_address =
      std::max<size_t>(1, shared.options.max_connections_per_address);

  if (!shared.options.tls_cert_file.empty() || !shared.options.tls_key_file.empty()) {
    if (shared.options.tls_cert_file.empty() || shared.options.tls_key_file.empty()) {
      throw fail("TLS needs both a certificate and a key file");
    }
    shared.tls.emplace(ssl::context::tls_server);
    auto& context = *shared.tls;
    context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                        ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                        ssl::context::single_dh_use);
    const auto load = [&](const std::string& what, const std::string& file, auto&& action) {
      beast::error_code load_ec;
      action(load_ec);
      if (load_ec) throw fail("cannot load " + what + " " + file + ": " + load_ec.message());
    };
    load("TLS certificate", shared.options.tls_cert_file, [&](beast::error_code& e) {
      context.use_certificate_chain_file(shared.options.tls_cert_file, e);
    });
    load("TLS key", shared.options.tls_key_file, [&](beast::error_code& e) {
      context.use_private_key_file(shared.options.tls_key_file, ssl::context::pem, e);
    });
    if (!shared.options.tls_client_ca_file.empty()) {
      load("client CA", shared.options.tls_client_ca_file, [&](beast::error_code& e) {
        context.load_verify_file(shared.options.tls_client_ca_file, e);
      });
      context.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
    }
  } else if (!shared.options.tls_client_ca_file.empty()) {
    throw fail("a client CA needs TLS (a certificate and a key)");
  }

  const auto [host, port] = split_host_port(listen_address);
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
  const auto& shared = *impl_->shared;
  spdlog::info(
      "http_listening address={} tls={} client_certificates={} max_body_bytes={} "
      "max_connections={} max_connections_per_address={} header_timeout_ms={} "
      "body_budget_bytes={}",
      impl_->local_address, shared.tls.has_value(), !shared.options.tls_client_ca_file.empty(),
      shared.options.max_body_bytes, shared.max_connections,
      shared.options.max_connections_per_address, shared.options.header_timeout.count(),
      shared.options.body_budget_bytes);
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
    // Let the aborted operations of the closed sessions complete (they only return), then drop
    // their sockets now: a session still held by a respond callback may outlive the io_context.
    impl_->io.restart();
    impl_->io.poll();
    for (auto& session : impl_->closed_at_stop) session->release_stream();
    impl_->closed_at_stop.clear();
    spdlog::info("http_stopped address={}", impl_->local_address);
  } else {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  }
}

bool is_loopback_host(const std::string& host) {
  if (host == "localhost") return true;
  beast::error_code ec;
  const auto address = net::ip::make_address(host, ec);
  return !ec && address.is_loopback();
}

size_t raise_open_file_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) {
      limit = raised;
    } else {
      spdlog::warn("open_file_limit_not_raised soft={} hard={}", limit.rlim_cur, limit.rlim_max);
    }
  }
  return limit.rlim_cur == RLIM_INFINITY ? SIZE_MAX : static_cast<size_t>(limit.rlim_cur);
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
