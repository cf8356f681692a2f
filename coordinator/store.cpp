#include "coordinator/store.hpp"

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/options.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>
#include <rocksdb/version.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <cassert>
#include <cerrno>
#include <system_error>

#include "coordinator/fault_injection_fs.hpp"

// The WAL sync thread writes with sync=false and calls SyncWAL() while the core writes on. Before
// RocksDB 7.7 a WAL switch during such a sync could mark appended data synced that never was
// (facebook/rocksdb#10560), which would let the coordinator acknowledge a lost write.
static_assert(ROCKSDB_MAJOR > 7 || (ROCKSDB_MAJOR == 7 && ROCKSDB_MINOR >= 7),
              "evald needs RocksDB 7.7 or later (SyncWAL concurrent with writes)");

namespace evald::coordinator {
namespace {

// One-byte key prefixes; the full layout is in store_layout.md.
constexpr char kMetaPrefix = 'm';
constexpr char kCampaignPrefix = 'c';
constexpr char kShardPrefix = 's';
constexpr char kAttemptPrefix = 'a';
constexpr char kCellPrefix = 'g';
constexpr char kSamplesPrefix = 'x';
constexpr char kAuditPrefix = 'u';
constexpr char kProvenancePrefix = 'p';
constexpr char kReusePrefix = 'r';
constexpr char kScoresPrefix = 'k';
constexpr char kLateResultSuffix = 'L';  // after an attempt key: the late result of that attempt

// The prefix under which the memtable keeps an insert hint for a key: its type and, for the
// per-shard keys, campaign and group (a group's shards are leased and finish in ascending order,
// so consecutive inserts under one prefix land next to each other). Keys whose order says
// nothing about the next insert (reuse index: hashes; meta, campaigns, scores: rare) get none,
// since each distinct prefix costs a hint entry for the memtable's lifetime.
class MemtableHintPrefix final : public rocksdb::SliceTransform {
 public:
  const char* Name() const override { return "evald.MemtableHintPrefix"; }
  rocksdb::Slice Transform(const rocksdb::Slice& key) const override {
    return rocksdb::Slice(key.data(), prefix_bytes(key));
  }
  bool InDomain(const rocksdb::Slice& key) const override { return prefix_bytes(key) > 0; }

 private:
  static size_t prefix_bytes(const rocksdb::Slice& key) {
    if (key.empty()) return 0;
    size_t bytes = 0;
    switch (key[0]) {
      case kShardPrefix:
      case kAttemptPrefix:
      case kSamplesPrefix:
      case kProvenancePrefix:
        bytes = 1 + 2 * sizeof(uint32_t);  // type, campaign, group
        break;
      case kCellPrefix:
        bytes = 1 + sizeof(uint32_t);  // type, campaign
        break;
      case kAuditPrefix:
        bytes = 1;  // one ascending sequence
        break;
      default:
        return 0;
    }
    return key.size() >= bytes ? bytes : 0;
  }
};

void append_be32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((v >> shift) & 0xff));
}
void append_be64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((v >> shift) & 0xff));
}
uint32_t read_be32(std::string_view s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}
uint64_t read_be64(std::string_view s, size_t at) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}

std::string shard_key(char prefix, const ShardKey& key) {
  std::string out(1, prefix);
  out.reserve(13);
  append_be32(out, key.campaign);
  append_be32(out, key.group);
  append_be32(out, key.shard);
  return out;
}

ShardKey parse_shard_key(std::string_view k) {
  return ShardKey{read_be32(k, 1), read_be32(k, 5), read_be32(k, 9)};
}

std::string hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (char c : bytes) {
    out.push_back(kDigits[(static_cast<uint8_t>(c) >> 4) & 0xf]);
    out.push_back(kDigits[static_cast<uint8_t>(c) & 0xf]);
  }
  return out;
}

// Iterates every key that starts with `prefix`.
template <typename Visit>
Status scan_prefix(rocksdb::DB& db, const std::string& prefix, Visit&& visit) {
  rocksdb::ReadOptions options;
  options.fill_cache = false;  // recovery scans everything once; keep the cache for lookups
  std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(options));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    Status s = visit(std::string_view(it->key().data(), it->key().size()),
                     std::string_view(it->value().data(), it->value().size()));
    if (!s.ok()) return s;
  }
  if (!it->status().ok()) return make_error("store scan failed: " + it->status().ToString());
  return Ok{};
}

