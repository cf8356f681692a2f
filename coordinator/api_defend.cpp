// The API's "results you can defend" routes (docs/api.md): the campaign's spec and its hash,
// provenance records, imported composite scores and the composite ranking of the results.
// Core thread, like the rest of Api.
#include <spdlog/spdlog.h>

#include "common/json_limits.hpp"
#include "common/sha256.hpp"
#include "coordinator/api.hpp"

namespace evald::coordinator {
namespace {

HttpResponse json_answer(int status, const nlohmann::json& body) {
  return HttpResponse{status, "application/json",
                      body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

HttpResponse error_answer(int status, const std::string& message) {
  return json_answer(status, {{"error", message}});
}

}  // namespace

void Api::add_spec(const Campaign& c, nlohmann::json& out) const {
  // spec_json is the canonical text the workers got and that provenance hashes, so an exported
  // spec.json (its compact dump) hashes to spec_sha256.
  out["spec"] = nlohmann::json::parse(c.spec_json);
  out["spec_sha256"] = sha256_hex(c.spec_json);
}

HttpResponse Api::get_provenance(const Campaign& c) {
  nlohmann::json records = nlohmann::json::array();
  size_t unreadable = 0;
  auto status = scheduler_.store().scan_provenance(
      c.key, [&](const ShardKey& /*key*/, std::string_view text) {
        auto record = parse_json_bounded(text);
        if (record.ok() && record->is_object()) {
          records.push_back(std::move(record).value());
        } else {
          ++unreadable;
        }
      });
  if (!status.ok()) return error_answer(500, status.error().message);
  if (unreadable > 0) {
    spdlog::error("provenance_unreadable campaign={} records={}", c.id, unreadable);
  }
  return json_answer(200, {{"campaign", c.id}, {"records", std::move(records)}});
}

HttpResponse Api::post_scores(const Campaign& c, const HttpRequest& request) {
  auto body = parse_json_bounded(request.body);
  if (!body.ok()) return error_answer(400, "request body " + body.error().message);
  if (!body->is_object()) return error_answer(400, "request body must be a JSON object");
  const auto component = body->find("component");
  if (component == body->end() || !component->is_string()) {
    return error_answer(400, "component: must be a string (e.g. \"experts\")");
  }
  const auto scores_field = body->find("scores");
  if (scores_field == body->end()) return error_answer(400, "scores: is required");
  const std::string name = component->get<std::string>();
  auto scores = validate_imported_scores(c.spec, name, *scores_field);
  if (!scores.ok()) return error_answer(400, scores.error().message);

  // An import adds to (and replaces per model) what earlier imports of the component said, so a
  // late review can be sent on its own.
  auto& stored = imported_scores_[c.key][name];
  for (const auto& [model, score] : scores.value()) stored[model] = score;
  scheduler_.batch().put_scores(c.key, name, nlohmann::json{{"scores", stored}}.dump());
  const auto principal = principal_of(request);
  audit_.record(scheduler_.batch(), scheduler_.clock().wall_ms(),
                AuditEntry{principal ? std::optional(principal->name) : std::nullopt,
                           request.peer_address, "scores", c.id,
                           "component=" + name + " models=" + std::to_string(scores->size())});
  metrics_.scores_imported.Increment(static_cast<double>(scores->size()));
  spdlog::info("scores_imported campaign={} component={} models={} principal={}", c.id, name,
               scores->size(), principal ? principal->name : "-");
  return json_answer(
      200,
      {{"campaign", c.id}, {"component", name}, {"imported", scores->size()}, {"scores", stored}});
}

nlohmann::json Api::with_composite(const Campaign& c, nlohmann::json models) const {
  if (!c.spec.scoring) return models;
  static const ImportedScores kNone;
  const auto it = imported_scores_.find(c.key);
  return apply_composite(*c.spec.scoring, it == imported_scores_.end() ? kNone : it->second,
                         std::move(models));
}

void Api::load_imported_scores() {
  size_t loaded = 0;
  auto status = scheduler_.store().scan_scores(
      [&](uint32_t campaign, std::string_view component, std::string_view text) {
        auto record = parse_json_bounded(text);
        if (!record.ok() || !record->is_object() || !record->contains("scores") ||
            !(*record)["scores"].is_object()) {
          spdlog::error("scores_unreadable campaign_key={} component={}", campaign, component);
          return;
        }
        auto& into = imported_scores_[campaign][std::string(component)];
        for (const auto& [model, score] : (*record)["scores"].items()) {
          if (score.is_number()) into[model] = score.get<double>();
        }
        ++loaded;
      });
  if (!status.ok()) {
    spdlog::error("scores_load_failed error=\"{}\"", status.error().message);
    return;
  }
  if (loaded > 0) spdlog::info("scores_loaded components={}", loaded);
}

}  // namespace evald::coordinator
