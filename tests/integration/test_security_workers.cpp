// Attacks on the worker socket, each against the real binaries, each one that succeeded before
// workers were authenticated and bound to their connections:
//  - with CURVE: a worker with an unknown key, a worker under another worker's name, a worker
//    pinned to a different coordinator key, and a second connection claiming a busy worker's
//    name all get nothing, and the real workers finish with the exact leaderboard;
//  - without CURVE (loopback): a connection that never said HELLO forges a result for the
//    current lease; it changes nothing, and the real result counts;
//  - start-up: key files, the allowlist and protected mode fail fast with exit code 2;
//  - evalctl keygen writes usable keys with the right modes and never overwrites one.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <thread>
#include <zmq.hpp>

#include "common/curve_keys.hpp"
#include "common/protocol.hpp"
#include "tests/integration/integration.hpp"
#include "tests/integration/runner_trace.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
namespace protocol = evald::protocol;

const std::vector<TestModel> kModels = {{"m-alpha", 1, 5, {}}, {"m-beta", 2, 3, {}}};
const std::vector<TestBenchmark> kBenchmarks = {{"b-one", 40, 10, 1, "accuracy", true, {}},
                                                {"b-two", 23, 8, 3, "accuracy", true, {}}};

// One series of a counter family in GET /metrics, e.g. ("evald_worker_auth_failures_total",
// "reason=\"unknown_key\""); 0 if absent.
double series(const Api& api, const std::string& family, const std::string& label) {
  const auto response = api.request("GET", "/metrics");
  std::istringstream lines(response.body);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(family + "{", 0) != 0 || line.find(label) == std::string::npos) continue;
    return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return 0;
}

// Polls until `done` is true or `timeout` passes; returns the last answer.
template <typename Done>
bool eventually(Done&& done, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return done();
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> worker_names(const Api& api) {
  std::vector<std::string> names;
  for (const auto& w : api.workers()) names.push_back(w.at("name").get<std::string>());
  return names;
}

// A worker process must never have taken work: no WELCOME, no CAMPAIGN, no ASSIGN in its log.
void check_never_served(const fs::path& log) {
  REQUIRE(fs::exists(log));
  const auto text = read_text(log);
  CHECK_THAT(text, Catch::Contains("worker_started"));  // the right file, and it did run
  INFO("worker log " << log << ":\n" << text);
  CHECK(text.find("welcome") == std::string::npos);
  CHECK(text.find("campaign_received") == std::string::npos);
  CHECK(text.find("exec_assigned") == std::string::npos);
}

// A hand-rolled worker connection speaking the wire format (common/protocol.hpp), optionally
// with CURVE keys: what an attacker with a copy of the protocol header would write.
class RawPeer {
 public:
  struct Keys {
    std::string secret;
    std::string server_public;
  };
  explicit RawPeer(const std::string& endpoint, std::optional<Keys> keys = std::nullopt)
      : socket_(context_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    if (keys) {
      socket_.set(zmq::sockopt::curve_serverkey, keys->server_public);
      socket_.set(zmq::sockopt::curve_publickey, evald::curve_public_key(keys->secret).value());
      socket_.set(zmq::sockopt::curve_secretkey, keys->secret);
    }
    socket_.connect(endpoint);
  }
  void send(const protocol::Message& message) {
    const auto frame = protocol::encode(message);
    REQUIRE(socket_.send(zmq::buffer(frame), zmq::send_flags::none));
  }
  // The next message within `timeout`, if any.
  std::optional<protocol::Message> receive(std::chrono::milliseconds timeout) {
    socket_.set(zmq::sockopt::rcvtimeo, static_cast<int>(timeout.count()));
    zmq::message_t frame;
    if (!socket_.recv(frame)) return std::nullopt;
    auto decoded = protocol::decode(frame.to_string_view());
    REQUIRE(decoded.ok());
    return std::move(decoded.value());
  }
  // Waits for a message of type T, dropping others; false on timeout.
  template <typename T>
  bool receive_a(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto message = receive(100ms);
      if (message && std::holds_alternative<T>(*message)) return true;
    }
    return false;
  }

 private:
  zmq::context_t context_{1};
  zmq::socket_t socket_;
};

