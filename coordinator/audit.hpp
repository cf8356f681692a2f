// AuditLog: the durable record of who changed what (submit, rerun, cancel, import_scores) and of
// every refused request, stored in RocksDB (key family "u", coordinator/store_layout.md) in the
// same batch as the change it describes, so an answered mutation always has its audit event.
//
// Refusals are written too, but an attacker must not be able to fill the disk with them: per
// minute at most kRefusalsPerSourcePerMinute events are written per source (token name, or the
// client address without a valid token) and at most kRefusalsPerMinute in all. What is left out
// is counted, and one "refused" event at the start of the next minute says how many were not
// written. Text fields are bounded and made printable before they are stored.
//
// Thread: the coordinator's core thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>

#include "common/result.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/store.hpp"

namespace evald::coordinator {

inline constexpr size_t kRefusalsPerSourcePerMinute = 10;
inline constexpr size_t kRefusalsPerMinute = 120;
inline constexpr size_t kAuditDefaultLimit = 1000;
inline constexpr size_t kAuditMaxLimit = 10000;

struct AuditEntry {
  std::optional<std::string> principal;  // the token's name; nullopt without one
  std::string address;                   // the client's address
  std::string action;                    // submit, rerun, cancel, import_scores, refused
  std::string campaign;                  // "" when none
  std::string detail;
};

class AuditLog {
 public:
  // Continues the sequence after the last event in the store.
  AuditLog(const Store& store, Metrics& metrics);

  // Stages the event in `batch`.
  void record(Store::Batch& batch, int64_t now_ms, const AuditEntry& entry);
  // Stages a refusal unless its source (or everybody) is over the per-minute cap.
  void record_refusal(Store::Batch& batch, int64_t now_ms, const AuditEntry& entry);

  // {"events": [...], "next_since": SEQ, "more": bool}: up to `limit` events with seq > since.
  Result<nlohmann::json> page(uint64_t since, size_t limit) const;

 private:
  void roll_window(Store::Batch& batch, int64_t now_ms);

  const Store& store_;
  Metrics& metrics_;
  uint64_t next_seq_ = 1;
  int64_t window_minute_ = -1;
  size_t window_written_ = 0;
  size_t window_suppressed_ = 0;
  std::unordered_map<std::string, size_t> window_by_source_;
};

// Printable ASCII with other bytes as %XX, at most `max_bytes` (then "..."), for paths and other
// client-chosen text that goes into the log and the audit record.
std::string printable(std::string_view text, size_t max_bytes);

}  // namespace evald::coordinator
