// Shard-duration estimates (coordinator/durations.hpp): the pure estimator, and the scheduler
// learning them from results on a real store, from running attempts, and after a restart.
#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <optional>

#include "common/clock.hpp"
#include "coordinator/durations.hpp"
#include "coordinator/scheduler.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/scheduler_turn.hpp"

using namespace evald;
using namespace evald::coordinator;
using namespace std::chrono_literals;

TEST_CASE("duration samples: the median of the recent warm ones, cold ones only until then",
          "[unit][durations]") {
  DurationSamples s;
  CHECK_FALSE(s.median().has_value());
  s.add(9.0, /*cold=*/true);  // includes a load
  s.add(7.0, /*cold=*/true);
  CHECK(s.median() == Approx(8.0));
  s.add(1.0, false);
  CHECK(s.median() == Approx(1.0));
  s.add(3.0, false);
  s.add(100.0, false);  // one straggler moves nothing
  CHECK(s.median() == Approx(3.0));
  s.add(-1.0, false);  // not a time
  s.add(std::nan(""), false);
  CHECK(s.warm_count() == 3);
  // Only the most recent kKept count: a model that became faster is followed.
  for (size_t i = 0; i < DurationSamples::kKept; ++i) s.add(0.5, false);
  CHECK(s.warm_count() == DurationSamples::kKept);
  CHECK(s.median() == Approx(0.5));
}

TEST_CASE(
    "expected shard time: own results, else borrowed from the campaign, never below what runs",
    "[unit][durations]") {
  // 3 models x 2 benchmarks; shard sizes 10 and 5 examples.
  std::vector<GroupTimes> g(6);
  for (size_t i = 0; i < g.size(); ++i) g[i].shard_size = (i % 2 == 0) ? 10 : 5;
  SECTION("nothing known: the default for every group") {
    std::vector<std::optional<double>> finished;
    for (double e : expected_shard_seconds(3, 2, g, &finished)) CHECK(e == kDefaultShardSeconds);
    REQUIRE(finished.size() == 6);
    for (const auto& f : finished) CHECK_FALSE(f.has_value());  // the default is no evidence
  }
  SECTION("a model's factor times a benchmark's time") {
    g[0].finished_per_example = 1.0;  // m0 b0
    g[1].finished_per_example = 2.0;  // m0 b1
    g[2].finished_per_example = 3.0;  // m1 b0: three times m0 on b0
    const auto e = expected_shard_seconds(3, 2, g);
    CHECK(e[0] == Approx(10.0));
    CHECK(e[1] == Approx(10.0));
    // b0's time is the median of 1 and 3 (2); m1's ratio to it is 1.5, so on b1 (time 2): 3/ex.
    CHECK(e[2] == Approx(30.0));
    CHECK(e[3] == Approx(1.5 * 2.0 * 5));
    // m2 is unknown: factor 1.
    CHECK(e[4] == Approx(2.0 * 10));
    CHECK(e[5] == Approx(2.0 * 5));
  }
  SECTION("a running attempt is a lower bound, for its group and its model's factor") {
    g[0].finished_per_example = 1.0;
    g[1].finished_per_example = 1.0;
    g[4].running_per_example = 12.0;  // m2 on b0 has run 12 s per example and not finished
    std::vector<std::optional<double>> finished;
    const auto e = expected_shard_seconds(3, 2, g, &finished);
    CHECK(e[4] == Approx(120.0));
    CHECK(e[5] == Approx(12.0 * 1.0 * 5));  // m2's factor is at least 12
    CHECK(e[2] == Approx(10.0));            // m1 unknown: factor 1
    // From finished attempts alone, m2 is a model like the others: what its running shard is
    // judged by (a straggler at 1.5 x that, 15 s, not never).
    REQUIRE(finished.size() == 6);
    CHECK(finished[0] == Approx(10.0));
    CHECK(finished[4] == Approx(10.0));
    CHECK(finished[5] == Approx(5.0));
  }
  SECTION("work that takes no time is still weighed by its count") {
    for (auto& x : g) x.finished_per_example = 0.0;
    for (double e : expected_shard_seconds(3, 2, g)) CHECK(e == kMinShardSeconds);
  }
}

