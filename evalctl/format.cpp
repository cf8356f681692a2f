#include "evalctl/format.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "common/json_fields.hpp"
#include "common/json_limits.hpp"
#include "common/utf8.hpp"

namespace evald::evalctl {
namespace {

using nlohmann::json;

constexpr size_t kProgressBarWidth = 30;
constexpr size_t kErrorCellChars = 80;
constexpr size_t kErrorBodyChars = 200;
constexpr const char* kOverlapNote =
    "rank 95%: the model's bootstrap rank interval overlaps another model's, so the data do not "
    "settle their order; scores show value \u00b1 standard error";
constexpr const char* kIncompleteNote =
    "incomplete: not every shard of this model x benchmark succeeded; the value covers the "
    "succeeded shards only";
// Shard states in the order a reader follows them (docs/results.md, "States").
constexpr const char* kShardStates[] = {"succeeded", "failed", "running", "pending", "cancelled"};

// --- Safe access to untrusted JSON ---------------------------------------------------------

// Strings as they are, numbers as JSON writes them, anything else (null, missing) as `fallback`.
std::string text_at(const json& object, const char* key, const std::string& fallback = "-") {
  const json* value = find_field(object, key);
  if (value == nullptr) return fallback;
  if (value->is_string()) return value->get<std::string>();
  if (value->is_number() || value->is_boolean()) return value->dump();
  return fallback;
}

std::string integer_text(std::optional<int64_t> value, const std::string& fallback = "-") {
  return value ? std::to_string(*value) : fallback;
}

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

std::string percent(double fraction) {
  return fixed(fraction * 100.0, 1) + "%";
}

// --- Text width ------------------------------------------------------------------------------

// Hangul, CJK and full-width forms take two terminal columns; model and benchmark names in
// Korean evaluations often use them, and the table columns must still line up.
bool is_wide(char32_t code) {
  return (code >= 0x1100 && code <= 0x115F) || (code >= 0x2E80 && code <= 0xA4CF) ||
         (code >= 0xAC00 && code <= 0xD7A3) || (code >= 0xF900 && code <= 0xFAFF) ||
         (code >= 0xFE30 && code <= 0xFE4F) || (code >= 0xFF00 && code <= 0xFF60) ||
         (code >= 0xFFE0 && code <= 0xFFE6) || (code >= 0x20000 && code <= 0x3FFFD);
}

size_t display_width(std::string_view text) {
  size_t width = 0;
  for (size_t i = 0; i < text.size();) width += is_wide(utf8::next_code_point(text, i)) ? 2 : 1;
  return width;
}

// The longest prefix of `text` that fits in `max_width` columns, never splitting a character.
std::string prefix_within(std::string_view text, size_t max_width) {
  size_t width = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t next = i;
    const size_t char_width = is_wide(utf8::next_code_point(text, next)) ? 2 : 1;
    if (width + char_width > max_width) break;
    width += char_width;
    i = next;
  }
  return std::string(text.substr(0, i));
}

// `text` cut to `max_width` columns, "..." marking the cut.
std::string fit(const std::string& text, size_t max_width) {
  if (display_width(text) <= max_width) return text;
  if (max_width <= 3) return prefix_within(text, max_width);
  return prefix_within(text, max_width - 3) + "...";
}

// Multi-line text (a runner's stderr tail) as one line of at most `max_width` columns: the first
// line says how the attempt ended ("exit code 1: ..."), the last is where a stack trace names the
// error, so both are kept and the middle is elided.
std::string one_line(const std::string& text, size_t max_width) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= text.size()) {
    const auto end = text.find_first_of("\r\n", start);
    std::string line =
        text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (line.find_first_not_of(" \t") != std::string::npos) lines.push_back(std::move(line));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (lines.empty()) return "";
  if (lines.size() == 1) return fit(lines.front(), max_width);
  const std::string gap = " ... ";
  const auto last_start = lines.back().find_first_not_of(" \t");
  const std::string last = fit(lines.back().substr(last_start), max_width / 2);
  const size_t room = max_width - std::min(max_width, gap.size() + display_width(last));
  return fit(lines.front(), room) + gap + last;
}

// --- Campaign counts -----------------------------------------------------------------------

struct Counts {
  int64_t per_state[std::size(kShardStates)] = {};
  int64_t total = 0;
  int64_t done = 0;  // shards in a final state
  double progress = 0;
};

