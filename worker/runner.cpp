#include "worker/runner.hpp"

#include <utility>

namespace evald::worker {

protocol::ShardResult result_for(const protocol::Assignment& assignment) {
  protocol::ShardResult result;
  result.attempt_id = assignment.attempt_id;
  result.campaign = assignment.campaign;
  result.model = assignment.model;
  result.benchmark = assignment.benchmark;
  result.shard = assignment.shard;
  return result;
}

protocol::ShardResult failed_result(const protocol::Assignment& assignment, std::string error) {
  auto result = result_for(assignment);
  result.ok = false;
  result.error = std::move(error);
  return result;
}

std::optional<protocol::ShardResult> NoopRunner::start(const RunRequest& request) {
  auto result = result_for(request.assignment);
  result.ok = true;
  result.count = request.assignment.end - request.assignment.start;
  result.metrics.emplace_back(request.spec.benchmarks[request.assignment.benchmark].metric, 1.0);
  return result;
}

}  // namespace evald::worker
