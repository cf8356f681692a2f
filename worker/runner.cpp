#include "worker/runner.hpp"

#include <utility>

namespace evald::worker {

protocol::ShardResult failed_result(const protocol::Assignment& assignment, std::string error) {
  auto result = protocol::result_for(assignment);
  result.ok = false;
  result.error = std::move(error);
  return result;
}

std::optional<protocol::ShardResult> NoopRunner::start(const RunRequest& request) {
  auto result = protocol::result_for(request.assignment);
  result.ok = true;
  result.count = request.assignment.end - request.assignment.start;
  result.metrics.emplace_back(request.spec.benchmarks[request.assignment.benchmark].metric, 1.0);
  return result;
}

}  // namespace evald::worker