ClusterOptions curve_cluster(size_t workers) {
  ClusterOptions options;
  options.curve = true;
  options.workers = workers;
  options.dir_prefix = "evald-sec";
  return options;
}

// A key pair the coordinator has never heard of.
std::string write_rogue_keys(const Cluster& cluster, const std::string& name) {
  const auto prefix = (cluster.curve_keys_dir() / name).string();
  REQUIRE(evald::write_key_pair(prefix, evald::generate_curve_key_pair(), false).ok());
  return prefix;
}

TEST_CASE("security: with CURVE an allowed worker completes a campaign exactly",
          "[integration][security]") {
  TestCluster cluster(curve_cluster(2));
  const auto api = cluster.api();
  const auto id = api.submit(make_spec("curve-e2e", kModels, kBenchmarks));
  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), kModels, kBenchmarks);
  check_all_shards_succeeded(api, id, total_shards(kModels, kBenchmarks));
  CHECK(series(api, "evald_worker_auth_failures_total", "") == 0);
  const auto coordinator_log = read_text(cluster.log_dir() / "coordinator.log");
  CHECK(coordinator_log.find("worker_socket_curve public_key=") != std::string::npos);
}

TEST_CASE("security: a worker whose key is not allowed never gets work",
          "[integration][security]") {
  TestCluster cluster(curve_cluster(1));
  const auto api = cluster.api();
  const auto rogue = write_rogue_keys(cluster, "rogue");
  auto options = cluster.worker_defaults();
  options.name = "rogue";
  options.extra_args = {"--curve-secret", rogue + ".secret", "--coordinator-key",
                        (cluster.curve_keys_dir() / "coordinator.public").string()};
  cluster.add_worker(options);
  REQUIRE(eventually([&] {
    return series(api, "evald_worker_auth_failures_total", "reason=\"unknown_key\"") >= 1;
  }));

  const auto id = api.submit(make_spec("unknown-key", kModels, kBenchmarks));
  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), kModels, kBenchmarks);
  const auto shards_1 = api.shards(id);
  for (const auto& s : shards_1.at("shards")) CHECK(s.at("worker") == "w1");
  CHECK(worker_names(api) == std::vector<std::string>{"w1"});
  check_never_served(cluster.log_dir() / "worker-rogue.log");
  CHECK_THAT(read_text(cluster.log_dir() / "worker-rogue.log"),
             Catch::Contains("coordinator_handshake_failed"));
  CHECK_THAT(read_text(cluster.log_dir() / "coordinator.log"),
             Catch::Contains("reason=unknown_key"));
}

TEST_CASE("security: an allowed key under another worker's name is refused",
          "[integration][security]") {
  TestCluster cluster(curve_cluster(1));
  const auto api = cluster.api();
  auto options = cluster.worker_defaults();
  options.name = "impostor";
  // w2's key is allowed, but for the name w2 only.
  options.extra_args = cluster.worker_curve_args("w2");
  cluster.add_worker(options);
  REQUIRE(eventually([&] {
    return series(api, "evald_worker_auth_failures_total", "reason=\"name_mismatch\"") >= 1;
  }));
  const auto id = api.submit(make_spec("name-mismatch", kModels, kBenchmarks));
  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), kModels, kBenchmarks);
  CHECK(worker_names(api) == std::vector<std::string>{"w1"});
  check_never_served(cluster.log_dir() / "worker-impostor.log");
  CHECK_THAT(read_text(cluster.log_dir() / "coordinator.log"),
             Catch::Contains("hello_name=impostor key_name=w2"));
}

TEST_CASE("security: a worker pinning another coordinator key runs nothing",
          "[integration][security]") {
  TestCluster cluster(curve_cluster(1));
  const auto api = cluster.api();
  // w2 is allowed, but pins a key the coordinator does not hold: it must not trust the peer.
  const auto other = write_rogue_keys(cluster, "other-coordinator");
  auto options = cluster.worker_defaults();
  options.name = "w2";
  options.extra_args = {"--curve-secret", (cluster.curve_keys_dir() / "w2.secret").string(),
                        "--coordinator-key", other + ".public"};
  cluster.add_worker(options);
  const auto id = api.submit(make_spec("wrong-server-key", kModels, kBenchmarks));
  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), kModels, kBenchmarks);
  const auto shards_2 = api.shards(id);
  for (const auto& s : shards_2.at("shards")) CHECK(s.at("worker") == "w1");
  CHECK(worker_names(api) == std::vector<std::string>{"w1"});
  REQUIRE(eventually([&] {
    return read_text(cluster.log_dir() / "worker-w2.log").find("coordinator_handshake_failed") !=
           std::string::npos;
  }));
  check_never_served(cluster.log_dir() / "worker-w2.log");
}

