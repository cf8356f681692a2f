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
//
// Worker identity: the ROUTER gives every connection its own routing id, and a HELLO binds the
// worker's name to the connection it arrived on (with CURVE the name must be the one the ZAP
// handler bound to the peer's key). The scheduler only ever sees names: the core translates
// incoming connections to names and outgoing names to their current connection. A message from
// a connection that is no name's current one (never said HELLO, or replaced by a newer HELLO)
// changes nothing: it is counted, and the connection is asked to HELLO again.
// So nothing a worker or a client has been told can be lost by a crash, and the cost of the fsync
// is shared by everything that happened in the turn. A failed commit is fatal: the coordinator
// stops without telling anybody anything of that turn, and the next start recovers from the store.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>
#include <zmq.hpp>

#include "common/curve_keys.hpp"
#include "common/http_server.hpp"
#include "common/signal_pipe.hpp"
#include "coordinator/api.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/store.hpp"
#include "coordinator/worker_auth.hpp"

namespace evald::coordinator {

struct CoreOptions {
  std::string bind = "tcp://127.0.0.1:5555";
  size_t max_message_bytes = 8u << 20;
  std::optional<CurveServerOptions> curve;  // none: plain TCP, the HELLO's name is believed
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
  // Ends a turn: the scheduler's turn (Scheduler::run_turn, or only its commit and sends for
  // `kCommitOnly` on the way out), then the HTTP answers, which follow the commit.
  enum class TurnKind { kFull, kCommitOnly };
  void commit_and_send(TurnKind kind, std::vector<PendingHttp>& reads,
                       std::vector<std::pair<HttpRespond, HttpResponse>>& answers);
  // Decodes and applies one message from `connection` (its frames after the routing id).
  void on_frames(const std::string& connection, std::vector<zmq::message_t>& frames);
  // Any message but HELLO from a connection that is no worker's current one.
  void reject_unbound(const std::string& connection, const zmq::message_t& frame,
                      const protocol::Message& message);
  // Sends to a worker by name, through its current connection.
  void send_to(const std::string& name, const protocol::Message& message);
  void send_on(const std::string& connection, const std::string& who,
               const protocol::Message& message);
  void count_dropped(const char* reason);

  Store& store_;
  Scheduler& scheduler_;
  Api& api_;
  Metrics& metrics_;
  PeerLogLimit log_limit_;
  PeerLogLimit rehello_limit_{std::chrono::seconds(1)};  // per unbound connection
  zmq::context_t context_;
  // Declared after the context and before the ROUTER: it must be bound before the ROUTER
  // accepts a connection, and its thread joined before the context is terminated.
  std::unique_ptr<ZapHandler> zap_;
  zmq::socket_t router_;
  const bool curve_;
  Connections connections_;
  std::string endpoint_;
  int wake_fd_ = -1;
  std::mutex http_mutex_;
  std::deque<PendingHttp> http_queue_;  // guarded by http_mutex_
  std::array<prometheus::Counter*, 32> sent_by_type_{};
  std::unordered_map<std::string, prometheus::Counter*> dropped_by_reason_;
};

// "tcp://0.0.0.0:0" -> "tcp://0.0.0.0:*" (ZeroMQ's spelling of "any free port").
std::string zmq_bind_address(const std::string& endpoint);

}  // namespace evald::coordinator