namespace {

// Two models x two benchmarks, 10 shards of 4 examples each; the true per-example seconds:
const std::map<std::pair<uint32_t, uint32_t>, double> kTruth = {
    {{0, 0}, 0.5}, {{0, 1}, 1.0}, {{1, 0}, 6.0}, {{1, 1}, 12.0}};

CampaignSpec two_by_two() {
  nlohmann::json j = {{"name", "durations"},
                      {"models", {{{"name", "fast"}}, {{"name", "slow"}}}},
                      {"benchmarks",
                       {{{"name", "a"}, {"examples", 40}, {"shard_size", 4}},
                        {{"name", "b"}, {"examples", 40}, {"shard_size", 4}}}},
                      {"runner", {{"type", "noop"}}}};
  auto spec = parse_campaign_spec(j);
  REQUIRE(spec.ok());
  return spec.value();
}

struct Cluster {
  testing::TempDir dir{"evald-durations"};
  ManualClock clock;
  Metrics metrics;
  std::unique_ptr<Store> store;
  std::unique_ptr<Scheduler> scheduler;

  Cluster() { open(); }
  void open() {
    scheduler.reset();
    store.reset();
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    store = std::move(opened.value());
    scheduler = std::make_unique<Scheduler>(*store, clock, metrics, SchedulerOptions{});
    REQUIRE(scheduler->recover().ok());
  }
  void hello(const std::string& name, uint32_t slots) {
    protocol::Hello h;
    h.name = name;
    h.instance = "i1";
    h.slots = slots;
    scheduler->on_message(name, h);
  }
};

}  // namespace

TEST_CASE("the scheduler learns shard durations from results and keeps them over a restart",
          "[unit][durations][scheduler]") {
  Cluster k;
  auto id = k.scheduler->submit(two_by_two());
  REQUIRE(id.ok());
  k.hello("w1", 2);
  k.hello("w2", 2);
  // Run half of the campaign (20 of its 40 shards): each turn, every running shard finishes after
  // its true time (with
  // +-5 % spread), reported by its worker; the clock moves on by as much.
  std::vector<std::pair<std::string, protocol::Assignment>> running;
  int finished = 0;
  int n = 0;
  while (finished < 20) {
    testing::run_turn(*k.scheduler, [&](const std::string& who, const protocol::Message& m) {
      if (const auto* a = std::get_if<protocol::Assign>(&m)) {
        for (const auto& x : a->assignments) running.emplace_back(who, x);
      }
    });
    REQUIRE_FALSE(running.empty());
    k.clock.advance(30s);
    for (const auto& [who, a] : running) {
      auto r = testing::noop_success(a);
      const double spread = 1.0 + 0.05 * std::sin(static_cast<double>(++n));
      r.duration_ms = static_cast<uint32_t>(
          std::lround(kTruth.at({a.model, a.benchmark}) * (a.end - a.start) * spread * 1000));
      k.scheduler->on_message(who, protocol::Results{{r}});
      ++finished;
    }
    running.clear();
  }
  k.scheduler->refresh_estimates();
  const Campaign* c = k.scheduler->find_campaign(id.value());
  REQUIRE(c != nullptr);
  REQUIRE(c->state == CampaignState::kRunning);
  std::vector<double> learned;
  for (const Group& g : c->groups) {
    const double truth = kTruth.at({g.model, g.benchmark}) * 4;
    INFO("model " << g.model << " benchmark " << g.benchmark);
    if (g.samples.warm_count() + g.samples.cold_count() > 0) {
      CHECK(g.expected_shard_s == Approx(truth).epsilon(0.06));
    } else {
      // Not run yet: borrowed from the rest, in the right order of magnitude.
      CHECK(g.expected_shard_s > truth / 3);
      CHECK(g.expected_shard_s < truth * 3);
    }
    learned.push_back(g.expected_shard_s);
  }
  // The slow model's work weighs what its shards take, not what their count says.
  CHECK(c->queues[1].pending_gpu_s > 5 * c->queues[0].pending_gpu_s);

  k.open();  // the coordinator restarts on the same store
  const Campaign* after = k.scheduler->find_campaign(id.value());
  REQUIRE(after != nullptr);
  for (size_t i = 0; i < after->groups.size(); ++i) {
    INFO("group " << i);
    // Restored from the shard records, where which attempts were cold is not kept: the median
    // of all of them rather than of the warm ones, so within the +-5 % spread of each other.
    CHECK(after->groups[i].expected_shard_s == Approx(learned[i]).epsilon(0.11));
  }
  CHECK(after->queues[1].pending_gpu_s > 5 * after->queues[0].pending_gpu_s);
}

