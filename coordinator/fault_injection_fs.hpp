// FaultInjectionFs: the file-system half of the store fault seam (coordinator/store_faults.hpp).
// Only store.cpp includes it, so RocksDB's file-system headers stay out of everything else.
#pragma once

#include <rocksdb/file_system.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace evald::coordinator {

// A FileSystemWrapper that fails the next WAL append or sync while armed, or makes the next sync
// slow. Thread-safe: RocksDB may open files from its background threads; the Store arms and
// disarms on the core thread (append faults) or on its sync thread (sync faults).
class FaultInjectionFs : public rocksdb::FileSystemWrapper {
 public:
  enum class Armed : int { kNothing, kWalAppend, kWalSync, kWalSlowSync };

  explicit FaultInjectionFs(const std::shared_ptr<rocksdb::FileSystem>& base)
      : FileSystemWrapper(base), armed_(std::make_shared<std::atomic<Armed>>(Armed::kNothing)) {}

  static const char* kClassName() { return "EvaldFaultInjectionFs"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& fname,
                                       const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override;

  // `sync_delay`: how long the armed sync hangs before it fails or goes through.
  void arm(Armed what, std::chrono::milliseconds sync_delay = {}) {
    sync_delay_ms_->store(sync_delay.count());
    armed_->store(what);
  }
  void disarm() { armed_->store(Armed::kNothing); }
  // How many operations failed because of an armed fault.
  uint64_t injected() const { return injected_->load(); }

 private:
  void wrap_if_wal(const std::string& fname, std::unique_ptr<rocksdb::FSWritableFile>* result);

  std::shared_ptr<std::atomic<Armed>> armed_;
  std::shared_ptr<std::atomic<uint64_t>> injected_ = std::make_shared<std::atomic<uint64_t>>(0);
  std::shared_ptr<std::atomic<int64_t>> sync_delay_ms_ = std::make_shared<std::atomic<int64_t>>(0);
};

}  // namespace evald::coordinator
