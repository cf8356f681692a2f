// Scheduler: the worker protocol. HELLO, RESULTS, HEARTBEAT, HAND_BACK and DRAIN from workers,
// result validation and the lease-holder checks that make counting exactly-once.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <unordered_set>

#include "common/json_fields.hpp"
#include "common/utf8.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/scheduler_internal.hpp"

namespace evald::coordinator {

namespace {

// Hand-backs per attempt budget that do not use an attempt (see give_back).
constexpr uint8_t kFreeHandBacks = 3;

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
  if (auto why = check_result_provenance(r)) return *why;
  return std::nullopt;
}

// A JSON value from a HELLO kept only if it is small: `limit` bytes as JSON.
bool fits(const nlohmann::json& value, size_t limit) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).size() <= limit;
}

// What a worker says about its model servers is kept bounded, like the rest of its HELLO: at
// most 64 servers, names as long as a spec allows, valid UTF-8.
std::vector<protocol::WarmModel> bounded_warm(std::vector<protocol::WarmModel> warm) {
  std::vector<protocol::WarmModel> kept;
  for (auto& server : warm) {
    if (kept.size() >= 64) break;
    if (server.model.empty() || server.model.size() > kMaxNameLength ||
        !utf8::is_valid(server.model) || server.gpus.size() > 1024) {
      continue;
    }
    kept.push_back(std::move(server));
  }
  return kept;
}

}  // namespace

std::optional<std::string> scheduler_detail::invalid_shard_result(
    const protocol::ShardResult& r, int64_t shard_size, const std::string& primary_metric) {
  return invalid_result(r, shard_size, primary_metric);
}

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
  const bool known = w != nullptr && !departed(w->state);
  if (std::holds_alternative<protocol::Hello>(message)) {
    on_hello(identity, std::move(std::get<protocol::Hello>(message)));
  } else if (std::holds_alternative<protocol::Results>(message)) {
    if (known) w->last_seen = clock_.now();
    on_results(identity, std::move(std::get<protocol::Results>(message)));
    if (!known) outgoing_.send(identity, protocol::ReHello{});
  } else if (std::holds_alternative<protocol::Heartbeat>(message)) {
    if (known) {
      w->last_seen = clock_.now();
      if (auto& status = std::get<protocol::Heartbeat>(message).status) {
        apply_serve_status(*w, std::move(*status));
      }
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
      spdlog::info("worker_draining worker={} running={}", w->name, w->leases.size());
    } else {
      reject("unknown_worker");  // a drain changes only its own sender's state
      outgoing_.send(identity, protocol::ReHello{});
    }
  } else if (std::holds_alternative<protocol::Goodbye>(message)) {
    if (known) {
      on_goodbye(*w);
    } else {
      // Declared lost before it said goodbye (or never known): its shards went back then.
      spdlog::info("goodbye_ignored reason=unknown_worker worker={}", identity);
    }
  } else {
    metrics_.messages_malformed.Increment();
    spdlog::warn("message_dropped worker={} reason=\"{} is not a worker-to-coordinator message\"",
                 identity, protocol::to_string(protocol::type_of(message)));
  }
}

void Scheduler::apply_serve_status(WorkerInfo& w, protocol::ServeStatus status) {
  auto warm = bounded_warm(std::move(status.warm));
  for (const auto& server : warm) {
    if (std::find(w.warm.begin(), w.warm.end(), server) != w.warm.end()) continue;
    // One load however many campaigns it serves; a HELLO's servers (a reconnect, a restarted
    // coordinator) are not new loads. Only models some campaign has get a series: the names
    // come from the worker.
    const bool known = std::any_of(campaigns_.begin(), campaigns_.end(), [&](const auto& entry) {
      const auto& models = entry.second->spec.models;
      return std::any_of(models.begin(), models.end(),
                         [&](const ModelSpec& m) { return m.name == server.model; });
    });
    if (known) {
      metrics_.model_loads.Add({{"model", server.model}}).Increment();
      if (server.load_ms > 0) {
        metrics_.model_load_seconds.Observe(static_cast<double>(server.load_ms) / 1000.0);
      }
    }
    std::unordered_set<uint32_t> counted;
    for (const auto& [attempt_id, key] : w.leases) {
      Campaign* c = campaign_by_key(key.campaign);
      if (c == nullptr) continue;
      const ModelSpec& model = c->spec.models[c->model_of(key.group)];
      if (model.name != server.model) continue;
      serve_backoff_.record_load(w.name, model);  // it started after all
      if (counted.insert(c->key).second) ++c->model_loads[server.model];
    }
    spdlog::info("model_loaded worker={} model={} campaigns={}", w.name, server.model,
                 counted.size());
  }
  w.warm = std::move(warm);
  w.loading.clear();
  for (const uint64_t attempt_id : status.loading) {
    if (w.loading.size() >= kMaxHelloRunning) break;
    if (w.leases.contains(attempt_id)) w.loading.insert(attempt_id);
  }
}

