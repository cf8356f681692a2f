// evalctl: the command-line client of the coordinator's HTTP API. The commands live in
// evalctl_lib (commands.cpp, format.cpp); this only hands over the process environment.
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "evalctl/commands.hpp"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  evald::evalctl::Environment environment;
  if (const char* server = std::getenv("EVALD_SERVER"); server != nullptr && *server != '\0') {
    environment.server = server;
  }
  if (const char* token = std::getenv("EVALD_TOKEN"); token != nullptr && *token != '\0') {
    environment.token = token;
  }
  if (const char* cacert = std::getenv("EVALD_CACERT"); cacert != nullptr && *cacert != '\0') {
    environment.cacert = cacert;
  }
  environment.stdout_is_tty = isatty(STDOUT_FILENO) == 1;
  return evald::evalctl::run(args, std::cout, std::cerr, environment);
}
