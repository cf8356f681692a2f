// Campaign spec validation: defaults, the exact error message (with field path) for broken fields,
// the shard limit, sharding ranges, the canonical round-trip, and no exceptions on any input.
#include <algorithm>
#include <catch2/catch.hpp>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/spec.hpp"

using evald::CampaignSpec;
using evald::parse_campaign_spec;
using evald::parse_campaign_spec_text;
using nlohmann::json;

namespace {

// Two models x two benchmarks. Shards: kmmlu ceil(35030 / 500) = 71, gsm8k ceil(1001 / 500) = 3,
// so 74 per model and 148 in all.
json valid_spec() {
  return json::parse(R"({
    "name": "k-ai-round1",
    "models": [{"name": "model-a", "params": {"path": "/models/a"}}, {"name": "model-b"}],
    "benchmarks": [
      {"name": "kmmlu", "examples": 35030, "shard_size": 500, "metric": "accuracy",
       "params": {"data": "/data/kmmlu.jsonl"}},
      {"name": "gsm8k", "examples": 1001, "shard_size": 500}
    ],
    "runner": {"type": "exec", "command": ["python3", "/opt/eval/run_shard.py", "{model}",
                                           "{benchmark}"],
               "timeout_s": 3600}
  })");
}

std::string error_of(const json& spec) {
  auto result = parse_campaign_spec(spec);
  if (result.ok()) return "<accepted>";
  return result.error().message;
}

json benchmark(const std::string& name, json examples, json shard_size) {
  return {{"name", name}, {"examples", std::move(examples)}, {"shard_size", std::move(shard_size)}};
}

// "/benchmarks/1/shard_size" -> "benchmarks[1].shard_size", the form error messages use.
std::string field_path(const json::json_pointer& pointer) {
  std::string out;
  std::string rest = pointer.to_string();
  size_t pos = 0;
  while (pos < rest.size()) {
    const size_t next = rest.find('/', pos + 1);
    const std::string token =
        rest.substr(pos + 1, next == std::string::npos ? next : next - pos - 1);
    const bool index = !token.empty() && token.find_first_not_of("0123456789") == std::string::npos;
    if (index) {
      out += "[" + token + "]";
    } else {
      out += (out.empty() ? "" : ".") + token;
    }
    pos = next == std::string::npos ? rest.size() : next;
  }
  return out;
}

}  // namespace

TEST_CASE("a valid spec parses with every default filled in", "[unit][spec]") {
  auto result = parse_campaign_spec(valid_spec());
  REQUIRE(result.ok());
  const CampaignSpec& spec = result.value();
  CHECK(spec.name == "k-ai-round1");
  CHECK(spec.description.empty());
  REQUIRE(spec.models.size() == 2);
  CHECK(spec.models[0].params == json{{"path", "/models/a"}});
  CHECK(spec.models[1].name == "model-b");
  CHECK(spec.models[1].params == json::object());
  REQUIRE(spec.benchmarks.size() == 2);
  CHECK(spec.benchmarks[0].examples == 35030);
  CHECK(spec.benchmarks[0].shard_size == 500);
  CHECK(spec.benchmarks[1].metric == "accuracy");
  CHECK(spec.benchmarks[1].higher_is_better);
  CHECK(spec.benchmarks[1].params == json::object());
  CHECK(spec.runner.type == evald::RunnerType::kExec);
  CHECK(spec.runner.command ==
        std::vector<std::string>{"python3", "/opt/eval/run_shard.py", "{model}", "{benchmark}"});
  CHECK(spec.runner.timeout_s == 3600);
  CHECK(spec.runner.env == json::object());
  CHECK(spec.max_attempts == 3);
  CHECK(spec.priority == 0);
  // 2 models x (71 + 3) shards.
  CHECK(spec.benchmarks[0].shard_count() == 71);
  CHECK(spec.benchmarks[1].shard_count() == 3);
  CHECK(spec.total_shards() == 148);
}

