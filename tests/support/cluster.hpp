// A live evald cluster for the integration tests and the control-plane benchmark: the real
// evald-coordinator and evald-worker binaries as child processes (tests/support/process.hpp) in
// one temp dir, plus Api, a small typed client of the HTTP API that polls with deadlines.
//
// Everything a cluster creates (RocksDB dir, work dirs, logs) lives under its TempDir, and every
// port is picked by the kernel (port 0), so tests can run in parallel. Daemon logs go to
// <dir>/logs/*.log; log_tails() collects them for failure reports. Harness problems (a daemon
// that does not start, an unexpected HTTP status, a deadline that passes) throw
// std::runtime_error with a message that says what was expected and what was seen.
//
// Threads: none of its own; use a Cluster from the thread that created it (children are tied to
// that thread's lifetime by PR_SET_PDEATHSIG).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/http_client.hpp"
#include "tests/support/process.hpp"
#include "tests/support/test_support.hpp"

namespace evald::testing {

// Where the built binaries are (EVALD_BIN_DIR) and the test runner scripts
// (tests/integration/runners, put on the workers' PATH).
std::filesystem::path bin_dir();
std::filesystem::path runners_dir();

struct CoordinatorOptions {
  // Short intervals so failure paths (lost workers, retries) play out in well under a second.
  int64_t heartbeat_ms = 100;
  int64_t worker_timeout_ms = 1000;
  int64_t retry_backoff_ms = 20;
  std::optional<int64_t> max_body_bytes;
  std::string log_level = "info";
  std::vector<std::string> extra_args;
  // Runs the coordinator under `ulimit -n` (soft and hard), e.g. to make exhausting its file
  // descriptors cheap in a test.
  std::optional<int> open_files_limit;
};

// evald-coordinator on 127.0.0.1 with ports picked by the kernel. The first start learns the
// ports from the endpoint line; restart() passes the same ports explicitly so connected workers
// find it again by themselves.
class Coordinator {
 public:
  // Starts it and waits (10 s) for the endpoint line.
  Coordinator(std::filesystem::path data_dir, std::filesystem::path log_file,
              CoordinatorOptions options = {});
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // SIGKILL (if running), then start again on the same data dir and the same ports.
  void restart();
  void kill();
  int terminate();  // SIGTERM, wait; the exit code (0 = graceful stop)
  bool running() { return process_ && process_->running(); }

  const std::string& bind_endpoint() const { return bind_; }  // tcp://127.0.0.1:PORT
  const std::string& http_address() const { return http_; }   // 127.0.0.1:PORT
  std::string http_url() const { return "http://" + http_; }
  ChildProcess& process() { return *process_; }
  const std::filesystem::path& data_dir() const { return data_dir_; }

 private:
  void start(const std::string& bind, const std::string& http);

  std::filesystem::path data_dir_;
  std::filesystem::path log_file_;
  CoordinatorOptions options_;
  std::string bind_;
  std::string http_;
  std::unique_ptr<ChildProcess> process_;
};

struct WorkerOptions {
  std::string name;
  uint32_t slots = 2;
  int64_t heartbeat_ms = 100;
  std::string labels;  // "k=v,..."; empty = none
  std::vector<std::string> extra_args;
  // On top of the default: PATH with runners_dir() first.
  std::vector<std::pair<std::string, std::string>> env;
};

// evald-worker with --gpus none. It needs no readiness line: it connects (and reconnects) by
// itself; wait for it with Api::wait_for_workers.
class Worker {
 public:
  Worker(std::string coordinator_endpoint, std::filesystem::path work_dir,
         std::filesystem::path log_file, WorkerOptions options);
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void restart();  // SIGKILL (if running), then start again with the same name and work dir
  void kill();
  int terminate();
  void stop() { process_->stop(); }
  void resume() { process_->resume(); }
  bool running() { return process_ && process_->running(); }

  const std::string& name() const { return options_.name; }
  ChildProcess& process() { return *process_; }

 private:
  void start();

  std::string coordinator_;
  std::filesystem::path work_dir_;
  std::filesystem::path log_file_;
  WorkerOptions options_;
  std::unique_ptr<ChildProcess> process_;
};

// The coordinator's HTTP API with the checks every test needs. Transport errors and unexpected
// statuses throw std::runtime_error naming the request, the status and the body.
class Api {
 public:
  // `client`: a bearer token (and, for https, the CA) sent with every request.
  explicit Api(const std::string& url, HttpClientOptions client = {});

