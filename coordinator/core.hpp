// Core: the coordinator's event loop. One thread (the caller of run()) owns the ZeroMQ ROUTER, the
// Scheduler and the Store; the HTTP server thread hands requests in through post().
//
// One turn of the loop:
//   1. read up to kMaxMessagesPerTurn worker messages and apply them (results, hellos, ...);
//   2. check access of the HTTP requests queued since the last turn (refusals are audited) and
//      apply the mutations (submit, rerun, cancel);
//   3. timers (liveness, retries) and dispatch of ready shards to free worker slots;
//   4. commit every store write of the turn in ONE synced RocksDB batch (group commit);
//   5. only then send ACKs / ASSIGNs / CANCELs and answer HTTP (reads are rendered now).
// So nothing a worker or a client has been told can be lost by a crash, and the cost of the fsync
// is shared by everything that happened in the turn. A failed commit is fatal: the coordinator
// stops without telling anybody anything of that turn, and the next start recovers from the store.
#pragma once

#include <chrono>
#include <deque>
#include <mutex>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "common/http_server.hpp"
#include "common/signal_pipe.hpp"
#include "coordinator/api.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/store.hpp"

namespace evald::coordinator {

struct CoreOptions {
  std::string bind = "tcp://0.0.0.0:5555";
  size_t max_message_bytes = 64u << 20;
};

class Core {
 public:
  // Binds the ROUTER; throws std::runtime_error naming the endpoint if it cannot.
  Core(const CoreOptions& options, Store& store, Scheduler& scheduler, Api& api, Metrics& metrics);
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  // "tcp://127.0.0.1:41234": the endpoint actually bound (port 0 resolved).
  const std::string& bound_endpoint() const { return endpoint_; }

  // Thread-safe: queues an HTTP request for the core thread and wakes it.
  void post(HttpRequest request, HttpRespond respond);

  // Serves until a signal arrives on `signals`; then commits what is staged and returns.
  // Throws std::runtime_error on a failed store commit (fail-stop).
  void run(const SignalPipe& signals);

 private:
  struct PendingHttp {
    HttpRequest request;
    HttpRespond respond;
  };
  void read_messages();
  void commit_and_send(std::vector<PendingHttp>& reads,
                       std::vector<std::pair<HttpRespond, HttpResponse>>& answers);
  void send_to(const std::string& identity, const protocol::Message& message);

  Store& store_;
  Scheduler& scheduler_;
  Api& api_;
  Metrics& metrics_;
  zmq::context_t context_;
  zmq::socket_t router_;
  std::string endpoint_;
  int wake_fd_ = -1;
  std::mutex http_mutex_;
  std::deque<PendingHttp> http_queue_;  // guarded by http_mutex_
  std::array<prometheus::Counter*, 32> sent_by_type_{};
};

// "tcp://0.0.0.0:0" -> "tcp://0.0.0.0:*" (ZeroMQ's spelling of "any free port").
std::string zmq_bind_address(const std::string& endpoint);

}  // namespace evald::coordinator
