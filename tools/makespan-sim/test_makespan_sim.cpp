// The makespan simulator: its cost model on scenarios small enough to work out by hand, the lower
// bound, scenario validation, and that the shipped scenarios parse. It drives the real Scheduler
// against a real (scratch) RocksDB directory.
#include <catch2/catch.hpp>
#include <string>

#include "tests/support/test_support.hpp"
#include "tools/makespan-sim/simulator.hpp"

using namespace evald;
using namespace evald::sim;

namespace {

// One worker group, one benchmark "b"; models as {name, gpus, load_s, shard_s}.
struct TinyModel {
  std::string name;
  int gpus;
  double load_s;
  double shard_s;
};

nlohmann::json tiny_scenario(uint32_t workers, uint32_t gpus_per_worker,
                             const std::vector<TinyModel>& models, int examples, int shard_size) {
  nlohmann::json j;
  j["cluster"] = {{"workers", workers}, {"gpus_per_worker", gpus_per_worker}};
  j["campaign"] = {
      {"name", "tiny"},
      {"models", nlohmann::json::array()},
      {"benchmarks", {{{"name", "b"}, {"examples", examples}, {"shard_size", shard_size}}}},
      {"runner", {{"type", "noop"}}}};
  for (const auto& m : models) {
    j["campaign"]["models"].push_back({{"name", m.name}, {"resources", {{"gpus", m.gpus}}}});
    j["load_s"][m.name] = m.load_s;
    j["shard_s"][m.name] = {{"b", m.shard_s}};
  }
  return j;
}

Scenario parse(const nlohmann::json& j) {
  auto s = parse_scenario(j);
  INFO((s.ok() ? "" : s.error().message));
  REQUIRE(s.ok());
  return s.value();
}

SimReport run(const Scenario& scenario, bool timeline = false) {
  testing::TempDir scratch("evald-sim-test");
  SimOptions options;
  options.scratch_parent = scratch.path();
  options.timeline = timeline;
  auto report = simulate(scenario, options);
  INFO((report.ok() ? "" : report.error().message));
  REQUIRE(report.ok());
  return report.value();
}

std::string parse_error(const nlohmann::json& j) {
  auto s = parse_scenario(j);
  REQUIRE_FALSE(s.ok());
  return s.error().message;
}

}  // namespace

