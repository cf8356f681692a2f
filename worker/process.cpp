// How a child is supervised (see process.hpp for the contract):
//
//  - Spawn: Boost.Process forks and execs, then waits on its error pipe, so when bp::child
//    returns the exec has either succeeded or failed. The child first joins a process group of its
//    own (setpgid(0, 0)); since bp::child only returns after the exec, the group exists before we
//    could ever signal it. The child also gets an empty signal mask and default SIGPIPE (the runner
//    thread blocks SIGPIPE, and masks are inherited), and every inherited descriptor above stderr
//    is marked close-on-exec, so no worker socket or other child's pipe leaks into it.
//  - Exit: a pidfd becomes readable when the child exits. We look with WNOWAIT first, so the
//    child is still a zombie (its pid, which is also the group id, cannot be reused) while we
//    SIGKILL what is left of its group; only then is it reaped. Without pidfd (old kernels) the
//    same check runs on a 20 ms timer.
//  - Completion: `done` runs once the child is reaped and both output pipes reached EOF. A
//    process that escaped the group (setsid) could hold the pipes open for ever, so one second
//    after the exit they are closed regardless.
#include "worker/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/process/args.hpp>
#include <boost/process/async_pipe.hpp>
#include <boost/process/child.hpp>
#include <boost/process/exe.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/io.hpp>
#include <boost/process/start_dir.hpp>
#include <cerrno>
#include <system_error>

#include "worker/exec_policy.hpp"

extern char** environ;  // NOLINT(readability-redundant-declaration): POSIX, not in any header

namespace evald::worker {
namespace {

namespace asio = boost::asio;
namespace bp = boost::process;

constexpr auto kPipeGrace = std::chrono::seconds(1);
constexpr auto kExitPollInterval = std::chrono::milliseconds(20);
constexpr size_t kReadChunkBytes = 64 * 1024;

void set_cloexec(int fd) {
  if (fd >= 0) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

// Hooks into Boost.Process's spawn. on_exec_setup runs in the child between fork and exec, so it
// may only make async-signal-safe calls.
struct ChildSetup : bp::extend::handler {
  // The child's environment, set directly: bp::environment's lookup reads past the end of
  // entries shorter than the key (Boost 1.74, found by AddressSanitizer).
  char** environment = nullptr;
  bool kill_with_parent = false;

  template <typename Executor>
  void on_setup(Executor& exec) const {
    exec.env = environment;
  }

  template <typename Executor>
  void on_exec_setup(Executor& /*exec*/) const {
    ::setpgid(0, 0);
    if (kill_with_parent) ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
      // Kernels before 5.11 lack the flag: mark the descriptors one by one.
      rlimit limit{};
      int max_fd = 4096;
      if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
        max_fd = static_cast<int>(std::min<rlim_t>(limit.rlim_cur, rlim_t{1} << 20));
      }
      for (int fd = 3; fd < max_fd; ++fd) {
        const int flags = ::fcntl(fd, F_GETFD);
        if (flags >= 0) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
      }
    }
  }

  template <typename Executor>
  void on_error(Executor& exec, const std::error_code& /*ec*/) const {
    // A child whose exec failed has already exited; reap it so it does not stay a zombie. The
    // kill covers a failure reported after a successful exec.
    if (exec.pid > 0) {
      ::kill(exec.pid, SIGKILL);
      int status = 0;
      ::waitpid(exec.pid, &status, 0);
    }
  }
};

}  // namespace

struct ChildProcess::State : std::enable_shared_from_this<ChildProcess::State> {
  State(asio::io_context& io_context, ProcessSpec process_spec, DoneHandler on_done)
      : io(io_context),
        spec(std::move(process_spec)),
        done(std::move(on_done)),
        stdin_pipe(io),
        stdout_pipe(io),
        stderr_pipe(io),
        timeout_timer(io),
        exit_timer(io),
        grace_timer(io),
        exit_watch(io) {}

  asio::io_context& io;
  ProcessSpec spec;
  DoneHandler done;
  bp::async_pipe stdin_pipe;
  bp::async_pipe stdout_pipe;
  bp::async_pipe stderr_pipe;
  asio::steady_timer timeout_timer;
  asio::steady_timer exit_timer;  // only without pidfd
  asio::steady_timer grace_timer;
  asio::posix::stream_descriptor exit_watch;
  std::array<char, kReadChunkBytes> stdout_chunk{};
  std::array<char, kReadChunkBytes> stderr_chunk{};

  pid_t pid = -1;
  int wait_status = 0;
  bool exited = false;
  bool stdout_eof = false;
  bool stderr_eof = false;
  bool timed_out = false;
  bool killed = false;
  bool overflowed = false;
  bool finished = false;
  bool status_lost = false;
  ProcessOutcome outcome;

