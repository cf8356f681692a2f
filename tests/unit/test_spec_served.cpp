// Served models in campaign specs: serve, endpoint, the openai runner and its benchmark params
// (accepted forms, defaults, the exact messages for broken fields, the canonical round-trip), and
// YAML specs, which must be read as the JSON value they denote, with the same messages.
#include <catch2/catch.hpp>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/spec.hpp"
#include "common/spec_limits.hpp"
#include "common/yaml.hpp"

using evald::parse_campaign_spec;
using evald::parse_campaign_spec_text;
using evald::parse_campaign_spec_yaml;
using evald::yaml_to_json;
using nlohmann::json;

namespace {

json served_spec() {
  return json::parse(R"({
    "name": "served",
    "models": [
      {"name": "nuri-70b", "resources": {"gpus": 2},
       "serve": {"command": ["vllm", "serve", "/models/nuri-70b", "--port", "{port}",
                             "--tensor-parallel-size", "{gpu_count}",
                             "--served-model-name", "{model}"],
                 "health": "/health", "ready_timeout_s": 1800, "keep_warm_s": 600, "env": {}}},
      {"name": "remote", "endpoint": {"url": "http://host:8000/v1/", "model": "id-on-server",
                                      "api_key_env": "REMOTE_KEY"}}
    ],
    "benchmarks": [
      {"name": "gsm8k", "examples": 100, "shard_size": 10,
       "params": {"data": "/data/gsm8k.jsonl", "format": "generate", "match": "number",
                  "max_tokens": 64, "stop": ["\n\n"]}},
      {"name": "mmlu", "examples": 100, "shard_size": 10,
       "params": {"data": "/data/mmlu.jsonl", "format": "multiple_choice",
                  "template": "Q: {question}\nA:"}}
    ],
    "runner": {"type": "openai", "max_concurrency": 32, "request_timeout_s": 120,
               "max_retries": 3}
  })");
}

std::string error_of(const json& spec) {
  auto result = parse_campaign_spec(spec);
  if (result.ok()) return "<accepted>";
  return result.error().message;
}

}  // namespace

TEST_CASE("serve, endpoint and the openai runner are read with their defaults") {
  auto parsed = parse_campaign_spec(served_spec());
  REQUIRE(parsed.ok());
  const auto& spec = parsed.value();
  REQUIRE(spec.models[0].serve.has_value());
  CHECK(spec.models[0].serve->command.size() == 9);
  CHECK(spec.models[0].serve->health == "/health");
  CHECK(spec.models[0].serve->keep_warm_s == 600);
  CHECK(spec.models[0].served_name() == "nuri-70b");
  REQUIRE(spec.models[1].endpoint.has_value());
  CHECK(spec.models[1].endpoint->url == "http://host:8000/v1");  // trailing '/' dropped
  CHECK(spec.models[1].endpoint->api_key_env == "REMOTE_KEY");
  CHECK(spec.models[1].served_name() == "id-on-server");
  CHECK(spec.runner.type == evald::RunnerType::kOpenAi);
  CHECK(spec.runner.max_concurrency == 32);
  CHECK(spec.runner.request_timeout_s == 120);
  CHECK(spec.runner.max_retries == 3);

  json minimal = served_spec();
  minimal["models"][0]["serve"] = {{"command", {"server", "{port}"}}, {"model_id", "alias"}};
  minimal["runner"] = {{"type", "openai"}};
  auto defaults = parse_campaign_spec(minimal);
  REQUIRE(defaults.ok());
  CHECK(defaults->models[0].serve->health == "/health");
  CHECK(defaults->models[0].serve->ready_timeout_s == 1800);
  CHECK(defaults->models[0].serve->keep_warm_s == 600);
  CHECK(defaults->models[0].served_name() == "alias");
  CHECK(defaults->runner.max_concurrency == 16);
  CHECK(defaults->runner.request_timeout_s == 600);
  CHECK(defaults->runner.max_retries == 5);
}

