// Back-off of served models whose server keeps failing to start on a worker: the bookkeeping
// (coordinator/serve_backoff.hpp), the failure kind on the wire (protocol version 3, older frames
// still decode), the scheduler not placing a backed-off model there while other models and
// workers go on, the coordinator's load metrics, and how evalctl prints `not_placed`.
#include <catch2/catch.hpp>
#include <map>
#include <string>

#include "common/clock.hpp"
#include "common/protocol.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/serve_backoff.hpp"
#include "evalctl/format.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/scheduler_turn.hpp"

using namespace evald;
using namespace evald::coordinator;
using namespace std::chrono_literals;

namespace {

ModelSpec served_model(const std::string& name, const std::string& flag = "--fast") {
  ModelSpec m;
  m.name = name;
  m.serve = ServeSpec{};
  m.serve->command = {"serve", name, flag};
  return m;
}

double counter_value(prometheus::Family<prometheus::Counter>& family, const std::string& model) {
  return family.Add({{"model", model}}).Value();
}

}  // namespace

TEST_CASE("serve backoff: three failed starts in a row back a model off, doubling, capped",
          "[unit][serve_backoff]") {
  Metrics metrics;
  ServeBackoff backoff(ServeBackoffOptions{.failures = 3, .base = 300s, .max = 1000s},
                       metrics.model_server_backoffs);
  const auto m = served_model("m-a");
  const auto t0 = std::chrono::steady_clock::time_point{} + 1h;
  const int64_t wall0 = 1'700'000'000'000;

  backoff.record_failure("w1", "i1", m, 1, "oom", t0, wall0);
  // The other attempts that waited for start 1 do not count again.
  backoff.record_failure("w1", "i1", m, 1, "oom", t0, wall0);
  backoff.record_failure("w1", "i1", m, 2, "oom", t0 + 1s, wall0 + 1000);
  CHECK(backoff.allows("w1", m, t0 + 2s));
  CHECK(backoff.not_placed(m, t0 + 2s).empty());

  backoff.record_failure("w1", "i1", m, 3, "CUDA out of memory", t0 + 2s, wall0 + 2000);
  CHECK_FALSE(backoff.allows("w1", m, t0 + 2s));
  CHECK_FALSE(backoff.allows("w1", m, t0 + 301s));
  CHECK(backoff.allows("w1", m, t0 + 302s));  // 300 s after the third failure
  CHECK(backoff.allows("w2", m, t0 + 3s));    // other workers are not affected
  CHECK(counter_value(metrics.model_server_backoffs, "m-a") == 1);

  const auto held = backoff.not_placed(m, t0 + 3s);
  REQUIRE(held.size() == 1);
  CHECK(held[0].model == "m-a");
  CHECK(held[0].worker == "w1");
  CHECK(held[0].reason == "CUDA out of memory");
  CHECK(held[0].failures == 3);
  CHECK(held[0].until_ms == wall0 + 2000 + 300'000);

  // The same model name with another serve spec (a fixed command) starts clean.
  const auto fixed = served_model("m-a", "--other");
  CHECK(backoff.allows("w1", fixed, t0 + 3s));
  CHECK(backoff.not_placed(fixed, t0 + 3s).empty());
  // A model without serve is never held back.
  ModelSpec plain;
  plain.name = "m-a";
  CHECK(backoff.allows("w1", plain, t0 + 3s));

  // Tried again after the back-off and failing again: 600 s, then 1000 s (the cap), not 1200.
  backoff.record_failure("w1", "i1", m, 4, "oom", t0 + 400s, wall0);
  CHECK_FALSE(backoff.allows("w1", m, t0 + 999s));
  CHECK(backoff.allows("w1", m, t0 + 1000s));
  backoff.record_failure("w1", "i1", m, 5, "oom", t0 + 1100s, wall0);
  CHECK_FALSE(backoff.allows("w1", m, t0 + 2099s));
  CHECK(backoff.allows("w1", m, t0 + 2100s));
  CHECK(counter_value(metrics.model_server_backoffs, "m-a") == 3);

  // A restarted worker numbers its starts from 1 again: still a new failure.
  backoff.record_failure("w1", "i2", m, 5, "oom", t0 + 2200s, wall0);
  CHECK(backoff.not_placed(m, t0 + 2201s).at(0).failures == 6);

  // A server that becomes ready ends it: the next failure counts from one.
  backoff.record_load("w1", m);
  CHECK(backoff.allows("w1", m, t0 + 2201s));
  backoff.record_failure("w1", "i2", m, 6, "oom", t0 + 2300s, wall0);
  CHECK(backoff.allows("w1", m, t0 + 2301s));
}

TEST_CASE("serve backoff: failures long apart are not in a row, 0 failures turns it off",
          "[unit][serve_backoff]") {
  Metrics metrics;
  const auto m = served_model("m-b");
  const auto t0 = std::chrono::steady_clock::time_point{} + 1h;
  {
    ServeBackoff backoff(ServeBackoffOptions{.failures = 2, .base = 10s, .max = 60s},
                         metrics.model_server_backoffs);
    backoff.record_failure("w1", "i1", m, 1, "x", t0, 0);
    backoff.record_failure("w1", "i1", m, 2, "x", t0 + 61s, 0);  // the first one is forgotten
    CHECK(backoff.allows("w1", m, t0 + 62s));
    backoff.record_failure("w1", "i1", m, 3, "x", t0 + 70s, 0);
    CHECK_FALSE(backoff.allows("w1", m, t0 + 71s));
  }
  {
    ServeBackoff backoff(ServeBackoffOptions{.failures = 0, .base = 10s, .max = 60s},
                         metrics.model_server_backoffs);
    for (uint64_t i = 1; i <= 10; ++i) backoff.record_failure("w1", "i1", m, i, "x", t0, 0);
    CHECK(backoff.allows("w1", m, t0));
    CHECK(backoff.not_placed(m, t0).empty());
  }
}

TEST_CASE("protocol: a server-start failure round-trips, version-2 results still decode",
          "[unit][serve_backoff][protocol]") {
  protocol::ShardResult r;
  r.attempt_id = 7;
  r.ok = false;
  r.error = "model server for m exited with code 1 before it was ready";
  r.failure = protocol::FailureKind::kServerStart;
  r.server_start = 42;
  r.failure_reason = "torch.OutOfMemoryError: CUDA out of memory";
  const std::string frame = protocol::encode(protocol::Results{{r}});
  CHECK(static_cast<uint8_t>(frame[2]) == protocol::kProtocolVersion);
  // Version 4 changed no layout (it added GOODBYE): a version-3 frame is the same bytes.
  std::string v3 = frame;
  v3[2] = 3;
  REQUIRE(protocol::decode(v3).ok());
  CHECK(std::get<protocol::Results>(protocol::decode(v3).value()).results.at(0).server_start == 42);
  auto decoded = protocol::decode(frame);
  REQUIRE(decoded.ok());
  const auto& back = std::get<protocol::Results>(decoded.value()).results.at(0);
  CHECK(back.failure == protocol::FailureKind::kServerStart);
  CHECK(back.server_start == 42);
  CHECK(back.failure_reason == r.failure_reason);
  CHECK(back.error == r.error);

  // A version-2 frame is the version-3 one without the three trailing fields (u8, u64, string).
  protocol::ShardResult plain = r;
  plain.failure = protocol::FailureKind::kOther;
  plain.server_start = 0;
  plain.failure_reason.clear();
  std::string v2 = protocol::encode(protocol::Results{{plain}});
  v2.resize(v2.size() - (1 + 8 + 4));
  v2[2] = 2;
  auto old = protocol::decode(v2);
  REQUIRE(old.ok());
  const auto& old_result = std::get<protocol::Results>(old.value()).results.at(0);
  CHECK(old_result.failure == protocol::FailureKind::kOther);
  CHECK(old_result.error == r.error);
  // Cut inside the new fields: refused, not misread.
  std::string cut = frame.substr(0, frame.size() - 3);
  CHECK_FALSE(protocol::decode(cut).ok());
  // A kind this build does not know reads as "other".
  std::string future = protocol::encode(protocol::Results{{plain}});
  future[future.size() - (1 + 8 + 4)] = 9;
  auto unknown = protocol::decode(future);
  REQUIRE(unknown.ok());
  CHECK(std::get<protocol::Results>(unknown.value()).results.at(0).failure ==
        protocol::FailureKind::kOther);

  // Warm servers say how long they took to load; an older worker's entry has no load_ms.
  protocol::Hello hello;
  hello.name = "w1";
  hello.warm = {protocol::WarmModel{"m", {0}, 1234}};
  auto h = protocol::decode(protocol::encode(hello));
  REQUIRE(h.ok());
  CHECK(std::get<protocol::Hello>(h.value()).warm.at(0).load_ms == 1234);
  protocol::Heartbeat beat{protocol::ServeStatus{{protocol::WarmModel{"m", {0}, 0}}, {}}};
  auto hb = protocol::decode(protocol::encode(beat));
  REQUIRE(hb.ok());
  CHECK(std::get<protocol::Heartbeat>(hb.value()).status->warm.at(0).load_ms == 0);
}

namespace {

struct Harness {
  testing::TempDir dir;
  ManualClock clock;
  Metrics metrics;
  SchedulerOptions options{.heartbeat = 1000ms,
                           .worker_timeout = 600000ms,
                           .retry_backoff = 0ms,
                           .serve_backoff = {.failures = 3, .base = 60s, .max = 600s}};
  std::unique_ptr<Store> store;
  std::unique_ptr<Scheduler> scheduler;
  std::vector<std::pair<std::string, protocol::Message>> sent;

  Harness() {
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    store = std::move(opened.value());
    scheduler = std::make_unique<Scheduler>(*store, clock, metrics, options);
    REQUIRE(scheduler->recover().ok());
  }

  void turn() {
    testing::run_turn(*scheduler, [&](const std::string& who, const protocol::Message& m) {
      sent.emplace_back(who, m);
    });
  }

  void hello(const std::string& name, uint32_t slots) {
    protocol::Hello h;
    h.name = name;
    h.instance = "i-" + name;
    h.slots = slots;
    scheduler->on_message(name, h);
  }

  std::vector<protocol::Assignment> assignments(const std::string& who) {
    std::vector<protocol::Assignment> out;
    std::vector<std::pair<std::string, protocol::Message>> rest;
    for (auto& [w, m] : sent) {
      if (w == who && std::holds_alternative<protocol::Assign>(m)) {
        const auto& a = std::get<protocol::Assign>(m).assignments;
        out.insert(out.end(), a.begin(), a.end());
      } else {
        rest.emplace_back(w, m);
      }
    }
    sent = std::move(rest);
    return out;
  }

  void start_failed(const std::string& who, const protocol::Assignment& a, uint64_t start) {
    auto r = protocol::result_for(a);
    r.ok = false;
    r.error = "model server for m-broken exited with code 1 before it was ready";
    r.failure = protocol::FailureKind::kServerStart;
    r.server_start = start;
    r.failure_reason = "error: cannot load weights: out of memory";
    scheduler->on_message(who, protocol::Results{{r}});
  }
};

CampaignSpec two_served_models() {
  nlohmann::json j = {
      {"name", "served"},
      {"models",
       {{{"name", "m-broken"}, {"serve", {{"command", {"serve-broken", "{port}"}}}}},
        {{"name", "m-ok"}, {"serve", {{"command", {"serve-ok", "{port}"}}}}}}},
      {"benchmarks",
       {{{"name", "b"},
         {"examples", 40},
         {"shard_size", 10},
         {"params", {{"data", "/data/b.jsonl"}, {"format", "generate"}}}}}},
      {"runner", {{"type", "openai"}}},
      {"max_attempts", 20}};
  auto spec = parse_campaign_spec(j);
  INFO((spec.ok() ? "" : spec.error().message));
  REQUIRE(spec.ok());
  return spec.value();
}

}  // namespace

TEST_CASE("scheduler: a model backed off on a worker goes elsewhere and waits, then is retried",
          "[unit][serve_backoff][scheduler]") {
  Harness h;
  auto id = h.scheduler->submit(two_served_models());
  REQUIRE(id.ok());
  const Campaign* c = h.scheduler->find_campaign(id.value());
  REQUIRE(c != nullptr);
  h.hello("w1", 1);
  h.turn();

  // w1 takes m-broken (the first model of equal work) and its server fails to start three times.
  uint64_t start = 0;
  for (int i = 0; i < 3; ++i) {
    auto given = h.assignments("w1");
    REQUIRE(given.size() == 1);
    REQUIRE(given[0].model == 0);
    h.start_failed("w1", given[0], ++start);
    h.turn();
  }
  // Now w1 gets m-ok instead, and m-broken shows why it waits.
  auto given = h.assignments("w1");
  REQUIRE(given.size() == 1);
  CHECK(given[0].model == 1);
  auto held = h.scheduler->serve_backoff().not_placed(c->spec.models[0], h.clock.now());
  REQUIRE(held.size() == 1);
  CHECK(held[0].worker == "w1");
  CHECK(held[0].failures == 3);
  CHECK(held[0].reason == "error: cannot load weights: out of memory");
  CHECK(h.metrics.model_server_backoffs.Add({{"model", "m-broken"}}).Value() == 1);

  // m-ok's server comes up: one load on the coordinator's /metrics, with its load time.
  protocol::Heartbeat beat{protocol::ServeStatus{{protocol::WarmModel{"m-ok", {}, 2500}}, {}}};
  h.scheduler->on_message("w1", beat);
  h.scheduler->on_message("w1", beat);  // said again: not a second load
  CHECK(h.metrics.model_loads.Add({{"model", "m-ok"}}).Value() == 1);
  CHECK(c->model_loads.at("m-ok") == 1);
  const auto text = h.metrics.serialize();
  CHECK(text.find("evald_model_load_seconds_count 1") != std::string::npos);
  CHECK(text.find("evald_model_load_seconds_sum 2.5") != std::string::npos);

  // w1 finishes m-ok's four shards and is then idle: m-broken still waits (no spinning).
  for (int i = 0; i < 4; ++i) {
    REQUIRE(given.size() == 1);
    REQUIRE(given[0].model == 1);
    h.scheduler->on_message("w1", protocol::Results{{testing::noop_success(given[0])}});
    h.turn();
    given = h.assignments("w1");
  }
  CHECK(given.empty());
  for (int i = 0; i < 5; ++i) {
    h.clock.advance(10s);
    h.turn();
    CHECK(h.assignments("w1").empty());
  }
  // A second worker that never failed takes m-broken at once.
  h.hello("w2", 1);
  h.turn();
  auto other = h.assignments("w2");
  REQUIRE(other.size() == 1);
  CHECK(other[0].model == 0);
  // After the back-off w1 is tried again; one more failed start backs it off for twice as long.
  h.clock.advance(20s);  // 70 s after the third failure
  h.turn();
  given = h.assignments("w1");
  REQUIRE(given.size() == 1);
  CHECK(given[0].model == 0);
  h.start_failed("w1", given[0], ++start);
  h.turn();
  CHECK(h.assignments("w1").empty());
  held = h.scheduler->serve_backoff().not_placed(c->spec.models[0], h.clock.now());
  REQUIRE(held.size() == 1);
  CHECK(held[0].failures == 4);
  h.clock.advance(119s);
  h.turn();
  CHECK(h.assignments("w1").empty());
  h.clock.advance(2s);
  h.turn();
  CHECK(h.assignments("w1").size() == 1);
}

TEST_CASE("evalctl status prints not_placed with its failures and retry time",
          "[unit][serve_backoff][evalctl]") {
  const nlohmann::json campaign = {{"id", "c-1"},
                                   {"name", "served"},
                                   {"state", "running"},
                                   {"shards", {{"pending", 4}, {"running", 0}, {"succeeded", 4}}},
                                   {"total", 8},
                                   {"not_placed",
                                    {{{"model", "m-broken"},
                                      {"worker", "w1"},
                                      {"reason", "error: cannot load weights: out of memory"},
                                      {"failures", 3},
                                      {"until", "2026-12-02T12:05:00Z"}}}}};
  const std::string text = evalctl::format_campaign(campaign);
  INFO(text);
  CHECK(text.find("not placed") != std::string::npos);
  CHECK(text.find("m-broken on w1: error: cannot load weights: out of memory (3 failed starts, "
                  "retried after 2026-12-02T12:05:00Z)") != std::string::npos);
}
