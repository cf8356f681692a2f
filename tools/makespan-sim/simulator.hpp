// Makespan simulator: runs the coordinator's real Scheduler (coordinator/scheduler.hpp) against a
// simulated cluster on a virtual clock and measures how long a campaign takes, how busy the GPUs
// are and how often model weights are loaded, next to a lower bound no schedule can beat.
// Used by the evald-makespan-sim tool and its ctest checks (tools/makespan-sim/README.md).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "tools/makespan-sim/scenario.hpp"

namespace evald::sim {

struct SimOptions {
  // Where the scratch RocksDB directory is made (and removed afterwards); empty = /dev/shm where
  // it is writable, else the system temp directory. The scheduler commits (fsync) once per
  // simulated turn, so a tmpfs makes a run about 50 times faster than a disk.
  std::filesystem::path scratch_parent;
  bool timeline = false;  // keep each worker's sequence of model loads for the report
};

// The lower bound of the makespan, in milliseconds: the largest of
//  * work: (GPU-ms of every shard + the GPU time one load of each model costs) / GPUs in the
//    cluster. A worker holds one model at a time, so a load idles the whole worker except for
//    the shards started before it: G x load - (G - the model's GPUs) x min(load, longest shard)
//    on a worker of G GPUs, on the eligible group where that is least;
//  * placement: for a set of worker groups, the same work of the models that can run only on
//    those groups (labels, GPU count, GPU memory), over those groups' GPUs;
//  * chain: for one model, its load plus its shards spread over the shards of it the whole
//    cluster can run at once (each worker: GPUs / the model's GPUs), or its longest shard if
//    that is longer. A model that fits few workers is a long chain even on an idle cluster;
//  * longest: the longest shard plus its model's load (the chain of a model on a large cluster).
// Each component names what binds it, so a reader can see which one the ratio is measured against.
struct LowerBound {
  int64_t work_ms = 0;
  int64_t longest_ms = 0;
  int64_t placement_ms = 0;
  std::string placement_groups;  // the worker groups of the binding set ("h100+a100")
  int64_t chain_ms = 0;
  std::string chain_model;  // the model whose chain binds
  int64_t value_ms() const { return std::max({work_ms, longest_ms, placement_ms, chain_ms}); }
  // "work", "placement", "chain" or "longest": the component equal to value_ms().
  std::string binding() const;
};
LowerBound lower_bound(const Scenario& scenario);

struct ModelLoad {
  int64_t at_ms = 0;
  uint32_t model = 0;
};

struct WorkerReport {
  std::string name;
  int gpus = 0;
  int64_t loads = 0;
  int64_t busy_gpu_ms = 0;
  std::vector<ModelLoad> timeline;  // only with SimOptions::timeline
};

struct ModelReport {
  std::string name;
  int gpus = 0;
  int64_t shards = 0;
  int64_t loads = 0;
  int64_t shard_gpu_ms = 0;  // computing, without loads
};

struct SimReport {
  std::string scenario;
  bool completed = false;
  std::string failure;  // why not completed, or a scheduler invariant the simulation saw broken
  int64_t total_gpus = 0;
  size_t workers = 0;
  size_t benchmarks = 0;
  int64_t shards = 0;
  int64_t makespan_ms = 0;
  LowerBound bound;
  int64_t busy_gpu_ms = 0;          // loads (and waiting for them) included
  int64_t load_gpu_ms = 0;          // the part of busy_gpu_ms spent loading or waiting for a load
  int64_t idle_pending_gpu_ms = 0;  // GPUs idle while some shard was still pending
  int64_t idle_drain_gpu_ms = 0;    // GPUs idle with nothing left to start (the last shards run)
  int64_t loads = 0;
  int64_t min_loads = 0;         // every model at least once
  int64_t backup_copies = 0;     // second copies of a running shard the scheduler started
  int64_t copies_cancelled = 0;  // copies stopped because the other copy finished first
  int64_t turns = 0;
  double wall_s = 0;  // real time the simulation took
  std::vector<ModelReport> models;
  std::vector<WorkerReport> worker_reports;

  double ratio() const;
  double gpu_utilisation() const;
};

// Runs the campaign to its end. An error means the simulation could not be set up (the scratch
// store); a campaign that does not complete is a report with completed == false.
Result<SimReport> simulate(const Scenario& scenario, const SimOptions& options);

struct Targets {
  double max_ratio = 1.10;       // makespan / lower bound
  double max_load_factor = 2.0;  // loads / minimum loads
};
// What misses the targets, one line each; empty when every target is met.
std::vector<std::string> check_targets(const SimReport& report, const Targets& targets);

std::string format_report(const SimReport& report, const Targets& targets);
nlohmann::json to_json(const SimReport& report);

}  // namespace evald::sim
