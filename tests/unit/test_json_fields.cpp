// common/json_fields: the one set of "field of this type, or nothing" helpers that the spec
// parser and evalctl share. Missing fields, wrong types and non-objects are absent, never thrown.
#include <catch2/catch.hpp>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/json_fields.hpp"

using evald::array_field;
using evald::find_field;
using evald::integer_field;
using evald::integer_value;
using evald::number_field;
using evald::string_field;
using nlohmann::json;

TEST_CASE("json fields: integers are whole numbers, integral floats included, clamped to int64",
          "[json_fields]") {
  CHECK(integer_value(json(42)) == 42);
  CHECK(integer_value(json(-7)) == -7);
  CHECK(integer_value(json(3.0)) == 3);
  CHECK(integer_value(json(1e15)) == 1'000'000'000'000'000);
  CHECK_FALSE(integer_value(json(3.5)).has_value());
  CHECK_FALSE(integer_value(json(true)).has_value());
  CHECK_FALSE(integer_value(json("3")).has_value());
  CHECK_FALSE(integer_value(json(nullptr)).has_value());
  CHECK(integer_value(json(std::numeric_limits<uint64_t>::max())) ==
        std::numeric_limits<int64_t>::max());
  CHECK(integer_value(json(1e300)) == std::numeric_limits<int64_t>::max());
  CHECK(integer_value(json(-1e300)) == std::numeric_limits<int64_t>::min());
}

TEST_CASE("json fields: a missing field, a wrong type or a non-object is absent", "[json_fields]") {
  const json object = {{"n", 5},   {"x", 2.5},        {"s", "text"},
                       {"a", {1}}, {"o", {{"k", 1}}}, {"null", nullptr}};
  CHECK(find_field(object, "n") == &object.at("n"));
  CHECK(find_field(object, "missing") == nullptr);
  CHECK(find_field(json::array({1, 2}), "n") == nullptr);
  CHECK(find_field(json(3), "n") == nullptr);

  CHECK(integer_field(object, "n") == 5);
  CHECK_FALSE(integer_field(object, "x").has_value());
  CHECK_FALSE(integer_field(object, "s").has_value());
  CHECK_FALSE(integer_field(object, "missing").has_value());

  CHECK(number_field(object, "x") == 2.5);
  CHECK(number_field(object, "n") == 5.0);
  CHECK_FALSE(number_field(object, "s").has_value());

  CHECK(string_field(object, "s") == "text");
  CHECK_FALSE(string_field(object, "n").has_value());
  CHECK_FALSE(string_field(object, "null").has_value());

  CHECK(array_field(object, "a") == json::array({1}));
  CHECK(array_field(object, "o").empty());
  CHECK(array_field(object, "missing").is_array());
  CHECK(array_field(json("not an object"), "a").empty());
}
