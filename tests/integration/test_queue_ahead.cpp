// Queueing ahead (docs/scheduling.md, rule 11) through the real binaries: a worker with 4 slots
// and a queue of 8 runs a campaign of short exec shards. The coordinator queues shards on it once
// the first ones finished, the worker never runs more than its slots at once (each runner notes
// when it started and ended), and every shard counts exactly once.
#include <algorithm>
#include <catch2/catch.hpp>
#include <fstream>
#include <utility>
#include <vector>

#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

// A runner that writes "<start ns> <end ns>" of its own run to TRACE/<shard>.<attempt>.
fs::path write_timing_runner(const fs::path& dir, const fs::path& trace) {
  auto path = dir / "timing-runner.sh";
  std::ofstream(path) << "#!/bin/bash\n"
                      << "cat > /dev/null\n"
                      << "start=$(date +%s%N)\n"
                      << "sleep 0.005\n"
                      << "echo \"$start $(date +%s%N)\" > '" << trace.string()
                      << "'/\"$1.$EVALD_ATTEMPT\"\n"
                      << "echo '{\"metrics\": {\"accuracy\": 1}, \"count\": 1}'\n";
  fs::permissions(path, fs::perms::owner_all);
  return path;
}

// The most runners whose [start, end] intervals overlap at one moment.
int most_at_once(const fs::path& trace) {
  std::vector<std::pair<int64_t, int>> events;  // (time, +1 start / -1 end); ends sort first
  for (const auto& entry : fs::directory_iterator(trace)) {
    int64_t start = 0;
    int64_t end = 0;
    std::ifstream(entry.path()) >> start >> end;
    REQUIRE(start > 0);
    REQUIRE(end >= start);
    events.emplace_back(start, 1);
    events.emplace_back(end, -1);
  }
  std::sort(events.begin(), events.end());
  int now = 0;
  int most = 0;
  for (const auto& [at, step] : events) {
    now += step;
    most = std::max(most, now);
  }
  return most;
}

}  // namespace

TEST_CASE("queue ahead: short shards queue on a full worker, which still runs only its slots",
          "[integration][queue]") {
  ClusterOptions options;
  options.workers = 1;
  options.slots = 4;
  options.queue_ahead = 8;
  TestCluster cluster(options);
  const auto trace = cluster.dir() / "timing";
  fs::create_directories(trace);
  const auto runner = write_timing_runner(cluster.dir(), trace);
  const auto api = cluster.api();
  const auto workers = api.workers();
  REQUIRE(workers.size() == 1);
  CHECK(workers[0].at("queue_ahead") == 8);

  constexpr int64_t kShards = 300;
  const nlohmann::json spec = {
      {"name", "queue-ahead"},
      {"models", {{{"name", "m"}}}},
      {"benchmarks", {{{"name", "b"}, {"examples", kShards}, {"shard_size", 1}}}},
      {"runner", {{"type", "exec"}, {"command", {runner.string(), "{shard}"}}}}};
  const auto id = api.submit(spec);
  const auto done = api.wait_for_state(id, "succeeded", 120s);
  CHECK(done.at("shards").at("succeeded") == kShards);
  CHECK(api.metric("evald_shards_completed_total") == static_cast<double>(kShards));
  check_all_shards_succeeded(api, id, kShards);

  // Shards of ~10 ms on 4 slots: 40 start within 0.1 s, so the queue of 8 was used (unless
  // shards took over 0.4 s each, which even a loaded machine does not make of a 5 ms sleep).
  CHECK(api.metric("evald_leases_queued_ahead_total") > 0);
  // However many it held, the worker ran at most its 4 slots at once.
  CHECK(most_at_once(trace) <= 4);
  CHECK(cluster.worker(0).terminate() == 0);
}