void Scheduler::on_hello(const std::string& identity, protocol::Hello hello) {
  const auto now = clock_.now();
  // The routing id becomes the worker's name in every response and on /metrics, and must stay
  // byte-exact to route replies: a name that is not valid UTF-8 is refused, not rewritten.
  if (identity.empty() || !utf8::is_valid(identity)) {
    metrics_.messages_malformed.Increment();
    spdlog::warn("hello_refused routing_id={} reason=\"name is not valid UTF-8\"",
                 utf8::sanitize_bounded(identity, 64));
    return;
  }
  // Bound what a HELLO can make us keep; what is dropped is counted and logged once per HELLO.
  auto count_dropped = [&](const char* field, size_t count) {
    if (count == 0) return;
    metrics_.hello_items_dropped.Add({{"field", field}}).Increment(static_cast<double>(count));
    spdlog::warn("hello_items_dropped worker={} field={} dropped={}", identity, field, count);
  };
  if (hello.instance.size() > kMaxInstanceBytes || !utf8::is_valid(hello.instance)) {
    hello.instance = utf8::sanitize_bounded(hello.instance, kMaxInstanceBytes);
    count_dropped("instance", 1);
  }
  if (hello.host.size() > kMaxHostBytes || !utf8::is_valid(hello.host)) {
    hello.host = utf8::sanitize_bounded(hello.host, kMaxHostBytes);
    count_dropped("host", 1);
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
        // An entry without an index is of no use (placement and provenance look GPUs up by it)
        // and must not reach code that reads the index as a number.
        const auto index = integer_field(gpu, "index");
        if (kept.size() < kMaxHelloGpus && fits(gpu, kMaxHelloGpuBytes) && index && *index >= 0 &&
            *index <= UINT32_MAX) {
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
    spdlog::warn("hello_name_differs name={} routing_id={} note=\"using the routing id\"",
                 utf8::sanitize_bounded(hello.name, 256), identity);
  }
  if (hello.slots == 0) {
    spdlog::warn("hello_zero_slots worker={} note=\"treating it as 1\"", identity);
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
  }
  // A known worker that had none (the cap was reached then) gets its series once there is room.
  if (w->slots_used == nullptr && workers_with_series_ < options_.max_worker_series) {
    ++workers_with_series_;
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
    const bool never_started = w->is_queued(id);
    release_lease(*w, id);
    // The ASSIGN may still be in flight behind this HELLO; tell the worker not to run it, so
    // both sides agree on its free slots.
    outgoing_.cancel(identity, id);
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    Shard& s = c->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    if (never_started) {
      give_back(*c, key, w->name, restarted ? "restarted before it started it" : "never received");
      continue;
    }
    const std::string why = restarted ? "worker lost: " + w->name + " (restarted while running it)"
                                      : "worker lost: " + w->name + " (assignment not received)";
    if (promote_backup(*c, key, AttemptOutcome::kLost, w->name, why)) continue;
    fail_attempt(*c, key.group, key.shard, AttemptOutcome::kLost, why, w->name, 0,
                 /*counts_as_attempt=*/restarted);
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
      spdlog::warn(
          "lease_reclaim_refused reason=not_lease_holder worker={} attempt_id={} holder={}",
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
          spdlog::info("lease_reclaimed worker={} campaign={} attempt_id={}", w->name, c->id, id);
          continue;
        }
      }
    }
    outgoing_.cancel(identity, id);
  }
  // A new process has nothing loaded: its next shards pay a load, whatever it ran before.
  if (restarted) w->model_proven = false;
  w->instance = hello.instance;
  w->host = std::move(hello.host);
  w->state = WorkerState::kConnected;
  estimates_stale_ = true;
  w->slots = hello.slots;
  if (hello.queue_ahead > kMaxQueueAhead) {
    spdlog::warn("hello_queue_ahead_capped worker={} queue_ahead={} limit={}", identity,
                 hello.queue_ahead, kMaxQueueAhead);
  }
  w->queue_ahead = std::min(hello.queue_ahead, kMaxQueueAhead);
  // Its leases beyond its slots are queued there: the latest sent, which have the highest ids.
  // What was queued before may run now (the worker may have more slots): its clock starts.
  for (uint64_t id : w->queued) {
    if (auto started = w->lease_started.find(id); started != w->lease_started.end()) {
      started->second = WorkerInfo::LeaseStart{now, true, false};
    }
  }
  w->queued.clear();
  // A worker restarted with fewer slots or a shorter queue may hold more than its credit (its
  // outbox's results still hold their leases): no more until it is back under it.
  w->leases_at_hello = w->leases.size();
  if (w->leases.size() > w->slots) {
    std::vector<uint64_t> ids;
    ids.reserve(w->leases.size());
    for (const auto& [id, key] : w->leases) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    w->queued.assign(ids.end() - static_cast<std::ptrdiff_t>(w->leases.size() - w->slots),
                     ids.end());
    // (A reclaimed lease has no start of ours; a queued one starts when a slot frees for it.)
    for (uint64_t id : w->queued) {
      w->lease_started.try_emplace(id, WorkerInfo::LeaseStart{now, true}).first->second.queued =
          true;
    }
  }
  w->gpu_slots = parse_worker_gpus(hello.gpus);
  for (const auto& [held, indexes] : w->lease_gpus) mark_gpus(*w, indexes, true);
  w->gpus = std::move(hello.gpus);
  w->labels = std::move(hello.labels);
  w->kind = kind_of(*w);
  w->labels_key = scheduler_detail::labels_key(w->labels);
  w->gpu_layout.clear();
  for (const auto& gpu : w->gpu_slots) {
    w->gpu_layout += std::to_string(gpu.memory_mib.value_or(-1)) + ',';
  }
  w->placement_key = w->labels.dump() + '|' + w->gpu_layout;
  adopt_recovered_samples(*w);
  // Servers it already has (we may have restarted): affinity prefers them; no load is counted.
  w->warm = bounded_warm(std::move(hello.warm));
  w->loading.clear();
  w->last_seen = now;
  w->last_sent = now;
  w->campaigns_sent.clear();
  lost_at_.erase(w->index);
  wake_worker_timers();
  outgoing_.send(identity,
                 protocol::Welcome{static_cast<uint32_t>(options_.heartbeat.count()),
                                   static_cast<uint32_t>(options_.worker_timeout.count()), epoch_});
  spdlog::info(
      "worker_connected worker={} slots={} queue_ahead={} gpus={} running={} queued={} "
      "restarted={}",
      w->name, w->slots, w->queue_ahead, w->gpus.size(), w->running(), w->queued.size(), restarted);
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
        "result_rejected reason=unknown_shard worker={} campaign={} model={} benchmark={} "
        "shard={} attempt_id={}",
        identity, r.campaign, r.model, r.benchmark, r.shard, r.attempt_id);
    // Nothing is stored; the ACK lets a worker drop a result no one can ever use.
    outgoing_.ack(identity, r.attempt_id);
    return;
  }
  if (backups_.contains(r.attempt_id)) return on_backup_result(w, identity, r);
  const auto gi = static_cast<uint32_t>(r.model * benchmarks + r.benchmark);
  Group& g = c->groups[gi];
  Shard& s = g.shards[r.shard];
  const ShardKey key{c->key, gi, r.shard};
  const bool current_id = s.attempt_id == r.attempt_id && s.attempt_id != 0;
  auto refuse = [&](const char* reason) {
    reject(reason);
    spdlog::warn("result_rejected reason={} worker={} campaign={} shard={} attempt_id={} state={}",
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
        "late_result_counted campaign={} shard={} attempt_id={} "
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
  // Whether the attempt's time includes a model load; unknown (so assumed) for a lease reclaimed
  // after a restart or a late result of a given-up attempt.
  bool cold = true;
  if (holder != nullptr) {
    if (auto started = holder->lease_started.find(r.attempt_id);
        started != holder->lease_started.end()) {
      cold = started->second.cold;
    }
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
    // Samples are served and used for statistics only for counted results: a result without
    // any must not leave an earlier (rerun) result's samples standing in for its own. A rerun
    // deletes them when it requeues a succeeded shard; a shard on its first attempt never had
    // any, so only a later attempt pays for the delete (samples that a rerun by an older binary
    // left behind go at recovery, scheduler_recovery.cpp).
    if (!r.samples_json.empty()) {
      batch_.put_samples(key, r.samples_json);
    } else if (s.total_attempts > 1) {
      batch_.delete_samples(key);
    }
    record_provenance(*c, key, holder != nullptr ? holder : w, worker_name, r);
    g.completed->Increment();
    g.duration->Observe(r.duration_ms / 1000.0);
    learn_duration(*c, gi, holder, cold, r, static_cast<uint32_t>(range.end - range.start));
    maybe_finish(*c);
    return;
  }
  if (r.failure == protocol::FailureKind::kServerStart) {
    serve_backoff_.record_failure(worker_name, holder != nullptr ? holder->instance : "",
                                  c->spec.models[g.model], r.server_start, r.failure_reason,
                                  clock_.now(), clock_.wall_ms());
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
        "stale_result_not_stored campaign={} shard={} attempt_id={} worker={} reason=\"{} "
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
      "stale_result_stored campaign={} shard={} attempt_id={} worker={} current_attempt_id={} "
      "state={}",
      c.id, index, r.attempt_id, identity, s.attempt_id, to_string(s.state));
}

void Scheduler::hand_back_orphans(const std::string& identity,
                                  const protocol::HandBack& hand_back) {
  for (uint64_t id : hand_back.attempt_ids) {
    auto o = orphans_.find(id);
    if (o == orphans_.end() || o->second.worker != identity) {
      reject("not_lease_holder");
      spdlog::info("hand_back_ignored reason=unknown_worker worker={} attempt_id={}", identity, id);
      continue;
    }
    const ShardKey key = o->second.key;
    orphans_.erase(o);
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    Shard& s = c->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    give_back(*c, key, identity, "stopping: drain timeout");
  }
}

void Scheduler::give_back(Campaign& c, const ShardKey& key, const std::string& worker,
                          const std::string& why) {
  Shard& s = c.groups[key.group].shards[key.shard];
  // The worker is leaving (drain timeout on SIGTERM, e.g. a preempted Slurm job), not failing
  // the shard: it goes back to the queue at once and keeps its attempt budget. Only the first
  // few times, though: a shard that outlives every worker it is given (longer than the jobs
  // that run them) must still end failed rather than circle forever.
  const bool free_of_charge = s.hand_backs < kFreeHandBacks;
  if (free_of_charge) ++s.hand_backs;
  fail_attempt(c, key.group, key.shard, AttemptOutcome::kHandedBack,
               "handed back unfinished by worker " + worker + " (" + why + ")" +
                   (free_of_charge ? "" : "; handed back too often, counts as an attempt"),
               worker, 0, /*counts_as_attempt=*/!free_of_charge);
}

void Scheduler::on_hand_back(WorkerInfo& w, const protocol::HandBack& hand_back) {
  for (uint64_t id : hand_back.attempt_ids) {
    auto lease = w.leases.find(id);
    if (lease == w.leases.end()) {
      reject("not_lease_holder");
      spdlog::info("hand_back_ignored reason=not_lease_holder worker={} attempt_id={}", w.name, id);
      continue;
    }
    const ShardKey key = lease->second;
    // Queued there for a slot (dispatch rule 11): it never started, so it costs nothing, not
    // even one of the free hand-backs.
    const bool never_started = w.is_queued(id);
    release_lease(w, id);
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    Shard& s = c->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    if (never_started) {
      fail_attempt(*c, key.group, key.shard, AttemptOutcome::kHandedBack,
                   "handed back unstarted by worker " + w.name +
                       " (stopping: it was queued there for a slot)",
                   w.name, 0, /*counts_as_attempt=*/false);
      continue;
    }
    if (promote_backup(
            *c, key, AttemptOutcome::kHandedBack, w.name,
            "handed back unfinished by worker " + w.name + " (stopping: drain timeout)")) {
      continue;
    }
    give_back(*c, key, w.name, "stopping: drain timeout");
  }
}

void Scheduler::lose_worker(WorkerInfo& w, const std::string& reason) {
  spdlog::warn("worker_lost worker={} reason=\"{}\" leases={}", w.name, reason, w.leases.size());
  metrics_.worker_losses.Increment();
  if (w.slots_used != nullptr) metrics_.workers_lost.Add({{"worker", w.name}}).Increment();
  w.state = WorkerState::kLost;
  lost_at_[w.index] = clock_.now();
  wake_worker_timers();
  // Queued there for a slot, never started: back like a hand-back (free the first few times, so
  // a worker that keeps crashing still cannot circle a shard forever).
  const std::unordered_set<uint64_t> never_started(w.queued.begin(), w.queued.end());
  end_leases(w, [&](Campaign& c, const ShardKey& key) {
    if (never_started.contains(c.groups[key.group].shards[key.shard].attempt_id)) {
      give_back(c, key, w.name, "lost before it started it: it was queued there for a slot");
      return;
    }
    const std::string why = "worker lost: " + w.name;
    if (promote_backup(c, key, AttemptOutcome::kLost, w.name, why)) return;
    fail_attempt(c, key.group, key.shard, AttemptOutcome::kLost, why, w.name, 0,
                 /*counts_as_attempt=*/true);
  });
}

void Scheduler::on_goodbye(WorkerInfo& w) {
  // A lease the worker never reported was an ASSIGN that crossed its DRAIN and reached it after
  // it had finished: it never ran. (Anything it ran was reported before the GOODBYE, on the same
  // connection, and ZeroMQ keeps the order.) Without the GOODBYE such a shard would wait for the
  // worker timeout and then use up an attempt.
  const size_t unreported = end_leases(w, [&](Campaign& c, const ShardKey& key) {
    const std::string why = "assigned while it drained, never started: it left";
    if (promote_backup(c, key, AttemptOutcome::kHandedBack, w.name,
                       "handed back unfinished by worker " + w.name + " (" + why + ")")) {
      return;
    }
    give_back(c, key, w.name, why);
  });
  spdlog::info("worker_left worker={} state={} unreported={}", w.name, to_string(w.state),
               unreported);
  metrics_.workers_left.Increment();
  w.state = WorkerState::kLeft;
  // Its per-worker series go now (a heartbeat age that grows would read as a lost worker); the
  // worker itself stays listed, and its kind in the capacity gauges, until it is forgotten like
  // a lost one: an autoscaler that sees its pool's kind go at once would take the pool for one
  // the coordinator never saw and size it from all pending work.
  forget_worker_metrics(w);
  lost_at_[w.index] = clock_.now();
  wake_worker_timers();
}

size_t Scheduler::end_leases(WorkerInfo& w,
                             const std::function<void(Campaign&, const ShardKey&)>& end_shard) {
  auto leases = std::move(w.leases);
  w.leases.clear();
  w.lease_gpus.clear();
  w.lease_started.clear();
  w.queued.clear();
  for (auto& slot : w.gpu_slots) slot.busy = false;
  w.campaigns_sent.clear();
  set_last_model(w, nullptr, 0);
  for (const auto& [id, key] : leases) {
    if (backups_.contains(id)) {
      // A backup copy that ended with its worker: the shard's first copy runs on.
      forget_backup(id);
      metrics_.backup_copies.Add({{"outcome", "dropped"}}).Increment();
      continue;
    }
    Campaign* c = campaign_by_key(key.campaign);
    if (c == nullptr) continue;
    const Shard& s = c->groups[key.group].shards[key.shard];
    if (s.state != ShardState::kRunning || s.attempt_id != id) continue;
    end_shard(*c, key);
  }
  return leases.size();
}

}  // namespace evald::coordinator
