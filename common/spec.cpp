// Campaign spec validation and sharding.
//
// A spec arrives from outside (evalctl, the HTTP API), so every field is checked for presence,
// type and range before anything is read from it; nlohmann's throwing accessors are only called
// after the matching is_*() check, which is what makes parse_campaign_spec exception-free on any
// JSON value. Each object is first checked for unknown keys, so a typo such as "shardsize" is
// reported as the typo rather than as the missing "shard_size" it leaves behind. Only the first
// problem is reported; its message starts with the field path ("benchmarks[2].shard_size: ...").
//
// Sizes: examples and shard_size are capped at kMaxExamples, so examples + shard_size fits in
// int64 and BenchmarkSpec::shard_count() cannot overflow. The campaign total (up to
// kMaxModels x kMaxBenchmarks x kMaxExamples, about 1e24) does not fit in int64, so the limit check
// counts in 128 bits and reports the exact number.
//
// Untrusted text: the whole spec is capped at kMaxSpecBytes and parsed with a depth limit
// (common/json_limits.hpp); description, params, labels, runner.command and runner.env have caps
// of their own. Whatever becomes part of a command line or an environment is checked for what
// could change its meaning there: names may not start with '-' (they are substituted into
// arguments), arguments and values may not hold NUL (exec would cut them short), and runner.env
// may not set variables that choose which code a process loads (reserved_env_name).
#include "common/spec.hpp"

#include <spdlog/fmt/fmt.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>
#include <regex>
#include <string>
#include <unordered_set>
#include <utility>

#include "common/json_fields.hpp"
#include "common/json_limits.hpp"
#include "common/sha256.hpp"
#include "common/spec_limits.hpp"
#include "common/utf8.hpp"
#include "common/yaml.hpp"

