// evalctl's views of the statistics: the results table with "value ± stderr" and rank intervals,
// the compare table, and the HTML report (escaping, charts, provenance summary), on hand-written
// JSON.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "evalctl/format.hpp"
#include "evalctl/report.hpp"

using evald::evalctl::format_compare;
using evald::evalctl::format_results;
using evald::evalctl::html_escape;
using evald::evalctl::render_report_html;
using evald::evalctl::ResultsFormat;
using nlohmann::json;

namespace {

json results_with_stats() {
  return json::parse(R"({
    "campaign": "c000007", "name": "round <1>", "state": "succeeded",
    "benchmarks": ["kmmlu", "gsm8k"],
    "models": [
      {"name": "model-a", "rank": 1, "average": 0.75, "firsts": 2, "average_stderr": 0.0125,
       "rank_interval": [1, 2],
       "scores": {"kmmlu": {"metric": "accuracy", "value": 0.73, "count": 500, "complete": true,
                            "n": 500, "stderr": 0.021, "ci95": [0.68884, 0.77116]},
                  "gsm8k": {"metric": "accuracy", "value": 0.77, "count": 300, "complete": true,
                            "n": 300, "stderr": 0.0143, "ci95": [0.741972, 0.798028]}}},
      {"name": "model-b", "rank": 2, "average": 0.7, "firsts": 0, "average_stderr": 0.013,
       "rank_interval": [1, 2],
       "scores": {"kmmlu": {"metric": "accuracy", "value": 0.7, "count": 500, "complete": true,
                            "n": 500, "stderr": 0.0205, "ci95": [0.65982, 0.74018]},
                  "gsm8k": {"metric": "accuracy", "value": 0.7, "count": 300, "complete": true,
                            "n": 300, "stderr": 0.0150, "ci95": [0.6706, 0.7294]}}},
      {"name": "model-<c>", "rank": 3, "average": 0.2, "firsts": 0, "average_stderr": null,
       "rank_interval": null,
       "scores": {"kmmlu": {"metric": "accuracy", "value": 0.2, "count": 500, "complete": true,
                            "n": null, "stderr": null, "ci95": null},
                  "gsm8k": {"metric": "accuracy", "value": 0.2, "count": 300, "complete": true,
                            "n": null, "stderr": null, "ci95": null}}}
    ]})");
}

}  // namespace

TEST_CASE("results table: value ± stderr and rank intervals, overlaps marked", "[unit][evalctl]") {
  const std::string table = format_results(results_with_stats(), ResultsFormat::kTable);
  INFO(table);
  CHECK_THAT(table, Catch::Contains("0.7300 \u00b1 0.0210"));
  CHECK_THAT(table, Catch::Contains("0.7500 \u00b1 0.0125"));
  CHECK_THAT(table, Catch::Contains("rank 95%"));
  CHECK_THAT(table, Catch::Contains("1-2 ~"));
  CHECK_THAT(table, Catch::Contains("~ rank 95%"));
  // No stderr: the plain value, as before.
  CHECK_THAT(table, Catch::Contains("0.2000"));
  CHECK_THAT(table, !Catch::Contains("0.2000 \u00b1"));

  // Without any statistics the table is exactly what it was.
  json plain = results_with_stats();
  for (auto& model : plain["models"]) {
    model.erase("average_stderr");
    model.erase("rank_interval");
    for (auto& [name, score] : model["scores"].items()) {
      score.erase("n");
      score.erase("stderr");
      score.erase("ci95");
    }
  }
  const std::string old = format_results(plain, ResultsFormat::kTable);
  CHECK_THAT(old, !Catch::Contains("\u00b1"));
  CHECK_THAT(old, !Catch::Contains("rank 95%"));
}

TEST_CASE("compare table: one row per benchmark", "[unit][evalctl]") {
  const json reply = json::parse(R"({
    "campaign": "c000007", "a": "model-a", "b": "model-b",
    "benchmarks": [
      {"benchmark": "kmmlu", "n": 500, "diff": 0.03, "stderr": 0.01, "ci95": [0.0104, 0.0496],
       "test": "mcnemar", "a_only": 40, "b_only": 25, "p_value": 0.0815, "p_adjusted": 0.163},
      {"benchmark": "gsm8k", "n": 0, "diff": null, "stderr": null, "ci95": null, "test": null,
       "p_value": null, "p_adjusted": null}]})");
  const std::string text = format_compare(reply);
  INFO(text);
  CHECK_THAT(text, Catch::Contains("compare model-a (a) with model-b (b)"));
  CHECK_THAT(text, Catch::Contains("[0.0104, 0.0496]"));
  CHECK_THAT(text, Catch::Contains("mcnemar"));
  CHECK_THAT(text, Catch::Contains("0.0815"));
  CHECK_THAT(text, Catch::Contains("0.1630"));
}

TEST_CASE("report: escaped, self-contained, with charts and a provenance summary",
          "[unit][evalctl]") {
  const std::string html =
      render_report_html(results_with_stats(), nullptr, "", "2026-12-02T10:00:00Z");
  CHECK_THAT(html, Catch::StartsWith("<!DOCTYPE html>"));
  CHECK_THAT(html, Catch::Contains("round &lt;1&gt;"));
  CHECK_THAT(html, Catch::Contains("model-&lt;c&gt;"));
  CHECK_THAT(html, !Catch::Contains("model-<c>"));
  // One error-bar chart per benchmark plus the rank chart.
  size_t charts = 0;
  for (size_t at = 0; (at = html.find("<svg", at)) != std::string::npos; ++at) ++charts;
  CHECK(charts == 3);
  CHECK_THAT(html, Catch::Contains("no provenance recorded"));
  CHECK_THAT(html, Catch::Contains("0.7300 <span class=\"se\">&plusmn; 0.0210</span>"));
  CHECK_THAT(html, !Catch::Contains("<script"));

  const json provenance = json::parse(R"({"records": [
    {"model": "model-a", "benchmark": "kmmlu", "index": 0, "worker": "w1", "host": "node-1",
     "gpus": [{"index": 0, "name": "NVIDIA H100", "uuid": "GPU-1"}],
     "started_at": "2026-12-01T10:00:00Z", "ended_at": "2026-12-01T10:05:00Z",
     "runner": {"type": "exec", "command": "score {model}", "executable_sha256": "abc"},
     "data_sha256": "d1", "spec_sha256": "s1", "evald_version": "0.1.0"},
    {"model": "model-b", "benchmark": "kmmlu", "index": 0, "worker": "w2", "host": "node-2",
     "gpus": [{"index": 0, "name": "NVIDIA H100", "uuid": "GPU-2"}],
     "started_at": "2026-12-01T09:00:00Z", "ended_at": "2026-12-01T11:00:00Z",
     "runner": {"type": "exec", "command": "score {model}", "executable_sha256": "abc"},
     "data_sha256": "d2", "spec_sha256": "s1", "evald_version": "0.1.0"}]})");
  const std::string with = render_report_html(results_with_stats(), provenance, "", "now");
  CHECK_THAT(with, Catch::Contains("NVIDIA H100 (2 results)"));
  CHECK_THAT(with, Catch::Contains("2 distinct devices"));
  CHECK_THAT(with, Catch::Contains("2026-12-01T09:00:00Z to 2026-12-01T11:00:00Z"));
  CHECK_THAT(with, Catch::Contains("the data changed during the campaign"));
  CHECK_THAT(with, !Catch::Contains("no provenance recorded"));

  CHECK(html_escape("a<b>&\"'") == "a&lt;b&gt;&amp;&quot;&#39;");
}
