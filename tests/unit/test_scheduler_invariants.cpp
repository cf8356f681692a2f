// Scheduler::check_invariants: it passes on a healthy scheduler (every scheduler test checks it
// after every turn) and names the broken invariant when the state is wrong. The broken state comes
// from a store written by something else (two running shard records with the same attempt id, as
// a buggy earlier version or a hand-edited database could leave), not from a test-only way to
// reach into the scheduler's memory.
#include <catch2/catch.hpp>

#include "common/clock.hpp"
#include "coordinator/scheduler.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/scheduler_turn.hpp"

using namespace evald;
using namespace evald::coordinator;

namespace {

CampaignSpec two_shard_spec() {
  auto spec = parse_campaign_spec(
      nlohmann::json{{"name", "invariants"},
                     {"models", {{{"name", "model-a"}}}},
                     {"benchmarks", {{{"name", "kmmlu"}, {"examples", 20}, {"shard_size", 10}}}},
                     {"runner", {{"type", "noop"}}}});
  REQUIRE(spec.ok());
  return spec.value();
}

std::unique_ptr<Store> open_store(const testing::TempDir& dir) {
  auto opened = Store::open(dir.path() / "db");
  REQUIRE(opened.ok());
  return std::move(opened.value());
}

}  // namespace

TEST_CASE(
    "invariants: a shard running under an attempt id that another shard's lease took is named",
    "[scheduler][invariants]") {
  testing::TempDir dir;
  ManualClock clock;
  Metrics metrics;
  {
    auto store = open_store(dir);
    Scheduler scheduler(*store, clock, metrics, SchedulerOptions{});
    REQUIRE(scheduler.recover().ok());
    REQUIRE(scheduler.submit(two_shard_spec()).ok());
    testing::run_turn(scheduler);  // commits the campaign; checks the invariants hold
    scheduler.check_invariants();
  }
  {
    // Both shards recorded as running attempt 7: after a restart only one of them can be in the
    // orphan table, so the other one runs without a lease.
    auto store = open_store(dir);
    Store::Batch batch;
    ShardRecord running;
    running.state = ShardState::kRunning;
    running.attempts = 1;
    running.total_attempts = 1;
    running.attempt_id = 7;
    running.worker = "w1";
    batch.put_shard(ShardKey{1, 0, 0}, running);
    batch.put_shard(ShardKey{1, 0, 1}, running);
    REQUIRE(store->commit(batch).ok());
  }
  auto store = open_store(dir);
  Scheduler scheduler(*store, clock, metrics, SchedulerOptions{});
  REQUIRE(scheduler.recover().ok());
  REQUIRE_THROWS_WITH(scheduler.check_invariants(),
                      Catch::Contains("a shard is running iff exactly one lease for it exists") &&
                          Catch::Contains("held by nobody"));
}

TEST_CASE("invariants: recovered leases and orphans satisfy every invariant",
          "[scheduler][invariants]") {
  testing::TempDir dir;
  ManualClock clock;
  Metrics metrics;
  {
    auto store = open_store(dir);
    Scheduler scheduler(*store, clock, metrics, SchedulerOptions{});
    REQUIRE(scheduler.recover().ok());
    REQUIRE(scheduler.submit(two_shard_spec()).ok());
    protocol::Hello hello;
    hello.name = "w1";
    hello.instance = "i1";
    hello.slots = 1;
    scheduler.on_message("w1", hello);
    REQUIRE(testing::run_turn(scheduler).size() == 1);
  }
  // The restarted scheduler holds the running shard in its orphan table, the other one pending.
  auto store = open_store(dir);
  Scheduler scheduler(*store, clock, metrics, SchedulerOptions{});
  REQUIRE(scheduler.recover().ok());
  scheduler.check_invariants();
  const Campaign* c = scheduler.find_campaign("c000001");
  REQUIRE(c != nullptr);
  CHECK(c->count(ShardState::kRunning) == 1);
  CHECK(c->count(ShardState::kPending) == 1);
}
