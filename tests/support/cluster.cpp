#include "tests/support/cluster.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "common/curve_keys.hpp"

namespace evald::testing {
namespace {

constexpr auto kStartupTimeout = std::chrono::seconds(10);
constexpr auto kStopGrace = std::chrono::seconds(10);

std::string port_of(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("no port in '" + address + "'");
  return address.substr(colon + 1);
}

std::string describe(const std::string& method, const std::string& target,
                     const HttpResponse& response) {
  return method + " " + target + " -> " + std::to_string(response.status) + " " + response.body;
}

nlohmann::json parse_body(const std::string& method, const std::string& target,
                          const HttpResponse& response) {
  auto body = nlohmann::json::parse(response.body, nullptr, false);
  if (body.is_discarded()) {
    throw std::runtime_error("not JSON: " + describe(method, target, response));
  }
  return body;
}

bool is_final(const std::string& state) {
  return state == "succeeded" || state == "failed" || state == "cancelled";
}

}  // namespace

std::filesystem::path bin_dir() {
  return EVALD_BIN_DIR;
}

std::filesystem::path runners_dir() {
  return std::filesystem::path(EVALD_SOURCE_DIR) / "tests" / "integration" / "runners";
}

// --- Coordinator ---------------------------------------------------------------------------------

Coordinator::Coordinator(std::filesystem::path data_dir, std::filesystem::path log_file,
                         CoordinatorOptions options)
    : data_dir_(std::move(data_dir)), log_file_(std::move(log_file)), options_(std::move(options)) {
  start("tcp://127.0.0.1:0", "127.0.0.1:0");
}

void Coordinator::start(const std::string& bind, const std::string& http) {
  std::vector<std::string> args = {"--data-dir",
                                   data_dir_.string(),
                                   "--bind",
                                   bind,
                                   "--http",
                                   http,
                                   "--heartbeat-ms",
                                   std::to_string(options_.heartbeat_ms),
                                   "--worker-timeout-ms",
                                   std::to_string(options_.worker_timeout_ms),
                                   "--retry-backoff-ms",
                                   std::to_string(options_.retry_backoff_ms),
                                   "--log-level",
                                   options_.log_level};
  if (options_.max_body_bytes) {
    args.push_back("--max-body-bytes");
    args.push_back(std::to_string(*options_.max_body_bytes));
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  ProcessOptions process;
  process.executable = bin_dir() / "evald-coordinator";
  if (options_.open_files_limit) {
    args.insert(
        args.begin(),
        {"-c", "ulimit -n " + std::to_string(*options_.open_files_limit) + " && exec \"$0\" \"$@\"",
         process.executable.string()});
    process.executable = "/bin/sh";
  }
  process.args = std::move(args);
  process.log_file = log_file_;
  process.pipe_stdout = true;
  process_ = std::make_unique<ChildProcess>(std::move(process));
  const auto line = process_->read_line(kStartupTimeout);
  if (!line) {
    throw std::runtime_error("evald-coordinator printed no endpoint line within 10 s; log " +
                             log_file_.string() + ":\n" + file_tail(log_file_, 4000));
  }
  const auto endpoints = nlohmann::json::parse(*line, nullptr, false);
  if (!endpoints.is_object() || !endpoints.contains("bind") || !endpoints.contains("http") ||
      !endpoints["bind"].is_string() || !endpoints["http"].is_string()) {
    throw std::runtime_error("evald-coordinator endpoint line is not {\"bind\",\"http\"}: " +
                             *line);
  }
  bind_ = endpoints["bind"].get<std::string>();
  http_ = endpoints["http"].get<std::string>();
}

void Coordinator::restart() {
  if (process_) process_->kill();
  // The same ports: the listening sockets of the killed process are gone with it, and both
  // ZeroMQ and Asio listen with SO_REUSEADDR, so lingering TIME_WAIT connections do not block.
  start("tcp://127.0.0.1:" + port_of(bind_), "127.0.0.1:" + port_of(http_));
}

void Coordinator::kill() {
  if (process_) process_->kill();
}

int Coordinator::terminate() {
  return process_->terminate(kStopGrace);
}

// --- Worker --------------------------------------------------------------------------------------

Worker::Worker(std::string coordinator_endpoint, std::filesystem::path work_dir,
               std::filesystem::path log_file, WorkerOptions options)
    : coordinator_(std::move(coordinator_endpoint)),
      work_dir_(std::move(work_dir)),
      log_file_(std::move(log_file)),
      options_(std::move(options)) {
  start();
}

void Worker::start() {
  std::vector<std::string> args = {
      "--coordinator",    coordinator_,     "--name",
      options_.name,      "--slots",        std::to_string(options_.slots),
      "--gpus",           "none",           "--work-dir",
      work_dir_.string(), "--heartbeat-ms", std::to_string(options_.heartbeat_ms)};
  if (!options_.labels.empty()) {
    args.push_back("--labels");
    args.push_back(options_.labels);
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  const char* path = std::getenv("PATH");
  std::vector<std::pair<std::string, std::string>> env = {
      {"PATH", runners_dir().string() + ":" + (path != nullptr ? path : "/usr/bin:/bin")}};
  env.insert(env.end(), options_.env.begin(), options_.env.end());
  ProcessOptions process;
  process.executable = bin_dir() / "evald-worker";
  process.args = std::move(args);
  process.log_file = log_file_;
  process.env = std::move(env);
  process_ = std::make_unique<ChildProcess>(std::move(process));
}

void Worker::restart() {
  if (process_) process_->kill();
  start();
}

void Worker::kill() {
  if (process_) process_->kill();
}

int Worker::terminate() {
  return process_->terminate(kStopGrace);
}

// --- Api -----------------------------------------------------------------------------------------

Api::Api(const std::string& url, HttpClientOptions client) : client_(std::move(client)) {
  auto parsed = parse_http_url(url);
  if (!parsed.ok()) throw std::runtime_error("bad server url: " + parsed.error().message);
  url_ = parsed.value();
}

HttpResponse Api::request(const std::string& method, const std::string& target,
                          const std::string& body) const {
  auto response = http_request(url_, client_, method, target, body, std::chrono::seconds(10));
  if (!response.ok()) {
    throw std::runtime_error(method + " " + target + " failed: " + response.error().message);
  }
  return response.value();
}

nlohmann::json Api::get(const std::string& target) const {
  const auto response = request("GET", target);
  if (response.status != 200) {
    throw std::runtime_error("expected 200: " + describe("GET", target, response));
  }
  return parse_body("GET", target, response);
}

nlohmann::json Api::post(const std::string& target, const nlohmann::json& body,
                         int expected_status) const {
  const auto response = request("POST", target, body.dump());
  if (response.status != expected_status) {
    throw std::runtime_error("expected " + std::to_string(expected_status) + ": " +
                             describe("POST", target, response));
  }
  return parse_body("POST", target, response);
}

std::string Api::submit(const nlohmann::json& spec) const {
  const auto reply = post("/v1/campaigns", spec, 201);
  if (!reply.contains("id") || !reply["id"].is_string()) {
    throw std::runtime_error("submit reply has no string id: " + reply.dump());
  }
  return reply["id"].get<std::string>();
}

nlohmann::json Api::campaign(const std::string& id) const {
  return get("/v1/campaigns/" + id);
}

nlohmann::json Api::results(const std::string& id) const {
  return get("/v1/campaigns/" + id + "/results");
}

nlohmann::json Api::shards(const std::string& id, const std::string& state) const {
  return get("/v1/campaigns/" + id + "/shards" + (state.empty() ? "" : "?state=" + state));
}

nlohmann::json Api::workers() const {
  // Every page (GET /v1/workers answers at most 1000 workers per page by default).
  nlohmann::json all = nlohmann::json::array();
  std::string target = "/v1/workers";
  while (true) {
    auto page = get(target);
    for (auto& w : page.at("workers")) all.push_back(std::move(w));
    const auto& next = page.at("next_after");
    if (next.is_null()) return all;
    std::string after;
    for (const unsigned char c : next.get<std::string>()) {
      if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
        after += static_cast<char>(c);
      } else {
        static constexpr char kHex[] = "0123456789ABCDEF";
        after += {'%', kHex[c >> 4], kHex[c & 15]};
      }
    }
    const std::string next_target = "/v1/workers?after=" + after;
    if (next_target == target) throw std::runtime_error("GET /v1/workers repeats " + target);
    target = next_target;
  }
}

nlohmann::json Api::wait_for_state(const std::string& id, const std::string& state,
                                   std::chrono::milliseconds timeout,
                                   std::chrono::milliseconds interval) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto c = campaign(id);
    const auto seen = c.value("state", std::string());
    if (seen == state) return c;
    if (is_final(seen) && is_final(state)) {
      throw std::runtime_error("campaign " + id + " ended " + seen + " while waiting for " + state +
                               ": " + c.dump());
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      throw std::runtime_error("campaign " + id + " not " + state + " after " +
                               std::to_string(timeout.count()) + " ms: " + c.dump());
    }
    std::this_thread::sleep_for(interval);
  }
}

