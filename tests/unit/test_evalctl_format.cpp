// evalctl: the output formats on hand-written server JSON (exact text), and the commands run
// in-process against a real HTTP server that answers like the coordinator's API.
#include <catch2/catch.hpp>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/http_server.hpp"
#include "evalctl/commands.hpp"
#include "evalctl/format.hpp"
#include "tests/support/test_support.hpp"

namespace {

using nlohmann::json;
namespace ev = evald::evalctl;

// Three models: one complete, one with an incomplete cell and a comma and quotes in its name, one
// without any score on gsm8k (null value, null average).
const json kResults = json::parse(R"({
  "campaign": "c1", "name": "k-ai-round1", "state": "failed",
  "benchmarks": ["kmmlu", "gsm8k"],
  "models": [
    {"name": "model-a", "rank": 1, "average": 0.72, "firsts": 2,
     "scores": {"kmmlu": {"metric": "accuracy", "value": 0.61, "count": 35030, "complete": true},
                "gsm8k": {"metric": "accuracy", "value": 0.83, "count": 1319, "complete": true}}},
    {"name": "model, \"b\"", "rank": 2, "average": 0.655, "firsts": 0,
     "scores": {"kmmlu": {"metric": "accuracy", "value": 0.6, "count": 35030, "complete": true},
                "gsm8k": {"metric": "accuracy", "value": 0.71, "count": 900, "complete": false}}},
    {"name": "model-c", "rank": 3, "average": null, "firsts": 0,
     "scores": {"kmmlu": {"metric": "accuracy", "value": 0.5, "count": 100, "complete": false},
                "gsm8k": {"metric": "accuracy", "value": null, "count": 0, "complete": false}}}
  ]})");

const json kRunningCampaign = json::parse(R"({
  "id": "c1", "name": "k-ai-round1", "state": "running", "created_at": "2024-05-01T10:00:00Z",
  "shards": {"pending": 200, "running": 40, "succeeded": 150, "failed": 10, "cancelled": 0},
  "total": 400, "progress": 0.4, "eta_s": 200, "unschedulable": "no worker has 8 free GPUs"})");

const json kDoneCampaign = json::parse(R"({
  "id": "c2", "name": "b", "state": "succeeded", "created_at": "2024-05-01T09:00:00Z",
  "shards": {"pending": 0, "running": 0, "succeeded": 4, "failed": 0, "cancelled": 0},
  "total": 4, "progress": 1.0, "eta_s": null})");

const char* const kIncompleteNote =
    "incomplete: not every shard of this model x benchmark succeeded; the value covers the "
    "succeeded shards only\n";

}  // namespace

TEST_CASE("render_table aligns columns and trims trailing spaces", "[unit][evalctl]") {
  ev::Table table;
  table.headers = {"name", "n", "note"};
  table.right_align = {false, true};
  table.rows = {{"a", "1", ""}, {"longer", "100", "x"}};
  CHECK(ev::render_table(table) ==
        "name      n  note\n"
        "a         1\n"
        "longer  100  x\n");
}

TEST_CASE("render_table counts Hangul as two columns", "[unit][evalctl]") {
  ev::Table table;
  table.headers = {"model", "score"};
  table.rows = {{"한국어", "1"}, {"abc", "2"}};
  CHECK(ev::render_table(table) ==
        "model   score\n"
        "한국어  1\n"
        "abc     2\n");
}

TEST_CASE("results as a table: 4 decimals, '-' for null, '*' for incomplete", "[unit][evalctl]") {
  CHECK(ev::format_results(kResults, ev::ResultsFormat::kTable) ==
        "leaderboard of k-ai-round1 (c1), state failed\n"
        "rank  model       average  firsts    kmmlu    gsm8k\n"
        "   1  model-a      0.7200       2  0.6100   0.8300\n"
        "   2  model, \"b\"   0.6550       0  0.6000   0.7100*\n"
        "   3  model-c           -       0  0.5000*       -\n"
        "\n* " +
            std::string(kIncompleteNote));
}

