// Scenario: the input of the makespan simulator (tools/makespan-sim/README.md describes the JSON).
// A simulated cluster (groups of identical workers), a normal campaign spec, and the cost model's
// numbers: how long loading each model takes and how long each shard runs. Parsed from a file a
// person wrote, so every problem comes back as an Error that names the field.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "common/spec.hpp"

namespace evald::sim {

// Identical workers; they are named "<name>-1", "<name>-2", ...
struct WorkerGroup {
  std::string name = "node";
  uint32_t workers = 0;
  uint32_t gpus_per_worker = 0;
  double gpu_memory_gb = 80;
  nlohmann::json labels = nlohmann::json::object();
  // Its shards compute this many times longer than the scenario says (a throttled or older node
  // that says HELLO like the others); loads take as long as anywhere.
  double slowdown = 1.0;
  int64_t compute_ms(int64_t shard_ms) const {
    return std::llround(static_cast<double>(shard_ms) * slowdown);
  }
};

struct Scenario {
  std::string name;  // the campaign's name unless the file sets "name"
  std::vector<WorkerGroup> cluster;
  CampaignSpec campaign;
  std::vector<int64_t> load_ms;        // per model index
  std::vector<int64_t> full_shard_ms;  // per group (model * benchmarks + benchmark)
  std::vector<int> gpus;               // per model index: GPUs one shard holds
  double jitter = 0;                   // each shard's duration is scaled by 1 +- up to this
  uint64_t seed = 1;

  int64_t total_gpus() const;
  size_t total_workers() const;
  // How long shard `index` of model x benchmark computes once its model is loaded: the full-shard
  // time scaled by the examples the shard holds (the last one is often short), then jittered by a
  // hash of (seed, model, benchmark, index), so it does not depend on the order shards run in.
  int64_t shard_ms(uint32_t model, uint32_t benchmark, uint32_t index) const;
};

Result<Scenario> parse_scenario(const nlohmann::json& json);
Result<Scenario> load_scenario(const std::filesystem::path& path);

}  // namespace evald::sim
