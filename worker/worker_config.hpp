// WorkerConfig: the resolved configuration of evald-worker (SPEC.md "evald-worker"), and the
// flags it comes from. main() parses the flags with evald::parse_args, turns them into a
// WorkerConfig here and hands that to the Worker.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/cli_options.hpp"
#include "common/result.hpp"
#include "worker/exec_policy.hpp"
#include "worker/gpu.hpp"

namespace evald::worker {

inline constexpr uint32_t kMaxSlots = 65536;

struct WorkerConfig {
  std::string coordinator;  // tcp://HOST:PORT (ipc:// works too, for tests)
  std::string name;         // also the DEALER's routing id
  uint32_t slots = 1;
  GpuSelection gpu_selection;
  std::vector<GpuInfo> gpus;  // filled from gpu_selection by resolve_gpus() in main
  nlohmann::json labels = nlohmann::json::object();  // {"k": "v"}
  std::filesystem::path work_dir;
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds drain_timeout{30000};
  std::string metrics;  // HOST:PORT to serve Prometheus /metrics on (port 0: any); empty: none
  std::string log_level = "info";
  // --allow-exec: the programs exec runners may start, canonicalised; default: anything.
  ExecPolicy exec_policy;

  // Whether the worker socket is authenticated with CURVE. Hook for the --curve-secret /
  // --coordinator-key flags: until they exist this is false, and the worker warns at start when
  // it also has no --allow-exec (any submitter could then run any program on this node). Once
  // they exist: return !curve_secret_file.empty().
  bool curve_enabled() const { return false; }
};

// The worker's flags (parse_args adds --help, --version and --config).
po::options_description worker_options();

// Turns parsed flags into a config; a bad value is an error naming the flag, e.g.
// "--slots: must be between 1 and 65536". Has no side effects: --gpus auto is resolved later.
Result<WorkerConfig> worker_config_from(const po::variables_map& values);

// "k=v,k2=v2" -> {"k": "v", "k2": "v2"}.
Result<nlohmann::json> parse_labels(std::string_view text);

// hostname-pid, the default --name.
std::string default_worker_name();

// For the startup log line.
nlohmann::json to_json(const WorkerConfig& config);

}  // namespace evald::worker
