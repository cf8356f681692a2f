// ServeMetrics: the served-model part of the worker's /metrics (docs/served-models.md): model
// loads and how long they took, servers up per model, servers that failed, and the built-in
// openai runner's requests, latency and tokens. Registered on WorkerMetrics' registry.
//
// Threads: updated from the model-server manager thread and the openai runner's request threads;
// prometheus-cpp metrics are atomics and family lookups take the family's own lock.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

namespace evald::worker {

class ServeMetrics {
 public:
  // Keeps `registry` alive: runner threads may count after the worker has gone.
  explicit ServeMetrics(std::shared_ptr<prometheus::Registry> registry);
  ServeMetrics(const ServeMetrics&) = delete;
  ServeMetrics& operator=(const ServeMetrics&) = delete;

  // A server became ready `seconds` after it was started.
  void count_load(const std::string& model, double seconds);
  // A server ended before it was asked to: reason "exited", "not_ready" or "spawn_failed".
  void count_server_failure(const std::string& model, const std::string& reason);
  void server_up(const std::string& model, int delta);  // started (+1) / gone (-1)

  // One HTTP exchange of the openai runner; outcome "ok", "retried" (transient, tried again)
  // or "failed" (given up, or not retriable).
  void count_request(const std::string& outcome, double seconds);
  void count_tokens(uint64_t prompt, uint64_t completion);
  // The openai runner opened TCP connections (each request lane keeps one open; a new one after
  // the server closed it or a request failed).
  void count_connections(uint64_t opened);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& loads_;
  prometheus::Histogram& load_seconds_;
  prometheus::Family<prometheus::Counter>& failures_;
  prometheus::Family<prometheus::Gauge>& servers_up_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Histogram& request_seconds_;
  prometheus::Family<prometheus::Counter>& tokens_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& completion_tokens_;
  prometheus::Counter& connections_;
};

}  // namespace evald::worker
