#include "worker/worker_config.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <string_view>
#include <vector>

#include "common/curve_keys.hpp"
#include "common/http_server.hpp"
#include "common/spec.hpp"
#include "common/text.hpp"

namespace evald::worker {
namespace {

constexpr std::string_view kSpaces = " \t";

// The name is in HELLO, the allowlist, paths and log lines: keep it plain.
bool valid_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '@' || c == ':';
}

Result<int64_t> ranged(const po::variables_map& values, const char* flag, int64_t min,
                       int64_t max) {
  const auto value = values[flag].as<int64_t>();
  if (value < min || value > max) {
    return make_error(std::string("--") + flag + ": must be between " + std::to_string(min) +
                      " and " + std::to_string(max) + ", got " + std::to_string(value));
  }
  return value;
}

}  // namespace

po::options_description worker_options() {
  po::options_description options("evald-worker options");
  options.add_options()("coordinator", po::value<std::string>(),
                        "coordinator endpoint, tcp://HOST:PORT (required)")(
      "name", po::value<std::string>(), "worker name (default: hostname-pid)")(
      "slots", po::value<int64_t>()->default_value(1), "shards run at once")(
      "queue-ahead", po::value<int64_t>(),
      "shards taken beyond --slots, started as slots free; the coordinator queues only short "
      "shards that need no GPU, as many as the slots start within 0.1 s (default: 4 x --slots, "
      "at most 256; 0: none)")("gpus", po::value<std::string>()->default_value("auto"),
                               "auto (ask nvidia-smi), none, or GPU indexes such as 0,1")(
      "labels", po::value<std::string>()->default_value(""), "labels, k=v,k2=v2")(
      "work-dir", po::value<std::string>(), "work directory (default: ./evald-worker-<name>)")(
      "heartbeat-ms", po::value<int64_t>()->default_value(1000), "heartbeat interval")(
      "drain-timeout-ms", po::value<int64_t>()->default_value(30000),
      "on SIGTERM, how long running shards may finish before they are killed")(
      "idle-exit-s", po::value<int64_t>()->default_value(0),
      "drain and exit 0 after this many seconds with no shard running and no result "
      "unacknowledged (for autoscaled nodes); 0: never")(
      "metrics", po::value<std::string>(),
      "serve Prometheus /metrics on HOST:PORT (port 0 picks a free port) and print "
      "{\"metrics\": \"HOST:PORT\"} on stdout; default: no metrics server")(
      "curve-secret", po::value<std::string>()->value_name("FILE"),
      "this worker's CURVE secret key (Z85); with --coordinator-key, the connection is "
      "authenticated and encrypted")(
      "coordinator-key", po::value<std::string>()->value_name("FILE"),
      "the coordinator's CURVE public key (Z85): work is taken only from a coordinator that "
      "proves it holds the matching secret")("log-level",
                                             po::value<std::string>()->default_value("info"),
                                             "trace, debug, info, warn or error")(
      "allow-exec", po::value<std::vector<std::string>>()->composing(),
      "a program (file) or a directory exec runners may start programs from; repeatable, in "
      "--config a list. runner.command[0] is resolved (PATH, symlinks) and must be one of them "
      "or under one. Default: any program");
  return options;
}

