// Untrusted input at both edges of a live coordinator: HTTP requests that are invalid, too big,
// misrouted or do not fit the campaign's state get the right status and a JSON error that names
// the problem (nothing stored); ZeroMQ peers that send garbage, a wrong protocol version, a
// truncated RESULTS frame or an oversized frame are dropped and counted, and the coordinator
// goes on serving a campaign to completion.
#include <catch2/catch.hpp>
#include <zmq.hpp>

#include "common/protocol.hpp"
#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;

constexpr int64_t kMaxBodyBytes = 4096;
constexpr int64_t kMaxMessageBytes = 65536;

const std::vector<TestModel> kModels = {{"m-alpha", 1, 5, {}}, {"m-beta", 2, 3, {}}};
const std::vector<TestBenchmark> kBenchmarks = {{"b-one", 23, 5, 1, "accuracy", true, {}}};

ClusterOptions small_limits() {
  ClusterOptions options;
  options.coordinator.max_body_bytes = kMaxBodyBytes;
  options.coordinator.extra_args = {"--max-message-bytes", std::to_string(kMaxMessageBytes)};
  return options;
}

// The status, and that the body is {"error": "<non-empty text>"}; returns the text.
std::string expect_error(const evald::HttpResponse& response, int status) {
  INFO("response " << response.status << " " << response.body);
  CHECK(response.status == status);
  const auto body = json::parse(response.body, nullptr, false);
  REQUIRE(body.is_object());
  REQUIRE(body.contains("error"));
  REQUIRE(body["error"].is_string());
  CHECK_FALSE(body["error"].get<std::string>().empty());
  return body["error"].get<std::string>();
}

TEST_CASE("bad input: HTTP errors are JSON with the right status, nothing stored",
          "[integration]") {
  TestCluster cluster(small_limits());
  const auto api = cluster.api();

  SECTION("an invalid spec names the field and stores nothing") {
    auto spec = make_spec("bad", kModels, kBenchmarks);
    spec["benchmarks"][0]["shard_size"] = 0;
    const auto error = expect_error(api.request("POST", "/v1/campaigns", spec.dump()), 400);
    CHECK_THAT(error, Catch::Contains("benchmarks[0].shard_size"));

    auto no_models = make_spec("bad", kModels, kBenchmarks);
    no_models.erase("models");
    CHECK_THAT(expect_error(api.request("POST", "/v1/campaigns", no_models.dump()), 400),
               Catch::Contains("models"));
    auto typo = make_spec("bad", kModels, kBenchmarks);
    typo["max_attempt"] = 2;
    CHECK_THAT(expect_error(api.request("POST", "/v1/campaigns", typo.dump()), 400),
               Catch::Contains("max_attempt"));
    expect_error(api.request("POST", "/v1/campaigns", "{\"name\": "), 400);
    expect_error(api.request("POST", "/v1/campaigns", ""), 400);
    CHECK(api.get("/v1/campaigns").at("campaigns").empty());
  }

  SECTION("a body over --max-body-bytes gets 413 and stores nothing") {
    auto spec = make_spec("big", kModels, kBenchmarks);
    spec["description"] = std::string(kMaxBodyBytes, 'x');
    expect_error(api.request("POST", "/v1/campaigns", spec.dump()), 413);
    CHECK(api.get("/v1/campaigns").at("campaigns").empty());
    // The connection-level refusal leaves the server healthy.
    CHECK(api.request("GET", "/healthz").status == 200);
  }

  SECTION("unknown routes and campaigns are 404, wrong fits are 400/409") {
    expect_error(api.request("GET", "/v1/nothing-here"), 404);
    expect_error(api.request("GET", "/v2/campaigns"), 404);
    expect_error(api.request("GET", "/v1/campaigns/c999999"), 404);
    expect_error(api.request("GET", "/v1/campaigns/c999999/results"), 404);
    expect_error(api.request("GET", "/v1/campaigns/c999999/shards"), 404);
    expect_error(api.request("POST", "/v1/campaigns/c999999/rerun", "{}"), 404);
    expect_error(api.request("POST", "/v1/campaigns/c999999/cancel"), 404);
    // A known path with a method it does not serve is 405, not 404 or any other 4xx.
    expect_error(api.request("DELETE", "/v1/campaigns"), 405);
    expect_error(api.request("PUT", "/v1/workers"), 405);

    const auto id = api.submit(make_spec("finished", kModels, kBenchmarks, noop_runner()));
    api.wait_for_state(id, "succeeded", 20s);
    expect_error(api.request("POST", "/v1/campaigns/" + id + "/rerun", "not json"), 400);
    CHECK_THAT(
        expect_error(api.request("POST", "/v1/campaigns/" + id + "/rerun", R"({"failed": "yes"})"),
                     400),
        Catch::Contains("failed"));
    CHECK_THAT(
        expect_error(api.request("POST", "/v1/campaigns/" + id + "/rerun", R"({"bogus": 1})"), 400),
        Catch::Contains("bogus"));
    expect_error(api.request("GET", "/v1/campaigns/" + id + "/shards?state=bogus"), 400);
    CHECK_THAT(expect_error(api.request("POST", "/v1/campaigns/" + id + "/cancel"), 409),
               Catch::Contains("succeeded"));
    // None of that changed the finished campaign.
    CHECK(api.campaign(id).at("state") == "succeeded");
    CHECK(api.get("/v1/campaigns").at("campaigns").size() == 1);
  }
}

