#include "coordinator/core.hpp"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>
#include <system_error>

namespace evald::coordinator {
namespace {

// Bounds one turn, so HTTP answers and heartbeats are never starved by a flood of results.
constexpr int kMaxMessagesPerTurn = 4096;
constexpr auto kIdlePoll = std::chrono::milliseconds(50);

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
      router_(context_, zmq::socket_type::router) {
  // A send to a vanished worker must fail loudly, a reconnecting worker must take over its route,
  // and a hostile or broken peer must not make us allocate without bound.
  router_.set(zmq::sockopt::router_mandatory, 1);
  router_.set(zmq::sockopt::router_handover, 1);
  router_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options.max_message_bytes));
  router_.set(zmq::sockopt::sndhwm, 0);
  router_.set(zmq::sockopt::rcvhwm, 0);
  router_.set(zmq::sockopt::linger, 1000);
  try {
    router_.bind(zmq_bind_address(options.bind));
  } catch (const zmq::error_t& e) {
    throw std::runtime_error("cannot bind worker endpoint " + options.bind + ": " + e.what());
  }
  endpoint_ = router_.get(zmq::sockopt::last_endpoint);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
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

void Core::send_to(const std::string& identity, const protocol::Message& message) {
  const auto payload = protocol::encode(message);
  const auto type = static_cast<size_t>(protocol::type_of(message));
  try {
    auto sent =
        router_.send(zmq::buffer(identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    if (sent) sent = router_.send(zmq::buffer(payload), zmq::send_flags::dontwait);
    if (!sent) {
      spdlog::warn("send to worker would block; message dropped worker={} type={}", identity,
                   protocol::to_string(protocol::type_of(message)));
      return;
    }
  } catch (const zmq::error_t& e) {
    // EHOSTUNREACH: the worker is not connected now. It will HELLO again when it is, and every
    // state change this message carried is already durable.
    spdlog::debug("worker unreachable worker={} type={} error=\"{}\"", identity,
                  protocol::to_string(protocol::type_of(message)), e.what());
    return;
  }
  if (type < sent_by_type_.size()) {
    if (sent_by_type_[type] == nullptr) {
      sent_by_type_[type] =
          &metrics_.messages_sent.Add({{"type", protocol::to_string(protocol::type_of(message))}});
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
    const std::string who = identity.to_string();
    if (frames.size() != 1) {
      metrics_.messages_malformed.Increment();
      spdlog::warn("dropped malformed message worker={} reason=\"expected 1 frame, got {}\"", who,
                   frames.size());
      continue;
    }
    auto decoded = protocol::decode(frames[0].to_string_view());
    if (!decoded.ok()) {
      metrics_.messages_malformed.Increment();
      spdlog::warn("dropped malformed message worker={} bytes={} reason=\"{}\"", who,
                   frames[0].size(), decoded.error().message);
      continue;
    }
    scheduler_.on_message(who, std::move(decoded.value()));
  }
}

void Core::commit_and_send(std::vector<PendingHttp>& reads,
                           std::vector<std::pair<HttpRespond, HttpResponse>>& answers) {
  scheduler_.stage_dirty_cells();
  auto& batch = scheduler_.batch();
  if (!batch.empty()) {
    const auto keys = batch.size();
    auto status = store_.commit(batch);
    if (!status.ok()) {
      spdlog::critical("store commit failed; stopping without acknowledging anything error=\"{}\"",
                       status.error().message);
      throw std::runtime_error(status.error().message);
    }
    metrics_.store_commits.Increment();
    metrics_.store_keys_written.Increment(static_cast<double>(keys));
    metrics_.store_commit_latency.Observe(
        std::chrono::duration<double>(store_.last_commit_latency()).count());
  }
  scheduler_.outgoing().drain(
      [this](const std::string& identity, const protocol::Message& m) { send_to(identity, m); });
  for (auto& [respond, response] : answers) respond(std::move(response));
  answers.clear();
  for (auto& read : reads) read.respond(api_.handle(read.request));
  reads.clear();
}

void Core::run(const SignalPipe& signals) {
  std::vector<zmq::pollitem_t> items = {
      {router_.handle(), 0, ZMQ_POLLIN, 0},
      {nullptr, wake_fd_, ZMQ_POLLIN, 0},
      {nullptr, signals.fd(), ZMQ_POLLIN, 0},
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
      spdlog::info("stopping on signal signal={}", signo);
      break;
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
      // A refusal is staged in the audit log now and answered after this turn's commit.
      if (auto refused = api_.check_access(p.request)) {
        answers.emplace_back(std::move(p.respond), std::move(*refused));
      } else if (Api::is_mutation(p.request)) {
        answers.emplace_back(std::move(p.respond), api_.handle(p.request));
      } else {
        reads.push_back(std::move(p));
      }
    }
    scheduler_.tick();
    scheduler_.dispatch();
    commit_and_send(reads, answers);
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
  // Answer whatever is still queued: a mutation that made it into the batch is committed here.
  std::deque<PendingHttp> http;
  {
    std::lock_guard lock(http_mutex_);
    http.swap(http_queue_);
  }
  for (auto& p : http) {
    p.respond(HttpResponse{503, "application/json", R"({"error":"coordinator is shutting down"})"});
  }
  commit_and_send(reads, answers);
}

}  // namespace evald::coordinator
