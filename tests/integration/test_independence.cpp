// `evalctl independence` end to end on synthetic checkpoints that
// tests/independence/make_checkpoints.py writes with numpy: a llama-like base with a vision
// tower, and against it a fine-tune, the fine-tune with its MLP units permuted, independent
// models, a copied vision tower, a resized vocabulary, another layout, sharded and F16/BF16
// files. Then the exec runner in examples/independence through a real coordinator and worker.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>

#include "tests/integration/integration.hpp"

namespace {

namespace fs = std::filesystem;
using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;

constexpr int kPairs = 20;

fs::path python_with_numpy() {
  std::vector<fs::path> candidates = {"/usr/bin/python3"};
  if (const char* path = std::getenv("PATH")) {
    std::string dirs = path;
    size_t start = 0;
    while (start <= dirs.size()) {
      const size_t end = std::min(dirs.find(':', start), dirs.size());
      candidates.push_back(fs::path(dirs.substr(start, end - start)) / "python3");
      start = end + 1;
    }
  }
  for (const auto& candidate : candidates) {
    if (::access(candidate.c_str(), X_OK) != 0) continue;
    if (run_command(candidate, {"-c", "import numpy"}, 30s).exit_code == 0) return candidate;
  }
  FAIL("no python3 with numpy found; install python3-numpy (scripts/setup.sh does)");
  return {};
}

// The checkpoints, written once per test process and removed at its end.
const fs::path& checkpoints() {
  static TempDir dir("evald-indep");
  static const bool made = [] {
    const auto result = run_command(
        python_with_numpy(),
        {(fs::path(EVALD_SOURCE_DIR) / "tests/independence/make_checkpoints.py").string(),
         dir.path().string(), "--pairs", std::to_string(kPairs)},
        120s);
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    return true;
  }();
  (void)made;
  return dir.path();
}

std::string ck(const std::string& name) {
  return (checkpoints() / name).string();
}

CommandResult evalctl(const std::vector<std::string>& args) {
  return run_command(bin_dir() / "evalctl", args, 120s);
}

json check_json(const std::string& a, const std::string& b) {
  const auto result = evalctl({"independence", ck(a), ck(b), "--json"});
  INFO(a << " vs " << b << ": " << result.err);
  REQUIRE(result.exit_code == 0);
  return json::parse(result.out);
}

const json& component(const json& report, const std::string& name) {
  for (const auto& c : report.at("components")) {
    if (c.at("name") == name) return c;
  }
  FAIL("no component " << name << " in " << report.dump());
  static const json none;
  return none;
}

}  // namespace

TEST_CASE("independence: a fine-tune is dependent in every component", "[integration]") {
  const auto report = check_json("base.safetensors", "finetune.safetensors");
  INFO(report.dump(1));
  CHECK(report.at("verdict") == "dependent");
  CHECK(report.at("p_value").get<double>() < 1e-6);
  REQUIRE(report.at("components").size() == 3);
  for (const char* name : {"model", "lm_head", "vision_tower"}) {
    CHECK(component(report, name).at("verdict") == "dependent");
    CHECK(component(report, name).at("p_value").get<double>() < 1e-6);
  }
  // Every 2-D tensor tested, each on its own far below 1e-6; the 1-D norms skipped with a note.
  CHECK(report.at("tensors").size() == 25);
  for (const auto& t : report.at("tensors")) {
    CHECK(t.at("p_value").get<double>() < 1e-6);
    CHECK(t.at("shape").size() == 2);
  }
  for (const auto& s : report.at("skipped")) {
    CHECK_THAT(s.at("reason").get<std::string>(), Catch::Contains("not a 2-D tensor"));
  }
  CHECK(component(report, "model").at("tensors") == 15);
}

TEST_CASE("independence: permuting the MLP hidden units does not hide a copy", "[integration]") {
  const auto report = check_json("base.safetensors", "finetune_permuted.safetensors");
  INFO(report.dump(1));
  CHECK(report.at("verdict") == "dependent");
  CHECK(component(report, "model").at("verdict") == "dependent");
  // The permuted tensors themselves no longer match unit for unit...
  for (const auto& t : report.at("tensors")) {
    const std::string name = t.at("name");
    if (name.find("mlp.gate_proj") != std::string::npos) {
      CHECK(t.at("p_value").get<double>() > 0.01);
    }
  }
  // ...but the gate and up matchings still agree with each other.
  REQUIRE(report.at("mlp_agreement").size() == 2);
  for (const auto& a : report.at("mlp_agreement")) CHECK(a.at("p_value").get<double>() < 1e-6);

  for (const auto& g : report.at("groups")) {
    if (g.at("name").get<std::string>().starts_with("model.layers.")) {
      CHECK(g.at("p_value").get<double>() < 1e-6);
    }
  }
}