// 'r' + the 32 raw bytes of the identity digest; "" when it is not 64 hex digits.
std::string reuse_key(std::string_view identity_hex) {
  if (identity_hex.size() != 64) return {};
  std::string out(1, kReusePrefix);
  for (size_t i = 0; i < 64; i += 2) {
    int byte = 0;
    for (size_t j = 0; j < 2; ++j) {
      const char c = identity_hex[i + j];
      int v = 0;
      if (c >= '0' && c <= '9') {
        v = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        v = c - 'a' + 10;
      } else {
        return {};
      }
      byte = byte * 16 + v;
    }
    out.push_back(static_cast<char>(byte));
  }
  return out;
}

}  // namespace

struct Store::Batch::Impl {
  rocksdb::WriteBatch batch;
};

Store::Batch::Batch() : impl_(std::make_unique<Impl>()) {}
Store::Batch::~Batch() = default;

void Store::Batch::put_provenance(const ShardKey& key, const std::string& json) {
  impl_->batch.Put(shard_key(kProvenancePrefix, key), json);
  ++puts_;
}

void Store::Batch::put_reuse(std::string_view identity_hex, const ShardKey& source,
                             uint64_t attempt_id) {
  const std::string key = reuse_key(identity_hex);
  assert(!key.empty() && "identity digests are made by sha256_hex");
  std::string value;
  append_be32(value, source.campaign);
  append_be32(value, source.group);
  append_be32(value, source.shard);
  append_be64(value, attempt_id);
  impl_->batch.Put(key, value);
  ++puts_;
}

void Store::Batch::put_scores(uint32_t campaign, const std::string& component,
                              const std::string& json) {
  std::string key(1, kScoresPrefix);
  append_be32(key, campaign);
  key.append(component);
  impl_->batch.Put(key, json);
  ++puts_;
}

void Store::Batch::put_meta_u64(std::string_view name, uint64_t value) {
  std::string key(1, kMetaPrefix);
  key.append(name);
  std::string v;
  append_be64(v, value);
  impl_->batch.Put(key, v);
  count(RecordKind::kMeta);
}

void Store::Batch::put_audit(uint64_t seq, const std::string& json) {
  std::string key(1, kAuditPrefix);
  append_be64(key, seq);
  impl_->batch.Put(key, json);
  count(RecordKind::kAudit);
}

void Store::Batch::put_campaign(uint32_t campaign, const std::string& json) {
  std::string key(1, kCampaignPrefix);
  append_be32(key, campaign);
  impl_->batch.Put(key, json);
  count(RecordKind::kCampaign);
}

void Store::Batch::put_shard(const ShardKey& key, const ShardRecord& record) {
  impl_->batch.Put(shard_key(kShardPrefix, key), encode(record));
  count(RecordKind::kShard);
}

void Store::Batch::put_attempt(const ShardKey& key, uint64_t attempt_id,
                               const AttemptRecord& record) {
  std::string k = shard_key(kAttemptPrefix, key);
  append_be64(k, attempt_id);
  if (record.outcome == AttemptOutcome::kStale) k.push_back(kLateResultSuffix);
  impl_->batch.Put(k, encode(record));
  count(RecordKind::kAttempt);
}

void Store::Batch::put_cell(uint32_t campaign, uint32_t group, const CellAggregate& cell) {
  std::string key(1, kCellPrefix);
  append_be32(key, campaign);
  append_be32(key, group);
  impl_->batch.Put(key, encode(cell));
  count(RecordKind::kCell);
}

void Store::Batch::put_samples(const ShardKey& key, const std::string& samples_json) {
  impl_->batch.Put(shard_key(kSamplesPrefix, key), samples_json);
  count(RecordKind::kSamples);
}

void Store::Batch::delete_samples(const ShardKey& key) {
  impl_->batch.Delete(shard_key(kSamplesPrefix, key));
  ++puts_;
}

void Store::Batch::clear() {
  impl_->batch.Clear();
  puts_ = 0;
  kinds_ = 0;
}

