// The coordinator <-> worker wire protocol. This header is the one place every message is defined.
//
// Transport: the coordinator binds a ZeroMQ ROUTER, each worker connects a DEALER. The ROUTER
// gives every connection its own routing id; the worker's name travels in HELLO, which binds the
// name to that connection (with CURVE, the name must be the one the coordinator's allowlist binds
// to the worker's public key). Anything but HELLO from a connection that is not a name's current
// one changes nothing and is answered with REHELLO. Every message is a single frame (plus the
// routing-id frame the ROUTER adds), at most the coordinator's --max-message-bytes (8 MiB):
//
//   byte 0..1  magic "EV"
//   byte 2     protocol version: kProtocolVersion is sent; kMinProtocolVersion.. are decoded (a
//              version-1 RESULTS simply has no provenance fields); others are refused with a log
//              line
//   byte 3     MessageType
//   byte 4..   body, little-endian binary (common/binary_codec.hpp); Hello and CampaignInfo carry
//              JSON strings for their open-ended parts (GPUs, labels, the campaign spec)
//
// Conversation:
//   worker -> HELLO (name, slots, GPUs, labels, attempts it still runs or holds results for)
//   coord  -> WELCOME (heartbeat and timeout it expects)
//   coord  -> CAMPAIGN (once per campaign per connection, before the first ASSIGN of it)
//   coord  -> ASSIGN (leases; never more than the worker's free slots plus the room left in the
//             queue it announced: credit-based flow)
//   worker -> RESULTS (one or more finished attempts; each frees a slot)
//   coord  -> ACK (attempt ids whose results are durably committed; the worker may forget them)
//   coord  -> CANCEL (attempt ids the worker must stop: campaign cancelled or lease revoked)
//   both   -> HEARTBEAT when idle; any message counts as one
//   worker -> DRAIN (stop sending me work; used on graceful shutdown)
//   worker -> HAND_BACK (attempt ids killed unfinished at the drain timeout: queue them again)
//   worker -> GOODBYE (the drain is over and the worker exits: retire it now, it is not lost)
//   coord  -> REHELLO (I do not know you: a restarted coordinator, or a worker declared lost)
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "common/result.hpp"

