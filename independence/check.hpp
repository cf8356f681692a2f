// `evalctl independence A B`: which tensors to compare, along which axis, how the per-tensor
// p-values combine into per-component and overall verdicts, and the two output formats.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "independence/matching.hpp"

namespace evald::independence {

struct CheckOptions {
  double alpha = 0.01;
  // Units of A sampled per tensor (all of them when a tensor has fewer). Each sampled unit is
  // compared with every unit of B, so the cost is max_units x units x dim multiply-adds.
  int64_t max_units = 256;
  unsigned threads = 2;
  uint64_t seed = 0x5EED1DE9E4DE4CEull;
};

struct TensorResult {
  std::string name;
  std::vector<int64_t> shape;
  Axis axis = Axis::kRows;
  int64_t units = 0;    // n: units along the matched axis
  int64_t sampled = 0;  // m: units of A that were matched against all of B
  int64_t matched = 0;  // sampled units whose best match is the same index in B
  double log_p = 0.0;
};

// The test that survives a consistent permutation of an MLP's hidden units: do the matchings
// found on the gate and on the up projection agree?
struct AgreementResult {
  std::string name;  // "<prefix>.gate_proj~up_proj"
  int64_t units = 0;
  int64_t sampled = 0;
  int64_t agreed = 0;
  double log_p = 0.0;
};

struct GroupResult {
  std::string name;  // "model.layers.3", or "<component> (not in a layer)"
  std::string component;
  int64_t tests = 0;
  double log_p = 0.0;
};

struct ComponentResult {
  std::string name;
  int64_t tensors = 0;
  double log_p = 0.0;
};

struct Skipped {
  std::string name;
  std::string reason;
};

struct Report {
  std::string a;
  std::string b;
  double alpha = 0.01;
  double log_p = 0.0;
  std::vector<ComponentResult> components;
  std::vector<TensorResult> tensors;
  std::vector<AgreementResult> agreements;
  std::vector<GroupResult> groups;
  std::vector<Skipped> skipped;
  bool dependent() const;
};

// Runs the whole check. Errors: a checkpoint cannot be read or is malformed, or the two share
// no 2-D tensor of the same name and shape (nothing to test).
Result<Report> check_independence(const std::filesystem::path& a, const std::filesystem::path& b,
                                  const CheckOptions& options);

// Which axis of a tensor holds the hidden units that training treats symmetrically: rows for
// input projections (q/k/v, gate/up, fc1), columns for output projections (o_proj, down_proj,
// fc2) and for embedding tables (vocab x hidden), whose rows are tokens.
Axis unit_axis(const std::string& tensor_name);
// The first dot-separated segment of a tensor name.
std::string component_of(const std::string& tensor_name);
// The name up to and including its first all-digit segment ("model.layers.3"), or "" if none.
std::string layer_of(const std::string& tensor_name);

nlohmann::json report_json(const Report& report);
std::string report_table(const Report& report);

}  // namespace evald::independence
