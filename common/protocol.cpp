#include "common/protocol.hpp"

#include <stdexcept>
#include <type_traits>

#include "common/binary_codec.hpp"
#include "common/json_limits.hpp"
#include "common/spec.hpp"

namespace evald::protocol {
namespace {

constexpr char kMagic0 = 'E';
constexpr char kMagic1 = 'V';
// Smallest encodings, used to refuse item counts the frame cannot hold.
constexpr size_t kMinResultBytesV1 = 8 + 4 * 4 + 1 + 8 + 4 + 4 + 4 + 4;
constexpr size_t kMinResultBytesV2 = kMinResultBytesV1 + 8 + 8 + 4 + 4 + 4;
constexpr size_t kMinResultBytes = kMinResultBytesV2 + 1 + 8 + 4;
constexpr size_t kMinAssignmentBytes = 8 + 4 * 4 + 8 + 8 + 4 + 4;

nlohmann::json warm_json(const std::vector<WarmModel>& warm) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& server : warm) {
    nlohmann::json item = {{"model", server.model}, {"gpus", server.gpus}};
    if (server.load_ms > 0) item["load_ms"] = server.load_ms;
    out.push_back(std::move(item));
  }
  return out;
}

// Throws (nlohmann::json::exception, std::invalid_argument) on a wrong shape; the callers turn
// that into an error.
std::vector<WarmModel> read_warm(const nlohmann::json& value) {
  std::vector<WarmModel> out;
  if (value.is_null()) return out;
  if (!value.is_array()) throw std::invalid_argument("warm is not an array");
  for (const auto& item : value) {
    out.push_back(WarmModel{item.at("model").get<std::string>(),
                            item.value("gpus", std::vector<uint32_t>{}),
                            item.value("load_ms", uint64_t{0})});
  }
  return out;
}

void encode_body(BinaryWriter& w, const Hello& m) {
  nlohmann::json body = {{"name", m.name},      {"instance", m.instance}, {"host", m.host},
                         {"slots", m.slots},    {"gpus", m.gpus},         {"labels", m.labels},
                         {"running", m.running}};
  if (!m.warm.empty()) body["warm"] = warm_json(m.warm);
  if (m.queue_ahead > 0) body["queue_ahead"] = m.queue_ahead;
  w.str(body.dump());
}
void encode_body(BinaryWriter& w, const Heartbeat& m) {
  if (!m.status) return;
  const nlohmann::json body = {{"warm", warm_json(m.status->warm)}, {"loading", m.status->loading}};
  w.str(body.dump());
}
void encode_body(BinaryWriter& /*w*/, const Drain& /*m*/) {}
void encode_body(BinaryWriter& /*w*/, const Goodbye& /*m*/) {}
void encode_body(BinaryWriter& /*w*/, const ReHello& /*m*/) {}
void encode_body(BinaryWriter& w, const Results& m) {
  w.u32(static_cast<uint32_t>(m.results.size()));
  for (const auto& r : m.results) {
    w.u64(r.attempt_id);
    w.u32(r.campaign);
    w.u32(r.model);
    w.u32(r.benchmark);
    w.u32(r.shard);
    w.u8(r.ok ? 1 : 0);
    w.i64(r.count);
    w.u32(static_cast<uint32_t>(r.metrics.size()));
    for (const auto& [name, value] : r.metrics) {
      w.str(name);
      w.f64(value);
    }
    w.str(r.error);
    w.u32(r.duration_ms);
    w.str(r.samples_json);
    w.i64(r.started_at_ms);
    w.i64(r.ended_at_ms);
    w.u32(static_cast<uint32_t>(r.gpus.size()));
    for (uint32_t g : r.gpus) w.u32(g);
    w.str(r.executable_sha256);
    w.str(r.data_sha256);
    w.u8(static_cast<uint8_t>(r.failure));
    w.u64(r.server_start);
    w.str(r.failure_reason);
  }
}
void encode_body(BinaryWriter& w, const Welcome& m) {
  w.u32(m.heartbeat_ms);
  w.u32(m.worker_timeout_ms);
  w.u64(m.coordinator_epoch);
}
void encode_body(BinaryWriter& w, const CampaignInfo& m) {
  w.u32(m.campaign);
  w.str(m.campaign_id);
  w.str(m.spec_json);
}
void encode_body(BinaryWriter& w, const Assign& m) {
  w.u32(static_cast<uint32_t>(m.assignments.size()));
  for (const auto& a : m.assignments) {
    w.u64(a.attempt_id);
    w.u32(a.campaign);
    w.u32(a.model);
    w.u32(a.benchmark);
    w.u32(a.shard);
    w.i64(a.start);
    w.i64(a.end);
    w.u32(a.attempt);
    w.u32(static_cast<uint32_t>(a.gpus.size()));
    for (uint32_t g : a.gpus) w.u32(g);
  }
}
void encode_ids(BinaryWriter& w, const std::vector<uint64_t>& ids) {
  w.u32(static_cast<uint32_t>(ids.size()));
  for (uint64_t id : ids) w.u64(id);
}
void encode_body(BinaryWriter& w, const HandBack& m) {
  encode_ids(w, m.attempt_ids);
}
void encode_body(BinaryWriter& w, const Ack& m) {
  encode_ids(w, m.attempt_ids);
}
void encode_body(BinaryWriter& w, const Cancel& m) {
  encode_ids(w, m.attempt_ids);
}

