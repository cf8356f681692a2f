// Failed attempts, retries and reruns through the real binaries: a shard that always fails ends
// failed after max_attempts with the runner's stderr as its last error, and the campaign failed;
// once the cause is gone, `evalctl rerun --failed` makes the campaign succeed with exactly the
// numbers of a clean run. The nothing-lost suite (worker crashes, hung nodes) builds on this.
#include <catch2/catch.hpp>
#include <csignal>
#include <fstream>

#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;

const std::vector<TestBenchmark> kBenchmarks = {
    {"b-one", 50, 12, 2, "accuracy", true, {}},  // shards 0-11, 12-23, 24-35, 36-47, 48-49
    {"b-two", 30, 10, 6, "accuracy", true, {}},
};

const json* find_shard(const json& shards, const std::string& model, const std::string& benchmark,
                       int64_t index) {
  for (const auto& s : shards) {
    if (s.at("model") == model && s.at("benchmark") == benchmark && s.at("index") == index) {
      return &s;
    }
  }
  return nullptr;
}

TEST_CASE("failures: a shard that always fails ends failed after max_attempts", "[integration]") {
  // m-alpha fails shard 1 of every benchmark; m-beta prints garbage for shard 0 of every one.
  const std::vector<TestModel> models = {
      {"m-alpha", 1, 5, {{"fail_shards", {1}}}},
      {"m-beta", 2, 3, {{"garbage_output_shards", {0}}}},
  };
  constexpr int kMaxAttempts = 3;
  TestCluster cluster;
  const auto api = cluster.api();
  const auto id =
      api.submit(make_spec("failing", models, kBenchmarks, exec_runner(), kMaxAttempts));
  const auto done = api.wait_for_state(id, "failed", 45s);
  const int64_t total = total_shards(models, kBenchmarks);
  CHECK(done.at("shards").at("failed") == 4);
  CHECK(done.at("shards").at("succeeded") == total - 4);
  CHECK(done.at("progress").get<double>() == 1.0);

  const auto failed = api.shards(id, "failed").at("shards");
  REQUIRE(failed.size() == 4);
  for (const auto& b : kBenchmarks) {
    const json* s = find_shard(failed, "m-alpha", b.name, 1);
    REQUIRE(s != nullptr);
    INFO("shard " << s->dump());
    CHECK(s->at("state") == "failed");
    CHECK(s->at("attempts") == kMaxAttempts);
    const auto error = s->at("last_error").get<std::string>();
    CHECK_THAT(error, Catch::Contains("exit code 3"));
    CHECK_THAT(error, Catch::Contains("injected failure: m-alpha/" + b.name + " shard 1"));
    REQUIRE(s->contains("history"));  // every failed attempt is on record
    CHECK(s->at("history").size() == kMaxAttempts);

    const json* garbage = find_shard(failed, "m-beta", b.name, 0);
    REQUIRE(garbage != nullptr);
    CHECK(garbage->at("attempts") == kMaxAttempts);
    CHECK_THAT(garbage->at("last_error").get<std::string>(), Catch::Contains("unparsable output"));
  }
  CHECK(api.metric("evald_shards_failed_total") == 4);
  CHECK(api.metric("evald_shard_attempts_failed_total") == 4 * kMaxAttempts);

  // The leaderboard keeps the succeeded shards' means and says the cells are incomplete.
  const auto results = api.results(id);
  INFO(results.dump());
  CHECK(results.at("state") == "failed");
  for (const auto& row : results.at("models")) {
    const TestModel& m = row.at("name") == "m-alpha" ? models[0] : models[1];
    const int64_t failed_index = m.name == "m-alpha" ? 1 : 0;
    for (const auto& b : kBenchmarks) {
      const auto& score = row.at("scores").at(b.name);
      const int64_t start = failed_index * b.shard_size;
      const int64_t end = std::min(b.examples, start + b.shard_size);
      const int64_t scored = b.examples - (end - start);
      const int64_t correct =
          expected_correct(m, b, 0, b.examples) - expected_correct(m, b, start, end);
      CHECK(score.at("complete") == false);
      CHECK(score.at("count") == scored);
      CHECK(score.at("value").get<double>() ==
            Approx(static_cast<double>(correct) / static_cast<double>(scored)).epsilon(1e-12));
    }
  }
}

TEST_CASE("failures: a runner timeout is a failed attempt naming the timeout", "[integration]") {
  const std::vector<TestModel> models = {{"m-alpha", 1, 5, {{"hang_shards", {0}}}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 20, 10, 0, "accuracy", true, {}}};
  TestCluster cluster;
  const auto api = cluster.api();
  const auto id = api.submit(make_spec("timeout", models, benchmarks, exec_runner(2.0), 1));
  api.wait_for_state(id, "failed", 30s);
  const auto failed = api.shards(id, "failed").at("shards");
  REQUIRE(failed.size() == 1);
  CHECK(failed[0].at("index") == 0);
  CHECK_THAT(failed[0].at("last_error").get<std::string>(), Catch::Contains("timeout"));
  CHECK(api.shards(id, "succeeded").at("shards").size() == 1);
}

