// "Nothing lost, nothing counted twice" (issue 4): the failures a cluster meets in real life,
// played on the real binaries, each ending with the numbers of a clean run.
//
//  - a worker killed with -9 under a shard, or frozen (SIGSTOP) past --worker-timeout-ms: the
//    shard runs again elsewhere; a late result of the given-up attempt is a stale attempt;
//  - the coordinator killed with -9 while shards finish: their results wait in the workers'
//    outboxes and count once after the restart, with no second copy dispatched;
//  - a shard that kills its worker every time ends failed after max_attempts;
//  - a worker restarted with a finished result in its outbox delivers it, and it counts once,
//    also when the coordinator was frozen meanwhile and gets a second copy from the dead worker;
//  - cancel kills the runner's whole process group, grandchildren included.
//
// The runner (tests/integration/runners/evald-test-runner) leaves trace files (`trace_dir`): a
// test waits for "runner started" or "runner finished" instead of sleeping, which is what makes
// the interleavings below deterministic. Short heartbeats (200 ms) and worker timeouts keep every
// case well under a minute.
#include <signal.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
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

ClusterOptions fast_cluster(size_t workers, uint32_t slots, int64_t worker_timeout_ms = 1000) {
  ClusterOptions options;
  options.workers = workers;
  options.slots = slots;
  options.worker_heartbeat_ms = kHeartbeatMs;
  options.coordinator.heartbeat_ms = kHeartbeatMs;
  options.coordinator.worker_timeout_ms = worker_timeout_ms;
  return options;
}

// One shard attempt as GET /v1/workers lists a worker's leases.
struct Lease : ShardRef {
  uint64_t attempt_id = 0;
};

std::string describe(const Lease& l) {
  return l.model + "/" + l.benchmark + "/" + std::to_string(l.index) +
         " attempt_id=" + std::to_string(l.attempt_id);
}

std::vector<Lease> leases_of(const Api& api, const std::string& worker) {
  std::vector<Lease> out;
  const json w = worker_json(api, worker);
  if (w.is_null() || !w.contains("shards")) return out;
  for (const auto& s : w.at("shards")) {
    out.push_back(Lease{{s.at("model").get<std::string>(), s.at("benchmark").get<std::string>(),
                         s.at("shard").get<int64_t>()},
                        s.at("attempt_id").get<uint64_t>()});
  }
  return out;
}

// Waits until `worker` holds a lease whose runner (first attempt) has started, so that the runner
// is known to be mid-run (it sleeps or hangs after writing the trace file).
Lease wait_for_started_lease(const Api& api, const std::string& worker, const fs::path& trace_dir,
                             std::chrono::milliseconds timeout = 20s) {
  std::optional<Lease> found;
  const bool ok = wait_until(
      [&] {
        for (const auto& l : leases_of(api, worker)) {
          if (fs::exists(trace_file(trace_dir, l, 1, "started"))) {
            found = l;
            return true;
          }
        }
        return false;
      },
      timeout, 5ms);
  INFO("worker " << worker << ": " << worker_json(api, worker).dump());
  REQUIRE(ok);
  return *found;
}

// Waits until exactly `count` shards of the campaign are running and each one's runner (first
// attempt) has started; returns those shards.
json wait_for_running_runners(const Api& api, const std::string& id, const fs::path& trace_dir,
                              size_t count) {
  json running;
  const bool ok = wait_until(
      [&] {
        running = api.shards(id, "running").at("shards");
        if (running.size() != count) return false;
        for (const auto& s : running) {
          if (!fs::exists(trace_file(trace_dir, ref_of(s), 1, "started"))) {
            return false;
          }
        }
        return true;
      },
      20s, 5ms);
  INFO("running: " << running.dump());
  REQUIRE(ok);
  return running;
}

std::vector<json> history_with(const json& shard, const std::string& outcome) {
  std::vector<json> out;
  if (!shard.contains("history")) return out;
  for (const auto& h : shard.at("history")) {
    if (h.at("outcome") == outcome) out.push_back(h);
  }
  return out;
}

