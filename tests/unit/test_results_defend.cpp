// The pure parts of provenance, reuse and the composite score: spec validation of "reuse",
// "scoring" and params.data_sha256; composite scores and ranks worked out by hand; the provenance
// record; shard identities; the store's new key families and the reused shard record format.
#include <catch2/catch.hpp>

#include "common/composite.hpp"
#include "common/sha256.hpp"
#include "common/spec.hpp"
#include "common/version.hpp"
#include "coordinator/provenance.hpp"
#include "coordinator/records.hpp"
#include "coordinator/store.hpp"
#include "tests/support/test_support.hpp"

using nlohmann::json;

namespace {

json base_spec() {
  return json::parse(R"({
    "name": "defend", "models": [{"name": "m1"}, {"name": "m2"}, {"name": "m3"}],
    "benchmarks": [{"name": "b1", "examples": 10, "shard_size": 5,
                    "params": {"data": "/data/b1.jsonl"}}],
    "runner": {"type": "exec", "command": ["run-eval", "{model}"]}})");
}

std::string spec_error(const json& spec) {
  auto parsed = evald::parse_campaign_spec(spec);
  return parsed.ok() ? "" : parsed.error().message;
}

}  // namespace

TEST_CASE("spec: reuse, scoring and data pins are validated", "[unit][spec]") {
  auto spec = base_spec();
  spec["reuse"] = true;
  spec["scoring"] = {{"weights", {{"benchmarks", 40}, {"experts", 35}, {"users", 25}}}};
  spec["benchmarks"][0]["params"]["data_sha256"] = std::string(64, 'e');
  auto parsed = evald::parse_campaign_spec(spec);
  REQUIRE(parsed.ok());
  CHECK(parsed->reuse);
  REQUIRE(parsed->scoring);
  CHECK(parsed->scoring->weights.at("experts") == 35);
  // The canonical form round-trips, and leaves both out when they are not set.
  CHECK(evald::parse_campaign_spec(evald::to_json(parsed.value())).value() == parsed.value());
  const auto plain = evald::to_json(evald::parse_campaign_spec(base_spec()).value());
  CHECK_FALSE(plain.contains("reuse"));
  CHECK_FALSE(plain.contains("scoring"));

  auto bad = base_spec();
  bad["reuse"] = "yes";
  CHECK(spec_error(bad) == "reuse: must be true or false");
  bad = base_spec();
  bad["scoring"] = {{"weights", {{"experts", -1}}}};
  CHECK_THAT(spec_error(bad), Catch::Contains("scoring.weights.experts: must be a non-negative"));
  bad["scoring"] = {{"weights", json::object()}};
  CHECK_THAT(spec_error(bad), Catch::Contains("scoring.weights"));
  bad["scoring"] = {{"weights", {{"experts", 0}}}};
  CHECK_THAT(spec_error(bad), Catch::Contains("positive weight"));
  bad["scoring"] = {{"weights", {{"experts", 1}}}, {"extra", 1}};
  CHECK_THAT(spec_error(bad), Catch::Contains("scoring"));
  bad = base_spec();
  bad["benchmarks"][0]["params"]["data_sha256"] = std::string(64, 'E');
  CHECK_THAT(spec_error(bad), Catch::Contains("benchmarks[0].params.data_sha256"));
  bad["benchmarks"][0]["params"]["data_sha256"] = std::string(64, 'e');
  bad["benchmarks"][0]["params"].erase("data");
  CHECK_THAT(spec_error(bad), Catch::Contains("pins params.data"));
}

