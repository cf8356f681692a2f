// The makespan simulator's load accounting against a real cluster's: one small scenario
// (tools/makespan-sim/scenarios/served-tiny.json) run by evald-makespan-sim, and by a real
// coordinator with the scenario's workers (one GPU index and one slot each, as the simulator's
// one-GPU workers), whose models are test servers (tests/support/openai_test_server.py) started
// through `serve` that take the scenario's load_s to become ready and answer with a latency that
// makes a shard take about its benchmark_shard_s, evaluated by the built-in openai runner.
//
// The simulator charges the real scheduler for every model switch on a worker; the real worker
// switches exactly when the scheduler sends it another model's shard (its one GPU is held by
// the warm server). So the real count must not exceed the simulator's by more than what real
// timing (process start, health polls, heartbeats) can shift, and every model loads at least
// once. Both counts are printed side by side.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <map>

#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;

// Real timing (the server's Python start, 200 ms health polls, 100 ms heartbeats) can move a
// shard's end past another worker's turn, and so a placement decision; on a loaded 2-core
// machine more than one can move. Two loads more still tells a scheduler that ignores warm
// servers (one load per shard: 40) from one that keeps them.
constexpr int64_t kLoadTolerance = 2;

std::filesystem::path scenario_file() {
  return std::filesystem::path(EVALD_SOURCE_DIR) / "tools/makespan-sim/scenarios/served-tiny.json";
}

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  REQUIRE(in);
  return json::parse(in);
}

// Example i: "... what is A+B?" with its sum, as the test server's generate rule reads it.
void write_sums(const std::filesystem::path& path, int64_t n) {
  std::ofstream out(path);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = i * 7 % 50 + 3;
    const int64_t b = i * 13 % 40 + 5;
    out << json{{"prompt", "Question " + std::to_string(i) + ": what is " + std::to_string(a) +
                               "+" + std::to_string(b) + "?\nAnswer:"},
                {"answer", std::to_string(a + b)}}
               .dump()
        << "\n";
  }
}

