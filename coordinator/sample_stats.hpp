// SampleStats: the per-example samples of counted results, read back from the store (key `x`,
// store_layout.md) and turned into the uncertainty the API shows: per score n, stderr and ci95,
// per model average_stderr and a bootstrap rank_interval, and paired comparisons of two models
// (docs/results.md, "Statistics"). The formulas live in common/statistics.
//
// Only counted results contribute: the shards of a cell that are `succeeded` now, read under the
// attempt id that succeeded. Parsing a million samples costs about a second, so each model x
// benchmark cell is parsed once and cached as a compact (index, score) vector with its stderr;
// the cache entry carries a fingerprint of the cell's succeeded shards and their attempt ids,
// recomputed on every read (O(shards), no store access), so a new result, a rerun or a restart
// invalidates exactly the cells it changed. Rank intervals are cached per campaign under the
// fingerprints of all its cells. The cache is bounded (kMaxCachedSamples): over the bound the
// least recently read campaigns are dropped and parsed again when asked for.
//
// Thread: the coordinator's core thread (it reads the scheduler's state without locks).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "common/statistics.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/store.hpp"

namespace evald::coordinator {

// About 24 bytes each in memory: 40 million is under 1 GiB.
inline constexpr size_t kMaxCachedSamples = 40'000'000;
// GET .../samples pages: the default and the largest number of samples per page.
inline constexpr size_t kSamplesPageDefault = 10'000;
inline constexpr size_t kSamplesPageMax = 100'000;

struct CellSamples {
  uint64_t fingerprint = 0;
  int64_t n = 0;  // samples with a finite numeric "score"
  double mean = 0;
  std::optional<double> stderr_value;  // clustered when any sample has a "cluster"
  bool clustered = false;
  // Scores with an integer "index", sorted by index, one per index (the first one seen): what
  // paired comparisons and the bootstrap use.
  std::vector<stats::IndexedScore> indexed;
};

// What the statistics need of one sample: its score (a finite number, or a boolean as 1/0), its
// integer index and its cluster as a key that compares JSON values ("1" and 1 differ).
struct SampleFields {
  std::optional<double> score;
  std::optional<int64_t> index;
  std::optional<std::string> cluster;
};

// The fields of every object in a stored samples blob (a JSON array); nullopt if the blob is not
// a JSON array. Reads without building a document (a third of the cost for a million samples).
std::optional<std::vector<SampleFields>> read_sample_fields(const std::string& blob);

struct SamplesPage {
  nlohmann::json samples = nlohmann::json::array();
  std::optional<uint32_t> next_cursor;  // the shard to continue from, if any is left
};

class SampleStats {
 public:
  SampleStats(const Store& store, Metrics& metrics);

  // The cell (campaign, group), parsed from the store or from the cache.
  const CellSamples& cell(const Campaign& c, uint32_t group);

  // Adds n, stderr and ci95 to every score of the results JSON's "models" array (as
  // leaderboard_to_json renders it), and average_stderr and rank_interval to every model.
  void annotate_results(const Campaign& c, nlohmann::json& models);

  // The paired comparison of two models of the campaign, per benchmark (model indexes).
  nlohmann::json compare(const Campaign& c, uint32_t model_a, uint32_t model_b);

  // Samples of succeeded shards of a cell, starting at shard `cursor`, whole shards until at
  // least `limit` samples, sorted by index within the page. Shards are contiguous example
  // ranges, so pages come in index order when runners keep to their shard's range.
  SamplesPage page(const Campaign& c, uint32_t group, uint32_t cursor, size_t limit);

  size_t cached_samples() const { return cached_samples_; }

 private:
  struct CampaignCache {
    std::map<uint32_t, CellSamples> cells;  // by group
    uint64_t ranks_fingerprint = 0;
    bool ranks_valid = false;
    std::vector<std::array<int, 2>> ranks;  // per model index
    uint64_t last_used = 0;
  };
  CellSamples load(const Campaign& c, uint32_t group, uint64_t fingerprint);
  const std::vector<std::array<int, 2>>& rank_intervals(const Campaign& c);
  void evict_over_bound(uint32_t keep_campaign);

  const Store& store_;
  std::map<uint32_t, CampaignCache> campaigns_;
  size_t cached_samples_ = 0;
  uint64_t tick_ = 0;
  prometheus::Counter* unreadable_ = nullptr;
  prometheus::Gauge* cached_gauge_ = nullptr;
  prometheus::Histogram* load_seconds_ = nullptr;
};

}  // namespace evald::coordinator
