// evald-slurm-scaler: flags -> ScalerConfig -> one Scaler round every --interval-s until SIGTERM
// (or one round with --once). The logic lives in the evald_slurm_scaler library (scaler.hpp).
#include <poll.h>

#include <chrono>
#include <iostream>

#include "common/cli_options.hpp"
#include "common/log.hpp"
#include "common/signal_pipe.hpp"
#include "common/version.hpp"
#include "tools/slurm-scaler/scaler.hpp"

int main(int argc, char** argv) {
  using namespace evald;
  auto options = slurm_scaler::scaler_options();
  Result<slurm_scaler::ScalerConfig> config = make_error("");
  try {
    const auto args = parse_args(argc, argv, options);
    if (args.help) {
      std::cout << "usage: evald-slurm-scaler --coordinator URL --worker-endpoint tcp://HOST:PORT "
                   "--sbatch-script FILE --max-nodes N [options]\n"
                << options;
      return kExitOk;
    }
    if (args.version) {
      std::cout << "evald-slurm-scaler " << kVersion << "\n";
      return kExitOk;
    }
    config = slurm_scaler::scaler_config_from(args.values);
  } catch (const UsageError& e) {
    config = make_error(e.what());
  }
  if (!config.ok()) {
    std::cerr << "evald-slurm-scaler: " << config.error().message << "\n(see --help)\n";
    return kExitUsage;
  }
  if (!init_logging("evald-slurm-scaler", config->log_level)) {
    std::cerr << "evald-slurm-scaler: --log-level: '" << config->log_level
              << "' is not one of trace, debug, info, warn, error\n(see --help)\n";
    return kExitUsage;
  }
  SignalPipe signals;
  slurm_scaler::Scaler scaler(std::move(config.value()));
  const auto& c = scaler.config();
  spdlog::info(
      "scaler_started coordinator={} worker_endpoint={} labels=\"{}\" gpus_per_node={} "
      "target_drain_s={} min_nodes={} max_nodes={} idle_exit_s={} interval_s={} job_name={}",
      c.coordinator_url, c.worker_endpoint, c.labels_text, c.gpus_per_node, c.target_drain.count(),
      c.min_nodes, c.max_nodes, c.idle_exit.count(), c.interval.count(), c.job_name);
  while (true) {
    if (auto status = scaler.round(); !status.ok()) {
      spdlog::error("round_failed error=\"{}\"", status.error().message);
      if (c.once) return kExitFailure;
    }
    if (c.once) return kExitOk;
    // Until the next round, or a stop. A signal also interrupts poll (EINTR): its byte is in
    // the pipe by then, so the next poll sees it at once.
    const auto next_round = std::chrono::steady_clock::now() + c.interval;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          next_round - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd stop{signals.fd(), POLLIN, 0};
      if (::poll(&stop, 1, static_cast<int>(left.count())) > 0 && signals.take() != 0) {
        spdlog::info("scaler_stopped reason=signal note=\"the jobs it started keep running\"");
        return kExitOk;
      }
    }
  }
}