  // Any status; throws only if the server cannot be reached.
  HttpResponse request(const std::string& method, const std::string& target,
                       const std::string& body = "") const;
  nlohmann::json get(const std::string& target) const;  // expects 200 and a JSON body
  nlohmann::json post(const std::string& target, const nlohmann::json& body,
                      int expected_status = 200) const;

  std::string submit(const nlohmann::json& spec) const;  // expects 201; the campaign id
  nlohmann::json campaign(const std::string& id) const;
  nlohmann::json results(const std::string& id) const;
  nlohmann::json shards(const std::string& id, const std::string& state = "") const;
  nlohmann::json workers() const;  // the "workers" array

  // Polls GET /v1/campaigns/ID every `interval` until its state is `state`. Throws when the
  // timeout passes, or as soon as the campaign reaches a different final state (nothing will
  // change it by itself), naming the last state and shard counts seen.
  nlohmann::json wait_for_state(
      const std::string& id, const std::string& state,
      std::chrono::milliseconds timeout = std::chrono::seconds(30),
      std::chrono::milliseconds interval = std::chrono::milliseconds(20)) const;
  // Polls GET /v1/workers until `count` workers are connected.
  void wait_for_workers(size_t count,
                        std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;
  // Sum of the samples of a metric family in GET /metrics whose labels include every one of
  // `labels` (all label sets when empty). A family the page does not declare (no "# TYPE name"
  // line) throws, so a renamed metric fails a test instead of reading as 0; a declared family
  // with no matching sample is 0.
  double metric(const std::string& name,
                const std::map<std::string, std::string>& labels = {}) const;
  // The same, for polling until a family's first sample appears: nullopt while undeclared.
  std::optional<double> metric_if_declared(
      const std::string& name, const std::map<std::string, std::string>& labels = {}) const;

  const HttpUrl& url() const { return url_; }
  const HttpClientOptions& client() const { return client_; }

 private:
  HttpUrl url_;
  HttpClientOptions client_;
};

struct ClusterOptions {
  CoordinatorOptions coordinator;
  size_t workers = 2;  // named w1, w2, ...
  uint32_t slots = 2;
  // Every worker's --queue-ahead; nullopt: the worker's default.
  std::optional<uint32_t> queue_ahead;
  int64_t worker_heartbeat_ms = 100;
  std::string dir_prefix = "evald-integ";
  bool wait_for_workers = true;  // the constructor returns once all workers are connected
  // CURVE on the worker socket: the cluster writes a key pair for the coordinator and for each of
  // w1 .. w<workers + curve_spare_workers> under curve_keys_dir(), lists those workers in the
  // coordinator's --worker-keys file and passes the key flags to every daemon. A worker added
  // later under one of those names gets its keys too (unless its extra_args set --curve-secret).
  bool curve = false;
  size_t curve_spare_workers = 4;
};

class Cluster {
 public:
  explicit Cluster(ClusterOptions options = {});
  // Stops the workers first (so they do not log a lost coordinator), then the coordinator; the
  // temp dir goes last. Prints log_tails() to stderr if it is destroyed by an exception.
  virtual ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  const std::filesystem::path& dir() const { return dir_.path(); }
  std::filesystem::path log_dir() const { return dir() / "logs"; }
  Coordinator& coordinator() { return *coordinator_; }
  Worker& worker(size_t index) { return *workers_.at(index); }
  size_t worker_count() const { return workers_.size(); }
  // Name w<N+1>, and the cluster's slots and heartbeat: a base for add_worker(options).
  WorkerOptions worker_defaults() const;
  // Starts one more worker, with worker_defaults() or as given (an empty name becomes w<N+1>).
  Worker& add_worker();
  Worker& add_worker(WorkerOptions options);
  Api api() const { return Api(coordinator_->http_url()); }

  // With ClusterOptions::curve: NAME.secret / NAME.public per worker, coordinator.secret /
  // coordinator.public, and worker-keys (the allowlist).
  std::filesystem::path curve_keys_dir() const { return dir() / "keys"; }
  // --curve-secret and --coordinator-key for a worker NAME with keys in curve_keys_dir().
  std::vector<std::string> worker_curve_args(const std::string& name) const;

  // "==> NAME.log <==" and the last bytes of every log, for failure reports.
  std::string log_tails(size_t bytes_per_log = 6000) const;

 protected:
  // Set by whoever printed log_tails() already, so a failure shows the logs once.
  bool logs_shown_ = false;

 private:
  TempDir dir_;
  ClusterOptions options_;
  std::unique_ptr<Coordinator> coordinator_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace evald::testing