TEST_CASE("composite scores and ranks match a hand computation", "[unit][composite]") {
  evald::ScoringSpec scoring{{{"benchmarks", 40}, {"experts", 35}, {"users", 25}}};
  const evald::ImportedScores imported = {
      {"experts", {{"m1", 80}, {"m2", 100}, {"m3", 90}}},
      {"users", {{"m1", 50}, {"m2", 20}}},
  };
  // m1: 40*0.75 + 35*0.80 + 25*0.50 = 30 + 28 + 12.5 = 70.5
  // m2: 40*0.70 + 35*1.00 + 25*0.20 = 28 + 35 + 5 = 68
  // m3: no users score -> null, last
  CHECK(evald::composite_score(scoring, 0.75, imported, "m1").value() == Approx(70.5));
  CHECK(evald::composite_score(scoring, 0.70, imported, "m2").value() == Approx(68.0));
  CHECK_FALSE(evald::composite_score(scoring, 0.99, imported, "m3").has_value());
  CHECK_FALSE(evald::composite_score(scoring, std::nullopt, imported, "m1").has_value());

  const json models = json::array({{{"name", "m2"}, {"average", 0.70}, {"rank", 2}},
                                   {{"name", "m3"}, {"average", 0.99}, {"rank", 1}},
                                   {{"name", "m1"}, {"average", 0.75}, {"rank", 3}}});
  const auto ranked = evald::apply_composite(scoring, imported, models);
  REQUIRE(ranked.size() == 3);
  CHECK(ranked[0]["name"] == "m1");
  CHECK(ranked[0]["rank"] == 1);
  CHECK(ranked[0]["components"]["benchmarks"].get<double>() == Approx(75.0));
  CHECK(ranked[1]["name"] == "m2");
  CHECK(ranked[1]["rank"] == 2);
  CHECK(ranked[2]["name"] == "m3");
  CHECK(ranked[2]["rank"] == 3);
  CHECK(ranked[2]["composite"].is_null());
  CHECK(ranked[2]["components"]["users"].is_null());

  // Ties share a rank (1, 1, 3).
  const evald::ScoringSpec experts_only{{{"experts", 1}}};
  const evald::ImportedScores tied = {{"experts", {{"m1", 70}, {"m2", 70}, {"m3", 10}}}};
  const auto tie = evald::apply_composite(
      experts_only, tied, json::array({{{"name", "m3"}}, {{"name", "m2"}}, {{"name", "m1"}}}));
  CHECK(tie[0]["name"] == "m1");
  CHECK(tie[0]["rank"] == 1);
  CHECK(tie[1]["rank"] == 1);
  CHECK(tie[2]["rank"] == 3);
}

TEST_CASE("imported scores are checked against the spec", "[unit][composite]") {
  auto spec = base_spec();
  spec["scoring"] = {{"weights", {{"benchmarks", 40}, {"experts", 60}}}};
  const auto parsed = evald::parse_campaign_spec(spec).value();
  CHECK(evald::validate_imported_scores(parsed, "experts", json{{"m1", 12.5}}).ok());
  auto check = [&](const std::string& component, const json& scores, const std::string& part) {
    auto result = evald::validate_imported_scores(parsed, component, scores);
    REQUIRE_FALSE(result.ok());
    CHECK_THAT(result.error().message, Catch::Contains(part));
  };
  check("benchmarks", json{{"m1", 1}}, "computed");
  check("users", json{{"m1", 1}}, "not weighted");
  check("experts", json{{"m9", 1}}, "scores.m9");
  check("experts", json{{"m1", 100.5}}, "0 to 100");
  check("experts", json{{"m1", "high"}}, "0 to 100");
  check("experts", json::object(), "non-empty");
  const auto no_scoring = evald::parse_campaign_spec(base_spec()).value();
  CHECK_FALSE(evald::validate_imported_scores(no_scoring, "experts", json{{"m1", 1}}).ok());
}

