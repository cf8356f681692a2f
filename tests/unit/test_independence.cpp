// The independence check's pieces in-process: the p-value formulas against known values, the
// matching test's false-positive rate under the null (measured, not assumed), the safetensors
// header checks, and the half/bfloat16 conversions.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "independence/check.hpp"
#include "independence/matching.hpp"
#include "independence/safetensors.hpp"
#include "independence/stats.hpp"
#include "tests/support/test_support.hpp"

namespace {

using namespace evald::independence;

Matrix gaussian(int64_t rows, int64_t cols, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Matrix m{rows, cols, std::vector<float>(static_cast<size_t>(rows * cols))};
  for (auto& v : m.data) v = normal(rng);
  return m;
}

Matrix permute_rows(const Matrix& m, const std::vector<int64_t>& perm) {
  Matrix out{m.rows, m.cols, std::vector<float>(m.data.size())};
  for (int64_t r = 0; r < m.rows; ++r) {
    std::copy(m.row(perm[static_cast<size_t>(r)]), m.row(perm[static_cast<size_t>(r)]) + m.cols,
              out.data.begin() + r * m.cols);
  }
  return out;
}

// The p-value of one tensor pair, as check_independence computes it (rows axis).
double tensor_p(const Matrix& a, const Matrix& b, int64_t max_units, uint64_t seed) {
  const auto subset = sample_units(a.rows, max_units, seed);
  const Units ua = make_units(a, Axis::kRows, &subset);
  const Units ub = make_units(b, Axis::kRows);
  const auto matches = best_matches(ua, ub, 2);
  int64_t fixed = 0;
  for (size_t u = 0; u < subset.size(); ++u) fixed += matches[u] == subset[u] ? 1 : 0;
  return std::exp(log_fixed_point_tail(fixed, static_cast<int64_t>(subset.size()), a.rows));
}

// How often p <= alpha over the trials must stay below alpha plus 3 binomial standard errors
// (the p-values are conservative, so the observed rate is usually well below alpha).
void check_valid(const std::vector<double>& p_values) {
  const auto trials = static_cast<double>(p_values.size());
  for (const double alpha : {0.5, 0.2, 0.05, 0.01}) {
    double hits = 0;
    for (const double p : p_values) hits += p <= alpha ? 1 : 0;
    INFO("alpha " << alpha << ": " << hits << " of " << trials);
    CHECK(hits / trials <= alpha + 3.0 * std::sqrt(alpha * (1 - alpha) / trials));
  }
}

}  // namespace

TEST_CASE("independence: fixed-point tail bound", "[independence]") {
  CHECK(log_fixed_point_tail(0, 50, 50) == 0.0);
  CHECK(log_fixed_point_tail(1, 50, 50) == Approx(0.0).margin(1e-12));  // 1/1! capped at 1
  CHECK(std::exp(log_fixed_point_tail(2, 50, 50)) == Approx(0.5));      // 1/2!
  CHECK(std::exp(log_fixed_point_tail(3, 100, 100)) == Approx(1.0 / 6));
  // m of n sampled: C(m, 1) / n.
  CHECK(std::exp(log_fixed_point_tail(1, 10, 1000)) == Approx(0.01));
  // A single 7B-sized tensor can reach 1e-6 with ten matched units out of all, or three of a
  // 256-unit sample.
  CHECK(log_fixed_point_tail(10, 11008, 11008) < std::log(1e-6));
  CHECK(log_fixed_point_tail(4, 256, 11008) < std::log(1e-6));
  // A full match of 256 units is far below the smallest double and stays finite in log space.
  const double full = log_fixed_point_tail(256, 256, 11008);
  CHECK(std::isfinite(full));
  CHECK(full < -2000);
}

TEST_CASE("independence: Fisher's method and Bonferroni", "[independence]") {
  // One p-value combines to itself.
  CHECK(std::exp(log_fisher({std::log(0.3)})) == Approx(0.3));
  // Two p-values of 0.05: chi-square(4) upper tail at 11.983 = e^-5.9915 * (1 + 5.9915).
  CHECK(std::exp(log_fisher({std::log(0.05), std::log(0.05)})) == Approx(0.017479).epsilon(1e-4));
  // Ones give one; an empty set gives one.
  CHECK(log_fisher({0.0, 0.0, 0.0}) == 0.0);
  CHECK(log_fisher({}) == 0.0);
  // Tiny p-values stay finite and ordered.
  const double tiny = log_fisher(std::vector<double>(100, std::log(1e-300)));
  CHECK(std::isfinite(tiny));
  CHECK(tiny < log_fisher(std::vector<double>(100, std::log(1e-200))));
  CHECK(std::exp(log_bonferroni({std::log(0.01), std::log(0.5), 0.0})) == Approx(0.03));
  CHECK(log_bonferroni({std::log(0.9), std::log(0.5)}) == 0.0);
  CHECK(p_from_log(-1e6) > 0.0);

  // Fisher's method is exact for independent uniform p-values: its rejection rate is alpha.
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<double> combined;
  for (int trial = 0; trial < 4000; ++trial) {
    std::vector<double> logs;
    for (int k = 0; k < 6; ++k) logs.push_back(std::log(uniform(rng)));
    combined.push_back(std::exp(log_fisher(logs)));
  }
  check_valid(combined);
  double below = 0;
  for (const double p : combined) below += p <= 0.2 ? 1 : 0;
  CHECK(below / 4000 > 0.17);  // and not trivially conservative
}

