// Duration estimates per kind of worker (docs/scheduling.md, "Expected GPU time"): where nodes
// differ, what a shard takes on each kind is learned apart (falling back to the model x
// benchmark estimate), and rebuilt from the shard records after a coordinator restart once the
// workers say HELLO again.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "coordinator/scheduler.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/scheduler_turn.hpp"

using namespace evald;
using namespace evald::coordinator;
using namespace std::chrono_literals;

namespace {

struct TwoKinds {
  testing::TempDir dir{"evald-kinds"};
  ManualClock clock;
  Metrics metrics;
  std::unique_ptr<Store> store;
  std::unique_ptr<Scheduler> scheduler;

  TwoKinds() { open(); }
  void open() {
    scheduler.reset();
    store.reset();
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    store = std::move(opened.value());
    scheduler = std::make_unique<Scheduler>(*store, clock, metrics, SchedulerOptions{});
    REQUIRE(scheduler->recover().ok());
  }
  // "fast" workers have H100s, "slow" ones A100s: another kind.
  void hello(const std::string& name, const std::string& gpu) {
    protocol::Hello h;
    h.name = name;
    h.instance = "i1";
    h.slots = 1;
    h.gpus =
        nlohmann::json::array({{{"index", 0}, {"name", "NVIDIA " + gpu}, {"memory_mib", 81'559}}});
    h.labels = {{"zone", "a"}};
    scheduler->on_message(name, h);
  }
  const WorkerInfo& worker(const std::string& name) {
    for (const WorkerInfo* w : scheduler->workers()) {
      if (w->name == name) return *w;
    }
    FAIL("no worker " << name);
    throw std::logic_error("unreachable");
  }
};

}  // namespace

TEST_CASE("shard durations are learned per kind of worker and rebuilt after a restart",
          "[unit][durations][scheduler]") {
  nlohmann::json j = {{"name", "kinds"},
                      {"models", {{{"name", "m"}, {"resources", {{"gpus", 1}}}}}},
                      {"benchmarks", {{{"name", "b"}, {"examples", 160}, {"shard_size", 4}}}},
                      {"runner", {{"type", "noop"}}}};
  auto spec = parse_campaign_spec(j);
  REQUIRE(spec.ok());
  TwoKinds k;
  auto id = k.scheduler->submit(spec.value());
  REQUIRE(id.ok());
  k.hello("h1", "H100 80GB HBM3");
  k.hello("h2", "H100 80GB HBM3");
  k.hello("a1", "A100-SXM4-80GB");
  CHECK(k.worker("h1").kind == k.worker("h2").kind);
  CHECK(k.worker("h1").kind != k.worker("a1").kind);

  // 1 s per example on the H100s, 3 s on the A100: a shard of 4 takes 4 s or 12 s there.
  int finished = 0;
  while (finished < 24) {
    std::vector<std::pair<std::string, protocol::Assignment>> running;
    testing::run_turn(*k.scheduler, [&](const std::string& who, const protocol::Message& m) {
      if (const auto* a = std::get_if<protocol::Assign>(&m)) {
        for (const auto& x : a->assignments) running.emplace_back(who, x);
      }
    });
    REQUIRE_FALSE(running.empty());
    k.clock.advance(1s);
    for (const auto& [who, a] : running) {
      auto r = testing::noop_success(a);
      r.duration_ms = who == "a1" ? 12'000 : 4'000;
      k.scheduler->on_message(who, protocol::Results{{r}});
      ++finished;
    }
  }
  k.scheduler->refresh_estimates();
  const Campaign* c = k.scheduler->find_campaign(id.value());
  REQUIRE(c != nullptr);
  REQUIRE(c->state == CampaignState::kRunning);
  // Two of every three results came from H100s: the campaign-wide estimate is theirs, and the
  // A100 keeps its own.
  CHECK(c->groups[0].expected_shard_s == Approx(4.0));
  CHECK(k.scheduler->expected_shard_seconds_on(*c, 0, k.worker("h1")) == Approx(4.0));
  CHECK(k.scheduler->expected_shard_seconds_on(*c, 0, k.worker("a1")) == Approx(12.0));

  k.open();  // the coordinator restarts on the same store
  const Campaign* after = k.scheduler->find_campaign(id.value());
  REQUIRE(after != nullptr);
  CHECK(after->groups[0].expected_shard_s == Approx(4.0));
  // A worker of a kind with no finished shard here falls back to the model x benchmark estimate.
  k.hello("l1", "L40S");
  k.hello("a1", "A100-SXM4-80GB");
  k.scheduler->refresh_estimates();
  CHECK(k.scheduler->expected_shard_seconds_on(*after, 0, k.worker("l1")) == Approx(4.0));
  // The A100's shards are found in the records by its name once it says which kind it is.
  CHECK(k.scheduler->expected_shard_seconds_on(*after, 0, k.worker("a1")) == Approx(12.0));
}
