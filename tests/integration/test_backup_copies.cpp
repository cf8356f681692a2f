// Backup copies of stragglers (docs/scheduling.md, rule 10) with real workers: one of three
// computes 10 times slower. With `backup_copies`, an idle worker that has the model loaded runs a
// second copy of the shard the slow one straggles on; the first result counts once, the slow
// copy is cancelled and kept as a stale attempt.
#include <chrono>
#include <string>

#include "tests/integration/integration.hpp"

using namespace evald::testing;
using namespace std::chrono_literals;

namespace {

// Runs a campaign of 8 one-second shards on w1, w2 and a slow w3 (10 s a shard), one slot each.
// Returns the campaign's shards once it succeeded, and how long that took.
struct TailRun {
  nlohmann::json shards;
  std::chrono::milliseconds took{0};
  double won = 0;
  double started = 0;
};

TailRun run_with_slow_node(bool backup_copies) {
  ClusterOptions options;
  options.workers = 2;
  options.slots = 1;
  TestCluster cluster(options);
  WorkerOptions slow = cluster.worker_defaults();
  slow.name = "w3";
  slow.env = {{"EVALD_TEST_SLOWDOWN", "10"}};
  cluster.add_worker(slow);
  const auto api = cluster.api();
  api.wait_for_workers(3);

  const std::vector<TestModel> models = {{"m-alpha", 1, 5, {{"sleep_ms", 1000}}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 80, 10, 0, "accuracy", true, {}}};
  auto spec = make_spec("tail", models, benchmarks, exec_runner());
  spec["backup_copies"] = backup_copies;
  const auto started = std::chrono::steady_clock::now();
  const auto id = api.submit(spec);
  api.wait_for_state(id, "succeeded", 60s);
  TailRun run;
  run.took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);
  run.shards = api.shards(id).at("shards");
  // Exactly once: the leaderboard is the runner's formula over the 80 examples.
  const auto results = api.results(id);
  const auto score = results.at("models").at(0).at("scores").at("b-one");
  CHECK(score.at("count") == 80);
  CHECK(score.at("value").get<double>() == Approx(expected_score(models[0], benchmarks[0])));
  // The family appears with its first copy: undeclared means none was started.
  run.won = api.metric_if_declared("evald_backup_copies_total", {{"outcome", "won"}}).value_or(0);
  run.started =
      api.metric_if_declared("evald_backup_copies_total", {{"outcome", "started"}}).value_or(0);
  return run;
}

}  // namespace

TEST_CASE("backup copies: a slow node's shard is copied, counted once, its copy kept stale",
          "[integration][backup]") {
  const TailRun run = run_with_slow_node(true);
  INFO("shards " << run.shards.dump());
  // w3 took a shard at the start; its copy on w1 or w2 finished first (shown below by the
  // counted worker and w3's cancelled, stale attempt, not by a wall-clock bound that a busy
  // machine could break).
  CHECK(run.started >= 1);
  CHECK(run.won >= 1);
  int stale_on_slow = 0;
  for (const auto& shard : run.shards) {
    CHECK(shard.at("state") == "succeeded");
    CHECK(shard.at("worker") != "w3");  // no result of the slow node counted
    if (!shard.contains("history")) continue;
    for (const auto& attempt : shard.at("history")) {
      CHECK(attempt.at("outcome") == "stale");
      if (attempt.at("worker") == "w3") {
        ++stale_on_slow;
        CHECK_THAT(attempt.at("error").get<std::string>(),
                   Catch::Contains("finished first; this copy was cancelled"));
      }
    }
  }
  CHECK(stale_on_slow == 1);
}

TEST_CASE("backup copies: without them the slow node's shard sets the end",
          "[integration][backup]") {
  const TailRun run = run_with_slow_node(false);
  CHECK(run.took >= 10s);
  CHECK(run.started == 0);
  bool slow_counted = false;
  for (const auto& shard : run.shards) slow_counted = slow_counted || shard.at("worker") == "w3";
  CHECK(slow_counted);
}
