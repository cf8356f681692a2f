// Matching the hidden units of two weight matrices by cosine similarity. A unit is a row or a
// column of a tensor (see check.cpp for which); a matching maps each sampled unit of A to the
// unit of B most similar to it.
#pragma once

#include <cstdint>
#include <vector>

#include "independence/safetensors.hpp"

namespace evald::independence {

enum class Axis { kRows, kColumns };

// Units as unit-length vectors, one per row of `data`, `stride` floats apart (dim rounded up
// to a multiple of 4 with zeros, which changes no dot product). A unit that is all zeros stays
// all zeros.
struct Units {
  int64_t count = 0;
  int64_t dim = 0;
  int64_t stride = 0;
  std::vector<float> data;
  const float* unit(int64_t i) const { return data.data() + i * stride; }
};

// The units of `matrix` along `axis`, normalised; with `subset`, only those units, in that
// order. Takes the matrix by value so that the common case (all rows) reuses its memory.
Units make_units(Matrix matrix, Axis axis, const std::vector<int64_t>* subset = nullptr);

// `m` distinct unit indices out of `n` (all of them, in order, when m >= n), drawn from `seed`
// alone: the choice never looks at the weights, which is what keeps the test valid.
std::vector<int64_t> sample_units(int64_t n, int64_t m, uint64_t seed);

// For each unit of `a`, the index of the unit of `b` with the largest cosine similarity, or -1
// when that maximum is shared by two or more units of `b` (an all-zero unit of `a` ties
// everywhere). Ties are dropped rather than broken by index, because breaking them by index
// would favour some labels over others and bias the test. Uses up to `threads` threads.
std::vector<int64_t> best_matches(const Units& a, const Units& b, unsigned threads);

}  // namespace evald::independence
