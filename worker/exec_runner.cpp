#include "worker/exec_runner.hpp"

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <cmath>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "common/json_fields.hpp"
#include "common/json_limits.hpp"
#include "common/text.hpp"
#include "common/utf8.hpp"
#include "worker/exec_policy.hpp"
#include "worker/file_hash_cache.hpp"
#include "worker/placeholders.hpp"
#include "worker/unique_fd.hpp"

namespace evald::worker {
namespace {

namespace asio = boost::asio;

// A timeout longer than this is treated as this, so the chrono arithmetic cannot overflow.
constexpr double kMaxTimeoutS = 365.0 * 24 * 3600;

// A runner's stdout is untrusted: bounded in depth like every other document (the samples in it
// are stored and served later). A refusal for depth is remembered in `deep_error`, so the error
// can say why no line was taken.
nlohmann::json parse_json(std::string_view text, std::optional<Error>& deep_error) {
  if (auto deep = check_json_depth(text)) {
    deep_error = std::move(deep);
    return nlohmann::json(nlohmann::json::value_t::discarded);
  }
  return nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
}

Result<RunnerOutput> parse_output_object(const nlohmann::json& doc) {
  RunnerOutput output;
  const auto metrics = doc.find("metrics");
  if (metrics == doc.end()) return make_error("metrics: missing");
  if (!metrics->is_object()) return make_error("metrics: must be an object of numbers");
  if (metrics->empty()) return make_error("metrics: must hold at least one metric");
  if (metrics->size() > kMaxMetrics) {
    return make_error("metrics: more than " + std::to_string(kMaxMetrics) + " metrics");
  }
  for (const auto& [name, value] : metrics->items()) {
    if (name.empty()) return make_error("metrics: a metric name is empty");
    if (name.size() > kMaxMetricNameBytes) {
      return make_error("metrics: a metric name is longer than " +
                        std::to_string(kMaxMetricNameBytes) + " bytes");
    }
    if (!value.is_number()) return make_error("metrics." + name + ": must be a number");
    const auto number = value.get<double>();
    if (!std::isfinite(number)) return make_error("metrics." + name + ": must be a finite number");
    output.metrics.emplace_back(name, number);
  }

  const auto count = doc.find("count");
  if (count == doc.end()) return make_error("count: missing");
  // 500.0 is 500 (Python's json writes a float for `n / 1` and such), as in the spec parser.
  // Above 2^53 a double no longer holds every integer, and no shard is that large.
  constexpr int64_t kCountLimit = int64_t{1} << 53;
  const auto parsed_count = integer_value(*count);
  if (!parsed_count || *parsed_count < 0 || *parsed_count > kCountLimit) {
    return make_error("count: must be a non-negative integer");
  }
  output.count = *parsed_count;

  const auto samples = doc.find("samples");
  if (samples != doc.end() && !samples->is_null()) {
    if (!samples->is_array()) return make_error("samples: must be an array");
    output.samples_json = samples->dump();
  }
  return output;
}

std::string with_stderr_tail(std::string message, const std::string& stderr_tail) {
  const auto tail = trim(stderr_tail);
  if (tail.empty()) return message;
  return message + ": " + utf8::sanitize_tail(tail);
}

std::string format_seconds(double seconds) {
  return fmt::format("{:g}s", seconds);
}

// For a log line: one line per event, so newlines (stderr tails have many) become "\n".
std::string one_line(std::string_view text, size_t max_bytes) {
  std::string out;
  for (const char c : text.substr(0, max_bytes)) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  if (text.size() > max_bytes) out += "...";
  return out;
}

protocol::ShardResult make_result(protocol::ShardResult result, ProcessOutcome& outcome,
                                  double timeout_s) {
  result.ok = false;
  switch (outcome.end) {
    case ProcessEnd::kSpawnFailed:
      result.error = utf8::sanitize(outcome.spawn_error);
      break;
    case ProcessEnd::kKilled:
      result.error = with_stderr_tail("killed by the worker", outcome.stderr_tail);
      break;
    case ProcessEnd::kTimedOut:
      result.error =
          with_stderr_tail("timeout after " + format_seconds(timeout_s), outcome.stderr_tail);
      break;
    case ProcessEnd::kStdoutOverflow:
      result.error = with_stderr_tail(fmt::format("stdout exceeds {} MiB", kStdoutLimitBytes >> 20),
                                      outcome.stderr_tail);
      break;
    case ProcessEnd::kSignaled:
      result.error = with_stderr_tail(
          fmt::format("killed by signal {} ({})", outcome.signal, signal_name(outcome.signal)),
          outcome.stderr_tail);
      break;
    case ProcessEnd::kExited: {
      if (outcome.exit_code != 0) {
        result.error =
            with_stderr_tail(fmt::format("exit code {}", outcome.exit_code), outcome.stderr_tail);
        break;
      }
      auto parsed = parse_runner_output(outcome.stdout_data);
      if (!parsed.ok()) {
        const std::string_view out = outcome.stdout_data;
        const auto tail = out.substr(out.size() - std::min(out.size(), kUnparsableStdoutTailBytes));
        result.error =
            with_stderr_tail("unparsable output: " + parsed.error().message +
                                 " (stdout ends with: " + utf8::sanitize_tail(tail) + ")",
                             outcome.stderr_tail);
        break;
      }
      result.ok = true;
      result.metrics = std::move(parsed->metrics);
      result.count = parsed->count;
      result.samples_json = std::move(parsed->samples_json);
      break;
    }
  }
  return result;
}

}  // namespace

Result<RunnerOutput> parse_runner_output(std::string_view stdout_text) {
  const auto text = trim(stdout_text);
  if (text.empty()) return make_error("stdout is empty");
  std::optional<Error> deep_error;
  auto doc = parse_json(text, deep_error);
  if (!doc.is_object()) {
    // Not one object as a whole: take the last non-empty line that is one.
    doc = nlohmann::json(nlohmann::json::value_t::discarded);
    size_t end = text.size();
    while (true) {
      const auto newline = text.rfind('\n', end == 0 ? 0 : end - 1);
      const size_t begin = newline == std::string_view::npos ? 0 : newline + 1;
      const auto line = trim(text.substr(begin, end - begin));
      if (!line.empty() && line.front() == '{') {
        auto candidate = parse_json(line, deep_error);
        if (candidate.is_object()) {
          doc = std::move(candidate);
          break;
        }
      }
      if (newline == std::string_view::npos) break;
      end = newline;
    }
    if (!doc.is_object()) {
      if (deep_error) return make_error("the result " + deep_error->message);
      return make_error("no line of stdout is a JSON object");
    }
  }
  return parse_output_object(doc);
}

std::string substitute_placeholders(std::string_view text, const RunRequest& request) {
  const auto& a = request.assignment;
  return substitute_braced(text, [&](std::string_view name) -> std::optional<std::string> {
    if (name == "model") return request.spec.models[a.model].name;
    if (name == "benchmark") return request.spec.benchmarks[a.benchmark].name;
    if (name == "shard") return std::to_string(a.shard);
    if (name == "start") return std::to_string(a.start);
    if (name == "end") return std::to_string(a.end);
    if (name == "attempt") return std::to_string(a.attempt);
    if (name == "campaign") return request.campaign_id;
    if (name == "endpoint" && !request.endpoint.empty()) return request.endpoint;
    return std::nullopt;
  });
}

std::string data_changed_error(const std::string& expected, const std::string& got,
                               const std::string& path) {
  return "data changed: expected " + expected + ", got " + got + " (" + path + ")";
}

ExecJob build_exec_job(const RunRequest& request,
                       const std::vector<std::pair<std::string, std::string>>& base_env,
                       const std::filesystem::path& run_root) {
  const auto& a = request.assignment;
  const auto& spec = request.spec;
  const auto& model = spec.models[a.model];
  const auto& benchmark = spec.benchmarks[a.benchmark];

  ExecJob job;
  job.identity = protocol::result_for(a);
  job.timeout_s = spec.runner.timeout_s;
  if (const auto data = benchmark.params.find("data");
      data != benchmark.params.end() && data->is_string()) {
    job.data_path = data->get<std::string>();
  }
  if (const auto pin = benchmark.params.find("data_sha256");
      pin != benchmark.params.end() && pin->is_string()) {
    job.data_sha256_pin = pin->get<std::string>();
  }
  const auto& command = spec.runner.command;
  if (!command.empty()) {
    job.process.executable = substitute_placeholders(command.front(), request);
    for (size_t i = 1; i < command.size(); ++i) {
      job.process.args.push_back(substitute_placeholders(command[i], request));
    }
  }

  nlohmann::json shard = {
      {"campaign", request.campaign_id},
      {"model", {{"name", model.name}, {"params", model.params}}},
      {"benchmark",
       {{"name", benchmark.name}, {"metric", benchmark.metric}, {"params", benchmark.params}}},
      {"shard", {{"index", a.shard}, {"start", a.start}, {"end", a.end}}},
      {"attempt", a.attempt},
      {"attempt_id", a.attempt_id},
  };
  job.process.stdin_data = shard.dump() + "\n";

  std::unordered_map<std::string, std::string> env(base_env.begin(), base_env.end());
  if (spec.runner.env.is_object()) {
    for (const auto& [name, value] : spec.runner.env.items()) {
      env[name] = value.is_string() ? value.get<std::string>() : value.dump();
    }
  }
  std::string gpus;
  for (const uint32_t gpu : a.gpus) {
    if (!gpus.empty()) gpus += ',';
    gpus += std::to_string(gpu);
  }
  env["EVALD_CAMPAIGN"] = request.campaign_id;
  env["EVALD_MODEL"] = model.name;
  env["EVALD_BENCHMARK"] = benchmark.name;
  env["EVALD_SHARD"] = std::to_string(a.shard);
  env["EVALD_START"] = std::to_string(a.start);
  env["EVALD_END"] = std::to_string(a.end);
  env["EVALD_ATTEMPT"] = std::to_string(a.attempt);
  env["EVALD_ATTEMPT_ID"] = std::to_string(a.attempt_id);
  env["CUDA_VISIBLE_DEVICES"] = gpus;
  if (!request.endpoint.empty()) {
    env["EVALD_ENDPOINT"] = request.endpoint;
    env["EVALD_SERVED_MODEL"] = request.served_model;
  }
  job.process.environment.assign(env.begin(), env.end());

  job.process.working_dir = run_root / std::to_string(a.attempt_id);
  if (job.timeout_s > 0) {
    const double seconds = std::min(job.timeout_s, kMaxTimeoutS);
    job.process.timeout =
        std::chrono::milliseconds(std::max<int64_t>(1, std::llround(seconds * 1000)));
  }
  return job;
}

class ExecRunner::Impl {
 public:
  Impl(std::filesystem::path run_root, const Clock& clock)
      : run_root_(std::move(run_root)),
        clock_(clock),
        base_env_(current_environment()),
        work_(asio::make_work_guard(io_)),
        hash_work_(asio::make_work_guard(hash_io_)),
        wake_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (!wake_fd_.valid()) throw std::system_error(errno, std::generic_category(), "eventfd");
    thread_ = std::thread([this] { run_thread(); });
    hash_thread_ = std::thread([this] { run_hash_thread(); });
  }

