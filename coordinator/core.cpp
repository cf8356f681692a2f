#include "coordinator/core.hpp"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <system_error>

namespace evald::coordinator {
namespace {

// Bounds one turn, so HTTP answers and heartbeats are never starved by a flood of results.
constexpr int kMaxMessagesPerTurn = 4096;
constexpr auto kIdlePoll = std::chrono::milliseconds(50);
constexpr int kReceiveHighWaterMark = 1000;
// Turns whose sends wait for a WAL sync. Far more than a healthy disk ever lets pile up (a sync
// takes well under a millisecond); past it the core waits for the disk instead of taking more
// work in, so a stalled disk cannot make it buffer without bound.
constexpr size_t kMaxTurnsAwaitingSync = 1024;

// The peer's address for logs ("127.0.0.1"), from the frame's connection metadata.
std::string peer_address(const zmq::message_t& frame) {
  const char* address = zmq_msg_gets(frame.handle(), "Peer-Address");
  return address == nullptr ? std::string("unknown") : std::string(address);
}

}  // namespace

std::string zmq_bind_address(const std::string& endpoint) {
  if (endpoint.size() > 2 && endpoint.ends_with(":0")) {
    return endpoint.substr(0, endpoint.size() - 1) + "*";
  }
  return endpoint;
}

Core::Core(const CoreOptions& options, Store& store, Scheduler& scheduler, Api& api,
           Metrics& metrics)
    : store_(store),
      scheduler_(scheduler),
      api_(api),
      metrics_(metrics),
      context_(1),
      zap_(options.curve ? std::make_unique<ZapHandler>(context_, options.curve->worker_keys,
                                                        metrics, log_limit_)
                         : nullptr),
      router_(context_, zmq::socket_type::router),
      curve_(options.curve.has_value()) {
  // A send to a vanished connection must fail loudly. No handover: a routing id is ZeroMQ's own
  // per connection, never a name a peer could claim (names are bound by HELLO, see core.hpp).
  // A hostile or broken peer must not make us allocate without bound: MAXMSGSIZE drops its
  // connection on an oversized frame, and the receive high-water mark bounds what one connection
  // can queue. 1000 messages (the libzmq default, and the worker's own send limit) is hundreds of
  // turns of an honest worker's traffic, which coalesces its results into one frame per loop
  // turn; past it libzmq stops reading that one connection, so TCP pushes back on the flooder
  // alone, and an honest worker that outran us resends what was not ACKed.
  router_.set(zmq::sockopt::router_mandatory, 1);
  router_.set(zmq::sockopt::router_handover, 0);
  router_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options.max_message_bytes));
  router_.set(zmq::sockopt::sndhwm, 0);
  router_.set(zmq::sockopt::rcvhwm, kReceiveHighWaterMark);
  router_.set(zmq::sockopt::linger, 1000);
  if (options.curve) {
    router_.set(zmq::sockopt::curve_server, 1);
    router_.set(zmq::sockopt::curve_secretkey, options.curve->secret_z85);
    router_.set(zmq::sockopt::zap_domain, "evald-workers");
  }
  try {
    router_.bind(zmq_bind_address(options.bind));
  } catch (const zmq::error_t& e) {
    throw std::runtime_error("cannot bind worker endpoint " + options.bind + ": " + e.what());
  }
  endpoint_ = router_.get(zmq::sockopt::last_endpoint);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  // Everything written before the core starts (recovery) was committed with sync=true.
  durable_ = store_.writes();
  auto* sync_latency = &metrics_.store_commit_latency;
  auto* syncs = &metrics_.store_commits;
  syncer_ = std::make_unique<WalSyncer>(
      store_, durable_, [sync_latency, syncs](std::chrono::microseconds took) {
        // prometheus-cpp metrics are thread-safe; this runs on the sync thread.
        syncs->Increment();
        sync_latency->Observe(std::chrono::duration<double>(took).count());
      });
}

