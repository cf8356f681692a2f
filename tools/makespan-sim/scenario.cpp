// Scenario parsing. The file is written by a person, so each field is checked for presence, type
// and range before it is read (nlohmann's throwing accessors only after the matching is_*()
// check), unknown keys are refused so a typo cannot silently fall back to a default, and the first
// problem is reported with its path ("load_s.nuri-7b: must be a number of seconds >= 0").
#include "tools/makespan-sim/scenario.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <initializer_list>
#include <set>
#include <sstream>
#include <string_view>

#include "common/json_limits.hpp"

namespace evald::sim {
namespace {

using nlohmann::json;

// Longer than any evaluation step could sensibly take; keeps the millisecond clock far from
// overflow even when every shard of a large campaign is summed.
constexpr double kMaxSeconds = 30.0 * 24 * 3600;
constexpr uint32_t kMaxWorkersPerGroup = 100'000;
constexpr size_t kMaxGroups = 64;  // see parse_cluster
constexpr uint32_t kMaxGpusPerWorker = 64;

Error field_error(std::string_view path, std::string_view problem) {
  return make_error(fmt::format("{}: {}", path, problem));
}

std::optional<Error> check_known(const json& object, std::string_view path,
                                 std::initializer_list<std::string_view> known) {
  for (const auto& item : object.items()) {
    if (std::find(known.begin(), known.end(), item.key()) == known.end()) {
      return field_error(path.empty() ? item.key() : fmt::format("{}.{}", path, item.key()),
                         "unknown field");
    }
  }
  return std::nullopt;
}

Result<double> seconds_at(const json& value, const std::string& path, bool allow_zero) {
  if (!value.is_number()) return field_error(path, "must be a number of seconds");
  const double s = value.get<double>();
  if (!std::isfinite(s) || s < 0 || (!allow_zero && s == 0) || s > kMaxSeconds) {
    return field_error(path, fmt::format("must be a number of seconds {} 0 and at most {:g}",
                                         allow_zero ? ">=" : ">", kMaxSeconds));
  }
  return s;
}

int64_t to_ms(double seconds) {
  return std::llround(seconds * 1000.0);
}

Result<uint32_t> count_at(const json& object, const std::string& key, const std::string& path,
                          uint32_t max) {
  auto it = object.find(key);
  if (it == object.end()) return field_error(path, "missing");
  if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > max) {
    return field_error(path, fmt::format("must be an integer from 1 to {}", max));
  }
  return static_cast<uint32_t>(it->get<int64_t>());
}

Result<WorkerGroup> parse_group(const json& j, const std::string& path) {
  if (!j.is_object()) return field_error(path, "must be an object");
  if (auto e = check_known(
          j, path, {"name", "workers", "gpus_per_worker", "gpu_memory_gb", "labels", "slowdown"})) {
    return *e;
  }
  WorkerGroup g;
  if (auto it = j.find("name"); it != j.end()) {
    if (!it->is_string() || it->get<std::string>().empty() || it->get<std::string>().size() > 64) {
      return field_error(path + ".name", "must be a non-empty string of at most 64 characters");
    }
    g.name = it->get<std::string>();
  }
  auto workers = count_at(j, "workers", path + ".workers", kMaxWorkersPerGroup);
  if (!workers) return workers.error();
  g.workers = workers.value();
  auto gpus = count_at(j, "gpus_per_worker", path + ".gpus_per_worker", kMaxGpusPerWorker);
  if (!gpus) return gpus.error();
  g.gpus_per_worker = gpus.value();
  if (auto it = j.find("gpu_memory_gb"); it != j.end()) {
    if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() <= 0 ||
        it->get<double>() > 1e6) {
      return field_error(path + ".gpu_memory_gb", "must be a positive number of GB");
    }
    g.gpu_memory_gb = it->get<double>();
  }
  if (auto it = j.find("labels"); it != j.end()) {
    if (!it->is_object()) return field_error(path + ".labels", "must be an object of strings");
    for (const auto& [k, v] : it->items()) {
      if (!v.is_string()) return field_error(path + ".labels." + k, "must be a string");
    }
    g.labels = *it;
  }
  if (auto it = j.find("slowdown"); it != j.end()) {
    if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() < 1 ||
        it->get<double>() > 100) {
      return field_error(path + ".slowdown", "must be a number from 1 to 100");
    }
    g.slowdown = it->get<double>();
  }
  return g;
}