Result<std::unique_ptr<Store>> Store::open(const std::filesystem::path& dir,
                                           const StoreFault& fault) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error("data dir '" + dir.string() + "': " + ec.message());
  rocksdb::Options options;
  options.create_if_missing = true;
  // SyncWAL() is the durability barrier of every turn: it must see every write that returned.
  // Both are RocksDB's defaults today; set here so a tuning change cannot turn them on silently
  // (with a manual WAL flush, SyncWAL skips what is still in RocksDB's own buffer).
  options.manual_wal_flush = false;
  options.allow_mmap_writes = false;
  options.IncreaseParallelism(2);
  // Big memtables: the hot path writes each shard record twice within milliseconds, and most
  // overwrites should die in the memtable instead of being flushed and compacted.
  options.write_buffer_size = 64 << 20;
  options.max_write_buffer_number = 3;
  // Inserting into the memtable's skiplist was the largest cost of a result (a third of the core
  // thread): every result writes keys of several kinds (shard, provenance, samples) in many
  // groups, so each insert lands far from the one before and searches the whole list. A hint per
  // prefix (MemtableHintPrefix) makes the mostly ascending inserts within one cheap. RocksDB uses
  // the hints only for non-concurrent memtable writes; there is one writer (the core thread).
  options.memtable_insert_with_hint_prefix_extractor = std::make_shared<MemtableHintPrefix>();
  options.allow_concurrent_memtable_write = false;
  rocksdb::BlockBasedTableOptions table;
  table.block_size = 16 << 10;
  options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  std::shared_ptr<FaultInjectionFs> fault_fs;
  std::unique_ptr<rocksdb::Env> env;
  if (fault.kind == StoreFault::Kind::kCommit || fault.kind == StoreFault::Kind::kSync ||
      fault.kind == StoreFault::Kind::kSlowSync) {
    fault_fs = std::make_shared<FaultInjectionFs>(rocksdb::FileSystem::Default());
    env = rocksdb::NewCompositeEnv(fault_fs);
    options.env = env.get();
  }
  rocksdb::DB* raw = nullptr;
  const auto status = rocksdb::DB::Open(options, dir.string(), &raw);
  if (!status.ok()) {
    return make_error("cannot open RocksDB in '" + dir.string() + "': " + status.ToString());
  }
  return std::unique_ptr<Store>(
      new Store(std::unique_ptr<rocksdb::DB>(raw), std::move(env), std::move(fault_fs), fault));
}

Store::Store(std::unique_ptr<rocksdb::DB> db, std::unique_ptr<rocksdb::Env> env,
             std::shared_ptr<FaultInjectionFs> fault_fs, StoreFault fault)
    : fault_fs_(std::move(fault_fs)),
      env_(std::move(env)),
      db_(std::move(db)),
      fault_(std::move(fault)),
      sync_fault_fails_(fault_.kind == StoreFault::Kind::kSync),
      sync_fault_delay_(fault_.delay) {}

uint64_t Store::injected_faults() const {
  return fault_fs_ ? fault_fs_->injected() : 0;
}

bool Store::arm_fault_for(const Batch& batch, bool sync_follows_later) {
  const bool armed = fault_.kind == StoreFault::Kind::kCommit ||
                     fault_.kind == StoreFault::Kind::kSync ||
                     fault_.kind == StoreFault::Kind::kSlowSync;
  if (!fault_fs_ || !armed) return false;
  const bool chosen = fault_.record_kinds != 0 ? (batch.kinds_ & fault_.record_kinds) != 0
                                               : writes_ == fault_.commit_number;
  if (!chosen) return false;
  const auto kind = fault_.kind;
  fault_.kind = StoreFault::Kind::kNone;  // one fault per process: the coordinator stops on it
  if (kind == StoreFault::Kind::kCommit) {
    fault_fs_->arm(FaultInjectionFs::Armed::kWalAppend);
    return true;
  }
  if (sync_follows_later) {
    sync_fault_write_.store(writes_);
    return false;
  }
  fault_fs_->arm(kind == StoreFault::Kind::kSync ? FaultInjectionFs::Armed::kWalSync
                                                 : FaultInjectionFs::Armed::kWalSlowSync,
                 fault_.delay);
  return true;
}

