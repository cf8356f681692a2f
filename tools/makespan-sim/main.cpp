// evald-makespan-sim: parses flags, loads a scenario, runs the simulation (simulator.hpp) and
// prints the figures; with --check, exits 1 when the makespan or load targets are missed.
#include <iostream>

#include "common/cli_options.hpp"
#include "common/log.hpp"
#include "common/version.hpp"
#include "tools/makespan-sim/simulator.hpp"

int main(int argc, char** argv) {
  using evald::po::bool_switch;
  using evald::po::value;
  evald::po::options_description options("evald-makespan-sim options");
  options.add_options()("scenario", value<std::string>(), "the scenario JSON file (required)")(
      "check", bool_switch(),
      "exit 1 unless makespan <= max-ratio x lower bound and model loads <= "
      "max-load-factor x the minimum")("max-ratio", value<double>()->default_value(1.10, "1.10"),
                                       "makespan target for --check")(
      "max-load-factor", value<double>()->default_value(2.0, "2"), "model-load target for --check")(
      "json", bool_switch(), "print the report as one JSON object")(
      "timeline", bool_switch(), "list each worker's model loads with their times")(
      "backup-copies", value<std::string>()->default_value("spec"),
      "spec, on or off: run the campaign with its spec's backup_copies, or with it set on or off "
      "(to compare the two on one scenario)")(
      "scratch-dir", value<std::string>()->default_value(""),
      "where the scratch RocksDB goes (removed afterwards); default: /dev/shm if writable, else "
      "the system temp dir")("log-level", value<std::string>()->default_value("warn"),
                             "trace, debug, info, warn or error (the scheduler's own log lines)");
  evald::ParsedArgs args;
  try {
    args = evald::parse_args(argc, argv, options);
  } catch (const evald::UsageError& e) {
    std::cerr << "evald-makespan-sim: " << e.what() << "\n(see evald-makespan-sim --help)\n";
    return evald::kExitUsage;
  }
  if (args.help) {
    std::cout << "Usage: evald-makespan-sim --scenario FILE [--check] [--json] [--timeline]\n\n"
                 "Runs the coordinator's scheduler against a simulated GPU cluster on a virtual\n"
                 "clock and prints makespan, lower bound, GPU utilisation and model loads.\n"
                 "The scenario format is described in tools/makespan-sim/README.md.\n\n"
              << options << '\n';
    return evald::kExitOk;
  }
  if (args.version) {
    std::cout << "evald-makespan-sim " << evald::kVersion << '\n';
    return evald::kExitOk;
  }
  const auto& v = args.values;
  if (v.count("scenario") == 0) {
    std::cerr << "evald-makespan-sim: --scenario FILE is required\n";
    return evald::kExitUsage;
  }
  evald::sim::Targets targets{v["max-ratio"].as<double>(), v["max-load-factor"].as<double>()};
  if (!(targets.max_ratio >= 1.0) || !(targets.max_load_factor >= 1.0)) {
    std::cerr << "evald-makespan-sim: --max-ratio and --max-load-factor must be at least 1\n";
    return evald::kExitUsage;
  }
  if (!evald::init_logging("evald-makespan-sim", v["log-level"].as<std::string>())) {
    std::cerr << "evald-makespan-sim: --log-level: unknown level\n";
    return evald::kExitUsage;
  }
  auto scenario = evald::sim::load_scenario(v["scenario"].as<std::string>());
  if (!scenario) {
    std::cerr << "evald-makespan-sim: " << scenario.error().message << '\n';
    return evald::kExitUsage;
  }
  if (const auto backup = v["backup-copies"].as<std::string>(); backup != "spec") {
    if (backup != "on" && backup != "off") {
      std::cerr << "evald-makespan-sim: --backup-copies must be spec, on or off\n";
      return evald::kExitUsage;
    }
    scenario.value().campaign.backup_copies = backup == "on";
  }
  evald::sim::SimOptions sim_options;
  sim_options.scratch_parent = v["scratch-dir"].as<std::string>();
  sim_options.timeline = v["timeline"].as<bool>();
  auto report = evald::sim::simulate(scenario.value(), sim_options);
  if (!report) {
    std::cerr << "evald-makespan-sim: " << report.error().message << '\n';
    return evald::kExitFailure;
  }
  const auto misses = evald::sim::check_targets(report.value(), targets);
  if (v["json"].as<bool>()) {
    auto j = evald::sim::to_json(report.value());
    j["targets_met"] = misses.empty();
    j["target_misses"] = misses;
    std::cout << j.dump() << '\n';
  } else {
    std::cout << evald::sim::format_report(report.value(), targets);
    if (v["check"].as<bool>()) {
      std::cout << (misses.empty() ? "check: targets met\n" : "check: TARGETS MISSED\n");
      for (const auto& m : misses) std::cout << "  - " << m << '\n';
    }
  }
  if (!report->completed) return evald::kExitFailure;
  if (v["check"].as<bool>() && !misses.empty()) return evald::kExitFailure;
  return evald::kExitOk;
}
