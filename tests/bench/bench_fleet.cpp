// evald-bench-fleet: how the coordinator copes with a big fleet. One process plays N workers with
// the real protocol code (common/protocol.hpp) over N ZeroMQ DEALER sockets, each announcing
// --slots slots and no GPUs, against a real evald-coordinator (RocksDB data dir, port 0). Per N:
//
//   1. connect  N HELLOs, time until every WELCOME came back;
//   2. idle     --idle-s seconds with no campaign: every worker heartbeats once per heartbeat
//               interval (as evald-worker does when it has nothing else to say). The coordinator's
//               CPU time over the phase, divided by the heartbeats it received, is what one
//               heartbeat costs it (its own heartbeats and timers included: they are the price of
//               a worker that is connected and idle);
//   3. run      one campaign of --shards shards (spread over --models x --benchmarks). Each
//               simulated worker "runs" an assignment for --shard-ms (+- --jitter, default 50 %)
//               and then sends its result, batched per worker as evald-worker does. After
//               --warmup-s, for --run-s seconds: dispatch latency (from the moment a result frees a
//               slot to the ASSIGN that fills it, as the worker sees it, so the commit's WAL sync
//               is included), durable shards/s (results ACKed: the coordinator ACKs a result once
//               it is committed), the coordinator's CPU (cores busy) and RSS, and its WAL syncs
//               over the window (how many took over 10 ms: every ASSIGN waits for one, so a
//               slow disk shows in the p99; TMPDIR=/dev/shm puts the data dir on tmpfs);
//   4. pages    GET /metrics and GET /v1/workers: size and time to answer, with N workers busy.
//
// The coordinator's peak RSS (VmHWM) is read at the end, with the whole campaign's shards in
// memory; --shards 10000000 shows the memory a 10-million-shard campaign costs.
//
// Not a ctest test: its numbers depend on the machine and its load (this process competes with
// the coordinator for the same cores, so on a small machine the figures are pessimistic; the run
// phase reports this process's own CPU as fleet_cores, so a saturated machine shows). Run:
//   build/bin/evald-bench-fleet --workers 100,1000,5000 --shards 1000000
//   build/bin/evald-bench-fleet --workers 1000 --shards 10000000 --run-s 20
//   build/bin/evald-bench-fleet --workers 1000 --shard-ms 0      # throughput, no think time
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <mutex>
#include <queue>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>
#include <zmq.hpp>

#include "common/cli_options.hpp"
#include "common/protocol.hpp"
#include "tests/bench/bench_util.hpp"
#include "tests/support/cluster.hpp"

namespace {

using evald::testing::Cluster;
using evald::testing::ClusterOptions;
using Clock = std::chrono::steady_clock;
namespace protocol = evald::protocol;

struct FleetConfig {
  std::vector<size_t> workers = {100, 1000, 5000};
  uint32_t slots = 8;
  int64_t shards = 1'000'000;
  int64_t models = 10;
  int64_t benchmarks = 10;
  int64_t shard_ms = 1000;
  // Each assignment runs shard_ms x (1 + jitter x u), u uniform in [-1, 1]. Without jitter every
  // slot of the fleet would finish in the same millisecond each round, and the figures would
  // measure how long one burst of N x slots results takes to drain, not a fleet at work.
  double jitter = 0.5;
  int64_t heartbeat_ms = 1000;
  int64_t idle_s = 10;
  int64_t warmup_s = 5;
  int64_t run_s = 30;
  size_t threads = 4;
};

// What the simulated fleet counts, per phase; summed over threads.
struct FleetCounters {
  std::atomic<uint64_t> welcomed{0};
  std::atomic<uint64_t> heartbeats_sent{0};
  std::atomic<uint64_t> results_sent{0};
  std::atomic<uint64_t> acked{0};
  std::atomic<uint64_t> assigned{0};
  std::atomic<uint64_t> rehellos{0};
  std::atomic<uint64_t> undecodable{0};
};

// One simulated worker: its socket and what it runs.
struct SimWorker {
  std::string name;
  std::unique_ptr<zmq::socket_t> socket;
  bool welcomed = false;
  uint64_t heartbeat_ms = 1000;
  Clock::time_point last_sent;
  // When each slot freed by a result was freed, oldest first: the next assignment fills it.
  std::deque<Clock::time_point> freed;
  // Attempts it "runs", in the order they finish (every one takes --shard-ms).
  std::deque<std::pair<Clock::time_point, protocol::Assignment>> running;
};

// A group of simulated workers served by one thread (ZeroMQ sockets are used by one thread only).
class FleetThread {
 public:
  FleetThread(zmq::context_t& context, std::string endpoint, std::vector<std::string> names,
              const FleetConfig& config, FleetCounters& counters, uint32_t seed)
      : random_(seed),
        context_(context),
        endpoint_(std::move(endpoint)),
        names_(std::move(names)),
        config_(config),
        counters_(counters) {}

