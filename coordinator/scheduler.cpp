// Scheduler: construction, the state it keeps and the transitions every operation shares (leases,
// shard states, attempt ends, store records), and the Outgoing mailbox. The operations live in
// scheduler_{recovery,api,worker_protocol,dispatch,timers}.cpp.
#include "coordinator/scheduler.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>

#include "common/sha256.hpp"
#include "common/utf8.hpp"
#include "coordinator/scheduler_internal.hpp"

namespace evald::coordinator {
using scheduler_detail::seconds_between;
using scheduler_detail::SteadyTime;
namespace {

using std::chrono::milliseconds;

constexpr auto kMaxRetryBackoff = std::chrono::seconds(60);

}  // namespace

// ---------------------------------------------------------------------------------------------
// Outgoing

void Outgoing::send(const std::string& identity, protocol::Message message) {
  by_identity_[identity].ordered.push_back(std::move(message));
}
void Outgoing::ack(const std::string& identity, uint64_t attempt_id) {
  by_identity_[identity].ack.attempt_ids.push_back(attempt_id);
}
void Outgoing::cancel(const std::string& identity, uint64_t attempt_id) {
  by_identity_[identity].cancel.attempt_ids.push_back(attempt_id);
}
void Outgoing::assign(const std::string& identity, protocol::Assignment assignment) {
  by_identity_[identity].assign.assignments.push_back(std::move(assignment));
}

// ---------------------------------------------------------------------------------------------
// Campaign / worker helpers

std::optional<double> Campaign::eta_seconds(SteadyTime now) const {
  const int64_t remaining = total - finished();
  if (remaining <= 0) return 0.0;
  const int64_t done = finished() - final_at_rate_since;
  const double elapsed = seconds_between(rate_since, now);
  if (done <= 0 || elapsed <= 0) return std::nullopt;
  return static_cast<double>(remaining) * elapsed / static_cast<double>(done);
}

const char* to_string(WorkerState state) {
  switch (state) {
    case WorkerState::kConnected:
      return "connected";
    case WorkerState::kDraining:
      return "draining";
    case WorkerState::kLost:
      return "lost";
    case WorkerState::kLeft:
      return "left";
  }
  return "unknown";
}

Scheduler::Scheduler(Store& store, const Clock& clock, Metrics& metrics, SchedulerOptions options)
    : store_(store),
      clock_(clock),
      metrics_(metrics),
      options_(options),
      serve_backoff_(options.serve_backoff, metrics.model_server_backoffs) {}

Campaign* Scheduler::campaign_by_key(uint32_t key) {
  auto it = campaigns_.find(key);
  return it == campaigns_.end() ? nullptr : it->second.get();
}

const Campaign* Scheduler::find_campaign(const std::string& id) const {
  auto it = campaign_by_id_.find(id);
  if (it == campaign_by_id_.end()) return nullptr;
  return campaigns_.at(it->second).get();
}

WorkerInfo* Scheduler::find_worker(const std::string& name) {
  auto it = worker_by_name_.find(name);
  return it == worker_by_name_.end() ? nullptr : workers_[it->second].get();
}

uint64_t Scheduler::next_attempt_id() {
  if (attempt_seq_ == UINT32_MAX) {
    // A wrap would hand out ids of this epoch again: exactly-once depends on ids never repeating.
    // A coordinator that has used four billion epochs stops rather than reuse one.
    if (epoch_ >= kMaxEpoch) {
      spdlog::critical("attempt_id_epochs_exhausted epoch={}", epoch_);
      std::abort();
    }
    ++epoch_;
    attempt_seq_ = options_.first_attempt_seq;
    batch_.put_meta_u64("epoch", epoch_);
    spdlog::info("attempt_id_epoch_started reason=sequence_wrapped epoch={}", epoch_);
  }
  return (epoch_ << 32) | ++attempt_seq_;
}

WorkerInfo* Scheduler::worker_at(uint32_t index) {
  return index < workers_.size() ? workers_[index].get() : nullptr;
}

std::vector<const WorkerInfo*> Scheduler::workers() const {
  std::vector<const WorkerInfo*> out;
  for (const auto& w : workers_) {
    if (w) out.push_back(w.get());
  }
  std::sort(out.begin(), out.end(),
            [](const WorkerInfo* a, const WorkerInfo* b) { return a->name < b->name; });
  return out;
}

const std::string& Scheduler::last_error(const Campaign& c, uint32_t group, uint32_t shard) const {
  static const std::string kNone;
  const auto& errors = c.groups[group].last_errors;
  auto it = errors.find(shard);
  return it == errors.end() ? kNone : it->second;
}

int64_t Scheduler::ready_shards() const {
  int64_t pending = 0;
  for (const auto& [key, c] : campaigns_) {
    if (c->state == CampaignState::kRunning) pending += c->count(ShardState::kPending);
  }
  return std::max<int64_t>(0, pending - static_cast<int64_t>(delayed_.size()));
}

Campaign& Scheduler::create_campaign(uint32_t key, std::string id, CampaignSpec spec,
                                     int64_t created_at_ms) {
  auto c = std::make_unique<Campaign>();
  c->key = key;
  c->id = std::move(id);
  c->spec_json = to_json(spec).dump();
  c->spec_sha256 = sha256_hex(c->spec_json);
  c->spec = std::move(spec);
  c->created_at_ms = created_at_ms;
  const auto now = clock_.now();
  c->cursor_ready_since = now;
  c->rate_since = now;
  const auto& models = c->spec.models;
  const auto& benchmarks = c->spec.benchmarks;
  c->groups.resize(models.size() * benchmarks.size());
  for (uint32_t m = 0; m < models.size(); ++m) {
    for (uint32_t b = 0; b < benchmarks.size(); ++b) {
      Group& g = c->groups[m * benchmarks.size() + b];
      g.model = m;
      g.benchmark = b;
      g.shards.resize(static_cast<size_t>(benchmarks[b].shard_count()));
      g.pending = static_cast<int64_t>(g.shards.size());
      g.cell.shards_total = static_cast<int64_t>(g.shards.size());
      c->total += g.cell.shards_total;
    }
  }
  attach_campaign_metrics(*c);
  c->counts[static_cast<size_t>(ShardState::kPending)] = c->total;
  c->queues.resize(models.size());
  for (uint32_t m = 0; m < models.size(); ++m) {
    ModelQueue& q = c->queues[m];
    q.first_group = m * static_cast<uint32_t>(benchmarks.size());
    q.end_group = q.first_group + static_cast<uint32_t>(benchmarks.size());
    q.cursors.assign(benchmarks.size(), 0);
    q.gpus = std::max(1, models[m].resources.gpus.value_or(1));
    for (uint32_t g = q.first_group; g < q.end_group; ++g) {
      const Group& group = c->groups[g];
      q.pending += static_cast<int64_t>(group.shards.size());
      q.pending_gpu_s += static_cast<double>(group.shards.size()) * group.expected_shard_s * q.gpus;
    }
  }
  Campaign& ref = *c;
  estimates_stale_ = true;
  campaign_by_id_[ref.id] = key;
  campaigns_[key] = std::move(c);
  return ref;
}

void Scheduler::reject(const char* reason) {
  metrics_.results_rejected.Add({{"reason", reason}}).Increment();
}

void Scheduler::write_campaign(const Campaign& c) {
  nlohmann::json record = {
      {"id", c.id},
      {"spec", nlohmann::json::parse(c.spec_json)},
      {"created_at_ms", c.created_at_ms},
      {"finished_at_ms", c.finished_at_ms},
      {"submitted_by", c.submitted_by ? nlohmann::json(*c.submitted_by) : nlohmann::json(nullptr)},
      {"submitted_from", c.submitted_from},
      {"state", to_string(c.state)}};
  batch_.put_campaign(c.key, record.dump());
}

void Scheduler::write_shard(const Campaign& c, uint32_t group, uint32_t index,
                            const WorkerInfo* worker, const protocol::ShardResult* result,
                            int64_t started_at_ms) {
  const Shard& s = c.groups[group].shards[index];
  ShardRecord rec;
  rec.state = s.state;
  rec.attempts = s.attempts;
  rec.total_attempts = s.total_attempts;
  rec.attempt_id = s.attempt_id;
  rec.hand_backs = s.hand_backs;
  if (worker != nullptr) rec.worker = worker->name;
  rec.started_at_ms = started_at_ms > 0 ? started_at_ms : clock_.wall_ms();
  rec.last_error = last_error(c, group, index);
  if (result != nullptr) {
    rec.duration_ms = result->duration_ms;
    rec.count = result->count;
    rec.metrics = result->metrics;
  }
  batch_.put_shard(ShardKey{c.key, group, index}, rec);
}

void Scheduler::set_state(Campaign& c, uint32_t group, Shard& s, ShardState to) {
  // A shard that stops running (its first copy finished, failed, was lost or cancelled) takes its
  // backup copy with it.
  if (s.state == ShardState::kRunning && to != ShardState::kRunning && !backup_of_.empty()) {
    const auto index = static_cast<uint32_t>(&s - c.groups[group].shards.data());
    drop_backup_of(c, group, index, s.attempt_id,
                   to == ShardState::kSucceeded ? "lost" : "dropped");
  }
  c.counts[static_cast<size_t>(s.state)] -= 1;
  c.counts[static_cast<size_t>(to)] += 1;
  ModelQueue& q = c.queues[c.model_of(group)];
  Group& g = c.groups[group];
  const double gpu_s = g.expected_shard_s * q.gpus;
  if (s.state == ShardState::kPending) {
    --q.pending;
    --g.pending;
    q.pending_gpu_s = std::max(0.0, q.pending_gpu_s - gpu_s);
  }
  if (to == ShardState::kPending) {
    ++q.pending;
    ++g.pending;
    q.pending_gpu_s += gpu_s;
  }
  s.state = to;
}

void Scheduler::mark_gpus(WorkerInfo& w, const std::vector<uint32_t>& indexes, bool busy) {
  for (uint32_t index : indexes) {
    for (auto& slot : w.gpu_slots) {
      if (slot.index == index) slot.busy = busy;
    }
  }
}

void Scheduler::release_lease(WorkerInfo& w, uint64_t attempt_id) {
  forget_backup(attempt_id);
  if (w.leases.erase(attempt_id) == 0) return;
  w.queue_stalled = false;  // a lease ended: its slots free again
  bool was_queued = false;
  if (auto started = w.lease_started.find(attempt_id); started != w.lease_started.end()) {
    was_queued = started->second.queued;
    w.lease_started.erase(started);
  }
  if (auto it = w.lease_gpus.find(attempt_id); it != w.lease_gpus.end()) {
    mark_gpus(w, it->second, false);
    w.lease_gpus.erase(it);
  }
  if (w.queued.empty()) return;
  // Ended while queued: cancelled, handed back, or its result came before we saw a slot free.
  if (was_queued) {
    if (auto it = std::find(w.queued.begin(), w.queued.end(), attempt_id); it != w.queued.end()) {
      w.queued.erase(it);
    }
  }
  // A slot is free on the worker: it starts its oldest queued attempt now, and so its clock
  // (straggler, duration of running shards) starts now.
  while (!w.queued.empty() && w.running() < w.slots) {
    const uint64_t next = w.queued.front();
    w.queued.pop_front();
    if (auto started = w.lease_started.find(next); started != w.lease_started.end()) {
      started->second.at = clock_.now();
      started->second.queued = false;
    }
  }
}

void Scheduler::set_last_model(WorkerInfo& w, Campaign* c, uint32_t model) {
  if (w.last_campaign == (c == nullptr ? 0 : c->key) && w.last_model == model) return;
  if (Campaign* old = campaign_by_key(w.last_campaign);
      old != nullptr && w.last_model < old->queues.size() &&
      old->queues[w.last_model].warm_workers > 0) {
    --old->queues[w.last_model].warm_workers;
    --old->workers_held;
  }
  w.last_campaign = c == nullptr ? 0 : c->key;
  w.last_model = model;
  w.model_proven = false;
  if (c != nullptr) {
    ++c->queues[model].warm_workers;
    ++c->workers_held;
  }
}

void Scheduler::maybe_finish(Campaign& c) {
  if (c.state != CampaignState::kRunning) return;
  if (c.count(ShardState::kPending) > 0 || c.count(ShardState::kRunning) > 0) return;
  c.state = c.count(ShardState::kSucceeded) == c.total ? CampaignState::kSucceeded
                                                       : CampaignState::kFailed;
  c.finished_at_ms = clock_.wall_ms();
  write_campaign(c);
  spdlog::info("campaign_finished campaign={} name={} state={} succeeded={} failed={}", c.id,
               c.spec.name, to_string(c.state), c.count(ShardState::kSucceeded),
               c.count(ShardState::kFailed));
}

void Scheduler::requeue(Campaign& c, uint32_t group, uint32_t index, bool with_backoff) {
  Group& g = c.groups[group];
  Shard& s = g.shards[index];
  set_state(c, group, s, ShardState::kPending);
  g.retried->Increment();
  const auto now = clock_.now();
  if (with_backoff && options_.retry_backoff.count() > 0) {
    auto delay = options_.retry_backoff;
    for (int i = 1; i < s.attempts && delay < kMaxRetryBackoff; ++i) delay *= 2;
    delay = std::min<milliseconds>(delay, kMaxRetryBackoff);
    delayed_.emplace(now + delay, ShardKey{c.key, group, index});
  } else if (!c.ahead_of_cursor(group, index)) {
    c.queues[c.model_of(group)].requeued.push_back(ReadyRef{group, index, now});
  }
}

void Scheduler::fail_attempt(Campaign& c, uint32_t group, uint32_t index, AttemptOutcome outcome,
                             const std::string& error, const std::string& worker_name,
                             uint32_t duration_ms, bool counts_as_attempt) {
  Group& g = c.groups[group];
  Shard& s = g.shards[index];
  AttemptRecord rec;
  rec.outcome = outcome;
  rec.attempt = s.total_attempts;
  rec.worker = worker_name;
  rec.ended_at_ms = clock_.wall_ms();
  rec.duration_ms = duration_ms;
  // Runner errors are worker-supplied: valid UTF-8 and bounded before they are kept anywhere.
  rec.error = utf8::sanitize_bounded(error, kMaxStoredErrorBytes);
  batch_.put_attempt(ShardKey{c.key, group, index}, s.attempt_id, rec);
  if (!counts_as_attempt && s.attempts > 0) --s.attempts;
  if (s.awaiting_given_up_attempt) given_up_by_.erase(s.attempt_id);
  s.awaiting_given_up_attempt =
      outcome == AttemptOutcome::kLost || outcome == AttemptOutcome::kOrphaned;
  if (s.awaiting_given_up_attempt) given_up_by_[s.attempt_id] = worker_name;
  g.last_errors[index] = rec.error;
  if (counts_as_attempt) g.attempts_failed->Increment();
  s.worker = kNoWorker;
  const bool exhausted = counts_as_attempt && s.attempts >= c.spec.max_attempts;
  spdlog::info(
      "attempt_ended campaign={} model={} benchmark={} shard={} attempt_id={} outcome={} "
      "attempt_number={} budget={}/{} final={} error=\"{}\"",
      c.id, c.spec.models[g.model].name, c.spec.benchmarks[g.benchmark].name, index, s.attempt_id,
      to_string(outcome), rec.attempt, s.attempts, c.spec.max_attempts, exhausted,
      utf8::truncate(rec.error, 200));
  if (exhausted) {
    set_state(c, group, s, ShardState::kFailed);
    g.failed->Increment();
    write_shard(c, group, index, nullptr);
    maybe_finish(c);
    return;
  }
  // Runner failures back off (the cause is often transient: OOM, a busy file system); shards of a
  // lost worker go back at once, because nothing about them says they will fail again.
  requeue(c, group, index, /*with_backoff=*/outcome == AttemptOutcome::kFailed);
  write_shard(c, group, index, nullptr);
}

void Scheduler::stage_dirty_cells() {
  for (const auto& [campaign, group] : dirty_cells_) {
    Campaign* c = campaign_by_key(campaign);
    if (c == nullptr) continue;
    Group& g = c->groups[group];
    batch_.put_cell(campaign, group, g.cell);
    g.cell_dirty = false;
  }
  dirty_cells_.clear();
}

}  // namespace evald::coordinator
