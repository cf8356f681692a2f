// Served models end to end: the real coordinator and workers, model servers started through
// `serve` (tests/support/openai_test_server.py), the built-in openai runner. Expected scores are
// computed here from the test server's rule (openai_rule.hpp), never read back from the server.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "tests/integration/integration.hpp"
#include "tests/integration/openai_rule.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;
namespace rule = evald::testing::openai_rule;

std::filesystem::path test_server() {
  return openai_test_server_script();
}

json serve_block(const std::vector<std::string>& extra, double ready_timeout_s = 60,
                 double keep_warm_s = 60) {
  json command = {"python3", test_server().string(), "--port", "{port}", "--model", "{model}"};
  for (const auto& arg : extra) command.push_back(arg);
  return {{"command", command},
          {"health", "/health"},
          {"ready_timeout_s", ready_timeout_s},
          {"keep_warm_s", keep_warm_s}};
}

struct GenerateExample {
  std::string prompt;
  int64_t answer = 0;
};

std::vector<GenerateExample> write_arithmetic(const std::filesystem::path& path, int64_t n) {
  std::vector<GenerateExample> out;
  std::ofstream file(path);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = (i * 37) % 91 + 2;
    const int64_t b = (i * 11) % 53 + 1;
    const bool plus = i % 3 != 0;
    GenerateExample example{"Question " + std::to_string(i) + ": what is " + std::to_string(a) +
                                (plus ? "+" : "*") + std::to_string(b) + "?\nAnswer:",
                            plus ? a + b : a * b};
    file << json{{"prompt", example.prompt}, {"answer", std::to_string(example.answer)}}.dump()
         << "\n";
    out.push_back(example);
  }
  return out;
}

struct ChoiceExample {
  std::string question;
  std::vector<std::string> choices;
  size_t answer = 0;
};

std::vector<ChoiceExample> write_choices(const std::filesystem::path& path, int64_t n) {
  static const std::vector<std::string> kWords = {"red",   "green", "blue",  "amber", "violet",
                                                  "ochre", "teal",  "coral", "ivory", "slate"};
  std::vector<ChoiceExample> out;
  std::ofstream file(path);
  for (int64_t i = 0; i < n; ++i) {
    ChoiceExample example;
    example.question = "Which colour is number " + std::to_string(i) + "?";
    const size_t count = 2 + static_cast<size_t>(i % 3);
    for (size_t c = 0; c < count; ++c) {
      example.choices.push_back(kWords[(static_cast<size_t>(i) * 7 + c * 3) % kWords.size()] +
                                " shade " + std::to_string(c));
    }
    example.answer = static_cast<size_t>(i) % count;
    file << json{{"question", example.question},
                 {"choices", example.choices},
                 {"answer", example.answer}}
                .dump()
         << "\n";
    out.push_back(example);
  }
  return out;
}

double expected_generate(const std::string& model, int skill,
                         const std::vector<GenerateExample>& examples) {
  int64_t correct = 0;
  for (const auto& e : examples) {
    correct += rule::generated_value(model, e.prompt, skill) == e.answer ? 1 : 0;
  }
  return static_cast<double>(correct) / static_cast<double>(examples.size());
}

double expected_choice(const std::string& model, const std::vector<ChoiceExample>& examples) {
  int64_t correct = 0;
  for (const auto& e : examples) {
    const std::string context = e.question + "\nAnswer:";
    correct += rule::predicted_choice(model, context, e.choices) == e.answer ? 1 : 0;
  }
  return static_cast<double>(correct) / static_cast<double>(examples.size());
}

// Lines of a worker's log that contain `needle`.
size_t count_in_log(const std::filesystem::path& log, const std::string& needle) {
  std::ifstream in(log);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) n += line.find(needle) != std::string::npos ? 1 : 0;
  return n;
}

bool process_alive(pid_t pid) {
  if (::kill(pid, 0) != 0) return false;
  // A zombie is gone for our purposes.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  return close != std::string::npos && close + 2 < text.size() && text[close + 2] != 'Z';
}

bool wait_gone(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!process_alive(pid)) return true;
    std::this_thread::sleep_for(20ms);
  }
  return !process_alive(pid);
}

pid_t wait_pidfile(const std::filesystem::path& path, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(path);
    pid_t pid = 0;
    if (in >> pid && pid > 0) return pid;
    std::this_thread::sleep_for(20ms);
  }
  throw std::runtime_error("no pid in " + path.string());
}

