// evald-coordinator: parses flags and runs the coordinator (coordinator/server.hpp).
#include <cstdint>
#include <iostream>
#include <string_view>
#include <vector>

#include "common/cli_options.hpp"
#include "common/log.hpp"
#include "common/version.hpp"
#include "coordinator/server.hpp"

namespace {

// Takes the hidden --test-store-fault=SPEC flag out of argv (coordinator/store_faults.hpp).
// Builds without EVALD_FAULT_INJECTION do not know it: there it is an unknown option.
std::vector<char*> take_test_flags(int argc, char** argv, std::string& store_fault) {
  std::vector<char*> rest(argv, argv + argc);
#ifdef EVALD_FAULT_INJECTION
  constexpr std::string_view kFlag = "--test-store-fault=";
  std::erase_if(rest, [&](const char* arg) {
    const std::string_view text(arg);
    if (!text.starts_with(kFlag)) return false;
    store_fault = std::string(text.substr(kFlag.size()));
    return true;
  });
#else
  (void)store_fault;
#endif
  return rest;
}

}  // namespace

int main(int argc_in, char** argv_in) {
  std::string store_fault;
  auto args_left = take_test_flags(argc_in, argv_in, store_fault);
  const int argc = static_cast<int>(args_left.size());
  char** argv = args_left.data();
  using evald::po::value;
  evald::po::options_description options("evald-coordinator options");
  options.add_options()("data-dir", value<std::string>()->default_value("./evald-data"),
                        "RocksDB directory (created if missing)")(
      "bind", value<std::string>()->default_value("tcp://127.0.0.1:5555"),
      "ZeroMQ endpoint for workers; port 0 picks a free port; beyond loopback it needs "
      "--curve-secret or --insecure")("http", value<std::string>()->default_value("127.0.0.1:8080"),
                                      "HTTP API and /metrics address; port 0 picks a free port")(
      "heartbeat-ms", value<int64_t>()->default_value(1000), "heartbeat interval to workers")(
      "worker-timeout-ms", value<int64_t>()->default_value(5000),
      "a worker silent this long is lost and its shards are queued again")(
      "retry-backoff-ms", value<int64_t>()->default_value(1000),
      "first retry delay after a failed attempt; doubles per attempt, at most 60 s")(
      "restart-grace-ms", value<int64_t>()->default_value(10000),
      "after a restart, how long running shards wait for their workers to reclaim them")(
      "forget-lost-workers-ms", value<int64_t>()->default_value(3600000),
      "a lost worker with nothing left is forgotten (and its /metrics series removed) after this")(
      "max-worker-series", value<int64_t>()->default_value(1000),
      "per-worker /metrics series (evald_worker_slots, ..._last_heartbeat_age_seconds, "
      "evald_workers_lost_total) for at most this many workers; the rest count in the fleet-wide "
      "gauges only (0: none)")(
      "finished-campaign-metrics-ms", value<int64_t>()->default_value(600000),
      "a finished campaign's /metrics series are removed this long after it ends")(
      "serve-backoff-failures", value<int64_t>()->default_value(3),
      "a served model whose server fails to start this many times in a row on a worker is not "
      "placed there for a while (0: never)")(
      "serve-backoff-ms", value<int64_t>()->default_value(300000),
      "how long, the first time; doubles for each further failed start")(
      "serve-backoff-max-ms", value<int64_t>()->default_value(3600000),
      "the longest such back-off")("max-body-bytes", value<int64_t>()->default_value(16 << 20),
                                   "largest HTTP request body; larger gets 413")(
      "max-message-bytes", value<int64_t>()->default_value(8 << 20),
      "largest worker message accepted; a peer that sends more is disconnected")(
      "curve-secret", value<std::string>()->value_name("FILE"),
      "the coordinator's CURVE secret key (Z85): workers must authenticate (needs --worker-keys)")(
      "worker-keys", value<std::string>()->value_name("FILE"),
      "workers allowed to connect, one 'NAME PUBLIC_KEY_Z85' per line ('#' comments)")(
      "insecure", evald::po::bool_switch(),
      "start even without keys and tokens on a non-loopback address (logs a warning)")(
      "api-tokens", value<std::string>()->value_name("FILE"),
      "HTTP API bearer tokens, one per line: NAME ROLE SHA256_HEX (roles: reader, submitter, "
      "operator, admin); without it the API is open and must stay on loopback")(
      "public-metrics", evald::po::bool_switch(), "serve /metrics without a token")(
      "tls-cert", value<std::string>()->value_name("FILE"),
      "PEM certificate (chain): serve the API and /metrics over HTTPS")(
      "tls-key", value<std::string>()->value_name("FILE"), "PEM private key of --tls-cert")(
      "tls-client-ca", value<std::string>()->value_name("FILE"),
      "also require HTTPS clients to present a certificate signed by this CA")(
      "max-pending-shards-per-user", value<int64_t>()->default_value(10'000'000),
      "a submit that takes its token's (or, without tokens, its address's) pending and running "
      "shards above this gets 429")("max-spec-bytes", value<int64_t>()->default_value(1 << 20),
                                    "largest campaign spec accepted; larger gets 413")(
      "http-max-connections", value<int64_t>()->default_value(512),
      "open HTTP connections at most (also at most half the open file limit)")(
      "http-max-connections-per-address", value<int64_t>()->default_value(64),
      "open HTTP connections from one client address at most")(
      "http-header-timeout-ms", value<int64_t>()->default_value(10000),
      "a connection that has not sent a complete request header in this time is closed")(
      "http-body-budget-bytes", value<int64_t>()->default_value(int64_t{256} << 20),
      "request body bytes read at the same time over all connections; over it: 503")(
      "log-level", value<std::string>()->default_value("info"),
      "trace, debug, info, warn or error");
  evald::ParsedArgs args;
  try {
    args = evald::parse_args(argc, argv, options);
  } catch (const evald::UsageError& e) {
    std::cerr << "evald-coordinator: " << e.what() << "\n(see evald-coordinator --help)\n";
    return evald::kExitUsage;
  }
  if (args.help) {
    std::cout
        << "Usage: evald-coordinator [options]\n\n"
           "Keeps the campaign queue in RocksDB, hands shards to workers over ZeroMQ and\n"
           "serves the HTTP API. Prints {\"bind\": ..., \"http\": ...} on stdout once serving.\n\n"
        << options << '\n';
    return evald::kExitOk;
  }
  if (args.version) {
    std::cout << "evald-coordinator " << evald::kVersion << '\n';
    return evald::kExitOk;
  }
  const auto& v = args.values;
  evald::coordinator::CoordinatorConfig config;
  config.data_dir = v["data-dir"].as<std::string>();
  config.bind = v["bind"].as<std::string>();
  config.http = v["http"].as<std::string>();
  config.heartbeat = std::chrono::milliseconds(v["heartbeat-ms"].as<int64_t>());
  config.worker_timeout = std::chrono::milliseconds(v["worker-timeout-ms"].as<int64_t>());
  config.retry_backoff = std::chrono::milliseconds(v["retry-backoff-ms"].as<int64_t>());
  config.restart_grace = std::chrono::milliseconds(v["restart-grace-ms"].as<int64_t>());
  config.forget_lost_workers_after =
      std::chrono::milliseconds(v["forget-lost-workers-ms"].as<int64_t>());
  config.finished_campaign_metrics =
      std::chrono::milliseconds(v["finished-campaign-metrics-ms"].as<int64_t>());
  const auto max_worker_series = v["max-worker-series"].as<int64_t>();
  if (max_worker_series < 0) {
    std::cerr << "evald-coordinator: --max-worker-series must not be negative\n";
    return evald::kExitUsage;
  }
  config.max_worker_series = static_cast<size_t>(max_worker_series);
  const auto backoff_failures = v["serve-backoff-failures"].as<int64_t>();
  config.serve_backoff.base = std::chrono::milliseconds(v["serve-backoff-ms"].as<int64_t>());
  config.serve_backoff.max = std::chrono::milliseconds(v["serve-backoff-max-ms"].as<int64_t>());
  // A week bounds the back-off: beyond it `now + delay` nears the clock's range, and no operator
  // means a model to stay unplaced for longer without being told.
  constexpr std::chrono::milliseconds kMaxServeBackoff = std::chrono::hours(24 * 7);
  if (backoff_failures < 0 || backoff_failures > UINT32_MAX ||
      (backoff_failures > 0 && config.serve_backoff.base.count() <= 0) ||
      config.serve_backoff.max < config.serve_backoff.base ||
      config.serve_backoff.max > kMaxServeBackoff) {
    std::cerr << "evald-coordinator: --serve-backoff-failures must not be negative, "
                 "--serve-backoff-ms must be positive (unless --serve-backoff-failures is 0), "
                 "--serve-backoff-max-ms not less than --serve-backoff-ms and at most 604800000 "
                 "(a week)\n";
    return evald::kExitUsage;
  }
  config.serve_backoff.failures = static_cast<uint32_t>(backoff_failures);
  const auto body = v["max-body-bytes"].as<int64_t>();
  const auto message = v["max-message-bytes"].as<int64_t>();
  if (config.heartbeat.count() <= 0 || config.worker_timeout <= config.heartbeat ||
      config.retry_backoff.count() < 0 || config.restart_grace.count() < 0 || body <= 0 ||
      message <= 0 || config.forget_lost_workers_after.count() < 0 ||
      config.finished_campaign_metrics.count() < 0) {
    std::cerr << "evald-coordinator: --heartbeat-ms, --max-body-bytes and --max-message-bytes "
                 "must be positive, --worker-timeout-ms greater than --heartbeat-ms, "
                 "--retry-backoff-ms, --restart-grace-ms, --forget-lost-workers-ms and "
                 "--finished-campaign-metrics-ms not negative\n";
    return evald::kExitUsage;
  }
  config.max_body_bytes = static_cast<size_t>(body);
  config.max_message_bytes = static_cast<size_t>(message);
  config.insecure = v["insecure"].as<bool>();
  if (v.count("curve-secret") > 0) config.curve_secret_file = v["curve-secret"].as<std::string>();
  if (v.count("worker-keys") > 0) config.worker_keys_file = v["worker-keys"].as<std::string>();
  const auto optional_text = [&](const char* name) {
    return v.count(name) > 0 ? v[name].as<std::string>() : std::string();
  };
  config.api_tokens_file = optional_text("api-tokens");
  config.public_metrics = v["public-metrics"].as<bool>();
  config.tls_cert_file = optional_text("tls-cert");
  config.tls_key_file = optional_text("tls-key");
  config.tls_client_ca_file = optional_text("tls-client-ca");
  if (config.tls_cert_file.empty() != config.tls_key_file.empty()) {
    std::cerr << "evald-coordinator: --tls-cert and --tls-key go together\n";
    return evald::kExitUsage;
  }
  if (!config.tls_client_ca_file.empty() && config.tls_cert_file.empty()) {
    std::cerr << "evald-coordinator: --tls-client-ca needs --tls-cert and --tls-key\n";
    return evald::kExitUsage;
  }
  const auto quota = v["max-pending-shards-per-user"].as<int64_t>();
  const auto spec_bytes = v["max-spec-bytes"].as<int64_t>();
  const auto connections = v["http-max-connections"].as<int64_t>();
  const auto per_address = v["http-max-connections-per-address"].as<int64_t>();
  const auto header_timeout = v["http-header-timeout-ms"].as<int64_t>();
  const auto body_budget = v["http-body-budget-bytes"].as<int64_t>();
  if (quota <= 0 || spec_bytes <= 0 || connections <= 0 || per_address <= 0 ||
      header_timeout <= 0 || body_budget <= 0) {
    std::cerr << "evald-coordinator: --max-pending-shards-per-user, --max-spec-bytes, "
                 "--http-max-connections, --http-max-connections-per-address, "
                 "--http-header-timeout-ms and --http-body-budget-bytes must be positive\n";
    return evald::kExitUsage;
  }
  if (!store_fault.empty()) {
    auto fault = evald::coordinator::parse_store_fault(store_fault);
    if (!fault.ok()) {
      std::cerr << "evald-coordinator: " << fault.error().message << '\n';
      return evald::kExitUsage;
    }
    config.store_fault = fault.value();
  }
  config.max_pending_shards_per_user = quota;
  config.max_spec_bytes = static_cast<size_t>(spec_bytes);
  config.http_max_connections = static_cast<size_t>(connections);
  config.http_max_connections_per_address = static_cast<size_t>(per_address);
  config.http_header_timeout = std::chrono::milliseconds(header_timeout);
  config.http_body_budget_bytes = static_cast<size_t>(body_budget);
  if (!evald::init_logging("evald-coordinator", v["log-level"].as<std::string>())) {
    std::cerr << "evald-coordinator: --log-level: unknown level\n";
    return evald::kExitUsage;
  }
  if (auto loaded = evald::coordinator::load_worker_security(config); !loaded.ok()) {
    std::cerr << "evald-coordinator: " << loaded.error().message << '\n';
    return evald::kExitUsage;
  }
  return evald::coordinator::run_coordinator(config);
}
