// Scheduler: the coordinator's in-memory state machine for campaigns, shards, workers and leases.
//
// It owns every piece of scheduling state and is driven by the core thread only (no locks). Each
// operation changes memory, stages the matching store writes in batch() and the messages for
// workers in outgoing(); the core commits the batch once per event-loop turn (its WAL sync runs on
// the store's sync thread, grouped with other turns) and only sends the messages and answers HTTP
// once it is durable. So nobody is ever told about a state change that a crash could take back.
//
// Invariants (after every operation; check_invariants() verifies them, after every turn in debug
// builds and in the scheduler unit tests):
//  * A shard is `running` iff exactly one lease (attempt id) for it exists, held by a worker or,
//    right after a restart, by the orphan table until its worker reclaims it or the grace expires.
//    Besides it, a running shard may have one backup copy (dispatch rule 10): a lease of another
//    worker, registered in backups_, that never counts unless it becomes the shard's lease.
//  * A result counts only if its attempt id is the shard's current lease AND it comes from the
//    worker holding that lease (or, right after a restart, the orphan's worker). A current attempt
//    id from anyone else changes nothing (results_rejected{reason="not_lease_holder"}). A result
//    of an earlier attempt from a known worker is stored as a stale attempt (at most
//    kMaxStaleRecordsPerShard per shard and run). Re-delivery of a result is therefore harmless
//    (exactly-once counting).
//  * A worker never holds more leases than the slots it announced plus the attempts it said it
//    queues ahead (credit-based flow); those beyond its slots are its queued leases, the latest
//    sent (dispatch rule 11).
//  * Every pending shard is ahead of its model's dispatch cursor, in its model's requeued deque,
//    or in the retry-backoff queue; queue entries are re-checked on pop, so stale entries are
//    harmless.
//  * A GPU of a worker is busy iff exactly one of that worker's leases holds it.
//
// Placement and order (docs/scheduling.md): a shard goes only to a worker whose labels match the
// model's resources and that has enough free GPUs (with enough memory); it gets specific GPU
// indexes. A worker stays committed to the model it ran last while that model has work, waiting
// for its own GPUs rather than loading another model, unless another model of its campaign has
// far more expected GPU time left per worker; otherwise it takes a fitting model: the one the
// fewest GPUs can run, then one nobody runs yet, then the one with the most expected GPU-seconds
// left per worker already on it (durations learned from results, durations.hpp). A worker with
// nothing running always gets a pending shard that fits it. Higher campaign priority goes first;
// equal priorities take turns.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/aggregation.hpp"
#include "common/clock.hpp"
#include "common/protocol.hpp"
#include "common/result.hpp"
#include "common/spec.hpp"
#include "coordinator/durations.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/placement.hpp"
#include "coordinator/provenance.hpp"
#include "coordinator/records.hpp"
#include "coordinator/serve_backoff.hpp"
#include "coordinator/store.hpp"

