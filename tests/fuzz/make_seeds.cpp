// Writes the binary seed corpora of the fuzz targets from real encoder output: wire frames of
// every message type (protocol_decode), outbox files (outbox_load) and store records
// (store_records). The text corpora (specs, HTTP requests, runner stdout) are plain files written
// by hand. Run from the repository root after a format change, and commit what changed:
//   build-fuzz/bin/evald-fuzz-make-seeds tests/fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/aggregation.hpp"
#include "common/protocol.hpp"
#include "coordinator/records.hpp"

namespace {

namespace fs = std::filesystem;
using namespace evald;

void write(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + (dir / name).string());
}

protocol::ShardResult succeeded_result() {
  protocol::ShardResult r;
  r.attempt_id = (uint64_t{3} << 32) | 17;
  r.campaign = 1;
  r.model = 2;
  r.benchmark = 1;
  r.shard = 4;
  r.ok = true;
  r.count = 64;
  r.metrics = {{"accuracy", 0.703125}, {"f1", 0.69}};
  r.duration_ms = 1830;
  r.samples_json = R"([{"id":0,"pred":"B","gold":"B"},{"id":1,"pred":"A","gold":"C"}])";
  // Provenance (protocol version 2), so the seeds reach its decoder.
  r.started_at_ms = 1'764'666'000'000;
  r.ended_at_ms = 1'764'666'001'830;
  r.gpus = {0, 1};
  r.executable_sha256 = std::string(64, 'a');
  r.data_sha256 = std::string(64, 'd');
  return r;
}

protocol::ShardResult failed_result() {
  protocol::ShardResult r;
  r.attempt_id = (uint64_t{3} << 32) | 18;
  r.campaign = 1;
  r.shard = 5;
  r.ok = false;
  r.error = "exit code 1: Traceback (most recent call last):\n  File \"score.py\"\nKeyError: 'x'";
  r.duration_ms = 412;
  return r;
}

void protocol_seeds(const fs::path& dir) {
  protocol::Hello hello;
  hello.name = "gpu-node-07";
  hello.instance = "5f0c9a1e2b3d4c5e";
  hello.slots = 4;
  hello.gpus = nlohmann::json::parse(
      R"([{"index":0,"name":"NVIDIA H100 80GB HBM3","memory_mb":81559},
          {"index":1,"name":"NVIDIA H100 80GB HBM3","memory_mb":81559}])");
  hello.labels = {{"zone", "a"}, {"arch", "hopper"}};
  hello.running = {(uint64_t{2} << 32) | 9};
  write(dir, "hello", protocol::encode(hello));
  write(dir, "heartbeat", protocol::encode(protocol::Heartbeat{}));
  write(dir, "results", protocol::encode(protocol::Results{{succeeded_result(), failed_result()}}));
  write(dir, "drain", protocol::encode(protocol::Drain{}));
  write(dir, "hand_back", protocol::encode(protocol::HandBack{{17, 18, 19}}));
  write(dir, "goodbye", protocol::encode(protocol::Goodbye{}));
  write(dir, "welcome", protocol::encode(protocol::Welcome{}));
  protocol::CampaignInfo info;
  info.campaign = 1;
  info.campaign_id = "c000001";
  info.spec_json =
      R"({"name":"r1","models":[{"name":"m"}],"benchmarks":[{"name":"b","examples":10,)"
      R"("shard_size":5}],"runner":{"type":"noop"}})";
  write(dir, "campaign", protocol::encode(info));
  protocol::Assignment a;
  a.attempt_id = (uint64_t{3} << 32) | 19;
  a.campaign = 1;
  a.model = 1;
  a.benchmark = 2;
  a.shard = 3;
  a.start = 192;
  a.end = 256;
  a.attempt = 2;
  a.gpus = {0, 1};
  write(dir, "assign", protocol::encode(protocol::Assign{{a, a}}));
  write(dir, "ack", protocol::encode(protocol::Ack{{17, 18}}));
  write(dir, "cancel", protocol::encode(protocol::Cancel{{19}}));
  write(dir, "rehello", protocol::encode(protocol::ReHello{}));
}

void outbox_seeds(const fs::path& dir) {
  write(dir, "succeeded", protocol::encode(protocol::Results{{succeeded_result()}}));
  write(dir, "failed", protocol::encode(protocol::Results{{failed_result()}}));
  write(dir, "two_results",
        protocol::encode(protocol::Results{{succeeded_result(), failed_result()}}));
}

void store_seeds(const fs::path& dir) {
  // The first byte picks the decoder (fuzz_store_records.cpp): 0 shard, 1 attempt, 2 cell.
  coordinator::ShardRecord shard;
  shard.state = coordinator::ShardState::kSucceeded;
  shard.attempts = 2;
  shard.total_attempts = 2;
  shard.attempt_id = (uint64_t{3} << 32) | 17;
  shard.worker = "gpu-node-07";
  shard.started_at_ms = 1'764'650'000'000;
  shard.duration_ms = 1830;
  shard.count = 64;
  shard.metrics = {{"accuracy", 0.703125}, {"f1", 0.69}};
  write(dir, "shard_succeeded", std::string(1, '\0') + coordinator::encode(shard));
  coordinator::ShardRecord failed;
  failed.state = coordinator::ShardState::kFailed;
  failed.attempts = 3;
  failed.total_attempts = 3;
  failed.worker = "gpu-node-02";
  failed.last_error = "timeout after 3600 s";
  write(dir, "shard_failed", std::string(1, '\0') + coordinator::encode(failed));

  coordinator::AttemptRecord attempt;
  attempt.outcome = coordinator::AttemptOutcome::kStale;
  attempt.attempt = 1;
  attempt.worker = "gpu-node-07";
  attempt.ended_at_ms = 1'764'650'100'000;
  attempt.duration_ms = 99;
  attempt.error = "worker lost";
  attempt.result_ok = true;
  attempt.count = 64;
  attempt.metrics = {{"accuracy", 0.5}};
  write(dir, "attempt_stale", std::string(1, '\1') + coordinator::encode(attempt));

  CellAggregate cell;
  cell.shards_total = 7;
  cell.add({{"accuracy", 0.75}, {"f1", 0.5}}, 64);
  cell.add({{"accuracy", 0.5}}, 16);
  write(dir, "cell", std::string(1, '\2') + coordinator::encode(cell));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR   (e.g. tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  try {
    const fs::path root = argv[1];
    protocol_seeds(root / "protocol_decode");
    outbox_seeds(root / "outbox_load");
    store_seeds(root / "store_records");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
