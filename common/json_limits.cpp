// The depth scan is a single pass with two bits of state (inside a string, after a backslash)
// and a counter; it does not validate, so it can run on any bytes. Malformed input that it lets
// through (an unbalanced ']' or an unterminated string) is refused by the parser that runs after
// it; the counter never goes below zero, so a stray closer cannot buy extra depth later.
#include "common/json_limits.hpp"

#include <spdlog/fmt/fmt.h>

#include <string>
#include <utility>
#include <vector>

namespace evald {

std::optional<Error> check_json_depth(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        if (++depth > max_depth) {
          return make_error(fmt::format("nests deeper than {} levels (the limit) at byte offset {}",
                                        max_depth, i));
        }
        break;
      case ']':
      case '}':
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
  return std::nullopt;
}

Result<nlohmann::json> parse_json_bounded(std::string_view text, int max_depth) {
  if (auto error = check_json_depth(text, max_depth)) return *std::move(error);
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() reads "[json.exception.parse_error.101] parse error at line 1, column 5: ...";
    // the bracketed id means nothing to a user, the byte offset helps with one-line documents.
    std::string message = e.what();
    if (const auto pos = message.find("] ");
        !message.empty() && message[0] == '[' && pos != std::string::npos) {
      message.erase(0, pos + 2);
    }
    return make_error(fmt::format("is not valid JSON: {} (byte offset {})", message, e.byte));
  } catch (const nlohmann::json::exception& e) {
    // For example a number too large for a double ("1e400"), reported as out_of_range.
    return make_error(fmt::format("is not valid JSON: {}", e.what()));
  }
}

bool json_deeper_than(const nlohmann::json& value, int max_depth) {
  // (value, its depth): containers count one level for themselves.
  std::vector<std::pair<const nlohmann::json*, int>> stack{{&value, 0}};
  while (!stack.empty()) {
    const auto [node, parent_depth] = stack.back();
    stack.pop_back();
    if (!node->is_structured()) continue;
    const int depth = parent_depth + 1;
    if (depth > max_depth) return true;
    for (const auto& child : *node) stack.emplace_back(&child, depth);
  }
  return false;
}

}  // namespace evald
