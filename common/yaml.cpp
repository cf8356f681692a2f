// YAML -> JSON with yaml-cpp. Plain scalars are typed by the YAML 1.2 core schema, so `8` is a
// number and `"8"` a string, as a JSON reader would expect. Aliases are expanded (an alias is the
// same value again), which is why the walk counts every value it produces: a "billion laughs"
// document of nested aliases is a few hundred bytes of YAML and would be gigabytes of JSON.
#include "common/yaml.hpp"

#include <spdlog/fmt/fmt.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <optional>
#include <regex>
#include <string>

#include "common/json_limits.hpp"
#include "common/utf8.hpp"

namespace evald {
namespace {

using nlohmann::json;

struct Walk {
  size_t nodes = 0;
  std::optional<std::string> error;
};

const std::regex& integer_pattern() {
  static const std::regex pattern("[-+]?[0-9]+");
  return pattern;
}
const std::regex& hex_pattern() {
  static const std::regex pattern("0x[0-9a-fA-F]+");
  return pattern;
}
const std::regex& float_pattern() {
  static const std::regex pattern(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  return pattern;
}

// The core schema's resolution of a plain scalar.
json plain_scalar(const std::string& text) {
  if (text.empty() || text == "~" || text == "null" || text == "Null" || text == "NULL") {
    return nullptr;
  }
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  // Only text that starts like a number can be one; most scalars are words.
  const char first = text.front();
  const bool numeric_start =
      (first >= '0' && first <= '9') || first == '-' || first == '+' || first == '.';
  if (!numeric_start) return text;
  if (std::regex_match(text, integer_pattern())) {
    try {
      if (text.front() == '-') return std::stoll(text);
      return std::stoull(text.front() == '+' ? text.substr(1) : text);
    } catch (const std::out_of_range&) {
      return std::stod(text);  // a JSON reader would read it as a float too
    }
  }
  if (std::regex_match(text, hex_pattern())) {
    try {
      return std::stoull(text.substr(2), nullptr, 16);
    } catch (const std::out_of_range&) {
      return text;
    }
  }
  if (std::regex_match(text, float_pattern())) return std::stod(text);
  // Everything else, .inf and .nan included (JSON has neither), stays text, so validation
  // reports a type error where a number was due.
  return text;
}

// yaml-cpp turns the escapes "\N" and "\_" into the single bytes 0x85 and 0xA0 (Latin-1, not
// UTF-8), so a document that is valid UTF-8 can still produce a string that is not, and every
// later dump() of the spec would throw on it. Such a string is refused where it is written.
bool valid_text(const YAML::Node& node, const std::string& text, Walk& walk) {
  if (utf8::is_valid(text)) return true;
  const auto mark = node.Mark();
  walk.error = fmt::format(
      "has a string that is not valid UTF-8 at line {}, column {} (the escapes \\N and \\_ "
      "make one; write the character itself, or \\u0085 / \\u00a0)",
      mark.line + 1, mark.column + 1);
  return false;
}

json convert(const YAML::Node& node, int depth, Walk& walk) {
  if (walk.error) return nullptr;
  if (++walk.nodes > kMaxYamlNodes) {
    walk.error = fmt::format("expands to more than {} values (aliases included)", kMaxYamlNodes);
    return nullptr;
  }
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      return nullptr;
    case YAML::NodeType::Scalar:
      if (!valid_text(node, node.Scalar(), walk)) return nullptr;
      // "!" is yaml-cpp's tag for quoted (non-plain) scalars; "!!str" asks for a string too.
      if (node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str") return node.Scalar();
      return plain_scalar(node.Scalar());
    case YAML::NodeType::Sequence: {
      if (depth >= kMaxJsonDepth) {
        walk.error = fmt::format("nests deeper than {} levels (the limit)", kMaxJsonDepth);
        return nullptr;
      }
      json out = json::array();
      for (const auto& item : node) out.push_back(convert(item, depth + 1, walk));
      return out;
    }
    case YAML::NodeType::Map: {
      if (depth >= kMaxJsonDepth) {
        walk.error = fmt::format("nests deeper than {} levels (the limit)", kMaxJsonDepth);
        return nullptr;
      }
      json out = json::object();
      for (const auto& item : node) {
        if (!item.first.IsScalar()) {
          walk.error = "has a mapping key that is not a scalar (JSON keys are strings)";
          return nullptr;
        }
        const std::string key = item.first.Scalar();
        if (!valid_text(item.first, key, walk)) return nullptr;
        if (out.contains(key)) {
          walk.error = fmt::format("has the key '{}' twice in one mapping", key);
          return nullptr;
        }
        out[key] = convert(item.second, depth + 1, walk);
      }
      return out;
    }
  }
  return nullptr;
}

}  // namespace

Result<nlohmann::json> yaml_to_json(std::string_view text) {
  YAML::Node root;
  try {
    // yaml-cpp's parser recurses per nesting level; the flow-style depth check below keeps a
    // hostile document from exhausting the stack before the walk's own limit applies.
    if (auto deep = check_json_depth(text, kMaxJsonDepth * 2)) {
      return make_error("is not valid YAML: " + deep->message);
    }
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return make_error(fmt::format("is not valid YAML: line {}, column {}: {}", e.mark.line + 1,
                                  e.mark.column + 1, e.msg));
  } catch (const std::exception& e) {
    return make_error(std::string("is not valid YAML: ") + e.what());
  }
  Walk walk;
  json out;
  try {
    out = convert(root, 0, walk);
  } catch (const std::exception& e) {
    return make_error(std::string("is not valid YAML: ") + e.what());
  }
  if (walk.error) return make_error(*walk.error);
  return out;
}

}  // namespace evald
