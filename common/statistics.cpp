// Statistics on per-example scores (statistics.hpp; formulas in docs/results.md).
//
// The distributions come from Boost.Math (header-only, Debian libboost-dev): its binomial CDF and
// Student t CDF are computed through the regularized incomplete beta function to full double
// precision, which a hand-written continued fraction would have to be tested for at every corner.
//
// The bootstrap is the only costly part: 1000 resamples x the examples of every benchmark x the
// models. A resample of a benchmark is a count per example (how often it was drawn, n draws with
// replacement); the scores are a matrix of floats with one row per example and one (padded)
// column per model, streamed in order and summed with the counts as weights into accumulators
// the compiler keeps in vector registers. Streaming in order instead of fetching drawn rows at
// random, and floats instead of doubles, are what bring 15 models x 13 benchmarks x 10,000
// examples to about a second of CPU (half that for 0/1 scores, below); the scores are centred on
// each model's mean first, so the sums stay small and their rounding (relative 1e-7) is far below
// any difference a resample can show. The random numbers come from xoshiro256** with Lemire's
// multiply-shift reduction; both are fully specified here (unlike std::uniform_int_distribution),
// so a seed gives the same intervals on every platform and standard library.
#include "common/statistics.hpp"

#include <algorithm>
#include <boost/math/distributions/binomial.hpp>
#include <boost/math/distributions/students_t.hpp>
#include <cmath>
#include <cstring>
#include <numeric>
#include <unordered_map>

namespace evald::stats {
namespace {

double sum_of(std::span<const double> values) {
  // Kahan summation: a million scores summed naively lose digits a stderr can see.
  double sum = 0;
  double carry = 0;
  for (const double v : values) {
    const double y = v - carry;
    const double t = sum + y;
    carry = (t - sum) - y;
    sum = t;
  }
  return sum;
}

// GCC and Clang both have a 128-bit integer; __extension__ keeps -Wpedantic quiet about it.
__extension__ using Uint128 = unsigned __int128;

class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed) {
    // splitmix64 expands the seed into the four words of state (never all zero).
    for (auto& word : state_) {
      seed += 0x9e3779b97f4a7c15ULL;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      word = z ^ (z >> 31);
    }
  }
  uint64_t next() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }
  // Uniform in [0, n): the high word of a 64x64 product. The bias is below n / 2^64.
  uint64_t below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<Uint128>(next()) * n) >> 64);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<uint64_t, 4> state_{};
};

// One benchmark laid out for the bootstrap: row j holds every model's score on the j-th example
// of the union, minus the model's mean (0 where a model lacks the example); `present` the same
// shape with 1 where it has it, kept only when some model lacks some example. Centred scores make
// a resample's sum directly the shift of the model's mean, and keep the float sums small.
//
// When every score of the benchmark is 0 or 1 (accuracy, exact match: the common case) and it has
// at most 65,535 examples, the matrix is kept as 16-bit integers instead (`binary`): the drawn
// count of ones per model is then an exact integer that cannot overflow 16 bits (it is at most
// the number of draws), the rows take half the memory and a row needs half the vector operations,
// which halves the bootstrap's time. The shift of the mean is then ones / n - mean.
struct BenchmarkMatrix {
  size_t rows = 0;
  bool binary = false;
  std::vector<float> centred;
  std::vector<float> present;
  std::vector<uint16_t> ones;            // binary: 1 where the model scored 1
  std::vector<uint16_t> present_binary;  // binary: 1 where the model has the example (if sparse)
  std::vector<double> means;             // binary: per model
  std::vector<bool> has_samples;         // per model
};

// Columns are padded to a multiple of this: one block of accumulators (one cache line of a row)
// that the compiler keeps in vector registers while it streams the rows.
constexpr size_t kBlock = 16;

// The largest count a 16-bit accumulator holds: a binary benchmark has at most this many examples.
constexpr size_t kBinaryRowLimit = 65535;

