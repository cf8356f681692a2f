// Reading fields of JSON that came from outside (campaign specs, API answers evalctl gets, runner
// output): the one set of "field of this type, or nothing" helpers. None of them throws; a field
// that is missing, or of another type, is absent, and the caller decides whether that is an error.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace evald {

// The field `key` of `object`; nullptr when it is missing or `object` is not an object.
const nlohmann::json* find_field(const nlohmann::json& object, std::string_view key);

// A JSON number that is an integer. Integral floats (3.0, 1e15) count, since JSON itself does not
// tell the two apart and generators often write large numbers in exponent form; 3.5, booleans and
// everything else do not. Values beyond int64 are clamped, so range checks still refuse them.
std::optional<int64_t> integer_value(const nlohmann::json& value);

// integer_value of the field `key`.
std::optional<int64_t> integer_field(const nlohmann::json& object, std::string_view key);
// Any JSON number (integer or float), as a double.
std::optional<double> number_field(const nlohmann::json& object, std::string_view key);
std::optional<std::string> string_field(const nlohmann::json& object, std::string_view key);
// The array `key`, or an empty array when it is missing or not an array.
const nlohmann::json& array_field(const nlohmann::json& object, std::string_view key);

}  // namespace evald