void Api::wait_for_workers(size_t count, std::chrono::milliseconds timeout) const {
  nlohmann::json last;
  const bool ok = wait_until(
      [&] {
        last = workers();
        size_t connected = 0;
        for (const auto& w : last) connected += w.value("state", "") == "connected" ? 1 : 0;
        return connected >= count;
      },
      timeout);
  if (!ok) {
    throw std::runtime_error(std::to_string(count) + " workers not connected after " +
                             std::to_string(timeout.count()) + " ms: " + last.dump());
  }
}

std::optional<double> Api::metric_if_declared(
    const std::string& name, const std::map<std::string, std::string>& labels) const {
  const auto response = request("GET", "/metrics");
  if (response.status != 200) {
    throw std::runtime_error("expected 200: " + describe("GET", "/metrics", response));
  }
  double sum = 0;
  bool declared = false;
  const std::string type_line = "# TYPE " + name + " ";
  std::istringstream lines(response.body);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.compare(0, type_line.size(), type_line) == 0) declared = true;
    if (line.empty() || line[0] == '#' || line.compare(0, name.size(), name) != 0) continue;
    // "name 3" or "name{labels} 3", but not "name_suffix ..." of a longer family.
    if (line.size() == name.size() || (line[name.size()] != ' ' && line[name.size()] != '{')) {
      continue;
    }
    const auto space = line.rfind(' ');
    const std::string label_text = line.substr(name.size(), space - name.size());
    bool matches = true;
    for (const auto& [key, value] : labels) {
      // Label values in the text format are quoted; a match on ',key="value"' or '{key="value"'
      // cannot confuse a key with the tail of another key.
      const std::string pair = key + "=\"" + value + "\"";
      if (label_text.find("{" + pair) == std::string::npos &&
          label_text.find("," + pair) == std::string::npos) {
        matches = false;
        break;
      }
    }
    if (matches) sum += std::stod(line.substr(space + 1));
  }
  if (!declared) return std::nullopt;
  return sum;
}

