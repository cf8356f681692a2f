// How evalctl shows the coordinator's answers: pure functions from the server's JSON (docs/api.md,
// docs/results.md) to the text printed on stdout. No I/O here, so every layout is unit
// tested on hand-written JSON (tests/unit/test_evalctl_format.cpp).
//
// The JSON comes from the network and is not trusted: a missing or mistyped field shows as "-"
// (or an empty CSV cell), never as a crash.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace evald::evalctl {

enum class ResultsFormat { kTable, kJson, kCsv, kMarkdown };

// "table", "json", "csv", "markdown"; anything else is an error that lists the choices.
Result<ResultsFormat> parse_results_format(std::string_view text);

// A plain-text table: columns separated by two spaces, each as wide as its widest cell, right
// aligned where `right_align[i]` is set (numbers), no trailing spaces.
struct Table {
  std::vector<std::string> headers;
  std::vector<bool> right_align;  // may be shorter than headers; missing entries mean left
  std::vector<std::vector<std::string>> rows;
};
std::string render_table(const Table& table);

// One CSV field, quoted per RFC 4180 when it holds a comma, a quote, CR or LF.
std::string csv_field(std::string_view text);

// "45s", "3m20s", "2h05m", "1d03h"; "-" for none (no estimate yet).
std::string format_duration(std::optional<double> seconds);

// The leaderboard (GET /v1/campaigns/{id}/results) in the given format. Table and markdown show
// 4 decimals, "-" for a missing score and "*" plus a footnote for an incomplete one; CSV keeps
// the server's full precision and leaves missing cells empty; JSON is the server's, indented.
std::string format_results(const nlohmann::json& results, ResultsFormat format);

// A paired comparison (GET /v1/campaigns/{id}/compare) as a table: per benchmark n, the mean
// difference a - b with its stderr and 95% interval, the test, its p-value and the Holm-adjusted
// one.
std::string format_compare(const nlohmann::json& compare);

// One campaign (GET /v1/campaigns/{id}): name, state, counts per shard state, progress, ETA and
// the reason it cannot be scheduled, if the server gives one.
std::string format_campaign(const nlohmann::json& campaign);

// Every campaign (GET /v1/campaigns) as a table.
std::string format_campaigns(const nlohmann::json& campaigns);

// GET /v1/campaigns/{id}/shards as a table; last_error is cut to one line.
std::string format_shards(const nlohmann::json& shards);

// GET /v1/workers as a table.
std::string format_workers(const nlohmann::json& workers);

// GET /v1/audit as a table: seq, time, principal (or the address), action, campaign, detail.
std::string format_audit(const nlohmann::json& audit);

// One line of `watch`: a bar, done/total, percent, counts per state and ETA, no newline.
std::string format_watch_line(const nlohmann::json& campaign);

// The message to show for an HTTP error: the server's {"error"} text, or the status and the start
// of the body when the body is not that JSON. 401 and 403 also say what to do about them.
std::string http_error_message(int status, std::string_view body);

// Whether two snapshots of a campaign differ in what `watch` shows when piped (state and counts).
bool watch_counts_changed(const nlohmann::json& before, const nlohmann::json& after);

}  // namespace evald::evalctl
