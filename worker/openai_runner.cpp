// The built-in openai runner; the contract is in openai_runner.hpp and docs/runners.md.
//
// A shard is a list of requests (one per example for generate, one per choice for
// multiple_choice). Request threads ("lanes") take the next request from an atomic index, so at
// most max_concurrency are in flight. Each lane keeps one HTTP/1.1 connection open across its
// requests (HttpConnection: reconnects when the server closed it or a request failed), so a
// shard costs a handshake per lane, not per request (TIME_WAIT sockets and SYNs add up at
// thousands of requests per second). The first request that fails for good stops the others (the
// attempt fails with that request's last HTTP status and body excerpt). Transient failures
// (connection refused or reset, timeouts, 429, 5xx) are retried; anything else is not, since
// sending the same request again cannot change a 400.
#include "worker/openai_runner.hpp"

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <thread>
#include <unordered_map>

#include "common/http_client.hpp"
#include "common/http_connection.hpp"
#include "worker/serve_metrics.hpp"
#include "worker/unique_fd.hpp"

namespace evald::worker {
namespace {

using nlohmann::json;
constexpr size_t kBodyExcerptBytes = 300;
constexpr size_t kMaxPredictionBytes = 4096;
constexpr double kMaxRetryAfterS = 600;
constexpr size_t kMaxDataLineBytes = size_t{16} << 20;

std::string excerpt(std::string_view body) {
  std::string out(body.substr(0, kBodyExcerptBytes));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  if (body.size() > kBodyExcerptBytes) out += "...";
  return out;
}

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// One unit of work: a completion for an example (generate) or for one of its choices.
struct Request {
  size_t example = 0;  // index into Shard::examples
  size_t choice = 0;   // multiple_choice only
  std::string body;
  size_t context_chars = 0;  // multiple_choice: len(context), len(prompt)
  size_t prompt_chars = 0;
  // Filled in by the request thread:
  std::string text;  // generate: choices[0].text
  double logprob = 0;
};

struct Example {
  int64_t index = 0;
  json target;
  size_t choices = 0;
};

}  // namespace

size_t utf8_length(std::string_view text) {
  size_t n = 0;
  for (const char c : text) {
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++n;
  }
  return n;
}

std::string normalize_answer(std::string_view text) {
  std::string out;
  bool space = false;
  for (const char c : text) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::optional<double> last_number(std::string_view text) {
  static const std::regex kNumber(R"([-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?|[-+]?\.\d+)");
  std::optional<double> last;
  const std::string subject(text);
  for (auto it = std::sregex_iterator(subject.begin(), subject.end(), kNumber);
       it != std::sregex_iterator(); ++it) {
    std::string digits;
    for (const char c : it->str()) {
      if (c != ',') digits += c;
    }
    try {
      last = std::stod(digits);
    } catch (const std::exception&) {
    }
  }
  return last;
}

namespace {

std::string target_text(const json& target) {
  if (target.is_string()) return target.get<std::string>();
  return dump(target);
}

}  // namespace

double score_generation(const std::string& prediction, const json& target, const json& params) {
  const std::string match = params.value("match", std::string("exact"));
  if (match == "number") {
    const auto predicted = last_number(prediction);
    std::optional<double> expected;
    if (target.is_number()) {
      expected = target.get<double>();
    } else if (target.is_string()) {
      expected = last_number(target.get<std::string>());
    }
    if (!predicted || !expected) return 0;
    return std::fabs(*predicted - *expected) <= 1e-9 * std::max(1.0, std::fabs(*expected)) ? 1 : 0;
  }
  if (match == "regex") {
    try {
      const std::regex extract(params.value("extract", std::string()), std::regex::ECMAScript);
      std::smatch found;
      if (!std::regex_search(prediction, found, extract) || found.size() < 2) return 0;
      return found[1].str() == target_text(target) ? 1 : 0;
    } catch (const std::regex_error&) {
      return 0;  // the spec parser refuses such a pattern; a runner cannot do better
    }
  }
  return normalize_answer(prediction) == normalize_answer(target_text(target)) ? 1 : 0;
}

Result<double> continuation_logprob(const json& choice, size_t context_chars, size_t prompt_chars) {
  const auto logprobs = choice.find("logprobs");
  if (logprobs == choice.end() || !logprobs->is_object()) {
    return make_error("choices[0].logprobs is missing (the server must support echo + logprobs)");
  }
  const auto values = logprobs->find("token_logprobs");
  const auto offsets = logprobs->find("text_offset");
  if (values == logprobs->end() || offsets == logprobs->end() || !values->is_array() ||
      !offsets->is_array() || values->size() != offsets->size()) {
    return make_error(
        "choices[0].logprobs needs token_logprobs and text_offset arrays of one length");
  }
  double sum = 0;
  size_t counted = 0;
  for (size_t k = 0; k < values->size(); ++k) {
    const auto& offset = (*offsets)[k];
    if (!offset.is_number_integer() && !offset.is_number_unsigned()) {
      return make_error("choices[0].logprobs.text_offset holds a non-integer");
    }
    const auto at = offset.get<int64_t>();
    if (at < 0 || static_cast<size_t>(at) < context_chars ||
        static_cast<size_t>(at) >= prompt_chars) {
      continue;
    }
    const auto& value = (*values)[k];
    if (value.is_null()) continue;  // only the very first token has none
    if (!value.is_number())
      return make_error("choices[0].logprobs.token_logprobs holds a non-number");
    sum += value.get<double>();
    ++counted;
  }
  if (counted == 0) {
    return make_error("no echoed token starts inside the continuation (is echo supported?)");
  }
  return sum;
}

struct OpenAiRunner::Shared {
  std::shared_ptr<ServeMetrics> metrics;
  UniqueFd wake_fd{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  std::mutex mutex;
  std::vector<protocol::ShardResult> finished;
  std::unordered_map<uint64_t, std::shared_ptr<std::atomic<bool>>> cancelled;  // running shards

  void finish(protocol::ShardResult result) {
    {
      const std::lock_guard<std::mutex> lock(mutex);
      const auto it = cancelled.find(result.attempt_id);
      if (it == cancelled.end()) return;  // cancelled: nobody wants it
      cancelled.erase(it);
      finished.push_back(std::move(result));
    }
    const uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd.get(), &one, sizeof one);
  }
};

namespace {

// One shard, run on its controller thread.
class ShardRun {
 public:
  ShardRun(OpenAiJob job, std::shared_ptr<ServeMetrics> metrics,
           std::shared_ptr<std::atomic<bool>> cancelled)
      : job_(std::move(job)), metrics_(std::move(metrics)), cancelled_(std::move(cancelled)) {}

  protocol::ShardResult run() {
    const auto started = std::chrono::steady_clock::now();
    auto result = job_.identity;
    auto status = prepare();
    if (status.ok()) status = execute();
    if (status.ok()) {
      score(result);
      result.ok = true;
    } else {
      result.ok = false;
      result.error = status.error().message;
    }
    result.duration_ms = static_cast<uint32_t>(std::min<int64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                              started)
            .count(),
        UINT32_MAX));
    return result;
  }

 private:
  Result<bool> prepare() {
    auto url = parse_http_url(job_.endpoint);
    if (!url) return url.error();
    url_ = url.value();
    options_.bearer_token = job_.api_key;
    format_ = job_.params.value("format", std::string("generate"));

    const std::string path = job_.params.value("data", std::string());
    std::ifstream in(path, std::ios::binary);
    if (!in) return make_error("params.data: cannot read " + path + ": " + std::strerror(errno));
    std::string line;
    int64_t number = 0;
    for (; number < job_.end && std::getline(in, line); ++number) {
      if (number < job_.start) continue;
      if (line.size() > kMaxDataLineBytes) {
        return make_error(
            fmt::format("{} line {}: longer than {} bytes", path, number + 1, kMaxDataLineBytes));
      }
      auto status = add_example(number, line, path);
      if (!status.ok()) return status;
    }
    if (number < job_.end) {
      return make_error(fmt::format("{} has {} lines; this shard needs examples [{}, {})", path,
                                    number, job_.start, job_.end));
    }
    return true;
  }

  Result<bool> add_example(int64_t index, const std::string& line, const std::string& path) {
    const auto where = [&] { return fmt::format("{} line {}", path, index + 1); };
    const json doc = json::parse(line, nullptr, false);
    if (!doc.is_object()) return make_error(where() + ": not a JSON object");
    Example example;
    example.index = index;
    json body = {{"model", job_.model}, {"temperature", 0}};
    if (format_ == "generate") {
      const auto prompt = doc.find("prompt");
      if (prompt == doc.end() || !prompt->is_string()) {
        return make_error(where() + ": \"prompt\" must be a string");
      }
      if (!doc.contains("answer")) return make_error(where() + ": \"answer\" is missing");
      example.target = doc["answer"];
      body["prompt"] = *prompt;
      body["max_tokens"] = job_.params.value("max_tokens", 256);
      if (job_.params.contains("stop")) body["stop"] = job_.params["stop"];
      requests_.push_back(Request{examples_.size(), 0, dump(body), 0, 0, {}, 0});
    } else {
      const auto question = doc.find("question");
      const auto choices = doc.find("choices");
      const auto answer = doc.find("answer");
      if (question == doc.end() || !question->is_string()) {
        return make_error(where() + ": \"question\" must be a string");
      }
      if (choices == doc.end() || !choices->is_array() || choices->empty()) {
        return make_error(where() + ": \"choices\" must be a non-empty array of strings");
      }
      if (answer == doc.end() || !answer->is_number_integer() || answer->get<int64_t>() < 0 ||
          answer->get<int64_t>() >= static_cast<int64_t>(choices->size())) {
        return make_error(where() + ": \"answer\" must be the index of one of the choices");
      }
      example.target = *answer;
      example.choices = choices->size();
      std::string context = job_.params.value("template", std::string("{question}\nAnswer:"));
      const auto& question_text = question->get_ref<const std::string&>();
      for (size_t at = context.find("{question}"); at != std::string::npos;
           at = context.find("{question}", at + question_text.size())) {
        context.replace(at, std::string_view("{question}").size(), question_text);
      }
      body["echo"] = true;
      body["logprobs"] = 1;
      body["max_tokens"] = 1;
      for (size_t c = 0; c < choices->size(); ++c) {
        if (!(*choices)[c].is_string()) {
          return make_error(where() + ": \"choices\" must be a non-empty array of strings");
        }
        const std::string prompt = context + " " + (*choices)[c].get<std::string>();
        body["prompt"] = prompt;
        requests_.push_back(Request{
            examples_.size(), c, dump(body), utf8_length(context), utf8_length(prompt), {}, 0});
      }
    }
    examples_.push_back(std::move(example));
    return true;
  }

  Result<bool> execute() {
    const size_t threads =
        std::min(requests_.size(), static_cast<size_t>(std::max(1, job_.max_concurrency)));
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (size_t t = 0; t < threads; ++t) {
      pool.emplace_back([this, t] { request_loop(t); });
    }
    for (auto& thread : pool) thread.join();
    if (cancelled_->load()) return make_error("cancelled");
    if (failure_) return make_error(*failure_);
    return true;
  }

  void request_loop(size_t thread_index) {
    std::mt19937_64 random(std::random_device{}() + thread_index);
    HttpConnection connection(url_, options_);
    uint64_t connects_counted = 0;
    const auto count_connects = [&] {
      if (metrics_ && connection.connects() > connects_counted) {
        metrics_->count_connections(connection.connects() - connects_counted);
      }
      connects_counted = connection.connects();
    };
    while (!stop_.load() && !cancelled_->load()) {
      const size_t i = next_.fetch_add(1);
      if (i >= requests_.size()) break;
      auto status = perform(requests_[i], connection, random);
      count_connects();
      if (!status.ok()) {
        const std::lock_guard<std::mutex> lock(failure_mutex_);
        if (!failure_) {
          failure_ = fmt::format("example {}: {}", examples_[requests_[i].example].index,
                                 status.error().message);
        }
        stop_.store(true);
        break;
      }
    }
    count_connects();
  }

  // Sleeps `seconds` unless the shard is cancelled or failed meanwhile; false then.
  bool backoff(double seconds) {
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    return !sleep_cv_.wait_for(lock, std::chrono::duration<double>(seconds),
                               [this] { return stop_.load() || cancelled_->load(); });
  }

  Result<bool> perform(Request& request, HttpConnection& connection, std::mt19937_64& random) {
    const auto timeout = std::chrono::milliseconds(
        std::llround(std::min(job_.request_timeout_s, 365.0 * 24 * 3600) * 1000));
    std::string last;
    for (int attempt = 0; attempt <= job_.max_retries; ++attempt) {
      if (cancelled_->load() || stop_.load()) return make_error("cancelled");
      const auto sent = std::chrono::steady_clock::now();
      auto response = connection.request("POST", "/completions", request.body, timeout);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
      double retry_after = 0;
      if (!response) {
        last = response.error().message;
      } else if (response->status == 200) {
        auto parsed = read_response(request, response->body);
        if (metrics_) metrics_->count_request(parsed.ok() ? "ok" : "failed", seconds);
        if (!parsed.ok()) {
          return make_error(fmt::format("HTTP 200 with an unusable body ({}): {}",
                                        parsed.error().message, excerpt(response->body)));
        }
        return true;
      } else if (response->status == 429 || response->status >= 500) {
        last = fmt::format("HTTP {}: {}", response->status, excerpt(response->body));
        for (const auto& [name, value] : response->headers) {
          if (name.size() == 11 && strncasecmp(name.c_str(), "Retry-After", 11) == 0) {
            try {
              retry_after = std::min(std::stod(value), kMaxRetryAfterS);
            } catch (const std::exception&) {
              // An HTTP date; our backoff applies.
            }
          }
        }
      } else {
        if (metrics_) metrics_->count_request("failed", seconds);
        return make_error(
            fmt::format("HTTP {} (not retried): {}", response->status, excerpt(response->body)));
      }
      if (attempt == job_.max_retries) {
        if (metrics_) metrics_->count_request("failed", seconds);
        break;
      }
      if (metrics_) metrics_->count_request("retried", seconds);
      const double ceiling =
          std::min(job_.backoff_cap_s, job_.backoff_base_s * std::ldexp(1.0, attempt));
      std::uniform_real_distribution<double> jitter(0.5, 1.0);
      if (!backoff(std::max(retry_after, ceiling * jitter(random)))) {
        return make_error("cancelled");
      }
    }
    return make_error(fmt::format("failed after {} tries; last: {}", job_.max_retries + 1, last));
  }

  Result<bool> read_response(Request& request, const std::string& body) {
    const json doc = json::parse(body, nullptr, false);
    if (!doc.is_object()) return make_error("not a JSON object");
    const auto choices = doc.find("choices");
    if (choices == doc.end() || !choices->is_array() || choices->empty() ||
        !(*choices)[0].is_object()) {
      return make_error("no choices");
    }
    const json& choice = (*choices)[0];
    if (const auto usage = doc.find("usage");
        usage != doc.end() && usage->is_object() && metrics_) {
      const auto count = [&](const char* key) -> uint64_t {
        const auto it = usage->find(key);
        return it != usage->end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
      };
      metrics_->count_tokens(count("prompt_tokens"), count("completion_tokens"));
    }
    if (format_ == "generate") {
      const auto text = choice.find("text");
      if (text == choice.end() || !text->is_string()) return make_error("choices[0].text missing");
      request.text = text->get<std::string>();
      return true;
    }
    auto logprob = continuation_logprob(choice, request.context_chars, request.prompt_chars);
    if (!logprob.ok()) return logprob.error();
    request.logprob = logprob.value();
    return true;
  }

  void score(protocol::ShardResult& result) {
    std::vector<double> best(examples_.size(), -INFINITY);
    std::vector<int64_t> picked(examples_.size(), -1);
    std::vector<std::string> texts(examples_.size());
    for (const auto& request : requests_) {
      if (format_ == "generate") {
        texts[request.example] = request.text;
      } else if (picked[request.example] < 0 || request.logprob > best[request.example]) {
        // Strictly greater: on a tie the lower index (requests are in choice order) stays.
        best[request.example] = request.logprob;
        picked[request.example] = static_cast<int64_t>(request.choice);
      }
    }
    json samples = json::array();
    double total = 0;
    for (size_t e = 0; e < examples_.size(); ++e) {
      const auto& example = examples_[e];
      double value = 0;
      json prediction;
      if (format_ == "generate") {
        value = score_generation(texts[e], example.target, job_.params);
        std::string shown = texts[e];
        if (shown.size() > kMaxPredictionBytes) shown.resize(kMaxPredictionBytes);
        prediction = shown;
      } else {
        value = picked[e] == example.target.get<int64_t>() ? 1 : 0;
        prediction = picked[e];
      }
      total += value;
      samples.push_back({{"index", example.index},
                         {"score", value},
                         {"prediction", std::move(prediction)},
                         {"target", example.target}});
    }
    result.count = static_cast<int64_t>(examples_.size());
    const double accuracy = examples_.empty() ? 0 : total / static_cast<double>(examples_.size());
    result.metrics.emplace_back(job_.metric, accuracy);
    result.samples_json = dump(samples);
  }

  OpenAiJob job_;
  std::shared_ptr<ServeMetrics> metrics_;
  std::shared_ptr<std::atomic<bool>> cancelled_;
  HttpUrl url_;
  HttpClientOptions options_;
  std::string format_;
  std::vector<Example> examples_;
  std::vector<Request> requests_;
  std::atomic<size_t> next_{0};
  std::atomic<bool> stop_{false};
  std::mutex failure_mutex_;
  std::optional<std::string> failure_;
  std::mutex sleep_mutex_;
  std::condition_variable sleep_cv_;
};

}  // namespace

