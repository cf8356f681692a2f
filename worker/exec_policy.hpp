// ExecPolicy: which programs this worker agrees to start for a campaign (--allow-exec). A spec
// comes from whoever may submit to the coordinator; the worker's owner decides what runs on the
// node. Used by the Worker on its main thread before an exec attempt is handed to the ExecRunner.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace evald::worker {

class ExecPolicy {
 public:
  // Why a program was refused; the label of evald_worker_exec_refused_total{reason}.
  enum class Refusal { kNotAllowed, kNotFound };
  struct Refused {
    Refusal reason;
    std::string message;  // "/bin/sh: not under --allow-exec (/opt/eval)"
  };

  // Allows anything (no --allow-exec).
  ExecPolicy() = default;

  // Each entry is a file (allowed itself) or a directory (everything under it, at any depth),
  // canonicalised now, symlinks resolved. An entry that does not exist is an error naming the
  // flag, so a typo cannot silently allow nothing, or, after someone creates the path, more.
  static Result<ExecPolicy> from_paths(const std::vector<std::string>& entries);

  bool restricted() const { return !entries_.empty(); }

  // Checks `executable` (runner.command[0] with placeholders substituted) the way the worker
  // would start it: found through PATH or made absolute (resolve_executable), then canonical
  // (every symlink resolved), and that file must be an allowed file or lie inside an allowed
  // directory. Without --allow-exec everything passes, even a missing program (the spawn then
  // reports it as it always did). Reads the filesystem; takes microseconds.
  std::optional<Refused> check(const std::string& executable) const;

  // "/opt/eval, /usr/local/bin/run-eval", or "anything" when not restricted.
  std::string describe() const;

 private:
  struct Entry {
    std::filesystem::path path;  // canonical
    bool directory = false;
  };
  std::vector<Entry> entries_;
};

const char* to_string(ExecPolicy::Refusal reason);

// The absolute path a program is started from (ProcessSpec::executable): searched in the worker's
// PATH when it has no '/', else made absolute against the worker's working directory. "" and
// `error` set when the command is empty or not found. The spawn (worker/process.cpp) and the
// policy check use this one function, so they cannot disagree about which file is meant.
std::string resolve_executable(const std::string& name, std::string& error);

}  // namespace evald::worker
