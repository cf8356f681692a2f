#include "coordinator/store_faults.hpp"

#include <array>
#include <charconv>
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
                std::shared_ptr<std::atomic<uint64_t>> injected)
      : FSWritableFileOwnerWrapper(std::move(file)),
        armed_(std::move(armed)),
        injected_(std::move(injected)) {}

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
    if (fire(Armed::kWalSync)) return rocksdb::IOStatus::IOError("injected WAL sync fault");
    return FSWritableFileOwnerWrapper::Sync(options, dbg);
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    if (fire(Armed::kWalSync)) return rocksdb::IOStatus::IOError("injected WAL sync fault");
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

  std::shared_ptr<std::atomic<Armed>> armed_;
  std::shared_ptr<std::atomic<uint64_t>> injected_;
};

}  // namespace

Result<StoreFault> parse_store_fault(std::string_view text) {
  const auto usage = [&text] {
    return make_error(
        "--test-store-fault '" + std::string(text) +
        "': expected commit@WHEN, sync@WHEN or meta-read@KEY, where WHEN is a commit number "
        "(1 = the first) or a record kind (meta, campaign, shard, attempt, cell, samples, audit)");
  };
  const auto at = text.find('@');
  if (at == std::string_view::npos || at + 1 == text.size()) return usage();
  const auto kind = text.substr(0, at);
  const auto when = text.substr(at + 1);
  StoreFault fault;
  if (kind == "meta-read") {
    fault.kind = StoreFault::Kind::kMetaRead;
    fault.meta_key = std::string(when);
    return fault;
  }
  if (kind == "commit") {
    fault.kind = StoreFault::Kind::kCommit;
  } else if (kind == "sync") {
    fault.kind = StoreFault::Kind::kSync;
  } else {
    return usage();
  }
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
      break;
  }
  std::string out = fault.kind == StoreFault::Kind::kCommit ? "commit@" : "sync@";
  for (const auto& [name, bit] : kRecordKinds) {
    if (fault.record_kinds == static_cast<uint32_t>(bit)) return out + std::string(name);
  }
  return out + std::to_string(fault.commit_number);
}

void FaultInjectionFs::wrap_if_wal(const std::string& fname,
                                   std::unique_ptr<rocksdb::FSWritableFile>* result) {
  if (!is_wal(fname) || !*result) return;
  *result = std::make_unique<FaultyWalFile>(std::move(*result), armed_, injected_);
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