  void start() {
    thread_ = std::thread([this] {
      try {
        run();
      } catch (const std::exception& e) {
        // Too many sockets or descriptors, most likely: say so instead of terminating.
        std::lock_guard lock(mutex_);
        error_ = e.what();
      }
    });
  }
  std::string error() {
    std::lock_guard lock(mutex_);
    return error_;
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Latency samples are taken only while measuring (the run phase's window).
  void set_measuring(bool on) { measuring_ = on; }
  std::vector<double> take_latencies() {
    std::lock_guard lock(mutex_);
    return std::exchange(latencies_ms_, {});
  }

 private:
  void send(SimWorker& w, const protocol::Message& message) {
    const auto frame = protocol::encode(message);
    w.socket->send(zmq::buffer(frame), zmq::send_flags::dontwait);
    w.last_sent = Clock::now();
  }

  void hello(SimWorker& w) {
    protocol::Hello hello;
    hello.name = w.name;
    hello.instance = "bench-fleet";
    hello.host = "bench-fleet";
    hello.slots = config_.slots;
    send(w, hello);
  }

  void on_frame(SimWorker& w, size_t index, std::string_view frame, Clock::time_point now,
                std::vector<double>& samples) {
    auto decoded = protocol::decode(frame);
    if (!decoded.ok()) {
      counters_.undecodable.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    auto& message = decoded.value();
    if (const auto* welcome = std::get_if<protocol::Welcome>(&message)) {
      if (!w.welcomed) counters_.welcomed.fetch_add(1, std::memory_order_relaxed);
      w.welcomed = true;
      w.heartbeat_ms = welcome->heartbeat_ms;
    } else if (auto* assign = std::get_if<protocol::Assign>(&message)) {
      counters_.assigned.fetch_add(assign->assignments.size(), std::memory_order_relaxed);
      for (auto& assignment : assign->assignments) {
        if (!w.freed.empty()) {
          if (measuring_) {
            samples.push_back(
                std::chrono::duration<double, std::milli>(now - w.freed.front()).count());
          }
          w.freed.pop_front();
        }
        const double factor = 1.0 + config_.jitter * unit_(random_);
        const auto runs = std::chrono::microseconds(
            static_cast<int64_t>(static_cast<double>(config_.shard_ms) * 1000.0 * factor));
        // Kept in the order they finish.
        auto at = std::upper_bound(
            w.running.begin(), w.running.end(), now + runs,
            [](Clock::time_point t, const auto& entry) { return t < entry.first; });
        w.running.emplace(at, now + runs, std::move(assignment));
        due_.emplace(now + runs, index);
      }
    } else if (const auto* ack = std::get_if<protocol::Ack>(&message)) {
      counters_.acked.fetch_add(ack->attempt_ids.size(), std::memory_order_relaxed);
    } else if (const auto* cancel = std::get_if<protocol::Cancel>(&message)) {
      for (const uint64_t id : cancel->attempt_ids) {
        std::erase_if(w.running, [id](const auto& r) { return r.second.attempt_id == id; });
      }
    } else if (std::holds_alternative<protocol::ReHello>(message)) {
      counters_.rehellos.fetch_add(1, std::memory_order_relaxed);
      w.running.clear();
      w.freed.clear();
      hello(w);
    }
    // HEARTBEAT and CAMPAIGN need nothing: the noop "runner" needs no spec beyond the metric.
  }

  // Sends the results of every attempt that has run its time, one RESULTS per worker.
  void finish_due(SimWorker& w, Clock::time_point now) {
    protocol::Results results;
    const int64_t wall_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
    while (!w.running.empty() && w.running.front().first <= now) {
      const auto& assignment = w.running.front().second;
      auto result = protocol::result_for(assignment);
      result.ok = true;
      result.count = assignment.end - assignment.start;
      result.metrics.emplace_back("accuracy", 1.0);
      result.duration_ms = static_cast<uint32_t>(config_.shard_ms);
      result.started_at_ms = wall_ms - config_.shard_ms;  // about: provenance is not measured
      result.ended_at_ms = wall_ms;
      results.results.push_back(std::move(result));
      w.running.pop_front();
    }
    if (results.results.empty()) return;
    counters_.results_sent.fetch_add(results.results.size(), std::memory_order_relaxed);
    send(w, results);
    const auto sent = Clock::now();
    for (size_t i = 0; i < results.results.size(); ++i) w.freed.push_back(sent);
  }

  // Everything that arrived on socket i, until ZeroMQ has nothing more. Called after every wake
  // of its descriptor and after every send on it: ZMQ_FD only signals changes, and a send may
  // consume the signal of a message that arrived meanwhile.
  void drain(std::vector<SimWorker>& workers, size_t i, std::vector<double>& samples) {
    const auto now = Clock::now();
    while (workers[i].socket->recv(frame_, zmq::recv_flags::dontwait)) {
      on_frame(workers[i], i, frame_.to_string_view(), now, samples);
    }
  }

  void run() {
    std::vector<SimWorker> workers(names_.size());
    std::vector<double> samples;
    // One epoll set over the sockets' ZMQ_FD descriptors: a wake costs what is ready, not a
    // poll() over every socket of the thread (which, at a thousand workers, cost the machine
    // more than the coordinator did).
    const int epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) throw std::runtime_error("epoll_create1 failed");
    struct CloseFd {
      int fd;
      ~CloseFd() { ::close(fd); }
    } close_epoll{epoll_fd};
    for (size_t i = 0; i < names_.size(); ++i) {
      SimWorker& w = workers[i];
      w.name = names_[i];
      w.socket = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::dealer);
      w.socket->set(zmq::sockopt::linger, 0);
      w.socket->set(zmq::sockopt::sndhwm, 0);
      w.socket->set(zmq::sockopt::rcvhwm, 0);
      w.socket->connect(endpoint_);
      epoll_event event{};
      event.events = EPOLLIN;
      event.data.u64 = i;
      if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, w.socket->get(zmq::sockopt::fd), &event) != 0) {
        throw std::runtime_error("epoll_ctl failed");
      }
      hello(w);
      drain(workers, i, samples);
    }
    std::vector<epoll_event> ready(256);
    auto last_housekeeping = Clock::now();
    constexpr auto kHousekeeping = std::chrono::milliseconds(50);
    while (!stop_) {
      // Sleep until the next attempt finishes (or the next look at heartbeats), not longer.
      auto now = Clock::now();
      auto wake = last_housekeeping + kHousekeeping;
      if (!due_.empty()) wake = std::min(wake, due_.top().first);
      const auto timeout = std::clamp(std::chrono::ceil<std::chrono::milliseconds>(wake - now),
                                      std::chrono::milliseconds(0), kHousekeeping);
      const int n = ::epoll_wait(epoll_fd, ready.data(), static_cast<int>(ready.size()),
                                 static_cast<int>(timeout.count()));
      for (int k = 0; k < n; ++k) drain(workers, static_cast<size_t>(ready[k].data.u64), samples);
      now = Clock::now();
      // Entries of cancelled attempts are left in the heap; finish_due then finds nothing due.
      while (!due_.empty() && due_.top().first <= now) {
        const size_t index = due_.top().second;
        due_.pop();
        finish_due(workers[index], now);
        drain(workers, index, samples);
      }
      // Heartbeats are due at most once per interval; looking every 50 ms is enough.
      if (now - last_housekeeping >= kHousekeeping) {
        last_housekeeping = now;
        for (size_t i = 0; i < workers.size(); ++i) {
          SimWorker& w = workers[i];
          if (w.welcomed && now - w.last_sent >= std::chrono::milliseconds(w.heartbeat_ms)) {
            send(w, protocol::Heartbeat{});
            counters_.heartbeats_sent.fetch_add(1, std::memory_order_relaxed);
            drain(workers, i, samples);
          }
        }
      }
      if (!samples.empty()) {
        std::lock_guard lock(mutex_);
        latencies_ms_.insert(latencies_ms_.end(), samples.begin(), samples.end());
        samples.clear();
      }
    }
  }

