// Scheduler: backup copies of stragglers (docs/scheduling.md, rule 10, "Backup copies of
// stragglers"). When a campaign asks for them (spec `backup_copies`) and nothing is pending, an
// idle worker that has a model loaded runs a second copy of a shard of that model that another
// worker runs and is expected to finish late. The first result counts, exactly once, through the
// shard's ordinary success path; the other copy is cancelled on its worker and kept as a stale
// attempt. The copy is a lease of its worker like any other (slots, GPUs, HELLO), but the shard
// and its stored record keep naming the first copy: a copy lives in memory only, and a
// coordinator restart cancels it (its worker's HELLO names an attempt nobody holds). When the
// first copy's worker goes away without a result, the copy is promoted to the shard's attempt
// (stored from then on) instead of the shard starting over.
#include <spdlog/spdlog.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/utf8.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/scheduler_internal.hpp"

namespace evald::coordinator {
using scheduler_detail::seconds_between;

void Scheduler::lease_backup(Campaign& c, const ShardKey& key, WorkerInfo& w,
                             std::vector<uint32_t> gpus) {
  Group& g = c.groups[key.group];
  const Shard& s = g.shards[key.shard];
  const uint64_t id = next_attempt_id();
  w.leases[id] = key;
  if (!gpus.empty()) {
    mark_gpus(w, gpus, true);
    w.lease_gpus[id] = gpus;
  }
  // The worker has the model loaded (rule 10 asks for it): the copy's time is a warm one.
  w.lease_started[id] = WorkerInfo::LeaseStart{clock_.now(), false};
  backups_[id] = BackupCopy{key, s.attempt_id, w.index};
  backup_of_[s.attempt_id] = id;
  if (!w.campaigns_sent.contains(c.key)) {
    outgoing_.send(w.name, protocol::CampaignInfo{c.key, c.id, c.spec_json});
    w.campaigns_sent.insert(c.key);
  }
  const auto range = shard_range(c.spec.benchmarks[g.benchmark], key.shard);
  outgoing_.assign(w.name, protocol::Assignment{.attempt_id = id,
                                                .campaign = c.key,
                                                .model = g.model,
                                                .benchmark = g.benchmark,
                                                .shard = key.shard,
                                                .start = range.start,
                                                .end = range.end,
                                                .attempt = s.total_attempts,
                                                .gpus = std::move(gpus)});
  metrics_.backup_copies.Add({{"outcome", "started"}}).Increment();
  const WorkerInfo* first = worker_at(s.worker);
  double elapsed = 0;
  if (first != nullptr) {
    if (auto it = first->lease_started.find(s.attempt_id); it != first->lease_started.end()) {
      elapsed = seconds_between(it->second.at, clock_.now());
    }
  }
  spdlog::info(
      "backup_copy_started campaign={} model={} benchmark={} shard={} attempt_id={} "
      "first_attempt_id={} worker={} first_worker={} first_elapsed_s={:.1f} expected_s={:.1f}",
      c.id, c.spec.models[g.model].name, c.spec.benchmarks[g.benchmark].name, key.shard, id,
      s.attempt_id, w.name, first != nullptr ? first->name : "", elapsed,
      expected_shard_seconds_on(c, key.group, w));
}

void Scheduler::on_backup_result(WorkerInfo* w, const std::string& identity,
                                 protocol::ShardResult& r) {
  const auto found = backups_.find(r.attempt_id);
  const BackupCopy copy = found->second;
  Campaign& c = *campaign_by_key(copy.key.campaign);
  Group& g = c.groups[copy.key.group];
  Shard& s = g.shards[copy.key.shard];
  if (w == nullptr || w->index != copy.worker) {
    reject("not_lease_holder");  // not ACKed: nothing was committed for it
    spdlog::warn(
        "result_rejected reason=not_lease_holder worker={} campaign={} shard={} "
        "attempt_id={} note=\"a backup copy held by another worker\"",
        identity, c.id, copy.key.shard, r.attempt_id);
    return;
  }
  const auto& benchmark = c.spec.benchmarks[g.benchmark];
  if (r.campaign != c.key || r.model != g.model || r.benchmark != g.benchmark ||
      r.shard != copy.key.shard) {
    // The attempt id is the copy's, the shard it names is not: nothing may be swapped for it.
    reject("invalid");  // not ACKed: nothing was committed for it
    spdlog::warn(
        "result_rejected reason=invalid worker={} attempt_id={} note=\"a backup copy's result "
        "names another shard\"",
        identity, r.attempt_id);
    return;
  }
  std::optional<std::string> invalid;
  if (r.ok) {
    const auto range = shard_range(benchmark, r.shard);
    invalid = scheduler_detail::invalid_shard_result(r, range.end - range.start, benchmark.metric);
    if (invalid) {
      // Checked before the first copy is touched: an unusable "success" of a copy must not
      // cancel a healthy first copy nor use up the shard's attempt. It is a failed copy.
      reject("invalid");
      r.ok = false;
      r.error = "invalid result: " + *invalid;
    }
  }
  if (!r.ok) {
    // The copy failed; the first copy still runs and decides. Kept for the shard's history.
    forget_backup(r.attempt_id);
    release_lease(*w, r.attempt_id);
    outgoing_.ack(identity, r.attempt_id);
    metrics_.backup_copies.Add({{"outcome", "failed"}}).Increment();
    store_stale(c, copy.key.group, copy.key.shard, identity, r);
    return;
  }
  // The copy finished first: it becomes the shard's attempt, the first copy is cancelled on its
  // worker and kept as a stale attempt, and the result takes the ordinary success path, which
  // validates and counts it exactly once (an invalid one fails the attempt like any other).
  forget_backup(r.attempt_id);
  const uint64_t first_id = s.attempt_id;
  std::string first_worker;
  if (WorkerInfo* first = worker_at(s.worker); first != nullptr) {
    first_worker = first->name;
    release_lease(*first, first_id);
    outgoing_.cancel(first->name, first_id);
  }
  store_cancelled_copy(c, copy.key.group, copy.key.shard, first_id, first_worker,
                       "backup copy attempt_id=" + std::to_string(r.attempt_id) + " on " +
                           identity + " finished first; this copy was cancelled");
  s.attempt_id = r.attempt_id;
  s.worker = w->index;
  metrics_.backup_copies.Add({{"outcome", "won"}}).Increment();
  spdlog::info(
      "backup_copy_won campaign={} shard={} attempt_id={} worker={} cancelled_attempt_id={} "
      "cancelled_worker={}",
      c.id, copy.key.shard, r.attempt_id, identity, first_id, first_worker);
  on_result(w, identity, r);
}

void Scheduler::drop_backup_of(Campaign& c, uint32_t group, uint32_t index, uint64_t primary,
                               const char* outcome) {
  const auto of = backup_of_.find(primary);
  if (of == backup_of_.end()) return;
  const uint64_t id = of->second;
  const auto found = backups_.find(id);
  const uint32_t worker = found == backups_.end() ? kNoWorker : found->second.worker;
  forget_backup(id);
  WorkerInfo* w = worker_at(worker);
  if (w == nullptr) return;
  release_lease(*w, id);
  outgoing_.cancel(w->name, id);
  store_cancelled_copy(
      c, group, index, id, w->name,
      std::string("backup copy cancelled: the shard's first copy ") +
          (std::string_view(outcome) == "lost" ? "finished first" : "ended without a result"));
  metrics_.backup_copies.Add({{"outcome", outcome}}).Increment();
  spdlog::info("backup_copy_cancelled campaign={} shard={} attempt_id={} worker={} outcome={}",
               c.id, index, id, w->name, outcome);
}

bool Scheduler::promote_backup(Campaign& c, const ShardKey& key, AttemptOutcome outcome,
                               const std::string& worker, const std::string& why) {
  Group& g = c.groups[key.group];
  Shard& s = g.shards[key.shard];
  const auto of = backup_of_.find(s.attempt_id);
  if (of == backup_of_.end()) return false;
  const uint64_t copy_id = of->second;
  const auto found = backups_.find(copy_id);
  WorkerInfo* holder = found == backups_.end() ? nullptr : worker_at(found->second.worker);
  forget_backup(copy_id);
  if (holder == nullptr || departed(holder->state) || !holder->leases.contains(copy_id)) {
    return false;
  }
  // The copy already runs the same shard at the same attempt number, on a worker that has the
  // model loaded: it carries on as the shard's attempt, which costs the shard no attempt and
  // throws away none of the copy's progress.
  const uint64_t first_id = s.attempt_id;
  AttemptRecord rec;
  rec.outcome = outcome;
  rec.attempt = s.total_attempts;
  rec.worker = worker;
  rec.ended_at_ms = clock_.wall_ms();
  rec.error =
      utf8::sanitize_bounded(why + "; its backup copy attempt_id=" + std::to_string(copy_id) +
                                 " on " + holder->name + " runs on as the shard's attempt",
                             kMaxStoredErrorBytes);
  batch_.put_attempt(key, first_id, rec);
  g.last_errors[key.shard] = rec.error;
  s.attempt_id = copy_id;
  s.worker = holder->index;
  // The record's start is the copy's (the steady-clock start of its lease, on the wall clock).
  int64_t started_at_ms = 0;
  if (auto it = holder->lease_started.find(copy_id); it != holder->lease_started.end()) {
    started_at_ms =
        clock_.wall_ms() -
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_.now() - it->second.at).count();
  }
  write_shard(c, key.group, key.shard, holder, nullptr, started_at_ms);
  metrics_.backup_copies.Add({{"outcome", "promoted"}}).Increment();
  spdlog::info(
      "backup_copy_promoted campaign={} shard={} attempt_id={} worker={} ended_attempt_id={} "
      "ended_worker={} outcome={}",
      c.id, key.shard, copy_id, holder->name, first_id, worker, to_string(outcome));
  return true;
}

void Scheduler::forget_backup(uint64_t attempt_id) {
  const auto found = backups_.find(attempt_id);
  if (found == backups_.end()) return;
  backup_of_.erase(found->second.primary);
  backups_.erase(found);
}

void Scheduler::store_cancelled_copy(Campaign& c, uint32_t group, uint32_t index,
                                     uint64_t attempt_id, const std::string& worker,
                                     const std::string& why) {
  // Not a stale result (none came): evald_stale_results_total counts the result the cancelled
  // copy may still send, once, when it crosses the CANCEL (store_stale), so a copy is never
  // counted twice.
  Shard& s = c.groups[group].shards[index];
  if (s.stale_records >= kMaxStaleRecordsPerShard) {
    reject("stale_not_stored");
    return;
  }
  ++s.stale_records;
  AttemptRecord rec;
  rec.outcome = AttemptOutcome::kStale;
  rec.attempt = s.total_attempts;
  rec.worker = worker;
  rec.ended_at_ms = clock_.wall_ms();
  rec.error = utf8::sanitize_bounded(why, kMaxStoredErrorBytes);
  batch_.put_attempt(ShardKey{c.key, group, index}, attempt_id, rec);
}

}  // namespace evald::coordinator
