// Fuzz target: a campaign spec parser. Specs come from users over the HTTP API (and from files
// given to evalctl). Whatever parses must survive its canonical JSON form:
// parse(to_json(spec)) == spec, as spec.hpp promises. The parser under test is chosen by
// EVALD_FUZZ_SPEC_PARSER (tests/fuzz/CMakeLists.txt), so another spec format is one more line
// there; the canonical form is always JSON.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/spec.hpp"
#include "tests/fuzz/fuzz_support.hpp"

#ifndef EVALD_FUZZ_SPEC_PARSER
#error "EVALD_FUZZ_SPEC_PARSER must name the parser under test"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace evald;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto spec = EVALD_FUZZ_SPEC_PARSER(text);
  if (!spec.ok()) {
    fuzz::check(!spec.error().message.empty(), "spec error without a message");
    return 0;
  }
  fuzz::check(spec->total_shards() > 0, "a valid spec has no shards");
  const std::string canonical = to_json(spec.value()).dump();
  auto again = parse_campaign_spec_text(canonical);
  if (!again.ok()) fuzz::fail("canonical form does not parse: " + again.error().message);
  fuzz::check(again.value() == spec.value(), "parse(to_json(spec)) != spec");
  return 0;
}
