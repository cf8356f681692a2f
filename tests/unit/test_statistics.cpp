// common/statistics: values worked out by hand, and the same statistics on larger data checked
// against SciPy (Debian python3-scipy), an implementation that shares no code with ours.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/statistics.hpp"
#include "tests/support/process.hpp"
#include "tests/support/test_support.hpp"

using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;
using namespace evald::stats;

TEST_CASE("stderr and ci95 of a benchmark, worked by hand", "[unit][statistics]") {
  const std::vector<double> scores{1, 0, 1, 1, 0};
  // mean 0.6; squared deviations 3 * 0.16 + 2 * 0.36 = 1.2; sd = sqrt(1.2 / 4); stderr = sd/sqrt5
  CHECK_THAT(mean(scores), WithinAbs(0.6, 1e-15));
  const auto se = standard_error(scores);
  REQUIRE(se);
  CHECK_THAT(*se, WithinAbs(std::sqrt(0.06), 1e-15));
  const auto ci = ci95(0.6, *se);
  CHECK_THAT(ci[0], WithinAbs(0.6 - 1.96 * std::sqrt(0.06), 1e-15));
  CHECK_THAT(ci[1], WithinAbs(0.6 + 1.96 * std::sqrt(0.06), 1e-15));
  CHECK_FALSE(standard_error(std::vector<double>{1}));
  CHECK_FALSE(standard_error(std::vector<double>{}));
  // No spread: a stderr of exactly 0, not "unknown".
  CHECK(*standard_error(std::vector<double>{1, 1, 1}) == 0);
}

TEST_CASE("clustered stderr, worked by hand", "[unit][statistics]") {
  // mean 0.5; cluster residual sums 0, +1, -1; sqrt(3/2) * sqrt(2) / 6 = sqrt(3) / 6
  const std::vector<double> scores{1, 0, 1, 1, 0, 0};
  const std::vector<uint32_t> clusters{0, 0, 1, 1, 2, 2};
  const auto se = clustered_standard_error(scores, clusters);
  REQUIRE(se);
  CHECK_THAT(*se, WithinAbs(std::sqrt(3.0) / 6.0, 1e-15));
  // Every example its own cluster: sqrt(n/(n-1)) * sqrt(sum (s-m)^2) / n = the plain stderr.
  const std::vector<uint32_t> singletons{0, 1, 2, 3, 4, 5};
  CHECK_THAT(*clustered_standard_error(scores, singletons),
             WithinAbs(*standard_error(scores), 1e-15));
  const std::vector<uint32_t> one_cluster(6, 7);
  CHECK_FALSE(clustered_standard_error(scores, one_cluster));
}

TEST_CASE("average_stderr over benchmarks", "[unit][statistics]") {
  const std::vector<std::optional<double>> stderrs{0.03, 0.04};
  CHECK_THAT(*average_stderr(stderrs), WithinAbs(0.05 / 2, 1e-15));
  const std::vector<std::optional<double>> with_missing{0.03, std::nullopt};
  CHECK_FALSE(average_stderr(with_missing));
  CHECK_FALSE(average_stderr(std::vector<std::optional<double>>{}));
}

TEST_CASE("McNemar exact p-values, worked by hand", "[unit][statistics]") {
  // 2 * P(X <= min(b, c)), X ~ Bin(b + c, 1/2)
  CHECK_THAT(mcnemar_exact_p(0, 5), WithinAbs(2.0 / 32, 1e-15));
  CHECK_THAT(mcnemar_exact_p(9, 1), WithinAbs(22.0 / 1024, 1e-15));
  CHECK_THAT(mcnemar_exact_p(2, 8), WithinAbs(112.0 / 1024, 1e-15));
  CHECK(mcnemar_exact_p(3, 3) == 1.0);  // 2 * 42/64 > 1: capped
  CHECK(mcnemar_exact_p(0, 0) == 1.0);
}

