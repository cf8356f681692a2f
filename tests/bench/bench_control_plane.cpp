// evald-bench-control-plane: durable shards per second through the real binaries, with the noop
// runner so only the control plane is measured (ZeroMQ dispatch, group commit in RocksDB,
// aggregation). For each worker count and repetition: a fresh data dir, a coordinator on port 0,
// N workers, ONE campaign of --shards shards; wall time from the submit's 201 to the campaign
// being succeeded and durable, and the coordinator's peak RSS (VmHWM) before it stops.
//
// The end is an event, not a poll: the benchmark follows the coordinator's log with inotify and
// wakes on its `campaign_finished campaign=<id>` line (written in the turn that finishes the
// campaign), then reads the campaign once. The coordinator answers a read only once the turn it
// was rendered in is durable, so that answer's arrival is the moment the last result is durable;
// it is the end of the measured time.
//
// Prints the data dir's file system (statfs: what an fsync costs depends on it) and the machine's
// load average, one line per run, then a summary table, then the store counters of the last run
// (batches per WAL sync and shards per sync show group commit at work). Each run line also has
// the mean WAL sync time, a probe of what one synced 4 KiB append costs on that file system
// just before the run, and the bound they put on the rate: a slot waits for one sync between a
// result and its next ASSIGN, so workers x slots / sync time is the most a cluster can do with a
// disk that slow (a shallow pipeline meets it long before the CPU is the limit). Exit 1 if any
// campaign does not succeed.
//
// --curve runs every cluster with CURVE on the worker socket (keys made by the harness), to
// price authentication and encryption. --handshakes N then measures the cost of one worker
// connect instead: N times, a fresh DEALER connects and says HELLO, and the time from connect()
// to WELCOME is taken; the median and p90 are printed, with CURVE as --curve says.
//
// Not a ctest test: its numbers depend on the machine and its load. Run it by hand:
//   build/bin/evald-bench-control-plane --workers 1,2,4 --runs 3 --shards 100000
//   build/bin/evald-bench-control-plane --workers 4 --runs 3 --curve
//   build/bin/evald-bench-control-plane --handshakes 200 [--curve]
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "common/cli_options.hpp"
#include "common/curve_keys.hpp"
#include "common/protocol.hpp"
#include "tests/bench/bench_util.hpp"
#include "tests/support/cluster.hpp"

namespace {

using evald::testing::Cluster;
using evald::testing::ClusterOptions;
using Clock = std::chrono::steady_clock;

struct BenchConfig {
  std::vector<size_t> workers = {1, 2, 4};
  int runs = 3;
  int64_t shards = 100000;
  int64_t models = 1;
  int64_t benchmarks = 1;
  uint32_t slots = 512;
  std::optional<uint32_t> queue_ahead;  // the workers' default when not given
  int64_t heartbeat_ms = 1000;
  std::chrono::seconds timeout{300};
  bool curve = false;
  int handshakes = 0;  // > 0: measure connects instead of throughput
};

struct RunResult {
  size_t workers = 0;
  int run = 0;
  bool succeeded = false;
  double seconds = 0;
  double shards_per_s = 0;
  double peak_rss_mib = 0;
  double store_commits = 0;  // WAL syncs
  double store_batches = 0;  // batches written (turns that changed anything)
  double keys_written = 0;
  double queued_ahead =
      0;  // leases sent beyond the workers' slots (evald_leases_queued_ahead_total)
  double sync_ms_mean = 0;  // mean duration of one WAL sync (fsync)
  double probe_ms = 0;      // fsync_probe_ms() of the data dir's file system before the run
  double load_before = 0;   // 1-minute load average when the run started
  double load_after = 0;
};

// One unlabelled sample ("name value") from the coordinator's /metrics page; 0 if absent.
double sample(const evald::testing::Api& api, const std::string& name) {
  std::istringstream lines(api.request("GET", "/metrics").body);
  for (std::string line; std::getline(lines, line);) {
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 &&
        line[name.size()] == ' ') {
      return std::stod(line.substr(name.size() + 1));
    }
  }
  return 0;
}

