// Blocking HTTP/1.1 client; the contract is in http_client.hpp.
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

// Writes the request and reads the response at the same time over a connected (and, for TLS,
// handshaken) stream; stops the io_context when the response is in.
template <class Stream>
void exchange(net::io_context& io, Stream& stream, http::request<http::string_body>& request,
              http::response_parser<http::string_body>& parser, beast::flat_buffer& buffer,
              beast::error_code& write_error, beast::error_code& read_error, bool& have_response) {
  http::async_write(stream, request,
                    [&](beast::error_code ec, size_t /*bytes*/) { write_error = ec; });
  http::async_read(stream, buffer, parser, [&](beast::error_code ec, size_t /*bytes*/) {
    read_error = ec;
    have_response = !ec;
    // The write may still be pending if the server answered early (413); do not wait for it.
    io.stop();
  });
}

}  // namespace

Result<HttpResponse> http_request(const HttpUrl& server, const std::string& method,
                                  const std::string& target, const std::string& body,
                                  std::chrono::milliseconds timeout) {
  return http_request(server, HttpClientOptions{}, method, target, body, timeout);
}

Result<HttpResponse> http_request(const HttpUrl& server, const HttpClientOptions& options,
                                  const std::string& method, const std::string& target,
                                  const std::string& body, std::chrono::milliseconds timeout) {
  const std::string server_text = describe(server);
  const http::verb verb = http::string_to_verb(method);
  if (verb == http::verb::unknown) return make_error("unknown HTTP method '" + method + "'");

  net::io_context io{1};
  tcp::resolver resolver(io);
  std::optional<ssl::context> tls_context;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_stream;
  std::optional<beast::tcp_stream> plain_stream;
  if (server.tls) {
    tls_context.emplace(ssl::context::tls_client);
    auto& context = *tls_context;
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
    tls_stream.emplace(io, context);
    tls_stream->set_verify_callback(ssl::host_name_verification(server.host));
    // SNI for names only; an IP literal is not a valid server name.
    beast::error_code address_ec;
    net::ip::make_address(server.host, address_ec);
    if (address_ec) {
      // SSL_set_tlsext_host_name() spelled out: the macro hides a C-style cast.
      SSL_ctrl(tls_stream->native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               static_cast<void*>(const_cast<char*>(server.host.c_str())));
    }
  } else {
    plain_stream.emplace(io);
  }
  beast::tcp_stream& lowest = server.tls ? beast::get_lowest_layer(*tls_stream) : *plain_stream;

  http::request<http::string_body> request{verb, server.base_path + target, 11};
  request.set(http::field::host, host_with_port(server));
  request.set(http::field::user_agent, std::string("evald/") + kVersion);
  request.set(http::field::accept, "application/json");
  if (!options.bearer_token.empty()) {
    request.set(http::field::authorization, "Bearer " + options.bearer_token);
  }
  if (!body.empty()) request.set(http::field::content_type, "application/json");
  request.body() = body;
  request.keep_alive(false);  // one request per connection
  request.prepare_payload();

  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxResponseBodyBytes);
  beast::flat_buffer buffer;

  std::optional<std::string> connect_error;
  std::optional<std::string> handshake_error;
  beast::error_code write_error;
  beast::error_code read_error;
  bool have_response = false;

  resolver.async_resolve(
      server.host, std::to_string(server.port), tcp::resolver::numeric_service,
      [&](beast::error_code ec, const tcp::resolver::results_type& endpoints) {
        if (ec) {
          connect_error = ec.message();
          return;
        }
        lowest.async_connect(
            endpoints, [&](beast::error_code connect_ec, const tcp::endpoint& /*endpoint*/) {
              if (connect_ec) {
                connect_error = connect_ec.message();
                return;
              }
              if (!server.tls) {
                exchange(io, *plain_stream, request, parser, buffer, write_error, read_error,
                         have_response);
                return;
              }
              tls_stream->async_handshake(ssl::stream_base::client, [&](beast::error_code hs_ec) {
                if (hs_ec) {
                  handshake_error = hs_ec.message();
                  io.stop();
                  return;
                }
                exchange(io, *tls_stream, request, parser, buffer, write_error, read_error,
                         have_response);
              });
            });
      });
  io.run_for(timeout);

  if (connect_error) return make_error("cannot reach " + server_text + ": " + *connect_error);
  if (handshake_error) {
    return make_error("TLS handshake with " + server_text + " failed: " + *handshake_error);
  }
  if (have_response) {
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
  if (read_error == http::error::body_limit) {
    return make_error("response from " + server_text + " exceeds " +
                      std::to_string(kMaxResponseBodyBytes) + " bytes");
  }
  if (read_error) {
    // A write that failed first explains the read failure better (the server closed on us).
    const auto& cause = write_error ? write_error : read_error;
    return make_error("request to " + server_text + " failed: " + cause.message());
  }
  return make_error("timed out after " + std::to_string(timeout.count()) + " ms waiting for " +
                    server_text);
}

}  // namespace evald
