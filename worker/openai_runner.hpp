// OpenAiRunner: the built-in `openai` runner (docs/runners.md). It evaluates a shard against an
// OpenAI-compatible /v1/completions server (a model server the worker started, or an endpoint):
// `generate` (one completion per example, scored by exact / number / regex match) and
// `multiple_choice` (one echo+logprobs request per choice, the most likely continuation wins),
// with max_concurrency requests in flight per shard and retries with exponential backoff and
// jitter that honour Retry-After. Results carry one sample per example.
//
// Threads: start/cancel/take_finished are called on the worker's main thread. Each shard runs on
// threads of its own (a controller and up to max_concurrency request threads); they share
// nothing with the main thread but the finished queue behind wake_fd(). A cancelled shard stops
// sending new requests at once; a request in flight ends within its timeout. Shard threads are
// detached and own what they use (shared_ptr), so destroying the runner never waits on a slow
// server.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/protocol.hpp"
#include "common/result.hpp"

namespace evald::worker {

class ServeMetrics;

// Everything one shard needs, resolved on the main thread from the spec and the endpoint.
struct OpenAiJob {
  protocol::ShardResult identity;
  std::string endpoint;  // base URL ending in /v1
  std::string model;     // the name requests carry
  std::string api_key;   // "" = no Authorization header
  std::string metric = "accuracy";
  int64_t start = 0;
  int64_t end = 0;
  nlohmann::json params;  // the benchmark's params (validated by the spec parser)
  int max_concurrency = 16;
  double request_timeout_s = 600;
  int max_retries = 5;
  // Backoff before retry k (0-based) is uniform in [0.5, 1] x min(cap, base x 2^k), and at least
  // what Retry-After asked for.
  double backoff_base_s = 0.25;
  double backoff_cap_s = 30;
};

// The scoring rules, on their own so they can be tested.
// exact: both sides trimmed, runs of whitespace collapsed to one space.
std::string normalize_answer(std::string_view text);
// The last number in `text` ("1,234.5" reads as 1234.5), or nothing.
std::optional<double> last_number(std::string_view text);
// 1 or 0 for a generated prediction against the target, by params.match.
double score_generation(const std::string& prediction, const nlohmann::json& target,
                        const nlohmann::json& params);
// The continuation's log-likelihood from a /v1/completions choice with echo and logprobs: the
// sum of token_logprobs[k] over the echoed tokens with text_offset[k] >= context_chars (offsets
// count characters, as the API does), leaving out tokens at or after prompt_chars (generated).
Result<double> continuation_logprob(const nlohmann::json& choice, size_t context_chars,
                                    size_t prompt_chars);
// Characters (Unicode code points) of UTF-8 text.
size_t utf8_length(std::string_view text);

class OpenAiRunner {
 public:
  // `metrics` may be null; otherwise it must stay alive while shards run (shared ownership).
  explicit OpenAiRunner(std::shared_ptr<ServeMetrics> metrics);
  ~OpenAiRunner();
  OpenAiRunner(const OpenAiRunner&) = delete;
  OpenAiRunner& operator=(const OpenAiRunner&) = delete;

  void start(OpenAiJob job);
  // No result will be reported for it.
  void cancel(uint64_t attempt_id);
  int wake_fd() const;
  std::vector<protocol::ShardResult> take_finished();

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_;
};

}  // namespace evald::worker
