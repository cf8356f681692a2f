// Results the coordinator refuses, on the real binaries: a test-side worker speaks the wire
// protocol over a raw ZeroMQ DEALER (any name, any attempt id, any bytes) next to real workers.
//  - a RESULTS frame (or HAND_BACK, DRAIN) for a lease from anyone but its holder changes nothing
//    and costs the shard nothing;
//  - the holder's results are validated (count, finite values, valid unique names), and sums of
//    huge but finite values do not overflow into "no score";
//  - text from workers is stored as valid UTF-8, so /results, /shards, /v1/workers and /metrics
//    keep working; stale records and HELLO contents are bounded;
//  - /metrics drops the series of forgotten workers and finished campaigns.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <zmq.hpp>

#include "common/protocol.hpp"
#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;
namespace protocol = evald::protocol;

// A worker in the test process: a DEALER with routing id `name` that sends whatever it is told
// and remembers what the coordinator answered (ACKed attempt ids, assignments).
class ProtocolPeer {
 public:
  ProtocolPeer(const std::string& endpoint, std::string name)
      : context_(1), socket_(context_, zmq::socket_type::dealer), name_(std::move(name)) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::routing_id, name_);
    socket_.connect(endpoint);
  }

  void send(const protocol::Message& message) {
    const std::string frame = protocol::encode(message);
    socket_.send(zmq::buffer(frame), zmq::send_flags::none);
  }
  void hello(uint32_t slots, json labels = json::object(), json gpus = json::array()) {
    send(protocol::Hello{.name = name_,
                         .instance = "peer-" + name_,
                         .host = "",
                         .slots = slots,
                         .gpus = std::move(gpus),
                         .labels = std::move(labels),
                         .running = {},
                         .warm = {}});
  }

  // Reads what arrives for up to `timeout`, heartbeating so the coordinator keeps the peer
  // alive, until `done` holds; returns its last answer. `on_assign` (if set) is called for each
  // assignment as it arrives.
  bool pump_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (done()) return true;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return done();
      if (now - last_heartbeat_ >= 100ms) {
        send(protocol::Heartbeat{});
        last_heartbeat_ = now;
      }
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, 20ms);
      while (true) {
        zmq::message_t frame;
        if (!socket_.recv(frame, zmq::recv_flags::dontwait)) break;
        auto decoded = protocol::decode(frame.to_string_view());
        if (!decoded.ok()) continue;
        if (auto* ack = std::get_if<protocol::Ack>(&decoded.value())) {
          acked_.insert(ack->attempt_ids.begin(), ack->attempt_ids.end());
        } else if (auto* assign = std::get_if<protocol::Assign>(&decoded.value())) {
          for (const auto& a : assign->assignments) {
            if (on_assign) on_assign(a);
          }
        }
      }
    }
  }
  void pump_for(std::chrono::milliseconds duration) {
    pump_until([] { return false; }, duration);
  }

  bool acked(uint64_t attempt_id) const { return acked_.contains(attempt_id); }
  const std::string& name() const { return name_; }
  std::function<void(const protocol::Assignment&)> on_assign;

 private:
  zmq::context_t context_;
  zmq::socket_t socket_;
  std::string name_;
  std::set<uint64_t> acked_;
  std::chrono::steady_clock::time_point last_heartbeat_{};
};

std::string metrics_page(const Api& api) {
  const auto response = api.request("GET", "/metrics");
  REQUIRE(response.status == 200);
  return response.body;
}

// Sum of the samples of family `name` whose label set contains `label` (e.g. reason="invalid").
double metric_where(const Api& api, const std::string& name, const std::string& label) {
  double sum = 0;
  std::istringstream lines(metrics_page(api));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(name + "{", 0) != 0 || line.find(label) == std::string::npos) continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// Sample lines of the page that contain `text`.
size_t series_containing(const std::string& page, const std::string& text) {
  size_t n = 0;
  std::istringstream lines(page);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.empty() && line[0] != '#' && line.find(text) != std::string::npos) ++n;
  }
  return n;
}

void check_with_promtool(const std::string& page, const std::filesystem::path& file) {
  std::ofstream(file) << page;
  const auto result = run_command(
      "/bin/sh", {"-c", "/usr/bin/promtool check metrics < '" + file.string() + "'"}, 30s);
  INFO("promtool check metrics:\n" << result.out << result.err);
  CHECK(result.exit_code == 0);
}

uint32_t campaign_key(const std::string& id) {
  return static_cast<uint32_t>(std::stoul(id.substr(1)));
}

ClusterOptions no_workers() {
  ClusterOptions options;
  options.workers = 0;
  options.wait_for_workers = false;
  return options;
}

bool worker_listed(const Api& api, const std::string& name) {
  for (const auto& w : api.workers()) {
    if (w.at("name") == name) return true;
  }
  return false;
}