Store::~Store() {
  if (db_) {
    // Close() reports errors that the destructor would hide; there is nobody left to tell but
    // the log, which the core does on its graceful-stop path via flush().
    [[maybe_unused]] auto s = db_->Close();
  }
}

Status Store::commit(Batch& batch) {
  return write_batch(batch, /*sync=*/true);
}

Status Store::write(Batch& batch) {
  return write_batch(batch, /*sync=*/false);
}

Status Store::write_batch(Batch& batch, bool sync) {
  if (batch.empty()) return Ok{};
  rocksdb::WriteOptions options;
  options.sync = sync;
  ++writes_;
  // A pipelined write arms only an append fault; its sync fault waits in sync_fault_write_ for
  // the sync that covers it.
  const bool armed = arm_fault_for(batch, /*sync_follows_later=*/!sync);
  // The seam is about to fail this append: no WAL sync may be in flight when it does.
  std::unique_lock gate(sync_gate_, std::defer_lock);
  if (armed) gate.lock();
  const auto start = std::chrono::steady_clock::now();
  const auto status = db_->Write(options, &batch.impl_->batch);
  if (armed) fault_fs_->disarm();
  last_commit_latency_ = std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::steady_clock::now() - start);
  batch.clear();
  if (!status.ok()) {
    if (!gate.owns_lock()) gate.lock();
    write_failed_ = true;
    return make_error(std::string(sync ? "store commit failed: " : "store write failed: ") +
                      status.ToString());
  }
  return Ok{};
}

Result<bool> Store::sync_wal(uint64_t covers) {
  std::lock_guard gate(sync_gate_);
  if (write_failed_) return false;
  // The fault seam: the sync that covers the chosen write fails (or hangs). Syncs of earlier
  // writes that are still running when it is chosen are left alone.
  bool faulted = false;
  if (fault_fs_) {
    uint64_t chosen = sync_fault_write_.load();
    if (chosen != 0 && chosen <= covers &&
        sync_fault_write_.compare_exchange_strong(chosen, uint64_t{0})) {
      fault_fs_->arm(sync_fault_fails_ ? FaultInjectionFs::Armed::kWalSync
                                       : FaultInjectionFs::Armed::kWalSlowSync,
                     sync_fault_delay_);
      faulted = true;
    }
  }
  const auto status = db_->SyncWAL();
  if (faulted) fault_fs_->disarm();
  if (!status.ok()) return make_error("store WAL sync failed: " + status.ToString());
  return true;
}

Result<std::optional<uint64_t>> Store::get_meta_u64(std::string_view name) const {
  std::string key(1, kMetaPrefix);
  key.append(name);
  std::string value;
  const auto status = fault_.kind == StoreFault::Kind::kMetaRead && fault_.meta_key == name
                          ? rocksdb::Status::IOError("injected meta read fault")
                          : db_->Get(rocksdb::ReadOptions(), key, &value);
  if (status.IsNotFound()) return std::optional<uint64_t>{};
  if (!status.ok()) {
    return make_error("reading meta key '" + std::string(name) + "': " + status.ToString());
  }
  if (value.size() != 8) {
    return make_error("meta key '" + std::string(name) + "' holds " + std::to_string(value.size()) +
                      " bytes, expected 8 (corrupt store?)");
  }
  return std::optional<uint64_t>{read_be64(value, 0)};
}

std::optional<std::string> Store::get_samples(const ShardKey& key) const {
  std::string value;
  if (!db_->Get(rocksdb::ReadOptions(), shard_key(kSamplesPrefix, key), &value).ok()) {
    return std::nullopt;
  }
  return value;
}

std::optional<std::string> Store::get_provenance(const ShardKey& key) const {
  std::string value;
  if (!db_->Get(rocksdb::ReadOptions(), shard_key(kProvenancePrefix, key), &value).ok()) {
    return std::nullopt;
  }
  return value;
}

std::optional<Store::ReuseSource> Store::get_reuse(std::string_view identity_hex) const {
  const std::string key = reuse_key(identity_hex);
  if (key.empty()) return std::nullopt;
  std::string value;
  if (!db_->Get(rocksdb::ReadOptions(), key, &value).ok() || value.size() != 20) {
    return std::nullopt;
  }
  return ReuseSource{ShardKey{read_be32(value, 0), read_be32(value, 4), read_be32(value, 8)},
                     read_be64(value, 12)};
}

