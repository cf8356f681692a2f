// Small helpers the benchmark programs share.
#pragma once

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace evald::bench {

// "1,2,4" -> {1, 2, 4}; throws std::invalid_argument on an empty list, a non-number or a count
// that is not positive.
inline std::vector<size_t> parse_counts(const std::string& text) {
  std::vector<size_t> counts;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    const long value = std::stol(item, &used);
    if (used != item.size() || value <= 0) throw std::invalid_argument(item);
    counts.push_back(static_cast<size_t>(value));
  }
  if (counts.empty()) throw std::invalid_argument(text);
  return counts;
}

}  // namespace evald::bench
