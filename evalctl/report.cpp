// The HTML report (report.hpp). Layout: a header, the leaderboard table, one error-bar chart per
// benchmark, the rank-interval chart, the provenance summary, a footer. Charts are SVG drawn in
// the page's own coordinates; each chart's x axis spans the smallest and largest 95% bound
// shown in it (padded, rounded to a tick step), so short intervals stay visible.
#include "evalctl/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <vector>

namespace evald::evalctl {
namespace {

using nlohmann::json;

const json* field(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

std::string text(const json& object, const char* key, const std::string& fallback = "-") {
  const json* v = field(object, key);
  if (v == nullptr || v->is_null()) return fallback;
  return v->is_string() ? v->get<std::string>()
                        : v->dump(-1, ' ', false, json::error_handler_t::replace);
}

std::optional<double> number(const json& object, const char* key) {
  const json* v = field(object, key);
  if (v == nullptr || !v->is_number()) return std::nullopt;
  const double d = v->get<double>();
  return std::isfinite(d) ? std::optional(d) : std::nullopt;
}

std::optional<std::array<double, 2>> pair_of(const json& object, const char* key) {
  const json* v = field(object, key);
  if (v == nullptr || !v->is_array() || v->size() != 2 || !(*v)[0].is_number() ||
      !(*v)[1].is_number()) {
    return std::nullopt;
  }
  const double a = (*v)[0].get<double>();
  const double b = (*v)[1].get<double>();
  if (!std::isfinite(a) || !std::isfinite(b)) return std::nullopt;
  return std::array<double, 2>{a, b};
}

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

std::string value_pm(const std::optional<double>& value, const std::optional<double>& se) {
  if (!value) return "-";
  std::string out = fixed(*value, 4);
  if (se) out += " <span class=\"se\">&plusmn; " + fixed(*se, 4) + "</span>";
  return out;
}

struct Score {
  std::optional<double> value;
  std::optional<double> stderr_value;
  std::optional<std::array<double, 2>> ci95;
  std::optional<int64_t> n;
  bool complete = true;
};

struct Model {
  std::string name;
  std::string rank;
  std::optional<double> average;
  std::optional<double> average_stderr;
  std::optional<std::array<double, 2>> rank_interval;
  std::vector<Score> scores;
};

std::vector<std::string> benchmark_names(const json& results) {
  std::vector<std::string> names;
  if (const json* list = field(results, "benchmarks"); list != nullptr && list->is_array()) {
    for (const auto& name : *list)
      names.push_back(name.is_string() ? name.get<std::string>() : "?");
  }
  return names;
}

std::vector<Model> models_of(const json& results, const std::vector<std::string>& benchmarks) {
  std::vector<Model> models;
  const json* list = field(results, "models");
  if (list == nullptr || !list->is_array()) return models;
  for (const auto& m : *list) {
    Model model;
    model.name = text(m, "name", "?");
    model.rank = text(m, "rank");
    model.average = number(m, "average");
    model.average_stderr = number(m, "average_stderr");
    model.rank_interval = pair_of(m, "rank_interval");
    const json* scores = field(m, "scores");
    for (const auto& b : benchmarks) {
      Score score;
      const json* s = scores != nullptr ? field(*scores, b.c_str()) : nullptr;
      if (s != nullptr) {
        score.value = number(*s, "value");
        score.stderr_value = number(*s, "stderr");
        score.ci95 = pair_of(*s, "ci95");
        if (const auto n = number(*s, "n")) score.n = static_cast<int64_t>(*n);
        if (const json* c = field(*s, "complete"); c != nullptr && c->is_boolean()) {
          score.complete = c->get<bool>();
        }
      }
      model.scores.push_back(score);
    }
    models.push_back(std::move(model));
  }
  return models;
}

// A "nice" tick step (1, 2 or 5 times a power of ten) that cuts `span` into about 5 parts.
double tick_step(double span) {
  if (!(span > 0)) return 1;
  const double raw = span / 5;
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * power) return m * power;
  }
  return 10 * power;
}

std::string num(double v) {
  return fixed(v, 1);
}

constexpr double kChartWidth = 760;
constexpr double kLabelWidth = 190;
constexpr double kRowHeight = 26;
constexpr const char* kPalette[] = {"#1f6feb", "#d1242f", "#1a7f37", "#9a6700",
                                    "#8250df", "#bf3989", "#0a7c86", "#6e7781"};

// One benchmark: a row per model, a dot at its score and a bar over its 95% interval.
std::string benchmark_chart(const std::string& benchmark, size_t b,
                            const std::vector<Model>& models) {
  double low = INFINITY;
  double high = -INFINITY;
  for (const auto& m : models) {
    const Score& s = m.scores[b];
    if (!s.value) continue;
    low = std::min({low, *s.value, s.ci95 ? (*s.ci95)[0] : *s.value});
    high = std::max({high, *s.value, s.ci95 ? (*s.ci95)[1] : *s.value});
  }
  std::string svg;
  if (!std::isfinite(low)) {
    return "<p class=\"none\">No scores for " + html_escape(benchmark) + " yet.</p>\n";
  }
  if (high - low < 1e-9) {
    low -= 0.05;
    high += 0.05;
  }
  const double step = tick_step(high - low);
  low = std::floor(low / step) * step;
  high = std::ceil(high / step) * step;
  const double plot_left = kLabelWidth;
  const double plot_right = kChartWidth - 20;
  const auto x = [&](double v) {
    return plot_left + (v - low) / (high - low) * (plot_right - plot_left);
  };
  const double height = 30 + kRowHeight * static_cast<double>(models.size()) + 24;
  svg += "<svg role=\"img\" aria-label=\"" + html_escape(benchmark) +
         " scores with 95% intervals\" width=\"" + num(kChartWidth) + "\" height=\"" + num(height) +
         "\" viewBox=\"0 0 " + num(kChartWidth) + " " + num(height) +
         "\" xmlns=\"http://www.w3.org/2000/svg\">\n";
  const double axis_y = 30 + kRowHeight * static_cast<double>(models.size());
  for (double t = low; t <= high + step / 2; t += step) {
    svg += "<line x1=\"" + num(x(t)) + "\" y1=\"20\" x2=\"" + num(x(t)) + "\" y2=\"" + num(axis_y) +
           "\" stroke=\"#e5e7eb\"/>";
    svg += "<text x=\"" + num(x(t)) + "\" y=\"" + num(axis_y + 16) +
           "\" font-size=\"11\" text-anchor=\"middle\" fill=\"#57606a\">" +
           fixed(t, step < 0.01 ? 3 : 2) + "</text>\n";
  }
  for (size_t i = 0; i < models.size(); ++i) {
    const Score& s = models[i].scores[b];
    const double y = 30 + kRowHeight * static_cast<double>(i) + kRowHeight / 2;
    const char* colour = kPalette[i % std::size(kPalette)];
    svg += "<text x=\"" + num(kLabelWidth - 10) + "\" y=\"" + num(y + 4) +
           "\" font-size=\"12\" text-anchor=\"end\" fill=\"#24292f\">" +
           html_escape(models[i].name) + "</text>";
    if (!s.value) {
      svg += "<text x=\"" + num(plot_left + 4) + "\" y=\"" + num(y + 4) +
             "\" font-size=\"11\" fill=\"#8c959f\">no score</text>\n";
      continue;
    }
    if (s.ci95) {
      const double x0 = x((*s.ci95)[0]);
      const double x1 = x((*s.ci95)[1]);
      svg += "<line x1=\"" + num(x0) + "\" y1=\"" + num(y) + "\" x2=\"" + num(x1) + "\" y2=\"" +
             num(y) + "\" stroke=\"" + colour + "\" stroke-width=\"2\"/>";
      svg += "<line x1=\"" + num(x0) + "\" y1=\"" + num(y - 6) + "\" x2=\"" + num(x0) + "\" y2=\"" +
             num(y + 6) + "\" stroke=\"" + colour + "\" stroke-width=\"2\"/>";
      svg += "<line x1=\"" + num(x1) + "\" y1=\"" + num(y - 6) + "\" x2=\"" + num(x1) + "\" y2=\"" +
             num(y + 6) + "\" stroke=\"" + colour + "\" stroke-width=\"2\"/>";
    }
    svg += "<circle cx=\"" + num(x(*s.value)) + "\" cy=\"" + num(y) + "\" r=\"5\" fill=\"" +
           colour + "\"><title>" + html_escape(models[i].name) + ": " + fixed(*s.value, 4) +
           (s.ci95 ? " [" + fixed((*s.ci95)[0], 4) + ", " + fixed((*s.ci95)[1], 4) + "]" : "") +
           "</title></circle>\n";
  }
  svg += "</svg>\n";
  return svg;
}

// Every model's rank interval as a bar over the rank axis (1 on the left).
std::string rank_chart(const std::vector<Model>& models) {
  bool any = false;
  for (const auto& m : models) any = any || m.rank_interval.has_value();
  if (!any) {
    return "<p class=\"none\">No rank intervals: the runners sent no per-example scores.</p>\n";
  }
  const double worst = static_cast<double>(std::max<size_t>(models.size(), 2));
  const double plot_left = kLabelWidth;
  const double plot_right = kChartWidth - 20;
  const auto x = [&](double rank) {
    return plot_left + (rank - 1) / (worst - 1) * (plot_right - plot_left);
  };
  const double height = 30 + kRowHeight * static_cast<double>(models.size()) + 24;
  std::string svg = "<svg role=\"img\" aria-label=\"rank intervals\" width=\"" + num(kChartWidth) +
                    "\" height=\"" + num(height) + "\" viewBox=\"0 0 " + num(kChartWidth) + " " +
                    num(height) + "\" xmlns=\"http://www.w3.org/2000/svg\">\n";
  const double axis_y = 30 + kRowHeight * static_cast<double>(models.size());
  for (int r = 1; r <= static_cast<int>(worst); ++r) {
    svg += "<line x1=\"" + num(x(r)) + "\" y1=\"20\" x2=\"" + num(x(r)) + "\" y2=\"" + num(axis_y) +
           "\" stroke=\"#e5e7eb\"/><text x=\"" + num(x(r)) + "\" y=\"" + num(axis_y + 16) +
           "\" font-size=\"11\" text-anchor=\"middle\" fill=\"#57606a\">" + std::to_string(r) +
           "</text>\n";
  }
  for (size_t i = 0; i < models.size(); ++i) {
    const double y = 30 + kRowHeight * static_cast<double>(i) + kRowHeight / 2;
    const char* colour = kPalette[i % std::size(kPalette)];
    svg += "<text x=\"" + num(kLabelWidth - 10) + "\" y=\"" + num(y + 4) +
           "\" font-size=\"12\" text-anchor=\"end\" fill=\"#24292f\">" +
           html_escape(models[i].name) + "</text>";
    if (!models[i].rank_interval) {
      svg += "<text x=\"" + num(plot_left + 4) + "\" y=\"" + num(y + 4) +
             "\" font-size=\"11\" fill=\"#8c959f\">no interval (no per-example scores)</text>\n";
      continue;
    }
    const auto& r = *models[i].rank_interval;
    svg += "<rect x=\"" + num(x(r[0]) - 6) + "\" y=\"" + num(y - 7) + "\" width=\"" +
           num(x(r[1]) - x(r[0]) + 12) + "\" height=\"14\" rx=\"7\" fill=\"" + colour +
           "\" fill-opacity=\"0.75\"><title>" + html_escape(models[i].name) + ": ranks " +
           fixed(r[0], 0) + " to " + fixed(r[1], 0) + "</title></rect>\n";
  }
  svg += "</svg>\n";
  return svg;
}

std::string provenance_summary(const json& provenance, const std::string& note) {
  if (!note.empty()) return "<p class=\"none\">" + html_escape(note) + "</p>\n";
  const json* records = field(provenance, "records");
  if (records == nullptr || !records->is_array() || records->empty()) {
    return "<p class=\"none\">no provenance recorded</p>\n";
  }
  std::set<std::string> workers;
  std::set<std::string> hosts;
  std::set<std::string> versions;
  std::set<std::string> specs;
  std::map<std::string, int64_t> gpus;  // name -> results run with it
  std::set<std::string> gpu_uuids;
  std::map<std::string, std::set<std::string>> runners;  // command -> executable hashes
  std::map<std::string, std::set<std::string>> data;     // benchmark -> data hashes
  std::string first;
  std::string last;
  for (const auto& r : *records) {
    workers.insert(text(r, "worker"));
    hosts.insert(text(r, "host"));
    versions.insert(text(r, "evald_version"));
    specs.insert(text(r, "spec_sha256"));
    if (const json* g = field(r, "gpus"); g != nullptr && g->is_array()) {
      for (const auto& gpu : *g) {
        ++gpus[text(gpu, "name")];
        gpu_uuids.insert(text(gpu, "uuid"));
      }
    }
    if (const json* runner = field(r, "runner"); runner != nullptr) {
      runners[text(*runner, "command")].insert(text(*runner, "executable_sha256"));
    }
    const std::string data_hash = text(r, "data_sha256", "");
    if (!data_hash.empty()) data[text(r, "benchmark")].insert(data_hash);
    const std::string started = text(r, "started_at", "");
    const std::string ended = text(r, "ended_at", "");
    if (!started.empty() && (first.empty() || started < first)) first = started;
    if (!ended.empty() && (last.empty() || ended > last)) last = ended;
  }
  const auto joined = [](const std::set<std::string>& items) {
    std::string out;
    for (const auto& item : items) out += (out.empty() ? "" : ", ") + html_escape(item);
    return out.empty() ? std::string("-") : out;
  };
  std::string html = "<table class=\"prov\">\n";
  html += "<tr><th>counted results</th><td>" + std::to_string(records->size()) + "</td></tr>\n";
  html += "<tr><th>evaluated</th><td>" + html_escape(first.empty() ? "-" : first) + " to " +
          html_escape(last.empty() ? "-" : last) + "</td></tr>\n";
  html += "<tr><th>workers</th><td>" + std::to_string(workers.size()) + ": " + joined(workers) +
          "</td></tr>\n";
  html += "<tr><th>hosts</th><td>" + joined(hosts) + "</td></tr>\n";
  std::string gpu_text;
  for (const auto& [name, count] : gpus) {
    gpu_text += (gpu_text.empty() ? "" : ", ") + html_escape(name) + " (" + std::to_string(count) +
                " results)";
  }
  html += "<tr><th>GPUs</th><td>" + (gpu_text.empty() ? std::string("none") : gpu_text) + "; " +
          std::to_string(gpu_uuids.size()) + " distinct devices</td></tr>\n";
  for (const auto& [command, hashes] : runners) {
    html += "<tr><th>runner</th><td><code>" + html_escape(command) + "</code><br>sha256 " +
            joined(hashes) + "</td></tr>\n";
  }
  for (const auto& [benchmark, hashes] : data) {
    html += "<tr><th>data of " + html_escape(benchmark) + "</th><td>sha256 " + joined(hashes) +
            (hashes.size() > 1 ? " <strong>(more than one: the data changed during the "
                                 "campaign)</strong>"
                               : "") +
            "</td></tr>\n";
  }
  html += "<tr><th>spec sha256</th><td>" + joined(specs) + "</td></tr>\n";
  html += "<tr><th>evald version</th><td>" + joined(versions) + "</td></tr>\n";
  return html + "</table>\n";
}

constexpr const char* kStyle = R"CSS(
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#24292f;margin:32px auto;max-width:900px;padding:0 16px;line-height:1.45}
h1{font-size:26px;margin-bottom:4px}h2{font-size:19px;margin-top:36px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:22px 0 4px}.meta{color:#57606a;font-size:14px}
table{border-collapse:collapse;font-size:13px;margin-top:8px}th,td{padding:5px 9px;border-bottom:1px solid #d8dee4;text-align:right;vertical-align:top}
th{background:#f6f8fa}td.model,th.model{text-align:left;font-weight:600}.se{color:#57606a;font-size:12px}
.overlap{color:#9a6700}.none{color:#57606a;font-style:italic}table.prov th,table.prov td{text-align:left}
.note{color:#57606a;font-size:12px;margin-top:6px}footer{margin-top:40px;color:#8c959f;font-size:12px}
)CSS";

}  // namespace

std::string html_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string render_report_html(const json& results, const json& provenance,
                               const std::string& provenance_note,
                               const std::string& generated_at) {
  const auto benchmarks = benchmark_names(results);
  const auto models = models_of(results, benchmarks);
  const std::string name = text(results, "name");
  const std::string id = text(results, "campaign");

  std::string html = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  // No network: nothing in this page may load anything (the policy says so to the browser too).
  html +=
      "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
      "style-src 'unsafe-inline'; img-src data:\">\n";
  html += "<title>" + html_escape(name) + " (" + html_escape(id) + ") - evald report</title>\n";
  html += "<style>" + std::string(kStyle) + "</style>\n</head>\n<body>\n";
  html += "<h1>" + html_escape(name) + "</h1>\n<div class=\"meta\">campaign " + html_escape(id) +
          ", state " + html_escape(text(results, "state")) + ", " + std::to_string(models.size()) +
          " models, " + std::to_string(benchmarks.size()) + " benchmarks</div>\n";

  html +=
      "<h2>Leaderboard</h2>\n<table>\n<tr><th>rank</th><th>rank 95%</th>"
      "<th class=\"model\">model</th><th>average</th>";
  for (const auto& b : benchmarks) html += "<th>" + html_escape(b) + "</th>";
  html += "</tr>\n";
  bool any_overlap = false;
  for (size_t i = 0; i < models.size(); ++i) {
    const Model& m = models[i];
    bool overlap = false;
    for (size_t j = 0; j < models.size() && m.rank_interval; ++j) {
      if (j == i || !models[j].rank_interval) continue;
      const auto& a = *m.rank_interval;
      const auto& o = *models[j].rank_interval;
      overlap = overlap || (a[0] <= o[1] && o[0] <= a[1]);
    }
    any_overlap = any_overlap || overlap;
    std::string interval = "-";
    if (m.rank_interval) {
      const auto& r = *m.rank_interval;
      interval = r[0] == r[1] ? fixed(r[0], 0) : fixed(r[0], 0) + "&ndash;" + fixed(r[1], 0);
      if (overlap) interval = "<span class=\"overlap\">" + interval + " ~</span>";
    }
    html += "<tr><td>" + html_escape(m.rank) + "</td><td>" + interval +
            "</td><td class=\"model\">" + html_escape(m.name) + "</td><td>" +
            value_pm(m.average, m.average_stderr) + "</td>";
    for (const auto& s : m.scores) {
      html += "<td>" + value_pm(s.value, s.stderr_value) + (s.complete ? "" : "*") + "</td>";
    }
    html += "</tr>\n";
  }
  html +=
      "</table>\n<p class=\"note\">Scores are value &plusmn; standard error; the 95% interval "
      "is value &plusmn; 1.96 standard errors. Rank 95%: the 2.5th to 97.5th percentile of "
      "the model's rank over 1000 bootstrap resamples of the examples.";
  if (any_overlap) html += " ~ marks models whose rank intervals overlap another model's.";
  html += " * marks a score from an incomplete benchmark.</p>\n";

  html += "<h2>Scores with 95% intervals</h2>\n";
  for (size_t b = 0; b < benchmarks.size(); ++b) {
    html +=
        "<h3>" + html_escape(benchmarks[b]) + "</h3>\n" + benchmark_chart(benchmarks[b], b, models);
  }
  html += "<h2>Rank intervals</h2>\n" + rank_chart(models);
  html += "<h2>Provenance</h2>\n" + provenance_summary(provenance, provenance_note);
  html += "<footer>Generated by evalctl report at " + html_escape(generated_at) +
          ". This file is self-contained: it loads nothing from the network.</footer>\n";
  html += "</body>\n</html>\n";
  return html;
}

}  // namespace evald::evalctl
