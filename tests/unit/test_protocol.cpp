// Wire codec: every message round-trips, and broken frames become errors, never crashes.
#include <catch2/catch.hpp>

#include "common/protocol.hpp"

using namespace evald::protocol;

TEST_CASE("results round-trip through the codec", "[unit][protocol]") {
  ShardResult r;
  r.attempt_id = 0x0102030405060708ULL;
  r.campaign = 7;
  r.model = 2;
  r.benchmark = 3;
  r.shard = 41;
  r.ok = true;
  r.count = 500;
  r.metrics = {{"accuracy", 0.61}, {"f1", 0.5}};
  r.duration_ms = 1234;
  r.samples_json = R"([{"i":1}])";
  const auto frame = encode(Message{Results{{r, r}}});
  auto decoded = decode(frame);
  REQUIRE(decoded.ok());
  const auto& results = std::get<Results>(decoded.value()).results;
  REQUIRE(results.size() == 2);
  CHECK(results[1].attempt_id == r.attempt_id);
  CHECK(results[1].shard == 41);
  CHECK(results[1].count == 500);
  CHECK(results[1].metrics == r.metrics);
  CHECK(results[1].samples_json == r.samples_json);
  CHECK(results[1].ok);
}

TEST_CASE("hello and assign round-trip", "[unit][protocol]") {
  Hello h;
  h.name = "gpu-node-1";
  h.instance = "abc";
  h.slots = 8;
  h.gpus = nlohmann::json::array({{{"index", 0}, {"name", "H100"}, {"memory_mib", 81559}}});
  h.labels = {{"gpu", "h100"}};
  h.running = {5, 6};
  auto hello = decode(encode(Message{h}));
  REQUIRE(hello.ok());
  CHECK(std::get<Hello>(hello.value()).name == "gpu-node-1");
  CHECK(std::get<Hello>(hello.value()).running == std::vector<uint64_t>{5, 6});
  CHECK(std::get<Hello>(hello.value()).labels["gpu"] == "h100");

  Assignment a{.attempt_id = 9,
               .campaign = 1,
               .model = 0,
               .benchmark = 1,
               .shard = 3,
               .start = 1500,
               .end = 1700,
               .attempt = 2,
               .gpus = {0, 1}};
  auto assign = decode(encode(Message{Assign{{a}}}));
  REQUIRE(assign.ok());
  const auto& got = std::get<Assign>(assign.value()).assignments.at(0);
  CHECK(got.end == 1700);
  CHECK(got.attempt == 2);
  CHECK(got.gpus == std::vector<uint32_t>{0, 1});

  auto hand_back = decode(encode(Message{HandBack{{7, 8}}}));
  REQUIRE(hand_back.ok());
  CHECK(std::get<HandBack>(hand_back.value()).attempt_ids == std::vector<uint64_t>{7, 8});
  CHECK(std::string(to_string(type_of(hand_back.value()))) == "hand_back");
  const auto frame = encode(Message{HandBack{{7}}});
  for (size_t n = 0; n < frame.size(); ++n) CHECK_FALSE(decode(frame.substr(0, n)).ok());
}

TEST_CASE("goodbye round-trips, and only in a frame of version 4 or later", "[unit][protocol]") {
  const auto frame = encode(Message{Goodbye{}});
  CHECK(frame == std::string("EV\x04\x06", 4));
  auto goodbye = decode(frame);
  REQUIRE(goodbye.ok());
  CHECK(std::holds_alternative<Goodbye>(goodbye.value()));
  CHECK(std::string(to_string(type_of(goodbye.value()))) == "goodbye");
  // Version 3 had no GOODBYE: such a frame was never written by any evald.
  auto old = decode(std::string("EV\x03\x06", 4));
  REQUIRE_FALSE(old.ok());
  CHECK_THAT(old.error().message, Catch::Contains("GOODBYE in a version 3 frame"));
  CHECK_FALSE(decode(frame + "x").ok());  // it has no body
}

TEST_CASE("malformed frames are refused with a reason", "[unit][protocol]") {
  CHECK_FALSE(decode("").ok());
  CHECK_FALSE(decode("XY\x01\x02").ok());
  auto wrong_version = decode(std::string("EV\x09\x02", 4));
  REQUIRE_FALSE(wrong_version.ok());
  CHECK_THAT(wrong_version.error().message, Catch::Contains("version 9"));
  auto unknown = decode(std::string("EV\x01\x63", 4));
  REQUIRE_FALSE(unknown.ok());
  CHECK_THAT(unknown.error().message, Catch::Contains("unknown message type"));

  // A results frame claiming four billion results in a few bytes must not allocate for them.
  std::string huge = std::string("EV\x01\x03", 4) + std::string("\xff\xff\xff\xff", 4);
  CHECK_FALSE(decode(huge).ok());

  // Every truncation of a valid frame is an error, never a crash.
  ShardResult r;
  r.metrics = {{"accuracy", 1.0}};
  const auto frame = encode(Message{Results{{r}}});
  for (size_t n = 0; n < frame.size(); ++n) CHECK_FALSE(decode(frame.substr(0, n)).ok());
  CHECK_FALSE(decode(frame + "x").ok());
}

#include "common/cli_options.hpp"

TEST_CASE("positional arguments parse next to flags", "[unit][cli]") {
  evald::po::options_description options("test");
  options.add_options()("name", evald::po::value<std::string>()->default_value("x"), "a name");
  const char* argv[] = {"prog", "first", "--name", "y", "second"};
  auto parsed = evald::parse_args(5, argv, options, /*allow_positional=*/true);
  CHECK(parsed.positional == std::vector<std::string>{"first", "second"});
  CHECK(parsed.values["name"].as<std::string>() == "y");
  const char* bad[] = {"prog", "--nope"};
  CHECK_THROWS_AS(evald::parse_args(2, bad, options, true), evald::UsageError);
}