TEST_CASE("security: a result counts only from the worker holding the lease",
          "[integration][security]") {
  TestCluster cluster(no_workers());
  const auto api = cluster.api();
  auto options = cluster.worker_defaults();
  options.slots = 1;
  options.labels = "pool=real";
  Worker& real = cluster.add_worker(options);
  api.wait_for_workers(1);

  // Shards slow enough that the lease is open while the others try to answer it.
  const std::vector<TestModel> models = {{"m-real", 1, 4, {{"sleep_ms", 2500}}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 20, 10, 1, "accuracy", true, {}}};
  auto spec = make_spec("lease", models, benchmarks);
  spec["models"][0]["resources"] = {{"labels", {{"pool", "real"}}}};  // never the intruders
  const auto id = api.submit(spec);

  // The attempt id is public: /v1/workers lists the leases.
  uint64_t attempt = 0;
  uint32_t shard = 0;
  REQUIRE(wait_until(
      [&] {
        for (const auto& w : api.workers()) {
          if (w.at("name") == real.name() && !w.at("shards").empty()) {
            attempt = w["shards"][0].at("attempt_id").get<uint64_t>();
            shard = w["shards"][0].at("shard").get<uint32_t>();
            return true;
          }
        }
        return false;
      },
      10s));

  ProtocolPeer stranger(cluster.coordinator().bind_endpoint(), "stranger");  // never says HELLO
  ProtocolPeer rival(cluster.coordinator().bind_endpoint(), "rival");        // a worker, not this
  rival.hello(1);
  REQUIRE(rival.pump_until([&] { return worker_listed(api, "rival"); }, 10s));

  protocol::ShardResult forged;
  forged.attempt_id = attempt;
  forged.campaign = campaign_key(id);
  forged.shard = shard;
  forged.ok = true;
  forged.count = 9'000'000'000'000'000'000;
  forged.metrics = {{"accuracy", 1.0}};
  stranger.send(protocol::Results{.results = {forged}});
  rival.send(protocol::Results{.results = {forged}});
  rival.send(protocol::HandBack{.attempt_ids = {attempt}});
  stranger.send(protocol::HandBack{.attempt_ids = {attempt}});
  stranger.send(protocol::Drain{});
  // The rival is a worker (it said HELLO): the scheduler refuses its result and hand-back as not
  // the lease holder's. The stranger never said HELLO, so the core refuses its messages before
  // the scheduler sees them: its connection is nobody's.
  const auto rejected = [&](const char* reason) {
    return metric_where(api, "evald_results_rejected_total",
                        std::string("reason=\"") + reason + "\"");
  };
  REQUIRE(rival.pump_until(
      [&] {
        return rejected("not_lease_holder") >= 2 && rejected("unknown_connection") >= 1 &&
               rejected("unknown_connection_hand_back") >= 1 &&
               rejected("unknown_connection_drain") >= 1;
      },
      10s));
  stranger.pump_for(200ms);
  CHECK_FALSE(stranger.acked(attempt));
  CHECK_FALSE(rival.acked(attempt));

  // The real worker's results are what counts, each shard in one attempt, nothing stale.
  rival.pump_until([&] { return api.campaign(id).at("state") != "running"; }, 30s);
  api.wait_for_state(id, "succeeded", 30s);
  check_results(api.results(id), models, benchmarks);
  const auto all_shards = api.shards(id);
  for (const auto& s : all_shards.at("shards")) {
    INFO(s.dump());
    CHECK(s.at("worker") == real.name());
    CHECK(s.at("total_attempts") == 1);
    CHECK_FALSE(s.contains("history"));
  }
  CHECK(rejected("not_lease_holder") == 2);
  CHECK(rejected("unknown_connection") == 1);
}

