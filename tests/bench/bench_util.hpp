// Small helpers the benchmark programs share.
#pragma once

#include <sys/statfs.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace evald::bench {

// "1,2,4" -> {1, 2, 4}; throws std::invalid_argument on an empty list, a non-number or a count
// that is not positive.
inline std::vector<size_t> parse_counts(const std::string& text) {
  std::vector<size_t> counts;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    const long value = std::stol(item, &used);
    if (used != item.size() || value <= 0) throw std::invalid_argument(item);
    counts.push_back(static_cast<size_t>(value));
  }
  if (counts.empty()) throw std::invalid_argument(text);
  return counts;
}

// The file system a path lives on, by statfs's magic number: an fsync on tmpfs costs nothing,
// on ext4 or xfs over a virtual disk it costs what the host gives it.
inline std::string filesystem_type(const std::filesystem::path& path) {
  struct statfs info {};
  if (::statfs(path.c_str(), &info) != 0)
    return std::string("unknown (") + std::strerror(errno) + ")";
  const auto magic = static_cast<unsigned long>(info.f_type);
  struct Known {
    unsigned long magic;
    const char* name;
  };
  static constexpr Known kKnown[] = {
      {0xEF53, "ext2/3/4"},  {0x58465342, "xfs"},       {0x9123683E, "btrfs"},
      {0x01021994, "tmpfs"}, {0x794C7630, "overlayfs"}, {0x6969, "nfs"},
      {0x2FC12FC1, "zfs"},   {0xF2F52010, "f2fs"},      {0x65735546, "fuse"},
  };
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%lx", magic);
  for (const auto& known : kKnown) {
    if (known.magic == magic) return std::string(known.name) + " (" + hex + ")";
  }
  return std::string("other (") + hex + ")";
}

}  // namespace evald::bench