TEST_CASE("shards that start while their model loads wait for it; the load counts once",
          "[unit][makespan-sim]") {
  // 2 GPUs, 4 one-GPU shards of 10 s, a 5 s load: two shards wait for the load and end at 15 s,
  // the other two run 15..25 s.
  const auto scenario = parse(tiny_scenario(1, 2, {{"m", 1, 5, 10}}, 4, 1));
  const auto r = run(scenario);
  REQUIRE(r.completed);
  CHECK(r.shards == 4);
  CHECK(r.makespan_ms == 25'000);
  CHECK(r.loads == 1);
  CHECK(r.min_loads == 1);
  CHECK(r.busy_gpu_ms == 50'000);    // 2 x 15 s + 2 x 10 s
  CHECK(r.load_gpu_ms == 10'000);    // both GPUs held 5 s for the load
  CHECK(r.bound.work_ms == 22'500);  // (4 x 10 s + 5 s) / 2 GPUs
  CHECK(r.bound.longest_ms == 15'000);
  // Two lanes, each loading first: 5 s + 40 s / 2. This schedule is optimal.
  CHECK(r.bound.chain_ms == 25'000);
  CHECK(r.bound.chain_model == "m");
  CHECK(r.bound.binding() == "chain");
  CHECK(r.gpu_utilisation() == Approx(1.0));
  CHECK(r.ratio() == Approx(1.0));
}

TEST_CASE("the lower bound respects labels, GPU memory and how few workers a model fits",
          "[unit][makespan-sim]") {
  // Group "big": 1 worker x 4 GPUs of 80 GB, labelled gpu=h100; group "small": 3 workers x 4
  // GPUs of 40 GB. H needs gpu=h100 (4 GPUs), M needs 80 GB (1 GPU), S fits anywhere (1 GPU).
  nlohmann::json j;
  j["cluster"] = {
      {{"name", "big"},
       {"workers", 1},
       {"gpus_per_worker", 4},
       {"gpu_memory_gb", 80},
       {"labels", {{"gpu", "h100"}}}},
      {{"name", "small"}, {"workers", 3}, {"gpus_per_worker", 4}, {"gpu_memory_gb", 40}}};
  j["campaign"] = {{"name", "placement"},
                   {"models",
                    {{{"name", "H"}, {"resources", {{"gpus", 4}, {"labels", {{"gpu", "h100"}}}}}},
                     {{"name", "M"}, {"resources", {{"gpus", 1}, {"gpu_memory_gb", 80}}}},
                     {{"name", "S"}, {"resources", {{"gpus", 1}}}}}},
                   {"benchmarks", {{{"name", "b"}, {"examples", 8}, {"shard_size", 1}}}},
                   {"runner", {{"type", "noop"}}}};
  j["load_s"] = {{"H", 10}, {"M", 0}, {"S", 0}};
  j["shard_s"] = {{"H", {{"b", 10}}}, {"M", {{"b", 10}}}, {"S", {{"b", 10}}}};
  const auto scenario = parse(j);
  const auto b = lower_bound(scenario);
  // Everything over 16 GPUs: (8 x 10 s x 4 + 10 s x 4 + 8 x 10 s + 8 x 10 s) / 16.
  CHECK(b.work_ms == 32'500);
  // H and M can only run on "big": (320 + 40 + 80) GPU-s / 4 GPUs.
  CHECK(b.placement_ms == 110'000);
  CHECK(b.placement_groups == "big");
  // H runs one shard at a time: 10 s load + 8 x 10 s.
  CHECK(b.chain_ms == 90'000);
  CHECK(b.chain_model == "H");
  CHECK(b.value_ms() == 110'000);
  CHECK(b.binding() == "placement");
}

TEST_CASE("the lower bound charges a load the worker's GPUs it idles", "[unit][makespan-sim]") {
  // One worker of 4 GPUs, two 1-GPU models loading 30 s, 4 shards of 10 s each. A worker holds
  // one model at a time and loads one at a time: while B loads, A's shards started before it are
  // all its GPUs can do. Each load idles 4 x 30 s of GPU time, less at most 3 GPUs x one 10 s
  // shard: 90 GPU-s; counted as the model's own GPU only (30 GPU-s) the bound was 35 s.
  const auto scenario = parse(tiny_scenario(1, 4, {{"A", 1, 30, 10}, {"B", 1, 30, 10}}, 4, 1));
  const auto b = lower_bound(scenario);
  CHECK(b.work_ms == 65'000);  // (8 x 10 + 2 x 90) / 4
  CHECK(b.chain_ms == 40'000);
  const auto r = run(scenario);
  REQUIRE(r.completed);
  CHECK(r.loads == 2);
  // Load A, its 4 shards at once, load B, its 4 shards: nothing can overlap B's load but A's
  // shards, which all started with A's.
  CHECK(r.makespan_ms == 80'000);
  CHECK(r.makespan_ms >= b.value_ms());
}

TEST_CASE("a slow node computes longer and counts for less in the bound", "[unit][makespan-sim]") {
  // A fast and a 3 x slower worker of one GPU; 8 shards of 30 s, no load. The fast one does six
  // in 180 s while the slow one does two; the bound sees 1 + 1/3 GPUs: 240 s / (4/3) = 180 s.
  nlohmann::json j = tiny_scenario(1, 1, {{"m", 1, 0, 30}}, 8, 1);
  j["cluster"] = {{{"name", "fast"}, {"workers", 1}, {"gpus_per_worker", 1}},
                  {{"name", "slow"}, {"workers", 1}, {"gpus_per_worker", 1}, {"slowdown", 3}}};
  const auto scenario = parse(j);
  const auto b = lower_bound(scenario);
  CHECK(b.work_ms == 180'000);
  CHECK(b.longest_ms == 30'000);  // on the fast one
  const auto r = run(scenario);
  REQUIRE(r.completed);
  CHECK(r.makespan_ms == 180'000);
  j["cluster"][1]["slowdown"] = 0.5;
  CHECK(parse_error(j) == "cluster[1].slowdown: must be a number from 1 to 100");
}

TEST_CASE("a worker finishes its model before it loads the next one", "[unit][makespan-sim]") {
  // One GPU, two models of two 10 s shards: m1 (3 s load) then m2 (7 s load). Alternating would
  // load four times; affinity loads each model once.
  const auto scenario = parse(tiny_scenario(1, 1, {{"m1", 1, 3, 10}, {"m2", 1, 7, 10}}, 2, 1));
  const auto r = run(scenario, /*timeline=*/true);
  REQUIRE(r.completed);
  CHECK(r.makespan_ms == 50'000);  // 3 + 10 + 10 + 7 + 10 + 10
  CHECK(r.loads == 2);
  CHECK(r.models[0].loads == 1);
  CHECK(r.models[1].loads == 1);
  REQUIRE(r.worker_reports.size() == 1);
  const auto& timeline = r.worker_reports[0].timeline;
  REQUIRE(timeline.size() == 2);
  CHECK(timeline[1].at_ms == 23'000);
}

// The dispatch heuristic (Scheduler::dispatch), seen through the simulator.

TEST_CASE("a worker keeps its GPUs for its model rather than fill them with another",
          "[unit][makespan-sim][scheduler]") {
  // 4 GPUs; P needs 3 GPUs (4 shards of 10 s, 5 s load), Q needs 1 (4 shards of 10 s, 3 s load).
  // P's shards run one after another while the fourth GPU waits: 0-15 s (with the load), 15-25,
  // 25-35, 35-45. Once P has nothing pending (35 s) the spare GPU loads Q (35-48 s) and Q's other
  // three shards follow on the GPUs P leaves (45-55 s). Filling the spare GPU with Q from the
  // start would move the worker's affinity to Q and make it switch back and forth.
  const auto scenario = parse(tiny_scenario(1, 4, {{"P", 3, 5, 10}, {"Q", 1, 3, 10}}, 4, 1));
  const auto r = run(scenario, /*timeline=*/true);
  REQUIRE(r.completed);
  CHECK(r.loads == 2);
  CHECK(r.makespan_ms == 55'000);
  const auto& timeline = r.worker_reports[0].timeline;
  REQUIRE(timeline.size() == 2);
  CHECK(timeline[0].model == 0);
  CHECK(timeline[1].at_ms == 35'000);
}

TEST_CASE("the model with the most GPU time left goes first", "[unit][makespan-sim][scheduler]") {
  // Same shard count, but L's shards hold 4 GPUs: L (16 GPU-shards) before S (4).
  const auto scenario = parse(tiny_scenario(1, 4, {{"S", 1, 0, 10}, {"L", 4, 0, 10}}, 4, 1));
  const auto r = run(scenario, /*timeline=*/true);
  REQUIRE(r.completed);
  const auto& timeline = r.worker_reports[0].timeline;
  REQUIRE(timeline.size() == 2);
  CHECK(timeline[0].model == 1);
  CHECK(r.makespan_ms == 50'000);  // 4 x 10 s of L, then S's four shards at once
}

TEST_CASE("multi-GPU shards hold their GPUs; the last short shard runs shorter",
          "[unit][makespan-sim]") {
  // 4 GPUs, a 2-GPU model, 5 examples in shards of 2: 2, 2, 1 examples = 10, 10, 5 s, no load.
  // Two shards run at once (0..10 s), then the short one (10..15 s).
  const auto scenario = parse(tiny_scenario(1, 4, {{"m", 2, 0, 10}}, 5, 2));
  CHECK(scenario.shard_ms(0, 0, 2) == 5'000);
  const auto r = run(scenario);
  REQUIRE(r.completed);
  CHECK(r.makespan_ms == 15'000);
  CHECK(r.busy_gpu_ms == 2 * 25'000);
  CHECK(r.bound.work_ms == 12'500);  // 50 GPU-s / 4 GPUs
  CHECK(r.idle_drain_gpu_ms == 2 * 5'000);
}

TEST_CASE("a campaign no worker can run is reported as stuck, with the scheduler's reason",
          "[unit][makespan-sim]") {
  const auto scenario = parse(tiny_scenario(2, 2, {{"big", 4, 60, 10}}, 3, 1));
  const auto r = run(scenario);
  CHECK_FALSE(r.completed);
  CHECK_THAT(r.failure, Catch::Contains("stuck") && Catch::Contains("3 shards pending") &&
                            Catch::Contains("big needs 4 GPUs"));
  const auto misses = check_targets(r, Targets{});
  REQUIRE(misses.size() == 1);
  CHECK_THAT(misses[0], Catch::Contains("did not complete"));
}

TEST_CASE("check_targets names the gap", "[unit][makespan-sim]") {
  SimReport r;
  r.completed = true;
  r.makespan_ms = 120'000;
  r.bound.work_ms = 100'000;
  r.loads = 5;
  r.min_loads = 2;
  const auto misses = check_targets(r, Targets{1.10, 2.0});
  REQUIRE(misses.size() == 2);
  CHECK_THAT(misses[0], Catch::Contains("1.200 x the lower bound") && Catch::Contains("10.0 s"));
  CHECK_THAT(misses[1], Catch::Contains("5 model loads; target <= 4"));
  r.makespan_ms = 110'000;
  r.loads = 4;
  CHECK(check_targets(r, Targets{1.10, 2.0}).empty());
}

TEST_CASE("jitter is deterministic per shard and bounded", "[unit][makespan-sim]") {
  auto j = tiny_scenario(1, 1, {{"m", 1, 0, 100}}, 50, 1);
  j["jitter"] = 0.2;
  j["seed"] = 3;
  const auto a = parse(j);
  const auto b = parse(j);
  bool varies = false;
  for (uint32_t i = 0; i < 50; ++i) {
    const int64_t ms = a.shard_ms(0, 0, i);
    CHECK(ms == b.shard_ms(0, 0, i));
    CHECK(ms >= 80'000);
    CHECK(ms <= 120'000);
    varies = varies || ms != a.shard_ms(0, 0, 0);
  }
  CHECK(varies);
}

TEST_CASE("per-benchmark base times scale by model factor; explicit times win",
          "[unit][makespan-sim]") {
  auto j = tiny_scenario(1, 1, {{"m1", 1, 0, 10}, {"m2", 1, 0, 10}}, 1, 1);
  j.erase("shard_s");
  j["benchmark_shard_s"] = {{"b", 20}};
  j["model_factor"] = {{"m2", 1.5}};
  j["shard_s"] = {{"m1", {{"b", 7}}}};
  const auto s = parse(j);
  CHECK(s.shard_ms(0, 0, 0) == 7'000);
  CHECK(s.shard_ms(1, 0, 0) == 30'000);
}

TEST_CASE("scenario errors name the field", "[unit][makespan-sim]") {
  const auto good = tiny_scenario(1, 2, {{"m", 1, 5, 10}}, 4, 1);
  auto j = good;
  j["load_s"].erase("m");
  CHECK(parse_error(j) == "load_s.m: missing");
  j = good;
  j["shards_s"] = nlohmann::json::object();
  CHECK(parse_error(j) == "shards_s: unknown field");
  j = good;
  j["shard_s"]["nope"] = {{"b", 1}};
  CHECK(parse_error(j) == "shard_s.nope: no model of that name in the campaign");
  j = good;
  j.erase("shard_s");
  CHECK(parse_error(j) == "shard_s.m.b: missing, and benchmark_shard_s.b is not set either");
  j = good;
  j["jitter"] = 1.5;
  CHECK_THAT(parse_error(j), Catch::StartsWith("jitter: "));
  j = good;
  j["cluster"]["gpus_per_worker"] = 0;
  CHECK(parse_error(j) == "cluster.gpus_per_worker: must be an integer from 1 to 64");
  j = good;
  j["cluster"] = {{{"name", "a"}, {"workers", 1}, {"gpus_per_worker", 8}},
                  {{"name", "a"}, {"workers", 1}, {"gpus_per_worker", 8}}};
  CHECK(parse_error(j) == "cluster[1].name: 'a' names another group too");
  j = good;
  j["campaign"]["benchmarks"][0]["shard_size"] = 0;
  CHECK_THAT(parse_error(j), Catch::StartsWith("campaign.benchmarks[0].shard_size: "));
  j = good;
  j["campaign"]["models"][0]["resources"]["gpus"] = 0;
  CHECK_THAT(parse_error(j),
             Catch::StartsWith("campaign.models[0].resources.gpus: must be at least 1"));
  j = good;
  j["shard_s"]["m"]["b"] = -1;
  CHECK_THAT(parse_error(j), Catch::StartsWith("shard_s.m.b: must be a number of seconds > 0"));
  CHECK_THAT(load_scenario("/nonexistent/x.json").error().message,
             Catch::Contains("cannot be opened"));
}

TEST_CASE("the shipped scenarios parse and have the advertised shape", "[unit][makespan-sim]") {
  const std::string dir = std::string(EVALD_SOURCE_DIR) + "/tools/makespan-sim/scenarios/";
  auto national = load_scenario(dir + "national-round.json");
  INFO((national.ok() ? "" : national.error().message));
  REQUIRE(national.ok());
  CHECK(national->total_workers() == 8);
  CHECK(national->total_gpus() == 64);
  CHECK(national->campaign.models.size() == 12);
  CHECK(national->campaign.benchmarks.size() == 13);
  CHECK(national->campaign.total_shards() == 3180);
  auto mixed = load_scenario(dir + "mixed-small.json");
  INFO((mixed.ok() ? "" : mixed.error().message));
  REQUIRE(mixed.ok());
  CHECK(mixed->total_gpus() == 32);
  CHECK(mixed->campaign.models.size() == 6);
  for (const char* name : {"slow-node.json", "slow-straggler.json"}) {
    auto slow = load_scenario(dir + name);
    INFO(name << ": " << (slow.ok() ? "" : slow.error().message));
    REQUIRE(slow.ok());
    CHECK(slow->total_gpus() == 64);
    REQUIRE(slow->cluster.size() == 2);
    CHECK(slow->cluster[1].workers == 1);
    CHECK(slow->cluster[1].slowdown == 3.0);
  }
}
