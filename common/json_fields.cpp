#include "common/json_fields.hpp"

#include <cmath>
#include <limits>

namespace evald {

const nlohmann::json* find_field(const nlohmann::json& object, std::string_view key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

std::optional<int64_t> integer_value(const nlohmann::json& value) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  if (value.is_number_unsigned()) {
    const auto u = value.get<uint64_t>();
    return u > static_cast<uint64_t>(kMax) ? kMax : static_cast<int64_t>(u);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    const double d = value.get<double>();
    if (!std::isfinite(d) || std::trunc(d) != d) return std::nullopt;
    constexpr double kTwoTo63 = 9223372036854775808.0;
    if (d >= kTwoTo63) return kMax;
    if (d < -kTwoTo63) return kMin;
    return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

std::optional<int64_t> integer_field(const nlohmann::json& object, std::string_view key) {
  const nlohmann::json* value = find_field(object, key);
  return value == nullptr ? std::nullopt : integer_value(*value);
}

std::optional<double> number_field(const nlohmann::json& object, std::string_view key) {
  const nlohmann::json* value = find_field(object, key);
  if (value == nullptr || !value->is_number()) return std::nullopt;
  return value->get<double>();
}

std::optional<std::string> string_field(const nlohmann::json& object, std::string_view key) {
  const nlohmann::json* value = find_field(object, key);
  if (value == nullptr || !value->is_string()) return std::nullopt;
  return value->get<std::string>();
}

const nlohmann::json& array_field(const nlohmann::json& object, std::string_view key) {
  static const nlohmann::json kEmpty = nlohmann::json::array();  // immutable stand-in
  const nlohmann::json* value = find_field(object, key);
  return value != nullptr && value->is_array() ? *value : kEmpty;
}

}  // namespace evald
