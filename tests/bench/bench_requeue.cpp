// evald-bench-requeue: how long the shards of a worker killed with -9 take to run again on
// another worker, for each --worker-timeout-ms. Per run: a coordinator (port 0, --heartbeat-ms
// H), a "victim" worker whose --slots S shards all run (the exec test runner, hanging until its
// worker dies), then an idle "survivor" worker with S free slots; kill -9 of the victim, then GET
// /v1/workers every 2 ms until the victim shows "lost" and until the survivor holds all S shards.
// Expected: about T minus the time since the victim's last heartbeat (0..H), plus one core turn.
// Prints one line per run, then per timeout the median, min and max.
//
// Not a ctest test: its numbers depend on the machine and its load. Run it by hand:
//   build/bin/evald-bench-requeue --runs 5 --timeouts 1000,5000
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/cli_options.hpp"
#include "tests/support/cluster.hpp"

namespace {

using evald::testing::Api;
using evald::testing::Cluster;
using evald::testing::ClusterOptions;
using evald::testing::WorkerOptions;
using Clock = std::chrono::steady_clock;

struct BenchConfig {
  std::vector<int64_t> timeouts_ms = {1000, 5000};
  int runs = 5;
  int64_t heartbeat_ms = 200;
  uint32_t slots = 4;
};

struct RunResult {
  double lost_after_s = 0;     // kill -9 -> GET /v1/workers says "lost"
  double running_after_s = 0;  // kill -9 -> every shard of the victim leased to the survivor
};

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> values;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    const long long value = std::stoll(item, &used);
    if (used != item.size() || value <= 0) throw std::invalid_argument(item);
    values.push_back(value);
  }
  if (values.empty()) throw std::invalid_argument(text);
  return values;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

nlohmann::json worker_json(const Api& api, const std::string& name) {
  for (const auto& w : api.workers()) {
    if (w.at("name") == name) return w;
  }
  return nullptr;
}

