// Core: the coordinator's event loop. One thread (the caller of run()) owns the ZeroMQ ROUTER, the
// Scheduler and the Store; the HTTP server thread hands requests in through post(), and a WalSyncer
// thread (store.hpp) makes the store durable.
//
// One turn of the loop:
//   1. read up to kMaxMessagesPerTurn worker messages and apply them (results, hellos, ...);
//   2. check access of the HTTP requests queued since the last turn (refusals are audited) and
//      apply the mutations (submit, rerun, cancel);
//   3. timers (liveness, retries) and dispatch of ready shards to free worker slots;
//   4. write every store change of the turn in ONE RocksDB batch, not yet synced (Store::write);
//   5. render the read requests, encode the turn's ACKs / ASSIGNs / CANCELs / answers, and HOLD
//      them: they leave only once the WAL sync that covers this turn's batch has succeeded.
//
// The pipeline: the WAL sync of one turn runs on the WalSyncer's thread while the core runs the
// next turns, so a shallow pipeline (few slots per worker, small turns) no longer pays an fsync
// per turn on the core thread. The core asks for a sync after every turn that wrote; one sync
// covers every batch written before it started, so turns written while a sync runs share the next
// one. Held turns are released strictly in order, all those that became durable in one pass over
// the ROUTER (batched sends), as soon as the sync thread's eventfd wakes the poll.
//
// Invariant: nothing derived from a turn (a message to a worker, an HTTP answer, a rendered read,
// which may show state of any earlier turn) leaves the process before that turn's batch, and so
// every earlier batch, is durable. Memory and reads of the store run ahead of the disk; that is
// safe because nobody outside has seen the difference: a crash loses only un-acknowledged work,
// which workers re-send and clients retry. A failed write or sync is fatal: the coordinator stops
// without releasing anything of the failed turn or any later one, and the next start recovers
// from the store (which holds a prefix of the written batches: the WAL replays in order).
// Metrics (/metrics, served by the HTTP thread) are observability, not acknowledgements: they may
// count what is not durable yet.
//
// Worker identity: the ROUTER gives every connection its own routing id, and a HELLO binds the
// worker's name to the connection it arrived on (with CURVE the name must be the one the ZAP
// handler bound to the peer's key). The scheduler only ever sees names: the core translates
// incoming connections to names and outgoing names to their current connection, at the end of the
// turn that staged the message (not when it is released), so a message held across a reconnect
// goes to the connection it was meant for, as it would have without the pipeline. A message from
// a connection that is no name's current one (never said HELLO, or replaced by a newer HELLO)
// changes nothing: it is counted, and the connection is asked to HELLO again.
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

  // Serves until a signal arrives on `signals`; then commits what is staged, waits until it is
  // durable, releases what is held and returns. Throws std::runtime_error on a failed store
  // write or WAL sync (fail-stop: nothing held is released).
  void run(const SignalPipe& signals);

 private:
  struct PendingHttp {
    HttpRequest request;
    HttpRespond respond;
  };
  // One encoded message for a worker, addressed to the connection current when it was staged.
  struct OutFrame {
    std::string connection;
    std::string who;  // the worker's name, or "conn-..." for an unbound connection (logs)
    protocol::MessageType type{};
    std::string payload;
  };
  // What one or more consecutive turns will tell the outside once store write `durable_at` is
  // durable (durable_at 0: nothing of theirs needs a sync).
  struct HeldTurn {
    uint64_t durable_at = 0;
    std::vector<OutFrame> frames;
    std::vector<std::pair<HttpRespond, HttpResponse>> answers;
  };
  void serve(const SignalPipe& signals);
  void read_messages();
  // Ends a turn: the scheduler's turn (Scheduler::run_turn, or only its commit for `kCommitOnly`
  // on the way out) with the batch written but not synced, then the HTTP answers and rendered
  // reads; all of it is held until the batch is durable, and a sync is requested.
  enum class TurnKind { kFull, kCommitOnly };
  void end_turn(TurnKind kind, std::vector<PendingHttp>& reads,
                std::vector<std::pair<HttpRespond, HttpResponse>>& answers);
  // Sends and answers every held turn whose batch is durable, oldest first, in one pass. Throws
  // (fail-stop) if a sync failed.
  void release_durable(const WalSyncer::Progress& progress);
  [[noreturn]] void stop_on_store_failure(const char* op, const std::string& error);
  // Every message of a turn goes through here: encoded and addressed now, sent when durable.
  // Decodes and applies one message from `connection` (its frames after the routing id).
  void on_frames(const std::string& connection, std::vector<zmq::message_t>& frames);
  // Any message but HELLO from a connection that is no worker's current one.
  void reject_unbound(const std::string& connection, const zmq::message_t& frame,
                      const protocol::Message& message);
  // Stages a message to a worker by name, through its current connection.
  void send_to(const std::string& name, const protocol::Message& message);
  void send_on(const std::string& connection, const std::string& who,
               const protocol::Message& message);
  // Hands one held frame to ZeroMQ (never blocks: a full pipe drops it, counted).
  void transmit(const OutFrame& frame);
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
  // The turn being built: what it stages is appended here, then held or released at its end.
  HeldTurn staging_;
  std::deque<HeldTurn> held_;  // oldest first; durable_at never decreases
  uint64_t durable_ = 0;       // every store write up to this one is durable
  // Declared last: its thread syncs the store while the members above are in use, and is
  // joined first when the core is destroyed.
  std::unique_ptr<WalSyncer> syncer_;
};

// "tcp://0.0.0.0:0" -> "tcp://0.0.0.0:*" (ZeroMQ's spelling of "any free port").
std::string zmq_bind_address(const std::string& endpoint);

}  // namespace evald::coordinator
