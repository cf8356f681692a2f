// Bounded JSON parsing: every JSON document evald reads from outside (HTTP bodies, HELLO and
// CAMPAIGN messages, campaign specs, runner output, files evalctl reads, answers it gets) goes
// through parse_json_bounded, which refuses a document nested deeper than a limit before a
// single value is built. Deep nesting is the cheap attack: 400 KB of '[' is 200,000 levels, and
// every recursive walk over such a value (copy, dump, comparison) overflows the stack.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "common/result.hpp"

namespace evald {

// 64 levels hold every document evald itself writes with room to spare (a spec's params are
// 3 levels down) and keep a recursive walk far from the stack's end.
inline constexpr int kMaxJsonDepth = 64;

// The nesting depth of `text` ([] and {} count one level each; scalars none), scanning the bytes
// once without recursion. Brackets inside strings, escaped quotes included, do not count. Stops
// at the first byte that goes deeper than `max_depth` and returns an error that names the limit
// and the byte offset. Says nothing about whether the text is otherwise valid JSON.
std::optional<Error> check_json_depth(std::string_view text, int max_depth = kMaxJsonDepth);

// check_json_depth, then nlohmann's parser. The error is a predicate the caller puts its subject
// in front of, e.g. "spec " + message: "is not valid JSON: syntax error ... (byte offset 12)"
// or "nests deeper than 64 levels (the limit) at byte offset 65". Never throws.
Result<nlohmann::json> parse_json_bounded(std::string_view text, int max_depth = kMaxJsonDepth);

// Whether an already-built value nests deeper than `max_depth` (same counting as above), walked
// with an explicit stack. For values that did not come from parse_json_bounded.
bool json_deeper_than(const nlohmann::json& value, int max_depth);

}  // namespace evald