size_t count_files(const fs::path& dir, const std::string& suffix) {
  size_t n = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const auto name = entry.path().filename().string();
    if (name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      ++n;
    }
  }
  return n;
}

fs::path outbox_of(const Cluster& cluster, const std::string& worker) {
  return cluster.dir() / ("work-" + worker) / "outbox";
}

// Results held in the outboxes of workers w1 and w2.
size_t held_results(const Cluster& cluster) {
  return count_files(outbox_of(cluster, "w1"), ".result") +
         count_files(outbox_of(cluster, "w2"), ".result");
}

// SIGSTOP for the life of a scope: a failed REQUIRE must not leave a daemon frozen (the cluster's
// teardown would then wait out its whole SIGTERM grace).
class Frozen {
 public:
  explicit Frozen(ChildProcess& process) : process_(process) { process_.stop(); }
  ~Frozen() {
    if (!resumed_) process_.resume();
  }
  Frozen(const Frozen&) = delete;
  Frozen& operator=(const Frozen&) = delete;
  void resume() {
    process_.resume();
    resumed_ = true;
  }

 private:
  ChildProcess& process_;
  bool resumed_ = false;
};

// Every shard succeeded and is counted once: its count is its range, and the coordinator counted
// exactly `total` completions.
void check_counted_once(const Api& api, const std::string& id, int64_t total) {
  const json shards = shard_list(api, id);
  REQUIRE(static_cast<int64_t>(shards.size()) == total);
  for (const auto& s : shards) {
    INFO("shard " << s.dump());
    CHECK(s.at("state") == "succeeded");
    CHECK(s.value("count", int64_t{-1}) ==
          s.at("end").get<int64_t>() - s.at("start").get<int64_t>());
  }
  CHECK(api.metric("evald_shards_completed_total") == static_cast<double>(total));
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("nothing lost: a worker killed with -9 mid-shard has its shard run elsewhere",
          "[integration]") {
  TestCluster cluster(fast_cluster(2, 1));
  const auto api = cluster.api();
  const fs::path trace = make_trace_dir(cluster);
  const json faults = {{"sleep_ms", 400}, {"trace_dir", trace.string()}};
  const std::vector<TestModel> models = {{"m-alpha", 1, 5, faults}, {"m-beta", 2, 3, faults}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 40, 10, 1, "accuracy", true, {}},
                                                 {"b-two", 15, 10, 3, "accuracy", true, {}}};
  const int64_t total = total_shards(models, benchmarks);
  const auto id = api.submit(make_spec("worker-kill", models, benchmarks));

  const Lease victim = wait_for_started_lease(api, "w1", trace);
  INFO("victim " << describe(victim));
  cluster.worker(0).kill();
  const auto killed_at = SteadyClock::now();

  // The shard goes back to the queue only once w1 has been silent for --worker-timeout-ms
  // (1000 ms; its last heartbeat was at most ~200 ms before the kill), then runs on w2.
  REQUIRE(
      wait_until([&] { return find_shard(api, id, victim).at("total_attempts") == 2; }, 20s, 5ms));
  const auto requeued_after = SteadyClock::now() - killed_at;
  CHECK(requeued_after >= 500ms);

  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), models, benchmarks);
  check_counted_once(api, id, total);

  const json s = find_shard(api, id, victim);
  INFO("victim shard " << s.dump());
  CHECK(s.at("worker") == "w2");
  CHECK(s.at("attempts") == 2);  // the lost attempt used one of max_attempts
  CHECK(s.at("total_attempts") == 2);
  CHECK(s.at("last_error") == "worker lost: w1");
  const auto lost = history_with(s, "lost");
  REQUIRE(lost.size() == 1);
  CHECK(lost[0].at("attempt_id") == victim.attempt_id);
  CHECK(lost[0].at("worker") == "w1");
  CHECK(lost[0].at("error") == "worker lost: w1");
  // Nothing else was disturbed: one slot per worker, so w1 held only the victim.
  for (const auto& other : shard_list(api, id)) {
    if (other.at("model") == victim.model && other.at("benchmark") == victim.benchmark &&
        other.at("index") == victim.index) {
      continue;
    }
    INFO("shard " << other.dump());
    CHECK(other.at("total_attempts") == 1);
    CHECK_FALSE(other.contains("history"));  // no stale result, no other loss
  }
  CHECK(api.metric("evald_workers_lost_total") == 1);
}

