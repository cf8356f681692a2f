// The worker's own metrics: the exit-code label of real exec runner processes, what the registry
// exports after the worker's totals grow, the --metrics flag, and the metrics server on a real
// socket (GET /metrics, /healthz, 404, 405, a port already taken).
#include <poll.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "common/cli_options.hpp"
#include "common/clock.hpp"
#include "common/http_client.hpp"
#include "tests/support/test_support.hpp"
#include "worker/exec_runner.hpp"
#include "worker/worker_config.hpp"
#include "worker/worker_metrics.hpp"

using evald::protocol::ShardResult;
using evald::testing::TempDir;
using evald::worker::runner_exit_label;
using evald::worker::WorkerMetrics;
using namespace std::chrono_literals;

namespace {

// "name{a="1",b="2"}" -> value, for every sample line of a text exposition.
std::map<std::string, double> samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto space = line.rfind(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

// Runs `body` as an exec runner script (with the given runner timeout) and returns its result.
ShardResult run_script(const TempDir& dir, const std::string& body, double timeout_s = 30) {
  const auto script =
      dir.path() / ("runner-" + std::to_string(std::hash<std::string>{}(body)) + ".sh");
  std::ofstream(script) << "#!/bin/bash\n" << body;
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);

  evald::CampaignSpec spec;
  spec.name = "t";
  evald::ModelSpec model;
  model.name = "m";
  spec.models = {model};
  evald::BenchmarkSpec benchmark;
  benchmark.name = "b";
  benchmark.examples = 10;
  benchmark.shard_size = 10;
  benchmark.metric = "accuracy";
  spec.benchmarks = {benchmark};
  spec.runner.type = evald::RunnerType::kExec;
  spec.runner.command = {script.string()};
  spec.runner.timeout_s = timeout_s;
  evald::protocol::Assignment assignment;
  assignment.attempt_id = 1;
  assignment.end = 10;
  const std::string campaign_id = "c1";

  evald::SystemClock clock;
  evald::worker::ExecRunner runner(dir.path() / "runs", clock);
  runner.start(evald::worker::RunRequest{assignment, spec, campaign_id});
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd item{runner.wake_fd(), POLLIN, 0};
    ::poll(&item, 1, 100);
    auto finished = runner.take_finished();
    if (!finished.empty()) return finished.front();
  }
  FAIL("the runner reported no result within 10 s");
  return {};
}

evald::HttpUrl url_of(const std::string& address) {
  auto url = evald::parse_http_url("http://" + address);
  REQUIRE(url.ok());
  return url.value();
}

}  // namespace

TEST_CASE("runner exit labels of real exec runner processes", "[unit][worker_metrics]") {
  TempDir dir("evald-exit-labels");
  const std::string ok_output = R"(echo '{"metrics": {"accuracy": 1.0}, "count": 10}')";
  CHECK(runner_exit_label(run_script(dir, ok_output)) == "0");
  CHECK(runner_exit_label(run_script(dir, "echo not json")) == "0");  // exited 0, bad output
  CHECK(runner_exit_label(run_script(dir, "echo oops >&2; exit 3")) == "3");
  CHECK(runner_exit_label(run_script(dir, "exit 255")) == "255");
  CHECK(runner_exit_label(run_script(dir, "kill -KILL $$")) == "signal");
  CHECK(runner_exit_label(run_script(dir, "sleep 10", 0.2)) == "timeout");

  // Not from a process that ran: "other", never a made-up exit code.
  ShardResult spawn_failed;
  spawn_failed.error = "cannot start /nonexistent: No such file or directory";
  CHECK(runner_exit_label(spawn_failed) == "other");
  ShardResult odd;
  odd.error = "exit code 300";  // cannot happen; must not become a label outside 0..255
  CHECK(runner_exit_label(odd) == "other");
  odd.error = "exit code 12abc";
  CHECK(runner_exit_label(odd) == "other");
}

