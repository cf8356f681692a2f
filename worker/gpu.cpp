#include "worker/gpu.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <limits>

#include "common/text.hpp"
#include "worker/process.hpp"

namespace evald::worker {
namespace {

constexpr std::string_view kWhitespace = " \t\r\n";

template <typename T>
bool parse_number(std::string_view text, T& out) {
  if (text.empty()) return false;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), out);
  return err == std::errc{} && end == text.data() + text.size();
}

}  // namespace

Result<GpuSelection> parse_gpu_selection(std::string_view text) {
  const auto value = trim(text, kWhitespace);
  if (value == "auto") return GpuSelection{GpuMode::kAuto, {}};
  if (value == "none") return GpuSelection{GpuMode::kNone, {}};
  GpuSelection selection{GpuMode::kList, {}};
  size_t pos = 0;
  while (pos <= value.size()) {
    const auto comma = value.find(',', pos);
    const auto item = trim(
        value.substr(pos, comma == std::string_view::npos ? value.npos : comma - pos), kWhitespace);
    uint32_t index = 0;
    if (!parse_number(item, index)) {
      return make_error("--gpus: '" + std::string(item) +
                        "' is not a GPU index (expected auto, none or a list such as 0,1)");
    }
    if (std::find(selection.indexes.begin(), selection.indexes.end(), index) !=
        selection.indexes.end()) {
      return make_error("--gpus: index " + std::to_string(index) + " is listed twice");
    }
    selection.indexes.push_back(index);
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return selection;
}

Result<std::vector<GpuInfo>> parse_nvidia_smi_csv(std::string_view text) {
  std::vector<GpuInfo> gpus;
  size_t line_number = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const auto newline = text.find('\n', pos);
    const auto raw =
        text.substr(pos, newline == std::string_view::npos ? text.npos : newline - pos);
    pos = newline == std::string_view::npos ? text.size() : newline + 1;
    ++line_number;
    const auto line = trim(raw, kWhitespace);
    if (line.empty()) continue;
    const std::string where = "nvidia-smi line " + std::to_string(line_number);
    // The name sits between the first and the last comma (before the uuid column, when there is
    // one), so a comma inside it does no harm.
    auto rest = line;
    std::string uuid;
    if (const auto comma = rest.rfind(','); comma != std::string_view::npos) {
      const auto tail = trim(rest.substr(comma + 1), kWhitespace);
      if (tail.starts_with("GPU-") || tail.starts_with("MIG-")) {
        uuid = std::string(tail);
        rest = rest.substr(0, comma);
      }
    }
    const auto first = rest.find(',');
    const auto last = rest.rfind(',');
    if (first == std::string_view::npos || first == last) {
      return make_error(where + ": expected 'index, name, memory.total', got '" +
                        std::string(line) + "'");
    }
    GpuInfo gpu;
    const auto index_text = trim(rest.substr(0, first), kWhitespace);
    if (!parse_number(index_text, gpu.index)) {
      return make_error(where + ": index '" + std::string(index_text) + "' is not a number");
    }
    gpu.name = std::string(trim(rest.substr(first + 1, last - first - 1), kWhitespace));
    gpu.uuid = std::move(uuid);
    const auto memory_text = trim(rest.substr(last + 1), kWhitespace);
    int64_t memory = 0;
    if (parse_number(memory_text, memory) && memory >= 0) {
      gpu.memory_mib = memory;
    } else if (memory_text != "[N/A]" && memory_text != "N/A") {
      return make_error(where + ": memory.total '" + std::string(memory_text) +
                        "' is not a number of MiB");
    }
    gpus.push_back(std::move(gpu));
  }
  return gpus;
}

Result<std::vector<GpuInfo>> query_nvidia_smi(std::chrono::milliseconds timeout) {
  ProcessSpec spec;
  spec.executable = "nvidia-smi";
  spec.args = {"--query-gpu=index,name,memory.total,uuid", "--format=csv,noheader,nounits"};
  spec.environment = current_environment();
  spec.timeout = timeout;
  spec.stdout_limit_bytes = size_t{1} << 20;
  const auto outcome = run_process(std::move(spec));
  switch (outcome.end) {
    case ProcessEnd::kSpawnFailed:
      return make_error(outcome.spawn_error);
    case ProcessEnd::kTimedOut:
      return make_error("nvidia-smi did not answer within " + std::to_string(timeout.count()) +
                        " ms");
    case ProcessEnd::kExited: {
      if (outcome.exit_code == 0) return parse_nvidia_smi_csv(outcome.stdout_data);
      // nvidia-smi explains itself on stdout as often as on stderr.
      auto detail = trim(outcome.stderr_tail, kWhitespace);
      if (detail.empty())
        detail = trim(std::string_view(outcome.stdout_data).substr(0, 300), kWhitespace);
      return make_error("nvidia-smi exited with code " + std::to_string(outcome.exit_code) +
                        (detail.empty() ? "" : ": " + std::string(detail)));
    }
    case ProcessEnd::kSignaled:
      return make_error("nvidia-smi was killed by " + signal_name(outcome.signal));
    case ProcessEnd::kKilled:
    case ProcessEnd::kStdoutOverflow:
      break;
  }
  return make_error("nvidia-smi printed more than 1 MiB");
}

std::vector<GpuInfo> resolve_gpus(const GpuSelection& selection) {
  switch (selection.mode) {
    case GpuMode::kNone:
      return {};
    case GpuMode::kList: {
      std::vector<GpuInfo> gpus;
      for (const uint32_t index : selection.indexes) gpus.push_back(GpuInfo{index, {}, {}, {}});
      return gpus;
    }
    case GpuMode::kAuto:
      break;
  }
  auto gpus = query_nvidia_smi(std::chrono::seconds(15));
  if (!gpus.ok()) {
    spdlog::warn("gpu_discovery_failed error=\"{}\" gpus=none", gpus.error().message);
    return {};
  }
  for (const auto& gpu : gpus.value()) {
    spdlog::info("gpu_found index={} name=\"{}\" memory_mib={}", gpu.index, gpu.name,
                 gpu.memory_mib.value_or(-1));
  }
  return std::move(gpus.value());
}

nlohmann::json to_json(const std::vector<GpuInfo>& gpus) {
  auto out = nlohmann::json::array();
  for (const auto& gpu : gpus) {
    nlohmann::json item = {{"index", gpu.index}};
    if (!gpu.name.empty()) item["name"] = gpu.name;
    if (gpu.memory_mib) item["memory_mib"] = *gpu.memory_mib;
    if (!gpu.uuid.empty()) item["uuid"] = gpu.uuid;
    out.push_back(std::move(item));
  }
  return out;
}

}  // namespace evald::worker
