// A whole campaign through the real binaries: coordinator + 2 workers (2 slots each), 3 models x
// 3 benchmarks with uneven last shards, run by evald-test-runner. The leaderboard must hold the
// exact example-weighted means the runner's formula gives, and every shard one attempt.
#include <catch2/catch.hpp>

#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;

const std::vector<TestModel> kModels = {
    {"m-alpha", 1, 5, {}},
    {"m-beta", 2, 3, {}},
    {"m-gamma", 3, 4, {}},
};

// 100 = 30+30+30+10, 47 = 5x10 with a last shard of 7, 65 = 4x16 with a last shard of 1. The
// third benchmark ranks by error rate, lowest best.
const std::vector<TestBenchmark> kBenchmarks = {
    {"b-one", 100, 30, 0, "accuracy", true, {}},
    {"b-two", 47, 10, 2, "accuracy", true, {}},
    {"b-three", 65, 16, 5, "error_rate", false, {}},
};

TEST_CASE("e2e: a 3x3 exec campaign yields the exact leaderboard", "[integration]") {
  // The expectation itself must not hinge on a near-tie that summation order could flip.
  const auto expected = expected_leaderboard(kModels, kBenchmarks);
  for (size_t i = 0; i + 1 < expected.size(); ++i) {
    REQUIRE(std::abs(expected[i].average - expected[i + 1].average) > 1e-6);
  }

  TestCluster cluster;
  const auto api = cluster.api();
  const auto id = api.submit(make_spec("e2e", kModels, kBenchmarks));
  CHECK(id.size() == 7);
  CHECK(id[0] == 'c');

  const auto done = api.wait_for_state(id, "succeeded", 45s);
  const int64_t total = total_shards(kModels, kBenchmarks);
  REQUIRE(total == 3 * (4 + 5 + 5));
  CHECK(done.at("total") == total);
  CHECK(done.at("shards").at("succeeded") == total);
  CHECK(done.at("shards").at("failed") == 0);
  CHECK(done.at("progress").get<double>() == 1.0);
  CHECK(done.at("name") == "e2e");

  const auto results = api.results(id);
  CHECK(results.at("campaign") == id);
  CHECK(results.at("state") == "succeeded");
  check_results(results, kModels, kBenchmarks);
  check_all_shards_succeeded(api, id, total);

  // Shard ranges as docs/results.md defines them: [index*size, min(examples, (index+1)*size)).
  const auto shards = api.shards(id).at("shards");
  for (const auto& s : shards) {
    INFO("shard " << s.dump());
    const auto& bench = *std::find_if(kBenchmarks.begin(), kBenchmarks.end(),
                                      [&](const auto& b) { return b.name == s.at("benchmark"); });
    const int64_t index = s.at("index");
    CHECK(s.at("start") == index * bench.shard_size);
    CHECK(s.at("end") == std::min(bench.examples, (index + 1) * bench.shard_size));
    CHECK((s.at("worker") == "w1" || s.at("worker") == "w2"));
    // A clean run leaves no attempt record at all: no failure, no loss, no stale result.
    CHECK_FALSE(s.contains("history"));
  }
  // Nothing more was counted than what the shards hold.
  CHECK(api.metric("evald_shards_completed_total") == static_cast<double>(total));

  // A graceful stop is a clean exit (docs/binaries.md: SIGTERM = graceful stop, exit 0).
  for (size_t i = 0; i < cluster.worker_count(); ++i) CHECK(cluster.worker(i).terminate() == 0);
  CHECK(cluster.coordinator().terminate() == 0);
}

TEST_CASE("e2e: the noop runner scores every example 1.0", "[integration]") {
  // noop reports only "accuracy", so every benchmark ranks by it here.
  std::vector<TestBenchmark> benchmarks = kBenchmarks;
  for (auto& b : benchmarks) {
    b.metric = "accuracy";
    b.higher_is_better = true;
  }
  TestCluster cluster;
  const auto api = cluster.api();
  const auto id = api.submit(make_spec("noop", kModels, benchmarks, noop_runner()));
  api.wait_for_state(id, "succeeded", 30s);
  const auto results = api.results(id);
  INFO(results.dump());
  REQUIRE(results.at("models").size() == kModels.size());
  for (const auto& row : results["models"]) {
    // Every model has the same scores: all tie for rank 1 and first place everywhere.
    CHECK(row.at("rank") == 1);
    CHECK(row.at("firsts") == benchmarks.size());
    CHECK(row.at("average").get<double>() == 1.0);
    for (const auto& b : benchmarks) {
      const auto& score = row.at("scores").at(b.name);
      CHECK(score.at("value").get<double>() == 1.0);
      CHECK(score.at("count") == b.examples);
      CHECK(score.at("complete") == true);
    }
  }
  // Tied rows are ordered by name.
  CHECK(results["models"][0]["name"] == "m-alpha");
  CHECK(results["models"][2]["name"] == "m-gamma");
  check_all_shards_succeeded(api, id, total_shards(kModels, benchmarks));
}

}  // namespace
