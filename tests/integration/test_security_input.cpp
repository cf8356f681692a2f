// Input that cannot hurt, on the real binaries: a 400 KB document nested 200,000 levels deep,
// sent as an HTTP body or inside a HELLO, is refused and the coordinator goes on serving; a spec
// that sets LD_PRELOAD is refused naming the field; a worker with --allow-exec refuses /bin/sh and
// a symlink that leads out of its allowed directory, without starting anything, and runs what is
// allowed to the exact leaderboard.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <variant>
#include <zmq.hpp>

#include "common/binary_codec.hpp"
#include "common/protocol.hpp"
#include "tests/integration/integration.hpp"
#include "tests/support/process.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;

const std::vector<TestModel> kModels = {{"m-alpha", 1, 5, {}}, {"m-beta", 2, 3, {}}};
const std::vector<TestBenchmark> kBenchmarks = {{"b-one", 23, 5, 1, "accuracy", true, {}}};

constexpr size_t kAttackDepth = 200'000;  // 400 KB of brackets

std::string deep_array(size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

// `spec` as text with `deep` in place of the string "DEEP" (json cannot build such a value
// without recursing, the attacker's text never needs to).
std::string with_deep(const json& spec, const std::string& deep) {
  std::string text = spec.dump();
  const auto at = text.find("\"DEEP\"");
  REQUIRE(at != std::string::npos);
  text.replace(at, 6, deep);
  return text;
}

std::string error_text(const evald::HttpResponse& response) {
  const auto body = json::parse(response.body, nullptr, false);
  if (!body.is_object() || !body.contains("error") || !body["error"].is_string()) return "";
  return body["error"].get<std::string>();
}

// The campaign-after-the-attack check: it runs on the real workers to the exact numbers.
void check_still_serving(Cluster& cluster, const std::string& name) {
  const auto api = cluster.api();
  CHECK(cluster.coordinator().running());
  REQUIRE(api.request("GET", "/healthz").status == 200);
  const auto id = api.submit(make_spec(name, kModels, kBenchmarks));
  api.wait_for_state(id, "succeeded", 30s);
  check_results(api.results(id), kModels, kBenchmarks);
  check_all_shards_succeeded(api, id, total_shards(kModels, kBenchmarks));
}

// A DEALER in the test process that speaks the wire format directly.
class RawPeer {
 public:
  explicit RawPeer(const std::string& endpoint)
      : context_(1), socket_(context_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::routing_id, "deep-hello");
    socket_.connect(endpoint);
  }
  void send(const std::string& frame) { socket_.send(zmq::buffer(frame), zmq::send_flags::none); }

 private:
  zmq::context_t context_;
  zmq::socket_t socket_;
};

// A HELLO frame whose JSON body is `body`, byte for byte.
std::string hello_frame(const std::string& body) {
  std::string frame = {'E', 'V', static_cast<char>(evald::protocol::kProtocolVersion),
                       static_cast<char>(evald::protocol::MessageType::kHello)};
  evald::BinaryWriter writer(frame);
  writer.str(body);
  return frame;
}

