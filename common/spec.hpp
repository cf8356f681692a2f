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

// How the worker starts and keeps warm a server for a model (docs/served-models.md). command may
// hold {port} {model} {gpus} {gpu_count} {work_dir}.
struct ServeSpec {
  std::vector<std::string> command;
  std::string health = "/health";  // GET http://127.0.0.1:{port}{health} answers 200 when ready
  double ready_timeout_s = 1800;
  double keep_warm_s = 600;  // after the model's last shard on this worker ends
  nlohmann::json env = nlohmann::json::object();  // string values
  std::string model_id;  // the name requests use; "" means the model's name

  bool operator==(const ServeSpec&) const = default;
};

// A server somebody else runs. The API key is read from the worker's environment (api_key_env),
// never carried in the spec.
struct EndpointSpec {
  std::string url;  // the base URL, e.g. "http://host:8000/v1"
  std::string model;
  std::string api_key_env;  // "" = no key

  bool operator==(const EndpointSpec&) const = default;
};

struct ModelSpec {
  std::string name;
  nlohmann::json params = nlohmann::json::object();
  ResourceSpec resources;
  std::optional<ServeSpec> serve;  // at most one of serve and endpoint
  std::optional<EndpointSpec> endpoint;

  // The model name requests carry: serve.model_id, endpoint.model, or the name.
  const std::string& served_name() const;

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

enum class RunnerType { kExec, kNoop, kOpenAi };

inline constexpr int kMaxRunnerConcurrency = 1024;
inline constexpr int kMaxRunnerRetries = 100;

struct RunnerSpec {
  RunnerType type = RunnerType::kExec;
  std::vector<std::string> command;  // exec only; may contain {placeholders}
  double timeout_s = 3600;
  nlohmann::json env = nlohmann::json::object();  // extra environment for exec, string values
  // openai only (the built-in runner, docs/runners.md)
  int max_concurrency = 16;  // requests in flight per shard
  double request_timeout_s = 600;
  int max_retries = 5;  // per request, for transient failures

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
  // When nothing is pending and a worker that has a model loaded sits idle while a shard of that
  // model runs far longer than expected elsewhere, run a second copy of it there; the first
  // result counts (docs/scheduling.md, "Backup copies of stragglers").
  bool backup_copies = false;
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
// Same, from YAML text (common/yaml.hpp turns it into the same JSON value first), so a YAML
// spec gets exactly the messages its JSON twin would.
Result<CampaignSpec> parse_campaign_spec_yaml(std::string_view text);
// True for a path ending in .yaml or .yml (evalctl submit reads those as YAML).
bool is_yaml_path(std::string_view path);

// The canonical JSON form (all defaults filled in); parse_campaign_spec(to_json(s)) == s.
nlohmann::json to_json(const CampaignSpec& spec);

const char* to_string(RunnerType type);

}  // namespace evald
