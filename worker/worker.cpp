// The worker's event loop.
//
// One turn: zmq_poll on the DEALER, its monitor socket, the exec runner's eventfd and the stop
// fd; then read every frame that is waiting (bounded), collect finished exec results, send all
// results of the turn in one RESULTS message (batched: the noop path must cost about a
// microsecond per shard, so nothing per shard does a syscall, a log line or a disk write), then
// heartbeat, silence and re-send checks. Credit is the coordinator's job, but a slot counts as
// busy here from ASSIGN until its result leaves in a RESULTS, which is never later than the
// coordinator frees it, so the guard against over-assignment can never fire wrongly.
//
// Connection: ZMQ_IMMEDIATE, so nothing is queued for a coordinator that is not connected (a send
// then fails at once and the result simply stays unACKed). The monitor reports each completed
// handshake and we send HELLO then; a REHELLO gets one too. WELCOME answers HELLO and makes us
// re-send every unACKed result, as the coordinator may be a new process that never saw them.
//
// Delivery guarantee: a result is kept until an ACK names its attempt. Exec results are written
// to the outbox before they are first sent (a failed write is counted and the result is sent
// anyway, see flush_results); noop results live in memory only (redoing one costs
// nothing) until a graceful stop writes every unACKed result to the outbox. After a restart the
// outbox is loaded, its attempts are listed in HELLO's `running` (so a restarted coordinator
// keeps their leases) and they are sent after WELCOME. Results unACKed for 5 heartbeats are
// re-sent; the coordinator deduplicates by attempt id, so a re-send is always safe.
//
// Metrics: counters live in stats_ (plain integers, nothing per shard costs more than an add) and
// are handed to metrics_ once per turn, with the gauges; the MetricsServer thread only reads.
#include "worker/worker.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <thread>
#include <variant>

#include "common/cli_options.hpp"
#include "worker/gpu.hpp"
#include "worker/serve_metrics.hpp"

namespace evald::worker {
namespace {

using std::chrono::milliseconds;
using SteadyTime = std::chrono::steady_clock::time_point;

constexpr int kMaxFramesPerTurn = 4096;
constexpr size_t kMaxResultsPerMessage = 4096;
// Half the coordinator's default --max-message-bytes (8 MiB; a bigger frame gets the connection
// dropped), so the rough size estimate below can never push a frame over it.
constexpr size_t kMaxResultBytesPerMessage = size_t{4} << 20;
constexpr int kSilentHeartbeats = 3;
constexpr int kResendHeartbeats = 5;
constexpr int kAckWaitHeartbeats = 2;
constexpr milliseconds kMaxPollWait{250};
constexpr milliseconds kHelloRetry{10};
constexpr int kHandBackRetries = 50;  // x kHelloRetry: how long a hand-back waits for a HELLO
constexpr int64_t kMaxMessageBytes = int64_t{256} << 20;
constexpr int kReconnectIvlMs = 100;
constexpr int kReconnectIvlMaxMs = 5000;
constexpr int kMinPingTimeoutMs = 10000;
// How long closing the socket may wait for the last frames (a hand-back) to leave.
constexpr int kFinalFramesLingerMs = 1000;

std::string random_instance() {
  std::random_device device;
  std::uniform_int_distribution<uint64_t> dist;
  const uint64_t value = dist(device);
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return text;
}

// For provenance; "" when the kernel will not say.
std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return {};
  return name;
}

// Roughly the encoded size, to keep one RESULTS frame well under ZMQ_MAXMSGSIZE.
size_t encoded_size(const protocol::ShardResult& result) {
  size_t bytes = 64 + 24 + result.error.size() + result.samples_json.size() +
                 4 * result.gpus.size() + result.executable_sha256.size() +
                 result.data_sha256.size();
  for (const auto& [name, value] : result.metrics) bytes += 12 + name.size();
  return bytes;
}

// For the outbox gauges; a file that vanished counts as empty.
uint64_t file_bytes(const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  return ec ? 0 : size;
}

// A result that alone would exceed a frame (a runner that printed megabytes of samples or
// metrics) is cut down to fit: samples go first, then metrics and error text; a success that still
// does not fit becomes a failure saying why. Sending it whole would get our connection dropped
// by the coordinator again and again.
void fit_in_frame(protocol::ShardResult& result) {
  const size_t before = encoded_size(result);
  if (before <= kMaxResultBytesPerMessage) return;
  result.samples_json.clear();
  if (encoded_size(result) > kMaxResultBytesPerMessage) {
    constexpr size_t kErrorKeep = 64 << 10;
    if (result.error.size() > kErrorKeep) result.error.resize(kErrorKeep);
    if (encoded_size(result) > kMaxResultBytesPerMessage) {
      result.metrics.clear();
      result.count = 0;
      if (result.ok) {
        result.ok = false;
        result.error = "result too large to send: about " + std::to_string(before >> 10) +
                       " KiB of metrics (limit " + std::to_string(kMaxResultBytesPerMessage >> 10) +
                       " KiB)";
      }
    }
  }
  spdlog::warn("result_trimmed attempt_id={} bytes_before={} bytes_after={} ok={}",
               result.attempt_id, before, encoded_size(result), result.ok);
}

// Sends results in RESULTS frames of at most kMaxResultBytesPerMessage (estimated), each result
// already fitted by fit_in_frame. `take(i)` yields the i-th result to encode; `sent(i, result)`
// gets it back once its frame was handed to `send` (a refused send changes nothing: the result
// stays unACKed and goes again after the next WELCOME).
template <typename Take, typename Sent, typename Send>
void send_in_frames(size_t count, Take&& take, Sent&& sent, Send&& send) {
  size_t i = 0;
  std::optional<protocol::ShardResult> carried;  // taken, but did not fit the previous frame
  while (i < count) {
    protocol::Message message{protocol::Results{}};
    auto& results = std::get<protocol::Results>(message).results;
    results.reserve(std::min(count - i, kMaxResultsPerMessage));
    size_t bytes = 0;
    const size_t first = i;
    while (i < count && results.size() < kMaxResultsPerMessage) {
      protocol::ShardResult next = carried ? std::move(*carried) : take(i);
      carried.reset();
      const size_t size = encoded_size(next);
      if (!results.empty() && bytes + size > kMaxResultBytesPerMessage) {
        carried = std::move(next);
        break;
      }
      results.push_back(std::move(next));
      bytes += size;
      ++i;
    }
    send(protocol::encode(message));
    for (size_t k = 0; k < results.size(); ++k) sent(first + k, std::move(results[k]));
  }
}

}  // namespace

