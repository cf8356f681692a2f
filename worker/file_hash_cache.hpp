// FileHashCache: SHA-256 of the files an attempt depends on (the runner's executable, the
// benchmark's params.data), hashed once per file version. A file is identified by its path,
// device, inode, size and modification time; while those are unchanged the cached digest is
// returned after one stat(), so a 10 GB data file read by a thousand shards is hashed once.
// (A file rewritten in place within one mtime tick with the same size would be missed; every
// writer evald knows of, cp/rsync/download tools, changes size or mtime.)
//
// Thread: the exec runner's hashing thread only; not thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <unordered_map>

#include "common/result.hpp"

namespace evald::worker {

class FileHashCache {
 public:
  explicit FileHashCache(size_t max_entries = 4096) : max_entries_(max_entries) {}

  // The hex digest of the file at `path`; the error names the path and why (missing, not a
  // regular file, unreadable).
  Result<std::string> sha256(const std::filesystem::path& path);

  uint64_t files_hashed() const { return files_hashed_; }
  uint64_t cache_hits() const { return cache_hits_; }

 private:
  struct Entry {
    uint64_t device = 0;
    uint64_t inode = 0;
    int64_t size = 0;
    int64_t mtime_ns = 0;
    std::string digest;
  };
  size_t max_entries_;
  std::unordered_map<std::string, Entry> entries_;
  uint64_t files_hashed_ = 0;
  uint64_t cache_hits_ = 0;
};

}  // namespace evald::worker
