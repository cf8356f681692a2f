// The exec runner with real child processes: what a runner script sees (placeholders, environment,
// stdin), how its output becomes a result, and that failures, timeouts and cancels leave no
// process, zombie or run directory behind.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <fstream>
#include <map>
#include <sstream>

#include "common/clock.hpp"
#include "tests/support/test_support.hpp"
#include "worker/exec_runner.hpp"

using evald::protocol::Assignment;
using evald::protocol::ShardResult;
using evald::testing::TempDir;
using evald::worker::ExecRunner;
using evald::worker::RunRequest;
using namespace std::chrono_literals;

namespace {

std::filesystem::path write_script(const std::filesystem::path& dir, const std::string& name,
                                   const std::string& body) {
  const auto path = dir / name;
  std::ofstream(path) << "#!/bin/bash\n" << body;
  std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  return path;
}

evald::CampaignSpec exec_spec(std::vector<std::string> command, double timeout_s = 30) {
  evald::CampaignSpec spec;
  spec.name = "test";
  spec.models = {{"model-a", {{"path", "/models/a"}}, {}, {}, {}},
                 {"model-b", nlohmann::json::object(), {}, {}, {}}};
  evald::BenchmarkSpec benchmark;
  benchmark.name = "kmmlu";
  benchmark.examples = 5000;
  benchmark.shard_size = 500;
  benchmark.metric = "accuracy";
  benchmark.params = {{"data", "/data/kmmlu.jsonl"}};
  spec.benchmarks = {benchmark};
  spec.runner.type = evald::RunnerType::kExec;
  spec.runner.command = std::move(command);
  spec.runner.timeout_s = timeout_s;
  return spec;
}

Assignment assignment(uint64_t attempt_id) {
  return Assignment{.attempt_id = attempt_id,
                    .campaign = 1,
                    .model = 0,
                    .benchmark = 0,
                    .shard = 3,
                    .start = 1500,
                    .end = 2000,
                    .attempt = 2,
                    .gpus = {0, 1}};
}

// Waits until `n` results arrived (or the deadline passed) by polling the runner's wake fd.
std::vector<ShardResult> wait_results(ExecRunner& runner, size_t n,
                                      std::chrono::milliseconds timeout = 4000ms) {
  std::vector<ShardResult> results;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (results.size() < n) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd item{runner.wake_fd(), POLLIN, 0};
    ::poll(&item, 1, static_cast<int>(left.count()));
    for (auto& r : runner.take_finished()) results.push_back(std::move(r));
  }
  return results;
}

// Zombie children of this test process: the runner must reap every child it started.
int zombie_children() {
  int zombies = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const auto stat = evald::testing::read_file_or_empty(entry.path() / "stat");
    const auto paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream fields(stat.substr(paren + 2));
    char state = 0;
    pid_t ppid = 0;
    fields >> state >> ppid;
    if (ppid == ::getpid() && state == 'Z') ++zombies;
  }
  return zombies;
}

// A script that starts `sleep 1000` in the background (a grandchild of the runner, in the
// script's process group), writes its pid to `pid_file` (atomically: the file appears complete)
// and waits for it.
std::filesystem::path write_parent_of_sleeper(const std::filesystem::path& dir,
                                              const std::filesystem::path& pid_file) {
  return write_script(dir, "long.sh",
                      R"(
sleep 1000 &
echo $! > ")" + pid_file.string() +
                          R"(.tmp"
mv ")" + pid_file.string() +
                          R"(.tmp" ")" + pid_file.string() + R"("
wait
)");
}

pid_t read_pid(const std::filesystem::path& path) {
  pid_t pid = 0;
  std::ifstream(path) >> pid;
  return pid;
}

}  // namespace