TEST_CASE("independence: the matching test is valid under the null", "[independence]") {
  std::mt19937_64 rng(7);
  std::vector<double> independent;
  std::vector<double> sampled;
  std::vector<double> relabelled;
  for (int trial = 0; trial < 1500; ++trial) {
    const Matrix a = gaussian(40, 8, rng);
    const Matrix b = gaussian(40, 8, rng);
    independent.push_back(tensor_p(a, b, 256, 1));
    sampled.push_back(tensor_p(a, b, 12, static_cast<uint64_t>(trial)));
    // The null in its purest form: B is A with its units randomly relabelled. Then the matching
    // is a uniformly random permutation and the test must still hold its level.
    std::vector<int64_t> perm(40);
    for (int64_t i = 0; i < 40; ++i) perm[static_cast<size_t>(i)] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    relabelled.push_back(tensor_p(a, permute_rows(a, perm), 256, 1));
  }
  SECTION("independent Gaussian weights") {
    check_valid(independent);
  }
  SECTION("a sample of the units") {
    check_valid(sampled);
  }
  SECTION("a relabelled copy") {
    check_valid(relabelled);
  }
}

TEST_CASE("independence: ties and all-zero units never count as matches", "[independence]") {
  // A has zero rows and duplicated rows; B is A relabelled. Breaking ties by index would favour
  // low labels; dropping tied units keeps the test valid.
  std::mt19937_64 rng(3);
  std::vector<double> p_values;
  for (int trial = 0; trial < 1500; ++trial) {
    Matrix a = gaussian(30, 6, rng);
    for (int64_t c = 0; c < 6; ++c) {
      a.data[static_cast<size_t>(c)] = 0.0f;      // row 0 all zero
      a.data[static_cast<size_t>(6 + c)] = 0.0f;  // row 1 all zero
      a.data[static_cast<size_t>(3 * 6 + c)] =
          a.data[static_cast<size_t>(2 * 6 + c)];  // row 3 = row 2
    }
    std::vector<int64_t> perm(30);
    for (int64_t i = 0; i < 30; ++i) perm[static_cast<size_t>(i)] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    p_values.push_back(tensor_p(a, permute_rows(a, perm), 256, 1));
  }
  check_valid(p_values);

  Matrix zeros{4, 4, std::vector<float>(16, 0.0f)};
  const Units u = make_units(zeros, Axis::kRows);
  for (const auto match : best_matches(u, u, 1)) CHECK(match == -1);
}

TEST_CASE("independence: a noisy copy is detected, also from a sample and by columns",
          "[independence]") {
  std::mt19937_64 rng(5);
  const Matrix a = gaussian(300, 64, rng);
  Matrix b = a;
  std::normal_distribution<float> noise(0.0f, 0.5f);
  for (auto& v : b.data) v += noise(rng);
  CHECK(tensor_p(a, b, 256, 1) < 1e-6);
  CHECK(tensor_p(a, b, 20, 1) < 1e-6);
  // Columns: the same matrices transposed give the same matches.
  const Units rows = make_units(a, Axis::kRows);
  Matrix t{a.cols, a.rows, std::vector<float>(a.data.size())};
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t c = 0; c < a.cols; ++c) {
      t.data[static_cast<size_t>(c * a.rows + r)] = a.data[static_cast<size_t>(r * a.cols + c)];
    }
  }
  const Units columns = make_units(t, Axis::kColumns);
  REQUIRE(columns.count == rows.count);
  CHECK(best_matches(rows, columns, 2) == best_matches(rows, rows, 1));
}

TEST_CASE("independence: sampling depends only on the seed", "[independence]") {
  const auto first = sample_units(1000, 50, 9);
  CHECK(first.size() == 50);
  CHECK(first == sample_units(1000, 50, 9));
  CHECK(first != sample_units(1000, 50, 10));
  std::vector<int64_t> sorted = first;
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
  CHECK(sample_units(5, 50, 9) == std::vector<int64_t>{0, 1, 2, 3, 4});
}