TEST_CASE("results as CSV quote per RFC 4180 and keep full precision", "[unit][evalctl]") {
  CHECK(ev::format_results(kResults, ev::ResultsFormat::kCsv) ==
        "rank,model,average,firsts,kmmlu,gsm8k\n"
        "1,model-a,0.72,2,0.61,0.83\n"
        "2,\"model, \"\"b\"\"\",0.655,0,0.6,0.71\n"
        "3,model-c,,0,0.5,\n");
  CHECK(ev::csv_field("plain") == "plain");
  CHECK(ev::csv_field("a,b") == "\"a,b\"");
  CHECK(ev::csv_field("say \"hi\"") == "\"say \"\"hi\"\"\"");
  CHECK(ev::csv_field("two\nlines") == "\"two\nlines\"");
}

TEST_CASE("results as a GitHub markdown table", "[unit][evalctl]") {
  json results = kResults;
  results["models"][0]["name"] = "a|b_c";  // would break the table and turn into emphasis
  CHECK(ev::format_results(results, ev::ResultsFormat::kMarkdown) ==
        "| rank | model | average | firsts | kmmlu | gsm8k |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: |\n"
        "| 1 | a\\|b\\_c | 0.7200 | 2 | 0.6100 | 0.8300 |\n"
        "| 2 | model, \"b\" | 0.6550 | 0 | 0.6000 | 0.7100\\* |\n"
        "| 3 | model-c | - | 0 | 0.5000\\* | - |\n"
        "\n\\* " +
            std::string(kIncompleteNote));
}

TEST_CASE("results as JSON are the server's, indented", "[unit][evalctl]") {
  const auto text = ev::format_results(kResults, ev::ResultsFormat::kJson);
  CHECK(json::parse(text) == kResults);
  CHECK(text == kResults.dump(2) + "\n");
}

TEST_CASE("a complete leaderboard has no footnote", "[unit][evalctl]") {
  const json results = json::parse(R"({"campaign": "c9", "name": "n", "state": "succeeded",
    "benchmarks": ["b1"], "models": [{"name": "m", "rank": 1, "average": 1, "firsts": 1,
    "scores": {"b1": {"metric": "accuracy", "value": 1, "count": 10, "complete": true}}}]})");
  CHECK(ev::format_results(results, ev::ResultsFormat::kTable) ==
        "leaderboard of n (c9), state succeeded\n"
        "rank  model  average  firsts      b1\n"
        "   1  m       1.0000       1  1.0000\n");
}

TEST_CASE("parse_results_format names the choices", "[unit][evalctl]") {
  CHECK(ev::parse_results_format("markdown").value() == ev::ResultsFormat::kMarkdown);
  CHECK(ev::parse_results_format("csv").value() == ev::ResultsFormat::kCsv);
  const auto bad = ev::parse_results_format("xml");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message == "--format: 'xml' is not one of table, json, csv, markdown");
}

TEST_CASE("durations read as the largest two units", "[unit][evalctl]") {
  CHECK(ev::format_duration(std::nullopt) == "-");
  CHECK(ev::format_duration(-1.0) == "-");
  CHECK(ev::format_duration(0.4) == "0s");
  CHECK(ev::format_duration(45) == "45s");
  CHECK(ev::format_duration(200) == "3m20s");
  CHECK(ev::format_duration(7500) == "2h05m");
  CHECK(ev::format_duration(97200) == "1d03h");
}

TEST_CASE("one campaign: counts, progress, ETA and why it is stuck", "[unit][evalctl]") {
  CHECK(ev::format_campaign(kRunningCampaign) ==
        "campaign       c1\n"
        "name           k-ai-round1\n"
        "state          running\n"
        "created        2024-05-01T10:00:00Z\n"
        "progress       40.0%  160/400 shards done\n"
        "shards         succeeded 150  failed 10  running 40  pending 200  cancelled 0\n"
        "eta            3m20s\n"
        "unschedulable  no worker has 8 free GPUs\n");
}

TEST_CASE("all campaigns as a table", "[unit][evalctl]") {
  CHECK(ev::format_campaigns(json{{"campaigns", {kRunningCampaign, kDoneCampaign}}}) ==
        "id  name         state      progress  done/total  failed    eta  created               "
        "note\n"
        "c1  k-ai-round1  running       40.0%     160/400      10  3m20s  2024-05-01T10:00:00Z  "
        "unschedulable: no worker has 8 free GPUs\n"
        "c2  b            succeeded    100.0%         4/4       0      -  2024-05-01T09:00:00Z\n");
  CHECK(ev::format_campaigns(json{{"campaigns", json::array()}}) == "no campaigns\n");
}