Counts counts_of(const json& campaign) {
  Counts counts;
  const json* shards = find_field(campaign, "shards");
  int64_t sum = 0;
  for (size_t i = 0; i < std::size(kShardStates); ++i) {
    counts.per_state[i] =
        shards != nullptr ? integer_field(*shards, kShardStates[i]).value_or(0) : 0;
    sum += counts.per_state[i];
  }
  counts.done = counts.per_state[0] + counts.per_state[1] + counts.per_state[4];
  counts.total = integer_field(campaign, "total").value_or(sum);
  const auto progress = number_field(campaign, "progress");
  if (progress) {
    counts.progress = *progress;
  } else if (counts.total > 0) {
    counts.progress = static_cast<double>(counts.done) / static_cast<double>(counts.total);
  }
  counts.progress = std::clamp(counts.progress, 0.0, 1.0);
  return counts;
}

std::string state_counts_text(const Counts& counts, bool skip_zero_cancelled) {
  std::string text;
  for (size_t i = 0; i < std::size(kShardStates); ++i) {
    const bool cancelled = i == 4;
    if (cancelled && skip_zero_cancelled && counts.per_state[i] == 0) continue;
    if (!text.empty()) text += "  ";
    text += std::string(kShardStates[i]) + " " + std::to_string(counts.per_state[i]);
  }
  return text;
}

std::optional<double> eta_of(const json& campaign) {
  return number_field(campaign, "eta_s");
}

std::optional<std::string> unschedulable_of(const json& campaign) {
  const json* reason = find_field(campaign, "unschedulable");
  if (reason == nullptr || reason->is_null()) return std::nullopt;
  if (reason->is_string()) {
    if (reason->get<std::string>().empty()) return std::nullopt;
    return reason->get<std::string>();
  }
  if (reason->is_boolean()) {
    if (!reason->get<bool>()) return std::nullopt;
    return std::string("yes");
  }
  return reason->dump();
}

// --- Leaderboard ---------------------------------------------------------------------------

struct Cell {
  std::optional<double> value;
  std::string raw;  // the server's number as JSON text, full precision
  bool incomplete = false;
  std::optional<double> stderr_value;  // shown as "value ± stderr" when the server sends one
};

struct LeaderboardRow {
  std::optional<int64_t> rank;
  std::string model;
  Cell average;
  std::optional<int64_t> firsts;
  std::vector<Cell> scores;  // one per benchmark, in the campaign's order
  std::optional<std::array<int64_t, 2>> rank_interval;
};

std::optional<double> finite_number_at(const json& object, const char* key) {
  const json* value = find_field(object, key);
  if (value == nullptr || !value->is_number()) return std::nullopt;
  const double v = value->get<double>();
  return std::isfinite(v) ? std::optional(v) : std::nullopt;
}

std::optional<std::array<int64_t, 2>> rank_interval_at(const json& model) {
  const json* value = find_field(model, "rank_interval");
  if (value == nullptr || !value->is_array() || value->size() != 2) return std::nullopt;
  if (!(*value)[0].is_number_integer() || !(*value)[1].is_number_integer()) return std::nullopt;
  return std::array<int64_t, 2>{(*value)[0].get<int64_t>(), (*value)[1].get<int64_t>()};
}

Cell cell_at(const json& object, const char* key) {
  Cell cell;
  const json* value = find_field(object, key);
  if (value != nullptr && value->is_number()) {
    cell.value = value->get<double>();
    cell.raw = value->dump();
  }
  return cell;
}

std::vector<std::string> benchmarks_of(const json& results) {
  std::vector<std::string> names;
  for (const auto& name : array_field(results, "benchmarks")) {
    names.push_back(name.is_string() ? name.get<std::string>() : name.dump());
  }
  return names;
}

