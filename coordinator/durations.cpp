#include "coordinator/durations.hpp"

#include <algorithm>
#include <cmath>

namespace evald::coordinator {
namespace {

std::optional<double> median_of(std::vector<double> values) {
  if (values.empty()) return std::nullopt;
  const size_t mid = values.size() / 2;
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(mid), values.end());
  const double upper = values[mid];
  if (values.size() % 2 == 1) return upper;
  const double lower =
      *std::max_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(mid));
  return (lower + upper) / 2.0;
}

std::optional<double> median_of(const std::vector<float>& values) {
  return median_of(std::vector<double>(values.begin(), values.end()));
}

}  // namespace

void DurationSamples::Ring::add(float v) {
  if (values.size() < kKept) {
    values.push_back(v);
  } else {
    values[next] = v;
  }
  next = (next + 1) % kKept;
}

void DurationSamples::add(double seconds_per_example, bool cold) {
  // Worker-reported durations: a value that is no time at all says nothing.
  if (!std::isfinite(seconds_per_example) || seconds_per_example < 0) return;
  (cold ? cold_ : warm_).add(static_cast<float>(seconds_per_example));
}

std::optional<double> DurationSamples::median() const {
  if (warm_.size() > 0) return median_of(warm_.values);
  return median_of(cold_.values);
}

std::vector<double> expected_shard_seconds(uint32_t models, uint32_t benchmarks,
                                           const std::vector<GroupTimes>& groups,
                                           std::vector<std::optional<double>>* from_finished) {
  std::vector<double> out(groups.size(), kDefaultShardSeconds);
  if (from_finished != nullptr) from_finished->assign(groups.size(), std::nullopt);
  if (groups.size() != size_t{models} * benchmarks) return out;
  auto at = [&](uint32_t m, uint32_t b) -> const GroupTimes& { return groups[m * benchmarks + b]; };
  auto size_of = [](const GroupTimes& g) {
    return static_cast<double>(std::max<uint32_t>(1, g.shard_size));
  };

  // A benchmark's per-example time: the median over the models that finished some of it.
  std::vector<std::optional<double>> benchmark_time(benchmarks);
  for (uint32_t b = 0; b < benchmarks; ++b) {
    std::vector<double> seen;
    for (uint32_t m = 0; m < models; ++m) {
      if (at(m, b).finished_per_example) seen.push_back(*at(m, b).finished_per_example);
    }
    benchmark_time[b] = median_of(std::move(seen));
  }
  // A model's factor (its median ratio to the benchmarks' times), its median full shard, and the
  // least the running attempts say of both.
  std::vector<std::optional<double>> factor(models);
  std::vector<std::optional<double>> model_shard(models);
  std::vector<double> factor_floor(models, 0.0);
  std::vector<double> model_shard_floor(models, 0.0);
  std::vector<double> all_shards;
  for (uint32_t m = 0; m < models; ++m) {
    std::vector<double> ratios;
    std::vector<double> shards;
    for (uint32_t b = 0; b < benchmarks; ++b) {
      const GroupTimes& g = at(m, b);
      const bool has_reference = benchmark_time[b] && *benchmark_time[b] > 0;
      if (g.finished_per_example) {
        if (has_reference) ratios.push_back(*g.finished_per_example / *benchmark_time[b]);
        shards.push_back(*g.finished_per_example * size_of(g));
      } else if (g.running_per_example > 0) {
        if (has_reference) {
          factor_floor[m] = std::max(factor_floor[m], g.running_per_example / *benchmark_time[b]);
        }
        model_shard_floor[m] = std::max(model_shard_floor[m], g.running_per_example * size_of(g));
      }
    }
    factor[m] = median_of(ratios);
    model_shard[m] = median_of(shards);
    all_shards.insert(all_shards.end(), shards.begin(), shards.end());
  }
  const double campaign_shard = median_of(std::move(all_shards)).value_or(kDefaultShardSeconds);

  for (uint32_t m = 0; m < models; ++m) {
    const double f = std::max(factor[m].value_or(1.0), factor_floor[m]);
    for (uint32_t b = 0; b < benchmarks; ++b) {
      const GroupTimes& g = at(m, b);
      double& e = out[m * benchmarks + b];
      std::optional<double> finished;
      if (g.finished_per_example) {
        e = *g.finished_per_example * size_of(g);
        if (from_finished != nullptr) {
          (*from_finished)[m * benchmarks + b] = std::max(e, kMinShardSeconds);
        }
        continue;
      }
      if (benchmark_time[b] && *benchmark_time[b] > 0) {
        e = f * *benchmark_time[b] * size_of(g);
        finished = factor[m].value_or(1.0) * *benchmark_time[b] * size_of(g);
      } else {
        e = std::max(model_shard[m].value_or(campaign_shard), model_shard_floor[m]);
        finished = model_shard[m];
      }
      e = std::max(e, g.running_per_example * size_of(g));
      if (from_finished != nullptr && finished) {
        (*from_finished)[m * benchmarks + b] = std::max(*finished, kMinShardSeconds);
      }
    }
  }
  // Shards that take no measurable time (the noop runner) still hold a slot: weighed by count.
  for (double& e : out) e = std::max(e, kMinShardSeconds);
  return out;
}

}  // namespace evald::coordinator
