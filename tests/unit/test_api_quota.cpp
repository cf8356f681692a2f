// The pending-shards quota holds for reruns too: submit, finish and rerun must not grow a
// principal's queue past --max-pending-shards-per-user. In-process Api on a real Scheduler and
// RocksDB store, driven turn by turn as the core drives it.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "coordinator/api.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/scheduler_turn.hpp"

using namespace evald;
using namespace evald::coordinator;

namespace {

std::string noop_spec(const std::string& name, int shards) {
  return nlohmann::json{{"name", name},
                        {"models", {{{"name", "m"}}}},
                        {"benchmarks", {{{"name", "b"}, {"examples", shards}, {"shard_size", 1}}}},
                        {"runner", {{"type", "noop"}}}}
      .dump();
}

struct Node {
  testing::TempDir dir{"evald-api-quota"};
  ManualClock clock;
  Metrics metrics;
  std::unique_ptr<Store> store;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<Api> api;
  bool worker_answers = true;  // false: leases stay running, like a slow worker's

  explicit Node(int64_t quota) {
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    store = std::move(opened.value());
    scheduler = std::make_unique<Scheduler>(*store, clock, metrics, SchedulerOptions{});
    REQUIRE(scheduler->recover().ok());
    api = std::make_unique<Api>(
        *scheduler, metrics,
        ApiOptions{
            .tokens = nullptr, .max_pending_shards_per_user = quota, .max_spec_bytes = 1u << 20});
  }

  HttpResponse call(const std::string& method, const std::string& target,
                    const std::string& body = "") {
    HttpRequest request;
    request.method = method;
    request.target = target;
    request.body = body;
    request.peer_address = "127.0.0.1";
    auto response = api->check_access(request);
    if (!response) response = api->handle(request);
    turn();
    return *response;
  }

  // One core turn; every ASSIGN is answered at once with a success (the worker runs noop).
  void turn() {
    for (int round = 0; round < 2; ++round) {
      for (const auto& a : testing::run_turn(*scheduler)) {
        if (!worker_answers) break;
        scheduler->on_message("w1", protocol::Results{{testing::noop_success(a)}});
      }
    }
  }
};

}  // namespace

TEST_CASE("a rerun counts against the pending-shards quota like a submit", "[unit][api][quota]") {
  Node node(/*quota=*/10);
  protocol::Hello hello;
  hello.name = "w1";
  hello.instance = "i1";
  hello.slots = 64;
  node.scheduler->on_message("w1", hello);

  const auto first = node.call("POST", "/v1/campaigns", noop_spec("first", 6));
  REQUIRE(first.status == 201);
  const std::string id = nlohmann::json::parse(first.body).at("id");
  for (int i = 0; i < 5; ++i) node.turn();
  REQUIRE(node.scheduler->find_campaign(id)->state == CampaignState::kSucceeded);

  // The worker stops answering, so the next campaign's 6 shards stay unfinished.
  node.worker_answers = false;
  REQUIRE(node.call("POST", "/v1/campaigns", noop_spec("second", 6)).status == 201);

  // Re-running all 6 shards of the first campaign would make 12 > 10: refused, nothing queued.
  const auto over = node.call("POST", "/v1/campaigns/" + id + "/rerun", R"({"failed": false})");
  CHECK(over.status == 429);
  CHECK_THAT(over.body, Catch::Contains("this rerun adds 6"));
  CHECK(node.scheduler->find_campaign(id)->state == CampaignState::kSucceeded);
  // A narrower rerun that fits is allowed.
  CHECK(node.call("POST", "/v1/campaigns/" + id + "/rerun", R"({"failed": true})").status == 200);
}

TEST_CASE("GET /v1/workers pages by name: limit, after, next_after, and a bad limit",
          "[unit][api]") {
  Node node(/*quota=*/1000);
  for (const auto* name : {"w3", "w1", "w2"}) {
    protocol::Hello hello;
    hello.name = name;
    hello.instance = "i1";
    node.scheduler->on_message(name, hello);
  }
  node.turn();
  const auto names = [](const HttpResponse& response) {
    const auto body = nlohmann::json::parse(response.body);  // alive for the loop below
    std::vector<std::string> out;
    for (const auto& w : body.at("workers")) out.push_back(w.at("name").get<std::string>());
    return out;
  };
  const auto next = [](const HttpResponse& response) {
    return nlohmann::json::parse(response.body).at("next_after");
  };
  auto all = node.call("GET", "/v1/workers");
  REQUIRE(all.status == 200);
  CHECK(names(all) == std::vector<std::string>{"w1", "w2", "w3"});
  CHECK(next(all).is_null());

  auto first = node.call("GET", "/v1/workers?limit=2");
  CHECK(names(first) == std::vector<std::string>{"w1", "w2"});
  CHECK(next(first) == "w2");
  auto last = node.call("GET", "/v1/workers?limit=2&after=w2");
  CHECK(names(last) == std::vector<std::string>{"w3"});
  CHECK(next(last).is_null());
  // A page that ends exactly at the last worker has no next page.
  auto exact = node.call("GET", "/v1/workers?limit=1&after=w2");
  CHECK(names(exact) == std::vector<std::string>{"w3"});
  CHECK(next(exact).is_null());

  for (const auto* bad : {"/v1/workers?limit=0", "/v1/workers?limit=abc", "/v1/workers?limit=-1"}) {
    INFO(bad);
    CHECK(node.call("GET", bad).status == 400);
  }
}