TEST_CASE("Holm adjustment, worked by hand", "[unit][statistics]") {
  // sorted 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1, then the running max 0.06)
  const std::vector<std::optional<double>> p{0.01, 0.04, std::nullopt, 0.03, 0.005};
  const auto adjusted = holm_adjust(p);
  REQUIRE(adjusted.size() == 5);
  CHECK_THAT(*adjusted[0], WithinAbs(0.03, 1e-15));
  CHECK_THAT(*adjusted[1], WithinAbs(0.06, 1e-15));
  CHECK_FALSE(adjusted[2]);
  CHECK_THAT(*adjusted[3], WithinAbs(0.06, 1e-15));
  CHECK_THAT(*adjusted[4], WithinAbs(0.02, 1e-15));
  const std::vector<std::optional<double>> big{0.5, 0.6};
  CHECK(*holm_adjust(big)[0] == 1.0);  // 2 * 0.5, capped
}

TEST_CASE("paired comparison picks McNemar for 0/1 scores and a t-test otherwise",
          "[unit][statistics]") {
  const std::vector<double> a{1, 1, 1, 1, 1, 0, 1, 0};
  const std::vector<double> b{0, 0, 0, 0, 0, 0, 1, 0};
  const auto binary = paired_compare(a, b);
  CHECK(binary.test == "mcnemar");
  CHECK(binary.n == 8);
  CHECK(binary.a_only == 5);
  CHECK(binary.b_only == 0);
  CHECK_THAT(binary.diff, WithinAbs(5.0 / 8, 1e-15));
  CHECK_THAT(*binary.p_value, WithinAbs(2.0 / 32, 1e-15));

  // d = {1, 2, 3}: mean 2, sd 1, stderr 1/sqrt3, t = 2 sqrt3 with 2 df:
  // two-sided p = 1 - t / sqrt(2 + t^2) for 2 df (closed form of the t CDF) = 1 - sqrt(12/14)
  const std::vector<double> x{1.5, 2.5, 3.5};
  const std::vector<double> y{0.5, 0.5, 0.5};
  const auto t = paired_compare(x, y);
  CHECK(t.test == "paired_t");
  CHECK_THAT(t.diff, WithinAbs(2.0, 1e-15));
  CHECK_THAT(*t.stderr_value, WithinAbs(1 / std::sqrt(3.0), 1e-15));
  CHECK_THAT(*t.p_value, WithinAbs(1 - std::sqrt(12.0 / 14.0), 1e-12));

  const auto same = paired_compare(x, x);
  CHECK(*same.p_value == 1.0);
  CHECK_FALSE(paired_compare(std::vector<double>{0.5}, std::vector<double>{0.2}).p_value);
}

namespace {

std::vector<IndexedScore> binary_scores(std::mt19937_64& rng, int n, double p) {
  std::vector<IndexedScore> out;
  std::bernoulli_distribution coin(p);
  for (int i = 0; i < n; ++i) out.push_back({i, coin(rng) ? 1.0 : 0.0});
  return out;
}

double mean_of(const std::vector<IndexedScore>& s) {
  double sum = 0;
  for (const auto& x : s) sum += x.score;
  return sum / static_cast<double>(s.size());
}

void bench_values_push(RankBenchmark& bench, std::vector<IndexedScore> scores) {
  bench.values.push_back(mean_of(scores));
  bench.samples.push_back(std::move(scores));
}

}  // namespace