Result<std::unique_ptr<Worker>> Worker::create(WorkerConfig config, const Clock& clock) {
  std::error_code ec;
  std::filesystem::create_directories(config.work_dir, ec);
  if (ec) {
    return make_error("--work-dir: cannot create " + config.work_dir.string() + ": " +
                      ec.message());
  }
  // Two workers sharing a work dir would deliver and delete each other's outbox files.
  const auto lock_path = config.work_dir / ".lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!lock.valid()) {
    return make_error("--work-dir: cannot open " + lock_path.string() + ": " +
                      std::strerror(errno));
  }
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    return make_error("--work-dir: " + config.work_dir.string() +
                      " is in use by another running worker");
  }
  // Model servers left by a worker that was killed (SIGKILL, OOM) still hold GPUs: gone before we
  // start anything.
  const size_t reaped = ModelServers::reap_stale(config.work_dir / "servers");
  if (reaped > 0) spdlog::warn("model_servers_reaped count={}", reaped);
  // Run directories left by a worker that died are of no use: their attempts are lost anyway.
  const auto runs = config.work_dir / "runs";
  std::filesystem::remove_all(runs, ec);
  std::filesystem::create_directories(runs, ec);
  if (ec) return make_error("--work-dir: cannot create " + runs.string() + ": " + ec.message());

  auto outbox = Outbox::open(config.work_dir / "outbox");
  if (!outbox.ok()) return outbox.error();

  std::unique_ptr<Worker> worker;
  try {
    worker.reset(new Worker(std::move(config), clock, std::move(lock), std::move(outbox.value())));
    worker->connect();
  } catch (const zmq::error_t& e) {
    return make_error("--coordinator: cannot connect: " + std::string(e.what()));
  } catch (const std::exception& e) {
    return make_error(std::string("worker setup failed: ") + e.what());
  }
  worker->load_outbox();
  worker->publish_metrics();
  if (!worker->config_.metrics.empty()) {
    auto server = MetricsServer::start(worker->config_.metrics, worker->metrics_);
    if (!server.ok()) return server.error();
    worker->metrics_server_ = std::move(server.value());
    spdlog::info("metrics_listening address={}", worker->metrics_server_->local_address());
  }
  return worker;
}

Worker::Worker(WorkerConfig config, const Clock& clock, UniqueFd lock, Outbox outbox)
    : config_(std::move(config)),
      clock_(clock),
      instance_(random_instance()),
      host_(host_name()),
      lock_fd_(std::move(lock)),
      outbox_(std::move(outbox)),
      context_(1),
      socket_(context_, zmq::socket_type::dealer),
      monitor_(context_, zmq::socket_type::pair),
      exec_runner_(std::make_unique<ExecRunner>(config_.work_dir / "runs", clock)),
      heartbeat_(config_.heartbeat),
      metrics_(config_.name, config_.slots, config_.gpus) {
  serve_metrics_ = std::make_shared<ServeMetrics>(metrics_.registry());
  openai_runner_ = std::make_unique<OpenAiRunner>(serve_metrics_);
  model_servers_ = std::make_unique<ModelServers>(
      ModelServersOptions{config_.work_dir / "servers", std::chrono::milliseconds(10000),
                          std::chrono::milliseconds(200)},
      clock_, serve_metrics_.get());
  const auto now = clock_.now();
  last_heard_ = now;
  busy_at_ = now;
  next_heartbeat_ = now;
  next_resend_check_ = now + heartbeat_;
  unacked_.reserve(size_t{config_.slots} * 4);
  running_.reserve(config_.slots);
  outgoing_.reserve(config_.slots);
}

Worker::~Worker() {
  // Stop the monitor before the socket it watches goes away.
  if (socket_.handle() != nullptr) zmq_socket_monitor(socket_.handle(), nullptr, 0);
}