double score_of(const json& results, const std::string& model, const std::string& benchmark) {
  for (const auto& row : results.at("models")) {
    if (row.at("name") == model) return row.at("scores").at(benchmark).at("value").get<double>();
  }
  throw std::runtime_error("no model " + model + " in " + results.dump());
}

std::string all_errors(const json& shards) {
  std::string out;
  for (const auto& s : shards.at("shards")) {
    out += s.dump() + "\n";
  }
  return out;
}

}  // namespace

TEST_CASE("served: both formats give the exact leaderboard, each model loaded once per worker",
          "[integration][served]") {
  ClusterOptions options;
  options.workers = 2;
  options.slots = 2;
  TestCluster cluster(options);
  const auto arithmetic = write_arithmetic(cluster.dir() / "arith.jsonl", 40);
  const auto choices = write_choices(cluster.dir() / "mc.jsonl", 30);
  json spec = {
      {"name", "served-both"},
      {"models",
       {{{"name", "m-strong"}, {"serve", serve_block({"--skill", "85", "--load-seconds", "0.3"})}},
        {{"name", "m-weak"}, {"serve", serve_block({"--skill", "35"})}}}},
      {"benchmarks",
       {{{"name", "arith"},
         {"examples", 40},
         {"shard_size", 10},
         {"params",
          {{"data", (cluster.dir() / "arith.jsonl").string()},
           {"format", "generate"},
           {"match", "number"},
           {"max_tokens", 16}}}},
        {{"name", "mc"},
         {"examples", 30},
         {"shard_size", 7},
         {"params",
          {{"data", (cluster.dir() / "mc.jsonl").string()}, {"format", "multiple_choice"}}}}}},
      {"runner", {{"type", "openai"}, {"max_concurrency", 4}, {"request_timeout_s", 30}}},
      {"max_attempts", 1}};
  const auto api = cluster.api();
  const auto id = api.submit(spec);
  api.wait_for_state(id, "succeeded", 90s);
  const auto results = api.results(id);
  INFO(results.dump());
  CHECK(score_of(results, "m-strong", "arith") ==
        Approx(expected_generate("m-strong", 85, arithmetic)).epsilon(1e-12));
  CHECK(score_of(results, "m-weak", "arith") ==
        Approx(expected_generate("m-weak", 35, arithmetic)).epsilon(1e-12));
  CHECK(score_of(results, "m-strong", "mc") ==
        Approx(expected_choice("m-strong", choices)).epsilon(1e-12));
  CHECK(score_of(results, "m-weak", "mc") ==
        Approx(expected_choice("m-weak", choices)).epsilon(1e-12));
  // The two models differ, so the test would see a mix-up of servers.
  CHECK(expected_generate("m-strong", 85, arithmetic) !=
        expected_generate("m-weak", 35, arithmetic));

  // Loads: at most once per model per worker (keep_warm_s outlasts the campaign), counted in the
  // log and in evald_model_loads_total.
  for (const char* worker : {"w1", "w2"}) {
    const auto log = cluster.log_dir() / (std::string("worker-") + worker + ".log");
    for (const char* model : {"m-strong", "m-weak"}) {
      INFO(worker << " " << model);
      CHECK(count_in_log(log, std::string("model_server_ready model=") + model + " ") <= 1);
      CHECK(count_in_log(log, std::string("model_server_starting model=") + model + " ") <= 1);
    }
  }
  // The coordinator counted the loads per model for the campaign: at least one per model, at
  // most one per worker.
  const auto campaign = api.campaign(id);
  INFO(campaign.dump());
  REQUIRE(campaign.contains("model_loads"));
  for (const char* model : {"m-strong", "m-weak"}) {
    CHECK(campaign.at("model_loads").at(model).get<int>() >= 1);
    CHECK(campaign.at("model_loads").at(model).get<int>() <= 2);
  }
  // Every shard ran once and succeeded.
  const auto shards = api.shards(id).at("shards");
  CHECK(shards.size() == 2 * (4 + 5));
  for (const auto& s : shards) CHECK(s.at("attempts") == 1);
}

