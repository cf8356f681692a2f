// CURVE key files, the --worker-keys allowlist, key-pair files and the loopback test of protected
// mode (common/curve_keys.hpp); and the name <-> connection table of the coordinator
// (coordinator/worker_auth.hpp).
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "common/curve_keys.hpp"
#include "coordinator/worker_auth.hpp"
#include "tests/support/test_support.hpp"

namespace {

using evald::coordinator::Connections;
using evald::coordinator::PeerLogLimit;

// ZeroMQ's own test vector (zmq_z85_encode docs / RFC 32).
constexpr const char* kPublic = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
constexpr const char* kSecret = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs";

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

TEST_CASE("curve keys: Z85 keys are checked and the public key is derived", "[unit]") {
  CHECK(evald::is_z85_key(kPublic));
  CHECK_FALSE(evald::is_z85_key(std::string(kPublic).substr(1)));
  CHECK_FALSE(evald::is_z85_key(std::string(39, 'a') + "\""));  // '"' is not Z85
  CHECK(evald::curve_public_key(kSecret).value() == kPublic);
  const auto pair = evald::generate_curve_key_pair();
  CHECK(evald::curve_public_key(pair.secret_z85).value() == pair.public_z85);
  CHECK(pair.secret_z85 != evald::generate_curve_key_pair().secret_z85);
}

TEST_CASE("curve keys: key files take one key and an optional newline", "[unit]") {
  evald::testing::TempDir dir("evald-keys");
  const auto path = (dir.path() / "k").string();
  std::ofstream(path) << kPublic << "\n";
  CHECK(evald::read_key_file(path, "--coordinator-key", false).value() == kPublic);
  std::ofstream(path) << kPublic;
  CHECK(evald::read_key_file(path, "--coordinator-key", false).value() == kPublic);
  std::ofstream(path) << kPublic << "\n\n";
  auto two_lines = evald::read_key_file(path, "--coordinator-key", false);
  REQUIRE_FALSE(two_lines.ok());
  CHECK_THAT(two_lines.error().message,
             Catch::StartsWith("--coordinator-key: " + path) && Catch::Contains("not a CURVE key"));
  auto missing = evald::read_key_file(path + ".nope", "--curve-secret", true);
  REQUIRE_FALSE(missing.ok());
  CHECK_THAT(missing.error().message, Catch::StartsWith("--curve-secret: " + path + ".nope"));
}

TEST_CASE("curve keys: key pairs are written 0600 / 0644 and never overwritten by accident",
          "[unit]") {
  evald::testing::TempDir dir("evald-keys");
  const auto prefix = (dir.path() / "node").string();
  const auto pair = evald::generate_curve_key_pair();
  REQUIRE(evald::write_key_pair(prefix, pair, false).ok());
  CHECK(mode_of(prefix + ".secret") == 0600);
  CHECK(mode_of(prefix + ".public") == 0644);
  CHECK(evald::read_key_file(prefix + ".secret", "--curve-secret", true).value() ==
        pair.secret_z85);
  CHECK(evald::read_key_file(prefix + ".public", "--coordinator-key", false).value() ==
        pair.public_z85);

  const auto other = evald::generate_curve_key_pair();
  auto refused = evald::write_key_pair(prefix, other, false);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.error().message, Catch::Contains("already exists"));
  CHECK(evald::read_key_file(prefix + ".secret", "--curve-secret", true).value() ==
        pair.secret_z85);
  // Only the public half left: still refused, and the secret is not created either.
  std::filesystem::remove(prefix + ".secret");
  CHECK_FALSE(evald::write_key_pair(prefix, other, false).ok());
  CHECK_FALSE(std::filesystem::exists(prefix + ".secret"));

  ::chmod((prefix + ".public").c_str(), 0666);
  REQUIRE(evald::write_key_pair(prefix, other, true).ok());
  CHECK(mode_of(prefix + ".secret") == 0600);
  CHECK(mode_of(prefix + ".public") == 0644);
  CHECK(evald::read_key_file(prefix + ".secret", "--curve-secret", true).value() ==
        other.secret_z85);
}

