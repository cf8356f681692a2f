// Scheduler::recover: rebuilds memory from the store after a start and opens a new attempt-id
// epoch.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <string>
#include <unordered_map>
#include <utility>

#include "coordinator/scheduler.hpp"
#include "coordinator/scheduler_internal.hpp"

namespace evald::coordinator {
using scheduler_detail::campaign_id_for;
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

}  // namespace

Status Scheduler::recover() {
  const auto started = std::chrono::steady_clock::now();
  auto stored_epoch = store_.get_meta_u64("epoch");
  if (!stored_epoch.ok()) return stored_epoch.error();
  auto stored_next_campaign = store_.get_meta_u64("next_campaign");
  if (!stored_next_campaign.ok()) return stored_next_campaign.error();
  if (stored_epoch.value().value_or(0) >= kMaxEpoch) {
    return make_error("attempt-id epoch " + std::to_string(*stored_epoch.value()) +
                      " is exhausted; attempt ids could repeat");
  }
  epoch_ = stored_epoch.value().value_or(0) + 1;
  attempt_seq_ = options_.first_attempt_seq;
  next_campaign_key_ = static_cast<uint32_t>(stored_next_campaign.value().value_or(1));
  batch_.put_meta_u64("epoch", epoch_);
  if (auto s = store_.commit(batch_); !s.ok()) return s;

  Status bad = Ok{};
  auto scanned = store_.scan_campaigns([&](uint32_t key, std::string_view json) {
    if (!bad.ok()) return;
    auto doc = nlohmann::json::parse(json, nullptr, false);
    if (doc.is_discarded() || !doc.is_object() || !doc.contains("spec")) {
      bad = make_error("campaign record " + std::to_string(key) + " is not valid JSON");
      return;
    }
    auto spec = parse_campaign_spec(doc["spec"]);
    if (!spec.ok()) {
      bad = make_error("campaign record " + std::to_string(key) + ": " + spec.error().message);
      return;
    }
    Campaign& c = create_campaign(key, doc.value("id", campaign_id_for(key)),
                                  std::move(spec.value()), doc.value("created_at_ms", int64_t{0}));
    c.finished_at_ms = doc.value("finished_at_ms", int64_t{0});
    if (const auto by = doc.find("submitted_by"); by != doc.end() && by->is_string()) {
      c.submitted_by = by->get<std::string>();
    }
    c.submitted_from = doc.value("submitted_from", std::string());
    const auto state = doc.value("state", std::string("running"));
    if (state == "succeeded") c.state = CampaignState::kSucceeded;
    if (state == "failed") c.state = CampaignState::kFailed;
    if (state == "cancelled") c.state = CampaignState::kCancelled;
    next_campaign_key_ = std::max(next_campaign_key_, key + 1);
  });
  if (!scanned.ok()) return scanned;
  if (!bad.ok()) return bad;

  const auto now = clock_.now();
  int64_t records = 0;
  std::unordered_map<uint64_t, std::deque<std::pair<std::string, float>>> recovered;
  scanned = store_.scan_shards(std::nullopt, [&](const ShardKey& key, const ShardRecord& rec) {
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr || key.group >= c->groups.size() ||
        key.shard >= c->groups[key.group].shards.size()) {
      spdlog::warn("recovery_skipped_record reason=unknown_shard campaign={} group={} shard={}",
                   key.campaign, key.group, key.shard);
      return;
    }
    ++records;
    Group& g = c->groups[key.group];
    Shard& s = g.shards[key.shard];
    set_state(*c, key.group, s, rec.state);
    s.attempts = static_cast<uint16_t>(rec.attempts);
    s.total_attempts = static_cast<uint16_t>(rec.total_attempts);
    s.attempt_id = rec.attempt_id;
    s.hand_backs = static_cast<uint8_t>(std::min<uint32_t>(rec.hand_backs, UINT8_MAX));
    if (!rec.last_error.empty()) g.last_errors[key.shard] = rec.last_error;
    // The durations learned before the restart, rebuilt from the succeeded shards (which attempts
    // included a model load is not stored, so all count as warm ones). Per example of the shard's
    // range, as when they were learned live (a runner may score fewer examples than it was sent).
    if (rec.state == ShardState::kSucceeded) {
      const ShardRange range = shard_range(c->spec.benchmarks[g.benchmark], key.shard);
      if (range.end > range.start) {
        const double per_example = static_cast<double>(rec.duration_ms) / 1000.0 /
                                   static_cast<double>(range.end - range.start);
        g.samples.add(per_example, /*cold=*/false);
        // Per kind of worker too, once the worker that ran it says HELLO (its kind is not
        // stored): the last ones of the group, bounded.
        if (!rec.worker.empty() && c->state == CampaignState::kRunning) {
          auto& ring = recovered[uint64_t{key.campaign} << 32 | key.group];
          if (ring.size() >= 2 * DurationSamples::kKept) ring.pop_front();
          ring.emplace_back(rec.worker, static_cast<float>(per_example));
        }
      }
    }
    if ((rec.state == ShardState::kPending || rec.state == ShardState::kRunning) &&
        rec.total_attempts <= 1) {
      // A shard on its first attempt has counted nothing yet, so samples under its key are an
      // earlier result's: a rerun by a binary that left them for the next success to replace,
      // which skips that delete on a first attempt (a reused shard's first run after a rerun).
      batch_.delete_samples(key);
    }
    if (rec.state == ShardState::kRunning) {
      orphans_[rec.attempt_id] =
          Orphan{key, rec.worker, now + std::max(options_.worker_timeout, options_.restart_grace)};
    }
  });
  if (!scanned.ok()) return scanned;
  recovered_samples_.clear();
  for (auto& [group_key, ring] : recovered) {
    for (auto& [worker, per_example] : ring) {
      recovered_samples_[worker].push_back(RecoveredSample{
          static_cast<uint32_t>(group_key >> 32), static_cast<uint32_t>(group_key), per_example});
    }
  }
  scanned = store_.scan_cells([&](uint32_t campaign, uint32_t group, const CellAggregate& cell) {
    Campaign* c = campaign_by_key(campaign);
    if (c == nullptr || group >= c->groups.size()) return;
    const int64_t total = c->groups[group].cell.shards_total;
    c->groups[group].cell = cell;
    c->groups[group].cell.shards_total = total;
  });
  if (!scanned.ok()) return scanned;
  for (auto& [key, c] : campaigns_) {
    if (c->state == CampaignState::kRunning) {
      c->final_at_rate_since = c->finished();
      maybe_finish(*c);
    }
  }
  refresh_estimates();
  batch_.put_meta_u64("next_campaign", next_campaign_key_);
  if (auto s = store_.commit(batch_); !s.ok()) return s;
  spdlog::info("recovered epoch={} campaigns={} shard_records={} orphaned_leases={} took_ms={}",
               epoch_, campaigns_.size(), records, orphans_.size(),
               duration_cast<milliseconds>(std::chrono::steady_clock::now() - started).count());
  return Ok{};
}

}  // namespace evald::coordinator
