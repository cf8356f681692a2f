// evald-bench-recovery: how long a coordinator takes to come back on a big data dir, and what
// memory that costs. It fills a fresh data dir with ONE campaign of --shards shards through the
// real binaries (noop workers), either run to the end (--fill finished: a shard record per shard)
// or interrupted by kill -9 of the coordinator once half the shards succeeded (--fill
// interrupted: also leases left running, which recovery turns into orphans, and shards that never
// got a record). Then, --runs times, it starts evald-coordinator on that data dir with no
// workers and measures the wall time from the fork to the endpoint line on stdout (the moment it
// serves), the RSS and peak RSS (VmRSS, VmHWM) right then, and the recovery time the coordinator
// logs itself ("recovered ... took_ms="); it checks the campaign's counts over HTTP and kills the
// coordinator with -9 (as a crash would) before the next run. Prints one line per run, then the
// median, min and max.
//
// Not a ctest test: its numbers depend on the machine and its load. Run it by hand:
//   build/bin/evald-bench-recovery --shards 1000000 --runs 3
//   build/bin/evald-bench-recovery --shards 1000000 --runs 3 --fill interrupted
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/cli_options.hpp"
#include "tests/support/cluster.hpp"

namespace {

namespace fs = std::filesystem;
using evald::testing::Api;
using evald::testing::ChildProcess;
using evald::testing::Coordinator;
using evald::testing::CoordinatorOptions;
using evald::testing::ProcessOptions;
using evald::testing::TempDir;
using evald::testing::Worker;
using evald::testing::WorkerOptions;
using Clock = std::chrono::steady_clock;

enum class Fill { kFinished, kInterrupted };

struct BenchConfig {
  int64_t shards = 1000000;
  int runs = 3;
  Fill fill = Fill::kFinished;
  size_t workers = 2;
  uint32_t slots = 512;
  std::chrono::seconds timeout{900};
};

struct RunResult {
  double seconds = 0;
  double rss_mib = 0;
  double peak_rss_mib = 0;
  int64_t took_ms = -1;  // the coordinator's own "recovered ... took_ms=" figure
};

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A field of /proc/PID/status in MiB (the file gives kB); 0 if it cannot be read.
double status_mib(pid_t pid, const std::string& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(field + ":", 0) == 0) {
      return static_cast<double>(std::stoll(line.substr(field.size() + 1))) / 1024.0;
    }
  }
  return 0;
}

uint64_t dir_bytes(const fs::path& dir) {
  uint64_t bytes = 0;
  std::error_code ec;
  for (const auto& entry : fs::recursive_directory_iterator(dir, ec)) {
    if (entry.is_regular_file(ec)) bytes += entry.file_size(ec);
  }
  return bytes;
}

