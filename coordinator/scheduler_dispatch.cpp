// Scheduler: the dispatch policy (docs/scheduling.md, "Order") and leasing a shard to a worker.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <tuple>

#include "coordinator/scheduler.hpp"
#include "coordinator/scheduler_internal.hpp"

namespace evald::coordinator {
using scheduler_detail::seconds_between;
namespace {

// The rules of docs/scheduling.md ("Order"), one function each, named there. dispatch() applies
// them per worker; the helpers between them are not rules of their own.

// Model m of a campaign given to a worker, with the GPUs its shard gets (none yet: the worker
// waits for its own GPUs, see join in dispatch()).
struct Pick {
  Campaign* campaign = nullptr;
  uint32_t model = 0;
  std::vector<uint32_t> gpus;
};
using CampaignModel = std::pair<Campaign*, uint32_t>;
// Campaigns of equal priority, in campaign order.
using Tier = std::span<Campaign* const>;

struct TierEntry {
  int64_t held = 0;  // workers the campaign holds
  size_t order = 0;  // its turn this time
  Campaign* campaign = nullptr;
};

// What one dispatch() call knows across its leases.
struct DispatchPass {
  std::vector<Campaign*> active;  // running campaigns with pending shards, by priority
  std::vector<Tier> tiers;        // of `active`, highest priority first
  // Model queues found empty this pass (their pending shards are all backing off).
  std::set<std::pair<uint32_t, uint32_t>> exhausted;
  std::vector<TierEntry> by_share;  // fair_share_order's output, reused per lease
  // Served models whose server keeps failing to start on a worker are not placed there for now.
  const ServeBackoff* serve_backoff = nullptr;
  std::chrono::steady_clock::time_point now;

