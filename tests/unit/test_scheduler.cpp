// Scheduler: leases, credit, exactly-once counting, retries, loss, recovery, rerun and cancel,
// driven with an injected clock against a real RocksDB directory.
#include <algorithm>
#include <catch2/catch.hpp>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>

#include "common/clock.hpp"
#include "coordinator/scheduler.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/scheduler_turn.hpp"

using namespace evald;
using namespace evald::coordinator;
using namespace std::chrono_literals;

namespace {

CampaignSpec make_spec(int examples, int shard_size, int max_attempts = 3, int priority = 0,
                       const std::string& name = "round1") {
  nlohmann::json j = {
      {"name", name},
      {"models", {{{"name", "model-a"}}}},
      {"benchmarks", {{{"name", "kmmlu"}, {"examples", examples}, {"shard_size", shard_size}}}},
      {"runner", {{"type", "noop"}}},
      {"max_attempts", max_attempts},
      {"priority", priority}};
  auto spec = parse_campaign_spec(j);
  REQUIRE(spec.ok());
  return spec.value();
}

struct Harness {
  testing::TempDir dir;
  ManualClock clock;
  Metrics metrics;
  SchedulerOptions options{.heartbeat = 1000ms,
                           .worker_timeout = 5000ms,
                           .retry_backoff = 100ms,
                           .forget_lost_workers_after = std::chrono::hours(1),
                           .restart_grace = 5000ms};
  std::unique_ptr<Store> store;
  std::unique_ptr<Scheduler> scheduler;
  std::vector<std::pair<std::string, protocol::Message>> sent;

  Harness() { open(); }

  void open() {
    scheduler.reset();
    store.reset();
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    store = std::move(opened.value());
    scheduler = std::make_unique<Scheduler>(*store, clock, metrics, options);
    REQUIRE(scheduler->recover().ok());
  }

  // One event-loop turn, as the core runs it; the invariants are checked after it.
  void turn() {
    testing::run_turn(*scheduler, [&](const std::string& who, const protocol::Message& m) {
      sent.emplace_back(who, m);
    });
  }

  void hello(const std::string& name, uint32_t slots, std::vector<uint64_t> running = {},
             const std::string& instance = "i1", uint32_t queue_ahead = 0) {
    protocol::Hello h;
    h.name = name;
    h.instance = instance;
    h.slots = slots;
    h.queue_ahead = queue_ahead;
    h.running = std::move(running);
    scheduler->on_message(name, h);
  }

  template <typename T>
  std::vector<T> take(const std::string& who) {
    std::vector<T> out;
    std::vector<std::pair<std::string, protocol::Message>> rest;
    for (auto& [w, m] : sent) {
      if (w == who && std::holds_alternative<T>(m)) {
        out.push_back(std::get<T>(m));
      } else {
        rest.emplace_back(w, m);
      }
    }
    sent = std::move(rest);
    return out;
  }

  std::vector<protocol::Assignment> assignments(const std::string& who) {
    std::vector<protocol::Assignment> out;
    for (auto& a : take<protocol::Assign>(who)) {
      out.insert(out.end(), a.assignments.begin(), a.assignments.end());
    }
    return out;
  }

  std::vector<uint64_t> acks(const std::string& who) {
    std::vector<uint64_t> out;
    for (auto& a : take<protocol::Ack>(who)) {
      out.insert(out.end(), a.attempt_ids.begin(), a.attempt_ids.end());
    }
    return out;
  }

  void report(const std::string& who, const protocol::Assignment& a, bool ok, double accuracy,
              const std::string& error = "") {
    protocol::ShardResult r = protocol::result_for(a);
    r.ok = ok;
    r.count = a.end - a.start;
    if (ok) r.metrics = {{"accuracy", accuracy}};
    r.error = error;
    scheduler->on_message(who, protocol::Results{{r}});
  }

  // Submits `spec`, connects worker w1 with one slot and returns the campaign id and the shard
  // it was given.
  std::pair<std::string, protocol::Assignment> start_on_one_slot(const CampaignSpec& spec) {
    auto id = scheduler->submit(spec);
    REQUIRE(id.ok());
    hello("w1", 1);
    turn();
    auto given = assignments("w1");
    REQUIRE(given.size() == 1);
    return {id.value(), given[0]};
  }

  // Takes the one new assignment of each named worker (kept in `running`) and counts those of
  // the campaign with key `campaign_key`.
  int take_one_each(const std::vector<std::string>& names,
                    std::map<std::string, protocol::Assignment>& running, uint32_t campaign_key) {
    int on_campaign = 0;
    for (const auto& n : names) {
      auto given = assignments(n);
      REQUIRE(given.size() == 1);
      running[n] = given[0];
      if (given[0].campaign == campaign_key) ++on_campaign;
    }
    return on_campaign;
  }

  const Campaign& campaign(const std::string& id) {
    const Campaign* c = scheduler->find_campaign(id);
    REQUIRE(c != nullptr);
    return *c;
  }
};

}  // namespace

TEST_CASE("dispatch honours credit and a result counts exactly once", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(9, 2));  // shards 2,2,2,2,1
  REQUIRE(id.ok());
  h.turn();
  h.hello("w1", 2);
  h.turn();
  CHECK(h.take<protocol::Welcome>("w1").size() == 1);
  CHECK(h.take<protocol::CampaignInfo>("w1").size() == 1);
  auto first = h.assignments("w1");
  REQUIRE(first.size() == 2);  // never more than the free slots
  CHECK(first[0].start == 0);
  CHECK(first[0].end == 2);
  CHECK(first[0].attempt == 1);
  CHECK(h.campaign(id.value()).count(ShardState::kRunning) == 2);

  h.report("w1", first[0], true, 1.0);
  h.turn();
  CHECK(h.acks("w1") == std::vector<uint64_t>{first[0].attempt_id});
  CHECK(h.assignments("w1").size() == 1);  // the freed slot is refilled

  // The same result again (a re-delivery after a reconnect) is acknowledged but not counted.
  h.report("w1", first[0], true, 1.0);
  h.turn();
  CHECK(h.acks("w1").size() == 1);
  const auto& cell = h.campaign(id.value()).groups[0].cell;
  CHECK(cell.examples_scored == 2);
  CHECK(cell.shards_succeeded == 1);
}

TEST_CASE("a campaign completes with example-weighted aggregates", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(5, 2));  // shards [0,2) [2,4) [4,5)
  REQUIRE(id.ok());
  h.hello("w1", 8);
  h.turn();
  auto all = h.assignments("w1");
  REQUIRE(all.size() == 3);
  const double accuracy[] = {1.0, 0.5, 0.0};
  for (size_t i = 0; i < all.size(); ++i) h.report("w1", all[i], true, accuracy[all[i].shard]);
  h.turn();
  const Campaign& c = h.campaign(id.value());
  CHECK(c.state == CampaignState::kSucceeded);
  // (1.0*2 + 0.5*2 + 0.0*1) / 5
  CHECK(c.groups[0].cell.mean("accuracy").value() == Approx(3.0 / 5.0));
  CHECK(c.groups[0].cell.complete());

  // The aggregate and the final state are durable.
  h.open();
  const Campaign& again = h.campaign(id.value());
  CHECK(again.state == CampaignState::kSucceeded);
  CHECK(again.count(ShardState::kSucceeded) == 3);
  CHECK(again.groups[0].cell.mean("accuracy").value() == Approx(3.0 / 5.0));
}

TEST_CASE("a lost worker's shards run again and its late result is stale", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(2, 2));
  REQUIRE(id.ok());
  h.hello("w1", 1);
  h.turn();
  auto a1 = h.assignments("w1");
  REQUIRE(a1.size() == 1);

  h.clock.advance(6000ms);  // past --worker-timeout-ms without a word from w1
  h.hello("w2", 1);
  h.turn();
  auto a2 = h.assignments("w2");
  REQUIRE(a2.size() == 1);
  CHECK(a2[0].shard == a1[0].shard);
  CHECK(a2[0].attempt == 2);  // a lost worker uses up an attempt
  CHECK(a2[0].attempt_id != a1[0].attempt_id);
  CHECK(h.scheduler->last_error(h.campaign(id.value()), 0, 0) == "worker lost: w1");

  // w1 wakes up (SIGSTOP/SIGCONT) and reports: stored as stale, told to say hello again.
  h.report("w1", a1[0], true, 0.0);
  h.turn();
  CHECK(h.acks("w1").size() == 1);
  CHECK(h.take<protocol::ReHello>("w1").size() == 1);
  CHECK(h.campaign(id.value()).count(ShardState::kRunning) == 1);

  h.report("w2", a2[0], true, 1.0);
  h.turn();
  const Campaign& c = h.campaign(id.value());
  CHECK(c.state == CampaignState::kSucceeded);
  CHECK(c.groups[0].cell.examples_scored == 2);
  CHECK(c.groups[0].cell.mean("accuracy").value() == Approx(1.0));
}