double Api::metric(const std::string& name,
                   const std::map<std::string, std::string>& labels) const {
  const auto value = metric_if_declared(name, labels);
  if (!value) throw std::runtime_error("GET /metrics declares no metric family '" + name + "'");
  return *value;
}

// --- Cluster -------------------------------------------------------------------------------------

Cluster::Cluster(ClusterOptions options) : dir_(options.dir_prefix), options_(std::move(options)) {
  std::filesystem::create_directories(log_dir());
  if (options_.curve) {
    const auto keys = curve_keys_dir();
    std::filesystem::create_directories(keys);
    auto write = [&keys](const std::string& name) {
      const auto pair = generate_curve_key_pair();
      if (auto written = write_key_pair((keys / name).string(), pair, false); !written.ok()) {
        throw std::runtime_error("cluster keys: " + written.error().message);
      }
      return pair.public_z85;
    };
    write("coordinator");
    std::ofstream allowlist(keys / "worker-keys");
    allowlist << "# written by the test cluster\n";
    for (size_t i = 1; i <= options_.workers + options_.curve_spare_workers; ++i) {
      const std::string name = "w" + std::to_string(i);
      allowlist << name << " " << write(name) << "\n";
    }
    if (!allowlist.flush()) throw std::runtime_error("cluster keys: cannot write worker-keys");
    auto& args = options_.coordinator.extra_args;
    args.insert(args.end(), {"--curve-secret", (keys / "coordinator.secret").string(),
                             "--worker-keys", (keys / "worker-keys").string()});
  }
  coordinator_ = std::make_unique<Coordinator>(dir() / "data", log_dir() / "coordinator.log",
                                               options_.coordinator);
  for (size_t i = 0; i < options_.workers; ++i) add_worker();
  if (options_.wait_for_workers && options_.workers > 0) {
    api().wait_for_workers(options_.workers);
  }
}

Cluster::~Cluster() {
  if (std::uncaught_exceptions() > 0 && !logs_shown_) std::cerr << log_tails();
  for (auto& w : workers_) {
    if (w->running()) w->terminate();
  }
  workers_.clear();
  if (coordinator_ && coordinator_->running()) coordinator_->terminate();
}

WorkerOptions Cluster::worker_defaults() const {
  WorkerOptions options;
  options.name = "w" + std::to_string(workers_.size() + 1);
  options.slots = options_.slots;
  options.heartbeat_ms = options_.worker_heartbeat_ms;
  if (options_.queue_ahead) {
    options.extra_args = {"--queue-ahead", std::to_string(*options_.queue_ahead)};
  }
  return options;
}

Worker& Cluster::add_worker() {
  return add_worker(worker_defaults());
}

std::vector<std::string> Cluster::worker_curve_args(const std::string& name) const {
  return {"--curve-secret", (curve_keys_dir() / (name + ".secret")).string(), "--coordinator-key",
          (curve_keys_dir() / "coordinator.public").string()};
}

Worker& Cluster::add_worker(WorkerOptions options) {
  if (options.name.empty()) options.name = "w" + std::to_string(workers_.size() + 1);
  if (options_.curve && std::filesystem::exists(curve_keys_dir() / (options.name + ".secret")) &&
      std::find(options.extra_args.begin(), options.extra_args.end(), "--curve-secret") ==
          options.extra_args.end()) {
    const auto args = worker_curve_args(options.name);
    options.extra_args.insert(options.extra_args.end(), args.begin(), args.end());
  }
  const std::string name = options.name;
  workers_.push_back(
      std::make_unique<Worker>(coordinator_->bind_endpoint(), dir() / ("work-" + name),
                               log_dir() / ("worker-" + name + ".log"), std::move(options)));
  return *workers_.back();
}

std::string Cluster::log_tails(size_t bytes_per_log) const {
  std::ostringstream out;
  std::error_code ec;
  std::vector<std::filesystem::path> logs;
  for (const auto& entry : std::filesystem::directory_iterator(log_dir(), ec)) {
    logs.push_back(entry.path());
  }
  std::sort(logs.begin(), logs.end());
  for (const auto& log : logs) {
    out << "==> " << log.filename().string() << " <==\n" << file_tail(log, bytes_per_log) << "\n";
  }
  return out.str();
}

}  // namespace evald::testing
