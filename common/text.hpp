// Small string helpers shared by the daemons.
#pragma once

#include <string_view>

namespace evald {

// `text` without leading and trailing characters from `whitespace`.
inline std::string_view trim(std::string_view text, std::string_view whitespace = " \t\r\n\f\v") {
  const auto first = text.find_first_not_of(whitespace);
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(whitespace);
  return text.substr(first, last - first + 1);
}

}  // namespace evald