TEST_CASE("security: the lease holder's results are validated, sums cannot overflow",
          "[integration][security]") {
  TestCluster cluster(no_workers());
  const auto api = cluster.api();
  ProtocolPeer rogue(cluster.coordinator().bind_endpoint(), "rogue");
  rogue.hello(1);
  REQUIRE(rogue.pump_until([&] { return worker_listed(api, "rogue"); }, 10s));

  const std::vector<TestModel> models = {{"m-huge", 1, 4, {}}, {"m-half", 1, 4, {}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 10, 10, 0, "accuracy", true, {}}};
  const auto id = api.submit(make_spec("validate", models, benchmarks, noop_runner(), 8));

  // m-huge's attempts answer, in order: five invalid results, a failure with bytes that are not
  // UTF-8, then a valid 1e308. m-half answers 0.5 at once.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  rogue.on_assign = [&](const protocol::Assignment& a) {
    auto r = protocol::result_for(a);
    r.ok = true;
    r.count = a.end - a.start;
    r.metrics = {{"accuracy", 0.5}};
    if (a.model == 0) {
      switch (a.attempt) {
        case 1:
          r.metrics = {{"accuracy", 0.9}, {"bad\xff\xfename", 1.0}};
          break;
        case 2:
          r.count = 9'000'000'000'000'000'000;
          r.metrics = {{"accuracy", 1.0}};
          break;
        case 3:
          r.metrics = {{"accuracy", 0.9}, {"accuracy", 1.0}};
          break;
        case 4:
          r.metrics = {{"accuracy", nan}};
          break;
        case 5:
          r.metrics = {{"f1", 0.9}};  // the benchmark's metric is missing
          break;
        case 6:
          r.ok = false;
          r.metrics.clear();
          r.error = "runner said \xc0\xaf\xed\xa0\x80 and died";
          break;
        default:
          r.metrics = {{"accuracy", 1e308}};
      }
    }
    rogue.send(protocol::Results{.results = {r}});
  };
  REQUIRE(rogue.pump_until([&] { return api.campaign(id).at("state") != "running"; }, 30s));
  api.wait_for_state(id, "succeeded", 5s);

  // 1e308 x 10 examples does not overflow: m-huge is ranked first with its mean.
  const auto results = api.results(id);
  INFO(results.dump());
  const auto& rows = results.at("models");
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].at("name") == "m-huge");
  CHECK(rows[0].at("rank") == 1);
  REQUIRE(rows[0].at("average").is_number());
  CHECK(rows[0]["average"].get<double>() == Approx(1e308));
  CHECK(rows[1].at("name") == "m-half");
  CHECK(rows[1].at("rank") == 2);
  CHECK(rows[1]["average"].get<double>() == Approx(0.5));
  CHECK(rows[0]["scores"]["b-one"].at("count") == 10);

  // Each invalid result failed its attempt with an error naming the problem.
  const auto shards = api.shards(id).at("shards");
  json history;
  for (const auto& s : shards) {
    if (s.at("model") == "m-huge") history = s.at("history");
  }
  INFO(history.dump());
  REQUIRE(history.size() == 6);
  std::vector<std::string> errors;
  for (const auto& h : history) {
    CHECK(h.at("outcome") == "failed");
    errors.push_back(h.at("error").get<std::string>());
  }
  CHECK_THAT(errors[0], Catch::Contains("not valid UTF-8"));
  CHECK_THAT(errors[1], Catch::Contains("exceeds the shard's size 10"));
  CHECK_THAT(errors[2], Catch::Contains("appears more than once"));
  CHECK_THAT(errors[3], Catch::Contains("not a finite number"));
  CHECK_THAT(errors[4], Catch::Contains("primary metric 'accuracy' missing"));
  CHECK(errors[5] ==
        "runner said \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD and died");
  CHECK(metric_where(api, "evald_results_rejected_total", "reason=\"invalid\"") == 5);

  // Nothing a worker sent can break a response or the /metrics page.
  CHECK(api.request("GET", "/v1/workers").status == 200);
  CHECK(api.request("GET", "/v1/campaigns/" + id + "/results").status == 200);
  CHECK(api.request("GET", "/v1/campaigns/" + id + "/shards").status == 200);
  check_with_promtool(metrics_page(api), cluster.dir() / "metrics.txt");
}