TEST_CASE("exec runner gives the shard to the command: placeholders, env, stdin, cwd",
          "[unit][exec]") {
  TempDir dir("evald-exec");
  const auto script = write_script(dir.path(), "runner.sh", R"(
input=$(cat)
echo "loading model $EVALD_MODEL..."
echo "  progress: 100%"
printf '{"metrics": {"accuracy": 0.25, "f1": 0.5}, "count": %d, "samples": [%s, {"args": "%s", "cwd": "%s", "campaign": "%s", "model": "%s", "benchmark": "%s", "shard": "%s", "start": "%s", "end": "%s", "attempt": "%s", "cuda": "%s", "extra": "%s"}]}\n' \
  $((EVALD_END - EVALD_START)) "$input" "$*" "$PWD" "$EVALD_CAMPAIGN" "$EVALD_MODEL" \
  "$EVALD_BENCHMARK" "$EVALD_SHARD" "$EVALD_START" "$EVALD_END" "$EVALD_ATTEMPT" \
  "$CUDA_VISIBLE_DEVICES" "$EXTRA_VAR"
echo "done"
)");
  auto spec = exec_spec({script.string(), "{model}", "{benchmark}", "{shard}", "{start}", "{end}",
                         "{attempt}", "{campaign}", "literal-{x}"});
  spec.runner.env = {{"EXTRA_VAR", "from-spec"}, {"EVALD_MODEL", "spec-cannot-override"}};
  const std::string campaign_id = "c-42";
  const auto a = assignment(7);
  evald::SystemClock clock;
  const auto run_root = dir.path() / "runs";
  ExecRunner runner(run_root, clock);
  CHECK_FALSE(runner.start(RunRequest{a, spec, campaign_id}).has_value());

  auto results = wait_results(runner, 1);
  REQUIRE(results.size() == 1);
  const auto& r = results[0];
  INFO(r.error);
  REQUIRE(r.ok);
  CHECK(r.attempt_id == 7);
  CHECK(r.campaign == 1);
  CHECK(r.shard == 3);
  CHECK(r.count == 500);
  CHECK(r.metrics == std::vector<std::pair<std::string, double>>{{"accuracy", 0.25}, {"f1", 0.5}});
  CHECK(r.error.empty());

  const auto samples = nlohmann::json::parse(r.samples_json);
  const auto& stdin_json = samples.at(0);
  CHECK(stdin_json["campaign"] == "c-42");
  CHECK(stdin_json["model"] ==
        nlohmann::json{{"name", "model-a"}, {"params", {{"path", "/models/a"}}}});
  CHECK(stdin_json["benchmark"] == nlohmann::json{{"name", "kmmlu"},
                                                  {"metric", "accuracy"},
                                                  {"params", {{"data", "/data/kmmlu.jsonl"}}}});
  CHECK(stdin_json["shard"] == nlohmann::json{{"index", 3}, {"start", 1500}, {"end", 2000}});
  CHECK(stdin_json["attempt"] == 2);

  const auto& seen = samples.at(1);
  CHECK(seen["args"] == "model-a kmmlu 3 1500 2000 2 c-42 literal-{x}");
  CHECK(seen["cwd"] == (run_root / "7").string());
  CHECK(seen["campaign"] == "c-42");
  CHECK(seen["model"] == "model-a");
  CHECK(seen["benchmark"] == "kmmlu");
  CHECK(seen["shard"] == "3");
  CHECK(seen["start"] == "1500");
  CHECK(seen["end"] == "2000");
  CHECK(seen["attempt"] == "2");
  CHECK(seen["cuda"] == "0,1");
  CHECK(seen["extra"] == "from-spec");
  // The run directory is removed once the attempt is over.
  CHECK_FALSE(std::filesystem::exists(run_root / "7"));
  CHECK(zombie_children() == 0);
}

