// The coordinator's persisted records and their binary encodings. Every key family and value
// format is listed in coordinator/store_layout.md; this header is its code form.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/aggregation.hpp"
#include "common/result.hpp"

namespace evald::coordinator {

enum class ShardState : uint8_t {
  kPending = 0,
  kRunning = 1,
  kSucceeded = 2,
  kFailed = 3,
  kCancelled = 4,
};
inline constexpr size_t kShardStateCount = 5;
const char* to_string(ShardState state);
bool parse_shard_state(std::string_view text, ShardState& out);
inline bool is_final(ShardState s) {
  return s == ShardState::kSucceeded || s == ShardState::kFailed || s == ShardState::kCancelled;
}

enum class CampaignState : uint8_t { kRunning = 0, kSucceeded = 1, kFailed = 2, kCancelled = 3 };
const char* to_string(CampaignState state);

// Key "s" + campaign + group + shard: the latest state of one shard. A shard with no record has
// never left `pending` since its campaign was submitted.
struct ShardRecord {
  ShardState state = ShardState::kPending;
  uint32_t attempts = 0;        // attempts started within the current budget (rerun resets it)
  uint32_t total_attempts = 0;  // attempts ever started
  uint64_t attempt_id = 0;      // the current (running) or last attempt
  std::string worker;           // who runs / ran the current or last attempt
  int64_t started_at_ms = 0;    // wall clock, current or last attempt
  uint32_t duration_ms = 0;     // of the succeeded attempt
  int64_t count = 0;            // examples scored (succeeded)
  std::vector<std::pair<std::string, double>> metrics;  // succeeded
  std::string last_error;                               // of the last failed attempt
  // Free hand-backs used within the current budget. Stored so that a coordinator restart does not
  // give a shard that outlives every worker it is given a fresh set of free hand-backs.
  uint32_t hand_backs = 0;
  // Succeeded by reuse (format 3): the campaign id and attempt id of the earlier result taken
  // instead of running; empty / 0 for a shard that ran.
  std::string reused_from_campaign;
  uint64_t reused_from_attempt = 0;
};

enum class AttemptOutcome : uint8_t {
  kFailed = 0,      // runner failure: exit code, signal, timeout, unparsable output
  kLost = 1,        // its worker was lost or restarted without it
  kStale = 2,       // a result that arrived after the attempt was given up; never counted
  kCancelled = 3,   // stopped by cancel
  kOrphaned = 4,    // running when the coordinator restarted and not reclaimed by any worker
  kHandedBack = 5,  // given back unfinished by a stopping worker; does not use up an attempt
};
const char* to_string(AttemptOutcome outcome);

// Key "a" + campaign + group + shard + attempt id: one attempt that did not end in the shard's
// success. Succeeded attempts live in the ShardRecord itself, so the hot path writes no extra key.
struct AttemptRecord {
  AttemptOutcome outcome = AttemptOutcome::kFailed;
  uint32_t attempt = 0;  // 1-based number within its budget
  std::string worker;
  int64_t ended_at_ms = 0;
  uint32_t duration_ms = 0;
  std::string error;
  bool result_ok = false;  // stale only: what the late result said
  int64_t count = 0;
  std::vector<std::pair<std::string, double>> metrics;
};

std::string encode(const ShardRecord& record);
Result<ShardRecord> decode_shard_record(std::string_view bytes);
std::string encode(const AttemptRecord& record);
Result<AttemptRecord> decode_attempt_record(std::string_view bytes);
std::string encode(const CellAggregate& cell);
Result<CellAggregate> decode_cell(std::string_view bytes);

}  // namespace evald::coordinator
