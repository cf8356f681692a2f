// ChildProcess: one supervised child process, as the exec runner (and GPU discovery) needs it:
// started in its own process group, stdin fed from a string and then closed, stdout captured up
// to a cap, only the tail of stderr kept, an optional timeout, and a kill that takes the whole
// group down. Built on Boost.Process v1 for the spawn and Asio for the pipes; exit is watched with
// a pidfd, so no SIGCHLD handler (process-wide state) is involved.
//
// Threads: every call and every callback happens on the thread that runs the io_context given to
// start(). The child is reaped on that thread, so a pid we signal can never have been recycled.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace evald::worker {

inline constexpr size_t kStdoutLimitBytes = size_t{64} << 20;
inline constexpr size_t kStderrTailBytes = 4096;

struct ProcessSpec {
  // Resolved through the worker's PATH when it has no '/'; a relative path with a '/' is taken
  // relative to the worker's working directory (not the child's).
  std::string executable;
  std::vector<std::string> args;                                 // argv[1..]
  std::vector<std::pair<std::string, std::string>> environment;  // the child's whole environment
  std::filesystem::path working_dir;                             // empty: the worker's own
  std::string stdin_data;
  std::chrono::milliseconds timeout{0};           // zero: no limit
  size_t stdout_limit_bytes = kStdoutLimitBytes;  // 0: stdout is read and thrown away
  size_t stderr_tail_bytes = kStderrTailBytes;
  // The child gets SIGKILL when the thread that started it dies (PR_SET_PDEATHSIG), so a
  // long-lived child (a model server) cannot outlive a worker that was killed with SIGKILL.
  bool kill_with_parent = false;
};

enum class ProcessEnd {
  kExited,          // exit_code holds the status
  kSignaled,        // signal holds the signal that ended it
  kTimedOut,        // the group was killed when spec.timeout passed
  kKilled,          // kill() was called
  kStdoutOverflow,  // stdout passed spec.stdout_limit_bytes; the group was killed
  kSpawnFailed,     // spawn_error says why; nothing ran
};

struct ProcessOutcome {
  ProcessEnd end = ProcessEnd::kSpawnFailed;
  int exit_code = -1;
  int signal = 0;
  std::string stdout_data;  // empty after kStdoutOverflow
  std::string stderr_tail;  // at most spec.stderr_tail_bytes, the last ones
  std::string spawn_error;
  pid_t pid = -1;  // also the process group id
};

class ChildProcess {
 public:
  using DoneHandler = std::function<void(ProcessOutcome)>;

  // Spawns the child (blocking until its exec has succeeded or failed). `done` is called exactly
  // once, never from inside start(), after the child has been reaped and its pipes drained, or
  // when it could not be started. When the direct child exits, whatever it left behind in its
  // process group is killed: a shard run must not leave strays holding GPUs or our pipes.
  static ChildProcess start(boost::asio::io_context& io, ProcessSpec spec, DoneHandler done);

  // SIGKILL to the whole process group; `done` still follows, with ProcessEnd::kKilled.
  void kill();
  // SIGTERM to the whole process group, a request to stop; `done` follows when it has exited
  // (with ProcessEnd::kKilled, since we asked). The caller escalates with kill() after a grace.
  void terminate();
  pid_t pid() const;

 private:
  struct State;
  explicit ChildProcess(std::shared_ptr<State> state) : state_(std::move(state)) {}
  // Shared with the pending Asio handlers, which must keep the pipes and timers alive until they
  // have run; the handle may be dropped earlier.
  std::shared_ptr<State> state_;
};

// Runs spec to completion on a private io_context (for one-shot commands such as nvidia-smi).
ProcessOutcome run_process(ProcessSpec spec);

// The worker's own environment as name/value pairs, the base of every child's environment.
std::vector<std::pair<std::string, std::string>> current_environment();

// "SIGKILL" for 9; "SIG?" for a number the C library does not know.
std::string signal_name(int signal);

// Blocks SIGPIPE on the calling thread, so a write to a pipe whose reader has gone fails with
// EPIPE instead of killing the worker; on destruction a SIGPIPE that arrived meanwhile is
// discarded and the previous mask restored. Children get a clean mask (see process.cpp).
class ScopedSigpipeBlock {
 public:
  ScopedSigpipeBlock();
  ~ScopedSigpipeBlock();
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;

 private:
  bool was_blocked_ = false;
};

}  // namespace evald::worker