void Worker::connect() {
  // No routing id of our own: the coordinator's ROUTER numbers connections itself and binds our
  // name to the connection our HELLO arrives on.
  if (config_.curve) {
    // CURVE client: the handshake fails unless the peer holds the secret of the pinned key, so
    // nothing (no CAMPAIGN, no ASSIGN) is ever read from a coordinator we did not authenticate.
    socket_.set(zmq::sockopt::curve_serverkey, config_.curve->server_public_z85);
    socket_.set(zmq::sockopt::curve_publickey, config_.curve->public_z85);
    socket_.set(zmq::sockopt::curve_secretkey, config_.curve->secret_z85);
  }
  socket_.set(zmq::sockopt::reconnect_ivl, kReconnectIvlMs);
  socket_.set(zmq::sockopt::reconnect_ivl_max, kReconnectIvlMaxMs);
  socket_.set(zmq::sockopt::maxmsgsize, kMaxMessageBytes);
  socket_.set(zmq::sockopt::immediate, 1);
  // ZMTP pings, answered by the coordinator's I/O thread: a connection whose peer vanished without
  // a FIN (host down, network cut) is dropped and redialled instead of hanging in TCP retries.
  const auto ping_ms = static_cast<int>(config_.heartbeat.count());
  socket_.set(zmq::sockopt::heartbeat_ivl, ping_ms);
  socket_.set(zmq::sockopt::heartbeat_timeout, std::max(10 * ping_ms, kMinPingTimeoutMs));
  // Unsent frames are worthless at close: every result that matters is in the outbox by then
  // (a hand-back, the one exception, raises the linger before it is sent).
  socket_.set(zmq::sockopt::linger, 0);
  monitor_.set(zmq::sockopt::linger, 0);
  const std::string monitor_endpoint = "inproc://evald-worker-monitor-" + instance_;
  if (zmq_socket_monitor(socket_.handle(), monitor_endpoint.c_str(),
                         ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
                             ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                             ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0) {
    throw zmq::error_t();
  }
  monitor_.connect(monitor_endpoint);
  socket_.connect(config_.coordinator);
}

std::string Worker::metrics_address() const {
  return metrics_server_ ? metrics_server_->local_address() : std::string();
}

void Worker::load_outbox() {
  auto loaded = outbox_.load();
  const auto now = clock_.now();
  for (auto& result : loaded.results) {
    fit_in_frame(result);  // an outbox written by a release that sent bigger frames
    const auto attempt_id = result.attempt_id;
    const auto bytes = file_bytes(outbox_.path_of(attempt_id));
    put_unacked(attempt_id, Pending{std::move(result), now, true, true, bytes});
  }
  if (!unacked_.empty() || loaded.corrupt > 0) {
    spdlog::info("outbox_loaded results={} corrupt={} dir={}", unacked_.size(), loaded.corrupt,
                 outbox_.dir().string());
  }
}

int Worker::run(int stop_fd) {
  spdlog::info(
      "worker_started name={} instance={} coordinator={} slots={} queue_ahead={} gpus={} labels={} "
      "work_dir={} held_results={}",
      config_.name, instance_, config_.coordinator, config_.slots, config_.queue_ahead,
      config_.gpus.size(), config_.labels.dump(), config_.work_dir.string(), unacked_.size());
  if (config_.exec_policy.restricted()) {
    spdlog::info("exec_policy allow_exec=\"{}\"", config_.exec_policy.describe());
  } else if (!config_.curve_enabled()) {
    // Nothing then stands between whoever can submit a campaign (or reach the worker socket) and
    // a shell on this node as this worker's user.
    spdlog::warn(
        "exec_policy_open allow_exec=anything curve=off warning=\"any campaign spec can make this "
        "worker run any program as its user; give --allow-exec DIR (and authenticate the "
        "coordinator)\"");
  }
  bool ok = true;
  try {
    loop(stop_fd);
  } catch (const std::exception& e) {
    spdlog::error("worker_failed error=\"{}\"", e.what());
    ok = false;
    kill_running("worker failed: " + std::string(e.what()));
  }
  exec_runner_.reset();  // nothing should be running now; this reaps whatever still is
  openai_runner_.reset();
  model_servers_.reset();  // SIGTERM to every model server, SIGKILL after the grace
  if (!persist_unacked()) ok = false;
  publish_metrics();
  spdlog::info(
      "worker_stopped assigned={} results_sent={} results_failed={} results_resent={} acked={} "
      "cancelled={} bad_messages={} sends_dropped={} outbox_write_failures={} unacked={}",
      stats_.assigned, stats_.results_sent, stats_.results_failed, stats_.results_resent,
      stats_.acked, stats_.cancelled, stats_.bad_messages, stats_.sends_dropped,
      stats_.outbox_write_failures, unacked_.size());
  return ok ? kExitOk : kExitFailure;
}

void Worker::loop(int stop_fd) {
  std::vector<zmq::pollitem_t> items = {
      {socket_.handle(), 0, ZMQ_POLLIN, 0},
      {monitor_.handle(), 0, ZMQ_POLLIN, 0},
      {nullptr, exec_runner_->wake_fd(), ZMQ_POLLIN, 0},
      {nullptr, model_servers_->wake_fd(), ZMQ_POLLIN, 0},
      {nullptr, openai_runner_->wake_fd(), ZMQ_POLLIN, 0},
  };
  constexpr size_t kStopItem = 5;
  if (stop_fd >= 0) items.push_back({nullptr, stop_fd, ZMQ_POLLIN, 0});
  while (true) {
    ++stats_.loop_turns;
    for (auto& item : items) item.revents = 0;
    try {
      zmq::poll(items.data(), items.size(), poll_wait());
    } catch (const zmq::error_t& e) {
      // SIGTERM interrupts the poll; the signal pipe is readable on the next turn.
      if (e.num() != EINTR) throw;
      continue;
    }
    if (items.size() > kStopItem && (items[kStopItem].revents & ZMQ_POLLIN) != 0) {
      on_stop(stop_fd);
    }
    if ((items[1].revents & ZMQ_POLLIN) != 0) read_monitor();
    if ((items[0].revents & ZMQ_POLLIN) != 0) read_socket();
    if ((items[2].revents & ZMQ_POLLIN) != 0) collect_exec_results();
    if ((items[3].revents & ZMQ_POLLIN) != 0) on_serve_events();
    if ((items[4].revents & ZMQ_POLLIN) != 0) collect_openai_results();
    flush_results();
    // Slots freed this turn take queued attempts; noop ones finish at once and free them again.
    while (start_queued()) flush_results();
    on_timers();
    check_idle_exit();
    send_serve_status();
    publish_metrics();
    if (draining_ && drain_done()) {
      say_goodbye();
      return;
    }
  }
}

void Worker::say_goodbye() {
  // The coordinator retires us at once instead of counting us lost after its worker timeout;
  // any lease it still thinks we hold goes back to its queue free of charge. Everything we ran
  // was sent before this frame, on the same connection. If it cannot be sent (not connected)
  // the coordinator finds us silent, as before GOODBYE existed.
  const bool sent = send_frame(protocol::encode(protocol::Goodbye{}));
  if (sent) socket_.set(zmq::sockopt::linger, kFinalFramesLingerMs);
  spdlog::info("goodbye sent={}", sent);
}

milliseconds Worker::poll_wait() const {
  const auto now = clock_.now();
  auto next = std::min(next_heartbeat_, next_resend_check_);
  if (!silent_) next = std::min(next, last_heard_ + kSilentHeartbeats * heartbeat_);
  if (draining_) next = std::min(next, ack_wait_deadline_.value_or(drain_deadline_));
  if (draining_ && drain_quiet_until_) next = std::min(next, *drain_quiet_until_);
  if (!draining_ && config_.idle_exit.count() > 0)
    next = std::min(next, busy_at_ + config_.idle_exit);
  auto wait = std::chrono::duration_cast<milliseconds>(next - now) + milliseconds(1);
  // A HELLO refused right after the handshake (the pipe attaches a moment later) is retried soon.
  if (hello_pending_ && connected_) wait = std::min(wait, kHelloRetry);
  return std::clamp(wait, milliseconds(0), kMaxPollWait);
}

void Worker::on_stop(int stop_fd) {
  unsigned char signal_number = 0;
  if (::read(stop_fd, &signal_number, 1) <= 0) return;
  const auto now = clock_.now();
  if (draining_ && idle_drain_) {
    // An idle drain set no deadline; a stop signal sets one, as if it had started the drain.
    idle_drain_ = false;
    drain_deadline_ = now + config_.drain_timeout;
    spdlog::info("drain_deadline_set signal={} running={} drain_timeout_ms={}", signal_number,
                 running_.size(), config_.drain_timeout.count());
    return;
  }
  if (draining_) {
    spdlog::warn("stop_again signal={} action=\"ending the drain now\"", signal_number);
    drain_deadline_ = now;
    return;
  }
  draining_ = true;
  drain_deadline_ = now + config_.drain_timeout;
  spdlog::info("drain_started signal={} running={} unacked={} drain_timeout_ms={}", signal_number,
               running_.size(), unacked_.size(), config_.drain_timeout.count());
  send_frame(protocol::encode(protocol::Drain{}));
  hand_back_queued();
  // No more shards will come: servers nobody uses go now, the others when their shards end.
  model_servers_->stop_idle();
}

void Worker::check_idle_exit() {
  if (config_.idle_exit.count() <= 0 || draining_) return;
  const auto now = clock_.now();
  if (!running_.empty() || !queued_.empty() || !unacked_.empty() || !outgoing_.empty()) {
    busy_at_ = now;
    return;
  }
  if (now - busy_at_ < config_.idle_exit) return;
  // Nothing runs and nothing is owed to the coordinator, so leaving loses nothing. The drain
  // still waits a few heartbeats for assignments already on their way; those run to the end:
  // nobody asked this worker to stop, so there is no drain timeout to cut them at (a stop
  // signal during the drain sets one).
  draining_ = true;
  idle_drain_ = true;
  drain_quiet_until_ = now + kAckWaitHeartbeats * heartbeat_;
  drain_deadline_ = std::chrono::steady_clock::time_point::max();
  spdlog::info("drain_started reason=idle idle_s={} running={} unacked={}",
               config_.idle_exit.count(), running_.size(), unacked_.size());
  send_frame(protocol::encode(protocol::Drain{}));
  model_servers_->stop_idle();
}

void Worker::read_monitor() {
  while (true) {
    zmq::message_t event;
    if (!monitor_.recv(event, zmq::recv_flags::dontwait)) return;
    std::string address;
    if (event.more()) {
      zmq::message_t address_frame;
      if (monitor_.recv(address_frame, zmq::recv_flags::dontwait)) {
        address = address_frame.to_string();
      }
    }
    if (event.size() < sizeof(uint16_t)) continue;
    uint16_t id = 0;
    std::memcpy(&id, event.data(), sizeof id);
    if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      connected_ = true;
      ++handshakes_;
      metrics_.count_connection();
      awaiting_welcome_ = false;  // a new connection: whatever we sent before is gone
      hello_pending_ = true;
      spdlog::info("coordinator_connected endpoint={}", address);
      try_send_hello();
    } else if (id == ZMQ_EVENT_DISCONNECTED) {
      connected_ = false;
      spdlog::warn("coordinator_disconnected endpoint={} action=reconnecting", address);
    } else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH || id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
               id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
      // ZeroMQ retries by itself; say why once a minute, not at every reconnect.
      const auto now = clock_.now();
      if (now >= next_handshake_warning_) {
        next_handshake_warning_ = now + std::chrono::minutes(1);
        spdlog::warn("coordinator_handshake_failed endpoint={} reason=\"{}\" action=retrying",
                     address,
                     id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
                         ? "the coordinator refused our key (not in its --worker-keys)"
                         : "CURVE handshake failed (wrong --coordinator-key, or CURVE on one "
                           "side only)");
      }
    }
  }
}