OpenAiRunner::OpenAiRunner(std::shared_ptr<ServeMetrics> metrics)
    : shared_(std::make_shared<Shared>()) {
  shared_->metrics = std::move(metrics);
}

OpenAiRunner::~OpenAiRunner() {
  // Running shards stop sending; their threads end on their own (they own what they use).
  const std::lock_guard<std::mutex> lock(shared_->mutex);
  for (auto& [attempt_id, flag] : shared_->cancelled) flag->store(true);
  shared_->cancelled.clear();
}

void OpenAiRunner::start(OpenAiJob job) {
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  {
    const std::lock_guard<std::mutex> lock(shared_->mutex);
    shared_->cancelled[job.identity.attempt_id] = cancelled;
  }
  std::thread([shared = shared_, job = std::move(job), cancelled]() mutable {
    ShardRun run(std::move(job), shared->metrics, cancelled);
    shared->finish(run.run());
  }).detach();
}

void OpenAiRunner::cancel(uint64_t attempt_id) {
  const std::lock_guard<std::mutex> lock(shared_->mutex);
  const auto it = shared_->cancelled.find(attempt_id);
  if (it == shared_->cancelled.end()) return;
  it->second->store(true);
  shared_->cancelled.erase(it);
}

int OpenAiRunner::wake_fd() const {
  return shared_->wake_fd.get();
}

std::vector<protocol::ShardResult> OpenAiRunner::take_finished() {
  uint64_t ignored = 0;
  [[maybe_unused]] auto n = ::read(shared_->wake_fd.get(), &ignored, sizeof ignored);
  const std::lock_guard<std::mutex> lock(shared_->mutex);
  std::vector<protocol::ShardResult> out;
  out.swap(shared_->finished);
  return out;
}

}  // namespace evald::worker
