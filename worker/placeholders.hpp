// `{name}` placeholders in runner and model-server commands: one scanner, so both follow the same
// rule (an unknown `{word}` or a lone brace stays as written, since arguments may hold literal
// braces).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace evald::worker {

// Replaces each `{name}` for which `value_of(name)` has a value; leaves everything else as is.
std::string substitute_braced(
    std::string_view text,
    const std::function<std::optional<std::string>(std::string_view)>& value_of);

}  // namespace evald::worker
