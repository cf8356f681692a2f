// Statistics on per-example scores: standard errors (plain and clustered), 95% intervals,
// bootstrap rank intervals, paired comparisons (McNemar's exact test, the paired t-test) and the
// Holm adjustment. Pure functions with no I/O and no dependency on the coordinator, so the
// coordinator (results, compare) and evalctl can both use them and the unit tests can check them
// against an independent computation (docs/results.md, "Statistics").
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace evald::stats {

// The two-sided 95% normal quantile used for every ci95, as lm-evaluation-harness does.
inline constexpr double kZ95 = 1.96;
inline constexpr int kDefaultResamples = 1000;
// Fixed so that the same scores always give the same rank intervals (reproducible reports).
inline constexpr uint64_t kDefaultSeed = 0x65766164'73746174ULL;  // "evadstat"

double mean(std::span<const double> values);

// sd(values, n-1) / sqrt(n); nullopt when n < 2 (no spread to measure).
std::optional<double> standard_error(std::span<const double> values);

// The clustered standard error (Miller 2024, "Adding Error Bars to Evals"):
//   sqrt(G/(G-1)) * sqrt(sum_g (sum_{i in g} (s_i - mean))^2) / n
// clusters[i] names the cluster of values[i]; nullopt when there are fewer than 2 clusters.
std::optional<double> clustered_standard_error(std::span<const double> values,
                                               std::span<const uint32_t> clusters);

// [value - 1.96 * stderr, value + 1.96 * stderr].
std::array<double, 2> ci95(double value, double stderr_value);

// sqrt(sum_b stderr_b^2) / B: the standard error of a plain average over B independent
// benchmarks. nullopt when there are no benchmarks or any of them has no stderr.
std::optional<double> average_stderr(std::span<const std::optional<double>> stderrs);

// McNemar's exact two-sided test on the discordant pairs: min(1, 2 * P(X <= min(b, c))) with
// X ~ Binomial(b + c, 1/2). 1 when there are no discordant pairs.
double mcnemar_exact_p(int64_t b, int64_t c);

// Two-sided p-value of a Student t statistic with `df` degrees of freedom (df > 0).
double students_t_two_sided_p(double t, double df);

// Holm's step-down adjustment of a family of p-values; nullopt entries are not part of the family
// and stay nullopt. Adjusted values are monotone in the raw ones and capped at 1.
std::vector<std::optional<double>> holm_adjust(std::span<const std::optional<double>> p_values);

// A paired comparison of a and b on the same examples (a[i] and b[i] score example i).
struct PairedComparison {
  int64_t n = 0;
  double diff = 0;                     // mean of a - b (0 when n == 0)
  std::optional<double> stderr_value;  // sd(a - b, n-1) / sqrt(n)
  std::optional<std::array<double, 2>> ci95;
  std::optional<double> p_value;
  std::string test;    // "mcnemar" (every score 0 or 1), "paired_t", or "" (no test possible)
  int64_t a_only = 0;  // McNemar: a = 1, b = 0
  int64_t b_only = 0;  // McNemar: a = 0, b = 1
};
PairedComparison paired_compare(std::span<const double> a, std::span<const double> b);

// Input of the bootstrap rank interval: for each benchmark, each model's leaderboard value and its
// per-example scores (may be empty: the model's value then does not vary).
struct IndexedScore {
  int64_t index = 0;
  double score = 0;
};
struct RankBenchmark {
  std::vector<std::optional<double>> values;       // per model; nullopt: no score
  std::vector<std::vector<IndexedScore>> samples;  // per model, any order, unique indexes
};

// For each model, [best, worst]: the 2.5th and 97.5th percentiles (nearest rank) of its rank over
// `resamples` bootstrap resamples. One resample draws, for each benchmark, as many examples as
// the benchmark has (the union of the models' indexes), with replacement, the same draw for every
// model (so the models stay paired). A model's resampled score on a benchmark is its leaderboard
// value moved by (resampled mean - mean) of its scores on the drawn examples it has; the average
// over benchmarks ranks it the way the leaderboard does (competition ranking, higher average
// first, a model with a missing score after all others). Deterministic for a given seed.
//
// `kernel` only chooses how the sums are computed: `automatic` uses exact 16-bit integer sums for a
// benchmark whose scores are all 0 or 1 (and float sums otherwise); `float_sums` always uses the
// float sums (for tests that compare the two; the intervals agree except on exact near-ties).
enum class BootstrapKernel { automatic, float_sums };
std::vector<std::array<int, 2>> bootstrap_rank_intervals(
    size_t models, const std::vector<RankBenchmark>& benchmarks, int resamples = kDefaultResamples,
    uint64_t seed = kDefaultSeed, BootstrapKernel kernel = BootstrapKernel::automatic);

}  // namespace evald::stats
