// SIGTERM = graceful stop (docs/binaries.md), on the real binaries:
//  - a worker told to stop sends DRAIN, takes no new shards, finishes what it runs (within
//    --drain-timeout-ms) and exits 0; a shard that outlives the drain timeout is killed and runs
//    again on another worker;
//  - the coordinator exits 0 with "stopped_cleanly", and a restart on the same data dir shows
//    every acknowledged campaign in the state it had.
// The runner's trace files (`trace_dir` in evald-test-runner) tell the test when a shard is
// mid-run, so no step waits on a fixed sleep.
#include <signal.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "tests/integration/integration.hpp"
#include "tests/integration/runner_trace.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

constexpr int64_t kHeartbeatMs = 200;

// A coordinator with short heartbeats and no workers yet: the tests add workers with their own
// --drain-timeout-ms. No test here waits for a worker to be declared lost, and one that is (a
// draining worker whose heartbeats a busy machine delays past the timeout) would turn a handed-back
// shard into a lost attempt: the timeout is far beyond any scheduling delay, not 5 heartbeats.
ClusterOptions fast_cluster() {
  ClusterOptions options;
  options.workers = 0;
  options.worker_heartbeat_ms = kHeartbeatMs;
  options.coordinator.heartbeat_ms = kHeartbeatMs;
  options.coordinator.worker_timeout_ms = 30000;
  return options;
}

Worker& add_worker(Cluster& cluster, int64_t drain_timeout_ms) {
  WorkerOptions options = cluster.worker_defaults();
  options.slots = 1;
  options.extra_args = {"--drain-timeout-ms", std::to_string(drain_timeout_ms)};
  return cluster.add_worker(options);
}

// The running shard whose first-attempt runner has started, and the worker that runs it.
std::pair<ShardRef, std::string> wait_for_started_shard(const Api& api, const std::string& id,
                                                        const fs::path& trace_dir,
                                                        const std::string& worker = "") {
  std::optional<std::pair<ShardRef, std::string>> found;
  const bool ok = wait_until(
      [&] {
        for (const auto& s : shard_list(api, id, "running")) {
          if (!s.at("worker").is_string()) continue;
          const auto on = s.at("worker").get<std::string>();
          if (!worker.empty() && on != worker) continue;
          if (fs::exists(trace_file(trace_dir, ref_of(s), 1, "started"))) {
            found.emplace(ref_of(s), on);
            return true;
          }
        }
        return false;
      },
      20s, 5ms);
  REQUIRE(ok);
  return *found;
}