TEST_CASE("a served spec survives the canonical round-trip") {
  auto parsed = parse_campaign_spec(served_spec());
  REQUIRE(parsed.ok());
  auto again = parse_campaign_spec(evald::to_json(parsed.value()));
  REQUIRE(again.ok());
  CHECK(again.value() == parsed.value());
  // An exec runner may use served models too.
  json exec = served_spec();
  exec["runner"] = {{"type", "exec"}, {"command", {"lm_eval", "--model_args", "{endpoint}"}}};
  auto exec_parsed = parse_campaign_spec(exec);
  REQUIRE(exec_parsed.ok());
  CHECK(parse_campaign_spec(evald::to_json(exec_parsed.value())).value() == exec_parsed.value());
}

TEST_CASE("broken serve, endpoint and runner fields are named") {
  using Edit = std::function<void(json&)>;
  const std::vector<std::pair<Edit, std::string>> cases = {
      {[](json& s) { s["models"][0]["serve"].erase("command"); },
       "models[0].serve.command: is required"},
      {[](json& s) { s["models"][0]["serve"]["command"] = json::array(); },
       "models[0].serve.command: must be a non-empty array of strings"},
      {[](json& s) { s["models"][0]["serve"]["command"][1] = 7; },
       "models[0].serve.command[1]: must be a string"},
      {[](json& s) { s["models"][0]["serve"]["health"] = "health"; },
       "models[0].serve.health: must be a URL path starting with '/' (no spaces, query or "
       "fragment)"},
      {[](json& s) { s["models"][0]["serve"]["ready_timeout_s"] = 0; },
       "models[0].serve.ready_timeout_s: must be a positive number of seconds"},
      {[](json& s) { s["models"][0]["serve"]["keep_warm_s"] = -1; },
       "models[0].serve.keep_warm_s: must be a number of seconds, 0 or more"},
      {[](json& s) {
         s["models"][0]["serve"]["env"] = {{"LD_PRELOAD", "x"}};
       },
       "models[0].serve.env.LD_PRELOAD: may not be set by a spec: LD_* variables choose the code "
       "a process loads"},
      {[](json& s) { s["models"][0]["serve"]["port"] = 1; }, "models[0].serve.port: unknown field"},
      {[](json& s) { s["models"][0]["endpoint"] = s["models"][1]["endpoint"]; },
       "models[0]: has both serve and endpoint; give one of them"},
      {[](json& s) { s["models"][1]["endpoint"]["url"] = "ftp://host/v1"; },
       "models[1].endpoint.url: must be an http:// or https:// base URL such as "
       "http://host:8000/v1 (no user info, query or fragment)"},
      {[](json& s) { s["models"][1]["endpoint"].erase("model"); },
       "models[1].endpoint.model: is required"},
      {[](json& s) { s["models"][1]["endpoint"]["api_key_env"] = "1KEY"; },
       "models[1].endpoint.api_key_env: must be an environment variable name (letters, digits "
       "and '_', not starting with a digit)"},
      {[](json& s) { s["models"][1].erase("endpoint"); },
       "models[1]: needs serve or endpoint: the openai runner talks to a model server"},
      {[](json& s) { s["runner"]["type"] = "vllm"; },
       R"(runner.type: must be "exec", "noop" or "openai")"},
      {[](json& s) { s["runner"]["max_concurrency"] = 0; },
       "runner.max_concurrency: must be an integer from 1 to 1024"},
      {[](json& s) { s["runner"]["max_retries"] = 101; },
       "runner.max_retries: must be an integer from 0 to 100"},
      {[](json& s) { s["runner"]["request_timeout_s"] = "1m"; },
       "runner.request_timeout_s: must be a positive number of seconds"},
      {[](json& s) {
         s["runner"] = {{"type", "noop"}, {"max_retries", 1}};
       },
       "runner.max_retries: applies only to the openai runner"},
      {[](json& s) { s["benchmarks"][0]["params"].erase("data"); },
       "benchmarks[0].params.data: is required for the openai runner"},
      {[](json& s) { s["benchmarks"][0]["params"]["format"] = "chat"; },
       R"(benchmarks[0].params.format: must be "generate" or "multiple_choice")"},
      {[](json& s) { s["benchmarks"][0]["params"]["max_tokens"] = 0; },
       "benchmarks[0].params.max_tokens: must be an integer from 1 to 1000000"},
      {[](json& s) { s["benchmarks"][0]["params"]["stop"] = json::array({""}); },
       "benchmarks[0].params.stop: must be a non-empty string or an array of 1 to 16 non-empty "
       "strings"},
      {[](json& s) { s["benchmarks"][0]["params"]["match"] = "fuzzy"; },
       R"(benchmarks[0].params.match: must be "exact", "number" or "regex")"},
      {[](json& s) { s["benchmarks"][0]["params"]["match"] = "regex"; },
       R"(benchmarks[0].params.extract: is required with match "regex")"},
      {[](json& s) {
         s["benchmarks"][0]["params"]["match"] = "regex";
         s["benchmarks"][0]["params"]["extract"] = "answer: \\d+";
       },
       "benchmarks[0].params.extract: must have a capture group: its first group is what is "
       "compared"},
      {[](json& s) { s["benchmarks"][0]["params"]["extract"] = "(\\d+)"; },
       R"(benchmarks[0].params.extract: applies only with match "regex")"},
      {[](json& s) { s["benchmarks"][1]["params"]["template"] = "no placeholder"; },
       "benchmarks[1].params.template: must contain {question}"},
  };
  for (const auto& [edit, expected] : cases) {
    json spec = served_spec();
    edit(spec);
    CHECK(error_of(spec) == expected);
  }
  // A broken regex is named too (the library's words follow).
  json spec = served_spec();
  spec["benchmarks"][0]["params"]["match"] = "regex";
  spec["benchmarks"][0]["params"]["extract"] = "(unclosed";
  CHECK(error_of(spec).rfind("benchmarks[0].params.extract: is not a valid regular expression: ",
                             0) == 0);
  // The exec runner leaves params alone: they are its runner's business.
  spec = served_spec();
  spec["runner"] = {{"type", "exec"}, {"command", {"run"}}};
  spec["benchmarks"][0]["params"] = {{"anything", 1}};
  CHECK(error_of(spec) == "<accepted>");
}

