// Helpers shared by the unit and integration tests: temporary directories that remove themselves,
// and polling with a deadline instead of fixed sleeps.
#pragma once

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

}  // namespace evald::testing
