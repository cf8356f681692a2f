// Scheduler: backup copies of stragglers (docs/scheduling.md, rule 10). With nothing pending, an
// idle worker that has the model loaded runs a second copy of a shard that runs far longer than
// expected elsewhere; the first result counts exactly once, the other copy is cancelled and kept
// as a stale attempt. Driven with an injected clock against a real RocksDB directory.
#include <catch2/catch.hpp>
#include <map>
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

// One model, one benchmark of 3 shards of 4 examples.
CampaignSpec spec_with_backups(bool backup_copies) {
  nlohmann::json j = {{"name", "tail"},
                      {"models", {{{"name", "m"}}}},
                      {"benchmarks", {{{"name", "b"}, {"examples", 12}, {"shard_size", 4}}}},
                      {"runner", {{"type", "noop"}}},
                      {"backup_copies", backup_copies}};
  auto spec = parse_campaign_spec(j);
  REQUIRE(spec.ok());
  return spec.value();
}

struct Tail {
  testing::TempDir dir{"evald-backup"};
  ManualClock clock;
  Metrics metrics;
  std::unique_ptr<Store> store;
  std::unique_ptr<Scheduler> scheduler;
  std::vector<std::pair<std::string, protocol::Message>> sent;
  std::string id;

  explicit Tail(bool backup_copies) : Tail(spec_with_backups(backup_copies)) {}
  explicit Tail(const CampaignSpec& spec) {
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    store = std::move(opened.value());
    scheduler = std::make_unique<Scheduler>(*store, clock, metrics, SchedulerOptions{});
    REQUIRE(scheduler->recover().ok());
    auto submitted = scheduler->submit(spec);
    REQUIRE(submitted.ok());
    id = submitted.value();
    for (const char* name : {"w1", "w2", "w3"}) {
      protocol::Hello h;
      h.name = name;
      h.instance = "i1";
      h.slots = 1;
      scheduler->on_message(name, h);
    }
  }

  void turn() {
    testing::run_turn(*scheduler, [&](const std::string& who, const protocol::Message& m) {
      sent.emplace_back(who, m);
    });
  }