TEST_CASE("worker metrics follow the worker's totals and name its GPUs", "[unit][worker_metrics]") {
  WorkerMetrics metrics(
      "gpu-node-01", 4,
      {{0, "NVIDIA H100 80GB HBM3", 81559, ""}, {1, "NVIDIA H100 80GB HBM3", {}, ""}});
  auto before = samples(metrics.serialize());
  CHECK(before.at(R"(evald_worker_info{version="0.1.0",worker="gpu-node-01"})") == 1);
  CHECK(before.at("evald_worker_slots_configured") == 4);
  CHECK(before.at("evald_worker_gpus") == 2);
  CHECK(before.at(R"(evald_worker_gpu_info{index="0",name="NVIDIA H100 80GB HBM3"})") == 1);
  CHECK(before.at(R"(evald_worker_gpu_info{index="1",name="NVIDIA H100 80GB HBM3"})") == 1);
  CHECK(before.at("evald_worker_shards_received_total") == 0);
  CHECK(before.count("evald_worker_runner_exits_total{code=\"0\"}") == 0);  // none ran yet

  metrics.publish(
      {.assigned = 10, .results_sent = 7, .results_failed = 2, .acked = 5},
      {.running = 3, .unacked = 2, .outbox_files = 1, .outbox_bytes = 321, .connected = true});
  metrics.publish(
      {.assigned = 12,
       .results_sent = 9,
       .results_failed = 3,
       .results_resent = 4,
       .acked = 9,
       .bad_messages = 1,
       .sends_dropped = 2},
      {.running = 1, .unacked = 0, .outbox_files = 0, .outbox_bytes = 0, .connected = false});
  ShardResult ok;
  ok.ok = true;
  ShardResult exit3;
  exit3.error = "exit code 3: boom";
  ShardResult timeout;
  timeout.error = "timeout after 5s";
  for (const auto* r : {&ok, &ok, &exit3, &timeout, &ok}) metrics.count_runner_exit(*r);
  metrics.count_connection();
  metrics.count_connection();
  metrics.count_connection();

  const auto after = samples(metrics.serialize());
  CHECK(after.at("evald_worker_shards_received_total") == 12);
  CHECK(after.at(R"(evald_worker_results_sent_total{outcome="succeeded"})") == 6);
  CHECK(after.at(R"(evald_worker_results_sent_total{outcome="failed"})") == 3);
  CHECK(after.at("evald_worker_results_resent_total") == 4);
  CHECK(after.at("evald_worker_results_acked_total") == 9);
  CHECK(after.at("evald_worker_bad_messages_total") == 1);
  CHECK(after.at("evald_worker_sends_dropped_total") == 2);
  CHECK(after.at(R"(evald_worker_runner_exits_total{code="0"})") == 3);
  CHECK(after.at(R"(evald_worker_runner_exits_total{code="3"})") == 1);
  CHECK(after.at(R"(evald_worker_runner_exits_total{code="timeout"})") == 1);
  CHECK(after.count(R"(evald_worker_runner_exits_total{code="signal"})") == 0);
  CHECK(after.at("evald_worker_connections_total") == 3);
  CHECK(after.at("evald_worker_reconnects_total") == 2);
  CHECK(after.at("evald_worker_running_shards") == 1);
  CHECK(after.at("evald_worker_unacked_results") == 0);
  CHECK(after.at("evald_worker_outbox_files") == 0);
  CHECK(after.at("evald_worker_outbox_bytes") == 0);
  CHECK(after.at("evald_worker_coordinator_connected") == 0);
}

TEST_CASE("the worker flag --metrics takes HOST:PORT and is off by default",
          "[unit][worker_metrics]") {
  auto parse = [](std::vector<const char*> args) {
    args.insert(args.begin(), "evald-worker");
    auto options = evald::worker::worker_options();
    const auto parsed =
        evald::parse_args(static_cast<int>(args.size()), args.data(), options, false);
    return evald::worker::worker_config_from(parsed.values);
  };
  const auto off = parse({"--coordinator", "tcp://127.0.0.1:5555"});
  REQUIRE(off.ok());
  CHECK(off->metrics.empty());
  const auto on = parse({"--coordinator", "tcp://127.0.0.1:5555", "--metrics", "127.0.0.1:0"});
  REQUIRE(on.ok());
  CHECK(on->metrics == "127.0.0.1:0");
  const auto bad = parse({"--coordinator", "tcp://127.0.0.1:5555", "--metrics", "9101"});
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.rfind("--metrics: ", 0) == 0);
}

TEST_CASE("the metrics server serves /metrics and /healthz on a real socket",
          "[unit][worker_metrics]") {
  WorkerMetrics metrics("w-http", 2, {});
  metrics.publish({.assigned = 5}, {});
  auto started = evald::worker::MetricsServer::start("127.0.0.1:0", metrics);
  REQUIRE(started.ok());
  const auto& server = started.value();
  const auto url = url_of(server->local_address());

  const auto page = evald::http_request(url, "GET", "/metrics", "", 5s);
  REQUIRE(page.ok());
  CHECK(page->status == 200);
  CHECK(page->content_type == "text/plain; version=0.0.4; charset=utf-8");
  CHECK(samples(page->body).at("evald_worker_shards_received_total") == 5);
  // Later updates show in the next scrape.
  metrics.publish({.assigned = 8}, {});
  CHECK(samples(evald::http_request(url, "GET", "/metrics", "", 5s)->body)
            .at("evald_worker_shards_received_total") == 8);

  const auto health = evald::http_request(url, "GET", "/healthz", "", 5s);
  REQUIRE(health.ok());
  CHECK(health->status == 200);
  CHECK(nlohmann::json::parse(health->body) == nlohmann::json{{"status", "ok"}});

  const auto missing = evald::http_request(url, "GET", "/v1/campaigns", "", 5s);
  REQUIRE(missing.ok());
  CHECK(missing->status == 404);
  CHECK(nlohmann::json::parse(missing->body).at("error").get<std::string>().find("/v1/campaigns") !=
        std::string::npos);
  const auto post = evald::http_request(url, "POST", "/metrics", "x", 5s);
  REQUIRE(post.ok());
  CHECK(post->status == 405);

  // A port in use is a startup error that names the flag.
  const auto taken = evald::worker::MetricsServer::start(server->local_address(), metrics);
  REQUIRE_FALSE(taken.ok());
  INFO(taken.error().message);
  CHECK(taken.error().message.rfind("--metrics: cannot listen on " + server->local_address(), 0) ==
        0);
}
