// Scheduler: timers (worker liveness, heartbeats, orphan and backoff expiry) and the gauges and
// per-campaign metric series.
#include <spdlog/spdlog.h>

#include "coordinator/scheduler.hpp"
#include "coordinator/scheduler_internal.hpp"

namespace evald::coordinator {
using scheduler_detail::seconds_between;
namespace {

constexpr auto kGaugeRefreshInterval = std::chrono::milliseconds(250);

}  // namespace

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
  spdlog::info("campaign_metrics_removed campaign={} finished_at_ms={}", c.id, c.finished_at_ms);
}

void Scheduler::forget_worker_metrics(WorkerInfo& w) {
  if (w.slots_used == nullptr) return;
  --workers_with_series_;
  metrics_.worker_slots.Remove(w.slots_used);
  metrics_.worker_slots.Remove(w.slots_total);
  metrics_.worker_slots.Remove(w.slots_free);
  metrics_.worker_heartbeat_age.Remove(w.heartbeat_age);
  metrics_.workers_lost.Remove(&metrics_.workers_lost.Add({{"worker", w.name}}));
  // A worker that comes back (HELLO) gets new ones, if there is room.
  w.slots_used = w.slots_total = w.slots_free = w.heartbeat_age = nullptr;
}

// Worker timers (liveness, heartbeats, forgetting lost workers) run in one pass over the workers
// at the earliest deadline of any of them, not every turn: with thousands of workers a pass per
// turn would cost more than the turn's real work. A deadline only moves later between passes
// (a message from a worker, a message sent to it), so waking at the recorded earliest one is
// never late; events that bring a deadline closer (a new worker, a lost one) call
// wake_worker_timers(). A pass runs when the first heartbeat is due and also sends those due
// within the next quarter interval, so a fleet's heartbeats coalesce into at most about four
// passes per interval instead of one per worker, and none is ever sent late.
void Scheduler::run_worker_timers(std::chrono::steady_clock::time_point now) {
  const auto early = options_.heartbeat / 4;
  const auto one_tick = std::chrono::milliseconds(1);
  auto next = now + std::max(options_.heartbeat, options_.worker_timeout);
  for (auto& slot : workers_) {
    if (!slot) continue;
    WorkerInfo& w = *slot;
    if (!departed(w.state)) {
      if (now - w.last_seen > options_.worker_timeout) {
        lose_worker(
            w, "silent for more than " + std::to_string(options_.worker_timeout.count()) + " ms");
      } else {
        if (now - w.last_sent >= options_.heartbeat - early) {
          outgoing_.send(w.name, protocol::Heartbeat{});
          w.last_sent = now;
        }
        next = std::min({next, w.last_seen + options_.worker_timeout + one_tick,
                         w.last_sent + options_.heartbeat});
        continue;
      }
    }
    // Lost (just now or before) or left: forgotten once nothing is left running and the time is up.
    const auto lost_at = lost_at_[w.index];
    if (w.leases.empty() && now - lost_at > options_.forget_lost_workers_after) {
      spdlog::info("worker_forgotten worker={} state={}", w.name, to_string(w.state));
      forget_worker_metrics(w);
      worker_by_name_.erase(w.name);
      lost_at_.erase(w.index);
      slot.reset();
      continue;
    }
    next = std::min(next, lost_at + options_.forget_lost_workers_after + one_tick);
  }
  next_worker_timer_ = next;
}

void Scheduler::note_sent() {
  if (outgoing_.empty()) return;
  const auto now = clock_.now();
  outgoing_.for_each_identity([&](const std::string& name) {
    if (WorkerInfo* w = find_worker(name)) w->last_sent = now;
  });
}

void Scheduler::wake_worker_timers() {
  next_worker_timer_ = {};
}

void Scheduler::tick() {
  const auto now = clock_.now();
  if (now >= next_worker_timer_) run_worker_timers(now);
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
    refresh_estimates();
    check_unschedulable();
    refresh_gauges();
    refresh_capacity_gauges();
  }
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
  std::array<int, 4> by_state{};  // one per WorkerState
  double used = 0;
  double total = 0;
  double free = 0;
  double queued = 0;
  size_t without_series = 0;
  for (const auto& slot : workers_) {
    if (!slot) continue;
    const WorkerInfo& w = *slot;
    by_state[static_cast<size_t>(w.state)] += 1;
    const double w_used = static_cast<double>(w.running());
    queued += static_cast<double>(w.queued.size());
    const double w_total = departed(w.state) ? 0 : w.slots;
    // Free = what dispatch may still hand out: none on a draining or lost worker.
    const double w_free = w.state == WorkerState::kConnected ? w.free_slots() : 0;
    used += w_used;
    total += w_total;
    free += w_free;
    if (w.slots_used == nullptr) {
      if (w.state != WorkerState::kLeft) ++without_series;  // a left one's were removed
      continue;
    }
    w.slots_used->Set(w_used);
    w.slots_total->Set(w_total);
    w.slots_free->Set(w_free);
    w.heartbeat_age->Set(seconds_between(w.last_seen, now));
  }
  metrics_.fleet_slots.Add({{"kind", "used"}}).Set(used);
  metrics_.fleet_slots.Add({{"kind", "total"}}).Set(total);
  metrics_.fleet_slots.Add({{"kind", "free"}}).Set(free);
  metrics_.shards_queued_ahead.Set(queued);
  metrics_.workers_without_series.Set(static_cast<double>(without_series));
  for (auto state :
       {WorkerState::kConnected, WorkerState::kDraining, WorkerState::kLost, WorkerState::kLeft}) {
    metrics_.workers.Add({{"state", to_string(state)}}).Set(by_state[static_cast<size_t>(state)]);
  }
  metrics_.queue_ready.Set(static_cast<double>(ready_shards()));
  metrics_.store_size.Set(static_cast<double>(store_.approximate_size_bytes()));
}

}  // namespace evald::coordinator