TEST_CASE("nothing lost: a frozen worker's late result is stale and never counted",
          "[integration]") {
  TestCluster cluster(fast_cluster(2, 1));
  const auto api = cluster.api();
  const fs::path trace = make_trace_dir(cluster);
  // 600 ms per shard: the frozen worker's runner (a process of its own, not stopped) finishes
  // well inside the freeze, and its result waits in the frozen worker.
  const json faults = {{"sleep_ms", 600}, {"trace_dir", trace.string()}};
  const std::vector<TestModel> models = {{"m-alpha", 1, 5, faults}, {"m-beta", 3, 4, faults}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 30, 10, 2, "accuracy", true, {}},
                                                 {"b-two", 17, 9, 5, "accuracy", true, {}}};
  const int64_t total = total_shards(models, benchmarks);
  const auto id = api.submit(make_spec("worker-freeze", models, benchmarks));

  const Lease victim = wait_for_started_lease(api, "w1", trace);
  INFO("victim " << describe(victim));
  {
    Frozen frozen(cluster.worker(0).process());
    // Past --worker-timeout-ms the coordinator declares w1 lost and gives the shard up...
    REQUIRE(wait_until([&] { return worker_json(api, "w1").value("state", "") == "lost"; }, 10s));
    const json given_up = find_shard(api, id, victim);
    INFO("victim shard after the loss " << given_up.dump());
    REQUIRE(history_with(given_up, "lost").size() == 1);
    // ... while the runner finishes: the frozen worker now holds a result nobody wants.
    REQUIRE(wait_until([&] { return fs::exists(trace_file(trace, victim, 1, "finished")); }, 10s));
    // Resume only once the shard runs elsewhere: a late success of a shard not yet handed out
    // again is that attempt's only result and counts (see the unit tests), so the stale path is
    // taken only when another attempt exists.
    REQUIRE(wait_until([&] { return find_shard(api, id, victim).at("total_attempts") == 2; }, 10s));
    frozen.resume();
  }
  // The late result arrives and is recorded as a stale attempt.
  REQUIRE(wait_until(
      [&] { return api.metric_if_declared("evald_stale_results_total").value_or(0) >= 1; }, 15s));

  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), models, benchmarks);  // every cell's count == examples
  check_counted_once(api, id, total);

  const json s = find_shard(api, id, victim);
  INFO("victim shard " << s.dump());
  CHECK(s.at("total_attempts") == 2);
  const auto stale = history_with(s, "stale");
  REQUIRE(stale.size() == 1);
  CHECK(stale[0].at("attempt_id") == victim.attempt_id);
  CHECK(stale[0].at("worker") == "w1");
  // The history keeps both ends of that attempt: given up ("lost") and its late result ("stale").
  const auto lost = history_with(s, "lost");
  CHECK(lost.size() == 1);
  for (const auto& l : lost) {
    CHECK(l.at("attempt_id") == victim.attempt_id);
    CHECK(l.at("error") == "worker lost: w1");
  }
  CHECK(s.at("last_error") == "worker lost: w1");
  CHECK(api.metric("evald_stale_results_total") >= 1);
  // People see it too: `evalctl shards` lists the given-up attempt and its stale result.
  const auto table = run_command(bin_dir() / "evalctl",
                                 {"--server", cluster.coordinator().http_url(), "shards", id}, 30s);
  INFO("evalctl shards: " << table.out << table.err);
  CHECK(table.exit_code == 0);
  CHECK_THAT(table.out, Catch::Contains("1 lost, 1 stale"));
  // The resumed worker is welcomed back.
  api.wait_for_workers(2);
}

