// Store: the coordinator's RocksDB database. It knows the key layout (coordinator/store_layout.md)
// and nothing of scheduling. All writes go through a Batch, so a state change is either durable as
// a whole or absent after a crash. Two ways to make a batch durable:
//  * commit(): one write with sync=true (recovery, tests, the makespan simulator);
//  * write() then a WAL sync (the core's hot path, pipelined): write() applies the batch to the
//    memtable and hands it to the WAL file without waiting for the disk, so reads see it at once;
//    a WalSyncer thread then fsyncs the WAL while the core works on the next turn. A batch is
//    durable once a sync that started after its write() returned has succeeded. The core tells
//    nobody anything of a turn before then (coordinator/core.hpp).
// A batch written but not yet synced may or may not survive a crash (the WAL record reached the
// OS, not necessarily the disk); either way it is whole or absent, and the WAL replays in order, so
// a later batch never survives without an earlier one.
//
// Thread: owned by the coordinator's core thread and not thread-safe, except sync_wal(), which the
// WalSyncer's thread runs while the core thread writes and reads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/aggregation.hpp"
#include "common/result.hpp"
#include "coordinator/records.hpp"
#include "coordinator/store_faults.hpp"

// RocksDB stays behind this header: the scheduler and everything that includes it see only the
// Store's own types, so they compile without RocksDB's headers and do not rebuild when it changes.
namespace rocksdb {
class DB;
class Env;
}  // namespace rocksdb

namespace evald::coordinator {

class FaultInjectionFs;

struct ShardKey {
  uint32_t campaign = 0;
  uint32_t group = 0;  // model index * benchmark count + benchmark index
  uint32_t shard = 0;
  bool operator==(const ShardKey&) const = default;
};

class Store {
 public:
  class Batch {
   public:
    Batch();
    ~Batch();
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;

    void put_meta_u64(std::string_view name, uint64_t value);
    void put_campaign(uint32_t campaign, const std::string& json);
    void put_shard(const ShardKey& key, const ShardRecord& record);
    // A late result (outcome kStale) gets a key of its own, so it never overwrites what was
    // recorded when its attempt was given up (lost, orphaned, cancelled).
    void put_attempt(const ShardKey& key, uint64_t attempt_id, const AttemptRecord& record);
    void put_cell(uint32_t campaign, uint32_t group, const CellAggregate& cell);
    void put_samples(const ShardKey& key, const std::string& samples_json);
    // A counted result without samples: an earlier result's samples must not stand in for it.
    void delete_samples(const ShardKey& key);
    // Provenance of a counted result (coordinator/provenance.hpp), JSON.
    void put_provenance(const ShardKey& key, const std::string& json);
    // Reuse index: the shard identity digest (64 hex digits, coordinator/provenance.hpp) -> the
    // shard and attempt whose success may stand in for an identical shard.
    void put_reuse(std::string_view identity_hex, const ShardKey& source, uint64_t attempt_id);
    // Imported scores of one composite component of a campaign, JSON {"scores": {model: score}}.
    void put_scores(uint32_t campaign, const std::string& component, const std::string& json);
    // One audit event (coordinator/audit.hpp), JSON; seq increases by one per event.
    void put_audit(uint64_t seq, const std::string& json);
    bool empty() const { return puts_ == 0; }
    size_t size() const { return puts_; }
    // Whether the batch writes a record of this kind (the store fault seam triggers on it).
    bool writes(RecordKind kind) const { return (kinds_ & static_cast<uint32_t>(kind)) != 0; }
    void clear();

   private:
    friend class Store;
    void count(RecordKind kind) {
      ++puts_;
      kinds_ |= static_cast<uint32_t>(kind);
    }
    struct Impl;  // the rocksdb::WriteBatch
    std::unique_ptr<Impl> impl_;
    size_t puts_ = 0;
    uint32_t kinds_ = 0;
  };