namespace evald::coordinator {

struct SchedulerOptions {
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds worker_timeout{5000};
  std::chrono::milliseconds retry_backoff{1000};  // doubles per failed attempt, capped at 60 s
  std::chrono::milliseconds forget_lost_workers_after{std::chrono::hours(1)};
  // After a restart, how long a running shard waits for its worker to come back and reclaim it.
  // Longer than the worker's reconnect backoff (at most 5 s), or reconnecting workers lose work.
  std::chrono::milliseconds restart_grace{10000};
  // How long a finished campaign keeps its Prometheus series; then they are removed so /metrics
  // stays bounded however many campaigns have run. A rerun brings them back.
  std::chrono::milliseconds finished_campaign_metrics{std::chrono::minutes(10)};
  // Per-worker Prometheus series exist for at most this many workers (the first to connect);
  // the fleet-wide gauges count every worker. Keeps /metrics small for a fleet of thousands.
  size_t max_worker_series = 1000;
  // Where the attempt sequence of each epoch starts (0 = ids start at epoch << 32 | 1). Only tests
  // change it, to reach the wrap of the 32-bit sequence without four billion leases.
  uint32_t first_attempt_seq = 0;
  // Served models: when a model whose server keeps failing to start on a worker is not placed
  // there for a while (coordinator/serve_backoff.hpp).
  ServeBackoffOptions serve_backoff{};
};

// What a result, a stale record and a HELLO may make the coordinator keep.
inline constexpr size_t kMaxMetricsPerResult = 64;
inline constexpr size_t kMaxMetricNameBytes = 128;
inline constexpr size_t kMaxStoredErrorBytes = 4096;
inline constexpr uint8_t kMaxStaleRecordsPerShard = 4;
inline constexpr size_t kMaxHelloLabels = 64;
inline constexpr size_t kMaxHelloLabelBytes = 256;  // a label's key plus its value, as JSON
inline constexpr size_t kMaxHelloGpus = 64;
inline constexpr size_t kMaxHelloGpuBytes = 1024;  // one GPU entry, as JSON
inline constexpr size_t kMaxHelloRunning = 65536;
inline constexpr size_t kMaxInstanceBytes = 128;
// What a HELLO's queue_ahead is held to (dispatch rule 11): a worker's queue beyond its slots.
inline constexpr uint32_t kMaxQueueAhead = 65536;
// Dispatch rule 11 queues on a worker at most as many shards as its slots are expected to start
// within this time (slots x this / the expected seconds of a shard of the model there): a queued
// shard is expected to wait no longer than about this for a slot, so the queue adds about this
// to the end of a campaign, and shards longer than slots x this are never queued. The round trip
// the queue hides (a result, a durable commit, the next ASSIGN) is about a millisecond.
inline constexpr double kQueueAheadMaxWaitSeconds = 0.1;
// When the oldest queued shard of a worker has waited this long, its slots stopped freeing (a
// shard hangs or runs far longer than the others): the coordinator takes the queue back, so its
// shards run elsewhere (rule 11).
inline constexpr std::chrono::milliseconds kQueueAheadRevokeAfter{1000};

// Attempt ids are epoch << 32 | seq; the epoch must stay within 32 bits.
inline constexpr uint64_t kMaxEpoch = UINT32_MAX;

// Messages for workers, gathered during a turn and sent after the commit. ACK, CANCEL and ASSIGN
// are coalesced into one message each per worker and turn; other messages keep their order and go
// first, so a CAMPAIGN always precedes the ASSIGN that refers to it.
class Outgoing {
 public:
  void send(const std::string& identity, protocol::Message message);
  void ack(const std::string& identity, uint64_t attempt_id);
  void cancel(const std::string& identity, uint64_t attempt_id);
  void assign(const std::string& identity, protocol::Assignment assignment);
  bool empty() const { return by_identity_.empty(); }
  // Calls f(identity) once for every identity with something to send.
  template <typename F>
  void for_each_identity(F&& f) const {
    for (const auto& entry : by_identity_) f(entry.first);
  }
  // Calls send(identity, message) for everything, in order, and clears.
  template <typename Send>
  void drain(Send&& send_one) {
    for (auto& [identity, box] : by_identity_) {
      for (auto& m : box.ordered) send_one(identity, m);
      if (!box.ack.attempt_ids.empty()) send_one(identity, protocol::Message{std::move(box.ack)});
      if (!box.cancel.attempt_ids.empty()) {
        send_one(identity, protocol::Message{std::move(box.cancel)});
      }
      if (!box.assign.assignments.empty()) {
        send_one(identity, protocol::Message{std::move(box.assign)});
      }
    }
    by_identity_.clear();
  }

