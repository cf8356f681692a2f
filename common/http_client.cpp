// Blocking HTTP/1.1 clients; the contracts are in http_client.hpp (one request per connection)
// and http_connection.hpp (a connection kept open across requests).
//
// Each request runs on its own small io_context on the calling thread, which makes one deadline
// cover everything (resolve, connect, write, read) via run_for(). The request is written and the
// response read at the same time: a server that refuses a large body (413) answers before it has
// read all of it, and the client must see that answer instead of failing on a half-sent body.
#include "common/http_client.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cstdint>
#include <optional>
#include <stdexcept>

#include "common/http_connection.hpp"
#include "common/version.hpp"

namespace evald {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;

// Leaderboards and shard lists of big campaigns are large; anything beyond this is a broken server.
constexpr uint64_t kMaxResponseBodyBytes = uint64_t{1} << 30;

bool is_ipv6_literal(const std::string& host) {
  return host.find(':') != std::string::npos;
}

std::string host_with_port(const HttpUrl& url) {
  const std::string host = is_ipv6_literal(url.host) ? "[" + url.host + "]" : url.host;
  return host + ":" + std::to_string(url.port);
}

}  // namespace

std::string describe(const HttpUrl& url) {
  return (url.tls ? "https://" : "http://") + host_with_port(url);
}

Result<HttpUrl> parse_http_url(const std::string& url) {
  const auto invalid = [&](const std::string& why) {
    return make_error("invalid server URL '" + url + "': " + why +
                      " (expected http[s]://HOST[:PORT][/PREFIX])");
  };
  const bool tls = url.rfind("https://", 0) == 0;
  const std::string_view scheme = tls ? "https://" : "http://";
  if (!tls && url.rfind(scheme, 0) != 0) return invalid("it must start with http:// or https://");
  const std::string rest = url.substr(scheme.size());
  const auto slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  std::string path = slash == std::string::npos ? std::string() : rest.substr(slash);
  if (authority.empty()) return invalid("the host is empty");
  if (authority.find('@') != std::string::npos) return invalid("user info is not supported");
  if (path.find_first_of("?#") != std::string::npos) {
    return invalid("a query or fragment is not allowed");
  }
  if (authority.find_first_of("?#") != std::string::npos) {
    return invalid("a query or fragment is not allowed");
  }
  while (!path.empty() && path.back() == '/') path.pop_back();

  HttpUrl parsed;
  parsed.tls = tls;
  parsed.port = tls ? 443 : 80;
  parsed.base_path = path;
  const bool bracketed = authority.front() == '[';
  const bool has_port = bracketed ? authority.find("]:") != std::string::npos
                                  : authority.find(':') != std::string::npos;
  if (has_port) {
    try {
      auto [host, port] = split_host_port(authority);
      parsed.host = std::move(host);
      parsed.port = port;
    } catch (const std::runtime_error& e) {
      return invalid(e.what());
    }
    if (parsed.port == 0) return invalid("port 0 cannot be connected to");
  } else if (bracketed) {
    if (authority.back() != ']') return invalid("missing ']' after the IPv6 address");
    parsed.host = authority.substr(1, authority.size() - 2);
  } else {
    parsed.host = authority;
  }
  if (parsed.host.empty()) return invalid("the host is empty");
  return parsed;
}

