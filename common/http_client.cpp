// Blocking HTTP/1.1 client; the contract is in http_client.hpp.
//
// Each request runs on its own small io_context on the calling thread, which makes one deadline
// cover everything (resolve, connect, write, read) via run_for(). The request is written and the
// response read at the same time: a server that refuses a large body (413) answers before it has
// read all of it, and the client must see that answer instead of failing on a half-sent body.
#include "common/http_client.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <optional>
#include <stdexcept>

#include "common/version.hpp"

namespace evald {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
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

std::string describe(const HttpUrl& url) {
  return "http://" + host_with_port(url);
}

}  // namespace

Result<HttpUrl> parse_http_url(const std::string& url) {
  const auto invalid = [&](const std::string& why) {
    return make_error("invalid server URL '" + url + "': " + why +
                      " (expected http://HOST[:PORT][/PREFIX])");
  };
  constexpr std::string_view kScheme = "http://";
  if (url.rfind("https://", 0) == 0) {
    return make_error("https is not supported: " + url + " (use http:// behind a TLS proxy)");
  }
  if (url.rfind(kScheme, 0) != 0) return invalid("it must start with http://");
  const std::string rest = url.substr(kScheme.size());
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

Result<HttpResponse> http_request(const HttpUrl& server, const std::string& method,
                                  const std::string& target, const std::string& body,
                                  std::chrono::milliseconds timeout) {
  const std::string server_text = describe(server);
  const http::verb verb = http::string_to_verb(method);
  if (verb == http::verb::unknown) return make_error("unknown HTTP method '" + method + "'");

  net::io_context io{1};
  tcp::resolver resolver(io);
  beast::tcp_stream stream(io);

  http::request<http::string_body> request{verb, server.base_path + target, 11};
  request.set(http::field::host, host_with_port(server));
  request.set(http::field::user_agent, std::string("evald/") + kVersion);
  request.set(http::field::accept, "application/json");
  if (!body.empty()) request.set(http::field::content_type, "application/json");
  request.body() = body;
  request.keep_alive(false);  // one request per connection
  request.prepare_payload();

  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxResponseBodyBytes);
  beast::flat_buffer buffer;

  std::optional<std::string> connect_error;
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
        stream.async_connect(endpoints, [&](beast::error_code connect_ec,
                                            const tcp::endpoint& /*endpoint*/) {
          if (connect_ec) {
            connect_error = connect_ec.message();
            return;
          }
          http::async_write(stream, request,
                            [&](beast::error_code ec2, size_t /*bytes*/) { write_error = ec2; });
          http::async_read(stream, buffer, parser, [&](beast::error_code ec2, size_t /*bytes*/) {
            read_error = ec2;
            have_response = !ec2;
            // The write may still be pending if the server answered early (413); do not wait
            // for it.
            io.stop();
          });
        });
      });
  io.run_for(timeout);

  if (connect_error) return make_error("cannot reach " + server_text + ": " + *connect_error);
  if (have_response) {
    auto& message = parser.get();
    HttpResponse response;
    response.status = static_cast<int>(message.result_int());
    response.content_type = std::string(message[http::field::content_type]);
    response.body = std::move(message.body());
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