 private:
  struct Box {
    std::vector<protocol::Message> ordered;
    protocol::Ack ack;
    protocol::Cancel cancel;
    protocol::Assign assign;
  };
  std::unordered_map<std::string, Box> by_identity_;
};

inline constexpr uint32_t kNoWorker = UINT32_MAX;
// Kinds of worker (labels and GPU models) the duration estimates keep apart; workers of further
// kinds share the campaign-wide estimate. A fleet has a handful; the bound keeps a worker that
// invents labels from growing every group's samples.
inline constexpr uint32_t kNoKind = UINT32_MAX;
inline constexpr size_t kMaxWorkerKinds = 64;

struct Shard {
  ShardState state = ShardState::kPending;
  // The last attempt was given up without an answer (worker lost, lease not reclaimed after a
  // restart). Until the shard is leased again, that attempt's success is still its only result
  // and may count; any other pending shard treats a result of an old attempt as stale.
  bool awaiting_given_up_attempt = false;
  uint8_t hand_backs = 0;       // hand-backs in the current budget (the first few are free)
  uint8_t stale_records = 0;    // stale attempt records stored in this run (bounded)
  uint16_t attempts = 0;        // started within the current budget
  uint16_t total_attempts = 0;  // ever started
  uint32_t worker = kNoWorker;  // running: index of the worker holding the lease
  uint64_t attempt_id = 0;      // running: the lease; otherwise the last attempt
};

struct Group {  // one model x benchmark
  uint32_t model = 0;
  uint32_t benchmark = 0;
  std::vector<Shard> shards;
  int64_t pending = 0;  // its pending shards, ready or backing off
  // How long its shards run (coordinator/durations.hpp): the finished attempts' per-example times
  // and the expected seconds of a full shard, refreshed once per gauge interval.
  DurationSamples samples;
  double expected_shard_s = kDefaultShardSeconds;
  // The same per kind of worker (WorkerInfo::kind) where nodes differ, and the expected seconds
  // of a full shard there: 0 while none finished there, when expected_shard_s stands in.
  std::vector<DurationSamples> kind_samples;
  std::vector<double> kind_expected_s;
  // The expected seconds of a full shard from finished attempts alone (durations.hpp,
  // `from_finished`); 0 while nothing that could stand in has finished. Backup copies judge
  // stragglers against it.
  double finished_shard_s = 0;
  CellAggregate cell;
  bool cell_dirty = false;
  std::unordered_map<uint32_t, std::string> last_errors;  // shard -> last failed attempt's error
  prometheus::Counter* completed = nullptr;
  prometheus::Counter* attempts_failed = nullptr;
  prometheus::Counter* retried = nullptr;
  prometheus::Counter* failed = nullptr;
  prometheus::Histogram* duration = nullptr;
};

struct ReadyRef {
  uint32_t group = 0;
  uint32_t shard = 0;
  std::chrono::steady_clock::time_point ready_since;
};

// The dispatch queue of one model of a campaign: requeued shards first, then the never-dispatched
// shards of its groups (model*B .. model*B+B-1), through one cursor per group: the group whose
// shards are expected to run longest goes first (dispatch rule 9).
struct ModelQueue {
  std::deque<ReadyRef> requeued;
  uint32_t first_group = 0;
  uint32_t end_group = 0;
  std::vector<uint32_t> cursors;  // per group from first_group: its next never-dispatched shard
  int64_t pending = 0;            // pending shards of the model, ready or backing off
  uint32_t warm_workers = 0;      // workers whose last shard was of this model
  int gpus = 1;                   // GPUs one shard holds, for weighing (at least 1)
  // Expected GPU-seconds of its pending shards: sum of pending x expected_shard_s x gpus over its
  // groups. Kept as shards change state, recomputed whenever the estimates are refreshed.
  double pending_gpu_s = 0;
  // GPUs of the connected workers that could run its shards (refreshed with the estimates): the
  // fewer, the sooner a worker that can run it should (dispatch rule 6).
  int64_t eligible_gpus = 0;

  bool ahead_of_cursor(uint32_t group, uint32_t shard) const {
    return shard >= cursors[group - first_group];
  }
};

struct Campaign {
  uint32_t key = 0;
  std::string id;
  CampaignSpec spec;
  std::string spec_json;
  std::string spec_sha256;  // of spec_json: every provenance record of the campaign names it
  int64_t created_at_ms = 0;
  int64_t finished_at_ms = 0;
  // Who submitted it: the API token's name (nullopt when the API runs without tokens) and the
  // client address, which is the quota principal without tokens. Stored with the campaign.
  std::optional<std::string> submitted_by;
  std::string submitted_from;
  CampaignState state = CampaignState::kRunning;
  std::vector<Group> groups;  // index = model * benchmarks + benchmark
  std::array<int64_t, kShardStateCount> counts{};
  int64_t total = 0;
  std::vector<ModelQueue> queues;  // per model
  int64_t workers_held = 0;        // workers committed to one of its models (sum of warm_workers)
  std::chrono::steady_clock::time_point cursor_ready_since;
  // model index -> why no connected worker could ever run its shards
  std::map<uint32_t, std::string> unschedulable;
  // Served models: model servers that became ready on a worker for its shards, per model name
  // (in memory: a restarted coordinator counts from zero).
  std::map<std::string, uint64_t> model_loads;
  // ETA: progress rate since the campaign last (re)started running.
  std::chrono::steady_clock::time_point rate_since;
  int64_t final_at_rate_since = 0;
  // Its Prometheus series exist (and the Group counter handles are valid). False once a finished
  // campaign's series were removed; a rerun attaches them again.
  bool metrics_attached = false;

