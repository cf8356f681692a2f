// Outbox: finished exec results kept on disk until the coordinator ACKs them, so that a worker
// restart (or crash) does not lose work that took hours of GPU time. noop results never come here.
//
// Layout: <work-dir>/outbox/<attempt_id>.result, each file one RESULTS frame holding exactly one
// result (protocol::encode). A file is written as <name>.tmp, fsynced, renamed into place, and the
// directory fsynced, so after a crash a .result file is either complete or absent; a leftover .tmp
// was never sent and is deleted on load. Removal after the ACK is not synced: a removal lost in a
// crash only makes the next start re-send a result the coordinator already has, which it ignores
// (results are deduplicated by attempt id).
//
// Threads: used by the worker's main thread only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "common/protocol.hpp"
#include "common/result.hpp"
#include "worker/unique_fd.hpp"

namespace evald::worker {

struct LoadedOutbox {
  std::vector<protocol::ShardResult> results;  // sorted by attempt id
  size_t corrupt = 0;                          // files that were moved aside as <name>.corrupt
};

class Outbox {
 public:
  // Opens the outbox directory, creating it if missing.
  static Result<Outbox> open(const std::filesystem::path& dir);

  // Durably stores the results (one directory fsync for the whole batch). On error some of them
  // may be stored; the error names the file.
  Status write(const std::vector<const protocol::ShardResult*>& results);
  Status write(const protocol::ShardResult& result) { return write({&result}); }

  // Forgets a result once the coordinator has it. A missing file is not an error.
  void remove(uint64_t attempt_id);

  // Every stored result. A file that does not decode into exactly one result for the attempt its
  // name says is logged and renamed to <name>.corrupt; it never stops the worker.
  LoadedOutbox load();

  std::filesystem::path path_of(uint64_t attempt_id) const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  Outbox(std::filesystem::path dir, UniqueFd dir_fd)
      : dir_(std::move(dir)), dir_fd_(std::move(dir_fd)) {}

  std::filesystem::path dir_;
  UniqueFd dir_fd_;  // for fsync of the directory after renames
};

}  // namespace evald::worker