namespace evald {
namespace {

using nlohmann::json;

// GCC/Clang extension; __extension__ keeps -Wpedantic quiet about it.
__extension__ typedef __int128 Int128;

std::string to_decimal(Int128 value) {
  if (value == 0) return "0";
  const bool negative = value < 0;
  std::string digits;
  while (value != 0) {
    const auto digit = static_cast<int>(value % 10);
    digits.push_back(static_cast<char>('0' + (negative ? -digit : digit)));
    value /= 10;
  }
  if (negative) digits.push_back('-');
  std::reverse(digits.begin(), digits.end());
  return digits;
}

std::string join(std::string_view path, std::string_view key) {
  if (path.empty()) return std::string(key);
  return fmt::format("{}.{}", path, key);
}

std::string index_path(std::string_view path, size_t index) {
  return fmt::format("{}[{}]", path, index);
}

// Keys come from the user and end up in an error message that is logged and shown in a terminal:
// keep them printable and short.
std::string printable(std::string_view text) {
  constexpr size_t kMaxShown = 64;
  std::string out;
  for (const char c : text.substr(0, kMaxShown)) {
    const bool visible = c >= 0x20 && c < 0x7f;
    out.push_back(visible ? c : '?');
  }
  if (text.size() > kMaxShown) out += "...";
  return out;
}

Error field_error(std::string_view path, std::string_view problem) {
  return make_error(fmt::format("{}: {}", path, problem));
}

// Refuses any key of `object` (which must be an object) that is not in `known`.
std::optional<Error> check_known_fields(const json& object, std::string_view path,
                                        std::initializer_list<std::string_view> known) {
  for (const auto& item : object.items()) {
    if (std::find(known.begin(), known.end(), item.key()) == known.end()) {
      return field_error(join(path, printable(item.key())), "unknown field");
    }
  }
  return std::nullopt;
}

// Names appear in metric labels, store keys and file names, hence the narrow alphabet; "." and
// ".." are refused too because they mean something else as a path component.
Result<std::string> read_name(const json& object, std::string_view path) {
  const std::string field = join(path, "name");
  const json* value = find_field(object, "name");
  if (value == nullptr) return field_error(field, "is required");
  if (!value->is_string()) return field_error(field, "must be a string");
  const auto& name = value->get_ref<const std::string&>();
  if (name.empty()) return field_error(field, "must not be empty");
  if (name.size() > kMaxNameLength) {
    return field_error(field, fmt::format("must be at most {} characters", kMaxNameLength));
  }
  const bool allowed = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  if (!allowed) {
    return field_error(field, "may contain only letters, digits, '.', '_' and '-'");
  }
  if (name == "." || name == "..") return field_error(field, "must not be '.' or '..'");
  // {model} and {benchmark} become command-line arguments: "-rf" must not read as an option.
  if (name.front() == '-') return field_error(field, "must not start with '-'");
  return name;
}

// An optional object-valued field; absent means {}.
Result<json> read_optional_object(const json& object, std::string_view key, std::string_view path) {
  const json* value = find_field(object, key);
  if (value == nullptr) return json::object();
  if (!value->is_object()) return field_error(join(path, key), "must be an object");
  return *value;
}

// params travel untouched to the runner (stdin) and with the spec to every worker: bounded in
// depth first (so that dump() below cannot recurse too far on a value built in memory), then in
// size.
Result<json> read_params(const json& object, std::string_view path) {
  auto params = read_optional_object(object, "params", path);
  if (!params) return params;
  const std::string field = join(path, "params");
  if (json_deeper_than(*params, kMaxParamsDepth)) {
    return field_error(field, fmt::format("nests deeper than {} levels", kMaxParamsDepth));
  }
  const size_t bytes = params->dump().size();
  if (bytes > kMaxParamsBytes) {
    return field_error(field, fmt::format("is {} bytes as JSON; the limit is {} (64 KiB)", bytes,
                                          kMaxParamsBytes));
  }
  return params;
}

// Text that is shown in terminals and log lines: no control characters.
bool has_control_character(std::string_view text) {
  return std::any_of(text.begin(), text.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte < 0x20 || byte == 0x7f;
  });
}

// A required integer in [1, max].
Result<int64_t> read_positive_integer(const json& object, std::string_view key,
                                      std::string_view path, int64_t max) {
  const std::string field = join(path, key);
  const json* value = find_field(object, key);
  if (value == nullptr) return field_error(field, "is required");
  const auto number = integer_value(*value);
  if (!number || *number <= 0) return field_error(field, "must be a positive integer");
  if (*number > max) return field_error(field, fmt::format("must be at most {}", max));
  return *number;
}

// An optional integer in [min, max].
Result<int> read_bounded_integer(const json& object, std::string_view key, int fallback, int min,
                                 int max) {
  const json* value = find_field(object, key);
  if (value == nullptr) return fallback;
  const auto number = integer_value(*value);
  if (!number || *number < min || *number > max) {
    return field_error(key, fmt::format("must be an integer from {} to {}", min, max));
  }
  return static_cast<int>(*number);
}

Result<ResourceSpec> parse_resources(const json& model, std::string_view model_path) {
  ResourceSpec out;
  const json* value = find_field(model, "resources");
  if (value == nullptr) return out;
  const std::string path = join(model_path, "resources");
  if (!value->is_object()) return field_error(path, "must be an object");
  if (auto error = check_known_fields(*value, path, {"gpus", "gpu_memory_gb", "labels"})) {
    return *std::move(error);
  }
  if (const json* gpus = find_field(*value, "gpus")) {
    const auto n = integer_value(*gpus);
    if (!n || *n < 0 || *n > kMaxGpusPerShard) {
      return field_error(join(path, "gpus"),
                         fmt::format("must be an integer from 0 to {}", kMaxGpusPerShard));
    }
    out.gpus = static_cast<int>(*n);
  }
  if (const json* memory = find_field(*value, "gpu_memory_gb")) {
    if (!memory->is_number() || !std::isfinite(memory->get<double>()) ||
        memory->get<double>() < 0 || memory->get<double>() > 1e6) {
      return field_error(join(path, "gpu_memory_gb"), "must be a number from 0 to 1000000");
    }
    out.gpu_memory_gb = memory->get<double>();
  }
  if (const json* labels = find_field(*value, "labels")) {
    if (!labels->is_object()) return field_error(join(path, "labels"), "must be an object");
    if (labels->size() > kMaxLabelsPerModel) {
      return field_error(join(path, "labels"), fmt::format("has {} entries; the limit is {}",
                                                           labels->size(), kMaxLabelsPerModel));
    }
    for (const auto& [key, label] : labels->items()) {
      if (key.empty() || key.size() > kMaxLabelBytes ||
          key.find_first_of(",=") != std::string::npos || has_control_character(key)) {
        return field_error(join(path, "labels"),
                           fmt::format("'{}' is not a valid label name", printable(key)));
      }
      if (!label.is_string()) {
        return field_error(join(join(path, "labels"), printable(key)), "must be a string");
      }
      if (label.get_ref<const std::string&>().size() > kMaxLabelBytes ||
          has_control_character(label.get_ref<const std::string&>())) {
        return field_error(
            join(join(path, "labels"), printable(key)),
            fmt::format("must be at most {} bytes, without control characters", kMaxLabelBytes));
      }
      out.labels[key] = label.get<std::string>();
    }
  }
  return out;
}

Result<std::vector<std::string>> parse_command(const json& command, std::string_view field);
Result<json> parse_env(const json& owner, std::string_view path);

// A positive number of seconds up to `max`; absent means `fallback`. zero_ok admits 0.
Result<double> read_seconds(const json& object, std::string_view key, std::string_view path,
                            double fallback, double max, bool zero_ok = false) {
  const json* value = find_field(object, key);
  if (value == nullptr) return fallback;
  const std::string field = join(path, key);
  if (!value->is_number() || !std::isfinite(value->get<double>()) || value->get<double>() < 0 ||
      (!zero_ok && value->get<double>() == 0)) {
    return field_error(field, zero_ok ? "must be a number of seconds, 0 or more"
                                      : "must be a positive number of seconds");
  }
  if (value->get<double>() > max) return field_error(field, fmt::format("must be at most {}", max));
  return value->get<double>();
}

// A short string without control characters; the caller says whether it may be empty.
Result<std::string> read_short_string(const json& value, std::string_view field, size_t max_bytes,
                                      bool allow_empty = false) {
  if (!value.is_string()) return field_error(field, "must be a string");
  const auto& text = value.get_ref<const std::string&>();
  if (text.empty() && !allow_empty) return field_error(field, "must not be empty");
  if (text.size() > max_bytes) {
    return field_error(field, fmt::format("must be at most {} bytes", max_bytes));
  }
  if (has_control_character(text)) return field_error(field, "must not contain control characters");
  return text;
}

Result<ServeSpec> parse_serve(const json& value, const std::string& path) {
  if (!value.is_object()) return field_error(path, "must be an object");
  if (auto error = check_known_fields(
          value, path,
          {"command", "health", "ready_timeout_s", "keep_warm_s", "env", "model_id"})) {
    return *std::move(error);
  }
  ServeSpec out;
  const json* command = find_field(value, "command");
  if (command == nullptr) return field_error(join(path, "command"), "is required");
  auto parsed = parse_command(*command, join(path, "command"));
  if (!parsed) return parsed.error();
  out.command = std::move(parsed).value();
  if (const json* health = find_field(value, "health")) {
    auto text = read_short_string(*health, join(path, "health"), kMaxServeHealthBytes);
    if (!text) return text.error();
    if (text->front() != '/' || text->find_first_of(" ?#") != std::string::npos) {
      return field_error(join(path, "health"),
                         "must be a URL path starting with '/' (no spaces, query or fragment)");
    }
    out.health = std::move(text).value();
  }
  auto ready =
      read_seconds(value, "ready_timeout_s", path, out.ready_timeout_s, kMaxRunnerTimeoutS);
  if (!ready) return ready.error();
  out.ready_timeout_s = ready.value();
  auto warm = read_seconds(value, "keep_warm_s", path, out.keep_warm_s, kMaxRunnerTimeoutS, true);
  if (!warm) return warm.error();
  out.keep_warm_s = warm.value();
  auto env = parse_env(value, path);
  if (!env) return env.error();
  out.env = std::move(env).value();
  if (const json* model_id = find_field(value, "model_id")) {
    auto text = read_short_string(*model_id, join(path, "model_id"), kMaxServedModelBytes);
    if (!text) return text.error();
    out.model_id = std::move(text).value();
  }
  return out;
}

Result<EndpointSpec> parse_endpoint(const json& value, const std::string& path) {
  if (!value.is_object()) return field_error(path, "must be an object");
  if (auto error = check_known_fields(value, path, {"url", "model", "api_key_env"})) {
    return *std::move(error);
  }
  EndpointSpec out;
  const json* url = find_field(value, "url");
  if (url == nullptr) return field_error(join(path, "url"), "is required");
  auto url_text = read_short_string(*url, join(path, "url"), kMaxEndpointUrlBytes);
  if (!url_text) return url_text.error();
  const bool http = url_text->rfind("http://", 0) == 0 || url_text->rfind("https://", 0) == 0;
  if (!http || url_text->find_first_of(" ?#@") != std::string::npos) {
    return field_error(join(path, "url"),
                       "must be an http:// or https:// base URL such as http://host:8000/v1 "
                       "(no user info, query or fragment)");
  }
  out.url = std::move(url_text).value();
  while (!out.url.empty() && out.url.back() == '/') out.url.pop_back();
  const json* model = find_field(value, "model");
  if (model == nullptr) return field_error(join(path, "model"), "is required");
  auto model_text = read_short_string(*model, join(path, "model"), kMaxServedModelBytes);
  if (!model_text) return model_text.error();
  out.model = std::move(model_text).value();
  if (const json* key_env = find_field(value, "api_key_env")) {
    if (!key_env->is_string() || !valid_env_name(key_env->get_ref<const std::string&>())) {
      return field_error(join(path, "api_key_env"),
                         "must be an environment variable name (letters, digits and '_', not "
                         "starting with a digit)");
    }
    out.api_key_env = key_env->get<std::string>();
  }
  return out;
}

Result<std::vector<ModelSpec>> parse_models(const json& spec) {
  const json* models = find_field(spec, "models");
  if (models == nullptr) return field_error("models", "is required");
  if (!models->is_array() || models->empty()) {
    return field_error("models", "must be a non-empty array");
  }
  if (models->size() > kMaxModels) {
    return field_error("models",
                       fmt::format("has {} entries; the limit is {}", models->size(), kMaxModels));
  }
  std::vector<ModelSpec> out;
  out.reserve(models->size());
  std::unordered_set<std::string> seen;
  for (size_t i = 0; i < models->size(); ++i) {
    const json& entry = (*models)[i];
    const std::string path = index_path("models", i);
    if (!entry.is_object()) return field_error(path, "must be an object");
    if (auto error =
            check_known_fields(entry, path, {"name", "params", "resources", "serve", "endpoint"})) {
      return *std::move(error);
    }
    auto name = read_name(entry, path);
    if (!name) return name.error();
    if (!seen.insert(name.value()).second) {
      return field_error(join(path, "name"),
                         fmt::format("duplicate model name '{}'", name.value()));
    }
    auto params = read_params(entry, path);
    if (!params) return params.error();
    auto resources = parse_resources(entry, path);
    if (!resources) return resources.error();
    ModelSpec model;
    model.name = std::move(name).value();
    model.params = std::move(params).value();
    model.resources = std::move(resources).value();
    const json* serve = find_field(entry, "serve");
    const json* endpoint = find_field(entry, "endpoint");
    if (serve != nullptr && endpoint != nullptr) {
      return field_error(path, "has both serve and endpoint; give one of them");
    }
    if (serve != nullptr) {
      auto parsed = parse_serve(*serve, join(path, "serve"));
      if (!parsed) return parsed.error();
      model.serve = std::move(parsed).value();
    }
    if (endpoint != nullptr) {
      auto parsed = parse_endpoint(*endpoint, join(path, "endpoint"));
      if (!parsed) return parsed.error();
      model.endpoint = std::move(parsed).value();
    }
    out.push_back(std::move(model));
  }
  return out;
}

Result<BenchmarkSpec> parse_benchmark(const json& entry, const std::string& path) {
  if (!entry.is_object()) return field_error(path, "must be an object");
  if (auto error = check_known_fields(
          entry, path,
          {"name", "examples", "shard_size", "metric", "higher_is_better", "params"})) {
    return *std::move(error);
  }
  BenchmarkSpec benchmark;
  auto name = read_name(entry, path);
  if (!name) return name.error();
  benchmark.name = std::move(name).value();

  auto examples = read_positive_integer(entry, "examples", path, kMaxExamples);
  if (!examples) return examples.error();
  benchmark.examples = examples.value();

  auto shard_size = read_positive_integer(entry, "shard_size", path, kMaxExamples);
  if (!shard_size) return shard_size.error();
  benchmark.shard_size = shard_size.value();

  if (const json* metric = find_field(entry, "metric")) {
    const std::string field = join(path, "metric");
    if (!metric->is_string() || metric->get_ref<const std::string&>().empty()) {
      return field_error(field, "must be a non-empty string");
    }
    const auto& metric_name = metric->get_ref<const std::string&>();
    if (metric_name.size() > kMaxNameLength) {
      return field_error(field, fmt::format("must be at most {} characters", kMaxNameLength));
    }
    if (metric_name.front() == '-') return field_error(field, "must not start with '-'");
    if (has_control_character(metric_name)) {
      return field_error(field, "must not contain control characters");
    }
    benchmark.metric = metric->get<std::string>();
  }

  if (const json* higher = find_field(entry, "higher_is_better")) {
    if (!higher->is_boolean()) {
      return field_error(join(path, "higher_is_better"), "must be true or false");
    }
    benchmark.higher_is_better = higher->get<bool>();
  }

  auto params = read_params(entry, path);
  if (!params) return params.error();
  benchmark.params = std::move(params).value();
  if (const auto pin = benchmark.params.find("data_sha256"); pin != benchmark.params.end()) {
    const std::string field = join(join(path, "params"), "data_sha256");
    if (!pin->is_string() || !is_sha256_hex(pin->get_ref<const std::string&>())) {
      return field_error(field, "must be a SHA-256 digest: 64 lowercase hex digits");
    }
    const auto data = benchmark.params.find("data");
    if (data == benchmark.params.end() || !data->is_string()) {
      return field_error(field, "pins params.data, which must then be a file path (a string)");
    }
  }
  return benchmark;
}

Result<std::optional<ScoringSpec>> parse_scoring(const json& spec) {
  const json* scoring = find_field(spec, "scoring");
  if (scoring == nullptr) return std::optional<ScoringSpec>{};
  if (!scoring->is_object()) return field_error("scoring", "must be an object");
  if (auto error = check_known_fields(*scoring, "scoring", {"weights"})) return *std::move(error);
  const json* weights = find_field(*scoring, "weights");
  if (weights == nullptr) return field_error("scoring.weights", "is required");
  if (!weights->is_object() || weights->empty()) {
    return field_error("scoring.weights", "must be a non-empty object of component: weight");
  }
  if (weights->size() > kMaxScoringComponents) {
    return field_error("scoring.weights", fmt::format("has {} components; the limit is {}",
                                                      weights->size(), kMaxScoringComponents));
  }
  ScoringSpec out;
  double total = 0;
  for (const auto& [name, weight] : weights->items()) {
    const std::string field = "scoring.weights." + name;
    if (name.empty() || name.size() > kMaxNameLength || has_control_character(name)) {
      return field_error("scoring.weights", fmt::format("component names must be 1..{} printable "
                                                        "characters",
                                                        kMaxNameLength));
    }
    if (!weight.is_number() || !std::isfinite(weight.get<double>()) || weight.get<double>() < 0) {
      return field_error(field, "must be a non-negative number");
    }
    total += weight.get<double>();
    out.weights.emplace(name, weight.get<double>());
  }
  if (!(total > 0)) return field_error("scoring.weights", "must have a positive weight");
  return std::optional<ScoringSpec>{std::move(out)};
}

Result<std::vector<BenchmarkSpec>> parse_benchmarks(const json& spec) {
  const json* benchmarks = find_field(spec, "benchmarks");
  if (benchmarks == nullptr) return field_error("benchmarks", "is required");
  if (!benchmarks->is_array() || benchmarks->empty()) {
    return field_error("benchmarks", "must be a non-empty array");
  }
  if (benchmarks->size() > kMaxBenchmarks) {
    return field_error("benchmarks", fmt::format("has {} entries; the limit is {}",
                                                 benchmarks->size(), kMaxBenchmarks));
  }
  std::vector<BenchmarkSpec> out;
  out.reserve(benchmarks->size());
  std::unordered_set<std::string> seen;
  for (size_t i = 0; i < benchmarks->size(); ++i) {
    const std::string path = index_path("benchmarks", i);
    auto benchmark = parse_benchmark((*benchmarks)[i], path);
    if (!benchmark) return benchmark.error();
    if (!seen.insert(benchmark->name).second) {
      return field_error(join(path, "name"),
                         fmt::format("duplicate benchmark name '{}'", benchmark->name));
    }
    out.push_back(std::move(benchmark).value());
  }
  return out;
}

Result<std::vector<std::string>> parse_command(const json& command, std::string_view field) {
  if (!command.is_array() || command.empty()) {
    return field_error(field, "must be a non-empty array of strings");
  }
  if (command.size() > kMaxCommandArgs) {
    return field_error(
        field, fmt::format("has {} entries; the limit is {}", command.size(), kMaxCommandArgs));
  }
  std::vector<std::string> out;
  out.reserve(command.size());
  for (size_t i = 0; i < command.size(); ++i) {
    const std::string path = index_path(field, i);
    if (!command[i].is_string()) return field_error(path, "must be a string");
    const auto& argument = command[i].get_ref<const std::string&>();
    if (argument.empty()) return field_error(path, "must not be empty");
    if (argument.size() > kMaxCommandArgBytes) {
      return field_error(path, fmt::format("must be at most {} bytes", kMaxCommandArgBytes));
    }
    // exec() takes C strings: a NUL would silently end the argument there.
    if (argument.find('\0') != std::string::npos) {
      return field_error(path, "must not contain a NUL character");
    }
    out.push_back(command[i].get<std::string>());
  }
  return out;
}

Result<json> parse_env(const json& owner, std::string_view path) {
  const std::string env_path = join(path, "env");
  const json* env = find_field(owner, "env");
  if (env == nullptr) return json::object();
  if (!env->is_object()) return field_error(env_path, "must be an object");
  if (env->size() > kMaxEnvVars) {
    return field_error(env_path,
                       fmt::format("has {} entries; the limit is {}", env->size(), kMaxEnvVars));
  }
  for (const auto& item : env->items()) {
    const std::string& key = item.key();
    // Also what setenv() and exec accept: no '=', no NUL.
    if (!valid_env_name(key)) {
      return field_error(env_path,
                         fmt::format("'{}' is not a valid variable name (letters, digits and '_', "
                                     "not starting with a digit, at most {} bytes)",
                                     printable(key), kMaxEnvNameBytes));
    }
    const std::string field = join(env_path, key);
    if (auto reason = reserved_env_name(key)) return field_error(field, *reason);
    if (!item.value().is_string()) return field_error(field, "must be a string");
    const auto& value = item.value().get_ref<const std::string&>();
    if (value.size() > kMaxEnvValueBytes) {
      return field_error(field, fmt::format("must be at most {} bytes", kMaxEnvValueBytes));
    }
    if (value.find('\0') != std::string::npos) {
      return field_error(field, "must not contain a NUL character");
    }
  }
  return *env;
}

Result<RunnerSpec> parse_runner(const json& spec) {
  const json* runner = find_field(spec, "runner");
  if (runner == nullptr) return field_error("runner", "is required");
  if (!runner->is_object()) return field_error("runner", "must be an object");
  if (auto error = check_known_fields(*runner, "runner",
                                      {"type", "command", "timeout_s", "env", "max_concurrency",
                                       "request_timeout_s", "max_retries"})) {
    return *std::move(error);
  }
  RunnerSpec out;
  if (const json* type = find_field(*runner, "type")) {
    const bool is_exec = type->is_string() && type->get_ref<const std::string&>() == "exec";
    const bool is_noop = type->is_string() && type->get_ref<const std::string&>() == "noop";
    const bool is_openai = type->is_string() && type->get_ref<const std::string&>() == "openai";
    if (!is_exec && !is_noop && !is_openai) {
      return field_error("runner.type", R"(must be "exec", "noop" or "openai")");
    }
    out.type = is_exec ? RunnerType::kExec : is_noop ? RunnerType::kNoop : RunnerType::kOpenAi;
  }
  // The openai runner's own settings are refused for the other runners: they would do nothing.
  for (const char* key : {"max_concurrency", "request_timeout_s", "max_retries"}) {
    if (out.type != RunnerType::kOpenAi && find_field(*runner, key) != nullptr) {
      return field_error(join("runner", key), "applies only to the openai runner");
    }
  }
  if (out.type == RunnerType::kOpenAi) {
    const json* concurrency = find_field(*runner, "max_concurrency");
    if (concurrency != nullptr) {
      const auto n = integer_value(*concurrency);
      if (!n || *n < 1 || *n > kMaxRunnerConcurrency) {
        return field_error("runner.max_concurrency",
                           fmt::format("must be an integer from 1 to {}", kMaxRunnerConcurrency));
      }
      out.max_concurrency = static_cast<int>(*n);
    }
    const json* retries = find_field(*runner, "max_retries");
    if (retries != nullptr) {
      const auto n = integer_value(*retries);
      if (!n || *n < 0 || *n > kMaxRunnerRetries) {
        return field_error("runner.max_retries",
                           fmt::format("must be an integer from 0 to {}", kMaxRunnerRetries));
      }
      out.max_retries = static_cast<int>(*n);
    }
    auto request_timeout = read_seconds(*runner, "request_timeout_s", "runner",
                                        out.request_timeout_s, kMaxRunnerTimeoutS);
    if (!request_timeout) return request_timeout.error();
    out.request_timeout_s = request_timeout.value();
  }

  // The noop runner starts no process, so a command there is ignored rather than refused: that
  // lets a user switch an exec spec to noop (to measure the control plane) by changing one word.
  if (out.type == RunnerType::kExec) {
    const json* command = find_field(*runner, "command");
    if (command == nullptr) return field_error("runner.command", "is required for the exec runner");
    auto parsed = parse_command(*command, "runner.command");
    if (!parsed) return parsed.error();
    out.command = std::move(parsed).value();
  }

  if (const json* timeout = find_field(*runner, "timeout_s")) {
    if (!timeout->is_number() || !std::isfinite(timeout->get<double>()) ||
        timeout->get<double>() <= 0) {
      return field_error("runner.timeout_s", "must be a positive number of seconds");
    }
    if (timeout->get<double>() > kMaxRunnerTimeoutS) {
      return field_error("runner.timeout_s",
                         fmt::format("must be at most {} (7 days)", kMaxRunnerTimeoutS));
    }
    out.timeout_s = timeout->get<double>();
  }

  auto env = parse_env(*runner, "runner");
  if (!env) return env.error();
  out.env = std::move(env).value();
  return out;
}

// The built-in openai runner reads these benchmark params (docs/runners.md); other params are the
// benchmark's own business and pass untouched.
std::optional<Error> check_openai_params(const json& params, const std::string& path) {
  const auto field = [&](std::string_view key) { return join(join(path, "params"), key); };
  const json* data = find_field(params, "data");
  if (data == nullptr) return field_error(field("data"), "is required for the openai runner");
  if (auto text = read_short_string(*data, field("data"), kMaxCommandArgBytes); !text) {
    return text.error();
  }
  const json* format = find_field(params, "format");
  if (format == nullptr) return field_error(field("format"), "is required for the openai runner");
  const bool generate = format->is_string() && format->get_ref<const std::string&>() == "generate";
  const bool choice =
      format->is_string() && format->get_ref<const std::string&>() == "multiple_choice";
  if (!generate && !choice) {
    return field_error(field("format"), R"(must be "generate" or "multiple_choice")");
  }
  if (const json* max_tokens = find_field(params, "max_tokens")) {
    const auto n = integer_value(*max_tokens);
    if (!n || *n < 1 || *n > kMaxGenerateTokens) {
      return field_error(field("max_tokens"),
                         fmt::format("must be an integer from 1 to {}", kMaxGenerateTokens));
    }
  }
  if (const json* stop = find_field(params, "stop")) {
    const auto stop_error = [&] {
      return field_error(field("stop"), fmt::format("must be a non-empty string or an array of 1 "
                                                    "to {} non-empty strings",
                                                    kMaxStopSequences));
    };
    if (stop->is_string()) {
      if (stop->get_ref<const std::string&>().empty()) return stop_error();
    } else if (stop->is_array()) {
      if (stop->empty() || stop->size() > kMaxStopSequences) return stop_error();
      for (const auto& item : *stop) {
        if (!item.is_string() || item.get_ref<const std::string&>().empty()) return stop_error();
      }
    } else {
      return stop_error();
    }
  }
  std::string match = "exact";
  if (const json* value = find_field(params, "match")) {
    const bool known = value->is_string() && (value->get_ref<const std::string&>() == "exact" ||
                                              value->get_ref<const std::string&>() == "number" ||
                                              value->get_ref<const std::string&>() == "regex");
    if (!known) return field_error(field("match"), R"(must be "exact", "number" or "regex")");
    match = value->get<std::string>();
  }
  const json* extract = find_field(params, "extract");
  if (match == "regex") {
    if (extract == nullptr)
      return field_error(field("extract"), "is required with match \"regex\"");
    if (!extract->is_string() || extract->get_ref<const std::string&>().empty()) {
      return field_error(field("extract"), "must be a non-empty string");
    }
    if (auto error = check_extract_regex(extract->get_ref<const std::string&>())) {
      return field_error(field("extract"), *error);
    }
  } else if (extract != nullptr) {
    return field_error(field("extract"), "applies only with match \"regex\"");
  }
  if (const json* tmpl = find_field(params, "template")) {
    if (!tmpl->is_string()) return field_error(field("template"), "must be a string");
    if (tmpl->get_ref<const std::string&>().find("{question}") == std::string::npos) {
      return field_error(field("template"), "must contain {question}");
    }
  }
  return std::nullopt;
}

std::optional<Error> check_openai_campaign(const CampaignSpec& spec) {
  for (size_t i = 0; i < spec.models.size(); ++i) {
    const auto& model = spec.models[i];
    if (!model.serve && !model.endpoint) {
      return field_error(index_path("models", i),
                         "needs serve or endpoint: the openai runner talks to a model server");
    }
  }
  for (size_t i = 0; i < spec.benchmarks.size(); ++i) {
    if (auto error = check_openai_params(spec.benchmarks[i].params, index_path("benchmarks", i))) {
      return error;
    }
  }
  return std::nullopt;
}

Int128 count_shards(const std::vector<ModelSpec>& models,
                    const std::vector<BenchmarkSpec>& benchmarks) {
  Int128 per_model = 0;
  for (const auto& benchmark : benchmarks) per_model += benchmark.shard_count();
  return per_model * static_cast<Int128>(models.size());
}

}  // namespace

