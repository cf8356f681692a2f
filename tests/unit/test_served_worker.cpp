// The worker's served-model pieces on their own: the openai runner's scoring rules, the
// log-likelihood sum over echoed tokens, serve placeholders, and ModelServers with a real test
// server process (ready event, shared server, failure with stderr, pidfile reaping).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/clock.hpp"
#include "tests/support/test_support.hpp"
#include "worker/model_server.hpp"
#include "worker/openai_runner.hpp"

using namespace evald::worker;
using nlohmann::json;
using namespace std::chrono_literals;

TEST_CASE("openai runner: exact, number and regex matching") {
  CHECK(normalize_answer("  Paris \n\t is  big ") == "Paris is big");
  CHECK(last_number("a 3 then 1,234.5 end").value() == 1234.5);
  CHECK(last_number("-7 apples").value() == -7);
  CHECK_FALSE(last_number("none").has_value());

  const json exact = json::object();
  CHECK(score_generation(" Paris  ", "Paris", exact) == 1);
  CHECK(score_generation("paris", "Paris", exact) == 0);
  const json number = {{"match", "number"}};
  CHECK(score_generation(" The answer is 42.", "42", number) == 1);
  CHECK(score_generation(" 41 or 42", 42, number) == 1);  // the last number counts
  CHECK(score_generation(" 42 or 41", "42", number) == 0);
  CHECK(score_generation(" no number", "42", number) == 0);
  const json regex = {{"match", "regex"}, {"extract", "#### (\\w+)"}};
  CHECK(score_generation("work... #### B", "B", regex) == 1);
  CHECK(score_generation("work... #### C", "B", regex) == 0);
  CHECK(score_generation("no marker", "B", regex) == 0);
}

TEST_CASE("openai runner: the continuation's log-likelihood from echoed tokens") {
  // context "Q?\nAnswer:" (10 chars), continuation " blue sky", one generated token.
  const json choice = {{"logprobs",
                        {{"tokens", {"Q?", "\nAnswer:", " blue", " sky", " x"}},
                         {"token_logprobs", {nullptr, -1.0, -2.0, -3.0, -4.0}},
                         {"text_offset", {0, 2, 10, 15, 19}}}}};
  CHECK(continuation_logprob(choice, 10, 19).value() == -5.0);
  CHECK_FALSE(continuation_logprob(json::object(), 10, 19).ok());
  CHECK_FALSE(continuation_logprob(choice, 19, 19).ok());  // nothing inside the continuation
  CHECK(utf8_length("한국") == 2);
}

TEST_CASE("serve placeholders and stderr tails") {
  CHECK(substitute_serve_placeholders("--port={port} {model} {gpus}/{gpu_count} {work_dir} {x}",
                                      8001, "m", "0,1", 2, "/w") == "--port=8001 m 0,1/2 /w {x}");
  CHECK(last_lines("a\nb\nc\nd\n", 2) == "c\nd");
  CHECK(last_lines("only", 3) == "only");
}

namespace {

std::string test_server() {
  return evald::testing::openai_test_server_script().string();
}

std::vector<ServeEvent> wait_events(ModelServers& servers, size_t count,
                                    std::chrono::milliseconds timeout = 20s) {
  std::vector<ServeEvent> out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (out.size() < count && std::chrono::steady_clock::now() < deadline) {
    for (auto& e : servers.take_events()) out.push_back(std::move(e));
    std::this_thread::sleep_for(10ms);
  }
  return out;
}

evald::ServeSpec spec_with(std::vector<std::string> extra, double keep_warm_s = 60) {
  evald::ServeSpec spec;
  spec.command = {"python3", test_server(), "--port", "{port}", "--model", "{model}"};
  for (auto& arg : extra) spec.command.push_back(std::move(arg));
  spec.ready_timeout_s = 20;
  spec.keep_warm_s = keep_warm_s;
  return spec;
}

}  // namespace

TEST_CASE("ModelServers: one warm server is shared, a crash fails its users with stderr") {
  evald::testing::TempDir dir("evald-servers");
  evald::SystemClock clock;
  ModelServers servers(ModelServersOptions{dir.path(), 2000ms, 50ms}, clock, nullptr);
  servers.acquire(ServeRequest{1, "m1", spec_with({"--load-seconds", "0.2"}), {}});
  servers.acquire(ServeRequest{2, "m1", spec_with({"--load-seconds", "0.2"}), {}});
  auto events = wait_events(servers, 2);
  REQUIRE(events.size() == 2);
  for (const auto& e : events) {
    CHECK(e.ready);
    CHECK(e.endpoint.rfind("http://127.0.0.1:", 0) == 0);
  }
  CHECK(events[0].endpoint == events[1].endpoint);  // one server for both
  REQUIRE(servers.warm().size() == 1);
  CHECK(servers.warm()[0].users == 2);

  // A third attempt gets the warm server at once.
  servers.acquire(ServeRequest{3, "m1", spec_with({"--load-seconds", "0.2"}), {}});
  events = wait_events(servers, 1, 2s);
  REQUIRE(events.size() == 1);
  CHECK(events[0].ready);

  // The server dies: every user is told, with its stderr.
  std::ifstream pidfile;
  pid_t pid = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    if (entry.path().extension() == ".pid") std::ifstream(entry.path()) >> pid;
  }
  REQUIRE(pid > 0);
  ::kill(pid, SIGKILL);
  events = wait_events(servers, 3);
  REQUIRE(events.size() == 3);
  for (const auto& e : events) {
    CHECK_FALSE(e.ready);
    CHECK(e.error.find("model server for m1 (pid " + std::to_string(pid) +
                       ") was killed by SIGKILL while serving") != std::string::npos);
    CHECK(e.error.find("test server: model=m1") != std::string::npos);
  }
  CHECK(servers.warm().empty());
}

TEST_CASE("ModelServers: a server that exits while loading fails the waiting attempt") {
  evald::testing::TempDir dir("evald-servers");
  evald::SystemClock clock;
  ModelServers servers(ModelServersOptions{dir.path(), 2000ms, 50ms}, clock, nullptr);
  servers.acquire(
      ServeRequest{7, "m2", spec_with({"--load-seconds", "0.2", "--exit-during-load", "4"}), {}});
  const auto events = wait_events(servers, 1);
  REQUIRE(events.size() == 1);
  CHECK_FALSE(events[0].ready);
  CHECK(events[0].error.find("exited with code 4 before it was ready") != std::string::npos);
  CHECK(events[0].error.find("cannot load weights: out of memory") != std::string::npos);
}

TEST_CASE("ModelServers::reap_stale kills the groups a killed worker left, and only those") {
  evald::testing::TempDir dir("evald-servers");
  // A process in its own group, as a server would be; its pidfile written as the worker does.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::setpgid(0, 0);
    ::execl("/bin/sleep", "sleep", "60", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  std::this_thread::sleep_for(100ms);
  std::ifstream stat("/proc/" + std::to_string(child) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::string field;
  for (int i = 3; i <= 22; ++i) fields >> field;
  std::ofstream(dir.path() / (std::to_string(child) + ".pid")) << child << ' ' << field << " m\n";
  // A pidfile whose start time does not match (a recycled pid: here our own) is only removed.
  std::ofstream(dir.path() / (std::to_string(::getpid()) + ".pid"))
      << ::getpid() << ' ' << 1 << " m\n";

  CHECK(ModelServers::reap_stale(dir.path()) == 1);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
  CHECK(std::filesystem::is_empty(dir.path()));
}
