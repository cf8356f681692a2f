#include "independence/stats.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace evald::independence {

double log_fixed_point_tail(int64_t c, int64_t m, int64_t n) {
  if (c <= 0) return 0.0;
  if (c > m || c > n) return -std::numeric_limits<double>::infinity();
  const auto lg = [](int64_t x) { return std::lgamma(static_cast<double>(x) + 1.0); };
  const double log_bound = lg(m) - lg(c) - lg(m - c) + lg(n - c) - lg(n);
  return std::min(0.0, log_bound);
}

double log_fisher(const std::vector<double>& log_p) {
  if (log_p.empty()) return 0.0;
  double half_x = 0.0;  // x / 2 = -sum(log p)
  for (const double value : log_p) half_x -= value;
  if (!(half_x > 0.0)) return 0.0;
  if (std::isinf(half_x)) return -std::numeric_limits<double>::infinity();
  // log sum_{j<k} (x/2)^j / j! by log-sum-exp: the terms grow up to j ~ x/2, then shrink.
  const double log_half_x = std::log(half_x);
  double largest = -std::numeric_limits<double>::infinity();
  std::vector<double> terms(log_p.size());
  for (size_t j = 0; j < terms.size(); ++j) {
    terms[j] = static_cast<double>(j) * log_half_x - std::lgamma(static_cast<double>(j) + 1.0);
    largest = std::max(largest, terms[j]);
  }
  double sum = 0.0;
  for (const double term : terms) sum += std::exp(term - largest);
  return std::min(0.0, -half_x + largest + std::log(sum));
}

double log_bonferroni(const std::vector<double>& log_p) {
  if (log_p.empty()) return 0.0;
  const double smallest = *std::min_element(log_p.begin(), log_p.end());
  return std::min(0.0, std::log(static_cast<double>(log_p.size())) + smallest);
}

double p_from_log(double log_p) {
  const double p = std::exp(log_p);
  return p > 0.0 ? p : std::numeric_limits<double>::denorm_min();
}

}  // namespace evald::independence