int64_t CampaignSpec::total_shards() const {
  const Int128 total = count_shards(models, benchmarks);
  constexpr auto kMax = std::numeric_limits<int64_t>::max();
  return total > kMax ? kMax : static_cast<int64_t>(total);
}

ShardRange shard_range(const BenchmarkSpec& benchmark, int64_t index) {
  // Written as start + min(shard_size, examples - start) so that no intermediate exceeds
  // examples, whatever shard_size is.
  const int64_t start = index * benchmark.shard_size;
  const int64_t end = start + std::min(benchmark.shard_size, benchmark.examples - start);
  return ShardRange{start, end};
}

Result<CampaignSpec> parse_campaign_spec(const nlohmann::json& json) {
  if (!json.is_object()) return make_error("spec: must be a JSON object");
  if (auto error =
          check_known_fields(json, "",
                             {"name", "description", "models", "benchmarks", "runner",
                              "max_attempts", "priority", "reuse", "backup_copies", "scoring"})) {
    return *std::move(error);
  }
  CampaignSpec spec;
  auto name = read_name(json, "");
  if (!name) return name.error();
  spec.name = std::move(name).value();

  if (const auto* description = find_field(json, "description")) {
    if (!description->is_string()) return field_error("description", "must be a string");
    const size_t bytes = description->get_ref<const std::string&>().size();
    if (bytes > kMaxDescriptionBytes) {
      return field_error("description", fmt::format("is {} bytes; the limit is {} (4 KiB)", bytes,
                                                    kMaxDescriptionBytes));
    }
    spec.description = description->get<std::string>();
  }

  auto models = parse_models(json);
  if (!models) return models.error();
  spec.models = std::move(models).value();

  auto benchmarks = parse_benchmarks(json);
  if (!benchmarks) return benchmarks.error();
  spec.benchmarks = std::move(benchmarks).value();

  auto runner = parse_runner(json);
  if (!runner) return runner.error();
  spec.runner = std::move(runner).value();

  if (spec.runner.type == RunnerType::kOpenAi) {
    if (auto error = check_openai_campaign(spec)) return *std::move(error);
  }

  auto max_attempts = read_bounded_integer(json, "max_attempts", 3, 1, 100);
  if (!max_attempts) return max_attempts.error();
  spec.max_attempts = max_attempts.value();

  auto priority = read_bounded_integer(json, "priority", 0, -1'000'000, 1'000'000);
  if (!priority) return priority.error();
  spec.priority = priority.value();

  if (const nlohmann::json* reuse = find_field(json, "reuse")) {
    if (!reuse->is_boolean()) return field_error("reuse", "must be true or false");
    spec.reuse = reuse->get<bool>();
  }
  if (const nlohmann::json* backup = find_field(json, "backup_copies")) {
    if (!backup->is_boolean()) return field_error("backup_copies", "must be true or false");
    spec.backup_copies = backup->get<bool>();
  }
  auto scoring = parse_scoring(json);
  if (!scoring) return scoring.error();
  spec.scoring = std::move(scoring).value();

  const Int128 shards = count_shards(spec.models, spec.benchmarks);
  if (shards > kMaxShardsPerCampaign) {
    return make_error(fmt::format("campaign has {} shards; the limit is {}", to_decimal(shards),
                                  kMaxShardsPerCampaign));
  }
  return spec;
}