TEST_CASE("security: a second connection cannot take over or drain a busy worker",
          "[integration][security]") {
  TestCluster cluster(curve_cluster(1));
  const auto api = cluster.api();
  // Slow shards, so w1 holds leases while the attacker tries.
  std::vector<TestModel> models = {{"m-slow", 1, 4, {{"sleep_ms", 300}}}};
  std::vector<TestBenchmark> benchmarks = {{"b-slow", 60, 10, 0, "accuracy", true, {}}};
  const auto id = api.submit(make_spec("takeover", models, benchmarks));
  REQUIRE(eventually([&] { return !api.shards(id, "running").at("shards").empty(); }));

  // Another allowed key (w2's) says HELLO as w1, then DRAIN and HAND_BACK of w1's lease.
  const auto keys_dir = cluster.curve_keys_dir();
  RawPeer attacker(
      cluster.coordinator().bind_endpoint(),
      RawPeer::Keys{
          evald::read_key_file((keys_dir / "w2.secret").string(), "test", true).value(),
          evald::read_key_file((keys_dir / "coordinator.public").string(), "test", false).value()});
  protocol::Hello hello;
  hello.name = "w1";
  hello.instance = "attacker";
  hello.slots = 64;
  attacker.send(hello);
  REQUIRE(eventually([&] {
    return series(api, "evald_worker_auth_failures_total", "reason=\"name_mismatch\"") >= 1;
  }));
  const auto running = api.shards(id, "running").at("shards");
  REQUIRE_FALSE(running.empty());
  const uint64_t lease = running.at(0).at("attempt_id").get<uint64_t>();
  attacker.send(protocol::Drain{});
  attacker.send(protocol::HandBack{{lease}});
  CHECK(attacker.receive_a<protocol::ReHello>(5s));
  CHECK_FALSE(attacker.receive_a<protocol::Welcome>(300ms));
  REQUIRE(eventually([&] {
    return series(api, "evald_results_rejected_total", "reason=\"unknown_connection_hand_back\"") >=
           1;
  }));
  CHECK(series(api, "evald_results_rejected_total", "reason=\"unknown_connection_drain\"") == 1);

  const auto workers = api.workers();
  REQUIRE(workers.size() == 1);
  CHECK(workers.at(0).at("name") == "w1");
  CHECK(workers.at(0).at("state") == "connected");
  CHECK(workers.at(0).at("slots") == 2);

  api.wait_for_state(id, "succeeded", 45s);
  check_results(api.results(id), models, benchmarks);
  const auto shards_3 = api.shards(id);
  for (const auto& s : shards_3.at("shards")) {
    INFO(s.dump());
    CHECK(s.at("worker") == "w1");
    CHECK(s.at("attempts") == 1);
  }
}

