#include "worker/worker_metrics.hpp"

#include <prometheus/text_serializer.h>

#include <charconv>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string_view>

#include "common/version.hpp"

namespace evald::worker {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;

constexpr size_t kSignalLabel = 256;
constexpr size_t kTimeoutLabel = 257;
constexpr size_t kOtherLabel = 258;

// Index into the exit-label table: the code itself, or one of the three named labels above.
size_t exit_label_index(const protocol::ShardResult& result) {
  if (result.ok) return 0;
  const std::string_view error = result.error;
  const auto starts_with = [&error](std::string_view prefix) {
    return error.substr(0, prefix.size()) == prefix;
  };
  // The prefixes exec_runner.cpp's make_result() writes.
  if (starts_with("exit code ")) {
    const auto digits = error.substr(std::string_view("exit code ").size());
    int code = -1;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), code);
    if (ec == std::errc() && code >= 0 && code <= 255 &&
        (end == digits.data() + digits.size() || *end == ':')) {
      return static_cast<size_t>(code);
    }
    return kOtherLabel;
  }
  if (starts_with("unparsable output")) return 0;  // it exited 0; its stdout was the problem
  if (starts_with("killed by signal") || starts_with("killed by the worker")) return kSignalLabel;
  if (starts_with("timeout after")) return kTimeoutLabel;
  return kOtherLabel;
}

std::string exit_label_text(size_t index) {
  switch (index) {
    case kSignalLabel:
      return "signal";
    case kTimeoutLabel:
      return "timeout";
    case kOtherLabel:
      return "other";
    default:
      return std::to_string(index);
  }
}

// Counters only go up; a total that somehow shrank (it cannot) must not make them go negative.
void advance(prometheus::Counter& counter, uint64_t now, uint64_t before) {
  if (now > before) counter.Increment(static_cast<double>(now - before));
}

// Nothing a worker serves takes a body.
constexpr size_t kMaxRequestBodyBytes = 4096;

