#include "evalctl/bundle.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <vector>

#include "common/cli_options.hpp"
#include "common/sha256.hpp"

namespace evald::evalctl {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string url_component(const std::string& text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (std::isalnum(byte) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += kHex[byte >> 4];
      out += kHex[byte & 0xF];
    }
  }
  return out;
}

// A name the server sends becomes a path component: only what a spec may name (letters, digits,
// '.', '_', '-'; not "." or ".."), so a misbehaving server cannot write outside DIR.
bool safe_path_component(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 128) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

class Bundle {
 public:
  explicit Bundle(fs::path dir) : dir_(std::move(dir)) {}

  Status write(const std::string& relative, const std::string& content) {
    const fs::path path = dir_ / relative;
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    if (ec) return make_error("cannot create " + path.parent_path().string() + ": " + ec.message());
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    file << content;
    file.close();
    if (!file) return make_error("cannot write " + path.string() + ": " + std::strerror(errno));
    manifest_.emplace_back(sha256_hex(content), relative);
    return Ok{};
  }

  // sha256sum's own format: "<hex>  <path>", one per line, sorted by path.
  Status write_manifest() {
    std::sort(manifest_.begin(), manifest_.end(),
              [](const auto& a, const auto& b) { return a.second < b.second; });
    std::string text;
    for (const auto& [digest, path] : manifest_) text += digest + "  " + path + "\n";
    const fs::path path = dir_ / "MANIFEST.sha256";
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    file << text;
    file.close();
    if (!file) return make_error("cannot write " + path.string() + ": " + std::strerror(errno));
    return Ok{};
  }

  size_t files() const { return manifest_.size(); }

 private:
  fs::path dir_;
  std::vector<std::pair<std::string, std::string>> manifest_;  // digest, relative path
};

int failed(std::ostream& err, const std::string& message) {
  err << "evalctl: " << message << "\n";
  return kExitFailure;
}

}  // namespace

int export_bundle(const ApiCall& call, const std::string& id, const fs::path& dir,
                  std::ostream& out, std::ostream& err) {
  const std::string base = "/v1/campaigns/" + url_component(id);
  auto campaign = call("GET", base, "");
  if (!campaign) return failed(err, campaign.error().message);
  if (!campaign->contains("spec") || !(*campaign)["spec"].is_object()) {
    return failed(err, "the server did not send the campaign's spec (an older coordinator?)");
  }
  auto results = call("GET", base + "/results", "");
  if (!results) return failed(err, results.error().message);
  auto provenance = call("GET", base + "/provenance", "");
  if (!provenance) return failed(err, provenance.error().message);
  if (!provenance->contains("records") || !(*provenance)["records"].is_array()) {
    return failed(err, "provenance answer has no records array");
  }

  Bundle bundle(dir);
  // Compact, as the coordinator hashes it: sha256(spec.json) is every record's spec_sha256.
  if (auto s = bundle.write("spec.json", (*campaign)["spec"].dump()); !s) {
    return failed(err, s.error().message);
  }
  if (auto s = bundle.write("results.json", results->dump(2) + "\n"); !s) {
    return failed(err, s.error().message);
  }
  std::string lines;
  for (const auto& record : (*provenance)["records"]) lines += record.dump() + "\n";
  if (auto s = bundle.write("provenance.jsonl", lines); !s) return failed(err, s.error().message);

  // Samples of every model x benchmark of the leaderboard.
  std::vector<std::string> models;
  std::vector<std::string> benchmarks;
  for (const auto& name : campaign->value("spec", json::object()).value("models", json::array())) {
    models.push_back(name.value("name", std::string{}));
  }
  for (const auto& name :
       campaign->value("spec", json::object()).value("benchmarks", json::array())) {
    benchmarks.push_back(name.value("name", std::string{}));
  }
  bool samples_served = true;
  for (const auto& model : models) {
    for (const auto& benchmark : benchmarks) {
      if (!samples_served) break;
      if (!safe_path_component(model) || !safe_path_component(benchmark)) {
        return failed(err, "refusing to write samples for model '" + model + "' benchmark '" +
                               benchmark + "': not a safe file name");
      }
      // The samples come in pages of whole shards; follow next_cursor to the end.
      std::string text;
      std::string cursor = "0";
      while (!cursor.empty()) {
        auto samples = call("GET",
                            base + "/samples?model=" + url_component(model) +
                                "&benchmark=" + url_component(benchmark) + "&cursor=" + cursor,
                            "");
        if (!samples && samples.error().message.starts_with("no route for ")) {
          // A coordinator from before per-example samples were served: the bundle is still
          // complete for everything else, and says so.
          err << "evalctl: export: the coordinator does not serve per-example samples; the "
                 "bundle has none\n";
          samples_served = false;
          break;
        }
        if (!samples) return failed(err, samples.error().message);
        for (const auto& sample : samples->value("samples", json::array())) {
          text += sample.dump() + "\n";
        }
        const json next = samples->value("next_cursor", json());
        cursor = next.is_number_unsigned() ? std::to_string(next.get<uint64_t>()) : "";
        if (next.is_number_integer() && !next.is_number_unsigned()) {
          cursor = std::to_string(next.get<int64_t>());
        }
      }
      if (!samples_served) break;
      if (auto s = bundle.write("samples/" + model + "/" + benchmark + ".jsonl", text); !s) {
        return failed(err, s.error().message);
      }
    }
  }
  if (auto s = bundle.write_manifest(); !s) return failed(err, s.error().message);
  out << "exported campaign " << id << " to " << dir.string() << ": " << bundle.files()
      << " files, " << (*provenance)["records"].size() << " provenance records; verify with: cd "
      << dir.string() << " && sha256sum -c MANIFEST.sha256\n";
  return kExitOk;
}

