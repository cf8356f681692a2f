// evalctl's results-you-can-defend commands that move files: `export ID DIR` (a bundle that
// `sha256sum -c MANIFEST.sha256` verifies) and `scores import ID COMPONENT FILE.csv` (expert or
// user scores for the composite). commands.cpp parses the command line and hands over an API
// caller, so this file knows the API's routes and the files, not the flags.
#pragma once

#include <filesystem>
#include <functional>
#include <iosfwd>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "common/result.hpp"

namespace evald::evalctl {

// One API call: method, target, body -> the answer's JSON object, or the message to show.
using ApiCall = std::function<Result<nlohmann::json>(
    const std::string& method, const std::string& target, const std::string& body)>;

// Writes DIR/spec.json (the campaign's canonical spec, byte for byte the text its spec_sha256
// was computed over), results.json, provenance.jsonl, samples/MODEL/BENCHMARK.jsonl and
// MANIFEST.sha256 (sha256sum's format, paths relative to DIR). DIR is created; existing files
// of the same names are replaced. Returns the exit code.
int export_bundle(const ApiCall& call, const std::string& id, const std::filesystem::path& dir,
                  std::ostream& out, std::ostream& err);

// Reads "model,score" lines (a header line "model,score" is skipped; blank lines and lines
// starting with '#' too); the error names the line.
Result<std::map<std::string, double>> parse_scores_csv(const std::string& text);

// POST /v1/campaigns/ID/scores with the file's scores. Returns the exit code.
int import_scores(const ApiCall& call, const std::string& id, const std::string& component,
                  const std::filesystem::path& file, bool json_output, std::ostream& out,
                  std::ostream& err);

}  // namespace evald::evalctl
