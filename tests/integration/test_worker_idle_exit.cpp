// evald-worker --idle-exit-s on the real binaries: an autoscaled worker leaves by itself once it
// has had nothing to do for that long (no shard running, no result waiting for its ACK), so its
// node goes back to the pool (docs/autoscaling.md). Time spent running shards is never idle time,
// and a worker without the flag waits for work forever.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "tests/integration/integration.hpp"
#include "tests/integration/runner_trace.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

constexpr int64_t kHeartbeatMs = 100;

ClusterOptions no_workers() {
  ClusterOptions options;
  options.workers = 0;
  options.worker_heartbeat_ms = kHeartbeatMs;
  options.coordinator.heartbeat_ms = kHeartbeatMs;
  return options;
}

Worker& add_worker(Cluster& cluster, std::vector<std::string> extra_args) {
  WorkerOptions options = cluster.worker_defaults();
  options.slots = 1;
  options.labels = "pool=idle-test";
  options.extra_args = std::move(extra_args);
  return cluster.add_worker(options);
}

}  // namespace

TEST_CASE("idle exit: a worker runs its shards to the end, then leaves after --idle-exit-s",
          "[integration]") {
  TestCluster cluster(no_workers());
  const auto api = cluster.api();
  // Each shard runs 1.5 s, longer than the idle limit: were running time counted as idle, the
  // worker would drain during the first shard and the other two would never run.
  const std::vector<TestModel> models = {{"m-alpha", 1, 4, {{"sleep_ms", 1500}}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 30, 10, 2, "accuracy", true, {}}};
  // Submitted before the worker starts, so its idle clock never runs out before the first
  // ASSIGN, however slow the machine is to start it.
  const auto id = api.submit(make_spec("idle-exit", models, benchmarks));
  Worker& w1 = add_worker(cluster, {"--idle-exit-s", "1"});
  api.wait_for_state(id, "succeeded", 30s);
  const auto done_at = SteadyClock::now();
  check_results(api.results(id), models, benchmarks);
  for (const auto& s : shard_list(api, id)) {
    INFO("shard " << s.dump());
    CHECK(s.at("worker") == "w1");
    CHECK(s.at("attempts") == 1);
    CHECK(s.at("total_attempts") == 1);
  }

  // Nothing left to do: it drains and exits 0 about a second later.
  const auto code = w1.process().wait_exit(15s);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  CHECK(SteadyClock::now() - done_at < 10s);
  const std::string log = read_file(cluster.log_dir() / "worker-w1.log");
  CHECK_THAT(log, Catch::Contains("drain_started reason=idle idle_s=1 running=0 unacked=0"));
  CHECK_THAT(log, Catch::Contains("worker_stopped assigned=3"));
  CHECK_THAT(log, Catch::Contains("goodbye sent=true"));
  CHECK(api.metric("evald_shards_completed_total") == 3.0);
  // Its GOODBYE retired it at once: it left, it was not lost (no alert for a scale-down).
  CHECK(wait_until([&] { return api.metric("evald_workers_left_total") == 1.0; }, 10s));
  CHECK(api.metric("evald_worker_losses_total") == 0.0);
  const auto workers = api.workers();
  REQUIRE(workers.size() == 1);
  CHECK(workers[0].at("state") == "left");
  CHECK_THAT(read_file(cluster.log_dir() / "coordinator.log"),
             Catch::Contains("worker_left worker=w1 state=draining unreported=0"));
}

TEST_CASE("idle exit: a worker never given work leaves, one without the flag stays",
          "[integration]") {
  TestCluster cluster(no_workers());
  // Before the leaver starts: its idle clock starts with it.
  const auto started = SteadyClock::now();
  Worker& leaver = add_worker(cluster, {"--idle-exit-s", "1"});
  Worker& stayer = add_worker(cluster, {});
  const auto api = cluster.api();
  const auto code = leaver.process().wait_exit(15s);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  CHECK(SteadyClock::now() - started >= 500ms);
  // The coordinator heard it leave: it no longer counts as an idle worker of its kind.
  CHECK(wait_until(
      [&] {
        return api.metric("evald_workers_idle", {{"labels", "pool=idle-test"}}) == 1.0;
      },
      15s));
  CHECK(stayer.running());
  CHECK_THAT(read_file(cluster.log_dir() / ("worker-" + leaver.name() + ".log")),
             Catch::Contains("drain_started reason=idle"));
  CHECK_THAT(read_file(cluster.log_dir() / ("worker-" + stayer.name() + ".log")),
             !Catch::Contains("drain_started"));
}

TEST_CASE("idle exit: a bad --idle-exit-s is a usage error naming the flag", "[integration]") {
  const auto result = run_command(
      bin_dir() / "evald-worker",
      {"--coordinator", "tcp://127.0.0.1:9", "--idle-exit-s", "-1", "--gpus", "none"}, 10s);
  CHECK(result.exit_code == 2);
  CHECK_THAT(result.err, Catch::Contains("--idle-exit-s: must be between 0 and 2592000, got -1"));
}