  // When an attempt of worker `second` finishes, earliest first.
  using Due = std::pair<Clock::time_point, size_t>;
  std::priority_queue<Due, std::vector<Due>, std::greater<>> due_;
  zmq::message_t frame_;
  std::mt19937 random_;
  std::uniform_real_distribution<double> unit_{-1.0, 1.0};
  zmq::context_t& context_;
  std::string endpoint_;
  std::vector<std::string> names_;
  const FleetConfig& config_;
  FleetCounters& counters_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> measuring_{false};
  std::mutex mutex_;
  std::vector<double> latencies_ms_;
  std::string error_;
  std::thread thread_;
};

// The coordinator's CPU seconds so far (user + system) and its resident set, from /proc.
struct ProcessSample {
  double cpu_s = 0;
  double rss_mib = 0;
  double peak_rss_mib = 0;
};

ProcessSample sample_process(pid_t pid) {
  ProcessSample out;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const auto close = text.rfind(')');
  if (close != std::string::npos) {
    std::istringstream fields(text.substr(close + 2));
    std::string field;
    double utime = 0;
    double stime = 0;
    for (int index = 3; fields >> field; ++index) {
      if (index == 14) utime = std::stod(field);
      if (index == 15) {
        stime = std::stod(field);
        break;
      }
    }
    out.cpu_s = (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) out.rss_mib = std::stod(line.substr(6)) / 1024.0;
    if (line.rfind("VmHWM:", 0) == 0) out.peak_rss_mib = std::stod(line.substr(6)) / 1024.0;
  }
  return out;
}