TEST_CASE("YAML specs denote the same JSON value and get the same messages") {
  const std::string yaml = R"(
name: served
models:
  - name: nuri-70b
    resources: {gpus: 2}
    serve:
      command: [vllm, serve, /models/nuri-70b, --port, "{port}", --tensor-parallel-size,
                "{gpu_count}", --served-model-name, "{model}"]
      health: /health
      ready_timeout_s: 1800
      keep_warm_s: 600
      env: {}
  - name: remote
    endpoint:
      url: http://host:8000/v1/
      model: id-on-server
      api_key_env: REMOTE_KEY
benchmarks:
  - name: gsm8k
    examples: 100
    shard_size: 10
    params:
      data: /data/gsm8k.jsonl
      format: generate
      match: number
      max_tokens: 64
      stop: ["\n\n"]
  - name: mmlu
    examples: 100
    shard_size: 10
    params:
      data: /data/mmlu.jsonl
      format: multiple_choice
      template: "Q: {question}\nA:"
runner:
  type: openai
  max_concurrency: 32
  request_timeout_s: 120
  max_retries: 3
)";
  auto converted = yaml_to_json(yaml);
  REQUIRE(converted.ok());
  CHECK(converted.value() == served_spec());
  auto from_yaml = parse_campaign_spec_yaml(yaml);
  REQUIRE(from_yaml.ok());
  CHECK(from_yaml.value() == parse_campaign_spec(served_spec()).value());

  // Same message as the JSON spelling: a quoted "10" is a string in both.
  const std::string broken =
      "name: x\nmodels: [{name: m}]\nbenchmarks: [{name: b, examples: 10, shard_size: '10'}]\n"
      "runner: {type: noop}\n";
  const std::string broken_json =
      R"({"name": "x", "models": [{"name": "m"}], "benchmarks": [{"name": "b", "examples": 10,)"
      R"( "shard_size": "10"}], "runner": {"type": "noop"}})";
  REQUIRE_FALSE(parse_campaign_spec_yaml(broken).ok());
  CHECK(parse_campaign_spec_yaml(broken).error().message ==
        parse_campaign_spec_text(broken_json).error().message);
  CHECK(parse_campaign_spec_yaml(broken).error().message ==
        "benchmarks[0].shard_size: must be a positive integer");

  // Scalars: the core schema.
  auto scalars = yaml_to_json("a: 1\nb: 1.5\nc: true\nd: ~\ne: 'true'\nf: 1e3\ng: x1\nh: -2\n");
  REQUIRE(scalars.ok());
  CHECK(scalars.value() == json::parse(R"({"a": 1, "b": 1.5, "c": true, "d": null, "e": "true",)"
                                       R"( "f": 1000.0, "g": "x1", "h": -2})"));
}