BenchmarkMatrix build_matrix(const RankBenchmark& bench, size_t models, size_t width,
                             BootstrapKernel kernel) {
  BenchmarkMatrix m;
  std::vector<int64_t> indexes;
  for (const auto& list : bench.samples) {
    for (const auto& s : list) indexes.push_back(s.index);
  }
  std::sort(indexes.begin(), indexes.end());
  indexes.erase(std::unique(indexes.begin(), indexes.end()), indexes.end());
  m.rows = indexes.size();
  const size_t used = std::min(models, bench.samples.size());
  bool all_binary = m.rows <= kBinaryRowLimit;
  for (size_t model = 0; model < used && all_binary; ++model) {
    for (const auto& s : bench.samples[model]) {
      if (s.score != 0.0 && s.score != 1.0) {
        all_binary = false;
        break;
      }
    }
  }
  m.binary = all_binary && kernel == BootstrapKernel::automatic;
  if (m.binary) {
    m.ones.assign(m.rows * width, 0);
    m.means.assign(models, 0.0);
  } else {
    m.centred.assign(m.rows * width, 0.0F);
  }
  std::vector<float> present(m.binary ? 0 : m.rows * width, 0.0F);
  std::vector<uint16_t> present_binary(m.binary ? m.rows * width : 0, 0);
  bool dense = true;
  m.has_samples.assign(models, false);
  for (size_t model = 0; model < used; ++model) {
    const auto& list = bench.samples[model];
    if (list.empty()) continue;
    m.has_samples[model] = true;
    if (list.size() != m.rows) dense = false;
    double sum = 0;
    for (const auto& s : list) sum += s.score;
    const double mean = sum / static_cast<double>(list.size());
    if (m.binary) m.means[model] = mean;
    for (const auto& s : list) {
      const size_t row = static_cast<size_t>(
          std::lower_bound(indexes.begin(), indexes.end(), s.index) - indexes.begin());
      if (m.binary) {
        m.ones[row * width + model] = s.score == 1.0 ? 1 : 0;
        present_binary[row * width + model] = 1;
      } else {
        m.centred[row * width + model] = static_cast<float>(s.score - mean);
        present[row * width + model] = 1.0F;
      }
    }
  }
  if (!dense) {
    m.present = std::move(present);
    m.present_binary = std::move(present_binary);
  }
  return m;
}

// sums[0..width) = sum over rows j of weight[j] * row j, for a row-major matrix with `width`
// columns (a multiple of kBlock). A resample is a count per example (how often it was drawn), so
// the rows are streamed in order (the prefetcher's favourite pattern) instead of being fetched at
// random. GCC's vector extension (GCC and Clang have it) keeps the block's accumulators in
// 128-bit registers on any x86-64 or ARM64, without -march flags.
//
// One template for the float matrix and the 16-bit binary one (below): a 16-byte vector of the
// element type, `kBlock` columns at a time. For the binary matrix every sum is at most the total
// count (the number of draws, <= kBinaryRowLimit), so 16-bit lanes are exact.
// (GCC ignores vector_size on a template's dependent type, so the vector types are named here.)
__extension__ using Float4 = float __attribute__((vector_size(16)));
__extension__ using Uint16x8 = uint16_t __attribute__((vector_size(16)));
template <typename Vector, typename T>
void add_weighted_rows(const T* matrix, size_t width, const std::vector<T>& weight, T* sums) {
  static_assert(sizeof(Vector) == 16 && sizeof(Vector{}[0]) == sizeof(T));
  constexpr size_t kLanes = 16 / sizeof(T);
  for (size_t block = 0; block < width; block += kBlock) {
    Vector acc[kBlock / kLanes] = {};
    const T* row = matrix + block;
    for (const T w : weight) {
      const Vector wv = Vector{} + w;  // w in every lane
      for (size_t v = 0; v < kBlock / kLanes; ++v) {
        Vector x;
        std::memcpy(&x, row + kLanes * v, sizeof x);
        acc[v] += wv * x;
      }
      row += width;
    }
    std::memcpy(sums + block, acc, sizeof acc);
  }
}

// Competition ranks (1 + the number of strictly better averages); a model without an average
// ranks after all that have one. Near-equal averages (relative 1e-12) tie, as on the leaderboard.
void rank_into(const std::vector<double>& averages, const std::vector<bool>& ranked,
               std::vector<int>& ranks) {
  int with_average = 0;
  for (const bool r : ranked) with_average += r ? 1 : 0;
  for (size_t i = 0; i < averages.size(); ++i) {
    if (!ranked[i]) {
      ranks[i] = with_average + 1;
      continue;
    }
    int better = 0;
    for (size_t j = 0; j < averages.size(); ++j) {
      if (!ranked[j] || j == i) continue;
      const double tolerance = 1e-12 * std::max(std::fabs(averages[i]), std::fabs(averages[j]));
      if (averages[j] > averages[i] + tolerance) ++better;
    }
    ranks[i] = 1 + better;
  }
}

}  // namespace

double mean(std::span<const double> values) {
  if (values.empty()) return 0;
  return sum_of(values) / static_cast<double>(values.size());
}