// took_ms of the last "recovered ..." line in the log, or -1.
int64_t last_recovery_ms(const fs::path& log) {
  std::ifstream in(log);
  int64_t took = -1;
  for (std::string line; std::getline(in, line);) {
    if (line.find("recovered epoch=") == std::string::npos) continue;
    const auto at = line.find("took_ms=");
    if (at != std::string::npos) took = std::stoll(line.substr(at + 8));
  }
  return took;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

CoordinatorOptions coordinator_options() {
  CoordinatorOptions options;
  options.heartbeat_ms = 1000;
  // Long enough that no orphaned lease expires while a run measures (the data dir then stays
  // the same from run to run).
  options.worker_timeout_ms = 60000;
  options.retry_backoff_ms = 1000;
  options.log_level = "info";
  return options;
}

// Fills the data dir; returns the campaign id.
std::string fill(const BenchConfig& config, const fs::path& dir) {
  const auto start = Clock::now();
  Coordinator coordinator(dir / "data", dir / "fill-coordinator.log", coordinator_options());
  const Api api(coordinator.http_url());
  std::vector<std::unique_ptr<Worker>> workers;
  for (size_t i = 0; i < config.workers; ++i) {
    WorkerOptions options;
    options.name = "w" + std::to_string(i + 1);
    options.slots = config.slots;
    options.heartbeat_ms = 1000;
    workers.push_back(std::make_unique<Worker>(coordinator.bind_endpoint(),
                                               dir / ("work-" + options.name),
                                               dir / ("fill-" + options.name + ".log"), options));
  }
  api.wait_for_workers(config.workers);
  const nlohmann::json spec = {
      {"name", "bench-recovery"},
      {"models", {{{"name", "model-0"}}}},
      {"benchmarks", {{{"name", "bench-0"}, {"examples", config.shards}, {"shard_size", 1}}}},
      {"runner", {{"type", "noop"}}},
      {"max_attempts", 1}};
  const std::string id = api.submit(spec);
  const int64_t stop_at = config.fill == Fill::kFinished ? config.shards : config.shards / 2;
  nlohmann::json c;
  while (true) {
    c = api.campaign(id);
    if (c.at("shards").at("succeeded").get<int64_t>() >= stop_at || c.at("state") != "running") {
      break;
    }
    if (Clock::now() - start > config.timeout) {
      throw std::runtime_error("fill did not reach " + std::to_string(stop_at) +
                               " succeeded shards in time: " + c.dump());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(config.fill == Fill::kFinished ? 50 : 5));
  }
  if (config.fill == Fill::kInterrupted) {
    coordinator.kill();  // mid-campaign, as a crash would
  } else if (c.at("state") != "succeeded") {
    throw std::runtime_error("fill campaign did not succeed: " + c.dump());
  }
  for (auto& w : workers) w->kill();  // no worker comes back to reclaim anything
  if (coordinator.running()) coordinator.terminate();
  const auto& counts = c.at("shards");
  std::printf(
      "fill mode=%s shards=%lld seconds=%.1f state=%s succeeded=%lld running=%lld pending=%lld "
      "data_dir_mib=%.1f\n",
      config.fill == Fill::kFinished ? "finished" : "interrupted",
      static_cast<long long>(config.shards), seconds_since(start),
      c.at("state").get<std::string>().c_str(),
      static_cast<long long>(counts.at("succeeded").get<int64_t>()),
      static_cast<long long>(counts.at("running").get<int64_t>()),
      static_cast<long long>(counts.at("pending").get<int64_t>()),
      static_cast<double>(dir_bytes(dir / "data")) / (1 << 20));
  std::fflush(stdout);
  return id;
}

RunResult run_once(const BenchConfig& config, const fs::path& dir, const std::string& id, int run) {
  const auto log = dir / "coordinator.log";
  const auto options = coordinator_options();
  ProcessOptions process;
  process.executable = evald::testing::bin_dir() / "evald-coordinator";
  process.args = {"--data-dir",
                  (dir / "data").string(),
                  "--bind",
                  "tcp://127.0.0.1:0",
                  "--http",
                  "127.0.0.1:0",
                  "--heartbeat-ms",
                  std::to_string(options.heartbeat_ms),
                  "--worker-timeout-ms",
                  std::to_string(options.worker_timeout_ms),
                  "--log-level",
                  options.log_level};
  process.log_file = log;
  process.pipe_stdout = true;
  const auto start = Clock::now();
  ChildProcess coordinator(process);
  const auto line = coordinator.read_line(config.timeout);
  RunResult result;
  result.seconds = seconds_since(start);
  if (!line) throw std::runtime_error("no endpoint line; see " + log.string());
  result.rss_mib = status_mib(coordinator.pid(), "VmRSS");
  result.peak_rss_mib = status_mib(coordinator.pid(), "VmHWM");
  result.took_ms = last_recovery_ms(log);

  const auto endpoints = nlohmann::json::parse(*line);
  const Api api("http://" + endpoints.at("http").get<std::string>());
  const auto c = api.campaign(id);
  if (c.at("total") != config.shards) {
    throw std::runtime_error("recovered campaign has the wrong total: " + c.dump());
  }
  const auto& counts = c.at("shards");
  std::printf(
      "run=%d serving_after_s=%.3f recovery_took_ms=%lld rss_mib=%.1f peak_rss_mib=%.1f "
      "state=%s succeeded=%lld running=%lld pending=%lld\n",
      run, result.seconds, static_cast<long long>(result.took_ms), result.rss_mib,
      result.peak_rss_mib, c.at("state").get<std::string>().c_str(),
      static_cast<long long>(counts.at("succeeded").get<int64_t>()),
      static_cast<long long>(counts.at("running").get<int64_t>()),
      static_cast<long long>(counts.at("pending").get<int64_t>()));
  std::fflush(stdout);
  coordinator.kill();
  return result;
}

void print_summary(const char* what, const std::vector<double>& values, const char* unit) {
  std::printf("%-22s median=%.3f min=%.3f max=%.3f %s\n", what, median(values),
              *std::min_element(values.begin(), values.end()),
              *std::max_element(values.begin(), values.end()), unit);
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = evald::po;
  po::options_description options("evald-bench-recovery options");
  options.add_options()("shards", po::value<int64_t>()->default_value(1000000),
                        "shards in the one campaign")("runs", po::value<int>()->default_value(3),
                                                      "coordinator restarts to time")(
      "fill", po::value<std::string>()->default_value("finished"),
      "finished: run the campaign to the end; interrupted: kill -9 the coordinator at half")(
      "workers", po::value<size_t>()->default_value(2), "noop workers for the fill")(
      "slots", po::value<uint32_t>()->default_value(512), "--slots of every worker")(
      "timeout-s", po::value<int64_t>()->default_value(900), "give up on the fill after this");
  BenchConfig config;
  try {
    const auto args = evald::parse_args(argc, argv, options);
    if (args.help) {
      std::cout << "Usage: evald-bench-recovery [options]\n\n"
                   "Coordinator start-up time and memory on a data dir holding one big\n"
                   "campaign. Uses the binaries next to it; data dirs go under $TMPDIR.\n\n"
                << options << '\n';
      return 0;
    }
    const auto& v = args.values;
    config.shards = v["shards"].as<int64_t>();
    config.runs = v["runs"].as<int>();
    const auto fill_mode = v["fill"].as<std::string>();
    if (fill_mode != "finished" && fill_mode != "interrupted") {
      throw std::invalid_argument("--fill must be finished or interrupted");
    }
    config.fill = fill_mode == "finished" ? Fill::kFinished : Fill::kInterrupted;
    config.workers = v["workers"].as<size_t>();
    config.slots = v["slots"].as<uint32_t>();
    config.timeout = std::chrono::seconds(v["timeout-s"].as<int64_t>());
    if (config.shards <= 0 || config.runs <= 0 || config.workers == 0 || config.slots == 0 ||
        config.timeout.count() <= 0) {
      throw std::invalid_argument("every number must be positive");
    }
  } catch (const std::exception& e) {
    std::cerr << "evald-bench-recovery: " << e.what() << "\n(see evald-bench-recovery --help)\n";
    return 2;
  }

  try {
    TempDir dir("evald-bench-recovery");
    const std::string id = fill(config, dir.path());
    std::vector<double> seconds;
    std::vector<double> rss;
    std::vector<double> peak;
    std::vector<double> took;
    for (int run = 1; run <= config.runs; ++run) {
      const auto r = run_once(config, dir.path(), id, run);
      seconds.push_back(r.seconds);
      rss.push_back(r.rss_mib);
      peak.push_back(r.peak_rss_mib);
      took.push_back(static_cast<double>(r.took_ms) / 1000.0);
    }
    std::printf("\nsummary over %d runs (shards=%lld fill=%s):\n", config.runs,
                static_cast<long long>(config.shards),
                config.fill == Fill::kFinished ? "finished" : "interrupted");
    print_summary("start->serving", seconds, "s");
    print_summary("recovery (logged)", took, "s");
    print_summary("RSS when serving", rss, "MiB");
    print_summary("peak RSS", peak, "MiB");
  } catch (const std::exception& e) {
    std::cerr << "evald-bench-recovery: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
