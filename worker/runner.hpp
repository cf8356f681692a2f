// Runner: what turns one assignment into a ShardResult. The worker's main loop owns one of each
// kind and picks by the campaign's runner.type. A runner that finishes at once (noop) returns the
// result from start(); one that runs in the background (exec) returns nothing there and hands the
// result out later through take_finished(), signalling wake_fd() first.
//
// Threads: every method is called on the worker's main thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/protocol.hpp"
#include "common/spec.hpp"

namespace evald::worker {

struct RunRequest {
  const protocol::Assignment& assignment;
  const CampaignSpec& spec;  // model and benchmark indexes are already checked against it
  const std::string& campaign_id;
  // For a model with serve or endpoint: the server's base URL (ending in /v1) and the model
  // name requests carry. Empty otherwise.
  std::string endpoint = {};
  std::string served_model = {};
};

class Runner {
 public:
  virtual ~Runner() = default;
  virtual std::optional<protocol::ShardResult> start(const RunRequest& request) = 0;
  // Stops a running attempt and forgets it: no result will be reported for it.
  virtual void cancel(uint64_t attempt_id) = 0;
  // Readable when take_finished() has something; -1 for runners that never run in the background.
  virtual int wake_fd() const { return -1; }
  virtual std::vector<protocol::ShardResult> take_finished() { return {}; }
};

// A failed ShardResult for an assignment that could not be run; `error` says why.
protocol::ShardResult failed_result(const protocol::Assignment& assignment, std::string error);

// Built in, no process: {"metrics": {<benchmark metric>: 1.0}, "count": end - start} at once.
// It exists to measure the control plane, so it must stay allocation-light and never log.
class NoopRunner final : public Runner {
 public:
  std::optional<protocol::ShardResult> start(const RunRequest& request) override;
  void cancel(uint64_t /*attempt_id*/) override {}
};

}  // namespace evald::worker