Result<std::map<std::string, double>> parse_scores_csv(const std::string& text) {
  std::map<std::string, double> scores;
  std::istringstream in(text);
  std::string line;
  size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    const auto comma = line.find(',');
    const std::string where = "line " + std::to_string(number);
    if (comma == std::string::npos || line.find(',', comma + 1) != std::string::npos) {
      return make_error(where + ": expected 'model,score', got '" + line + "'");
    }
    auto trim = [](std::string s) {
      const auto b = s.find_first_not_of(" \t");
      const auto e = s.find_last_not_of(" \t");
      return b == std::string::npos ? std::string{} : s.substr(b, e - b + 1);
    };
    const std::string model = trim(line.substr(0, comma));
    const std::string value = trim(line.substr(comma + 1));
    if (number == 1 && model == "model" && value == "score") continue;  // the header
    double score = 0;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), score);
    if (model.empty() || ec != std::errc{} || end != value.data() + value.size() ||
        !std::isfinite(score)) {
      return make_error(where + ": expected 'model,score' with a number, got '" + line + "'");
    }
    if (!scores.emplace(model, score).second) {
      return make_error(where + ": model '" + model + "' is listed twice");
    }
  }
  if (scores.empty()) return make_error("no scores in the file (expected 'model,score' lines)");
  return scores;
}

int import_scores(const ApiCall& call, const std::string& id, const std::string& component,
                  const fs::path& file, bool json_output, std::ostream& out, std::ostream& err) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return failed(err, "cannot read " + file.string() + ": " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  auto scores = parse_scores_csv(text.str());
  if (!scores) return failed(err, file.string() + ": " + scores.error().message);
  const json body = {{"component", component}, {"scores", scores.value()}};
  auto answer = call("POST", "/v1/campaigns/" + url_component(id) + "/scores", body.dump());
  if (!answer) return failed(err, answer.error().message);
  if (json_output) {
    out << answer->dump(2) << "\n";
  } else {
    out << "imported " << scores->size() << " " << component << " scores into campaign " << id
        << "\n";
  }
  return kExitOk;
}

}  // namespace evald::evalctl