TEST_CASE(
    "served: a server killed mid-shard fails the attempt with its stderr, a fresh one "
    "finishes",
    "[integration][served]") {
  ClusterOptions options;
  options.workers = 1;
  options.slots = 1;
  TestCluster cluster(options);
  const auto arithmetic = write_arithmetic(cluster.dir() / "arith.jsonl", 30);
  json spec = {
      {"name", "served-crash"},
      {"models", {{{"name", "m-crashy"}, {"serve", serve_block({"--crash-after", "15"})}}}},
      {"benchmarks",
       {{{"name", "arith"},
         {"examples", 30},
         {"shard_size", 10},
         {"params",
          {{"data", (cluster.dir() / "arith.jsonl").string()},
           {"format", "generate"},
           {"match", "number"}}}}}},
      {"runner", {{"type", "openai"}, {"max_concurrency", 1}}},
      {"max_attempts", 3}};
  const auto api = cluster.api();
  const auto id = api.submit(spec);
  api.wait_for_state(id, "succeeded", 90s);
  const auto results = api.results(id);
  CHECK(score_of(results, "m-crashy", "arith") ==
        Approx(expected_generate("m-crashy", 70, arithmetic)).epsilon(1e-12));
  const auto shards = api.shards(id);
  const std::string text = all_errors(shards);
  INFO(text);
  CHECK(text.find("model server for m-crashy") != std::string::npos);
  CHECK(text.find("exited with code 3 while serving") != std::string::npos);
  CHECK(text.find("CUDA error: an illegal memory access") != std::string::npos);
  // 30 requests with 15 per server: the first server serves 15 and dies on the 16th, so at
  // least two servers were started.
  CHECK(count_in_log(cluster.log_dir() / "worker-w1.log", "model_server_ready model=m-crashy ") >=
        2);
}

TEST_CASE("served: a server that never becomes ready fails its attempts with its stderr",
          "[integration][served]") {
  ClusterOptions options;
  options.workers = 1;
  TestCluster cluster(options);
  write_arithmetic(cluster.dir() / "arith.jsonl", 5);
  json spec = {{"name", "served-never"},
               {"models", {{{"name", "m-stuck"}, {"serve", serve_block({"--never-ready"}, 1.0)}}}},
               {"benchmarks",
                {{{"name", "arith"},
                  {"examples", 5},
                  {"shard_size", 5},
                  {"params",
                   {{"data", (cluster.dir() / "arith.jsonl").string()}, {"format", "generate"}}}}}},
               {"runner", {{"type", "openai"}}},
               {"max_attempts", 2}};
  const auto api = cluster.api();
  const auto id = api.submit(spec);
  api.wait_for_state(id, "failed", 60s);
  const std::string text = all_errors(api.shards(id));
  INFO(text);
  CHECK(text.find("model server for m-stuck was not ready after 1 s") != std::string::npos);
  CHECK(text.find("test server: model=m-stuck") != std::string::npos);  // its stderr
  // Each attempt started a fresh server, and none is left running.
  CHECK(count_in_log(cluster.log_dir() / "worker-w1.log", "model_server_starting model=m-stuck") ==
        2);
}

TEST_CASE("served: 429 bursts are ridden out, honouring Retry-After", "[integration][served]") {
  ClusterOptions options;
  options.workers = 1;
  TestCluster cluster(options);
  const auto arithmetic = write_arithmetic(cluster.dir() / "arith.jsonl", 12);
  json spec = {
      {"name", "served-429"},
      {"models",
       {{{"name", "m-busy"},
         {"serve", serve_block({"--burst-429", "2:4", "--retry-after", "1", "--access-log"})}}}},
      {"benchmarks",
       {{{"name", "arith"},
         {"examples", 12},
         {"shard_size", 12},
         {"params",
          {{"data", (cluster.dir() / "arith.jsonl").string()},
           {"format", "generate"},
           {"match", "number"}}}}}},
      {"runner", {{"type", "openai"}, {"max_concurrency", 4}, {"max_retries", 20}}},
      {"max_attempts", 1}};
  const auto api = cluster.api();
  const auto started = std::chrono::steady_clock::now();
  const auto id = api.submit(spec);
  api.wait_for_state(id, "succeeded", 90s);
  const auto elapsed = std::chrono::steady_clock::now() - started;
  CHECK(score_of(api.results(id), "m-busy", "arith") ==
        Approx(expected_generate("m-busy", 70, arithmetic)).epsilon(1e-12));
  // Half of all requests were refused with Retry-After: 1, so the shard took at least a second.
  CHECK(elapsed >= 1s);
  const auto shards = api.shards(id).at("shards");
  REQUIRE(shards.size() == 1);
  CHECK(shards[0].at("attempts") == 1);
}