std::vector<LeaderboardRow> leaderboard_rows(const json& results,
                                             const std::vector<std::string>& benchmarks) {
  std::vector<LeaderboardRow> rows;
  for (const auto& model : array_field(results, "models")) {
    LeaderboardRow row;
    row.rank = integer_field(model, "rank");
    row.model = text_at(model, "name");
    row.average = cell_at(model, "average");
    row.average.stderr_value = finite_number_at(model, "average_stderr");
    row.firsts = integer_field(model, "firsts");
    row.rank_interval = rank_interval_at(model);
    const json* scores = find_field(model, "scores");
    for (const auto& benchmark : benchmarks) {
      Cell cell;
      const json* score = scores != nullptr ? find_field(*scores, benchmark) : nullptr;
      if (score != nullptr) {
        cell = cell_at(*score, "value");
        cell.stderr_value = finite_number_at(*score, "stderr");
        const json* complete = find_field(*score, "complete");
        cell.incomplete =
            cell.value && complete != nullptr && complete->is_boolean() && !complete->get<bool>();
      }
      row.scores.push_back(std::move(cell));
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

bool any_incomplete(const std::vector<LeaderboardRow>& rows) {
  for (const auto& row : rows) {
    for (const auto& cell : row.scores) {
      if (cell.incomplete) return true;
    }
  }
  return false;
}

// 4 decimals, "-" for none, `marker` after an incomplete value. Where a column has markers, the
// other cells get a space in its place so that right-aligned digits still line up.
std::string cell_text(const Cell& cell, const std::string& marker, bool column_has_marker) {
  std::string text = cell.value ? fixed(*cell.value, 4) : "-";
  if (cell.value && cell.stderr_value) text += " \u00b1 " + fixed(*cell.stderr_value, 4);
  if (cell.incomplete) return text + marker;
  if (column_has_marker) text += std::string(marker.size(), ' ');
  return text;
}

// Whether row i's rank interval overlaps another model's: their order is not settled by the data.
bool rank_overlaps(const std::vector<LeaderboardRow>& rows, size_t i) {
  if (!rows[i].rank_interval) return false;
  const auto& mine = *rows[i].rank_interval;
  for (size_t j = 0; j < rows.size(); ++j) {
    if (j == i || !rows[j].rank_interval) continue;
    const auto& other = *rows[j].rank_interval;
    if (mine[0] <= other[1] && other[0] <= mine[1]) return true;
  }
  return false;
}

bool any_rank_interval(const std::vector<LeaderboardRow>& rows) {
  return std::any_of(rows.begin(), rows.end(),
                     [](const LeaderboardRow& row) { return row.rank_interval.has_value(); });
}

// "1-3" and the overlap mark, or "-".
std::string rank_interval_text(const std::vector<LeaderboardRow>& rows, size_t i) {
  if (!rows[i].rank_interval) return "-";
  const auto& r = *rows[i].rank_interval;
  std::string text =
      r[0] == r[1] ? std::to_string(r[0]) : std::to_string(r[0]) + "-" + std::to_string(r[1]);
  return text + (rank_overlaps(rows, i) ? " ~" : "  ");
}

std::string results_table(const json& results) {
  const auto benchmarks = benchmarks_of(results);
  const auto rows = leaderboard_rows(results, benchmarks);
  std::string out = "leaderboard of " + text_at(results, "name") + " (" +
                    text_at(results, "campaign") + "), state " + text_at(results, "state") + "\n";
  if (rows.empty()) return out + "no models\n";

  Table table;
  table.headers = {"rank", "model", "average", "firsts"};
  table.right_align = {true, false, true, true};
  const bool with_ranks = any_rank_interval(rows);
  if (with_ranks) {
    table.headers.insert(table.headers.begin() + 1, "rank 95%");
    table.right_align.insert(table.right_align.begin() + 1, true);
  }
  for (const auto& benchmark : benchmarks) {
    table.headers.push_back(benchmark);
    table.right_align.push_back(true);
  }
  std::vector<bool> column_has_marker(benchmarks.size(), false);
  for (const auto& row : rows) {
    for (size_t b = 0; b < benchmarks.size(); ++b) {
      if (row.scores[b].incomplete) column_has_marker[b] = true;
    }
  }
  bool any_overlap = false;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    std::vector<std::string> cells = {integer_text(row.rank), row.model,
                                      cell_text(row.average, "", false), integer_text(row.firsts)};
    if (with_ranks) {
      cells.insert(cells.begin() + 1, rank_interval_text(rows, i));
      any_overlap = any_overlap || rank_overlaps(rows, i);
    }
    for (size_t b = 0; b < benchmarks.size(); ++b) {
      cells.push_back(cell_text(row.scores[b], "*", column_has_marker[b]));
    }
    table.rows.push_back(std::move(cells));
  }
  out += render_table(table);
  if (any_incomplete(rows)) out += "\n* " + std::string(kIncompleteNote) + "\n";
  if (any_overlap) out += "\n~ " + std::string(kOverlapNote) + "\n";
  return out;
}

std::string results_csv(const json& results) {
  const auto benchmarks = benchmarks_of(results);
  const auto rows = leaderboard_rows(results, benchmarks);
  std::string out = "rank,model,average,firsts";
  for (const auto& benchmark : benchmarks) out += "," + csv_field(benchmark);
  out += "\n";
  for (const auto& row : rows) {
    out += integer_text(row.rank, "") + "," + csv_field(row.model) + "," + row.average.raw + "," +
           integer_text(row.firsts, "");
    for (const auto& cell : row.scores) out += "," + cell.raw;
    out += "\n";
  }
  return out;
}

// Cell text for a GitHub table: '|' would end the cell, '*' and '_' would turn into emphasis.
std::string markdown_escape(const std::string& text) {
  std::string escaped;
  for (const char c : text) {
    if (c == '|' || c == '\\' || c == '*' || c == '_' || c == '`') escaped += '\\';
    if (c == '\n' || c == '\r') {
      escaped += ' ';
      continue;
    }
    escaped += c;
  }
  return escaped;
}

std::string results_markdown(const json& results) {
  const auto benchmarks = benchmarks_of(results);
  const auto rows = leaderboard_rows(results, benchmarks);
  std::string out = "| rank | model | average | firsts |";
  std::string rule = "| ---: | --- | ---: | ---: |";
  for (const auto& benchmark : benchmarks) {
    out += " " + markdown_escape(benchmark) + " |";
    rule += " ---: |";
  }
  out += "\n" + rule + "\n";
  for (const auto& row : rows) {
    out += "| " + integer_text(row.rank) + " | " + markdown_escape(row.model) + " | " +
           cell_text(row.average, "", false) + " | " + integer_text(row.firsts) + " |";
    for (const auto& cell : row.scores) out += " " + cell_text(cell, "\\*", false) + " |";
    out += "\n";
  }
  if (any_incomplete(rows)) out += "\n\\* " + std::string(kIncompleteNote) + "\n";
  return out;
}

// --- Workers -------------------------------------------------------------------------------

std::string gpus_text(const json& worker) {
  const json* gpus = find_field(worker, "gpus");
  if (gpus == nullptr || gpus->is_null()) return "-";
  if (gpus->is_string()) return gpus->get<std::string>().empty() ? "-" : gpus->get<std::string>();
  if (!gpus->is_array() || gpus->empty()) return "-";
  std::string text;
  for (const auto& gpu : *gpus) {
    if (!text.empty()) text += ",";
    if (gpu.is_object()) {
      text += text_at(gpu, "index", "?");
    } else {
      text += gpu.is_string() ? gpu.get<std::string>() : gpu.dump();
    }
  }
  // Worker GPUs are usually one model; name it once.
  const json& first = gpus->front();
  if (first.is_object() && find_field(first, "name") != nullptr)
    text += " (" + text_at(first, "name") + ")";
  return text;
}

std::string labels_text(const json& worker) {
  const json* labels = find_field(worker, "labels");
  if (labels == nullptr || !labels->is_object() || labels->empty()) return "-";
  std::string text;
  for (const auto& [key, value] : labels->items()) {
    if (!text.empty()) text += ",";
    text += key + "=" + (value.is_string() ? value.get<std::string>() : value.dump());
  }
  return text;
}

// `running` is the number of running shards, or the list of them.
int64_t running_of(const json& worker) {
  const json* running = find_field(worker, "running");
  if (running == nullptr) return 0;
  if (running->is_array()) return static_cast<int64_t>(running->size());
  return integer_field(worker, "running").value_or(0);
}

}  // namespace

Result<ResultsFormat> parse_results_format(std::string_view text) {
  if (text == "table") return ResultsFormat::kTable;
  if (text == "json") return ResultsFormat::kJson;
  if (text == "csv") return ResultsFormat::kCsv;
  if (text == "markdown") return ResultsFormat::kMarkdown;
  return make_error("--format: '" + std::string(text) +
                    "' is not one of table, json, csv, markdown");
}

std::string render_table(const Table& table) {
  std::vector<size_t> widths(table.headers.size(), 0);
  for (size_t c = 0; c < table.headers.size(); ++c) widths[c] = display_width(table.headers[c]);
  for (const auto& row : table.rows) {
    for (size_t c = 0; c < row.size() && c < widths.size(); ++c) {
      widths[c] = std::max(widths[c], display_width(row[c]));
    }
  }
  const auto render_row = [&](const std::vector<std::string>& cells) {
    std::string line;
    for (size_t c = 0; c < widths.size(); ++c) {
      const std::string& cell = c < cells.size() ? cells[c] : std::string();
      const bool right = c < table.right_align.size() && table.right_align[c];
      const std::string padding(widths[c] - std::min(widths[c], display_width(cell)), ' ');
      if (c > 0) line += "  ";
      line += right ? padding + cell : cell + padding;
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    return line + "\n";
  };
  std::string out = render_row(table.headers);
  for (const auto& row : table.rows) out += render_row(row);
  return out;
}

std::string csv_field(std::string_view text) {
  if (text.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(text);
  std::string quoted = "\"";
  for (const char c : text) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

std::string format_duration(std::optional<double> seconds) {
  if (!seconds || !std::isfinite(*seconds) || *seconds < 0) return "-";
  const auto total = static_cast<int64_t>(std::llround(*seconds));
  char buffer[64];
  if (total < 60) {
    std::snprintf(buffer, sizeof buffer, "%llds", static_cast<long long>(total));
  } else if (total < 3600) {
    std::snprintf(buffer, sizeof buffer, "%lldm%02llds", static_cast<long long>(total / 60),
                  static_cast<long long>(total % 60));
  } else if (total < 86400) {
    std::snprintf(buffer, sizeof buffer, "%lldh%02lldm", static_cast<long long>(total / 3600),
                  static_cast<long long>(total % 3600 / 60));
  } else {
    std::snprintf(buffer, sizeof buffer, "%lldd%02lldh", static_cast<long long>(total / 86400),
                  static_cast<long long>(total % 86400 / 3600));
  }
  return buffer;
}

std::string format_results(const json& results, ResultsFormat format) {
  switch (format) {
    case ResultsFormat::kJson:
      return results.dump(2) + "\n";
    case ResultsFormat::kCsv:
      return results_csv(results);
    case ResultsFormat::kMarkdown:
      return results_markdown(results);
    case ResultsFormat::kTable:
      break;
  }
  return results_table(results);
}

std::string format_compare(const json& compare) {
  std::string out = "compare " + text_at(compare, "a") + " (a) with " + text_at(compare, "b") +
                    " (b) in " + text_at(compare, "campaign") +
                    ", paired on examples both scored\n";
  const json& list = array_field(compare, "benchmarks");
  if (list.empty()) return out + "no benchmarks\n";
  Table table;
  table.headers = {"benchmark", "n", "diff a-b", "stderr", "ci95", "test", "p", "p_holm"};
  table.right_align = {false, true, true, true, true, false, true, true};
  const auto number = [](const json& item, const char* key, int digits) {
    const auto v = finite_number_at(item, key);
    return v ? fixed(*v, digits) : std::string("-");
  };
  const auto p_text = [](const json& item, const char* key) {
    const auto v = finite_number_at(item, key);
    if (!v) return std::string("-");
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, *v != 0 && *v < 1e-4 ? "%.2e" : "%.4f", *v);
    return std::string(buffer);
  };
  for (const auto& item : list) {
    std::string ci = "-";
    if (const json* interval = find_field(item, "ci95");
        interval != nullptr && interval->is_array() && interval->size() == 2 &&
        (*interval)[0].is_number() && (*interval)[1].is_number()) {
      ci = "[" + fixed((*interval)[0].get<double>(), 4) + ", " +
           fixed((*interval)[1].get<double>(), 4) + "]";
    }
    table.rows.push_back({text_at(item, "benchmark"), integer_text(integer_field(item, "n")),
                          number(item, "diff", 4), number(item, "stderr", 4), ci,
                          text_at(item, "test"), p_text(item, "p_value"),
                          p_text(item, "p_adjusted")});
  }
  return out + render_table(table);
}

std::string format_campaign(const json& campaign) {
  const Counts counts = counts_of(campaign);
  Table table;
  table.headers = {"campaign", text_at(campaign, "id")};
  table.rows = {
      {"name", text_at(campaign, "name")},
      {"state", text_at(campaign, "state")},
      {"created", text_at(campaign, "created_at")},
      {"progress", percent(counts.progress) + "  " + std::to_string(counts.done) + "/" +
                       std::to_string(counts.total) + " shards done"},
      {"shards", state_counts_text(counts, false)},
      {"eta", format_duration(eta_of(campaign))},
  };
  if (const auto reason = unschedulable_of(campaign))
    table.rows.push_back({"unschedulable", *reason});
  // Served models: how many times each model's server was loaded, and where a model is not
  // placed for now (its server failed to start there again and again).
  if (const json* loads = find_field(campaign, "model_loads");
      loads != nullptr && loads->is_object()) {
    std::string text;
    for (const auto& [model, count] : loads->items()) {
      text += (text.empty() ? "" : ", ") + model + " " + count.dump();
    }
    if (!text.empty()) table.rows.push_back({"model loads", text});
  }
  if (const json* held = find_field(campaign, "not_placed"); held != nullptr && held->is_array()) {
    for (const auto& item : *held) {
      if (!item.is_object()) continue;
      std::string text = text_at(item, "model") + " on " + text_at(item, "worker") + ": " +
                         text_at(item, "reason");
      const auto failures = integer_field(item, "failures");
      const json* until = find_field(item, "until");
      if (failures || (until != nullptr && until->is_string())) {
        text += " (";
        if (failures) {
          text += std::to_string(*failures) + " failed start" + (*failures == 1 ? "" : "s");
        }
        if (until != nullptr && until->is_string()) {
          text += std::string(failures ? ", " : "") + "retried after " + until->get<std::string>();
        }
        text += ")";
      }
      table.rows.push_back({"not placed", text});
    }
  }
  return render_table(table);
}

std::string format_campaigns(const json& campaigns) {
  const json& list = array_field(campaigns, "campaigns");
  if (list.empty()) return "no campaigns\n";
  bool any_note = false;
  for (const auto& campaign : list) any_note = any_note || unschedulable_of(campaign).has_value();

  Table table;
  table.headers = {"id", "name", "state", "progress", "done/total", "failed", "eta", "created"};
  table.right_align = {false, false, false, true, true, true, true, false};
  if (any_note) table.headers.push_back("note");
  for (const auto& campaign : list) {
    const Counts counts = counts_of(campaign);
    std::vector<std::string> row = {
        text_at(campaign, "id"),
        text_at(campaign, "name"),
        text_at(campaign, "state"),
        percent(counts.progress),
        std::to_string(counts.done) + "/" + std::to_string(counts.total),
        std::to_string(counts.per_state[1]),
        format_duration(eta_of(campaign)),
        text_at(campaign, "created_at")};
    if (any_note) {
      const auto reason = unschedulable_of(campaign);
      row.push_back(reason ? "unschedulable: " + *reason : "");
    }
    table.rows.push_back(std::move(row));
  }
  return render_table(table);
}

namespace {

// The attempts that ended without counting, by outcome in the order they first happened:
// "2 failed, 1 lost, 1 stale". A stale attempt (a late result that was not counted) shows here.
std::string history_text(const json& shard) {
  const auto it = shard.find("history");
  if (it == shard.end() || !it->is_array() || it->empty()) return "-";
  std::vector<std::pair<std::string, int>> counts;
  for (const auto& attempt : *it) {
    const std::string outcome = text_at(attempt, "outcome", "?");
    auto found = std::find_if(counts.begin(), counts.end(),
                              [&](const auto& entry) { return entry.first == outcome; });
    if (found == counts.end()) {
      counts.emplace_back(outcome, 1);
    } else {
      ++found->second;
    }
  }
  std::string out;
  for (const auto& [outcome, n] : counts) {
    if (!out.empty()) out += ", ";
    out += std::to_string(n) + " " + outcome;
  }
  return out;
}

}  // namespace

std::string format_shards(const json& shards) {
  const json& list = array_field(shards, "shards");
  if (list.empty()) return "no shards\n";
  Table table;
  table.headers = {"model",    "benchmark", "index",  "range",      "state",
                   "attempts", "earlier",   "worker", "duration_s", "last_error"};
  table.right_align = {false, false, true, true, false, true, false, false, true, false};
  for (const auto& shard : list) {
    const auto duration = number_field(shard, "duration_s");
    const std::string worker = text_at(shard, "worker");
    table.rows.push_back({text_at(shard, "model"), text_at(shard, "benchmark"),
                          integer_text(integer_field(shard, "index")),
                          integer_text(integer_field(shard, "start")) + "-" +
                              integer_text(integer_field(shard, "end")),
                          text_at(shard, "state"), integer_text(integer_field(shard, "attempts")),
                          history_text(shard), worker.empty() ? "-" : worker,
                          duration ? fixed(*duration, 1) : "-",
                          one_line(text_at(shard, "last_error", ""), kErrorCellChars)});
  }
  return render_table(table);
}

std::string format_workers(const json& workers) {
  const json& list = array_field(workers, "workers");
  if (list.empty()) return "no workers\n";
  Table table;
  table.headers = {"name", "state", "slots", "gpus", "labels", "heartbeat", "shards"};
  table.right_align = {false, false, true, false, false, true, true};
  for (const auto& worker : list) {
    const int64_t running = running_of(worker);
    const auto heartbeat = number_field(worker, "last_heartbeat_s");
    table.rows.push_back(
        {text_at(worker, "name"), text_at(worker, "state"),
         std::to_string(running) + "/" + integer_text(integer_field(worker, "slots")),
         gpus_text(worker), labels_text(worker), heartbeat ? fixed(*heartbeat, 1) + "s ago" : "-",
         std::to_string(running)});
  }
  return render_table(table);
}

std::string format_audit(const json& audit) {
  const json& list = array_field(audit, "events");
  if (list.empty()) return "no audit events\n";
  Table table;
  table.headers = {"seq", "at", "who", "action", "campaign", "detail"};
  table.right_align = {true, false, false, false, false, false};
  for (const auto& event : list) {
    const json* principal = find_field(event, "principal");
    const std::string who = principal != nullptr && principal->is_string()
                                ? principal->get<std::string>()
                                : "(" + text_at(event, "address") + ")";
    table.rows.push_back({integer_text(integer_field(event, "seq")), text_at(event, "at"), who,
                          text_at(event, "action"), text_at(event, "campaign"),
                          one_line(text_at(event, "detail", ""), kErrorBodyChars)});
  }
  return render_table(table);
}

std::string format_watch_line(const json& campaign) {
  const Counts counts = counts_of(campaign);
  const auto filled =
      static_cast<size_t>(std::floor(counts.progress * static_cast<double>(kProgressBarWidth)));
  std::string line = "[" + std::string(filled, '#') + std::string(kProgressBarWidth - filled, '-') +
                     "]  " + std::to_string(counts.done) + "/" + std::to_string(counts.total) +
                     "  " + percent(counts.progress) + "  " + state_counts_text(counts, true) +
                     "  ETA " + format_duration(eta_of(campaign));
  if (const auto reason = unschedulable_of(campaign)) line += "  unschedulable: " + *reason;
  return line;
}

std::string http_error_message(int status, std::string_view body) {
  const auto parsed = parse_json_bounded(body);
  const json* error = parsed ? find_field(*parsed, "error") : nullptr;
  std::string message;
  if (error != nullptr && error->is_string()) {
    message = error->get<std::string>();
  } else {
    message = "server answered HTTP " + std::to_string(status);
    const std::string first = one_line(std::string(body), kErrorBodyChars);
    if (!first.empty()) message += ": " + first;
  }
  if (status == 401) {
    message =
        "not authenticated (HTTP 401): " + message + "; pass --token TOKEN or set EVALD_TOKEN";
  } else if (status == 403) {
    message = "permission denied (HTTP 403): " + message +
              "; ask an administrator for a token with that role";
  }
  return message;
}

bool watch_counts_changed(const json& before, const json& after) {
  const json* before_shards = find_field(before, "shards");
  const json* after_shards = find_field(after, "shards");
  const bool shards_differ = (before_shards == nullptr) != (after_shards == nullptr) ||
                             (before_shards != nullptr && *before_shards != *after_shards);
  return shards_differ || text_at(before, "state") != text_at(after, "state") ||
         unschedulable_of(before) != unschedulable_of(after);
}

}  // namespace evald::evalctl