Result<CampaignSpec> parse_campaign_spec_yaml(std::string_view text) {
  if (text.size() > kMaxSpecBytes) {
    return make_error(
        fmt::format("spec is {} bytes; the limit is {} (1 MiB)", text.size(), kMaxSpecBytes));
  }
  // yaml-cpp passes bytes through; the JSON parser refuses invalid UTF-8, so YAML must too (a
  // string that is not UTF-8 would make every later dump of the spec throw).
  if (!utf8::is_valid(text)) return make_error("spec is not valid UTF-8");
  auto json = yaml_to_json(text);
  if (!json) return make_error("spec " + json.error().message);
  return parse_campaign_spec(*json);
}

bool is_yaml_path(std::string_view path) {
  const auto ends_with = [path](std::string_view suffix) {
    return path.size() >= suffix.size() && path.substr(path.size() - suffix.size()) == suffix;
  };
  return ends_with(".yaml") || ends_with(".yml") || ends_with(".YAML") || ends_with(".YML");
}

const std::string& ModelSpec::served_name() const {
  if (serve && !serve->model_id.empty()) return serve->model_id;
  if (endpoint) return endpoint->model;
  return name;
}

Result<CampaignSpec> parse_campaign_spec_text(std::string_view text) {
  if (text.size() > kMaxSpecBytes) {
    return make_error(
        fmt::format("spec is {} bytes; the limit is {} (1 MiB)", text.size(), kMaxSpecBytes));
  }
  auto json = parse_json_bounded(text);
  if (!json) return make_error("spec " + json.error().message);
  return parse_campaign_spec(*json);
}

