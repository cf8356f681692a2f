// A blocking HTTP/1.1 client on Boost.Beast for evalctl, the tests and the benchmark.
#pragma once

#include <chrono>
#include <string>

#include "common/http_server.hpp"
#include "common/result.hpp"

namespace evald {

struct HttpUrl {
  std::string host;
  unsigned short port = 80;
  std::string base_path;  // "" or "/prefix", without a trailing slash
};

// Parses "http://HOST:PORT[/prefix]"; only plain http is supported.
Result<HttpUrl> parse_http_url(const std::string& url);

// One request on a fresh connection. A connection failure or timeout is an error value whose
// message names the server ("cannot reach http://127.0.0.1:8080: Connection refused"); any HTTP
// status (even 500) is a response. `timeout` covers everything from resolving to the last byte;
// response bodies may be up to 1 GiB.
Result<HttpResponse> http_request(const HttpUrl& server, const std::string& method,
                                  const std::string& target, const std::string& body = "",
                                  std::chrono::milliseconds timeout = std::chrono::seconds(30));

}  // namespace evald
