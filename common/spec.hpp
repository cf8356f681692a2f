// CampaignSpec: the validated form of a campaign spec (docs/campaign-spec.md), and how a
// model x benchmark is split into shards. Used by the coordinator (validation at submit, sharding,
// recovery), the worker (runner context) and evalctl (local validation before submit).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace evald {

// Hard limits that keep one spec from exhausting the coordinator; named in the error message.
inline constexpr size_t kMaxModels = 1000;
inline constexpr size_t kMaxBenchmarks = 1000;
inline constexpr int64_t kMaxShardsPerCampaign = 50'000'000;
inline constexpr size_t kMaxNameLength = 128;
// Caps examples and shard_size so that shard arithmetic (examples + shard_size) cannot overflow.
inline constexpr int64_t kMaxExamples = 1'000'000'000'000'000'000;
inline constexpr double kMaxRunnerTimeoutS = 7 * 24 * 3600;

// What one shard of a model needs from a worker (docs/scheduling.md).
struct ResourceSpec {
  // GPUs per shard; unset means 1 on a worker that has GPUs and 0 on one that has none.
  std::optional<int> gpus;
  double gpu_memory_gb = 0;                   // per GPU; 0 = any
  std::map<std::string, std::string> labels;  // the worker's --labels must carry all of these

  bool operator==(const ResourceSpec&) const = default;
};

inline constexpr int kMaxGpusPerShard = 64;

struct ModelSpec {
  std::string name;
  nlohmann::json params = nlohmann::json::object();
  ResourceSpec resources;

  bool operator==(const ModelSpec&) const = default;
};

struct BenchmarkSpec {
  std::string name;
  int64_t examples = 0;
  int64_t shard_size = 0;
  std::string metric = "accuracy";  // the primary metric, used for ranking
  bool higher_is_better = true;
  nlohmann::json params = nlohmann::json::object();

  int64_t shard_count() const { return (examples + shard_size - 1) / shard_size; }
  bool operator==(const BenchmarkSpec&) const = default;
};

enum class RunnerType { kExec, kNoop };

struct RunnerSpec {
  RunnerType type = RunnerType::kExec;
  std::vector<std::string> command;  // exec only; may contain {placeholders}
  double timeout_s = 3600;
  nlohmann::json env = nlohmann::json::object();  // extra environment for exec, string values

  bool operator==(const RunnerSpec&) const = default;
};

// How models are ranked when a campaign weighs more than benchmarks (docs/results.md, composite
// score): component name -> non-negative weight. "benchmarks" is the benchmark average x 100;
// every other component is imported per model (POST .../scores).
struct ScoringSpec {
  std::map<std::string, double> weights;

  bool operator==(const ScoringSpec&) const = default;
};

inline constexpr size_t kMaxScoringComponents = 16;

struct CampaignSpec {
  std::string name;
  std::string description;
  std::vector<ModelSpec> models;
  std::vector<BenchmarkSpec> benchmarks;
  RunnerSpec runner;
  int max_attempts = 3;
  int priority = 0;
  // A shard identical to one that succeeded in an earlier campaign takes that result instead of
  // running (docs/results.md, reuse).
  bool reuse = false;
  std::optional<ScoringSpec> scoring;

  // Saturates at INT64_MAX instead of overflowing; a validated spec is far below that.
  int64_t total_shards() const;
  bool operator==(const CampaignSpec&) const = default;
};

// Half-open example range [start, end) of one shard.
struct ShardRange {
  int64_t start = 0;
  int64_t end = 0;
};

ShardRange shard_range(const BenchmarkSpec& benchmark, int64_t index);

// Validates the whole spec; on failure the error names the field, e.g.
// "benchmarks[2].shard_size: must be a positive integer". Unknown fields are refused too, so a
// typo cannot silently change what is evaluated.
Result<CampaignSpec> parse_campaign_spec(const nlohmann::json& json);
// Same, from text; a JSON syntax error is reported with its byte offset.
Result<CampaignSpec> parse_campaign_spec_text(std::string_view text);

// The canonical JSON form (all defaults filled in); parse_campaign_spec(to_json(s)) == s.
nlohmann::json to_json(const CampaignSpec& spec);

const char* to_string(RunnerType type);

}  // namespace evald