TEST_CASE("failures: a worker killed under a shard is lost and the attempt fails",
          "[integration]") {
  // The runner SIGKILLs the worker that runs it. One slot per worker, so nothing else is lost.
  ClusterOptions options;
  options.slots = 1;
  TestCluster cluster(options);
  const auto api = cluster.api();
  const std::vector<TestModel> models = {{"m-alpha", 1, 5, {{"crash_worker_shards", {0}}}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 10, 10, 0, "accuracy", true, {}}};
  const auto id = api.submit(make_spec("crash", models, benchmarks, exec_runner(), 1));
  api.wait_for_state(id, "failed", 30s);
  const auto shard = api.shards(id).at("shards").at(0);
  INFO("shard " << shard.dump());
  const std::string worker =
      shard.at("last_error").get<std::string>().substr(std::string("worker lost: ").size());
  CHECK_THAT(shard.at("last_error").get<std::string>(), Catch::StartsWith("worker lost: w"));
  Worker& crashed = cluster.worker(worker == "w1" ? 0 : 1);
  Worker& survivor = cluster.worker(worker == "w1" ? 1 : 0);
  CHECK(crashed.process().wait_exit(5s) == std::optional<int>(128 + SIGKILL));
  CHECK(survivor.running());
  CHECK(api.metric("evald_workers_lost_total") == 1);
  // The same worker started again is welcomed back under its name.
  crashed.restart();
  api.wait_for_workers(2);
}

TEST_CASE("failures: rerun --failed after removing the cause gives a clean run's numbers",
          "[integration]") {
  TestCluster cluster;
  const auto cause = cluster.dir() / "broken-model";
  std::ofstream(cause) << "while this file exists, m-beta fails\n";
  const std::vector<TestModel> models = {
      {"m-alpha", 1, 5, {}},
      {"m-beta", 2, 3, {{"fail_until_file", cause.string()}}},
      {"m-gamma", 3, 4, {}},
  };
  constexpr int kMaxAttempts = 2;
  const auto api = cluster.api();
  const auto id = api.submit(make_spec("rerun", models, kBenchmarks, exec_runner(), kMaxAttempts));
  const auto failed_state = api.wait_for_state(id, "failed", 45s);
  const int64_t beta_shards = kBenchmarks[0].shard_count() + kBenchmarks[1].shard_count();
  CHECK(failed_state.at("shards").at("failed") == beta_shards);
  const auto failed_shards = api.shards(id, "failed").at("shards");  // a copy: not a temporary
  REQUIRE(failed_shards.size() == static_cast<size_t>(beta_shards));
  for (const auto& s : failed_shards) {
    CHECK(s.at("model") == "m-beta");
    CHECK_THAT(s.at("last_error").get<std::string>(), Catch::Contains("broken-model exists"));
  }
  // No score for m-beta at all: it ranks last with a null average (docs/results.md).
  const auto partial = api.results(id);
  INFO(partial.dump());
  CHECK(partial.at("models").back().at("name") == "m-beta");
  CHECK(partial.at("models").back().at("average").is_null());

  // Fix the cause, as a user would, then rerun what failed.
  std::filesystem::remove(cause);
  const auto rerun = run_command(
      bin_dir() / "evalctl",
      {"--server", cluster.coordinator().http_url(), "--json", "rerun", id, "--failed"});
  INFO("rerun: " << rerun.out << rerun.err);
  REQUIRE(rerun.exit_code == 0);
  CHECK(json::parse(rerun.out).at("requeued") == beta_shards);
  // The campaign is running again before the reply (or already done: the shards are quick).
  const auto after = api.campaign(id).at("state");
  CHECK((after == "running" || after == "succeeded"));

  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), models, kBenchmarks);
  const auto shards = api.shards(id).at("shards");
  REQUIRE(static_cast<int64_t>(shards.size()) == total_shards(models, kBenchmarks));
  for (const auto& s : shards) {
    INFO("shard " << s.dump());
    CHECK(s.at("state") == "succeeded");
    CHECK(s.at("attempts") == 1);  // a rerun starts a fresh budget
    if (s.at("model") == "m-beta") CHECK(s.at("total_attempts") == kMaxAttempts + 1);
  }
  // Rerunning a succeeded campaign's failed shards selects nothing.
  const auto nothing = api.post("/v1/campaigns/" + id + "/rerun", {{"failed", true}});
  CHECK(nothing.at("requeued") == 0);
  CHECK(api.campaign(id).at("state") == "succeeded");
}

}  // namespace