// CPU this process (the simulated fleet, all its threads) has used, user + system, in seconds.
// On a machine with few cores the fleet competes with the coordinator: when the two together
// fill every core, the machine is the limit, not the coordinator.
double own_cpu_seconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

double percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const auto index = static_cast<size_t>(p * static_cast<double>(sorted.size() - 1));
  return sorted[index];
}

// The coordinator's WAL sync histogram (evald_store_commit_seconds): cumulative count per bucket
// bound in seconds, "+Inf" as infinity.
struct SyncHistogram {
  std::vector<std::pair<double, double>> buckets;  // (le, count), ascending le
  double count = 0;
};

SyncHistogram read_sync_histogram(const evald::testing::Api& api) {
  SyncHistogram out;
  std::istringstream lines(api.request("GET", "/metrics").body);
  const std::string bucket = "evald_store_commit_seconds_bucket{le=\"";
  const std::string count = "evald_store_commit_seconds_count ";
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(bucket, 0) == 0) {
      const auto close = line.find('"', bucket.size());
      if (close == std::string::npos) continue;
      const std::string le = line.substr(bucket.size(), close - bucket.size());
      const double bound = le == "+Inf" ? std::numeric_limits<double>::infinity() : std::stod(le);
      out.buckets.emplace_back(bound, std::stod(line.substr(line.rfind(' ') + 1)));
    } else if (line.rfind(count, 0) == 0) {
      out.count = std::stod(line.substr(count.size()));
    }
  }
  return out;
}