void Worker::read_socket() {
  bool heard = false;
  for (int i = 0; i < kMaxFramesPerTurn; ++i) {
    zmq::message_t frame;
    if (!socket_.recv(frame, zmq::recv_flags::dontwait)) break;
    heard = true;
    if (frame.more()) {
      // Our protocol is single-frame; drop the rest of a multi-frame message.
      while (frame.more() && socket_.recv(frame, zmq::recv_flags::dontwait)) {
      }
      ++stats_.bad_messages;
      spdlog::warn("bad_message error=\"multi-frame message\"");
      continue;
    }
    auto decoded = protocol::decode(frame.to_string_view());
    if (!decoded.ok()) {
      ++stats_.bad_messages;
      spdlog::warn("bad_message error=\"{}\"", decoded.error().message);
      continue;
    }
    handle(decoded.value());
  }
  if (heard) {
    last_heard_ = clock_.now();
    if (silent_) {
      silent_ = false;
      spdlog::info("coordinator_heard_again");
    }
  }
}

void Worker::handle(protocol::Message& message) {
  using namespace protocol;
  if (auto* m = std::get_if<Assign>(&message)) return on_assign(*m);
  if (auto* m = std::get_if<Ack>(&message)) return on_ack(*m);
  if (auto* m = std::get_if<CampaignInfo>(&message)) return on_campaign(*m);
  if (auto* m = std::get_if<Cancel>(&message)) return on_cancel(*m);
  if (auto* m = std::get_if<Welcome>(&message)) return on_welcome(*m);
  if (std::holds_alternative<Heartbeat>(message)) return;
  if (std::holds_alternative<ReHello>(message)) {
    // A REHELLO that crosses our HELLO on the wire answers a message sent before it; the WELCOME
    // is already on its way. A second HELLO now could not list the assignments in flight behind
    // that WELCOME, and the coordinator would take them back while we start them.
    if (awaiting_welcome_) {
      spdlog::debug("rehello_ignored reason=\"hello already sent, awaiting welcome\"");
      return;
    }
    spdlog::info("rehello_received");
    hello_pending_ = true;
    return try_send_hello();
  }
  ++stats_.bad_messages;
  spdlog::warn("bad_message error=\"unexpected {} from the coordinator\"",
               to_string(type_of(message)));
}

void Worker::on_welcome(const protocol::Welcome& welcome) {
  awaiting_welcome_ = false;
  // Heartbeat at least as often as the coordinator expects, so it never takes us for lost.
  heartbeat_ = config_.heartbeat;
  if (welcome.heartbeat_ms > 0)
    heartbeat_ = std::min(heartbeat_, milliseconds(welcome.heartbeat_ms));
  spdlog::info("welcome epoch={} heartbeat_ms={} resending={}", welcome.coordinator_epoch,
               heartbeat_.count(), unacked_.size());
  std::vector<Pending*> all;
  all.reserve(unacked_.size());
  for (auto& [attempt_id, pending] : unacked_) all.push_back(&pending);
  std::sort(all.begin(), all.end(), [](const Pending* a, const Pending* b) {
    return a->result.attempt_id < b->result.attempt_id;
  });
  resend(all);
  status_sent_.reset();  // a new coordinator process knows nothing of our loading shards
  // A coordinator that restarted during our drain has not heard that we are leaving.
  if (draining_) send_frame(protocol::encode(protocol::Drain{}));
}

