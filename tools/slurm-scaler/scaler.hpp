// evald-slurm-scaler: grows a Slurm-run worker fleet with the coordinator's queue (README.md).
//
// Each round it reads the coordinator's /metrics (evald_pending_gpu_seconds and
// evald_workers_idle per kind of worker), lists the jobs it owns with squeue (by job name and
// user), and submits deploy/slurm worker jobs, one node each, while the pending work would keep
// more nodes busy for the target drain time than it has, up to --max-nodes. It never cancels a
// job that runs: the workers it starts carry --idle-exit-s, so a worker with nothing to do
// drains and exits by itself, and its job ends. That is the one way down that loses nothing: only
// the worker knows for sure that it holds no shard and no unacknowledged result. Jobs still
// waiting in the Slurm queue when the work is gone are cancelled (no worker runs in them yet).
//
// Everything here runs on the main thread; the pure parts (metrics parsing, the decision) are
// free functions so the tests can check them without a coordinator or a Slurm.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cli_options.hpp"
#include "common/http_client.hpp"
#include "common/result.hpp"

namespace evald::slurm_scaler {

struct ScalerConfig {
  std::string coordinator_url;  // http(s)://HOST:PORT of the coordinator's --http
  HttpClientOptions http;       // token, CA
  std::string worker_endpoint;  // tcp://HOST:PORT of the coordinator's --bind, for the workers
  std::string sbatch_script;    // deploy/slurm/evald-workers.sbatch
  std::map<std::string, std::string> labels;  // the pool: labels every worker it starts has
  std::string labels_text;                    // the same, as given ("k=v,k2=v2")
  uint32_t gpus_per_node = 8;
  std::chrono::seconds target_drain{3600};
  uint32_t min_nodes = 0;
  uint32_t max_nodes = 1;
  std::chrono::seconds idle_exit{600};  // --idle-exit-s of the workers it starts
  std::chrono::seconds interval{30};
  bool once = false;
  std::string job_name = "evald-scaled-workers";
  std::vector<std::string> sbatch_args;  // passed through (partition, --gpus-per-node, --time)
  std::string sbatch = "sbatch";
  std::string squeue = "squeue";
  std::string scancel = "scancel";
  std::chrono::seconds command_timeout{60};
  std::string log_level = "info";
};

po::options_description scaler_options();
// A bad value is an error naming the flag ("--max-nodes: must be between 1 and 100000").
Result<ScalerConfig> scaler_config_from(const po::variables_map& values);

// --- the coordinator's view ------------------------------------------------------------------

// "k=v,k2=v2" (a worker's --labels, or the `labels` label of the capacity gauges) -> map.
Result<std::map<std::string, std::string>> parse_labels(std::string_view text);

// One sample of a gauge with a `labels` label: evald_pending_gpu_seconds{labels="pool=a"} 240.
struct KindSample {
  std::string kind;  // the `labels` label: a kind of worker, or "all"
  double value = 0;
};

// The samples of `metric` in a Prometheus text exposition. Lines of other metrics are skipped;
// a malformed line of this one is an error naming it.
Result<std::vector<KindSample>> parse_kind_gauge(std::string_view exposition,
                                                 std::string_view metric);

// What the pool's workers could do now.
struct Demand {
  double pending_gpu_s = 0;  // expected GPU-seconds of pending work a pool worker could run
  // "pool": from the kinds of worker that carry the pool's labels (the most of them: each
  // counts all the work it could run). "all": no such worker is known to the coordinator yet
  // (a fleet at zero), so all pending work counts.
  std::string source;
  int64_t idle_workers = 0;  // connected pool workers running nothing
};

Result<Demand> demand_from_metrics(std::string_view exposition,
                                   const std::map<std::string, std::string>& pool_labels);

// --- the decision ----------------------------------------------------------------------------

struct Decision {
  uint32_t wanted = 0;  // nodes that would drain the pending work in the target time, bounded
  uint32_t submit = 0;  // new jobs to submit now
  uint32_t cancel = 0;  // queued (not yet started) jobs to cancel
  std::string reason;
};

// Pure: wanted = ceil(pending GPU-s / (GPUs per node x target drain)), within [min, max]. Jobs
// are submitted up to `wanted` (never past max), none while pool workers sit idle (the work is
// not theirs to take, or they just finished); queued jobs beyond both `wanted` and the running
// ones are cancelled.
Decision decide(const Demand& demand, uint32_t running_jobs, uint32_t queued_jobs,
                const ScalerConfig& config);

// --- Slurm -----------------------------------------------------------------------------------

struct CommandOutput {
  int exit_code = 0;
  std::string out;
  std::string err;
};

// Runs argv[0] (searched in PATH) with `extra_env` added to this process's environment; stdin is
// /dev/null. An error when it cannot start or runs past `timeout` (it is then killed).
Result<CommandOutput> run_command(const std::vector<std::string>& argv,
                                  const std::map<std::string, std::string>& extra_env,
                                  std::chrono::seconds timeout);

struct Job {
  std::string id;
  std::string state;  // squeue's %T: PENDING, RUNNING, ...
};

// Parses `squeue --noheader --format=%i|%T` output.
Result<std::vector<Job>> parse_squeue(std::string_view out);
// A job that holds or will hold a node for us (PENDING, CONFIGURING, RUNNING, COMPLETING, ...):
// not one that has finished or was cancelled.
bool job_active(const Job& job);
bool job_queued(const Job& job);  // not started yet

// --- one round -------------------------------------------------------------------------------

class Scaler {
 public:
  explicit Scaler(ScalerConfig config);
  // Reads, decides, acts, logs one `decision` line. An error (coordinator unreachable, squeue or
  // sbatch failing) is logged by the caller; the next round starts afresh.
  Status round();
  const ScalerConfig& config() const { return config_; }

 private:
  Result<std::string> fetch_metrics();
  Result<std::vector<Job>> list_jobs();
  Result<std::string> submit_job();
  Status cancel_job(const std::string& id);

  ScalerConfig config_;
  HttpUrl url_;
  std::string user_;
  std::map<std::string, std::string> known_jobs_;  // id -> last state seen, to log endings
  uint64_t rounds_ = 0;
};

}  // namespace evald::slurm_scaler