std::optional<ShardRecord> Store::get_shard(const ShardKey& key) const {
  std::string value;
  if (!db_->Get(rocksdb::ReadOptions(), shard_key(kShardPrefix, key), &value).ok()) {
    return std::nullopt;
  }
  auto record = decode_shard_record(value);
  if (!record.ok()) return std::nullopt;
  return std::move(record).value();
}

Status Store::scan_provenance(
    uint32_t campaign,
    const std::function<void(const ShardKey&, std::string_view json)>& visit) const {
  std::string prefix(1, kProvenancePrefix);
  append_be32(prefix, campaign);
  return scan_prefix(*db_, prefix, [&](std::string_view k, std::string_view v) -> Status {
    if (k.size() != 13) return make_error("bad provenance key " + hex(k));
    visit(parse_shard_key(k), v);
    return Ok{};
  });
}

Status Store::scan_scores(const std::function<void(uint32_t campaign, std::string_view component,
                                                   std::string_view json)>& visit) const {
  return scan_prefix(*db_, std::string(1, kScoresPrefix),
                     [&](std::string_view k, std::string_view v) -> Status {
                       if (k.size() < 6) return make_error("bad scores key " + hex(k));
                       visit(read_be32(k, 1), k.substr(5), v);
                       return Ok{};
                     });
}

Status Store::scan_campaigns(
    const std::function<void(uint32_t campaign, std::string_view json)>& visit) const {
  return scan_prefix(*db_, std::string(1, kCampaignPrefix),
                     [&](std::string_view k, std::string_view v) -> Status {
                       if (k.size() != 5) return make_error("bad campaign key " + hex(k));
                       visit(read_be32(k, 1), v);
                       return Ok{};
                     });
}

Status Store::scan_shards(
    std::optional<uint32_t> campaign,
    const std::function<void(const ShardKey&, const ShardRecord&)>& visit) const {
  std::string prefix(1, kShardPrefix);
  if (campaign) append_be32(prefix, *campaign);
  return scan_prefix(*db_, prefix, [&](std::string_view k, std::string_view v) -> Status {
    if (k.size() != 13) return make_error("bad shard key " + hex(k));
    auto rec = decode_shard_record(v);
    if (!rec.ok()) return make_error(rec.error().message + " at key " + hex(k));
    visit(parse_shard_key(k), rec.value());
    return Ok{};
  });
}

Status Store::scan_attempts(
    uint32_t campaign,
    const std::function<void(const ShardKey&, uint64_t, const AttemptRecord&)>& visit) const {
  std::string prefix(1, kAttemptPrefix);
  append_be32(prefix, campaign);
  return scan_prefix(*db_, prefix, [&](std::string_view k, std::string_view v) -> Status {
    if (k.size() != 21 && !(k.size() == 22 && k[21] == kLateResultSuffix)) {
      return make_error("bad attempt key " + hex(k));
    }
    auto rec = decode_attempt_record(v);
    if (!rec.ok()) return make_error(rec.error().message + " at key " + hex(k));
    visit(parse_shard_key(k), read_be64(k, 13), rec.value());
    return Ok{};
  });
}

Status Store::scan_cells(
    const std::function<void(uint32_t, uint32_t, const CellAggregate&)>& visit) const {
  return scan_prefix(*db_, std::string(1, kCellPrefix),
                     [&](std::string_view k, std::string_view v) -> Status {
                       if (k.size() != 9) return make_error("bad cell key " + hex(k));
                       auto cell = decode_cell(v);
                       if (!cell.ok())
                         return make_error(cell.error().message + " at key " + hex(k));
                       visit(read_be32(k, 1), read_be32(k, 5), cell.value());
                       return Ok{};
                     });
}

std::optional<uint64_t> Store::last_audit_seq() const {
  std::string upper(1, static_cast<char>(kAuditPrefix + 1));
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  it->SeekForPrev(upper);
  if (!it->Valid()) return std::nullopt;
  const std::string_view k(it->key().data(), it->key().size());
  if (k.size() != 9 || k[0] != kAuditPrefix) return std::nullopt;
  return read_be64(k, 1);
}