void Worker::on_campaign(const protocol::CampaignInfo& info) {
  Campaign campaign;
  campaign.id = info.campaign_id;
  // The same parser and rules as the coordinator's, on purpose: a spec that breaks them (a deep
  // document, runner.env with LD_PRELOAD, ...) is refused here too, whoever sent it.
  auto spec = parse_campaign_spec_text(info.spec_json);
  if (spec.ok()) {
    spdlog::info("campaign_received campaign={} id={} runner={} models={} benchmarks={}",
                 info.campaign, info.campaign_id, to_string(spec->runner.type), spec->models.size(),
                 spec->benchmarks.size());
    campaign.spec = std::move(spec.value());
  } else {
    campaign.error = spec.error().message;
    spdlog::error("campaign_invalid campaign={} id={} error=\"{}\"", info.campaign,
                  info.campaign_id, campaign.error);
  }
  campaigns_.insert_or_assign(info.campaign, std::move(campaign));
}

void Worker::fail(const protocol::Assignment& assignment, std::string error) {
  outgoing_.push_back(Outgoing{failed_result(assignment, std::move(error)), false});
}

void Worker::on_assign(const protocol::Assign& assign) {
  size_t over_capacity = 0;
  protocol::HandBack not_started;
  for (const auto& a : assign.assignments) {
    ++stats_.assigned;
    // Attempt ids grow in the order sent, so only an id at or below the newest queued one can be
    // a repeat of a queued attempt: the search stays off the hot path.
    const bool queued = !queued_.empty() && a.attempt_id <= queued_.back().attempt_id &&
                        std::any_of(queued_.begin(), queued_.end(),
                                    [&a](const auto& q) { return q.attempt_id == a.attempt_id; });
    if (running_.count(a.attempt_id) > 0 || queued) {
      spdlog::warn("assign_duplicate attempt_id={} state={}", a.attempt_id,
                   queued ? "queued" : "running");
      continue;
    }
    if (const auto held = unacked_.find(a.attempt_id); held != unacked_.end()) {
      // Assigned again although we hold its result: the coordinator lost it. Send it again.
      resend({&held->second});
      continue;
    }
    const size_t busy = running_.size() + outgoing_.size();
    if (busy + queued_.size() >= size_t{config_.slots} + config_.queue_ahead) {
      ++over_capacity;
      fail(a, "worker over capacity: assignment beyond its " + std::to_string(config_.slots) +
                  " slots and queue of " + std::to_string(config_.queue_ahead) +
                  " (coordinator ignored credit)");
      continue;
    }
    if (busy < config_.slots && queued_.empty()) {
      start_assignment(a);
    } else if (draining_) {
      // Sent before the coordinator read our DRAIN; it would wait for a slot of a worker that is
      // leaving, so it goes back now, unstarted.
      not_started.attempt_ids.push_back(a.attempt_id);
    } else {
      queued_.push_back(a);
    }
  }
  // One line per message, not per shard: a coordinator that ignores credit must not flood the log.
  if (over_capacity > 0) {
    spdlog::warn("assign_over_capacity refused={} slots={} queue_ahead={} running={}",
                 over_capacity, config_.slots, config_.queue_ahead, running_.size());
  }
  if (!not_started.attempt_ids.empty()) {
    const bool sent = send_frame(protocol::encode(not_started));
    spdlog::info("hand_back attempts={} reason=draining state=queued sent={}",
                 not_started.attempt_ids.size(), sent);
  }
}

bool Worker::start_queued() {
  bool started = false;
  while (!queued_.empty() && running_.size() + outgoing_.size() < config_.slots) {
    const protocol::Assignment a = std::move(queued_.front());
    queued_.pop_front();
    start_assignment(a);
    started = true;
  }
  return started;
}

void Worker::hand_back_queued() {
  if (queued_.empty()) return;
  protocol::HandBack hand_back;
  for (const auto& a : queued_) hand_back.attempt_ids.push_back(a.attempt_id);
  queued_.clear();
  const bool sent = send_frame(protocol::encode(hand_back));
  // Not sent (not connected): the coordinator takes them back at our GOODBYE, or when it finds
  // us silent; none was started, so nothing runs twice.
  spdlog::info("hand_back attempts={} reason=draining state=queued sent={}",
               hand_back.attempt_ids.size(), sent);
}

void Worker::start_assignment(const protocol::Assignment& a) {
  const auto campaign = campaigns_.find(a.campaign);
  if (campaign == campaigns_.end()) {
    spdlog::warn("assign_unknown_campaign attempt_id={} campaign={}", a.attempt_id, a.campaign);
    fail(a, "worker has no spec for campaign " + std::to_string(a.campaign));
    return;
  }
  if (!campaign->second.spec) {
    fail(a, "worker " + config_.name + " could not parse the spec of campaign " +
                campaign->second.id + ": " + campaign->second.error);
    return;
  }
  const auto& spec = *campaign->second.spec;
  if (a.model >= spec.models.size() || a.benchmark >= spec.benchmarks.size()) {
    fail(a, "assignment names model " + std::to_string(a.model) + " and benchmark " +
                std::to_string(a.benchmark) + " but campaign " + campaign->second.id + " has " +
                std::to_string(spec.models.size()) + " models and " +
                std::to_string(spec.benchmarks.size()) + " benchmarks");
    return;
  }
  if (a.start < 0 || a.end < a.start) {
    fail(a, "assignment range [" + std::to_string(a.start) + ", " + std::to_string(a.end) +
                ") is not a range of examples");
    return;
  }
  const RunRequest request{a, spec, campaign->second.id};
  if (spec.runner.type == RunnerType::kNoop) {
    outgoing_.push_back(Outgoing{*noop_runner_.start(request), false});
    return;
  }
  const auto& model = spec.models[a.model];
  // The node's owner decides what runs here, not the spec: checked before anything starts.
  // A refusal is an ordinary failed attempt (it uses one of the shard's attempts), so a
  // campaign that no worker will run ends failed with this error instead of circling the
  // cluster forever.
  if (auto refused = spec.runner.type != RunnerType::kExec
                         ? std::nullopt
                         : config_.exec_policy.check(
                               substitute_placeholders(spec.runner.command.front(), request))) {
    metrics_.count_exec_refused(refused->reason);
    spdlog::warn("exec_refused attempt_id={} campaign={} reason={} error=\"{}\"", a.attempt_id,
                 campaign->second.id, to_string(refused->reason), refused->message);
    fail(a, "worker " + config_.name + " refuses to run " + refused->message);
    return;
  }
  spdlog::info(
      "shard_assigned attempt_id={} campaign={} runner={} model={} benchmark={} shard={} gpus={}",
      a.attempt_id, campaign->second.id, to_string(spec.runner.type), model.name,
      spec.benchmarks[a.benchmark].name, a.shard, a.gpus.size());
  running_.emplace(a.attempt_id, a);
  if (model.serve) {
    // Runs once the model's server is ready (at once when one is warm): on_serve_events.
    loading_.emplace(a.attempt_id, true);
    model_servers_->acquire(ServeRequest{a.attempt_id, model.name, *model.serve, a.gpus});
    return;
  }
  if (model.endpoint) {
    start_served(a, model.endpoint->url);
    return;
  }
  exec_runner_->start(request);
}