// What one small synced append costs on the file system of `dir` right now: the median of 20
// appends of 4 KiB, each followed by fdatasync (as a WAL sync is). 0 if the probe cannot run.
double fsync_probe_ms(const std::filesystem::path& dir) {
  const auto file = dir / "fsync-probe";
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return 0;
  std::vector<double> millis;
  const std::string block(4096, 'x');
  for (int i = 0; i < 20; ++i) {
    const auto start = Clock::now();
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size()) ||
        ::fdatasync(fd) != 0) {
      break;
    }
    millis.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  ::close(fd);
  std::filesystem::remove(file);
  if (millis.empty()) return 0;
  std::sort(millis.begin(), millis.end());
  return millis[millis.size() / 2];
}

// The 1-minute load average (other builds and tests share the machine's cores).
double load_average() {
  std::ifstream in("/proc/loadavg");
  double one = 0;
  in >> one;
  return one;
}

// Follows a growing log file and wakes on each write (inotify IN_MODIFY) until a line holds the
// wanted text: the end of a run is the coordinator's own event, seen as soon as it is logged.
class LogWatch {
 public:
  explicit LogWatch(const std::filesystem::path& file) : file_(file) {
    fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd_ < 0 || ::inotify_add_watch(fd_, file.c_str(), IN_MODIFY) < 0) {
      throw std::runtime_error("inotify on " + file.string() + ": " + std::strerror(errno));
    }
  }
  ~LogWatch() { ::close(fd_); }
  LogWatch(const LogWatch&) = delete;
  LogWatch& operator=(const LogWatch&) = delete;

  // True once `text` was logged; false at the deadline.
  bool wait_for(const std::string& text, Clock::time_point deadline) {
    while (true) {
      if (read_new().find(text) != std::string::npos) return true;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      pollfd item{fd_, POLLIN, 0};
      if (::poll(&item, 1, static_cast<int>(left.count()) + 1) > 0) {
        char events[4096];
        while (::read(fd_, events, sizeof events) > 0) {
        }
      }
    }
  }

 private:
  // The text since the last complete line seen, plus whatever was appended since.
  const std::string& read_new() {
    std::ifstream in(file_, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(offset_));
    std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    offset_ += chunk.size();
    pending_ += chunk;
    // Keep only the unfinished last line for the next search; complete lines were searched.
    searched_ = pending_;
    const auto last_newline = pending_.rfind('\n');
    if (last_newline != std::string::npos) pending_.erase(0, last_newline + 1);
    return searched_;
  }

  std::filesystem::path file_;
  int fd_ = -1;
  size_t offset_ = 0;
  std::string pending_;
  std::string searched_;
};

// VmHWM (peak resident set) of a live process, in MiB; 0 if it cannot be read.
double peak_rss_mib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return static_cast<double>(std::stoll(line.substr(6))) / 1024.0;  // the value is in kB
    }
  }
  return 0;
}

nlohmann::json bench_spec(const BenchConfig& config) {
  // shards split evenly over models x benchmarks, shard_size 1: examples = shards per cell.
  const int64_t cells = config.models * config.benchmarks;
  const int64_t per_cell = (config.shards + cells - 1) / cells;
  nlohmann::json spec = {{"name", "bench-control-plane"},
                         {"models", nlohmann::json::array()},
                         {"benchmarks", nlohmann::json::array()},
                         {"runner", {{"type", "noop"}}},
                         {"max_attempts", 1}};
  for (int64_t m = 0; m < config.models; ++m) {
    spec["models"].push_back({{"name", "model-" + std::to_string(m)}});
  }
  for (int64_t b = 0; b < config.benchmarks; ++b) {
    spec["benchmarks"].push_back(
        {{"name", "bench-" + std::to_string(b)}, {"examples", per_cell}, {"shard_size", 1}});
  }
  return spec;
}