  // Opens (creating if missing) the database in `dir`. The error names the directory and
  // RocksDB's reason (permissions, a lock held by another coordinator, corruption).
  // `fault` arms the test-only fault seam (store_faults.hpp); the default arms nothing and
  // leaves RocksDB on its own file system.
  static Result<std::unique_ptr<Store>> open(const std::filesystem::path& dir,
                                             const StoreFault& fault = {});
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Writes the batch with sync=true and clears it. A failure means it may or may not be durable
  // (a failed sync can leave the write in the log): the caller must tell nobody about it and
  // stop, and the next start recovers whichever it is.
  Status commit(Batch& batch);
  // Applies the batch (visible to reads at once) and appends it to the WAL without syncing, then
  // clears it. Durable only after a sync_wal() that starts after this returns. A failure means
  // the same as a failed commit(): stop, tell nobody.
  Status write(Batch& batch);
  // Batches given to write() or commit() so far in this process: write() number N is the N-th.
  uint64_t writes() const { return writes_; }
  // Fsyncs the WAL: every write() that returned before this call is durable when it succeeds.
  // Thread-safe against write() and reads (RocksDB's SyncWAL does not block writers). `covers`
  // is writes() as the caller last saw it, for the fault seam. A failure: stop, tell nobody.
  // False (and no sync) once a write has failed: the caller stops on that write's error.
  Result<bool> sync_wal(uint64_t covers);
  // Operations the fault seam failed so far (0 without one), so tests see the fault was real.
  uint64_t injected_faults() const;
  // Time the last commit took, for metrics.
  std::chrono::microseconds last_commit_latency() const { return last_commit_latency_; }

  // nullopt when the key was never written. Any other failure (an I/O error, a value that is not
  // 8 bytes) is an error: treating it as "never written" could restart the attempt-id epoch at 1
  // and hand out ids that already exist.
  Result<std::optional<uint64_t>> get_meta_u64(std::string_view name) const;
  std::optional<std::string> get_samples(const ShardKey& key) const;
  std::optional<std::string> get_provenance(const ShardKey& key) const;
  struct ReuseSource {
    ShardKey shard;
    uint64_t attempt_id = 0;
  };
  // nullopt when no succeeded shard with this identity was ever indexed.
  std::optional<ReuseSource> get_reuse(std::string_view identity_hex) const;
  // nullopt when the shard has no record (never left pending) or it does not decode.
  std::optional<ShardRecord> get_shard(const ShardKey& key) const;

  // Scans call `visit` in key order; a record that does not decode stops the scan with an error
  // that names its key.
  Status scan_campaigns(
      const std::function<void(uint32_t campaign, std::string_view json)>& visit) const;
  Status scan_shards(std::optional<uint32_t> campaign,
                     const std::function<void(const ShardKey&, const ShardRecord&)>& visit) const;
  // Visits the record of each given-up attempt, then its late result if one came.
  Status scan_attempts(uint32_t campaign,
                       const std::function<void(const ShardKey&, uint64_t attempt_id,
                                                const AttemptRecord&)>& visit) const;
  // Provenance records of one campaign, in shard key order.
  Status scan_provenance(
      uint32_t campaign,
      const std::function<void(const ShardKey&, std::string_view json)>& visit) const;
  Status scan_scores(const std::function<void(uint32_t campaign, std::string_view component,
                                              std::string_view json)>& visit) const;
  Status scan_cells(const std::function<void(uint32_t campaign, uint32_t group,
                                             const CellAggregate&)>& visit) const;

  // The highest audit sequence number stored, if any.
  std::optional<uint64_t> last_audit_seq() const;
  // Visits at most `limit` audit events with seq > after, oldest first.
  Status scan_audit(uint64_t after, size_t limit,
                    const std::function<void(uint64_t seq, std::string_view json)>& visit) const;

  // RocksDB's estimate of live data plus memtables, for the size metric.
  uint64_t approximate_size_bytes() const;
  // Flushes memtables and the WAL; used on graceful stop so the next start replays nothing.
  Status flush();