void Worker::on_ack(const protocol::Ack& ack) {
  for (const uint64_t attempt_id : ack.attempt_ids) {
    const auto it = unacked_.find(attempt_id);
    if (it == unacked_.end()) continue;  // a repeated ACK
    if (it->second.exec || it->second.on_disk) outbox_.remove(attempt_id);
    if (it->second.on_disk) {
      --outbox_files_;
      outbox_bytes_ -= it->second.disk_bytes;
    }
    unacked_.erase(it);
    ++stats_.acked;
  }
}

void Worker::on_cancel(const protocol::Cancel& cancel) {
  for (const uint64_t attempt_id : cancel.attempt_ids) {
    const auto queued = std::find_if(queued_.begin(), queued_.end(), [attempt_id](const auto& q) {
      return q.attempt_id == attempt_id;
    });
    if (queued != queued_.end()) {  // never started: nothing to stop
      queued_.erase(queued);
      ++stats_.cancelled;
      spdlog::info("cancel attempt_id={} state=queued", attempt_id);
      continue;
    }
    if (running_.erase(attempt_id) == 0) {
      spdlog::debug("cancel_ignored attempt_id={} reason=\"not running here\"", attempt_id);
      continue;
    }
    stop_attempt(attempt_id);
    ++stats_.cancelled;
    spdlog::info("cancel attempt_id={}", attempt_id);
  }
}

void Worker::collect_exec_results() {
  for (auto& result : exec_runner_->take_finished()) {
    if (!result.ok && result.error.starts_with("data changed:")) {
      metrics_.count_data_changed();
    } else {
      metrics_.count_runner_exit(result);
    }
    model_servers_->release(result.attempt_id);
    if (running_.erase(result.attempt_id) == 0) {
      // Cancelled meanwhile. A failure is what the kill made of it and tells nobody anything. A
      // success finished before the CANCEL could stop it (a frozen worker resumes with both): it
      // goes to the coordinator, which records it as a stale attempt and counts nothing twice,
      // rather than vanishing from the shard's history.
      if (!result.ok) continue;
      spdlog::info("late_result_after_cancel attempt_id={}", result.attempt_id);
    }
    fit_in_frame(result);
    outgoing_.push_back(Outgoing{std::move(result), true});
  }
}

void Worker::collect_openai_results() {
  for (auto& result : openai_runner_->take_finished()) {
    model_servers_->release(result.attempt_id);
    if (running_.erase(result.attempt_id) == 0) continue;
    if (!result.ok) {
      spdlog::warn("openai_shard_failed attempt_id={} error=\"{}\"", result.attempt_id,
                   result.error);
    }
    fit_in_frame(result);
    // Through the outbox like exec results: a shard of requests is worth keeping.
    outgoing_.push_back(Outgoing{std::move(result), true});
  }
}

void Worker::on_serve_events() {
  for (auto& event : model_servers_->take_events()) {
    const auto it = running_.find(event.attempt_id);
    if (it == running_.end()) {  // cancelled meanwhile
      model_servers_->release(event.attempt_id);
      continue;
    }
    if (event.ready) {
      if (loading_.erase(event.attempt_id) == 0) continue;  // told twice: already running
      start_served(it->second, std::move(event.endpoint));
      continue;
    }
    // The server failed: the attempt fails with its words, whether it waited or was running.
    const auto assignment = it->second;
    running_.erase(it);
    stop_attempt(event.attempt_id);
    auto result = failed_result(assignment, std::move(event.error));
    if (event.start_failed) {
      result.failure = protocol::FailureKind::kServerStart;
      result.server_start = event.server_id;
      result.failure_reason = std::move(event.reason);
    }
    outgoing_.push_back(Outgoing{std::move(result), false});
  }
}

void Worker::start_served(const protocol::Assignment& a, std::string endpoint) {
  const auto& campaign = campaigns_.at(a.campaign);
  const auto& spec = *campaign.spec;
  const auto& model = spec.models[a.model];
  const auto& benchmark = spec.benchmarks[a.benchmark];
  if (spec.runner.type == RunnerType::kOpenAi) {
    OpenAiJob job;
    job.identity = protocol::result_for(a);
    job.endpoint = std::move(endpoint);
    job.model = model.served_name();
    if (model.endpoint && !model.endpoint->api_key_env.empty()) {
      const char* key = std::getenv(model.endpoint->api_key_env.c_str());
      job.api_key = key != nullptr ? key : "";
    }
    job.metric = benchmark.metric;
    job.start = a.start;
    job.end = a.end;
    job.params = benchmark.params;
    job.max_concurrency = spec.runner.max_concurrency;
    job.request_timeout_s = spec.runner.request_timeout_s;
    job.max_retries = spec.runner.max_retries;
    openai_runner_->start(std::move(job));
    return;
  }
  RunRequest request{a, spec, campaign.id, std::move(endpoint), model.served_name()};
  exec_runner_->start(request);
}

