// How the pieces fit (docs/independence.md explains the statistics for users):
//  - Each shared 2-D tensor is tested on its own: a sample of A's units is matched against all of
//    B's units, and the number of units matched to their own index is compared with what a random
//    relabelling gives (log_fixed_point_tail).
//  - gate/up pairs additionally get the agreement test, which a consistent permutation of the MLP
//    hidden units cannot hide.
//  - Tests within one layer share that layer's hidden-unit relabelling and are not independent:
//    they are combined with Bonferroni (valid under any dependence). Different layers' units are
//    relabelled independently under the null, so layers combine with Fisher's method. Tensors
//    outside any layer (embeddings, lm_head) all share the residual stream's relabelling, so for
//    the overall verdict they form one Bonferroni group, whatever component they belong to.
#include "independence/check.hpp"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>

#include "independence/stats.hpp"

namespace evald::independence {
namespace {

using nlohmann::json;

std::string leaf_of(const std::string& name) {
  std::string trimmed = name;
  for (const char* suffix : {".weight", ".bias"}) {
    const std::string s = suffix;
    if (trimmed.size() > s.size() && trimmed.ends_with(s)) {
      trimmed.resize(trimmed.size() - s.size());
      break;
    }
  }
  const auto dot = trimmed.rfind('.');
  return dot == std::string::npos ? trimmed : trimmed.substr(dot + 1);
}

std::string prefix_of(const std::string& name) {
  std::string trimmed = name;
  if (trimmed.ends_with(".weight")) trimmed.resize(trimmed.size() - 7);
  const auto dot = trimmed.rfind('.');
  return dot == std::string::npos ? std::string() : trimmed.substr(0, dot);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

std::string format_p(double log_p) {
  std::ostringstream text;
  const double p = std::exp(log_p);
  if (p > 0.0 && p >= 1e-4) {
    text << std::setprecision(3) << p;
  } else {
    // Below what a double holds, or just small: 10^x written from the log.
    const double log10_p = log_p / std::log(10.0);
    const double exponent = std::floor(log10_p);
    text << std::fixed << std::setprecision(1) << std::pow(10.0, log10_p - exponent) << "e"
         << static_cast<int64_t>(exponent);
  }
  return text.str();
}

const char* verdict(double log_p, double alpha) {
  return p_from_log(log_p) < alpha ? "dependent" : "independent";
}

double log10_of(double log_p) {
  return std::isinf(log_p) ? -1e308 : log_p / std::log(10.0);
}

// Leaf names of the MLP's two input projections, whose rows are the same hidden units.
constexpr std::pair<const char*, const char*> kGateUp[] = {
    {"gate_proj", "up_proj"}, {"w1", "w3"}, {"gate", "up"}};

}  // namespace

Axis unit_axis(const std::string& tensor_name) {
  static const std::set<std::string> kColumnLeaves = {
      // output projections (hidden units are the inputs)
      "o_proj", "down_proj", "out_proj", "fc2", "c_proj", "dense_4h_to_h", "w2", "wo", "proj_out",
      // embedding tables and output heads stored vocab x hidden
      "embed_tokens", "wte", "wpe", "word_embeddings", "position_embeddings", "tok_embeddings",
      "embed_out", "lm_head", "output"};
  return kColumnLeaves.count(leaf_of(tensor_name)) > 0 ? Axis::kColumns : Axis::kRows;
}

std::string component_of(const std::string& tensor_name) {
  return tensor_name.substr(0, tensor_name.find('.'));
}

std::string layer_of(const std::string& tensor_name) {
  size_t start = 0;
  while (start < tensor_name.size()) {
    const size_t end = std::min(tensor_name.find('.', start), tensor_name.size());
    const std::string segment = tensor_name.substr(start, end - start);
    if (!segment.empty() &&
        std::all_of(segment.begin(), segment.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      // The last segment is the tensor itself, not a layer ("model.layers.3.weight" is rare).
      if (end < tensor_name.size()) return tensor_name.substr(0, end);
    }
    start = end + 1;
  }
  return {};
}

bool Report::dependent() const {
  return p_from_log(log_p) < alpha;
}

Result<Report> check_independence(const std::filesystem::path& a_path,
                                  const std::filesystem::path& b_path,
                                  const CheckOptions& options) {
  auto a = open_checkpoint(a_path);
  if (!a) return a.error();
  auto b = open_checkpoint(b_path);
  if (!b) return b.error();

  Report report;
  report.a = a_path.string();
  report.b = b_path.string();
  report.alpha = options.alpha;

  std::vector<std::pair<const TensorInfo*, const TensorInfo*>> candidates;
  size_t common = 0;
  for (const auto& [name, ta] : a->tensors) {
    const auto it = b->tensors.find(name);
    if (it == b->tensors.end()) {
      report.skipped.push_back({name, "only in A"});
      continue;
    }
    ++common;
    const TensorInfo& tb = it->second;
    if (ta.shape.size() != 2 || tb.shape.size() != 2) {
      report.skipped.push_back({name, "not a 2-D tensor (shape " + shape_text(ta.shape) + ")"});
    } else if (ta.shape != tb.shape) {
      report.skipped.push_back(
          {name, "shapes differ: " + shape_text(ta.shape) + " vs " + shape_text(tb.shape)});
    } else if (ta.dtype == DType::kOther || tb.dtype == DType::kOther) {
      report.skipped.push_back(
          {name,
           "unsupported dtype " + (ta.dtype == DType::kOther ? ta.dtype_name : tb.dtype_name)});
    } else if ((unit_axis(name) == Axis::kRows ? ta.shape[0] : ta.shape[1]) < 2) {
      report.skipped.push_back({name, "fewer than 2 units to match"});
    } else {
      candidates.emplace_back(&ta, &tb);
    }
  }
  for (const auto& [name, tb] : b->tensors) {
    if (a->tensors.count(name) == 0) report.skipped.push_back({name, "only in B"});
  }
  if (candidates.empty()) {
    return make_error("nothing to compare: '" + report.a + "' and '" + report.b + "' have " +
                      std::to_string(common) +
                      " tensor names in common and no 2-D F32/F16/BF16 tensor with the same name "
                      "and shape");
  }

  // Matchings kept for the gate/up agreement test, by "<prefix>|<leaf>".
  std::map<std::string, std::vector<int64_t>> kept;
  std::set<std::string> pair_leaves;
  for (const auto& [gate, up] : kGateUp) {
    pair_leaves.insert(gate);
    pair_leaves.insert(up);
  }
  for (const auto& [ta, tb] : candidates) {
    const Axis axis = unit_axis(ta->name);
    const int64_t n = axis == Axis::kRows ? ta->shape[0] : ta->shape[1];
    const auto subset = sample_units(n, options.max_units, options.seed);
    auto ma = load_matrix(*ta);
    if (!ma) {
      report.skipped.push_back({ta->name, "A: " + ma.error().message});
      continue;
    }
    const Units ua = make_units(std::move(ma.value()), axis, &subset);
    auto mb = load_matrix(*tb);
    if (!mb) {
      report.skipped.push_back({ta->name, "B: " + mb.error().message});
      continue;
    }
    const Units ub = make_units(std::move(mb.value()), axis);
    auto matches = best_matches(ua, ub, options.threads);
    TensorResult result;
    result.name = ta->name;
    result.shape = ta->shape;
    result.axis = axis;
    result.units = n;
    result.sampled = static_cast<int64_t>(subset.size());
    for (size_t u = 0; u < subset.size(); ++u) result.matched += matches[u] == subset[u] ? 1 : 0;
    result.log_p = log_fixed_point_tail(result.matched, result.sampled, n);
    if (pair_leaves.count(leaf_of(ta->name)) > 0) {
      kept[prefix_of(ta->name) + "|" + leaf_of(ta->name)] = std::move(matches);
    }
    report.tensors.push_back(std::move(result));
  }
  if (report.tensors.empty()) {
    return make_error("nothing to compare: no shared tensor could be read (see the reasons: " +
                      report.skipped.back().name + ": " + report.skipped.back().reason + ")");
  }
  std::map<std::string, int64_t> units_by_name;
  for (const auto& t : report.tensors) units_by_name[t.name] = t.units;

  // Agreement of the gate and up matchings. Under the null the two matchings of independent
  // models are unrelated, so they agree on a unit about as often as two random relabellings.
  for (const auto& [key, gate_matches] : kept) {
    const auto bar = key.find('|');
    const std::string prefix = key.substr(0, bar);
    const std::string leaf = key.substr(bar + 1);
    for (const auto& [gate, up] : kGateUp) {
      if (leaf != gate) continue;
      const auto other = kept.find(prefix + "|" + up);
      if (other == kept.end() || other->second.size() != gate_matches.size()) continue;
      AgreementResult agreement;
      agreement.name = prefix + "." + gate + "~" + up;
      agreement.units = units_by_name[prefix + "." + gate + ".weight"];
      if (agreement.units == 0) agreement.units = units_by_name[prefix + "." + gate];
      agreement.sampled = static_cast<int64_t>(gate_matches.size());
      for (size_t u = 0; u < gate_matches.size(); ++u) {
        agreement.agreed += gate_matches[u] >= 0 && gate_matches[u] == other->second[u] ? 1 : 0;
      }
      agreement.log_p = log_fixed_point_tail(agreement.agreed, agreement.sampled, agreement.units);
      report.agreements.push_back(std::move(agreement));
    }
  }

  // Groups: one per layer, and per component one for the tensors outside any layer.
  struct Group {
    std::string component;
    bool layered = false;
    std::vector<double> log_p;
  };
  std::map<std::string, Group> groups;
  std::vector<double> unlayered;  // every test outside a layer, all components together
  std::map<std::string, int64_t> tensors_per_component;
  const auto add = [&](const std::string& name, double log_p) {
    const std::string component = component_of(name);
    const std::string layer = layer_of(name);
    const std::string key = layer.empty() ? component + " (not in a layer)" : layer;
    groups[key].component = component;
    groups[key].layered = !layer.empty();
    groups[key].log_p.push_back(log_p);
    if (layer.empty()) unlayered.push_back(log_p);
  };
  for (const auto& t : report.tensors) {
    add(t.name, t.log_p);
    ++tensors_per_component[component_of(t.name)];
  }
  for (const auto& g : report.agreements) add(g.name, g.log_p);

  std::map<std::string, std::vector<double>> per_component;
  std::vector<double> overall;
  for (const auto& [key, group] : groups) {
    const double log_p = log_bonferroni(group.log_p);
    report.groups.push_back(
        {key, group.component, static_cast<int64_t>(group.log_p.size()), log_p});
    per_component[group.component].push_back(log_p);
    if (group.layered) overall.push_back(log_p);  // unlayered tests: one group, below
  }
  if (!unlayered.empty()) overall.push_back(log_bonferroni(unlayered));
  for (const auto& [component, log_ps] : per_component) {
    report.components.push_back({component, tensors_per_component[component], log_fisher(log_ps)});
  }
  report.log_p = log_fisher(overall);
  return report;
}

json report_json(const Report& report) {
  json out = {{"a", report.a},
              {"b", report.b},
              {"alpha", report.alpha},
              {"p_value", p_from_log(report.log_p)},
              {"log10_p_value", log10_of(report.log_p)},
              {"verdict", verdict(report.log_p, report.alpha)},
              {"components", json::array()},
              {"tensors", json::array()},
              {"mlp_agreement", json::array()},
              {"groups", json::array()},
              {"skipped", json::array()}};
  for (const auto& c : report.components) {
    out["components"].push_back({{"name", c.name},
                                 {"tensors", c.tensors},
                                 {"p_value", p_from_log(c.log_p)},
                                 {"log10_p_value", log10_of(c.log_p)},
                                 {"verdict", verdict(c.log_p, report.alpha)}});
  }
  for (const auto& t : report.tensors) {
    out["tensors"].push_back({{"name", t.name},
                              {"shape", t.shape},
                              {"p_value", p_from_log(t.log_p)},
                              {"log10_p_value", log10_of(t.log_p)},
                              {"axis", t.axis == Axis::kRows ? "rows" : "columns"},
                              {"units", t.units},
                              {"sampled", t.sampled},
                              {"matched", t.matched}});
  }
  for (const auto& g : report.agreements) {
    out["mlp_agreement"].push_back({{"name", g.name},
                                    {"p_value", p_from_log(g.log_p)},
                                    {"log10_p_value", log10_of(g.log_p)},
                                    {"units", g.units},
                                    {"sampled", g.sampled},
                                    {"agreed", g.agreed}});
  }
  for (const auto& g : report.groups) {
    out["groups"].push_back({{"name", g.name},
                             {"component", g.component},
                             {"tests", g.tests},
                             {"p_value", p_from_log(g.log_p)},
                             {"log10_p_value", log10_of(g.log_p)}});
  }
  for (const auto& s : report.skipped) {
    out["skipped"].push_back({{"name", s.name}, {"reason", s.reason}});
  }
  return out;
}

std::string report_table(const Report& report) {
  std::ostringstream text;
  text << "A: " << report.a << "\nB: " << report.b << "\n";
  text << "verdict: " << verdict(report.log_p, report.alpha) << " (p = " << format_p(report.log_p)
       << ", alpha = " << report.alpha << ")\n\n";
  size_t width = 9;
  for (const auto& c : report.components) width = std::max(width, c.name.size());
  text << std::left << std::setw(static_cast<int>(width)) << "COMPONENT"
       << "  TENSORS  P-VALUE     VERDICT\n";
  for (const auto& c : report.components) {
    text << std::left << std::setw(static_cast<int>(width)) << c.name << "  " << std::setw(7)
         << c.tensors << "  " << std::setw(10) << format_p(c.log_p) << "  "
         << verdict(c.log_p, report.alpha) << "\n";
  }
  width = 6;
  for (const auto& t : report.tensors) width = std::max(width, t.name.size());
  for (const auto& g : report.agreements) width = std::max(width, g.name.size());
  text << "\n"
       << std::left << std::setw(static_cast<int>(width)) << "TENSOR"
       << "  SHAPE          MATCHED      P-VALUE\n";
  for (const auto& t : report.tensors) {
    text << std::left << std::setw(static_cast<int>(width)) << t.name << "  " << std::setw(13)
         << shape_text(t.shape) << "  " << std::setw(11)
         << (std::to_string(t.matched) + "/" + std::to_string(t.sampled)) << "  "
         << format_p(t.log_p) << "\n";
  }
  for (const auto& g : report.agreements) {
    text << std::left << std::setw(static_cast<int>(width)) << g.name << "  " << std::setw(13)
         << "(agreement)"
         << "  " << std::setw(11) << (std::to_string(g.agreed) + "/" + std::to_string(g.sampled))
         << "  " << format_p(g.log_p) << "\n";
  }
  if (!report.skipped.empty()) {
    text << "\nskipped:\n";
    for (const auto& s : report.skipped) text << "  " << s.name << ": " << s.reason << "\n";
  }
  return text.str();
}

}  // namespace evald::independence
