// Provenance and reuse: what the coordinator records about every counted result, and the shard
// identity that lets an identical shard of a later campaign take an earlier result instead of
// running (docs/results.md).
//
// A provenance record (store key 'p', one per counted result) is built on the core thread from
// three sources, so that a noop result stays a few dozen bytes on the wire: the result itself
// (timestamps, the GPU indexes it ran on, the executable's and the data file's SHA-256, measured
// by the worker), the worker's HELLO (its name, host, and each GPU's name and UUID) and the
// campaign (its spec's runner, the spec's SHA-256, this binary's version). Every field coming
// from a worker is bounded: the hashes must be 64 hex digits or absent, and the HELLO's strings
// and GPU entries are capped where HELLO is checked.
//
// Thread: core thread (pure functions).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/protocol.hpp"
#include "common/spec.hpp"

namespace evald::coordinator {

inline constexpr size_t kMaxResultGpus = 64;
inline constexpr size_t kMaxHostBytes = 256;

// Why a result's provenance fields are unacceptable (a hash that is not 64 lowercase hex
// digits, more than kMaxResultGpus GPU indexes, a negative or reversed time span), or nullopt.
std::optional<std::string> check_result_provenance(const protocol::ShardResult& result);

struct ProvenanceContext {
  const CampaignSpec& spec;
  const std::string& spec_sha256;
  const std::string& worker;          // the lease holder's name
  const std::string& host;            // from its HELLO ("" unknown)
  const nlohmann::json& worker_gpus;  // its HELLO's gpus array
};

// The record as the API serves it (docs/api.md, provenance): model, benchmark, index,
// attempt_id, worker, host, gpus [{index, name, uuid}], started_at, ended_at (RFC 3339 UTC with
// milliseconds, null when the worker did not say), runner {type, command, executable_sha256},
// data_sha256, spec_sha256, evald_version.
nlohmann::json make_provenance(const ProvenanceContext& context, const protocol::ShardResult& r);
// The same record as the text the store keeps: byte for byte make_provenance(...).dump() (invalid
// UTF-8 replaced), written straight into a string. Every counted result pays for it on the core
// thread, where building and dumping the JSON tree cost about a tenth of a noop result.
std::string provenance_text(const ProvenanceContext& context, const protocol::ShardResult& r);

// "2026-12-02T09:00:00.123Z" (common/time_format.hpp); epoch_ms <= 0 gives null.
nlohmann::json rfc3339_ms_or_null(int64_t epoch_ms);

// The identity of a shard for reuse: SHA-256 (hex) of the canonical JSON of its model entry,
// benchmark entry, runner and example range. Two shards with the same identity would be given
// the same input by any worker; a changed params.data_sha256 pin changes the benchmark entry and
// so the identity.
class ShardIdentity {
 public:
  // `canonical_spec` is to_json(spec) (computed once per campaign, not per group).
  ShardIdentity(const nlohmann::json& canonical_spec, uint32_t model, uint32_t benchmark);
  std::string of(int64_t start, int64_t end) const;

 private:
  std::string prefix_;
};

}  // namespace evald::coordinator