// What the WAL syncs of a window cost: every ASSIGN waits for the sync that makes its lease
// durable, so a slow fsync is dispatch latency for every slot freed meanwhile.
struct SyncWindow {
  double syncs = 0;
  double slower_than_10ms = 0;
  double max_le_ms = 0;  // the slowest sync took at most this (a bucket bound; inf: > 10 s)
};

SyncWindow sync_window(const SyncHistogram& before, const SyncHistogram& after) {
  SyncWindow out;
  out.syncs = after.count - before.count;
  for (size_t i = 0; i < after.buckets.size() && i < before.buckets.size(); ++i) {
    const double in_bucket = after.buckets[i].second - before.buckets[i].second;
    if (after.buckets[i].first == 0.01) out.slower_than_10ms = out.syncs - in_bucket;
    if (in_bucket >= out.syncs && out.max_le_ms == 0) out.max_le_ms = 1000 * after.buckets[i].first;
  }
  return out;
}

nlohmann::json fleet_spec(const FleetConfig& config) {
  const int64_t cells = config.models * config.benchmarks;
  const int64_t per_cell = (config.shards + cells - 1) / cells;
  nlohmann::json spec = {{"name", "bench-fleet"},
                         {"models", nlohmann::json::array()},
                         {"benchmarks", nlohmann::json::array()},
                         {"runner", {{"type", "noop"}}},
                         {"max_attempts", 1}};
  for (int64_t m = 0; m < config.models; ++m) {
    spec["models"].push_back({{"name", "model-" + std::to_string(m)}});
  }
  for (int64_t b = 0; b < config.benchmarks; ++b) {
    spec["benchmarks"].push_back({{"name", "bench-" + std::to_string(b)},
                                  {"examples", per_cell},
                                  {"shard_size", 1},
                                  {"metric", "accuracy"}});
  }
  return spec;
}

struct FleetResult {
  size_t workers = 0;
  double connect_s = 0;
  double heartbeat_us_cpu = 0;  // coordinator CPU per heartbeat received, idle fleet
  double idle_cores = 0;        // coordinator CPU while idle, in cores
  double p50_ms = 0;
  double p99_ms = 0;
  double max_ms = 0;
  size_t samples = 0;
  double shards_per_s = 0;
  double run_cores = 0;
  double sim_cores = 0;  // this process (the simulated fleet) over the same window, in cores
  double rss_mib = 0;
  double peak_rss_mib = 0;
  double longest_turn_ms = 0;  // evald_core_turn_seconds_max: the core's longest turn (10 s)
  SyncWindow syncs;            // the coordinator's WAL syncs during the measured window
  std::string data_fs;         // the file system of the coordinator's data dir
  double metrics_kib = 0;
  double metrics_ms = 0;
  double workers_kib = 0;
  double workers_ms = 0;
  uint64_t rehellos = 0;
};

// GET a page; its size in KiB and the time to answer in ms.
std::pair<double, double> page(const evald::testing::Api& api, const std::string& target) {
  const auto start = Clock::now();
  const auto response = api.request("GET", target);
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  if (response.status != 200) {
    throw std::runtime_error("GET " + target + " answered " + std::to_string(response.status));
  }
  return {static_cast<double>(response.body.size()) / 1024.0, ms};
}