TEST_CASE("failed attempts retry with backoff, then fail, rerun gives a fresh budget",
          "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(1, 1, /*max_attempts=*/2));
  REQUIRE(id.ok());
  h.hello("w1", 1);
  h.turn();
  auto a = h.assignments("w1");
  REQUIRE(a.size() == 1);
  h.report("w1", a[0], false, 0, "exit code 3: CUDA out of memory");
  h.turn();
  CHECK(h.assignments("w1").empty());  // backing off
  h.clock.advance(150ms);
  h.turn();
  auto retry = h.assignments("w1");
  REQUIRE(retry.size() == 1);
  CHECK(retry[0].attempt == 2);
  h.report("w1", retry[0], false, 0, "exit code 3: CUDA out of memory");
  h.turn();
  {
    const Campaign& c = h.campaign(id.value());
    CHECK(c.count(ShardState::kFailed) == 1);
    CHECK(c.state == CampaignState::kFailed);
    CHECK(h.scheduler->last_error(c, 0, 0) == "exit code 3: CUDA out of memory");
  }
  auto requeued = h.scheduler->rerun(id.value(), RerunSelector{});
  REQUIRE(requeued.ok());
  CHECK(requeued.value() == 1);
  CHECK(h.campaign(id.value()).state == CampaignState::kRunning);
  h.turn();
  auto fresh = h.assignments("w1");
  REQUIRE(fresh.size() == 1);
  CHECK(fresh[0].attempt == 3);  // {attempt} keeps counting: earlier attempts' files stay
  CHECK(h.campaign(id.value()).groups[0].shards[0].attempts == 1);  // a fresh budget
  h.report("w1", fresh[0], true, 0.25);
  h.turn();
  CHECK(h.campaign(id.value()).state == CampaignState::kSucceeded);
  CHECK(h.campaign(id.value()).groups[0].cell.mean("accuracy").value() == Approx(0.25));
}

TEST_CASE("rerun --model and --benchmark narrow the selection", "[unit][scheduler]") {
  Harness h;
  nlohmann::json j = {{"name", "narrow"},
                      {"models", {{{"name", "model-a"}}, {{"name", "model-b"}}}},
                      {"benchmarks",
                       {{{"name", "kmmlu"}, {"examples", 2}, {"shard_size", 1}},
                        {{"name", "haerae"}, {"examples", 1}, {"shard_size", 1}}}},
                      {"runner", {{"type", "noop"}}},
                      {"max_attempts", 1}};
  auto spec = parse_campaign_spec(j);
  REQUIRE(spec.ok());
  auto id = h.scheduler->submit(spec.value());
  REQUIRE(id.ok());
  h.hello("w1", 8);
  h.turn();
  auto all = h.assignments("w1");
  REQUIRE(all.size() == 6);
  for (auto& a : all) h.report("w1", a, false, 0, "exit code 1");
  h.turn();
  REQUIRE(h.campaign(id.value()).state == CampaignState::kFailed);

  RerunSelector wrong_model;
  wrong_model.model = "model-z";
  auto refused = h.scheduler->rerun(id.value(), wrong_model);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.error().message, Catch::Contains("model-z"));
  CHECK(h.campaign(id.value()).state == CampaignState::kFailed);

  RerunSelector model_b_haerae;
  model_b_haerae.model = "model-b";
  model_b_haerae.benchmark = "haerae";
  auto one = h.scheduler->rerun(id.value(), model_b_haerae);
  REQUIRE(one.ok());
  CHECK(one.value() == 1);
  RerunSelector kmmlu;
  kmmlu.benchmark = "kmmlu";
  auto four = h.scheduler->rerun(id.value(), kmmlu);
  REQUIRE(four.ok());
  CHECK(four.value() == 4);
  const Campaign& c = h.campaign(id.value());
  CHECK(c.state == CampaignState::kRunning);
  CHECK(c.count(ShardState::kPending) == 5);
  CHECK(c.count(ShardState::kFailed) == 1);  // model-a x haerae was not selected
  CHECK(c.groups[1].shards[0].state == ShardState::kFailed);
  CHECK(c.groups[3].shards[0].state == ShardState::kPending);
  h.turn();
  for (auto& a : h.assignments("w1")) {
    CHECK_FALSE((a.model == 0 && a.benchmark == 1));
    h.report("w1", a, true, 1.0);
  }
  h.turn();
  CHECK(c.state == CampaignState::kFailed);  // the unselected shard still failed
  CHECK(c.count(ShardState::kSucceeded) == 5);
}

TEST_CASE("rerun of succeeded shards removes them from the aggregate", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(4, 2));
  REQUIRE(id.ok());
  h.hello("w1", 2);
  h.turn();
  for (auto& a : h.assignments("w1")) h.report("w1", a, true, a.shard == 0 ? 1.0 : 0.0);
  h.turn();
  REQUIRE(h.campaign(id.value()).groups[0].cell.mean("accuracy").value() == Approx(0.5));
  RerunSelector all;
  all.failed_only = false;
  auto requeued = h.scheduler->rerun(id.value(), all);
  REQUIRE(requeued.ok());
  CHECK(requeued.value() == 2);
  CHECK(h.campaign(id.value()).groups[0].cell.examples_scored == 0);
  h.turn();
  for (auto& a : h.assignments("w1")) h.report("w1", a, true, 1.0);
  h.turn();
  CHECK(h.campaign(id.value()).groups[0].cell.mean("accuracy").value() == Approx(1.0));
  CHECK(h.campaign(id.value()).groups[0].cell.examples_scored == 4);
}

TEST_CASE("rerun --all while a shard still runs: its result counts once, old ones not at all",
          "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(6, 2));  // 3 shards
  REQUIRE(id.ok());
  h.hello("w1", 3);
  h.turn();
  auto given = h.assignments("w1");
  REQUIRE(given.size() == 3);
  h.report("w1", given[0], true, 1.0);
  h.report("w1", given[1], true, 1.0);
  h.turn();  // shard 2 is still running
  RerunSelector all;
  all.failed_only = false;
  auto requeued = h.scheduler->rerun(id.value(), all);
  REQUIRE(requeued.ok());
  CHECK(requeued.value() == 2);
  const auto& cell = h.campaign(id.value()).groups[0].cell;
  CHECK(cell.examples_scored == 0);
  CHECK(cell.shards_succeeded == 0);
  CHECK(cell.shards_total == 3);
  h.report("w1", given[2], true, 0.0);  // the running shard finishes after the rerun
  h.turn();
  CHECK(h.campaign(id.value()).groups[0].cell.examples_scored == 2);
  CHECK(h.campaign(id.value()).groups[0].cell.mean("accuracy").value() == Approx(0.0));
  for (auto& a : h.assignments("w1")) h.report("w1", a, true, 1.0);
  h.turn();
  CHECK(h.campaign(id.value()).groups[0].cell.examples_scored == 6);
  CHECK(h.campaign(id.value()).groups[0].cell.mean("accuracy").value() == Approx(2.0 / 3.0));
  // What was committed agrees with memory: a restart reads the same aggregate.
  h.open();
  CHECK(h.campaign(id.value()).groups[0].cell.examples_scored == 6);
  CHECK(h.campaign(id.value()).groups[0].cell.mean("accuracy").value() == Approx(2.0 / 3.0));
}