TEST_CASE("graceful stop: a worker drained by SIGTERM finishes its shard and takes no new one",
          "[integration]") {
  constexpr int64_t kDrainTimeoutMs = 10000;
  TestCluster cluster(fast_cluster());
  add_worker(cluster, kDrainTimeoutMs);
  add_worker(cluster, kDrainTimeoutMs);
  const auto api = cluster.api();
  api.wait_for_workers(2);
  const fs::path trace = make_trace_dir(cluster);
  const std::vector<TestModel> models = {
      {"m-alpha", 1, 5, {{"sleep_ms", 1000}, {"trace_dir", trace.string()}}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 60, 10, 3, "accuracy", true, {}}};
  const int64_t total = total_shards(models, benchmarks);
  const auto id = api.submit(make_spec("drain", models, benchmarks));

  const auto [victim, on] = wait_for_started_shard(api, id, trace, "w1");
  INFO("w1 runs " << describe(victim));
  // What w1 has run so far (one slot: nothing else can start on it before the SIGTERM lands).
  std::set<ShardRef> before;
  for (const auto& s : shard_list(api, id)) {
    if (s.at("worker") == "w1") before.insert(ref_of(s));
  }
  REQUIRE(before.count(victim) == 1);

  Worker& w1 = cluster.worker(0);
  w1.process().signal(SIGTERM);
  const auto signalled_at = SteadyClock::now();
  // DRAIN reaches the coordinator while the shard still runs.
  REQUIRE(
      wait_until([&] { return worker_json(api, "w1").value("state", "") == "draining"; }, 5s, 5ms));
  CHECK_FALSE(fs::exists(trace_file(trace, victim, 1, "finished")));
  CHECK(worker_json(api, "w1").at("running") == 1);

  const auto code = w1.process().wait_exit(std::chrono::milliseconds(kDrainTimeoutMs + 5000));
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  CHECK(SteadyClock::now() - signalled_at < std::chrono::milliseconds(kDrainTimeoutMs));

  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), models, benchmarks);
  const json shards = shard_list(api, id);
  REQUIRE(static_cast<int64_t>(shards.size()) == total);
  for (const auto& s : shards) {
    INFO("shard " << s.dump());
    CHECK(s.at("state") == "succeeded");
    CHECK(s.at("attempts") == 1);
    CHECK(s.at("total_attempts") == 1);
    CHECK(s.at("count") == s.at("end").get<int64_t>() - s.at("start").get<int64_t>());
    // The shard it was running is its result, counted; everything after the SIGTERM ran on w2.
    CHECK(s.at("worker") == (before.count(ref_of(s)) == 1 ? "w1" : "w2"));
  }
  CHECK(api.metric("evald_shards_completed_total") == static_cast<double>(total));
  CHECK_THAT(read_file(cluster.log_dir() / "worker-w1.log"), Catch::Contains("drain_started"));
}

TEST_CASE("graceful stop: a shard still running at the drain timeout runs again elsewhere",
          "[integration]") {
  constexpr int64_t kDrainTimeoutMs = 500;
  TestCluster cluster(fast_cluster());
  add_worker(cluster, kDrainTimeoutMs);
  add_worker(cluster, kDrainTimeoutMs);
  const auto api = cluster.api();
  api.wait_for_workers(2);
  const fs::path trace = make_trace_dir(cluster);
  // The first attempt hangs; a retry succeeds.
  const std::vector<TestModel> models = {
      {"m-alpha", 2, 3, {{"hang_attempts", {1}}, {"trace_dir", trace.string()}}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 10, 10, 1, "accuracy", true, {}}};
  const auto id = api.submit(make_spec("drain-timeout", models, benchmarks));

  const auto [hung, on] = wait_for_started_shard(api, id, trace);
  const std::string other = on == "w1" ? "w2" : "w1";
  INFO(on << " runs " << describe(hung));
  pid_t runner = 0;
  std::ifstream(trace_file(trace, hung, 1, "started")) >> runner;
  REQUIRE(runner > 0);
  Worker& stopping = cluster.worker(on == "w1" ? 0 : 1);
  stopping.process().signal(SIGTERM);
  const auto signalled_at = SteadyClock::now();

  const auto code = stopping.process().wait_exit(10s);
  REQUIRE(code.has_value());
  const auto took = SteadyClock::now() - signalled_at;
  CHECK(*code == 0);
  CHECK(took >= std::chrono::milliseconds(kDrainTimeoutMs));
  CHECK(took < 5s);
  // The hung runner did not outlive its worker.
  CHECK(wait_until([&] { return process_gone(runner); }, 5s));

  api.wait_for_state(id, "succeeded", 30s);
  check_results(api.results(id), models, benchmarks);
  const json s = find_shard(api, id, hung);
  INFO("shard " << s.dump());
  CHECK(s.at("worker") == other);
  // Handed back, not failed: the shard kept its attempt budget (the retry is attempt 1 of 3),
  // and its runner's hang (attempt 1 of the runner's own count) did not recur.
  CHECK(s.at("attempts") == 1);
  CHECK(s.at("total_attempts") == 2);
  REQUIRE(s.contains("history"));
  REQUIRE(s.at("history").size() == 1);
  const auto& first = s.at("history").at(0);
  CHECK(first.at("worker") == on);
  CHECK(first.at("outcome") == "handed_back");
  CHECK_THAT(first.at("error").get<std::string>(), Catch::Contains("drain timeout"));
  // No attempt was charged to a lost worker: the drained worker handed its shard back. (Once it
  // has exited, the coordinator may list it as lost; that costs no shard anything.)
  const auto all_shards = api.shards(id);
  for (const auto& each : all_shards.at("shards")) {
    for (const auto& attempt : each.value("history", nlohmann::json::array())) {
      INFO("shard " << each.dump());
      CHECK(attempt.at("outcome") != "lost");
    }
  }
}