  int64_t count(ShardState s) const { return counts[static_cast<size_t>(s)]; }
  int64_t finished() const {
    return count(ShardState::kSucceeded) + count(ShardState::kFailed) +
           count(ShardState::kCancelled);
  }
  std::optional<double> eta_seconds(std::chrono::steady_clock::time_point now) const;
  uint32_t model_of(uint32_t group) const {
    return group / static_cast<uint32_t>(spec.benchmarks.size());
  }
  bool ahead_of_cursor(uint32_t group, uint32_t shard) const {
    return queues[model_of(group)].ahead_of_cursor(group, shard);
  }
};

// kLost: silent past the worker timeout. kLeft: drained and said GOODBYE. Either is kept (for
// /v1/workers and its kind's gauges) until forgotten, and a HELLO makes it connected again.
enum class WorkerState : uint8_t { kConnected, kDraining, kLost, kLeft };
const char* to_string(WorkerState state);
// Lost or left: holds no lease, gets no work, and only a HELLO is heard from it.
inline bool departed(WorkerState state) {
  return state == WorkerState::kLost || state == WorkerState::kLeft;
}

struct WorkerInfo {
  uint32_t index = 0;
  std::string name;  // from HELLO; the core maps it to the connection (core.hpp)
  std::string instance;
  std::string host;  // from HELLO (at most kMaxHostBytes), for provenance
  WorkerState state = WorkerState::kConnected;
  uint32_t slots = 1;
  // Attempts it takes beyond its slots and starts as they free (its HELLO's queue_ahead; 0 from
  // workers that do not queue). Dispatch rule 11 uses them for short shards only.
  uint32_t queue_ahead = 0;
  nlohmann::json gpus = nlohmann::json::array();
  nlohmann::json labels = nlohmann::json::object();
  std::chrono::steady_clock::time_point last_seen;
  std::chrono::steady_clock::time_point last_sent;
  std::unordered_map<uint64_t, ShardKey> leases;  // attempt id -> shard
  std::unordered_set<uint32_t> campaigns_sent;    // CAMPAIGN already sent on this connection
  std::vector<GpuSlot> gpu_slots;
  std::unordered_map<uint64_t, std::vector<uint32_t>> lease_gpus;  // attempt id -> GPU indexes
  // When each lease started, and whether it started "cold": before the worker had finished a
  // shard of that model, so its duration includes (part of) a model load.
  // A queued lease (dispatch rule 11) has not started: `at` is when it was sent until a slot
  // frees for it, and it is neither a straggler nor a sample of how long shards run.
  struct LeaseStart {
    std::chrono::steady_clock::time_point at;
    bool cold = false;
    bool queued = false;
  };
  std::unordered_map<uint64_t, LeaseStart> lease_started;  // attempt id -> start
  // Its leases beyond its slots, oldest first: always the last max(0, leases - slots) sent. The
  // worker starts them in this order as its slots free; the front one starts when a lease ends.
  std::deque<uint64_t> queued;
  // Its leases right after its last HELLO: a worker restarted with fewer slots or a shorter queue
  // may hold more than its credit until those end (the credit invariant allows that, no more).
  size_t leases_at_hello = 0;
  // Its queue was taken back because its slots stopped freeing (rule 11): no queue until one of
  // its leases ends.
  bool queue_stalled = false;
  // A shard of last_model succeeded here since the worker was committed to it: the model is loaded.
  bool model_proven = false;
  // Its kind (labels, GPU names and memory, from its HELLO) for per-kind duration estimates;
  // kNoKind beyond kMaxWorkerKinds.
  uint32_t kind = kNoKind;
  // Affinity: the campaign key and model of the last shard it was given (0 = none yet).
  uint32_t last_campaign = 0;
  uint32_t last_model = 0;
  // Served models (docs/served-models.md): the model servers ready on the worker, as its HELLO
  // and its status heartbeats say, and the attempts of its leases that wait for a server to load.
  std::vector<protocol::WarmModel> warm;
  std::unordered_set<uint64_t> loading;
  bool warm_on(const std::string& model) const {
    for (const auto& server : warm) {
      if (server.model == model) return true;
    }
    return false;
  }
  // Its labels as a kind key ("k=v,k2=v2", sorted) and its GPUs' memory, for the capacity
  // gauges (refreshed four times a second: not rebuilt per worker each time).
  std::string labels_key;
  std::string gpu_layout;
  // Its labels as JSON and its GPUs' memory: workers with the same key can place the same shards
  // (refresh_estimates counts the GPUs each model may use by it).
  std::string placement_key;
  // Its per-worker series; all null when --max-worker-series workers already have theirs.
  prometheus::Gauge* slots_used = nullptr;
  prometheus::Gauge* slots_total = nullptr;
  prometheus::Gauge* slots_free = nullptr;
  prometheus::Gauge* heartbeat_age = nullptr;

