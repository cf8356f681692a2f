#include "coordinator/metrics.hpp"

#include <prometheus/text_serializer.h>

namespace evald::coordinator {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

prometheus::Histogram::BucketBoundaries latency_buckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10};
}

}  // namespace

prometheus::Histogram::BucketBoundaries shard_duration_buckets() {
  return {0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200};
}

Metrics::Metrics()
    : registry(std::make_shared<prometheus::Registry>()),
      campaign_shards(BuildGauge()
                          .Name("evald_campaign_shards")
                          .Help("Shards of a campaign by state")
                          .Register(*registry)),
      campaign_progress(BuildGauge()
                            .Name("evald_campaign_progress_ratio")
                            .Help("Shards in a final state / all shards of the campaign")
                            .Register(*registry)),
      campaign_eta(BuildGauge()
                       .Name("evald_campaign_eta_seconds")
                       .Help("Estimated seconds until the campaign ends (-1 while unknown)")
                       .Register(*registry)),
      campaign_info(BuildGauge()
                        .Name("evald_campaign_info")
                        .Help("1 for each campaign, with its name and state as labels")
                        .Register(*registry)),
      shards_completed(BuildCounter()
                           .Name("evald_shards_completed_total")
                           .Help("Shards that succeeded")
                           .Register(*registry)),
      shard_attempts_failed(BuildCounter()
                                .Name("evald_shard_attempts_failed_total")
                                .Help("Attempts that failed (runner failure or worker lost)")
                                .Register(*registry)),
      shards_retried(BuildCounter()
                         .Name("evald_shards_retried_total")
                         .Help("Shards queued again after a failed attempt or a rerun")
                         .Register(*registry)),
      shards_failed(BuildCounter()
                        .Name("evald_shards_failed_total")
                        .Help("Shards that ended failed (attempts exhausted)")
                        .Register(*registry)),
      benchmark_shards(BuildGauge()
                           .Name("evald_benchmark_shards")
                           .Help("Shards of one model x benchmark of a campaign, "
                                 "kind=succeeded|total")
                           .Register(*registry)),
      stale_results(BuildCounter()
                        .Name("evald_stale_results_total")
                        .Help("Results of attempts already given up; stored, never counted")
                        .Register(*registry)),
      backup_copies(
          BuildCounter()
              .Name("evald_backup_copies_total")
              .Help("Backup copies of straggling shards, by outcome: started; won (its "
                    "result counted, the first copy cancelled); lost (the first copy "
                    "finished first); failed; promoted (the first copy's worker went away, "
                    "the copy became the shard's attempt); dropped (the shard ended "
                    "otherwise)")
              .Register(*registry)),
      shard_duration(BuildHistogram()
                         .Name("evald_shard_duration_seconds")
                         .Help("Run time of succeeded shard attempts")
                         .Register(*registry)),
      dispatch_latency(BuildHistogram()
                           .Name("evald_dispatch_latency_seconds")
                           .Help("Time a shard waited to be leased, from becoming ready (its "
                                 "campaign submitted or recovered, a requeue, a backoff ending) "
                                 "to the dispatch that leased it, before that turn's commit")
                           .Register(*registry)
                           .Add({}, latency_buckets())),
      workers(BuildGauge().Name("evald_workers").Help("Workers by state").Register(*registry)),
      worker_slots(BuildGauge()
                       .Name("evald_worker_slots")
                       .Help("Worker slots, kind=used|free|total")
                       .Register(*registry)),
      worker_heartbeat_age(BuildGauge()
                               .Name("evald_worker_last_heartbeat_age_seconds")
                               .Help("Seconds since the worker was last heard from")
                               .Register(*registry)),
      workers_lost(BuildCounter()
                       .Name("evald_workers_lost_total")
                       .Help("Times a worker was declared lost")
                       .Register(*registry)),
      store_commit_latency(BuildHistogram()
                               .Name("evald_store_commit_seconds")
                               .Help("Latency of one WAL sync (fsync), which makes every batch "
                                     "written before it durable")
                               .Register(*registry)
                               .Add({}, latency_buckets())),
      store_commits(BuildCounter()
                        .Name("evald_store_commits_total")
                        .Help("WAL syncs (fsyncs); each makes every batch written before it "
                              "durable, so batches written / commits is the group-commit factor")
                        .Register(*registry)
                        .Add({})),
      store_batches(BuildCounter()
                        .Name("evald_store_batches_total")
                        .Help("Batches written to the store: one per core turn that changed "
                              "anything")
                        .Register(*registry)
                        .Add({})),
      store_failures(BuildCounter()
                         .Name("evald_store_failures_total")
                         .Help("Store writes and WAL syncs that failed, op=write|sync; the "
                               "coordinator stops on the first without acknowledging anything")
                         .Register(*registry)),
      turns_awaiting_sync(BuildGauge()
                              .Name("evald_turns_awaiting_sync")
                              .Help("Core turns whose messages and answers wait for the WAL sync "
                                    "that makes their batch durable")
                              .Register(*registry)
                              .Add({})),
      store_keys_written(BuildCounter()
                             .Name("evald_store_keys_written_total")
                             .Help("Keys written in committed batches")
                             .Register(*registry)
                             .Add({})),
      store_size(BuildGauge()
                     .Name("evald_store_size_bytes")
                     .Help("RocksDB live SST size plus memtables")
                     .Register(*registry)
                     .Add({})),
      messages_received(BuildCounter()
                            .Name("evald_messages_received_total")
                            .Help("Worker messages received, by type")
                            .Register(*registry)),
      messages_sent(BuildCounter()
                        .Name("evald_messages_sent_total")
                        .Help("Messages sent to workers, by type")
                        .Register(*registry)),
      messages_malformed(BuildCounter()
                             .Name("evald_messages_malformed_total")
                             .Help("Worker messages dropped because they did not decode")
                             .Register(*registry)
                             .Add({})),
      results_rejected(BuildCounter()
                           .Name("evald_results_rejected_total")
                           .Help("Results, drains and hand-backs that changed nothing: not from "
                                 "the lease holder's connection, or invalid; by reason")
                           .Register(*registry)),
      hello_items_dropped(BuildCounter()
                              .Name("evald_hello_items_dropped_total")
                              .Help("Labels, GPUs, running attempt ids or instance text of a "
                                    "worker HELLO not kept because they exceed a bound, by field")
                              .Register(*registry)),
      worker_auth_failures(BuildCounter()
                               .Name("evald_worker_auth_failures_total")
                               .Help("Worker connections refused by authentication, by reason")
                               .Register(*registry)),
      messages_dropped(BuildCounter()
                           .Name("evald_messages_dropped_total")
                           .Help("Messages to workers the core could not hand to ZeroMQ, by "
                                 "reason: would_block, unreachable (connection gone), "
                                 "no_connection (the worker has none)")
                           .Register(*registry)),
      http_requests(BuildCounter()
                        .Name("evald_http_requests_total")
                        .Help("HTTP requests by route and status")
                        .Register(*registry)),
      http_refused(BuildCounter()
                       .Name("evald_http_refused_total")
                       .Help("HTTP connections and requests refused (caps, timeouts, TLS, "
                             "authentication, authorisation, quota), by reason")
                       .Register(*registry)),
      audit_events(BuildCounter()
                       .Name("evald_audit_events_total")
                       .Help("Audit events written, by action")
                       .Register(*registry)),
      audit_suppressed(BuildCounter()
                           .Name("evald_audit_refusals_suppressed_total")
                           .Help("Refused requests not written to the audit log (per-minute cap)")
                           .Register(*registry)
                           .Add({})),
      queue_ready(BuildGauge()
                      .Name("evald_queue_ready_shards")
                      .Help("Pending shards ready to dispatch")
                      .Register(*registry)
                      .Add({})),
      turn_seconds_max(BuildGauge()
                           .Name("evald_core_turn_seconds_max")
                           .Help("Longest core event-loop turn in the current window; the "
                                 "window restarts every 10 s, independent of scrapes")
                           .Register(*registry)
                           .Add({})),
      shards_reused(BuildCounter()
                        .Name("evald_shards_reused_total")
                        .Help("Shards that took the result of an identical shard of an earlier "
                              "campaign instead of running (reuse)")
                        .Register(*registry)
                        .Add({})),
      scores_imported(BuildCounter()
                          .Name("evald_scores_imported_total")
                          .Help("Model scores imported for composite score components")
                          .Register(*registry)
                          .Add({})),
      model_loads(BuildCounter()
                      .Name("evald_model_loads_total")
                      .Help("Model servers that became ready on a worker, by model")
                      .Register(*registry)),
      // Buckets from a small model's seconds to a 70B model's half hour.
      model_load_seconds(
          BuildHistogram()
              .Name("evald_model_load_seconds")
              .Help("Seconds from starting a model server to its first healthy "
                    "answer, as workers report them")
              .Register(*registry)
              .Add({}, prometheus::Histogram::BucketBoundaries{0.1, 0.5, 1, 2, 5, 10, 30, 60, 120,
                                                               300, 600, 1200, 1800})),
      model_server_backoffs(BuildCounter()
                                .Name("evald_model_server_backoffs_total")
                                .Help("Times a model was backed off on a worker because its "
                                      "server failed to start there again and again, by model")
                                .Register(*registry)),
      pending_gpu_seconds(BuildGauge()
                              .Name("evald_pending_gpu_seconds")
                              .Help("Expected GPU-seconds of pending shards, by the labels of the "
                                    "workers that could run them (labels=\"all\": all of them)")
                              .Register(*registry)),
      workers_idle(BuildGauge()
                       .Name("evald_workers_idle")
                       .Help("Connected workers running no shard, by their labels")
                       .Register(*registry)),
      workers_busy(BuildGauge()
                       .Name("evald_workers_busy")
                       .Help("Connected workers running at least one shard, by their labels")
                       .Register(*registry)),
      fleet_slots(BuildGauge()
                      .Name("evald_slots")
                      .Help("Slots of all connected workers, kind=used|free|total (the sum of "
                            "evald_worker_slots, which only the first --max-worker-series "
                            "workers have)")
                      .Register(*registry)),
      shards_queued_ahead(BuildGauge()
                              .Name("evald_shards_queued_ahead")
                              .Help("Leases held by connected workers beyond their slots: short "
                                    "shards queued there to start as slots free")
                              .Register(*registry)
                              .Add({})),
      leases_queued_ahead(BuildCounter()
                              .Name("evald_leases_queued_ahead_total")
                              .Help("Leases sent to a worker beyond its slots, to start there as "
                                    "a slot frees (dispatch rule 11)")
                              .Register(*registry)
                              .Add({})),
      queues_revoked(BuildCounter()
                         .Name("evald_queues_revoked_total")
                         .Help("Queues of short shards taken back from a worker whose slots "
                               "stopped freeing (a shard hangs); their shards run elsewhere")
                         .Register(*registry)
                         .Add({})),
      workers_without_series(BuildGauge()
                                 .Name("evald_workers_without_series")
                                 .Help("Known workers that have no per-worker series because "
                                       "--max-worker-series workers already have them")
                                 .Register(*registry)
                                 .Add({})),
      worker_losses(BuildCounter()
                        .Name("evald_worker_losses_total")
                        .Help("Times any worker was declared lost (silent past the timeout)")
                        .Register(*registry)
                        .Add({})),
      workers_left(BuildCounter()
                       .Name("evald_workers_left_total")
                       .Help("Workers that drained and said goodbye: retired at once, not lost")
                       .Register(*registry)
                       .Add({})) {}

std::string Metrics::serialize() const {
  const prometheus::TextSerializer serializer;
  return serializer.Serialize(registry->Collect());
}

}  // namespace evald::coordinator