void Worker::stop_attempt(uint64_t attempt_id) {
  loading_.erase(attempt_id);
  exec_runner_->cancel(attempt_id);
  openai_runner_->cancel(attempt_id);
  model_servers_->release(attempt_id);
}

void Worker::flush_results() {
  if (outgoing_.empty()) return;
  // Noop results and attempts refused before they started get their timestamps here: one clock
  // read per turn, not per shard.
  const int64_t now_ms = clock_.wall_ms();
  for (auto& item : outgoing_) {
    if (item.result.ended_at_ms != 0) continue;
    item.result.ended_at_ms = now_ms;
    if (item.result.started_at_ms == 0) item.result.started_at_ms = now_ms;
  }
  // Exec results reach the disk before the wire (see the top of this file).
  std::vector<const protocol::ShardResult*> durable;
  for (const auto& item : outgoing_) {
    if (item.exec) durable.push_back(&item.result);
  }
  // A failed write does not hold the results back. Sending is safe: the coordinator counts an
  // attempt once, by its id, and ACKs only after its own synced commit, so from the ACK on the
  // result is durable there. What the failure costs is the local copy until then: if this worker
  // dies before the ACK, the shard runs again (it is never lost, never counted twice). Holding
  // the results instead would stall every shard behind a full or broken disk, with the same
  // crash window. The files are written again by the graceful-stop persist.
  bool stored = true;
  if (!durable.empty()) {
    auto status = outbox_.write(durable);
    if (!status.ok()) {
      stored = false;
      stats_.outbox_write_failures += durable.size();
      spdlog::error(
          "outbox_write_failed results={} error=\"{}\" action=\"sent without a local copy; "
          "a crash before the ACK reruns them\"",
          durable.size(), status.error().message);
    }
  }
  const auto now = clock_.now();
  send_in_frames(
      outgoing_.size(), [this](size_t i) { return std::move(outgoing_[i].result); },
      [this, now, stored](size_t i, protocol::ShardResult&& result) {
        ++stats_.results_sent;
        if (!result.ok) ++stats_.results_failed;
        const bool exec = outgoing_[i].exec;
        const auto attempt_id = result.attempt_id;
        const bool on_disk = exec && stored;
        const auto bytes = on_disk ? file_bytes(outbox_.path_of(attempt_id)) : 0;
        put_unacked(attempt_id, Pending{std::move(result), now, exec, on_disk, bytes});
      },
      [this](const std::string& frame) { return send_results_frame(frame); });
  outgoing_.clear();
}

void Worker::put_unacked(uint64_t attempt_id, Pending pending) {
  auto [it, inserted] = unacked_.try_emplace(attempt_id);
  if (!inserted && it->second.on_disk) {  // replaced: its file was written again
    --outbox_files_;
    outbox_bytes_ -= it->second.disk_bytes;
  }
  if (pending.on_disk) {
    ++outbox_files_;
    outbox_bytes_ += pending.disk_bytes;
  }
  it->second = std::move(pending);
}

void Worker::publish_metrics() {
  metrics_.publish(WorkerCounts{stats_.assigned, stats_.results_sent, stats_.results_failed,
                                stats_.results_resent, stats_.acked, stats_.bad_messages,
                                stats_.sends_dropped, stats_.outbox_write_failures},
                   WorkerGauges{running_.size(), queued_.size(), unacked_.size(), outbox_files_,
                                outbox_bytes_, connected_});
}

void Worker::resend(const std::vector<Pending*>& pending) {
  if (pending.empty()) return;
  const auto now = clock_.now();
  send_in_frames(
      pending.size(), [&pending](size_t i) { return pending[i]->result; },
      [this, &pending, now](size_t i, protocol::ShardResult&& /*copy*/) {
        pending[i]->sent_at = now;
        ++stats_.results_resent;
      },
      [this](const std::string& frame) { return send_results_frame(frame); });
}

void Worker::on_timers() {
  const auto now = clock_.now();
  if (hello_pending_) try_send_hello();
  if (now >= next_heartbeat_) {
    send_frame(protocol::encode(protocol::Heartbeat{}));
    next_heartbeat_ = now + heartbeat_;  // also when refused: no retry storm while disconnected
  }
  if (!silent_ && now - last_heard_ > kSilentHeartbeats * heartbeat_) {
    silent_ = true;
    spdlog::warn(
        "coordinator_silent silent_ms={} running={} unacked={} action=\"shards keep "
        "running, reconnecting\"",
        std::chrono::duration_cast<milliseconds>(now - last_heard_).count(), running_.size(),
        unacked_.size());
  }
  // Re-sends wait while disconnected: the WELCOME after the reconnection re-sends everything.
  if (now >= next_resend_check_) {
    next_resend_check_ = now + heartbeat_;
    if (!connected_) return;
    std::vector<Pending*> stale;
    for (auto& [attempt_id, pending] : unacked_) {
      if (now - pending.sent_at >= kResendHeartbeats * heartbeat_) stale.push_back(&pending);
    }
    if (!stale.empty()) {
      spdlog::info("resend_unacked results={} after_ms={}", stale.size(),
                   (kResendHeartbeats * heartbeat_).count());
      resend(stale);
    }
  }
}

bool Worker::drain_done() {
  const auto now = clock_.now();
  if (now >= drain_deadline_) {
    if (!running_.empty()) hand_back_running();
    hand_back_queued();
    return true;
  }
  if (drain_quiet_until_ && now < *drain_quiet_until_) return false;
  if (!running_.empty() || !queued_.empty()) return false;
  if (unacked_.empty()) return true;
  // All shards are done; give the ACKs for the last results a moment, then rely on the outbox.
  if (!ack_wait_deadline_) {
    ack_wait_deadline_ = std::min(now + kAckWaitHeartbeats * heartbeat_, drain_deadline_);
  }
  return now >= *ack_wait_deadline_;
}

void Worker::kill_running(const std::string& reason) {
  for (const auto& [attempt_id, assignment] : running_) {
    spdlog::warn("exec_killed attempt_id={} reason=\"{}\"", attempt_id, reason);
    stop_attempt(attempt_id);
    outgoing_.push_back(Outgoing{failed_result(assignment, reason), true});
  }
  running_.clear();
}