TEST_CASE("independence: tensor names decide axis, component and layer", "[independence]") {
  CHECK(unit_axis("model.layers.0.mlp.gate_proj.weight") == Axis::kRows);
  CHECK(unit_axis("model.layers.0.self_attn.q_proj.weight") == Axis::kRows);
  CHECK(unit_axis("model.layers.0.mlp.down_proj.weight") == Axis::kColumns);
  CHECK(unit_axis("model.layers.0.self_attn.o_proj.weight") == Axis::kColumns);
  CHECK(unit_axis("model.embed_tokens.weight") == Axis::kColumns);
  CHECK(unit_axis("lm_head.weight") == Axis::kColumns);
  CHECK(unit_axis("vision_tower.patch_embed.weight") == Axis::kRows);
  CHECK(component_of("vision_tower.layers.1.mlp.fc1.weight") == "vision_tower");
  CHECK(component_of("lm_head.weight") == "lm_head");
  CHECK(layer_of("model.layers.12.mlp.up_proj.weight") == "model.layers.12");
  CHECK(layer_of("model.embed_tokens.weight").empty());
}

TEST_CASE("independence: half and bfloat16 conversions are exact", "[independence]") {
  CHECK(half_to_float(0x3C00) == 1.0f);
  CHECK(half_to_float(0xC000) == -2.0f);
  CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(half_to_float(0x7BFF) == 65504.0f);
  CHECK(std::isinf(half_to_float(0x7C00)));
  CHECK(std::isnan(half_to_float(0x7E00)));
  CHECK(bf16_to_float(0x3F80) == 1.0f);
  CHECK(bf16_to_float(0xC0A0) == -5.0f);
}

TEST_CASE("independence: malformed safetensors headers are refused with the reason",
          "[independence]") {
  const std::filesystem::path file = "x.safetensors";
  const auto error = [&](const std::string& header, uint64_t data_bytes) {
    auto parsed = parse_header(header, file, 8 + header.size(), data_bytes);
    return parsed ? std::string() : parsed.error().message;
  };
  const std::string good = R"({"t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})";
  REQUIRE(error(good, 24).empty());
  CHECK_THAT(error(good, 20), Catch::Contains("outside the 20-byte data section"));
  CHECK_THAT(error(R"({"t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 24),
             Catch::Contains("do not hold a F32 tensor"));
  CHECK_THAT(error(R"({"t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 4]}})", 24),
             Catch::Contains("outside"));
  CHECK_THAT(error(R"({"t": {"shape": [1], "data_offsets": [0, 4]}})", 4),
             Catch::Contains("no dtype"));
  CHECK_THAT(error(R"({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
             Catch::Contains("non-negative"));
  CHECK_THAT(error("[1, 2]", 0), Catch::Contains("not a JSON object"));
  CHECK_THAT(error("{\"t\": ", 0), Catch::Contains("not valid JSON"));
  CHECK_THAT(error(std::string(50, '[') + std::string(50, ']'), 0), Catch::Contains("deeper"));
  CHECK_THAT(
      error(R"({"t": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [0, 4]}})",
            4),
      Catch::Contains("shape too large"));
  // Unknown dtypes are listed (and skipped later), not refused.
  CHECK(error(R"({"t": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}})", 16).empty());
}

TEST_CASE("independence: unreadable files are errors that name the file", "[independence]") {
  evald::testing::TempDir dir("evald-indep-unit");
  const auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir.path() / name, std::ios::binary) << bytes;
    return dir.path() / name;
  };
  auto missing = open_checkpoint(dir.path() / "nope.safetensors");
  REQUIRE(!missing);
  CHECK_THAT(missing.error().message, Catch::Contains("No such file"));
  auto shorty = open_checkpoint(write("short.safetensors", "abc"));
  REQUIRE(!shorty);
  CHECK_THAT(shorty.error().message, Catch::Contains("too short"));
  // A header length far beyond the file.
  auto huge = open_checkpoint(
      write("huge.safetensors", std::string("\xff\xff\x00\x00\x00\x00\x00\x00", 8) + "{}"));
  REQUIRE(!huge);
  CHECK_THAT(huge.error().message, Catch::Contains("past the end of the file"));
  auto over_limit = open_checkpoint(
      write("limit.safetensors", std::string("\x00\x00\x00\x00\x01\x00\x00\x00", 8) + "{}"));
  REQUIRE(!over_limit);
  CHECK_THAT(over_limit.error().message, Catch::Contains("limit"));
  // A directory without an index.
  std::filesystem::create_directories(dir.path() / "empty");
  auto empty = open_checkpoint(dir.path() / "empty");
  REQUIRE(!empty);
  CHECK_THAT(empty.error().message, Catch::Contains("model.safetensors.index.json"));
  // An index that points out of its directory.
  std::filesystem::create_directories(dir.path() / "escape");
  write("escape/model.safetensors.index.json", R"({"weight_map": {"t": "../short.safetensors"}})");
  auto escape = open_checkpoint(dir.path() / "escape");
  REQUIRE(!escape);
  CHECK_THAT(escape.error().message, Catch::Contains("not a file name"));
}
