// evald-worker: flags -> WorkerConfig -> Worker::run. All logic lives in the evald_worker library.
#include <iostream>

#include "common/cli_options.hpp"
#include "common/clock.hpp"
#include "common/log.hpp"
#include "common/signal_pipe.hpp"
#include "common/version.hpp"
#include "worker/worker.hpp"
#include "worker/worker_config.hpp"

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
  SignalPipe signals;  // before GPU discovery, which can take seconds: a SIGTERM then still drains
  config->gpus = worker::resolve_gpus(config->gpu_selection);
  spdlog::debug("config {}", worker::to_json(*config).dump());

  SystemClock clock;
  auto worker = worker::Worker::create(std::move(config.value()), clock);
  if (!worker.ok()) {
    spdlog::error("startup_failed error=\"{}\"", worker.error().message);
    return kExitFailure;
  }
  return worker.value()->run(signals.fd());
}