TEST_CASE("shards table cuts last_error to its first and last line", "[unit][evalctl]") {
  const json shards = json::parse(R"({"shards": [
    {"model": "model-a", "benchmark": "kmmlu", "index": 3, "start": 1500, "end": 2000,
     "state": "failed", "attempts": 3, "worker": "gpu-1", "duration_s": 12.345,
     "last_error": "exit code 1: Traceback (most recent call last):\n  File x\nValueError: bad",
     "history": [{"outcome": "failed"}, {"outcome": "lost"}, {"outcome": "stale"},
                 {"outcome": "failed"}]},
    {"model": "model-a", "benchmark": "kmmlu", "index": 4, "start": 2000, "end": 2500,
     "state": "pending", "attempts": 0, "worker": null, "duration_s": null, "last_error": null}]})");
  CHECK(ev::format_shards(shards) ==
        "model    benchmark  index      range  state    attempts  earlier                    "
        "worker  duration_s  last_error\n"
        "model-a  kmmlu          3  1500-2000  failed          3  2 failed, 1 lost, 1 stale  "
        "gpu-1         12.3  exit code 1: Traceback (most recent call last): ... ValueError: bad\n"
        "model-a  kmmlu          4  2000-2500  pending         0  -                          "
        "-                -\n");
}

TEST_CASE("a long last_error is cut to 80 columns", "[unit][evalctl]") {
  json shards = {{"shards",
                  {{{"model", "m"},
                    {"benchmark", "b"},
                    {"index", 0},
                    {"start", 0},
                    {"end", 1},
                    {"state", "failed"},
                    {"attempts", 1},
                    {"worker", "w"},
                    {"duration_s", 1},
                    {"last_error", std::string(200, 'e')}}}}};
  const auto text = ev::format_shards(shards);
  const auto row = text.substr(text.find('\n') + 1);
  CHECK(row.substr(row.find("eee")) == std::string(77, 'e') + "...\n");
}

TEST_CASE("workers table shows slots used/total, GPUs, labels and heartbeat age",
          "[unit][evalctl]") {
  const json workers = json::parse(R"({"workers": [
    {"name": "gpu-node-1", "state": "ready", "slots": 8, "running": 3,
     "gpus": [{"index": 0, "name": "H100", "memory_mib": 81559},
              {"index": 1, "name": "H100", "memory_mib": 81559}],
     "labels": {"gpu": "h100", "zone": "a"}, "last_heartbeat_s": 0.42},
    {"name": "cpu-1", "state": "lost", "slots": 1, "running": [], "gpus": [], "labels": {},
     "last_heartbeat_s": 12}]})");
  CHECK(ev::format_workers(workers) ==
        "name        state  slots  gpus        labels           heartbeat  shards\n"
        "gpu-node-1  ready    3/8  0,1 (H100)  gpu=h100,zone=a   0.4s ago       3\n"
        "cpu-1       lost     0/1  -           -                12.0s ago       0\n");
}

TEST_CASE("watch line: bar, counts, percent and ETA", "[unit][evalctl]") {
  CHECK(ev::format_watch_line(kRunningCampaign) ==
        "[############------------------]  160/400  40.0%  succeeded 150  failed 10  running 40  "
        "pending 200  ETA 3m20s  unschedulable: no worker has 8 free GPUs");
  CHECK(ev::format_watch_line(kDoneCampaign) ==
        "[##############################]  4/4  100.0%  succeeded 4  failed 0  running 0  "
        "pending 0  ETA -");
  json same = kRunningCampaign;
  same["eta_s"] = 150;  // only the estimate moved: not worth a new line when piped
  CHECK_FALSE(ev::watch_counts_changed(kRunningCampaign, same));
  same["shards"]["running"] = 39;
  CHECK(ev::watch_counts_changed(kRunningCampaign, same));
}

