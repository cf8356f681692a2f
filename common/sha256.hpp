// SHA-256 through OpenSSL's EVP interface, as lowercase hex: what provenance records, data pins
// and export manifests carry. Used by the worker (executables, data files), the coordinator (spec
// and shard-identity hashes) and evalctl (the export bundle's MANIFEST.sha256).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace evald {

// 64 lowercase hex digits of SHA-256(data).
std::string sha256_hex(std::string_view data);

// Streams the file (1 MiB at a time, so a 10 GB file costs no memory); the error names the path
// and the reason (missing, unreadable, a read error part way).
Result<std::string> sha256_file_hex(const std::filesystem::path& path);

// True for exactly 64 lowercase hex digits: the only form a pin or a hash field may take.
bool is_sha256_hex(std::string_view text);

}  // namespace evald
