// Bounded JSON parsing (common/json_limits.hpp): the depth limit holds exactly at 64, brackets in
// strings and escapes do not count, a 200,000-level document is refused at once without building
// anything, and nothing throws.
#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "common/json_limits.hpp"
#include "worker/exec_runner.hpp"

using evald::check_json_depth;
using evald::json_deeper_than;
using evald::kMaxJsonDepth;
using evald::parse_json_bounded;
using nlohmann::json;

namespace {

std::string nested_arrays(size_t depth, std::string_view inner = "") {
  return std::string(depth, '[') + std::string(inner) + std::string(depth, ']');
}

// {"a":{"a":...{"a":1}...}} with `depth` objects.
std::string nested_objects(size_t depth) {
  std::string text;
  for (size_t i = 0; i < depth; ++i) text += R"({"a":)";
  text += "1";
  text += std::string(depth, '}');
  return text;
}

}  // namespace

TEST_CASE("json limits: 64 levels parse, 65 are refused naming the limit", "[unit]") {
  REQUIRE(kMaxJsonDepth == 64);
  auto ok = parse_json_bounded(nested_arrays(64, "1"));
  REQUIRE(ok.ok());
  CHECK_FALSE(json_deeper_than(*ok, 64));
  CHECK(json_deeper_than(*ok, 63));

  auto deep = parse_json_bounded(nested_arrays(65, "1"));
  REQUIRE_FALSE(deep.ok());
  CHECK(deep.error().message == "nests deeper than 64 levels (the limit) at byte offset 64");

  CHECK(parse_json_bounded(nested_objects(64)).ok());
  auto deep_objects = parse_json_bounded(nested_objects(65));
  REQUIRE_FALSE(deep_objects.ok());
  CHECK_THAT(deep_objects.error().message, Catch::StartsWith("nests deeper than 64 levels"));

  // Mixed, and siblings do not add up: [[...64...], [...64...]] is 65 deep, not 129.
  CHECK(parse_json_bounded("[" + nested_arrays(63) + "," + nested_arrays(63) + "]").ok());
  CHECK_FALSE(parse_json_bounded("[" + nested_arrays(64) + "]").ok());

  // Scalars are depth 0; a custom limit is honoured.
  CHECK(parse_json_bounded("42").ok());
  CHECK(parse_json_bounded("[[1]]", 2).ok());
  CHECK_FALSE(parse_json_bounded("[[[1]]]", 2).ok());
}

TEST_CASE("json limits: 200,000 levels are refused fast, before any value is built", "[unit]") {
  const std::string attack = nested_arrays(200'000);  // 400 KB
  const auto started = std::chrono::steady_clock::now();
  auto refused = parse_json_bounded(attack);
  const auto elapsed = std::chrono::steady_clock::now() - started;
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message == "nests deeper than 64 levels (the limit) at byte offset 64");
  // It stops at byte 65; even a slow machine under load does that in well under 50 ms.
  CHECK(elapsed < std::chrono::milliseconds(50));

  // Unbalanced (only openers) and as object keys: the same.
  CHECK_FALSE(parse_json_bounded(std::string(200'000, '[')).ok());
  CHECK_FALSE(parse_json_bounded(nested_objects(200'000)).ok());
  CHECK(check_json_depth(std::string(200'000, '{')).has_value());
}

TEST_CASE("json limits: brackets inside strings and escapes do not count", "[unit]") {
  // 1,000 brackets, all inside one string.
  const std::string brackets = std::string(500, '[') + std::string(500, '{');
  auto in_string = parse_json_bounded(R"({"text": ")" + brackets + R"("})");
  REQUIRE(in_string.ok());
  CHECK(in_string->at("text") == brackets);

  // An escaped quote does not end the string, so the brackets after it are still inside it.
  const std::string escaped_quote = R"(["a\")" + std::string(100, '[') + R"("])";
  auto escaped = parse_json_bounded(escaped_quote);
  REQUIRE(escaped.ok());
  CHECK(escaped->at(0).get<std::string>() == "a\"" + std::string(100, '['));

  // An escaped backslash before the closing quote does end it: the brackets after it count.
  const std::string after_backslash = R"(["a\\", )" + nested_arrays(64) + "]";
  CHECK_FALSE(parse_json_bounded(after_backslash).ok());
  CHECK(parse_json_bounded(R"(["a\\", )" + nested_arrays(63) + "]").ok());

  // \u escapes and keys with brackets.
  auto keys = parse_json_bounded(R"({"[[[[": "\u005b\u005b", "}}": ["]]]]"]})");
  REQUIRE(keys.ok());
  CHECK(keys->at("[[[[") == "[[");

  // Stray closers cannot buy depth for later openers.
  CHECK_FALSE(check_json_depth(std::string(100, ']') + nested_arrays(65)) == std::nullopt);
}

TEST_CASE("json limits: invalid JSON is an error value with the byte offset", "[unit]") {
  const std::vector<std::string> invalid = {
      "",      "{",   "{\"a\": }",           "[1, 2",   "\"unterminated",
      "1e400", "nul", "{\"a\": 1} trailing", "\"\xff\""};
  for (const auto& text : invalid) {
    INFO(text);
    auto result = parse_json_bounded(text);
    REQUIRE_FALSE(result.ok());
    CHECK_THAT(result.error().message, Catch::StartsWith("is not valid JSON: "));
  }
  auto syntax = parse_json_bounded(R"({"a": 1,, "b": 2})");
  REQUIRE_FALSE(syntax.ok());
  CHECK_THAT(syntax.error().message, Catch::Contains("byte offset 9"));
}

TEST_CASE("json limits: json_deeper_than walks built values without recursion", "[unit]") {
  json deep = json::array();
  // Built by hand, the way a value can arrive without text: 100,000 levels.
  json* cursor = &deep;
  for (int i = 0; i < 100'000; ++i) {
    cursor->push_back(json::array());
    cursor = &cursor->back();
  }
  CHECK(json_deeper_than(deep, 64));
  CHECK(json_deeper_than(deep, 99'999));
  CHECK_FALSE(json_deeper_than(deep, 100'001));
  CHECK_FALSE(json_deeper_than(json(3), 0));
  CHECK(json_deeper_than(json::object(), 0));
  CHECK_FALSE(json_deeper_than(json{{"a", {1, 2, {{"b", 3}}}}}, 3));
  CHECK(json_deeper_than(json{{"a", {1, 2, {{"b", {4}}}}}}, 3));
}

TEST_CASE("json limits: a runner's deep result fails the attempt, log lines do not", "[unit]") {
  // The samples are where a runner's output may nest; 200,000 levels of them are refused.
  const std::string deep =
      R"({"metrics": {"accuracy": 1}, "count": 1, "samples": )" + nested_arrays(200'000) + "}";
  auto refused = evald::worker::parse_runner_output(deep);
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.error().message,
             Catch::StartsWith("the result nests deeper than 64 levels (the limit)"));

  // A log line full of brackets before the result does not spoil the result line.
  auto fine = evald::worker::parse_runner_output(std::string(100, '[') +
                                                 "\n{\"metrics\": {\"accuracy\": 0.5}, "
                                                 "\"count\": 2, \"samples\": [[1], [2]]}\n");
  REQUIRE(fine.ok());
  CHECK(fine->count == 2);
  CHECK(fine->samples_json == "[[1],[2]]");
}
