// Shared by the scheduler_*.cpp files only (one class, split by concern): helpers and limits
// that more than one of them needs. Not part of the scheduler's interface.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/protocol.hpp"

namespace evald::coordinator::scheduler_detail {

using SteadyTime = std::chrono::steady_clock::time_point;

inline double seconds_between(SteadyTime from, SteadyTime to) {
  return std::chrono::duration<double>(to - from).count();
}

inline std::string campaign_id_for(uint32_t key) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "c%06u", key);
  return buf;
}

// A kind of worker, as an autoscaler tells its deployments apart: its labels, "k=v,k2=v2"
// (sorted by key). Defined in scheduler_durations.cpp.
std::string labels_key(const nlohmann::json& labels);

// Why a lease holder's successful result cannot count (a count outside the shard, bad or missing
// metrics), or nothing when it can. Defined in scheduler_worker_protocol.cpp.
std::optional<std::string> invalid_shard_result(const protocol::ShardResult& r, int64_t shard_size,
                                                const std::string& primary_metric);

}  // namespace evald::coordinator::scheduler_detail