namespace {

// TLS 1.2+, the CA bundle to trust and the client certificate, from `options`.
Result<bool> configure_tls(ssl::context& context, const HttpClientOptions& options) {
  context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                      ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  beast::error_code ec;
  if (options.ca_file.empty()) {
    context.set_default_verify_paths(ec);
  } else {
    context.load_verify_file(options.ca_file, ec);
  }
  if (ec) {
    return make_error("cannot load CA certificates" +
                      (options.ca_file.empty() ? std::string() : " from " + options.ca_file) +
                      ": " + ec.message());
  }
  if (!options.client_cert_file.empty()) {
    context.use_certificate_chain_file(options.client_cert_file, ec);
    if (ec) {
      return make_error("cannot load client certificate " + options.client_cert_file + ": " +
                        ec.message());
    }
    context.use_private_key_file(
        options.client_key_file.empty() ? options.client_cert_file : options.client_key_file,
        ssl::context::pem, ec);
    if (ec) return make_error("cannot load client key: " + ec.message());
  }
  context.set_verify_mode(ssl::verify_peer);
  return true;
}

// The certificate must name `host`; SNI carries it when it is a name.
void prepare_tls_stream(beast::ssl_stream<beast::tcp_stream>& stream, const std::string& host) {
  stream.set_verify_callback(ssl::host_name_verification(host));
  // SNI for names only; an IP literal is not a valid server name.
  beast::error_code address_ec;
  net::ip::make_address(host, address_ec);
  if (address_ec) {
    // SSL_set_tlsext_host_name() spelled out: the macro hides a C-style cast.
    SSL_ctrl(stream.native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
             static_cast<void*>(const_cast<char*>(host.c_str())));
  }
}

http::request<http::string_body> make_request(const HttpUrl& server,
                                              const HttpClientOptions& options, http::verb verb,
                                              const std::string& target, const std::string& body,
                                              bool keep_alive) {
  http::request<http::string_body> request{verb, server.base_path + target, 11};
  request.set(http::field::host, host_with_port(server));
  request.set(http::field::user_agent, std::string("evald/") + kVersion);
  request.set(http::field::accept, "application/json");
  if (!options.bearer_token.empty()) {
    request.set(http::field::authorization, "Bearer " + options.bearer_token);
  }
  if (!body.empty()) request.set(http::field::content_type, "application/json");
  request.body() = body;
  request.keep_alive(keep_alive);
  request.prepare_payload();
  return request;
}

HttpResponse to_response(http::response_parser<http::string_body>& parser) {
  auto& message = parser.get();
  HttpResponse response;
  response.status = static_cast<int>(message.result_int());
  response.content_type = std::string(message[http::field::content_type]);
  response.body = std::move(message.body());
  for (const auto& field : message) {
    response.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  }
  return response;
}

// One client connection: HttpConnection's (kept open across requests) and http_request()'s (one
// request, `Connection: close`). The socket (and TLS session) lives here across requests. Each
// step runs the io_context until its operations are done or the deadline passes; whatever is
// still pending then is cancelled by closing the socket and drained at once, while the handlers'
// captures (locals of request()) are still alive, so no handler ever outlives the call that
// queued it.
struct ClientConnection {
  ClientConnection(HttpUrl url, HttpClientOptions client_options, bool keep_open)
      : server(std::move(url)),
        options(std::move(client_options)),
        server_text(describe(server)),
        keep_alive(keep_open) {}
  ~ClientConnection() { drop(); }
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  uint64_t connect_count() const { return connects; }

  Result<HttpResponse> request(const std::string& method, const std::string& target,
                               const std::string& body, std::chrono::milliseconds request_timeout) {
    const http::verb verb = http::string_to_verb(method);
    if (verb == http::verb::unknown) return make_error("unknown HTTP method '" + method + "'");
    const auto deadline = std::chrono::steady_clock::now() + request_timeout;
    timeout = request_timeout;
    auto request = make_request(server, options, verb, target, body, keep_alive);
    // At most two tries: the second only when the first went out on a kept connection that
    // turned out to be closed by the server.
    for (int tries = 0;; ++tries) {
      const bool reused = connected;
      if (!reused) {
        if (auto made = connect(deadline); !made.ok()) return made.error();
      }
      auto exchanged = exchange(request, deadline);
      if (exchanged.response) return std::move(*exchanged.response);
      if (!(reused && exchanged.stale && tries == 0 &&
            std::chrono::steady_clock::now() < deadline)) {
        return make_error(exchanged.error);
      }
    }
  }

