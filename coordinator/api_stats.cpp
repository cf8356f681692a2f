// The API's per-example routes (docs/api.md): GET /v1/campaigns/{id}/samples and
// GET /v1/campaigns/{id}/compare. Both read counted results only, through SampleStats.
#include <charconv>
#include <variant>

#include "coordinator/api.hpp"

namespace evald::coordinator {
namespace {

HttpResponse json_reply(int status, const nlohmann::json& body) {
  // Samples are whatever a runner printed (valid UTF-8, checked when the result came in); the
  // replace handler only guards against a damaged store.
  return HttpResponse{status, "application/json",
                      body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

HttpResponse error_reply(int status, const std::string& message) {
  return json_reply(status, {{"error", message}});
}

std::optional<uint32_t> model_index(const Campaign& c, const std::string& name) {
  for (uint32_t m = 0; m < c.spec.models.size(); ++m) {
    if (c.spec.models[m].name == name) return m;
  }
  return std::nullopt;
}

std::optional<uint32_t> benchmark_index(const Campaign& c, const std::string& name) {
  for (uint32_t b = 0; b < c.spec.benchmarks.size(); ++b) {
    if (c.spec.benchmarks[b].name == name) return b;
  }
  return std::nullopt;
}

// The value of a required, non-empty query parameter, or the 400 that names it.
std::variant<std::string, HttpResponse> required(const std::map<std::string, std::string>& params,
                                                 const char* key, const char* what) {
  const auto it = params.find(key);
  if (it == params.end() || it->second.empty()) {
    return error_reply(400, std::string("missing query parameter '") + key + "' (" + what + ")");
  }
  return it->second;
}

std::optional<uint64_t> unsigned_param(const std::map<std::string, std::string>& params,
                                       const char* key, uint64_t fallback, bool& bad) {
  auto value = unsigned_query_param(params, key, fallback);
  bad = bad || !value;
  return value;
}

}  // namespace

HttpResponse Api::get_samples(const Campaign& c, const QueryParams& params) {
  auto model = required(params, "model", "the model whose samples to return");
  if (auto* e = std::get_if<HttpResponse>(&model)) return *e;
  auto benchmark = required(params, "benchmark", "the benchmark whose samples to return");
  if (auto* e = std::get_if<HttpResponse>(&benchmark)) return *e;
  const auto& model_name = std::get<std::string>(model);
  const auto& benchmark_name = std::get<std::string>(benchmark);
  const auto m = model_index(c, model_name);
  if (!m) return error_reply(404, "campaign " + c.id + " has no model '" + model_name + "'");
  const auto b = benchmark_index(c, benchmark_name);
  if (!b) {
    return error_reply(404, "campaign " + c.id + " has no benchmark '" + benchmark_name + "'");
  }
  bool bad = false;
  const auto cursor = unsigned_param(params, "cursor", 0, bad);
  if (bad || *cursor > UINT32_MAX) {
    return error_reply(400, "cursor: must be a shard index as returned in next_cursor");
  }
  const auto limit = unsigned_param(params, "limit", kSamplesPageDefault, bad);
  if (bad || *limit == 0) {
    return error_reply(
        400, "limit: must be a positive integer (at most " + std::to_string(kSamplesPageMax) + ")");
  }
  const uint32_t group = *m * static_cast<uint32_t>(c.spec.benchmarks.size()) + *b;
  auto page = sample_stats_.page(c, group, static_cast<uint32_t>(*cursor),
                                 std::min<uint64_t>(*limit, kSamplesPageMax));
  return json_reply(200, {{"campaign", c.id},
                          {"model", model_name},
                          {"benchmark", benchmark_name},
                          {"samples", std::move(page.samples)},
                          {"next_cursor", page.next_cursor ? nlohmann::json(*page.next_cursor)
                                                           : nlohmann::json(nullptr)}});
}

HttpResponse Api::get_compare(const Campaign& c, const QueryParams& params) {
  auto a = required(params, "a", "the first model");
  if (auto* e = std::get_if<HttpResponse>(&a)) return *e;
  auto b = required(params, "b", "the second model");
  if (auto* e = std::get_if<HttpResponse>(&b)) return *e;
  const auto& a_name = std::get<std::string>(a);
  const auto& b_name = std::get<std::string>(b);
  const auto ma = model_index(c, a_name);
  if (!ma) return error_reply(404, "campaign " + c.id + " has no model '" + a_name + "'");
  const auto mb = model_index(c, b_name);
  if (!mb) return error_reply(404, "campaign " + c.id + " has no model '" + b_name + "'");
  return json_reply(200, sample_stats_.compare(c, *ma, *mb));
}

}  // namespace evald::coordinator