TEST_CASE("bad YAML is refused with a position, and aliases cannot blow up") {
  auto bad = parse_campaign_spec_yaml("name: [unclosed\n");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.rfind("spec is not valid YAML: line ", 0) == 0);

  auto duplicate = yaml_to_json("a: 1\na: 2\n");
  REQUIRE_FALSE(duplicate.ok());
  CHECK(duplicate.error().message == "has the key 'a' twice in one mapping");

  // Nine levels of ten aliases each: 10^9 values once expanded.
  std::string laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i <= 9; ++i) {
    const std::string prev = "*a" + std::to_string(i - 1);
    laughs += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [" + prev;
    for (int k = 1; k < 10; ++k) laughs += ", " + prev;
    laughs += "]\n";
  }
  auto bomb = yaml_to_json(laughs);
  REQUIRE_FALSE(bomb.ok());
  CHECK(bomb.error().message == "expands to more than 200000 values (aliases included)");

  // yaml-cpp writes "\N" and "\_" as the bytes 0x85 and 0xA0: not UTF-8 (found by fuzz_spec_yaml;
  // the spec's params then made dump() throw and the process abort).
  for (const std::string escape : {"\\N", "\\_"}) {
    INFO(escape);
    auto value = yaml_to_json("params: {stop: \"a" + escape + "b\"}\n");
    REQUIRE_FALSE(value.ok());
    CHECK(value.error().message ==
          "has a string that is not valid UTF-8 at line 1, column 16 (the escapes \\N and \\_ "
          "make one; write the character itself, or \\u0085 / \\u00a0)");
    auto key = yaml_to_json("? \"k" + escape + "\"\n: 1\n");
    REQUIRE_FALSE(key.ok());
    CHECK(key.error().message.rfind("has a string that is not valid UTF-8 at line 1", 0) == 0);
  }
  auto spec = parse_campaign_spec_yaml(
      "name: n\nmodels: [{name: m}]\nrunner: {type: exec, command: [x]}\n"
      "benchmarks: [{name: b, examples: 1, params: {stop: \"\\N\"}}]\n");
  REQUIRE_FALSE(spec.ok());
  CHECK(spec.error().message.rfind("spec has a string that is not valid UTF-8", 0) == 0);
  // The escapes of the same characters by code point are UTF-8 and pass.
  auto escaped = yaml_to_json("stop: \"\\u0085\\u00a0\"\n");
  REQUIRE(escaped.ok());
  CHECK(escaped.value().at("stop") == "\xc2\x85\xc2\xa0");

  auto nested = yaml_to_json(std::string(70, '[') + std::string(70, ']'));
  REQUIRE_FALSE(nested.ok());
  CHECK(nested.error().message == "nests deeper than 64 levels (the limit)");
}
