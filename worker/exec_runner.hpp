// ExecRunner: runs a campaign's runner.command as a child process per attempt (docs/runners.md,
// exec). Also the pure pieces it is built from, so they can be tested on their own: building the
// job from the spec (placeholders, stdin JSON, environment) and parsing the runner's stdout.
//
// Threads: the public methods are called on the worker's main thread. A hashing thread first
// computes the SHA-256 of the attempt's executable and data file (FileHashCache: once per file
// version; a first hash of a 10 GB file takes seconds and must not stall the main loop or the
// children already running) and checks the data pin. One runner thread runs an
// Asio io_context that spawns, supervises and reaps every child; finished results cross back
// through a mutex-protected queue and an eventfd (wake_fd()) the main loop polls next to its
// ZeroMQ socket. The runner thread never touches the socket.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/clock.hpp"
#include "common/result.hpp"
#include "worker/process.hpp"
#include "worker/runner.hpp"

namespace evald::worker {

// Limits on what a runner may report, so one bad runner cannot bloat the coordinator's store.
inline constexpr size_t kMaxMetrics = 256;
inline constexpr size_t kMaxMetricNameBytes = 128;
inline constexpr size_t kUnparsableStdoutTailBytes = 200;

struct RunnerOutput {
  std::vector<std::pair<std::string, double>> metrics;  // sorted by name
  int64_t count = 0;
  std::string samples_json;  // "" when the runner printed no samples
};

// Parses a runner's stdout: one JSON object (surrounding whitespace allowed), or, when stdout has
// several lines, the last non-empty line that parses as an object (runners print logs first). It
// must hold "metrics" (an object of finite numbers, at least one) and "count" (a non-negative
// integer), and may hold "samples" (an array). The error names the field, e.g.
// "metrics.f1: must be a finite number".
Result<RunnerOutput> parse_runner_output(std::string_view stdout_text);

// Everything one exec attempt needs, resolved on the main thread so that the runner thread never
// looks at a campaign spec.
struct ExecJob {
  protocol::ShardResult identity;  // the assignment's ids; the result is filled in from it
  ProcessSpec process;
  double timeout_s = 0;
  // The benchmark's params.data when it is a string ("" otherwise): hashed for provenance.
  std::string data_path;
  // The benchmark's params.data_sha256 ("" = no pin): a data file with another digest fails the
  // attempt before the runner starts.
  std::string data_sha256_pin;
};

// "data changed: expected X, got Y (path)": the error of an attempt whose pinned data file has
// another digest (or cannot be read: then Y says why).
std::string data_changed_error(const std::string& expected, const std::string& got,
                               const std::string& path);

// Substitutes {model} {benchmark} {shard} {start} {end} {attempt} {campaign} in `text`, and
// {endpoint} for a served model; any other {word} is left as it is.
std::string substitute_placeholders(std::string_view text, const RunRequest& request);

// The command with placeholders substituted; the shard as one JSON object on stdin; the
// environment = base_env + runner.env + EVALD_* (EVALD_ENDPOINT and EVALD_SERVED_MODEL for a served
// model) + CUDA_VISIBLE_DEVICES (the variables evald sets
// win over runner.env, so a spec cannot hand a shard somebody else's GPUs); working directory
// run_root/<attempt_id>; the spec's timeout.
ExecJob build_exec_job(const RunRequest& request,
                       const std::vector<std::pair<std::string, std::string>>& base_env,
                       const std::filesystem::path& run_root);

class ExecRunner final : public Runner {
 public:
  // Attempts run in run_root/<attempt_id> (created, removed afterwards). `clock` measures
  // duration_ms and must be safe to read from the runner thread.
  ExecRunner(std::filesystem::path run_root, const Clock& clock);
  // Kills every running process group, reaps every child and joins the runner thread.
  ~ExecRunner() override;
  ExecRunner(const ExecRunner&) = delete;
  ExecRunner& operator=(const ExecRunner&) = delete;

  // Always returns nothing: the result comes later through take_finished().
  std::optional<protocol::ShardResult> start(const RunRequest& request) override;
  // SIGKILL to the attempt's process group; no result is reported for it.
  void cancel(uint64_t attempt_id) override;
  int wake_fd() const override;
  // Drains the finished results; call after wake_fd() was readable (it resets it).
  std::vector<protocol::ShardResult> take_finished() override;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace evald::worker