TEST_CASE("malformed server JSON shows as '-', never throws", "[unit][evalctl]") {
  // Wrong types everywhere: a number where a name belongs is printed as the number, anything
  // else that is not what the field should be shows as '-' (empty in CSV), and every table keeps
  // its columns.
  const json junk = json::parse(R"({"models": [{"name": 7, "rank": "x", "scores": []}],
                                    "benchmarks": [1]})");
  CHECK(ev::format_results(junk, ev::ResultsFormat::kTable) ==
        "leaderboard of - (-), state -\n"
        "rank  model  average  firsts  1\n"
        "   -  7            -       -  -\n");
  CHECK(ev::format_results(junk, ev::ResultsFormat::kCsv) ==
        "rank,model,average,firsts,1\n"
        ",7,,,\n");
  CHECK(ev::format_results(junk, ev::ResultsFormat::kMarkdown) ==
        "| rank | model | average | firsts | 1 |\n"
        "| ---: | --- | ---: | ---: | ---: |\n"
        "| - | 7 | - | - | - |\n");
  CHECK(ev::format_campaign(json::array()) ==
        "campaign  -\n"
        "name      -\n"
        "state     -\n"
        "created   -\n"
        "progress  0.0%  0/0 shards done\n"
        "shards    succeeded 0  failed 0  running 0  pending 0  cancelled 0\n"
        "eta       -\n");
  // Entries that are not objects are rows of '-', one per entry.
  const std::string dashes =
      "-      -              -    ---  -             -  -        -                -\n";
  CHECK(ev::format_shards(json{{"shards", {1, "x", nullptr}}}) ==
        "model  benchmark  index  range  state  attempts  earlier  worker  duration_s  "
        "last_error\n" +
            dashes + dashes + dashes);
  CHECK(ev::format_workers(json{{"workers", "none"}}) == "no workers\n");
}

TEST_CASE("HTTP errors show the server's message", "[unit][evalctl]") {
  CHECK(ev::http_error_message(404, R"({"error": "campaign 'x' not found"})") ==
        "campaign 'x' not found");
  CHECK(ev::http_error_message(502, "<html>bad gateway</html>\nmore") ==
        "server answered HTTP 502: <html>bad gateway</html> ... more");
  CHECK(ev::http_error_message(500, "") == "server answered HTTP 500");
}

namespace {

// A real HTTP server that answers like the coordinator's API from canned replies, and records
// what it was asked.
class FakeApi {
 public:
  struct Reply {
    int status = 200;
    std::string body;
  };

  FakeApi()
      : server_("127.0.0.1:0", size_t{1024} * 1024,
                [this](const evald::HttpRequest& request, const evald::HttpRespond& respond) {
                  respond(answer(request));
                }) {
    server_.start();
  }

  // Replies for "METHOD TARGET" are used in turn; the last one repeats.
  void on(const std::string& key, std::vector<Reply> replies) {
    std::lock_guard lock(mutex_);
    replies_[key] = std::deque<Reply>(replies.begin(), replies.end());
  }

  std::vector<evald::HttpRequest> requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
  }

  std::string url() const { return "http://" + server_.local_address(); }

 private:
  evald::HttpResponse answer(const evald::HttpRequest& request) {
    std::lock_guard lock(mutex_);
    requests_.push_back(request);
    auto it = replies_.find(request.method + " " + request.target);
    if (it == replies_.end() || it->second.empty()) {
      return {404, "application/json", json{{"error", "no route " + request.target}}.dump()};
    }
    Reply reply = it->second.front();
    if (it->second.size() > 1) it->second.pop_front();
    return {reply.status, "application/json", reply.body};
  }

  mutable std::mutex mutex_;
  std::map<std::string, std::deque<Reply>> replies_;
  std::vector<evald::HttpRequest> requests_;
  evald::HttpServer server_;  // last: stopped first, before the state its handler uses
};

struct Outcome {
  int code = -1;
  std::string out;
  std::string err;
};

Outcome evalctl(const std::vector<std::string>& args, const ev::Environment& environment = {}) {
  std::ostringstream out;
  std::ostringstream err;
  Outcome outcome;
  outcome.code = ev::run(args, out, err, environment);
  outcome.out = out.str();
  outcome.err = err.str();
  return outcome;
}