TEST_CASE("every broken field is refused with a message that names it", "[unit][spec]") {
  struct Case {
    std::function<void(json&)> mutate;
    std::string expected;
  };
  const std::string long_name(129, 'a');
  const std::vector<Case> cases = {
      {[](json& s) { s = json::array(); }, "spec: must be a JSON object"},
      {[](json& s) { s.erase("name"); }, "name: is required"},
      {[](json& s) { s["name"] = 5; }, "name: must be a string"},
      {[](json& s) { s["name"] = ""; }, "name: must not be empty"},
      {[&](json& s) { s["name"] = long_name; }, "name: must be at most 128 characters"},
      {[](json& s) { s["name"] = "round 1"; },
       "name: may contain only letters, digits, '.', '_' and '-'"},
      {[](json& s) { s["name"] = "../etc"; },
       "name: may contain only letters, digits, '.', '_' and '-'"},
      {[](json& s) { s["name"] = ".."; }, "name: must not be '.' or '..'"},
      {[](json& s) { s["description"] = 5; }, "description: must be a string"},
      {[](json& s) { s["priorty"] = 1; }, "priorty: unknown field"},

      {[](json& s) { s.erase("models"); }, "models: is required"},
      {[](json& s) { s["models"] = json::array(); }, "models: must be a non-empty array"},
      {[](json& s) { s["models"] = json::object(); }, "models: must be a non-empty array"},
      {[](json& s) { s["models"][1] = "model-b"; }, "models[1]: must be an object"},
      {[](json& s) { s["models"][1].erase("name"); }, "models[1].name: is required"},
      {[](json& s) { s["models"][1]["name"] = "org/model"; },
       "models[1].name: may contain only letters, digits, '.', '_' and '-'"},
      {[](json& s) { s["models"][1]["name"] = "model-a"; },
       "models[1].name: duplicate model name 'model-a'"},
      {[](json& s) { s["models"][1]["params"] = json::array(); },
       "models[1].params: must be an object"},
      {[](json& s) { s["models"][1]["resources"] = 2; }, "models[1].resources: must be an object"},
      {[](json& s) { s["models"][1]["weights"] = "/w"; }, "models[1].weights: unknown field"},

      {[](json& s) { s.erase("benchmarks"); }, "benchmarks: is required"},
      {[](json& s) { s["benchmarks"] = json::array(); }, "benchmarks: must be a non-empty array"},
      {[](json& s) { s["benchmarks"][1] = 7; }, "benchmarks[1]: must be an object"},
      {[](json& s) { s["benchmarks"][1]["name"] = "kmmlu"; },
       "benchmarks[1].name: duplicate benchmark name 'kmmlu'"},
      {[](json& s) { s["benchmarks"][1].erase("examples"); },
       "benchmarks[1].examples: is required"},
      {[](json& s) { s["benchmarks"][1]["examples"] = 3.5; },
       "benchmarks[1].examples: must be a positive integer"},
      {[](json& s) { s["benchmarks"][1]["examples"] = true; },
       "benchmarks[1].examples: must be a positive integer"},
      {[](json& s) { s["benchmarks"][1]["examples"] = "1001"; },
       "benchmarks[1].examples: must be a positive integer"},
      {[](json& s) { s["benchmarks"][1]["examples"] = 1'000'000'000'000'000'001LL; },
       "benchmarks[1].examples: must be at most 1000000000000000000"},
      {[](json& s) { s["benchmarks"][1]["examples"] = 18446744073709551615ULL; },
       "benchmarks[1].examples: must be at most 1000000000000000000"},
      {[](json& s) { s["benchmarks"][1]["shard_size"] = 0; },
       "benchmarks[1].shard_size: must be a positive integer"},
      {[](json& s) { s["benchmarks"][1]["shard_size"] = -500; },
       "benchmarks[1].shard_size: must be a positive integer"},
      {[](json& s) { s["benchmarks"][1]["shard_size"] = nullptr; },
       "benchmarks[1].shard_size: must be a positive integer"},
      // A typo: the unknown key is reported, not the missing "shard_size" it leaves behind.
      {[](json& s) {
         s["benchmarks"][0].erase("shard_size");
         s["benchmarks"][0]["shardsize"] = 500;
       },
       "benchmarks[0].shardsize: unknown field"},
      {[](json& s) { s["benchmarks"][1]["metric"] = ""; },
       "benchmarks[1].metric: must be a non-empty string"},
      {[](json& s) { s["benchmarks"][1]["metric"] = 1; },
       "benchmarks[1].metric: must be a non-empty string"},
      {[](json& s) { s["benchmarks"][1]["higher_is_better"] = "no"; },
       "benchmarks[1].higher_is_better: must be true or false"},
      {[](json& s) { s["benchmarks"][1]["higher_is_better"] = 0; },
       "benchmarks[1].higher_is_better: must be true or false"},
      {[](json& s) { s["benchmarks"][1]["params"] = "data.jsonl"; },
       "benchmarks[1].params: must be an object"},

      {[](json& s) { s.erase("runner"); }, "runner: is required"},
      {[](json& s) { s["runner"] = json::array(); }, "runner: must be an object"},
      {[](json& s) { s["runner"]["type"] = "docker"; },
       R"(runner.type: must be "exec", "noop" or "openai")"},
      {[](json& s) { s["runner"]["type"] = 1; },
       R"(runner.type: must be "exec", "noop" or "openai")"},
      {[](json& s) { s["runner"].erase("command"); },
       "runner.command: is required for the exec runner"},
      {[](json& s) { s["runner"]["command"] = json::array(); },
       "runner.command: must be a non-empty array of strings"},
      {[](json& s) { s["runner"]["command"] = "python3 run.py"; },
       "runner.command: must be a non-empty array of strings"},
      {[](json& s) { s["runner"]["command"][0] = 1; }, "runner.command[0]: must be a string"},
      {[](json& s) { s["runner"]["command"][2] = ""; }, "runner.command[2]: must not be empty"},
      {[](json& s) { s["runner"]["timeout_s"] = 0; },
       "runner.timeout_s: must be a positive number of seconds"},
      {[](json& s) { s["runner"]["timeout_s"] = -1.5; },
       "runner.timeout_s: must be a positive number of seconds"},
      {[](json& s) { s["runner"]["timeout_s"] = "60"; },
       "runner.timeout_s: must be a positive number of seconds"},
      {[](json& s) { s["runner"]["timeout_s"] = true; },
       "runner.timeout_s: must be a positive number of seconds"},
      {[](json& s) { s["runner"]["timeout_s"] = 604801; },
       "runner.timeout_s: must be at most 604800 (7 days)"},
      {[](json& s) { s["runner"]["env"] = json::array(); }, "runner.env: must be an object"},
      {[](json& s) {
         s["runner"]["env"] = {{"HF_HOME", 1}};
       },
       "runner.env.HF_HOME: must be a string"},
      {[](json& s) {
         s["runner"]["env"] = {{"A=B", "x"}};
       },
       "runner.env: 'A=B' is not a valid variable name (letters, digits and '_', not starting with "
       "a digit, at most 128 bytes)"},
      {[](json& s) {
         s["runner"]["env"] = {{"", "x"}};
       },
       "runner.env: '' is not a valid variable name (letters, digits and '_', not starting with a "
       "digit, at most 128 bytes)"},
      {[](json& s) { s["runner"]["retries"] = 2; }, "runner.retries: unknown field"},

      {[](json& s) { s["max_attempts"] = 0; }, "max_attempts: must be an integer from 1 to 100"},
      {[](json& s) { s["max_attempts"] = 101; }, "max_attempts: must be an integer from 1 to 100"},
      {[](json& s) { s["max_attempts"] = 2.5; }, "max_attempts: must be an integer from 1 to 100"},
      {[](json& s) { s["max_attempts"] = "3"; }, "max_attempts: must be an integer from 1 to 100"},
      {[](json& s) { s["priority"] = 1'000'001; },
       "priority: must be an integer from -1000000 to 1000000"},
      {[](json& s) { s["priority"] = -1'000'001; },
       "priority: must be an integer from -1000000 to 1000000"},
      {[](json& s) { s["priority"] = false; },
       "priority: must be an integer from -1000000 to 1000000"},

      // Only the first problem is reported: name comes before benchmarks.
      {[](json& s) {
         s["name"] = "";
         s["benchmarks"][1]["shard_size"] = 0;
       },
       "name: must not be empty"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    json spec = valid_spec();
    cases[i].mutate(spec);
    INFO("case " << i << ": " << spec.dump());
    CHECK(error_of(spec) == cases[i].expected);
  }
}

TEST_CASE("values at the edge of every range are accepted", "[unit][spec]") {
  json spec = valid_spec();
  spec["name"] = std::string(128, 'n');
  spec["description"] = "first round";
  spec["max_attempts"] = 100;
  spec["priority"] = -1'000'000;
  spec["runner"]["timeout_s"] = 604800;
  spec["runner"]["env"] = {{"HF_HOME", "/cache"}};
  spec["models"][1]["resources"] = {{"gpus", 2}};
  // JSON does not tell 35030 from 35030.0 or 3.5e4; integral numbers count as integers.
  spec["benchmarks"][0]["examples"] = 35030.0;
  spec["benchmarks"][1]["examples"] = 1e3;
  spec["benchmarks"][1]["metric"] = "perplexity";
  spec["benchmarks"][1]["higher_is_better"] = false;
  auto result = parse_campaign_spec(spec);
  REQUIRE(result.ok());
  CHECK(result->name.size() == 128);
  CHECK(result->description == "first round");
  CHECK(result->max_attempts == 100);
  CHECK(result->priority == -1'000'000);
  CHECK(result->runner.timeout_s == 604800);
  CHECK(result->runner.env == json{{"HF_HOME", "/cache"}});
  CHECK(result->benchmarks[0].examples == 35030);
  CHECK(result->benchmarks[1].examples == 1000);
  CHECK(result->benchmarks[1].metric == "perplexity");
  CHECK_FALSE(result->benchmarks[1].higher_is_better);

  spec["max_attempts"] = 1;
  spec["priority"] = 1'000'000;
  result = parse_campaign_spec(spec);
  REQUIRE(result.ok());
  CHECK(result->max_attempts == 1);
  CHECK(result->priority == 1'000'000);
}

TEST_CASE("the noop runner needs no command", "[unit][spec]") {
  json spec = valid_spec();
  spec["runner"] = {{"type", "noop"}};
  auto result = parse_campaign_spec(spec);
  REQUIRE(result.ok());
  CHECK(result->runner.type == evald::RunnerType::kNoop);
  CHECK(result->runner.command.empty());
  CHECK(result->runner.timeout_s == 3600);
  CHECK_FALSE(evald::to_json(result.value())["runner"].contains("command"));

  // A command left over from an exec spec is ignored, not refused.
  spec["runner"]["command"] = {"python3", "run.py"};
  result = parse_campaign_spec(spec);
  REQUIRE(result.ok());
  CHECK(result->runner.command.empty());
}

TEST_CASE("the shard limit counts models x benchmarks x shards without overflow", "[unit][spec]") {
  json spec = valid_spec();
  spec["models"] = json::array({{{"name", "m"}}});
  spec["benchmarks"] = json::array({benchmark("b", 50'000'000, 1)});
  // 1 model x 50,000,000 shards: exactly the limit.
  auto at_limit = parse_campaign_spec(spec);
  REQUIRE(at_limit.ok());
  CHECK(at_limit->total_shards() == 50'000'000);

  spec["benchmarks"][0]["examples"] = 50'000'001;
  CHECK(error_of(spec) == "campaign has 50000001 shards; the limit is 50000000");

  // 2 models x (71 + 1e15) shards = 2,000,000,000,000,142.
  spec = valid_spec();
  spec["benchmarks"][1] = benchmark("huge", 1e15, 1);
  CHECK(error_of(spec) == "campaign has 2000000000000142 shards; the limit is 50000000");

  // 1000 models x 1000 benchmarks x 1e18 shards = 1e24, far beyond int64: still exact.
  spec = valid_spec();
  spec["models"] = json::array();
  spec["benchmarks"] = json::array();
  for (int i = 0; i < 1000; ++i) {
    spec["models"].push_back({{"name", "m" + std::to_string(i)}});
    spec["benchmarks"].push_back(benchmark("b" + std::to_string(i), evald::kMaxExamples, 1));
  }
  CHECK(error_of(spec) == "campaign has 1000000000000000000000000 shards; the limit is 50000000");

  spec["models"].push_back({{"name", "one-too-many"}});
  CHECK(error_of(spec) == "models: has 1001 entries; the limit is 1000");
}

TEST_CASE("shards cover the examples with an uneven last shard", "[unit][spec]") {
  evald::BenchmarkSpec b;
  b.name = "gsm8k";
  b.examples = 1001;
  b.shard_size = 500;
  // ceil(1001 / 500) = 3: [0,500) [500,1000) [1000,1001).
  REQUIRE(b.shard_count() == 3);
  CHECK(evald::shard_range(b, 0).start == 0);
  CHECK(evald::shard_range(b, 0).end == 500);
  CHECK(evald::shard_range(b, 1).start == 500);
  CHECK(evald::shard_range(b, 1).end == 1000);
  CHECK(evald::shard_range(b, 2).start == 1000);
  CHECK(evald::shard_range(b, 2).end == 1001);

  // An exact multiple has no short shard: 1000 / 500 = 2, the last is [500,1000).
  b.examples = 1000;
  CHECK(b.shard_count() == 2);
  CHECK(evald::shard_range(b, 1).end == 1000);

  // Fewer examples than one shard: one shard [0,7).
  b.examples = 7;
  CHECK(b.shard_count() == 1);
  CHECK(evald::shard_range(b, 0).end == 7);

  // At the size cap: shard_size 1e18 - 1 gives 2 shards, the last holding one example.
  b.examples = evald::kMaxExamples;
  b.shard_size = evald::kMaxExamples - 1;
  CHECK(b.shard_count() == 2);
  CHECK(evald::shard_range(b, 1).start == evald::kMaxExamples - 1);
  CHECK(evald::shard_range(b, 1).end == evald::kMaxExamples);
  b.shard_size = evald::kMaxExamples;
  CHECK(b.shard_count() == 1);
  CHECK(evald::shard_range(b, 0).end == evald::kMaxExamples);
}

TEST_CASE("the canonical form round-trips", "[unit][spec]") {
  json full = valid_spec();
  full["description"] = "round 1";
  full["max_attempts"] = 5;
  full["priority"] = -7;
  full["runner"]["env"] = {{"HF_HOME", "/cache"}};
  full["runner"]["timeout_s"] = 90.5;
  full["benchmarks"][1]["higher_is_better"] = false;
  full["benchmarks"][1]["metric"] = "error_rate";
  json noop = valid_spec();
  noop["runner"] = {{"type", "noop"}};

  for (const json& input : {valid_spec(), full, noop}) {
    auto first = parse_campaign_spec(input);
    REQUIRE(first.ok());
    const json canonical = evald::to_json(first.value());
    auto second = parse_campaign_spec(canonical);
    REQUIRE(second.ok());
    CHECK(second.value() == first.value());
    CHECK(evald::to_json(second.value()) == canonical);
    // Through text too, as evalctl and the HTTP API see it.
    auto third = parse_campaign_spec_text(canonical.dump());
    REQUIRE(third.ok());
    CHECK(third.value() == first.value());
  }

  // Defaults are written out.
  const json canonical = evald::to_json(parse_campaign_spec(valid_spec()).value());
  CHECK(canonical["description"] == "");
  CHECK(canonical["max_attempts"] == 3);
  CHECK(canonical["priority"] == 0);
  CHECK(canonical["models"][1]["params"] == json::object());
  CHECK(canonical["benchmarks"][1]["metric"] == "accuracy");
  CHECK(canonical["benchmarks"][1]["higher_is_better"] == true);
  CHECK(canonical["runner"]["type"] == "exec");
  CHECK(canonical["runner"]["timeout_s"] == 3600);
  CHECK(canonical["runner"]["env"] == json::object());
}

TEST_CASE("spec text with a syntax error is refused with its position", "[unit][spec]") {
  auto broken = parse_campaign_spec_text(R"({"name": "x", "models": [})");
  REQUIRE_FALSE(broken.ok());
  const std::string& message = broken.error().message;
  CHECK(message.rfind("spec is not valid JSON: ", 0) == 0);
  CHECK_THAT(message, Catch::Contains("line 1, column 26"));
  CHECK_THAT(message, Catch::Contains("byte offset 26"));

  auto empty = parse_campaign_spec_text("");
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().message.rfind("spec is not valid JSON: ", 0) == 0);

  auto overflow = parse_campaign_spec_text(R"({"name": 1e400})");
  REQUIRE_FALSE(overflow.ok());
  CHECK(overflow.error().message.rfind("spec is not valid JSON: ", 0) == 0);

  auto valid = parse_campaign_spec_text(valid_spec().dump(2));
  REQUIRE(valid.ok());
  CHECK(valid->total_shards() == 148);

  auto not_an_object = parse_campaign_spec_text("[1, 2]");
  REQUIRE_FALSE(not_an_object.ok());
  CHECK(not_an_object.error().message == "spec: must be a JSON object");
}