RunResult run_once(const BenchConfig& config, int64_t timeout_ms, int run) {
  ClusterOptions options;
  options.workers = 0;
  options.worker_heartbeat_ms = config.heartbeat_ms;
  options.coordinator.heartbeat_ms = config.heartbeat_ms;
  options.coordinator.worker_timeout_ms = timeout_ms;
  options.coordinator.log_level = "warn";
  options.dir_prefix = "evald-bench-requeue";
  Cluster cluster(options);
  const auto api = cluster.api();

  auto worker_options = [&](const std::string& name) {
    WorkerOptions w = cluster.worker_defaults();
    w.name = name;
    w.slots = config.slots;
    w.heartbeat_ms = config.heartbeat_ms;
    w.extra_args = {"--drain-timeout-ms", "100"};
    return w;
  };
  auto& victim = cluster.add_worker(worker_options("victim"));
  api.wait_for_workers(1);

  nlohmann::json hang = nlohmann::json::array();
  for (uint32_t i = 0; i < config.slots; ++i) hang.push_back(i);
  const nlohmann::json spec = {
      {"name", "bench-requeue"},
      {"models", {{{"name", "model-0"}, {"params", {{"hang_shards", hang}}}}}},
      {"benchmarks", {{{"name", "bench-0"}, {"examples", config.slots}, {"shard_size", 1}}}},
      {"runner",
       {{"type", "exec"},
        {"command", {"evald-test-runner", "{model}", "{benchmark}", "{shard}"}},
        {"timeout_s", 3600}}},
      {"max_attempts", 3}};
  const std::string id = api.submit(spec);
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (worker_json(api, "victim").value("running", 0u) < config.slots) {
    if (Clock::now() > deadline) throw std::runtime_error("the victim never ran every shard");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  cluster.add_worker(worker_options("survivor"));
  api.wait_for_workers(2);

  victim.kill();
  const auto killed_at = Clock::now();
  RunResult result{-1, -1};
  const auto give_up = killed_at + std::chrono::milliseconds(timeout_ms) + std::chrono::seconds(30);
  while (result.running_after_s < 0) {
    const auto workers = api.workers();
    const double now_s = std::chrono::duration<double>(Clock::now() - killed_at).count();
    for (const auto& w : workers) {
      if (w.at("name") == "victim" && w.at("state") == "lost" && result.lost_after_s < 0) {
        result.lost_after_s = now_s;
      }
      if (w.at("name") == "survivor" && w.at("running").get<uint32_t>() == config.slots) {
        result.running_after_s = now_s;
      }
    }
    if (Clock::now() > give_up) throw std::runtime_error("the shards never ran again");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::printf(
      "run worker_timeout_ms=%lld heartbeat_ms=%lld run=%d shards=%u lost_after_s=%.3f "
      "running_again_after_s=%.3f\n",
      static_cast<long long>(timeout_ms), static_cast<long long>(config.heartbeat_ms), run,
      config.slots, result.lost_after_s, result.running_after_s);
  std::fflush(stdout);
  // The survivor's runners hang too: cancelling kills them, so the cluster stops at once.
  api.post("/v1/campaigns/" + id + "/cancel", nlohmann::json::object());
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = evald::po;
  po::options_description options("evald-bench-requeue options");
  options.add_options()("timeouts", po::value<std::string>()->default_value("1000,5000"),
                        "comma-separated --worker-timeout-ms values")(
      "runs", po::value<int>()->default_value(5), "repetitions per timeout")(
      "heartbeat-ms", po::value<int64_t>()->default_value(200), "heartbeat of all daemons")(
      "shards", po::value<uint32_t>()->default_value(4), "shards (= slots) of the victim");
  BenchConfig config;
  try {
    const auto args = evald::parse_args(argc, argv, options);
    if (args.help) {
      std::cout << "Usage: evald-bench-requeue [options]\n\n"
                   "Time from kill -9 of a worker to its shards running on another worker.\n"
                   "Uses the binaries next to it and the test runner from the source tree.\n\n"
                << options << '\n';
      return 0;
    }
    const auto& v = args.values;
    config.timeouts_ms = parse_list(v["timeouts"].as<std::string>());
    config.runs = v["runs"].as<int>();
    config.heartbeat_ms = v["heartbeat-ms"].as<int64_t>();
    config.slots = v["shards"].as<uint32_t>();
    if (config.runs <= 0 || config.heartbeat_ms <= 0 || config.slots == 0) {
      throw std::invalid_argument("every number must be positive");
    }
    for (const auto t : config.timeouts_ms) {
      if (t <= config.heartbeat_ms) {
        throw std::invalid_argument("every timeout must be greater than --heartbeat-ms");
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "evald-bench-requeue: " << e.what() << "\n(see evald-bench-requeue --help)\n";
    return 2;
  }

  std::map<int64_t, std::vector<RunResult>> results;
  try {
    for (const auto t : config.timeouts_ms) {
      for (int run = 1; run <= config.runs; ++run) results[t].push_back(run_once(config, t, run));
    }
  } catch (const std::exception& e) {
    std::cerr << "evald-bench-requeue: " << e.what() << "\n";
    return 1;
  }
  std::printf("\n%-18s %-22s %-30s\n", "worker_timeout_ms", "median lost after s",
              "running again after s: median (min..max)");
  for (const auto& [t, runs] : results) {
    std::vector<double> lost;
    std::vector<double> running;
    for (const auto& r : runs) {
      lost.push_back(r.lost_after_s);
      running.push_back(r.running_after_s);
    }
    std::printf("%-18lld %-22.3f %.3f (%.3f..%.3f)\n", static_cast<long long>(t), median(lost),
                median(running), *std::min_element(running.begin(), running.end()),
                *std::max_element(running.begin(), running.end()));
  }
  return 0;
}
