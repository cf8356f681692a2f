// run_coordinator: builds the coordinator's parts (store, scheduler, core, HTTP server) from a
// resolved config and serves until SIGTERM/SIGINT. main() only parses flags and calls it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
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
  size_t max_body_bytes = 16u << 20;
  size_t max_message_bytes = 64u << 20;
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
};

// Protected mode: the reason a config may not start (a non-loopback --http without
// --api-tokens, unless --insecure), saying what to add; nullopt when it may.
std::optional<std::string> protected_mode_refusal(const CoordinatorConfig& config);

// Returns the process exit code: 0 after a graceful stop, 1 on a runtime failure (the reason is
// logged: data dir unusable, port taken, store failure, an unreadable token or TLS file), 2 when
// protected mode refuses the config.
int run_coordinator(const CoordinatorConfig& config);

}  // namespace evald::coordinator