TEST_CASE("security: without CURVE a result from a connection that never said HELLO is ignored",
          "[integration][security]") {
  ClusterOptions options;
  options.workers = 1;
  options.slots = 1;
  TestCluster cluster(options);
  const auto api = cluster.api();
  // One slow shard: its lease is current while the forger acts.
  std::vector<TestModel> models = {{"m-real", 1, 4, {{"sleep_ms", 1500}}}};
  std::vector<TestBenchmark> benchmarks = {{"b-only", 10, 10, 0, "accuracy", true, {}}};
  const auto id = api.submit(make_spec("forged", models, benchmarks));
  json running;
  REQUIRE(eventually([&] {
    running = api.shards(id, "running").at("shards");
    return !running.empty();
  }));
  const uint64_t lease = running.at(0).at("attempt_id").get<uint64_t>();
  // The same attempt id, from the worker's side of the API.
  const auto workers = api.workers();
  REQUIRE(workers.at(0).at("shards").at(0).at("attempt_id").get<uint64_t>() == lease);

  RawPeer forger(cluster.coordinator().bind_endpoint());
  protocol::ShardResult forged;
  forged.attempt_id = lease;
  forged.campaign = 1;  // the first campaign of a fresh coordinator
  forged.ok = true;
  forged.count = 9'000'000'000'000'000'000;
  forged.metrics = {{"accuracy", 0.99}};
  forged.duration_ms = 1;
  forger.send(protocol::Results{{forged}});
  CHECK(forger.receive_a<protocol::ReHello>(5s));
  REQUIRE(eventually([&] {
    return series(api, "evald_results_rejected_total", "reason=\"unknown_connection\"") == 1;
  }));
  CHECK_FALSE(api.shards(id, "running").at("shards").empty());  // the lease is untouched

  const auto done = api.wait_for_state(id, "succeeded", 30s);
  CHECK(done.at("shards").at("failed") == 0);
  check_results(api.results(id), models, benchmarks);  // the real 4/7-ish score, not 0.99
  const auto shard = api.shards(id).at("shards").at(0);
  CHECK(shard.at("worker") == "w1");
  CHECK(shard.at("attempts") == 1);
  CHECK_FALSE(shard.contains("history"));  // the forgery left no record, not even a stale one
}

// --- start-up ---------------------------------------------------------------------------------

struct StartResult {
  int exit_code = -1;
  std::string output;
};

StartResult start_coordinator(const TempDir& dir, std::vector<std::string> args) {
  std::vector<std::string> all = {"--data-dir", (dir.path() / "data").string(), "--http",
                                  "127.0.0.1:0"};
  all.insert(all.end(), args.begin(), args.end());
  const auto result = run_command(bin_dir() / "evald-coordinator", all, 10s);
  return StartResult{result.exit_code, result.out + result.err};
}

TEST_CASE("security: key files and protected mode fail fast at start", "[integration][security]") {
  TempDir dir("evald-sec-start");
  const auto keys = dir.path() / "keys";
  fs::create_directories(keys);
  const auto pair = evald::generate_curve_key_pair();
  REQUIRE(evald::write_key_pair((keys / "coord").string(), pair, false).ok());
  const auto secret = (keys / "coord.secret").string();
  const auto allowlist = keys / "workers";
  std::ofstream(allowlist) << "# the fleet\n\nw1 " << pair.public_z85 << "  # a comment\n";

  SECTION("a missing secret key file names the flag and the file") {
    const auto r =
        start_coordinator(dir, {"--bind", "tcp://127.0.0.1:0", "--curve-secret",
                                (keys / "nope").string(), "--worker-keys", allowlist.string()});
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("--curve-secret") && Catch::Contains("nope"));
  }
  SECTION("a file that is not a key is refused") {
    std::ofstream(keys / "short") << "abc\n";
    const auto r =
        start_coordinator(dir, {"--bind", "tcp://127.0.0.1:0", "--curve-secret",
                                (keys / "short").string(), "--worker-keys", allowlist.string()});
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("not a CURVE key"));
  }
  SECTION("--curve-secret without --worker-keys says what to add") {
    const auto r =
        start_coordinator(dir, {"--bind", "tcp://127.0.0.1:0", "--curve-secret", secret});
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("--worker-keys"));
  }
  SECTION("a malformed allowlist line is named by file:line") {
    std::ofstream(allowlist, std::ios::app) << "w2\n";
    const auto r = start_coordinator(dir, {"--bind", "tcp://127.0.0.1:0", "--curve-secret", secret,
                                           "--worker-keys", allowlist.string()});
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains(allowlist.string() + ":4"));
  }
  SECTION("a non-loopback bind without CURVE is refused, and --insecure starts with a warning") {
    const auto r = start_coordinator(dir, {"--bind", "tcp://0.0.0.0:0"});
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Catch::Contains("--curve-secret") && Catch::Contains("--worker-keys") &&
                             Catch::Contains("--insecure"));

    // --insecure: it serves (and says so); stop it with SIGTERM.
    ProcessOptions process;
    process.executable = bin_dir() / "evald-coordinator";
    process.args = {"--data-dir", (dir.path() / "data").string(),
                    "--http",     "127.0.0.1:0",
                    "--bind",     "tcp://0.0.0.0:0",
                    "--insecure"};
    process.log_file = dir.path() / "insecure.log";
    process.pipe_stdout = true;
    ChildProcess coordinator(std::move(process));
    REQUIRE(coordinator.read_line(10s));
    CHECK(coordinator.terminate() == 0);
    CHECK_THAT(read_text(dir.path() / "insecure.log"), Catch::Contains("insecure"));
  }
  SECTION("the worker checks its key files too") {
    const auto result =
        run_command(bin_dir() / "evald-worker",
                    {"--coordinator", "tcp://127.0.0.1:1", "--gpus", "none", "--work-dir",
                     (dir.path() / "w").string(), "--curve-secret", secret, "--coordinator-key",
                     (keys / "missing.public").string()},
                    10s);
    CHECK(result.exit_code == 2);
    CHECK_THAT(result.err,
               Catch::Contains("--coordinator-key") && Catch::Contains("missing.public"));
  }
}

