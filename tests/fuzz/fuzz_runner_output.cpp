// Fuzz target: the parser of an exec runner's stdout (worker/exec_runner.hpp), and the UTF-8
// cleaner its stderr tail goes through (common/utf8.hpp). Both read whatever a user's program
// prints. Checks: the documented limits hold for anything accepted, and the cleaned text is valid
// UTF-8 (it travels on as JSON, which must be).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/utf8.hpp"
#include "tests/fuzz/fuzz_support.hpp"
#include "worker/exec_runner.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace evald;
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  auto parsed = worker::parse_runner_output(text);
  if (parsed.ok()) {
    const auto& out = parsed.value();
    fuzz::check(!out.metrics.empty(), "accepted output without metrics");
    fuzz::check(out.metrics.size() <= worker::kMaxMetrics, "more metrics than kMaxMetrics");
    fuzz::check(out.count >= 0, "negative count accepted");
    for (size_t i = 0; i < out.metrics.size(); ++i) {
      const auto& [name, value] = out.metrics[i];
      fuzz::check(!name.empty() && name.size() <= worker::kMaxMetricNameBytes,
                  "metric name length out of bounds");
      fuzz::check(std::isfinite(value), "non-finite metric accepted");
      fuzz::check(i == 0 || out.metrics[i - 1].first < name, "metrics not sorted and unique");
    }
    if (!out.samples_json.empty()) {
      fuzz::check(nlohmann::json::accept(out.samples_json), "samples_json is not JSON");
    }
  } else {
    fuzz::check(!parsed.error().message.empty(), "runner output error without a message");
  }

  // nlohmann's dump() throws on invalid UTF-8; the cleaned text must never make it throw.
  const std::string clean = utf8::sanitize_tail(text);
  try {
    (void)nlohmann::json(clean).dump();
  } catch (const nlohmann::json::exception&) {
    fuzz::fail("utf8::sanitize_tail output is not valid UTF-8");
  }
  fuzz::check(utf8::sanitize_tail(clean) == clean, "utf8::sanitize_tail is not idempotent");
  return 0;
}
