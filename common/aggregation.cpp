// Aggregation and the leaderboard (docs/results.md, "Aggregation" and "The leaderboard").
//
// Scores are example-weighted means kept as running sums, so a shard that scored 1 example moves
// a score by 1/N of what a full shard does. The leaderboard is a pure function of the cells.
//
// Ties: the same scores summed in a different order (shards finish in any order, a coordinator
// restart replays them differently) can differ in the last bits. Comparing raw doubles would then
// make two models tie on one run and not on the next, so averages and scores are compared after
// rounding to 12 significant digits, far below any difference a benchmark can measure and far
// above summation noise. The rounding is a pure function of the value, so the outcome is the same
// on every run.
//
// A model missing a score on any benchmark has no average and ranks after every model that has
// one: averaging only the scores it has could otherwise lift it above complete models.
#include "common/aggregation.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace evald {
namespace {

constexpr int kComparisonDigits = 12;

// The value rounded to kComparisonDigits significant digits; used only for comparisons, never
// for what is shown.
double comparable(double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*e", kComparisonDigits - 1, value);
  return std::strtod(buffer, nullptr);
}

}  // namespace

namespace {

// a + b, saturating at INT64_MAX instead of wrapping (b >= 0).
int64_t saturating_add(int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) return std::numeric_limits<int64_t>::max();
  return out;
}

}  // namespace

void CellAggregate::add(const std::vector<std::pair<std::string, double>>& shard_metrics,
                        int64_t count) {
  if (count < 0) {
    spdlog::warn("aggregate_result_skipped reason=negative_count count={}", count);
    return;
  }
  for (const auto& [name, value] : shard_metrics) {
    // A NaN or infinity would poison the metric's sum for good; the shard still counts as
    // succeeded, its unusable metric does not.
    if (!std::isfinite(value)) {
      spdlog::warn("aggregate_metric_skipped metric={} reason=not_finite count={}", name, count);
      continue;
    }
    MetricSum& sum = metrics[name];
    sum.weighted_sum += static_cast<long double>(value) * static_cast<long double>(count);
    sum.weight = saturating_add(sum.weight, count);
  }
  examples_scored = saturating_add(examples_scored, count);
  shards_succeeded = saturating_add(shards_succeeded, 1);
}

std::optional<double> CellAggregate::mean(const std::string& metric) const {
  const auto it = metrics.find(metric);
  if (it == metrics.end() || it->second.weight <= 0) return std::nullopt;
  // A weighted mean of finite doubles lies between the smallest and the largest of them, so it
  // converts back to a finite double; the check guards against a corrupt stored cell.
  const auto value =
      static_cast<double>(it->second.weighted_sum / static_cast<long double>(it->second.weight));
  if (!std::isfinite(value)) return std::nullopt;
  return value;
}

std::vector<LeaderboardRow> compute_leaderboard(
    const std::vector<std::string>& models, const std::vector<BenchmarkColumn>& benchmarks,
    const std::vector<std::vector<CellAggregate>>& cells) {
  // The cells come from our own store, shaped by the campaign's spec: a mismatch is a bug.
  bool shaped = cells.size() == models.size();
  for (size_t m = 0; shaped && m < cells.size(); ++m) {
    shaped = cells[m].size() == benchmarks.size();
  }
  if (!shaped) {
    spdlog::critical("leaderboard_shape_mismatch models={} benchmarks={} cell_rows={}",
                     models.size(), benchmarks.size(), cells.size());
    std::abort();
  }

  std::vector<LeaderboardRow> rows(models.size());
  for (size_t m = 0; m < models.size(); ++m) {
    LeaderboardRow& row = rows[m];
    row.model = models[m];
    row.scores.reserve(benchmarks.size());
    long double sum = 0;  // B scores near DBL_MAX must not overflow the average
    bool all_scored = !benchmarks.empty();
    for (size_t b = 0; b < benchmarks.size(); ++b) {
      const CellAggregate& cell = cells[m][b];
      LeaderboardScore score;
      score.metric = benchmarks[b].metric;
      score.value = cell.mean(benchmarks[b].metric);
      score.count = cell.examples_scored;
      score.complete = cell.complete();
      for (const auto& [name, metric_sum] : cell.metrics) {
        if (auto mean = cell.mean(name)) score.all_metrics[name] = *mean;
      }
      if (score.value) {
        sum += *score.value;
      } else {
        all_scored = false;
      }
      row.scores.push_back(std::move(score));
    }
    if (all_scored) {
      row.average = static_cast<double>(sum / static_cast<long double>(benchmarks.size()));
    }
  }

  for (size_t b = 0; b < benchmarks.size(); ++b) {
    std::optional<double> best;
    for (const auto& row : rows) {
      if (!row.scores[b].value) continue;
      const double value = comparable(*row.scores[b].value);
      if (!best || (benchmarks[b].higher_is_better ? value > *best : value < *best)) best = value;
    }
    if (!best) continue;
    for (auto& row : rows) {
      if (row.scores[b].value && comparable(*row.scores[b].value) == *best) row.firsts += 1;
    }
  }

  // Competition ranking: 1 + the number of models with a strictly better average.
  std::vector<double> averages;
  for (const auto& row : rows) {
    if (row.average) averages.push_back(comparable(*row.average));
  }
  const int unranked = static_cast<int>(averages.size()) + 1;
  for (auto& row : rows) {
    if (!row.average) {
      row.rank = unranked;
      continue;
    }
    const double mine = comparable(*row.average);
    row.rank = 1 + static_cast<int>(std::count_if(averages.begin(), averages.end(),
                                                  [mine](double other) { return other > mine; }));
  }

  std::sort(rows.begin(), rows.end(), [](const LeaderboardRow& a, const LeaderboardRow& b) {
    if (a.rank != b.rank) return a.rank < b.rank;
    return a.model < b.model;
  });
  return rows;
}

nlohmann::json leaderboard_to_json(const std::vector<LeaderboardRow>& rows,
                                   const std::vector<BenchmarkColumn>& benchmarks) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& row : rows) {
    nlohmann::json scores = nlohmann::json::object();
    const size_t columns = std::min(row.scores.size(), benchmarks.size());
    for (size_t b = 0; b < columns; ++b) {
      const LeaderboardScore& score = row.scores[b];
      nlohmann::json metrics = nlohmann::json::object();
      for (const auto& [name, value] : score.all_metrics) metrics[name] = value;
      scores[benchmarks[b].name] = {
          {"metric", score.metric},
          {"value", score.value ? nlohmann::json(*score.value) : nlohmann::json(nullptr)},
          {"count", score.count},
          {"complete", score.complete},
          {"metrics", std::move(metrics)}};
    }
    out.push_back(
        {{"name", row.model},
         {"rank", row.rank},
         {"average", row.average ? nlohmann::json(*row.average) : nlohmann::json(nullptr)},
         {"firsts", row.firsts},
         {"scores", std::move(scores)}});
  }
  return out;
}

}  // namespace evald
