// ChildProcess: a real child process for the integration tests and the benchmark (the
// coordinator, workers, evalctl), started with fork + execve so that it can be tied to the test
// process with PR_SET_PDEATHSIG (it dies with the thread that started it, even if a ctest timeout
// SIGKILLs the test, so no daemon outlives a test run). stdout is either piped (to read the
// coordinator's endpoint line) or appended to the log file; stderr always goes to the log file,
// so a failing test can show what the daemons said. RAII: the destructor SIGKILLs and reaps a
// child that is still running, so a failed REQUIRE never leaks a process.
//
// run_command() is the one-shot form (evalctl): both streams captured, with a deadline.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace evald::testing {

struct ProcessOptions {
  std::filesystem::path executable;
  std::vector<std::string> args;  // without argv[0]
  // stderr (and stdout, unless pipe_stdout) is appended here; the parent dir must exist.
  std::filesystem::path log_file;
  bool pipe_stdout = false;
  // Set or override these variables on top of the test's own environment.
  std::vector<std::pair<std::string, std::string>> env;
};

class ChildProcess {
 public:
  // Throws std::runtime_error naming the executable if it cannot be started.
  explicit ChildProcess(ProcessOptions options);
  ~ChildProcess();  // SIGKILL and reap if still running
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::filesystem::path& log_file() const { return options_.log_file; }

  // Next line of the piped stdout (without the newline), or nullopt on timeout or EOF.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout);

  // Sends a signal if the child has not been reaped yet.
  void signal(int signo);
  void kill();    // SIGKILL and reap
  void stop();    // SIGSTOP: frozen, sockets stay open (looks like a hung node)
  void resume();  // SIGCONT

  // True until the child has exited (reaps it if it has).
  bool running();
  // The exit code once the child has exited (128 + signal number if a signal ended it), or
  // nullopt if it is still running after `timeout`.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit code as wait_exit() does.
  int terminate(std::chrono::milliseconds grace = std::chrono::seconds(10));
  std::optional<int> exit_code() const { return exit_code_; }

 private:
  bool reap(bool block);

  ProcessOptions options_;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string stdout_buffer_;
  std::optional<int> exit_code_;
};

struct CommandResult {
  int exit_code = -1;  // 128 + signal for a signal; -1 if it was killed at the deadline
  std::string out;
  std::string err;
  bool timed_out = false;
};

// Runs a command to completion with stdin closed, capturing stdout and stderr. A command still
// running at `timeout` is killed and reported with timed_out.
CommandResult run_command(const std::filesystem::path& executable,
                          const std::vector<std::string>& args,
                          std::chrono::milliseconds timeout = std::chrono::seconds(30),
                          const std::vector<std::pair<std::string, std::string>>& env = {});

// The last `max_bytes` of a file ("" if it does not exist), for failure reports.
std::string file_tail(const std::filesystem::path& file, size_t max_bytes);

}  // namespace evald::testing
