// A blocking HTTP/1.1 (and HTTPS) client on Boost.Beast for evalctl, the tests and the benchmark.
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
  bool tls = false;       // https://
};

// Parses "http://HOST[:PORT][/prefix]" or "https://..." (default ports 80 and 443).
Result<HttpUrl> parse_http_url(const std::string& url);

// "http://127.0.0.1:8080" / "https://[::1]:8443", for messages.
std::string describe(const HttpUrl& url);

// Credentials and trust for one request.
struct HttpClientOptions {
  std::string bearer_token;  // sent as "Authorization: Bearer TOKEN" when not empty
  // https: the PEM CA bundle the server's certificate must chain to (empty: the system's). The
  // certificate must also name the URL's host (DNS name or IP address).
  std::string ca_file;
  std::string client_cert_file;  // PEM; for a server that requires client certificates
  std::string client_key_file;
};

// One request on a fresh connection. A connection failure or timeout is an error value whose
// message names the server ("cannot reach http://127.0.0.1:8080: Connection refused"); any HTTP
// status (even 500) is a response. `timeout` covers everything from resolving to the last byte;
// response bodies may be up to 1 GiB.
Result<HttpResponse> http_request(const HttpUrl& server, const std::string& method,
                                  const std::string& target, const std::string& body = "",
                                  std::chrono::milliseconds timeout = std::chrono::seconds(30));
// The same with credentials (and, for https, the CA and client certificate to use). A failed
// TLS handshake (untrusted or misnamed certificate, a client certificate required) is an error
// value that says so.
Result<HttpResponse> http_request(const HttpUrl& server, const HttpClientOptions& options,
                                  const std::string& method, const std::string& target,
                                  const std::string& body = "",
                                  std::chrono::milliseconds timeout = std::chrono::seconds(30));

}  // namespace evald
