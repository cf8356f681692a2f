#include "worker/placeholders.hpp"

#include <algorithm>

namespace evald::worker {

std::string substitute_braced(
    std::string_view text,
    const std::function<std::optional<std::string>(std::string_view)>& value_of) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const auto open = text.find('{', pos);
    if (open == std::string_view::npos) break;
    const auto close = text.find('}', open + 1);
    if (close == std::string_view::npos) break;
    out.append(text.substr(pos, open - pos));
    if (auto value = value_of(text.substr(open + 1, close - open - 1))) {
      out += *value;
      pos = close + 1;
    } else {
      // Not ours (a literal brace in an argument): keep the '{' and look again after it.
      out += '{';
      pos = open + 1;
    }
  }
  out.append(text.substr(std::min(pos, text.size())));
  return out;
}

}  // namespace evald::worker
