// The version every binary prints for --version.
#pragma once

namespace evald {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace evald
