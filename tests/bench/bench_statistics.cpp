// evald-bench-statistics: what the per-example statistics cost (docs/results.md, "Cost").
//
// 1. rank_interval alone: stats::bootstrap_rank_intervals on --models x --benchmarks x
//    --examples 0/1 scores (default 15 x 13 x 10,000, 1000 resamples), --runs times; prints the
//    seconds of each run and the median. Target: under 1 s.
// 2. The coordinator with --stored per-example scores (default 1,000,000): a real cluster runs a
//    campaign of 10 models x 10 benchmarks whose exec runner (tests/integration/runners/
//    evald-test-runner) sends a sample per example; then it reads the coordinator's RSS (VmRSS)
//    before the first `results`, times the first `results` (cold: every sample parsed from the
//    store, the rank intervals bootstrapped), the next --runs ones (warm: cached), one `compare`,
//    and the RSS after.
//
// Not a ctest test: its numbers depend on the machine and its load. Run it by hand:
//   build/bin/evald-bench-statistics
//   build/bin/evald-bench-statistics --stored 0          # rank_interval only
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/statistics.hpp"
#include "tests/support/cluster.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using evald::testing::Cluster;
using evald::testing::ClusterOptions;

struct Config {
  size_t models = 15;
  size_t benchmarks = 13;
  int64_t examples = 10000;
  int runs = 3;
  int64_t stored = 1000000;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double rss_mib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return static_cast<double>(std::stoll(line.substr(6))) / 1024;
  }
  return 0;
}

void bench_rank_interval(const Config& config) {
  std::mt19937_64 rng(1);
  std::vector<evald::stats::RankBenchmark> input(config.benchmarks);
  for (auto& bench : input) {
    for (size_t m = 0; m < config.models; ++m) {
      const double skill = 0.5 + 0.02 * static_cast<double>(m);
      std::bernoulli_distribution coin(skill);
      std::vector<evald::stats::IndexedScore> scores;
      double sum = 0;
      for (int64_t i = 0; i < config.examples; ++i) {
        scores.push_back({i, coin(rng) ? 1.0 : 0.0});
        sum += scores.back().score;
      }
      bench.values.push_back(sum / static_cast<double>(config.examples));
      bench.samples.push_back(std::move(scores));
    }
  }
  std::vector<double> times;
  std::vector<double> cpu_times;
  for (int run = 0; run < config.runs; ++run) {
    const auto start = Clock::now();
    const std::clock_t cpu_start = std::clock();
    const auto intervals = evald::stats::bootstrap_rank_intervals(config.models, input);
    const double cpu = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
    times.push_back(seconds_since(start));
    cpu_times.push_back(cpu);
    // Wall time counts the time other processes had the CPU; cpu_seconds is ours alone.
    std::printf(
        "rank_interval run=%d models=%zu benchmarks=%zu examples=%lld resamples=1000 "
        "seconds=%.3f cpu_seconds=%.3f best_model=[%d,%d]\n",
        run, config.models, config.benchmarks, static_cast<long long>(config.examples),
        times.back(), cpu, intervals.back()[0], intervals.back()[1]);
  }
  std::printf("rank_interval median_seconds=%.3f median_cpu_seconds=%.3f\n", median(times),
              median(cpu_times));
}

void bench_coordinator(const Config& config) {
  constexpr int64_t kModels = 10;
  constexpr int64_t kBenchmarks = 10;
  const int64_t per_cell = config.stored / (kModels * kBenchmarks);
  ClusterOptions options;
  options.workers = 2;
  options.slots = 4;
  options.coordinator.log_level = "warn";
  options.dir_prefix = "evald-bench-stats";
  Cluster cluster(options);
  const auto api = cluster.api();
  nlohmann::json spec = {{"name", "bench-statistics"},
                         {"models", nlohmann::json::array()},
                         {"benchmarks", nlohmann::json::array()},
                         {"runner",
                          {{"type", "exec"},
                           {"command", {"evald-test-runner", "{model}", "{benchmark}", "{shard}"}},
                           {"timeout_s", 300}}},
                         {"max_attempts", 2}};
  for (int64_t m = 0; m < kModels; ++m) {
    spec["models"].push_back({{"name", "model-" + std::to_string(m)},
                              {"params", {{"mult", 1 + m % 5}, {"k", 2 + m % 4}}}});
  }
  for (int64_t b = 0; b < kBenchmarks; ++b) {
    spec["benchmarks"].push_back({{"name", "bench-" + std::to_string(b)},
                                  {"examples", per_cell},
                                  {"shard_size", 5000},
                                  {"params", {{"offset", b}}}});
  }
  const auto fill_start = Clock::now();
  const std::string id = api.submit(spec);
  api.wait_for_state(id, "succeeded", std::chrono::minutes(30), std::chrono::milliseconds(200));
  const pid_t pid = cluster.coordinator().process().pid();
  std::printf("stored samples=%lld filled_in_s=%.1f rss_before_mib=%.1f\n",
              static_cast<long long>(per_cell * kModels * kBenchmarks), seconds_since(fill_start),
              rss_mib(pid));

  auto start = Clock::now();
  const auto cold = api.results(id);
  std::printf("results cold_seconds=%.3f rss_after_cold_mib=%.1f first_rank_interval=%s\n",
              seconds_since(start), rss_mib(pid),
              cold.at("models")[0].at("rank_interval").dump().c_str());
  std::vector<double> warm;
  for (int run = 0; run < config.runs; ++run) {
    start = Clock::now();
    (void)api.results(id);
    warm.push_back(seconds_since(start));
    std::printf("results warm run=%d seconds=%.4f\n", run, warm.back());
  }
  start = Clock::now();
  (void)api.get("/v1/campaigns/" + id + "/compare?a=model-0&b=model-1");
  std::printf("compare warm_seconds=%.4f\n", seconds_since(start));
  std::printf("results warm_median_seconds=%.4f rss_after_mib=%.1f cached_samples=%.0f\n",
              median(warm), rss_mib(pid), api.metric("evald_samples_cached"));
}

}  // namespace

int main(int argc, char** argv) {
  Config config;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const long long value = std::stoll(argv[i + 1]);
    if (flag == "--models") {
      config.models = static_cast<size_t>(value);
    } else if (flag == "--benchmarks") {
      config.benchmarks = static_cast<size_t>(value);
    } else if (flag == "--examples") {
      config.examples = value;
    } else if (flag == "--runs") {
      config.runs = static_cast<int>(value);
    } else if (flag == "--stored") {
      config.stored = value;
    } else {
      std::fprintf(stderr,
                   "usage: evald-bench-statistics [--models N] [--benchmarks N] [--examples N] "
                   "[--runs N] [--stored N]\n");
      return 2;
    }
  }
  if (config.runs < 1) config.runs = 1;
  bench_rank_interval(config);
  if (config.stored > 0) bench_coordinator(config);
  return 0;
}
