// Aggregation: per model x benchmark scores and the leaderboard (docs/results.md).
// The coordinator keeps a CellAggregate per model x benchmark, updated incrementally as results
// are committed, so a leaderboard costs O(models x benchmarks), never O(shards).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace evald {

// Running sums for one metric: sum(value_i * count_i) and sum(count_i) over succeeded shards that
// reported this metric. The sum is a long double (x86-64: 64-bit mantissa, exponent range to
// ~1e4932): any finite double times any int64 count, summed over any int64 number of shards,
// stays finite, so no finite metric value can overflow an aggregate into "no score".
struct MetricSum {
  long double weighted_sum = 0;
  int64_t weight = 0;
};

struct CellAggregate {
  std::map<std::string, MetricSum> metrics;
  int64_t examples_scored = 0;  // sum of count over succeeded shards
  int64_t shards_succeeded = 0;
  int64_t shards_total = 0;

  // Adds one succeeded shard's result. Non-finite values and negative counts are skipped (the
  // coordinator refuses such results before they get here); count sums saturate at INT64_MAX.
  void add(const std::vector<std::pair<std::string, double>>& shard_metrics, int64_t count);
  // The example-weighted mean of a metric, or nullopt if no succeeded shard scored any example
  // for it.
  std::optional<double> mean(const std::string& metric) const;
  bool complete() const { return shards_total > 0 && shards_succeeded == shards_total; }
};

struct BenchmarkColumn {
  std::string name;
  std::string metric;
  bool higher_is_better = true;
};

struct LeaderboardScore {
  std::string metric;
  std::optional<double> value;
  int64_t count = 0;
  bool complete = false;
  std::map<std::string, double> all_metrics;  // every metric's weighted mean
};

struct LeaderboardRow {
  std::string model;
  int rank = 0;
  std::optional<double> average;
  int firsts = 0;
  std::vector<LeaderboardScore> scores;  // in benchmark column order
};

// cells[m][b] is model m's aggregate on benchmark b. Rows come back sorted by rank (then by
// model name). Ranking: higher average first; equal averages share a rank (1, 1, 3); a model
// with any missing score has no average and ranks after every model that has one.
std::vector<LeaderboardRow> compute_leaderboard(
    const std::vector<std::string>& models, const std::vector<BenchmarkColumn>& benchmarks,
    const std::vector<std::vector<CellAggregate>>& cells);

// The "models" array of the results JSON (docs/api.md, RESULTS).
nlohmann::json leaderboard_to_json(const std::vector<LeaderboardRow>& rows,
                                   const std::vector<BenchmarkColumn>& benchmarks);

}  // namespace evald
