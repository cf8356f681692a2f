// kill -9 of the coordinator while a campaign is in flight (docs/results.md): what the API
// acknowledged (the submit) survives, the restarted coordinator on the same data dir and ports is
// found again by the workers on their own, and the campaign completes with the exact numbers:
// every shard succeeded, none counted twice (leaderboard counts = examples).
#include <catch2/catch.hpp>

#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;

// sleep_ms keeps the campaign mid-flight long enough to kill the coordinator under it:
// 48 shards x 100 ms on 4 slots is about 1.5 s of work.
const std::vector<TestModel> kModels = {
    {"m-alpha", 1, 5, {{"sleep_ms", 100}}},
    {"m-beta", 2, 3, {{"sleep_ms", 100}}},
    {"m-gamma", 3, 4, {{"sleep_ms", 100}}},
};
const std::vector<TestBenchmark> kBenchmarks = {
    {"b-one", 75, 10, 1, "accuracy", true, {}},
    {"b-two", 61, 8, 4, "accuracy", true, {}},
};

void check_completed_exactly_once(const Api& api, const std::string& id) {
  const int64_t total = total_shards(kModels, kBenchmarks);
  const auto done = api.wait_for_state(id, "succeeded", 45s);
  CHECK(done.at("total") == total);
  CHECK(done.at("shards").at("succeeded") == total);
  check_results(api.results(id), kModels, kBenchmarks);
  const auto shards = api.shards(id).at("shards");
  REQUIRE(static_cast<int64_t>(shards.size()) == total);
  for (const auto& s : shards) {
    INFO("shard " << s.dump());
    CHECK(s.at("state") == "succeeded");
    // A shard whose lease outlived the crash may have been orphaned and run again, but it is
    // counted once: its metrics appear once and its count equals its range.
    CHECK(s.at("count") == s.at("end").get<int64_t>() - s.at("start").get<int64_t>());
  }
  // Nothing was double-counted as a success: the durable per-cell shard counts (which survive the
  // restart, unlike the _total counters) add up to exactly the campaign's shards, and every
  // leaderboard count equals its benchmark's examples (check_results above).
  // The gauges are refreshed on a timer; wait for them to catch up, then the count is exact.
  const auto succeeded = [&] {
    return api.metric("evald_benchmark_shards", {{"campaign", id}, {"kind", "succeeded"}});
  };
  CHECK(wait_until([&] { return succeeded() >= static_cast<double>(total); }, 10s));
  CHECK(succeeded() == static_cast<double>(total));
  CHECK(api.metric("evald_benchmark_shards", {{"campaign", id}, {"kind", "total"}}) ==
        static_cast<double>(total));
}

TEST_CASE("restart: kill -9 of the coordinator right after the submit's 201", "[integration]") {
  TestCluster cluster;
  const auto api = cluster.api();
  const auto id = api.submit(make_spec("restart-early", kModels, kBenchmarks));
  cluster.coordinator().kill();
  cluster.coordinator().restart();
  // The acknowledged submit survived.
  CHECK(api.campaign(id).at("name") == "restart-early");
  api.wait_for_workers(2);
  check_completed_exactly_once(api, id);
}

TEST_CASE("restart: kill -9 of the coordinator mid-flight, twice", "[integration]") {
  TestCluster cluster;
  const auto api = cluster.api();
  const auto id = api.submit(make_spec("restart-mid", kModels, kBenchmarks));
  const int64_t total = total_shards(kModels, kBenchmarks);
  int64_t succeeded_before = 0;
  for (const int64_t threshold : {total / 4, total / 2}) {
    INFO("killing once " << threshold << " of " << total << " shards succeeded");
    REQUIRE(wait_until(
        [&] {
          succeeded_before = api.campaign(id).at("shards").at("succeeded").get<int64_t>();
          return succeeded_before >= threshold;
        },
        30s));
    REQUIRE(succeeded_before < total);  // still mid-flight: shards are running on the workers
    cluster.coordinator().kill();
    cluster.coordinator().restart();
    // Results acknowledged before the crash are still there.
    CHECK(api.campaign(id).at("shards").at("succeeded").get<int64_t>() >= succeeded_before);
  }
  // The workers reconnect by themselves (their processes were never touched).
  api.wait_for_workers(2);
  CHECK(cluster.worker(0).running());
  CHECK(cluster.worker(1).running());
  check_completed_exactly_once(api, id);
}

}  // namespace