  HttpUrl server;
  HttpClientOptions options;
  std::string server_text;
  bool keep_alive;
  net::io_context io{1};
  std::optional<ssl::context> tls_context;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_stream;
  std::optional<beast::tcp_stream> plain_stream;
  beast::flat_buffer buffer;
  bool connected = false;
  uint64_t connects = 0;
  std::chrono::milliseconds timeout{0};  // the current request's, for messages

  beast::tcp_stream& lowest() {
    return server.tls ? beast::get_lowest_layer(*tls_stream) : *plain_stream;
  }

  // Runs the queued operations until they are all done (true) or `deadline` passes: then the
  // connection is closed, which ends them, and the answer is false.
  bool run_until(std::chrono::steady_clock::time_point deadline) {
    io.restart();
    io.run_until(deadline);
    if (io.stopped()) return true;  // out of work
    drop();
    return false;
  }

  // Closes the connection; pending operations complete (aborted) before this returns.
  void drop() {
    if (plain_stream || tls_stream) {
      beast::error_code ignored;
      lowest().socket().close(ignored);
      io.restart();
      io.run();
    }
    tls_stream.reset();
    plain_stream.reset();
    buffer.clear();
    connected = false;
  }

  // Resolves, connects and (https) handshakes; an error value says which step failed.
  Result<bool> connect(std::chrono::steady_clock::time_point deadline) {
    drop();
    if (server.tls) {
      if (!tls_context) {
        tls_context.emplace(ssl::context::tls_client);
        if (auto configured = configure_tls(*tls_context, options); !configured.ok()) {
          tls_context.reset();
          return configured.error();
        }
      }
      tls_stream.emplace(io, *tls_context);
      prepare_tls_stream(*tls_stream, server.host);
    } else {
      plain_stream.emplace(io);
    }
    tcp::resolver resolver(io);
    std::optional<std::string> connect_error;
    std::optional<std::string> handshake_error;
    bool done = false;
    resolver.async_resolve(
        server.host, std::to_string(server.port), tcp::resolver::numeric_service,
        [&](beast::error_code ec, const tcp::resolver::results_type& endpoints) {
          if (ec) {
            connect_error = ec.message();
            return;
          }
          lowest().async_connect(
              endpoints, [&](beast::error_code connect_ec, const tcp::endpoint& /*endpoint*/) {
                if (connect_ec) {
                  connect_error = connect_ec.message();
                  return;
                }
                if (!server.tls) {
                  done = true;
                  return;
                }
                tls_stream->async_handshake(ssl::stream_base::client, [&](beast::error_code hs_ec) {
                  if (hs_ec) {
                    handshake_error = hs_ec.message();
                  } else {
                    done = true;
                  }
                });
              });
        });
    io.restart();
    io.run_until(deadline);
    const bool finished = io.stopped();
    if (!finished) {
      // Cancel everything still out (the resolver's lookup too) and run the handlers now.
      resolver.cancel();
      drop();
      // The cancelled handlers wrote "Operation canceled": the cause is the deadline.
      return make_error("timed out after " + std::to_string(timeout.count()) +
                        " ms connecting to " + server_text);
    }
    if (connect_error) return make_error("cannot reach " + server_text + ": " + *connect_error);
    if (handshake_error) {
      drop();
      return make_error("TLS handshake with " + server_text + " failed: " + *handshake_error);
    }
    if (!done) {
      drop();
      return make_error("timed out after " + std::to_string(timeout.count()) +
                        " ms connecting to " + server_text);
    }
    connected = true;
    ++connects;
    return true;
  }

  // How soon after the request went out a close still means "closed while idle" (see exchange).
  static constexpr std::chrono::milliseconds kStaleCloseWindow{500};

  struct Exchange {
    std::optional<HttpResponse> response;
    std::string error;
    bool stale = false;  // a kept connection the server had closed: nothing came back
  };