TEST_CASE("independence: independent models are independent", "[integration]") {
  const auto report = check_json("base.safetensors", "independent.safetensors");
  INFO(report.dump(1));
  CHECK(report.at("verdict") == "independent");
  for (const auto& c : report.at("components")) CHECK(c.at("verdict") == "independent");
}

TEST_CASE("independence: false positives over 20 independent pairs stay near 1%", "[integration]") {
  // With a true rate of 1%, P(at most 2 false 'dependent' of 20) =
  // 0.99^20 + 20*0.01*0.99^19 + 190*0.01^2*0.99^18 = 0.8179 + 0.1652 + 0.0159 = 0.9990: more
  // than 2 would be strong evidence (p < 0.001) that the rate exceeds alpha.
  int dependent = 0;
  std::vector<double> tensor_p;
  for (int k = 0; k < kPairs; ++k) {
    const auto report = check_json("pairs/" + std::to_string(k) + "_a.safetensors",
                                   "pairs/" + std::to_string(k) + "_b.safetensors");
    dependent += report.at("verdict") == "dependent" ? 1 : 0;
    for (const auto& t : report.at("tensors")) tensor_p.push_back(t.at("p_value"));
  }
  CHECK(dependent <= 2);
  // The per-tensor p-values are valid too: about 1% or fewer at or below 0.01.
  double small = 0;
  for (const double p : tensor_p) small += p <= 0.01 ? 1 : 0;
  INFO(small << " of " << tensor_p.size() << " tensor p-values <= 0.01");
  CHECK(small / static_cast<double>(tensor_p.size()) <=
        0.01 + 3 * std::sqrt(0.01 * 0.99 / static_cast<double>(tensor_p.size())));
}

TEST_CASE("independence: a copied vision tower is found and attributed", "[integration]") {
  const auto report = check_json("base.safetensors", "vision_copied.safetensors");
  INFO(report.dump(1));
  CHECK(report.at("verdict") == "dependent");
  CHECK(component(report, "vision_tower").at("verdict") == "dependent");
  CHECK(component(report, "model").at("verdict") == "independent");
  CHECK(component(report, "lm_head").at("verdict") == "independent");
}

TEST_CASE("independence: tensors whose shapes differ are skipped with a note", "[integration]") {
  const auto report = check_json("base.safetensors", "resized_vocab.safetensors");
  INFO(report.dump(1));
  int notes = 0;
  for (const auto& s : report.at("skipped")) {
    const std::string name = s.at("name");
    if (name == "lm_head.weight" || name == "model.embed_tokens.weight") {
      CHECK(s.at("reason") == "shapes differ: [96, 32] vs [104, 32]");
      ++notes;
    }
  }
  CHECK(notes == 2);
  CHECK(report.at("verdict") == "dependent");  // the rest is still a fine-tune
  for (const auto& t : report.at("tensors")) CHECK(t.at("name") != "lm_head.weight");

  // The table names them too.
  const auto table =
      evalctl({"independence", ck("base.safetensors"), ck("resized_vocab.safetensors")});
  REQUIRE(table.exit_code == 0);
  CHECK_THAT(table.out, Catch::Contains("verdict: dependent"));
  CHECK_THAT(table.out, Catch::Contains("lm_head.weight: shapes differ: [96, 32] vs [104, 32]"));
}

TEST_CASE("independence: sharded checkpoints and F16/BF16 weights", "[integration]") {
  for (const auto& [a, b] : std::vector<std::pair<std::string, std::string>>{
           {"base_sharded", "finetune_sharded_bf16"},
           {"base.safetensors", "finetune_f16.safetensors"},
           {"base_sharded", "finetune_bf16.safetensors"}}) {
    const auto report = check_json(a, b);
    INFO(a << " vs " << b << ": " << report.dump(1));
    CHECK(report.at("verdict") == "dependent");
    CHECK(report.at("tensors").size() == 25);
    for (const auto& c : report.at("components")) CHECK(c.at("verdict") == "dependent");
  }
  // A sharded checkpoint holds exactly what the single file holds: every unit matches itself.
  const auto same = check_json("base_sharded", "base.safetensors");
  for (const auto& t : same.at("tensors")) CHECK(t.at("matched") == t.at("sampled"));
}

