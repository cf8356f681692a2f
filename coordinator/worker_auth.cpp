#include "coordinator/worker_auth.hpp"

#include <spdlog/spdlog.h>
#include <zmq.h>

#include <algorithm>
#include <array>
#include <vector>

namespace evald::coordinator {
namespace {

constexpr auto kZapPoll = std::chrono::milliseconds(100);
// Entries older than the interval are pruned once the table is this big, so a scan of many
// addresses cannot grow it without bound.
constexpr size_t kPruneAt = 4096;

}  // namespace

bool PeerLogLimit::allow(const std::string& peer, std::chrono::steady_clock::time_point now) {
  std::lock_guard lock(mutex_);
  if (last_.size() >= kPruneAt) {
    std::erase_if(last_, [&](const auto& entry) { return now - entry.second >= interval_; });
  }
  auto [it, inserted] = last_.try_emplace(peer, now);
  if (inserted) return true;
  if (now - it->second < interval_) return false;
  it->second = now;
  return true;
}

void count_auth_failure(Metrics& metrics, PeerLogLimit& log_limit, const std::string& reason,
                        const std::string& peer, const std::string& detail) {
  metrics.worker_auth_failures.Add({{"reason", reason}}).Increment();
  // Per reason too: one peer address (a NAT, a node running several workers) may be refused for
  // different reasons, and each deserves its line.
  if (log_limit.allow(reason + " " + peer, std::chrono::steady_clock::now())) {
    spdlog::warn("worker_refused reason={} peer={} {} note=\"logged once per peer and minute\"",
                 reason, peer, detail);
  }
}

ZapHandler::ZapHandler(zmq::context_t& context, WorkerKeys keys, Metrics& metrics,
                       PeerLogLimit& log_limit)
    : keys_(std::move(keys)),
      metrics_(metrics),
      log_limit_(log_limit),
      socket_(context, zmq::socket_type::rep) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.bind(kZapEndpoint);
  thread_ = std::jthread([this](const std::stop_token& stop) { serve(stop); });
}

ZapHandler::~ZapHandler() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void ZapHandler::serve(const std::stop_token& stop) {
  while (!stop.stop_requested()) {
    try {
      std::array<zmq::pollitem_t, 1> items = {{{socket_.handle(), 0, ZMQ_POLLIN, 0}}};
      zmq::poll(items.data(), items.size(), kZapPoll);
      if ((items[0].revents & ZMQ_POLLIN) != 0) answer_one();
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      if (e.num() == ETERM) return;
      // A REP socket that failed mid-exchange would refuse every later request; a handler that
      // stops answering makes every handshake fail, which is safe, and is logged.
      spdlog::error("zap_handler_failed error=\"{}\"", e.what());
      return;
    }
  }
}

void ZapHandler::answer_one() {
  // Request (RFC 27): version, request id, domain, address, routing id, mechanism, credentials.
  std::vector<zmq::message_t> request;
  do {
    zmq::message_t frame;
    if (!socket_.recv(frame, zmq::recv_flags::dontwait)) break;
    request.push_back(std::move(frame));
  } while (request.back().more());
  // libzmq always sends all of them; a REP socket must answer anyway to take the next request.
  request.resize(std::max<size_t>(request.size(), 6));
  const std::string request_id = request[1].to_string();
  const std::string address = request[3].to_string();
  const std::string mechanism = request[5].to_string();
  std::string status = "400";
  std::string status_text = "unknown key";
  std::string user_id;
  if (mechanism == "CURVE" && request.size() >= 7 && request[6].size() == 32) {
    std::array<char, kCurveKeyZ85Chars + 1> z85{};
    zmq_z85_encode(z85.data(), request[6].data<uint8_t>(), 32);
    const auto found = keys_.name_by_key.find(z85.data());
    if (found != keys_.name_by_key.end()) {
      status = "200";
      status_text = "OK";
      user_id = found->second;
    } else {
      count_auth_failure(metrics_, log_limit_, "unknown_key", address,
                         fmt::format("public_key={}", z85.data()));
    }
  } else {
    count_auth_failure(metrics_, log_limit_, "unknown_key", address,
                       fmt::format("mechanism={}", mechanism));
  }
  const std::array<std::string, 6> reply = {"1.0", request_id, status, status_text, user_id, ""};
  for (size_t i = 0; i < reply.size(); ++i) {
    socket_.send(zmq::buffer(reply[i]),
                 i + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
}

void Connections::bind(const std::string& name, const std::string& connection) {
  if (auto old = by_connection_.find(connection); old != by_connection_.end()) {
    if (old->second == name) return;
    // The connection said HELLO under another name before: that name loses it.
    by_name_.erase(old->second);
    by_connection_.erase(old);
  }
  if (auto old = by_name_.find(name); old != by_name_.end()) {
    by_connection_.erase(old->second);  // stale from now on
    old->second = connection;
  } else {
    by_name_.emplace(name, connection);
  }
  by_connection_[connection] = name;
}

const std::string* Connections::name_of(const std::string& connection) const {
  const auto found = by_connection_.find(connection);
  return found == by_connection_.end() ? nullptr : &found->second;
}

const std::string* Connections::connection_of(const std::string& name) const {
  const auto found = by_name_.find(name);
  return found == by_name_.end() ? nullptr : &found->second;
}

std::string printable_routing_id(const std::string& routing_id) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string text;
  text.reserve(routing_id.size() * 2);
  for (unsigned char ch : routing_id) {
    text.push_back(kHex[ch >> 4]);
    text.push_back(kHex[ch & 0xf]);
  }
  return text;
}

}  // namespace evald::coordinator
