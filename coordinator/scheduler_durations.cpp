// Scheduler: how long shards run (coordinator/durations.hpp), learned from the attempts that
// finished and the ones still running, the models' pending GPU-seconds the dispatch rules weigh
// (docs/scheduling.md, "Expected GPU time"), and the capacity gauges an autoscaler reads.
#include <algorithm>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "coordinator/scheduler.hpp"
#include "coordinator/scheduler_internal.hpp"

namespace evald::coordinator {
using scheduler_detail::seconds_between;
namespace {

uint32_t examples_in(const Campaign& c, uint32_t group, uint32_t shard) {
  const auto range = shard_range(c.spec.benchmarks[c.groups[group].benchmark], shard);
  return static_cast<uint32_t>(std::max<int64_t>(0, range.end - range.start));
}

// What shards of group g took on workers of w's kind (finished attempts there), else `otherwise`.
double on_kind_or(const Group& g, const WorkerInfo& w, double otherwise) {
  if (w.kind < g.kind_expected_s.size() && g.kind_expected_s[w.kind] > 0) {
    return g.kind_expected_s[w.kind];
  }
  return otherwise;
}

}  // namespace

std::string scheduler_detail::labels_key(const nlohmann::json& labels) {
  std::string out;
  if (!labels.is_object()) return out;
  for (const auto& [key, value] : labels.items()) {  // nlohmann keeps object keys sorted
    if (!out.empty()) out += ',';
    out += key + '=' + (value.is_string() ? value.get<std::string>() : value.dump());
  }
  return out;
}

void Scheduler::learn_duration(Campaign& c, uint32_t group, WorkerInfo* holder, bool cold,
                               const protocol::ShardResult& r, uint32_t examples) {
  Group& g = c.groups[group];
  if (examples > 0) {
    const double per_example =
        static_cast<double>(r.duration_ms) / 1000.0 / static_cast<double>(examples);
    g.samples.add(per_example, cold);
    // The group's first finished shard: its estimate from finished attempts exists from the next
    // dispatch on, not a gauge interval later (rule 11 needs it to queue short shards ahead).
    if (g.finished_shard_s == 0) estimates_stale_ = true;
    // And for the worker's kind: a node of another GPU model (or a slower one with other labels)
    // keeps its own estimate, which backup copies (dispatch rule 10) compare.
    if (holder != nullptr && holder->kind != kNoKind) {
      if (g.kind_samples.size() <= holder->kind) g.kind_samples.resize(holder->kind + 1);
      g.kind_samples[holder->kind].add(per_example, cold);
    }
  }
  // The worker has finished a shard of the model it is committed to: it has the model loaded, so
  // its next shards of it are warm.
  if (holder != nullptr && holder->last_campaign == c.key && holder->last_model == g.model) {
    holder->model_proven = true;
  }
}

double Scheduler::expected_shard_seconds_on(const Campaign& c, uint32_t group,
                                            const WorkerInfo& w) const {
  const Group& g = c.groups[group];
  return on_kind_or(g, w, g.expected_shard_s);
}

double Scheduler::straggler_reference_seconds_on(const Campaign& c, uint32_t group,
                                                 const WorkerInfo& w) const {
  const Group& g = c.groups[group];
  return on_kind_or(g, w, g.finished_shard_s);
}

uint32_t Scheduler::kind_of(const WorkerInfo& w) {
  // Placement looks at labels and GPU memory; speed differs with the GPU model, which only its
  // name tells (nvidia-smi's "NVIDIA H100 80GB HBM3").
  std::string key = w.labels.dump();
  if (w.gpus.is_array()) {
    for (const auto& gpu : w.gpus) {
      if (!gpu.is_object()) continue;
      key += '|';
      if (auto name = gpu.find("name"); name != gpu.end() && name->is_string()) {
        key += name->get<std::string>();
      }
      if (auto memory = gpu.find("memory_mib"); memory != gpu.end()) key += ':' + memory->dump();
    }
  }
  if (auto it = kind_ids_.find(key); it != kind_ids_.end()) return it->second;
  if (kind_ids_.size() >= kMaxWorkerKinds) return kNoKind;
  const auto id = static_cast<uint32_t>(kind_ids_.size());
  kind_ids_.emplace(std::move(key), id);
  return id;
}

void Scheduler::adopt_recovered_samples(const WorkerInfo& w) {
  auto it = recovered_samples_.find(w.name);
  if (it == recovered_samples_.end()) return;
  if (w.kind != kNoKind) {
    for (const RecoveredSample& sample : it->second) {
      Campaign* c = campaign_by_key(sample.campaign);
      if (c == nullptr || sample.group >= c->groups.size()) continue;
      auto& kinds = c->groups[sample.group].kind_samples;
      if (kinds.size() <= w.kind) kinds.resize(w.kind + 1);
      // Which attempts were cold is not stored: all count as warm, as for the group's samples.
      kinds[w.kind].add(sample.seconds_per_example, /*cold=*/false);
    }
  }
  recovered_samples_.erase(it);
  estimates_stale_ = true;
}

void Scheduler::refresh_estimates() {
  estimates_stale_ = false;
  const auto now = clock_.now();
  // The longest-running current attempt of each group, per example: a lower bound of its shards.
  // Only warm attempts: a cold one's elapsed time is mostly its model's load, and a 20-example
  // shard that waited 10 minutes for a load would make its model look 10 times slower.
  std::unordered_map<uint64_t, double> running;  // campaign << 32 | group -> seconds per example
  for (const auto& slot : workers_) {
    if (!slot) continue;
    for (const auto& [attempt_id, key] : slot->leases) {
      auto started = slot->lease_started.find(attempt_id);
      const Campaign* c = campaign_by_key(key.campaign);
      if (started == slot->lease_started.end() || started->second.cold || started->second.queued ||
          c == nullptr) {
        continue;
      }
      const uint32_t examples = examples_in(*c, key.group, key.shard);
      if (examples == 0) continue;
      const double per_example = seconds_between(started->second.at, now) / examples;
      double& longest = running[uint64_t{key.campaign} << 32 | key.group];
      longest = std::max(longest, per_example);
    }
  }
  // One connected worker of each labels and GPU layout, with the GPUs of all such workers.
  std::map<std::string, std::pair<const WorkerInfo*, int64_t>> layouts;
  for (const auto& slot : workers_) {
    if (!slot || slot->state != WorkerState::kConnected) continue;
    // Built once at HELLO: this runs four times a second over every worker.
    auto& [worker, gpus] = layouts[slot->placement_key];
    worker = slot.get();
    gpus += static_cast<int64_t>(slot->gpu_slots.size());
  }
  std::vector<GroupTimes> times;
  std::vector<std::optional<double>> finished;
  for (auto& [key, c] : campaigns_) {
    if (c->state != CampaignState::kRunning) continue;
    for (uint32_t m = 0; m < c->queues.size(); ++m) {
      int64_t eligible = 0;
      for (const auto& [layout, kind] : layouts) {
        if (place_shard(c->spec.models[m].resources, kind.first->labels, kind.first->gpu_slots,
                        true)) {
          eligible += kind.second;
        }
      }
      c->queues[m].eligible_gpus = eligible;
    }
    times.assign(c->groups.size(), GroupTimes{});
    for (uint32_t gi = 0; gi < c->groups.size(); ++gi) {
      const Group& g = c->groups[gi];
      times[gi].finished_per_example = g.samples.median();
      if (auto it = running.find(uint64_t{c->key} << 32 | gi); it != running.end()) {
        times[gi].running_per_example = it->second;
      }
      times[gi].shard_size =
          static_cast<uint32_t>(std::max<int64_t>(1, c->spec.benchmarks[g.benchmark].shard_size));
    }
    const auto expected =
        expected_shard_seconds(static_cast<uint32_t>(c->spec.models.size()),
                               static_cast<uint32_t>(c->spec.benchmarks.size()), times, &finished);
    for (auto& q : c->queues) q.pending_gpu_s = 0;
    for (uint32_t gi = 0; gi < c->groups.size(); ++gi) {
      Group& g = c->groups[gi];
      g.expected_shard_s = expected[gi];
      g.finished_shard_s = finished[gi].value_or(0.0);
      g.kind_expected_s.assign(g.kind_samples.size(), 0.0);
      for (size_t k = 0; k < g.kind_samples.size(); ++k) {
        if (auto median = g.kind_samples[k].median()) {
          g.kind_expected_s[k] = std::max(*median * times[gi].shard_size, kMinShardSeconds);
        }
      }
      ModelQueue& q = c->queues[g.model];
      q.pending_gpu_s += static_cast<double>(g.pending) * g.expected_shard_s * q.gpus;
    }
  }
}

void Scheduler::refresh_capacity_gauges() {
  // One worker of each kind and GPU layout stands for all of them: placement only looks at
  // labels and GPUs, and a fleet of a thousand workers has a handful of layouts.
  std::map<std::string, std::map<std::string, const WorkerInfo*>> kinds;
  std::map<std::string, std::pair<int64_t, int64_t>> idle_busy;
  for (const auto& slot : workers_) {
    if (!slot) continue;
    kinds[slot->labels_key].emplace(slot->gpu_layout, slot.get());
    auto& [idle, busy] = idle_busy[slot->labels_key];
    if (slot->state == WorkerState::kConnected) ++(slot->leases.empty() ? idle : busy);
  }
  std::map<std::string, double> pending;
  for (const auto& [kind, layouts] : kinds) pending[kind] = 0;
  double all = 0;
  for (const auto& [key, c] : campaigns_) {
    if (c->state != CampaignState::kRunning) continue;
    for (uint32_t m = 0; m < c->queues.size(); ++m) {
      const ModelQueue& q = c->queues[m];
      if (q.pending == 0) continue;
      all += q.pending_gpu_s;
      for (const auto& [kind, layouts] : kinds) {
        for (const auto& [layout, w] : layouts) {
          if (place_shard(c->spec.models[m].resources, w->labels, w->gpu_slots, true)) {
            pending[kind] += q.pending_gpu_s;
            break;
          }
        }
      }
    }
  }
  for (const auto& kind : capacity_kinds_) {
    if (kinds.contains(kind)) continue;
    metrics_.pending_gpu_seconds.Remove(&metrics_.pending_gpu_seconds.Add({{"labels", kind}}));
    metrics_.workers_idle.Remove(&metrics_.workers_idle.Add({{"labels", kind}}));
    metrics_.workers_busy.Remove(&metrics_.workers_busy.Add({{"labels", kind}}));
  }
  capacity_kinds_.clear();
  for (const auto& [kind, seconds] : pending) {
    capacity_kinds_.push_back(kind);
    metrics_.pending_gpu_seconds.Add({{"labels", kind}}).Set(seconds);
    const auto& [idle, busy] = idle_busy[kind];
    metrics_.workers_idle.Add({{"labels", kind}}).Set(static_cast<double>(idle));
    metrics_.workers_busy.Add({{"labels", kind}}).Set(static_cast<double>(busy));
  }
  metrics_.pending_gpu_seconds.Add({{"labels", "all"}}).Set(all);
}

}  // namespace evald::coordinator