TEST_CASE("a failing runner reports its exit code and only the last 4 KiB of stderr",
          "[unit][exec]") {
  TempDir dir("evald-exec");
  const auto script = write_script(dir.path(), "fail.sh", R"(
echo "BEGIN-MARKER" >&2
head -c 10000 /dev/zero | tr '\0' 'x' >&2
echo "" >&2
echo "Traceback: CUDA out of memory THE-END" >&2
exit 3
)");
  const auto spec = exec_spec({script.string()});
  const std::string campaign_id = "c";
  const auto a = assignment(8);
  evald::SystemClock clock;
  ExecRunner runner(dir.path() / "runs", clock);
  (void)runner.start(RunRequest{a, spec, campaign_id});
  auto results = wait_results(runner, 1);
  REQUIRE(results.size() == 1);
  const auto& r = results[0];
  CHECK_FALSE(r.ok);
  CHECK_THAT(r.error, Catch::StartsWith("exit code 3: xxxx"));
  CHECK_THAT(r.error, Catch::EndsWith("Traceback: CUDA out of memory THE-END"));
  CHECK_THAT(r.error, !Catch::Contains("BEGIN-MARKER"));
  CHECK(r.error.size() <= std::string("exit code 3: ").size() + 4096);
  CHECK(r.error.size() > 4000);
}

TEST_CASE("a timeout kills the runner's whole process group", "[unit][exec]") {
  TempDir dir("evald-exec");
  const auto pid_file = dir.path() / "grandchild.pid";
  const auto script = write_script(dir.path(), "hang.sh", R"(
sleep 1000 &
echo $! > ")" + pid_file.string() + R"("
echo "about to hang" >&2
wait
)");
  const auto spec = exec_spec({script.string()}, /*timeout_s=*/0.3);
  const std::string campaign_id = "c";
  const auto a = assignment(9);
  evald::SystemClock clock;
  ExecRunner runner(dir.path() / "runs", clock);
  (void)runner.start(RunRequest{a, spec, campaign_id});
  auto results = wait_results(runner, 1);
  REQUIRE(results.size() == 1);
  CHECK_FALSE(results[0].ok);
  CHECK(results[0].error == "timeout after 0.3s: about to hang");
  CHECK(results[0].duration_ms >= 300);
  const pid_t grandchild = read_pid(pid_file);
  REQUIRE(grandchild > 0);
  CHECK(
      evald::testing::wait_until([&] { return evald::testing::process_gone(grandchild); }, 2000ms));
  CHECK(zombie_children() == 0);
}

TEST_CASE("stdout that is not a result is a failure that shows its tail", "[unit][exec]") {
  TempDir dir("evald-exec");
  const auto script = write_script(dir.path(), "chatty.sh", R"(
echo "hello"
echo '{"metrics": {"accuracy": "high"}, "count": 3}'
echo "bye"
echo "scored 3 examples, wrote the wrong type" >&2
)");
  const auto spec = exec_spec({script.string()});
  const std::string campaign_id = "c";
  const auto a = assignment(10);
  evald::SystemClock clock;
  ExecRunner runner(dir.path() / "runs", clock);
  (void)runner.start(RunRequest{a, spec, campaign_id});
  auto results = wait_results(runner, 1);
  REQUIRE(results.size() == 1);
  CHECK_FALSE(results[0].ok);
  CHECK(results[0].error ==
        "unparsable output: metrics.accuracy: must be a number (stdout ends with: hello\n"
        "{\"metrics\": {\"accuracy\": \"high\"}, \"count\": 3}\nbye\n): "
        "scored 3 examples, wrote the wrong type");
}

