#include "tests/support/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <system_error>
#include <thread>

extern char** environ;  // NOLINT(readability-redundant-declaration): POSIX, not in any header

namespace evald::testing {
namespace {

// Poll interval while waiting for a child to exit; waitpid has no timeout of its own.
constexpr auto kReapInterval = std::chrono::milliseconds(2);

int exit_code_from_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Where the child's fds 1 and 2 come from: a pipe's write end, or a file opened for append.
struct Redirect {
  int fd = -1;                 // dup2'ed onto the target if >= 0
  const char* path = nullptr;  // else opened O_APPEND if set
};

// fork + execve. fork rather than posix_spawn because the child must set PR_SET_PDEATHSIG: if
// the test process dies (a ctest timeout SIGKILLs it), its daemons die with it instead of
// lingering on the shared machine. Everything the child touches is prepared before the fork;
// after it, only async-signal-safe calls.
pid_t spawn(const std::filesystem::path& executable, const std::vector<std::string>& args,
            const std::vector<std::pair<std::string, std::string>>& env_overrides, Redirect out,
            Redirect err) {
  std::map<std::string, std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string item = *entry;
    const auto eq = item.find('=');
    if (eq != std::string::npos) env[item.substr(0, eq)] = item.substr(eq + 1);
  }
  for (const auto& [name, value] : env_overrides) env[name] = value;
  std::vector<std::string> env_strings;
  env_strings.reserve(env.size());
  for (const auto& [name, value] : env) env_strings.push_back(name + "=" + value);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  std::string exe = executable.string();
  std::vector<std::string> argv_strings;
  argv_strings.push_back(exe);
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  int error_pipe[2];  // CLOEXEC: closes on a successful exec, carries errno otherwise
  if (::pipe2(error_pipe, O_CLOEXEC) != 0) {
    throw std::system_error(errno, std::generic_category(), "pipe2");
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    ::close(error_pipe[0]);
    ::close(error_pipe[1]);
    throw std::system_error(e, std::generic_category(), "fork " + exe);
  }
  if (pid == 0) {
    auto fail = [&](int e) {
      [[maybe_unused]] auto n = ::write(error_pipe[1], &e, sizeof e);
      ::_exit(127);
    };
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(errno);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl took effect
    ::signal(SIGPIPE, SIG_DFL);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull < 0 || ::dup2(devnull, 0) < 0) fail(errno);
    auto redirect = [&](const Redirect& r, int target) {
      int fd = r.fd;
      if (fd < 0 && r.path != nullptr) fd = ::open(r.path, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd < 0) fail(errno);
      if (::dup2(fd, target) < 0) fail(errno);
    };
    redirect(out, 1);
    redirect(err, 2);
    ::execve(argv[0], argv.data(), envp.data());
    fail(errno);
  }
  ::close(error_pipe[1]);
  int child_errno = 0;
  ssize_t n = 0;
  do {
    n = ::read(error_pipe[0], &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  ::close(error_pipe[0]);
  if (n > 0) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    throw std::system_error(child_errno, std::generic_category(), "cannot start " + exe);
  }
  return pid;
}

}  // namespace

ChildProcess::ChildProcess(ProcessOptions options) : options_(std::move(options)) {
  if (!options_.log_file.empty() && options_.log_file.has_parent_path()) {
    std::filesystem::create_directories(options_.log_file.parent_path());
  }
  const std::string log = options_.log_file.empty() ? "/dev/null" : options_.log_file.string();
  int out_pipe[2] = {-1, -1};
  if (options_.pipe_stdout && ::pipe2(out_pipe, O_CLOEXEC) != 0) {
    throw std::system_error(errno, std::generic_category(), "pipe2");
  }
  try {
    pid_ = spawn(options_.executable, options_.args, options_.env,
                 options_.pipe_stdout ? Redirect{out_pipe[1], nullptr} : Redirect{-1, log.c_str()},
                 Redirect{-1, log.c_str()});
  } catch (...) {
    close_fd(out_pipe[0]);
    close_fd(out_pipe[1]);
    throw;
  }
  close_fd(out_pipe[1]);
  stdout_fd_ = out_pipe[0];
}

