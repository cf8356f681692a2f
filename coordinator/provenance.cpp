#include "coordinator/provenance.hpp"

#include <algorithm>
#include <string_view>

#include "common/json_fields.hpp"
#include "common/sha256.hpp"
#include "common/time_format.hpp"
#include "common/version.hpp"

namespace evald::coordinator {
namespace {

nlohmann::json hash_or_null(const std::string& hex) {
  return hex.empty() ? nlohmann::json(nullptr) : nlohmann::json(hex);
}

// Appends `text` as a JSON string exactly as nlohmann::json::dump (no ensure_ascii, invalid UTF-8
// replaced) writes it: printable ASCII without quote or backslash is copied as it is, anything
// else goes through nlohmann, so the two writers can never disagree.
void append_json_string(std::string& out, std::string_view text) {
  const bool plain = std::all_of(text.begin(), text.end(), [](char ch) {
    return ch >= 0x20 && ch <= 0x7e && ch != '"' && ch != '\\';
  });
  if (plain) {
    out.push_back('"');
    out.append(text);
    out.push_back('"');
    return;
  }
  out += nlohmann::json(std::string(text))
             .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void append_string_or_null(std::string& out, std::string_view text) {
  if (text.empty()) {
    out += "null";
  } else {
    append_json_string(out, text);
  }
}

// The HELLO's entry for GPU `index` (the first one with that integer index), or null.
const nlohmann::json* worker_gpu(const nlohmann::json& worker_gpus, uint32_t index) {
  if (!worker_gpus.is_array()) return nullptr;
  for (const auto& entry : worker_gpus) {
    if (integer_field(entry, "index") == int64_t{index}) return &entry;
  }
  return nullptr;
}

// The "name" or "uuid" string of the HELLO's GPU entry `known`, or null.
void append_gpu_field(std::string& out, const nlohmann::json* known, const char* field) {
  if (known != nullptr) {
    if (const auto it = known->find(field); it != known->end() && it->is_string()) {
      append_json_string(out, it->get_ref<const std::string&>());
      return;
    }
  }
  out += "null";
}

void append_rfc3339_ms_or_null(std::string& out, int64_t epoch_ms) {
  if (epoch_ms <= 0) {
    out += "null";
    return;
  }
  // Digits, '-', ':', 'T', '.' and 'Z' only: nothing a JSON string would escape.
  out.push_back('"');
  append_rfc3339_ms(out, epoch_ms);
  out.push_back('"');
}

}  // namespace

std::optional<std::string> check_result_provenance(const protocol::ShardResult& result) {
  if (!result.executable_sha256.empty() && !is_sha256_hex(result.executable_sha256)) {
    return "provenance: executable_sha256 is not a SHA-256 digest (64 lowercase hex digits)";
  }
  if (!result.data_sha256.empty() && !is_sha256_hex(result.data_sha256)) {
    return "provenance: data_sha256 is not a SHA-256 digest (64 lowercase hex digits)";
  }
  if (result.gpus.size() > kMaxResultGpus) {
    return "provenance: " + std::to_string(result.gpus.size()) + " GPUs (limit " +
           std::to_string(kMaxResultGpus) + ")";
  }
  if (result.started_at_ms < 0 || result.ended_at_ms < 0 ||
      (result.ended_at_ms != 0 && result.ended_at_ms < result.started_at_ms)) {
    return "provenance: started_at/ended_at are not a time span";
  }
  return std::nullopt;
}

nlohmann::json rfc3339_ms_or_null(int64_t epoch_ms) {
  if (epoch_ms <= 0) return nullptr;
  std::string text;
  text.reserve(24);
  append_rfc3339_ms(text, epoch_ms);
  return text;
}

nlohmann::json make_provenance(const ProvenanceContext& context, const protocol::ShardResult& r) {
  const auto& spec = context.spec;
  nlohmann::json gpus = nlohmann::json::array();
  for (const uint32_t index : r.gpus) {
    nlohmann::json gpu = {{"index", index}, {"name", nullptr}, {"uuid", nullptr}};
    if (const nlohmann::json* known = worker_gpu(context.worker_gpus, index)) {
      if (const auto name = known->find("name"); name != known->end() && name->is_string()) {
        gpu["name"] = *name;
      }
      if (const auto uuid = known->find("uuid"); uuid != known->end() && uuid->is_string()) {
        gpu["uuid"] = *uuid;
      }
    }
    gpus.push_back(std::move(gpu));
  }
  nlohmann::json runner = {{"type", to_string(spec.runner.type)},
                           {"command", spec.runner.command},
                           {"executable_sha256", hash_or_null(r.executable_sha256)}};
  return nlohmann::json{
      {"model", spec.models.at(r.model).name},
      {"benchmark", spec.benchmarks.at(r.benchmark).name},
      {"index", r.shard},
      {"attempt_id", r.attempt_id},
      {"worker", context.worker},
      {"host", context.host.empty() ? nlohmann::json(nullptr) : nlohmann::json(context.host)},
      {"gpus", std::move(gpus)},
      {"started_at", rfc3339_ms_or_null(r.started_at_ms)},
      {"ended_at", rfc3339_ms_or_null(r.ended_at_ms)},
      {"runner", std::move(runner)},
      {"data_sha256", hash_or_null(r.data_sha256)},
      {"spec_sha256", context.spec_sha256},
      {"evald_version", kVersion},
  };
}

std::string provenance_text(const ProvenanceContext& context, const protocol::ShardResult& r) {
  // The members in the order nlohmann::json (a std::map) dumps them: by name.
  const auto& spec = context.spec;
  std::string out;
  out.reserve(640);
  out += "{\"attempt_id\":";
  out += std::to_string(r.attempt_id);
  out += ",\"benchmark\":";
  append_json_string(out, spec.benchmarks.at(r.benchmark).name);
  out += ",\"data_sha256\":";
  append_string_or_null(out, r.data_sha256);
  out += ",\"ended_at\":";
  append_rfc3339_ms_or_null(out, r.ended_at_ms);
  out += ",\"evald_version\":";
  append_json_string(out, kVersion);
  out += ",\"gpus\":[";
  for (size_t i = 0; i < r.gpus.size(); ++i) {
    const uint32_t index = r.gpus[i];
    const nlohmann::json* known = worker_gpu(context.worker_gpus, index);
    if (i > 0) out.push_back(',');
    out += "{\"index\":";
    out += std::to_string(index);
    out += ",\"name\":";
    append_gpu_field(out, known, "name");
    out += ",\"uuid\":";
    append_gpu_field(out, known, "uuid");
    out.push_back('}');
  }
  out += "],\"host\":";
  append_string_or_null(out, context.host);
  out += ",\"index\":";
  out += std::to_string(r.shard);
  out += ",\"model\":";
  append_json_string(out, spec.models.at(r.model).name);
  out += ",\"runner\":{\"command\":[";
  for (size_t i = 0; i < spec.runner.command.size(); ++i) {
    if (i > 0) out.push_back(',');
    append_json_string(out, spec.runner.command[i]);
  }
  out += "],\"executable_sha256\":";
  append_string_or_null(out, r.executable_sha256);
  out += ",\"type\":";
  append_json_string(out, to_string(spec.runner.type));
  out += "},\"spec_sha256\":";
  append_json_string(out, context.spec_sha256);
  out += ",\"started_at\":";
  append_rfc3339_ms_or_null(out, r.started_at_ms);
  out += ",\"worker\":";
  append_json_string(out, context.worker);
  out.push_back('}');
  return out;
}

ShardIdentity::ShardIdentity(const nlohmann::json& canonical, uint32_t model, uint32_t benchmark) {
  // The canonical form (to_json fills every default in), so two specs that differ only in
  // spelling out a default still share identities.
  const nlohmann::json identity = {{"model", canonical["models"][model]},
                                   {"benchmark", canonical["benchmarks"][benchmark]},
                                   {"runner", canonical["runner"]}};
  prefix_ = identity.dump() + "\n";
}

std::string ShardIdentity::of(int64_t start, int64_t end) const {
  return sha256_hex(prefix_ + std::to_string(start) + "," + std::to_string(end));
}

}  // namespace evald::coordinator