TEST_CASE("a shard that has run 10 minutes is expected to take at least 10",
          "[unit][durations][scheduler]") {
  // Benchmark "a" has one shard, "b" ten: model 0's first shard (of "a") is cold, its next ones
  // (of "b") start on a worker that has the model loaded.
  nlohmann::json j = {{"name", "running"},
                      {"models", {{{"name", "m0"}}, {{"name", "m1"}}}},
                      {"benchmarks",
                       {{{"name", "a"}, {"examples", 4}, {"shard_size", 4}},
                        {{"name", "b"}, {"examples", 40}, {"shard_size", 4}}}},
                      {"runner", {{"type", "noop"}}}};
  auto spec = parse_campaign_spec(j);
  REQUIRE(spec.ok());
  Cluster k;
  auto id = k.scheduler->submit(spec.value());
  REQUIRE(id.ok());
  k.hello("w1", 1);
  auto given = testing::run_turn(*k.scheduler);
  REQUIRE(given.size() == 1);
  const uint32_t m = given[0].model;
  REQUIRE(given[0].benchmark == 0);
  k.clock.advance(8s);
  auto r = testing::noop_success(given[0]);
  r.duration_ms = 8000;  // 2 s per example
  k.scheduler->on_message("w1", protocol::Results{{r}});
  given = testing::run_turn(*k.scheduler);
  REQUIRE(given.size() == 1);
  REQUIRE(given[0].model == m);
  REQUIRE(given[0].benchmark == 1);
  k.clock.advance(600s);
  k.scheduler->on_message("w1", protocol::Heartbeat{});
  testing::run_turn(*k.scheduler);  // the estimates are refreshed with the gauges
  const Campaign* c = k.scheduler->find_campaign(id.value());
  CHECK(c->groups[m * 2].expected_shard_s == Approx(8.0));  // finished: its own result
  CHECK(c->groups[m * 2 + 1].expected_shard_s >= 600.0);    // running for 600 s, not finished
  // The other model borrows benchmark a's time (factor 1) and the campaign's shard time for b;
  // model 0's slow b-shard is not evidence about it.
  CHECK(c->groups[(1 - m) * 2].expected_shard_s == Approx(8.0));
  CHECK(c->groups[(1 - m) * 2 + 1].expected_shard_s == Approx(8.0));
}

TEST_CASE("pending GPU-seconds and idle workers are exported per kind of worker",
          "[unit][durations][metrics]") {
  nlohmann::json j = {
      {"name", "kinds"},
      {"models",
       {{{"name", "big"}, {"resources", {{"gpus", 1}, {"labels", {{"gpu", "h100"}}}}}},
        {{"name", "small"}, {"resources", {{"gpus", 1}}}}}},
      {"benchmarks", {{{"name", "a"}, {"examples", 3}, {"shard_size", 1}}}},
      {"runner", {{"type", "noop"}}}};
  auto spec = parse_campaign_spec(j);
  REQUIRE(spec.ok());
  Cluster k;
  REQUIRE(k.scheduler->submit(spec.value()).ok());
  for (const std::string kind : {"h100", "a100"}) {
    protocol::Hello h;
    h.name = "w-" + kind;
    h.instance = "i1";
    h.slots = 1;
    h.gpus = nlohmann::json::array({{{"index", 0}, {"name", "gpu"}, {"memory_mib", 81559}}});
    h.labels = {{"gpu", kind}};
    k.scheduler->on_message(h.name, h);
  }
  auto value = [&](const std::string& series) -> double {
    const std::string text = k.metrics.serialize();
    const auto at = text.find(series + " ");
    INFO(series << " in\n" << text);
    REQUIRE(at != std::string::npos);
    return std::stod(text.substr(at + series.size() + 1));
  };
  std::map<std::string, uint32_t> model_of;
  testing::run_turn(*k.scheduler, [&](const std::string& who, const protocol::Message& m) {
    if (const auto* a = std::get_if<protocol::Assign>(&m)) {
      for (const auto& x : a->assignments) model_of[who] = x.model;
    }
  });
  REQUIRE(model_of.size() == 2);
  // The H100 worker takes the model only it can run; the A100 worker the other one.
  CHECK(model_of["w-h100"] == 0);
  CHECK(model_of["w-a100"] == 1);
  k.clock.advance(1s);
  k.scheduler->on_message("w-h100", protocol::Heartbeat{});
  k.scheduler->on_message("w-a100", protocol::Heartbeat{});
  testing::run_turn(*k.scheduler);
  // Two shards of each model pending, one minute each (nothing finished yet): the H100 worker
  // could run all four, the A100 worker only the small model's two.
  CHECK(value("evald_pending_gpu_seconds{labels=\"gpu=h100\"}") == Approx(240.0));
  CHECK(value("evald_pending_gpu_seconds{labels=\"gpu=a100\"}") == Approx(120.0));
  CHECK(value("evald_pending_gpu_seconds{labels=\"all\"}") == Approx(240.0));
  CHECK(value("evald_workers_idle{labels=\"gpu=h100\"}") == 0.0);
}
