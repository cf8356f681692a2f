// Results you can defend, through the real binaries: provenance records with the hashes of the
// real files, an exported bundle that sha256sum verifies, reuse of identical shards (no runner
// runs at all, and the leaderboard is the same), data pinning, and the composite score.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <set>
#include <sstream>

#include "common/sha256.hpp"
#include "common/version.hpp"
#include "tests/integration/integration.hpp"
#include "tests/integration/runner_trace.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using ShardId = std::tuple<std::string, std::string, int64_t>;

ShardId shard_id(const nlohmann::json& item) {
  return {item.at("model").get<std::string>(), item.at("benchmark").get<std::string>(),
          item.at("index").get<int64_t>()};
}

const std::vector<TestModel> kModels = {
    {"p-alpha", 1, 5, {}},
    {"p-beta", 2, 3, {}},
};

nlohmann::json prov_runner() {
  return {{"type", "exec"},
          {"command", {"evald-prov-runner", "{model}", "{benchmark}", "{shard}"}},
          {"timeout_s", 60}};
}

// Two benchmarks reading `data`, each run logged to `log`.
std::vector<TestBenchmark> benchmarks(const fs::path& data, const fs::path& log,
                                      const std::string& pin = "") {
  nlohmann::json extra = {{"data", data.string()}, {"invocation_log", log.string()}};
  if (!pin.empty()) extra["data_sha256"] = pin;
  return {{"q-one", 25, 10, 0, "accuracy", true, extra},
          {"q-two", 12, 5, 3, "accuracy", true, extra}};
}

std::string write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  return evald::sha256_hex(text);
}

size_t line_count(const fs::path& path) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.empty() ? 0 : 1;
  return n;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string host_name() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  return name;
}

CommandResult evalctl(const std::vector<std::string>& args) {
  return run_command(bin_dir() / "evalctl", args, 60s);
}

}  // namespace

TEST_CASE("provenance: every counted result has a complete record with the real hashes",
          "[integration][provenance]") {
  TestCluster cluster;
  const auto api = cluster.api();
  const auto data = cluster.dir() / "data.jsonl";
  const auto data_sha = write_text(data, "{\"q\": 1}\n{\"q\": 2}\n");
  const auto log = cluster.dir() / "invocations.log";
  const auto bench = benchmarks(data, log);
  const auto id = api.submit(make_spec("prov", kModels, bench, prov_runner()));
  api.wait_for_state(id, "succeeded", 60s);
  const int64_t total = total_shards(kModels, bench);

  const auto campaign = api.campaign(id);
  const std::string spec_sha = campaign.at("spec_sha256");
  CHECK(spec_sha == evald::sha256_hex(campaign.at("spec").dump()));
  auto runner_sha = evald::sha256_file_hex(runners_dir() / "evald-prov-runner");
  REQUIRE(runner_sha.ok());

  const auto records = api.get("/v1/campaigns/" + id + "/provenance").at("records");
  REQUIRE(records.size() == static_cast<size_t>(total));
  std::set<ShardId> seen;
  for (const auto& r : records) {
    INFO(r.dump());
    seen.insert(shard_id(r));
    CHECK(r.at("attempt_id").get<uint64_t>() > 0);
    const std::string worker = r.at("worker");
    CHECK((worker == "w1" || worker == "w2"));
    CHECK(r.at("host") == host_name());
    CHECK(r.at("gpus") == nlohmann::json::array());  // the test workers run with --gpus none
    CHECK(r.at("started_at").is_string());
    CHECK(r.at("ended_at").is_string());
    CHECK(r.at("started_at").get<std::string>() <= r.at("ended_at").get<std::string>());
    CHECK(r.at("runner").at("type") == "exec");
    CHECK(r.at("runner").at("command") == prov_runner().at("command"));
    CHECK(r.at("runner").at("executable_sha256") == runner_sha.value());
    CHECK(r.at("data_sha256") == data_sha);
    CHECK(r.at("spec_sha256") == spec_sha);
    CHECK(r.at("evald_version") == evald::kVersion);
  }
  CHECK(seen.size() == static_cast<size_t>(total));  // one record per shard, none twice
  CHECK(line_count(log) == static_cast<size_t>(total));
}