TEST_CASE("bootstrap rank intervals are reproducible and separate clear winners",
          "[unit][statistics]") {
  std::mt19937_64 rng(42);
  // Model 0 far ahead, models 1 and 2 nearly equal, model 3 has no score on benchmark 1.
  std::vector<RankBenchmark> benches(2);
  const double skill[3] = {0.9, 0.6, 0.61};
  for (auto& bench : benches) {
    for (int m = 0; m < 3; ++m) {
      bench.samples.push_back(binary_scores(rng, 400, skill[m]));
      bench.values.push_back(mean_of(bench.samples.back()));
    }
    bench.samples.emplace_back();
    bench.values.emplace_back(0.99);
  }
  benches[1].values[3] = std::nullopt;

  const auto first = bootstrap_rank_intervals(4, benches, 1000, 7);
  const auto again = bootstrap_rank_intervals(4, benches, 1000, 7);
  REQUIRE(first == again);
  CHECK(first[0] == std::array<int, 2>{1, 1});
  // The two close models swap places in some resamples.
  CHECK(first[1][0] == 2);
  CHECK(first[1][1] == 3);
  CHECK(first[2][0] == 2);
  CHECK(first[2][1] == 3);
  CHECK(first[3] == std::array<int, 2>{4, 4});  // no average: last in every resample

  // A different seed moves nothing that is clear-cut.
  const auto other = bootstrap_rank_intervals(4, benches, 1000, 8);
  CHECK(other[0] == std::array<int, 2>{1, 1});
  CHECK(other[3] == std::array<int, 2>{4, 4});

  // Models with no samples at all keep their leaderboard ranks.
  std::vector<RankBenchmark> fixed(1);
  fixed[0].values = {0.5, 0.7, 0.5};
  fixed[0].samples.resize(3);
  const auto ranks = bootstrap_rank_intervals(3, fixed);
  CHECK(ranks[0] == std::array<int, 2>{2, 2});
  CHECK(ranks[1] == std::array<int, 2>{1, 1});
  CHECK(ranks[2] == std::array<int, 2>{2, 2});
}

TEST_CASE("bootstrap handles models scored on different examples", "[unit][statistics]") {
  std::vector<RankBenchmark> benches(1);
  // Model 0 scored even examples only (all correct), model 1 all examples (all wrong).
  std::vector<IndexedScore> even;
  std::vector<IndexedScore> all;
  for (int i = 0; i < 100; ++i) {
    if (i % 2 == 0) even.push_back({i, 1.0});
    all.push_back({i, 0.0});
  }
  benches[0].samples = {even, all};
  benches[0].values = {1.0, 0.0};
  const auto ranks = bootstrap_rank_intervals(2, benches);
  CHECK(ranks[0] == std::array<int, 2>{1, 1});
  CHECK(ranks[1] == std::array<int, 2>{2, 2});
}

TEST_CASE("the exact kernel for 0/1 scores agrees with the float kernel", "[unit][statistics]") {
  // 20 models (two blocks of columns), close skills so ranks overlap; benchmark 1 is sparse (every
  // third model lacks a tenth of the examples), benchmark 2 is not 0/1 (float kernel either way).
  std::mt19937_64 rng(11);
  constexpr int kModels = 20;
  std::vector<RankBenchmark> benches(3);
  for (size_t b = 0; b < benches.size(); ++b) {
    for (int m = 0; m < kModels; ++m) {
      auto scores = binary_scores(rng, 600, 0.5 + 0.01 * m);
      if (b == 1 && m % 3 == 0) {
        std::erase_if(scores, [](const IndexedScore& s) { return s.index % 10 == 3; });
      }
      if (b == 2) {
        for (auto& s : scores) s.score = s.score * 0.75 + 0.125 * static_cast<double>(s.index % 2);
      }
      bench_values_push(benches[b], std::move(scores));
    }
  }
  const auto exact = bootstrap_rank_intervals(kModels, benches, 1000, 3);
  const auto floats = bootstrap_rank_intervals(kModels, benches, 1000, 3,
                                               evald::stats::BootstrapKernel::float_sums);
  CHECK(exact == floats);
  // Overlapping skills give wide intervals: the check above compares something that varies.
  CHECK(exact[10][1] - exact[10][0] >= 3);
}