// The two coordinator-restart tests lose no worker: a longer worker timeout (3 s) keeps a worker
// stalled for a second on a busy machine (sanitizers, both cores taken) from being declared lost
// and its shard run twice, which these tests would rightly report as a failure.
constexpr int64_t kNoLossWorkerTimeoutMs = 3000;

TEST_CASE("nothing lost: results finished while the coordinator is down count once",
          "[integration]") {
  TestCluster cluster(fast_cluster(2, 2, kNoLossWorkerTimeoutMs));
  const auto api = cluster.api();
  const fs::path trace = make_trace_dir(cluster);
  // The outage lasts about as long as a shard (the restart follows the last runner's finish):
  // 4.4 s, a realistic time for a coordinator to be restarted by its supervisor. It also puts the
  // restart where the workers' ZeroMQ reconnect backoff (100 ms doubling, capped at 5 s, plus up
  // to 100 ms of jitter per try: tries at ~1.5-1.9 s, ~3.1-3.6 s, ~6.3-6.9 s) is at its widest
  // gap: the workers come back about 2 s after the coordinator does. What is checked below must
  // hold however long they take to come back.
  const json faults = {{"sleep_ms", 4400}, {"trace_dir", trace.string()}};
  const std::vector<TestModel> models = {{"m-alpha", 1, 5, faults}, {"m-beta", 2, 3, faults}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 20, 10, 0, "accuracy", true, {}}};
  const int64_t total = total_shards(models, benchmarks);  // 4 shards on 4 slots
  const auto id = api.submit(make_spec("coordinator-outage", models, benchmarks));

  // All 4 shards running and every runner started (each then sleeps 4.4 s).
  const json running = wait_for_running_runners(api, id, trace, 4);
  INFO("running at the kill: " << running.dump());
  cluster.coordinator().kill();

  // The runners finish during the outage; each result is durable in its worker's outbox.
  REQUIRE(wait_until([&] { return held_results(cluster) == 4; }, 20s));
  for (const auto& s : running) {
    CHECK(fs::exists(trace_file(trace, ref_of(s), 1, "finished")));
  }

  cluster.coordinator().restart();  // same data dir, same ports: the workers find it themselves
  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), models, benchmarks);
  check_counted_once(api, id, total);
  // The held results were delivered and counted: no shard was dispatched a second time.
  for (const auto& s : shard_list(api, id)) {
    INFO("shard " << s.dump());
    CHECK(s.at("attempts") == 1);
    CHECK(s.at("total_attempts") == 1);
    CHECK_FALSE(s.contains("history"));
  }
  CHECK(wait_until([&] { return held_results(cluster) == 0; }, 10s));
}

TEST_CASE("nothing lost: shards still running across a coordinator restart run only once",
          "[integration]") {
  TestCluster cluster(fast_cluster(2, 2, kNoLossWorkerTimeoutMs));
  const auto api = cluster.api();
  const fs::path trace = make_trace_dir(cluster);
  // 6 shards on 4 slots, 5 s each: at the kill 4 runners are mid-run and 2 shards are pending.
  const json faults = {{"sleep_ms", 5000}, {"trace_dir", trace.string()}};
  const std::vector<TestModel> models = {{"m-alpha", 1, 5, faults}, {"m-beta", 2, 3, faults}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 30, 10, 0, "accuracy", true, {}}};
  const int64_t total = total_shards(models, benchmarks);
  REQUIRE(total == 6);
  const auto id = api.submit(make_spec("restart-mid-run", models, benchmarks));

  const json running = wait_for_running_runners(api, id, trace, 4);
  INFO("running at the kill: " << running.dump());
  cluster.coordinator().kill();
  // Restarted at once, while every runner still has seconds to go: the workers reconnect and
  // their hello lists the attempts they still run, which the coordinator takes back as leases.
  cluster.coordinator().restart();
  for (const auto& s : running) {
    CHECK_FALSE(fs::exists(trace_file(trace, ref_of(s), 1, "finished")));
  }
  // Reclaimed (not expired and dispatched again): both workers hold their two leases again. The
  // runners sleep 5 s, well past the workers' reconnect backoff (first tries at ~0.1-1.9 s).
  REQUIRE(wait_until(
      [&] { return leases_of(api, "w1").size() == 2 && leases_of(api, "w2").size() == 2; }, 10s,
      20ms));

  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), models, benchmarks);
  check_counted_once(api, id, total);
  // No second copy of a running shard, and the pending ones ran once too.
  for (const auto& s : shard_list(api, id)) {
    INFO("shard " << s.dump());
    CHECK(s.at("total_attempts") == 1);
    CHECK_FALSE(s.contains("history"));
    CHECK_FALSE(fs::exists(trace_file(trace, ref_of(s), 2, "started")));
  }
}

