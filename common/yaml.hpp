// YAML documents as JSON values: campaign specs may be written in YAML and are validated as the
// JSON value they denote, so both spellings get the same rules and the same messages.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "common/result.hpp"

namespace evald {

// Converts one YAML document (YAML 1.2 core schema for plain scalars: null/~, true/false,
// integers, floats; quoted scalars are always strings) into JSON. Mapping keys become strings.
// Bounded like parse_json_bounded: nesting deeper than kMaxJsonDepth and documents that expand
// (through aliases) to more than kMaxYamlNodes values are refused. The error is a predicate, e.g.
// "is not valid YAML: line 3, column 5: ...". Never throws.
Result<nlohmann::json> yaml_to_json(std::string_view text);

// A 1 MiB spec written out plainly has far fewer values than this.
inline constexpr size_t kMaxYamlNodes = 200'000;

}  // namespace evald