  Exchange exchange(http::request<http::string_body>& request,
                    std::chrono::steady_clock::time_point deadline) {
    http::response_parser<http::string_body> parser;
    parser.body_limit(kMaxResponseBodyBytes);
    beast::error_code write_error;
    beast::error_code read_error;
    bool written = false;
    std::chrono::steady_clock::time_point written_at;
    std::chrono::steady_clock::time_point read_failed_at;
    const auto on_write = [&](beast::error_code ec, size_t /*bytes*/) {
      write_error = ec;
      written = true;
      written_at = std::chrono::steady_clock::now();
    };
    const auto on_read = [&](beast::error_code ec, size_t /*bytes*/) {
      read_error = ec;
      read_failed_at = std::chrono::steady_clock::now();
      // A server that answered before reading the whole body (413) may never read the rest:
      // stop writing. The connection is not reused then (see below).
      if (!written) {
        beast::error_code ignored;
        lowest().socket().cancel(ignored);
      }
    };
    if (server.tls) {
      http::async_write(*tls_stream, request, on_write);
      http::async_read(*tls_stream, buffer, parser, on_read);
    } else {
      http::async_write(*plain_stream, request, on_write);
      http::async_read(*plain_stream, buffer, parser, on_read);
    }
    Exchange out;
    if (!run_until(deadline)) {
      out.error =
          "timed out after " + std::to_string(timeout.count()) + " ms waiting for " + server_text;
      return out;
    }
    if (!read_error) {
      const bool reusable = !write_error && parser.get().keep_alive();
      out.response = to_response(parser);
      if (!reusable) drop();
      return out;
    }
    if (read_error == http::error::body_limit) {
      out.error = "response from " + server_text + " exceeds " +
                  std::to_string(kMaxResponseBodyBytes) + " bytes";
    } else {
      const auto& cause =
          write_error && write_error != net::error::operation_aborted ? write_error : read_error;
      out.error = "request to " + server_text + " failed: " + cause.message();
      // Stale: the server had closed the idle connection, so the request never reached it. A
      // write that failed says so; a write that succeeded only filled the socket buffer, and the
      // close then comes back at once. A close that comes later may follow real work on the
      // request (a completion the server ran, then dropped), which is not sent again unasked:
      // the caller's retry policy decides, and counts it.
      const bool write_refused =
          write_error == net::error::broken_pipe || write_error == net::error::connection_reset;
      const bool closed_at_once =
          !write_error && written && read_failed_at - written_at < kStaleCloseWindow &&
          (read_error == http::error::end_of_stream || read_error == net::error::eof ||
           read_error == net::error::connection_reset || read_error == net::error::broken_pipe ||
           read_error == ssl::error::stream_truncated);
      out.stale = !parser.got_some() && (write_refused || closed_at_once);
    }
    drop();
    return out;
  }
};

}  // namespace

Result<HttpResponse> http_request(const HttpUrl& server, const std::string& method,
                                  const std::string& target, const std::string& body,
                                  std::chrono::milliseconds timeout) {
  return http_request(server, HttpClientOptions{}, method, target, body, timeout);
}

Result<HttpResponse> http_request(const HttpUrl& server, const HttpClientOptions& options,
                                  const std::string& method, const std::string& target,
                                  const std::string& body, std::chrono::milliseconds timeout) {
  ClientConnection once(server, options, /*keep_open=*/false);
  return once.request(method, target, body, timeout);
}

struct HttpConnection::Impl {
  Impl(HttpUrl server, HttpClientOptions options)
      : connection(std::move(server), std::move(options), /*keep_open=*/true) {}
  ClientConnection connection;
};

HttpConnection::HttpConnection(HttpUrl server, HttpClientOptions options)
    : impl_(std::make_unique<Impl>(std::move(server), std::move(options))) {}

HttpConnection::~HttpConnection() = default;

uint64_t HttpConnection::connects() const {
  return impl_->connection.connect_count();
}

Result<HttpResponse> HttpConnection::request(const std::string& method, const std::string& target,
                                             const std::string& body,
                                             std::chrono::milliseconds timeout) {
  return impl_->connection.request(method, target, body, timeout);
}

}  // namespace evald