Result<Message> decode_hello(BinaryReader& r) {
  std::string text;
  if (!r.str(text)) return make_error("HELLO: truncated body");
  // Bounded before anything is built: a HELLO comes from any peer that can reach the socket.
  auto parsed = parse_json_bounded(text);
  if (!parsed) return make_error("HELLO: body " + parsed.error().message);
  auto& body = parsed.value();
  if (!body.is_object()) return make_error("HELLO: body is not a JSON object");
  Hello m;
  try {
    m.name = body.at("name").get<std::string>();
    m.instance = body.value("instance", std::string{});
    m.host = body.value("host", std::string{});
    m.slots = body.at("slots").get<uint32_t>();
    m.queue_ahead = body.value("queue_ahead", uint32_t{0});
    m.gpus = body.value("gpus", nlohmann::json::array());
    m.labels = body.value("labels", nlohmann::json::object());
    m.running = body.value("running", std::vector<uint64_t>{});
    if (body.contains("warm")) m.warm = read_warm(body["warm"]);
  } catch (const std::exception& e) {
    return make_error(std::string("HELLO: bad field: ") + e.what());
  }
  if (m.name.empty()) return make_error("HELLO: name is empty");
  // Bounded with or without CURVE, to the limit a worker's --name is held to at start.
  if (m.name.size() > kMaxNameLength) {
    return make_error("HELLO: worker name is " + std::to_string(m.name.size()) +
                      " bytes; the limit is " + std::to_string(kMaxNameLength));
  }
  if (!m.gpus.is_array()) return make_error("HELLO: gpus is not an array");
  if (!m.labels.is_object()) return make_error("HELLO: labels is not an object");
  return Message{std::move(m)};
}

Result<Message> decode_heartbeat(BinaryReader& r) {
  Heartbeat m;
  if (r.at_end()) return Message{m};
  std::string text;
  if (!r.str(text)) return make_error("HEARTBEAT: truncated body");
  auto parsed = parse_json_bounded(text);
  if (!parsed) return make_error("HEARTBEAT: body " + parsed.error().message);
  const auto& body = parsed.value();
  if (!body.is_object()) return make_error("HEARTBEAT: body is not a JSON object");
  try {
    ServeStatus status;
    status.warm = read_warm(body.value("warm", nlohmann::json::array()));
    status.loading = body.value("loading", std::vector<uint64_t>{});
    m.status = std::move(status);
  } catch (const std::exception& e) {
    return make_error(std::string("HEARTBEAT: bad field: ") + e.what());
  }
  return Message{std::move(m)};
}