TEST_CASE("graceful stop: a coordinator stopped by SIGTERM keeps every acknowledged campaign",
          "[integration]") {
  ClusterOptions options;
  options.worker_heartbeat_ms = kHeartbeatMs;
  options.coordinator.heartbeat_ms = kHeartbeatMs;
  TestCluster cluster(options);
  const auto api = cluster.api();
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 30, 10, 2, "accuracy", true, {}}};
  const std::vector<TestModel> good = {{"m-alpha", 1, 5, {}}, {"m-beta", 2, 3, {}}};

  const auto succeeded = api.submit(make_spec("will-succeed", good, benchmarks));
  api.wait_for_state(succeeded, "succeeded", 30s);
  const auto failed = api.submit(make_spec("will-fail", {{"m-alpha", 1, 5, {{"fail_shards", {0}}}}},
                                           benchmarks, exec_runner(), 1));
  api.wait_for_state(failed, "failed", 30s);
  const auto cancelled = api.submit(
      make_spec("will-cancel", {{"m-alpha", 1, 5, {{"hang_shards", {0, 1, 2}}}}}, benchmarks));
  api.post("/v1/campaigns/" + cancelled + "/cancel", json::object());
  const auto hanging = api.submit(
      make_spec("still-running", {{"m-alpha", 1, 5, {{"hang_shards", {0, 1, 2}}}}}, benchmarks));
  REQUIRE(wait_until(
      [&] { return api.campaign(hanging).at("shards").at("running").get<int64_t>() > 0; }, 10s));
  // Acknowledged just before the SIGTERM.
  const auto last = api.submit(make_spec("last-second", good, benchmarks));

  const std::map<std::string, std::string> expected = {
      {succeeded, "succeeded"}, {failed, "failed"}, {cancelled, "cancelled"}, {hanging, "running"}};
  CHECK(cluster.coordinator().terminate() == 0);
  CHECK_THAT(read_file(cluster.log_dir() / "coordinator.log"), Catch::Contains("stopped_cleanly"));

  cluster.coordinator().restart();
  const auto campaigns = api.get("/v1/campaigns").at("campaigns");
  INFO("campaigns after the restart: " << campaigns.dump());
  std::map<std::string, std::string> seen;
  for (const auto& c : campaigns) seen[c.at("id")] = c.at("state");
  CHECK(seen.size() == 5);
  for (const auto& [id, state] : expected) {
    INFO("campaign " << id);
    REQUIRE(seen.count(id) == 1);
    CHECK(seen[id] == state);
  }
  REQUIRE(seen.count(last) == 1);
  CHECK((seen[last] == "running" || seen[last] == "succeeded"));
  check_results(api.results(succeeded), good, benchmarks);
  CHECK(api.campaign(failed).at("shards").at("failed") == 1);
  CHECK(api.campaign(cancelled).at("shards").at("cancelled") == 3);
  // The campaign submitted last finishes after the restart, with its exact numbers.
  api.wait_for_workers(2);
  api.wait_for_state(last, "succeeded", 30s);
  check_results(api.results(last), good, benchmarks);
  // Stop the hanging runners, so the workers stop at once at the end of the test.
  api.post("/v1/campaigns/" + hanging + "/cancel", json::object());
}

}  // namespace
