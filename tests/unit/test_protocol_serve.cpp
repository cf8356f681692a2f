// The served-model parts of the wire protocol: HELLO's warm servers and the heartbeat's optional
// ServeStatus round-trip, an empty heartbeat stays empty (4 bytes), and bad bodies are refused.
#include <catch2/catch.hpp>
#include <string>

#include "common/protocol.hpp"

using namespace evald::protocol;

TEST_CASE("protocol: HELLO carries warm servers, a heartbeat may carry a serve status") {
  Hello hello;
  hello.name = "w1";
  hello.slots = 4;
  hello.warm = {WarmModel{"m-a", {0, 1}}, WarmModel{"m-b", {}}};
  auto decoded = decode(encode(hello));
  REQUIRE(decoded.ok());
  CHECK(std::get<Hello>(decoded.value()).warm == hello.warm);

  CHECK(encode(Heartbeat{}).size() == 4);  // header only, as before
  auto empty = decode(encode(Heartbeat{}));
  REQUIRE(empty.ok());
  CHECK_FALSE(std::get<Heartbeat>(empty.value()).status.has_value());

  const ServeStatus status{{WarmModel{"m-a", {2}}}, {42, 43}};
  auto with_status = decode(encode(Heartbeat{status}));
  REQUIRE(with_status.ok());
  REQUIRE(std::get<Heartbeat>(with_status.value()).status.has_value());
  CHECK(*std::get<Heartbeat>(with_status.value()).status == status);
}

TEST_CASE("protocol: a heartbeat body that is not a serve status is refused") {
  std::string frame = encode(Heartbeat{});
  const std::string body = R"({"warm": 7})";
  const auto size = static_cast<uint32_t>(body.size());
  for (int i = 0; i < 4; ++i) frame.push_back(static_cast<char>((size >> (8 * i)) & 0xff));
  frame += body;
  auto decoded = decode(frame);
  REQUIRE_FALSE(decoded.ok());
  CHECK(decoded.error().message.rfind("HEARTBEAT: bad field: ", 0) == 0);
  CHECK_FALSE(decode(encode(Heartbeat{}) + "xy").ok());  // truncated
}