TEST_CASE("after a restart, running shards are reclaimed or queued again", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(4, 2));
  REQUIRE(id.ok());
  h.hello("w1", 2);
  h.turn();
  auto a = h.assignments("w1");
  REQUIRE(a.size() == 2);

  h.open();  // the coordinator restarts on the same store
  CHECK(h.campaign(id.value()).count(ShardState::kRunning) == 2);
  // w1 still runs the first attempt only; the second is not reclaimed.
  h.hello("w1", 2, {a[0].attempt_id}, "i1");
  h.turn();
  CHECK(h.take<protocol::Cancel>("w1").empty());
  CHECK(h.assignments("w1").empty());  // no second copy of the reclaimed shard
  h.clock.advance(5100ms);
  h.hello("w1", 2, {a[0].attempt_id}, "i1");  // keeps w1 alive
  h.turn();
  auto again = h.assignments("w1");
  REQUIRE(again.size() == 1);
  CHECK(again[0].shard == a[1].shard);
  CHECK(again[0].attempt == 2);  // the second attempt started...
  // ... but a coordinator restart did not use one up
  CHECK(h.campaign(id.value()).groups[0].shards[again[0].shard].attempts == 1);
  CHECK(again[0].attempt_id >> 32 == (a[0].attempt_id >> 32) + 1);  // new epoch, new ids
  h.report("w1", a[0], true, 1.0);
  h.report("w1", again[0], true, 1.0);
  h.turn();
  CHECK(h.campaign(id.value()).state == CampaignState::kSucceeded);
  CHECK(h.campaign(id.value()).groups[0].cell.examples_scored == 4);
}

TEST_CASE("cancel stops running shards and cancels the rest", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(10, 2));
  REQUIRE(id.ok());
  h.hello("w1", 2);
  h.turn();
  auto a = h.assignments("w1");
  REQUIRE(a.size() == 2);
  auto cancelled = h.scheduler->cancel(id.value());
  REQUIRE(cancelled.ok());
  CHECK(cancelled.value() == 5);
  h.turn();
  auto cancels = h.take<protocol::Cancel>("w1");
  REQUIRE(cancels.size() == 1);
  CHECK(cancels[0].attempt_ids.size() == 2);
  CHECK(h.campaign(id.value()).state == CampaignState::kCancelled);
  CHECK(h.assignments("w1").empty());
  CHECK_FALSE(h.scheduler->cancel(id.value()).ok());
  CHECK_FALSE(h.scheduler->rerun(id.value(), RerunSelector{}).ok());
  // A result that arrives anyway is stale and changes nothing.
  h.report("w1", a[0], true, 1.0);
  h.turn();
  CHECK(h.campaign(id.value()).count(ShardState::kCancelled) == 5);
  CHECK(h.campaign(id.value()).groups[0].cell.examples_scored == 0);
}

TEST_CASE("higher priority campaigns are served first", "[unit][scheduler]") {
  Harness h;
  auto low = h.scheduler->submit(make_spec(4, 1, 3, 0, "low"));
  auto high = h.scheduler->submit(make_spec(4, 1, 3, 5, "high"));
  REQUIRE(low.ok());
  REQUIRE(high.ok());
  h.hello("w1", 3);
  h.turn();
  auto a = h.assignments("w1");
  REQUIRE(a.size() == 3);
  const uint32_t high_key = h.campaign(high.value()).key;
  for (const auto& x : a) CHECK(x.campaign == high_key);
}

TEST_CASE("campaigns of equal priority share the workers", "[unit][scheduler][fairness]") {
  Harness h;
  auto first = h.scheduler->submit(make_spec(40, 1, 3, 0, "first"));
  REQUIRE(first.ok());
  const std::vector<std::string> names = {"w1", "w2", "w3", "w4"};
  for (const auto& n : names) h.hello(n, 1);
  h.turn();
  std::map<std::string, protocol::Assignment> running;
  for (const auto& n : names) {
    auto a = h.assignments(n);
    REQUIRE(a.size() == 1);
    running[n] = a[0];
  }
  // A second campaign of the same priority arrives while the first holds every worker; as the
  // workers finish shards it gets half of them, although the first still has work for all.
  auto second = h.scheduler->submit(make_spec(40, 1, 3, 0, "second"));
  REQUIRE(second.ok());
  const uint32_t second_key = h.campaign(second.value()).key;
  for (int round = 0; round < 3; ++round) {
    for (const auto& n : names) h.report(n, running[n], true, 1.0);
    h.turn();
    INFO("round " << round);
    CHECK(h.take_one_each(names, running, second_key) == 2);
  }
  // Submitted together, they split the workers from the start.
  Harness fresh;
  auto a = fresh.scheduler->submit(make_spec(40, 1, 3, 0, "a"));
  auto b = fresh.scheduler->submit(make_spec(40, 1, 3, 0, "b"));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  for (const auto& n : names) fresh.hello(n, 1);
  fresh.turn();
  int on_b = 0;
  for (const auto& n : names) {
    auto got = fresh.assignments(n);
    REQUIRE(got.size() == 1);
    if (got[0].campaign == fresh.campaign(b.value()).key) ++on_b;
  }
  CHECK(on_b == 2);
}

TEST_CASE("a draining worker gets no new shards", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(4, 1));
  REQUIRE(id.ok());
  h.hello("w1", 1);
  h.turn();
  auto a = h.assignments("w1");
  REQUIRE(a.size() == 1);
  h.scheduler->on_message("w1", protocol::Drain{});
  h.report("w1", a[0], true, 1.0);
  h.turn();
  CHECK(h.assignments("w1").empty());
  CHECK(h.acks("w1").size() == 1);
}

TEST_CASE(
    "goodbye: a drained worker is retired at once, not lost, and what crossed its drain "
    "goes back free",
    "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(4, 1, /*max_attempts=*/1));
  REQUIRE(id.ok());
  h.hello("w1", 2);
  h.turn();
  auto a = h.assignments("w1");
  REQUIRE(a.size() == 2);
  // w1 drains; it ran the first shard, and the second was an ASSIGN that crossed its DRAIN: it
  // reached w1 after it had finished, so w1 never started it and leaves.
  h.scheduler->on_message("w1", protocol::Drain{});
  h.report("w1", a[0], true, 1.0);
  h.scheduler->on_message("w1", protocol::Goodbye{});
  h.turn();
  const auto metric = [&](const std::string& series) {
    const std::string page = h.metrics.serialize();
    const auto at = page.find("\n" + series + " ");
    return at == std::string::npos ? -1.0 : std::stod(page.substr(at + series.size() + 2));
  };
  // Retired now, not after the worker timeout: left, not lost, and without per-worker series (a
  // growing heartbeat age would read as a lost worker).
  REQUIRE(h.scheduler->workers().size() == 1);
  CHECK(h.scheduler->workers()[0]->state == WorkerState::kLeft);
  CHECK(metric("evald_workers_left_total") == 1);
  CHECK(metric("evald_worker_losses_total") == 0);
  CHECK(metric(R"(evald_workers_lost_total{worker="w1"})") == -1.0);
  CHECK(metric(R"(evald_worker_last_heartbeat_age_seconds{worker="w1"})") == -1.0);
  h.clock.advance(300ms);  // the gauges' refresh
  h.turn();
  CHECK(metric(R"(evald_workers{state="left"})") == 1);
  CHECK(metric("evald_workers_without_series") == 0);
  const Campaign& c = h.campaign(id.value());
  CHECK(c.count(ShardState::kSucceeded) == 1);
  // Queued again at once and with its only attempt unused: it never ran.
  CHECK(c.count(ShardState::kPending) == 3);
  CHECK(c.groups[0].shards[a[1].shard].attempts == 0);
  CHECK_THAT(h.scheduler->last_error(c, 0, a[1].shard), Catch::Contains("never started: it left"));
  // Nothing is sent to it any more, and it is never declared lost.
  h.clock.advance(6000ms);
  h.turn();
  CHECK(metric("evald_worker_losses_total") == 0);
  CHECK(h.take<protocol::Heartbeat>("w1").empty());
  // A worker of that name that comes back is connected again and gets work and its series.
  h.hello("w1", 1, {}, "i2");
  h.turn();
  CHECK(h.scheduler->workers()[0]->state == WorkerState::kConnected);
  CHECK(h.assignments("w1").size() == 1);
  CHECK(metric(R"(evald_worker_last_heartbeat_age_seconds{worker="w1"})") >= 0);
  // A goodbye from a worker nobody knows changes nothing.
  h.scheduler->on_message("w9", protocol::Goodbye{});
  h.turn();
  CHECK(h.scheduler->workers().size() == 1);
}

