// The caps and rules that keep a campaign spec from hurting the coordinator or a worker: the
// whole text, description, params, labels, runner.command and runner.env are bounded; runner.env
// may not choose the code a runner loads; names may not look like options. Each refusal names
// the field and the limit; each limit is accepted exactly at its value.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "common/spec.hpp"
#include "common/spec_limits.hpp"

using evald::parse_campaign_spec;
using evald::parse_campaign_spec_text;
using nlohmann::json;

namespace {

json valid_spec() {
  return json{{"name", "limits"},
              {"models", {{{"name", "model-a"}, {"params", {{"path", "/models/a"}}}}}},
              {"benchmarks",
               {{{"name", "bench"}, {"examples", 10}, {"shard_size", 5}, {"metric", "accuracy"}}}},
              {"runner", {{"type", "exec"}, {"command", {"run-eval", "{model}", "{benchmark}"}}}}};
}

std::string error_of(const json& spec) {
  auto result = parse_campaign_spec(spec);
  return result.ok() ? "<accepted>" : result.error().message;
}

std::string error_of_text(const std::string& text) {
  auto result = parse_campaign_spec_text(text);
  return result.ok() ? "<accepted>" : result.error().message;
}

std::string nested(size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

}  // namespace

TEST_CASE("spec limits: the whole text is at most 1 MiB and 64 levels deep", "[unit]") {
  // Padding in the description would hit its own cap first; whitespace counts as text too.
  const std::string compact = valid_spec().dump();
  const std::string at_limit = compact + std::string(evald::kMaxSpecBytes - compact.size(), ' ');
  CHECK(error_of_text(at_limit) == "<accepted>");
  CHECK(error_of_text(at_limit + " ") == "spec is 1048577 bytes; the limit is 1048576 (1 MiB)");

  // 400 KB nested 200,000 levels: refused by the scan, not by a crash.
  CHECK(error_of_text(nested(200'000)) ==
        "spec nests deeper than 64 levels (the limit) at byte offset 64");
  auto deep_params = valid_spec();
  deep_params["models"][0]["params"] = {{"x", "PLACEHOLDER"}};
  std::string text = deep_params.dump();
  text.replace(text.find("\"PLACEHOLDER\""), 13, nested(100));
  CHECK_THAT(error_of_text(text), Catch::StartsWith("spec nests deeper than 64 levels"));
  // Invalid JSON keeps its message and offset.
  CHECK_THAT(error_of_text("{\"name\": }"), Catch::StartsWith("spec is not valid JSON: "));
}

TEST_CASE("spec limits: description and params are capped", "[unit]") {
  auto spec = valid_spec();
  spec["description"] = std::string(4096, 'd');
  CHECK(error_of(spec) == "<accepted>");
  spec["description"] = std::string(4097, 'd');
  CHECK(error_of(spec) == "description: is 4097 bytes; the limit is 4096 (4 KiB)");

  // {"blob": "..."} is 11 bytes of JSON around the string.
  spec = valid_spec();
  spec["models"][0]["params"] = {{"blob", std::string(65536 - 11, 'p')}};
  CHECK(error_of(spec) == "<accepted>");
  spec["models"][0]["params"] = {{"blob", std::string(65536 - 10, 'p')}};
  CHECK(error_of(spec) == "models[0].params: is 65537 bytes as JSON; the limit is 65536 (64 KiB)");
  spec = valid_spec();
  spec["benchmarks"][0]["params"] = {{"blob", std::string(70000, 'p')}};
  CHECK(error_of(spec) ==
        "benchmarks[0].params: is 70011 bytes as JSON; the limit is 65536 (64 KiB)");

  // Depth inside params: 32 levels (params itself is one), for values built in memory too.
  json value = 1;
  for (int i = 0; i < 31; ++i) value = json::array({value});
  spec = valid_spec();
  spec["benchmarks"][0]["params"] = {{"deep", value}};
  CHECK(error_of(spec) == "<accepted>");
  spec["benchmarks"][0]["params"] = {{"deep", json::array({value})}};
  CHECK(error_of(spec) == "benchmarks[0].params: nests deeper than 32 levels");
}

TEST_CASE("spec limits: runner.env may not choose the code a runner loads", "[unit]") {
  for (const std::string name : {"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PATH", "PYTHONPATH",
                                 "PYTHONHOME", "BASH_ENV", "PERL5OPT", "NODE_OPTIONS", "GCONV_PATH",
                                 "EVALD_MODEL", "EVALD_ANYTHING", "CUDA_VISIBLE_DEVICES"}) {
    INFO(name);
    auto spec = valid_spec();
    spec["runner"]["env"] = {{"HF_HOME", "/cache"}, {name, "/tmp/evil"}};
    const auto error = error_of(spec);
    CHECK_THAT(error, Catch::StartsWith("runner.env." + name + ": may not be set by a spec"));
    // The worker parses the spec it receives with the same parser: refused there too.
    CHECK_FALSE(parse_campaign_spec_text(spec.dump()).ok());
  }
  auto spec = valid_spec();
  spec["runner"]["env"] = {{"LD_PRELOAD", "/tmp/evil.so"}};
  CHECK(error_of(spec) ==
        "runner.env.LD_PRELOAD: may not be set by a spec: LD_* variables choose the code a "
        "process loads");

  // Ordinary variables, including ones that merely contain a reserved word, are fine.
  spec["runner"]["env"] = {
      {"HF_HOME", "/cache"}, {"OMP_NUM_THREADS", "4"}, {"MY_PATH", "/x"}, {"OLD_LD", "1"}};
  CHECK(error_of(spec) == "<accepted>");
}

TEST_CASE("spec limits: runner.env names, values and count are bounded", "[unit]") {
  const std::string invalid =
      " is not a valid variable name (letters, digits and '_', not starting with a digit, at "
      "most 128 bytes)";
  for (const std::string& name :
       std::vector<std::string>{"1ABC", "A-B", "A B", "A=B", "", std::string("A\0B", 3)}) {
    auto spec = valid_spec();
    spec["runner"]["env"] = {{name, "x"}};
    CHECK_THAT(error_of(spec), Catch::StartsWith("runner.env: '") && Catch::EndsWith(invalid));
  }
  auto spec = valid_spec();
  spec["runner"]["env"] = {{std::string(128, 'A'), "x"}};
  CHECK(error_of(spec) == "<accepted>");
  spec["runner"]["env"] = {{std::string(129, 'A'), "x"}};
  CHECK_THAT(error_of(spec), Catch::EndsWith(invalid));

  spec["runner"]["env"] = {{"V", std::string(4096, 'v')}};
  CHECK(error_of(spec) == "<accepted>");
  spec["runner"]["env"] = {{"V", std::string(4097, 'v')}};
  CHECK(error_of(spec) == "runner.env.V: must be at most 4096 bytes");
  spec["runner"]["env"] = {{"V", std::string("a\0b", 3)}};
  CHECK(error_of(spec) == "runner.env.V: must not contain a NUL character");

  json many = json::object();
  for (int i = 0; i < 64; ++i) many["V" + std::to_string(i)] = "x";
  spec["runner"]["env"] = many;
  CHECK(error_of(spec) == "<accepted>");
  many["V64"] = "x";
  spec["runner"]["env"] = many;
  CHECK(error_of(spec) == "runner.env: has 65 entries; the limit is 64");
}

TEST_CASE("spec limits: what reaches a command line cannot read as an option or be cut short",
          "[unit]") {
  auto spec = valid_spec();
  spec["models"][0]["name"] = "-rf";
  CHECK(error_of(spec) == "models[0].name: must not start with '-'");
  spec = valid_spec();
  spec["benchmarks"][0]["name"] = "--output=/etc/passwd";
  CHECK_THAT(error_of(spec), Catch::StartsWith("benchmarks[0].name: "));
  spec["benchmarks"][0]["name"] = "-x";
  CHECK(error_of(spec) == "benchmarks[0].name: must not start with '-'");
  spec = valid_spec();
  spec["benchmarks"][0]["metric"] = "--help";
  CHECK(error_of(spec) == "benchmarks[0].metric: must not start with '-'");
  spec["benchmarks"][0]["metric"] = "acc\nuracy";
  CHECK(error_of(spec) == "benchmarks[0].metric: must not contain control characters");
  spec["benchmarks"][0]["metric"] = "pass@1";
  CHECK(error_of(spec) == "<accepted>");
  spec = valid_spec();
  spec["name"] = "-campaign";
  CHECK(error_of(spec) == "name: must not start with '-'");
  // Dashes inside a name are fine.
  spec = valid_spec();
  spec["models"][0]["name"] = "llama-3-8b";
  CHECK(error_of(spec) == "<accepted>");

  spec = valid_spec();
  spec["runner"]["command"] = {"run-eval", std::string("a\0b", 3)};
  CHECK(error_of(spec) == "runner.command[1]: must not contain a NUL character");
  spec["runner"]["command"] = {"run-eval", std::string(4096, 'a')};
  CHECK(error_of(spec) == "<accepted>");
  spec["runner"]["command"] = {"run-eval", std::string(4097, 'a')};
  CHECK(error_of(spec) == "runner.command[1]: must be at most 4096 bytes");
  json args = json::array();
  for (int i = 0; i < 256; ++i) args.push_back("a");
  spec["runner"]["command"] = args;
  CHECK(error_of(spec) == "<accepted>");
  args.push_back("a");
  spec["runner"]["command"] = args;
  CHECK(error_of(spec) == "runner.command: has 257 entries; the limit is 256");
}

TEST_CASE("spec limits: resource labels are bounded", "[unit]") {
  auto spec = valid_spec();
  json labels = json::object();
  for (int i = 0; i < 32; ++i) labels["k" + std::to_string(i)] = "v";
  spec["models"][0]["resources"] = {{"labels", labels}};
  CHECK(error_of(spec) == "<accepted>");
  labels["k32"] = "v";
  spec["models"][0]["resources"] = {{"labels", labels}};
  CHECK(error_of(spec) == "models[0].resources.labels: has 33 entries; the limit is 32");
  spec["models"][0]["resources"] = {{"labels", {{"zone", std::string(257, 'z')}}}};
  CHECK(error_of(spec) ==
        "models[0].resources.labels.zone: must be at most 256 bytes, without control characters");
  spec["models"][0]["resources"] = {{"labels", {{std::string(257, 'k'), "v"}}}};
  CHECK_THAT(error_of(spec), Catch::EndsWith("is not a valid label name"));
}
