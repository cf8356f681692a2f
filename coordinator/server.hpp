// run_coordinator: builds the coordinator's parts (store, scheduler, core, HTTP server) from a
// resolved config and serves until SIGTERM/SIGINT. main() only parses flags and calls it.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace evald::coordinator {

struct CoordinatorConfig {
  std::string data_dir = "./evald-data";
  std::string bind = "tcp://0.0.0.0:5555";
  std::string http = "127.0.0.1:8080";
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds worker_timeout{5000};
  std::chrono::milliseconds retry_backoff{1000};
  std::chrono::milliseconds restart_grace{10000};
  std::chrono::milliseconds forget_lost_workers_after{std::chrono::hours(1)};
  std::chrono::milliseconds finished_campaign_metrics{std::chrono::minutes(10)};
  size_t max_body_bytes = 16u << 20;
  size_t max_message_bytes = 64u << 20;
  // Start even where protected mode would refuse (a non-loopback --http without --api-tokens, a
  // non-loopback --bind without --curve-secret); a warning is logged at every start.
  bool insecure = false;
};

// Returns the process exit code: 0 after a graceful stop, 1 on a runtime failure (the reason is
// logged: data dir unusable, port taken, store failure).
int run_coordinator(const CoordinatorConfig& config);

}  // namespace evald::coordinator
