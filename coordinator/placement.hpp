// Placement: may a shard of a model run on a worker, and on which of its GPUs. Pure functions over
// the worker's announced GPUs and labels and the model's ResourceSpec (common/spec.hpp); the
// scheduler calls them for dispatch (ignore_busy=false) and to tell a shard that no connected
// worker could ever run (ignore_busy=true). Rules are documented in docs/scheduling.md.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/spec.hpp"

namespace evald::coordinator {

struct GpuSlot {
  uint32_t index = 0;
  std::optional<int64_t> memory_mib;  // unknown when the worker was started with --gpus 0,1
  bool busy = false;
};

// `gpu_memory_gb` is in the vendor's gigabytes (10^9 bytes, as in "H100 80GB"), while nvidia-smi
// reports MiB (2^20 bytes) and less than the nominal size (81,559 MiB on an 80 GB H100). So 80 GB
// is 76,294 MiB and fits every 80 GB card; counting GB as 1,024 MiB would fit none of them.
inline constexpr double kBytesPerGb = 1e9;
inline constexpr double kBytesPerMib = 1024.0 * 1024.0;
// The smallest memory.total (MiB) a GPU must report to offer `gpu_memory_gb`; 0 for any.
int64_t required_gpu_memory_mib(double gpu_memory_gb);

// The worker's HELLO "gpus" array ([{"index":0,"name":..,"memory_mib":..}]); entries without a
// valid index are skipped.
std::vector<GpuSlot> parse_worker_gpus(const nlohmann::json& gpus);

// GPUs one shard needs on a worker with `worker_gpus` GPUs: resources.gpus, else 1 when the worker
// has GPUs and 0 when it has none.
int gpus_needed(const ResourceSpec& resources, size_t worker_gpus);

bool labels_match(const ResourceSpec& resources, const nlohmann::json& worker_labels);

// The GPU indexes to give one shard now, or nullopt if it does not fit. A GPU fits if its memory
// is unknown or at least gpu_memory_gb. With ignore_busy, asks whether it could ever fit.
std::optional<std::vector<uint32_t>> place_shard(const ResourceSpec& resources,
                                                 const nlohmann::json& worker_labels,
                                                 const std::vector<GpuSlot>& gpus,
                                                 bool ignore_busy);

// "2 GPUs with >= 40 GB each, labels gpu=h100" (or "no GPU" / "1 GPU if the worker has any").
std::string describe_needs(const ResourceSpec& resources);

}  // namespace evald::coordinator