Result<Message> decode_results(BinaryReader& r, uint8_t version) {
  Results m;
  uint32_t n = 0;
  const size_t min_bytes = version >= 3   ? kMinResultBytes
                           : version == 2 ? kMinResultBytesV2
                                          : kMinResultBytesV1;
  if (!r.count(n, min_bytes)) {
    return make_error("RESULTS: bad result count");
  }
  m.results.resize(n);
  for (auto& res : m.results) {
    uint8_t ok = 0;
    uint32_t metric_count = 0;
    if (!r.u64(res.attempt_id) || !r.u32(res.campaign) || !r.u32(res.model) ||
        !r.u32(res.benchmark) || !r.u32(res.shard) || !r.u8(ok) || !r.i64(res.count) ||
        !r.count(metric_count, 4 + 8)) {
      return make_error("RESULTS: truncated result");
    }
    res.ok = ok != 0;
    res.metrics.resize(metric_count);
    for (auto& [name, value] : res.metrics) {
      if (!r.str(name) || !r.f64(value)) return make_error("RESULTS: truncated metric");
    }
    if (!r.str(res.error) || !r.u32(res.duration_ms) || !r.str(res.samples_json)) {
      return make_error("RESULTS: truncated result tail");
    }
    if (version < 2) continue;
    uint32_t gpu_count = 0;
    if (!r.i64(res.started_at_ms) || !r.i64(res.ended_at_ms) || !r.count(gpu_count, 4)) {
      return make_error("RESULTS: truncated provenance");
    }
    res.gpus.resize(gpu_count);
    for (auto& g : res.gpus) {
      if (!r.u32(g)) return make_error("RESULTS: truncated gpu list");
    }
    if (!r.str(res.executable_sha256) || !r.str(res.data_sha256)) {
      return make_error("RESULTS: truncated provenance hashes");
    }
    if (version < 3) continue;
    uint8_t kind = 0;
    if (!r.u8(kind) || !r.u64(res.server_start) || !r.str(res.failure_reason)) {
      return make_error("RESULTS: truncated failure kind");
    }
    res.failure = kind == static_cast<uint8_t>(FailureKind::kServerStart)
                      ? FailureKind::kServerStart
                      : FailureKind::kOther;
  }
  return Message{std::move(m)};
}

Result<Message> decode_assign(BinaryReader& r) {
  Assign m;
  uint32_t n = 0;
  if (!r.count(n, kMinAssignmentBytes)) return make_error("ASSIGN: bad assignment count");
  m.assignments.resize(n);
  for (auto& a : m.assignments) {
    uint32_t gpu_count = 0;
    if (!r.u64(a.attempt_id) || !r.u32(a.campaign) || !r.u32(a.model) || !r.u32(a.benchmark) ||
        !r.u32(a.shard) || !r.i64(a.start) || !r.i64(a.end) || !r.u32(a.attempt) ||
        !r.count(gpu_count, 4)) {
      return make_error("ASSIGN: truncated assignment");
    }
    a.gpus.resize(gpu_count);
    for (auto& g : a.gpus) {
      if (!r.u32(g)) return make_error("ASSIGN: truncated gpu list");
    }
  }
  return Message{std::move(m)};
}

bool decode_ids(BinaryReader& r, std::vector<uint64_t>& ids) {
  uint32_t n = 0;
  if (!r.count(n, 8)) return false;
  ids.resize(n);
  for (auto& id : ids) {
    if (!r.u64(id)) return false;
  }
  return true;
}

}  // namespace

ShardResult result_for(const Assignment& assignment) {
  ShardResult result;
  result.attempt_id = assignment.attempt_id;
  result.campaign = assignment.campaign;
  result.model = assignment.model;
  result.benchmark = assignment.benchmark;
  result.shard = assignment.shard;
  result.gpus = assignment.gpus;
  return result;
}

const char* to_string(MessageType type) {
  switch (type) {
    case MessageType::kHello:
      return "hello";
    case MessageType::kHeartbeat:
      return "heartbeat";
    case MessageType::kResults:
      return "results";
    case MessageType::kDrain:
      return "drain";
    case MessageType::kHandBack:
      return "hand_back";
    case MessageType::kGoodbye:
      return "goodbye";
    case MessageType::kWelcome:
      return "welcome";
    case MessageType::kCampaign:
      return "campaign";
    case MessageType::kAssign:
      return "assign";
    case MessageType::kAck:
      return "ack";
    case MessageType::kCancel:
      return "cancel";
    case MessageType::kReHello:
      return "rehello";
  }
  return "unknown";
}

MessageType type_of(const Message& message) {
  return std::visit(
      [](const auto& m) -> MessageType {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, Hello>) return MessageType::kHello;
        if constexpr (std::is_same_v<T, Heartbeat>) return MessageType::kHeartbeat;
        if constexpr (std::is_same_v<T, Results>) return MessageType::kResults;
        if constexpr (std::is_same_v<T, Drain>) return MessageType::kDrain;
        if constexpr (std::is_same_v<T, HandBack>) return MessageType::kHandBack;
        if constexpr (std::is_same_v<T, Goodbye>) return MessageType::kGoodbye;
        if constexpr (std::is_same_v<T, Welcome>) return MessageType::kWelcome;
        if constexpr (std::is_same_v<T, CampaignInfo>) return MessageType::kCampaign;
        if constexpr (std::is_same_v<T, Assign>) return MessageType::kAssign;
        if constexpr (std::is_same_v<T, Ack>) return MessageType::kAck;
        if constexpr (std::is_same_v<T, Cancel>) return MessageType::kCancel;
        if constexpr (std::is_same_v<T, ReHello>) return MessageType::kReHello;
      },
      message);
}