TEST_CASE("export: the bundle passes sha256sum -c and holds every record",
          "[integration][provenance]") {
  TestCluster cluster;
  const auto api = cluster.api();
  const auto data = cluster.dir() / "data.jsonl";
  write_text(data, "x\n");
  const auto bench = benchmarks(data, cluster.dir() / "invocations.log");
  const auto id = api.submit(make_spec("export", kModels, bench, prov_runner()));
  api.wait_for_state(id, "succeeded", 60s);

  const auto dir = cluster.dir() / "bundle";
  const auto exported =
      evalctl({"--server", cluster.coordinator().http_url(), "export", id, dir.string()});
  INFO(exported.out << exported.err);
  REQUIRE(exported.exit_code == 0);
  for (const char* file : {"spec.json", "results.json", "provenance.jsonl", "MANIFEST.sha256"}) {
    CHECK(fs::exists(dir / file));
  }
  CHECK(line_count(dir / "provenance.jsonl") == static_cast<size_t>(total_shards(kModels, bench)));
  // Per-example samples, when the coordinator serves them: one line per example.
  if (api.request("GET", "/v1/campaigns/" + id + "/samples?model=p-alpha&benchmark=q-one").status ==
      200) {
    CHECK(line_count(dir / "samples" / "p-alpha" / "q-one.jsonl") == 25);
    CHECK(line_count(dir / "samples" / "p-beta" / "q-two.jsonl") == 12);
  }
  // The spec file is the text the coordinator hashed.
  CHECK(evald::sha256_hex(read_text(dir / "spec.json")) == api.campaign(id).at("spec_sha256"));
  CHECK(nlohmann::json::parse(read_text(dir / "results.json")).at("models") ==
        api.results(id).at("models"));

  const auto verify =
      run_command("/bin/sh", {"-c", "cd '" + dir.string() + "' && sha256sum -c MANIFEST.sha256"});
  INFO(verify.out << verify.err);
  CHECK(verify.exit_code == 0);
  CHECK(verify.out.find("provenance.jsonl: OK") != std::string::npos);

  // A changed byte is caught: the check can fail.
  { std::ofstream(dir / "results.json", std::ios::app) << " "; }
  const auto tampered =
      run_command("/bin/sh", {"-c", "cd '" + dir.string() + "' && sha256sum -c MANIFEST.sha256"});
  CHECK(tampered.exit_code != 0);
  CHECK(tampered.out.find("results.json: FAILED") != std::string::npos);
}