Core::~Core() {
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void Core::post(HttpRequest request, HttpRespond respond) {
  {
    std::lock_guard lock(http_mutex_);
    http_queue_.push_back(PendingHttp{std::move(request), std::move(respond)});
  }
  const uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void Core::count_dropped(const char* reason) {
  auto& counter = dropped_by_reason_[reason];
  if (counter == nullptr) counter = &metrics_.messages_dropped.Add({{"reason", reason}});
  counter->Increment();
}

void Core::send_to(const std::string& name, const protocol::Message& message) {
  const std::string* connection = connections_.connection_of(name);
  if (connection == nullptr) {
    // Only a name that never said HELLO on this coordinator has none; the scheduler addresses
    // workers it knows from a HELLO, so this is a bug's symptom rather than a peer's doing.
    count_dropped("no_connection");
    spdlog::warn("send_dropped reason=no_connection worker={} type={}", name,
                 protocol::to_string(protocol::type_of(message)));
    return;
  }
  send_on(*connection, name, message);
}

void Core::send_on(const std::string& connection, const std::string& who,
                   const protocol::Message& message) {
  // Encoded and addressed now, sent once this turn is durable (release_durable).
  staging_.frames.push_back(
      OutFrame{connection, who, protocol::type_of(message), protocol::encode(message)});
}

void Core::transmit(const OutFrame& frame) {
  const auto type = static_cast<size_t>(frame.type);
  try {
    // dontwait: never block the core. The ROUTER has no send high-water mark (sndhwm 0), so
    // this fails only for a connection that is gone (EHOSTUNREACH with router_mandatory).
    auto sent = router_.send(zmq::buffer(frame.connection),
                             zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    if (sent) sent = router_.send(zmq::buffer(frame.payload), zmq::send_flags::dontwait);
    if (!sent) {
      count_dropped("would_block");
      spdlog::warn("send_dropped reason=would_block worker={} type={}", frame.who,
                   protocol::to_string(frame.type));
      return;
    }
  } catch (const zmq::error_t& e) {
    // EHOSTUNREACH: the connection is gone. The worker will HELLO again on its next one, and
    // every state change this message carried is already durable.
    count_dropped("unreachable");
    spdlog::debug("send_dropped reason=unreachable worker={} type={} error=\"{}\"", frame.who,
                  protocol::to_string(frame.type), e.what());
    return;
  }
  if (type < sent_by_type_.size()) {
    if (sent_by_type_[type] == nullptr) {
      sent_by_type_[type] =
          &metrics_.messages_sent.Add({{"type", protocol::to_string(frame.type)}});
    }
    sent_by_type_[type]->Increment();
  }
}

void Core::read_messages() {
  for (int n = 0; n < kMaxMessagesPerTurn; ++n) {
    zmq::message_t identity;
    if (!router_.recv(identity, zmq::recv_flags::dontwait)) return;
    std::vector<zmq::message_t> frames;
    while (router_.get(zmq::sockopt::rcvmore)) {
      zmq::message_t frame;
      if (!router_.recv(frame, zmq::recv_flags::dontwait)) break;
      frames.push_back(std::move(frame));
    }
    on_frames(identity.to_string(), frames);
  }
}

void Core::on_frames(const std::string& connection, std::vector<zmq::message_t>& frames) {
  const std::string* bound = connections_.name_of(connection);
  const std::string who = bound != nullptr ? *bound : "conn-" + printable_routing_id(connection);
  if (frames.size() != 1) {
    metrics_.messages_malformed.Increment();
    spdlog::warn("message_malformed worker={} reason=\"expected 1 frame, got {}\"", who,
                 frames.size());
    return;
  }
  auto decoded = protocol::decode(frames[0].to_string_view());
  if (!decoded.ok()) {
    metrics_.messages_malformed.Increment();
    spdlog::warn("message_malformed worker={} bytes={} reason=\"{}\"", who, frames[0].size(),
                 decoded.error().message);
    return;
  }
  auto& message = decoded.value();
  if (auto* hello = std::get_if<protocol::Hello>(&message)) {
    if (hello->name.empty()) {
      metrics_.messages_malformed.Increment();
      spdlog::warn("message_malformed worker={} reason=\"hello without a name\"", who);
      return;
    }
    if (curve_) {
      // The name the ZAP handler bound to the peer's key; a worker is what its key says.
      const char* user_id = zmq_msg_gets(frames[0].handle(), "User-Id");
      if (user_id == nullptr || hello->name != user_id) {
        count_auth_failure(metrics_, log_limit_, "name_mismatch", peer_address(frames[0]),
                           fmt::format("hello_name={} key_name={}", hello->name,
                                       user_id == nullptr ? "" : user_id));
        return;
      }
    }
    const std::string name = hello->name;
    if (const std::string* previous = connections_.connection_of(name);
        previous != nullptr && *previous != connection) {
      spdlog::info("worker_connection_replaced worker={} connection={} previous={}", name,
                   printable_routing_id(connection), printable_routing_id(*previous));
    }
    connections_.bind(name, connection);
    scheduler_.on_message(name, std::move(message));
    return;
  }
  if (bound == nullptr) {
    reject_unbound(connection, frames[0], message);
    return;
  }
  scheduler_.on_message(*bound, std::move(message));
}

void Core::reject_unbound(const std::string& connection, const zmq::message_t& frame,
                          const protocol::Message& message) {
  const auto type = protocol::type_of(message);
  const std::string who = "conn-" + printable_routing_id(connection);
  const char* reason = nullptr;
  double rejected = 1;
  if (const auto* results = std::get_if<protocol::Results>(&message)) {
    reason = "unknown_connection";
    rejected = static_cast<double>(results->results.size());
  } else if (std::holds_alternative<protocol::Drain>(message)) {
    reason = "unknown_connection_drain";
  } else if (std::holds_alternative<protocol::HandBack>(message)) {
    reason = "unknown_connection_hand_back";
  } else if (std::holds_alternative<protocol::Goodbye>(message)) {
    reason = "unknown_connection_goodbye";
  } else if (!std::holds_alternative<protocol::Heartbeat>(message)) {
    metrics_.messages_malformed.Increment();
    spdlog::warn("message_dropped worker={} reason=\"{} is not a worker-to-coordinator message\"",
                 who, protocol::to_string(type));
    return;
  }
  if (reason != nullptr) {
    metrics_.results_rejected.Add({{"reason", reason}}).Increment(rejected);
    if (log_limit_.allow(peer_address(frame), std::chrono::steady_clock::now())) {
      spdlog::warn(
          "unbound_message_rejected type={} reason={} connection={} peer={} "
          "note=\"logged once per peer and minute\"",
          protocol::to_string(type), reason, who, peer_address(frame));
    }
  }
  if (std::holds_alternative<protocol::Goodbye>(message)) return;  // it is leaving: no REHELLO
  // A legitimate worker gets here only if its HELLO was lost or replaced; it says HELLO again.
  // One REHELLO per connection and second is plenty for that, and keeps a peer that sends
  // without reading from growing our send queue with one reply per frame.
  if (rehello_limit_.allow(connection, std::chrono::steady_clock::now())) {
    send_on(connection, who, protocol::ReHello{});
  }
}

void Core::stop_on_store_failure(const char* op, const std::string& error) {
  metrics_.store_failures.Add({{"op", op}}).Increment();
  size_t held_frames = staging_.frames.size();
  size_t held_answers = staging_.answers.size();
  for (const auto& turn : held_) {
    held_frames += turn.frames.size();
    held_answers += turn.answers.size();
  }
  spdlog::critical(
      "store_commit_failed action=stop_without_acknowledging op={} durable={} written={} "
      "turns_unacknowledged={} messages_unsent={} answers_unsent={} error=\"{}\"",
      op, durable_, store_.writes(), held_.size() + (std::string_view(op) == "write" ? 1 : 0),
      held_frames, held_answers, error);
  throw std::runtime_error(error);
}

void Core::end_turn(TurnKind kind, std::vector<PendingHttp>& reads,
                    std::vector<std::pair<HttpRespond, HttpResponse>>& answers) {
  auto stage = [this](const std::string& name, const protocol::Message& m) { send_to(name, m); };
  auto committed = kind == TurnKind::kFull ? scheduler_.run_turn(stage, TurnDurability::kWritten)
                                           : scheduler_.end_turn(stage, TurnDurability::kWritten);
  if (!committed.ok()) {
    // A failed WAL sync makes RocksDB refuse every later write, often before the sync thread
    // has said so: once the sync in flight has ended, a failure it reports is the cause. No
    // sync starts after this (RocksDB asserts on a sync of a log whose append failed).
    syncer_->stop_syncing();
    if (auto synced = syncer_->take(); synced.failure) {
      stop_on_store_failure("sync", *synced.failure);
    }
    stop_on_store_failure("write", committed.error().message);
  }
  if (committed.value().keys > 0) {
    metrics_.store_batches.Increment();
    metrics_.store_keys_written.Increment(static_cast<double>(committed.value().keys));
  }
  // Reads are rendered now, so they match memory at the end of this turn, and are held with the
  // turn: they may show what this or an earlier turn changed and is not durable yet.
  for (auto& answer : answers) staging_.answers.push_back(std::move(answer));
  answers.clear();
  for (auto& read : reads) {
    staging_.answers.emplace_back(std::move(read.respond), api_.handle(read.request));
  }
  reads.clear();

  const uint64_t written = store_.writes();
  if (written > durable_) syncer_->request(written);
  if (staging_.frames.empty() && staging_.answers.empty()) return;
  staging_.durable_at = written;
  if (held_.empty() && written <= durable_) {
    held_.push_back(std::move(staging_));
    staging_ = HeldTurn{};
    release_durable(WalSyncer::Progress{durable_, std::nullopt, 0});
    return;
  }
  if (!held_.empty() && held_.back().durable_at == written) {
    // Nothing was written since the held turn before: the same sync releases both.
    auto& back = held_.back();
    for (auto& f : staging_.frames) back.frames.push_back(std::move(f));
    for (auto& a : staging_.answers) back.answers.push_back(std::move(a));
  } else {
    held_.push_back(std::move(staging_));
  }
  staging_ = HeldTurn{};
  metrics_.turns_awaiting_sync.Set(static_cast<double>(held_.size()));
}

void Core::release_durable(const WalSyncer::Progress& progress) {
  // Before a failure is acted on, so its log line says how far the store really is durable;
  // held turns are not released then, durable or not: the coordinator stops as it is.
  durable_ = std::max(durable_, progress.durable);
  if (progress.failure) stop_on_store_failure("sync", *progress.failure);
  // One pass over every turn that became durable: ZeroMQ queues the frames on each connection's
  // pipe and wakes its I/O thread only when that pipe was empty, so frames sent back to back
  // leave in few wakeups and few TCP writes.
  while (!held_.empty() && held_.front().durable_at <= durable_) {
    for (const auto& frame : held_.front().frames) transmit(frame);
    for (auto& [respond, response] : held_.front().answers) respond(std::move(response));
    held_.pop_front();
  }
  metrics_.turns_awaiting_sync.Set(static_cast<double>(held_.size()));
}

void Core::run(const SignalPipe& signals) {
  try {
    serve(signals);
  } catch (...) {
    // Fail-stop: what is held is dropped unanswered, now, while the HTTP server that would
    // carry the answers still exists.
    held_.clear();
    staging_ = HeldTurn{};
    throw;
  }
}

void Core::serve(const SignalPipe& signals) {
  std::vector<zmq::pollitem_t> items = {
      {router_.handle(), 0, ZMQ_POLLIN, 0},
      {nullptr, wake_fd_, ZMQ_POLLIN, 0},
      {nullptr, signals.fd(), ZMQ_POLLIN, 0},
      {nullptr, syncer_->fd(), ZMQ_POLLIN, 0},
  };
  std::vector<PendingHttp> reads;
  std::vector<std::pair<HttpRespond, HttpResponse>> answers;
  double longest_turn = 0;
  auto longest_since = std::chrono::steady_clock::now();
  while (true) {
    try {
      zmq::poll(items, kIdlePoll);
    } catch (const zmq::error_t& e) {
      // SIGTERM interrupts the poll (zmq_poll is never restarted); the signal pipe is readable
      // on the next turn.
      if (e.num() != EINTR) throw;
      continue;
    }
    if ((items[2].revents & ZMQ_POLLIN) != 0) {
      const int signo = signals.take();
      spdlog::info("stopping signal={}", signo);
      break;
    }
    if ((items[3].revents & ZMQ_POLLIN) != 0) release_durable(syncer_->take());
    if (held_.size() >= kMaxTurnsAwaitingSync) {
      // The disk fell far behind: let it catch up before taking more work in.
      release_durable(syncer_->wait_for(held_.front().durable_at));
    }
    const auto turn_start = std::chrono::steady_clock::now();
    read_messages();
    if ((items[1].revents & ZMQ_POLLIN) != 0) {
      uint64_t drained = 0;
      [[maybe_unused]] auto n = ::read(wake_fd_, &drained, sizeof drained);
    }
    std::deque<PendingHttp> http;
    {
      std::lock_guard lock(http_mutex_);
      http.swap(http_queue_);
    }
    for (auto& p : http) {
      // A refusal is staged in the audit log now and answered once this turn is durable.
      if (auto refused = api_.check_access(p.request)) {
        answers.emplace_back(std::move(p.respond), std::move(*refused));
      } else if (Api::is_mutation(p.request)) {
        answers.emplace_back(std::move(p.respond), api_.handle(p.request));
      } else {
        reads.push_back(std::move(p));
      }
    }
    end_turn(TurnKind::kFull, reads, answers);
    const double turn =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - turn_start).count();
    longest_turn = std::max(longest_turn, turn);
    if (std::chrono::steady_clock::now() - longest_since > std::chrono::seconds(10)) {
      metrics_.turn_seconds_max.Set(longest_turn);
      longest_turn = 0;
      longest_since = std::chrono::steady_clock::now();
    } else {
      metrics_.turn_seconds_max.Set(std::max(longest_turn, metrics_.turn_seconds_max.Value()));
    }
  }
  // Requests still queued are refused (nothing of theirs was applied); then the last turn's
  // staged changes are written, and everything held goes out once it is durable.
  std::deque<PendingHttp> http;
  {
    std::lock_guard lock(http_mutex_);
    http.swap(http_queue_);
  }
  for (auto& p : http) {
    p.respond(HttpResponse{503, "application/json", R"({"error":"coordinator is shutting down"})"});
  }
  end_turn(TurnKind::kCommitOnly, reads, answers);
  release_durable(syncer_->wait_for(store_.writes()));
}

}  // namespace evald::coordinator