// At the drain timeout: the shards still running are not failures of theirs, so they go back
// unfinished (the coordinator queues them again at once and keeps their attempt budget) rather
// than as failed results. If the hand-back cannot be sent, the coordinator finds this worker
// silent and gives the shards up itself.
void Worker::hand_back_running() {
  protocol::HandBack hand_back;
  for (const auto& [attempt_id, assignment] : running_) {
    spdlog::warn("exec_killed attempt_id={} reason=\"drain timeout of {} ms expired; handed back\"",
                 attempt_id, config_.drain_timeout.count());
    stop_attempt(attempt_id);
    hand_back.attempt_ids.push_back(attempt_id);
  }
  running_.clear();
  const auto frame = protocol::encode(hand_back);
  bool sent = send_frame(frame);
  // Right after a reconnection the new pipe refuses our HELLO for a moment (see poll_wait), and a
  // hand-back cannot go before it; lost, it would cost each shard an attempt. Worth a short wait.
  for (int tries = 0; !sent && connected_ && tries < kHandBackRetries; ++tries) {
    std::this_thread::sleep_for(kHelloRetry);
    sent = send_frame(frame);
  }
  // The socket closes right after this; without a linger the frame could die in its queue.
  if (sent) socket_.set(zmq::sockopt::linger, kFinalFramesLingerMs);
  spdlog::info("hand_back attempts={} sent={}", hand_back.attempt_ids.size(), sent);
}

bool Worker::persist_unacked() {
  std::vector<const protocol::ShardResult*> to_write;
  for (auto& item : outgoing_) to_write.push_back(&item.result);  // only left after a failure
  for (const auto& [attempt_id, pending] : unacked_) {
    if (!pending.on_disk) to_write.push_back(&pending.result);
  }
  if (to_write.empty()) return true;
  auto status = outbox_.write(to_write);
  if (!status.ok()) {
    stats_.outbox_write_failures += to_write.size();
    spdlog::error("outbox_persist_failed results={} error=\"{}\"", to_write.size(),
                  status.error().message);
    return false;
  }
  spdlog::info("outbox_persisted results={} dir={}", to_write.size(), outbox_.dir().string());
  return true;
}

void Worker::try_send_hello() {
  protocol::Hello hello;
  hello.name = config_.name;
  hello.instance = instance_;
  hello.host = host_;
  hello.slots = config_.slots;
  hello.queue_ahead = config_.queue_ahead;
  hello.gpus = to_json(config_.gpus);
  hello.labels = config_.labels;
  // Attempts still running and attempts whose results we hold: a restarted coordinator keeps
  // their leases instead of dispatching second copies.
  // (outgoing_ holds results finished earlier in this turn, when a REHELLO arrives mid-turn.)
  hello.running.reserve(running_.size() + queued_.size() + unacked_.size() + outgoing_.size());
  for (const auto& [attempt_id, assignment] : running_) hello.running.push_back(attempt_id);
  for (const auto& a : queued_) hello.running.push_back(a.attempt_id);
  for (const auto& [attempt_id, pending] : unacked_) hello.running.push_back(attempt_id);
  for (const auto& item : outgoing_) hello.running.push_back(item.result.attempt_id);
  std::sort(hello.running.begin(), hello.running.end());
  hello.warm = serve_status().warm;
  if (!send_raw(protocol::encode(hello))) return;  // not connected yet; the monitor tells us
  hello_pending_ = false;
  awaiting_welcome_ = true;
  spdlog::info("hello_sent name={} instance={} slots={} running={}", config_.name, instance_,
               config_.slots, hello.running.size());
}

protocol::ServeStatus Worker::serve_status() const {
  protocol::ServeStatus status;
  for (auto& server : model_servers_->warm()) {
    if (!server.ready) continue;
    status.warm.push_back(protocol::WarmModel{server.model, server.gpus,
                                              static_cast<uint64_t>(server.load_time.count())});
  }
  std::sort(status.warm.begin(), status.warm.end(), [](const auto& a, const auto& b) {
    return a.model != b.model ? a.model < b.model : a.gpus < b.gpus;
  });
  for (const auto& [attempt_id, waiting] : loading_) status.loading.push_back(attempt_id);
  std::sort(status.loading.begin(), status.loading.end());
  return status;
}

void Worker::send_serve_status() {
  if (!connected_ || hello_pending_ || awaiting_welcome_) return;
  auto status = serve_status();
  // Nothing served, nothing said: a worker without model servers sends what it always sent.
  if (!status_sent_ && status.warm.empty() && status.loading.empty()) return;
  if (status_sent_ && *status_sent_ == status) return;
  if (!send_frame(protocol::encode(protocol::Heartbeat{status}))) return;
  spdlog::debug("serve_status_sent warm={} loading={}", status.warm.size(), status.loading.size());
  status_sent_ = std::move(status);
}

bool Worker::send_results_frame(const std::string& frame) {
  // The coordinator takes results only from the connection our HELLO was bound to. Between a new
  // connection and our HELLO on it, results would be refused; they go after the WELCOME instead.
  if (!connected_ || hello_pending_) return false;
  const uint64_t handshakes = handshakes_;
  // A connection made since the last look gets its HELLO now, and these results wait for the
  // WELCOME, which re-sends everything unACKed.
  if (!hello_sent_on_connection() || handshakes_ != handshakes || !connected_) return false;
  return send_raw(frame);
}

bool Worker::hello_sent_on_connection() {
  // The coordinator refuses anything but HELLO from a connection no HELLO was bound to (a
  // HAND_BACK so refused charges its shards an attempt once we look lost). ZeroMQ reports a
  // completed handshake on the monitor before it attaches the new connection's pipe, so reading
  // the monitor right before a send is enough to learn of any connection the frame could take.
  read_monitor();
  if (hello_pending_) try_send_hello();
  return !hello_pending_;
}

bool Worker::send_frame(const std::string& frame) {
  if (!hello_sent_on_connection()) {
    ++stats_.sends_dropped;
    return false;
  }
  return send_raw(frame);
}

bool Worker::send_raw(const std::string& frame) {
  if (!socket_.send(zmq::buffer(frame), zmq::send_flags::dontwait)) {
    ++stats_.sends_dropped;
    return false;
  }
  // Any message counts as a heartbeat; an explicit one is due only after a quiet interval.
  next_heartbeat_ = clock_.now() + heartbeat_;
  return true;
}

}  // namespace evald::worker