std::string write_file(const evald::testing::TempDir& dir, const std::string& name,
                       const std::string& text) {
  const auto path = dir.path() / name;
  std::ofstream(path) << text;
  return path.string();
}

json campaign_with(const std::string& state, int succeeded, int failed, int running) {
  const int pending = 4 - succeeded - failed - running;
  return {{"id", "c1"},
          {"name", "n"},
          {"state", state},
          {"shards",
           {{"pending", pending},
            {"running", running},
            {"succeeded", succeeded},
            {"failed", failed},
            {"cancelled", 0}}},
          {"total", 4},
          {"progress", (succeeded + failed) / 4.0},
          {"eta_s", nullptr}};
}

}  // namespace

TEST_CASE("evalctl results prints the leaderboard in the format asked", "[unit][evalctl]") {
  FakeApi api;
  api.on("GET /v1/campaigns/c1/results", {{200, kResults.dump()}});
  const auto csv = evalctl({"--server", api.url(), "results", "c1", "--format", "csv"});
  CHECK(csv.code == 0);
  CHECK(csv.out == ev::format_results(kResults, ev::ResultsFormat::kCsv));
  CHECK(csv.err.empty());

  // --json anywhere on the line is --format json.
  const auto as_json = evalctl({"results", "c1", "--json", "--server", api.url()});
  CHECK(as_json.code == 0);
  CHECK(json::parse(as_json.out) == kResults);
}

TEST_CASE("evalctl reports the server's error and exits 1", "[unit][evalctl]") {
  FakeApi api;
  api.on("GET /v1/campaigns/nope", {{404, R"({"error": "campaign 'nope' not found"})"}});
  const auto outcome = evalctl({"--server", api.url(), "status", "nope"});
  CHECK(outcome.code == 1);
  CHECK(outcome.out.empty());
  CHECK(outcome.err == "evalctl: campaign 'nope' not found\n");
}

TEST_CASE("evalctl with the server down exits 1 naming it", "[unit][evalctl]") {
  std::string url;
  {
    FakeApi gone;  // bound, then closed: nothing listens on its port any more
    url = gone.url();
  }
  const auto outcome = evalctl({"workers"}, ev::Environment{url, false});  // via $EVALD_SERVER
  CHECK(outcome.code == 1);
  CHECK(outcome.err == "evalctl: cannot reach " + url + ": Connection refused\n");
}

TEST_CASE("evalctl usage errors exit 2", "[unit][evalctl]") {
  CHECK(evalctl({}).code == 2);
  CHECK(evalctl({"frobnicate"}).code == 2);
  const auto missing_id = evalctl({"results"});
  CHECK(missing_id.code == 2);
  CHECK(missing_id.err.find("results: missing campaign ID") != std::string::npos);
  CHECK(evalctl({"results", "c1", "--format", "xml"}).code == 2);
  CHECK(evalctl({"shards", "c1", "--state", "done"}).code == 2);
  CHECK(evalctl({"--server", "ftp://example.org", "workers"}).code == 2);
  CHECK(evalctl({"status", "--bogus"}).code == 2);

  const auto help = evalctl({"results", "--help"});
  CHECK(help.code == 0);
  CHECK(help.out.find("--format") != std::string::npos);
  const auto main_help = evalctl({"--help"});
  CHECK(main_help.code == 0);
  for (const char* command :
       {"submit", "status", "watch", "results", "shards", "rerun", "cancel", "workers"}) {
    CHECK(main_help.out.find(std::string("  ") + command + " ") != std::string::npos);
  }
}

