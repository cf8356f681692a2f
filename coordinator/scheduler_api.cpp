// Scheduler operations behind the HTTP API: submit, rerun, cancel.
#include <spdlog/spdlog.h>

#include "coordinator/scheduler.hpp"
#include "coordinator/scheduler_internal.hpp"

namespace evald::coordinator {
using scheduler_detail::campaign_id_for;

Result<std::string> Scheduler::submit(const CampaignSpec& spec, const Submitter& submitter) {
  const uint32_t key = next_campaign_key_++;
  batch_.put_meta_u64("next_campaign", next_campaign_key_);
  Campaign& c = create_campaign(key, campaign_id_for(key), spec, clock_.wall_ms());
  c.submitted_by = submitter.name;
  c.submitted_from = submitter.address;
  write_campaign(c);
  apply_reuse(c);
  spdlog::info(
      "campaign_submitted campaign={} name={} models={} benchmarks={} shards={} "
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
      if (s.state == ShardState::kSucceeded) {
        had_success = true;
        // Its samples leave with its result (the next success stores its own, if any).
        batch_.delete_samples(ShardKey{c.key, gi, i});
      }
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
  spdlog::info("campaign_cancelled campaign={} shards_cancelled={}", c.id, cancelled);
  return cancelled;
}

}  // namespace evald::coordinator