size_t count_in_log(const std::filesystem::path& log, const std::string& needle) {
  std::ifstream in(log);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) n += line.find(needle) != std::string::npos ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("sim vs real: served-tiny loads models no more often on a real cluster",
          "[integration][served]") {
  const json scenario = read_json(scenario_file());
  const json& campaign = scenario.at("campaign");

  ClusterOptions options;
  options.workers = 0;
  options.slots = 1;
  TestCluster cluster(options);

  // --- the simulator ---
  const auto scratch = cluster.dir() / "sim-scratch";
  std::filesystem::create_directories(scratch);
  const auto sim = run_command(
      bin_dir() / "evald-makespan-sim",
      {"--scenario", scenario_file().string(), "--json", "--scratch-dir", scratch.string()}, 120s);
  INFO("simulator stdout: " << sim.out << "\nstderr: " << sim.err);
  REQUIRE(sim.exit_code == 0);
  const json report = json::parse(sim.out);
  REQUIRE(report.at("completed").get<bool>());
  const auto sim_loads = report.at("loads").get<int64_t>();
  std::map<std::string, int64_t> sim_per_model;
  for (const auto& m : report.at("models")) {
    sim_per_model[m.at("name").get<std::string>()] = m.at("loads").get<int64_t>();
  }

  // --- the real cluster: the scenario's workers, each with one GPU index and one slot ---
  // Started here rather than by Cluster, whose workers have no GPUs: a worker without GPUs keeps
  // every model's server warm at once, where the simulated (and a real one-GPU) worker must stop
  // one to load the next. --gpus 0 makes no GPU call; the index only books the shard.
  const json& group = scenario.at("cluster");
  const auto workers = group.at("workers").get<size_t>();
  REQUIRE(group.at("gpus_per_worker").get<int>() == 1);
  std::vector<std::unique_ptr<ChildProcess>> worker_processes;
  std::vector<std::filesystem::path> worker_logs;
  for (size_t w = 0; w < workers; ++w) {
    const std::string name = "gpu" + std::to_string(w + 1);
    ProcessOptions process;
    process.executable = bin_dir() / "evald-worker";
    process.args = {"--coordinator",  cluster.coordinator().bind_endpoint(),
                    "--name",         name,
                    "--slots",        "1",
                    "--gpus",         "0",
                    "--work-dir",     (cluster.dir() / ("work-" + name)).string(),
                    "--heartbeat-ms", "100"};
    process.log_file = cluster.log_dir() / ("worker-" + name + ".log");
    worker_logs.push_back(process.log_file);
    worker_processes.push_back(std::make_unique<ChildProcess>(std::move(process)));
  }
  const auto api = cluster.api();
  api.wait_for_workers(workers, 20s);

  json spec = {{"name", campaign.at("name")},
               {"models", json::array()},
               {"benchmarks", json::array()},
               {"runner", {{"type", "openai"}, {"max_concurrency", 1}, {"request_timeout_s", 30}}},
               {"max_attempts", 1}};
  const std::string server = evald::testing::openai_test_server_script().string();
  for (const auto& model : campaign.at("models")) {
    const auto name = model.at("name").get<std::string>();
    const double load_s = scenario.at("load_s").at(name).get<double>();
    json entry = model;
    entry["serve"] = {{"command",
                       {"python3", server, "--port", "{port}", "--model", "{model}",
                        "--load-seconds", std::to_string(load_s), "--latency-ms", "50"}},
                      {"health", "/health"},
                      {"ready_timeout_s", 60},
                      {"keep_warm_s", 600}};  // warm until switched away, as simulated
    spec["models"].push_back(entry);
  }
  for (const auto& benchmark : campaign.at("benchmarks")) {
    const auto name = benchmark.at("name").get<std::string>();
    const auto data = cluster.dir() / (name + ".jsonl");
    write_sums(data, benchmark.at("examples").get<int64_t>());
    // A shard of shard_size requests at 50 ms each, one at a time: about benchmark_shard_s.
    CHECK(scenario.at("benchmark_shard_s").at(name).get<double>() ==
          Approx(0.06 * benchmark.at("shard_size").get<double>()).epsilon(0.01));
    json entry = benchmark;
    entry["params"] = {
        {"data", data.string()}, {"format", "generate"}, {"match", "number"}, {"max_tokens", 8}};
    spec["benchmarks"].push_back(entry);
  }

  const auto id = api.submit(spec);
  api.wait_for_state(id, "succeeded", 240s, 100ms);
  const json real = api.campaign(id);
  INFO(real.dump());
  REQUIRE(real.contains("model_loads"));
  int64_t real_loads = 0;
  for (const auto& [model, count] : real.at("model_loads").items()) {
    real_loads += count.get<int64_t>();
  }
  // The coordinator's count is the workers' own: every server that became ready was a load.
  size_t ready_lines = 0;
  std::string per_worker;
  for (const auto& log : worker_logs) {
    const size_t n = count_in_log(log, "model_server_ready ");
    ready_lines += n;
    per_worker += " " + log.stem().string() + "=" + std::to_string(n);
  }
  CHECK(static_cast<int64_t>(ready_lines) == real_loads);

  std::printf("sim vs real, scenario %s (%zu workers x 1 GPU, %zu models): model loads\n",
              scenario.at("name").get<std::string>().c_str(), workers,
              campaign.at("models").size());
  std::printf("  %-12s %10s %10s\n", "model", "simulator", "real");
  for (const auto& [model, count] : sim_per_model) {
    const auto it = real.at("model_loads").find(model);
    const int64_t real_count = it == real.at("model_loads").end() ? 0 : it->get<int64_t>();
    std::printf("  %-12s %10lld %10lld\n", model.c_str(), static_cast<long long>(count),
                static_cast<long long>(real_count));
    CHECK(real_count >= 1);
  }
  std::printf("  %-12s %10lld %10lld   (minimum %lld; real loads per worker:%s)\n", "total",
              static_cast<long long>(sim_loads), static_cast<long long>(real_loads),
              static_cast<long long>(report.at("min_loads").get<int64_t>()), per_worker.c_str());
  std::fflush(stdout);
  CHECK(real_loads <= sim_loads + kLoadTolerance);

  // Workers first (they stop their servers), while the coordinator still listens.
  for (auto& worker : worker_processes) CHECK(worker->terminate(10s) == 0);
}