TEST_CASE("nothing lost: a shard that kills its worker every time ends failed", "[integration]") {
  TestCluster cluster(fast_cluster(2, 1));  // one slot each: a crash takes only that shard down
  const auto api = cluster.api();
  constexpr int kMaxAttempts = 3;
  const std::vector<TestModel> models = {{"m-alpha", 1, 5, {{"crash_worker_shards", {1}}}},
                                         {"m-beta", 2, 3, {}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 40, 10, 1, "accuracy", true, {}}};
  const int64_t total = total_shards(models, benchmarks);
  const auto id =
      api.submit(make_spec("worker-killer", models, benchmarks, exec_runner(), kMaxAttempts));

  // The test is the supervisor (systemd, Kubernetes): a worker that exits is started again with
  // the same name and work dir.
  int deaths = 0;
  auto supervise = [&] {
    for (size_t i = 0; i < cluster.worker_count(); ++i) {
      Worker& w = cluster.worker(i);
      if (w.running()) continue;
      ++deaths;
      CHECK(w.process().exit_code() == std::optional<int>(128 + SIGKILL));
      w.restart();
    }
  };
  std::string state;
  REQUIRE(wait_until(
      [&] {
        supervise();
        state = api.campaign(id).at("state").get<std::string>();
        return state != "running";
      },
      45s));
  CHECK(state == "failed");
  // The last crash may have been noticed by the coordinator before by us.
  REQUIRE(wait_until(
      [&] {
        supervise();
        return deaths >= kMaxAttempts;
      },
      5s));
  CHECK(deaths == kMaxAttempts);  // it did not loop: one crash per attempt, then it stopped

  const json killer = find_shard(api, id, ShardRef{"m-alpha", "b-one", 1});
  INFO("killer shard " << killer.dump());
  CHECK(killer.at("state") == "failed");
  CHECK(killer.at("attempts") == kMaxAttempts);
  CHECK(killer.at("total_attempts") == kMaxAttempts);
  CHECK_THAT(killer.at("last_error").get<std::string>(), Catch::StartsWith("worker lost: w"));
  CHECK(history_with(killer, "lost").size() == kMaxAttempts);
  const auto campaign = api.campaign(id);
  CHECK(campaign.at("shards").at("failed") == 1);
  CHECK(campaign.at("shards").at("succeeded") == total - 1);
  for (const auto& s : shard_list(api, id, "succeeded")) {
    INFO("shard " << s.dump());
    CHECK(s.at("total_attempts") == 1);
    CHECK(s.at("count") == s.at("end").get<int64_t>() - s.at("start").get<int64_t>());
  }
  CHECK(api.metric("evald_shards_failed_total") == 1);
  CHECK(api.metric("evald_shard_attempts_failed_total") == kMaxAttempts);
  CHECK(api.metric("evald_shards_completed_total") == static_cast<double>(total - 1));
  // m-alpha's b-one cell holds its three good shards only, and says it is incomplete.
  const auto results = api.results(id);
  INFO("results " << results.dump());
  for (const auto& row : results.at("models")) {
    const auto& score = row.at("scores").at("b-one");
    if (row.at("name") == "m-alpha") {
      const int64_t correct = expected_correct(models[0], benchmarks[0], 0, 40) -
                              expected_correct(models[0], benchmarks[0], 10, 20);
      CHECK(score.at("count") == 30);
      CHECK(score.at("complete") == false);
      CHECK(score.at("value").get<double>() == Approx(correct / 30.0).epsilon(1e-12));
    } else {
      CHECK(score.at("count") == 40);
      CHECK(score.at("complete") == true);
      CHECK(score.at("value").get<double>() ==
            Approx(expected_score(models[1], benchmarks[0])).epsilon(1e-12));
    }
  }
}

