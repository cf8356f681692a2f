// Composite score: a campaign's leaderboard weighed with scores from outside evald (expert review,
// user review) as its spec's "scoring" says (docs/results.md). Used by the coordinator's results
// endpoint; kept apart from the benchmark aggregation, which it only reads.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/spec.hpp"

namespace evald {

// component -> model -> score (0..100), as imported through POST .../scores.
using ImportedScores = std::map<std::string, std::map<std::string, double>>;

// The composite of one model: sum over components of weight * score / 100, where the
// "benchmarks" component is the model's benchmark average x 100 (so a weight of 40 contributes at
// most 40 points). nullopt when any weighted component has no score for the model.
std::optional<double> composite_score(const ScoringSpec& scoring,
                                      std::optional<double> benchmark_average,
                                      const ImportedScores& imported, const std::string& model);

// Adds "composite" and "components" ({component: score or null}) to every entry of the results'
// "models" array (entries carry "name" and "average"), then re-ranks by composite: higher first,
// equal composites share a rank (1, 1, 3), models without a composite rank last (all sharing the
// rank after the last model with one), ties in order of model name. Returns the re-sorted array.
nlohmann::json apply_composite(const ScoringSpec& scoring, const ImportedScores& imported,
                               nlohmann::json models);

// The checks an import must pass: the component is weighted in the spec and is not "benchmarks"
// (computed, never imported), every model is in the spec, every score is a finite number in
// 0..100. The error names the offending entry.
Result<std::map<std::string, double>> validate_imported_scores(const CampaignSpec& spec,
                                                               const std::string& component,
                                                               const nlohmann::json& scores);

}  // namespace evald