std::string encode(const Message& message) {
  std::string out;
  out.reserve(64);
  out.push_back(kMagic0);
  out.push_back(kMagic1);
  out.push_back(static_cast<char>(kProtocolVersion));
  out.push_back(static_cast<char>(type_of(message)));
  BinaryWriter w(out);
  std::visit([&w](const auto& m) { encode_body(w, m); }, message);
  return out;
}

Result<Message> decode(std::string_view frame) {
  if (frame.size() < kHeaderBytes) return make_error("frame shorter than the 4-byte header");
  if (frame[0] != kMagic0 || frame[1] != kMagic1)
    return make_error("bad magic (not an evald frame)");
  const auto version = static_cast<uint8_t>(frame[2]);
  if (version < kMinProtocolVersion || version > kProtocolVersion) {
    return make_error("unsupported protocol version " + std::to_string(version) + " (expected " +
                      std::to_string(kMinProtocolVersion) + ".." +
                      std::to_string(kProtocolVersion) + ")");
  }
  const auto type = static_cast<MessageType>(static_cast<uint8_t>(frame[3]));
  BinaryReader r(frame.substr(kHeaderBytes));
  Result<Message> decoded = make_error(
      "unknown message type " + std::to_string(static_cast<int>(static_cast<uint8_t>(frame[3]))));
  switch (type) {
    case MessageType::kHello:
      decoded = decode_hello(r);
      break;
    case MessageType::kHeartbeat:
      decoded = decode_heartbeat(r);
      break;
    case MessageType::kDrain:
      decoded = Message{Drain{}};
      break;
    case MessageType::kGoodbye:
      // A GOODBYE in a frame that calls itself older is not a frame any version ever wrote.
      if (version < 4)
        return make_error("GOODBYE in a version " + std::to_string(version) + " frame");
      decoded = Message{Goodbye{}};
      break;
    case MessageType::kReHello:
      decoded = Message{ReHello{}};
      break;
    case MessageType::kResults:
      decoded = decode_results(r, version);
      break;
    case MessageType::kAssign:
      decoded = decode_assign(r);
      break;
    case MessageType::kWelcome: {
      Welcome m;
      if (!r.u32(m.heartbeat_ms) || !r.u32(m.worker_timeout_ms) || !r.u64(m.coordinator_epoch))
        return make_error("WELCOME: truncated body");
      decoded = Message{m};
      break;
    }
    case MessageType::kCampaign: {
      CampaignInfo m;
      if (!r.u32(m.campaign) || !r.str(m.campaign_id) || !r.str(m.spec_json))
        return make_error("CAMPAIGN: truncated body");
      // The worker parses the spec later (with the same limit); refusing it here keeps a deep
      // document from ever being held as a campaign.
      if (auto deep = check_json_depth(m.spec_json)) {
        return make_error("CAMPAIGN: spec " + deep->message);
      }
      decoded = Message{std::move(m)};
      break;
    }
    case MessageType::kHandBack: {
      HandBack m;
      if (!decode_ids(r, m.attempt_ids)) return make_error("HAND_BACK: truncated body");
      decoded = Message{std::move(m)};
      break;
    }
    case MessageType::kAck: {
      Ack m;
      if (!decode_ids(r, m.attempt_ids)) return make_error("ACK: truncated body");
      decoded = Message{std::move(m)};
      break;
    }
    case MessageType::kCancel: {
      Cancel m;
      if (!decode_ids(r, m.attempt_ids)) return make_error("CANCEL: truncated body");
      decoded = Message{std::move(m)};
      break;
    }
  }
  if (decoded.ok() && !r.at_end()) {
    return make_error(std::string(to_string(type)) + ": " + std::to_string(r.remaining()) +
                      " unexpected trailing bytes");
  }
  return decoded;
}

}  // namespace evald::protocol
