#include "coordinator/sample_stats.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <unordered_map>

namespace evald::coordinator {
namespace {

uint64_t mix(uint64_t h, uint64_t v) {
  // splitmix64's finalizer over h ^ v: cheap, and a changed attempt id changes the whole word.
  uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// What the cached statistics of a cell depend on: which shards are counted and under which
// attempt (a rerun that succeeds again has a new attempt id, and so new samples).
uint64_t cell_fingerprint(const Group& g) {
  uint64_t h = 0x6576616c64ULL;
  uint64_t succeeded = 0;
  for (uint32_t i = 0; i < g.shards.size(); ++i) {
    const Shard& s = g.shards[i];
    if (s.state != ShardState::kSucceeded) continue;
    h = mix(h, i);
    h = mix(h, s.attempt_id);
    ++succeeded;
  }
  return mix(h, succeeded);
}

std::optional<double> score_of(const nlohmann::json& sample) {
  const auto it = sample.find("score");
  if (it == sample.end()) return std::nullopt;
  if (it->is_boolean()) return it->get<bool>() ? 1.0 : 0.0;
  if (!it->is_number()) return std::nullopt;
  const double v = it->get<double>();
  if (!std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<int64_t> index_of(const nlohmann::json& sample) {
  const auto it = sample.find("index");
  if (it == sample.end()) return std::nullopt;
  if (it->is_number_unsigned()) {
    const auto v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  return std::nullopt;
}

nlohmann::json number_or_null(const std::optional<double>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

nlohmann::json interval_or_null(const std::optional<std::array<double, 2>>& v) {
  return v ? nlohmann::json::array({(*v)[0], (*v)[1]}) : nlohmann::json(nullptr);
}

// Cluster keys compare JSON values: a type letter and the value, so "1" and 1 differ.
std::string cluster_key(const nlohmann::json& v) {
  if (v.is_string()) return "s" + v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "b1" : "b0";
  if (v.is_number_unsigned()) return "u" + std::to_string(v.get<uint64_t>());
  if (v.is_number_integer()) return "i" + std::to_string(v.get<int64_t>());
  return "j" + v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

SampleFields fields_of(const nlohmann::json& sample) {
  SampleFields out;
  out.score = score_of(sample);
  out.index = index_of(sample);
  if (const auto it = sample.find("cluster"); it != sample.end() && !it->is_null()) {
    out.cluster = cluster_key(*it);
  }
  return out;
}

// Reads the samples of a blob without building a document: a million samples cost a third of
// what parsing them into nlohmann::json does. It gives up (and the caller parses the document)
// on anything it does not read the same way: a cluster that is an object or an array.
class SampleReader : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit SampleReader(std::vector<SampleFields>& out) : out_(out) {}
  bool gave_up() const { return gave_up_; }

  bool null() override { return value_done(); }
  bool boolean(bool v) override {
    if (at_field()) {
      if (key_ == Key::kScore) current_.score = v ? 1.0 : 0.0;
      if (key_ == Key::kCluster) current_.cluster = v ? "b1" : "b0";
    }
    return value_done();
  }
  bool number_integer(number_integer_t v) override {
    if (at_field()) {
      if (key_ == Key::kScore) current_.score = static_cast<double>(v);
      if (key_ == Key::kIndex) current_.index = v;
      if (key_ == Key::kCluster) current_.cluster = "i" + std::to_string(v);
    }
    return value_done();
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (at_field()) {
      if (key_ == Key::kScore) current_.score = static_cast<double>(v);
      if (key_ == Key::kIndex && v <= static_cast<uint64_t>(INT64_MAX)) {
        current_.index = static_cast<int64_t>(v);
      }
      if (key_ == Key::kCluster) current_.cluster = "u" + std::to_string(v);
    }
    return value_done();
  }
  bool number_float(number_float_t v, const string_t& /*raw*/) override {
    if (at_field()) {
      if (key_ == Key::kScore && std::isfinite(v)) current_.score = v;
      if (key_ == Key::kCluster) current_.cluster = cluster_key(nlohmann::json(v));
    }
    return value_done();
  }
  bool string(string_t& v) override {
    if (at_field() && key_ == Key::kCluster) current_.cluster = "s" + v;
    return value_done();
  }
  bool binary(binary_t& /*v*/) override { return value_done(); }
  bool start_object(std::size_t /*elements*/) override {
    if (depth_ == 0) return false;  // not an array
    if (at_field() && key_ == Key::kCluster) return give_up();
    if (depth_ == 1) {
      current_ = {};
      key_ = Key::kOther;
    }
    ++depth_;
    return true;
  }
  bool key(string_t& k) override {
    if (depth_ == 2) {
      key_ = k == "score"     ? Key::kScore
             : k == "index"   ? Key::kIndex
             : k == "cluster" ? Key::kCluster
                              : Key::kOther;
    }
    return true;
  }
  bool end_object() override {
    --depth_;
    if (depth_ == 1) out_.push_back(std::move(current_));
    return true;
  }
  bool start_array(std::size_t /*elements*/) override {
    if (depth_ == 0) {
      depth_ = 1;
      return true;
    }
    if (at_field() && key_ == Key::kCluster) return give_up();
    ++depth_;
    return true;
  }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& /*error*/) override {
    return false;
  }

 private:
  enum class Key { kOther, kScore, kIndex, kCluster };
  // A value directly inside a sample object (not nested deeper).
  bool at_field() const { return depth_ == 2; }
  bool value_done() {
    // A top-level scalar or a scalar element of the top array is not a sample: skip it.
    return depth_ > 0;
  }
  bool give_up() {
    gave_up_ = true;
    return false;
  }
  std::vector<SampleFields>& out_;
  SampleFields current_;
  int depth_ = 0;
  Key key_ = Key::kOther;
  bool gave_up_ = false;
};

}  // namespace

std::optional<std::vector<SampleFields>> read_sample_fields(const std::string& blob) {
  std::vector<SampleFields> out;
  SampleReader reader(out);
  if (nlohmann::json::sax_parse(blob, &reader)) return out;
  if (!reader.gave_up()) return std::nullopt;
  auto parsed = nlohmann::json::parse(blob, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_array()) return std::nullopt;
  out.clear();
  for (const auto& sample : parsed) {
    if (sample.is_object()) out.push_back(fields_of(sample));
  }
  return out;
}

SampleStats::SampleStats(const Store& store, Metrics& metrics) : store_(store) {
  unreadable_ = &prometheus::BuildCounter()
                     .Name("evald_samples_unreadable_total")
                     .Help(
                         "Stored sample blobs of succeeded shards that did not parse as a JSON "
                         "array (left out of every statistic)")
                     .Register(*metrics.registry)
                     .Add({});
  cached_gauge_ = &prometheus::BuildGauge()
                       .Name("evald_samples_cached")
                       .Help("Per-example scores held in memory for the statistics cache")
                       .Register(*metrics.registry)
                       .Add({});
  load_seconds_ =
      &prometheus::BuildHistogram()
           .Name("evald_samples_load_seconds")
           .Help("Time to read and parse the samples of one model x benchmark cell")
           .Register(*metrics.registry)
           .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.01, 0.1, 0.5, 1, 5, 30});
}

CellSamples SampleStats::load(const Campaign& c, uint32_t group, uint64_t fingerprint) {
  const auto started = std::chrono::steady_clock::now();
  const Group& g = c.groups[group];
  CellSamples cell;
  cell.fingerprint = fingerprint;
  std::vector<double> scores;
  std::vector<uint32_t> clusters;
  std::unordered_map<std::string, uint32_t> cluster_ids;
  bool any_cluster = false;
  for (uint32_t i = 0; i < g.shards.size(); ++i) {
    if (g.shards[i].state != ShardState::kSucceeded) continue;
    const auto blob = store_.get_samples(ShardKey{c.key, group, i});
    if (!blob) continue;
    // The blob is what the worker re-serialized from a depth-checked document; a parse failure
    // means a damaged store, which is worth a log line and a metric, not a failed request.
    const auto samples = read_sample_fields(*blob);
    if (!samples) {
      unreadable_->Increment();
      spdlog::error("samples_unreadable campaign={} group={} shard={} bytes={}", c.id, group, i,
                    blob->size());
      continue;
    }
    for (const auto& sample : *samples) {
      if (!sample.score) continue;
      scores.push_back(*sample.score);
      uint32_t cluster_id = UINT32_MAX;  // none: a cluster of its own (numbered below)
      if (sample.cluster) {
        any_cluster = true;
        cluster_id =
            cluster_ids.try_emplace(*sample.cluster, static_cast<uint32_t>(cluster_ids.size()))
                .first->second;
      }
      clusters.push_back(cluster_id);
      if (sample.index) cell.indexed.push_back({*sample.index, *sample.score});
    }
  }
  cell.n = static_cast<int64_t>(scores.size());
  cell.mean = stats::mean(scores);
  if (any_cluster) {
    uint32_t next = static_cast<uint32_t>(cluster_ids.size());
    for (auto& id : clusters) {
      if (id == UINT32_MAX) id = next++;
    }
    cell.clustered = true;
    cell.stderr_value = stats::clustered_standard_error(scores, clusters);
  } else {
    cell.stderr_value = stats::standard_error(scores);
  }
  std::stable_sort(
      cell.indexed.begin(), cell.indexed.end(),
      [](const stats::IndexedScore& a, const stats::IndexedScore& b) { return a.index < b.index; });
  cell.indexed.erase(std::unique(cell.indexed.begin(), cell.indexed.end(),
                                 [](const stats::IndexedScore& a, const stats::IndexedScore& b) {
                                   return a.index == b.index;
                                 }),
                     cell.indexed.end());
  cell.indexed.shrink_to_fit();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  load_seconds_->Observe(seconds);
  spdlog::debug("samples_loaded campaign={} group={} samples={} seconds={:.3f}", c.id, group,
                cell.n, seconds);
  return cell;
}

const CellSamples& SampleStats::cell(const Campaign& c, uint32_t group) {
  CampaignCache& cache = campaigns_[c.key];
  cache.last_used = ++tick_;
  const uint64_t fingerprint = cell_fingerprint(c.groups[group]);
  auto it = cache.cells.find(group);
  if (it != cache.cells.end() && it->second.fingerprint == fingerprint) return it->second;
  if (it != cache.cells.end()) {
    cached_samples_ -= it->second.indexed.size();
    cache.cells.erase(it);
  }
  auto [entry, inserted] = cache.cells.emplace(group, load(c, group, fingerprint));
  cached_samples_ += entry->second.indexed.size();
  evict_over_bound(c.key);
  cached_gauge_->Set(static_cast<double>(cached_samples_));
  return entry->second;
}

void SampleStats::evict_over_bound(uint32_t keep_campaign) {
  while (cached_samples_ > kMaxCachedSamples) {
    auto victim = campaigns_.end();
    for (auto it = campaigns_.begin(); it != campaigns_.end(); ++it) {
      if (it->first == keep_campaign) continue;
      if (victim == campaigns_.end() || it->second.last_used < victim->second.last_used) {
        victim = it;
      }
    }
    if (victim == campaigns_.end()) return;  // one campaign alone is over the bound: keep it
    for (const auto& [group, cell] : victim->second.cells) cached_samples_ -= cell.indexed.size();
    spdlog::info("samples_cache_evicted campaign_key={} cached_samples={}", victim->first,
                 cached_samples_);
    campaigns_.erase(victim);
  }
}

const std::vector<std::array<int, 2>>& SampleStats::rank_intervals(const Campaign& c) {
  const size_t models = c.spec.models.size();
  const size_t benchmarks = c.spec.benchmarks.size();
  // The key: every cell's fingerprint and leaderboard value (the value is the bootstrap's centre).
  uint64_t fingerprint = 0x72616e6bULL;
  for (uint32_t gi = 0; gi < c.groups.size(); ++gi) {
    const Group& g = c.groups[gi];
    fingerprint = mix(fingerprint, this->cell(c, gi).fingerprint);
    const auto value = g.cell.mean(c.spec.benchmarks[g.benchmark].metric);
    fingerprint = mix(fingerprint, value ? std::bit_cast<uint64_t>(*value) : 1);
  }
  CampaignCache& cache = campaigns_[c.key];
  if (cache.ranks_valid && cache.ranks_fingerprint == fingerprint) return cache.ranks;

  const auto started = std::chrono::steady_clock::now();
  std::vector<stats::RankBenchmark> input(benchmarks);
  for (auto& bench : input) {
    bench.values.resize(models);
    bench.samples.resize(models);
  }
  for (uint32_t gi = 0; gi < c.groups.size(); ++gi) {
    const Group& g = c.groups[gi];
    input[g.benchmark].values[g.model] = g.cell.mean(c.spec.benchmarks[g.benchmark].metric);
    input[g.benchmark].samples[g.model] = this->cell(c, gi).indexed;
  }
  cache.ranks = stats::bootstrap_rank_intervals(models, input);
  cache.ranks_fingerprint = fingerprint;
  cache.ranks_valid = true;
  spdlog::info("rank_intervals_computed campaign={} models={} benchmarks={} seconds={:.3f}", c.id,
               models, benchmarks,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return cache.ranks;
}

void SampleStats::annotate_results(const Campaign& c, nlohmann::json& models) {
  std::map<std::string, uint32_t> model_index;
  for (uint32_t m = 0; m < c.spec.models.size(); ++m) model_index[c.spec.models[m].name] = m;
  const uint32_t benchmark_count = static_cast<uint32_t>(c.spec.benchmarks.size());
  const auto& ranks = rank_intervals(c);
  for (auto& row : models) {
    const auto found = model_index.find(row.value("name", ""));
    if (found == model_index.end()) continue;
    const uint32_t m = found->second;
    std::vector<std::optional<double>> stderrs;
    for (uint32_t b = 0; b < benchmark_count; ++b) {
      const CellSamples& cell = this->cell(c, m * benchmark_count + b);
      auto& score = row["scores"][c.spec.benchmarks[b].name];
      const bool has = cell.n > 0;
      score["n"] = has ? nlohmann::json(cell.n) : nlohmann::json(nullptr);
      const auto se = has ? cell.stderr_value : std::nullopt;
      score["stderr"] = number_or_null(se);
      std::optional<std::array<double, 2>> interval;
      if (se && score["value"].is_number()) {
        interval = stats::ci95(score["value"].get<double>(), *se);
      }
      score["ci95"] = interval_or_null(interval);
      if (cell.clustered) score["clustered"] = true;
      stderrs.push_back(se);
    }
    const auto average = stats::average_stderr(stderrs);
    row["average_stderr"] = number_or_null(average);
    // A model whose own uncertainty is unknown somewhere gets no interval: [r, r] would claim a
    // certainty nobody measured.
    row["rank_interval"] = average && m < ranks.size()
                               ? nlohmann::json::array({ranks[m][0], ranks[m][1]})
                               : nlohmann::json(nullptr);
  }
}

nlohmann::json SampleStats::compare(const Campaign& c, uint32_t model_a, uint32_t model_b) {
  const uint32_t benchmark_count = static_cast<uint32_t>(c.spec.benchmarks.size());
  std::vector<stats::PairedComparison> results;
  std::vector<std::optional<double>> p_values;
  for (uint32_t b = 0; b < benchmark_count; ++b) {
    const auto& a = cell(c, model_a * benchmark_count + b).indexed;
    const auto& bb = cell(c, model_b * benchmark_count + b).indexed;
    // Both are sorted by index with unique indexes: a merge join finds the shared examples.
    std::vector<double> xs;
    std::vector<double> ys;
    size_t i = 0;
    size_t j = 0;
    while (i < a.size() && j < bb.size()) {
      if (a[i].index < bb[j].index) {
        ++i;
      } else if (bb[j].index < a[i].index) {
        ++j;
      } else {
        xs.push_back(a[i++].score);
        ys.push_back(bb[j++].score);
      }
    }
    results.push_back(stats::paired_compare(xs, ys));
    p_values.push_back(results.back().p_value);
  }
  const auto adjusted = stats::holm_adjust(p_values);
  nlohmann::json benchmarks = nlohmann::json::array();
  for (uint32_t b = 0; b < benchmark_count; ++b) {
    const auto& r = results[b];
    nlohmann::json item = {
        {"benchmark", c.spec.benchmarks[b].name},
        {"n", r.n},
        {"diff", r.n > 0 ? nlohmann::json(r.diff) : nlohmann::json(nullptr)},
        {"stderr", number_or_null(r.stderr_value)},
        {"ci95", interval_or_null(r.ci95)},
        {"p_value", number_or_null(r.p_value)},
        {"p_adjusted", number_or_null(adjusted[b])},
        {"test", r.test.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.test)}};
    if (r.test == "mcnemar") {
      item["a_only"] = r.a_only;
      item["b_only"] = r.b_only;
    }
    benchmarks.push_back(std::move(item));
  }
  return {{"campaign", c.id},
          {"a", c.spec.models[model_a].name},
          {"b", c.spec.models[model_b].name},
          {"benchmarks", std::move(benchmarks)}};
}

SamplesPage SampleStats::page(const Campaign& c, uint32_t group, uint32_t cursor, size_t limit) {
  const Group& g = c.groups[group];
  SamplesPage out;
  std::vector<std::pair<int64_t, nlohmann::json>> items;
  uint32_t i = cursor;
  for (; i < g.shards.size(); ++i) {
    if (items.size() >= limit) break;
    if (g.shards[i].state != ShardState::kSucceeded) continue;
    const auto blob = store_.get_samples(ShardKey{c.key, group, i});
    if (!blob) continue;
    auto parsed = nlohmann::json::parse(*blob, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_array()) {
      unreadable_->Increment();
      spdlog::error("samples_unreadable campaign={} group={} shard={} bytes={}", c.id, group, i,
                    blob->size());
      continue;
    }
    for (auto& sample : parsed) {
      const auto index = sample.is_object() ? index_of(sample) : std::nullopt;
      items.emplace_back(index.value_or(INT64_MAX), std::move(sample));
    }
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  for (auto& [index, sample] : items) out.samples.push_back(std::move(sample));
  // The next succeeded shard, if any: a client stops when there is no cursor.
  for (; i < g.shards.size(); ++i) {
    if (g.shards[i].state == ShardState::kSucceeded) {
      out.next_cursor = i;
      break;
    }
  }
  return out;
}

}  // namespace evald::coordinator