TEST_CASE("goodbye: a left worker is forgotten like a lost one, and its kind stays until then",
          "[unit][scheduler]") {
  Harness h;
  h.options.forget_lost_workers_after = 10s;
  h.open();
  protocol::Hello hello;
  hello.name = "w1";
  hello.instance = "i1";
  hello.labels = {{"pool", "scaled"}};
  h.scheduler->on_message("w1", hello);
  h.turn();
  h.scheduler->on_message("w1", protocol::Drain{});
  h.scheduler->on_message("w1", protocol::Goodbye{});
  h.turn();
  const auto idle_series = [&] {
    return h.metrics.serialize().find(R"(evald_workers_idle{labels="pool=scaled"})") !=
           std::string::npos;
  };
  // Its kind stays in the capacity gauges: an autoscaler must not take its pool for one the
  // coordinator never saw (it would size it from all pending work).
  h.clock.advance(5s);
  h.turn();
  CHECK(h.scheduler->workers().size() == 1);
  CHECK(idle_series());
  h.clock.advance(6s);  // past --forget-lost-workers-ms
  h.turn();
  h.clock.advance(300ms);
  h.turn();
  CHECK(h.scheduler->workers().empty());
  CHECK_FALSE(idle_series());
}

// ---------------------------------------------------------------------------------------------
// GPU-aware placement and model affinity

namespace {

CampaignSpec gpu_spec(const nlohmann::json& models, int examples = 4) {
  nlohmann::json j = {
      {"name", "gpu"},
      {"models", models},
      {"benchmarks", {{{"name", "kmmlu"}, {"examples", examples}, {"shard_size", 1}}}},
      {"runner", {{"type", "noop"}}}};
  auto spec = parse_campaign_spec(j);
  REQUIRE(spec.ok());
  return spec.value();
}

void gpu_hello(Harness& h, const std::string& name, uint32_t slots, int gpus, int memory_mib,
               nlohmann::json labels = nlohmann::json::object()) {
  protocol::Hello hello;
  hello.name = name;
  hello.instance = "i1";
  hello.slots = slots;
  for (int i = 0; i < gpus; ++i) {
    hello.gpus.push_back({{"index", i}, {"name", "H100"}, {"memory_mib", memory_mib}});
  }
  hello.labels = std::move(labels);
  h.scheduler->on_message(name, hello);
}

}  // namespace

TEST_CASE("placement honours GPU count, memory and labels", "[unit][scheduler][placement]") {
  std::vector<GpuSlot> gpus = {
      {0, 81559, false}, {1, 81559, true}, {2, 24000, false}, {3, {}, false}};
  ResourceSpec two;
  two.gpus = 2;
  auto placed = place_shard(two, nlohmann::json::object(), gpus, false);
  REQUIRE(placed.has_value());
  CHECK(*placed == std::vector<uint32_t>{0, 2});  // the busy GPU 1 is skipped

  ResourceSpec big = two;
  big.gpu_memory_gb = 40;
  placed = place_shard(big, nlohmann::json::object(), gpus, false);
  REQUIRE(placed.has_value());
  CHECK(*placed == std::vector<uint32_t>{0, 3});  // 24 GB is too small; unknown memory may do
  big.gpus = 3;
  CHECK_FALSE(place_shard(big, nlohmann::json::object(), gpus, false).has_value());
  CHECK(place_shard(big, nlohmann::json::object(), gpus, true).has_value());  // could, once free

  ResourceSpec h100;
  h100.labels = {{"gpu", "h100"}};
  CHECK_FALSE(place_shard(h100, {{"gpu", "a100"}}, gpus, false).has_value());
  CHECK(place_shard(h100, {{"gpu", "h100"}, {"zone", "a"}}, gpus, false).has_value());

  // Default: one GPU where there are GPUs, none where there are none.
  CHECK(place_shard(ResourceSpec{}, nlohmann::json::object(), gpus, false)->size() == 1);
  CHECK(place_shard(ResourceSpec{}, nlohmann::json::object(), {}, false)->empty());
  CHECK(describe_needs(big) == "3 GPUs with >= 40 GB each");
}

TEST_CASE("shards get specific free GPUs and give them back", "[unit][scheduler][placement]") {
  Harness h;
  auto id = h.scheduler->submit(gpu_spec({{{"name", "big"}, {"resources", {{"gpus", 2}}}}}));
  REQUIRE(id.ok());
  gpu_hello(h, "node-1", 8, 4, 81559);
  h.turn();
  auto first = h.assignments("node-1");
  REQUIRE(first.size() == 2);  // 4 GPUs / 2 per shard, although the worker has 8 slots
  CHECK(first[0].gpus == std::vector<uint32_t>{0, 1});
  CHECK(first[1].gpus == std::vector<uint32_t>{2, 3});
  h.report("node-1", first[0], true, 1.0);
  h.turn();
  auto next = h.assignments("node-1");
  REQUIRE(next.size() == 1);
  CHECK(next[0].gpus == std::vector<uint32_t>{0, 1});  // the freed pair is used again
}

TEST_CASE("a shard no connected worker could run is reported, not silently pending",
          "[unit][scheduler][placement]") {
  Harness h;
  auto id = h.scheduler->submit(
      gpu_spec({{{"name", "huge"}, {"resources", {{"gpus", 8}, {"labels", {{"gpu", "h100"}}}}}},
                {{"name", "small"}, {"resources", {{"gpus", 1}}}}}));
  REQUIRE(id.ok());
  gpu_hello(h, "node-1", 4, 4, 81559, {{"gpu", "h100"}});
  h.clock.advance(300ms);
  h.turn();
  const Campaign& c = h.campaign(id.value());
  REQUIRE(c.unschedulable.count(0) == 1);
  CHECK_THAT(c.unschedulable.at(0), Catch::Contains("huge needs 8 GPUs, labels gpu=h100") &&
                                        Catch::Contains("node-1: 4 GPUs"));
  CHECK(c.unschedulable.count(1) == 0);
  auto a = h.assignments("node-1");
  REQUIRE(a.size() == 4);
  for (const auto& x : a) CHECK(x.model == 1);

  // A bigger node joins: the model becomes schedulable and the report goes away.
  gpu_hello(h, "node-2", 8, 8, 81559, {{"gpu", "h100"}});
  h.clock.advance(300ms);
  h.turn();
  CHECK(h.campaign(id.value()).unschedulable.empty());
  auto big = h.assignments("node-2");
  REQUIRE(big.size() == 1);
  CHECK(big[0].model == 0);
  CHECK(big[0].gpus.size() == 8);
}

TEST_CASE("workers keep their model warm and spread over models", "[unit][scheduler][affinity]") {
  Harness h;
  auto id = h.scheduler->submit(gpu_spec({{{"name", "m0"}, {"resources", {{"gpus", 1}}}},
                                          {{"name", "m1"}, {"resources", {{"gpus", 1}}}}},
                                         /*examples=*/20));
  REQUIRE(id.ok());
  gpu_hello(h, "w1", 1, 1, 81559);
  gpu_hello(h, "w2", 1, 1, 81559);
  h.turn();
  auto a1 = h.assignments("w1");
  auto a2 = h.assignments("w2");
  REQUIRE(a1.size() == 1);
  REQUIRE(a2.size() == 1);
  CHECK(a1[0].model != a2[0].model);  // two models, two workers: one model each
  // Each worker stays on its model while it has work.
  for (int round = 0; round < 10; ++round) {
    h.report("w1", a1[0], true, 1.0);
    h.report("w2", a2[0], true, 1.0);
    h.turn();
    auto n1 = h.assignments("w1");
    auto n2 = h.assignments("w2");
    if (n1.empty() || n2.empty()) break;
    CHECK(n1[0].model == a1[0].model);
    CHECK(n2[0].model == a2[0].model);
    a1 = n1;
    a2 = n2;
  }
}

TEST_CASE("no worker idles while a shard it can run is pending", "[unit][scheduler][affinity]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(2, 1));  // 1 model x 2 shards
  REQUIRE(id.ok());
  h.hello("w1", 1);
  h.hello("w2", 1);
  h.turn();
  CHECK(h.assignments("w1").size() == 1);
  CHECK(h.assignments("w2").size() == 1);
  CHECK(h.campaign(id.value()).count(ShardState::kPending) == 0);
}