  void launch() {
    std::string error;
    const std::string executable = resolve_executable(spec.executable, error);
    if (executable.empty()) return fail_spawn(error);

    // Boost.Process creates its pipes without O_CLOEXEC; without it a child spawned later would
    // inherit this one's stdin write end and this child would never see EOF on stdin.
    for (auto* pipe : {&stdin_pipe, &stdout_pipe, &stderr_pipe}) {
      set_cloexec(pipe->native_source());
      set_cloexec(pipe->native_sink());
    }
    std::vector<std::string> env_entries;
    env_entries.reserve(spec.environment.size());
    for (const auto& [name, value] : spec.environment) env_entries.push_back(name + "=" + value);
    std::vector<char*> envp;
    envp.reserve(env_entries.size() + 1);
    for (auto& entry : env_entries) envp.push_back(entry.data());
    envp.push_back(nullptr);
    const auto dir = spec.working_dir.empty() ? std::filesystem::current_path() : spec.working_dir;

    std::error_code ec;
    bp::child child(bp::exe = executable, bp::args = spec.args, bp::start_dir = dir.string(),
                    (bp::std_in < stdin_pipe), (bp::std_out > stdout_pipe),
                    (bp::std_err > stderr_pipe), ChildSetup{{}, envp.data(), spec.kill_with_parent},
                    ec);
    if (ec || !child.valid()) {
      return fail_spawn("cannot start '" + executable +
                        "': " + (ec ? ec.message() : std::string("unknown error")));
    }
    pid = child.id();
    outcome.pid = pid;
    // From here on we reap the child ourselves (below); bp::child must not wait or kill.
    child.detach();

    write_stdin();
    read_stdout();
    read_stderr();
    watch_exit();
    if (spec.timeout.count() > 0) {
      timeout_timer.expires_after(spec.timeout);
      timeout_timer.async_wait([self = shared_from_this()](const boost::system::error_code& e) {
        if (e || self->exited) return;
        self->timed_out = true;
        self->kill_group();
      });
    }
  }

  void fail_spawn(std::string message) {
    outcome.end = ProcessEnd::kSpawnFailed;
    outcome.spawn_error = std::move(message);
    finished = true;
    boost::system::error_code ignored;
    stdin_pipe.close(ignored);
    stdout_pipe.close(ignored);
    stderr_pipe.close(ignored);
    asio::post(io, [self = shared_from_this()] { self->done(std::move(self->outcome)); });
  }

  void write_stdin() {
    if (spec.stdin_data.empty()) {
      boost::system::error_code ignored;
      stdin_pipe.close(ignored);
      return;
    }
    // EPIPE here only means the child did not read its stdin, which is its business.
    asio::async_write(stdin_pipe, asio::buffer(spec.stdin_data),
                      [self = shared_from_this()](const boost::system::error_code&, size_t) {
                        boost::system::error_code ignored;
                        self->stdin_pipe.close(ignored);
                      });
  }

  void read_stdout() {
    stdout_pipe.async_read_some(
        asio::buffer(stdout_chunk),
        [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
          if (ec) {
            self->stdout_eof = true;
            return self->maybe_finish();
          }
          if (!self->overflowed && self->spec.stdout_limit_bytes > 0) {
            self->outcome.stdout_data.append(self->stdout_chunk.data(), n);
            if (self->outcome.stdout_data.size() > self->spec.stdout_limit_bytes) {
              self->overflowed = true;
              std::string().swap(self->outcome.stdout_data);
              self->kill_group();
            }
          }
          self->read_stdout();
        });
  }

  void read_stderr() {
    stderr_pipe.async_read_some(
        asio::buffer(stderr_chunk),
        [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
          if (ec) {
            self->stderr_eof = true;
            return self->maybe_finish();
          }
          auto& tail = self->outcome.stderr_tail;
          tail.append(self->stderr_chunk.data(), n);
          // Trim only once the buffer is twice the tail, so trimming stays amortized O(1).
          const size_t keep = self->spec.stderr_tail_bytes;
          if (tail.size() > 2 * keep + kReadChunkBytes) tail.erase(0, tail.size() - keep);
          self->read_stderr();
        });
  }