// A DEALER in the test process that speaks garbage to the coordinator's ROUTER.
class RawPeer {
 public:
  explicit RawPeer(const std::string& endpoint)
      : context_(1), socket_(context_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::routing_id, "intruder");
    socket_.connect(endpoint);
  }
  void send(const std::string& frame) { socket_.send(zmq::buffer(frame), zmq::send_flags::none); }
  void send_multipart(const std::string& a, const std::string& b) {
    socket_.send(zmq::buffer(a), zmq::send_flags::sndmore);
    socket_.send(zmq::buffer(b), zmq::send_flags::none);
  }

 private:
  zmq::context_t context_;
  zmq::socket_t socket_;
};

TEST_CASE("bad input: garbage on the worker socket is dropped and counted, serving goes on",
          "[integration]") {
  TestCluster cluster(small_limits());
  const auto api = cluster.api();
  const double malformed_before = api.metric("evald_messages_malformed_total");

  evald::protocol::ShardResult result;
  result.attempt_id = 42;
  result.campaign = 1;
  result.ok = true;
  result.count = 5;
  result.metrics = {{"accuracy", 0.5}};
  const std::string results_frame =
      evald::protocol::encode(evald::protocol::Results{.results = {result}});
  std::string wrong_version = evald::protocol::encode(evald::protocol::Heartbeat{});
  wrong_version[2] = static_cast<char>(evald::protocol::kProtocolVersion + 1);

  {
    RawPeer peer(cluster.coordinator().bind_endpoint());
    peer.send("hello, is this the coordinator?");                  // wrong magic
    peer.send("");                                                 // empty
    peer.send(wrong_version);                                      // a future protocol version
    peer.send(results_frame.substr(0, results_frame.size() - 5));  // truncated RESULTS
    peer.send(std::string("EV\x01\x7f", 4));                       // unknown message type
    peer.send(results_frame + "trailing");                         // trailing bytes
    peer.send_multipart(results_frame, results_frame);             // two frames
    // Over --max-message-bytes: ZeroMQ drops the connection instead of allocating it.
    peer.send(std::string(kMaxMessageBytes * 4, 'z'));
    REQUIRE(wait_until(
        [&] { return api.metric("evald_messages_malformed_total") >= malformed_before + 7; }, 10s));
  }
  CHECK(api.metric("evald_messages_malformed_total") == malformed_before + 7);
  CHECK(api.request("GET", "/healthz").status == 200);
  // The garbage changed nothing a user sees ...
  CHECK(api.get("/v1/campaigns").at("campaigns").empty());
  CHECK(cluster.coordinator().running());

  // ... and the next campaign runs on the real workers to the exact numbers.
  const auto id = api.submit(make_spec("after-garbage", kModels, kBenchmarks));
  api.wait_for_state(id, "succeeded", 30s);
  check_results(api.results(id), kModels, kBenchmarks);
  check_all_shards_succeeded(api, id, total_shards(kModels, kBenchmarks));
}

}  // namespace
