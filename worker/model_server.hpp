// ModelServers: the model servers a worker runs for models with `serve` (docs/served-models.md).
// One server per (model, serve spec, GPU set); shards of that model share it, several at once.
//
// Life of a server: started on the shard's GPUs (CUDA_VISIBLE_DEVICES) in its own process group
// on a free loopback port, with PR_SET_PDEATHSIG and a pidfile under <work-dir>/servers (so a
// worker killed with SIGKILL leaves nothing running once it restarts: reap_stale() kills what the
// pidfiles name); polled at its health URL until it answers 200 (up to ready_timeout_s); then
// every attempt waiting for it is told its endpoint. It stays up while attempts use it and for
// keep_warm_s after the last one; it is stopped (SIGTERM to the group, SIGKILL after a grace)
// when that runs out, when a shard of another model needs its GPUs, or when the worker stops.
// A server that exits, or is not ready in time, fails every attempt waiting for or using it with
// the last lines of its stderr; the next shard of the model starts a fresh one.
//
// Threads: the public methods are called on the worker's main thread. A manager thread runs an
// Asio io_context that spawns, polls, times and reaps the servers; what the main thread must act
// on (ready, failed) comes back through a mutex-guarded queue and an eventfd (wake_fd()).
// Health polls are short blocking requests on that thread (loopback, 1 s at most each).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "common/spec.hpp"

namespace evald::worker {

class ServeMetrics;

// What an attempt needs from a server.
struct ServeRequest {
  uint64_t attempt_id = 0;
  std::string model;  // the model's name (metrics, logs, {model})
  ServeSpec serve;
  std::vector<uint32_t> gpus;  // the attempt's GPUs; the server runs on exactly these
};

// Told to the main thread: the attempt's server is ready (endpoint set), or it failed (error set;
// the attempt must fail with it, whether it was still waiting or already running).
struct ServeEvent {
  uint64_t attempt_id = 0;
  bool ready = false;
  std::string endpoint;  // "http://127.0.0.1:PORT/v1"
  std::string error;
  // The server failed to start (exited or could not be spawned before it was ready, or was not
  // ready in time), as opposed to failing while serving or being stopped: the coordinator backs
  // off a model whose server keeps failing to start on this worker.
  bool start_failed = false;
  uint64_t server_id = 0;  // start_failed: which start (one failed start fails every waiter)
  std::string reason{};    // start_failed: the server's last stderr line, or why it was killed
};

// A server that is up (ready) now, for HELLO and heartbeats.
struct WarmServer {
  std::string model;
  std::vector<uint32_t> gpus;
  bool ready = false;
  uint32_t users = 0;                      // attempts using it now
  std::chrono::milliseconds load_time{0};  // ready: from its start to its first healthy answer
};

struct ModelServersOptions {
  std::filesystem::path dir;  // pidfiles and each server's {work_dir}
  std::chrono::milliseconds stop_grace{10000};
  std::chrono::milliseconds health_interval{200};
};

class ModelServers {
 public:
  // `metrics` may be null (unit tests); otherwise it must outlive this object.
  ModelServers(ModelServersOptions options, const Clock& clock, ServeMetrics* metrics);
  // Stops every server (SIGTERM, SIGKILL after the grace), reaps them, joins the thread.
  ~ModelServers();
  ModelServers(const ModelServers&) = delete;
  ModelServers& operator=(const ModelServers&) = delete;

  // Kills the process groups named by pidfiles in `dir` that are still the processes we started
  // (same start time), and removes the pidfiles. Call before the first acquire. Returns how many
  // groups were killed.
  static size_t reap_stale(const std::filesystem::path& dir);

  // The attempt needs the server for request.model on request.gpus: a ready one is handed out
  // at once (an event follows), a starting one is waited for, otherwise one is started.
  void acquire(ServeRequest request);
  // The attempt no longer needs its server (finished, cancelled or failed). Unknown ids are fine.
  void release(uint64_t attempt_id);
  // Stops every server that no attempt uses, now (the worker drains).
  void stop_idle();

  int wake_fd() const;
  std::vector<ServeEvent> take_events();
  std::vector<WarmServer> warm() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Substitutes {port} {model} {gpus} {gpu_count} {work_dir} in one serve.command argument; any
// other {word} is left as it is.
std::string substitute_serve_placeholders(std::string_view text, uint16_t port,
                                          const std::string& model, const std::string& gpus,
                                          size_t gpu_count, const std::string& work_dir);

// The last `lines` lines of `text` (at most `max_bytes`), for error messages.
std::string last_lines(std::string_view text, size_t lines = 8, size_t max_bytes = 2048);

}  // namespace evald::worker
