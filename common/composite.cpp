#include "common/composite.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace evald {
namespace {
constexpr const char* kBenchmarks = "benchmarks";
}  // namespace

std::optional<double> composite_score(const ScoringSpec& scoring,
                                      std::optional<double> benchmark_average,
                                      const ImportedScores& imported, const std::string& model) {
  double total = 0;
  for (const auto& [component, weight] : scoring.weights) {
    std::optional<double> score;
    if (component == kBenchmarks) {
      if (benchmark_average) score = *benchmark_average * 100;
    } else if (const auto c = imported.find(component); c != imported.end()) {
      if (const auto m = c->second.find(model); m != c->second.end()) score = m->second;
    }
    if (!score) return std::nullopt;
    total += weight * *score / 100;
  }
  return total;
}

nlohmann::json apply_composite(const ScoringSpec& scoring, const ImportedScores& imported,
                               nlohmann::json models) {
  struct Row {
    std::optional<double> composite;
    std::string model;
    nlohmann::json entry;
  };
  std::vector<Row> rows;
  for (auto& entry : models) {
    const std::string model = entry.value("name", std::string{});
    std::optional<double> average;
    if (entry.contains("average") && entry["average"].is_number()) {
      average = entry["average"].get<double>();
    }
    nlohmann::json components = nlohmann::json::object();
    for (const auto& [component, weight] : scoring.weights) {
      std::optional<double> score;
      if (component == kBenchmarks) {
        if (average) score = *average * 100;
      } else if (const auto c = imported.find(component); c != imported.end()) {
        if (const auto m = c->second.find(model); m != c->second.end()) score = m->second;
      }
      components[component] = score ? nlohmann::json(*score) : nlohmann::json(nullptr);
    }
    const auto composite = composite_score(scoring, average, imported, model);
    entry["composite"] = composite ? nlohmann::json(*composite) : nlohmann::json(nullptr);
    entry["components"] = std::move(components);
    rows.push_back(Row{composite, model, std::move(entry)});
  }
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.composite.has_value() != b.composite.has_value()) return a.composite.has_value();
    if (a.composite && *a.composite != *b.composite) return *a.composite > *b.composite;
    return a.model < b.model;
  });
  nlohmann::json out = nlohmann::json::array();
  int rank = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const bool tied = i > 0 && rows[i].composite.has_value() == rows[i - 1].composite.has_value() &&
                      (!rows[i].composite || *rows[i].composite == *rows[i - 1].composite);
    if (!tied) rank = static_cast<int>(i) + 1;
    rows[i].entry["rank"] = rank;
    out.push_back(std::move(rows[i].entry));
  }
  return out;
}

Result<std::map<std::string, double>> validate_imported_scores(const CampaignSpec& spec,
                                                               const std::string& component,
                                                               const nlohmann::json& scores) {
  if (!spec.scoring) {
    return make_error("campaign has no scoring in its spec: there is nothing to import into");
  }
  if (component == kBenchmarks) {
    return make_error(
        "component: 'benchmarks' is computed from the results and cannot be imported");
  }
  if (spec.scoring->weights.count(component) == 0) {
    std::string known;
    for (const auto& [name, weight] : spec.scoring->weights) {
      if (name == kBenchmarks) continue;
      known += (known.empty() ? "" : ", ") + name;
    }
    return make_error("component: '" + component + "' is not weighted in the spec's scoring (" +
                      (known.empty() ? "it imports nothing" : "importable: " + known) + ")");
  }
  if (!scores.is_object() || scores.empty()) {
    return make_error("scores: must be a non-empty object of model: score");
  }
  std::map<std::string, double> out;
  for (const auto& [model, score] : scores.items()) {
    // A named copy: clang 14 cannot capture a structured binding.
    const std::string& name = model;
    const bool known = std::any_of(spec.models.begin(), spec.models.end(),
                                   [&name](const ModelSpec& m) { return m.name == name; });
    if (!known) return make_error("scores." + model + ": no such model in the campaign");
    if (!score.is_number() || !std::isfinite(score.get<double>()) || score.get<double>() < 0 ||
        score.get<double>() > 100) {
      return make_error("scores." + model + ": must be a number from 0 to 100");
    }
    out.emplace(model, score.get<double>());
  }
  return out;
}

}  // namespace evald
