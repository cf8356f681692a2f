#include "independence/matching.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

namespace evald::independence {
namespace {

// GCC/Clang generic vectors: four floats, lowered to SSE (or NEON) without -march flags. Plain
// loops with one float accumulator are not vectorised at -O2, because that would reorder the
// additions.
using Float4 = float __attribute__((vector_size(16)));

Float4 load4(const float* p) {
  Float4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

float sum4(Float4 v) {
  return (v[0] + v[1]) + (v[2] + v[3]);
}

float dot(const float* x, const float* y, int64_t stride) {
  Float4 s = {0, 0, 0, 0};
  for (int64_t k = 0; k < stride; k += 4) s += load4(x + k) * load4(y + k);
  return sum4(s);
}

// A block of A units against all of B. Each dot product is computed the same way for every unit
// of B, so relabelling B's units relabels the matches and changes nothing else.
void match_block(const Units& a, const Units& b, int64_t first, int64_t last,
                 std::vector<int64_t>& out) {
  constexpr int64_t kGroup = 4;
  const int64_t stride = a.stride;
  std::vector<float> best(static_cast<size_t>(last - first),
                          -std::numeric_limits<float>::infinity());
  std::vector<int64_t> index(best.size(), -1);
  std::vector<char> tied(best.size(), 0);
  const auto record = [&](int64_t i, int64_t j, float score) {
    const auto k = static_cast<size_t>(i - first);
    if (score > best[k]) {
      best[k] = score;
      index[k] = j;
      tied[k] = 0;
    } else if (score == best[k]) {
      tied[k] = 1;
    }
  };
  // Two units of B against four of A per pass: eight accumulators, six loads per eight
  // multiply-adds. Every path (this kernel, dot() for the leftovers) sums the same products in
  // the same order, so a score depends only on the two units and never on a unit's label: that
  // is what lets a relabelling of B's units relabel the matches and change nothing else.
  int64_t j = 0;
  for (; j + 2 <= b.count; j += 2) {
    const float* b0 = b.unit(j);
    const float* b1 = b0 + stride;
    int64_t i = first;
    for (; i + kGroup <= last; i += kGroup) {
      const float* a0 = a.unit(i);
      const float* a1 = a0 + stride;
      const float* a2 = a1 + stride;
      const float* a3 = a2 + stride;
      Float4 s00 = {0, 0, 0, 0}, s10 = s00, s20 = s00, s30 = s00;
      Float4 s01 = s00, s11 = s00, s21 = s00, s31 = s00;
      for (int64_t k = 0; k < stride; k += 4) {
        const Float4 x0 = load4(b0 + k);
        const Float4 x1 = load4(b1 + k);
        Float4 y = load4(a0 + k);
        s00 += y * x0;
        s01 += y * x1;
        y = load4(a1 + k);
        s10 += y * x0;
        s11 += y * x1;
        y = load4(a2 + k);
        s20 += y * x0;
        s21 += y * x1;
        y = load4(a3 + k);
        s30 += y * x0;
        s31 += y * x1;
      }
      record(i, j, sum4(s00));
      record(i + 1, j, sum4(s10));
      record(i + 2, j, sum4(s20));
      record(i + 3, j, sum4(s30));
      record(i, j + 1, sum4(s01));
      record(i + 1, j + 1, sum4(s11));
      record(i + 2, j + 1, sum4(s21));
      record(i + 3, j + 1, sum4(s31));
    }
    for (; i < last; ++i) {
      record(i, j, dot(a.unit(i), b0, stride));
      record(i, j + 1, dot(a.unit(i), b1, stride));
    }
  }
  for (; j < b.count; ++j) {
    for (int64_t i = first; i < last; ++i) record(i, j, dot(a.unit(i), b.unit(j), stride));
  }
  for (size_t k = 0; k < best.size(); ++k) {
    out[static_cast<size_t>(first) + k] = tied[k] != 0 ? -1 : index[k];
  }
}

}  // namespace

Units make_units(Matrix matrix, Axis axis, const std::vector<int64_t>* subset) {
  Units units;
  const bool rows = axis == Axis::kRows;
  const int64_t total = rows ? matrix.rows : matrix.cols;
  units.dim = rows ? matrix.cols : matrix.rows;
  units.stride = (units.dim + 3) / 4 * 4;
  units.count = subset != nullptr ? static_cast<int64_t>(subset->size()) : total;
  const auto pick = [&](int64_t u) {
    return subset != nullptr ? (*subset)[static_cast<size_t>(u)] : u;
  };
  if (rows && subset == nullptr && units.stride == units.dim) {
    units.data = std::move(matrix.data);  // already one unit per row: normalise in place
  } else {
    units.data.assign(static_cast<size_t>(units.count * units.stride), 0.0f);
    if (rows) {
      for (int64_t u = 0; u < units.count; ++u) {
        std::memcpy(units.data.data() + u * units.stride, matrix.row(pick(u)),
                    static_cast<size_t>(units.dim) * sizeof(float));
      }
    } else if (subset == nullptr) {
      // Transpose in tiles so both sides stay in cache.
      constexpr int64_t kTile = 64;
      for (int64_t r0 = 0; r0 < matrix.rows; r0 += kTile) {
        for (int64_t c0 = 0; c0 < matrix.cols; c0 += kTile) {
          for (int64_t r = r0; r < std::min(r0 + kTile, matrix.rows); ++r) {
            const float* source = matrix.row(r);
            for (int64_t c = c0; c < std::min(c0 + kTile, matrix.cols); ++c) {
              units.data[static_cast<size_t>(c * units.stride + r)] = source[c];
            }
          }
        }
      }
    } else {
      for (int64_t r = 0; r < matrix.rows; ++r) {
        const float* source = matrix.row(r);
        for (int64_t u = 0; u < units.count; ++u) {
          units.data[static_cast<size_t>(u * units.stride + r)] = source[pick(u)];
        }
      }
    }
  }
  for (int64_t u = 0; u < units.count; ++u) {
    float* v = units.data.data() + u * units.stride;
    double norm = 0.0;
    for (int64_t k = 0; k < units.dim; ++k) norm += static_cast<double>(v[k]) * v[k];
    if (norm <= 0.0) continue;
    const auto scale = static_cast<float>(1.0 / std::sqrt(norm));
    for (int64_t k = 0; k < units.dim; ++k) v[k] *= scale;
  }
  return units;
}

std::vector<int64_t> sample_units(int64_t n, int64_t m, uint64_t seed) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
  if (m >= n) return all;
  // splitmix64 and a partial Fisher-Yates shuffle: the same sample on every platform.
  uint64_t state = seed;
  const auto next = [&state] {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (int64_t i = 0; i < m; ++i) {
    const auto remaining = static_cast<uint64_t>(n - i);
    const auto j = i + static_cast<int64_t>(next() % remaining);
    std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(j)]);
  }
  all.resize(static_cast<size_t>(m));
  return all;
}

std::vector<int64_t> best_matches(const Units& a, const Units& b, unsigned threads) {
  std::vector<int64_t> out(static_cast<size_t>(a.count), -1);
  if (a.count == 0 || b.count == 0) return out;
  // Blocks of A small enough to stay in L2 while all of B streams past once per block.
  const int64_t block =
      std::max<int64_t>(4, std::min<int64_t>(32, (256 << 10) / (4 * a.stride) / 4 * 4));
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t first = 0; first < a.count; first += block) {
    blocks.emplace_back(first, std::min(a.count, first + block));
  }
  const auto workers = static_cast<size_t>(
      std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(blocks.size()))));
  const auto run = [&](size_t worker) {
    for (size_t k = worker; k < blocks.size(); k += workers) {
      match_block(a, b, blocks[k].first, blocks[k].second, out);
    }
  };
  std::vector<std::thread> pool;
  for (size_t w = 1; w < workers; ++w) pool.emplace_back(run, w);
  run(0);
  for (auto& t : pool) t.join();
  return out;
}

}  // namespace evald::independence