TEST_CASE("an idle GPU worker joins a model others run rather than sit idle",
          "[unit][scheduler][affinity]") {
  Harness h;
  auto id = h.scheduler->submit(
      gpu_spec({{{"name", "m0"}, {"resources", {{"gpus", 1}}}}}, /*examples=*/3));
  REQUIRE(id.ok());
  gpu_hello(h, "w1", 2, 2, 81559);
  h.turn();
  REQUIRE(h.assignments("w1").size() == 2);  // m0 is warm on w1 now; one shard is left
  gpu_hello(h, "w2", 8, 8, 81559);
  h.turn();
  // The remainder (1 GPU-shard) would not fill w2's 8 GPUs, but w2 has nothing else to do.
  CHECK(h.assignments("w2").size() == 1);
  CHECK(h.campaign(id.value()).count(ShardState::kPending) == 0);
}

TEST_CASE("a late success of a shard not yet handed out again counts once", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(2, 2));
  REQUIRE(id.ok());
  h.hello("w1", 1);
  h.turn();
  auto a = h.assignments("w1");
  REQUIRE(a.size() == 1);
  h.clock.advance(6000ms);  // w1 is lost; its shard goes back to the queue, nobody takes it
  h.turn();
  REQUIRE(h.campaign(id.value()).count(ShardState::kPending) == 1);
  h.report("w1", a[0], true, 0.5);  // w1 was only frozen: its result is the attempt's only one
  h.turn();
  const Campaign& c = h.campaign(id.value());
  CHECK(c.state == CampaignState::kSucceeded);
  CHECK(c.groups[0].cell.examples_scored == 2);
  CHECK(c.groups[0].cell.mean("accuracy").value() == Approx(0.5));
  h.hello("w2", 1);
  h.turn();
  CHECK(h.assignments("w2").empty());  // nothing runs twice
}

TEST_CASE("an old result resent after a rerun is stale, not a stand-in for the rerun",
          "[unit][scheduler]") {
  Harness h;
  const auto [id, first] = h.start_on_one_slot(make_spec(2, 2));
  h.report("w1", first, true, 0.5);
  h.turn();
  REQUIRE(h.campaign(id).state == CampaignState::kSucceeded);
  RerunSelector all;
  all.failed_only = false;
  REQUIRE(h.scheduler->rerun(id, all).ok());
  // The worker never saw its ack and sends the first result again before the rerun is leased.
  h.report("w1", first, true, 0.5);
  h.turn();
  const Campaign& c = h.campaign(id);
  CHECK(c.state == CampaignState::kRunning);
  CHECK(c.groups[0].cell.examples_scored == 0);
  auto again = h.assignments("w1");
  REQUIRE(again.size() == 1);
  CHECK(again[0].attempt_id != first.attempt_id);
  h.report("w1", again[0], true, 0.75);
  h.turn();
  CHECK(c.state == CampaignState::kSucceeded);
  CHECK(c.groups[0].cell.mean("accuracy").value() == Approx(0.75));
}

TEST_CASE("an invalid result resent after its attempt failed uses no second attempt",
          "[unit][scheduler]") {
  Harness h;
  const auto [id, first] = h.start_on_one_slot(make_spec(2, 2, /*max_attempts=*/2));
  // "ok" but without metrics: the attempt fails as invalid
  protocol::ShardResult r = protocol::result_for(first);
  r.ok = true;
  r.count = 2;
  h.scheduler->on_message("w1", protocol::Results{{r}});
  h.turn();
  REQUIRE(h.campaign(id).groups[0].shards[0].attempts == 1);
  h.scheduler->on_message("w1", protocol::Results{{r}});  // resent: its ack was lost
  h.turn();
  const Campaign& c = h.campaign(id);
  CHECK(c.count(ShardState::kFailed) == 0);
  CHECK(c.count(ShardState::kPending) == 1);
  CHECK(c.groups[0].shards[0].attempts == 1);
}

TEST_CASE("a handed-back shard keeps its budget, but not forever", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(2, 2, /*max_attempts=*/1));
  REQUIRE(id.ok());
  // Three hand-backs are free; the fourth uses the only attempt and the shard ends failed.
  for (int round = 1; round <= 4; ++round) {
    const std::string name = "w" + std::to_string(round);
    h.hello(name, 1);
    h.turn();
    auto a = h.assignments(name);
    INFO("round " << round);
    REQUIRE(a.size() == 1);
    CHECK(a[0].attempt == static_cast<uint32_t>(round));
    h.scheduler->on_message(name, protocol::Drain{});
    h.scheduler->on_message(name, protocol::HandBack{{a[0].attempt_id}});
    h.turn();
    const Campaign& c = h.campaign(id.value());
    if (round < 4) {
      CHECK(c.count(ShardState::kPending) == 1);  // queued again at once, no backoff
      CHECK(c.groups[0].shards[0].attempts == 0);
    } else {
      CHECK(c.count(ShardState::kFailed) == 1);
      CHECK_THAT(h.scheduler->last_error(c, 0, 0), Catch::Contains("handed back too often"));
    }
  }
}

TEST_CASE("the free hand-backs are not renewed by a coordinator restart", "[unit][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(2, 2, /*max_attempts=*/1));
  REQUIRE(id.ok());
  // Two free hand-backs, then a restart, then the third (free) and the fourth (charged): the
  // restart must not have reset the count, or the shard would circle forever across restarts.
  for (int round = 1; round <= 4; ++round) {
    if (round == 3) h.open();  // coordinator restart on the same store
    const std::string name = "w" + std::to_string(round);
    h.hello(name, 1);
    h.turn();
    auto a = h.assignments(name);
    INFO("round " << round);
    REQUIRE(a.size() == 1);
    h.scheduler->on_message(name, protocol::Drain{});
    h.scheduler->on_message(name, protocol::HandBack{{a[0].attempt_id}});
    h.turn();
    const Campaign& c = h.campaign(id.value());
    if (round < 4) {
      CHECK(c.count(ShardState::kPending) == 1);
    } else {
      CHECK(c.count(ShardState::kFailed) == 1);
      CHECK_THAT(h.scheduler->last_error(c, 0, 0), Catch::Contains("handed back too often"));
    }
  }
}

TEST_CASE("a hand-back after a coordinator restart queues the orphan at once",
          "[unit][scheduler]") {
  Harness h;
  const auto [id, lease] = h.start_on_one_slot(make_spec(2, 2));
  h.open();  // restart: the lease is an orphan waiting for w1
  // A stranger cannot hand back w1's lease.
  h.scheduler->on_message("w9", protocol::HandBack{{lease.attempt_id}});
  h.turn();
  CHECK(h.campaign(id).count(ShardState::kRunning) == 1);
  // w1, draining when we restarted, hands it back without saying hello first.
  h.scheduler->on_message("w1", protocol::HandBack{{lease.attempt_id}});
  h.turn();
  const Campaign& c = h.campaign(id);
  CHECK(c.count(ShardState::kPending) == 1);
  CHECK(c.groups[0].shards[0].attempts == 0);
  h.hello("w2", 1);
  h.turn();
  CHECK(h.assignments("w2").size() == 1);
}

TEST_CASE("after a restart, another worker cannot reclaim a lease by naming its attempt id",
          "[unit][scheduler]") {
  Harness h;
  const auto [id, lease] = h.start_on_one_slot(make_spec(2, 2));
  h.open();  // restart: the lease is an orphan waiting for w1
  // w2 claims to run w1's attempt (ids are visible in the API): it is told to stop, and the
  // shard stays w1's orphan.
  h.hello("w2", 1, {lease.attempt_id});
  h.turn();
  const auto cancels = h.take<protocol::Cancel>("w2");
  REQUIRE(cancels.size() == 1);
  CHECK(cancels[0].attempt_ids == std::vector<uint64_t>{lease.attempt_id});
  CHECK(h.assignments("w2").empty());  // the shard is not free to hand out either
  // w2's forged result changes nothing.
  h.report("w2", lease, true, 0.99);
  h.turn();
  CHECK(h.campaign(id).count(ShardState::kRunning) == 1);
  // The real holder reclaims it and its result counts.
  h.hello("w1", 1, {lease.attempt_id});
  h.turn();
  CHECK(h.take<protocol::Cancel>("w1").empty());
  h.report("w1", lease, true, 0.25);
  h.turn();
  const Campaign& c = h.campaign(id);
  CHECK(c.state == CampaignState::kSucceeded);
  CHECK(c.groups[0].cell.mean("accuracy").value() == Approx(0.25));
}

