// Back-off of a served model whose server keeps failing to start on a worker, end to end: the
// real coordinator and workers, model servers started through `serve`
// (tests/support/openai_test_server.py, or a shell that fails the way a node without the right
// driver does). The model stops being placed there, GET /v1/campaigns/ID and `evalctl status`
// say why in the server's own words, other models and other workers go on, and the
// coordinator's /metrics count back-offs and loads.
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;

std::filesystem::path test_server() {
  return std::filesystem::path(EVALD_SOURCE_DIR) / "tests/support/openai_test_server.py";
}

json serve_block(const std::vector<std::string>& extra) {
  json command = {"python3", test_server().string(), "--port", "{port}", "--model", "{model}"};
  for (const auto& arg : extra) command.push_back(arg);
  return {
      {"command", command}, {"health", "/health"}, {"ready_timeout_s", 30}, {"keep_warm_s", 60}};
}

// A benchmark of `examples` arithmetic questions in `shards` shards.
json arithmetic_benchmark(const std::filesystem::path& dir, int examples, int shard_size) {
  const auto path = dir / "arith.jsonl";
  std::ofstream file(path);
  for (int i = 0; i < examples; ++i) {
    file << json{{"prompt", "Question " + std::to_string(i) + ": what is " + std::to_string(i) +
                                "+2?\nAnswer:"},
                 {"answer", std::to_string(i + 2)}}
                .dump()
         << "\n";
  }
  return {{"name", "arith"},
          {"examples", examples},
          {"shard_size", shard_size},
          {"params", {{"data", path.string()}, {"format", "generate"}, {"match", "number"}}}};
}

size_t count_in_file(const std::filesystem::path& log, const std::string& needle) {
  std::ifstream in(log);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) n += line.find(needle) != std::string::npos ? 1 : 0;
  return n;
}

int64_t succeeded_of(const std::string& model, const json& shards) {
  int64_t n = 0;
  for (const auto& s : shards.at("shards")) {
    n += s.at("model") == model && s.at("state") == "succeeded" ? 1 : 0;
  }
  return n;
}

// The sample "name value" (no labels) of the coordinator's /metrics page, or -1.
double unlabelled_sample(const Api& api, const std::string& name) {
  std::istringstream lines(api.request("GET", "/metrics").body);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

}  // namespace

TEST_CASE("serve backoff: a model whose server keeps failing is not placed, status says why",
          "[integration][served][serve_backoff]") {
  ClusterOptions options;
  options.workers = 1;
  options.slots = 2;
  options.coordinator.extra_args = {"--serve-backoff-failures", "3", "--serve-backoff-ms",
                                    "120000"};
  TestCluster cluster(options);
  json spec = {{"name", "backoff-one-worker"},
               {"models",
                {{{"name", "m-broken"},
                  {"serve", serve_block({"--exit-during-load", "1", "--load-seconds", "0.2"})}},
                 {{"name", "m-ok"}, {"serve", serve_block({"--load-seconds", "0.1"})}}}},
               {"benchmarks", {arithmetic_benchmark(cluster.dir(), 20, 5)}},
               {"runner", {{"type", "openai"}, {"max_concurrency", 2}, {"request_timeout_s", 30}}},
               {"max_attempts", 20}};
  const auto api = cluster.api();
  const auto id = api.submit(spec);

  // m-ok's four shards finish while m-broken is backed off on the only worker.
  json campaign;
  json shards;
  const auto deadline = std::chrono::steady_clock::now() + 90s;
  while (true) {
    campaign = api.campaign(id);
    shards = api.shards(id);
    if (campaign.contains("not_placed") && succeeded_of("m-ok", shards) == 4) break;
    if (std::chrono::steady_clock::now() > deadline) {
      FAIL("no back-off and m-ok done in time: " << campaign.dump() << "\n" << shards.dump());
    }
    std::this_thread::sleep_for(50ms);
  }
  INFO(campaign.dump());
  // The campaign waits for m-broken: it is neither failed nor spinning.
  CHECK(campaign.at("state") == "running");
  REQUIRE(campaign.at("not_placed").size() == 1);
  const json held = campaign.at("not_placed").at(0);
  CHECK(held.at("model") == "m-broken");
  CHECK(held.at("worker") == "w1");
  CHECK(held.at("reason") == "error: cannot load weights: out of memory (test server)");
  CHECK(held.at("failures").get<int>() >= 3);
  CHECK(held.at("until").get<std::string>().size() == 20);  // 2026-12-02T12:05:00Z

  // No server of m-broken is started while it is backed off: each failed start counted once,
  // and none after.
  const auto worker_log = cluster.log_dir() / "worker-w1.log";
  const auto starts = count_in_file(worker_log, "model_server_starting model=m-broken ");
  CHECK(starts == held.at("failures").get<size_t>());
  std::this_thread::sleep_for(1500ms);
  CHECK(count_in_file(worker_log, "model_server_starting model=m-broken ") == starts);
  const auto later = api.campaign(id);
  INFO(later.dump());
  CHECK(later.at("state") == "running");
  REQUIRE(later.contains("not_placed"));
  CHECK(later.at("not_placed").at(0).at("failures") == held.at("failures"));
  const json listed = api.shards(id);  // a range-for over a temporary's member would dangle
  for (const auto& s : listed.at("shards")) {
    if (s.at("model") == "m-broken") CHECK(s.at("state") == "pending");
  }

  // evalctl status prints it.
  const auto status = run_command(
      bin_dir() / "evalctl", {"--server", cluster.coordinator().http_url(), "status", id}, 30s);
  INFO(status.out << status.err);
  CHECK(status.exit_code == 0);
  CHECK(status.out.find("not placed") != std::string::npos);
  CHECK(status.out.find(
            "m-broken on w1: error: cannot load weights: out of memory (test server) (" +
            std::to_string(starts) + " failed starts, retried after ") != std::string::npos);

  // The coordinator's /metrics: one back-off, m-ok's load, and how long it took.
  CHECK(api.metric("evald_model_server_backoffs_total", {{"model", "m-broken"}}) >= 1);
  CHECK(api.metric("evald_model_loads_total", {{"model", "m-ok"}}) >= 1);
  CHECK(api.metric("evald_model_loads_total", {{"model", "m-broken"}}) == 0);
  CHECK(unlabelled_sample(api, "evald_model_load_seconds_count") >= 1);
  CHECK(unlabelled_sample(api, "evald_model_load_seconds_sum") >= 0.1);  // --load-seconds 0.1

  // A cancelled campaign has nothing waiting.
  api.post("/v1/campaigns/" + id + "/cancel", json::object());
  CHECK_FALSE(api.campaign(id).contains("not_placed"));
}

