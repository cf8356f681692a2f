// Scheduler: the dispatch policy (docs/scheduling.md, "Order") and leasing a shard to a worker.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>
#include <set>
#include <tuple>

#include "coordinator/scheduler.hpp"
#include "coordinator/scheduler_internal.hpp"

namespace evald::coordinator {
using scheduler_detail::seconds_between;

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

}  // namespace evald::coordinator
