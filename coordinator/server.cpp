#include "coordinator/server.hpp"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string_view>

#include "common/clock.hpp"
#include "common/curve_keys.hpp"
#include "common/http_server.hpp"
#include "common/sd_notify.hpp"
#include "common/signal_pipe.hpp"
#include "coordinator/api.hpp"
#include "coordinator/auth.hpp"
#include "coordinator/core.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/store.hpp"

namespace evald::coordinator {

Status load_worker_security(CoordinatorConfig& config) {
  config.curve.reset();
  if (config.curve_secret_file.empty()) {
    if (!config.worker_keys_file.empty()) {
      return make_error("--worker-keys needs --curve-secret (the coordinator's own secret key)");
    }
    if (!config.insecure && !is_loopback_endpoint(config.bind)) {
      return make_error("--bind " + config.bind +
                        " is reachable from other hosts: add --curve-secret FILE and "
                        "--worker-keys FILE so only your workers can connect (create keys with "
                        "'evalctl keygen'), or --insecure to accept anyone who can reach it");
    }
    return Ok{};
  }
  if (config.worker_keys_file.empty()) {
    return make_error(
        "--curve-secret needs --worker-keys FILE: the workers allowed to connect, one "
        "'NAME PUBLIC_KEY_Z85' per line");
  }
  auto secret = read_key_file(config.curve_secret_file, "--curve-secret", /*secret=*/true);
  if (!secret.ok()) return secret.error();
  auto keys = read_worker_keys(config.worker_keys_file);
  if (!keys.ok()) return keys.error();
  config.curve = CurveServerOptions{std::move(secret.value()), std::move(keys.value())};
  return Ok{};
}

std::optional<std::string> protected_mode_refusal(const CoordinatorConfig& config) {
  if (config.insecure || !config.api_tokens_file.empty()) return std::nullopt;
  std::string host;
  try {
    host = split_host_port(config.http).first;
  } catch (const std::exception&) {
    return std::nullopt;  // the HTTP server reports a malformed address itself
  }
  if (is_loopback_host(host)) return std::nullopt;
  return "refusing to serve the HTTP API on " + config.http +
         " without authentication: anyone who can reach it could run commands on every worker. "
         "Add --api-tokens FILE (and --tls-cert FILE --tls-key FILE to encrypt the tokens on the "
         "wire), listen on a loopback address, or pass --insecure to start anyway";
}

int run_coordinator(const CoordinatorConfig& config) {
  spdlog::debug(
      "config data_dir={} bind={} http={} heartbeat_ms={} worker_timeout_ms={} "
      "retry_backoff_ms={} max_body_bytes={} max_message_bytes={}",
      config.data_dir, config.bind, config.http, config.heartbeat.count(),
      config.worker_timeout.count(), config.retry_backoff.count(), config.max_body_bytes,
      config.max_message_bytes);
  if (auto refusal = protected_mode_refusal(config)) {
    spdlog::error("startup_refused reason=protected_mode error=\"{}\"", *refusal);
    return 2;
  }
  if (config.insecure) {
    spdlog::warn(
        "insecure_mode http={} note=\"protected mode is off (--insecure); without --api-tokens "
        "anyone who reaches it can submit, cancel and read every campaign\"",
        config.http);
  }
  const size_t open_files = raise_open_file_limit();
  std::shared_ptr<const TokenTable> tokens;
  if (!config.api_tokens_file.empty()) {
    auto loaded = TokenTable::load(config.api_tokens_file);
    if (!loaded.ok()) {
      spdlog::error("startup_failed error=\"{}\"", loaded.error().message);
      return 1;
    }
    tokens = std::make_shared<const TokenTable>(std::move(loaded.value()));
    spdlog::info("api_tokens_loaded file={} tokens={}", config.api_tokens_file, tokens->size());
  } else {
    spdlog::info(
        "api_authentication_off http={} note=\"no --api-tokens; serving this address only\"",
        config.http);
  }
  spdlog::info("open_file_limit limit={}", open_files);
  try {
    SignalPipe signals;
    if (config.store_fault.kind != StoreFault::Kind::kNone) {
      spdlog::warn(
          "test_store_fault_armed fault={} warning=\"this coordinator will fail on purpose\"",
          describe(config.store_fault));
    }
    auto opened = Store::open(config.data_dir, config.store_fault);
    if (!opened.ok()) {
      spdlog::error("startup_failed error=\"{}\"", opened.error().message);
      return 1;
    }
    Store& store = *opened.value();
    SystemClock clock;
    Metrics metrics;
    Scheduler scheduler(
        store, clock, metrics,
        SchedulerOptions{.heartbeat = config.heartbeat,
                         .worker_timeout = config.worker_timeout,
                         .retry_backoff = config.retry_backoff,
                         .forget_lost_workers_after = config.forget_lost_workers_after,
                         .restart_grace = config.restart_grace,
                         .finished_campaign_metrics = config.finished_campaign_metrics,
                         .max_worker_series = config.max_worker_series,
                         .serve_backoff = config.serve_backoff});
    if (auto recovered = scheduler.recover(); !recovered.ok()) {
      spdlog::error("recovery_failed data_dir={} error=\"{}\"", config.data_dir,
                    recovered.error().message);
      return 1;
    }
    Api api(scheduler, metrics,
            ApiOptions{.tokens = tokens,
                       .max_pending_shards_per_user = config.max_pending_shards_per_user,
                       .max_spec_bytes = config.max_spec_bytes});
    if (config.curve) {
      auto public_key = curve_public_key(config.curve->secret_z85);
      spdlog::info("worker_socket_curve public_key={} workers_allowed={}",
                   public_key.ok() ? public_key.value() : "?",
                   config.curve->worker_keys.name_by_key.size());
    } else if (!is_loopback_endpoint(config.bind)) {
      spdlog::warn(
          "worker_socket_insecure bind={} note=\"open to anyone who can reach it, without "
          "authentication or encryption; add --curve-secret and --worker-keys\"",
          config.bind);
    }
    Core core(CoreOptions{.bind = config.bind,
                          .max_message_bytes = config.max_message_bytes,
                          .curve = config.curve},
              store, scheduler, api, metrics);
    HttpServerOptions http_options{
        .max_body_bytes = config.max_body_bytes,
        .max_connections = config.http_max_connections,
        .max_connections_per_address = config.http_max_connections_per_address,
        .header_timeout = config.http_header_timeout,
        .body_budget_bytes = config.http_body_budget_bytes,
        .tls_cert_file = config.tls_cert_file,
        .tls_key_file = config.tls_key_file,
        .tls_client_ca_file = config.tls_client_ca_file,
        .on_refused = [&metrics](const std::string& reason) {
          metrics.http_refused.Add({{"reason", reason}}).Increment();
        }};
    const bool metrics_open = !tokens || config.public_metrics;
    HttpServer http(
        config.http, std::move(http_options),
        [&core, &metrics, &tokens, metrics_open](HttpRequest request, HttpRespond respond) {
          // /metrics is served from the HTTP thread: prometheus-cpp metrics are
          // atomics, and a scrape should not cost the core a turn. A scrape without a valid token
          // goes to the core like any request, to be refused and audited there.
          const std::string_view target = request.target;
          const bool metrics_path =
              target.substr(0, target.find('?')) == "/metrics";  // a query string is ignored
          if (request.method == "GET" && metrics_path) {
            const auto token = bearer_token(request.authorization);
            if (metrics_open || (token && tokens->authenticate(*token))) {
              metrics.http_requests.Add({{"route", "/metrics"}, {"status", "200"}}).Increment();
              respond(HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8",
                                   metrics.serialize()});
              return;
            }
          }
          core.post(std::move(request), std::move(respond));
        });
    http.start();
    // The one line scripts and tests wait for: both endpoints with their real ports.
    std::cout
        << nlohmann::json{{"bind", core.bound_endpoint()}, {"http", http.local_address()}}.dump()
        << std::endl;
    spdlog::info("serving bind={} http={} data_dir={}", core.bound_endpoint(), http.local_address(),
                 config.data_dir);
    if (auto notified = sd_notify("READY=1\nSTATUS=serving"); !notified.ok()) {
      spdlog::warn("sd_notify_failed error=\"{}\"", notified.error().message);
    }
    core.run(signals);
    if (auto notified = sd_notify("STOPPING=1"); !notified.ok()) {
      spdlog::warn("sd_notify_failed error=\"{}\"", notified.error().message);
    }
    http.stop();
    if (auto flushed = store.flush(); !flushed.ok()) {
      spdlog::error("shutdown_flush_failed error=\"{}\"", flushed.error().message);
      return 1;
    }
    spdlog::info("stopped_cleanly");
    return 0;
  } catch (const std::exception& e) {
    spdlog::error("coordinator_failed error=\"{}\"", e.what());
    return 1;
  }
}

}  // namespace evald::coordinator
