#include "coordinator/store_faults.hpp"

#include <spdlog/spdlog.h>

#include <array>
#include <charconv>
#include <thread>
#include <utility>

#include "coordinator/fault_injection_fs.hpp"

namespace evald::coordinator {
namespace {

constexpr std::array<std::pair<std::string_view, RecordKind>, 7> kRecordKinds = {{
    {"meta", RecordKind::kMeta},
    {"campaign", RecordKind::kCampaign},
    {"shard", RecordKind::kShard},
    {"attempt", RecordKind::kAttempt},
    {"cell", RecordKind::kCell},
    {"samples", RecordKind::kSamples},
    {"audit", RecordKind::kAudit},
}};

bool is_wal(const std::string& fname) {
  return fname.ends_with(".log");
}

// A WAL file that fails the operation its file system is armed for, once per arming.
class FaultyWalFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  using Armed = FaultInjectionFs::Armed;

  FaultyWalFile(std::unique_ptr<rocksdb::FSWritableFile> file,
                std::shared_ptr<std::atomic<Armed>> armed,
                std::shared_ptr<std::atomic<uint64_t>> injected,
                std::shared_ptr<std::atomic<int64_t>> sync_delay_ms)
      : FSWritableFileOwnerWrapper(std::move(file)),
        armed_(std::move(armed)),
        injected_(std::move(injected)),
        sync_delay_ms_(std::move(sync_delay_ms)) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
    if (fire(Armed::kWalAppend)) return rocksdb::IOStatus::IOError("injected WAL append fault");
    return FSWritableFileOwnerWrapper::Append(data, options, dbg);
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           const rocksdb::DataVerificationInfo& info,
                           rocksdb::IODebugContext* dbg) override {
    if (fire(Armed::kWalAppend)) return rocksdb::IOStatus::IOError("injected WAL append fault");
    return FSWritableFileOwnerWrapper::Append(data, options, info, dbg);
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& options, rocksdb::IODebugContext* dbg) override {
    if (fire(Armed::kWalSync)) return delayed_fault();
    if (fire(Armed::kWalSlowSync)) delay();
    return FSWritableFileOwnerWrapper::Sync(options, dbg);
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    if (fire(Armed::kWalSync)) return delayed_fault();
    if (fire(Armed::kWalSlowSync)) delay();
    return FSWritableFileOwnerWrapper::Fsync(options, dbg);
  }

 private:
  // Fires at most once per arming: the first matching operation takes the fault.
  bool fire(Armed what) {
    Armed expected = what;
    if (!armed_->compare_exchange_strong(expected, Armed::kNothing)) return false;
    injected_->fetch_add(1);
    return true;
  }

  // A sync that hangs, as a sync on a struggling disk does, before it fails or goes through.
  void delay() {
    const std::chrono::milliseconds ms(sync_delay_ms_->load());
    if (ms.count() <= 0) return;
    spdlog::warn("test_store_fault_sync_delayed delay_ms={}", ms.count());
    std::this_thread::sleep_for(ms);
  }
  rocksdb::IOStatus delayed_fault() {
    delay();
    return rocksdb::IOStatus::IOError("injected WAL sync fault");
  }

  std::shared_ptr<std::atomic<Armed>> armed_;
  std::shared_ptr<std::atomic<uint64_t>> injected_;
  std::shared_ptr<std::atomic<int64_t>> sync_delay_ms_;
};

}  // namespace

