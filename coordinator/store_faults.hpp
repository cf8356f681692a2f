// Store fault injection, for tests only: makes one store commit fail, one WAL sync fail (at once
// or after a delay), one WAL sync slow, or every read of one meta key fail, so tests can show on
// the real coordinator binary that a storage failure stops it without acknowledging anything of the
// failed turn, and that a restart on the same data dir recovers exactly (docs/reliability.md).
//
// Commit and sync faults are injected where RocksDB's own FaultInjectionTestEnv injects them: in
// the file system under the database. A FaultInjectionFs wraps the real one, and while the Store
// writes the chosen batch it makes the next append (commit fault) or sync (sync fault) of a WAL
// file return an I/O error, so RocksDB itself sees the failure and reports it from
// DB::Write or DB::SyncWAL. A sync fault (and a slow sync) fires in the sync that makes the chosen
// batch durable: on the core's pipelined path that is the store's sync thread, so a delay lets the
// core write later turns while the failing sync is still running. A meta read fault is injected by
// the Store, as an I/O error from the read: a memtable read never reaches the file system.
//
// The seam is compiled into evald-coordinator only when the build has EVALD_FAULT_INJECTION (on
// with the tests, off in a build without them) and is armed only by the hidden
// --test-store-fault flag; without it nothing here runs.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace evald::coordinator {

// What a batch writes, as bits: a commit fault can wait for the first batch that writes a
// campaign (a submit), a cell (a counted result), ...
enum class RecordKind : uint32_t {
  kMeta = 1u << 0,
  kCampaign = 1u << 1,
  kShard = 1u << 2,
  kAttempt = 1u << 3,
  kCell = 1u << 4,
  kSamples = 1u << 5,
  kAudit = 1u << 6,
};

struct StoreFault {
  // kSlowSync: the sync waits `delay` and then succeeds (shows that answers wait for it).
  enum class Kind { kNone, kCommit, kSync, kSlowSync, kMetaRead };
  Kind kind = Kind::kNone;
  // kCommit, kSync: the first commit whose batch writes a record of one of these kinds fails...
  uint32_t record_kinds = 0;
  // ...or, when record_kinds is 0, the commit with this number (1 = this process's first).
  uint64_t commit_number = 0;
  // kMetaRead: the meta key whose reads fail.
  std::string meta_key;
  // kSync, kSlowSync: how long the chosen sync takes before it fails (kSync) or goes through.
  std::chrono::milliseconds delay{0};
};

// Parses KIND@WHEN[,delay_ms=N]: "commit@cell", "sync@campaign", "commit@3", "meta-read@epoch",
// "sync@cell,delay_ms=1500", "slow-sync@campaign,delay_ms=700" (slow-sync needs the delay; only
// sync and slow-sync take one). Record kinds: meta, campaign, shard, attempt, cell, samples,
// audit. The error says what is accepted.
Result<StoreFault> parse_store_fault(std::string_view text);
// The text parse_store_fault accepts for `fault`, for logs.
std::string describe(const StoreFault& fault);

}  // namespace evald::coordinator
