// HttpServer: a small HTTP/1.1 server on Boost.Beast with its own Asio thread. The coordinator
// serves its API and /metrics with it (and workers their /metrics). It knows nothing of routes:
// every request goes to one handler, which answers through a callback that may be called from any
// thread (the coordinator answers from its core thread after the store commit).
//
// Edge rules enforced here, before the handler sees anything: a body over max_body_bytes gets 413,
// a request that does not parse gets 400, both as JSON {"error": "..."}; keep-alive is honoured.
// Also: a header over 64 KiB gets 431, "Expect: 100-continue" is answered, and every response
// carries Content-Type, Content-Length and "Server: evald".
//
// Bounds, so that clients cannot take the file descriptors or the memory the process needs for
// anything else (HttpServerOptions): at most max_connections open connections, and at most
// max_connections_per_address from one client address. A connection over a cap first evicts the
// connection (in that scope) that has waited longest for a request header, so idle sockets can
// never lock a real client out; if none is waiting, the new one is closed at once (after a short
// 503 on plain HTTP). A connection that has not sent a complete header within header_timeout is
// closed (slowloris). Bodies being read at the same time may reserve at most body_budget_bytes
// together; a request over that gets 503. Every refusal is reported to on_refused with a reason.
//
// TLS: with a certificate and key the server speaks HTTPS only; with a client CA it also requires
// a client certificate signed by that CA (the handshake fails without one).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace evald {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query, e.g. "/v1/campaigns/c1/shards?state=failed"
  std::string body;
  std::string authorization = {};  // the Authorization header, "" if absent
  std::string peer_address = {};   // the client's IP address, e.g. "127.0.0.1" or "::1"
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  // Extra header fields, e.g. {"WWW-Authenticate", "Bearer"}.
  std::vector<std::pair<std::string, std::string>> headers = {};
};

// Why a connection or request was refused at the edge, for the caller's metrics:
// "connection_limit", "address_limit", "idle_evicted", "header_timeout", "body_budget",
// "tls_handshake".
using HttpRefused = std::function<void(const std::string& reason)>;

struct HttpServerOptions {
  size_t max_body_bytes = 16u << 20;
  // Defaults leave most of a default 1024 file-descriptor limit to everything else; the cap
  // actually used is also at most half of RLIMIT_NOFILE at start.
  size_t max_connections = 512;
  size_t max_connections_per_address = 64;
  // How long a connection may take to send a complete request header (or the TLS handshake).
  std::chrono::milliseconds header_timeout{10000};
  // Body bytes being read at the same time, over all connections (16 bodies of 16 MiB).
  size_t body_budget_bytes = 256u << 20;
  // PEM files; an empty cert means plain HTTP.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;  // non-empty: client certificates signed by it are required
  HttpRefused on_refused;          // called on the server thread; may be empty
};

using HttpRespond = std::function<void(HttpResponse)>;
// Called on the server thread. Must call `respond` exactly once, now or later, from any thread.
using HttpHandler = std::function<void(HttpRequest request, HttpRespond respond)>;

class HttpServer {
 public:
  // Binds and listens on "HOST:PORT" (PORT 0 picks a free port). Throws std::runtime_error that
  // names the address if it is malformed or cannot be bound. Serving starts with start().
  HttpServer(const std::string& listen_address, size_t max_body_bytes, HttpHandler handler);
  // As above with every bound; also throws if a TLS file cannot be loaded (naming it).
  HttpServer(const std::string& listen_address, HttpServerOptions options, HttpHandler handler);
  ~HttpServer();  // stop()s
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // "127.0.0.1:41235": the address actually bound, with the real port.
  std::string local_address() const;
  void start();  // runs the server thread
  // Closes the listener and connections, joins the thread; idempotent. Not from the handler
  // (it would join its own thread). A respond callback called after stop() is dropped.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Splits "HOST:PORT"; throws std::runtime_error naming the text if it is not of that form.
std::pair<std::string, unsigned short> split_host_port(const std::string& address);

// True for a HOST that only this machine can reach: 127.0.0.0/8, ::1 or "localhost".
bool is_loopback_host(const std::string& host);

// Raises the soft RLIMIT_NOFILE to the hard limit (servers hold one descriptor per connection)
// and returns the soft limit in force afterwards.
size_t raise_open_file_limit();

}  // namespace evald