Result<StoreFault> parse_store_fault(std::string_view text) {
  const auto usage = [whole = std::string(text)] {
    return make_error(
        "--test-store-fault '" + whole +
        "': expected commit@WHEN, sync@WHEN or meta-read@KEY, where WHEN is a commit number "
        "(1 = the first) or a record kind (meta, campaign, shard, attempt, cell, samples, audit); "
        "sync@WHEN and slow-sync@WHEN take ',delay_ms=N' (slow-sync needs it)");
  };
  std::chrono::milliseconds delay{0};
  bool has_delay = false;
  if (const auto comma = text.find(','); comma != std::string_view::npos) {
    constexpr std::string_view kDelay = "delay_ms=";
    const auto option = text.substr(comma + 1);
    if (!option.starts_with(kDelay)) return usage();
    const auto digits = option.substr(kDelay.size());
    uint64_t ms = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), ms);
    if (ec != std::errc() || end != digits.data() + digits.size() || ms == 0 || ms > 600000) {
      return usage();
    }
    delay = std::chrono::milliseconds(ms);
    has_delay = true;
    text = text.substr(0, comma);
  }
  const auto at = text.find('@');
  if (at == std::string_view::npos || at + 1 == text.size()) return usage();
  const auto kind = text.substr(0, at);
  const auto when = text.substr(at + 1);
  StoreFault fault;
  if (kind == "meta-read") {
    if (has_delay) return usage();
    fault.kind = StoreFault::Kind::kMetaRead;
    fault.meta_key = std::string(when);
    return fault;
  }
  if (kind == "commit" && !has_delay) {
    fault.kind = StoreFault::Kind::kCommit;
  } else if (kind == "sync") {
    fault.kind = StoreFault::Kind::kSync;
  } else if (kind == "slow-sync" && has_delay) {
    fault.kind = StoreFault::Kind::kSlowSync;
  } else {
    return usage();
  }
  fault.delay = delay;
  for (const auto& [name, bit] : kRecordKinds) {
    if (when == name) {
      fault.record_kinds = static_cast<uint32_t>(bit);
      return fault;
    }
  }
  uint64_t number = 0;
  const auto [end, ec] = std::from_chars(when.data(), when.data() + when.size(), number);
  if (ec != std::errc() || end != when.data() + when.size() || number == 0) return usage();
  fault.commit_number = number;
  return fault;
}

std::string describe(const StoreFault& fault) {
  switch (fault.kind) {
    case StoreFault::Kind::kNone:
      return "none";
    case StoreFault::Kind::kMetaRead:
      return "meta-read@" + fault.meta_key;
    case StoreFault::Kind::kCommit:
    case StoreFault::Kind::kSync:
    case StoreFault::Kind::kSlowSync:
      break;
  }
  std::string out = fault.kind == StoreFault::Kind::kCommit ? "commit@"
                    : fault.kind == StoreFault::Kind::kSync ? "sync@"
                                                            : "slow-sync@";
  std::string when = std::to_string(fault.commit_number);
  for (const auto& [name, bit] : kRecordKinds) {
    if (fault.record_kinds == static_cast<uint32_t>(bit)) when = name;
  }
  out += when;
  if (fault.delay.count() > 0) out += ",delay_ms=" + std::to_string(fault.delay.count());
  return out;
}

void FaultInjectionFs::wrap_if_wal(const std::string& fname,
                                   std::unique_ptr<rocksdb::FSWritableFile>* result) {
  if (!is_wal(fname) || !*result) return;
  *result = std::make_unique<FaultyWalFile>(std::move(*result), armed_, injected_, sync_delay_ms_);
}

rocksdb::IOStatus FaultInjectionFs::NewWritableFile(
    const std::string& fname, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  auto status = FileSystemWrapper::NewWritableFile(fname, options, result, dbg);
  if (status.ok()) wrap_if_wal(fname, result);
  return status;
}

rocksdb::IOStatus FaultInjectionFs::ReopenWritableFile(
    const std::string& fname, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  auto status = FileSystemWrapper::ReopenWritableFile(fname, options, result, dbg);
  if (status.ok()) wrap_if_wal(fname, result);
  return status;
}

rocksdb::IOStatus FaultInjectionFs::ReuseWritableFile(
    const std::string& fname, const std::string& old_fname, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  auto status = FileSystemWrapper::ReuseWritableFile(fname, old_fname, options, result, dbg);
  if (status.ok()) wrap_if_wal(fname, result);
  return status;
}

}  // namespace evald::coordinator
