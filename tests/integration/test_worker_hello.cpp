// HELLO on the real binaries: a worker name is bounded with or without CURVE, and a worker that
// finds a new coordinator connection says HELLO on it before anything else, so what it sends
// there (its DRAIN, its HAND_BACK) is taken and not refused as coming from nobody.
#include <signal.h>

#include <catch2/catch.hpp>
#include <string>
#include <zmq.hpp>

#include "common/protocol.hpp"
#include "common/spec.hpp"
#include "tests/integration/integration.hpp"
#include "tests/integration/runner_trace.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

// A DEALER in the test process that says HELLO under a name of its choosing.
class RawWorker {
 public:
  explicit RawWorker(const std::string& endpoint)
      : context_(1), socket_(context_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(endpoint);
  }
  void hello(const std::string& name) {
    evald::protocol::Hello hello;
    hello.name = name;
    hello.instance = "raw";
    hello.slots = 1;
    const auto frame = evald::protocol::encode(hello);
    socket_.send(zmq::buffer(frame), zmq::send_flags::none);
  }

 private:
  zmq::context_t context_;
  zmq::socket_t socket_;
};

bool listed(const Api& api, const std::string& name) {
  for (const auto& w : api.workers()) {
    if (w.at("name") == name) return true;
  }
  return false;
}

TEST_CASE("hello: a worker name over 128 bytes is refused naming the limit, without CURVE too",
          "[integration]") {
  ClusterOptions options;
  options.workers = 0;
  TestCluster cluster(options);
  const auto api = cluster.api();
  REQUIRE(evald::kMaxNameLength == 128);  // worker names, as for --name
  const std::string too_long(129, 'n');
  const std::string longest(128, 'm');
  const double malformed_before = api.metric("evald_messages_malformed_total");

  RawWorker intruder(cluster.coordinator().bind_endpoint());
  intruder.hello(too_long);
  REQUIRE(wait_until(
      [&] { return api.metric("evald_messages_malformed_total") >= malformed_before + 1; }, 10s));
  const auto log = read_file(cluster.log_dir() / "coordinator.log");
  CHECK_THAT(log, Catch::Contains("HELLO: worker name is 129 bytes; the limit is 128"));
  CHECK_FALSE(listed(api, too_long));

  // 128 bytes is a name like any other.
  RawWorker at_limit(cluster.coordinator().bind_endpoint());
  at_limit.hello(longest);
  CHECK(wait_until([&] { return listed(api, longest); }, 10s));

  // The worker binary holds its own --name to the same limit.
  const auto refused =
      run_command(bin_dir() / "evald-worker",
                  {"--coordinator", cluster.coordinator().bind_endpoint(), "--name", too_long,
                   "--gpus", "none", "--work-dir", (cluster.dir() / "work-long").string()},
                  30s);
  INFO(refused.err);
  CHECK(refused.exit_code == 2);
  CHECK_THAT(refused.err, Catch::Contains("--name: must be 1 to 128 characters"));
}

TEST_CASE("hello: a worker draining across a coordinator restart hands its shard back, uncharged",
          "[integration]") {
  constexpr int64_t kDrainTimeoutMs = 3000;
  ClusterOptions options;
  options.workers = 0;
  options.worker_heartbeat_ms = 100;
  options.coordinator.heartbeat_ms = 100;
  // Neither a lost worker nor an unreclaimed lease may end this attempt: only the hand-back.
  options.coordinator.worker_timeout_ms = 30000;
  options.coordinator.extra_args = {"--restart-grace-ms", "30000"};
  TestCluster cluster(options);
  auto defaults = cluster.worker_defaults();
  defaults.slots = 1;
  defaults.extra_args = {"--drain-timeout-ms", std::to_string(kDrainTimeoutMs)};
  auto& draining = cluster.add_worker(defaults);
  const auto api = cluster.api();
  api.wait_for_workers(1);
  const fs::path trace = make_trace_dir(cluster);
  // The first attempt hangs until the drain timeout kills it; a retry succeeds.
  const std::vector<TestModel> models = {
      {"m-alpha", 2, 3, {{"hang_attempts", {1}}, {"trace_dir", trace.string()}}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 10, 10, 1, "accuracy", true, {}}};
  const auto id = api.submit(make_spec("drain-across-restart", models, benchmarks));
  ShardRef hung;
  REQUIRE(wait_until(
      [&] {
        for (const auto& s : shard_list(api, id, "running")) {
          if (fs::exists(trace_file(trace, ref_of(s), 1, "started"))) {
            hung = ref_of(s);
            return true;
          }
        }
        return false;
      },
      20s, 5ms));

  // The worker starts draining while the coordinator is gone; the new coordinator process gets
  // the worker's HELLO (which reclaims the lease), its DRAIN, and at the drain timeout its
  // HAND_BACK, all on the new connection.
  cluster.coordinator().kill();
  draining.process().signal(SIGTERM);
  cluster.coordinator().restart();
  const auto code = draining.process().wait_exit(20s);
  REQUIRE(code.has_value());
  CHECK(*code == 0);

  const auto rejected = [&](const std::string& reason) {
    return api.metric_if_declared("evald_results_rejected_total", {{"reason", reason}}).value_or(0);
  };
  CHECK(rejected("unknown_connection_hand_back") == 0);
  CHECK(rejected("unknown_connection_drain") == 0);
  CHECK(rejected("unknown_connection") == 0);
  // Handed back at once: queued again without waiting for a timeout, no attempt used.
  REQUIRE(wait_until(
      [&] {
        const auto s = find_shard(api, id, hung);
        return s.at("state") == "pending" && !s.value("history", nlohmann::json::array()).empty();
      },
      10s));
  cluster.add_worker();
  api.wait_for_state(id, "succeeded", 30s);
  check_results(api.results(id), models, benchmarks);
  const auto s = find_shard(api, id, hung);
  INFO("shard " << s.dump());
  CHECK(s.at("attempts") == 1);
  CHECK(s.at("total_attempts") == 2);
  REQUIRE(s.at("history").size() == 1);
  CHECK(s.at("history").at(0).at("outcome") == "handed_back");
  CHECK(s.at("history").at(0).at("worker") == draining.name());
}

}  // namespace
