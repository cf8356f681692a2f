#include "coordinator/scheduler.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>
#include <tuple>

#include "common/utf8.hpp"

namespace evald::coordinator {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;
using SteadyTime = std::chrono::steady_clock::time_point;

constexpr auto kMaxRetryBackoff = std::chrono::seconds(60);
// Hand-backs per attempt budget that do not use an attempt (see give_back).
constexpr uint8_t kFreeHandBacks = 3;
constexpr auto kGaugeRefreshInterval = std::chrono::milliseconds(250);

double seconds_between(SteadyTime from, SteadyTime to) {
  return std::chrono::duration<double>(to - from).count();
}

std::string campaign_id_for(uint32_t key) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "c%06u", key);
  return buf;
}

// Validates what the lease holder claims before it can touch an aggregate: a count within the
// shard, a bounded set of uniquely and validly named finite metrics that includes the benchmark's
// primary metric. The reason names the problem; names in it are made printable first.
std::optional<std::string> invalid_result(const protocol::ShardResult& r, int64_t shard_size,
                                          const std::string& primary_metric) {
  if (r.count < 0) return "negative count " + std::to_string(r.count);
  if (r.count > shard_size) {
    return "count " + std::to_string(r.count) + " exceeds the shard's size " +
           std::to_string(shard_size);
  }
  if (r.metrics.empty()) return "no metrics";
  if (r.metrics.size() > kMaxMetricsPerResult) {
    return std::to_string(r.metrics.size()) + " metrics, at most " +
           std::to_string(kMaxMetricsPerResult) + " allowed";
  }
  std::unordered_set<std::string_view> seen;
  bool has_primary = false;
  for (const auto& metric : r.metrics) {
    const std::string& name = metric.first;
    const double value = metric.second;
    // (A named reference, not a structured binding: clang 14 cannot capture those.)
    const auto shown = [&name] { return utf8::sanitize_bounded(name, kMaxMetricNameBytes); };
    if (name.empty()) return "empty metric name";
    if (!utf8::is_valid(name)) return "metric name '" + shown() + "' is not valid UTF-8";
    if (name.size() > kMaxMetricNameBytes) {
      return "metric name '" + shown() + "' is longer than " + std::to_string(kMaxMetricNameBytes) +
             " bytes";
    }
    if (!seen.insert(name).second) return "metric '" + name + "' appears more than once";
    if (!std::isfinite(value)) return "metric '" + name + "' is not a finite number";
    has_primary = has_primary || name == primary_metric;
  }
  if (!has_primary) return "primary metric '" + primary_metric + "' missing";
  if (!utf8::is_valid(r.samples_json)) return "samples are not valid UTF-8";
  return std::nullopt;
}

// A JSON value from a HELLO kept only if it is small: `limit` bytes as JSON.
bool fits(const nlohmann::json& value, size_t limit) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).size() <= limit;
}

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
  }
  return "unknown";
}

Scheduler::Scheduler(Store& store, const Clock& clock, Metrics& metrics, SchedulerOptions options)
    : store_(store), clock_(clock), metrics_(metrics), options_(options) {}

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
      spdlog::critical("attempt-id epochs exhausted epoch={}", epoch_);
      std::abort();
    }
    ++epoch_;
    attempt_seq_ = options_.first_attempt_seq;
    batch_.put_meta_u64("epoch", epoch_);
    spdlog::info("attempt-id sequence wrapped; new epoch epoch={}", epoch_);
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
      g.cell.shards_total = static_cast<int64_t>(g.shards.size());
      c->total += g.cell.shards_total;
    }
  }
  attach_campaign_metrics(*c);
  c->counts[static_cast<size_t>(ShardState::kPending)] = c->total;
  c->queues.resize(models.size());
  for (uint32_t m = 0; m < models.size(); ++m) {
    ModelQueue& q = c->queues[m];
    q.cursor_group = m * static_cast<uint32_t>(benchmarks.size());
    q.end_group = q.cursor_group + static_cast<uint32_t>(benchmarks.size());
    for (uint32_t g = q.cursor_group; g < q.end_group; ++g) {
      q.pending += static_cast<int64_t>(c->groups[g].shards.size());
    }
  }
  Campaign& ref = *c;
  campaign_by_id_[ref.id] = key;
  campaigns_[key] = std::move(c);
  return ref;
}

void Scheduler::attach_campaign_metrics(Campaign& c) {
  if (c.metrics_attached) return;
  c.metrics_attached = true;
  for (Group& g : c.groups) {
    const prometheus::Labels labels{{"campaign", c.id},
                                    {"model", c.spec.models[g.model].name},
                                    {"benchmark", c.spec.benchmarks[g.benchmark].name}};
    g.completed = &metrics_.shards_completed.Add(labels);
    g.attempts_failed = &metrics_.shard_attempts_failed.Add(labels);
    g.retried = &metrics_.shards_retried.Add(labels);
    g.failed = &metrics_.shards_failed.Add(labels);
    // Per benchmark name, shared by campaigns: not removed with a campaign.
    g.duration = &metrics_.shard_duration.Add({{"benchmark", c.spec.benchmarks[g.benchmark].name}},
                                              shard_duration_buckets());
  }
}

void Scheduler::detach_campaign_metrics(Campaign& c) {
  if (!c.metrics_attached) return;
  c.metrics_attached = false;
  for (Group& g : c.groups) {
    metrics_.shards_completed.Remove(g.completed);
    metrics_.shard_attempts_failed.Remove(g.attempts_failed);
    metrics_.shards_retried.Remove(g.retried);
    metrics_.shards_failed.Remove(g.failed);
    g.completed = g.attempts_failed = g.retried = g.failed = nullptr;
  }
  // Add returns the existing series for these labels (or a fresh one), which Remove then drops.
  auto drop = [](auto& family, const prometheus::Labels& labels) {
    family.Remove(&family.Add(labels));
  };
  for (size_t s = 0; s < kShardStateCount; ++s) {
    drop(metrics_.campaign_shards,
         {{"campaign", c.id}, {"state", to_string(static_cast<ShardState>(s))}});
  }
  drop(metrics_.campaign_progress, {{"campaign", c.id}});
  drop(metrics_.campaign_eta, {{"campaign", c.id}});
  for (auto state : {CampaignState::kRunning, CampaignState::kSucceeded, CampaignState::kFailed,
                     CampaignState::kCancelled}) {
    drop(metrics_.campaign_info,
         {{"campaign", c.id}, {"name", c.spec.name}, {"state", to_string(state)}});
  }
  drop(metrics_.stale_results, {{"campaign", c.id}});
  if (auto it = metrics_.benchmark_shard_gauges.find(c.id);
      it != metrics_.benchmark_shard_gauges.end()) {
    for (const auto& gauges : it->second) {
      metrics_.benchmark_shards.Remove(gauges.succeeded);
      metrics_.benchmark_shards.Remove(gauges.total);
    }
    metrics_.benchmark_shard_gauges.erase(it);
  }
  spdlog::info("campaign metrics removed campaign={} finished_at_ms={}", c.id, c.finished_at_ms);
}