TEST_CASE("nothing lost: a restarted worker delivers the result in its outbox once",
          "[integration]") {
  TestCluster cluster(fast_cluster(1, 1));
  const auto api = cluster.api();
  const fs::path trace = make_trace_dir(cluster);
  const json faults = {{"sleep_ms", 800}, {"trace_dir", trace.string()}};
  const std::vector<TestModel> models = {{"m-alpha", 1, 5, faults}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 30, 10, 4, "accuracy", true, {}}};
  const int64_t total = total_shards(models, benchmarks);
  const auto id = api.submit(make_spec("worker-restart", models, benchmarks));

  const Lease held = wait_for_started_lease(api, "w1", trace);
  INFO("held " << describe(held));
  // The coordinator goes down while the runner finishes: with nobody connected the worker cannot
  // send the result, so the outbox on disk is the only copy...
  cluster.coordinator().kill();
  REQUIRE(wait_until([&] { return count_files(outbox_of(cluster, "w1"), ".result") == 1; }, 10s));
  CHECK(fs::exists(trace_file(trace, held, 1, "finished")));
  // ... and then the worker dies too. Both come back: same data dir, same name and work dir.
  cluster.worker(0).kill();
  cluster.coordinator().restart();
  cluster.worker(0).restart();

  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), models, benchmarks);
  check_counted_once(api, id, total);
  const json s = find_shard(api, id, held);
  INFO("held shard " << s.dump());
  CHECK(s.at("attempts") == 1);
  CHECK(s.at("total_attempts") == 1);  // delivered from the outbox, not run again
  CHECK_FALSE(s.contains("history"));  // no lost, orphaned or stale attempt
  CHECK_THAT(read_file(cluster.log_dir() / "worker-w1.log"),
             Catch::Contains("outbox_loaded results=1"));
  // ACKed, so forgotten.
  CHECK(wait_until([&] { return count_files(outbox_of(cluster, "w1"), ".result") == 0; }, 10s));
}

TEST_CASE("nothing lost: a worker restarted while the coordinator is frozen counts once",
          "[integration]") {
  // A worker timeout well above the freeze below, so the coordinator, when it resumes, does not
  // take its own pause for silence of the workers.
  TestCluster cluster(fast_cluster(1, 1, 4000));
  const auto api = cluster.api();
  const fs::path trace = make_trace_dir(cluster);
  const json faults = {{"sleep_ms", 800}, {"trace_dir", trace.string()}};
  const std::vector<TestModel> models = {{"m-alpha", 1, 5, faults}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 30, 10, 4, "accuracy", true, {}}};
  const int64_t total = total_shards(models, benchmarks);
  const auto id = api.submit(make_spec("worker-restart-frozen", models, benchmarks));

  const Lease held = wait_for_started_lease(api, "w1", trace);
  INFO("held " << describe(held));
  {
    // The coordinator is frozen while the runner finishes: the worker writes the result to its
    // outbox and sends it (into the frozen coordinator's socket buffer); nobody ACKs it.
    Frozen frozen(cluster.coordinator().process());
    REQUIRE(wait_until([&] { return count_files(outbox_of(cluster, "w1"), ".result") == 1; }, 10s));
    CHECK(fs::exists(trace_file(trace, held, 1, "finished")));
    cluster.worker(0).kill();
    cluster.worker(0).restart();  // same name, same work dir: it loads the outbox
    frozen.resume();
  }
  // Two copies of one attempt may now arrive (the dead worker's, still in the coordinator's socket
  // buffer, and the restarted worker's): whichever comes second is stale.
  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), models, benchmarks);
  check_counted_once(api, id, total);
  const json s = find_shard(api, id, held);
  INFO("held shard " << s.dump());
  CHECK(s.at("attempts") == 1);
  CHECK(s.at("total_attempts") == 1);
  CHECK(history_with(s, "lost").empty());
  CHECK(history_with(s, "stale").size() <= 1);
  CHECK_THAT(read_file(cluster.log_dir() / "worker-w1.log"),
             Catch::Contains("outbox_loaded results=1"));
  CHECK(wait_until([&] { return count_files(outbox_of(cluster, "w1"), ".result") == 0; }, 10s));
}