  // Model m of campaign c has a shard worker w may take.
  bool has_work(const Campaign& c, uint32_t m, const WorkerInfo& w) const {
    return c.queues[m].pending > 0 && !exhausted.contains({c.key, m}) &&
           serve_backoff->allows(w.name, c.spec.models[m], now);
  }
};

// Rule 1, priority: running campaigns with pending shards, highest priority first, cut into tiers
// of equal priority; a lower tier is served only when the higher ones have nothing for a worker.
void priority_tiers(const std::map<uint32_t, std::unique_ptr<Campaign>>& campaigns,
                    DispatchPass& pass) {
  for (const auto& [key, c] : campaigns) {
    if (c->state == CampaignState::kRunning && c->count(ShardState::kPending) > 0) {
      pass.active.push_back(c.get());
    }
  }
  std::stable_sort(
      pass.active.begin(), pass.active.end(),
      [](const Campaign* a, const Campaign* b) { return a->spec.priority > b->spec.priority; });
  const Tier all(pass.active);
  size_t begin = 0;
  while (begin < all.size()) {
    size_t end = begin;
    while (end < all.size() && all[end]->spec.priority == all[begin]->spec.priority) ++end;
    pass.tiers.push_back(all.subspan(begin, end - begin));
    begin = end;
  }
}

// Rule 2, fair share: the order in which a worker without a model to stay on tries the campaigns
// of a tier: the one holding the fewest workers first, ties taking turns (`turn` moves the start).
const std::vector<TierEntry>& fair_share_order(Tier tier, size_t turn,
                                               std::vector<TierEntry>& out) {
  out.clear();
  for (size_t k = 0; k < tier.size(); ++k) {
    Campaign* c = tier[(turn + k) % tier.size()];
    out.push_back(TierEntry{c->workers_held, k, c});
  }
  if (tier.size() > 1) {
    std::sort(out.begin(), out.end(), [](const TierEntry& a, const TierEntry& b) {
      return std::tie(a.held, a.order) < std::tie(b.held, b.order);
    });
  }
  return out;
}

// The campaign of this tier whose model worker w is committed to (it ran it last, or was given it
// while its GPUs were still busy), if that model still has work. Input to rules 3 to 5.
Campaign* committed_campaign(Tier tier, const WorkerInfo& w, const DispatchPass& pass) {
  for (Campaign* c : tier) {
    if (c->key != w.last_campaign || w.last_model >= c->queues.size()) continue;
    if (pass.has_work(*c, w.last_model, w)) return c;
  }
  return nullptr;
}

// Rule 3, rebalancing: equal priorities share the cluster. A worker committed to campaign `own`
// moves (paying a model load) to the campaign of the tier holding the fewest workers, if that is at
// least two fewer than `own` holds (and, checked by the caller, it has a model worth joining).
// Campaigns then differ by at most one worker, and one submitted behind a long one gets its share
// as workers finish shards, not at the end. A move changes both counts, so it settles.
Campaign* rebalance_target(Tier tier, const Campaign& own) {
  if (tier.size() <= 1) return nullptr;
  Campaign* poorest = nullptr;
  for (Campaign* other : tier) {
    if (other->workers_held + 1 < own.workers_held &&
        (poorest == nullptr || other->workers_held < poorest->workers_held)) {
      poorest = other;
    }
  }
  return poorest;
}

// What rule 5 decides for a worker committed to a model with work.
struct Affinity {
  bool holds = false;        // the model can run on this worker: nothing else is considered
  std::optional<Pick> pick;  // its next shard now; none: wait for the worker's own GPUs
};

// Rule 5, affinity: a worker committed to a model with work runs its next shard when it fits.
// When it does not fit yet but would on the idle worker, the worker waits for its own shards to
// free GPUs rather than fill them with another model: that would load a second model and, worse,
// move the worker's affinity to it, so it would drift from model to model paying a load each time.
Affinity affinity(Campaign& own, const WorkerInfo& w) {
  const auto& resources = own.spec.models[w.last_model].resources;
  if (auto gpus = place_shard(resources, w.labels, w.gpu_slots, false)) {
    return Affinity{true, Pick{&own, w.last_model, std::move(*gpus)}};
  }
  return Affinity{place_shard(resources, w.labels, w.gpu_slots, true).has_value(), std::nullopt};
}

// Work left in model m: the expected GPU-seconds of its pending shards (docs/scheduling.md,
// "Expected GPU time") per worker warm on it if one more joined. A model whose shards run 12 times
// longer weighs 12 times more than its shard count says, a 4-GPU shard 4 times a 1-GPU one.
double work_score(const Campaign& c, uint32_t m) {
  return c.queues[m].pending_gpu_s / (1.0 + static_cast<double>(c.queues[m].warm_workers));
}

// Rule 7, remainders: a GPU model that other workers already run is worth a load only if the work
// left per worker (work_score) would keep this worker's GPUs busy for at least one shard's time.
// (Without GPUs there are no weights to load, and no reason to leave a slot empty.)
bool is_remainder(const Campaign& c, uint32_t m, const WorkerInfo& w, double score) {
  const ModelQueue& q = c.queues[m];
  if (q.warm_workers == 0 || q.pending == 0) return false;
  if (gpus_needed(c.spec.models[m].resources, w.gpu_slots.size()) == 0) return false;
  const double shard_s = q.pending_gpu_s / (static_cast<double>(q.pending) * q.gpus);
  return score < static_cast<double>(w.gpu_slots.size()) * shard_s;
}

// Rule 4, time balance: within its campaign, a worker leaves its model (paying a load) for another
// model whose expected GPU time left per worker, with this one joining, is more than
// kTimeBalanceFactor times its own model's without it. Shard counts hide a model whose shards
// run much longer; once its first attempts finish (or have run long enough) its work shows, and
// workers move to it instead of finishing short models first and leaving it a long tail. The
// factor keeps moves (each a load) to models that would otherwise end far behind the rest.
constexpr double kTimeBalanceFactor = 3.0;
std::optional<uint32_t> time_balance_target(Campaign& c, const WorkerInfo& w,
                                            const DispatchPass& pass) {
  const ModelQueue& own = c.queues[w.last_model];
  // The last worker on a model stays: leaving would strand its work for another load later.
  if (own.warm_workers < 2) return std::nullopt;
  if (w.gpu_slots.empty()) return std::nullopt;  // no weights to load, nothing to balance
  const double own_left = own.pending_gpu_s / static_cast<double>(own.warm_workers - 1);
  std::optional<uint32_t> best;
  double best_left = kTimeBalanceFactor * own_left;
  for (uint32_t m = 0; m < c.queues.size(); ++m) {
    if (m == w.last_model || !pass.has_work(c, m, w)) continue;
    const double left = work_score(c, m);
    if (left <= best_left || is_remainder(c, m, w, left)) continue;
    if (!place_shard(c.spec.models[m].resources, w.labels, w.gpu_slots, true)) continue;
    best = m;
    best_left = left;
  }
  return best;
}

// Rule 6, spreading: the model of campaign c that worker w should join, among those it could run:
// first one that the fewest of the cluster's GPUs can run (a worker that can run what others
// cannot runs that, and leaves what everyone can run to the others), then one that no worker runs
// yet (every model costs a load somewhere anyway; started late, it would be piled on by the
// workers freed at the end, each paying a load), then the one with the most work left per worker
// warm on it (largest first, so big models start early and workers spread in proportion to the
// work). A remainder (rule 7) is not picked; the first one seen is remembered in `remainder`.
std::optional<uint32_t> spreading_pick(Campaign& c, const WorkerInfo& w, const DispatchPass& pass,
                                       std::optional<CampaignModel>& remainder) {
  // Served models: a model whose server is already warm on this worker costs no load, so it goes
  // first (also right after a coordinator restart, when no worker has a last model yet).
  for (uint32_t m = 0; m < c.queues.size(); ++m) {
    if (!pass.has_work(c, m, w) || !w.warm_on(c.spec.models[m].name)) continue;
    if (place_shard(c.spec.models[m].resources, w.labels, w.gpu_slots, true)) return m;
  }
  std::optional<uint32_t> best;
  // (scarce, unstarted, work): the model fewest GPUs of the cluster can run, then one nobody runs
  // yet, then the most work per worker.
  using Rank = std::tuple<int64_t, bool, double>;
  std::optional<Rank> best_rank;
  for (uint32_t m = 0; m < c.queues.size(); ++m) {
    if (!pass.has_work(c, m, w)) continue;
    const ModelQueue& q = c.queues[m];
    const double score = work_score(c, m);
    const Rank rank{-q.eligible_gpus, q.warm_workers == 0, score};
    if (best_rank && rank <= *best_rank) continue;
    if (!place_shard(c.spec.models[m].resources, w.labels, w.gpu_slots, true)) continue;
    if (is_remainder(c, m, w, score)) {
      if (!remainder) remainder = CampaignModel{&c, m};
      continue;
    }
    best_rank = rank;
    best = m;
  }
  return best;
}

// Rule 8, no idling: when only remainders are left in a tier, a worker that still runs shards
// leaves its spare GPUs free rather than pay a load for them, unless the alternative is lower-
// priority work; a worker with nothing running always takes one: no worker sits idle while there
// is pending work it can run.
bool takes_remainder(const WorkerInfo& w, bool lower_tiers_left) {
  return lower_tiers_left || w.leases.empty();
}

// A running first copy that a backup copy could race (rule 10).
struct RunningCopy {
  ShardKey key;
  uint32_t worker = kNoWorker;
  double remaining_s = 0;  // what it is expected to need still; infinite for a straggler
};

// Rule 10, backup copies of stragglers: with nothing pending anywhere, a worker that has model m
// loaded and free GPUs for it runs a second copy of a shard of m that another worker runs, if that
// copy is expected to finish first: the shard has run kStragglerFactor times what a shard of its
// kind takes on its worker (a straggler: when it will end is unknown), or its expected time left
// there is more than the copy's expected time here (a node known to be slow). The straggler
// expected to finish last goes first. The first result counts; the other copy is cancelled.
// `copy_expected_s(group)`: how long a shard of that group is expected to take on this worker.
constexpr double kStragglerFactor = 1.5;
template <typename CopyExpected>
std::optional<size_t> backup_copy_target(const std::vector<RunningCopy>& running,
                                         const WorkerInfo& w, CopyExpected&& copy_expected_s) {
  std::optional<size_t> best;
  for (size_t i = 0; i < running.size(); ++i) {
    const RunningCopy& r = running[i];
    if (r.worker == w.index || r.remaining_s <= copy_expected_s(r.key.group)) continue;
    if (!best || r.remaining_s > running[*best].remaining_s) best = i;
  }
  return best;
}

}  // namespace

// Rule 9, within a model: shards that failed and were retried (after their backoff) or requeued
// go first, then never-run shards, those of the benchmark whose shards are expected to run
// longest first (ties in benchmark order). Queue entries are checked on pop, so a stale one is
// skipped.
std::optional<ReadyRef> Scheduler::next_in_model(Campaign& c, uint32_t model) {
  ModelQueue& q = c.queues[model];
  while (!q.requeued.empty()) {
    ReadyRef ref = q.requeued.front();
    q.requeued.pop_front();
    if (c.groups[ref.group].shards[ref.shard].state == ShardState::kPending) return ref;
  }
  while (true) {
    // The group with never-run shards whose shards are expected to run longest; ties in
    // benchmark order. Starting long shards first keeps them out of the tail.
    std::optional<uint32_t> longest;
    for (uint32_t g = q.first_group; g < q.end_group; ++g) {
      if (q.cursors[g - q.first_group] >= c.groups[g].shards.size()) continue;
      if (!longest || c.groups[g].expected_shard_s > c.groups[*longest].expected_shard_s) {
        longest = g;
      }
    }
    if (!longest) return std::nullopt;
    auto& shards = c.groups[*longest].shards;
    uint32_t& cursor = q.cursors[*longest - q.first_group];
    while (cursor < shards.size()) {
      const uint32_t index = cursor++;
      if (shards[index].state == ShardState::kPending) {
        return ReadyRef{*longest, index, c.cursor_ready_since};
      }
    }
  }
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
  // Beyond its slots the worker queues it (rule 11) and starts it when a slot frees.
  const bool queued = w.free_slots() == 0;
  if (queued) {
    w.queued.push_back(s.attempt_id);
    metrics_.leases_queued_ahead.Increment();
  }
  w.leases[s.attempt_id] = ShardKey{c.key, ref.group, ref.shard};
  if (!gpus.empty()) {
    mark_gpus(w, gpus, true);
    w.lease_gpus[s.attempt_id] = gpus;
  }
  set_last_model(w, &c, g.model);
  w.lease_started[s.attempt_id] = WorkerInfo::LeaseStart{clock_.now(), !w.model_proven, queued};
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
  fill_free_slots();
  queue_ahead();
}

void Scheduler::fill_free_slots() {
  std::vector<WorkerInfo*> idle;
  for (auto& w : workers_) {
    if (w && w->state == WorkerState::kConnected && w->free_slots() > 0) idle.push_back(w.get());
  }
  if (idle.empty()) return;
  if (estimates_stale_) refresh_estimates();
  DispatchPass pass;
  pass.serve_backoff = &serve_backoff_;
  pass.now = clock_.now();
  priority_tiers(campaigns_, pass);
  if (pass.active.empty()) {
    start_backup_copies(idle);
    return;
  }

  // Worker w takes model m: a shard now if one fits, else the commitment (last_model) holds the
  // worker's GPUs for m as its running shards free them (rule 5 on its next turns).
  auto join = [&](WorkerInfo& w, Campaign& c, uint32_t m) -> std::optional<Pick> {
    if (auto gpus = place_shard(c.spec.models[m].resources, w.labels, w.gpu_slots, false)) {
      return Pick{&c, m, std::move(*gpus)};
    }
    set_last_model(w, &c, m);
    return std::nullopt;
  };
  // What worker w should run next; nothing if nothing fits, or if w waits for GPUs of the model it
  // is committed to.
  auto choose = [&](WorkerInfo& w) -> std::optional<Pick> {
    for (size_t t = 0; t < pass.tiers.size(); ++t) {
      const Tier tier = pass.tiers[t];
      if (Campaign* own = committed_campaign(tier, w, pass)) {
        if (Campaign* poorer = rebalance_target(tier, *own)) {
          std::optional<CampaignModel> ignored;
          if (auto m = spreading_pick(*poorer, w, pass, ignored)) return join(w, *poorer, *m);
        }
        if (auto m = time_balance_target(*own, w, pass)) return join(w, *own, *m);
        if (Affinity stay = affinity(*own, w); stay.holds) return std::move(stay.pick);
      }
      // Otherwise commit the worker to a new model: the campaigns of the tier in fair-share
      // order, and in each the spreading pick.
      std::optional<CampaignModel> remainder;
      for (const TierEntry& entry : fair_share_order(tier, tier_turn_++, pass.by_share)) {
        if (auto m = spreading_pick(*entry.campaign, w, pass, remainder)) {
          return join(w, *entry.campaign, *m);
        }
      }
      if (remainder) {
        if (!takes_remainder(w, /*lower_tiers_left=*/t + 1 < pass.tiers.size())) {
          return std::nullopt;
        }
        return join(w, *remainder->first, remainder->second);
      }
    }
    return std::nullopt;
  };

  // Workers take turns, one lease per pass, starting one further each call: no worker hoards the
  // queue, and a worker never gets more than its free slots.
  const size_t rotate = dispatch_rr_++ % idle.size();
  std::rotate(idle.begin(), idle.begin() + static_cast<std::ptrdiff_t>(rotate), idle.end());
  bool progress = true;
  while (progress) {
    progress = false;
    for (WorkerInfo* w : idle) {
      if (w->free_slots() == 0) continue;
      while (auto pick = choose(*w)) {
        auto ref = next_in_model(*pick->campaign, pick->model);
        if (!ref) {
          pass.exhausted.insert({pick->campaign->key, pick->model});
          continue;
        }
        lease(*pick->campaign, *ref, *w, std::move(pick->gpus));
        progress = true;
        break;
      }
    }
  }
}

// Rule 11, queueing ahead: a worker whose slots are all leased, and that said it queues attempts
// beyond them, gets more shards of the model it runs, which it starts as its slots free, without
// waiting for the round trip of its result and the next ASSIGN. At most as many as its slots are
// expected to start within kQueueAheadMaxWaitSeconds (so only short shards are queued, and a
// queued shard never waits long while another worker could have run it), and at most its queue.
// Only when the model's shards need no GPU (which GPUs free first is not known ahead), every
// group of it with pending shards has finished shards to judge by, the worker has the model
// loaded, no campaign of higher priority has pending shards, and no campaign of the same priority
// is owed a worker (rule 3: a worker that always has a queued shard never has a free slot for the
// rules to move it). A queue whose oldest shard waited past kQueueAheadRevokeAfter (the slots
// stopped freeing: a shard hangs) is taken back, and the worker gets none until a lease ends.
void Scheduler::queue_ahead() {
  const auto now = clock_.now();
  std::vector<WorkerInfo*> full;
  for (auto& w : workers_) {
    if (!w || w->state != WorkerState::kConnected) continue;
    if (!w->queued.empty()) {
      const auto oldest = w->lease_started.find(w->queued.front());
      if (oldest != w->lease_started.end() && now - oldest->second.at >= kQueueAheadRevokeAfter) {
        revoke_stalled_queue(*w);
      }
    }
    if (w->queue_ahead > 0 && !w->queue_stalled && w->model_proven && w->free_slots() == 0 &&
        w->queue_room() > 0) {
      full.push_back(w.get());
    }
  }
  if (full.empty()) return;
  if (estimates_stale_) refresh_estimates();  // fill_free_slots skips it when no slot is free
  int top_priority = std::numeric_limits<int>::min();
  for (const auto& [key, c] : campaigns_) {
    if (c->state == CampaignState::kRunning && c->count(ShardState::kPending) > 0) {
      top_priority = std::max(top_priority, c->spec.priority);
    }
  }
  // How many of model m's shards worker w may hold queued: 0 when any of its groups with pending
  // shards has nothing finished to judge by.
  auto queue_limit = [&](const Campaign& c, uint32_t m, const WorkerInfo& w) -> size_t {
    const ModelQueue& q = c.queues[m];
    double longest = 0;
    for (uint32_t g = q.first_group; g < q.end_group; ++g) {
      if (c.groups[g].pending == 0) continue;
      const double shard_s = straggler_reference_seconds_on(c, g, w);
      if (shard_s <= 0) return 0;
      longest = std::max(longest, shard_s);
    }
    if (longest <= 0) return 0;
    // (Durations are kept as floats: 2 x 0.1 / 0.05 must come out as 4, not 3.99999.)
    const double fits = static_cast<double>(w.slots) * kQueueAheadMaxWaitSeconds / longest;
    return static_cast<size_t>(std::min(fits * (1 + 1e-6), static_cast<double>(w.queue_ahead)));
  };
  struct Taker {
    WorkerInfo* worker = nullptr;
    Campaign* campaign = nullptr;  // null once its model has no shard ready
    size_t limit = 0;
  };
  std::vector<Taker> takers;
  for (WorkerInfo* w : full) {
    Campaign* c = campaign_by_key(w->last_campaign);
    if (c == nullptr || c->state != CampaignState::kRunning || w->last_model >= c->queues.size() ||
        c->queues[w->last_model].pending == 0 || c->spec.priority < top_priority) {
      continue;
    }
    const bool owes_a_worker =
        std::any_of(campaigns_.begin(), campaigns_.end(), [&](const auto& e) {
          const Campaign& other = *e.second;
          return &other != c && other.state == CampaignState::kRunning &&
                 other.spec.priority == c->spec.priority && other.count(ShardState::kPending) > 0 &&
                 other.workers_held + 1 < c->workers_held;
        });
    if (owes_a_worker) continue;
    const auto& model = c->spec.models[w->last_model];
    if (gpus_needed(model.resources, w->gpu_slots.size()) != 0 ||
        !serve_backoff_.allows(w->name, model, now)) {
      continue;
    }
    const size_t limit = queue_limit(*c, w->last_model, *w);
    if (w->queued.size() < limit) takers.push_back(Taker{w, c, limit});
  }
  // One lease per worker per pass, as in fill_free_slots: no worker's queue takes the rest.
  bool progress = true;
  while (progress) {
    progress = false;
    for (Taker& t : takers) {
      if (t.campaign == nullptr || t.worker->queued.size() >= t.limit) continue;
      auto ref = next_in_model(*t.campaign, t.worker->last_model);
      if (!ref) {
        t.campaign = nullptr;  // the model's pending shards are all backing off
        continue;
      }
      lease(*t.campaign, *ref, *t.worker, {});
      progress = true;
    }
  }
}

void Scheduler::revoke_stalled_queue(WorkerInfo& w) {
  const std::vector<uint64_t> ids(w.queued.begin(), w.queued.end());
  spdlog::warn(
      "queue_revoked worker={} shards={} reason=\"its oldest queued shard waited {} ms for a "
      "slot\"",
      w.name, ids.size(), kQueueAheadRevokeAfter.count());
  metrics_.queues_revoked.Increment();
  for (uint64_t id : ids) {
    const auto lease = w.leases.find(id);
    if (lease == w.leases.end()) continue;
    const ShardKey key = lease->second;
    release_lease(w, id);          // all its slots are taken, so nothing else is promoted
    outgoing_.cancel(w.name, id);  // should it have started meanwhile, its result is stale
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    const Shard& s = c->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    fail_attempt(*c, key.group, key.shard, AttemptOutcome::kHandedBack,
                 "taken back unstarted from worker " + w.name +
                     " (queued there for a slot, its slots stopped freeing)",
                 w.name, 0, /*counts_as_attempt=*/false);
  }
  w.queue_stalled = true;  // until one of its leases ends
}

void Scheduler::start_backup_copies(const std::vector<WorkerInfo*>& idle) {
  // The copies each (campaign, model) could race, gathered once per call and only for models an
  // idle worker has loaded, in a campaign that asked for backup copies.
  std::map<std::pair<uint32_t, uint32_t>, std::vector<RunningCopy>> racing;
  for (const WorkerInfo* w : idle) {
    const Campaign* c = campaign_by_key(w->last_campaign);
    if (c == nullptr || c->state != CampaignState::kRunning || !c->spec.backup_copies ||
        !w->model_proven || w->last_model >= c->queues.size()) {
      continue;
    }
    racing.try_emplace({c->key, w->last_model});
  }
  if (racing.empty()) return;
  const auto now = clock_.now();
  for (const auto& slot : workers_) {
    if (!slot || departed(slot->state)) continue;
    for (const auto& [id, key] : slot->leases) {
      const Campaign* c = campaign_by_key(key.campaign);
      if (c == nullptr) continue;
      auto it = racing.find({key.campaign, c->model_of(key.group)});
      if (it == racing.end()) continue;
      const Shard& s = c->groups[key.group].shards[key.shard];
      if (s.attempt_id != id || backup_of_.contains(id)) continue;  // a copy, or has one
      auto started = slot->lease_started.find(id);
      if (started == slot->lease_started.end() || started->second.queued) continue;
      const double elapsed = seconds_between(started->second.at, now);
      // Against finished attempts only: the estimate a group with none finished gets never falls
      // below what its running shards have taken, so none of them could ever be a straggler.
      const double reference = straggler_reference_seconds_on(*c, key.group, *slot);
      if (reference <= 0) continue;  // nothing finished to judge it by
      const double expected = expected_shard_seconds_on(*c, key.group, *slot);
      const double remaining = elapsed >= kStragglerFactor * reference
                                   ? std::numeric_limits<double>::infinity()
                                   : expected - elapsed;
      it->second.push_back(RunningCopy{key, slot->index, remaining});
    }
  }
  for (WorkerInfo* w : idle) {
    auto it = racing.find({w->last_campaign, w->last_model});
    if (it == racing.end()) continue;
    Campaign& c = *campaign_by_key(w->last_campaign);
    const auto& resources = c.spec.models[w->last_model].resources;
    while (w->free_slots() > 0 && !it->second.empty()) {
      auto gpus = place_shard(resources, w->labels, w->gpu_slots, false);
      if (!gpus) break;
      const auto pick = backup_copy_target(
          it->second, *w, [&](uint32_t group) { return expected_shard_seconds_on(c, group, *w); });
      if (!pick) break;
      const ShardKey key = it->second[*pick].key;
      it->second.erase(it->second.begin() + static_cast<std::ptrdiff_t>(*pick));
      lease_backup(c, key, *w, std::move(*gpus));
    }
  }
}

void Scheduler::check_unschedulable() {
  std::vector<const WorkerInfo*> connected;
  for (const auto& w : workers_) {
    if (w && !departed(w->state)) connected.push_back(w.get());
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