 private:
  Store(std::unique_ptr<rocksdb::DB> db, std::unique_ptr<rocksdb::Env> env,
        std::shared_ptr<FaultInjectionFs> fault_fs, StoreFault fault);
  // commit() (sync) and write() (no sync): one write path.
  Status write_batch(Batch& batch, bool sync);
  // Arms the seam when this batch is the one the fault waits for; true if the file system is
  // armed now (and must be disarmed after the write). A sync fault of a pipelined write() is
  // left to the sync_wal() that covers it.
  bool arm_fault_for(const Batch& batch, bool sync_follows_later);

  // Declared before db_, destroyed after it: RocksDB uses the Env until it is closed.
  std::shared_ptr<FaultInjectionFs> fault_fs_;
  std::unique_ptr<rocksdb::Env> env_;
  std::unique_ptr<rocksdb::DB> db_;
  StoreFault fault_;
  uint64_t writes_ = 0;
  // RocksDB asserts (aborts) when it syncs a log whose last append failed, so once a write failed
  // no sync_wal() runs, and a write the seam is about to fail waits for the sync in flight.
  std::mutex sync_gate_;
  bool write_failed_ = false;  // guarded by sync_gate_
  // The write() whose sync must fail or hang (0: none), set by the core thread, taken by the
  // sync thread.
  std::atomic<uint64_t> sync_fault_write_{0};
  const bool sync_fault_fails_;  // the chosen sync fails (sync@) rather than only hangs
  const std::chrono::milliseconds sync_fault_delay_;
  std::chrono::microseconds last_commit_latency_{0};
};

// WalSyncer: the thread that makes pipelined Store::write()s durable while the core goes on.
//
// The core writes a turn's batch, asks for "every write up to N" with request(N), and keeps
// working; this thread runs one sync_wal() at a time, each covering every write that had returned
// when it started (so syncs group the turns written meanwhile: one fsync for many turns), and
// publishes how far the store is durable. fd() (an eventfd) becomes readable whenever that
// advances or a sync fails, so the core's poll wakes up to release what became durable. A failed
// sync is final: nothing after it is ever reported durable, and the core must stop.
class WalSyncer {
 public:
  struct Progress {
    uint64_t durable = 0;                // every write up to this one is durable
    std::optional<std::string> failure;  // a sync failed: stop without telling anybody
    uint64_t syncs = 0;                  // successful syncs so far
  };
  // `on_sync` runs on the sync thread after every successful sync with its duration (metrics;
  // it must be thread-safe).
  WalSyncer(Store& store, uint64_t durable,
            std::function<void(std::chrono::microseconds)> on_sync = {});
  // Finishes the sync in flight, starts no other, joins.
  ~WalSyncer();
  WalSyncer(const WalSyncer&) = delete;
  WalSyncer& operator=(const WalSyncer&) = delete;

  int fd() const { return wake_fd_; }
  // Asks for every write up to `write` to be made durable (no-op if it already was asked).
  void request(uint64_t write);
  // Clears fd()'s readiness and returns where the syncs stand.
  Progress take();
  // Blocks until `write` is durable, a sync failed, or stop_syncing() was called.
  Progress wait_for(uint64_t write);
  // Starts no further sync and returns once the one in flight (if any) has ended, so take()
  // then says whether it failed. For a write that failed: nothing after it may become durable,
  // and a failed sync is named as the cause when it was one.
  void stop_syncing();

 private:
  void run();

  Store& store_;
  std::function<void(std::chrono::microseconds)> on_sync_;
  int wake_fd_ = -1;
  std::mutex mutex_;
  std::condition_variable wanted_;  // request() or stop -> the sync thread
  std::condition_variable synced_;  // a sync ended -> wait_for()
  uint64_t requested_ = 0;          // guarded by mutex_, as are the members below but thread_
  Progress progress_;
  bool stopping_ = false;
  bool syncing_ = false;  // a sync_wal() is in flight
  std::thread thread_;    // last: started once everything above is ready
};

}  // namespace evald::coordinator