TEST_CASE("a draining worker stops counting for its campaign's share",
          "[unit][scheduler][fairness]") {
  Harness h;
  auto a = h.scheduler->submit(make_spec(40, 1, 3, 0, "a"));
  auto b = h.scheduler->submit(make_spec(40, 1, 3, 0, "b"));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  for (const auto* n : {"w1", "w2", "w3", "w4"}) h.hello(n, 1);
  h.turn();
  std::map<std::string, protocol::Assignment> running;
  std::map<uint32_t, std::vector<std::string>> by_campaign;
  for (const auto* n : {"w1", "w2", "w3", "w4"}) {
    auto got = h.assignments(n);
    REQUIRE(got.size() == 1);
    running[n] = got[0];
    by_campaign[got[0].campaign].push_back(n);
  }
  REQUIRE(by_campaign.size() == 2);
  // Both workers of one campaign drain (a preempted job): the other campaign's workers stay.
  const auto& leaving = by_campaign.begin()->second;
  const auto& staying = by_campaign.rbegin()->second;
  const uint32_t staying_campaign = by_campaign.rbegin()->first;
  for (const auto& n : leaving) h.scheduler->on_message(n, protocol::Drain{});
  for (const auto& n : staying) h.report(n, running[n], true, 1.0);
  h.turn();
  // The drained campaign holds nobody now, the other two: one of the two moves over.
  CHECK(h.take_one_each(staying, running, staying_campaign) == 1);
}

TEST_CASE("a result counts only from the worker holding the lease", "[unit][scheduler]") {
  Harness h;
  auto [id, a] = h.start_on_one_slot(make_spec(2, 2));  // one shard, leased to w1
  h.hello("rival", 1);
  h.turn();
  // Attempt ids are sequential and public; knowing one proves nothing.
  protocol::ShardResult forged = protocol::result_for(a);
  forged.ok = true;
  forged.count = 2;
  forged.metrics = {{"accuracy", 1.0}};
  h.scheduler->on_message("rival", protocol::Results{{forged}});
  h.scheduler->on_message("nobody", protocol::Results{{forged}});
  h.scheduler->on_message("rival", protocol::HandBack{{a.attempt_id}});
  h.turn();
  CHECK(h.acks("rival").empty());
  CHECK(h.acks("nobody").empty());
  const Campaign& c = h.campaign(id);
  CHECK(c.count(ShardState::kRunning) == 1);
  CHECK(c.groups[0].shards[0].attempt_id == a.attempt_id);
  CHECK(c.groups[0].shards[0].attempts == 1);

  h.report("w1", a, true, 0.25);
  h.turn();
  CHECK(h.acks("w1") == std::vector<uint64_t>{a.attempt_id});
  CHECK(c.state == CampaignState::kSucceeded);
  CHECK(c.groups[0].cell.mean("accuracy").value() == Approx(0.25));
}

TEST_CASE("a late result of a given-up attempt counts only from the worker that held it",
          "[unit][scheduler]") {
  Harness h;
  auto [id, a] = h.start_on_one_slot(make_spec(2, 2));
  h.clock.advance(6000ms);  // w1 is lost; the shard waits for a worker, its attempt given up
  h.turn();
  const Campaign& c = h.campaign(id);
  REQUIRE(c.count(ShardState::kPending) == 1);

  protocol::ShardResult forged = protocol::result_for(a);
  forged.ok = true;
  forged.count = 2;
  forged.metrics = {{"accuracy", 1.0}};
  h.scheduler->on_message("w2", protocol::Results{{forged}});
  h.turn();
  CHECK(c.count(ShardState::kPending) == 1);
  CHECK(h.acks("w2").empty());

  h.report("w1", a, true, 0.5);
  h.turn();
  CHECK(c.state == CampaignState::kSucceeded);
  CHECK(c.groups[0].cell.mean("accuracy").value() == Approx(0.5));
}

TEST_CASE("an invalid result from the lease holder fails the attempt", "[unit][scheduler]") {
  Harness h;
  auto [id, a] = h.start_on_one_slot(make_spec(2, 2));
  protocol::ShardResult r = protocol::result_for(a);
  r.ok = true;
  r.count = 3;  // the shard has 2 examples
  r.metrics = {{"accuracy", 1.0}};
  h.scheduler->on_message("w1", protocol::Results{{r}});
  h.turn();
  const Campaign& c = h.campaign(id);
  CHECK(c.count(ShardState::kSucceeded) == 0);
  CHECK(c.groups[0].shards[0].attempts == 1);
  CHECK(h.scheduler->last_error(c, 0, 0) == "invalid result: count 3 exceeds the shard's size 2");
  CHECK(c.groups[0].cell.examples_scored == 0);
}

TEST_CASE(
    "worker timers: a fleet's heartbeats coalesce, none is late, a silent worker is lost on time",
    "[unit][scheduler]") {
  Harness h;
  // 100 workers connect 10 ms apart, over one heartbeat interval: their deadlines are spread.
  constexpr int kWorkers = 100;
  std::map<std::string, std::chrono::steady_clock::time_point> last_heard;  // from the coordinator
  std::chrono::milliseconds longest_gap{0};
  // What the turn sent: whether it held a heartbeat; every message counts as one for its worker.
  const auto collect = [&] {
    bool any = false;
    for (const auto& [who, m] : h.sent) {
      any = any || std::holds_alternative<protocol::Heartbeat>(m);
      if (auto it = last_heard.find(who); it != last_heard.end()) {
        longest_gap = std::max(longest_gap, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                h.clock.now() - it->second));
      }
      last_heard[who] = h.clock.now();
    }
    h.sent.clear();
    return any;
  };
  for (int i = 0; i < kWorkers; ++i) {
    h.hello("w" + std::to_string(i), 1);
    h.turn();  // its WELCOME
    collect();
    h.clock.advance(10ms);
  }
  const auto silent_since = h.clock.now();  // w0 says nothing from now on; the others every 500 ms
  std::optional<std::chrono::steady_clock::time_point> w0_lost_at;
  int turns_with_heartbeats = 0;
  for (int step = 1; step <= 1400; ++step) {  // 7 s in 5 ms turns
    h.clock.advance(5ms);
    if (step % 100 == 0) {
      for (int i = 1; i < kWorkers; ++i) {
        h.scheduler->on_message("w" + std::to_string(i), protocol::Heartbeat{});
      }
    }
    h.turn();
    turns_with_heartbeats += collect() ? 1 : 0;
    for (const WorkerInfo* w : h.scheduler->workers()) {
      if (w->name == "w0" && w->state == WorkerState::kLost && !w0_lost_at) {
        w0_lost_at = h.clock.now();
      }
    }
  }
  // Every live worker heard from the coordinator at least once per interval, never later.
  for (int i = 1; i < kWorkers; ++i) {
    INFO("w" << i);
    CHECK(h.clock.now() - last_heard["w" + std::to_string(i)] <= 1000ms);
  }
  CHECK(longest_gap <= 1000ms);
  // One pass per worker deadline would be ~100 turns with heartbeats per second (700 in 7 s);
  // coalesced within a quarter interval it is at most about five per second.
  CHECK(turns_with_heartbeats <= 7 * 5);
  CHECK(turns_with_heartbeats >= 7);
  // Lost in the first turn after the timeout: silent since its last message (its HELLO).
  REQUIRE(w0_lost_at.has_value());
  const auto w0_hello = silent_since - 10ms * kWorkers;
  CHECK(*w0_lost_at - w0_hello > 5000ms);
  CHECK(*w0_lost_at - w0_hello <= 5000ms + 5ms);
}

TEST_CASE("worker timers: a worker sent anything gets no heartbeat, an idle one still does",
          "[unit][scheduler]") {
  Harness h;
  // w1 runs a shard every 200 ms (each time it gets an ACK and an ASSIGN); w2 takes one shard,
  // runs it all along and, once given it, hears only heartbeats.
  auto [id, running] = h.start_on_one_slot(make_spec(100, 1));
  h.hello("w2", 1);
  h.turn();
  h.sent.clear();
  int w1_heartbeats = 0;
  int w2_heartbeats = 0;
  auto w2_last_heard = h.clock.now();
  std::chrono::milliseconds w2_longest_gap{0};
  for (int step = 1; step <= 200; ++step) {  // 5 s in 25 ms turns
    h.clock.advance(25ms);
    if (step % 8 == 0) {
      h.report("w1", running, true, 1.0);
      h.scheduler->on_message("w2", protocol::Heartbeat{});
    }
    h.turn();
    if (step % 8 == 0) {
      auto given = h.assignments("w1");
      REQUIRE(given.size() == 1);
      running = given[0];
    }
    w1_heartbeats += static_cast<int>(h.take<protocol::Heartbeat>("w1").size());
    if (!h.take<protocol::Heartbeat>("w2").empty()) {
      ++w2_heartbeats;
      w2_longest_gap = std::max(
          w2_longest_gap,
          std::chrono::duration_cast<std::chrono::milliseconds>(h.clock.now() - w2_last_heard));
      w2_last_heard = h.clock.now();
    }
    h.sent.clear();
  }
  // A heartbeat to w1 would be a frame per busy worker and interval for nothing: every ACK and
  // ASSIGN already tells it the coordinator is alive. (Before, a fleet of busy workers got one
  // each per second, all in the same turn.)
  CHECK(w1_heartbeats == 0);
  CHECK(w2_heartbeats >= 5);
  CHECK(w2_longest_gap <= 1000ms);
}