Status Store::scan_audit(
    uint64_t after, size_t limit,
    const std::function<void(uint64_t seq, std::string_view json)>& visit) const {
  if (limit == 0 || after == UINT64_MAX) return Ok{};
  std::string start(1, kAuditPrefix);
  append_be64(start, after + 1);
  rocksdb::ReadOptions options;
  options.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(options));
  size_t seen = 0;
  for (it->Seek(start); it->Valid() && seen < limit; it->Next()) {
    const std::string_view k(it->key().data(), it->key().size());
    if (k.empty() || k[0] != kAuditPrefix) break;
    if (k.size() != 9) return make_error("bad audit key " + hex(k));
    visit(read_be64(k, 1), std::string_view(it->value().data(), it->value().size()));
    ++seen;
  }
  if (!it->status().ok()) return make_error("store scan failed: " + it->status().ToString());
  return Ok{};
}

uint64_t Store::approximate_size_bytes() const {
  uint64_t live = 0;
  uint64_t memtables = 0;
  db_->GetIntProperty(rocksdb::DB::Properties::kTotalSstFilesSize, &live);
  db_->GetIntProperty(rocksdb::DB::Properties::kCurSizeAllMemTables, &memtables);
  return live + memtables;
}

Status Store::flush() {
  auto s = db_->Flush(rocksdb::FlushOptions());
  if (!s.ok()) return make_error("store flush failed: " + s.ToString());
  s = db_->FlushWAL(/*sync=*/true);
  if (!s.ok()) return make_error("store WAL flush failed: " + s.ToString());
  return Ok{};
}

// ---------------------------------------------------------------------------------------------
// WalSyncer

WalSyncer::WalSyncer(Store& store, uint64_t durable,
                     std::function<void(std::chrono::microseconds)> on_sync)
    : store_(store), on_sync_(std::move(on_sync)), requested_(durable) {
  progress_.durable = durable;
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  thread_ = std::thread([this] { run(); });
}

WalSyncer::~WalSyncer() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wanted_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void WalSyncer::request(uint64_t write) {
  {
    std::lock_guard lock(mutex_);
    if (write <= requested_) return;
    requested_ = write;
  }
  wanted_.notify_one();
}

void WalSyncer::stop_syncing() {
  std::unique_lock lock(mutex_);
  stopping_ = true;
  synced_.notify_all();
  synced_.wait(lock, [&] { return !syncing_; });
}

WalSyncer::Progress WalSyncer::take() {
  uint64_t drained = 0;
  [[maybe_unused]] auto n = ::read(wake_fd_, &drained, sizeof drained);
  std::lock_guard lock(mutex_);
  return progress_;
}

WalSyncer::Progress WalSyncer::wait_for(uint64_t write) {
  request(write);
  std::unique_lock lock(mutex_);
  // stopping_: no sync will come (stop_syncing()); the caller finds `write` not durable.
  synced_.wait(lock, [&] {
    return progress_.durable >= write || progress_.failure.has_value() || stopping_;
  });
  return progress_;
}

void WalSyncer::run() {
  std::unique_lock lock(mutex_);
  while (true) {
    wanted_.wait(lock, [&] { return stopping_ || requested_ > progress_.durable; });
    if (stopping_ || progress_.failure) return;
    // Every write up to `target` had returned before it was requested, so this one sync makes
    // them all durable, and whatever the core writes meanwhile waits for the next one.
    const uint64_t target = requested_;
    syncing_ = true;
    lock.unlock();
    const auto start = std::chrono::steady_clock::now();
    auto synced = store_.sync_wal(target);
    const auto took = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - start);
    if (synced.ok() && synced.value() && on_sync_) on_sync_(took);
    lock.lock();
    syncing_ = false;
    if (synced.ok() && !synced.value()) {
      // A write failed: the core stops on its error; this thread syncs nothing more.
      stopping_ = true;
      synced_.notify_all();
      return;
    }
    if (synced.ok()) {
      progress_.durable = target;
      ++progress_.syncs;
    } else {
      spdlog::critical("store_sync_failed durable={} covers={} error=\"{}\"", progress_.durable,
                       target, synced.error().message);
      progress_.failure = synced.error().message;
    }
    const uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
    synced_.notify_all();
    if (progress_.failure) return;
  }
}

}  // namespace evald::coordinator