TEST_CASE("serve backoff: with two workers, the healthy one takes the work",
          "[integration][served][serve_backoff]") {
  ClusterOptions options;
  options.workers = 1;  // w1: healthy
  options.slots = 2;
  options.coordinator.extra_args = {"--serve-backoff-failures", "3", "--serve-backoff-ms",
                                    "120000"};
  TestCluster cluster(options);
  // w2: its servers cannot start (as on a node with the wrong driver).
  auto broken = cluster.worker_defaults();
  broken.env.emplace_back("EVALD_TEST_BROKEN_NODE", "1");
  cluster.add_worker(broken);
  const auto api = cluster.api();
  api.wait_for_workers(2);

  const std::string server = test_server().string();
  json serve = {{"command",
                 {"sh", "-c",
                  "if [ -n \"$EVALD_TEST_BROKEN_NODE\" ]; then echo 'loading {model}' >&2; "
                  "echo 'fatal: CUDA driver version is insufficient for CUDA runtime version' >&2; "
                  "exit 1; fi; exec python3 " +
                      server + " --port {port} --model {model} --latency-ms 20"}},
                {"ready_timeout_s", 30},
                {"keep_warm_s", 60}};
  json spec = {{"name", "backoff-two-workers"},
               {"models", {{{"name", "m-x"}, {"serve", serve}}}},
               {"benchmarks", {arithmetic_benchmark(cluster.dir(), 80, 5)}},
               {"runner", {{"type", "openai"}, {"max_concurrency", 1}}},
               {"max_attempts", 8}};
  const auto id = api.submit(spec);
  const auto done = api.wait_for_state(id, "succeeded", 120s);
  INFO(done.dump());
  const auto shards = api.shards(id).at("shards");
  CHECK(shards.size() == 16);
  for (const auto& s : shards) {
    CHECK(s.at("state") == "succeeded");
    CHECK(s.at("worker") == "w1");
  }
  // w2 was backed off after three failed starts, with the server's last words, and not tried
  // again (the back-off outlasts the campaign).
  const auto coordinator_log = cluster.log_dir() / "coordinator.log";
  CHECK(count_in_file(coordinator_log, "model_server_backoff worker=w2 model=m-x failures=3 ") ==
        1);
  CHECK(count_in_file(coordinator_log,
                      "reason=\"fatal: CUDA driver version is insufficient for CUDA runtime "
                      "version\"") >= 1);
  const auto starts =
      count_in_file(cluster.log_dir() / "worker-w2.log", "model_server_starting model=m-x ");
  CHECK(starts >= 3);
  CHECK(api.metric("evald_model_server_backoffs_total", {{"model", "m-x"}}) >= 1);
  CHECK(count_in_file(coordinator_log, "model_server_backoff_reset") == 0);
}
