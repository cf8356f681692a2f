// evald-slurm-scaler's own parts: reading the coordinator's gauges, the sizing decision, the
// flags, squeue's output and running a command. The whole loop against a real coordinator, real
// workers and a real Slurm is tests/integration/slurm/run-slurm-scaler-test.sh.
#include <catch2/catch.hpp>
#include <fstream>

#include "tests/support/test_support.hpp"
#include "tools/slurm-scaler/scaler.hpp"

namespace {

using namespace evald;
using namespace evald::slurm_scaler;
using evald::testing::TempDir;

// As the coordinator serves it (prometheus-cpp's text format), with other metrics around.
constexpr const char* kExposition = R"(# HELP evald_pending_gpu_seconds_extra not ours
evald_pending_gpu_seconds_extra{labels="pool=a"} 999
# HELP evald_pending_gpu_seconds Expected GPU-seconds of pending work
# TYPE evald_pending_gpu_seconds gauge
evald_pending_gpu_seconds{labels="node=n1,pool=a,slurm_job=7"} 7200
evald_pending_gpu_seconds{labels="node=n2,pool=a,slurm_job=8"} 3600
evald_pending_gpu_seconds{labels="pool=b"} 50000
evald_pending_gpu_seconds{labels="all"} 57200
# TYPE evald_workers_idle gauge
evald_workers_idle{labels="node=n1,pool=a,slurm_job=7"} 1
evald_workers_idle{labels="node=n2,pool=a,slurm_job=8"} 2
evald_workers_idle{labels="pool=b"} 5
evald_workers{state="connected"} 3
)";

ScalerConfig config_with(uint32_t gpus, int64_t drain_s, uint32_t min_nodes, uint32_t max_nodes) {
  ScalerConfig c;
  c.gpus_per_node = gpus;
  c.target_drain = std::chrono::seconds(drain_s);
  c.min_nodes = min_nodes;
  c.max_nodes = max_nodes;
  return c;
}

Result<ScalerConfig> config_from(std::vector<std::string> flags) {
  auto options = scaler_options();
  std::vector<const char*> argv = {"evald-slurm-scaler"};
  for (const auto& f : flags) argv.push_back(f.c_str());
  const auto args = parse_args(static_cast<int>(argv.size()), argv.data(), options);
  return scaler_config_from(args.values);
}

}  // namespace

TEST_CASE("scaler: the gauges per kind of worker are read from /metrics", "[unit]") {
  auto pending = parse_kind_gauge(kExposition, "evald_pending_gpu_seconds");
  REQUIRE(pending.ok());
  REQUIRE(pending->size() == 4);
  CHECK(pending->at(0).kind == "node=n1,pool=a,slurm_job=7");
  CHECK(pending->at(0).value == 7200);
  CHECK(pending->at(3).kind == "all");
  // Escapes in a label value, a timestamp, exponent notation.
  auto odd =
      parse_kind_gauge("evald_workers_idle{labels=\"k=a\\\"b\\\\c\",x=\"y\"} 1.5e+01 1700000000\n",
                       "evald_workers_idle");
  REQUIRE(odd.ok());
  REQUIRE(odd->size() == 1);
  CHECK(odd->at(0).kind == "k=a\"b\\c");
  CHECK(odd->at(0).value == 15);

  const auto broken =
      parse_kind_gauge("evald_workers_idle{labels=\"a\"} lots\n", "evald_workers_idle");
  REQUIRE_FALSE(broken.ok());
  CHECK_THAT(broken.error().message, Catch::Contains("'lots' is not a number"));
  CHECK_FALSE(parse_kind_gauge("evald_workers_idle{labels=\"a} 1\n", "evald_workers_idle").ok());
}