// The workers' --queue-ahead as given, else "default" (the worker's: min(4 x slots, 256)).
std::string queue_ahead_of(const BenchConfig& config) {
  return config.queue_ahead ? std::to_string(*config.queue_ahead) : "default";
}

RunResult run_once(const BenchConfig& config, size_t workers, int run) {
  RunResult result;
  result.workers = workers;
  result.run = run;
  result.load_before = load_average();
  ClusterOptions options;
  options.workers = workers;
  options.slots = config.slots;
  options.queue_ahead = config.queue_ahead;
  options.worker_heartbeat_ms = config.heartbeat_ms;
  options.coordinator.heartbeat_ms = config.heartbeat_ms;
  options.coordinator.worker_timeout_ms = 5 * config.heartbeat_ms;
  options.coordinator.retry_backoff_ms = 1000;
  // info: the campaign_finished line ends the run (nothing on the hot path logs at info).
  options.coordinator.log_level = "info";
  options.dir_prefix = "evald-bench";
  options.curve = config.curve;
  Cluster cluster(options);  // returns once every worker shows in GET /v1/workers
  if (run == 1 && workers == config.workers.front()) {
    std::printf("data_dir=%s fs=%s cpus=%u\n", cluster.coordinator().data_dir().c_str(),
                evald::bench::filesystem_type(cluster.coordinator().data_dir()).c_str(),
                std::thread::hardware_concurrency());
  }
  LogWatch log(cluster.log_dir() / "coordinator.log");
  result.probe_ms = fsync_probe_ms(cluster.dir());
  const auto api = cluster.api();
  const auto spec = bench_spec(config);
  const int64_t total =
      spec["benchmarks"][0]["examples"].get<int64_t>() * config.models * config.benchmarks;

  const std::string id = api.submit(spec);
  const auto start = Clock::now();
  const bool finished =
      log.wait_for("campaign_finished campaign=" + id + " ", start + config.timeout);
  // Answered once the finishing turn is durable: this answer is the end of the run.
  const std::string state = api.campaign(id).at("state").get<std::string>();
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.succeeded = finished && state == "succeeded";
  result.shards_per_s = static_cast<double>(total) / result.seconds;
  result.load_after = load_average();
  result.peak_rss_mib = peak_rss_mib(cluster.coordinator().process().pid());
  result.store_commits = api.metric("evald_store_commits_total");
  result.store_batches = api.metric("evald_store_batches_total");
  result.keys_written = api.metric("evald_store_keys_written_total");
  result.queued_ahead = api.metric("evald_leases_queued_ahead_total");
  const double syncs = sample(api, "evald_store_commit_seconds_count");
  result.sync_ms_mean =
      syncs > 0 ? 1000 * sample(api, "evald_store_commit_seconds_sum") / syncs : 0;
  std::printf(
      "run curve=%s workers=%zu slots=%u queue_ahead=%s run=%d shards=%lld state=%s seconds=%.3f "
      "shards_per_s=%.0f peak_rss_mib=%.1f store_syncs=%.0f store_batches=%.0f "
      "keys_written=%.0f shards_per_sync=%.1f batches_per_sync=%.2f sync_ms_mean=%.3f "
      "fsync_probe_ms=%.3f one_sync_per_cycle_bound=%.0f leases_queued_ahead=%.0f "
      "load_1m=%.2f->%.2f\n",
      config.curve ? "on" : "off", workers, config.slots, queue_ahead_of(config).c_str(), run,
      static_cast<long long>(total), state.c_str(), result.seconds, result.shards_per_s,
      result.peak_rss_mib, result.store_commits, result.store_batches, result.keys_written,
      result.store_commits > 0 ? static_cast<double>(total) / result.store_commits : 0.0,
      result.store_commits > 0 ? result.store_batches / result.store_commits : 0.0,
      result.sync_ms_mean, result.probe_ms,
      // Every slot waits for one WAL sync between a result and its next ASSIGN, so the slots
      // in flight per sync time bound the rate (from above: a cycle also has a round trip).
      result.sync_ms_mean > 0
          ? static_cast<double>(workers) * config.slots * 1000 / result.sync_ms_mean
          : 0.0,
      result.queued_ahead, result.load_before, result.load_after);
  std::fflush(stdout);
  return result;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// Connect -> WELCOME, `count` times, each on a new connection as worker w1 (its HELLO replaces
// the previous connection, as a reconnecting worker's does). Returns milliseconds per connect.
std::vector<double> measure_handshakes(const BenchConfig& config) {
  ClusterOptions options;
  options.workers = 0;
  options.curve = config.curve;
  options.curve_spare_workers = 1;  // keys for w1
  options.coordinator.log_level = "warn";
  options.dir_prefix = "evald-bench";
  Cluster cluster(options);
  std::string secret;
  std::string public_key;
  std::string server_key;
  if (config.curve) {
    const auto keys = cluster.curve_keys_dir();
    secret = evald::read_key_file((keys / "w1.secret").string(), "w1", true).value();
    public_key = evald::curve_public_key(secret).value();
    server_key = evald::read_key_file((keys / "coordinator.public").string(), "c", false).value();
  }
  zmq::context_t context(1);
  std::vector<double> millis;
  for (int i = 0; i < config.handshakes; ++i) {
    zmq::socket_t socket(context, zmq::socket_type::dealer);
    socket.set(zmq::sockopt::linger, 0);
    socket.set(zmq::sockopt::rcvtimeo, 5000);
    if (config.curve) {
      socket.set(zmq::sockopt::curve_serverkey, server_key);
      socket.set(zmq::sockopt::curve_publickey, public_key);
      socket.set(zmq::sockopt::curve_secretkey, secret);
    }
    evald::protocol::Hello hello;
    hello.name = "w1";
    hello.instance = "bench";
    const auto frame = evald::protocol::encode(hello);
    const auto start = Clock::now();
    socket.connect(cluster.coordinator().bind_endpoint());
    socket.send(zmq::buffer(frame), zmq::send_flags::none);  // queued until the handshake is done
    while (true) {
      zmq::message_t reply;
      if (!socket.recv(reply)) throw std::runtime_error("no WELCOME within 5 s");
      auto decoded = evald::protocol::decode(reply.to_string_view());
      if (decoded.ok() && std::holds_alternative<evald::protocol::Welcome>(decoded.value())) break;
    }
    millis.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return millis;
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = evald::po;
  po::options_description options("evald-bench-control-plane options");
  options.add_options()("workers", po::value<std::string>()->default_value("1,2,4"),
                        "comma-separated worker counts")("runs", po::value<int>()->default_value(3),
                                                         "repetitions per worker count")(
      "shards", po::value<int64_t>()->default_value(100000), "shards in the one campaign")(
      "models", po::value<int64_t>()->default_value(1), "models (shards are split evenly)")(
      "benchmarks", po::value<int64_t>()->default_value(1), "benchmarks")(
      "slots", po::value<uint32_t>()->default_value(512), "--slots of every worker")(
      "queue-ahead", po::value<uint32_t>(),
      "--queue-ahead of every worker (default: the worker's, min(4 x --slots, 256); 0: none)")(
      "heartbeat-ms", po::value<int64_t>()->default_value(1000), "heartbeat of all daemons")(
      "timeout-s", po::value<int64_t>()->default_value(300), "give up on a campaign after this")(
      "curve", po::bool_switch(), "CURVE on the worker socket (keys made by the harness)")(
      "handshakes", po::value<int>()->default_value(0),
      "measure N worker connects (connect to WELCOME) instead of throughput");
  evald::ParsedArgs args;
  BenchConfig config;
  try {
    args = evald::parse_args(argc, argv, options);
    if (args.help) {
      std::cout << "Usage: evald-bench-control-plane [options]\n\n"
                   "Durable shards/s of the coordinator with the noop runner. Uses the binaries\n"
                   "next to it; data dirs go under $TMPDIR (default /tmp).\n\n"
                << options << '\n';
      return 0;
    }
    const auto& v = args.values;
    config.workers = evald::bench::parse_counts(v["workers"].as<std::string>());
    config.runs = v["runs"].as<int>();
    config.shards = v["shards"].as<int64_t>();
    config.models = v["models"].as<int64_t>();
    config.benchmarks = v["benchmarks"].as<int64_t>();
    config.slots = v["slots"].as<uint32_t>();
    if (v.count("queue-ahead") > 0) config.queue_ahead = v["queue-ahead"].as<uint32_t>();
    config.heartbeat_ms = v["heartbeat-ms"].as<int64_t>();
    config.timeout = std::chrono::seconds(v["timeout-s"].as<int64_t>());
    config.curve = v["curve"].as<bool>();
    config.handshakes = v["handshakes"].as<int>();
    if (config.handshakes < 0) throw std::invalid_argument("--handshakes must not be negative");
    if (config.runs <= 0 || config.shards <= 0 || config.models <= 0 || config.benchmarks <= 0 ||
        config.slots == 0 || config.heartbeat_ms <= 0 || config.timeout.count() <= 0) {
      throw std::invalid_argument("every number must be positive");
    }
  } catch (const std::exception& e) {
    std::cerr << "evald-bench-control-plane: " << e.what()
              << "\n(see evald-bench-control-plane --help)\n";
    return 2;
  }

  if (config.handshakes > 0) {
    try {
      auto millis = measure_handshakes(config);
      std::sort(millis.begin(), millis.end());
      std::printf("handshakes curve=%s count=%zu median_ms=%.3f p90_ms=%.3f min_ms=%.3f\n",
                  config.curve ? "on" : "off", millis.size(), median(millis),
                  millis[millis.size() * 9 / 10], millis.front());
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "evald-bench-control-plane: " << e.what() << "\n";
      return 1;
    }
  }

  std::vector<RunResult> results;
  try {
    for (const size_t workers : config.workers) {
      for (int run = 1; run <= config.runs; ++run)
        results.push_back(run_once(config, workers, run));
    }
  } catch (const std::exception& e) {
    std::cerr << "evald-bench-control-plane: " << e.what() << "\n";
    return 1;
  }

  std::printf("\ncurve=%s slots=%u queue_ahead=%s\n%-8s %16s %12s %12s %20s %14s\n",
              config.curve ? "on" : "off", config.slots, queue_ahead_of(config).c_str(), "workers",
              "median shards/s", "min", "max", "median peak RSS MiB", "median load");
  bool all_succeeded = true;
  for (const size_t workers : config.workers) {
    std::vector<double> rates;
    std::vector<double> rss;
    std::vector<double> load;
    for (const auto& r : results) {
      if (r.workers != workers) continue;
      rates.push_back(r.shards_per_s);
      rss.push_back(r.peak_rss_mib);
      load.push_back(r.load_before);
      all_succeeded = all_succeeded && r.succeeded;
    }
    std::printf("%-8zu %16.0f %12.0f %12.0f %20.1f %14.2f\n", workers, median(rates),
                *std::min_element(rates.begin(), rates.end()),
                *std::max_element(rates.begin(), rates.end()), median(rss), median(load));
  }
  const auto& last = results.back();
  std::printf(
      "\nstore counters of the last run (workers=%zu run=%d): evald_store_commits_total=%.0f "
      "(WAL syncs) evald_store_batches_total=%.0f evald_store_keys_written_total=%.0f\n",
      last.workers, last.run, last.store_commits, last.store_batches, last.keys_written);
  if (!all_succeeded) {
    std::fprintf(stderr, "evald-bench-control-plane: a campaign did not succeed\n");
    return 1;
  }
  return 0;
}