TEST_CASE("provenance record and shard identity", "[unit][provenance]") {
  const auto spec = evald::parse_campaign_spec(base_spec()).value();
  evald::protocol::ShardResult r;
  r.attempt_id = 42;
  r.model = 1;
  r.benchmark = 0;
  r.shard = 1;
  r.started_at_ms = 1'764'666'000'123;
  r.ended_at_ms = 1'764'666'001'456;
  r.gpus = {1};
  r.executable_sha256 = std::string(64, 'a');
  r.data_sha256 = std::string(64, 'd');
  const json worker_gpus = json::array({{{"index", 0}, {"name", "H200"}, {"uuid", "GPU-0"}},
                                        {{"index", 1}, {"name", "H200"}, {"uuid", "GPU-1"}}});
  const std::string spec_sha = std::string(64, 's');
  const std::string worker = "w7";
  const std::string host = "node-7";
  const auto record =
      evald::coordinator::make_provenance({spec, spec_sha, worker, host, worker_gpus}, r);
  CHECK(record["model"] == "m2");
  CHECK(record["benchmark"] == "b1");
  CHECK(record["index"] == 1);
  CHECK(record["attempt_id"] == 42);
  CHECK(record["worker"] == "w7");
  CHECK(record["host"] == "node-7");
  CHECK(record["gpus"] == json::array({{{"index", 1}, {"name", "H200"}, {"uuid", "GPU-1"}}}));
  CHECK(record["started_at"] == "2025-12-02T09:00:00.123Z");
  CHECK(record["ended_at"] == "2025-12-02T09:00:01.456Z");
  CHECK(record["runner"]["type"] == "exec");
  CHECK(record["runner"]["command"] == json::array({"run-eval", "{model}"}));
  CHECK(record["runner"]["executable_sha256"] == std::string(64, 'a'));
  CHECK(record["data_sha256"] == std::string(64, 'd'));
  CHECK(record["spec_sha256"] == spec_sha);
  CHECK(record["evald_version"] == evald::kVersion);

  CHECK_FALSE(evald::coordinator::check_result_provenance(r).has_value());
  auto bad = r;
  bad.data_sha256 = "xyz";
  CHECK(evald::coordinator::check_result_provenance(bad).has_value());
  bad = r;
  bad.gpus.assign(65, 0);
  CHECK(evald::coordinator::check_result_provenance(bad).has_value());
  bad = r;
  bad.ended_at_ms = r.started_at_ms - 1;
  CHECK(evald::coordinator::check_result_provenance(bad).has_value());

  // Identity: the same for the same entries and range, different for another range, another
  // model entry or another pin.
  const auto canonical = evald::to_json(spec);
  const evald::coordinator::ShardIdentity m2(canonical, 1, 0);
  CHECK(m2.of(0, 5) == evald::coordinator::ShardIdentity(canonical, 1, 0).of(0, 5));
  CHECK(m2.of(0, 5) != m2.of(5, 10));
  CHECK(m2.of(0, 5) != evald::coordinator::ShardIdentity(canonical, 0, 0).of(0, 5));
  auto renamed = base_spec();
  renamed["name"] = "another-name";
  CHECK(m2.of(0, 5) == evald::coordinator::ShardIdentity(
                           evald::to_json(evald::parse_campaign_spec(renamed).value()), 1, 0)
                           .of(0, 5));
  auto pinned = base_spec();
  pinned["benchmarks"][0]["params"]["data_sha256"] = std::string(64, 'f');
  CHECK(m2.of(0, 5) != evald::coordinator::ShardIdentity(
                           evald::to_json(evald::parse_campaign_spec(pinned).value()), 1, 0)
                           .of(0, 5));
  CHECK(evald::is_sha256_hex(m2.of(0, 5)));
}

TEST_CASE("provenance text is the record's JSON dump, byte for byte", "[unit][provenance]") {
  // The store keeps provenance_text(); the API and reuse read it as make_provenance() would have
  // written it. Names with quotes, escapes, control characters, non-ASCII and invalid UTF-8, GPU
  // entries that are missing, partial or of the wrong type, and absent fields.
  const auto spec = evald::parse_campaign_spec(base_spec()).value();
  const std::string spec_sha = std::string(64, 's');
  const std::vector<std::string> odd = {"",          "node-7",   "quote\"d",    "back\\slash",
                                        "tab\there", "ctl\x01",  "caf\xc3\xa9", "bad\xff\xfe",
                                        "del\x7f",   "slash/ok", "{json}"};
  const std::vector<json> gpu_lists = {
      json::array(),
      json::array({{{"index", 0}, {"name", "H200"}, {"uuid", "GPU-0"}},
                   {{"index", 1}, {"name", "A\"100\xff"}}}),
      json::array({{{"index", 1}, {"name", 7}, {"uuid", nullptr}}, "not an object"}),
      // Indexes that are not integers match nothing (and must not throw).
      json::array({{{"index", "1"}, {"name", "string index"}},
                   {{"index", nullptr}, {"name", "null index"}},
                   {{"index", 0.5}, {"name", "fraction"}},
                   {{"name", "no index"}},
                   {{"index", 5.0}, {"name", "integral float"}}}),
      json::object(),
  };
  int compared = 0;
  for (const auto& text : odd) {
    for (const auto& worker_gpus : gpu_lists) {
      evald::protocol::ShardResult r;
      r.attempt_id = (uint64_t{7} << 32) | 123;
      r.model = 1;
      r.benchmark = 0;
      r.shard = 3;
      r.started_at_ms = text.empty() ? 0 : 1'764'666'000'123;
      r.ended_at_ms = text.empty() ? 0 : 1'764'666'001'456;
      r.gpus = text.empty() ? std::vector<uint32_t>{} : std::vector<uint32_t>{1, 0, 5};
      r.executable_sha256 = text.empty() ? "" : std::string(64, 'a');
      r.data_sha256 = text.empty() ? "" : std::string(64, 'd');
      const std::string worker = "w-" + text;
      const evald::coordinator::ProvenanceContext context{spec, spec_sha, worker, text,
                                                          worker_gpus};
      const std::string expected = evald::coordinator::make_provenance(context, r)
                                       .dump(-1, ' ', false, json::error_handler_t::replace);
      INFO("host/worker " << json(text).dump(-1, ' ', true, json::error_handler_t::replace)
                          << " gpus "
                          << worker_gpus.dump(-1, ' ', true, json::error_handler_t::replace));
      CHECK(evald::coordinator::provenance_text(context, r) == expected);
      ++compared;
    }
  }
  CHECK(compared == 55);
}

