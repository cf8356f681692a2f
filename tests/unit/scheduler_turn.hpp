// One coordinator turn for unit tests that drive a Scheduler on a real store without the core:
// tick, dispatch, stage cells, commit, then drain the outgoing messages, as coordinator/core.cpp
// does. Returns the assignments the turn sent; `noop_success` is what a noop worker answers.
#pragma once

#include <catch2/catch.hpp>
#include <variant>
#include <vector>

#include "coordinator/scheduler.hpp"

namespace evald::testing {

inline std::vector<protocol::Assignment> run_turn(coordinator::Scheduler& scheduler,
                                                  coordinator::Store& store) {
  scheduler.tick();
  scheduler.dispatch();
  scheduler.stage_dirty_cells();
  REQUIRE(store.commit(scheduler.batch()).ok());
  std::vector<protocol::Assignment> given;
  scheduler.outgoing().drain([&](const std::string&, const protocol::Message& m) {
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