TEST_CASE("security: evalctl keygen writes usable keys and never overwrites one",
          "[integration][security]") {
  TempDir dir("evald-sec-keygen");
  const auto prefix = (dir.path() / "coordinator").string();
  const auto first = run_command(bin_dir() / "evalctl", {"keygen", prefix}, 10s);
  INFO(first.out << first.err);
  REQUIRE(first.exit_code == 0);
  struct stat st {};
  REQUIRE(::stat((prefix + ".secret").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat((prefix + ".public").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0644);
  const auto public_key = read_text(prefix + ".public");
  REQUIRE(public_key.size() == 41);
  CHECK(public_key.back() == '\n');
  CHECK_THAT(first.out, Catch::Contains(public_key.substr(0, 40)));
  const auto secret_key = read_text(prefix + ".secret");
  CHECK(evald::curve_public_key(secret_key.substr(0, 40)).value() == public_key.substr(0, 40));

  const auto again = run_command(bin_dir() / "evalctl", {"keygen", prefix}, 10s);
  CHECK(again.exit_code == 1);
  CHECK_THAT(again.err, Catch::Contains("already exists"));
  CHECK(read_text(prefix + ".secret") == secret_key);  // untouched

  const auto forced = run_command(bin_dir() / "evalctl", {"keygen", prefix, "--force"}, 10s);
  CHECK(forced.exit_code == 0);
  CHECK(read_text(prefix + ".secret") != secret_key);
  REQUIRE(::stat((prefix + ".secret").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  // The keys run a coordinator and a worker.
  const auto worker_prefix = (dir.path() / "gpu-node-1").string();
  REQUIRE(run_command(bin_dir() / "evalctl", {"keygen", worker_prefix}, 10s).exit_code == 0);
  std::ofstream(dir.path() / "worker-keys")
      << "gpu-node-1 " << read_text(worker_prefix + ".public");
  fs::create_directories(dir.path() / "logs");
  CoordinatorOptions coordinator_options;
  coordinator_options.extra_args = {"--curve-secret", prefix + ".secret", "--worker-keys",
                                    (dir.path() / "worker-keys").string()};
  Coordinator coordinator(dir.path() / "data", dir.path() / "logs" / "coordinator.log",
                          coordinator_options);
  WorkerOptions options;
  options.name = "gpu-node-1";
  options.extra_args = {"--curve-secret", worker_prefix + ".secret", "--coordinator-key",
                        prefix + ".public"};
  Worker worker(coordinator.bind_endpoint(), dir.path() / "work", dir.path() / "logs" / "w.log",
                options);
  Api api(coordinator.http_url());
  api.wait_for_workers(1);
  const auto id = api.submit(make_spec("keygen", kModels, kBenchmarks, noop_runner()));
  api.wait_for_state(id, "succeeded", 30s);
  CHECK(worker_names(api) == std::vector<std::string>{"gpu-node-1"});
  CHECK(worker.terminate() == 0);
  CHECK(coordinator.terminate() == 0);
}

}  // namespace
