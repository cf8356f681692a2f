#include "coordinator/records.hpp"

#include "common/binary_codec.hpp"

namespace evald::coordinator {
namespace {

// Each record starts with a format version so the layout can evolve without a migration tool.
// Shard records: version 2 appends hand_backs; version 1 (without it) is still read, as 0.
// Version 3 appends reused_from (campaign id, attempt id); it is written only for a reused shard,
// so every other record keeps the version-2 bytes and an older binary still reads it.
constexpr uint8_t kShardRecordVersionReused = 3;
constexpr uint8_t kShardRecordVersion = 2;
constexpr uint8_t kShardRecordVersionWithoutHandBacks = 1;
constexpr uint8_t kAttemptRecordVersion = 1;
// Version 2 stores each metric's weighted mean instead of its sum: the sum is a long double in
// memory (it may exceed the double range), the mean always fits a double. Version 1 is read.
constexpr uint8_t kCellVersionSum = 1;
constexpr uint8_t kCellVersion = 2;

void write_metrics(BinaryWriter& w, const std::vector<std::pair<std::string, double>>& metrics) {
  w.u32(static_cast<uint32_t>(metrics.size()));
  for (const auto& [name, value] : metrics) {
    w.str(name);
    w.f64(value);
  }
}

bool read_metrics(BinaryReader& r, std::vector<std::pair<std::string, double>>& metrics) {
  uint32_t n = 0;
  if (!r.count(n, 12)) return false;
  metrics.resize(n);
  for (auto& [name, value] : metrics) {
    if (!r.str(name) || !r.f64(value)) return false;
  }
  return true;
}

}  // namespace

const char* to_string(ShardState state) {
  switch (state) {
    case ShardState::kPending:
      return "pending";
    case ShardState::kRunning:
      return "running";
    case ShardState::kSucceeded:
      return "succeeded";
    case ShardState::kFailed:
      return "failed";
    case ShardState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

bool parse_shard_state(std::string_view text, ShardState& out) {
  for (uint8_t i = 0; i < kShardStateCount; ++i) {
    if (text == to_string(static_cast<ShardState>(i))) {
      out = static_cast<ShardState>(i);
      return true;
    }
  }
  return false;
}

const char* to_string(CampaignState state) {
  switch (state) {
    case CampaignState::kRunning:
      return "running";
    case CampaignState::kSucceeded:
      return "succeeded";
    case CampaignState::kFailed:
      return "failed";
    case CampaignState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

const char* to_string(AttemptOutcome outcome) {
  switch (outcome) {
    case AttemptOutcome::kFailed:
      return "failed";
    case AttemptOutcome::kLost:
      return "lost";
    case AttemptOutcome::kStale:
      return "stale";
    case AttemptOutcome::kCancelled:
      return "cancelled";
    case AttemptOutcome::kOrphaned:
      return "orphaned";
    case AttemptOutcome::kHandedBack:
      return "handed_back";
  }
  return "unknown";
}

std::string encode(const ShardRecord& record) {
  std::string out;
  out.reserve(64 + record.worker.size() + record.last_error.size());
  BinaryWriter w(out);
  const bool reused = !record.reused_from_campaign.empty();
  w.u8(reused ? kShardRecordVersionReused : kShardRecordVersion);
  w.u8(static_cast<uint8_t>(record.state));
  w.u32(record.attempts);
  w.u32(record.total_attempts);
  w.u64(record.attempt_id);
  w.str(record.worker);
  w.i64(record.started_at_ms);
  w.u32(record.duration_ms);
  w.i64(record.count);
  write_metrics(w, record.metrics);
  w.str(record.last_error);
  w.u32(record.hand_backs);
  if (reused) {
    w.str(record.reused_from_campaign);
    w.u64(record.reused_from_attempt);
  }
  return out;
}

Result<ShardRecord> decode_shard_record(std::string_view bytes) {
  BinaryReader r(bytes);
  ShardRecord rec;
  uint8_t version = 0;
  uint8_t state = 0;
  if (!r.u8(version) ||
      (version != kShardRecordVersion && version != kShardRecordVersionWithoutHandBacks &&
       version != kShardRecordVersionReused)) {
    return make_error("shard record: unknown format version");
  }
  if (!r.u8(state) || state >= kShardStateCount || !r.u32(rec.attempts) ||
      !r.u32(rec.total_attempts) || !r.u64(rec.attempt_id) || !r.str(rec.worker) ||
      !r.i64(rec.started_at_ms) || !r.u32(rec.duration_ms) || !r.i64(rec.count) ||
      !read_metrics(r, rec.metrics) || !r.str(rec.last_error) ||
      (version >= kShardRecordVersion && !r.u32(rec.hand_backs)) ||
      (version == kShardRecordVersionReused &&
       (!r.str(rec.reused_from_campaign) || !r.u64(rec.reused_from_attempt) ||
        rec.reused_from_campaign.empty())) ||
      !r.at_end()) {
    return make_error("shard record: truncated or corrupt");
  }
  rec.state = static_cast<ShardState>(state);
  return rec;
}

std::string encode(const AttemptRecord& record) {
  std::string out;
  BinaryWriter w(out);
  w.u8(kAttemptRecordVersion);
  w.u8(static_cast<uint8_t>(record.outcome));
  w.u32(record.attempt);
  w.str(record.worker);
  w.i64(record.ended_at_ms);
  w.u32(record.duration_ms);
  w.str(record.error);
  w.u8(record.result_ok ? 1 : 0);
  w.i64(record.count);
  write_metrics(w, record.metrics);
  return out;
}

Result<AttemptRecord> decode_attempt_record(std::string_view bytes) {
  BinaryReader r(bytes);
  AttemptRecord rec;
  uint8_t version = 0;
  uint8_t outcome = 0;
  uint8_t ok = 0;
  if (!r.u8(version) || version != kAttemptRecordVersion) {
    return make_error("attempt record: unknown format version");
  }
  if (!r.u8(outcome) || outcome > static_cast<uint8_t>(AttemptOutcome::kHandedBack) ||
      !r.u32(rec.attempt) || !r.str(rec.worker) || !r.i64(rec.ended_at_ms) ||
      !r.u32(rec.duration_ms) || !r.str(rec.error) || !r.u8(ok) || !r.i64(rec.count) ||
      !read_metrics(r, rec.metrics) || !r.at_end()) {
    return make_error("attempt record: truncated or corrupt");
  }
  rec.outcome = static_cast<AttemptOutcome>(outcome);
  rec.result_ok = ok != 0;
  return rec;
}

std::string encode(const CellAggregate& cell) {
  std::string out;
  BinaryWriter w(out);
  w.u8(kCellVersion);
  w.i64(cell.examples_scored);
  w.i64(cell.shards_succeeded);
  w.u32(static_cast<uint32_t>(cell.metrics.size()));
  for (const auto& [name, sum] : cell.metrics) {
    w.str(name);
    w.f64(sum.weight > 0
              ? static_cast<double>(sum.weighted_sum / static_cast<long double>(sum.weight))
              : 0.0);
    w.i64(sum.weight);
  }
  return out;
}

Result<CellAggregate> decode_cell(std::string_view bytes) {
  BinaryReader r(bytes);
  CellAggregate cell;
  uint8_t version = 0;
  uint32_t n = 0;
  if (!r.u8(version) || (version != kCellVersion && version != kCellVersionSum) ||
      !r.i64(cell.examples_scored) || !r.i64(cell.shards_succeeded) || !r.count(n, 20)) {
    return make_error("cell aggregate: truncated or corrupt");
  }
  for (uint32_t i = 0; i < n; ++i) {
    std::string name;
    MetricSum sum;
    double stored = 0;  // v1: the sum; v2: the mean
    if (!r.str(name) || !r.f64(stored) || !r.i64(sum.weight)) {
      return make_error("cell aggregate: truncated metric");
    }
    sum.weighted_sum = version == kCellVersionSum ? static_cast<long double>(stored)
                                                  : static_cast<long double>(stored) *
                                                        static_cast<long double>(sum.weight);
    cell.metrics[name] = sum;
  }
  if (!r.at_end()) return make_error("cell aggregate: trailing bytes");
  return cell;
}

}  // namespace evald::coordinator