TEST_CASE("reuse: an identical campaign runs no runner and yields the same leaderboard",
          "[integration][provenance]") {
  TestCluster cluster;
  const auto api = cluster.api();
  const auto data = cluster.dir() / "data.jsonl";
  write_text(data, "same data\n");
  const auto log = cluster.dir() / "invocations.log";
  const auto bench = benchmarks(data, log);
  const int64_t total = total_shards(kModels, bench);
  const auto spec = make_spec("first", kModels, bench, prov_runner());
  const auto first = api.submit(spec);
  api.wait_for_state(first, "succeeded", 60s);
  REQUIRE(line_count(log) == static_cast<size_t>(total));
  std::map<ShardId, uint64_t> attempt_of;
  // By value: a range-for over a member of the temporary answer would outlive it.
  const nlohmann::json first_records =
      api.get("/v1/campaigns/" + first + "/provenance").at("records");
  REQUIRE(first_records.size() == static_cast<size_t>(total));
  for (const auto& r : first_records) {
    attempt_of[shard_id(r)] = r.at("attempt_id").get<uint64_t>();
  }

  auto again = spec;
  again["name"] = "second";
  again["reuse"] = true;
  const auto second = api.submit(again);
  // Succeeded at submit: no shard was ever pending for a worker.
  const auto state = api.campaign(second);
  CHECK(state.at("state") == "succeeded");
  CHECK(state.at("shards").at("succeeded") == total);
  CHECK(line_count(log) == static_cast<size_t>(total));  // no runner ran
  CHECK(api.results(second).at("models") == api.results(first).at("models"));
  check_results(api.results(second), kModels, bench);
  const auto shards = shard_list(api, second);
  for (const auto& s : shards) {
    INFO(s.dump());
    REQUIRE(s.contains("reused_from"));
    CHECK(s.at("reused_from").at("campaign") == first);
    CHECK(s.at("reused_from").at("attempt_id") == attempt_of.at(shard_id(s)));
  }
  const auto records = api.get("/v1/campaigns/" + second + "/provenance").at("records");
  CHECK(records.size() == static_cast<size_t>(total));
  for (const auto& r : records) CHECK(r.at("reused_from").at("campaign") == first);
  CHECK(api.metric("evald_shards_reused_total") == total);

  // The index is durable: after a restart a third campaign still reuses everything.
  cluster.coordinator().restart();
  api.wait_for_workers(2, 20s);
  auto third_spec = again;
  third_spec["name"] = "third";
  const auto third = api.submit(third_spec);
  CHECK(api.campaign(third).at("state") == "succeeded");
  CHECK(api.results(third).at("models") == api.results(first).at("models"));
  CHECK(line_count(log) == static_cast<size_t>(total));

  // Without "reuse" the same spec runs again.
  auto fourth_spec = spec;
  fourth_spec["name"] = "fourth";
  const auto fourth = api.submit(fourth_spec);
  api.wait_for_state(fourth, "succeeded", 60s);
  CHECK(line_count(log) == static_cast<size_t>(2 * total));
}

TEST_CASE("data pinning: a changed data file fails with data changed, and is never reused",
          "[integration][provenance]") {
  TestCluster cluster;
  const auto api = cluster.api();
  const auto data = cluster.dir() / "data.jsonl";
  const auto original_sha = write_text(data, "version 1\n");
  const auto log = cluster.dir() / "invocations.log";
  const std::vector<TestModel> one_model = {kModels[0]};

  // Pinned to the file as it is: runs and succeeds.
  const auto pinned =
      make_spec("pinned", one_model, benchmarks(data, log, original_sha), prov_runner(), 1);
  const auto first = api.submit(pinned);
  api.wait_for_state(first, "succeeded", 60s);
  const size_t runs = line_count(log);
  REQUIRE(runs > 0);

  // The file changes under the same pin: every attempt fails before the runner starts.
  const auto changed_sha = write_text(data, "version 2, changed\n");
  auto same_pin = pinned;
  same_pin["name"] = "same-pin";
  const auto second = api.submit(same_pin);
  api.wait_for_state(second, "failed", 60s);
  CHECK(line_count(log) == runs);
  const auto failed = shard_list(api, second, "failed");
  REQUIRE_FALSE(failed.empty());
  for (const auto& s : failed) {
    CHECK(s.at("last_error") == "data changed: expected " + original_sha + ", got " + changed_sha +
                                    " (" + data.string() + ")");
  }

  // Pinned to the new file with reuse: a changed pin is a different shard, so it runs.
  auto new_pin =
      make_spec("new-pin", one_model, benchmarks(data, log, changed_sha), prov_runner(), 1);
  new_pin["reuse"] = true;
  const auto third = api.submit(new_pin);
  api.wait_for_state(third, "succeeded", 60s);
  CHECK(line_count(log) == 2 * runs);
  for (const auto& s : shard_list(api, third)) CHECK_FALSE(s.contains("reused_from"));
  const nlohmann::json third_records =
      api.get("/v1/campaigns/" + third + "/provenance").at("records");
  CHECK(third_records.size() == static_cast<size_t>(runs));
  for (const auto& r : third_records) {
    CHECK(r.at("data_sha256") == changed_sha);
  }
  CHECK(api.metric("evald_shards_reused_total") == 0);
}