std::optional<double> standard_error(std::span<const double> values) {
  const size_t n = values.size();
  if (n < 2) return std::nullopt;
  const double m = mean(values);
  double squares = 0;
  for (const double v : values) squares += (v - m) * (v - m);
  const double sd = std::sqrt(squares / static_cast<double>(n - 1));
  return sd / std::sqrt(static_cast<double>(n));
}

std::optional<double> clustered_standard_error(std::span<const double> values,
                                               std::span<const uint32_t> clusters) {
  if (values.size() != clusters.size() || values.empty()) return std::nullopt;
  const double m = mean(values);
  std::unordered_map<uint32_t, double> residual_sums;
  for (size_t i = 0; i < values.size(); ++i) residual_sums[clusters[i]] += values[i] - m;
  const double groups = static_cast<double>(residual_sums.size());
  if (residual_sums.size() < 2) return std::nullopt;
  double squares = 0;
  for (const auto& [cluster, sum] : residual_sums) squares += sum * sum;
  return std::sqrt(groups / (groups - 1)) * std::sqrt(squares) / static_cast<double>(values.size());
}

std::array<double, 2> ci95(double value, double stderr_value) {
  return {value - kZ95 * stderr_value, value + kZ95 * stderr_value};
}

std::optional<double> average_stderr(std::span<const std::optional<double>> stderrs) {
  if (stderrs.empty()) return std::nullopt;
  double squares = 0;
  for (const auto& s : stderrs) {
    if (!s) return std::nullopt;
    squares += *s * *s;
  }
  return std::sqrt(squares) / static_cast<double>(stderrs.size());
}

double mcnemar_exact_p(int64_t b, int64_t c) {
  if (b < 0 || c < 0) return 1.0;
  const int64_t n = b + c;
  if (n == 0) return 1.0;
  const boost::math::binomial_distribution<double> dist(static_cast<double>(n), 0.5);
  const double tail = boost::math::cdf(dist, static_cast<double>(std::min(b, c)));
  return std::min(1.0, 2.0 * tail);
}

double students_t_two_sided_p(double t, double df) {
  if (!std::isfinite(t)) return std::isnan(t) ? 1.0 : 0.0;
  const boost::math::students_t_distribution<double> dist(df);
  return std::min(1.0, 2.0 * boost::math::cdf(boost::math::complement(dist, std::fabs(t))));
}

std::vector<std::optional<double>> holm_adjust(std::span<const std::optional<double>> p_values) {
  std::vector<size_t> order;
  for (size_t i = 0; i < p_values.size(); ++i) {
    if (p_values[i]) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return *p_values[x] < *p_values[y]; });
  std::vector<std::optional<double>> adjusted(p_values.size());
  const size_t family = order.size();
  double running = 0;
  for (size_t k = 0; k < family; ++k) {
    const double scaled = static_cast<double>(family - k) * *p_values[order[k]];
    running = std::max(running, std::min(1.0, scaled));
    adjusted[order[k]] = running;
  }
  return adjusted;
}

PairedComparison paired_compare(std::span<const double> a, std::span<const double> b) {
  PairedComparison out;
  const size_t n = std::min(a.size(), b.size());
  out.n = static_cast<int64_t>(n);
  if (n == 0) return out;
  std::vector<double> d(n);
  bool binary = true;
  for (size_t i = 0; i < n; ++i) {
    d[i] = a[i] - b[i];
    binary = binary && (a[i] == 0 || a[i] == 1) && (b[i] == 0 || b[i] == 1);
    if (a[i] == 1 && b[i] == 0) ++out.a_only;
    if (a[i] == 0 && b[i] == 1) ++out.b_only;
  }
  out.diff = mean(d);
  out.stderr_value = standard_error(d);
  if (out.stderr_value) out.ci95 = ci95(out.diff, *out.stderr_value);
  if (binary) {
    out.test = "mcnemar";
    out.p_value = mcnemar_exact_p(out.a_only, out.b_only);
    return out;
  }
  out.a_only = out.b_only = 0;
  if (!out.stderr_value) return out;  // one pair: no variance, no test
  out.test = "paired_t";
  if (*out.stderr_value == 0) {
    // Every difference is the same: no evidence of a difference if it is 0, certainty otherwise.
    out.p_value = out.diff == 0 ? 1.0 : 0.0;
    return out;
  }
  out.p_value = students_t_two_sided_p(out.diff / *out.stderr_value, static_cast<double>(n - 1));
  return out;
}