  void watch_exit() {
    // Called through syscall(): glibc 2.36's <sys/pidfd.h> lacks extern "C" for C++.
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) return poll_exit();
    exit_watch.assign(pidfd);
    wait_exit();
  }

  void wait_exit() {
    exit_watch.async_wait(asio::posix::stream_descriptor::wait_read,
                          [self = shared_from_this()](const boost::system::error_code& ec) {
                            if (!self->check_exit() && !ec) self->wait_exit();
                          });
  }

  void poll_exit() {
    exit_timer.expires_after(kExitPollInterval);
    exit_timer.async_wait([self = shared_from_this()](const boost::system::error_code&) {
      if (!self->check_exit()) self->poll_exit();
    });
  }

  // True once the child has exited and been reaped.
  bool check_exit() {
    if (exited) return true;
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
      if (errno == EINTR) return false;
      // ECHILD: reaped behind our back (only possible if someone set SIGCHLD to SIG_IGN, which
      // evald never does). The status is lost; report it as such rather than as success.
      status_lost = true;
    } else {
      if (info.si_pid == 0) return false;  // still running
      // Still a zombie, so the group id is ours: take down whatever the child left behind.
      ::kill(-pid, SIGKILL);
      while (::waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
      }
    }
    exited = true;
    boost::system::error_code ignored;
    exit_watch.close(ignored);
    timeout_timer.cancel();
    grace_timer.expires_after(kPipeGrace);
    grace_timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->finished) return;
      boost::system::error_code ignore;
      self->stdout_pipe.close(ignore);
      self->stderr_pipe.close(ignore);
    });
    maybe_finish();
    return true;
  }

  void kill_group() {
    if (pid > 0 && !exited) ::kill(-pid, SIGKILL);
  }

  void maybe_finish() {
    if (finished || !exited || !stdout_eof || !stderr_eof) return;
    finished = true;
    timeout_timer.cancel();
    grace_timer.cancel();
    auto& tail = outcome.stderr_tail;
    if (tail.size() > spec.stderr_tail_bytes) tail.erase(0, tail.size() - spec.stderr_tail_bytes);
    if (WIFEXITED(wait_status)) outcome.exit_code = WEXITSTATUS(wait_status);
    if (WIFSIGNALED(wait_status)) outcome.signal = WTERMSIG(wait_status);
    if (status_lost) outcome.exit_code = -1;
    if (killed) {
      outcome.end = ProcessEnd::kKilled;
    } else if (timed_out) {
      outcome.end = ProcessEnd::kTimedOut;
    } else if (overflowed) {
      outcome.end = ProcessEnd::kStdoutOverflow;
    } else if (WIFSIGNALED(wait_status)) {
      outcome.end = ProcessEnd::kSignaled;
    } else {
      outcome.end = ProcessEnd::kExited;
    }
    done(std::move(outcome));
  }
};

ChildProcess ChildProcess::start(asio::io_context& io, ProcessSpec spec, DoneHandler done) {
  std::shared_ptr<State> state;
  try {
    state = std::make_shared<State>(io, std::move(spec), done);
  } catch (const std::exception& e) {
    // Pipe creation fails when the worker is out of descriptors; report it like a failed spawn.
    auto failed = std::make_shared<ProcessOutcome>();
    failed->spawn_error = std::string("cannot create pipes: ") + e.what();
    asio::post(io, [failed, done] { done(std::move(*failed)); });
    return ChildProcess(nullptr);
  }
  try {
    state->launch();
  } catch (const std::exception& e) {
    if (state->pid < 0 && !state->finished) {
      state->fail_spawn(std::string("cannot start: ") + e.what());
    } else {
      throw;  // after a successful spawn nothing above throws; if it did, it is a bug
    }
  }
  return ChildProcess(std::move(state));
}

void ChildProcess::kill() {
  if (!state_ || state_->finished) return;
  state_->killed = true;
  state_->kill_group();
}

void ChildProcess::terminate() {
  if (!state_ || state_->finished || state_->exited || state_->pid <= 0) return;
  state_->killed = true;
  ::kill(-state_->pid, SIGTERM);
}

pid_t ChildProcess::pid() const {
  return state_ ? state_->pid : -1;
}

ProcessOutcome run_process(ProcessSpec spec) {
  ScopedSigpipeBlock sigpipe_block;
  asio::io_context io;
  ProcessOutcome result;
  auto child = ChildProcess::start(
      io, std::move(spec), [&result](ProcessOutcome outcome) { result = std::move(outcome); });
  io.run();
  return result;
}

std::vector<std::pair<std::string, std::string>> current_environment() {
  std::vector<std::pair<std::string, std::string>> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string_view text(*entry);
    const auto eq = text.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    env.emplace_back(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
  }
  return env;
}

std::string signal_name(int signal) {
  const char* abbrev = ::sigabbrev_np(signal);
  return abbrev != nullptr ? std::string("SIG") + abbrev : std::string("SIG?");
}

ScopedSigpipeBlock::ScopedSigpipeBlock() {
  sigset_t pipe_only;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  sigset_t old;
  ::pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
  was_blocked_ = sigismember(&old, SIGPIPE) == 1;
}

ScopedSigpipeBlock::~ScopedSigpipeBlock() {
  if (was_blocked_) return;
  sigset_t pipe_only;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  // A SIGPIPE raised by our own writes is pending on this thread; swallow it before unblocking.
  const timespec no_wait{0, 0};
  while (::sigtimedwait(&pipe_only, nullptr, &no_wait) == SIGPIPE) {
  }
  ::pthread_sigmask(SIG_UNBLOCK, &pipe_only, nullptr);
}

}  // namespace evald::worker