TEST_CASE("signals, huge stdout, a missing executable and ignored stdin", "[unit][exec]") {
  TempDir dir("evald-exec");
  const auto killed = write_script(dir.path(), "killed.sh", "echo dying >&2\nkill -9 $$\n");
  const auto flood = write_script(dir.path(), "flood.sh", "head -c 70000000 /dev/zero\n");
  const auto no_stdin =
      write_script(dir.path(), "no_stdin.sh", "echo '{\"metrics\": {\"a\": 1}, \"count\": 0}'\n");
  auto killed_spec = exec_spec({killed.string()});
  auto flood_spec = exec_spec({flood.string()});
  auto missing_spec = exec_spec({"evald-no-such-runner-xyz", "{model}"});
  auto no_stdin_spec = exec_spec({no_stdin.string()});
  // Far more than a pipe holds, so the write fails with EPIPE once the child has exited.
  no_stdin_spec.models[0].params = {{"blob", std::string(1 << 20, 'p')}};
  const std::string campaign_id = "c";
  const auto a1 = assignment(11);
  const auto a2 = assignment(12);
  const auto a3 = assignment(13);
  const auto a4 = assignment(14);
  evald::SystemClock clock;
  ExecRunner runner(dir.path() / "runs", clock);
  (void)runner.start(RunRequest{a1, killed_spec, campaign_id});
  (void)runner.start(RunRequest{a2, flood_spec, campaign_id});
  (void)runner.start(RunRequest{a3, missing_spec, campaign_id});
  (void)runner.start(RunRequest{a4, no_stdin_spec, campaign_id});
  auto results = wait_results(runner, 4);
  REQUIRE(results.size() == 4);
  std::map<uint64_t, ShardResult> by_id;
  for (auto& r : results) by_id[r.attempt_id] = r;
  CHECK(by_id[11].error == "killed by signal 9 (SIGKILL): dying");
  CHECK(by_id[12].error == "stdout exceeds 64 MiB");
  CHECK(by_id[13].error == "executable 'evald-no-such-runner-xyz' not found in PATH");
  INFO(by_id[14].error);
  CHECK(by_id[14].ok);
  CHECK(by_id[14].count == 0);
  CHECK(zombie_children() == 0);
}

TEST_CASE("children inherit no descriptors but stdin, stdout and stderr", "[unit][exec]") {
  TempDir dir("evald-exec");
  // bash keeps the script open on fd 255; anything else would be a leak from the worker.
  const auto script = write_script(dir.path(), "fds.sh", R"(
cat > /dev/null
ls /proc/$$/fd > fds.txt
fds=$(tr '\n' ' ' < fds.txt)
sleep 0.2
printf '{"metrics": {"a": 1}, "count": 1, "samples": ["%s"]}\n' "$fds"
)");
  const auto spec = exec_spec({script.string()});
  const std::string campaign_id = "c";
  const auto a1 = assignment(21);
  const auto a2 = assignment(22);
  evald::SystemClock clock;
  ExecRunner runner(dir.path() / "runs", clock);
  // Two at once: the second must not inherit the first one's pipes.
  (void)runner.start(RunRequest{a1, spec, campaign_id});
  (void)runner.start(RunRequest{a2, spec, campaign_id});
  auto results = wait_results(runner, 2);
  REQUIRE(results.size() == 2);
  for (const auto& r : results) {
    INFO(r.error);
    REQUIRE(r.ok);
    CHECK(nlohmann::json::parse(r.samples_json)[0] == "0 1 2 255 ");
  }
}

TEST_CASE("cancel kills the attempt's group and reports nothing", "[unit][exec]") {
  TempDir dir("evald-exec");
  const auto pid_file = dir.path() / "grandchild.pid";
  const auto script = write_parent_of_sleeper(dir.path(), pid_file);
  const auto spec = exec_spec({script.string()});
  const std::string campaign_id = "c";
  const auto a = assignment(31);
  const auto run_dir = dir.path() / "runs" / "31";
  evald::SystemClock clock;
  ExecRunner runner(dir.path() / "runs", clock);
  (void)runner.start(RunRequest{a, spec, campaign_id});
  REQUIRE(evald::testing::wait_until([&] { return std::filesystem::exists(pid_file); }, 3000ms));
  const pid_t grandchild = read_pid(pid_file);
  REQUIRE(grandchild > 0);
  runner.cancel(31);
  CHECK(
      evald::testing::wait_until([&] { return evald::testing::process_gone(grandchild); }, 2000ms));
  // The run directory goes when the runner has handled the attempt's end; after that a result
  // would already be queued if one were going to be reported.
  REQUIRE(evald::testing::wait_until([&] { return !std::filesystem::exists(run_dir); }, 2000ms));
  CHECK(runner.take_finished().empty());
  CHECK(zombie_children() == 0);
}

