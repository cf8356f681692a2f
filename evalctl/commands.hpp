// evalctl's command line: global flags, the subcommands, and the HTTP calls each one makes to the
// coordinator (docs/binaries.md "evalctl", docs/api.md). main.cpp only reads the process
// environment and calls run(); tests call run() in-process with their own streams.
#pragma once

#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

namespace evald::evalctl {

// What run() needs from the process, gathered by main() so that nothing here reads globals.
struct Environment {
  std::optional<std::string> server;       // $EVALD_SERVER, if set and not empty
  bool stdout_is_tty = false;              // `watch` redraws one line in place only on a terminal
  std::optional<std::string> token = {};   // $EVALD_TOKEN, if set and not empty
  std::optional<std::string> cacert = {};  // $EVALD_CACERT, if set and not empty
};

// Runs `evalctl ARGS...` (ARGS without the program name). Output goes to `out`, messages to
// `err` as "evalctl: <message>". Returns the exit code: 0 ok, 1 runtime failure (server
// unreachable, HTTP error, invalid spec, a watched campaign that did not succeed), 2 usage error.
int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
        const Environment& environment);

}  // namespace evald::evalctl