void Scheduler::forget_worker_metrics(const WorkerInfo& w) {
  metrics_.worker_slots.Remove(w.slots_used);
  metrics_.worker_slots.Remove(w.slots_total);
  metrics_.worker_slots.Remove(w.slots_free);
  metrics_.worker_heartbeat_age.Remove(w.heartbeat_age);
  metrics_.workers_lost.Remove(&metrics_.workers_lost.Add({{"worker", w.name}}));
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
                            const WorkerInfo* worker, const protocol::ShardResult* result) {
  const Shard& s = c.groups[group].shards[index];
  ShardRecord rec;
  rec.state = s.state;
  rec.attempts = s.attempts;
  rec.total_attempts = s.total_attempts;
  rec.attempt_id = s.attempt_id;
  rec.hand_backs = s.hand_backs;
  if (worker != nullptr) rec.worker = worker->name;
  rec.started_at_ms = clock_.wall_ms();
  rec.last_error = last_error(c, group, index);
  if (result != nullptr) {
    rec.duration_ms = result->duration_ms;
    rec.count = result->count;
    rec.metrics = result->metrics;
  }
  batch_.put_shard(ShardKey{c.key, group, index}, rec);
}

void Scheduler::set_state(Campaign& c, uint32_t group, Shard& s, ShardState to) {
  c.counts[static_cast<size_t>(s.state)] -= 1;
  c.counts[static_cast<size_t>(to)] += 1;
  ModelQueue& q = c.queues[c.model_of(group)];
  if (s.state == ShardState::kPending) --q.pending;
  if (to == ShardState::kPending) ++q.pending;
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
  w.leases.erase(attempt_id);
  if (auto it = w.lease_gpus.find(attempt_id); it != w.lease_gpus.end()) {
    mark_gpus(w, it->second, false);
    w.lease_gpus.erase(it);
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
  spdlog::info("campaign finished campaign={} name={} state={} succeeded={} failed={}", c.id,
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
      "attempt ended campaign={} model={} benchmark={} shard={} attempt_id={} outcome={} "
      "attempt={} budget={}/{} final={} error=\"{}\"",
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

// ---------------------------------------------------------------------------------------------
// Recovery

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
  scanned = store_.scan_shards(std::nullopt, [&](const ShardKey& key, const ShardRecord& rec) {
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr || key.group >= c->groups.size() ||
        key.shard >= c->groups[key.group].shards.size()) {
      spdlog::warn("recovery skipped shard record of unknown shard campaign={} group={} shard={}",
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
    if (rec.state == ShardState::kRunning) {
      orphans_[rec.attempt_id] =
          Orphan{key, rec.worker, now + std::max(options_.worker_timeout, options_.restart_grace)};
    }
  });
  if (!scanned.ok()) return scanned;
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
  batch_.put_meta_u64("next_campaign", next_campaign_key_);
  if (auto s = store_.commit(batch_); !s.ok()) return s;
  spdlog::info("recovered epoch={} campaigns={} shard_records={} orphaned_leases={} took_ms={}",
               epoch_, campaigns_.size(), records, orphans_.size(),
               duration_cast<milliseconds>(std::chrono::steady_clock::now() - started).count());
  return Ok{};
}

// ---------------------------------------------------------------------------------------------
// API operations

Result<std::string> Scheduler::submit(const CampaignSpec& spec, const Submitter& submitter) {
  const uint32_t key = next_campaign_key_++;
  batch_.put_meta_u64("next_campaign", next_campaign_key_);
  Campaign& c = create_campaign(key, campaign_id_for(key), spec, clock_.wall_ms());
  c.submitted_by = submitter.name;
  c.submitted_from = submitter.address;
  write_campaign(c);
  spdlog::info(
      "campaign submitted campaign={} name={} models={} benchmarks={} shards={} "
      "priority={}",
      c.id, c.spec.name, c.spec.models.size(), c.spec.benchmarks.size(), c.total, c.spec.priority);
  maybe_finish(c);  // a campaign cannot be empty today, but keep the invariant obvious
  return c.id;
}

Result<int64_t> Scheduler::rerun(const std::string& campaign_id, const RerunSelector& selector) {
  auto it = campaign_by_id_.find(campaign_id);
  if (it == campaign_by_id_.end()) return make_error("unknown campaign '" + campaign_id + "'");
  Campaign& c = *campaigns_.at(it->second);
  if (c.state == CampaignState::kCancelled) {
    return make_error("campaign " + c.id + " is cancelled; a cancelled campaign is not rerun");
  }
  std::optional<uint32_t> model;
  std::optional<uint32_t> benchmark;
  if (selector.model) {
    for (uint32_t m = 0; m < c.spec.models.size(); ++m) {
      if (c.spec.models[m].name == *selector.model) model = m;
    }
    if (!model) return make_error("campaign " + c.id + " has no model '" + *selector.model + "'");
  }
  if (selector.benchmark) {
    for (uint32_t b = 0; b < c.spec.benchmarks.size(); ++b) {
      if (c.spec.benchmarks[b].name == *selector.benchmark) benchmark = b;
    }
    if (!benchmark) {
      return make_error("campaign " + c.id + " has no benchmark '" + *selector.benchmark + "'");
    }
  }
  attach_campaign_metrics(c);  // its series may have been removed after it finished
  int64_t requeued = 0;
  std::vector<uint32_t> recompute;
  const auto now = clock_.now();
  for (uint32_t gi = 0; gi < c.groups.size(); ++gi) {
    Group& g = c.groups[gi];
    if ((model && g.model != *model) || (benchmark && g.benchmark != *benchmark)) continue;
    bool had_success = false;
    for (uint32_t i = 0; i < g.shards.size(); ++i) {
      Shard& s = g.shards[i];
      const bool selected =
          selector.failed_only ? s.state == ShardState::kFailed : is_final(s.state);
      if (!selected) continue;
      had_success |= s.state == ShardState::kSucceeded;
      set_state(c, gi, s, ShardState::kPending);
      s.attempts = 0;  // a fresh attempt budget
      s.hand_backs = 0;
      if (s.awaiting_given_up_attempt) given_up_by_.erase(s.attempt_id);
      s.awaiting_given_up_attempt = false;  // a resent old result must not stand in for the rerun
      g.retried->Increment();
      if (!c.ahead_of_cursor(gi, i)) {
        c.queues[c.model_of(gi)].requeued.push_back(ReadyRef{gi, i, now});
      }
      write_shard(c, gi, i, nullptr);
      ++requeued;
    }
    if (had_success) recompute.push_back(gi);
  }
  // Succeeded shards that run again must leave the aggregate. The selection takes every shard
  // of a group in a final state, so a group with a selected success keeps no success at all: its
  // cell starts again empty (results of its shards still running are added when they come).
  for (uint32_t gi : recompute) {
    Group& g = c.groups[gi];
    CellAggregate cell;
    cell.shards_total = g.cell.shards_total;
    g.cell = cell;
    if (!g.cell_dirty) {
      g.cell_dirty = true;
      dirty_cells_.emplace_back(c.key, gi);
    }
  }
  if (requeued > 0 && c.state != CampaignState::kRunning) {
    c.state = CampaignState::kRunning;
    c.finished_at_ms = 0;
    c.rate_since = now;
    c.final_at_rate_since = c.finished();
    write_campaign(c);
  }
  spdlog::info("rerun campaign={} failed_only={} model={} benchmark={} requeued={}", c.id,
               selector.failed_only, selector.model.value_or("*"), selector.benchmark.value_or("*"),
               requeued);
  return requeued;
}

Result<int64_t> Scheduler::cancel(const std::string& campaign_id) {
  auto it = campaign_by_id_.find(campaign_id);
  if (it == campaign_by_id_.end()) return make_error("unknown campaign '" + campaign_id + "'");
  Campaign& c = *campaigns_.at(it->second);
  if (c.state != CampaignState::kRunning) {
    return make_error("campaign " + c.id + " is already " + to_string(c.state));
  }
  int64_t cancelled = 0;
  for (uint32_t gi = 0; gi < c.groups.size(); ++gi) {
    Group& g = c.groups[gi];
    for (uint32_t i = 0; i < g.shards.size(); ++i) {
      Shard& s = g.shards[i];
      if (s.state == ShardState::kRunning) {
        WorkerInfo* holder = worker_at(s.worker);
        std::string worker_name;
        if (holder != nullptr) {
          release_lease(*holder, s.attempt_id);
          outgoing_.cancel(holder->name, s.attempt_id);
          worker_name = holder->name;
        } else if (auto o = orphans_.find(s.attempt_id); o != orphans_.end()) {
          worker_name = o->second.worker;
          orphans_.erase(o);
        }
        AttemptRecord rec;
        rec.outcome = AttemptOutcome::kCancelled;
        rec.attempt = s.total_attempts;
        rec.worker = worker_name;
        rec.ended_at_ms = clock_.wall_ms();
        rec.error = "cancelled";
        batch_.put_attempt(ShardKey{c.key, gi, i}, s.attempt_id, rec);
        s.worker = kNoWorker;
      } else if (s.state != ShardState::kPending) {
        continue;
      }
      if (s.awaiting_given_up_attempt) given_up_by_.erase(s.attempt_id);
      s.awaiting_given_up_attempt = false;
      set_state(c, gi, s, ShardState::kCancelled);
      write_shard(c, gi, i, nullptr);
      ++cancelled;
    }
  }
  for (auto& q : c.queues) q.requeued.clear();
  c.unschedulable.clear();
  c.state = CampaignState::kCancelled;
  c.finished_at_ms = clock_.wall_ms();
  write_campaign(c);
  spdlog::info("campaign cancelled campaign={} shards_cancelled={}", c.id, cancelled);
  return cancelled;
}

// ---------------------------------------------------------------------------------------------
// Worker messages

void Scheduler::on_message(const std::string& identity, protocol::Message message) {
  const auto type = static_cast<size_t>(protocol::type_of(message));
  if (type < received_by_type_.size()) {
    if (received_by_type_[type] == nullptr) {
      received_by_type_[type] = &metrics_.messages_received.Add(
          {{"type", protocol::to_string(protocol::type_of(message))}});
    }
    received_by_type_[type]->Increment();
  }
  WorkerInfo* w = find_worker(identity);
  const bool known = w != nullptr && w->state != WorkerState::kLost;
  if (std::holds_alternative<protocol::Hello>(message)) {
    on_hello(identity, std::move(std::get<protocol::Hello>(message)));
  } else if (std::holds_alternative<protocol::Results>(message)) {
    if (known) w->last_seen = clock_.now();
    on_results(identity, std::move(std::get<protocol::Results>(message)));
    if (!known) outgoing_.send(identity, protocol::ReHello{});
  } else if (std::holds_alternative<protocol::Heartbeat>(message)) {
    if (known) {
      w->last_seen = clock_.now();
    } else {
      outgoing_.send(identity, protocol::ReHello{});
    }
  } else if (std::holds_alternative<protocol::HandBack>(message)) {
    if (known) {
      w->last_seen = clock_.now();
      on_hand_back(*w, std::get<protocol::HandBack>(message));
    } else {
      // Not a worker we know: we restarted while it drained (its leases are orphans: queue them
      // now rather than when they expire), or it was declared lost (its shards were queued
      // again then, and nothing is left to do). Only the orphans' own worker can hand them back.
      hand_back_orphans(identity, std::get<protocol::HandBack>(message));
    }
  } else if (std::holds_alternative<protocol::Drain>(message)) {
    if (known) {
      w->last_seen = clock_.now();
      w->state = WorkerState::kDraining;
      // It takes no more work: it no longer counts for its campaign's fair share.
      set_last_model(*w, nullptr, 0);
      spdlog::info("worker draining worker={} running={}", w->name, w->leases.size());
    } else {
      reject("unknown_worker");  // a drain changes only its own sender's state
      outgoing_.send(identity, protocol::ReHello{});
    }
  } else {
    metrics_.messages_malformed.Increment();
    spdlog::warn("dropped message worker={} reason=\"{} is not a worker-to-coordinator message\"",
                 identity, protocol::to_string(protocol::type_of(message)));
  }
}

void Scheduler::on_hello(const std::string& identity, protocol::Hello hello) {
  const auto now = clock_.now();
  // The routing id becomes the worker's name in every response and on /metrics, and must stay
  // byte-exact to route replies: a name that is not valid UTF-8 is refused, not rewritten.
  if (identity.empty() || !utf8::is_valid(identity)) {
    metrics_.messages_malformed.Increment();
    spdlog::warn("hello refused routing_id={} reason=\"name is not valid UTF-8\"",
                 utf8::sanitize_bounded(identity, 64));
    return;
  }
  // Bound what a HELLO can make us keep; what is dropped is counted and logged once per HELLO.
  auto count_dropped = [&](const char* field, size_t count) {
    if (count == 0) return;
    metrics_.hello_items_dropped.Add({{"field", field}}).Increment(static_cast<double>(count));
    spdlog::warn("hello items dropped worker={} field={} dropped={}", identity, field, count);
  };
  if (hello.instance.size() > kMaxInstanceBytes || !utf8::is_valid(hello.instance)) {
    hello.instance = utf8::sanitize_bounded(hello.instance, kMaxInstanceBytes);
    count_dropped("instance", 1);
  }
  if (hello.running.size() > kMaxHelloRunning) {
    count_dropped("running", hello.running.size() - kMaxHelloRunning);
    hello.running.resize(kMaxHelloRunning);
  }
  {
    nlohmann::json kept = nlohmann::json::array();
    size_t n = hello.gpus.is_array() ? hello.gpus.size() : (hello.gpus.is_null() ? 0 : 1);
    if (hello.gpus.is_array()) {
      for (auto& gpu : hello.gpus) {
        if (kept.size() < kMaxHelloGpus && fits(gpu, kMaxHelloGpuBytes)) {
          kept.push_back(std::move(gpu));
        }
      }
    }
    count_dropped("gpus", n - kept.size());
    hello.gpus = std::move(kept);
  }
  {
    nlohmann::json kept = nlohmann::json::object();
    size_t n = hello.labels.is_object() ? hello.labels.size() : (hello.labels.is_null() ? 0 : 1);
    if (hello.labels.is_object()) {
      for (auto& [key, value] : hello.labels.items()) {
        if (kept.size() < kMaxHelloLabels && key.size() + 2 < kMaxHelloLabelBytes &&
            fits(value, kMaxHelloLabelBytes - key.size() - 2)) {
          kept[key] = std::move(value);
        }
      }
    }
    count_dropped("labels", n - kept.size());
    hello.labels = std::move(kept);
  }
  if (hello.name != identity) {
    spdlog::warn("hello name differs from routing id name={} routing_id={}; using the routing id",
                 utf8::sanitize_bounded(hello.name, 256), identity);
  }
  if (hello.slots == 0) {
    spdlog::warn("hello with 0 slots worker={}; treating it as 1", identity);
    hello.slots = 1;
  }
  WorkerInfo* w = find_worker(identity);
  const bool restarted = w != nullptr && w->instance != hello.instance;
  if (w == nullptr) {
    uint32_t index = 0;
    while (index < workers_.size() && workers_[index]) ++index;
    if (index == workers_.size()) workers_.emplace_back();
    workers_[index] = std::make_unique<WorkerInfo>();
    w = workers_[index].get();
    w->index = index;
    w->name = identity;
    worker_by_name_[identity] = index;
    w->slots_used = &metrics_.worker_slots.Add({{"worker", identity}, {"kind", "used"}});
    w->slots_total = &metrics_.worker_slots.Add({{"worker", identity}, {"kind", "total"}});
    w->slots_free = &metrics_.worker_slots.Add({{"worker", identity}, {"kind", "free"}});
    w->heartbeat_age = &metrics_.worker_heartbeat_age.Add({{"worker", identity}});
  }
  const std::unordered_set<uint64_t> still_running(hello.running.begin(), hello.running.end());
  // Leases this worker held that it no longer has: it restarted, or an ASSIGN never reached it.
  std::vector<std::pair<uint64_t, ShardKey>> dropped;
  for (const auto& [id, key] : w->leases) {
    if (!still_running.contains(id)) dropped.emplace_back(id, key);
  }
  for (const auto& [id, key] : dropped) {
    release_lease(*w, id);
    // The ASSIGN may still be in flight behind this HELLO; tell the worker not to run it, so
    // both sides agree on its free slots.
    outgoing_.cancel(identity, id);
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    Shard& s = c->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    fail_attempt(*c, key.group, key.shard, AttemptOutcome::kLost,
                 restarted ? "worker lost: " + w->name + " (restarted while running it)"
                           : "worker lost: " + w->name + " (assignment not received)",
                 w->name, 0, /*counts_as_attempt=*/restarted);
  }
  // Attempts it runs that are not its leases: reclaim orphans from before our restart, stop the
  // rest (their results, if any, will be recorded as stale).
  for (uint64_t id : hello.running) {
    if (w->leases.contains(id)) continue;
    auto o = orphans_.find(id);
    if (o != orphans_.end() && o->second.worker != identity) {
      // Only the worker that held the lease before our restart may reclaim it: attempt ids are
      // visible in the API, and another worker naming one must not take the shard over.
      reject("not_lease_holder");
      spdlog::warn("reclaim of another worker's lease refused worker={} attempt_id={} holder={}",
                   identity, id, o->second.worker);
      outgoing_.cancel(identity, id);
      continue;
    }
    if (o != orphans_.end()) {
      const ShardKey key = o->second.key;
      orphans_.erase(o);
      Campaign* c = campaign_by_key(key.campaign);
      if (c != nullptr) {
        Shard& s = c->groups[key.group].shards[key.shard];
        if (s.state == ShardState::kRunning && s.attempt_id == id) {
          s.worker = w->index;
          w->leases[id] = key;
          // Which GPUs it runs on is not stored; book as many as its model needs so the count of
          // free GPUs stays right.
          const auto& resources = c->spec.models[c->model_of(key.group)].resources;
          auto gpus = parse_worker_gpus(hello.gpus);
          w->gpu_slots = gpus;
          for (const auto& [held, indexes] : w->lease_gpus) mark_gpus(*w, indexes, true);
          if (auto placed = place_shard(resources, hello.labels, w->gpu_slots, false);
              placed && !placed->empty()) {
            mark_gpus(*w, *placed, true);
            w->lease_gpus[id] = *placed;
          }
          spdlog::info("lease reclaimed worker={} campaign={} attempt_id={}", w->name, c->id, id);
          continue;
        }
      }
    }
    outgoing_.cancel(identity, id);
  }
  w->instance = hello.instance;
  w->state = WorkerState::kConnected;
  w->slots = hello.slots;
  w->gpu_slots = parse_worker_gpus(hello.gpus);
  for (const auto& [held, indexes] : w->lease_gpus) mark_gpus(*w, indexes, true);
  w->gpus = std::move(hello.gpus);
  w->labels = std::move(hello.labels);
  w->last_seen = now;
  w->last_sent = now;
  w->campaigns_sent.clear();
  lost_at_.erase(w->index);
  outgoing_.send(identity,
                 protocol::Welcome{static_cast<uint32_t>(options_.heartbeat.count()),
                                   static_cast<uint32_t>(options_.worker_timeout.count()), epoch_});
  spdlog::info("worker connected worker={} slots={} gpus={} running={} restarted={}", w->name,
               w->slots, w->gpus.size(), w->leases.size(), restarted);
}

void Scheduler::on_results(const std::string& identity, protocol::Results results) {
  WorkerInfo* w = find_worker(identity);
  for (auto& r : results.results) on_result(w, identity, r);
}

void Scheduler::on_result(WorkerInfo* w, const std::string& identity, protocol::ShardResult& r) {
  Campaign* c = campaign_by_key(r.campaign);
  const size_t benchmarks = c == nullptr ? 0 : c->spec.benchmarks.size();
  if (c == nullptr || r.model >= c->spec.models.size() || r.benchmark >= benchmarks ||
      r.shard >= c->groups[r.model * benchmarks + r.benchmark].shards.size()) {
    reject("unknown_shard");
    spdlog::warn(
        "result rejected reason=unknown_shard worker={} campaign={} model={} benchmark={} "
        "shard={} attempt_id={}",
        identity, r.campaign, r.model, r.benchmark, r.shard, r.attempt_id);
    // Nothing is stored; the ACK lets a worker drop a result no one can ever use.
    outgoing_.ack(identity, r.attempt_id);
    return;
  }
  const auto gi = static_cast<uint32_t>(r.model * benchmarks + r.benchmark);
  Group& g = c->groups[gi];
  Shard& s = g.shards[r.shard];
  const ShardKey key{c->key, gi, r.shard};
  const bool current_id = s.attempt_id == r.attempt_id && s.attempt_id != 0;
  auto refuse = [&](const char* reason) {
    reject(reason);
    spdlog::warn("result rejected reason={} worker={} campaign={} shard={} attempt_id={} state={}",
                 reason, identity, c->id, r.shard, r.attempt_id, to_string(s.state));
  };

  // The lease: its id alone proves nothing (ids are sequential and shown by the API); the sender
  // must be the worker it was given to, or after a restart the worker named in the orphan table.
  WorkerInfo* holder = nullptr;
  if (current_id && s.state == ShardState::kRunning) {
    holder = worker_at(s.worker);
    bool from_holder = false;
    if (holder != nullptr) {
      from_holder = holder == w;
    } else if (auto o = orphans_.find(r.attempt_id); o != orphans_.end()) {
      from_holder = o->second.worker == identity;
    }
    if (!from_holder) {
      refuse("not_lease_holder");  // not ACKed: nothing was committed for it
      return;
    }
  } else if (current_id && s.state == ShardState::kPending && s.awaiting_given_up_attempt && r.ok) {
    // A successful result of the shard's latest attempt still counts when the shard was put back
    // in the queue (its worker looked lost, or did not reclaim it in time after a restart) and
    // has not been handed out again: the attempt id and its worker prove it is that attempt's
    // only result.
    auto given_up = given_up_by_.find(r.attempt_id);
    if (given_up == given_up_by_.end() || given_up->second != identity) {
      refuse("not_lease_holder");
      return;
    }
    given_up_by_.erase(given_up);
    spdlog::info(
        "late result of the latest attempt counted campaign={} shard={} attempt_id={} "
        "worker={}",
        c->id, r.shard, r.attempt_id, identity);
    set_state(*c, gi, s, ShardState::kRunning);  // so the success path below sees a lease
    s.worker = kNoWorker;
    s.awaiting_given_up_attempt = false;
  } else {
    // An attempt that is no longer current: a re-sent copy of a result already counted, or a
    // result of an attempt given up since. Kept for the history when a known worker sends it;
    // it changes nothing, so the sender gets its ACK and stops re-sending.
    if (w == nullptr) {
      refuse("unknown_worker");  // not ACKed; the worker is asked to HELLO and will re-send
      return;
    }
    outgoing_.ack(identity, r.attempt_id);
    store_stale(*c, gi, r.shard, identity, r);
    return;
  }

  outgoing_.ack(identity, r.attempt_id);  // sent only after this turn's commit
  if (holder != nullptr) {
    release_lease(*holder, r.attempt_id);
  } else {
    orphans_.erase(r.attempt_id);
  }
  const std::string& worker_name = holder != nullptr ? holder->name : identity;
  if (r.ok) {
    const auto& benchmark = c->spec.benchmarks[g.benchmark];
    const auto range = shard_range(benchmark, r.shard);
    if (auto why = invalid_result(r, range.end - range.start, benchmark.metric)) {
      reject("invalid");
      fail_attempt(*c, gi, r.shard, AttemptOutcome::kFailed, "invalid result: " + *why, worker_name,
                   r.duration_ms, true);
      return;
    }
    set_state(*c, gi, s, ShardState::kSucceeded);
    s.worker = kNoWorker;
    g.cell.add(r.metrics, r.count);
    if (!g.cell_dirty) {
      g.cell_dirty = true;
      dirty_cells_.emplace_back(c->key, gi);
    }
    write_shard(*c, gi, r.shard, holder != nullptr ? holder : w, &r);
    if (!r.samples_json.empty()) batch_.put_samples(key, r.samples_json);
    g.completed->Increment();
    g.duration->Observe(r.duration_ms / 1000.0);
    maybe_finish(*c);
    return;
  }
  fail_attempt(*c, gi, r.shard, AttemptOutcome::kFailed,
               r.error.empty() ? "runner failed without an error message" : r.error, worker_name,
               r.duration_ms, true);
}

void Scheduler::store_stale(Campaign& c, uint32_t group, uint32_t index,
                            const std::string& identity, const protocol::ShardResult& r) {
  Shard& s = c.groups[group].shards[index];
  if (c.metrics_attached) metrics_.stale_results.Add({{"campaign", c.id}}).Increment();
  if (s.stale_records >= kMaxStaleRecordsPerShard) {
    reject("stale_not_stored");
    spdlog::info(
        "stale result not stored campaign={} shard={} attempt_id={} worker={} reason=\"{} "
        "stale records already stored for this shard\"",
        c.id, index, r.attempt_id, identity, kMaxStaleRecordsPerShard);
    return;
  }
  ++s.stale_records;
  AttemptRecord rec;
  rec.outcome = AttemptOutcome::kStale;
  rec.worker = identity;
  rec.ended_at_ms = clock_.wall_ms();
  rec.duration_ms = r.duration_ms;
  rec.error = r.ok ? "late result of an attempt already given up; not counted"
                   : utf8::sanitize_bounded(r.error, kMaxStoredErrorBytes);
  rec.result_ok = r.ok;
  rec.count = r.count;
  // What the late result said, bounded and printable: it is shown in the shard's history.
  for (const auto& [name, value] : r.metrics) {
    if (rec.metrics.size() >= kMaxMetricsPerResult) break;
    rec.metrics.emplace_back(utf8::sanitize_bounded(name, kMaxMetricNameBytes), value);
  }
  batch_.put_attempt(ShardKey{c.key, group, index}, r.attempt_id, rec);
  spdlog::info(
      "stale result stored campaign={} shard={} attempt_id={} worker={} current_attempt_id={} "
      "state={}",
      c.id, index, r.attempt_id, identity, s.attempt_id, to_string(s.state));
}

void Scheduler::hand_back_orphans(const std::string& identity,
                                  const protocol::HandBack& hand_back) {
  for (uint64_t id : hand_back.attempt_ids) {
    auto o = orphans_.find(id);
    if (o == orphans_.end() || o->second.worker != identity) {
      reject("not_lease_holder");
      spdlog::info("hand-back from unknown worker ignored worker={} attempt_id={}", identity, id);
      continue;
    }
    const ShardKey key = o->second.key;
    orphans_.erase(o);
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    Shard& s = c->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    give_back(*c, key, identity);
  }
}

void Scheduler::give_back(Campaign& c, const ShardKey& key, const std::string& worker) {
  Shard& s = c.groups[key.group].shards[key.shard];
  // The worker is leaving (drain timeout on SIGTERM, e.g. a preempted Slurm job), not failing
  // the shard: it goes back to the queue at once and keeps its attempt budget. Only the first
  // few times, though: a shard that outlives every worker it is given (longer than the jobs
  // that run them) must still end failed rather than circle forever.
  const bool free_of_charge = s.hand_backs < kFreeHandBacks;
  if (free_of_charge) ++s.hand_backs;
  fail_attempt(c, key.group, key.shard, AttemptOutcome::kHandedBack,
               "handed back unfinished by worker " + worker + " (stopping: drain timeout)" +
                   (free_of_charge ? "" : "; handed back too often, counts as an attempt"),
               worker, 0, /*counts_as_attempt=*/!free_of_charge);
}

void Scheduler::on_hand_back(WorkerInfo& w, const protocol::HandBack& hand_back) {
  for (uint64_t id : hand_back.attempt_ids) {
    auto lease = w.leases.find(id);
    if (lease == w.leases.end()) {
      reject("not_lease_holder");
      spdlog::info("hand-back of an attempt the worker does not hold worker={} attempt_id={}",
                   w.name, id);
      continue;
    }
    const ShardKey key = lease->second;
    release_lease(w, id);
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    Shard& s = c->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    give_back(*c, key, w.name);
  }
}

void Scheduler::lose_worker(WorkerInfo& w, const std::string& reason) {
  spdlog::warn("worker lost worker={} reason=\"{}\" leases={}", w.name, reason, w.leases.size());
  metrics_.workers_lost.Add({{"worker", w.name}}).Increment();
  w.state = WorkerState::kLost;
  lost_at_[w.index] = clock_.now();
  auto leases = std::move(w.leases);
  w.leases.clear();
  w.lease_gpus.clear();
  for (auto& slot : w.gpu_slots) slot.busy = false;
  w.campaigns_sent.clear();
  set_last_model(w, nullptr, 0);
  for (const auto& [id, key] : leases) {
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    Shard& s = c->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    fail_attempt(*c, key.group, key.shard, AttemptOutcome::kLost, "worker lost: " + w.name, w.name,
                 0, /*counts_as_attempt=*/true);
  }
}

// ---------------------------------------------------------------------------------------------
// Dispatch and timers

std::optional<ReadyRef> Scheduler::next_ready(Campaign& c, uint32_t model) {
  ModelQueue& q = c.queues[model];
  while (!q.requeued.empty()) {
    ReadyRef ref = q.requeued.front();
    q.requeued.pop_front();
    if (c.groups[ref.group].shards[ref.shard].state == ShardState::kPending) return ref;
  }
  while (q.cursor_group < q.end_group) {
    auto& shards = c.groups[q.cursor_group].shards;
    if (q.cursor_shard >= shards.size()) {
      ++q.cursor_group;
      q.cursor_shard = 0;
      continue;
    }
    const uint32_t index = q.cursor_shard++;
    if (shards[index].state == ShardState::kPending) {
      return ReadyRef{q.cursor_group, index, c.cursor_ready_since};
    }
  }
  return std::nullopt;
}

void Scheduler::lease(Campaign& c, const ReadyRef& ref, WorkerInfo& w, std::vector<uint32_t> gpus) {
  Group& g = c.groups[ref.group];
  Shard& s = g.shards[ref.shard];
  set_state(c, ref.group, s, ShardState::kRunning);
  ++s.attempts;
  if (s.total_attempts < std::numeric_limits<uint16_t>::max()) ++s.total_attempts;
  if (s.awaiting_given_up_attempt) given_up_by_.erase(s.attempt_id);
  s.attempt_id = next_attempt_id();
  s.awaiting_given_up_attempt = false;
  s.worker = w.index;
  w.leases[s.attempt_id] = ShardKey{c.key, ref.group, ref.shard};
  if (!gpus.empty()) {
    mark_gpus(w, gpus, true);
    w.lease_gpus[s.attempt_id] = gpus;
  }
  set_last_model(w, &c, g.model);
  write_shard(c, ref.group, ref.shard, &w);
  if (!w.campaigns_sent.contains(c.key)) {
    outgoing_.send(w.name, protocol::CampaignInfo{c.key, c.id, c.spec_json});
    w.campaigns_sent.insert(c.key);
  }
  const auto range = shard_range(c.spec.benchmarks[g.benchmark], ref.shard);
  outgoing_.assign(w.name, protocol::Assignment{.attempt_id = s.attempt_id,
                                                .campaign = c.key,
                                                .model = g.model,
                                                .benchmark = g.benchmark,
                                                .shard = ref.shard,
                                                .start = range.start,
                                                .end = range.end,
                                                .attempt = s.total_attempts,
                                                .gpus = std::move(gpus)});
  metrics_.dispatch_latency.Observe(seconds_between(ref.ready_since, clock_.now()));
}

void Scheduler::dispatch() {
  std::vector<WorkerInfo*> idle;
  for (auto& w : workers_) {
    if (w && w->state == WorkerState::kConnected && w->free_slots() > 0) idle.push_back(w.get());
  }
  if (idle.empty()) return;
  std::vector<Campaign*> active;
  for (auto& [key, c] : campaigns_) {
    if (c->state == CampaignState::kRunning && c->count(ShardState::kPending) > 0) {
      active.push_back(c.get());
    }
  }
  if (active.empty()) return;
  std::stable_sort(active.begin(), active.end(), [](const Campaign* a, const Campaign* b) {
    return a->spec.priority > b->spec.priority;
  });
  // Model queues found empty this turn (their pending shards are all backing off).
  std::set<std::pair<uint32_t, uint32_t>> exhausted;
  auto has_work = [&](const Campaign& c, uint32_t m) {
    return c.queues[m].pending > 0 && !exhausted.contains({c.key, m});
  };

  struct Pick {
    Campaign* campaign = nullptr;
    uint32_t model = 0;
    std::vector<uint32_t> gpus;
  };
  // Work left in model m, in GPU-shards per worker warm on it if one more joined. The scheduler
  // does not know how long a shard runs; counting each shard as the GPUs it holds at least tells
  // a 4-GPU model's queue from a 1-GPU model's queue of the same length.
  auto work_score = [&](const Campaign& c, uint32_t m) {
    const int gpus = std::max(1, c.spec.models[m].resources.gpus.value_or(1));
    return static_cast<double>(c.queues[m].pending) * gpus /
           (1.0 + static_cast<double>(c.queues[m].warm_workers));
  };
  // Worker w takes model m: a shard now if one fits, else the commitment (last_model) holds the
  // worker's GPUs for m as its running shards free them.
  auto commit = [&](WorkerInfo& w, Campaign& c, uint32_t m) -> std::optional<Pick> {
    if (auto gpus = place_shard(c.spec.models[m].resources, w.labels, w.gpu_slots, false)) {
      return Pick{&c, m, std::move(*gpus)};
    }
    set_last_model(w, &c, m);
    return std::nullopt;
  };
  // The model of campaign c that worker w should join: the one it could run with the most work
  // left per worker warm on it (largest first, so big models start early and workers spread in
  // proportion to the work). A GPU model that other workers already run is worth a load only if
  // the work left would fill this worker's GPUs at least once; such a model is remembered in
  // `not_worth_joining` instead. (Without GPUs there are no weights to load, and no reason to
  // leave a slot empty.)
  using CampaignModel = std::pair<Campaign*, uint32_t>;
  auto model_to_join = [&](Campaign& c, const WorkerInfo& w,
                           std::optional<CampaignModel>& not_worth_joining) {
    std::optional<uint32_t> best;
    double best_score = -1;
    for (uint32_t m = 0; m < c.queues.size(); ++m) {
      if (!has_work(c, m)) continue;
      const double score = work_score(c, m);
      if (score <= best_score) continue;
      const auto& resources = c.spec.models[m].resources;
      if (!place_shard(resources, w.labels, w.gpu_slots, true)) continue;
      if (c.queues[m].warm_workers > 0 && score < static_cast<double>(w.gpu_slots.size()) &&
          gpus_needed(resources, w.gpu_slots.size()) > 0) {
        if (!not_worth_joining) not_worth_joining = CampaignModel{&c, m};
        continue;
      }
      best_score = score;
      best = m;
    }
    return best;
  };
  struct TierEntry {
    int64_t held = 0;  // workers the campaign holds
    size_t order = 0;  // its turn this time
    Campaign* campaign = nullptr;
  };
  std::vector<TierEntry> tier;  // reused: choose() runs once per lease
  // What worker w should run next; nothing if nothing fits, or if w waits for GPUs of the model it
  // is committed to.
  auto choose = [&](WorkerInfo& w) -> std::optional<Pick> {
    size_t tier_begin = 0;
    while (tier_begin < active.size()) {
      size_t tier_end = tier_begin;
      while (tier_end < active.size() &&
             active[tier_end]->spec.priority == active[tier_begin]->spec.priority) {
        ++tier_end;
      }
      const size_t tier_size = tier_end - tier_begin;
      // Affinity: the model this worker is committed to (it ran it last, or was given it while
      // its GPUs were still busy), if it is in this tier and still has work. When its shard does
      // not fit yet, wait for the worker's own shards to free GPUs rather than fill them with
      // another model: that would load a second model and, worse, move the worker's affinity to
      // it, so it would drift from model to model paying a load each time.
      for (size_t i = tier_begin; i < tier_end; ++i) {
        Campaign& c = *active[i];
        if (c.key != w.last_campaign || w.last_model >= c.queues.size()) continue;
        if (!has_work(c, w.last_model)) continue;
        // Fair share: equal priorities share the cluster. The worker moves (paying a model
        // load) to the campaign of the tier holding the fewest workers, if that is at least two
        // fewer than its own campaign holds and it has a model worth joining. Campaigns then
        // differ by at most one worker, and one submitted behind a long one gets its share as
        // workers finish shards, not at the end. A move changes both counts, so it settles.
        if (tier_size > 1) {
          Campaign* poorest = nullptr;
          for (size_t k = tier_begin; k < tier_end; ++k) {
            Campaign* other = active[k];
            if (other->workers_held + 1 < c.workers_held &&
                (poorest == nullptr || other->workers_held < poorest->workers_held)) {
              poorest = other;
            }
          }
          std::optional<CampaignModel> ignored;
          if (poorest != nullptr) {
            if (auto m = model_to_join(*poorest, w, ignored)) return commit(w, *poorest, *m);
          }
        }
        const auto& resources = c.spec.models[w.last_model].resources;
        if (auto gpus = place_shard(resources, w.labels, w.gpu_slots, false)) {
          return Pick{&c, w.last_model, std::move(*gpus)};
        }
        if (place_shard(resources, w.labels, w.gpu_slots, true)) return std::nullopt;
      }
      // Otherwise commit the worker to a new model: the campaign of the tier holding the fewest
      // workers first (ties take turns), and in it model_to_join's pick.
      const size_t turn = tier_turn_++;
      tier.clear();
      for (size_t k = 0; k < tier_size; ++k) {
        Campaign* c = active[tier_begin + (turn + k) % tier_size];
        tier.push_back(TierEntry{c->workers_held, k, c});
      }
      if (tier_size > 1) {
        std::sort(tier.begin(), tier.end(), [](const TierEntry& a, const TierEntry& b) {
          return std::tie(a.held, a.order) < std::tie(b.held, b.order);
        });
      }
      std::optional<CampaignModel> not_worth_joining;
      for (const TierEntry& entry : tier) {
        if (auto m = model_to_join(*entry.campaign, w, not_worth_joining)) {
          return commit(w, *entry.campaign, *m);
        }
      }
      // Only small remainders of models other workers run are left in this tier. A worker that
      // still runs shards leaves its spare GPUs free rather than pay a load for them (unless the
      // alternative is a lower priority); a worker with nothing running always takes them: no
      // worker sits idle while there is pending work it can run.
      if (not_worth_joining) {
        if (tier_end == active.size() && !w.leases.empty()) return std::nullopt;
        return commit(w, *not_worth_joining->first, not_worth_joining->second);
      }
      tier_begin = tier_end;
    }
    return std::nullopt;
  };

  const size_t rotate = dispatch_rr_++ % idle.size();
  std::rotate(idle.begin(), idle.begin() + static_cast<std::ptrdiff_t>(rotate), idle.end());
  bool progress = true;
  while (progress) {
    progress = false;
    for (WorkerInfo* w : idle) {
      if (w->free_slots() == 0) continue;
      while (auto pick = choose(*w)) {
        auto ref = next_ready(*pick->campaign, pick->model);
        if (!ref) {
          exhausted.insert({pick->campaign->key, pick->model});
          continue;
        }
        lease(*pick->campaign, *ref, *w, std::move(pick->gpus));
        progress = true;
        break;
      }
    }
  }
}

void Scheduler::check_unschedulable() {
  std::vector<const WorkerInfo*> connected;
  for (const auto& w : workers_) {
    if (w && w->state != WorkerState::kLost) connected.push_back(w.get());
  }
  for (auto& [key, c] : campaigns_) {
    if (c->state != CampaignState::kRunning) {
      c->unschedulable.clear();
      continue;
    }
    for (uint32_t m = 0; m < c->queues.size(); ++m) {
      const auto& resources = c->spec.models[m].resources;
      bool possible = connected.empty();  // with no worker at all there is nothing to judge
      for (const WorkerInfo* w : connected) {
        possible = possible || place_shard(resources, w->labels, w->gpu_slots, true).has_value();
      }
      if (possible || c->queues[m].pending == 0) {
        c->unschedulable.erase(m);
        continue;
      }
      std::string reason = "model " + c->spec.models[m].name + " needs " +
                           describe_needs(resources) + " per shard; no connected worker has that (";
      for (size_t i = 0; i < connected.size() && i < 8; ++i) {
        const WorkerInfo* w = connected[i];
        reason += (i > 0 ? ", " : "") + w->name + ": " + std::to_string(w->gpu_slots.size()) +
                  " GPU" + (w->gpu_slots.size() == 1 ? "" : "s");
      }
      if (connected.size() > 8) reason += ", ...";
      reason += ")";
      auto [it, inserted] = c->unschedulable.try_emplace(m, reason);
      if (inserted || it->second != reason) {
        it->second = reason;
        spdlog::warn("unschedulable campaign={} reason=\"{}\"", c->id, reason);
      }
    }
  }
}

void Scheduler::tick() {
  const auto now = clock_.now();
  for (auto& slot : workers_) {
    if (!slot) continue;
    WorkerInfo& w = *slot;
    if (w.state != WorkerState::kLost) {
      if (now - w.last_seen > options_.worker_timeout) {
        lose_worker(
            w, "silent for more than " + std::to_string(options_.worker_timeout.count()) + " ms");
      } else if (now - w.last_sent >= options_.heartbeat) {
        outgoing_.send(w.name, protocol::Heartbeat{});
        w.last_sent = now;
      }
    } else if (w.leases.empty() && now - lost_at_[w.index] > options_.forget_lost_workers_after) {
      spdlog::info("forgetting lost worker worker={}", w.name);
      forget_worker_metrics(w);
      worker_by_name_.erase(w.name);
      lost_at_.erase(w.index);
      slot.reset();
    }
  }
  for (auto it = orphans_.begin(); it != orphans_.end();) {
    if (it->second.deadline > now) {
      ++it;
      continue;
    }
    const uint64_t id = it->first;
    const Orphan orphan = it->second;
    it = orphans_.erase(it);
    Campaign* c = campaign_by_key(orphan.key.campaign);
    if (c == nullptr) continue;
    Shard& s = c->groups[orphan.key.group].shards[orphan.key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    fail_attempt(*c, orphan.key.group, orphan.key.shard, AttemptOutcome::kOrphaned,
                 "lease not reclaimed after coordinator restart (worker " + orphan.worker + ")",
                 orphan.worker, 0, /*counts_as_attempt=*/false);
  }
  while (!delayed_.empty() && delayed_.begin()->first <= now) {
    const ShardKey key = delayed_.begin()->second;
    delayed_.erase(delayed_.begin());
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    if (c->groups[key.group].shards[key.shard].state == ShardState::kPending) {
      c->queues[c->model_of(key.group)].requeued.push_back(ReadyRef{key.group, key.shard, now});
    }
  }
  if (now - last_gauges_ >= kGaugeRefreshInterval) {
    last_gauges_ = now;
    check_unschedulable();
    refresh_gauges();
  }
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

void Scheduler::refresh_gauges() {
  const auto now = clock_.now();
  const int64_t wall_now = clock_.wall_ms();
  for (const auto& [key, c] : campaigns_) {
    if (c->state != CampaignState::kRunning && c->metrics_attached &&
        wall_now - c->finished_at_ms >= options_.finished_campaign_metrics.count()) {
      detach_campaign_metrics(*c);
    }
    if (!c->metrics_attached) continue;
    for (size_t s = 0; s < kShardStateCount; ++s) {
      metrics_.campaign_shards
          .Add({{"campaign", c->id}, {"state", to_string(static_cast<ShardState>(s))}})
          .Set(static_cast<double>(c->counts[s]));
    }
    metrics_.campaign_progress.Add({{"campaign", c->id}})
        .Set(c->total == 0 ? 1.0
                           : static_cast<double>(c->finished()) / static_cast<double>(c->total));
    const auto eta = c->state == CampaignState::kRunning ? c->eta_seconds(now) : 0.0;
    metrics_.campaign_eta.Add({{"campaign", c->id}}).Set(eta.value_or(-1));
    for (auto state : {CampaignState::kRunning, CampaignState::kSucceeded, CampaignState::kFailed,
                       CampaignState::kCancelled}) {
      metrics_.campaign_info
          .Add({{"campaign", c->id}, {"name", c->spec.name}, {"state", to_string(state)}})
          .Set(c->state == state ? 1 : 0);
    }
    // Completion per model x benchmark, from the durable cells; handles are cached in metrics_.
    auto& per_group = metrics_.benchmark_shard_gauges[c->id];
    if (per_group.size() != c->groups.size()) {
      per_group.resize(c->groups.size());
      for (size_t i = 0; i < c->groups.size(); ++i) {
        const prometheus::Labels labels{
            {"campaign", c->id},
            {"model", c->spec.models[c->groups[i].model].name},
            {"benchmark", c->spec.benchmarks[c->groups[i].benchmark].name}};
        auto with_kind = [&labels](const char* kind) {
          auto copy = labels;
          copy.emplace("kind", kind);
          return copy;
        };
        per_group[i] = {&metrics_.benchmark_shards.Add(with_kind("succeeded")),
                        &metrics_.benchmark_shards.Add(with_kind("total"))};
      }
    }
    for (size_t i = 0; i < c->groups.size(); ++i) {
      per_group[i].succeeded->Set(static_cast<double>(c->groups[i].cell.shards_succeeded));
      per_group[i].total->Set(static_cast<double>(c->groups[i].cell.shards_total));
    }
  }
  std::array<int, 3> by_state{};
  for (const auto& slot : workers_) {
    if (!slot) continue;
    const WorkerInfo& w = *slot;
    by_state[static_cast<size_t>(w.state)] += 1;
    w.slots_used->Set(static_cast<double>(w.leases.size()));
    w.slots_total->Set(w.state == WorkerState::kLost ? 0 : w.slots);
    // Free = what dispatch may still hand out: none on a draining or lost worker.
    w.slots_free->Set(w.state == WorkerState::kConnected ? w.free_slots() : 0);
    w.heartbeat_age->Set(seconds_between(w.last_seen, now));
  }
  for (auto state : {WorkerState::kConnected, WorkerState::kDraining, WorkerState::kLost}) {
    metrics_.workers.Add({{"state", to_string(state)}}).Set(by_state[static_cast<size_t>(state)]);
  }
  metrics_.queue_ready.Set(static_cast<double>(ready_shards()));
  metrics_.store_size.Set(static_cast<double>(store_.approximate_size_bytes()));
}

}  // namespace evald::coordinator
