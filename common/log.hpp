// Logging for every evald binary: one line per event on stderr, with an RFC 3339 UTC timestamp,
// a level and key=value fields. Built on spdlog; call init_logging() once in main().
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace evald {

// level: trace, debug, info, warn, error. Returns false for an unknown level name.
bool init_logging(const std::string& program, const std::string& level);

}  // namespace evald
