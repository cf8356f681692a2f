// `evalctl report`: one self-contained HTML page of a campaign's results (docs/results.md,
// "The report"): the leaderboard with standard errors and rank intervals, every benchmark's
// scores with 95% error bars drawn as inline SVG, the rank intervals as a chart, and a summary of
// the provenance records when the server has them. No scripts, fonts, images or styles are
// fetched: the file reads the same offline, attached to an e-mail or archived with the results.
//
// A pure function of the server's JSON (untrusted: every text is HTML-escaped, a missing or
// mistyped field shows as "-"), so it is unit tested without a server.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace evald::evalctl {

// `results`: GET /v1/campaigns/{id}/results. `provenance`: GET .../provenance, or null when the
// server has none (the page says so); `provenance_note` replaces the summary when non-empty (why
// it could not be read). `generated_at`: shown in the footer.
std::string render_report_html(const nlohmann::json& results, const nlohmann::json& provenance,
                               const std::string& provenance_note, const std::string& generated_at);

// Text with &, <, >, " and ' escaped for HTML element content and attribute values.
std::string html_escape(const std::string& text);

}  // namespace evald::evalctl
