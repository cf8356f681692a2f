// run_coordinator: builds the coordinator's parts (store, scheduler, core, HTTP server) from a
// resolved config and serves until SIGTERM/SIGINT. main() only parses flags and calls it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "common/result.hpp"
#include "coordinator/serve_backoff.hpp"
#include "coordinator/store_faults.hpp"
#include "coordinator/worker_auth.hpp"

namespace evald::coordinator {

struct CoordinatorConfig {
  std::string data_dir = "./evald-data";
  std::string bind = "tcp://127.0.0.1:5555";
  std::string http = "127.0.0.1:8080";
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds worker_timeout{5000};
  std::chrono::milliseconds retry_backoff{1000};
  std::chrono::milliseconds restart_grace{10000};
  std::chrono::milliseconds forget_lost_workers_after{std::chrono::hours(1)};
  std::chrono::milliseconds finished_campaign_metrics{std::chrono::minutes(10)};
  size_t max_worker_series = 1000;
  // Served models whose server keeps failing to start on a worker (docs/served-models.md).
  ServeBackoffOptions serve_backoff{};
  size_t max_body_bytes = 16u << 20;
  // Results travel in frames well under this (the worker splits them at 4 MiB).
  size_t max_message_bytes = 8u << 20;
  // CURVE on the worker socket (--curve-secret, --worker-keys), loaded by load_worker_security.
  std::string curve_secret_file;
  std::string worker_keys_file;
  std::optional<CurveServerOptions> curve;
  // Start even where protected mode would refuse (a non-loopback --http without --api-tokens, a
  // non-loopback --bind without --curve-secret); a warning is logged at every start.
  bool insecure = false;

  // People and the HTTP API (docs/security.md).
  std::string api_tokens_file;  // empty: no authentication (loopback development mode)
  bool public_metrics = false;  // /metrics without a token
  std::string tls_cert_file;    // with tls_key_file: HTTPS on --http
  std::string tls_key_file;
  std::string tls_client_ca_file;  // also require client certificates signed by this CA
  int64_t max_pending_shards_per_user = 10'000'000;
  size_t max_spec_bytes = 1u << 20;
  size_t http_max_connections = 512;
  size_t http_max_connections_per_address = 64;
  std::chrono::milliseconds http_header_timeout{10000};
  size_t http_body_budget_bytes = 256u << 20;

  // Test-only (the hidden --test-store-fault flag of a build with EVALD_FAULT_INJECTION).
  StoreFault store_fault;
};

// Reads the key files named in `config` into config.curve and applies protected mode to the
// worker socket. An error names the flag and the file, or says which flags to add; main() prints
// it and exits 2.
Status load_worker_security(CoordinatorConfig& config);
// Protected mode: the reason a config may not start (a non-loopback --http without
// --api-tokens, unless --insecure), saying what to add; nullopt when it may.
std::optional<std::string> protected_mode_refusal(const CoordinatorConfig& config);

// Returns the process exit code: 0 after a graceful stop, 1 on a runtime failure (the reason is
// logged: data dir unusable, port taken, store failure, an unreadable token or TLS file), 2 when
// protected mode refuses the config.
int run_coordinator(const CoordinatorConfig& config);

}  // namespace evald::coordinator