TEST_CASE("max worker series: per-worker series for the first N workers, the fleet gauges for all",
          "[unit][scheduler]") {
  Harness h;
  h.options.max_worker_series = 2;
  h.open();
  for (const auto* name : {"w1", "w2", "w3"}) h.hello(name, 4);
  auto id = h.scheduler->submit(make_spec(2, 1));
  REQUIRE(id.ok());
  h.turn();                // two shards on the first worker(s) with free slots
  h.clock.advance(300ms);  // past the gauge refresh interval
  h.turn();
  std::string page = h.metrics.serialize();
  const auto value = [&](const std::string& series) -> std::optional<double> {
    const auto at = page.find("\n" + series + " ");
    if (at == std::string::npos) return std::nullopt;
    return std::stod(page.substr(at + series.size() + 2));
  };
  CHECK(value(R"(evald_worker_slots{kind="total",worker="w1"})") == 4);
  CHECK(value(R"(evald_worker_slots{kind="total",worker="w2"})") == 4);
  CHECK_FALSE(value(R"(evald_worker_slots{kind="total",worker="w3"})").has_value());
  CHECK_FALSE(value(R"(evald_worker_last_heartbeat_age_seconds{worker="w3"})").has_value());
  CHECK(value("evald_workers_without_series") == 1);
  CHECK(value(R"(evald_slots{kind="total"})") == 12);
  CHECK(value(R"(evald_slots{kind="used"})") == 2);
  CHECK(value(R"(evald_slots{kind="free"})") == 10);
  const double busy = value(R"(evald_workers_busy{labels=""})").value_or(-1);
  const double idle = value(R"(evald_workers_idle{labels=""})").value_or(-1);
  CHECK(busy >= 1);
  CHECK(busy + idle == 3);

  // A lost worker without series still counts in the fleet-wide losses.
  h.clock.advance(6000ms);  // nobody said anything: all three are lost
  h.turn();
  page = h.metrics.serialize();
  CHECK(value("evald_worker_losses_total") == 3);
  CHECK(value(R"(evald_workers_lost_total{worker="w1"})") == 1);
  CHECK_FALSE(value(R"(evald_workers_lost_total{worker="w3"})").has_value());
}

// Dispatch rule 11 (docs/scheduling.md): queueing short shards ahead on a worker whose slots are
// full.
namespace {

// A result of `a` that took `ms` milliseconds (the duration the estimates learn from).
void report_after(Harness& h, const std::string& who, const protocol::Assignment& a, uint32_t ms) {
  protocol::ShardResult r = testing::noop_success(a);
  r.duration_ms = ms;
  h.scheduler->on_message(who, protocol::Results{{r}});
}

const WorkerInfo& worker_named(const Harness& h, const std::string& name) {
  for (const WorkerInfo* w : h.scheduler->workers()) {
    if (w->name == name) return *w;
  }
  FAIL("no worker " << name);
  throw std::logic_error("unreachable");
}

// w1 (2 slots, a queue of `queue_ahead`) runs its first two shards of a 100-shard campaign and
// reports them after `ms` each; returns what that turn sent it.
std::vector<protocol::Assignment> after_first_results(Harness& h, uint32_t ms,
                                                      uint32_t queue_ahead = 4) {
  REQUIRE(h.scheduler->submit(make_spec(100, 1)).ok());
  h.hello("w1", 2, {}, "i1", queue_ahead);
  h.turn();
  auto first = h.assignments("w1");
  REQUIRE(first.size() == 2);  // nothing finished yet: no estimate, nothing queued
  CHECK(worker_named(h, "w1").queued.empty());
  for (const auto& a : first) report_after(h, "w1", a, ms);
  h.turn();
  return h.assignments("w1");
}

}  // namespace

TEST_CASE("queue ahead: a full worker queues short shards and starts them as slots free",
          "[unit][scheduler][queue]") {
  Harness h;
  // 10 ms shards on 2 slots: 20 start within the 0.1 s bound; the worker's queue of 4 is less.
  auto next = after_first_results(h, 10);
  REQUIRE(next.size() == 6);  // two slots refilled, four queued
  const WorkerInfo& w = worker_named(h, "w1");
  CHECK(w.running() == 2);
  REQUIRE(w.queued.size() == 4);
  CHECK(w.queued.front() == next[2].attempt_id);  // the latest sent, oldest first
  CHECK(w.lease_started.at(next[2].attempt_id).queued);
  CHECK_FALSE(w.lease_started.at(next[0].attempt_id).queued);
  CHECK(h.metrics.leases_queued_ahead.Value() == 4);

  // A result frees a slot: the oldest queued lease starts (its clock with it), one more queues.
  h.clock.advance(50ms);
  report_after(h, "w1", next[0], 10);
  h.turn();
  auto refill = h.assignments("w1");
  REQUIRE(refill.size() == 1);
  CHECK(w.running() == 2);
  CHECK(w.queued.size() == 4);
  CHECK_FALSE(w.lease_started.at(next[2].attempt_id).queued);
  CHECK(w.lease_started.at(next[2].attempt_id).at == h.clock.now());
  CHECK(w.queued.back() == refill[0].attempt_id);

  // The rest run to the end, and every shard counts once.
  std::vector<protocol::Assignment> held(next.begin() + 1, next.end());
  held.push_back(refill[0]);
  for (int turns = 0; turns < 200 && !held.empty(); ++turns) {
    for (const auto& a : held) report_after(h, "w1", a, 10);
    h.turn();
    held = h.assignments("w1");
  }
  const Campaign& c = *h.scheduler->campaigns().begin()->second;
  CHECK(c.state == CampaignState::kSucceeded);
  CHECK(c.groups[0].cell.shards_succeeded == 100);
  CHECK(w.leases.empty());
  CHECK(w.queued.empty());
}

TEST_CASE("queue ahead: at most what the slots start within the bound, none for long shards",
          "[unit][scheduler][queue]") {
  SECTION("50 ms shards on 2 slots: 4 start within 0.1 s, so 4 of a queue of 16") {
    Harness h;
    CHECK(after_first_results(h, 50, 16).size() == 2 + 4);
  }
  SECTION("0.2 s shards on 2 slots: one") {
    Harness h;
    CHECK(after_first_results(h, 200, 16).size() == 2 + 1);
  }
  SECTION("0.5 s shards: none") {
    Harness h;
    CHECK(after_first_results(h, 500, 16).size() == 2);
  }
  SECTION("a worker that does not queue: none") {
    Harness h;
    CHECK(after_first_results(h, 1, 0).size() == 2);
  }
}

TEST_CASE("queue ahead: never for shards that need a GPU", "[unit][scheduler][queue]") {
  Harness h;
  REQUIRE(h.scheduler->submit(gpu_spec({{{"name", "one-gpu"}}}, 100)).ok());
  protocol::Hello hello;
  hello.name = "node-1";
  hello.instance = "i1";
  hello.slots = 2;
  hello.queue_ahead = 8;
  for (int i = 0; i < 2; ++i) {
    hello.gpus.push_back({{"index", i}, {"name", "H100"}, {"memory_mib", 81559}});
  }
  h.scheduler->on_message("node-1", hello);
  h.turn();
  auto first = h.assignments("node-1");
  REQUIRE(first.size() == 2);
  for (const auto& a : first) report_after(h, "node-1", a, 1);
  h.turn();
  CHECK(h.assignments("node-1").size() == 2);  // the freed GPUs only
  CHECK(worker_named(h, "node-1").queued.empty());
}