TEST_CASE("independence: nothing in common, unreadable files and usage errors", "[integration]") {
  auto none = evalctl({"independence", ck("base.safetensors"), ck("other_layout.safetensors")});
  CHECK(none.exit_code == 1);
  CHECK_THAT(none.err, Catch::Contains("nothing to compare"));
  CHECK(none.out.empty());

  auto missing = evalctl({"independence", ck("base.safetensors"), ck("absent.safetensors")});
  CHECK(missing.exit_code == 1);
  CHECK_THAT(missing.err, Catch::Contains("absent.safetensors"));

  // A truncated copy: its header promises more data than the file holds.
  const auto text = read_file(checkpoints() / "base.safetensors");
  const auto truncated = checkpoints() / "truncated.safetensors";
  std::ofstream(truncated, std::ios::binary) << text.substr(0, text.size() / 2);
  auto cut = evalctl({"independence", ck("base.safetensors"), truncated.string()});
  CHECK(cut.exit_code == 1);
  CHECK_THAT(cut.err, Catch::Contains("outside the"));

  CHECK(evalctl({"independence", ck("base.safetensors")}).exit_code == 2);
  CHECK(evalctl(
            {"independence", ck("base.safetensors"), ck("finetune.safetensors"), "--alpha", "1.5"})
            .exit_code == 2);
  CHECK(evalctl({"independence", ck("base.safetensors"), ck("finetune.safetensors"), "--bogus"})
            .exit_code == 2);
  // --alpha moves the verdict line, not the p-values.
  const auto strict = evalctl({"independence", ck("base.safetensors"),
                               ck("vision_copied.safetensors"), "--json", "--alpha", "1e-300"});
  REQUIRE(strict.exit_code == 0);
  CHECK(json::parse(strict.out).at("alpha").get<double>() == 1e-300);
}

TEST_CASE("independence: the exec runner checks models against references as a campaign",
          "[integration]") {
  const fs::path runner =
      fs::path(EVALD_SOURCE_DIR) / "examples/independence/evald-independence-runner";
  const json references = json::array({{{"name", "base"}, {"path", ck("base.safetensors")}},
                                       {{"name", "other"}, {"path", ck("independent.safetensors")}},
                                       {{"name", "base-sharded"}, {"path", ck("base_sharded")}}});
  const json spec = {
      {"name", "independence"},
      {"models",
       {{{"name", "tuned"}, {"params", {{"path", ck("finetune.safetensors")}}}},
        {{"name", "fresh"}, {"params", {{"path", ck("pairs/0_a.safetensors")}}}}}},
      {"benchmarks",
       {{{"name", "independence"},
         {"examples", 3},
         {"shard_size", 2},
         {"metric", "dependent"},
         {"higher_is_better", false},
         {"params", {{"references", references}}}}}},
      {"runner",
       {{"type", "exec"},
        {"command", {runner.string(), "--evalctl", (bin_dir() / "evalctl").string()}},
        {"timeout_s", 120}}},
      {"max_attempts", 1}};

  ClusterOptions options;
  options.workers = 1;
  TestCluster cluster(options);
  const auto api = cluster.api();
  const auto id = api.submit(spec);
  api.wait_for_state(id, "succeeded", 120s, 100ms);
  const auto results = api.results(id);
  INFO(results.dump(1));
  std::map<std::string, json> by_model;
  for (const auto& m : results.at("models")) by_model[m.at("name")] = m;
  // The fine-tune depends on both copies of the base and not on the other model: 2 of 3.
  const auto& tuned = by_model.at("tuned").at("scores").at("independence");
  CHECK(tuned.at("value").get<double>() == Approx(2.0 / 3));
  CHECK(tuned.at("count") == 3);
  CHECK(tuned.at("complete") == true);
  const auto& fresh = by_model.at("fresh").at("scores").at("independence");
  CHECK(fresh.at("value").get<double>() == 0.0);
  CHECK(fresh.at("count") == 3);
}
