// evald-worker: flags -> WorkerConfig -> Worker::run. All logic lives in the evald_worker library.
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/cli_options.hpp"
#include "common/clock.hpp"
#include "common/log.hpp"
#include "common/sd_notify.hpp"
#include "common/signal_pipe.hpp"
#include "common/version.hpp"
#include "worker/worker.hpp"
#include "worker/worker_config.hpp"

namespace {

// Type=notify under systemd (deploy/systemd/); a no-op elsewhere. A failure is logged and
// otherwise ignored: the worker works without it, and systemd reports a start that timed out.
void notify_service_manager(const std::string& state) {
  const auto status = evald::sd_notify(state);
  if (!status.ok()) spdlog::warn("sd_notify_failed error=\"{}\"", status.error().message);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace evald;
  auto options = worker::worker_options();
  Result<worker::WorkerConfig> config = make_error("");
  try {
    const auto args = parse_args(argc, argv, options);
    if (args.help) {
      std::cout << "usage: evald-worker --coordinator tcp://HOST:PORT [options]\n" << options;
      return kExitOk;
    }
    if (args.version) {
      std::cout << "evald-worker " << kVersion << "\n";
      return kExitOk;
    }
    config = worker::worker_config_from(args.values);
  } catch (const UsageError& e) {
    config = make_error(e.what());
  }
  if (!config.ok()) {
    std::cerr << "evald-worker: " << config.error().message << "\n(see --help)\n";
    return kExitUsage;
  }
  init_logging("evald-worker", config->log_level);
  if (auto keys = worker::load_curve_keys(config.value()); !keys.ok()) {
    std::cerr << "evald-worker: " << keys.error().message << '\n';
    return kExitUsage;
  }
  if (!config->curve) {
    spdlog::info(
        "curve_off note=\"the coordinator is not authenticated; use --curve-secret and "
        "--coordinator-key beyond one trusted host\"");
  }
  SignalPipe signals;  // before GPU discovery, which can take seconds: a SIGTERM then still drains
  config->gpus = worker::resolve_gpus(config->gpu_selection);
  spdlog::debug("config config={}", worker::to_json(*config).dump());

  SystemClock clock;
  const std::string coordinator = config->coordinator;
  auto worker = worker::Worker::create(std::move(config.value()), clock);
  if (!worker.ok()) {
    spdlog::error("startup_failed error=\"{}\"", worker.error().message);
    return kExitFailure;
  }
  if (const auto metrics = worker.value()->metrics_address(); !metrics.empty()) {
    // One JSON line, like the coordinator's endpoints: scripts learn a port-0 address race-free.
    std::cout << nlohmann::json{{"metrics", metrics}}.dump() << std::endl;
  }
  // Ready as soon as the loop starts, not once a coordinator has welcomed us: the worker is
  // useful without one (it reconnects by itself), and a unit ordered after the coordinator must
  // not hang in "activating" while the coordinator is down.
  notify_service_manager("READY=1\nSTATUS=running, coordinator " + coordinator);
  const int exit_code = worker.value()->run(signals.fd());
  notify_service_manager("STOPPING=1");
  return exit_code;
}