FleetResult run_fleet(const FleetConfig& config, size_t worker_count) {
  FleetResult result;
  result.workers = worker_count;
  ClusterOptions options;
  options.workers = 0;
  options.coordinator.heartbeat_ms = config.heartbeat_ms;
  options.coordinator.worker_timeout_ms = 5 * config.heartbeat_ms;
  options.coordinator.retry_backoff_ms = 1000;
  options.coordinator.log_level = "warn";
  options.dir_prefix = "evald-bench-fleet";
  Cluster cluster(options);
  const pid_t pid = cluster.coordinator().process().pid();
  const auto api = cluster.api();

  zmq::context_t context(2);
  context.set(zmq::ctxopt::max_sockets, static_cast<int>(worker_count + 64));
  FleetCounters counters;
  std::vector<std::unique_ptr<FleetThread>> threads;
  const size_t thread_count = std::min(config.threads, worker_count);
  for (size_t t = 0; t < thread_count; ++t) {
    std::vector<std::string> names;
    for (size_t i = t; i < worker_count; i += thread_count) {
      names.push_back("fleet-" + std::to_string(i + 1));
    }
    threads.push_back(std::make_unique<FleetThread>(context, cluster.coordinator().bind_endpoint(),
                                                    std::move(names), config, counters,
                                                    static_cast<uint32_t>(t + 1)));
  }
  // Stops the simulated workers on every way out, before the cluster (and its coordinator) goes.
  struct StopAll {
    std::vector<std::unique_ptr<FleetThread>>& threads;
    ~StopAll() {
      for (auto& t : threads) t->stop();
    }
  } stop_all{threads};

  // 1. connect
  const auto connect_start = Clock::now();
  for (auto& t : threads) t->start();
  while (counters.welcomed.load() < worker_count) {
    for (auto& t : threads) {
      if (auto error = t->error(); !error.empty()) {
        throw std::runtime_error("a simulated worker thread failed: " + error +
                                 " (check `ulimit -n`: each worker needs about three descriptors)");
      }
    }
    if (Clock::now() - connect_start > std::chrono::seconds(120)) {
      throw std::runtime_error("only " + std::to_string(counters.welcomed.load()) + " of " +
                               std::to_string(worker_count) + " workers welcomed in 120 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  result.connect_s = std::chrono::duration<double>(Clock::now() - connect_start).count();

  // 2. idle: heartbeats only (one interval first, so the connect's work is over).
  std::this_thread::sleep_for(std::chrono::milliseconds(config.heartbeat_ms));
  {
    const auto before = sample_process(pid);
    const uint64_t beats_before = counters.heartbeats_sent.load();
    const auto start = Clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(config.idle_s));
    const auto after = sample_process(pid);
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    const auto beats = static_cast<double>(counters.heartbeats_sent.load() - beats_before);
    result.idle_cores = (after.cpu_s - before.cpu_s) / wall;
    result.heartbeat_us_cpu = beats > 0 ? 1e6 * (after.cpu_s - before.cpu_s) / beats : 0;
  }

  // 3. run
  const std::string id = api.submit(fleet_spec(config));
  std::this_thread::sleep_for(std::chrono::seconds(config.warmup_s));
  {
    for (auto& t : threads) {
      t->take_latencies();
      t->set_measuring(true);
    }
    const auto before = sample_process(pid);
    const double sim_before = own_cpu_seconds();
    const auto syncs_before = read_sync_histogram(api);
    const uint64_t acked_before = counters.acked.load();
    const auto start = Clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(config.run_s));
    const auto after = sample_process(pid);
    const double sim_after = own_cpu_seconds();
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    const uint64_t acked = counters.acked.load() - acked_before;
    result.syncs = sync_window(syncs_before, read_sync_histogram(api));
    for (auto& t : threads) t->set_measuring(false);
    std::vector<double> latencies;
    for (auto& t : threads) {
      auto part = t->take_latencies();
      latencies.insert(latencies.end(), part.begin(), part.end());
    }
    std::sort(latencies.begin(), latencies.end());
    result.samples = latencies.size();
    result.p50_ms = percentile(latencies, 0.50);
    result.p99_ms = percentile(latencies, 0.99);
    result.max_ms = latencies.empty() ? 0 : latencies.back();
    result.shards_per_s = static_cast<double>(acked) / wall;
    result.run_cores = (after.cpu_s - before.cpu_s) / wall;
    result.sim_cores = (sim_after - sim_before) / wall;
    result.rss_mib = after.rss_mib;
  }

  result.longest_turn_ms = 1000 * api.metric("evald_core_turn_seconds_max");
  result.data_fs = evald::bench::filesystem_type(cluster.coordinator().data_dir());
  // 4. pages, with the fleet busy (the first page of /v1/workers: 1,000 workers at most)
  std::tie(result.metrics_kib, result.metrics_ms) = page(api, "/metrics");
  std::tie(result.workers_kib, result.workers_ms) = page(api, "/v1/workers");
  result.peak_rss_mib = sample_process(pid).peak_rss_mib;
  result.rehellos = counters.rehellos.load();
  const auto campaign = api.campaign(id);
  std::printf(
      "run workers=%zu slots=%u shard_ms=%lld connect_s=%.2f idle_coordinator_cores=%.3f "
      "heartbeat_cpu_us=%.1f latency_samples=%zu p50_ms=%.2f p99_ms=%.2f max_ms=%.2f "
      "durable_shards_per_s=%.0f longest_turn_ms=%.1f wal_syncs=%.0f wal_syncs_over_10ms=%.0f "
      "wal_sync_max_le_ms=%.0f data_fs=\"%s\" run_coordinator_cores=%.2f run_fleet_cores=%.2f "
      "rss_mib=%.1f "
      "peak_rss_mib=%.1f "
      "metrics_kib=%.1f metrics_ms=%.1f workers_kib=%.1f workers_ms=%.1f rehellos=%llu "
      "undecodable=%llu campaign_succeeded=%lld/%lld\n",
      worker_count, config.slots, static_cast<long long>(config.shard_ms), result.connect_s,
      result.idle_cores, result.heartbeat_us_cpu, result.samples, result.p50_ms, result.p99_ms,
      result.max_ms, result.shards_per_s, result.longest_turn_ms, result.syncs.syncs,
      result.syncs.slower_than_10ms, result.syncs.max_le_ms, result.data_fs.c_str(),
      result.run_cores, result.sim_cores, result.rss_mib, result.peak_rss_mib, result.metrics_kib,
      result.metrics_ms, result.workers_kib, result.workers_ms,
      static_cast<unsigned long long>(result.rehellos),
      static_cast<unsigned long long>(counters.undecodable.load()),
      static_cast<long long>(campaign.at("shards").at("succeeded").get<int64_t>()),
      static_cast<long long>(campaign.at("total").get<int64_t>()));
  std::fflush(stdout);
  return result;
}

// Each simulated worker is a socket (two file descriptors here, one in the coordinator, which
// inherits this limit): raise the soft limit to the hard one.
void raise_open_files_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = evald::po;
  po::options_description options("evald-bench-fleet options");
  auto add = options.add_options();
  add("workers", po::value<std::string>()->default_value("100,1000,5000"),
      "comma-separated fleet sizes");
  add("slots", po::value<uint32_t>()->default_value(8), "slots of every simulated worker");
  add("shards", po::value<int64_t>()->default_value(1'000'000), "shards in the campaign");
  add("models", po::value<int64_t>()->default_value(10), "models (shards split evenly)");
  add("benchmarks", po::value<int64_t>()->default_value(10), "benchmarks");
  add("shard-ms", po::value<int64_t>()->default_value(1000),
      "how long a simulated worker holds each assignment before its result");
  add("jitter", po::value<double>()->default_value(0.5),
      "each assignment runs shard-ms x (1 + jitter x u), u uniform in [-1, 1]");
  add("heartbeat-ms", po::value<int64_t>()->default_value(1000), "coordinator --heartbeat-ms");
  add("idle-s", po::value<int64_t>()->default_value(10), "idle phase (heartbeat cost)");
  add("warmup-s", po::value<int64_t>()->default_value(5), "run time before measuring");
  add("run-s", po::value<int64_t>()->default_value(30), "measured run time");
  add("threads", po::value<size_t>()->default_value(4), "threads serving the simulated fleet");
  evald::ParsedArgs args;
  FleetConfig config;
  try {
    args = evald::parse_args(argc, argv, options);
    if (args.help) {
      std::cout << "Usage: evald-bench-fleet [options]\n\n"
                   "N simulated workers (one process, real protocol, one DEALER each) against a\n"
                   "real coordinator: connect time, heartbeat cost, dispatch latency, durable\n"
                   "shards/s, coordinator CPU and RSS, /metrics and /v1/workers size.\n\n"
                << options << '\n';
      return 0;
    }
    const auto& v = args.values;
    config.workers = evald::bench::parse_counts(v["workers"].as<std::string>());
    config.slots = v["slots"].as<uint32_t>();
    config.shards = v["shards"].as<int64_t>();
    config.models = v["models"].as<int64_t>();
    config.benchmarks = v["benchmarks"].as<int64_t>();
    config.shard_ms = v["shard-ms"].as<int64_t>();
    config.heartbeat_ms = v["heartbeat-ms"].as<int64_t>();
    config.jitter = v["jitter"].as<double>();
    config.idle_s = v["idle-s"].as<int64_t>();
    config.warmup_s = v["warmup-s"].as<int64_t>();
    config.run_s = v["run-s"].as<int64_t>();
    config.threads = v["threads"].as<size_t>();
    if (config.slots == 0 || config.shards <= 0 || config.models <= 0 || config.benchmarks <= 0 ||
        config.shard_ms < 0 || config.heartbeat_ms <= 0 || config.idle_s <= 0 ||
        config.warmup_s < 0 || config.run_s <= 0 || config.threads == 0 || config.jitter < 0 ||
        config.jitter > 1) {
      throw std::invalid_argument(
          "counts and times must be positive (--shard-ms may be 0), --jitter within 0..1");
    }
  } catch (const std::exception& e) {
    std::cerr << "evald-bench-fleet: " << e.what() << "\n(see evald-bench-fleet --help)\n";
    return 2;
  }
  raise_open_files_limit();

  std::vector<FleetResult> results;
  try {
    for (const size_t workers : config.workers) results.push_back(run_fleet(config, workers));
  } catch (const std::exception& e) {
    std::cerr << "evald-bench-fleet: " << e.what() << "\n";
    return 1;
  }
  std::printf("\nslots=%u shard_ms=%lld jitter=%.2f shards=%lld cpus=%u\n", config.slots,
              static_cast<long long>(config.shard_ms), config.jitter,
              static_cast<long long>(config.shards), std::thread::hardware_concurrency());
  std::printf("%8s %10s %9s %9s %12s %10s %9s %11s %9s %10s %11s %12s %11s\n", "workers",
              "connect_s", "p50_ms", "p99_ms", "shards/s", "hb_cpu_us", "cores", "fleet_cores",
              "rss_MiB", "peak_MiB", "metrics_KiB", "workers_KiB", "syncs>10ms");
  for (const auto& r : results) {
    std::printf(
        "%8zu %10.2f %9.2f %9.2f %12.0f %10.1f %9.2f %11.2f %9.1f %10.1f %11.1f %12.1f %11.0f\n",
        r.workers, r.connect_s, r.p50_ms, r.p99_ms, r.shards_per_s, r.heartbeat_us_cpu, r.run_cores,
        r.sim_cores, r.rss_mib, r.peak_rss_mib, r.metrics_kib, r.workers_kib,
        r.syncs.slower_than_10ms);
  }
  if (!results.empty()) std::printf("data dir file system: %s\n", results.front().data_fs.c_str());
  return 0;
}
