// Provenance on the wire (protocol version 2) and the SHA-256 helpers it relies on: the new
// fields round-trip, every truncated prefix is refused, and a version-1 RESULTS frame (a worker
// outbox written before the upgrade) still decodes, without provenance.
#include <catch2/catch.hpp>
#include <fstream>

#include "common/binary_codec.hpp"
#include "common/protocol.hpp"
#include "common/sha256.hpp"
#include "tests/support/test_support.hpp"

using namespace evald::protocol;

namespace {

ShardResult sample_result() {
  ShardResult r;
  r.attempt_id = 77;
  r.campaign = 3;
  r.model = 1;
  r.benchmark = 2;
  r.shard = 9;
  r.ok = true;
  r.count = 40;
  r.metrics = {{"accuracy", 0.75}};
  r.duration_ms = 1500;
  r.started_at_ms = 1'764'000'000'000;
  r.ended_at_ms = 1'764'000'001'500;
  r.gpus = {2, 3};
  r.executable_sha256 = std::string(64, 'a');
  r.data_sha256 = std::string(64, 'b');
  return r;
}

}  // namespace

TEST_CASE("result provenance round-trips and truncations are refused", "[unit][protocol]") {
  const auto r = sample_result();
  const auto frame = encode(Message{Results{{r}}});
  CHECK(static_cast<uint8_t>(frame[2]) == kProtocolVersion);
  auto decoded = decode(frame);
  REQUIRE(decoded.ok());
  const auto& got = std::get<Results>(decoded.value()).results.at(0);
  CHECK(got.started_at_ms == r.started_at_ms);
  CHECK(got.ended_at_ms == r.ended_at_ms);
  CHECK(got.gpus == r.gpus);
  CHECK(got.executable_sha256 == r.executable_sha256);
  CHECK(got.data_sha256 == r.data_sha256);
  for (size_t n = 0; n < frame.size(); ++n) CHECK_FALSE(decode(frame.substr(0, n)).ok());

  Hello h;
  h.name = "node-1";
  h.host = "gpu-host-7";
  auto hello = decode(encode(Message{h}));
  REQUIRE(hello.ok());
  CHECK(std::get<Hello>(hello.value()).host == "gpu-host-7");
}

TEST_CASE("a version-1 results frame still decodes, without provenance", "[unit][protocol]") {
  // The version-1 layout, written by hand: what an outbox from before the upgrade holds.
  std::string frame = {'E', 'V', 1, static_cast<char>(MessageType::kResults)};
  evald::BinaryWriter w(frame);
  w.u32(1);
  w.u64(5);   // attempt id
  w.u32(1);   // campaign
  w.u32(0);   // model
  w.u32(0);   // benchmark
  w.u32(4);   // shard
  w.u8(1);    // ok
  w.i64(10);  // count
  w.u32(1);
  w.str("accuracy");
  w.f64(0.5);
  w.str("");  // error
  w.u32(20);  // duration
  w.str("");  // samples
  auto decoded = decode(frame);
  REQUIRE(decoded.ok());
  const auto& got = std::get<Results>(decoded.value()).results.at(0);
  CHECK(got.attempt_id == 5);
  CHECK(got.count == 10);
  CHECK(got.started_at_ms == 0);
  CHECK(got.executable_sha256.empty());
  // A version-2 frame cut right after the version-1 fields is short, not a version-1 frame.
  auto v2 = frame;
  v2[2] = 2;
  CHECK_FALSE(decode(v2).ok());
  auto v3 = frame;
  v3[2] = 3;
  CHECK_FALSE(decode(v3).ok());
}

TEST_CASE("sha256 of strings and files matches known digests", "[unit][sha256]") {
  // FIPS 180-2 test vectors.
  CHECK(evald::sha256_hex("") ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(evald::sha256_hex("abc") ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  evald::testing::TempDir dir;
  const auto path = dir.path() / "data.bin";
  {
    // 3 MiB of 'a' crosses the 1 MiB read buffer twice; compare with hashing it in memory.
    std::ofstream out(path, std::ios::binary);
    out << std::string(size_t{3} << 20, 'a') << "tail";
  }
  auto hashed = evald::sha256_file_hex(path);
  REQUIRE(hashed.ok());
  // Appended in place: `std::string(n, 'a') + "tail"` trips GCC 12's -Warray-bounds false positive.
  std::string expected_content(size_t{3} << 20, 'a');
  expected_content.append("tail");
  CHECK(hashed.value() == evald::sha256_hex(expected_content));
  auto missing = evald::sha256_file_hex(dir.path() / "nope");
  REQUIRE_FALSE(missing.ok());
  CHECK_THAT(missing.error().message, Catch::Contains("nope"));
  CHECK(evald::is_sha256_hex(hashed.value()));
  CHECK_FALSE(evald::is_sha256_hex(std::string(64, 'A')));
  CHECK_FALSE(evald::is_sha256_hex("abc"));
}
