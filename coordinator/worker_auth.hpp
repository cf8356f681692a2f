// Who is on the other end of the worker socket: the ZAP handler that admits CURVE peers by their
// public key, the table that binds each worker name to the one ROUTER connection it said HELLO
// on, and the rate limit for the log lines about refused peers.
//
// Threads: ZapHandler runs its own thread (its REP socket is used there only); Connections is
// the core thread's; PeerLogLimit is shared by both and locks.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <zmq.hpp>

#include "common/curve_keys.hpp"
#include "coordinator/metrics.hpp"

namespace evald::coordinator {

// CURVE on the worker socket: the coordinator's secret key and the workers allowed in.
struct CurveServerOptions {
  std::string secret_z85;
  WorkerKeys worker_keys;
};

// ZeroMQ's fixed endpoint for the ZAP handler of a context (RFC 27).
inline constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";

// At most one log line per peer address and minute about refused connections, so a peer that
// retries every 100 ms (ZeroMQ reconnects by itself) cannot flood the log. The counter metric
// still counts every refusal.
class PeerLogLimit {
 public:
  explicit PeerLogLimit(std::chrono::steady_clock::duration interval = std::chrono::minutes(1))
      : interval_(interval) {}
  // True if a line about `peer` may be logged now (and records that it was).
  bool allow(const std::string& peer, std::chrono::steady_clock::time_point now);

 private:
  std::chrono::steady_clock::duration interval_;
  std::mutex mutex_;
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> last_;  // guarded
};

// Counts a refused worker connection in evald_worker_auth_failures_total{reason} and logs it
// (at most once per reason, peer address and minute). Thread-safe.
void count_auth_failure(Metrics& metrics, PeerLogLimit& log_limit, const std::string& reason,
                        const std::string& peer, const std::string& detail);

// The ZAP handler (RFC 27) of the coordinator's context: a CURVE client whose public key is in
// the allowlist is admitted with User-Id = the worker name bound to the key; any other is refused
// with 400 and counted as reason "unknown_key". It binds kZapEndpoint in the constructor, so it
// must be built before the ROUTER binds (a context with no ZAP handler admits every CURVE key),
// and its destructor stops and joins the thread before the context goes away.
class ZapHandler {
 public:
  ZapHandler(zmq::context_t& context, WorkerKeys keys, Metrics& metrics, PeerLogLimit& log_limit);
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

 private:
  void serve(const std::stop_token& stop);
  void answer_one();

  WorkerKeys keys_;
  Metrics& metrics_;
  PeerLogLimit& log_limit_;
  zmq::socket_t socket_;  // bound here, then used by thread_ only
  std::jthread thread_;
};

// Worker name <-> the ROUTER routing id of the connection it last said HELLO on. A name has at
// most one current connection and a connection at most one name; binding a name to a new
// connection makes the old one stale (it maps to no name any more).
class Connections {
 public:
  void bind(const std::string& name, const std::string& connection);
  // nullptr if `connection` is not the current connection of any name.
  const std::string* name_of(const std::string& connection) const;
  // nullptr if `name` has no connection.
  const std::string* connection_of(const std::string& name) const;
  size_t size() const { return by_name_.size(); }

 private:
  std::unordered_map<std::string, std::string> by_name_;
  std::unordered_map<std::string, std::string> by_connection_;
};

// A routing id for logs: ROUTER-generated ids are 5 binary bytes.
std::string printable_routing_id(const std::string& routing_id);

}  // namespace evald::coordinator