std::vector<std::array<int, 2>> bootstrap_rank_intervals(
    size_t models, const std::vector<RankBenchmark>& benchmarks, int resamples, uint64_t seed,
    BootstrapKernel kernel) {
  std::vector<std::array<int, 2>> intervals(models, {0, 0});
  if (models == 0) return intervals;
  const size_t width = (models + kBlock - 1) / kBlock * kBlock;

  // Models with a missing score have no average, in every resample: they rank last throughout.
  std::vector<bool> ranked(models, !benchmarks.empty());
  std::vector<double> fixed_sum(models, 0.0);  // sum of values over benchmarks
  for (const auto& bench : benchmarks) {
    for (size_t m = 0; m < models; ++m) {
      if (m >= bench.values.size() || !bench.values[m]) {
        ranked[m] = false;
      } else {
        fixed_sum[m] += *bench.values[m];
      }
    }
  }
  std::vector<BenchmarkMatrix> matrices;
  matrices.reserve(benchmarks.size());
  for (const auto& bench : benchmarks)
    matrices.push_back(build_matrix(bench, models, width, kernel));

  const size_t draws_total = static_cast<size_t>(std::max(resamples, 1));
  std::vector<int> ranks_by_model(models * draws_total);
  std::vector<double> averages(models);
  std::vector<double> total(models);
  std::vector<int> ranks(models);
  std::vector<float> sums(width);
  std::vector<float> counts(width);
  std::vector<float> drawn;  // per example of the benchmark: times drawn in this resample
  std::vector<uint16_t> drawn_binary;
  std::vector<uint16_t> ones(width);
  std::vector<uint16_t> counts_binary(width);
  Xoshiro256 rng(seed);
  const double benchmark_count = static_cast<double>(std::max<size_t>(benchmarks.size(), 1));

  for (size_t r = 0; r < draws_total; ++r) {
    total = fixed_sum;
    for (const auto& matrix : matrices) {
      if (matrix.rows == 0) continue;
      if (matrix.binary) {
        // The same draws as below (one rng.below per example, in order), as integer counts.
        drawn_binary.assign(matrix.rows, 0);
        for (size_t k = 0; k < matrix.rows; ++k) ++drawn_binary[rng.below(matrix.rows)];
        add_weighted_rows<Uint16x8>(matrix.ones.data(), width, drawn_binary, ones.data());
        const bool dense = matrix.present_binary.empty();
        if (!dense) {
          add_weighted_rows<Uint16x8>(matrix.present_binary.data(), width, drawn_binary,
                                      counts_binary.data());
        }
        for (size_t m = 0; m < models; ++m) {
          if (!ranked[m] || !matrix.has_samples[m]) continue;
          const double n = dense ? static_cast<double>(matrix.rows) : counts_binary[m];
          if (n == 0) continue;
          total[m] += static_cast<double>(ones[m]) / n - matrix.means[m];
        }
        continue;
      }
      // Draw rows-many examples with replacement, as a count per example.
      drawn.assign(matrix.rows, 0.0F);
      for (size_t k = 0; k < matrix.rows; ++k) drawn[rng.below(matrix.rows)] += 1.0F;
      add_weighted_rows<Float4>(matrix.centred.data(), width, drawn, sums.data());
      const bool dense = matrix.present.empty();
      if (!dense) add_weighted_rows<Float4>(matrix.present.data(), width, drawn, counts.data());
      for (size_t m = 0; m < models; ++m) {
        if (!ranked[m] || !matrix.has_samples[m]) continue;
        const double n = dense ? static_cast<double>(matrix.rows) : counts[m];
        if (n == 0) continue;  // none of its examples drawn: keep its value
        // The mean of its drawn scores minus the mean of all of them.
        total[m] += static_cast<double>(sums[m]) / n;
      }
    }
    for (size_t m = 0; m < models; ++m) averages[m] = total[m] / benchmark_count;
    rank_into(averages, ranked, ranks);
    for (size_t m = 0; m < models; ++m) ranks_by_model[m * draws_total + r] = ranks[m];
  }

  // Nearest-rank percentiles: the ceil(p * R)-th smallest rank.
  const auto nearest = [&](double p) {
    const auto k = static_cast<size_t>(std::ceil(p * static_cast<double>(draws_total)));
    return std::clamp<size_t>(k, 1, draws_total) - 1;
  };
  const size_t low = nearest(0.025);
  const size_t high = nearest(0.975);
  for (size_t m = 0; m < models; ++m) {
    auto begin = ranks_by_model.begin() + static_cast<std::ptrdiff_t>(m * draws_total);
    std::sort(begin, begin + static_cast<std::ptrdiff_t>(draws_total));
    intervals[m] = {begin[static_cast<std::ptrdiff_t>(low)],
                    begin[static_cast<std::ptrdiff_t>(high)]};
  }
  return intervals;
}

}  // namespace evald::stats
