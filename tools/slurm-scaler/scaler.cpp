#include "tools/slurm-scaler/scaler.hpp"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/process.hpp>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <future>
#include <set>
#include <sstream>

#include "common/log.hpp"
#include "common/text.hpp"

namespace evald::slurm_scaler {
namespace {

namespace bp = boost::process;

constexpr std::string_view kPendingMetric = "evald_pending_gpu_seconds";
constexpr std::string_view kIdleMetric = "evald_workers_idle";
constexpr std::string_view kAllKinds = "all";

Result<int64_t> ranged(const po::variables_map& values, const char* flag, int64_t min,
                       int64_t max) {
  const auto value = values[flag].as<int64_t>();
  if (value < min || value > max) {
    return make_error(std::string("--") + flag + ": must be between " + std::to_string(min) +
                      " and " + std::to_string(max) + ", got " + std::to_string(value));
  }
  return value;
}

std::string trimmed(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return "";
  const auto last = text.find_last_not_of(" \t\r\n");
  return std::string(text.substr(first, last - first + 1));
}

std::string one_line(std::string_view text) {
  std::string out = trimmed(text);
  std::replace(out.begin(), out.end(), '\n', ' ');
  std::replace(out.begin(), out.end(), '"', '\'');
  if (out.size() > 500) out = out.substr(0, 500) + "...";
  return out;
}

std::string current_user() {
  if (const passwd* pw = ::getpwuid(::geteuid()); pw != nullptr && pw->pw_name != nullptr) {
    return pw->pw_name;
  }
  return std::to_string(::geteuid());
}

}  // namespace

po::options_description scaler_options() {
  po::options_description options("evald-slurm-scaler options");
  options.add_options()("coordinator", po::value<std::string>()->value_name("URL"),
                        "the coordinator's HTTP API, http(s)://HOST:PORT (required)")(
      "token-file", po::value<std::string>()->value_name("FILE"),
      "file holding an API token for /metrics (default: $EVALD_TOKEN, else none)")(
      "cacert", po::value<std::string>()->value_name("FILE"),
      "CA bundle for an https coordinator (default: $EVALD_CACERT, else the system's)")(
      "worker-endpoint", po::value<std::string>()->value_name("URL"),
      "the coordinator's worker endpoint (its --bind) that the workers connect to, "
      "tcp://HOST:PORT (required)")(
      "sbatch-script", po::value<std::string>()->value_name("FILE"),
      "the worker job script, deploy/slurm/evald-workers.sbatch (required)")(
      "labels", po::value<std::string>()->default_value(""),
      "labels of this pool's workers, k=v,...: given to every worker it starts, and used to "
      "pick the pool's pending work from the coordinator's gauges")(
      "gpus-per-node", po::value<int64_t>()->default_value(8),
      "GPUs one worker job (one node) brings")(
      "target-drain-s", po::value<int64_t>()->default_value(3600),
      "start enough nodes to run the pending work in about this many seconds")(
      "min-nodes", po::value<int64_t>()->default_value(0), "nodes to keep even without work")(
      "max-nodes", po::value<int64_t>(), "never more worker jobs than this (required)")(
      "idle-exit-s", po::value<int64_t>()->default_value(600),
      "a worker it starts drains and exits after this many seconds with nothing to do")(
      "interval-s", po::value<int64_t>()->default_value(30), "seconds between rounds")(
      "once", po::bool_switch(), "one round, then exit (0: done, 1: the round failed)")(
      "job-name", po::value<std::string>()->default_value("evald-scaled-workers"),
      "Slurm job name of the jobs it submits; jobs of this name and user are its own")(
      "sbatch-arg", po::value<std::vector<std::string>>()->composing(),
      "an argument for sbatch, e.g. --sbatch-arg=--partition=gpu "
      "--sbatch-arg=--gpus-per-node=8; repeatable")(
      "sbatch", po::value<std::string>()->default_value("sbatch"), "the sbatch command")(
      "squeue", po::value<std::string>()->default_value("squeue"), "the squeue command")(
      "scancel", po::value<std::string>()->default_value("scancel"), "the scancel command")(
      "command-timeout-s", po::value<int64_t>()->default_value(60),
      "how long sbatch, squeue or scancel may take")(
      "log-level", po::value<std::string>()->default_value("info"),
      "trace, debug, info, warn or error");
  return options;
}

Result<ScalerConfig> scaler_config_from(const po::variables_map& values) {
  ScalerConfig config;
  for (const char* required : {"coordinator", "worker-endpoint", "sbatch-script", "max-nodes"}) {
    if (values.count(required) == 0)
      return make_error(std::string("--") + required + " is required");
  }
  config.coordinator_url = values["coordinator"].as<std::string>();
  if (auto url = parse_http_url(config.coordinator_url); !url.ok()) {
    return make_error("--coordinator: " + url.error().message);
  }
  if (values.count("token-file") > 0) {
    const auto path = values["token-file"].as<std::string>();
    std::ifstream in(path);
    std::stringstream text;
    if (!in || !(text << in.rdbuf())) return make_error("--token-file: cannot read " + path);
    config.http.bearer_token = trimmed(text.str());
    if (config.http.bearer_token.empty()) return make_error("--token-file: " + path + " is empty");
  } else if (const char* token = std::getenv("EVALD_TOKEN"); token != nullptr) {
    config.http.bearer_token = token;
  }
  if (values.count("cacert") > 0) {
    config.http.ca_file = values["cacert"].as<std::string>();
  } else if (const char* cacert = std::getenv("EVALD_CACERT"); cacert != nullptr) {
    config.http.ca_file = cacert;
  }
  config.worker_endpoint = values["worker-endpoint"].as<std::string>();
  if (!config.worker_endpoint.starts_with("tcp://") &&
      !config.worker_endpoint.starts_with("ipc://")) {
    return make_error("--worker-endpoint: '" + config.worker_endpoint + "' is not tcp://HOST:PORT");
  }
  config.sbatch_script = values["sbatch-script"].as<std::string>();
  if (::access(config.sbatch_script.c_str(), R_OK) != 0) {
    return make_error("--sbatch-script: cannot read " + config.sbatch_script);
  }
  config.labels_text = values["labels"].as<std::string>();
  auto labels = parse_labels(config.labels_text);
  if (!labels.ok()) return make_error("--labels: " + labels.error().message);
  config.labels = std::move(labels.value());

  auto gpus = ranged(values, "gpus-per-node", 1, 1024);
  if (!gpus.ok()) return gpus.error();
  config.gpus_per_node = static_cast<uint32_t>(gpus.value());
  auto drain = ranged(values, "target-drain-s", 1, 30 * 86'400);
  if (!drain.ok()) return drain.error();
  config.target_drain = std::chrono::seconds(drain.value());
  auto max_nodes = ranged(values, "max-nodes", 1, 100'000);
  if (!max_nodes.ok()) return max_nodes.error();
  config.max_nodes = static_cast<uint32_t>(max_nodes.value());
  auto min_nodes = ranged(values, "min-nodes", 0, max_nodes.value());
  if (!min_nodes.ok()) return make_error(min_nodes.error().message + " (at most --max-nodes)");
  config.min_nodes = static_cast<uint32_t>(min_nodes.value());
  auto idle = ranged(values, "idle-exit-s", 1, 30 * 86'400);
  if (!idle.ok()) return idle.error();
  config.idle_exit = std::chrono::seconds(idle.value());
  auto interval = ranged(values, "interval-s", 1, 86'400);
  if (!interval.ok()) return interval.error();
  config.interval = std::chrono::seconds(interval.value());
  auto timeout = ranged(values, "command-timeout-s", 1, 3600);
  if (!timeout.ok()) return timeout.error();
  config.command_timeout = std::chrono::seconds(timeout.value());
  config.once = values["once"].as<bool>();

  config.job_name = values["job-name"].as<std::string>();
  if (config.job_name.empty() || config.job_name.find_first_of(" \t\n,\"'") != std::string::npos) {
    return make_error("--job-name: '" + config.job_name +
                      "' must be non-empty, without spaces, commas or quotes");
  }
  if (values.count("sbatch-arg") > 0) {
    config.sbatch_args = values["sbatch-arg"].as<std::vector<std::string>>();
    // The scaler owns these: they are how it finds its jobs and counts nodes (an array job
    // would make one sbatch many nodes), and an --export other than ALL would drop the pool's
    // labels and the idle exit it hands each job. Short options may carry their value (-N2).
    const auto owned_by_scaler = [](const std::string& arg) {
      if (arg.starts_with("--export")) {
        return !(arg == "--export=ALL" || arg.starts_with("--export=ALL,"));
      }
      for (const std::string flag : {"--job-name", "--nodes", "--parsable", "--array"}) {
        if (arg == flag || arg.starts_with(flag + "=")) return true;
      }
      return arg.starts_with("-J") || arg.starts_with("-N") || arg.starts_with("-a");
    };
    for (const auto& arg : config.sbatch_args) {
      if (owned_by_scaler(arg)) {
        return make_error("--sbatch-arg: " + arg +
                          " is set by the scaler (use --job-name; each job is one node and "
                          "exports the scaler's environment)");
      }
    }
  }
  config.sbatch = values["sbatch"].as<std::string>();
  config.squeue = values["squeue"].as<std::string>();
  config.scancel = values["scancel"].as<std::string>();
  config.log_level = values["log-level"].as<std::string>();
  return config;
}

Result<std::map<std::string, std::string>> parse_labels(std::string_view text) {
  std::map<std::string, std::string> labels;
  const std::string all = trimmed(text);
  if (all.empty()) return labels;
  std::string_view rest = all;
  while (true) {
    const auto comma = rest.find(',');
    const std::string item = trimmed(rest.substr(0, comma));
    const auto eq = item.find('=');
    if (eq == std::string::npos || trimmed(item.substr(0, eq)).empty()) {
      return make_error("'" + item + "' is not key=value");
    }
    const std::string key = trimmed(item.substr(0, eq));
    if (!labels.emplace(key, trimmed(item.substr(eq + 1))).second) {
      return make_error("label '" + key + "' given twice");
    }
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return labels;
}

Result<std::vector<KindSample>> parse_kind_gauge(std::string_view exposition,
                                                 std::string_view metric) {
  std::vector<KindSample> samples;
  size_t pos = 0;
  while (pos < exposition.size()) {
    auto end = exposition.find('\n', pos);
    if (end == std::string_view::npos) end = exposition.size();
    const std::string_view line = exposition.substr(pos, end - pos);
    pos = end + 1;
    if (!line.starts_with(metric) || line.size() == metric.size()) continue;
    const char next = line[metric.size()];
    if (next != '{' && next != ' ') continue;  // another metric with this prefix
    const auto bad = [&](const std::string& why) {
      return make_error("/metrics: cannot read line '" + std::string(line.substr(0, 200)) +
                        "': " + why);
    };
    std::string kind;
    bool has_kind = false;
    size_t i = metric.size();
    if (next == '{') {
      ++i;
      // name="value" pairs, values with \\, \" and \n escapes.
      while (i < line.size() && line[i] != '}') {
        const auto eq = line.find('=', i);
        if (eq == std::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          return bad("expected name=\"value\"");
        }
        const std::string name = trimmed(line.substr(i, eq - i));
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        if (j >= line.size()) return bad("unterminated label value");
        if (name == "labels") {
          kind = value;
          has_kind = true;
        }
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) return bad("unterminated label set");
      ++i;
    }
    if (!has_kind) return bad("no `labels` label");
    const std::string number = trimmed(line.substr(i));
    const std::string first = number.substr(0, number.find(' '));  // an optional timestamp
    char* parsed_end = nullptr;
    const double value = std::strtod(first.c_str(), &parsed_end);
    if (first.empty() || parsed_end != first.c_str() + first.size() || !std::isfinite(value)) {
      return bad("'" + first + "' is not a number");
    }
    samples.push_back(KindSample{std::move(kind), value});
  }
  return samples;
}

Result<Demand> demand_from_metrics(std::string_view exposition,
                                   const std::map<std::string, std::string>& pool_labels) {
  auto pending = parse_kind_gauge(exposition, kPendingMetric);
  if (!pending.ok()) return pending.error();
  auto idle = parse_kind_gauge(exposition, kIdleMetric);
  if (!idle.ok()) return idle.error();
  const auto in_pool = [&](const std::string& kind) -> bool {
    if (kind == kAllKinds) return false;
    const auto labels = parse_labels(kind);
    if (!labels.ok()) return false;  // not a kind we could have started
    return std::all_of(pool_labels.begin(), pool_labels.end(), [&](const auto& label) {
      const auto found = labels->find(label.first);
      return found != labels->end() && found->second == label.second;
    });
  };
  Demand demand;
  std::optional<double> all;
  for (const auto& sample : pending.value()) {
    if (sample.kind == kAllKinds) {
      all = sample.value;
    } else if (in_pool(sample.kind)) {
      demand.source = "pool";
      demand.pending_gpu_s = std::max(demand.pending_gpu_s, sample.value);
    }
  }
  if (!all) {
    return make_error(std::string("/metrics has no ") + std::string(kPendingMetric) +
                      "{labels=\"all\"}: not an evald coordinator, or one too old for autoscaling");
  }
  if (demand.source.empty()) {
    demand.source = std::string(kAllKinds);
    demand.pending_gpu_s = *all;
  }
  for (const auto& sample : idle.value()) {
    if (in_pool(sample.kind)) demand.idle_workers += std::llround(sample.value);
  }
  return demand;
}

Decision decide(const Demand& demand, uint32_t running_jobs, uint32_t queued_jobs,
                const ScalerConfig& config) {
  Decision d;
  const double node_gpu_s =
      static_cast<double>(config.gpus_per_node) * static_cast<double>(config.target_drain.count());
  const double needed = demand.pending_gpu_s > 0 ? std::ceil(demand.pending_gpu_s / node_gpu_s) : 0;
  // Nodes whose workers are busy stay busy with running shards; pending work needs `needed`
  // nodes on top of them (what the Kubernetes queries size by too). Idle pool workers are among
  // the running jobs, so they start pending work before any new job is submitted for it.
  const uint32_t idle = static_cast<uint32_t>(
      std::clamp<int64_t>(demand.idle_workers, 0, static_cast<int64_t>(running_jobs)));
  const double busy = static_cast<double>(running_jobs - idle);
  d.wanted = static_cast<uint32_t>(std::clamp(busy + needed, static_cast<double>(config.min_nodes),
                                              static_cast<double>(config.max_nodes)));
  const uint32_t active = running_jobs + queued_jobs;
  if (active < d.wanted) {
    // Never past max, whatever else is counted: active may exceed it after a lower --max-nodes.
    d.submit = d.wanted - active;
    d.reason = idle > 0 ? "pending work needs more nodes than the idle workers"
                        : "pending work needs more nodes";
  } else if (active > d.wanted && queued_jobs > 0) {
    // Jobs that have not started hold nothing; running ones leave when their workers are idle.
    d.cancel = std::min(queued_jobs, active - std::max(d.wanted, running_jobs));
    d.reason = d.cancel > 0 ? "queued jobs no longer needed"
                            : "more nodes than wanted; idle workers leave by themselves";
  } else {
    d.reason = active == d.wanted ? "enough nodes"
                                  : "more nodes than wanted; idle workers leave by themselves";
  }
  return d;
}

Result<CommandOutput> run_command(const std::vector<std::string>& argv,
                                  const std::map<std::string, std::string>& extra_env,
                                  std::chrono::seconds timeout) {
  if (argv.empty()) return make_error("run_command: no command");
  const boost::filesystem::path exe = argv[0].find('/') != std::string::npos
                                          ? boost::filesystem::path(argv[0])
                                          : bp::search_path(argv[0]);
  if (exe.empty()) return make_error(argv[0] + ": not found in PATH");
  bp::environment env = boost::this_process::environment();
  // set(), not env[name]: Boost 1.74's environment lookup compares the whole key against every
  // entry with memcmp, reading past the end of a shorter one (AddressSanitizer reports it in the
  // Slurm scaler test); set() checks the length first.
  for (const auto& [name, value] : extra_env) env.set(name, value);
  boost::asio::io_context io;
  std::future<std::string> out;
  std::future<std::string> err;
  try {
    bp::child child(exe, bp::args(std::vector<std::string>(argv.begin() + 1, argv.end())),
                    bp::std_in.close(), bp::std_out > out, bp::std_err > err, env, io);
    io.run_for(timeout);
    if (!io.stopped()) {
      child.terminate();
      return make_error(argv[0] + ": still running after " + std::to_string(timeout.count()) +
                        " s; killed");
    }
    child.wait();
    return CommandOutput{child.exit_code(), out.get(), err.get()};
  } catch (const std::exception& e) {
    return make_error(argv[0] + ": cannot run: " + e.what());
  }
}

Result<std::vector<Job>> parse_squeue(std::string_view out) {
  std::vector<Job> jobs;
  std::istringstream lines{std::string(out)};
  std::string line;
  while (std::getline(lines, line)) {
    line = trimmed(line);
    if (line.empty()) continue;
    const auto bar = line.find('|');
    if (bar == std::string::npos || bar == 0 || bar + 1 == line.size()) {
      return make_error("squeue: cannot read line '" + line + "' (expected JOBID|STATE)");
    }
    jobs.push_back(Job{line.substr(0, bar), line.substr(bar + 1)});
  }
  return jobs;
}

bool job_active(const Job& job) {
  // Every state squeue lists counts except the terminal ones: a state this list does not know
  // (STOPPED, SPECIAL_EXIT, a hold, one a later Slurm adds) must never let the pool pass
  // --max-nodes. COMPLETING still holds its node, so it counts too.
  static const std::set<std::string> kEnded = {
      "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE",      "FAILED",
      "NODE_FAIL", "PREEMPTED", "REVOKED",   "OUT_OF_MEMORY", "TIMEOUT"};
  return !job.state.empty() && !kEnded.contains(job.state);
}

bool job_queued(const Job& job) {
  return job.state == "PENDING" || job.state == "REQUEUED" || job.state == "REQUEUE_HOLD" ||
         job.state == "REQUEUE_FED";
}

Scaler::Scaler(ScalerConfig config) : config_(std::move(config)), user_(current_user()) {
  url_ = parse_http_url(config_.coordinator_url).value();  // checked by scaler_config_from
}

Result<std::string> Scaler::fetch_metrics() {
  auto response = http_request(url_, config_.http, "GET", "/metrics", "", std::chrono::seconds(10));
  if (!response.ok()) return response.error();
  if (response->status == 401 || response->status == 403) {
    return make_error("the coordinator " + describe(url_) + " refused /metrics (HTTP " +
                      std::to_string(response->status) +
                      "): give a valid API token with --token-file or EVALD_TOKEN");
  }
  if (response->status != 200) {
    return make_error("the coordinator " + describe(url_) + " answered /metrics with HTTP " +
                      std::to_string(response->status));
  }
  return std::move(response->body);
}

Result<std::vector<Job>> Scaler::list_jobs() {
  auto result = run_command({config_.squeue, "--noheader", "--user=" + user_,
                             "--name=" + config_.job_name, "--format=%i|%T"},
                            {}, config_.command_timeout);
  if (!result.ok()) return result.error();
  if (result->exit_code != 0) {
    return make_error("squeue exited with " + std::to_string(result->exit_code) + ": " +
                      one_line(result->err));
  }
  return parse_squeue(result->out);
}

Result<std::string> Scaler::submit_job() {
  std::vector<std::string> argv = {config_.sbatch, "--parsable", "--job-name=" + config_.job_name,
                                   "--nodes=1"};
  argv.insert(argv.end(), config_.sbatch_args.begin(), config_.sbatch_args.end());
  argv.push_back(config_.sbatch_script);
  argv.push_back(config_.worker_endpoint);
  // --export=ALL hands these to the job script, which passes them to every worker: the pool's
  // labels (so the gauges can tell its workers apart) and the idle exit.
  // SBATCH_EXPORT=ALL: a site's SBATCH_EXPORT=NONE would drop both, and workers that never
  // leave and carry no pool label would keep the pool at --max-nodes.
  const std::map<std::string, std::string> env = {
      {"SBATCH_EXPORT", "ALL"},
      {"EVALD_LABELS", config_.labels_text},
      {"EVALD_IDLE_EXIT_S", std::to_string(config_.idle_exit.count())}};
  auto result = run_command(argv, env, config_.command_timeout);
  if (!result.ok()) return result.error();
  if (result->exit_code != 0) {
    return make_error("sbatch exited with " + std::to_string(result->exit_code) + ": " +
                      one_line(result->err + result->out));
  }
  // --parsable: "JOBID" or "JOBID;CLUSTER".
  std::string id = trimmed(result->out);
  id = id.substr(0, id.find(';'));
  if (id.empty() || id.find_first_not_of("0123456789_") != std::string::npos) {
    return make_error("sbatch printed no job id: '" + one_line(result->out) + "'");
  }
  return id;
}

Status Scaler::cancel_job(const std::string& id) {
  auto result = run_command({config_.scancel, "--state=PENDING", id}, {}, config_.command_timeout);
  if (!result.ok()) return result.error();
  if (result->exit_code != 0) {
    return make_error("scancel " + id + " exited with " + std::to_string(result->exit_code) + ": " +
                      one_line(result->err));
  }
  return Ok{};
}

Status Scaler::round() {
  ++rounds_;
  auto metrics = fetch_metrics();
  if (!metrics.ok()) return metrics.error();
  auto demand = demand_from_metrics(metrics.value(), config_.labels);
  if (!demand.ok()) return demand.error();
  auto jobs = list_jobs();
  if (!jobs.ok()) return jobs.error();

  // Jobs that left since the last round: their workers drained (or Slurm ended them).
  std::map<std::string, std::string> now;
  for (const auto& job : jobs.value()) {
    if (job_active(job)) now.emplace(job.id, job.state);
  }
  for (const auto& [id, state] : known_jobs_) {
    if (!now.contains(id)) spdlog::info("job_ended job={} last_state={}", id, state);
  }
  for (const auto& [id, state] : now) {
    const auto before = known_jobs_.find(id);
    if (before != known_jobs_.end() && before->second != state) {
      spdlog::info("job_state job={} from={} to={}", id, before->second, state);
    }
  }
  known_jobs_ = now;

  uint32_t running = 0;
  uint32_t queued = 0;
  std::vector<std::string> queued_ids;
  for (const auto& job : jobs.value()) {
    if (!job_active(job)) continue;
    if (job_queued(job)) {
      ++queued;
      queued_ids.push_back(job.id);
    } else {
      ++running;
    }
  }
  const Decision d = decide(demand.value(), running, queued, config_);
  spdlog::info(
      "decision round={} pending_gpu_s={:.0f} source={} idle_workers={} running_jobs={} "
      "queued_jobs={} wanted={} submit={} cancel={} max_nodes={} reason=\"{}\"",
      rounds_, demand->pending_gpu_s, demand->source, demand->idle_workers, running, queued,
      d.wanted, d.submit, d.cancel, config_.max_nodes, d.reason);

  Status status = Ok{};
  for (uint32_t i = 0; i < d.submit; ++i) {
    auto id = submit_job();
    if (!id.ok()) {
      spdlog::error("sbatch_failed error=\"{}\"", one_line(id.error().message));
      status = id.error();
      break;  // the next round tries again
    }
    known_jobs_.emplace(id.value(), "SUBMITTED");
    spdlog::info("job_submitted job={} job_name={} labels=\"{}\" idle_exit_s={}", id.value(),
                 config_.job_name, config_.labels_text, config_.idle_exit.count());
  }
  // The newest queued jobs first: the oldest are nearest to starting.
  std::sort(queued_ids.begin(), queued_ids.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() > b.size() : a > b;
  });
  for (uint32_t i = 0; i < d.cancel && i < queued_ids.size(); ++i) {
    if (auto cancelled = cancel_job(queued_ids[i]); !cancelled.ok()) {
      spdlog::error("scancel_failed job={} error=\"{}\"", queued_ids[i],
                    one_line(cancelled.error().message));
      status = cancelled.error();
      continue;
    }
    spdlog::info("job_cancelled job={} reason=\"queued, no longer needed\"", queued_ids[i]);
  }
  return status;
}

}  // namespace evald::slurm_scaler