  uint32_t free_slots() const {
    return leases.size() >= slots ? 0 : slots - static_cast<uint32_t>(leases.size());
  }
  // Leases it could still take into its queue once its slots are full.
  uint32_t queue_room() const {
    const size_t limit = size_t{slots} + queue_ahead;
    return leases.size() >= limit ? 0 : static_cast<uint32_t>(limit - leases.size());
  }
  size_t running() const { return leases.size() - queued.size(); }
  bool is_queued(uint64_t attempt_id) const {
    auto it = lease_started.find(attempt_id);
    return it != lease_started.end() && it->second.queued;
  }
};

// Debug builds check the invariants after every turn (Scheduler::end_turn); release builds leave
// that to the tests, since the check walks every shard.
#ifdef NDEBUG
inline constexpr bool kCheckInvariantsEveryTurn = false;
#else
inline constexpr bool kCheckInvariantsEveryTurn = true;
#endif

// How end_turn makes the turn's batch durable: synced before it returns, or only written, with the
// WAL sync left to the caller (the core syncs on its own thread while it runs the next turn).
enum class TurnDurability { kSynced, kWritten };

// What the commit of one turn wrote, for the core's store metrics.
struct TurnCommit {
  size_t keys = 0;  // keys written; 0 when the batch was empty and nothing was committed
  std::chrono::microseconds latency{0};
};

struct Submitter {
  std::optional<std::string> name;
  std::string address;
};

struct RerunSelector {
  bool failed_only = true;  // false: every shard in a final state that matches the filters
  std::optional<std::string> model;
  std::optional<std::string> benchmark;
};

class Scheduler {
 public:
  Scheduler(Store& store, const Clock& clock, Metrics& metrics, SchedulerOptions options);

  // Rebuilds memory from the store and starts a new epoch (attempt ids of this run can never
  // collide with an earlier run's). Commits the epoch before returning.
  Status recover();

  // --- operations; each stages store writes in batch() and messages in outgoing() ---
  void on_message(const std::string& identity, protocol::Message message);
  // Returns the new campaign's id.
  Result<std::string> submit(const CampaignSpec& spec, const Submitter& submitter = {});
  Result<int64_t> rerun(const std::string& campaign_id, const RerunSelector& selector);
  Result<int64_t> cancel(const std::string& campaign_id);
  // Liveness, heartbeats, orphan and backoff expiry, gauges. Cheap; call every turn.
  void tick();
  // Hands ready shards to workers with free slots, by the rules of docs/scheduling.md ("Order"),
  // one named function each in scheduler_dispatch.cpp.
  void dispatch();

  Store::Batch& batch() { return batch_; }
  Outgoing& outgoing() { return outgoing_; }

  // --- the turn: the one sequence the core, the unit tests and the makespan simulator run ---
  // tick(), dispatch(), then end_turn(). Operations (messages, API calls) go before it.
  template <typename Send>
  Result<TurnCommit> run_turn(Send&& send_one,
                              TurnDurability durability = TurnDurability::kSynced) {
    tick();
    dispatch();
    return end_turn(std::forward<Send>(send_one), durability);
  }
  // Stages the aggregate cells changed this turn, commits the batch (nothing when it is empty),
  // and only then hands every outgoing message to send_one(identity, message). kSynced commits
  // with one fsync; kWritten only writes the batch (Store::write) and leaves the sync to the
  // caller, whose send_one must then hold the messages until the write is durable (the core's
  // pipeline, core.hpp). When the commit fails nothing is handed over and the error is returned:
  // memory is then ahead of the store, so the caller must stop without acknowledging anything of
  // this turn.
  template <typename Send>
  Result<TurnCommit> end_turn(Send&& send_one,
                              TurnDurability durability = TurnDurability::kSynced) {
    stage_dirty_cells();
    TurnCommit done;
    if (!batch_.empty()) {
      done.keys = batch_.size();
      auto s = durability == TurnDurability::kSynced ? store_.commit(batch_) : store_.write(batch_);
      if (!s.ok()) return s.error();
      done.latency = store_.last_commit_latency();
    }
    note_sent();
    outgoing_.drain(std::forward<Send>(send_one));
    if constexpr (kCheckInvariantsEveryTurn) check_invariants();
    return done;
  }

