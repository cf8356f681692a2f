// WorkerConfig: the resolved configuration of evald-worker (docs/binaries.md), and the
// flags it comes from. main() parses the flags with evald::parse_args, turns them into a
// WorkerConfig here and hands that to the Worker.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/cli_options.hpp"
#include "common/result.hpp"
#include "worker/exec_policy.hpp"
#include "worker/gpu.hpp"

namespace evald::worker {

inline constexpr uint32_t kMaxSlots = 65536;

// CURVE on the connection to the coordinator, from --curve-secret and --coordinator-key.
struct CurveClientKeys {
  std::string secret_z85;
  std::string public_z85;         // derived from the secret
  std::string server_public_z85;  // the coordinator's, pinned
};

// --queue-ahead when not given: enough to keep the slots busy across the round trip of a result
// and the next ASSIGN even for shards as short as that round trip (4 x the slots), and no more
// than a few hundred: a deeper queue only adds bookkeeping (with 512 slots a queue of 2,048 cost
// 6 % of the coordinator's shards/s, one of 256 nothing; README, "Queueing short shards ahead").
inline uint32_t default_queue_ahead(uint32_t slots) {
  return slots >= 64 ? 256 : 4 * slots;
}

struct WorkerConfig {
  std::string coordinator;  // tcp://HOST:PORT (ipc:// works too, for tests)
  std::string name;         // said in HELLO; with CURVE it must be the name bound to our key
  uint32_t slots = 1;
  // --queue-ahead: attempts taken beyond the slots, started in the order received as slots free
  // (the coordinator sends them only for short shards that need no GPU, and only as many as the
  // slots start within 0.1 s). The flag's default is default_queue_ahead(--slots); a config
  // built in code queues nothing unless it says so.
  uint32_t queue_ahead = 0;
  GpuSelection gpu_selection;
  std::vector<GpuInfo> gpus;  // filled from gpu_selection by resolve_gpus() in main
  nlohmann::json labels = nlohmann::json::object();  // {"k": "v"}
  std::filesystem::path work_dir;
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds drain_timeout{30000};
  // --idle-exit-s: after this long with nothing to do (no shard running, no result waiting for
  // its ACK) the worker drains and exits 0 by itself, so an autoscaled node goes back to its
  // pool. Zero: never (the default; a worker normally waits for work forever).
  std::chrono::seconds idle_exit{0};
  std::string metrics;  // HOST:PORT to serve Prometheus /metrics on (port 0: any); empty: none
  std::string log_level = "info";
  // --allow-exec: the programs exec runners may start, canonicalised; default: anything.
  ExecPolicy exec_policy;
  std::string curve_secret_file;         // --curve-secret; empty: no CURVE
  std::string coordinator_key_file;      // --coordinator-key
  std::optional<CurveClientKeys> curve;  // filled by load_curve_keys

  // Whether the worker socket is authenticated with CURVE. Without it and without --allow-exec,
  // anyone who can reach the coordinator could run any program on this node: the worker warns.
  bool curve_enabled() const { return !curve_secret_file.empty(); }
};

// The worker's flags (parse_args adds --help, --version and --config).
po::options_description worker_options();

// Turns parsed flags into a config; a bad value is an error naming the flag, e.g.
// "--slots: must be between 1 and 65536". Has no side effects: --gpus auto is resolved later.
Result<WorkerConfig> worker_config_from(const po::variables_map& values);

// Reads the key files named in `config` into config.curve (a no-op without them). Call after
// logging is set up: a secret key readable by others is logged as a warning. An error names the
// flag and the file; main() prints it and exits 2.
Status load_curve_keys(WorkerConfig& config);

// "k=v,k2=v2" -> {"k": "v", "k2": "v2"}.
Result<nlohmann::json> parse_labels(std::string_view text);

// hostname-pid, the default --name.
std::string default_worker_name();

// For the startup log line.
nlohmann::json to_json(const WorkerConfig& config);

}  // namespace evald::worker