  ~Impl() {
    // Hashing first: a job it still holds would otherwise be posted to a stopped runner thread.
    hash_io_.stop();
    hash_thread_.join();
    asio::post(io_, [this] {
      for (auto& [attempt_id, attempt] : running_) {
        attempt.cancelled = true;
        attempt.child.kill();
      }
    });
    work_.reset();
    thread_.join();
  }

  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  void start(const RunRequest& request) {
    asio::post(hash_io_, [this, job = build_exec_job(request, base_env_, run_root_)]() mutable {
      hash_and_launch(std::move(job));
    });
  }

  void cancel(uint64_t attempt_id) {
    asio::post(io_, [this, attempt_id] {
      const auto it = running_.find(attempt_id);
      if (it == running_.end()) {
        // Still being hashed: launch() drops it. Bounded, as an id that never comes (its
        // result was already published) must not make the set grow for the worker's life.
        if (cancelled_early_.size() < kMaxCancelledEarly) cancelled_early_.insert(attempt_id);
        return;
      }
      it->second.cancelled = true;
      it->second.child.kill();
    });
  }

  int wake_fd() const { return wake_fd_.get(); }

  std::vector<protocol::ShardResult> take_finished() {
    uint64_t ignored = 0;
    [[maybe_unused]] auto n = ::read(wake_fd_.get(), &ignored, sizeof ignored);
    std::vector<protocol::ShardResult> out;
    const std::lock_guard<std::mutex> lock(mutex_);
    out.swap(finished_);
    return out;
  }