  // Verifies the invariants listed at the top of this file (and the counters kept alongside
  // them); throws std::logic_error naming the first broken one. O(shards + leases): run after
  // turns in debug builds and tests, not in release builds.
  void check_invariants() const;

  // --- read access for the API (core thread) ---
  const Campaign* find_campaign(const std::string& id) const;
  const std::map<uint32_t, std::unique_ptr<Campaign>>& campaigns() const { return campaigns_; }
  std::vector<const WorkerInfo*> workers() const;
  // Recomputes every running campaign's expected shard durations (coordinator/durations.hpp) from
  // the finished attempts and the running ones, and its models' pending GPU-seconds. tick() calls
  // it once per gauge interval; recover() after rebuilding the samples from the shard records.
  void refresh_estimates();
  // How long a shard of this group is expected to run on worker w: what shards of it took on
  // workers of w's kind, else the group's estimate (docs/scheduling.md, "Expected GPU time").
  double expected_shard_seconds_on(const Campaign& c, uint32_t group, const WorkerInfo& w) const;
  // What a shard of this group running on w is a straggler against: the same from finished
  // attempts alone (Group::finished_shard_s); 0 when nothing that could stand in has finished.
  double straggler_reference_seconds_on(const Campaign& c, uint32_t group,
                                        const WorkerInfo& w) const;
  const Store& store() const { return store_; }
  const Clock& clock() const { return clock_; }
  const std::string& last_error(const Campaign& c, uint32_t group, uint32_t shard) const;
  const ServeBackoff& serve_backoff() const { return serve_backoff_; }
  int64_t ready_shards() const;

 private:
  Campaign& create_campaign(uint32_t key, std::string id, CampaignSpec spec, int64_t created_at_ms);
  void write_campaign(const Campaign& c);
  // started_at_ms: when its current attempt started (0: now, the usual case of a lease).
  void write_shard(const Campaign& c, uint32_t group, uint32_t index, const WorkerInfo* worker,
                   const protocol::ShardResult* result = nullptr, int64_t started_at_ms = 0);
  void set_state(Campaign& c, uint32_t group, Shard& s, ShardState to);
  // Ends a lease on the worker's side of the books: the slot and its GPUs are free again.
  void release_lease(WorkerInfo& w, uint64_t attempt_id);
  void mark_gpus(WorkerInfo& w, const std::vector<uint32_t>& indexes, bool busy);
  void set_last_model(WorkerInfo& w, Campaign* c, uint32_t model);
  // A worker's served-model status (a heartbeat's): warm servers, loading attempts; a server
  // that is new counts as a load for the campaigns whose shards there run that model.
  void apply_serve_status(WorkerInfo& w, protocol::ServeStatus status);
  // The next pending shard of a model (dispatch rule 9, docs/scheduling.md).
  std::optional<ReadyRef> next_in_model(Campaign& c, uint32_t model);
  void check_unschedulable();
  void maybe_finish(Campaign& c);
  void requeue(Campaign& c, uint32_t group, uint32_t index, bool with_backoff);
  // Ends the current attempt of a running shard as a failure: retried or failed for good.
  void fail_attempt(Campaign& c, uint32_t group, uint32_t index, AttemptOutcome outcome,
                    const std::string& error, const std::string& worker_name, uint32_t duration_ms,
                    bool counts_as_attempt);
  void lease(Campaign& c, const ReadyRef& ref, WorkerInfo& w, std::vector<uint32_t> gpus);
  // Dispatch rule 10: backup copies of stragglers on idle workers that have the model loaded,
  // when no campaign has a pending shard (scheduler_backup.cpp).
  void start_backup_copies(const std::vector<WorkerInfo*>& idle);
  // Dispatch rule 11: workers whose slots are full queue shards of their model ahead, when its
  // shards are short and need no GPU (scheduler_dispatch.cpp).
  void queue_ahead();
  // Rule 11: takes back the queue of a worker whose oldest queued shard waited past
  // kQueueAheadRevokeAfter; its shards go back to the queue without using an attempt.
  void revoke_stalled_queue(WorkerInfo& w);
  // Rules 1 to 9: leases for every free slot a pending shard fits (scheduler_dispatch.cpp).
  void fill_free_slots();
  void lease_backup(Campaign& c, const ShardKey& key, WorkerInfo& w, std::vector<uint32_t> gpus);
  // A result of a backup copy: a success counts and cancels the first copy, a failure is kept
  // as a stale attempt and changes nothing else.
  void on_backup_result(WorkerInfo* w, const std::string& identity, protocol::ShardResult& r);
  // The shard whose current attempt is `primary` stopped running otherwise (its first copy
  // finished, failed, was lost or cancelled): its backup copy, if any, is cancelled.
  void drop_backup_of(Campaign& c, uint32_t group, uint32_t index, uint64_t primary,
                      const char* outcome);
  // Forgets a copy whose lease ended on its worker's side (lost, restarted, handed back).
  void forget_backup(uint64_t attempt_id);
  // The first copy of a running shard ended without a result (its worker was lost, restarted,
  // handed it back or left): if the shard has a backup copy that still runs, the copy becomes
  // the shard's attempt, instead of the shard going back to the queue and the copy being
  // cancelled. The ended attempt is recorded with `outcome` and `why`. False if it has no copy.
  bool promote_backup(Campaign& c, const ShardKey& key, AttemptOutcome outcome,
                      const std::string& worker, const std::string& why);
  // Keeps the record of a copy that was cancelled because the other one finished first.
  void store_cancelled_copy(Campaign& c, uint32_t group, uint32_t index, uint64_t attempt_id,
                            const std::string& worker, const std::string& why);

