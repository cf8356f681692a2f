#include "coordinator/placement.hpp"

#include <fmt/format.h>

#include <cmath>

#include "common/json_fields.hpp"

namespace evald::coordinator {

std::vector<GpuSlot> parse_worker_gpus(const nlohmann::json& gpus) {
  std::vector<GpuSlot> out;
  if (!gpus.is_array()) return out;
  for (const auto& gpu : gpus) {
    const auto index = integer_field(gpu, "index");
    if (!index || *index < 0 || *index > UINT32_MAX) continue;
    GpuSlot slot;
    slot.index = static_cast<uint32_t>(*index);
    // "memory_mb" is what workers before 0.2 called the same MiB figure.
    for (const char* key : {"memory_mib", "memory_mb"}) {
      if (const auto memory = integer_field(gpu, key)) {
        slot.memory_mib = *memory;
        break;
      }
    }
    out.push_back(slot);
  }
  return out;
}

int gpus_needed(const ResourceSpec& resources, size_t worker_gpus) {
  if (resources.gpus) return *resources.gpus;
  return worker_gpus > 0 ? 1 : 0;
}

bool labels_match(const ResourceSpec& resources, const nlohmann::json& worker_labels) {
  for (const auto& [key, value] : resources.labels) {
    if (string_field(worker_labels, key) != value) return false;
  }
  return true;
}

int64_t required_gpu_memory_mib(double gpu_memory_gb) {
  if (gpu_memory_gb <= 0) return 0;
  return static_cast<int64_t>(std::ceil(gpu_memory_gb * kBytesPerGb / kBytesPerMib));
}

std::optional<std::vector<uint32_t>> place_shard(const ResourceSpec& resources,
                                                 const nlohmann::json& worker_labels,
                                                 const std::vector<GpuSlot>& gpus,
                                                 bool ignore_busy) {
  if (!labels_match(resources, worker_labels)) return std::nullopt;
  const int need = gpus_needed(resources, gpus.size());
  std::vector<uint32_t> chosen;
  if (need == 0) return chosen;
  const int64_t min_mib = required_gpu_memory_mib(resources.gpu_memory_gb);
  for (const auto& gpu : gpus) {
    if (!ignore_busy && gpu.busy) continue;
    if (gpu.memory_mib && *gpu.memory_mib < min_mib) continue;
    chosen.push_back(gpu.index);
    if (static_cast<int>(chosen.size()) == need) return chosen;
  }
  return std::nullopt;
}

std::string describe_needs(const ResourceSpec& resources) {
  std::string out;
  if (!resources.gpus) {
    out = "1 GPU if the worker has any";
  } else if (*resources.gpus == 0) {
    out = "no GPU";
  } else {
    out = fmt::format("{} GPU{}", *resources.gpus, *resources.gpus == 1 ? "" : "s");
  }
  if (resources.gpu_memory_gb > 0)
    out += fmt::format(" with >= {:g} GB each", resources.gpu_memory_gb);
  if (!resources.labels.empty()) {
    out += ", labels ";
    bool first = true;
    for (const auto& [k, v] : resources.labels) {
      out += fmt::format("{}{}={}", first ? "" : ",", k, v);
      first = false;
    }
  }
  return out;
}

}  // namespace evald::coordinator
