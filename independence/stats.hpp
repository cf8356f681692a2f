// The p-values of the independence check, all in natural-log space so that the extreme values a
// copied tensor produces (far below the smallest double) still combine correctly.
#pragma once

#include <cstdint>
#include <vector>

namespace evald::independence {

// log P(C >= c) bounded from above for C = the number of units i in a sample of m (out of n)
// whose best match is i itself, when the matching is a uniformly random relabelling of the n
// units (the null hypothesis): the union bound over the c-subsets, C(m, c) * (n - c)! / n!,
// capped at 1. A conservative, valid p-value for any matching that is not one-to-one.
double log_fixed_point_tail(int64_t c, int64_t m, int64_t n);

// Fisher's method: the upper tail of the chi-square distribution with 2k degrees of freedom at
// -2 * sum(log p), computed with the closed form for even degrees of freedom,
// exp(-x/2) * sum_{j<k} (x/2)^j / j!. Input and output are log p-values. Empty input gives 0.
double log_fisher(const std::vector<double>& log_p);

// Bonferroni: k * min p, capped at 1. Valid however the k p-values depend on each other.
double log_bonferroni(const std::vector<double>& log_p);

// exp(log_p), or the smallest positive double where that underflows, so a p-value shown or
// compared with alpha is never exactly 0.
double p_from_log(double log_p);

}  // namespace evald::independence
