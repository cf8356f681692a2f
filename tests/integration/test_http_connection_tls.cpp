// HttpConnection over HTTPS, against the real coordinator serving its API with --tls-cert: one
// TLS session carries many requests, and a server certificate that the CA bundle does not
// trust is an error value that says the handshake failed (the openai runner's `endpoint` models
// may be https).
#include <catch2/catch.hpp>

#include "common/http_connection.hpp"
#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;

// A throwaway CA, a server certificate for 127.0.0.1, and a second CA that signed nothing here.
void make_certificates(const std::filesystem::path& dir) {
  const std::string script =
      "set -e; cd '" + dir.string() +
      "'\n"
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=evald-test-ca "
      "-keyout ca.key -out ca.pem 2>/dev/null\n"
      "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key "
      "-out server.csr 2>/dev/null\n"
      "printf 'subjectAltName=IP:127.0.0.1\\n' > server.ext\n"
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
      "-extfile server.ext -out server.pem 2>/dev/null\n"
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca "
      "-keyout other.key -out other.pem 2>/dev/null\n";
  const auto made = run_command("/bin/sh", {"-c", script}, 60s);
  REQUIRE(made.exit_code == 0);
}

}  // namespace

TEST_CASE("HttpConnection keeps one TLS session for many requests, and refuses an untrusted one",
          "[integration][http]") {
  TempDir pki("evald-conn-pki");
  make_certificates(pki.path());
  ClusterOptions options;
  options.workers = 0;
  options.wait_for_workers = false;
  options.coordinator.extra_args = {"--tls-cert", (pki.path() / "server.pem").string(), "--tls-key",
                                    (pki.path() / "server.key").string()};
  TestCluster cluster(options);
  auto url = evald::parse_http_url("https://" + cluster.coordinator().http_address());
  REQUIRE(url.ok());

  evald::HttpClientOptions trusted;
  trusted.ca_file = (pki.path() / "ca.pem").string();
  evald::HttpConnection connection(url.value(), trusted);
  for (int i = 0; i < 5; ++i) {
    auto response = connection.request("GET", "/healthz", "", 10s);
    REQUIRE(response.ok());
    CHECK(response->status == 200);
  }
  CHECK(connection.connects() == 1);

  evald::HttpClientOptions untrusted;
  untrusted.ca_file = (pki.path() / "other.pem").string();
  evald::HttpConnection refused(url.value(), untrusted);
  auto failed = refused.request("GET", "/healthz", "", 10s);
  REQUIRE_FALSE(failed.ok());
  CHECK_THAT(failed.error().message, Catch::Contains("TLS handshake with https://127.0.0.1:"));
  CHECK(refused.connects() == 0);
}
