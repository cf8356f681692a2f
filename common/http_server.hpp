// HttpServer: a small HTTP/1.1 server on Boost.Beast with its own Asio thread. The coordinator
// serves its API and /metrics with it (and workers their /metrics). It knows nothing of routes:
// every request goes to one handler, which answers through a callback that may be called from any
// thread (the coordinator answers from its core thread after the store commit).
//
// Edge rules enforced here, before the handler sees anything: a body over max_body_bytes gets 413,
// a request that does not parse gets 400, both as JSON {"error": "..."}; keep-alive is honoured.
// Also: a header over 64 KiB gets 431, "Expect: 100-continue" is answered, and a connection that
// sends nothing for 30 s is closed. Every response carries Content-Type, Content-Length and
// "Server: evald".
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace evald {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query, e.g. "/v1/campaigns/c1/shards?state=failed"
  std::string body;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

using HttpRespond = std::function<void(HttpResponse)>;
// Called on the server thread. Must call `respond` exactly once, now or later, from any thread.
using HttpHandler = std::function<void(HttpRequest request, HttpRespond respond)>;

class HttpServer {
 public:
  // Binds and listens on "HOST:PORT" (PORT 0 picks a free port). Throws std::runtime_error that
  // names the address if it is malformed or cannot be bound. Serving starts with start().
  HttpServer(const std::string& listen_address, size_t max_body_bytes, HttpHandler handler);
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

}  // namespace evald