ChildProcess::~ChildProcess() {
  if (!exit_code_) {
    ::kill(pid_, SIGKILL);
    reap(true);
  }
  close_fd(stdout_fd_);
}

bool ChildProcess::reap(bool block) {
  if (exit_code_) return true;
  int status = 0;
  while (true) {
    const pid_t r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
    if (r == pid_) {
      exit_code_ = exit_code_from_status(status);
      return true;
    }
    if (r == 0) return false;
    if (errno == EINTR) continue;
    // ECHILD: somebody else reaped it; treat it as gone rather than waiting forever.
    exit_code_ = -1;
    return true;
  }
}

std::optional<std::string> ChildProcess::read_line(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (const auto nl = stdout_buffer_.find('\n'); nl != std::string::npos) {
      std::string line = stdout_buffer_.substr(0, nl);
      stdout_buffer_.erase(0, nl + 1);
      return line;
    }
    if (stdout_fd_ < 0) return std::nullopt;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd item{stdout_fd_, POLLIN, 0};
    const int ready = ::poll(&item, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return std::nullopt;
    char buffer[4096];
    const ssize_t n = ::read(stdout_fd_, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close_fd(stdout_fd_);
      continue;  // hand out a last unterminated line? no: only whole lines count
    }
    stdout_buffer_.append(buffer, static_cast<size_t>(n));
  }
}

void ChildProcess::signal(int signo) {
  if (!reap(false)) ::kill(pid_, signo);
}

void ChildProcess::kill() {
  signal(SIGKILL);
  reap(true);
}

void ChildProcess::stop() {
  signal(SIGSTOP);
}
void ChildProcess::resume() {
  signal(SIGCONT);
}

bool ChildProcess::running() {
  return !reap(false);
}

std::optional<int> ChildProcess::wait_exit(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!reap(false)) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(kReapInterval);
  }
  return exit_code_;
}

int ChildProcess::terminate(std::chrono::milliseconds grace) {
  signal(SIGCONT);  // a stopped process cannot act on SIGTERM
  signal(SIGTERM);
  if (auto code = wait_exit(grace)) return *code;
  kill();
  return *exit_code_;
}

CommandResult run_command(const std::filesystem::path& executable,
                          const std::vector<std::string>& args, std::chrono::milliseconds timeout,
                          const std::vector<std::pair<std::string, std::string>>& env) {
  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    throw std::system_error(errno, std::generic_category(), "pipe2");
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    throw std::system_error(e, std::generic_category(), "pipe2");
  }
  pid_t pid = -1;
  try {
    pid = spawn(executable, args, env, Redirect{out_pipe[1], nullptr},
                Redirect{err_pipe[1], nullptr});
  } catch (...) {
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) ::close(fd);
    throw;
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);

  CommandResult result;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int fds[2] = {out_pipe[0], err_pipe[0]};
  std::string* sinks[2] = {&result.out, &result.err};
  while (fds[0] >= 0 || fds[1] >= 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      break;
    }
    pollfd items[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};  // fd -1 is ignored by poll
    const int ready = ::poll(items, 2, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i] < 0 || items[i].revents == 0) continue;
      char buffer[8192];
      const ssize_t n = ::read(fds[i], buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        close_fd(fds[i]);
      } else {
        sinks[i]->append(buffer, static_cast<size_t>(n));
      }
    }
  }
  close_fd(fds[0]);
  close_fd(fds[1]);
  if (result.timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  // After EOF on both pipes the child has exited or is about to; with a timeout it was killed.
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = result.timed_out ? -1 : exit_code_from_status(status);
  return result;
}

std::string file_tail(const std::filesystem::path& file, size_t max_bytes) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const auto size = static_cast<size_t>(in.tellg());
  const size_t start = size > max_bytes ? size - max_bytes : 0;
  in.seekg(static_cast<std::streamoff>(start));
  std::string out(size - start, '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  return out;
}

}  // namespace evald::testing
