// One coordinator turn for unit tests that drive a Scheduler on a real store without the core:
// Scheduler::run_turn (tick, dispatch, stage cells, commit, drain), the sequence the core runs,
// with the commit required to succeed and the scheduler's invariants checked after every turn
// (release builds skip that check in the core). Returns the assignments the turn sent;
// `noop_success` is what a noop worker answers.
#pragma once

#include <catch2/catch.hpp>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "coordinator/scheduler.hpp"

namespace evald::testing {

// Runs one turn; every message it sends goes to send_one(identity, message).
template <typename Send>
void run_turn(coordinator::Scheduler& scheduler, Send&& send_one) {
  auto committed = scheduler.run_turn(std::forward<Send>(send_one));
  INFO((committed.ok() ? std::string() : committed.error().message));
  REQUIRE(committed.ok());
  scheduler.check_invariants();
}

inline std::vector<protocol::Assignment> run_turn(coordinator::Scheduler& scheduler) {
  std::vector<protocol::Assignment> given;
  run_turn(scheduler, [&](const std::string&, const protocol::Message& m) {
    if (const auto* a = std::get_if<protocol::Assign>(&m)) {
      given.insert(given.end(), a->assignments.begin(), a->assignments.end());
    }
  });
  return given;
}

inline protocol::ShardResult noop_success(const protocol::Assignment& assignment) {
  auto r = protocol::result_for(assignment);
  r.ok = true;
  r.count = assignment.end - assignment.start;
  r.metrics = {{"accuracy", 1.0}};
  return r;
}

}  // namespace evald::testing
