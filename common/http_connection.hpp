// HttpConnection: a blocking HTTP/1.1 client connection kept open across requests, for the
// openai runner's request lanes. Implemented in http_client.cpp: the one-shot http_request() is
// the same connection code used for one request, so both share TLS setup, request shape, errors.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/http_client.hpp"

namespace evald {

// One HTTP/1.1 connection to one server, kept open across requests (keep-alive), for a client
// that sends many requests one after another: each of the openai runner's request lanes owns
// one, so a shard costs one TCP (and TLS) handshake per lane instead of one per request.
// Not thread-safe: one object per thread.
//
// It connects on the first request, and again after the server closed the connection, answered
// with `Connection: close` (or as HTTP/1.0), or a request failed or timed out (a connection in an
// unknown state is never reused). A request on a kept connection that fails before any byte of
// the answer arrived because the server had closed the idle connection (the write failed, or the
// close came back within half a second of sending) is sent once more on a fresh connection at
// once; it counts against the same `timeout`. A later close is an ordinary error: the server may
// have worked on the request, so sending it again is the caller's retry policy's decision.
// Errors and responses are as http_request()'s.
class HttpConnection {
 public:
  HttpConnection(HttpUrl server, HttpClientOptions options = {});
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  Result<HttpResponse> request(const std::string& method, const std::string& target,
                               const std::string& body = "",
                               std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // TCP connections opened so far (each request on a fresh connection adds one).
  uint64_t connects() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace evald