TEST_CASE("security input: a 200,000-level HTTP body is refused and the coordinator serves on",
          "[integration]") {
  TestCluster cluster;
  const auto api = cluster.api();

  // The deep part where a spec allows any JSON: a model's params.
  auto spec = make_spec("deep-params", kModels, kBenchmarks);
  spec["models"][0]["params"]["blob"] = "DEEP";
  const std::string body = with_deep(spec, deep_array(kAttackDepth));
  REQUIRE(body.size() > 400'000);
  const auto refused = api.request("POST", "/v1/campaigns", body);
  INFO("answer: " << refused.status << " " << refused.body.substr(0, 300));
  CHECK(refused.status == 400);
  // The blob starts 4 levels down (spec, models, the model, params): its 61st '[' is the 65th.
  CHECK(error_text(refused) == "spec nests deeper than 64 levels (the limit) at byte offset " +
                                   std::to_string(body.find('[', body.find("\"blob\"")) + 60));
  CHECK(cluster.coordinator().running());

  // The same as a whole body, and as a rerun body of a real campaign.
  CHECK(api.request("POST", "/v1/campaigns", deep_array(kAttackDepth)).status == 400);
  const auto id = api.submit(make_spec("first", kModels, kBenchmarks));
  api.wait_for_state(id, "succeeded", 30s);
  const auto rerun =
      api.request("POST", "/v1/campaigns/" + id + "/rerun", deep_array(kAttackDepth));
  CHECK(rerun.status == 400);
  CHECK_THAT(error_text(rerun), Catch::StartsWith("rerun body nests deeper than 64 levels"));

  // Within the limits is still accepted: params may nest 32 levels, itself included.
  auto at_limit = make_spec("at-limit", kModels, kBenchmarks, noop_runner());
  at_limit["models"][0]["params"]["blob"] = "DEEP";
  CHECK(api.request("POST", "/v1/campaigns", with_deep(at_limit, deep_array(31))).status == 201);
  const auto too_deep = api.request("POST", "/v1/campaigns", with_deep(at_limit, deep_array(32)));
  CHECK(too_deep.status == 400);
  CHECK(error_text(too_deep) == "models[0].params: nests deeper than 32 levels");

  // Nothing of the refused ones was stored.
  CHECK(api.get("/v1/campaigns").at("campaigns").size() == 2);
  check_still_serving(cluster, "after-deep-body");
}

TEST_CASE("security input: a HELLO with 200,000-level labels is dropped as malformed",
          "[integration]") {
  TestCluster cluster;
  const auto api = cluster.api();
  const double malformed_before = api.metric("evald_messages_malformed_total");
  const std::string body = R"({"name": "deep-hello", "instance": "x", "slots": 4, "gpus": [],
                               "labels": {"rack": )" +
                           deep_array(kAttackDepth) + R"(}, "running": []})";
  REQUIRE(body.size() > 400'000);
  {
    RawPeer peer(cluster.coordinator().bind_endpoint());
    peer.send(hello_frame(body));
    REQUIRE(wait_until(
        [&] { return api.metric("evald_messages_malformed_total") >= malformed_before + 1; }, 10s));
  }
  CHECK(api.metric("evald_messages_malformed_total") == malformed_before + 1);
  // It never became a worker.
  for (const auto& w : api.workers()) CHECK(w.at("name") != "deep-hello");
  CHECK(api.workers().size() == 2);
  check_still_serving(cluster, "after-deep-hello");
}

TEST_CASE("security input: a spec that sets LD_PRELOAD is refused naming the field",
          "[integration]") {
  TestCluster cluster;
  const auto api = cluster.api();
  auto runner = exec_runner();
  runner["env"] = {{"HF_HOME", "/tmp/cache"}, {"LD_PRELOAD", "/tmp/evil.so"}};
  const auto refused = api.request("POST", "/v1/campaigns",
                                   make_spec("preload", kModels, kBenchmarks, runner).dump());
  CHECK(refused.status == 400);
  CHECK(error_text(refused) ==
        "runner.env.LD_PRELOAD: may not be set by a spec: LD_* variables choose the code a "
        "process loads");
  for (const std::string name : {"PATH", "PYTHONPATH", "EVALD_MODEL"}) {
    runner["env"] = {{name, "/tmp"}};
    const auto other =
        api.request("POST", "/v1/campaigns", make_spec("env", kModels, kBenchmarks, runner).dump());
    CHECK(other.status == 400);
    CHECK_THAT(error_text(other), Catch::StartsWith("runner.env." + name + ": may not be set"));
  }
  auto dash = make_spec("dash", kModels, kBenchmarks);
  dash["models"][0]["name"] = "-rf";
  const auto option_like = api.request("POST", "/v1/campaigns", dash.dump());
  CHECK(option_like.status == 400);
  CHECK(error_text(option_like) == "models[0].name: must not start with '-'");
  CHECK(api.get("/v1/campaigns").at("campaigns").empty());
}

// Prometheus text: the value of the sample line that starts with `series` (0 if absent).
double sample_value(const std::string& page, const std::string& series) {
  std::istringstream lines(page);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return 0;
}

std::string scrape(const std::string& address) {
  auto url = evald::parse_http_url("http://" + address);
  REQUIRE(url.ok());
  auto response = evald::http_request(url.value(), "GET", "/metrics", "", 10s);
  REQUIRE(response.ok());
  REQUIRE(response->status == 200);
  return response->body;
}

TEST_CASE("security input: a worker with --allow-exec runs only what is under it",
          "[integration]") {
  ClusterOptions options;
  options.workers = 0;
  options.dir_prefix = "evald-allow-exec";
  TestCluster cluster(options);
  const auto api = cluster.api();

  // The allowed directory holds a copy of the test runner and a symlink that leads out to /bin/sh.
  const auto allowed = std::filesystem::canonical(cluster.dir()) / "allowed";
  std::filesystem::create_directories(allowed / "bin");
  std::filesystem::copy_file(runners_dir() / "evald-test-runner", allowed / "bin" / "run-eval");
  std::filesystem::create_symlink("/bin/sh", allowed / "bin" / "escape");
  const auto marker = cluster.dir() / "pwned";

  auto worker_options = cluster.worker_defaults();
  worker_options.extra_args = {"--allow-exec", allowed.string(), "--metrics", "127.0.0.1:0"};
  auto& worker = cluster.add_worker(worker_options);
  api.wait_for_workers(1);
  const auto metrics = worker_metrics_address(worker);
  CHECK(sample_value(scrape(metrics), R"(evald_worker_exec_refused_total{reason="not_allowed"})") ==
        0);

  const std::vector<TestModel> one_model = {{"m-alpha", 1, 5, {}}};
  const std::vector<TestBenchmark> one_shard = {{"b-one", 5, 5, 0, "accuracy", true, {}}};
  const std::string payload =
      "touch " + marker.string() + "; echo '{\"metrics\": {\"accuracy\": 1.0}, \"count\": 5}'";

  SECTION("/bin/sh is refused with the worker and the path named, nothing runs") {
    auto runner = exec_runner();
    runner["command"] = {"/bin/sh", "-c", payload};
    const auto id = api.submit(make_spec("shell", one_model, one_shard, runner, 2));
    api.wait_for_state(id, "failed", 30s);
    const auto shards = api.shards(id).at("shards");
    REQUIRE(shards.size() == 1);
    CHECK(shards[0].at("attempts") == 2);
    const auto error = shards[0].at("last_error").get<std::string>();
    CHECK_THAT(error, Catch::StartsWith("worker w1 refuses to run /bin/sh"));
    CHECK_THAT(error, Catch::EndsWith(": not under --allow-exec (" + allowed.string() + ")"));
    CHECK_FALSE(std::filesystem::exists(marker));
    CHECK(sample_value(scrape(metrics),
                       R"(evald_worker_exec_refused_total{reason="not_allowed"})") == 2);
    // Nothing was spawned: no runner exit of any kind.
    CHECK(scrape(metrics).find("evald_worker_runner_exits_total{") == std::string::npos);
  }

  SECTION("a symlink inside the allowed directory that points outside is refused") {
    auto runner = exec_runner();
    runner["command"] = {(allowed / "bin" / "escape").string(), "-c", payload};
    const auto id = api.submit(make_spec("symlink", one_model, one_shard, runner, 1));
    api.wait_for_state(id, "failed", 30s);
    const auto error = api.shards(id).at("shards").at(0).at("last_error").get<std::string>();
    const auto target = std::filesystem::canonical("/bin/sh").string();
    CHECK(error == "worker w1 refuses to run " + (allowed / "bin" / "escape").string() +
                       " (resolves to " + target + "): not under --allow-exec (" +
                       allowed.string() + ")");
    CHECK_FALSE(std::filesystem::exists(marker));
    CHECK(sample_value(scrape(metrics),
                       R"(evald_worker_exec_refused_total{reason="not_allowed"})") == 1);
  }

  SECTION("a runner under the allowed directory runs to the exact leaderboard") {
    auto runner = exec_runner();
    runner["command"] = {(allowed / "bin" / "run-eval").string(), "{model}", "{benchmark}",
                         "{shard}"};
    const auto id = api.submit(make_spec("allowed", kModels, kBenchmarks, runner));
    api.wait_for_state(id, "succeeded", 30s);
    check_results(api.results(id), kModels, kBenchmarks);
    check_all_shards_succeeded(api, id, total_shards(kModels, kBenchmarks));
    CHECK(sample_value(scrape(metrics),
                       R"(evald_worker_exec_refused_total{reason="not_allowed"})") == 0);
  }

  SECTION("a program found through PATH is checked where PATH finds it") {
    // evald-test-runner is on the worker's PATH, but in the repository, not under `allowed`.
    const auto id = api.submit(make_spec("path", one_model, one_shard, exec_runner(), 1));
    api.wait_for_state(id, "failed", 30s);
    const auto error = api.shards(id).at("shards").at(0).at("last_error").get<std::string>();
    CHECK_THAT(error, Catch::StartsWith("worker w1 refuses to run " +
                                        (runners_dir() / "evald-test-runner").string()));
    CHECK_THAT(error, Catch::EndsWith(": not under --allow-exec (" + allowed.string() + ")"));
  }

  const auto log = read_file(worker.process().log_file());
  CHECK_THAT(log, Catch::Contains("exec_policy allow_exec=\"" + allowed.string() + "\""));
  CHECK_THAT(log, !Catch::Contains("exec_policy_open"));
}

// A stand-in coordinator (a ROUTER in the test process) that says what a compromised or buggy
// coordinator could: it sends the real worker a campaign whose spec sets LD_PRELOAD and asks it
// to run a shard. The worker must refuse it on its own.
TEST_CASE("security input: a worker refuses a forbidden runner.env whoever sends it",
          "[integration]") {
  namespace protocol = evald::protocol;
  TempDir dir("evald-worker-defence");
  zmq::context_t context(1);
  zmq::socket_t router(context, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  router.set(zmq::sockopt::rcvtimeo, 200);
  router.bind("tcp://127.0.0.1:0");
  const auto endpoint = router.get(zmq::sockopt::last_endpoint);

  const std::string marker = (dir.path() / "preloaded").string();
  auto runner = exec_runner();
  runner["command"] = {"/bin/sh", "-c", "touch " + marker};
  runner["env"] = {{"LD_PRELOAD", "/tmp/evil.so"}};
  const std::string spec_json = make_spec("rogue", kModels, kBenchmarks, runner).dump();

  WorkerOptions options;
  options.name = "w1";
  Worker worker(endpoint, dir.path() / "work", dir.path() / "w1.log", options);

  std::optional<protocol::ShardResult> result;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!result && std::chrono::steady_clock::now() < deadline) {
    zmq::message_t routing_id;
    zmq::message_t frame;
    if (!router.recv(routing_id)) continue;
    REQUIRE(router.recv(frame).has_value());
    auto decoded = protocol::decode(frame.to_string_view());
    REQUIRE(decoded.ok());
    const auto send = [&](const protocol::Message& message) {
      router.send(zmq::buffer(routing_id.to_string_view()), zmq::send_flags::sndmore);
      router.send(zmq::buffer(protocol::encode(message)), zmq::send_flags::none);
    };
    if (std::holds_alternative<protocol::Hello>(decoded.value())) {
      send(protocol::Welcome{100, 1000, 1});
      send(protocol::CampaignInfo{1, "c000001", spec_json});
      protocol::Assignment assignment;
      assignment.attempt_id = 7;
      assignment.campaign = 1;
      assignment.end = 5;
      send(protocol::Assign{{assignment}});
    } else if (const auto* results = std::get_if<protocol::Results>(&decoded.value())) {
      REQUIRE(results->results.size() == 1);
      result = results->results.front();
    }
  }
  REQUIRE(result.has_value());
  CHECK(result->attempt_id == 7);
  CHECK_FALSE(result->ok);
  CHECK(result->error ==
        "worker w1 could not parse the spec of campaign c000001: runner.env.LD_PRELOAD: may not "
        "be set by a spec: LD_* variables choose the code a process loads");
  CHECK_FALSE(std::filesystem::exists(marker));
}

TEST_CASE("security input: --allow-exec takes files and lists, a missing path stops the start",
          "[integration]") {
  TempDir dir("evald-allow-exec-flags");
  const auto worker = bin_dir() / "evald-worker";
  const auto missing =
      run_command(worker,
                  {"--coordinator", "tcp://127.0.0.1:1", "--allow-exec",
                   (dir.path() / "nope").string(), "--work-dir", (dir.path() / "w").string()},
                  10s);
  CHECK(missing.exit_code == 2);
  CHECK_THAT(missing.err, Catch::Contains("--allow-exec: " + (dir.path() / "nope").string() +
                                          ": No such file or directory"));

  // In --config, a list: the file's entries are checked the same way.
  std::ofstream(dir.path() / "worker.json")
      << json{{"allow-exec", {runners_dir().string(), (dir.path() / "missing").string()}}}.dump();
  const auto from_config = run_command(
      worker,
      {"--coordinator", "tcp://127.0.0.1:1", "--config", (dir.path() / "worker.json").string(),
       "--work-dir", (dir.path() / "w").string()},
      10s);
  CHECK(from_config.exit_code == 2);
  CHECK_THAT(from_config.err, Catch::Contains((dir.path() / "missing").string()));
}

TEST_CASE("security input: a worker without --allow-exec warns at start", "[integration]") {
  TestCluster cluster;
  cluster.api().wait_for_workers(2);
  REQUIRE(wait_until(
      [&] {
        return read_file(cluster.worker(0).process().log_file()).find("exec_policy_open") !=
               std::string::npos;
      },
      10s));
}

}  // namespace
