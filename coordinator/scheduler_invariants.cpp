// Scheduler::check_invariants: the invariants listed in scheduler.hpp, checked against the whole
// state. Debug builds run it after every turn (Scheduler::end_turn) and the scheduler unit tests
// after every turn of theirs; a broken invariant is a bug in the scheduler, so it throws rather
// than trying to repair anything.
#include <algorithm>
#include <array>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "coordinator/scheduler.hpp"

namespace evald::coordinator {
namespace {

[[noreturn]] void broken(const char* invariant, const std::string& detail) {
  throw std::logic_error(std::string("scheduler invariant broken: ") + invariant + ": " + detail);
}

std::string where(const Campaign& c, uint32_t group, uint32_t shard) {
  return "campaign=" + c.id + " group=" + std::to_string(group) + " shard=" + std::to_string(shard);
}

}  // namespace

void Scheduler::check_invariants() const {
  constexpr const char* kOneLease = "a shard is running iff exactly one lease for it exists";
  constexpr const char* kCredit =
      "a worker never holds more leases than its slots and its queue; those beyond its slots are "
      "its queued leases, the latest sent";
  constexpr const char* kQueued =
      "every pending shard is ahead of its model's cursor, requeued, or backing off";
  constexpr const char* kGpus = "a GPU is busy iff exactly one of its worker's leases holds it";
  constexpr const char* kGivenUp =
      "an attempt given up is remembered iff its shard still awaits its result";
  constexpr const char* kCounts = "the per-campaign counters match the shards";
  constexpr const char* kBackup =
      "a backup copy is a lease of another worker on a running shard, at most one per shard";

  // Leases held by workers and by the orphan table, each pointing at its shard.
  for (const auto& slot : workers_) {
    if (!slot) continue;
    const WorkerInfo& w = *slot;
    const std::string who = "worker=" + w.name;
    if (departed(w.state) && !w.leases.empty()) {
      broken(kOneLease, who + " is " + to_string(w.state) + " but still holds " +
                            std::to_string(w.leases.size()) + " leases");
    }
    if (!departed(w.state) &&
        w.leases.size() > std::max(size_t{w.slots} + w.queue_ahead, w.leases_at_hello)) {
      broken(kCredit, who + " holds " + std::to_string(w.leases.size()) + " leases with " +
                          std::to_string(w.slots) + " slots and a queue of " +
                          std::to_string(w.queue_ahead));
    }
    const size_t beyond = w.leases.size() > w.slots ? w.leases.size() - w.slots : 0;
    if (w.queued.size() != beyond) {
      broken(kCredit, who + " has " + std::to_string(w.queued.size()) + " queued leases but " +
                          std::to_string(beyond) + " beyond its slots");
    }
    uint64_t previous = 0;
    for (uint64_t id : w.queued) {
      const auto started = w.lease_started.find(id);
      if (!w.leases.contains(id) || id <= previous || started == w.lease_started.end() ||
          !started->second.queued) {
        broken(kCredit, who + " has queued attempt_id=" + std::to_string(id) +
                            " that is not a queued lease in the order sent");
      }
      previous = id;
    }
    for (const auto& [id, started] : w.lease_started) {
      if (started.queued && std::find(w.queued.begin(), w.queued.end(), id) == w.queued.end()) {
        broken(kCredit, who + " has attempt_id=" + std::to_string(id) +
                            " marked queued but not in its queue");
      }
    }
    for (const auto& [id, key] : w.leases) {
      auto c = campaigns_.find(key.campaign);
      if (c == campaigns_.end() || key.group >= c->second->groups.size() ||
          key.shard >= c->second->groups[key.group].shards.size()) {
        broken(kOneLease, who + " holds attempt_id=" + std::to_string(id) + " of no shard");
      }
      const Shard& s = c->second->groups[key.group].shards[key.shard];
      if (auto copy = backups_.find(id); copy != backups_.end()) {
        // A backup copy: of a shard whose first copy runs on another worker, and its only copy.
        const auto of = backup_of_.find(s.attempt_id);
        if (s.state != ShardState::kRunning || copy->second.primary != s.attempt_id ||
            copy->second.worker != w.index || s.worker == w.index || !(copy->second.key == key) ||
            of == backup_of_.end() || of->second != id) {
          broken(kBackup, who + " holds backup copy attempt_id=" + std::to_string(id) + " of " +
                              where(*c->second, key.group, key.shard) + " which is " +
                              to_string(s.state) +
                              " with attempt_id=" + std::to_string(s.attempt_id));
        }
        continue;
      }
      if (s.state != ShardState::kRunning || s.attempt_id != id || s.worker != w.index) {
        broken(kOneLease, who + " holds attempt_id=" + std::to_string(id) + " of " +
                              where(*c->second, key.group, key.shard) + " which is " +
                              to_string(s.state) +
                              " with attempt_id=" + std::to_string(s.attempt_id));
      }
      if (orphans_.contains(id)) {
        broken(kOneLease, who + " and the orphan table both hold attempt_id=" + std::to_string(id));
      }
    }
    // GPUs: each index booked by at most one lease, busy exactly when booked.
    std::unordered_map<uint32_t, int> holders;
    for (const auto& [id, indexes] : w.lease_gpus) {
      if (!w.leases.contains(id)) {
        broken(kGpus, who + " books GPUs for attempt_id=" + std::to_string(id) +
                          ", which it does not hold");
      }
      for (uint32_t index : indexes) ++holders[index];
    }
    for (const GpuSlot& gpu : w.gpu_slots) {
      const int held = holders.contains(gpu.index) ? holders.at(gpu.index) : 0;
      if (held > 1 || gpu.busy != (held == 1)) {
        broken(kGpus, who + " gpu=" + std::to_string(gpu.index) + " busy=" +
                          (gpu.busy ? "true" : "false") + " held_by=" + std::to_string(held));
      }
    }
  }
  for (const auto& [id, copy] : backups_) {
    const WorkerInfo* holder =
        copy.worker < workers_.size() ? workers_[copy.worker].get() : nullptr;
    const auto of = backup_of_.find(copy.primary);
    if (holder == nullptr || !holder->leases.contains(id) || of == backup_of_.end() ||
        of->second != id) {
      broken(kBackup, "backup copy attempt_id=" + std::to_string(id) + " is held by no worker");
    }
  }
  if (backup_of_.size() != backups_.size()) {
    broken(kBackup, std::to_string(backup_of_.size()) + " shards with a copy, " +
                        std::to_string(backups_.size()) + " copies");
  }
  for (const auto& [id, orphan] : orphans_) {
    const ShardKey& key = orphan.key;
    auto c = campaigns_.find(key.campaign);
    if (c == campaigns_.end() || key.group >= c->second->groups.size() ||
        key.shard >= c->second->groups[key.group].shards.size()) {
      broken(kOneLease, "orphaned attempt_id=" + std::to_string(id) + " is of no shard");
    }
    const Shard& s = c->second->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id || s.worker != kNoWorker) {
      broken(kOneLease, "orphaned attempt_id=" + std::to_string(id) + " of " +
                            where(*c->second, key.group, key.shard) + " which is " +
                            to_string(s.state) +
                            " with attempt_id=" + std::to_string(s.attempt_id));
    }
  }