nlohmann::json to_json(const CampaignSpec& spec) {
  json models = json::array();
  for (const auto& model : spec.models) {
    json resources = {{"gpu_memory_gb", model.resources.gpu_memory_gb},
                      {"labels", model.resources.labels}};
    if (model.resources.gpus) resources["gpus"] = *model.resources.gpus;
    json entry = {{"name", model.name}, {"params", model.params}, {"resources", resources}};
    if (model.serve) {
      entry["serve"] = {{"command", model.serve->command},
                        {"health", model.serve->health},
                        {"ready_timeout_s", model.serve->ready_timeout_s},
                        {"keep_warm_s", model.serve->keep_warm_s},
                        {"env", model.serve->env}};
      if (!model.serve->model_id.empty()) entry["serve"]["model_id"] = model.serve->model_id;
    }
    if (model.endpoint) {
      entry["endpoint"] = {{"url", model.endpoint->url}, {"model", model.endpoint->model}};
      if (!model.endpoint->api_key_env.empty()) {
        entry["endpoint"]["api_key_env"] = model.endpoint->api_key_env;
      }
    }
    models.push_back(std::move(entry));
  }
  json benchmarks = json::array();
  for (const auto& benchmark : spec.benchmarks) {
    benchmarks.push_back({{"name", benchmark.name},
                          {"examples", benchmark.examples},
                          {"shard_size", benchmark.shard_size},
                          {"metric", benchmark.metric},
                          {"higher_is_better", benchmark.higher_is_better},
                          {"params", benchmark.params}});
  }
  json runner = {{"type", to_string(spec.runner.type)},
                 {"timeout_s", spec.runner.timeout_s},
                 {"env", spec.runner.env}};
  if (spec.runner.type == RunnerType::kExec) runner["command"] = spec.runner.command;
  if (spec.runner.type == RunnerType::kOpenAi) {
    runner["max_concurrency"] = spec.runner.max_concurrency;
    runner["request_timeout_s"] = spec.runner.request_timeout_s;
    runner["max_retries"] = spec.runner.max_retries;
  }
  json out{{"name", spec.name},           {"description", spec.description},
           {"models", std::move(models)}, {"benchmarks", std::move(benchmarks)},
           {"runner", std::move(runner)}, {"max_attempts", spec.max_attempts},
           {"priority", spec.priority}};
  // Only when set, so the canonical form (and its hash) of a spec without them is unchanged.
  if (spec.reuse) out["reuse"] = true;
  if (spec.backup_copies) out["backup_copies"] = true;
  if (spec.scoring) out["scoring"] = {{"weights", spec.scoring->weights}};
  return out;
}