TEST_CASE("scaler: the pool's demand is the most any of its kinds could run", "[unit]") {
  auto a = demand_from_metrics(kExposition, {{"pool", "a"}});
  REQUIRE(a.ok());
  CHECK(a->source == "pool");
  CHECK(a->pending_gpu_s == 7200);  // not the sum: each kind counts all the work it could run
  CHECK(a->idle_workers == 3);

  // No worker of the pool known yet (a fleet at zero): all pending work counts.
  auto c = demand_from_metrics(kExposition, {{"pool", "c"}});
  REQUIRE(c.ok());
  CHECK(c->source == "all");
  CHECK(c->pending_gpu_s == 57200);
  CHECK(c->idle_workers == 0);

  const auto not_evald = demand_from_metrics("up 1\n", {});
  REQUIRE_FALSE(not_evald.ok());
  CHECK_THAT(not_evald.error().message, Catch::Contains("labels=\"all\""));
}

TEST_CASE("scaler: nodes are sized by pending GPU time over the target drain", "[unit]") {
  const auto c = config_with(8, 3600, 0, 10);
  // 3 node-hours of 8 GPUs: 3 nodes.
  auto d = decide(Demand{3 * 8 * 3600.0, "pool", 0}, 0, 0, c);
  CHECK(d.wanted == 3);
  CHECK(d.submit == 3);
  // A little over rounds up. A busy running job stays busy with its shards, so pending work
  // needs nodes on top of it; a queued job is one of those.
  d = decide(Demand{3 * 8 * 3600.0 + 1, "pool", 0}, 1, 1, c);
  CHECK(d.wanted == 5);
  CHECK(d.submit == 3);
  // Never past max.
  d = decide(Demand{1e9, "all", 0}, 0, 0, c);
  CHECK(d.wanted == 10);
  CHECK(d.submit == 10);
  d = decide(Demand{1e9, "pool", 0}, 10, 0, c);
  CHECK(d.submit == 0);
  d = decide(Demand{1e9, "pool", 0}, 12, 0, c);  // after a lower --max-nodes
  CHECK(d.submit == 0);
  CHECK(d.cancel == 0);
  // An idle pool worker takes pending work first: one node fewer to submit, not none.
  d = decide(Demand{5 * 8 * 3600.0, "pool", 1}, 2, 0, c);
  CHECK(d.wanted == 6);
  CHECK(d.submit == 4);
  CHECK(d.reason == "pending work needs more nodes than the idle workers");
  // Idle workers that could take all of it: nothing to add.
  d = decide(Demand{2 * 8 * 3600.0, "pool", 2}, 2, 0, c);
  CHECK(d.wanted == 2);
  CHECK(d.submit == 0);
  // No work: queued jobs go, running ones are left to drain.
  d = decide(Demand{0, "pool", 2}, 2, 3, c);
  CHECK(d.wanted == 0);
  CHECK(d.cancel == 3);
  d = decide(Demand{8 * 3600.0, "pool", 0}, 0, 3, c);
  CHECK(d.cancel == 2);
  // --min-nodes holds a floor, even with idle workers elsewhere in the pool.
  const auto floor = config_with(8, 3600, 2, 10);
  d = decide(Demand{0, "all", 1}, 1, 0, floor);
  CHECK(d.wanted == 2);
  CHECK(d.submit == 1);
}