TEST_CASE("composite: weighted components rank models as computed by hand",
          "[integration][provenance]") {
  TestCluster cluster;
  const auto api = cluster.api();
  // Three models whose benchmark averages differ; experts and users reverse part of the order.
  const std::vector<TestModel> models = {
      {"c-one", 1, 6, {}}, {"c-two", 2, 4, {}}, {"c-three", 3, 2, {}}, {"c-four", 1, 1, {}}};
  const std::vector<TestBenchmark> bench = {{"r-one", 28, 10, 0, "accuracy", true, {}},
                                            {"r-two", 21, 7, 2, "accuracy", true, {}}};
  auto spec = make_spec("composite", models, bench, prov_runner());
  spec["scoring"] = {{"weights", {{"benchmarks", 40}, {"experts", 35}, {"users", 25}}}};
  const auto id = api.submit(spec);
  api.wait_for_state(id, "succeeded", 60s);

  const std::map<std::string, double> experts = {
      {"c-one", 50}, {"c-two", 90}, {"c-three", 95.5}, {"c-four", 99}};
  const std::map<std::string, double> users = {{"c-one", 60}, {"c-two", 80}, {"c-three", 70}};
  const auto csv = cluster.dir() / "experts.csv";
  {
    std::ofstream out(csv);
    out << "model,score\n";
    for (const auto& [model, score] : experts) out << model << "," << score << "\n";
  }
  const std::string server = cluster.coordinator().http_url();
  const auto imported =
      evalctl({"--server", server, "scores", "import", id, "experts", csv.string()});
  INFO(imported.out << imported.err);
  REQUIRE(imported.exit_code == 0);
  api.post("/v1/campaigns/" + id + "/scores", {{"component", "users"}, {"scores", users}});

  // By hand: composite = 40 * average + 35 * experts / 100 + 25 * users / 100.
  std::vector<std::pair<double, std::string>> expected;
  for (const auto& m : models) {
    if (!users.contains(m.name)) continue;  // no users score: null, last
    double average = 0;
    for (const auto& b : bench) average += expected_score(m, b);
    average /= static_cast<double>(bench.size());
    expected.emplace_back(40 * average + 0.35 * experts.at(m.name) + 0.25 * users.at(m.name),
                          m.name);
  }
  std::sort(expected.rbegin(), expected.rend());
  REQUIRE(std::abs(expected[0].first - expected[1].first) > 1e-6);
  REQUIRE(std::abs(expected[1].first - expected[2].first) > 1e-6);

  auto check_ranking = [&](const nlohmann::json& results) {
    const auto& rows = results.at("models");
    REQUIRE(rows.size() == 4);
    for (size_t i = 0; i < expected.size(); ++i) {
      INFO(rows[i].dump());
      CHECK(rows[i].at("name") == expected[i].second);
      CHECK(rows[i].at("rank") == static_cast<int>(i) + 1);
      CHECK(rows[i].at("composite").get<double>() == Approx(expected[i].first).epsilon(1e-12));
    }
    CHECK(rows[3].at("name") == "c-four");
    CHECK(rows[3].at("composite").is_null());
    CHECK(rows[3].at("components").at("users").is_null());
    CHECK(rows[3].at("components").at("experts") == 99.0);
    CHECK(rows[3].at("rank") == 4);
  };
  check_ranking(api.results(id));

  // Audited, and refused when they do not fit the spec.
  const auto audit = api.get("/v1/audit").at("events");
  size_t imports = 0;
  for (const auto& e : audit) imports += e.at("action") == "scores" ? 1 : 0;
  CHECK(imports == 2);
  CHECK(api.request("POST", "/v1/campaigns/" + id + "/scores",
                    R"({"component":"benchmarks","scores":{"c-one":1}})")
            .status == 400);
  CHECK(api.request("POST", "/v1/campaigns/" + id + "/scores",
                    R"({"component":"experts","scores":{"c-one":101}})")
            .status == 400);
  CHECK(api.request("POST", "/v1/campaigns/" + id + "/scores",
                    R"({"component":"experts","scores":{"nobody":1}})")
            .status == 400);

  // Kept with the campaign: the same ranking after a restart.
  cluster.coordinator().restart();
  check_ranking(api.results(id));
}
