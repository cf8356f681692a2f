#include "worker/file_hash_cache.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "common/sha256.hpp"

namespace evald::worker {
namespace {

Result<struct stat> stat_regular(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return make_error("cannot stat " + path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return make_error(path + " is not a regular file");
  return st;
}

int64_t mtime_ns(const struct stat& st) {
  return int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
}

}  // namespace

Result<std::string> FileHashCache::sha256(const std::filesystem::path& path) {
  const std::string key = path.string();
  auto before = stat_regular(key);
  if (!before) return before.error();
  const auto& st = before.value();
  if (const auto it = entries_.find(key); it != entries_.end()) {
    const auto& e = it->second;
    if (e.device == st.st_dev && e.inode == st.st_ino && e.size == st.st_size &&
        e.mtime_ns == mtime_ns(st)) {
      ++cache_hits_;
      return e.digest;
    }
  }
  const auto started = std::chrono::steady_clock::now();
  auto digest = sha256_file_hex(path);
  if (!digest) return digest.error();
  // Changed while we read it: the digest belongs to no version of the file, so keep none.
  auto after = stat_regular(key);
  if (!after) return after.error();
  if (after->st_size != st.st_size || mtime_ns(after.value()) != mtime_ns(st) ||
      after->st_ino != st.st_ino) {
    return make_error(key + " changed while it was being hashed");
  }
  ++files_hashed_;
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);
  spdlog::info("file_hashed path={} bytes={} sha256={} duration_ms={}", key, st.st_size,
               digest.value(), took.count());
  if (entries_.size() >= max_entries_ && entries_.count(key) == 0) entries_.clear();
  entries_.insert_or_assign(
      key, Entry{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino), st.st_size,
                 mtime_ns(st), digest.value()});
  return digest;
}

}  // namespace evald::worker
