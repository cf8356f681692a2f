// What the failure-injection tests (nothing lost, graceful stop) read back while a cluster runs:
// shards and workers from the API, the trace files that evald-test-runner leaves (`trace_dir`:
// <model>.<benchmark>.<shard>.<attempt>.started / .finished / .pids), and the processes it starts.
// A test waits on these instead of sleeping, which is what makes its interleavings deterministic.
#pragma once

#include <catch2/catch.hpp>
#include <compare>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/support/cluster.hpp"
#include "tests/support/test_support.hpp"

namespace evald::testing {

// A shard as the API names it.
struct ShardRef {
  std::string model;
  std::string benchmark;
  int64_t index = 0;

  auto operator<=>(const ShardRef&) const = default;
};

inline ShardRef ref_of(const nlohmann::json& shard) {
  return ShardRef{shard.at("model").get<std::string>(), shard.at("benchmark").get<std::string>(),
                  shard.at("index").get<int64_t>()};
}

inline std::string describe(const ShardRef& s) {
  return s.model + "/" + s.benchmark + "/" + std::to_string(s.index);
}

// The cluster's trace dir, created; pass it to the runner as "trace_dir".
inline std::filesystem::path make_trace_dir(const Cluster& cluster) {
  auto dir = cluster.dir() / "trace";
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::filesystem::path trace_file(const std::filesystem::path& trace_dir, const ShardRef& s,
                                        int attempt, const std::string& what) {
  return trace_dir / (s.model + "." + s.benchmark + "." + std::to_string(s.index) + "." +
                      std::to_string(attempt) + "." + what);
}

// GET /v1/campaigns/ID/shards?state=STATE, the "shards" array, by value: a range-for over
// `api.shards(id).at("shards")` would iterate a reference into a destroyed temporary.
inline nlohmann::json shard_list(const Api& api, const std::string& id,
                                 const std::string& state = "") {
  return api.shards(id, state).at("shards");
}

inline nlohmann::json find_shard(const Api& api, const std::string& id, const ShardRef& ref) {
  const nlohmann::json shards = shard_list(api, id);
  for (const auto& s : shards) {
    if (ref_of(s) == ref) return s;
  }
  FAIL("no shard " << describe(ref) << " in campaign " << id << ": " << shards.dump());
  return nullptr;
}

// The worker's entry in GET /v1/workers, or null.
inline nlohmann::json worker_json(const Api& api, const std::string& name) {
  for (const auto& w : api.workers()) {
    if (w.at("name") == name) return w;
  }
  return nullptr;
}

}  // namespace evald::testing