TEST_CASE("served: a worker killed with SIGKILL leaves no server, drain stops servers",
          "[integration][served]") {
  ClusterOptions options;
  options.workers = 1;
  TestCluster cluster(options);
  write_arithmetic(cluster.dir() / "arith.jsonl", 4);
  const auto pidfile = cluster.dir() / "server.pid";
  json spec = {
      {"name", "served-kill"},
      {"models",
       {{{"name", "m-slow"},
         {"serve", serve_block({"--load-seconds", "600", "--pid-file", pidfile.string()}, 900)}}}},
      {"benchmarks",
       {{{"name", "arith"},
         {"examples", 4},
         {"shard_size", 4},
         {"params",
          {{"data", (cluster.dir() / "arith.jsonl").string()}, {"format", "generate"}}}}}},
      {"runner", {{"type", "openai"}}}};
  const auto api = cluster.api();
  const auto slow_id = api.submit(spec);
  const pid_t server = wait_pidfile(pidfile, 30s);
  REQUIRE(process_alive(server));
  // While its server loads, the shard is running with phase "loading".
  bool loading = false;
  for (int i = 0; i < 200 && !loading; ++i) {
    const auto shards = api.shards(slow_id).at("shards");
    loading = shards.size() == 1 && shards[0].value("phase", "") == "loading" &&
              shards[0].at("state") == "running";
    if (!loading) std::this_thread::sleep_for(25ms);
  }
  CHECK(loading);
  cluster.worker(0).kill();  // SIGKILL: no chance to stop anything
  CHECK(wait_gone(server, 10s));
  // Its shard would go to the restarted worker and load for 600 s: not what the rest tests.
  CHECK(api.request("POST", "/v1/campaigns/" + slow_id + "/cancel").status == 200);

  // Drain: a warm server goes when the worker stops gracefully.
  std::filesystem::remove(pidfile);
  json warm = spec;
  warm["name"] = "served-drain";
  warm["models"][0]["serve"] = serve_block({"--pid-file", pidfile.string()}, 60, 600);
  cluster.worker(0).restart();
  api.wait_for_workers(1);
  const auto id = api.submit(warm);
  api.wait_for_state(id, "succeeded", 60s);
  const pid_t warm_server = wait_pidfile(pidfile, 5s);
  CHECK(process_alive(warm_server));  // kept warm: keep_warm_s is 600
  CHECK(cluster.worker(0).terminate() == 0);
  CHECK(wait_gone(warm_server, 5s));
}

TEST_CASE("served: an endpoint model with an API key from the worker's environment",
          "[integration][served]") {
  TempDir dir("evald-endpoint");
  // A server somebody else runs: started here, on a port the kernel picks for a moment.
  const int port = free_loopback_port();
  ProcessOptions server_options;
  server_options.executable = "/usr/bin/python3";
  server_options.args = {test_server().string(),
                         "--port",
                         std::to_string(port),
                         "--model",
                         "remote-id",
                         "--api-key",
                         "s3cret"};
  server_options.log_file = dir.path() / "server.log";
  ChildProcess server(server_options);

  ClusterOptions options;
  options.workers = 0;
  TestCluster cluster(options);
  auto worker_options = cluster.worker_defaults();
  worker_options.env.emplace_back("REMOTE_KEY", "s3cret");
  cluster.add_worker(worker_options);
  const auto api = cluster.api();
  api.wait_for_workers(1);
  const auto choices = write_choices(cluster.dir() / "mc.jsonl", 9);
  json spec = {
      {"name", "endpoint"},
      {"models",
       {{{"name", "remote"},
         {"endpoint",
          {{"url", "http://127.0.0.1:" + std::to_string(port) + "/v1"},
           {"model", "remote-id"},
           {"api_key_env", "REMOTE_KEY"}}}}}},
      {"benchmarks",
       {{{"name", "mc"},
         {"examples", 9},
         {"shard_size", 3},
         {"params",
          {{"data", (cluster.dir() / "mc.jsonl").string()}, {"format", "multiple_choice"}}}}}},
      {"runner", {{"type", "openai"}, {"max_retries", 30}}},
      {"max_attempts", 1}};
  const auto id = api.submit(spec);
  api.wait_for_state(id, "succeeded", 60s);
  // Requests name the endpoint's model id, whose rule the expectation uses.
  CHECK(score_of(api.results(id), "remote", "mc") ==
        Approx(expected_choice("remote-id", choices)).epsilon(1e-12));
  // No server was started for it.
  CHECK(count_in_log(cluster.log_dir() / "worker-w1.log", "model_server_starting") == 0);
}