TEST_CASE("curve keys: the worker allowlist", "[unit]") {
  const std::string key1 = evald::generate_curve_key_pair().public_z85;
  const std::string key2 = evald::generate_curve_key_pair().public_z85;
  auto parsed = evald::parse_worker_keys(
      "# fleet\n\n  gpu-1 " + key1 + "   # rack 3\n\tgpu-2\t" + key2 + "\r\n", "keys.txt");
  REQUIRE(parsed.ok());
  CHECK(parsed->name_by_key.size() == 2);
  CHECK(parsed->name_by_key.at(key1) == "gpu-1");
  CHECK(parsed->name_by_key.at(key2) == "gpu-2");
  CHECK(evald::parse_worker_keys("", "empty").value().name_by_key.empty());
  // '#' is a Z85 character: inside a key it is not a comment.
  const std::string hashed = "a#cdefghij0123456789ABCDEFGHIJ0123456789";
  REQUIRE(evald::is_z85_key(hashed));
  CHECK(evald::parse_worker_keys("gpu-3 " + hashed + " #note\n#gpu-4 " + key1, "k")
            .value()
            .name_by_key.at(hashed) == "gpu-3");

  auto error_of = [](const std::string& text) {
    auto result = evald::parse_worker_keys(text, "keys.txt");
    REQUIRE_FALSE(result.ok());
    return result.error().message;
  };
  CHECK_THAT(error_of("# a\ngpu-1\n"), Catch::StartsWith("keys.txt:2:"));
  CHECK_THAT(error_of("gpu-1 " + key1 + " extra\n"), Catch::StartsWith("keys.txt:1:"));
  CHECK_THAT(error_of("gpu-1 not-a-key\n"), Catch::StartsWith("keys.txt:1:"));
  CHECK_THAT(error_of("gpu-1 " + key1 + "\ngpu-1 " + key2 + "\n"),
             Catch::StartsWith("keys.txt:2:") && Catch::Contains("listed twice"));
  CHECK_THAT(error_of("gpu-1 " + key1 + "\ngpu-2 " + key1 + "\n"),
             Catch::StartsWith("keys.txt:2:") && Catch::Contains("gpu-1"));
}

TEST_CASE("curve keys: loopback endpoints need no keys, others do", "[unit]") {
  for (const char* endpoint : {"tcp://127.0.0.1:5555", "tcp://127.1.2.3:0", "tcp://localhost:5555",
                               "tcp://[::1]:5555", "ipc:///run/evald.sock", "inproc://x"}) {
    INFO(endpoint);
    CHECK(evald::is_loopback_endpoint(endpoint));
  }
  for (const char* endpoint :
       {"tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.0.0.1:5555", "tcp://[::]:5555",
        "tcp://eth0:5555", "tcp://127.0.0.1.evil.example:5555", "tcp://1270.0.0.1:1",
        "tcp://127.0.0:1", "tcp://[::1", "pgm://eth0;239.192.1.1:5555", "tcp://127.0.0.256:1"}) {
    INFO(endpoint);
    CHECK_FALSE(evald::is_loopback_endpoint(endpoint));
  }
}

TEST_CASE("connections: a HELLO binds a name to one connection, the old one goes stale", "[unit]") {
  Connections connections;
  connections.bind("w1", "A");
  CHECK(*connections.name_of("A") == "w1");
  CHECK(*connections.connection_of("w1") == "A");
  // A reconnect of w1: A is stale, messages from it map to no name.
  connections.bind("w1", "B");
  CHECK(connections.name_of("A") == nullptr);
  CHECK(*connections.name_of("B") == "w1");
  CHECK(*connections.connection_of("w1") == "B");
  // B says HELLO as w2 (possible without CURVE): w1 has no connection any more.
  connections.bind("w2", "B");
  CHECK(connections.connection_of("w1") == nullptr);
  CHECK(*connections.name_of("B") == "w2");
  CHECK(connections.size() == 1);
  connections.bind("w2", "B");
  CHECK(connections.size() == 1);
}

TEST_CASE("connections: refusals are logged once per peer and interval", "[unit]") {
  PeerLogLimit limit(std::chrono::seconds(60));
  const auto t0 = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  CHECK(limit.allow("10.0.0.1", t0));
  CHECK_FALSE(limit.allow("10.0.0.1", t0 + std::chrono::seconds(59)));
  CHECK(limit.allow("10.0.0.2", t0 + std::chrono::seconds(1)));
  CHECK(limit.allow("10.0.0.1", t0 + std::chrono::seconds(60)));
}

}  // namespace
