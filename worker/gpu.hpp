// GPU discovery for --gpus: what the worker tells the coordinator it has (HELLO's gpus array).
// "auto" asks nvidia-smi; "none" is no GPUs; "0,1" names indexes whose name and memory are
// unknown (the JSON then carries only "index").
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace evald::worker {

struct GpuInfo {
  uint32_t index = 0;
  std::string name;                   // empty: unknown
  std::optional<int64_t> memory_mib;  // unknown when nvidia-smi says [N/A] or --gpus listed it
  std::string uuid;                   // "GPU-..." / "MIG-..."; empty: unknown

  bool operator==(const GpuInfo&) const = default;
};

enum class GpuMode { kAuto, kNone, kList };

struct GpuSelection {
  GpuMode mode = GpuMode::kAuto;
  std::vector<uint32_t> indexes;  // kList only
};

// Parses the --gpus value: "auto", "none" or a comma-separated list of distinct indexes.
Result<GpuSelection> parse_gpu_selection(std::string_view text);

// Parses the output of
//   nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader,nounits
// one GPU per line: "0, NVIDIA H100 80GB HBM3, 81559, GPU-5f3c...". The uuid column is optional
// (recognised by its GPU-/MIG- prefix), so the three-column form still parses. Blank lines are
// skipped.
Result<std::vector<GpuInfo>> parse_nvidia_smi_csv(std::string_view text);

// Runs nvidia-smi (with a timeout, in case a broken driver hangs it) and parses its output. The
// error says why there is no answer: not installed, failed, timed out or unparsable.
Result<std::vector<GpuInfo>> query_nvidia_smi(std::chrono::milliseconds timeout);

// The GPUs a selection stands for. For kAuto a failed nvidia-smi is logged and means no GPUs.
std::vector<GpuInfo> resolve_gpus(const GpuSelection& selection);

// [{"index":0,"name":"NVIDIA H100 80GB HBM3","memory_mib":81559,"uuid":"GPU-..."}], unknown
// fields left out.
nlohmann::json to_json(const std::vector<GpuInfo>& gpus);

}  // namespace evald::worker