Result<std::vector<WorkerGroup>> parse_cluster(const json& j) {
  std::vector<WorkerGroup> groups;
  if (j.is_object()) {
    auto g = parse_group(j, "cluster");
    if (!g) return g.error();
    groups.push_back(std::move(g).value());
  } else if (j.is_array() && !j.empty()) {
    // The lower bound reasons over sets of groups as 64-bit masks: a 65th group would drop out
    // of it, and the bound could then overshoot the best schedule.
    if (j.size() > kMaxGroups) {
      return field_error("cluster", fmt::format("at most {} worker groups", kMaxGroups));
    }
    std::set<std::string> names;
    for (size_t i = 0; i < j.size(); ++i) {
      const std::string path = fmt::format("cluster[{}]", i);
      auto g = parse_group(j[i], path);
      if (!g) return g.error();
      if (!j[i].contains("name")) g->name = fmt::format("group{}", i + 1);
      if (!names.insert(g->name).second) {
        return field_error(path + ".name", "'" + g->name + "' names another group too");
      }
      groups.push_back(std::move(g).value());
    }
  } else {
    return field_error("cluster", "must be an object or a non-empty array of objects");
  }
  return groups;
}

// A map {"name": value} whose names must all be among `known` (models or benchmarks).
std::optional<Error> check_names(const json& object, const std::string& path,
                                 const std::vector<std::string>& known, std::string_view what) {
  if (!object.is_object())
    return field_error(path, "must be an object keyed by " + std::string(what) + " name");
  for (const auto& item : object.items()) {
    if (std::find(known.begin(), known.end(), item.key()) == known.end()) {
      return field_error(path + "." + item.key(),
                         fmt::format("no {} of that name in the campaign", what));
    }
  }
  return std::nullopt;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

int64_t Scenario::total_gpus() const {
  int64_t n = 0;
  for (const auto& g : cluster) n += int64_t{g.workers} * g.gpus_per_worker;
  return n;
}

size_t Scenario::total_workers() const {
  size_t n = 0;
  for (const auto& g : cluster) n += g.workers;
  return n;
}

int64_t Scenario::shard_ms(uint32_t model, uint32_t benchmark, uint32_t index) const {
  const BenchmarkSpec& b = campaign.benchmarks[benchmark];
  const ShardRange range = shard_range(b, index);
  double ms = static_cast<double>(full_shard_ms[model * campaign.benchmarks.size() + benchmark]) *
              static_cast<double>(range.end - range.start) / static_cast<double>(b.shard_size);
  if (jitter > 0) {
    const uint64_t h = splitmix64(
        seed ^ splitmix64((uint64_t{model} << 40) ^ (uint64_t{benchmark} << 24) ^ index));
    const double u = static_cast<double>(h >> 11) / static_cast<double>(1ULL << 53);  // [0, 1)
    ms *= 1.0 + jitter * (2.0 * u - 1.0);
  }
  return std::max<int64_t>(1, std::llround(ms));
}

Result<Scenario> parse_scenario(const json& j) {
  if (!j.is_object()) return make_error("scenario: must be a JSON object");
  if (auto e = check_known(j, "",
                           {"name", "description", "cluster", "campaign", "load_s", "shard_s",
                            "benchmark_shard_s", "model_factor", "jitter", "seed"})) {
    return *e;
  }
  Scenario s;
  for (const char* key : {"cluster", "campaign", "load_s"}) {
    if (!j.contains(key)) return field_error(key, "missing");
  }
  auto cluster = parse_cluster(j["cluster"]);
  if (!cluster) return cluster.error();
  s.cluster = std::move(cluster).value();

  auto campaign = parse_campaign_spec(j["campaign"]);
  if (!campaign) return make_error("campaign." + campaign.error().message);
  s.campaign = std::move(campaign).value();
  s.name = s.campaign.name;
  if (auto it = j.find("name"); it != j.end()) {
    if (!it->is_string()) return field_error("name", "must be a string");
    s.name = it->get<std::string>();
  }
  if (auto it = j.find("description"); it != j.end() && !it->is_string()) {
    return field_error("description", "must be a string");
  }

  const auto& models = s.campaign.models;
  const auto& benchmarks = s.campaign.benchmarks;
  std::vector<std::string> model_names;
  std::vector<std::string> benchmark_names;
  for (const auto& m : models) model_names.push_back(m.name);
  for (const auto& b : benchmarks) benchmark_names.push_back(b.name);

  for (size_t m = 0; m < models.size(); ++m) {
    // A worker with GPUs gives a model without "gpus" one GPU (placement.hpp); every simulated
    // worker has GPUs, and a model that needs none would make GPU-seconds meaningless.
    const int gpus = models[m].resources.gpus.value_or(1);
    if (gpus < 1) {
      return field_error(fmt::format("campaign.models[{}].resources.gpus", m),
                         "must be at least 1: the simulator measures GPU time");
    }
    s.gpus.push_back(gpus);
  }

  const json& load = j["load_s"];
  if (auto e = check_names(load, "load_s", model_names, "model")) return *e;
  for (const auto& m : models) {
    auto it = load.find(m.name);
    if (it == load.end()) return field_error("load_s." + m.name, "missing");
    auto sec = seconds_at(*it, "load_s." + m.name, /*allow_zero=*/true);
    if (!sec) return sec.error();
    s.load_ms.push_back(to_ms(sec.value()));
  }

  const json empty = json::object();
  const json& explicit_s = j.contains("shard_s") ? j["shard_s"] : empty;
  const json& base_s = j.contains("benchmark_shard_s") ? j["benchmark_shard_s"] : empty;
  const json& factors = j.contains("model_factor") ? j["model_factor"] : empty;
  if (auto e = check_names(explicit_s, "shard_s", model_names, "model")) return *e;
  if (auto e = check_names(base_s, "benchmark_shard_s", benchmark_names, "benchmark")) return *e;
  if (auto e = check_names(factors, "model_factor", model_names, "model")) return *e;
  for (const auto& [name, per_benchmark] : explicit_s.items()) {
    if (auto e = check_names(per_benchmark, "shard_s." + name, benchmark_names, "benchmark")) {
      return *e;
    }
  }
  for (const auto& m : models) {
    double factor = 1.0;
    if (auto it = factors.find(m.name); it != factors.end()) {
      auto f = seconds_at(*it, "model_factor." + m.name, /*allow_zero=*/false);
      if (!f) return make_error("model_factor." + m.name + ": must be a positive number");
      factor = f.value();
    }
    const json& mine = explicit_s.contains(m.name) ? explicit_s[m.name] : empty;
    for (const auto& b : benchmarks) {
      double seconds = 0;
      if (auto it = mine.find(b.name); it != mine.end()) {
        auto sec = seconds_at(*it, "shard_s." + m.name + "." + b.name, /*allow_zero=*/false);
        if (!sec) return sec.error();
        seconds = sec.value();
      } else if (auto base = base_s.find(b.name); base != base_s.end()) {
        auto sec = seconds_at(*base, "benchmark_shard_s." + b.name, /*allow_zero=*/false);
        if (!sec) return sec.error();
        seconds = sec.value() * factor;
      } else {
        return field_error("shard_s." + m.name + "." + b.name,
                           "missing, and benchmark_shard_s." + b.name + " is not set either");
      }
      s.full_shard_ms.push_back(std::max<int64_t>(1, to_ms(seconds)));
    }
  }

  if (auto it = j.find("jitter"); it != j.end()) {
    if (!it->is_number() || !(it->get<double>() >= 0 && it->get<double>() < 1)) {
      return field_error("jitter", "must be a number from 0 up to (not including) 1");
    }
    s.jitter = it->get<double>();
  }
  if (auto it = j.find("seed"); it != j.end()) {
    // A literal written in C++ (or by some JSON writers) is stored as signed; accept both.
    if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<int64_t>() < 0)) {
      return field_error("seed", "must be a non-negative integer");
    }
    s.seed = it->get<uint64_t>();
  }
  return s;
}

Result<Scenario> load_scenario(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return make_error("scenario file '" + path.string() + "': cannot be opened");
  std::stringstream text;
  text << in.rdbuf();
  auto j = parse_json_bounded(text.str());
  if (!j) return make_error("scenario file '" + path.string() + "' " + j.error().message);
  auto scenario = parse_scenario(*j);
  if (!scenario) {
    return make_error("scenario file '" + path.string() + "': " + scenario.error().message);
  }
  return scenario;
}

}  // namespace evald::sim