TEST_CASE("statistics agree with SciPy", "[unit][statistics]") {
  const std::filesystem::path python = "/usr/bin/python3";
  const auto probe = evald::testing::run_command(python, {"-c", "import scipy.stats"});
  if (probe.exit_code != 0) {
    WARN("SKIPPED: python3-scipy is not installed (scripts/setup.sh installs it): " + probe.err);
    return;
  }
  std::mt19937_64 rng(2026);
  std::normal_distribution<double> noise(0.0, 0.2);
  std::bernoulli_distribution coin(0.55);
  std::uniform_int_distribution<uint32_t> cluster_of(0, 29);
  std::vector<double> scores;
  std::vector<uint32_t> clusters;
  for (int i = 0; i < 500; ++i) {
    scores.push_back(coin(rng) ? 1.0 : 0.0);
    clusters.push_back(cluster_of(rng));
  }
  std::vector<double> a;
  std::vector<double> b;
  for (int i = 0; i < 200; ++i) {
    const double base = 0.5 + noise(rng);
    a.push_back(base + 0.03 + noise(rng) * 0.3);
    b.push_back(base);
  }
  const std::vector<std::array<int64_t, 2>> discordant{{0, 1},   {3, 11},    {17, 4},
                                                       {40, 60}, {250, 300}, {1000, 1100}};
  const std::vector<std::optional<double>> family{0.012, 0.3, 0.001, 0.049, 0.04};

  nlohmann::json input = {
      {"scores", scores}, {"clusters", clusters},     {"a", a},
      {"b", b},           {"discordant", discordant}, {"family", {0.012, 0.3, 0.001, 0.049, 0.04}}};
  evald::testing::TempDir dir;
  const auto input_path = dir.path() / "input.json";
  std::ofstream(input_path) << input.dump();
  // SciPy for the distributions and the t-test; numpy for the clustered sum, as written in
  // the contract; Holm straight from its definition.
  const std::string script = R"PY(
import json, sys
import numpy as np
from scipy import stats
d = json.load(open(sys.argv[1]))
s = np.array(d["scores"]); cl = np.array(d["clusters"])
out = {"sem": float(stats.sem(s, ddof=1))}
resid = s - s.mean()
sums = [resid[cl == g].sum() for g in np.unique(cl)]
G = len(sums)
out["clustered"] = float(np.sqrt(G / (G - 1)) * np.sqrt(np.sum(np.square(sums))) / len(s))
t = stats.ttest_rel(d["a"], d["b"])
out["t_p"] = float(t.pvalue)
out["mcnemar"] = [float(min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5)))
                  for b, c in d["discordant"]]
p = d["family"]; m = len(p); order = sorted(range(m), key=lambda i: p[i])
adj = [0.0] * m; running = 0.0
for k, i in enumerate(order):
    running = max(running, min(1.0, (m - k) * p[i])); adj[i] = running
out["holm"] = adj
print(json.dumps(out))
)PY";
  const auto script_path = dir.path() / "check.py";
  std::ofstream(script_path) << script;
  const auto result =
      evald::testing::run_command(python, {script_path.string(), input_path.string()});
  INFO(result.err);
  REQUIRE(result.exit_code == 0);
  const auto expected = nlohmann::json::parse(result.out);

  CHECK_THAT(*standard_error(scores), WithinRel(expected["sem"].get<double>(), 1e-12));
  CHECK_THAT(*clustered_standard_error(scores, clusters),
             WithinRel(expected["clustered"].get<double>(), 1e-12));
  const auto paired = paired_compare(a, b);
  REQUIRE(paired.test == "paired_t");
  CHECK_THAT(*paired.p_value, WithinRel(expected["t_p"].get<double>(), 1e-9));
  for (size_t i = 0; i < discordant.size(); ++i) {
    INFO("b=" << discordant[i][0] << " c=" << discordant[i][1]);
    CHECK_THAT(mcnemar_exact_p(discordant[i][0], discordant[i][1]),
               WithinRel(expected["mcnemar"][i].get<double>(), 1e-9));
  }
  const auto holm = holm_adjust(family);
  for (size_t i = 0; i < family.size(); ++i) {
    CHECK_THAT(*holm[i], WithinRel(expected["holm"][i].get<double>(), 1e-12));
  }
}
