// Helpers shared by the unit and integration tests: temporary directories that remove themselves,
// polling with a deadline instead of fixed sleeps, reading files, watching processes, free ports.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>

namespace evald::testing {

// A fresh directory under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "evald-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Calls `condition` every `interval` until it returns true or `timeout` passes; returns its last
// answer.
bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::milliseconds interval = std::chrono::milliseconds(20));

// The whole file; throws std::runtime_error naming it if it cannot be opened.
std::string read_file(const std::filesystem::path& path);
// The whole file, or "" if it cannot be opened (a /proc entry of a process that just ended).
std::string read_file_or_empty(const std::filesystem::path& path);

// Gone, or (if zombie_counts_as_gone) a zombie waiting for a parent that is not ours to judge:
// an orphaned grandchild is reaped by init, whenever init gets to it.
bool process_gone(pid_t pid, bool zombie_counts_as_gone = true);

// A TCP port on 127.0.0.1 that was free a moment ago, for a server that cannot pick its own
// (Prometheus, the test model server): another process may take it first, so a caller that
// cannot tolerate that retries. Throws std::runtime_error if no socket can be bound.
int free_loopback_port();

// tests/support/openai_test_server.py: the OpenAI-compatible model server of the served-model
// tests and the runner benchmark.
std::filesystem::path openai_test_server_script();

}  // namespace evald::testing