  // Where pending shards wait besides ahead of the cursor.
  std::set<std::tuple<uint32_t, uint32_t, uint32_t>> waiting;
  for (const auto& [when, key] : delayed_) waiting.emplace(key.campaign, key.group, key.shard);
  std::unordered_set<uint64_t> awaited;
  std::map<std::pair<uint32_t, uint32_t>, uint32_t> warm;  // (campaign, model) -> workers
  for (const auto& slot : workers_) {
    if (slot && slot->last_campaign != 0) ++warm[{slot->last_campaign, slot->last_model}];
  }

  for (const auto& [key, campaign] : campaigns_) {
    const Campaign& c = *campaign;
    for (uint32_t m = 0; m < c.queues.size(); ++m) {
      for (const ReadyRef& ref : c.queues[m].requeued) waiting.emplace(c.key, ref.group, ref.shard);
    }
    std::array<int64_t, kShardStateCount> counts{};
    std::vector<int64_t> pending(c.queues.size(), 0);
    for (uint32_t gi = 0; gi < c.groups.size(); ++gi) {
      const Group& g = c.groups[gi];
      for (uint32_t i = 0; i < g.shards.size(); ++i) {
        const Shard& s = g.shards[i];
        ++counts[static_cast<size_t>(s.state)];
        if (s.state == ShardState::kRunning) {
          const ShardKey self{c.key, gi, i};
          const WorkerInfo* holder =
              s.worker < workers_.size() ? workers_[s.worker].get() : nullptr;
          bool by_worker = false;
          if (holder != nullptr) {
            const auto lease = holder->leases.find(s.attempt_id);
            by_worker = lease != holder->leases.end() && lease->second == self;
          }
          const auto orphan = orphans_.find(s.attempt_id);
          const bool by_orphan = orphan != orphans_.end() && orphan->second.key == self;
          if (by_worker == by_orphan) {
            broken(kOneLease,
                   where(c, gi, i) + " is running with attempt_id=" + std::to_string(s.attempt_id) +
                       " held by " + (by_worker ? "a worker and the orphan table" : "nobody"));
          }
        }
        if (s.state == ShardState::kPending) {
          ++pending[c.model_of(gi)];
          if (!c.ahead_of_cursor(gi, i) && !waiting.contains({c.key, gi, i})) {
            broken(kQueued, where(c, gi, i) + " is pending behind the cursor and in no queue");
          }
        }
        if (s.stale_records > kMaxStaleRecordsPerShard) {
          broken(kGivenUp, where(c, gi, i) + " has " + std::to_string(s.stale_records) +
                               " stale records stored");
        }
        if (s.awaiting_given_up_attempt) {
          if (!given_up_by_.contains(s.attempt_id)) {
            broken(kGivenUp, where(c, gi, i) + " awaits attempt_id=" +
                                 std::to_string(s.attempt_id) + ", which is not remembered");
          }
          awaited.insert(s.attempt_id);
        }
      }
    }
    if (counts != c.counts) broken(kCounts, "campaign=" + c.id + " shard counts by state differ");
    int64_t held = 0;
    for (uint32_t m = 0; m < c.queues.size(); ++m) {
      const ModelQueue& q = c.queues[m];
      if (q.pending != pending[m]) {
        broken(kCounts, "campaign=" + c.id + " model=" + std::to_string(m) + " counts " +
                            std::to_string(q.pending) + " pending shards, has " +
                            std::to_string(pending[m]));
      }
      const auto w = warm.find({c.key, m});
      const uint32_t warm_workers = w == warm.end() ? 0 : w->second;
      if (q.warm_workers != warm_workers) {
        broken(kCounts, "campaign=" + c.id + " model=" + std::to_string(m) + " counts " +
                            std::to_string(q.warm_workers) + " warm workers, has " +
                            std::to_string(warm_workers));
      }
      held += q.warm_workers;
    }
    if (c.workers_held != held) {
      broken(kCounts, "campaign=" + c.id + " holds " + std::to_string(c.workers_held) +
                          " workers, its models " + std::to_string(held));
    }
  }
  for (const auto& [id, worker] : given_up_by_) {
    if (!awaited.contains(id)) {
      broken(kGivenUp, "attempt_id=" + std::to_string(id) + " of worker=" + worker +
                           " is remembered, but no shard awaits it");
    }
  }
}

}  // namespace evald::coordinator