TEST_CASE("wrong types at every field are errors, never exceptions", "[unit][spec]") {
  const json base = valid_spec();
  const json wrong = json::parse(R"([null, true, false, 0, -1, 3.5, 1e300, -1e300,
      18446744073709551615, -9223372036854775808, "", "x", [], [1, "a"], {}, {"a": 1}])");
  // Every location in the spec, containers included: "/", "/models", "/models/0", ...
  std::vector<json::json_pointer> locations = {json::json_pointer("")};
  const json flat = base.flatten();
  for (const auto& item : flat.items()) {
    json::json_pointer pointer(item.key());
    while (!pointer.empty()) {
      if (std::find(locations.begin(), locations.end(), pointer) == locations.end()) {
        locations.push_back(pointer);
      }
      pointer = pointer.parent_pointer();
    }
  }
  size_t refused = 0;
  for (const auto& location : locations) {
    const std::string path = field_path(location);
    for (const json& value : wrong) {
      json spec = base;
      spec[location] = value;
      INFO("at " << location.to_string() << " value " << value.dump());
      CHECK_NOTHROW(parse_campaign_spec(spec));
      auto result = parse_campaign_spec(spec);
      if (result.ok()) continue;
      ++refused;
      // Params are free-form, so a refusal always names the replaced field or one above it.
      CHECK_FALSE(result.error().message.empty());
      CHECK(result.error().message.rfind(path, 0) == 0);
    }
    if (!location.empty()) {
      json spec = base;
      json& parent = spec[location.parent_pointer()];
      if (parent.is_array()) {
        parent.erase(static_cast<size_t>(std::stoul(location.back())));
      } else {
        parent.erase(location.back());
      }
      CHECK_NOTHROW(parse_campaign_spec(spec));
    }
  }
  // Most replacements are refused; those that get through land in free-form params or happen to
  // be valid there (a name or metric "x", a shard_size of 1).
  CHECK(refused > locations.size() * wrong.size() / 2);
}
