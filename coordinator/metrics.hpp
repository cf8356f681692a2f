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

namespace evald::coordinator {

// Buckets for evald_shard_duration_seconds, from 10 ms noop shards to 2 h evaluations.
prometheus::Histogram::BucketBoundaries shard_duration_buckets();

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
  prometheus::Family<prometheus::Counter>& stale_results;          // {campaign}
  prometheus::Family<prometheus::Histogram>& shard_duration;       // {benchmark}
  prometheus::Histogram& dispatch_latency;
  prometheus::Family<prometheus::Gauge>& workers;               // {state}
  prometheus::Family<prometheus::Gauge>& worker_slots;          // {worker,kind=used|total}
  prometheus::Family<prometheus::Gauge>& worker_heartbeat_age;  // {worker}
  prometheus::Family<prometheus::Counter>& workers_lost;        // {worker}
  prometheus::Histogram& store_commit_latency;
  prometheus::Counter& store_commits;
  prometheus::Counter& store_keys_written;
  prometheus::Gauge& store_size;
  prometheus::Family<prometheus::Counter>& messages_received;  // {type}
  prometheus::Family<prometheus::Counter>& messages_sent;      // {type}
  prometheus::Counter& messages_malformed;
  prometheus::Family<prometheus::Counter>& http_requests;  // {route,status}
  prometheus::Gauge& queue_ready;
  prometheus::Gauge& turn_seconds_max;
};

}  // namespace evald::coordinator