TEST_CASE("nothing lost: cancel kills the runner's process group and its grandchildren",
          "[integration]") {
  TestCluster cluster(fast_cluster(1, 2));
  const auto api = cluster.api();
  const fs::path trace = make_trace_dir(cluster);
  const std::vector<TestModel> models = {
      {"m-alpha",
       1,
       5,
       {{"hang_shards", {0, 1}}, {"spawn_child_shards", {0, 1}}, {"trace_dir", trace.string()}}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 20, 10, 0, "accuracy", true, {}}};
  const auto id = api.submit(make_spec("cancel-tree", models, benchmarks));

  std::vector<pid_t> runners;
  std::vector<pid_t> grandchildren;
  for (int64_t index : {0, 1}) {
    const auto pids = trace_file(trace, ShardRef{"m-alpha", "b-one", index}, 1, "pids");
    REQUIRE(wait_until([&] { return fs::exists(pids); }, 20s));
    std::ifstream in(pids);
    pid_t runner = 0;
    pid_t child = 0;
    REQUIRE(static_cast<bool>(in >> runner >> child));
    runners.push_back(runner);
    grandchildren.push_back(child);
  }
  for (size_t i = 0; i < runners.size(); ++i) {
    REQUIRE_FALSE(process_gone(runners[i], true));
    REQUIRE_FALSE(process_gone(grandchildren[i], true));
  }

  const auto cancel =
      run_command(bin_dir() / "evalctl",
                  {"--server", cluster.coordinator().http_url(), "--json", "cancel", id});
  INFO("evalctl cancel: " << cancel.out << cancel.err);
  REQUIRE(cancel.exit_code == 0);
  CHECK(json::parse(cancel.out).at("cancelled") == 2);

  // The runners (the worker's children, which it must reap) and the `sleep` grandchildren they
  // spawned (orphans, reaped by init) are all gone within a few seconds.
  const bool all_gone = wait_until(
      [&] {
        for (size_t i = 0; i < runners.size(); ++i) {
          if (!process_gone(runners[i], false) || !process_gone(grandchildren[i], true)) {
            return false;
          }
        }
        return true;
      },
      5s);
  for (size_t i = 0; i < runners.size(); ++i) {
    INFO("runner " << runners[i] << " grandchild " << grandchildren[i]);
    CHECK(process_gone(runners[i], false));
    CHECK(process_gone(grandchildren[i], true));
  }
  CHECK(all_gone);

  const auto campaign = api.campaign(id);
  CHECK(campaign.at("state") == "cancelled");
  CHECK(campaign.at("shards").at("cancelled") == 2);
  for (const auto& s : shard_list(api, id)) {
    INFO("shard " << s.dump());
    CHECK(s.at("state") == "cancelled");
    CHECK(history_with(s, "cancelled").size() == 1);
  }
  // The worker is free again: nothing of the cancelled shards holds its slots.
  REQUIRE(wait_until([&] { return worker_json(api, "w1").at("running") == 0; }, 5s));
}

}  // namespace
