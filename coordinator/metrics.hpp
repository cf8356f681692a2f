// Metrics: the coordinator's Prometheus registry and the handles the core updates. prometheus-cpp
// metrics are atomics, so the HTTP thread may serialize while the core thread updates; the core
// caches per-label handles (Family::Add is a map lookup) so the hot path does no lookups.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace evald::coordinator {

// Buckets for evald_shard_duration_seconds, from 10 ms noop shards to 2 h evaluations.
prometheus::Histogram::BucketBoundaries shard_duration_buckets();

// The two gauges of one model x benchmark of a campaign in evald_benchmark_shards.
struct BenchmarkShardGauges {
  prometheus::Gauge* succeeded = nullptr;
  prometheus::Gauge* total = nullptr;
};

struct Metrics {
  Metrics();
  std::string serialize() const;  // Prometheus text format 0.0.4

  std::shared_ptr<prometheus::Registry> registry;

  prometheus::Family<prometheus::Gauge>& campaign_shards;          // {campaign,state}
  prometheus::Family<prometheus::Gauge>& campaign_progress;        // {campaign}
  prometheus::Family<prometheus::Gauge>& campaign_eta;             // {campaign}
  prometheus::Family<prometheus::Gauge>& campaign_info;            // {campaign,name,state}
  prometheus::Family<prometheus::Counter>& shards_completed;       // {campaign,model,benchmark}
  prometheus::Family<prometheus::Counter>& shard_attempts_failed;  // {campaign,model,benchmark}
  prometheus::Family<prometheus::Counter>& shards_retried;         // {campaign,model,benchmark}
  prometheus::Family<prometheus::Counter>& shards_failed;          // {campaign,model,benchmark}
  // {campaign,model,benchmark,kind=succeeded|total}, from the durable aggregate cells, so a
  // completion table survives a coordinator restart (the _total counters start again at 0).
  prometheus::Family<prometheus::Gauge>& benchmark_shards;
  prometheus::Family<prometheus::Counter>& stale_results;  // {campaign}
  // Backup copies of stragglers (docs/scheduling.md): {outcome=started|won|lost|failed|dropped}.
  prometheus::Family<prometheus::Counter>& backup_copies;
  prometheus::Family<prometheus::Histogram>& shard_duration;  // {benchmark}
  prometheus::Histogram& dispatch_latency;
  prometheus::Family<prometheus::Gauge>& workers;               // {state}
  prometheus::Family<prometheus::Gauge>& worker_slots;          // {worker,kind=used|free|total}
  prometheus::Family<prometheus::Gauge>& worker_heartbeat_age;  // {worker}
  prometheus::Family<prometheus::Counter>& workers_lost;        // {worker}
  // One observation and one count per WAL sync; a sync makes every batch written before it durable.
  prometheus::Histogram& store_commit_latency;
  prometheus::Counter& store_commits;
  prometheus::Counter& store_batches;  // batches written (one per turn that changed anything)
  // A failed batch write or WAL sync, {op=write|sync}: the coordinator stops on the first.
  prometheus::Family<prometheus::Counter>& store_failures;
  prometheus::Gauge& turns_awaiting_sync;
  prometheus::Counter& store_keys_written;
  prometheus::Gauge& store_size;
  prometheus::Family<prometheus::Counter>& messages_received;  // {type}
  prometheus::Family<prometheus::Counter>& messages_sent;      // {type}
  prometheus::Counter& messages_malformed;
  // Results (and DRAIN / HAND_BACK) that changed nothing because they did not come from the
  // connection holding the lease, or did not pass validation. {reason}
  prometheus::Family<prometheus::Counter>& results_rejected;
  // Parts of a HELLO not kept because they exceed the bounds in scheduler.hpp. {field}
  prometheus::Family<prometheus::Counter>& hello_items_dropped;
  // Worker connections refused during or right after the CURVE handshake. {reason}
  prometheus::Family<prometheus::Counter>& worker_auth_failures;
  // Messages for workers dropped by the core: {reason=would_block|unreachable|no_connection}.
  // Harmless for correctness (every state change they carried is durable and the worker asks
  // again on reconnect), but a steady rate means a worker cannot keep up or keeps vanishing.
  prometheus::Family<prometheus::Counter>& messages_dropped;
  prometheus::Family<prometheus::Counter>& http_requests;  // {route,status}
  // Connections and requests turned away: connection_limit, address_limit, idle_evicted,
  // header_timeout, body_budget, tls_handshake, unauthenticated, forbidden, quota,
  // spec_too_large. {reason}
  prometheus::Family<prometheus::Counter>& http_refused;
  prometheus::Family<prometheus::Counter>& audit_events;  // {action}
  // Refusals not written to the audit log because their source was over the per-minute cap.
  prometheus::Counter& audit_suppressed;
  prometheus::Gauge& queue_ready;
  prometheus::Gauge& turn_seconds_max;
  // Shards that took an earlier campaign's identical result instead of running ("reuse": true).
  prometheus::Counter& shards_reused;
  // Model scores imported for composite components (POST .../scores).
  prometheus::Counter& scores_imported;
  // Served models, from what workers report (docs/served-models.md): a model server that became
  // ready ({model}, counted once per server), how long it took (from workers that say so), and a
  // model backed off on a worker after its server failed to start there again and again.
  prometheus::Family<prometheus::Counter>& model_loads;
  prometheus::Histogram& model_load_seconds;
  prometheus::Family<prometheus::Counter>& model_server_backoffs;  // {model}
  // For an autoscaler: the expected GPU-seconds of pending work (docs/scheduling.md, "Expected
  // GPU time") per kind of worker that could run it, and the connected workers running nothing.
  // A kind is a worker's labels as "k=v,k2=v2" (sorted; "" for none); labels="all" is all pending
  // work whichever worker could run it, including work no known worker can. {labels}
  prometheus::Family<prometheus::Gauge>& pending_gpu_seconds;
  prometheus::Family<prometheus::Gauge>& workers_idle;  // {labels}
  prometheus::Family<prometheus::Gauge>& workers_busy;  // {labels}: connected, running a shard
  // The whole fleet's slots, kind=used|free|total: the sum of evald_worker_slots, which exists
  // only for the first --max-worker-series workers.
  prometheus::Family<prometheus::Gauge>& fleet_slots;
  // Leases beyond the slots of connected workers (dispatch rule 11).
  prometheus::Gauge& shards_queued_ahead;
  prometheus::Counter& leases_queued_ahead;
  // Queues taken back because their worker's slots stopped freeing (rule 11).
  prometheus::Counter& queues_revoked;
  // Workers given no per-worker series because --max-worker-series were taken.
  prometheus::Gauge& workers_without_series;
  // Times any worker was declared lost (evald_workers_lost_total{worker} counts per worker, for
  // the workers that have series).
  prometheus::Counter& worker_losses;
  // Workers that drained and said GOODBYE: retired at once, never counted lost (scale-down).
  prometheus::Counter& workers_left;

  // benchmark_shards handles per campaign id, one per group (model x benchmark), so refreshing
  // them is a few atomic stores. Core thread only.
  std::unordered_map<std::string, std::vector<BenchmarkShardGauges>> benchmark_shard_gauges;
};

}  // namespace evald::coordinator
