// The test harness itself (tests/support/process.hpp): exit codes, signals, stdout lines and the
// deadline of run_command, on real processes; plus the Catch2 listener that lets TestCluster
// print the daemon logs of a failed test.
//
// Listeners need Catch2's external interfaces, and the macro must come before the first include
// of catch.hpp in this file.
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <atomic>
#include <catch2/catch.hpp>
#include <csignal>
#include <fstream>

#include "tests/integration/integration.hpp"

namespace evald::testing {
namespace {

// Catch2 owns listener objects, so a process-wide counter is the one link from a failed
// assertion to the TestCluster that should print its logs. Test-only.
std::atomic<size_t> g_failed_assertions{0};

}  // namespace

size_t failed_assertions() {
  return g_failed_assertions.load();
}

}  // namespace evald::testing

namespace {

struct FailureCounter : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  bool assertionEnded(const Catch::AssertionStats& stats) override {
    if (!stats.assertionResult.isOk()) ++evald::testing::g_failed_assertions;
    return true;
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(FailureCounter)

namespace {

using evald::testing::ChildProcess;
using evald::testing::ProcessOptions;
using evald::testing::run_command;
using evald::testing::TempDir;
using namespace std::chrono_literals;

ProcessOptions options(const std::filesystem::path& exe, std::vector<std::string> args,
                       const std::filesystem::path& log, bool pipe_stdout = false) {
  ProcessOptions o;
  o.executable = exe;
  o.args = std::move(args);
  o.log_file = log;
  o.pipe_stdout = pipe_stdout;
  return o;
}

TEST_CASE("harness: exit codes, signals and stdout lines of a child", "[integration]") {
  TempDir dir("evald-harness");
  SECTION("exit code and piped stdout") {
    ChildProcess child(options("/bin/sh", {"-c", "echo first; echo second; echo oops >&2; exit 7"},
                               dir.path() / "sh.log", true));
    CHECK(child.read_line(5s) == std::optional<std::string>("first"));
    CHECK(child.read_line(5s) == std::optional<std::string>("second"));
    CHECK(child.read_line(5s) == std::nullopt);  // EOF
    CHECK(child.wait_exit(5s) == std::optional<int>(7));
    CHECK(evald::testing::file_tail(child.log_file(), 100) == "oops\n");
  }
  SECTION("stop freezes, resume thaws, terminate ends") {
    // The kernel's own word on the state ('T' = stopped), not a process that would not have
    // exited anyway: a child that exits after 300 ms of sleep must outlive that while stopped.
    const auto state_of = [](pid_t pid) {
      std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
      std::string line;
      std::getline(stat, line);
      const auto close = line.rfind(')');
      return close == std::string::npos || close + 2 >= line.size() ? '?' : line[close + 2];
    };
    ChildProcess child(options("/bin/sleep", {"0.3"}, dir.path() / "sleep.log"));
    child.stop();
    REQUIRE(evald::testing::wait_until([&] { return state_of(child.pid()) == 'T'; }, 5s));
    CHECK(child.wait_exit(800ms) == std::nullopt);  // would have exited by now if running
    CHECK(state_of(child.pid()) == 'T');
    child.resume();
    CHECK(child.wait_exit(5s) == std::optional<int>(0));

    ChildProcess sleeper(options("/bin/sleep", {"60"}, dir.path() / "sleep60.log"));
    CHECK(sleeper.running());
    CHECK(sleeper.terminate(5s) == 128 + SIGTERM);
    CHECK_FALSE(sleeper.running());
  }
  SECTION("a missing executable throws") {
    CHECK_THROWS(ChildProcess(options(dir.path() / "no-such-binary", {}, dir.path() / "x.log")));
  }
}

TEST_CASE("harness: run_command captures both streams and enforces its deadline", "[integration]") {
  auto ok = run_command("/bin/sh", {"-c", "printf 'out'; printf 'err' >&2; exit 2"}, 10s,
                        {{"EVALD_HARNESS", "x"}});
  CHECK(ok.exit_code == 2);
  CHECK(ok.out == "out");
  CHECK(ok.err == "err");
  CHECK_FALSE(ok.timed_out);
  auto env = run_command("/bin/sh", {"-c", "printf %s \"$EVALD_HARNESS\""}, 10s,
                         {{"EVALD_HARNESS", "value"}});
  CHECK(env.out == "value");
  const auto start = std::chrono::steady_clock::now();
  auto slow = run_command("/bin/sleep", {"30"}, 200ms);
  CHECK(slow.timed_out);
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

}  // namespace