  void on_hello(const std::string& identity, protocol::Hello hello);
  void on_results(const std::string& identity, protocol::Results results);
  void on_result(WorkerInfo* w, const std::string& identity, protocol::ShardResult& r);
  void lose_worker(WorkerInfo& w, const std::string& reason);
  void on_hand_back(WorkerInfo& w, const protocol::HandBack& hand_back);
  void hand_back_orphans(const std::string& identity, const protocol::HandBack& hand_back);
  // Queues a running shard again without using an attempt (within kFreeHandBacks): its worker
  // is leaving, not failing it. `why` goes into the attempt's history.
  void give_back(Campaign& c, const ShardKey& key, const std::string& worker,
                 const std::string& why);
  // GOODBYE: a worker that drained is retired at once (left, not lost): its per-worker series go,
  // what it never reported goes back to the queue.
  void on_goodbye(WorkerInfo& w);
  // A lost or leaving worker's leases end: its slots and GPUs are free, it holds no model, and
  // end_shard(campaign, key) ends each shard whose current attempt it held (a backup copy it
  // held is dropped, the first copy runs on). Returns how many leases it held.
  size_t end_leases(WorkerInfo& w,
                    const std::function<void(Campaign&, const ShardKey&)>& end_shard);
  WorkerInfo* find_worker(const std::string& name);
  // Every message tells a worker the coordinator is alive (it resets the worker's silence timer),
  // so a worker sent anything this turn needs no heartbeat for another interval: busy workers
  // then get none, and the timer pass does not burst one frame to each of thousands of workers.
  void note_sent();
  // Liveness, heartbeats and forgetting, in one pass at the earliest deadline (tick()).
  void run_worker_timers(std::chrono::steady_clock::time_point now);
  // A worker's deadline may now be earlier than the recorded one: the next tick runs the pass.
  void wake_worker_timers();
  Campaign* campaign_by_key(uint32_t key);
  void refresh_gauges();
  // evald_pending_gpu_seconds and evald_workers_idle, per kind of worker (its labels).
  void refresh_capacity_gauges();
  // The kind of a worker that said HELLO: its labels, GPU names and memory.
  uint32_t kind_of(const WorkerInfo& w);
  // After a restart: the per-kind samples rebuilt from the shard records of a worker, once its
  // HELLO says which kind it is.
  void adopt_recovered_samples(const WorkerInfo& w);
  // A counted success: its per-example time becomes a sample of its model x benchmark.
  void learn_duration(Campaign& c, uint32_t group, WorkerInfo* holder, bool cold,
                      const protocol::ShardResult& r, uint32_t examples);
  // epoch << 32 | seq. Before seq would wrap, a new epoch starts; it is staged in this turn's
  // batch, which also holds the lease that uses the first id of it, so no id is ever sent before
  // its epoch is durable, and a restart always starts above every epoch used.
  uint64_t next_attempt_id();
  WorkerInfo* worker_at(uint32_t index);
  // Counts a result, drain or hand-back that changed nothing, by reason.
  void reject(const char* reason);
  // Stores a result of an attempt that is no longer current, within the per-shard bound.
  void store_stale(Campaign& c, uint32_t group, uint32_t index, const std::string& identity,
                   const protocol::ShardResult& r);
  // Provenance and reuse (scheduler_defend.cpp).
  const ShardIdentity& identity_of(const Campaign& c, uint32_t group);
  void record_provenance(const Campaign& c, const ShardKey& key, const WorkerInfo* who,
                         const std::string& worker_name, const protocol::ShardResult& r);
  // At submit: shards identical to an earlier success take its result. Returns how many.
  int64_t apply_reuse(Campaign& c);
  void attach_campaign_metrics(Campaign& c);
  void detach_campaign_metrics(Campaign& c);
  void forget_worker_metrics(WorkerInfo& w);
  // Stages the aggregate cells changed this turn; end_turn calls it right before committing.
  void stage_dirty_cells();

