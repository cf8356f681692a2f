// Command-line parsing shared by the three binaries, on Boost.Program_options.
// Precedence: built-in defaults < --config FILE (JSON, keys mirror the long flags) < flags.
// A bad flag or config file is a usage error: the binary prints it and exits 2.
#pragma once

#include <boost/program_options.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace evald {

namespace po = boost::program_options;

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Exit codes shared by every binary (docs/binaries.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

struct ParsedArgs {
  bool help = false;
  bool version = false;
  po::variables_map values;
  std::vector<std::string> positional;  // only when allow_positional
};

// Adds --help, --version and --config to `options`, parses argv, then merges the config file.
// Throws UsageError naming the flag or config key that is wrong.
ParsedArgs parse_args(int argc, const char* const* argv, po::options_description& options,
                      bool allow_positional = false);

// Stores the values of a JSON config file under the ones already in `values` (flags win).
// Scalars become the flag's text; arrays are joined with ','; objects become "k=v,k=v".
void store_config_file(const std::string& path, const po::options_description& options,
                       po::variables_map& values);

}  // namespace evald
