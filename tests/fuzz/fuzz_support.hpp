// Helpers shared by the libFuzzer targets in this directory (CONTRIBUTING.md, "Fuzzing"): a check
// that aborts with a message (libFuzzer records the input of any abort as a crash), and a scratch
// directory for targets that need real files.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

namespace evald::fuzz {

// The fuzzers' oracle: a property of our code that must hold for every input. Not assert(),
// which the RelWithDebInfo build compiles out.
[[noreturn]] inline void fail(std::string_view what) {
  std::fprintf(stderr, "fuzz check failed: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

inline void check(bool condition, std::string_view what) {
  if (!condition) fail(what);
}

// A fresh directory under $TMPDIR (scripts/fuzz.sh points that at a directory it removes), removed
// with everything in it on destruction. A crash skips the destructor, which is why the script
// cleans up too.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix) {
    std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) fail("cannot create a scratch directory");
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace evald::fuzz