HttpResponse json_error(int status, const std::string& message) {
  const nlohmann::json body = {{"error", message}};
  // replace: the message may quote a request target, raw bytes that need not be UTF-8.
  return HttpResponse{status, "application/json",
                      body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

HttpResponse serve(const HttpRequest& request, const WorkerMetrics& metrics) {
  const auto path = request.target.substr(0, request.target.find('?'));
  if (path != "/metrics" && path != "/healthz") {
    return json_error(404, "not found: " + path + " (a worker serves /metrics and /healthz)");
  }
  if (request.method != "GET") {
    return json_error(405, "method " + request.method + " not allowed on " + path + " (use GET)");
  }
  if (path == "/healthz") return HttpResponse{200, "application/json", R"({"status":"ok"})"};
  return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", metrics.serialize()};
}

}  // namespace

std::string runner_exit_label(const protocol::ShardResult& result) {
  return exit_label_text(exit_label_index(result));
}

WorkerMetrics::WorkerMetrics(const std::string& worker_name, uint32_t slots,
                             const std::vector<GpuInfo>& gpus)
    : registry_(std::make_shared<prometheus::Registry>()),
      runner_exits_(BuildCounter()
                        .Name("evald_worker_runner_exits_total")
                        .Help("Exec runner processes that ended, by exit code, "
                              "code=0..255|signal|timeout|other")
                        .Register(*registry_)),
      shards_received_(BuildCounter()
                           .Name("evald_worker_shards_received_total")
                           .Help("Shard assignments received from the coordinator")
                           .Register(*registry_)
                           .Add({})),
      results_sent_(BuildCounter()
                        .Name("evald_worker_results_sent_total")
                        .Help("Results sent the first time, by outcome=succeeded|failed")
                        .Register(*registry_)),
      results_succeeded_(results_sent_.Add({{"outcome", "succeeded"}})),
      results_failed_(results_sent_.Add({{"outcome", "failed"}})),
      results_resent_(BuildCounter()
                          .Name("evald_worker_results_resent_total")
                          .Help("Results sent again: after a reconnection, a repeated ASSIGN "
                                "or no ACK in time")
                          .Register(*registry_)
                          .Add({})),
      results_acked_(BuildCounter()
                         .Name("evald_worker_results_acked_total")
                         .Help("Results the coordinator acknowledged (stored durably)")
                         .Register(*registry_)
                         .Add({})),
      bad_messages_(BuildCounter()
                        .Name("evald_worker_bad_messages_total")
                        .Help("Coordinator messages dropped because they did not decode")
                        .Register(*registry_)
                        .Add({})),
      sends_dropped_(BuildCounter()
                         .Name("evald_worker_sends_dropped_total")
                         .Help("Messages not sent because no coordinator was connected")
                         .Register(*registry_)
                         .Add({})),
      outbox_write_failures_(BuildCounter()
                                 .Name("evald_worker_outbox_write_failures_total")
                                 .Help("Exec results whose outbox write failed; they were sent "
                                       "anyway, with no copy on this node until ACKed")
                                 .Register(*registry_)
                                 .Add({})),
      exec_refused_(BuildCounter()
                        .Name("evald_worker_exec_refused_total")
                        .Help("Exec attempts refused without starting anything: the program is "
                              "outside --allow-exec (not_allowed) or cannot be resolved to check "
                              "it (not_found)")
                        .Register(*registry_)),
      exec_refused_not_allowed_(exec_refused_.Add({{"reason", "not_allowed"}})),
      exec_refused_not_found_(exec_refused_.Add({{"reason", "not_found"}})),
      data_changed_(BuildCounter()
                        .Name("evald_worker_data_changed_total")
                        .Help("Exec attempts failed before starting because the benchmark's "
                              "params.data file does not have the pinned params.data_sha256")
                        .Register(*registry_)
                        .Add({})),
      connections_(BuildCounter()
                       .Name("evald_worker_connections_total")
                       .Help("Connections to the coordinator that completed a handshake")
                       .Register(*registry_)
                       .Add({})),
      reconnects_(BuildCounter()
                      .Name("evald_worker_reconnects_total")
                      .Help("Connections to the coordinator after the first one")
                      .Register(*registry_)
                      .Add({})),
      running_(BuildGauge()
                   .Name("evald_worker_running_shards")
                   .Help("Exec shard attempts running now")
                   .Register(*registry_)
                   .Add({})),
      queued_(BuildGauge()
                  .Name("evald_worker_queued_shards")
                  .Help("Shard attempts taken beyond the slots, waiting for one (--queue-ahead)")
                  .Register(*registry_)
                  .Add({})),
      unacked_(BuildGauge()
                   .Name("evald_worker_unacked_results")
                   .Help("Results sent and not yet acknowledged by the coordinator")
                   .Register(*registry_)
                   .Add({})),
      outbox_files_(BuildGauge()
                        .Name("evald_worker_outbox_files")
                        .Help("Results held in the on-disk outbox until ACKed")
                        .Register(*registry_)
                        .Add({})),
      outbox_bytes_(BuildGauge()
                        .Name("evald_worker_outbox_bytes")
                        .Help("Size of the result files in the on-disk outbox")
                        .Register(*registry_)
                        .Add({})),
      connected_(BuildGauge()
                     .Name("evald_worker_coordinator_connected")
                     .Help("1 while a connection to the coordinator is up")
                     .Register(*registry_)
                     .Add({})) {
  BuildGauge()
      .Name("evald_worker_info")
      .Help("1, with the worker's name and evald version as labels")
      .Register(*registry_)
      .Add({{"worker", worker_name}, {"version", kVersion}})
      .Set(1);
  BuildGauge()
      .Name("evald_worker_slots_configured")
      .Help(
          "Shards the worker runs at once (--slots); the coordinator's evald_worker_slots "
          "shows their use")
      .Register(*registry_)
      .Add({})
      .Set(slots);
  BuildGauge()
      .Name("evald_worker_gpus")
      .Help("GPUs the worker found (nvidia-smi) or was given (--gpus)")
      .Register(*registry_)
      .Add({})
      .Set(static_cast<double>(gpus.size()));
  auto& gpu_info = BuildGauge()
                       .Name("evald_worker_gpu_info")
                       .Help("1 per GPU the worker has, with its index and model name")
                       .Register(*registry_);
  for (const auto& gpu : gpus) {
    gpu_info.Add({{"index", std::to_string(gpu.index)}, {"name", gpu.name}}).Set(1);
  }
}

std::string WorkerMetrics::serialize() const {
  const prometheus::TextSerializer serializer;
  return serializer.Serialize(registry_->Collect());
}

void WorkerMetrics::publish(const WorkerCounts& counts, const WorkerGauges& gauges) {
  advance(shards_received_, counts.assigned, published_.assigned);
  // results_sent counts failed results too; the label splits them.
  advance(results_failed_, counts.results_failed, published_.results_failed);
  advance(results_succeeded_, counts.results_sent - counts.results_failed,
          published_.results_sent - published_.results_failed);
  advance(results_resent_, counts.results_resent, published_.results_resent);
  advance(results_acked_, counts.acked, published_.acked);
  advance(bad_messages_, counts.bad_messages, published_.bad_messages);
  advance(sends_dropped_, counts.sends_dropped, published_.sends_dropped);
  advance(outbox_write_failures_, counts.outbox_write_failures, published_.outbox_write_failures);
  published_ = counts;
  running_.Set(static_cast<double>(gauges.running));
  queued_.Set(static_cast<double>(gauges.queued));
  unacked_.Set(static_cast<double>(gauges.unacked));
  outbox_files_.Set(static_cast<double>(gauges.outbox_files));
  outbox_bytes_.Set(static_cast<double>(gauges.outbox_bytes));
  connected_.Set(gauges.connected ? 1 : 0);
}

void WorkerMetrics::count_runner_exit(const protocol::ShardResult& result) {
  const size_t index = exit_label_index(result);
  auto*& counter = exit_counters_[index];
  if (counter == nullptr) counter = &runner_exits_.Add({{"code", exit_label_text(index)}});
  counter->Increment();
}

void WorkerMetrics::count_exec_refused(ExecPolicy::Refusal reason) {
  switch (reason) {
    case ExecPolicy::Refusal::kNotAllowed:
      exec_refused_not_allowed_.Increment();
      return;
    case ExecPolicy::Refusal::kNotFound:
      exec_refused_not_found_.Increment();
      return;
  }
}

void WorkerMetrics::count_connection() {
  if (connections_.Value() > 0) reconnects_.Increment();
  connections_.Increment();
}

MetricsServer::MetricsServer(const std::string& address, const WorkerMetrics& metrics)
    : server_(address, kMaxRequestBodyBytes, [&metrics](HttpRequest request, HttpRespond respond) {
        respond(serve(request, metrics));
      }) {}

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(const std::string& address,
                                                            const WorkerMetrics& metrics) {
  std::unique_ptr<MetricsServer> server;
  try {
    server.reset(new MetricsServer(address, metrics));
    server->server_.start();
  } catch (const std::exception& e) {
    return make_error(std::string("--metrics: ") + e.what());
  }
  return server;
}

}  // namespace evald::worker
