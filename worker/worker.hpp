// Worker: the evald-worker event loop. It connects a DEALER to the coordinator, says HELLO on
// every (re)connection, caches campaign specs, runs assignments on the noop or exec runner, and
// sends their results back, keeping each one until the coordinator ACKs it (in memory, and for
// exec results also in the on-disk outbox). See worker.cpp for the loop and its guarantees.
//
// Threads: run() is the main thread and the only one that touches the ZeroMQ socket; the exec
// runner has a thread of its own (exec_runner.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>
#include <zmq.hpp>

#include "common/clock.hpp"
#include "common/protocol.hpp"
#include "common/result.hpp"
#include "common/spec.hpp"
#include "worker/exec_runner.hpp"
#include "worker/model_server.hpp"
#include "worker/openai_runner.hpp"
#include "worker/outbox.hpp"
#include "worker/runner.hpp"
#include "worker/unique_fd.hpp"
#include "worker/worker_config.hpp"
#include "worker/worker_metrics.hpp"

namespace evald::worker {

// Counters of what the worker did, logged when it stops (and readable by tests).
struct WorkerStats {
  uint64_t assigned = 0;        // assignments received
  uint64_t results_sent = 0;    // results sent the first time
  uint64_t results_failed = 0;  // of those, failed attempts
  uint64_t results_resent = 0;  // re-sent after WELCOME, an ASSIGN repeat or an ACK timeout
  uint64_t acked = 0;
  uint64_t cancelled = 0;
  uint64_t bad_messages = 0;   // frames that did not decode, or of a type we never receive
  uint64_t sends_dropped = 0;  // sends refused because no coordinator was connected
  // Results whose outbox write failed: sent anyway, with no copy on this node's disk.
  uint64_t outbox_write_failures = 0;
  uint64_t loop_turns = 0;  // event-loop iterations: an idle worker must not spin
};

class Worker {
 public:
  // Everything that can fail at startup happens here: the work dir is created and locked against
  // a second worker, the outbox is opened and loaded, the socket is set up, and the metrics
  // server listens if config.metrics names an address. The coordinator does not need to be up.
  // `clock` must outlive the worker and be safe to read from two threads.
  static Result<std::unique_ptr<Worker>> create(WorkerConfig config, const Clock& clock);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs until stop_fd (a SignalPipe's fd) becomes readable, then drains: DRAIN to the
  // coordinator, running shards get up to drain_timeout to finish while results and ACKs still
  // flow, what is left is killed, unACKed results are written to the outbox. A second stop ends
  // the drain at once. Returns kExitOk after a graceful stop, kExitFailure if the loop failed or
  // results could not be saved.
  int run(int stop_fd);

  const WorkerStats& stats() const { return stats_; }
  // Where /metrics is served ("127.0.0.1:41235"), or "" without --metrics.
  std::string metrics_address() const;

 private:
  struct Campaign {
    std::string id;
    std::optional<CampaignSpec> spec;  // empty when the spec did not parse
    std::string error;                 // why, then
  };
  struct Pending {  // a result sent and not yet ACKed
    protocol::ShardResult result;
    std::chrono::steady_clock::time_point sent_at;
    bool exec = false;        // from the exec runner: its outbox file goes when it is ACKed
    bool on_disk = false;     // in the outbox now
    uint64_t disk_bytes = 0;  // the size of its outbox file, while on_disk
  };
  struct Outgoing {  // a result finished this turn, sent at the end of it
    protocol::ShardResult result;
    bool exec = false;
  };

  Worker(WorkerConfig config, const Clock& clock, UniqueFd lock, Outbox outbox);
  void connect();
  void load_outbox();

  void loop(int stop_fd);
  std::chrono::milliseconds poll_wait() const;
  void on_stop(int stop_fd);
  // The drain of --idle-exit-s: nothing to do for that long, so the worker leaves by itself.
  void check_idle_exit();
  void read_monitor();
  void read_socket();
  void handle(protocol::Message& message);
  void on_welcome(const protocol::Welcome& welcome);
  void on_campaign(const protocol::CampaignInfo& info);
  void on_assign(const protocol::Assign& assign);
  // Checks an assignment and starts it on its runner (or fails it, naming why).
  void start_assignment(const protocol::Assignment& a);
  // Starts queued assignments while slots are free; true if it started any.
  bool start_queued();
  // Drain: queued attempts never started; they go back to the coordinator at once.
  void hand_back_queued();
  void on_ack(const protocol::Ack& ack);
  void on_cancel(const protocol::Cancel& cancel);
  void collect_exec_results();
  void collect_openai_results();
  void on_serve_events();
  // Starts an attempt whose model server is ready (or whose model has an endpoint).
  void start_served(const protocol::Assignment& assignment, std::string endpoint);
  // The runner side of an attempt that ends early (cancel, server lost, drain): stops it in
  // whichever runner has it and lets go of its model server.
  void stop_attempt(uint64_t attempt_id);
  void flush_results();
  void on_timers();
  bool drain_done();
  void kill_running(const std::string& reason);
  void hand_back_running();
  // The drain is over: GOODBYE, so the coordinator retires us now rather than counting us lost.
  void say_goodbye();
  bool persist_unacked();

  void try_send_hello();
  // A heartbeat with the model servers' status when it changed since the last one sent.
  void send_serve_status();
  protocol::ServeStatus serve_status() const;
  // send_frame for RESULTS: refused (false) while our HELLO on this connection is not yet sent;
  // they go after its WELCOME.
  bool send_results_frame(const std::string& frame);
  // Any frame but HELLO: HELLO goes first on a new connection, or the frame is not sent (false).
  bool send_frame(const std::string& frame);
  // True when the current connection (if any) has had our HELLO. Reads the monitor first, and
  // sends the HELLO now if a new connection is waiting for one.
  bool hello_sent_on_connection();
  // The socket send itself; false when nothing is connected.
  bool send_raw(const std::string& frame);
  void resend(const std::vector<Pending*>& pending);
  void fail(const protocol::Assignment& assignment, std::string error);
  // Every insertion into unacked_ goes through here, so the outbox gauges stay true.
  void put_unacked(uint64_t attempt_id, Pending pending);
  void publish_metrics();

  WorkerConfig config_;
  const Clock& clock_;
  std::string instance_;
  std::string host_;  // gethostname(), sent in HELLO for provenance
  UniqueFd lock_fd_;  // flock on <work-dir>/.lock, held for the worker's life
  Outbox outbox_;

  // Declared before the sockets: a context outlives its sockets.
  zmq::context_t context_;
  zmq::socket_t socket_;
  zmq::socket_t monitor_;  // connection events of socket_ (zmq_socket_monitor)

  NoopRunner noop_runner_;
  std::unique_ptr<ExecRunner> exec_runner_;
  std::shared_ptr<ServeMetrics> serve_metrics_;
  std::unique_ptr<OpenAiRunner> openai_runner_;
  std::unique_ptr<ModelServers> model_servers_;

  std::unordered_map<uint32_t, Campaign> campaigns_;
  std::unordered_map<uint64_t, protocol::Assignment> running_;  // exec and openai attempts
  // Assignments beyond the slots (--queue-ahead), started in this order as slots free.
  std::deque<protocol::Assignment> queued_;
  // Of running_, the attempts waiting for their model server (phase "loading").
  std::unordered_map<uint64_t, bool> loading_;
  std::unordered_map<uint64_t, Pending> unacked_;
  std::vector<Outgoing> outgoing_;

  std::chrono::milliseconds heartbeat_;
  std::chrono::steady_clock::time_point last_heard_;
  std::chrono::steady_clock::time_point next_heartbeat_;
  std::chrono::steady_clock::time_point next_resend_check_;
  std::chrono::steady_clock::time_point drain_deadline_;
  std::optional<std::chrono::steady_clock::time_point> ack_wait_deadline_;
  // --idle-exit-s: the last time the worker had a shard or an unacknowledged result.
  std::chrono::steady_clock::time_point busy_at_;
  // An idle drain ends no sooner than this: an ASSIGN the coordinator sent before it read our
  // DRAIN may still be on the wire, and it is run rather than left to the worker timeout.
  std::optional<std::chrono::steady_clock::time_point> drain_quiet_until_;
  // The drain began because the worker was idle (--idle-exit-s), not on a stop signal.
  bool idle_drain_ = false;
  bool connected_ = false;  // the monitor saw a handshake and no disconnect since
  std::chrono::steady_clock::time_point next_handshake_warning_{};
  // Set by a handshake or a REHELLO, cleared once HELLO is out. Never set otherwise: a second
  // HELLO on one connection could make a coordinator forget the assignments in flight.
  bool hello_pending_ = false;
  bool awaiting_welcome_ = false;  // HELLO sent on this connection, no WELCOME yet
  uint64_t handshakes_ = 0;        // completed handshakes the monitor reported
  bool silent_ = false;  // "coordinator silent" was logged and nothing has been heard since
  bool draining_ = false;
  std::optional<protocol::ServeStatus> status_sent_;  // the last status the coordinator got
  WorkerStats stats_;
  size_t outbox_files_ = 0;  // unacked_ entries with on_disk
  uint64_t outbox_bytes_ = 0;
  WorkerMetrics metrics_;
  // Last member: it is destroyed (its HTTP thread joined) before anything it reads goes away.
  std::unique_ptr<MetricsServer> metrics_server_;
};

}  // namespace evald::worker