bool valid_env_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxEnvNameBytes) return false;
  if (name.front() >= '0' && name.front() <= '9') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

std::optional<std::string> reserved_env_name(std::string_view name) {
  const auto starts_with = [name](std::string_view prefix) {
    return name.substr(0, prefix.size()) == prefix;
  };
  // The dynamic loader reads every LD_* variable (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...).
  if (starts_with("LD_")) {
    return std::string("may not be set by a spec: LD_* variables choose the code a process loads");
  }
  if (starts_with("EVALD_")) {
    return std::string("may not be set by a spec: EVALD_* variables are set by evald");
  }
  // Variables that make a shell, an interpreter or the C library load code from where they
  // point. The runner itself can still set any of them for what it starts; a spec cannot.
  static constexpr std::string_view kCodeLoading[] = {
      "PATH",    "PYTHONPATH",   "PYTHONHOME", "PYTHONUSERBASE", "BASH_ENV",
      "ENV",     "PERL5LIB",     "PERLLIB",    "PERL5OPT",       "RUBYLIB",
      "RUBYOPT", "NODE_OPTIONS", "NODE_PATH",  "GCONV_PATH"};
  for (const auto reserved : kCodeLoading) {
    if (name == reserved) {
      return fmt::format("may not be set by a spec: {} changes which code a process loads",
                         reserved);
    }
  }
  if (name == "CUDA_VISIBLE_DEVICES") {
    return std::string("may not be set by a spec: the worker sets it to the GPUs of the shard");
  }
  return std::nullopt;
}

std::optional<std::string> check_extract_regex(std::string_view pattern) {
  if (pattern.size() > kMaxExtractBytes) {
    return fmt::format("must be at most {} bytes", kMaxExtractBytes);
  }
  try {
    const std::regex compiled(pattern.begin(), pattern.end(), std::regex::ECMAScript);
    if (compiled.mark_count() < 1) {
      return std::string("must have a capture group: its first group is what is compared");
    }
  } catch (const std::regex_error& e) {
    return fmt::format("is not a valid regular expression: {}", e.what());
  }
  return std::nullopt;
}

const char* to_string(RunnerType type) {
  switch (type) {
    case RunnerType::kExec:
      return "exec";
    case RunnerType::kNoop:
      return "noop";
    case RunnerType::kOpenAi:
      return "openai";
  }
  return "unknown";
}

}  // namespace evald