  Store& store_;
  const Clock& clock_;
  Metrics& metrics_;
  SchedulerOptions options_;
  Store::Batch batch_;
  Outgoing outgoing_;
  ServeBackoff serve_backoff_;

  uint64_t epoch_ = 0;
  uint32_t attempt_seq_ = 0;
  uint32_t next_campaign_key_ = 1;
  std::map<uint32_t, std::unique_ptr<Campaign>> campaigns_;
  std::unordered_map<std::string, uint32_t> campaign_by_id_;
  std::vector<std::unique_ptr<WorkerInfo>>
      workers_;  // slots reused after a lost worker is forgotten
  std::unordered_map<std::string, uint32_t> worker_by_name_;
  struct Orphan {
    ShardKey key;
    std::string worker;
    std::chrono::steady_clock::time_point deadline;
  };
  std::unordered_map<uint64_t, Orphan> orphans_;
  // Attempt id -> the worker that held it, for shards whose last attempt was given up (lost or
  // orphaned) and not leased again: only that worker's late success may still count.
  std::unordered_map<uint64_t, std::string> given_up_by_;
  // Backup copies of stragglers (dispatch rule 10): a second lease of a running shard, on another
  // worker. The shard (and its stored record) names its first attempt; the copy is held in the
  // worker's leases and here, in memory only: a coordinator restart cancels it.
  struct BackupCopy {
    ShardKey key;
    uint64_t primary = 0;  // the shard's attempt that was running when the copy started
    uint32_t worker = kNoWorker;
  };
  std::unordered_map<std::string, uint32_t> kind_ids_;  // kind key -> WorkerInfo::kind
  // Samples of the succeeded shards found at recovery, per worker name, until that worker's
  // HELLO says its kind (at most 2 x DurationSamples::kKept per group, the last in key order).
  struct RecoveredSample {
    uint32_t campaign = 0;
    uint32_t group = 0;
    float seconds_per_example = 0;
  };
  std::unordered_map<std::string, std::vector<RecoveredSample>> recovered_samples_;
  std::unordered_map<uint64_t, BackupCopy> backups_;  // the copy's attempt id -> the copy
  std::unordered_map<uint64_t, uint64_t> backup_of_;  // the shard's attempt id -> its copy's
  std::multimap<std::chrono::steady_clock::time_point, ShardKey> delayed_;
  std::unordered_map<uint32_t, std::chrono::steady_clock::time_point>
      lost_at_;  // worker index -> when it was lost or left
  std::vector<std::pair<uint32_t, uint32_t>> dirty_cells_;
  std::unordered_map<uint64_t, ShardIdentity> identities_;  // (campaign << 32 | group), bounded
  std::unordered_map<uint32_t, nlohmann::json> canonical_specs_;  // campaign key, bounded
  size_t dispatch_rr_ = 0;
  std::vector<std::string> capacity_kinds_;  // worker kinds with capacity gauges
  // A campaign or a worker came since the estimates were refreshed: dispatch refreshes them
  // first, so a new campaign's models know which workers can run them from the first lease.
  bool estimates_stale_ = true;
  size_t tier_turn_ = 0;
  std::array<prometheus::Counter*, 32> received_by_type_{};
  std::chrono::steady_clock::time_point last_gauges_{};
  // The earliest deadline of any worker timer (or earlier); run_worker_timers() sets it.
  std::chrono::steady_clock::time_point next_worker_timer_{};
  size_t workers_with_series_ = 0;  // workers whose per-worker series exist
};

}  // namespace evald::coordinator