TEST_CASE("security: stale records, unknown shards and HELLO contents are bounded",
          "[integration][security]") {
  TestCluster cluster(no_workers());
  const auto api = cluster.api();
  ProtocolPeer rogue(cluster.coordinator().bind_endpoint(), "rogue");
  json labels = json::object();
  // Two entries no GPU can be looked up by (placement and provenance read the index): dropped.
  json gpus = json::array({{{"index", "0"}, {"name", "string index"}}, {{"name", "no index"}}});
  for (int i = 0; i < 1000; ++i) {
    labels["label-" + std::to_string(i)] = "value";
    gpus.push_back({{"index", i}, {"name", "GPU"}, {"memory_mb", 81920}});
  }
  labels["huge"] = std::string(100000, 'x');
  rogue.hello(1, labels, gpus);
  REQUIRE(rogue.pump_until([&] { return worker_listed(api, "rogue"); }, 10s));
  for (const auto& w : api.workers()) {
    CHECK(w.at("labels").size() <= 64);
    CHECK(w.at("gpus").size() <= 64);
  }
  CHECK(metric_where(api, "evald_hello_items_dropped_total", "field=\"labels\"") == 1001 - 64);
  CHECK(metric_where(api, "evald_hello_items_dropped_total", "field=\"gpus\"") == 1002 - 64);
  for (const auto& w : api.workers()) {
    for (const auto& gpu : w.at("gpus")) CHECK(gpu.at("index").is_number_integer());
  }

  const std::vector<TestModel> models = {{"m", 1, 4, {}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 10, 10, 0, "accuracy", true, {}}};
  const auto id = api.submit(make_spec("stale", models, benchmarks, noop_runner()));
  uint64_t counted = 0;
  rogue.on_assign = [&](const protocol::Assignment& a) {
    auto r = protocol::result_for(a);
    r.ok = true;
    r.count = 10;
    r.metrics = {{"accuracy", 0.75}};
    counted = a.attempt_id;
    rogue.send(protocol::Results{.results = {r}});
  };
  REQUIRE(rogue.pump_until([&] { return api.campaign(id).at("state") == "succeeded"; }, 20s));

  // 20 results of attempts that are not the lease, each with a 1 MiB error that is not UTF-8,
  // and 5 of a campaign that does not exist.
  std::vector<uint64_t> sent;
  for (uint64_t i = 0; i < 25; ++i) {
    protocol::ShardResult r;
    r.attempt_id = counted + 1000 + i;
    r.campaign = i < 20 ? campaign_key(id) : 999;
    r.ok = false;
    r.error = std::string(1 << 20, '\xfe');
    rogue.send(protocol::Results{.results = {r}});
    sent.push_back(r.attempt_id);
  }
  // The re-sent copy of the counted result: stale, harmless, ACKed.
  protocol::ShardResult again;
  again.attempt_id = counted;
  again.campaign = campaign_key(id);
  again.ok = true;
  again.count = 10;
  again.metrics = {{"accuracy", 0.0}};
  rogue.send(protocol::Results{.results = {again}});
  sent.push_back(counted);
  REQUIRE(rogue.pump_until(
      [&] {
        return std::all_of(sent.begin(), sent.end(), [&](uint64_t a) { return rogue.acked(a); });
      },
      20s));

  const auto shards = api.shards(id).at("shards");
  REQUIRE(shards.size() == 1);
  const auto& history = shards[0].at("history");
  CHECK(history.size() == 4);
  for (const auto& h : history) {
    CHECK(h.at("outcome") == "stale");
    CHECK(h.at("error").get<std::string>().size() <= 4096);
  }
  CHECK(metric_where(api, "evald_results_rejected_total", "reason=\"stale_not_stored\"") == 17);
  CHECK(metric_where(api, "evald_results_rejected_total", "reason=\"unknown_shard\"") == 5);
  // Exactly once: the re-sent copy did not change the score.
  CHECK(api.results(id)["models"][0]["average"].get<double>() == Approx(0.75));
  check_with_promtool(metrics_page(api), cluster.dir() / "metrics.txt");
}

TEST_CASE("security: /metrics forgets lost workers and finished campaigns",
          "[integration][security]") {
  ClusterOptions options;
  options.workers = 1;
  options.coordinator.extra_args = {"--forget-lost-workers-ms", "100",
                                    "--finished-campaign-metrics-ms", "300"};
  TestCluster cluster(options);
  const auto api = cluster.api();

  // Workers that come and go: their series leave with them once they are forgotten.
  {
    std::vector<std::unique_ptr<ProtocolPeer>> peers;
    for (int i = 0; i < 8; ++i) {
      peers.push_back(std::make_unique<ProtocolPeer>(cluster.coordinator().bind_endpoint(),
                                                     "short-" + std::to_string(i)));
      peers.back()->hello(1);
    }
    REQUIRE(peers.back()->pump_until(
        [&] { return series_containing(metrics_page(api), "worker=\"short-") >= 8 * 4; }, 10s));
  }  // closed: silent, then lost, then forgotten
  REQUIRE(wait_until([&] { return api.workers().size() == 1; }, 15s));
  REQUIRE(
      wait_until([&] { return series_containing(metrics_page(api), "worker=\"short-") == 0; }, 5s));

  // Campaigns that end: their series leave after the retention; a rerun brings them back.
  const std::vector<TestModel> models = {{"m-a", 1, 4, {}}, {"m-b", 2, 3, {}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-one", 30, 10, 0, "accuracy", true, {}}};
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    ids.push_back(
        api.submit(make_spec("short-" + std::to_string(i), models, benchmarks, noop_runner())));
  }
  for (const auto& id : ids) api.wait_for_state(id, "succeeded", 30s);
  REQUIRE(
      wait_until([&] { return series_containing(metrics_page(api), "campaign=\"") == 0; }, 10s));
  for (const auto& id : ids) CHECK(api.results(id).at("models").size() == 2);

  api.post("/v1/campaigns/" + ids[0] + "/rerun", json{{"failed", false}});
  api.wait_for_state(ids[0], "succeeded", 30s);
  CHECK(api.results(ids[0]).at("models").size() == 2);
  REQUIRE(
      wait_until([&] { return series_containing(metrics_page(api), "campaign=\"") == 0; }, 10s));
  check_with_promtool(metrics_page(api), cluster.dir() / "metrics.txt");
}

}  // namespace
