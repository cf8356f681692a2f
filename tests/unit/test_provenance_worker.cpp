// The worker's side of provenance: GPU UUIDs from nvidia-smi, the file hash cache (a file is
// hashed once per version, and a changed file is hashed again), and the data pin's fields in an
// exec job.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "common/sha256.hpp"
#include "common/spec.hpp"
#include "tests/support/test_support.hpp"
#include "worker/exec_runner.hpp"
#include "worker/file_hash_cache.hpp"
#include "worker/gpu.hpp"

using evald::worker::FileHashCache;

TEST_CASE("nvidia-smi output with a uuid column names each GPU's uuid", "[unit][gpu]") {
  const auto gpus = evald::worker::parse_nvidia_smi_csv(
      "0, NVIDIA H200, 143771, GPU-5f3c2a1e-0000-1111-2222-333344445555\n"
      "1, Weird, Name, 1024, MIG-aaaa\n"
      "2, Old Driver, 2048\n");
  REQUIRE(gpus.ok());
  REQUIRE(gpus->size() == 3);
  CHECK(gpus->at(0).uuid == "GPU-5f3c2a1e-0000-1111-2222-333344445555");
  CHECK(gpus->at(0).memory_mib == 143771);
  CHECK(gpus->at(1).name == "Weird, Name");
  CHECK(gpus->at(1).uuid == "MIG-aaaa");
  CHECK(gpus->at(2).uuid.empty());
  CHECK(gpus->at(2).memory_mib == 2048);
  const auto json = evald::worker::to_json(gpus.value());
  CHECK(json[0]["uuid"] == "GPU-5f3c2a1e-0000-1111-2222-333344445555");
  CHECK_FALSE(json[2].contains("uuid"));
}

TEST_CASE("file hash cache hashes a file once per version", "[unit][provenance]") {
  evald::testing::TempDir dir;
  const auto path = dir.path() / "data.jsonl";
  {
    std::ofstream out(path);
    out << "one\n";
  }
  FileHashCache cache;
  auto first = cache.sha256(path);
  REQUIRE(first.ok());
  CHECK(first.value() == evald::sha256_hex("one\n"));
  auto again = cache.sha256(path);
  REQUIRE(again.ok());
  CHECK(again.value() == first.value());
  CHECK(cache.files_hashed() == 1);
  CHECK(cache.cache_hits() == 1);

  {
    std::ofstream out(path);
    out << "two, longer\n";  // another size, so the change is seen whatever the mtime tick
  }
  auto changed = cache.sha256(path);
  REQUIRE(changed.ok());
  CHECK(changed.value() == evald::sha256_hex("two, longer\n"));
  CHECK(cache.files_hashed() == 2);

  auto missing = cache.sha256(dir.path() / "gone");
  REQUIRE_FALSE(missing.ok());
  CHECK_THAT(missing.error().message, Catch::Contains("gone"));
  auto directory = cache.sha256(dir.path());
  REQUIRE_FALSE(directory.ok());
  CHECK_THAT(directory.error().message, Catch::Contains("not a regular file"));
}

TEST_CASE("an exec job carries the benchmark's data path and pin", "[unit][provenance]") {
  auto spec = evald::parse_campaign_spec(nlohmann::json::parse(R"({
    "name": "pin", "models": [{"name": "m"}],
    "benchmarks": [{"name": "b", "examples": 4, "shard_size": 2,
                    "params": {"data": "/data/b.jsonl", "data_sha256": ")" +
                                                               std::string(64, 'c') + R"("}}],
    "runner": {"type": "exec", "command": ["/bin/true"]}})"));
  REQUIRE(spec.ok());
  evald::protocol::Assignment a{.attempt_id = 1, .start = 0, .end = 2, .gpus = {1}};
  const evald::worker::RunRequest request{a, spec.value(), "c1"};
  const auto job = evald::worker::build_exec_job(request, {}, "/tmp/runs");
  CHECK(job.data_path == "/data/b.jsonl");
  CHECK(job.data_sha256_pin == std::string(64, 'c'));
  CHECK(job.identity.gpus == std::vector<uint32_t>{1});
  CHECK(evald::worker::data_changed_error("aa", "bb", "/d") ==
        "data changed: expected aa, got bb (/d)");
}