  // Moves the clock on, every worker still heard from.
  void wait(std::chrono::milliseconds how_long) {
    for (auto step = 0ms; step < how_long; step += 1000ms) {
      clock.advance(std::min<std::chrono::milliseconds>(1000ms, how_long - step));
      for (const char* name : {"w1", "w2", "w3"}) {
        scheduler->on_message(name, protocol::Heartbeat{});
      }
      turn();
    }
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
  std::vector<uint64_t> cancels(const std::string& who) {
    std::vector<uint64_t> out;
    for (auto& c : take<protocol::Cancel>(who)) {
      out.insert(out.end(), c.attempt_ids.begin(), c.attempt_ids.end());
    }
    return out;
  }
  void report(const std::string& who, const protocol::Assignment& a, double accuracy,
              uint32_t duration_ms) {
    auto r = testing::noop_success(a);
    r.metrics = {{"accuracy", accuracy}};
    r.duration_ms = duration_ms;
    scheduler->on_message(who, protocol::Results{{r}});
  }
  const Campaign& campaign() { return *scheduler->find_campaign(id); }
  // evald_stale_results_total of the campaign: results that came for attempts given up.
  double stale_results() {
    const std::string page = metrics.serialize();
    const std::string series = "evald_stale_results_total{campaign=\"" + id + "\"} ";
    const auto at = page.find(series);
    return at == std::string::npos ? 0 : std::stod(page.substr(at + series.size()));
  }

  // The attempt records stored for shard `shard`, by attempt id.
  std::map<uint64_t, AttemptRecord> attempts_of(uint32_t shard) {
    std::map<uint64_t, AttemptRecord> out;
    auto scanned = store->scan_attempts(
        campaign().key, [&](const ShardKey& key, uint64_t attempt_id, const AttemptRecord& rec) {
          if (key.shard == shard) out[attempt_id] = rec;
        });
    REQUIRE(scanned.ok());
    return out;
  }

  // Each worker gets one shard; w1 and w2 finish theirs in 10 s, w3's runs on: a straggler.
  // Returns w3's assignment.
  protocol::Assignment straggle() {
    turn();
    auto a1 = assignments("w1");
    auto a2 = assignments("w2");
    auto a3 = assignments("w3");
    REQUIRE(a1.size() == 1);
    REQUIRE(a2.size() == 1);
    REQUIRE(a3.size() == 1);
    wait(10s);
    report("w1", a1[0], 1.0, 10'000);
    report("w2", a2[0], 1.0, 10'000);
    turn();
    return a3[0];
  }
};

}  // namespace

TEST_CASE("a straggler gets a backup copy, the first result counts once, the other is stale",
          "[unit][scheduler][backup]") {
  Tail t(/*backup_copies=*/true);
  const auto first = t.straggle();
  CHECK(t.campaign().count(ShardState::kPending) == 0);
  // At 10 s it has run as long as a shard takes: no copy yet.
  CHECK(t.assignments("w1").empty());
  CHECK(t.assignments("w2").empty());
  t.wait(6s);  // 16 s: past 1.5 x the expected 10 s
  auto copies = t.assignments("w1");
  auto other = t.assignments("w2");
  copies.insert(copies.end(), other.begin(), other.end());
  REQUIRE(copies.size() == 1);  // one copy per shard, however many workers idle
  const auto copy = copies[0];
  const std::string copier = other.empty() ? "w1" : "w2";
  CHECK(copy.shard == first.shard);
  CHECK(copy.attempt_id != first.attempt_id);
  CHECK(t.campaign().count(ShardState::kRunning) == 1);

  SECTION("the copy finishes first") {
    t.report(copier, copy, 0.25, 10'000);
    t.turn();
    const Campaign& c = t.campaign();
    CHECK(c.state == CampaignState::kSucceeded);
    CHECK(c.groups[0].cell.examples_scored == 12);
    CHECK(c.groups[0].cell.mean("accuracy").value() == Approx((1.0 + 1.0 + 0.25) / 3));
    CHECK(t.cancels("w3") == std::vector<uint64_t>{first.attempt_id});
    CHECK(t.stale_results() == 0);  // a cancelled copy, no result yet
    // The first copy's result arrives anyway: stored as stale, counted nowhere.
    t.report("w3", first, 0.0, 20'000);
    t.turn();
    CHECK(t.stale_results() == 1);  // one late result, counted once
    CHECK(t.campaign().groups[0].cell.examples_scored == 12);
    CHECK(t.campaign().groups[0].cell.mean("accuracy").value() == Approx(2.25 / 3));
    const auto records = t.attempts_of(first.shard);
    REQUIRE(records.size() == 1);
    CHECK(records.begin()->first == first.attempt_id);
    CHECK(records.begin()->second.outcome == AttemptOutcome::kStale);
    CHECK(records.begin()->second.worker == "w3");
  }
  SECTION("the first copy finishes first") {
    t.report("w3", first, 0.5, 17'000);
    t.turn();
    const Campaign& c = t.campaign();
    CHECK(c.state == CampaignState::kSucceeded);
    CHECK(c.groups[0].cell.mean("accuracy").value() == Approx(2.5 / 3));
    CHECK(t.cancels(copier) == std::vector<uint64_t>{copy.attempt_id});
    CHECK(t.stale_results() == 0);
    t.report(copier, copy, 0.0, 2'000);
    t.turn();
    CHECK(t.stale_results() == 1);
    CHECK(t.campaign().groups[0].cell.examples_scored == 12);
    CHECK(t.campaign().groups[0].cell.mean("accuracy").value() == Approx(2.5 / 3));
    const auto records = t.attempts_of(first.shard);
    REQUIRE(records.size() == 1);
    CHECK(records.begin()->first == copy.attempt_id);
    CHECK(records.begin()->second.outcome == AttemptOutcome::kStale);
    CHECK(records.begin()->second.worker == copier);
  }
  SECTION("a failed copy changes nothing; the first copy still decides") {
    auto r = protocol::result_for(copy);
    r.ok = false;
    r.error = "CUDA out of memory";
    t.scheduler->on_message(copier, protocol::Results{{r}});
    t.turn();
    CHECK(t.campaign().count(ShardState::kRunning) == 1);
    CHECK(t.campaign().groups[0].shards[first.shard].attempts == 1);
    t.report("w3", first, 1.0, 30'000);
    t.turn();
    CHECK(t.campaign().state == CampaignState::kSucceeded);
  }
  SECTION("an invalid success of the copy is a failed copy: the first copy is not cancelled") {
    auto r = testing::noop_success(copy);
    r.count = 99;  // more examples than the shard's 4
    t.scheduler->on_message(copier, protocol::Results{{r}});
    t.turn();
    CHECK(t.cancels("w3").empty());
    CHECK(t.campaign().count(ShardState::kRunning) == 1);
    CHECK(t.campaign().groups[0].shards[first.shard].attempts == 1);
    CHECK(t.campaign().groups[0].shards[first.shard].attempt_id == first.attempt_id);
    t.report("w3", first, 1.0, 30'000);
    t.turn();
    CHECK(t.campaign().state == CampaignState::kSucceeded);
    CHECK(t.campaign().groups[0].cell.examples_scored == 12);
  }
  SECTION("a result under the copy's attempt id that names another shard changes nothing") {
    auto r = testing::noop_success(copy);
    r.shard = copy.shard == 0 ? 1 : 0;
    t.scheduler->on_message(copier, protocol::Results{{r}});
    t.turn();
    CHECK(t.cancels("w3").empty());
    CHECK(t.campaign().count(ShardState::kRunning) == 1);
    CHECK(t.campaign().groups[0].shards[first.shard].attempt_id == first.attempt_id);
    t.report("w3", first, 1.0, 30'000);
    t.turn();
    CHECK(t.campaign().state == CampaignState::kSucceeded);
    CHECK(t.campaign().groups[0].cell.examples_scored == 12);
  }
  SECTION("the copy's worker is lost; the first copy runs on") {
    for (int i = 0; i < 6; ++i) {
      t.clock.advance(1000ms);
      for (const char* name : {"w1", "w2", "w3"}) {
        if (name != copier) t.scheduler->on_message(name, protocol::Heartbeat{});
      }
      t.turn();
    }
    CHECK(t.campaign().count(ShardState::kRunning) == 1);
    CHECK(t.campaign().count(ShardState::kPending) == 0);
    t.report("w3", first, 1.0, 30'000);
    t.turn();
    CHECK(t.campaign().state == CampaignState::kSucceeded);
  }
  SECTION("the first copy's worker is lost; the copy runs on as the shard's attempt") {
    for (int i = 0; i < 6; ++i) {
      t.clock.advance(1000ms);
      for (const char* name : {"w1", "w2"}) t.scheduler->on_message(name, protocol::Heartbeat{});
      t.turn();
    }
    const Campaign& c = t.campaign();
    CHECK(c.count(ShardState::kRunning) == 1);
    CHECK(c.count(ShardState::kPending) == 0);
    const Shard& s = c.groups[0].shards[first.shard];
    CHECK(s.attempt_id == copy.attempt_id);
    CHECK(s.attempts == 1);  // the copy carries on as the same attempt; none is charged
    CHECK(t.cancels(copier).empty());
    CHECK(t.assignments("w1").empty());  // not queued again: nothing new is assigned
    CHECK(t.assignments("w2").empty());
    const auto records = t.attempts_of(first.shard);
    REQUIRE(records.size() == 1);
    CHECK(records.begin()->first == first.attempt_id);
    CHECK(records.begin()->second.outcome == AttemptOutcome::kLost);
    CHECK(records.begin()->second.worker == "w3");
    CHECK_THAT(records.begin()->second.error,
               Catch::Contains("attempt_id=" + std::to_string(copy.attempt_id)) &&
                   Catch::Contains("runs on as the shard's attempt"));
    // The stored shard names the copy, so a restarted coordinator knows who holds it.
    const auto stored = t.store->get_shard(ShardKey{c.key, 0, first.shard});
    REQUIRE(stored.has_value());
    CHECK(stored->attempt_id == copy.attempt_id);
    CHECK(stored->worker == copier);
    // It started when the copy did (at 15 s, 1.5 x the expected 10 s; now it is 22 s), not at
    // the promotion.
    CHECK(stored->started_at_ms == t.clock.wall_ms() - 7'000);
    // The copy's result counts, once.
    t.report(copier, copy, 0.25, 20'000);
    t.turn();
    CHECK(t.campaign().state == CampaignState::kSucceeded);
    CHECK(t.campaign().groups[0].cell.examples_scored == 12);
    CHECK(t.campaign().groups[0].cell.mean("accuracy").value() == Approx(2.25 / 3));
  }
  SECTION("the first copy is handed back; the copy runs on as the shard's attempt") {
    t.scheduler->on_message("w3", protocol::HandBack{{first.attempt_id}});
    t.turn();
    const Shard& s = t.campaign().groups[0].shards[first.shard];
    CHECK(s.state == ShardState::kRunning);
    CHECK(s.attempt_id == copy.attempt_id);
    CHECK(s.hand_backs == 0);
    CHECK(t.cancels(copier).empty());
    const auto records = t.attempts_of(first.shard);
    REQUIRE(records.size() == 1);
    CHECK(records.begin()->second.outcome == AttemptOutcome::kHandedBack);
    t.report(copier, copy, 1.0, 20'000);
    t.turn();
    CHECK(t.campaign().state == CampaignState::kSucceeded);
    CHECK(t.campaign().groups[0].cell.examples_scored == 12);
  }
  SECTION("cancelling the campaign cancels both copies") {
    REQUIRE(t.scheduler->cancel(t.id).ok());
    t.turn();
    CHECK(t.cancels("w3") == std::vector<uint64_t>{first.attempt_id});
    CHECK(t.cancels(copier) == std::vector<uint64_t>{copy.attempt_id});
  }
}

TEST_CASE("no backup copies unless the campaign asks for them", "[unit][scheduler][backup]") {
  Tail t(/*backup_copies=*/false);
  t.straggle();
  t.wait(60s);
  CHECK(t.assignments("w1").empty());
  CHECK(t.assignments("w2").empty());
}

TEST_CASE("backup_copies is a boolean, off by default, kept in the canonical spec only when on",
          "[unit][spec][backup]") {
  nlohmann::json j = {{"name", "x"},
                      {"models", {{{"name", "m"}}}},
                      {"benchmarks", {{{"name", "b"}, {"examples", 1}, {"shard_size", 1}}}},
                      {"runner", {{"type", "noop"}}}};
  auto off = parse_campaign_spec(j);
  REQUIRE(off.ok());
  CHECK_FALSE(off->backup_copies);
  CHECK_FALSE(to_json(off.value()).contains("backup_copies"));  // digests of old specs unchanged
  j["backup_copies"] = true;
  auto on = parse_campaign_spec(j);
  REQUIRE(on.ok());
  CHECK(on->backup_copies);
  auto again = parse_campaign_spec(to_json(on.value()));
  REQUIRE(again.ok());
  CHECK(again.value() == on.value());
  j["backup_copies"] = "yes";
  auto bad = parse_campaign_spec(j);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message == "backup_copies: must be true or false");
}

TEST_CASE("a straggler of a group with nothing finished is judged by its model's other benchmarks",
          "[unit][scheduler][backup]") {
  // One model; b1 has four shards, b2 one (all of 4 examples). The three workers run b1's first
  // three for 10 s, then one of them runs b1's last and another b2's only shard, warm (it has
  // the model loaded). b2's group has nothing finished, so its estimate only says "at least as
  // long as it has run": the straggler is judged by what the model's shards took on b1.
  nlohmann::json j = {{"name", "tail"},
                      {"models", {{{"name", "m"}}}},
                      {"benchmarks",
                       {{{"name", "b1"}, {"examples", 16}, {"shard_size", 4}},
                        {{"name", "b2"}, {"examples", 4}, {"shard_size", 4}}}},
                      {"runner", {{"type", "noop"}}},
                      {"backup_copies", true}};
  auto spec = parse_campaign_spec(j);
  REQUIRE(spec.ok());
  Tail t(spec.value());
  const std::vector<std::string> names = {"w1", "w2", "w3"};
  t.turn();
  std::map<std::string, protocol::Assignment> first;
  for (const auto& name : names) {
    auto a = t.assignments(name);
    REQUIRE(a.size() == 1);
    CHECK(a[0].benchmark == 0);
    first[name] = a[0];
  }
  t.wait(10s);
  for (const auto& [name, a] : first) t.report(name, a, 1.0, 10'000);
  t.turn();  // b1's last shard and b2's only one go out, to workers that have the model loaded
  std::string slow;
  protocol::Assignment straggler;
  std::string last_b1;
  protocol::Assignment b1_last;
  for (const auto& name : names) {
    for (const auto& a : t.assignments(name)) {
      if (a.benchmark == 1) {
        slow = name;
        straggler = a;
      } else {
        last_b1 = name;
        b1_last = a;
      }
    }
  }
  REQUIRE_FALSE(slow.empty());
  REQUIRE_FALSE(last_b1.empty());
  t.wait(10s);
  t.report(last_b1, b1_last, 1.0, 10'000);
  t.turn();
  // At 10 s it has run as long as the model's shards take: no copy yet.
  for (const auto& name : names) CHECK(t.assignments(name).empty());
  t.wait(6s);  // 16 s: past 1.5 x 10 s
  std::vector<protocol::Assignment> copies;
  for (const auto& name : names) {
    if (name == slow) continue;
    auto got = t.assignments(name);
    copies.insert(copies.end(), got.begin(), got.end());
  }
  REQUIRE(copies.size() == 1);
  CHECK(copies[0].benchmark == 1);
  CHECK(copies[0].shard == straggler.shard);
  CHECK(copies[0].attempt_id != straggler.attempt_id);
}