TEST_CASE("destroying the exec runner kills every running group", "[unit][exec]") {
  TempDir dir("evald-exec");
  const auto pid_file = dir.path() / "grandchild.pid";
  const auto script = write_parent_of_sleeper(dir.path(), pid_file);
  const auto spec = exec_spec({script.string()});
  const std::string campaign_id = "c";
  const auto a = assignment(41);
  evald::SystemClock clock;
  pid_t grandchild = 0;
  {
    ExecRunner runner(dir.path() / "runs", clock);
    (void)runner.start(RunRequest{a, spec, campaign_id});
    REQUIRE(evald::testing::wait_until([&] { return std::filesystem::exists(pid_file); }, 3000ms));
    grandchild = read_pid(pid_file);
  }
  REQUIRE(grandchild > 0);
  CHECK(
      evald::testing::wait_until([&] { return evald::testing::process_gone(grandchild); }, 2000ms));
  CHECK(zombie_children() == 0);
}

TEST_CASE("runner stdout parsing", "[unit][exec]") {
  using evald::worker::parse_runner_output;
  SECTION("one object, pretty-printed over several lines") {
    auto out =
        parse_runner_output("\n{\n  \"metrics\": {\"accuracy\": 0.61},\n  \"count\": 500\n}\n");
    REQUIRE(out.ok());
    CHECK(out->count == 500);
    CHECK(out->metrics == std::vector<std::pair<std::string, double>>{{"accuracy", 0.61}});
    CHECK(out->samples_json.empty());
  }
  SECTION("the last line that is an object wins over logs and earlier objects") {
    auto out = parse_runner_output(
        "{\"progress\": 1}\nloading...\n{\"metrics\": {\"em\": 1, \"f1\": 0.5}, \"count\": 2, "
        "\"samples\": [{\"i\": 0}]}\nfinished\n\n");
    REQUIRE(out.ok());
    CHECK(out->count == 2);
    CHECK(out->metrics.size() == 2);
    CHECK(out->samples_json == R"([{"i":0}])");
  }
  SECTION("what is refused, and why") {
    auto error = [](std::string_view text) {
      auto out = parse_runner_output(text);
      return out.ok() ? std::string("ok") : out.error().message;
    };
    CHECK(error("") == "stdout is empty");
    CHECK(error("no json here\n[1, 2]") == "no line of stdout is a JSON object");
    CHECK(error(R"({"count": 1})") == "metrics: missing");
    CHECK(error(R"({"metrics": [], "count": 1})") == "metrics: must be an object of numbers");
    CHECK(error(R"({"metrics": {}, "count": 1})") == "metrics: must hold at least one metric");
    CHECK(error(R"({"metrics": {"a": null}, "count": 1})") == "metrics.a: must be a number");
    CHECK(error(R"({"metrics": {"a": 1}})") == "count: missing");
    CHECK(error(R"({"metrics": {"a": 1}, "count": -1})") ==
          "count: must be a non-negative integer");
    CHECK(error(R"({"metrics": {"a": 1}, "count": 2.5})") ==
          "count: must be a non-negative integer");
    CHECK(error(R"({"metrics": {"a": 1}, "count": -2.0})") ==
          "count: must be a non-negative integer");
    CHECK(error(R"({"metrics": {"a": 1}, "count": 1e300})") ==
          "count: must be a non-negative integer");
    CHECK(error(R"({"metrics": {"a": 1}, "count": 18446744073709551615})") ==
          "count: must be a non-negative integer");
    CHECK(parse_runner_output(R"({"metrics": {"a": 1}, "count": 500.0})").value().count == 500);
    CHECK(error(R"({"metrics": {"a": 1}, "count": "3"})") ==
          "count: must be a non-negative integer");
    CHECK(error(R"({"metrics": {"a": 1}, "count": 1, "samples": {}})") ==
          "samples: must be an array");
    CHECK(error(R"({"metrics": {"a": 1e999}, "count": 1})") != "ok");
  }
}
