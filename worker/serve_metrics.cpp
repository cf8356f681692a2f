#include "worker/serve_metrics.hpp"

#include <utility>

namespace evald::worker {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

ServeMetrics::ServeMetrics(std::shared_ptr<prometheus::Registry> shared)
    : registry_(std::move(shared)),
      loads_(BuildCounter()
                 .Name("evald_worker_model_loads_total")
                 .Help("Model servers this worker started that became ready, by model")
                 .Register(*registry_)),
      load_seconds_(
          BuildHistogram()
              .Name("evald_worker_model_load_seconds")
              .Help("Seconds from starting a model server to its first healthy answer")
              .Register(*registry_)
              .Add({}, prometheus::Histogram::BucketBoundaries{0.1, 0.5, 1, 2, 5, 10, 30, 60, 120,
                                                               300, 600, 1200, 1800})),
      failures_(BuildCounter()
                    .Name("evald_worker_model_server_failures_total")
                    .Help("Model servers that failed: exited, not ready in time, or not started")
                    .Register(*registry_)),
      servers_up_(BuildGauge()
                      .Name("evald_worker_model_servers_up")
                      .Help("Model server processes running now (starting or ready), by model")
                      .Register(*registry_)),
      requests_(BuildCounter()
                    .Name("evald_worker_openai_requests_total")
                    .Help("HTTP requests of the built-in openai runner, by outcome")
                    .Register(*registry_)),
      request_seconds_(
          BuildHistogram()
              .Name("evald_worker_openai_request_seconds")
              .Help("Latency of the openai runner's requests, every try")
              .Register(*registry_)
              .Add({},
                   prometheus::Histogram::BucketBoundaries{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                           1, 2.5, 5, 10, 30, 60, 120, 600})),
      tokens_(BuildCounter()
                  .Name("evald_worker_openai_tokens_total")
                  .Help("Tokens the model servers reported in usage, by kind")
                  .Register(*registry_)),
      prompt_tokens_(tokens_.Add({{"kind", "prompt"}})),
      completion_tokens_(tokens_.Add({{"kind", "completion"}})),
      connections_(BuildCounter()
                       .Name("evald_worker_openai_connections_total")
                       .Help("TCP connections the openai runner opened (kept alive per request "
                             "lane; reopened after the server closed one or a request failed)")
                       .Register(*registry_)
                       .Add({})) {}

void ServeMetrics::count_load(const std::string& model, double seconds) {
  loads_.Add({{"model", model}}).Increment();
  load_seconds_.Observe(seconds);
}

void ServeMetrics::count_server_failure(const std::string& model, const std::string& reason) {
  failures_.Add({{"model", model}, {"reason", reason}}).Increment();
}

void ServeMetrics::server_up(const std::string& model, int delta) {
  servers_up_.Add({{"model", model}}).Increment(delta);
}

void ServeMetrics::count_request(const std::string& outcome, double seconds) {
  requests_.Add({{"outcome", outcome}}).Increment();
  request_seconds_.Observe(seconds);
}

void ServeMetrics::count_tokens(uint64_t prompt, uint64_t completion) {
  prompt_tokens_.Increment(static_cast<double>(prompt));
  completion_tokens_.Increment(static_cast<double>(completion));
}

void ServeMetrics::count_connections(uint64_t opened) {
  connections_.Increment(static_cast<double>(opened));
}

}  // namespace evald::worker