 private:
  struct Attempt {
    ChildProcess child;
    protocol::ShardResult identity;
    double timeout_s = 0;
    std::filesystem::path run_dir;
    std::chrono::steady_clock::time_point started;
    bool cancelled = false;
  };

  void run_thread() {
    const ScopedSigpipeBlock sigpipe_block;  // writing a shard to a child that exited early
    while (true) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        // A handler threw: a bug, but one attempt's bug must not take every other one down.
        spdlog::error("exec_runner_error error=\"{}\"", e.what());
      }
    }
  }

  void run_hash_thread() {
    while (true) {
      try {
        hash_io_.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("exec_hash_error error=\"{}\"", e.what());
      }
    }
  }

  // Hashing thread: provenance hashes and the data pin, then the launch on the runner thread.
  void hash_and_launch(ExecJob job) {
    auto& identity = job.identity;
    std::string resolve_error;
    const auto executable = resolve_executable(job.process.executable, resolve_error);
    if (!executable.empty()) {
      auto digest = hashes_.sha256(executable);
      if (digest) {
        identity.executable_sha256 = std::move(digest).value();
      } else {
        spdlog::warn("executable_not_hashed attempt_id={} error=\"{}\"", identity.attempt_id,
                     digest.error().message);
      }
    }
    if (!job.data_path.empty()) {
      auto digest = hashes_.sha256(job.data_path);
      if (digest) identity.data_sha256 = digest.value();
      if (!job.data_sha256_pin.empty() && identity.data_sha256 != job.data_sha256_pin) {
        const std::string got =
            digest ? digest.value() : "no readable file (" + digest.error().message + ")";
        spdlog::warn("data_changed attempt_id={} path={} expected={} got=\"{}\"",
                     identity.attempt_id, job.data_path, job.data_sha256_pin, got);
        auto result = std::move(identity);
        result.started_at_ms = result.ended_at_ms = clock_.wall_ms();
        result.error = data_changed_error(job.data_sha256_pin, got, job.data_path);
        asio::post(io_, [this, result = std::move(result)]() mutable {
          cancelled_early_.erase(result.attempt_id);
          publish(std::move(result));
        });
        return;
      }
    }
    asio::post(io_, [this, job = std::move(job)]() mutable { launch(std::move(job)); });
  }

  // Runner thread.
  void launch(ExecJob job) {
    const auto started = clock_.now();
    const auto attempt_id = job.identity.attempt_id;
    if (cancelled_early_.erase(attempt_id) > 0) {
      spdlog::info("exec_cancelled attempt_id={} before=start", attempt_id);
      return;
    }
    job.identity.started_at_ms = clock_.wall_ms();
    const auto run_dir = job.process.working_dir;
    std::error_code ec;
    std::filesystem::remove_all(run_dir, ec);
    std::filesystem::create_directories(run_dir, ec);
    if (ec) {
      auto result = std::move(job.identity);
      result.error = "cannot create run directory " + run_dir.string() + ": " + ec.message();
      result.ended_at_ms = clock_.wall_ms();
      return publish(std::move(result));
    }
    auto child = ChildProcess::start(
        io_, std::move(job.process),
        [this, attempt_id](ProcessOutcome outcome) { finish(attempt_id, std::move(outcome)); });
    spdlog::debug("exec_started attempt_id={} pid={} dir={}", attempt_id, child.pid(),
                  run_dir.string());
    running_.insert_or_assign(attempt_id, Attempt{std::move(child), std::move(job.identity),
                                                  job.timeout_s, run_dir, started, false});
  }

  // Runner thread.
  void finish(uint64_t attempt_id, ProcessOutcome outcome) {
    const auto it = running_.find(attempt_id);
    if (it == running_.end()) return;
    Attempt attempt = std::move(it->second);
    running_.erase(it);
    std::error_code ec;
    std::filesystem::remove_all(attempt.run_dir, ec);
    if (ec) {
      spdlog::warn("run_dir_not_removed attempt_id={} dir={} error=\"{}\"", attempt_id,
                   attempt.run_dir.string(), ec.message());
    }
    if (attempt.cancelled) {
      // A SIGKILL shows as a signal; exit code 0 means the runner ended by itself before the
      // kill landed, and its stdout was read to the end. That result is real (a late result the
      // coordinator records as stale, or counts when it is still the shard's only attempt), so it
      // is reported like any other; everything else the kill made of it is dropped.
      const bool ended_first =
          outcome.signal == 0 && outcome.exit_code == 0 &&
          (outcome.end == ProcessEnd::kKilled || outcome.end == ProcessEnd::kExited);
      if (!ended_first) {
        spdlog::info("exec_cancelled attempt_id={} pid={}", attempt_id, outcome.pid);
        return;
      }
      outcome.end = ProcessEnd::kExited;
      spdlog::info("exec_finished_before_cancel attempt_id={} pid={}", attempt_id, outcome.pid);
    }
    auto result = make_result(std::move(attempt.identity), outcome, attempt.timeout_s);
    result.ended_at_ms = clock_.wall_ms();
    const auto elapsed =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock_.now() - attempt.started);
    result.duration_ms = static_cast<uint32_t>(
        std::clamp<int64_t>(elapsed.count(), 0, std::numeric_limits<uint32_t>::max()));
    if (result.ok) {
      spdlog::info("exec_finished attempt_id={} pid={} ok=true count={} duration_ms={}", attempt_id,
                   outcome.pid, result.count, result.duration_ms);
    } else {
      spdlog::warn("exec_finished attempt_id={} pid={} ok=false duration_ms={} error=\"{}\"",
                   attempt_id, outcome.pid, result.duration_ms, one_line(result.error, 300));
    }
    publish(std::move(result));
  }

  void publish(protocol::ShardResult result) {
    bool was_empty = false;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      was_empty = finished_.empty();
      finished_.push_back(std::move(result));
    }
    if (was_empty) {
      const uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof one);
    }
  }

  const std::filesystem::path run_root_;
  const Clock& clock_;
  const std::vector<std::pair<std::string, std::string>> base_env_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::unordered_map<uint64_t, Attempt> running_;  // runner thread only
  static constexpr size_t kMaxCancelledEarly = 4096;
  std::unordered_set<uint64_t> cancelled_early_;  // runner thread only
  asio::io_context hash_io_;
  asio::executor_work_guard<asio::io_context::executor_type> hash_work_;
  FileHashCache hashes_;  // hashing thread only

  std::mutex mutex_;
  std::vector<protocol::ShardResult> finished_;  // guarded by mutex_
  UniqueFd wake_fd_;

  std::thread thread_;  // last, so it starts after everything it uses exists
  std::thread hash_thread_;
};

ExecRunner::ExecRunner(std::filesystem::path run_root, const Clock& clock)
    : impl_(std::make_unique<Impl>(std::move(run_root), clock)) {}

ExecRunner::~ExecRunner() = default;

std::optional<protocol::ShardResult> ExecRunner::start(const RunRequest& request) {
  impl_->start(request);
  return std::nullopt;
}

void ExecRunner::cancel(uint64_t attempt_id) {
  impl_->cancel(attempt_id);
}

int ExecRunner::wake_fd() const {
  return impl_->wake_fd();
}

std::vector<protocol::ShardResult> ExecRunner::take_finished() {
  return impl_->take_finished();
}

}  // namespace evald::worker