TEST_CASE("scaler: bad flags are errors that name the flag", "[unit]") {
  TempDir dir;
  const auto script = (dir.path() / "workers.sbatch").string();
  std::ofstream(script) << "#!/bin/bash\n";
  const std::vector<std::string> good = {"--coordinator=http://127.0.0.1:1",
                                         "--worker-endpoint=tcp://127.0.0.1:2",
                                         "--sbatch-script=" + script, "--max-nodes=4"};
  auto ok = config_from(good);
  REQUIRE(ok.ok());
  CHECK(ok->max_nodes == 4);
  CHECK(ok->gpus_per_node == 8);

  // The good flags with `extra` added, each replacing a good flag of the same name.
  const auto error_of = [&](std::vector<std::string> extra, bool drop_max = false) {
    std::vector<std::string> flags;
    for (const auto& flag : good) {
      const auto name = flag.substr(0, flag.find('=') + 1);
      const bool replaced = std::any_of(extra.begin(), extra.end(),
                                        [&](const std::string& e) { return e.starts_with(name); });
      if (!replaced && !(drop_max && name == "--max-nodes=")) flags.push_back(flag);
    }
    flags.insert(flags.end(), extra.begin(), extra.end());
    auto c = config_from(flags);
    REQUIRE_FALSE(c.ok());
    return c.error().message;
  };
  CHECK(error_of({}, true) == "--max-nodes is required");
  CHECK_THAT(error_of({"--max-nodes=0"}), Catch::Contains("--max-nodes: must be between 1"));
  CHECK_THAT(error_of({"--min-nodes=5"}), Catch::Contains("--min-nodes"));
  CHECK_THAT(error_of({"--labels=pool"}), Catch::Contains("--labels: 'pool' is not key=value"));
  CHECK_THAT(error_of({"--coordinator=ftp://x"}), Catch::Contains("--coordinator"));
  CHECK_THAT(error_of({"--worker-endpoint=http://x:1"}), Catch::Contains("--worker-endpoint"));
  CHECK_THAT(error_of({"--sbatch-arg=--nodes=2"}), Catch::Contains("set by the scaler"));
  for (const std::string owned :
       {"-N2", "-Jname", "--array=1-4", "-a", "--export=NONE", "--export=EVALD_LABELS"}) {
    INFO(owned);
    CHECK_THAT(error_of({"--sbatch-arg=" + owned}), Catch::Contains("set by the scaler"));
  }
  auto with_args = good;
  with_args.push_back("--sbatch-arg=--export=ALL,CUDA_HOME=/opt/cuda");
  with_args.push_back("--sbatch-arg=--partition=gpu");
  CHECK(config_from(with_args).ok());
  CHECK_THAT(error_of({"--token-file=" + (dir.path() / "missing").string()}),
             Catch::Contains("--token-file: cannot read"));
  auto missing_script = good;
  missing_script[2] = "--sbatch-script=" + (dir.path() / "nope").string();
  auto c = config_from(missing_script);
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(c.error().message, Catch::Contains("--sbatch-script: cannot read"));
}

TEST_CASE("scaler: squeue lines and job states", "[unit]") {
  auto jobs = parse_squeue(
      "12|RUNNING\n13|PENDING\n\n14|COMPLETING\n15|CANCELLED\n16|STOPPED\n17|SPECIAL_EXIT\n");
  REQUIRE(jobs.ok());
  REQUIRE(jobs->size() == 6);
  // States not listed as ended still hold (or may get) a node: counted against --max-nodes.
  CHECK(job_active(jobs->at(4)));
  CHECK(job_active(jobs->at(5)));
  CHECK(job_active(jobs->at(0)));
  CHECK_FALSE(job_queued(jobs->at(0)));
  CHECK(job_queued(jobs->at(1)));
  CHECK(job_active(jobs->at(2)));  // its workers are gone, but it still holds the node
  CHECK_FALSE(job_queued(jobs->at(2)));
  CHECK_FALSE(job_active(jobs->at(3)));
  CHECK_FALSE(parse_squeue("garbage\n").ok());
}

TEST_CASE("scaler: commands run with extra environment, output and a timeout", "[unit]") {
  auto out = run_command({"sh", "-c", "echo \"$EVALD_LABELS\"; echo oops >&2; exit 3"},
                         {{"EVALD_LABELS", "pool=a"}}, std::chrono::seconds(10));
  REQUIRE(out.ok());
  CHECK(out->exit_code == 3);
  CHECK(out->out == "pool=a\n");
  CHECK(out->err == "oops\n");

  const auto slow = run_command({"sleep", "30"}, {}, std::chrono::seconds(1));
  REQUIRE_FALSE(slow.ok());
  CHECK_THAT(slow.error().message, Catch::Contains("still running after 1 s"));

  const auto missing = run_command({"evald-no-such-command"}, {}, std::chrono::seconds(1));
  REQUIRE_FALSE(missing.ok());
  CHECK_THAT(missing.error().message, Catch::Contains("not found in PATH"));
}
