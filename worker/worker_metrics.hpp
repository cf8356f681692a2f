// WorkerMetrics: evald-worker's own Prometheus metrics (prefix evald_worker_), and MetricsServer,
// which serves them at GET /metrics when the worker runs with --metrics HOST:PORT. The coordinator
// sees a worker only through its messages; these say what the node itself did: shards received,
// runner exit codes, programs refused by --allow-exec, results sent and ACKed, what waits in the
// outbox, reconnections, GPUs seen.
//
// Threads: the worker's main thread updates the metrics (prometheus-cpp metrics are atomics, and
// the few label lookups happen on first use only); the MetricsServer's HTTP thread serializes.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/http_server.hpp"
#include "common/protocol.hpp"
#include "common/result.hpp"
#include "worker/exec_policy.hpp"
#include "worker/gpu.hpp"

namespace evald::worker {

// The `code` label of evald_worker_runner_exits_total for a result of the exec runner: "0".."255"
// for the process's exit code ("0" also when it exited 0 but printed no valid result), "signal"
// when a signal ended it, "timeout" when it ran past runner.timeout_s, "other" when no process
// ran to an end of its own (spawn failed, no run directory, stdout over its cap). The exec runner
// reports the outcome only in the error text, so this reads the text's fixed prefix;
// tests/unit/test_worker_metrics.cpp runs real processes so a change of wording fails there.
std::string runner_exit_label(const protocol::ShardResult& result);

// Totals the worker keeps anyway (WorkerStats); WorkerMetrics::publish turns growth into counters.
struct WorkerCounts {
  uint64_t assigned = 0;
  uint64_t results_sent = 0;
  uint64_t results_failed = 0;
  uint64_t results_resent = 0;
  uint64_t acked = 0;
  uint64_t bad_messages = 0;
  uint64_t sends_dropped = 0;
  uint64_t outbox_write_failures = 0;
};

// Gauges, set as a whole once per event-loop turn.
struct WorkerGauges {
  size_t running = 0;  // exec attempts in flight
  size_t queued = 0;   // attempts taken beyond the slots, waiting for one (--queue-ahead)
  size_t unacked = 0;  // results sent and not yet ACKed
  size_t outbox_files = 0;
  uint64_t outbox_bytes = 0;
  bool connected = false;
};

class WorkerMetrics {
 public:
  WorkerMetrics(const std::string& worker_name, uint32_t slots, const std::vector<GpuInfo>& gpus);
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  std::string serialize() const;  // Prometheus text format 0.0.4
  // For metrics registered elsewhere (ServeMetrics), served with these.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // Counters follow `counts`, which only grow; cheap enough for every loop turn.
  void publish(const WorkerCounts& counts, const WorkerGauges& gauges);
  void count_runner_exit(const protocol::ShardResult& result);
  void count_connection();  // every completed handshake; all but the first are reconnects
  // An exec attempt the worker refused to start (--allow-exec), by reason.
  void count_exec_refused(ExecPolicy::Refusal reason);
  // An attempt failed before its runner started because its pinned data file has another digest.
  void count_data_changed() { data_changed_.Increment(); }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& runner_exits_;
  // By exit code 0..255, then signal, timeout, other; added on first use, so only codes that
  // happened are exported.
  static constexpr size_t kExitLabels = 256 + 3;
  std::array<prometheus::Counter*, kExitLabels> exit_counters_{};

  prometheus::Counter& shards_received_;
  prometheus::Family<prometheus::Counter>& results_sent_;
  prometheus::Counter& results_succeeded_;
  prometheus::Counter& results_failed_;
  prometheus::Counter& results_resent_;
  prometheus::Counter& results_acked_;
  prometheus::Counter& bad_messages_;
  prometheus::Counter& sends_dropped_;
  prometheus::Counter& outbox_write_failures_;
  prometheus::Family<prometheus::Counter>& exec_refused_;
  prometheus::Counter& exec_refused_not_allowed_;
  prometheus::Counter& exec_refused_not_found_;
  prometheus::Counter& data_changed_;
  prometheus::Counter& connections_;
  prometheus::Counter& reconnects_;
  prometheus::Gauge& running_;
  prometheus::Gauge& queued_;
  prometheus::Gauge& unacked_;
  prometheus::Gauge& outbox_files_;
  prometheus::Gauge& outbox_bytes_;
  prometheus::Gauge& connected_;
  WorkerCounts published_;
};

// GET /metrics -> the metrics' text; GET /healthz -> {"status":"ok"}; anything else 404/405.
class MetricsServer {
 public:
  // Listens on `address` (HOST:PORT, port 0 picks one) and starts serving. The error names the
  // flag: "--metrics: cannot listen on 127.0.0.1:80: Permission denied". `metrics` must outlive
  // the server.
  static Result<std::unique_ptr<MetricsServer>> start(const std::string& address,
                                                      const WorkerMetrics& metrics);
  // "127.0.0.1:41235", with the real port.
  std::string local_address() const { return server_.local_address(); }

 private:
  MetricsServer(const std::string& address, const WorkerMetrics& metrics);
  HttpServer server_;
};

}  // namespace evald::worker