namespace evald::protocol {

// Version 2 added provenance to each result (ShardResult's started_at_ms .. data_sha256) and the
// host to HELLO. Version 3 added why a failed attempt failed (ShardResult's failure ..
// failure_reason). Version 4 added GOODBYE. Older frames still decode, so a worker's outbox
// written before the upgrade is delivered, not thrown away; their results carry no provenance or
// failure kind.
inline constexpr uint8_t kProtocolVersion = 4;
inline constexpr uint8_t kMinProtocolVersion = 1;
inline constexpr size_t kHeaderBytes = 4;

enum class MessageType : uint8_t {
  kHello = 1,
  kHeartbeat = 2,
  kResults = 3,
  kDrain = 4,
  kHandBack = 5,
  kGoodbye = 6,
  kWelcome = 10,
  kCampaign = 11,
  kAssign = 12,
  kAck = 13,
  kCancel = 14,
  kReHello = 15,
};

const char* to_string(MessageType type);

// A model server a worker keeps up (docs/served-models.md): the model's name and its GPUs, and
// how long it took from its start to its first healthy answer (0: not said: a frame of an older
// version, e.g. replayed from an outbox written before an upgrade).
// Carried as JSON, so the field is optional on the wire.
struct WarmModel {
  std::string model;
  std::vector<uint32_t> gpus;
  uint64_t load_ms = 0;
  bool operator==(const WarmModel&) const = default;
};

// What a worker's model servers are doing: the servers that are ready, and the attempts that
// wait for a server to load (their shards show phase "loading").
struct ServeStatus {
  std::vector<WarmModel> warm;
  std::vector<uint64_t> loading;
  bool operator==(const ServeStatus&) const = default;
};

// worker -> coordinator
struct Hello {
  std::string name;
  std::string instance;  // random per worker process start; tells a restart from a reconnect
  std::string host;      // the worker's hostname, for provenance ("" from a version-1 worker)
  uint32_t slots = 1;
  // Attempts it takes beyond its slots, queued and started in the order sent as slots free
  // (absent, 0, from a worker that does not queue; carried as JSON, so optional on the wire).
  uint32_t queue_ahead = 0;
  // [{"index":0,"name":"...","memory_mib":N,"uuid":"GPU-..."}]; results name GPUs by index only
  nlohmann::json gpus = nlohmann::json::array();
  nlohmann::json labels = nlohmann::json::object();  // {"k":"v"}
  std::vector<uint64_t> running;                     // attempt ids still running on the worker
  std::vector<WarmModel> warm;                       // model servers ready on the worker
};

// Both ways. A worker attaches `status` when its model servers changed since it last said so;
// otherwise (and always from the coordinator) the body is empty.
struct Heartbeat {
  std::optional<ServeStatus> status;
};
struct Drain {};

// A stopping worker gives these attempts back unfinished (their runners were killed at the drain
// timeout): the coordinator queues them again at once, and they do not use up an attempt.
struct HandBack {
  std::vector<uint64_t> attempt_ids;
};
// The last message of a worker that drained and exits (version 4): nothing of it runs any more
// and every result it had went out before this. The coordinator retires it at once instead of
// waiting for it to fall silent and counting it lost; a lease the worker never reported (an
// ASSIGN that crossed its DRAIN) goes back to the queue without using an attempt.
struct Goodbye {};
struct ReHello {};

// Why a failed attempt failed, where the coordinator acts on the reason (version 3). Values a
// decoder does not know read as kOther. (A decoder refuses frames of a newer version as a whole,
// so the coordinator and its workers are upgraded together, coordinator first; older frames,
// such as an outbox's, still decode.)
enum class FailureKind : uint8_t {
  kOther = 0,
  // The model server the attempt needed failed to start: it exited (or could not be spawned)
  // before it was ready, or was not ready within ready_timeout_s. The coordinator backs the
  // model off on that worker after several in a row (docs/served-models.md).
  kServerStart = 1,
};

struct ShardResult {
  uint64_t attempt_id = 0;
  uint32_t campaign = 0;   // the coordinator's numeric campaign key (CampaignInfo::campaign)
  uint32_t model = 0;      // index into the spec's models
  uint32_t benchmark = 0;  // index into the spec's benchmarks
  uint32_t shard = 0;
  bool ok = false;
  int64_t count = 0;  // examples scored
  std::vector<std::pair<std::string, double>> metrics;
  std::string error;  // for a failed attempt: what happened and the stderr tail
  uint32_t duration_ms = 0;
  std::string samples_json;  // optional per-example records as a JSON array, "" if none
  // Provenance (version 2): when and with what the attempt ran. The worker's name, host and GPU
  // names/UUIDs are known per connection (HELLO), so a result names its GPUs by index only and
  // the noop hot path stays a few dozen bytes.
  int64_t started_at_ms = 0;  // wall clock, Unix ms; 0 = unknown (a version-1 result)
  int64_t ended_at_ms = 0;
  std::vector<uint32_t> gpus;     // the GPU indexes it ran on (CUDA_VISIBLE_DEVICES)
  std::string executable_sha256;  // exec: SHA-256 (hex) of the resolved executable; "" unknown
  std::string data_sha256;        // SHA-256 (hex) of the benchmark's params.data file; "" none
  // Failure kind (version 3); only meaningful when !ok.
  FailureKind failure = FailureKind::kOther;
  // kServerStart: the worker's id of the server start that failed. One failed start fails every
  // attempt waiting for it; the id lets the coordinator count it once.
  uint64_t server_start = 0;
  // kServerStart: the server's last line of stderr (or why it was killed, when it wrote none).
  std::string failure_reason;
};

struct Results {
  std::vector<ShardResult> results;
};

// coordinator -> worker
struct Welcome {
  uint32_t heartbeat_ms = 1000;
  uint32_t worker_timeout_ms = 5000;
  uint64_t coordinator_epoch = 0;
};

struct CampaignInfo {
  uint32_t campaign = 0;
  std::string campaign_id;  // the id people see
  std::string spec_json;    // the validated spec, as JSON
};

struct Assignment {
  uint64_t attempt_id = 0;
  uint32_t campaign = 0;
  uint32_t model = 0;
  uint32_t benchmark = 0;
  uint32_t shard = 0;
  int64_t start = 0;
  int64_t end = 0;
  uint32_t attempt = 1;  // 1-based, counting every attempt of the shard ever started: {attempt}
  std::vector<uint32_t> gpus;  // GPU indexes given to this attempt (CUDA_VISIBLE_DEVICES)
};

struct Assign {
  std::vector<Assignment> assignments;
};

// A result that names the same attempt and shard as `assignment`; the caller fills in the rest.
ShardResult result_for(const Assignment& assignment);

struct Ack {
  std::vector<uint64_t> attempt_ids;
};

struct Cancel {
  std::vector<uint64_t> attempt_ids;
};

using Message = std::variant<Hello, Heartbeat, Results, Drain, HandBack, Goodbye, Welcome,
                             CampaignInfo, Assign, Ack, Cancel, ReHello>;

std::string encode(const Message& message);
// Never throws on bad input: a frame that is short, has the wrong magic or version, an unknown
// type or trailing bytes comes back as an error naming the problem.
Result<Message> decode(std::string_view frame);

MessageType type_of(const Message& message);

}  // namespace evald::protocol