TEST_CASE("evalctl submit validates locally and sends the spec as written", "[unit][evalctl]") {
  FakeApi api;
  api.on("POST /v1/campaigns", {{201, R"({"id": "c42"})"}});
  evald::testing::TempDir dir("evalctl-test");
  const std::string spec_text = R"({"name": "t", "models": [{"name": "m"}],
    "benchmarks": [{"name": "b", "examples": 10, "shard_size": 5}], "runner": {"type": "noop"}})";

  const auto missing =
      evalctl({"--server", api.url(), "submit", (dir.path() / "no.json").string()});
  CHECK(missing.code == 1);
  CHECK(missing.err == "evalctl: cannot read campaign spec '" + (dir.path() / "no.json").string() +
                           "': No such file or directory\n");

  const auto bad_path = write_file(dir, "bad.json", R"({"name": "t", "models": [{"name": "m"}],
    "benchmarks": [{"name": "b", "examples": 10, "shard_size": 0}], "runner": {"type": "noop"}})");
  const auto invalid = evalctl({"--server", api.url(), "submit", bad_path});
  CHECK(invalid.code == 1);
  CHECK(invalid.err ==
        "evalctl: " + bad_path + ": benchmarks[0].shard_size: must be a positive integer\n");
  CHECK(api.requests().empty());  // nothing was sent

  const auto good_path = write_file(dir, "good.json", spec_text);
  const auto submitted = evalctl({"--server", api.url(), "submit", good_path});
  CHECK(submitted.code == 0);
  CHECK(submitted.out == "c42\n");
  const auto requests = api.requests();
  REQUIRE(requests.size() == 1);
  CHECK(requests[0].method == "POST");
  CHECK(requests[0].target == "/v1/campaigns");
  CHECK(requests[0].body == spec_text);
}

TEST_CASE("evalctl rerun and cancel send only the selectors given", "[unit][evalctl]") {
  FakeApi api;
  api.on("POST /v1/campaigns/c1/rerun", {{200, R"({"requeued": 3})"}});
  api.on("POST /v1/campaigns/c1/cancel", {{200, R"({"cancelled": 5})"}});
  api.on("GET /v1/campaigns/c1/shards?state=failed", {{200, R"({"shards": []})"}});

  const auto rerun = evalctl({"--server", api.url(), "rerun", "c1", "--model", "m 1"});
  CHECK(rerun.code == 0);
  CHECK(rerun.out == "requeued 3 shards\n");
  const auto cancel = evalctl({"--server", api.url(), "cancel", "c1"});
  CHECK(cancel.code == 0);
  CHECK(cancel.out == "cancelled 5 shards\n");
  const auto shards = evalctl({"--server", api.url(), "shards", "c1", "--state", "failed"});
  CHECK(shards.code == 0);
  CHECK(shards.out == "no shards\n");

  const auto requests = api.requests();
  REQUIRE(requests.size() == 3);
  CHECK(json::parse(requests[0].body) == json{{"model", "m 1"}});
}

TEST_CASE("evalctl watch prints a line per change when piped", "[unit][evalctl]") {
  FakeApi api;
  api.on("GET /v1/campaigns/c1", {{200, campaign_with("running", 0, 0, 2).dump()},
                                  {200, campaign_with("running", 0, 0, 2).dump()},
                                  {200, campaign_with("running", 2, 0, 2).dump()},
                                  {200, campaign_with("succeeded", 4, 0, 0).dump()}});
  const auto outcome = evalctl({"--server", api.url(), "watch", "c1", "--interval-ms", "1"});
  CHECK(outcome.code == 0);
  CHECK(outcome.out == ev::format_watch_line(campaign_with("running", 0, 0, 2)) + "\n" +
                           ev::format_watch_line(campaign_with("running", 2, 0, 2)) + "\n" +
                           ev::format_watch_line(campaign_with("succeeded", 4, 0, 0)) + "\n" +
                           "campaign c1 succeeded\n");
  CHECK(api.requests().size() == 4);
}

TEST_CASE("evalctl watch exits 1 when a shard failed", "[unit][evalctl]") {
  FakeApi api;
  api.on("GET /v1/campaigns/c1", {{200, campaign_with("running", 1, 0, 3).dump()},
                                  {200, campaign_with("failed", 3, 1, 0).dump()}});
  const auto outcome = evalctl({"--server", api.url(), "watch", "c1", "--interval-ms", "1"},
                               ev::Environment{std::nullopt, /*stdout_is_tty=*/true});
  CHECK(outcome.code == 1);
  // On a terminal the line is redrawn in place and ended once the campaign is over.
  CHECK(outcome.out == "\r" + ev::format_watch_line(campaign_with("running", 1, 0, 3)) +
                           "\x1b[K\r" + ev::format_watch_line(campaign_with("failed", 3, 1, 0)) +
                           "\x1b[K\ncampaign c1 failed\n");
}
