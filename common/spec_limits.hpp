// The caps and rules that keep a campaign spec from hurting the processes it reaches: the
// coordinator that stores it and every worker that turns it into command lines and environments.
// Used by common/spec.cpp (which names each limit in its error messages) and by the tests;
// docs/campaign-spec.md lists them for users. The older limits (models, benchmarks, shards,
// names) live in common/spec.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace evald {

// Size caps on what a spec may carry. A spec is stored, kept in memory, sent to every worker that
// runs one of its shards and shown by the API, so nothing in it may be unbounded; what reaches a
// command line or an environment is bounded tighter. Each is named in its error message.
inline constexpr size_t kMaxSpecBytes = size_t{1} << 20;     // the whole spec text
inline constexpr size_t kMaxDescriptionBytes = 4096;         // description
inline constexpr size_t kMaxParamsBytes = size_t{64} << 10;  // one params object, as JSON
inline constexpr int kMaxParamsDepth = 32;                   // levels inside one params
inline constexpr size_t kMaxCommandArgs = 256;               // runner.command entries
inline constexpr size_t kMaxCommandArgBytes = 4096;          // one runner.command entry
inline constexpr size_t kMaxEnvVars = 64;                    // runner.env entries
inline constexpr size_t kMaxEnvNameBytes = 128;              // one runner.env name
inline constexpr size_t kMaxEnvValueBytes = 4096;            // one runner.env value
inline constexpr size_t kMaxLabelsPerModel = 32;             // resources.labels entries
inline constexpr size_t kMaxLabelBytes = 256;                // one label name or value
inline constexpr size_t kMaxServeHealthBytes = 1024;         // serve.health
inline constexpr size_t kMaxServedModelBytes = 256;          // serve.model_id, endpoint.model
inline constexpr size_t kMaxEndpointUrlBytes = 2048;         // endpoint.url
inline constexpr int64_t kMaxGenerateTokens = 1'000'000;     // params.max_tokens (openai runner)
inline constexpr size_t kMaxStopSequences = 16;              // params.stop entries
inline constexpr size_t kMaxExtractBytes = 1024;             // params.extract (a regex)

// runner.env names must look like shell variables: [A-Za-z_][A-Za-z0-9_]*, at most
// kMaxEnvNameBytes.
bool valid_env_name(std::string_view name);
// Why runner.env may not set `name`, or nothing when it may: variables that change which code a
// process loads (LD_*, PATH, PYTHONPATH and their kin) and those evald sets itself (EVALD_*,
// CUDA_VISIBLE_DEVICES). The spec parser applies both rules, so every worker does too when a
// campaign arrives, whoever sent it.
std::optional<std::string> reserved_env_name(std::string_view name);

// Why `pattern` cannot serve as params.extract, or nothing: it must compile as an ECMAScript
// regex, have at least one capture group and be at most kMaxExtractBytes.
std::optional<std::string> check_extract_regex(std::string_view pattern);

}  // namespace evald