TEST_CASE("provenance times: RFC 3339 with milliseconds, null when unknown", "[unit][provenance]") {
  CHECK(evald::coordinator::rfc3339_ms_or_null(0).is_null());
  CHECK(evald::coordinator::rfc3339_ms_or_null(-5).is_null());
  CHECK(evald::coordinator::rfc3339_ms_or_null(1'764'666'000'123) == "2025-12-02T09:00:00.123Z");
}

TEST_CASE("store: provenance, reuse index, scores and reused shard records", "[unit][store]") {
  using namespace evald::coordinator;
  evald::testing::TempDir dir;
  auto opened = Store::open(dir.path() / "db");
  REQUIRE(opened.ok());
  auto& store = *opened.value();
  const ShardKey key{3, 1, 7};
  const std::string identity = evald::sha256_hex("shard");
  ShardRecord rec;
  rec.state = ShardState::kSucceeded;
  rec.count = 5;
  rec.metrics = {{"accuracy", 0.8}};
  rec.reused_from_campaign = "c000001";
  rec.reused_from_attempt = 99;
  Store::Batch batch;
  batch.put_provenance(key, R"({"model":"m"})");
  batch.put_provenance(ShardKey{4, 0, 0}, R"({"model":"other campaign"})");
  batch.put_reuse(identity, key, 99);
  batch.put_scores(3, "experts", R"({"scores":{"m":1}})");
  batch.put_shard(key, rec);
  REQUIRE(store.commit(batch).ok());

  CHECK(store.get_provenance(key) == R"({"model":"m"})");
  std::vector<std::string> seen;
  REQUIRE(store
              .scan_provenance(3,
                               [&](const ShardKey& k, std::string_view v) {
                                 CHECK(k == key);
                                 seen.emplace_back(v);
                               })
              .ok());
  CHECK(seen.size() == 1);
  const auto source = store.get_reuse(identity);
  REQUIRE(source);
  CHECK(source->shard == key);
  CHECK(source->attempt_id == 99);
  CHECK_FALSE(store.get_reuse(evald::sha256_hex("other")));
  CHECK_FALSE(store.get_reuse("not hex"));
  size_t components = 0;
  REQUIRE(store
              .scan_scores([&](uint32_t campaign, std::string_view component, std::string_view) {
                CHECK(campaign == 3);
                CHECK(component == "experts");
                ++components;
              })
              .ok());
  CHECK(components == 1);
  const auto back = store.get_shard(key);
  REQUIRE(back);
  CHECK(back->reused_from_campaign == "c000001");
  CHECK(back->reused_from_attempt == 99);
  CHECK(back->metrics == rec.metrics);

  // A record that was not reused keeps the version-2 bytes (older binaries read it), and every
  // truncation of a version-3 record is refused.
  ShardRecord plain = rec;
  plain.reused_from_campaign.clear();
  CHECK(encode(plain)[0] == 2);
  const auto bytes = encode(rec);
  CHECK(bytes[0] == 3);
  for (size_t n = 0; n < bytes.size(); ++n)
    CHECK_FALSE(decode_shard_record(bytes.substr(0, n)).ok());
}
