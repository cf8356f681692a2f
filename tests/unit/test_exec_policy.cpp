// The worker's --allow-exec policy on a real filesystem: files and directories as entries,
// canonical comparison (symlinks out of an allowed directory, "..", a sibling whose name merely
// starts with the allowed one), PATH lookup as the spawn does it, startup errors naming the flag,
// and the refusal counter on the worker's /metrics page.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/support/test_support.hpp"
#include "worker/exec_policy.hpp"
#include "worker/worker_metrics.hpp"

using evald::testing::TempDir;
using evald::worker::ExecPolicy;
namespace fs = std::filesystem;

namespace {

void write_program(const fs::path& path) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << "#!/bin/sh\necho '{\"metrics\": {\"a\": 1}, \"count\": 1}'\n";
  fs::permissions(path, fs::perms::owner_all, fs::perm_options::add);
}

// Sets PATH for the scope (the policy resolves bare names the way the spawn does: the worker's
// own PATH). Unit tests run single-threaded.
class ScopedPath {
 public:
  explicit ScopedPath(const std::string& value) {
    const char* old = ::getenv("PATH");
    had_ = old != nullptr;
    if (had_) old_ = old;
    ::setenv("PATH", value.c_str(), 1);
  }
  ~ScopedPath() {
    if (had_) {
      ::setenv("PATH", old_.c_str(), 1);
    } else {
      ::unsetenv("PATH");
    }
  }
  ScopedPath(const ScopedPath&) = delete;
  ScopedPath& operator=(const ScopedPath&) = delete;

 private:
  bool had_ = false;
  std::string old_;
};

}  // namespace

TEST_CASE("exec policy: directories allow what lies under them, after symlinks", "[unit]") {
  TempDir dir("evald-exec-policy");
  const auto root = fs::canonical(dir.path());
  const auto allowed = root / "eval";
  write_program(allowed / "bin" / "run");
  write_program(allowed / "deep" / "er" / "run");
  write_program(root / "evalx" / "run");  // a sibling whose name starts like the allowed one
  write_program(root / "outside" / "run");
  fs::create_symlink(root / "outside" / "run", allowed / "bin" / "escape");
  fs::create_symlink(allowed / "bin" / "run", root / "outside" / "link-in");

  auto policy = ExecPolicy::from_paths({allowed.string()});
  REQUIRE(policy.ok());
  CHECK(policy->restricted());
  CHECK(policy->describe() == allowed.string());

  CHECK_FALSE(policy->check((allowed / "bin" / "run").string()).has_value());
  CHECK_FALSE(policy->check((allowed / "deep" / "er" / "run").string()).has_value());
  // A link from outside to a program inside is fine: what runs is inside.
  CHECK_FALSE(policy->check((root / "outside" / "link-in").string()).has_value());

  const auto escape = policy->check((allowed / "bin" / "escape").string());
  REQUIRE(escape.has_value());
  CHECK(escape->reason == ExecPolicy::Refusal::kNotAllowed);
  CHECK(escape->message == (allowed / "bin" / "escape").string() + " (resolves to " +
                               (root / "outside" / "run").string() + "): not under --allow-exec (" +
                               allowed.string() + ")");

  const auto dotdot = policy->check((allowed / "bin" / ".." / ".." / "outside" / "run").string());
  REQUIRE(dotdot.has_value());
  CHECK(dotdot->reason == ExecPolicy::Refusal::kNotAllowed);
  const auto sibling = policy->check((root / "evalx" / "run").string());
  REQUIRE(sibling.has_value());
  CHECK(sibling->reason == ExecPolicy::Refusal::kNotAllowed);

  const auto shell = policy->check("/bin/sh");
  REQUIRE(shell.has_value());
  CHECK(shell->reason == ExecPolicy::Refusal::kNotAllowed);
  CHECK_THAT(shell->message, Catch::StartsWith("/bin/sh"));

  const auto missing = policy->check((allowed / "bin" / "missing").string());
  REQUIRE(missing.has_value());
  CHECK(missing->reason == ExecPolicy::Refusal::kNotFound);
}

TEST_CASE("exec policy: file entries, PATH lookup, and no policy at all", "[unit]") {
  TempDir dir("evald-exec-policy");
  const auto root = fs::canonical(dir.path());
  write_program(root / "bin" / "run-eval");
  write_program(root / "bin" / "other");

  auto policy = ExecPolicy::from_paths({(root / "bin" / "run-eval").string()});
  REQUIRE(policy.ok());
  {
    const ScopedPath path((root / "bin").string() + ":/usr/bin:/bin");
    CHECK_FALSE(policy->check("run-eval").has_value());
    const auto other = policy->check("other");
    REQUIRE(other.has_value());
    CHECK(other->message == (root / "bin" / "other").string() + ": not under --allow-exec (" +
                                (root / "bin" / "run-eval").string() + ")");
    const auto nowhere = policy->check("no-such-program-anywhere");
    REQUIRE(nowhere.has_value());
    CHECK(nowhere->reason == ExecPolicy::Refusal::kNotFound);
    CHECK_THAT(nowhere->message, Catch::StartsWith("no-such-program-anywhere: "));
  }

  // Without --allow-exec everything passes, even what does not exist (the spawn reports that).
  const ExecPolicy open;
  CHECK_FALSE(open.restricted());
  CHECK(open.describe() == "anything");
  CHECK_FALSE(open.check("/bin/sh").has_value());
  CHECK_FALSE(open.check("no-such-program-anywhere").has_value());
}

TEST_CASE("exec policy: a bad entry is a startup error naming the flag", "[unit]") {
  TempDir dir("evald-exec-policy");
  const auto missing = ExecPolicy::from_paths({(dir.path() / "nope").string()});
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message ==
        "--allow-exec: " + (dir.path() / "nope").string() + ": No such file or directory");
  const auto empty = ExecPolicy::from_paths({""});
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().message == "--allow-exec: an entry is empty");
  // A symlinked entry is stored as its target, so the check compares like with like.
  fs::create_directories(dir.path() / "real");
  fs::create_symlink(dir.path() / "real", dir.path() / "alias");
  const auto alias = ExecPolicy::from_paths({(dir.path() / "alias").string()});
  REQUIRE(alias.ok());
  CHECK(alias->describe() == fs::canonical(dir.path() / "real").string());
}

TEST_CASE("exec policy: refusals are counted on the worker's /metrics page", "[unit]") {
  evald::worker::WorkerMetrics metrics("w1", 1, {});
  const auto page = [&] { return metrics.serialize(); };
  CHECK_THAT(page(), Catch::Contains(R"(evald_worker_exec_refused_total{reason="not_allowed"} 0)"));
  metrics.count_exec_refused(ExecPolicy::Refusal::kNotAllowed);
  metrics.count_exec_refused(ExecPolicy::Refusal::kNotAllowed);
  metrics.count_exec_refused(ExecPolicy::Refusal::kNotFound);
  CHECK_THAT(page(), Catch::Contains(R"(evald_worker_exec_refused_total{reason="not_allowed"} 2)"));
  CHECK_THAT(page(), Catch::Contains(R"(evald_worker_exec_refused_total{reason="not_found"} 1)"));
}