Result<nlohmann::json> parse_labels(std::string_view text) {
  auto labels = nlohmann::json::object();
  size_t pos = 0;
  const auto all = trim(text, kSpaces);
  while (!all.empty() && pos <= all.size()) {
    const auto comma = all.find(',', pos);
    const auto item =
        trim(all.substr(pos, comma == std::string_view::npos ? all.npos : comma - pos), kSpaces);
    const auto eq = item.find('=');
    if (eq == std::string_view::npos || trim(item.substr(0, eq), kSpaces).empty()) {
      return make_error("--labels: '" + std::string(item) + "' is not key=value");
    }
    const std::string key(trim(item.substr(0, eq), kSpaces));
    if (labels.contains(key)) return make_error("--labels: key '" + key + "' is given twice");
    labels[key] = std::string(trim(item.substr(eq + 1), kSpaces));
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return labels;
}

std::string default_worker_name() {
  std::array<char, 256> host{};
  if (::gethostname(host.data(), host.size() - 1) != 0) host[0] = '\0';
  std::string name;
  for (const char c : std::string_view(host.data())) name += valid_name_char(c) ? c : '-';
  if (name.empty()) name = "worker";
  return name + "-" + std::to_string(::getpid());
}

Result<WorkerConfig> worker_config_from(const po::variables_map& values) {
  WorkerConfig config;
  if (values.count("coordinator") == 0) {
    return make_error("--coordinator: required (tcp://HOST:PORT)");
  }
  config.coordinator = values["coordinator"].as<std::string>();
  if (config.coordinator.rfind("tcp://", 0) != 0 && config.coordinator.rfind("ipc://", 0) != 0) {
    return make_error("--coordinator: '" + config.coordinator + "' is not tcp://HOST:PORT");
  }

  config.name = values.count("name") > 0 ? values["name"].as<std::string>() : default_worker_name();
  if (config.name.empty() || config.name.size() > kMaxNameLength) {
    return make_error("--name: must be 1 to " + std::to_string(kMaxNameLength) + " characters");
  }
  for (const char c : config.name) {
    if (!valid_name_char(c)) {
      return make_error("--name: '" + config.name +
                        "' may only hold letters, digits and - _ . @ :");
    }
  }

  auto slots = ranged(values, "slots", 1, kMaxSlots);
  if (!slots.ok()) return slots.error();
  config.slots = static_cast<uint32_t>(slots.value());
  config.queue_ahead = default_queue_ahead(config.slots);
  if (values.count("queue-ahead") > 0) {
    auto queue_ahead = ranged(values, "queue-ahead", 0, kMaxSlots);
    if (!queue_ahead.ok()) return queue_ahead.error();
    config.queue_ahead = static_cast<uint32_t>(queue_ahead.value());
  }

  auto gpus = parse_gpu_selection(values["gpus"].as<std::string>());
  if (!gpus.ok()) return gpus.error();
  config.gpu_selection = std::move(gpus.value());

  auto labels = parse_labels(values["labels"].as<std::string>());
  if (!labels.ok()) return labels.error();
  config.labels = std::move(labels.value());

  config.work_dir = values.count("work-dir") > 0
                        ? std::filesystem::path(values["work-dir"].as<std::string>())
                        : std::filesystem::path("evald-worker-" + config.name);
  if (config.work_dir.empty()) return make_error("--work-dir: must not be empty");

  auto heartbeat = ranged(values, "heartbeat-ms", 10, 3'600'000);
  if (!heartbeat.ok()) return heartbeat.error();
  config.heartbeat = std::chrono::milliseconds(heartbeat.value());

  auto drain = ranged(values, "drain-timeout-ms", 0, 86'400'000);
  if (!drain.ok()) return drain.error();
  config.drain_timeout = std::chrono::milliseconds(drain.value());

  auto idle_exit = ranged(values, "idle-exit-s", 0, int64_t{30} * 86'400);
  if (!idle_exit.ok()) return idle_exit.error();
  config.idle_exit = std::chrono::seconds(idle_exit.value());

  if (values.count("metrics") > 0) {
    config.metrics = values["metrics"].as<std::string>();
    try {
      split_host_port(config.metrics);
    } catch (const std::exception& e) {
      return make_error(std::string("--metrics: ") + e.what());
    }
  }

  if (values.count("allow-exec") > 0) {
    auto policy = ExecPolicy::from_paths(values["allow-exec"].as<std::vector<std::string>>());
    if (!policy.ok()) return policy.error();
    config.exec_policy = std::move(policy.value());
  }

  if (values.count("curve-secret") > 0) {
    config.curve_secret_file = values["curve-secret"].as<std::string>();
  }
  if (values.count("coordinator-key") > 0) {
    config.coordinator_key_file = values["coordinator-key"].as<std::string>();
  }
  if (config.curve_secret_file.empty() != config.coordinator_key_file.empty()) {
    return make_error(config.curve_secret_file.empty()
                          ? "--coordinator-key needs --curve-secret (this worker's secret key)"
                          : "--curve-secret needs --coordinator-key (the coordinator's public "
                            "key, so the worker knows whom it talks to)");
  }

  config.log_level = values["log-level"].as<std::string>();
  static constexpr std::array<std::string_view, 7> kLevels = {"trace", "debug",    "info", "warn",
                                                              "error", "critical", "off"};
  if (std::find(kLevels.begin(), kLevels.end(), config.log_level) == kLevels.end()) {
    return make_error("--log-level: '" + config.log_level +
                      "' is not one of trace, debug, info, warn, error");
  }
  return config;
}

Status load_curve_keys(WorkerConfig& config) {
  config.curve.reset();
  if (config.curve_secret_file.empty()) return Ok{};
  auto secret = read_key_file(config.curve_secret_file, "--curve-secret", /*secret=*/true);
  if (!secret.ok()) return secret.error();
  auto server = read_key_file(config.coordinator_key_file, "--coordinator-key", false);
  if (!server.ok()) return server.error();
  auto derived = curve_public_key(secret.value());
  if (!derived.ok()) return make_error("--curve-secret: " + derived.error().message);
  config.curve = CurveClientKeys{std::move(secret.value()), std::move(derived.value()),
                                 std::move(server.value())};
  return Ok{};
}

nlohmann::json to_json(const WorkerConfig& config) {
  return {{"coordinator", config.coordinator},
          {"name", config.name},
          {"slots", config.slots},
          {"queue_ahead", config.queue_ahead},
          {"gpus", to_json(config.gpus)},
          {"labels", config.labels},
          {"work_dir", config.work_dir.string()},
          {"heartbeat_ms", config.heartbeat.count()},
          {"drain_timeout_ms", config.drain_timeout.count()},
          {"idle_exit_s", config.idle_exit.count()},
          {"metrics", config.metrics},
          {"log_level", config.log_level},
          {"allow_exec", config.exec_policy.describe()},
          {"curve", config.curve.has_value()},
          {"public_key", config.curve ? config.curve->public_z85 : ""}};
}

}  // namespace evald::worker