TEST_CASE("queue ahead: a draining worker's queued shards come back free, a HELLO rebuilds them",
          "[unit][scheduler][queue]") {
  Harness h;
  auto next = after_first_results(h, 10);
  REQUIRE(next.size() == 6);
  const WorkerInfo& w = worker_named(h, "w1");
  const std::vector<uint64_t> queued(w.queued.begin(), w.queued.end());

  SECTION("reconnect: the HELLO lists all six; the four latest are the queue again") {
    std::vector<uint64_t> all;
    for (const auto& a : next) all.push_back(a.attempt_id);
    h.hello("w1", 2, all, "i1", 4);
    h.turn();
    CHECK(std::vector<uint64_t>(w.queued.begin(), w.queued.end()) == queued);
    CHECK(w.running() == 2);
  }
  SECTION("drain: handed back unstarted, they use no attempt and no free hand-back") {
    h.scheduler->on_message("w1", protocol::Drain{});
    h.scheduler->on_message("w1", protocol::HandBack{queued});
    h.turn();
    CHECK(w.queued.empty());
    CHECK(w.running() == 2);
    const Campaign& c = *h.scheduler->campaigns().begin()->second;
    for (const auto& a : next) {
      const Shard& s = c.groups[0].shards[a.shard];
      if (std::find(queued.begin(), queued.end(), a.attempt_id) == queued.end()) continue;
      CHECK(s.state == ShardState::kPending);
      CHECK(s.attempts == 0);
      CHECK(s.hand_backs == 0);
      CHECK_THAT(h.scheduler->last_error(c, 0, a.shard), Catch::Contains("handed back unstarted"));
    }
  }
  SECTION("cancel: the campaign's queued leases end with the rest") {
    REQUIRE(h.scheduler->cancel(h.scheduler->campaigns().begin()->second->id).ok());
    h.turn();
    CHECK(w.queued.empty());
    CHECK(w.leases.empty());
  }
}

TEST_CASE("queue ahead: a campaign of the same priority is not starved by full queues",
          "[unit][scheduler][queue]") {
  Harness h;
  REQUIRE(h.scheduler->submit(make_spec(400, 1)).ok());
  h.hello("w1", 2, {}, "i1", 4);
  h.hello("w2", 2, {}, "i1", 4);
  h.turn();
  std::map<std::string, std::vector<protocol::Assignment>> held;
  for (const std::string w : {"w1", "w2"}) held[w] = h.assignments(w);
  // One round: the shards running on each worker finish (its queued ones start then), and the
  // turn hands out what follows. Returns whether any of it is of campaign `key`.
  auto round = [&](uint32_t key) {
    for (auto& [w, given] : held) {
      const WorkerInfo& info = worker_named(h, w);
      std::vector<protocol::Assignment> running;
      std::vector<protocol::Assignment> still_queued;
      for (const auto& a : given) {
        (info.is_queued(a.attempt_id) ? still_queued : running).push_back(a);
      }
      for (const auto& a : running) report_after(h, w, a, 10);
      given = std::move(still_queued);
    }
    h.turn();
    bool of_key = false;
    for (const std::string w : {"w1", "w2"}) {
      for (const auto& a : h.assignments(w)) {
        of_key = of_key || a.campaign == key;
        held[w].push_back(a);
      }
    }
    return of_key;
  };
  for (int i = 0; i < 3; ++i) round(0);
  REQUIRE(worker_named(h, "w1").queued.size() == 4);  // both workers hold full queues
  REQUIRE(worker_named(h, "w2").queued.size() == 4);

  auto second = h.scheduler->submit(make_spec(400, 1, 3, 0, "round2"));
  REQUIRE(second.ok());
  const uint32_t second_key = h.campaign(second.value()).key;
  bool second_ran = false;
  for (int i = 0; i < 20 && !second_ran; ++i) second_ran = round(second_key);
  // Rule 3 moves a worker to it once that worker has a free slot: queueing must let one free.
  CHECK(second_ran);
}

TEST_CASE("queue ahead: a queue stuck behind a hung shard is taken back",
          "[unit][scheduler][queue]") {
  Harness h;
  auto id = h.scheduler->submit(make_spec(12, 1));
  REQUIRE(id.ok());
  h.hello("w1", 1, {}, "i1", 4);
  h.turn();
  auto first = h.assignments("w1");
  REQUIRE(first.size() == 1);
  report_after(h, "w1", first[0], 10);
  h.turn();
  auto next = h.assignments("w1");
  REQUIRE(next.size() == 5);  // the slot refilled, four queued behind it
  const WorkerInfo& w = worker_named(h, "w1");
  REQUIRE(w.queued.size() == 4);

  // next[0] hangs: nothing frees the slot. Short of the bound the queue stays ...
  h.clock.advance(900ms);
  h.turn();
  CHECK(w.queued.size() == 4);
  // ... past it, the queue is taken back: cancelled there, pending here, no attempt used.
  h.clock.advance(200ms);
  h.turn();
  CHECK(w.queued.empty());
  CHECK(w.leases.size() == 1);
  std::vector<uint64_t> cancelled;
  for (const auto& c : h.take<protocol::Cancel>("w1")) {
    cancelled.insert(cancelled.end(), c.attempt_ids.begin(), c.attempt_ids.end());
  }
  CHECK(cancelled.size() == 4);
  CHECK(h.metrics.queues_revoked.Value() == 1);
  const Campaign& c = h.campaign(id.value());
  for (size_t i = 1; i < next.size(); ++i) {
    const Shard& s = c.groups[0].shards[next[i].shard];
    CHECK(s.state == ShardState::kPending);
    CHECK(s.attempts == 0);
    CHECK_THAT(h.scheduler->last_error(c, 0, next[i].shard),
               Catch::Contains("taken back unstarted"));
  }
  // The stuck worker gets no new queue; another worker runs the shards.
  h.turn();
  CHECK(h.assignments("w1").empty());
  h.hello("w2", 1);
  h.turn();
  CHECK(h.assignments("w2").size() == 1);
  // Once its shard ends, w1 queues again.
  report_after(h, "w1", next[0], 10);
  h.turn();
  CHECK(h.assignments("w1").size() == 5);
}

TEST_CASE("queue ahead: a lost worker's queued shards come back as hand-backs, not attempts",
          "[unit][scheduler][queue]") {
  Harness h;
  auto next = after_first_results(h, 10);
  REQUIRE(next.size() == 6);
  h.clock.advance(6000ms);  // past the 5 s worker timeout
  h.turn();
  const Campaign& c = *h.scheduler->campaigns().begin()->second;
  for (size_t i = 0; i < next.size(); ++i) {
    INFO("shard " << next[i].shard);
    const Shard& s = c.groups[0].shards[next[i].shard];
    CHECK(s.state == ShardState::kPending);
    if (i < 2) {  // they ran: a lost attempt
      CHECK(s.attempts == 1);
      CHECK(s.hand_backs == 0);
    } else {  // queued: never started
      CHECK(s.attempts == 0);
      CHECK(s.hand_backs == 1);
    }
  }
}

TEST_CASE("queue ahead: a restarted coordinator rebuilds the queue from the HELLO",
          "[unit][scheduler][queue]") {
  Harness h;
  auto next = after_first_results(h, 10);
  REQUIRE(next.size() == 6);
  std::vector<uint64_t> all;
  for (const auto& a : next) all.push_back(a.attempt_id);
  const std::vector<uint64_t> queued(all.begin() + 2, all.end());

  h.open();  // the coordinator restarts on the same store
  SECTION("the same worker: the four latest are its queue again") {
    h.hello("w1", 2, all, "i1", 4);
    h.turn();
    const WorkerInfo& w = worker_named(h, "w1");
    CHECK(std::vector<uint64_t>(w.queued.begin(), w.queued.end()) == queued);
    CHECK(w.running() == 2);
  }
  SECTION("back with --queue-ahead 0: it keeps what it holds, gets nothing more until under") {
    h.hello("w1", 2, all, "i1", 0);
    h.turn();  // the invariants hold although 6 leases exceed 2 slots and no queue
    const WorkerInfo& w = worker_named(h, "w1");
    CHECK(w.leases.size() == 6);
    CHECK(h.assignments("w1").empty());
    for (size_t i = 0; i < 5; ++i) report_after(h, "w1", next[i], 10);
    h.turn();
    CHECK(h.assignments("w1").size() == 1);  // down to one lease: one slot free, no queue
    CHECK(w.queued.empty());
  }
}
