// Scheduler: provenance records and reuse (docs/results.md).
//
// Provenance: every counted result gets a record (store key 'p'), staged in the same batch as the
// result itself, so a result is never counted without its record, nor the other way round. Exec
// results are also entered in the reuse index (key 'r': shard identity -> shard and attempt).
//
// Reuse: at submit, a campaign with "reuse": true looks up every shard's identity. A hit counts
// only if the indexed shard still holds that attempt's success (a rerun since then replaced it,
// and its own success re-indexes the identity); the shard then becomes `succeeded` in the submit's
// batch with the earlier metrics, count, samples and provenance (marked reused_from), through the
// same aggregate cell path as a result. So a crash before the commit leaves no campaign at all,
// and after it the campaign is exactly as if its reused shards had run.
//
// Thread: core thread, like the rest of the scheduler.
#include <spdlog/spdlog.h>

#include "common/json_limits.hpp"
#include "common/sha256.hpp"
#include "coordinator/provenance.hpp"
#include "coordinator/scheduler.hpp"

namespace evald::coordinator {
namespace {

// Identities are cached per group while a campaign is being checked or its results arrive; a
// bound keeps a million-group campaign from holding them all.
constexpr size_t kMaxCachedIdentities = 4096;
constexpr size_t kMaxCachedSpecs = 16;

}  // namespace

const ShardIdentity& Scheduler::identity_of(const Campaign& c, uint32_t group) {
  const uint64_t cache_key = (uint64_t{c.key} << 32) | group;
  if (auto it = identities_.find(cache_key); it != identities_.end()) return it->second;
  if (identities_.size() >= kMaxCachedIdentities) identities_.clear();
  // The parsed spec is cached too: a spec can be a megabyte, and a campaign has a group per
  // model x benchmark.
  auto spec = canonical_specs_.find(c.key);
  if (spec == canonical_specs_.end()) {
    if (canonical_specs_.size() >= kMaxCachedSpecs) canonical_specs_.clear();
    spec = canonical_specs_.emplace(c.key, nlohmann::json::parse(c.spec_json)).first;
  }
  const Group& g = c.groups[group];
  return identities_.emplace(cache_key, ShardIdentity(spec->second, g.model, g.benchmark))
      .first->second;
}

void Scheduler::record_provenance(const Campaign& c, const ShardKey& key, const WorkerInfo* who,
                                  const std::string& worker_name, const protocol::ShardResult& r) {
  static const nlohmann::json kNoGpus = nlohmann::json::array();
  static const std::string kNoHost;
  const ProvenanceContext context{c.spec, c.spec_sha256, worker_name,
                                  who != nullptr ? who->host : kNoHost,
                                  who != nullptr ? who->gpus : kNoGpus};
  // GPU names come from a HELLO, which is bounded but not UTF-8 checked: provenance_text
  // replaces invalid UTF-8, and reads an entry's index only where it is an integer.
  batch_.put_provenance(key, provenance_text(context, r));
  if (c.spec.runner.type != RunnerType::kExec) return;  // noop results cost nothing to redo
  const auto range = shard_range(c.spec.benchmarks[c.groups[key.group].benchmark], key.shard);
  batch_.put_reuse(identity_of(c, key.group).of(range.start, range.end), key, r.attempt_id);
}

int64_t Scheduler::apply_reuse(Campaign& c) {
  if (!c.spec.reuse || c.spec.runner.type != RunnerType::kExec) return 0;
  int64_t reused = 0;
  int64_t stale_entries = 0;
  for (uint32_t gi = 0; gi < c.groups.size(); ++gi) {
    Group& g = c.groups[gi];
    const auto& benchmark = c.spec.benchmarks[g.benchmark];
    for (uint32_t index = 0; index < g.shards.size(); ++index) {
      const auto range = shard_range(benchmark, index);
      const auto source = store_.get_reuse(identity_of(c, gi).of(range.start, range.end));
      if (!source) continue;
      const Campaign* from = campaign_by_key(source->shard.campaign);
      const auto record = store_.get_shard(source->shard);
      if (from == nullptr || from == &c || !record || record->state != ShardState::kSucceeded ||
          record->attempt_id != source->attempt_id) {
        ++stale_entries;
        continue;
      }
      const ShardKey key{c.key, gi, index};
      Shard& s = g.shards[index];
      set_state(c, gi, s, ShardState::kSucceeded);
      g.cell.add(record->metrics, record->count);
      if (!g.cell_dirty) {
        g.cell_dirty = true;
        dirty_cells_.emplace_back(c.key, gi);
      }
      ShardRecord rec;
      rec.state = ShardState::kSucceeded;
      rec.worker = record->worker;
      rec.started_at_ms = record->started_at_ms;
      rec.duration_ms = record->duration_ms;
      rec.count = record->count;
      rec.metrics = record->metrics;
      rec.reused_from_campaign = from->id;
      rec.reused_from_attempt = source->attempt_id;
      batch_.put_shard(key, rec);
      if (auto samples = store_.get_samples(source->shard)) batch_.put_samples(key, *samples);
      if (auto text = store_.get_provenance(source->shard)) {
        auto provenance = parse_json_bounded(*text);
        if (provenance.ok() && provenance->is_object()) {
          (*provenance)["reused_from"] = {{"campaign", from->id},
                                          {"attempt_id", source->attempt_id}};
          batch_.put_provenance(key, provenance->dump());
        }
      }
      g.completed->Increment();
      ++reused;
    }
  }
  if (reused > 0 || stale_entries > 0) {
    metrics_.shards_reused.Increment(static_cast<double>(reused));
    spdlog::info("campaign_reuse campaign={} reused={} shards={} stale_index_entries={}", c.id,
                 reused, c.total, stale_entries);
  }
  return reused;
}

}  // namespace evald::coordinator
