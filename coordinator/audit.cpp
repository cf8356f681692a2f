#include "coordinator/audit.hpp"

#include <spdlog/spdlog.h>

#include "common/time_format.hpp"

namespace evald::coordinator {
namespace {

constexpr size_t kMaxDetailBytes = 512;
// A source map larger than this within one minute means many addresses: the rest count as
// suppressed, and memory stays bounded.
constexpr size_t kMaxSourcesPerMinute = 4096;

}  // namespace

std::string printable(std::string_view text, size_t max_bytes) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : text) {
    if (out.size() >= max_bytes) {
      out += "...";
      break;
    }
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f) {
      out += c;
    } else {
      out += '%';
      out += kHex[byte >> 4];
      out += kHex[byte & 0xF];
    }
  }
  return out;
}

AuditLog::AuditLog(const Store& store, Metrics& metrics) : store_(store), metrics_(metrics) {
  next_seq_ = store_.last_audit_seq().value_or(0) + 1;
}

void AuditLog::record(Store::Batch& batch, int64_t now_ms, const AuditEntry& entry) {
  const nlohmann::json event = {
      {"at_ms", now_ms},
      {"principal", entry.principal ? nlohmann::json(*entry.principal) : nlohmann::json(nullptr)},
      {"address", printable(entry.address, 64)},
      {"action", entry.action},
      {"campaign",
       entry.campaign.empty() ? nlohmann::json(nullptr) : nlohmann::json(entry.campaign)},
      {"detail", printable(entry.detail, kMaxDetailBytes)},
  };
  batch.put_audit(next_seq_++, event.dump());
  metrics_.audit_events.Add({{"action", entry.action}}).Increment();
}

void AuditLog::roll_window(Store::Batch& batch, int64_t now_ms) {
  const int64_t minute = now_ms / 60000;
  if (minute == window_minute_) return;
  if (window_suppressed_ > 0) {
    record(batch, now_ms,
           AuditEntry{std::nullopt, "", "refused", "",
                      std::to_string(window_suppressed_) +
                          " more refused requests in the previous minute were not recorded "
                          "(at most " +
                          std::to_string(kRefusalsPerSourcePerMinute) + " per source and " +
                          std::to_string(kRefusalsPerMinute) + " in all per minute)"});
  }
  window_minute_ = minute;
  window_written_ = 0;
  window_suppressed_ = 0;
  window_by_source_.clear();
}

void AuditLog::record_refusal(Store::Batch& batch, int64_t now_ms, const AuditEntry& entry) {
  roll_window(batch, now_ms);
  const std::string source = entry.principal ? "token " + *entry.principal : entry.address;
  auto it = window_by_source_.find(source);
  if (it == window_by_source_.end() && window_by_source_.size() < kMaxSourcesPerMinute) {
    it = window_by_source_.emplace(source, 0).first;
  }
  if (it == window_by_source_.end() || it->second >= kRefusalsPerSourcePerMinute ||
      window_written_ >= kRefusalsPerMinute) {
    ++window_suppressed_;
    metrics_.audit_suppressed.Increment();
    return;
  }
  ++it->second;
  ++window_written_;
  record(batch, now_ms, entry);
}

Result<nlohmann::json> AuditLog::page(uint64_t since, size_t limit) const {
  nlohmann::json events = nlohmann::json::array();
  uint64_t last = since;
  // One more than asked, to tell whether there is more.
  std::optional<std::string> bad;
  bool more = false;
  auto status = store_.scan_audit(since, limit + 1, [&](uint64_t seq, std::string_view text) {
    if (events.size() >= limit) {
      more = true;
      return;
    }
    auto stored = nlohmann::json::parse(text, nullptr, false);
    if (stored.is_discarded() || !stored.is_object()) {
      if (!bad) bad = "audit record " + std::to_string(seq) + " is not valid JSON";
      return;
    }
    events.push_back({{"seq", seq},
                      {"at", rfc3339_seconds(stored.value("at_ms", int64_t{0}))},
                      {"principal", stored.value("principal", nlohmann::json(nullptr))},
                      {"address", stored.value("address", std::string())},
                      {"action", stored.value("action", std::string())},
                      {"campaign", stored.value("campaign", nlohmann::json(nullptr))},
                      {"detail", stored.value("detail", std::string())}});
    last = seq;
  });
  if (!status.ok()) return status.error();
  if (bad) return make_error(*bad);
  return nlohmann::json{{"events", events}, {"next_since", last}, {"more", more}};
}

}  // namespace evald::coordinator
