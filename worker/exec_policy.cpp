// The check compares canonical paths, so neither a symlink inside an allowed directory that
// points outside it nor ".." components can widen the policy. The program is started afterwards
// through its unresolved path, exactly as without a policy: a Python venv finds itself through
// the path it was started as, and resolving its bin/python to /usr/bin/python3.x would break it.
// The window between the check and the exec only matters to someone who can change files under
// an allowed path, and whoever can do that can put any program there anyway.
#include "worker/exec_policy.hpp"

#include <algorithm>
#include <boost/process/search_path.hpp>
#include <optional>
#include <system_error>

namespace evald::worker {
namespace {

namespace bp = boost::process;

// Whether `path` is `dir` or lies below it; both canonical, so a plain component comparison is
// enough ("/opt/evalx" is not under "/opt/eval").
bool is_under(const std::filesystem::path& path, const std::filesystem::path& dir) {
  auto p = path.begin();
  for (const auto& part : dir) {
    if (p == path.end() || *p != part) return false;
    ++p;
  }
  return true;
}

}  // namespace

std::string resolve_executable(const std::string& name, std::string& error) {
  if (name.empty()) {
    error = "the command is empty";
    return {};
  }
  if (name.find('/') != std::string::npos) {
    std::error_code ec;
    auto absolute = std::filesystem::absolute(name, ec);
    return ec ? name : absolute.string();
  }
  const auto found = bp::search_path(name);
  if (found.empty()) {
    error = "executable '" + name + "' not found in PATH";
    return {};
  }
  return found.string();
}

Result<ExecPolicy> ExecPolicy::from_paths(const std::vector<std::string>& entries) {
  ExecPolicy policy;
  for (const auto& entry : entries) {
    if (entry.empty()) return make_error("--allow-exec: an entry is empty");
    std::error_code ec;
    auto canonical = std::filesystem::canonical(entry, ec);
    if (ec) return make_error("--allow-exec: " + entry + ": " + ec.message());
    const auto status = std::filesystem::status(canonical, ec);
    if (ec) return make_error("--allow-exec: " + entry + ": " + ec.message());
    const bool directory = std::filesystem::is_directory(status);
    if (!directory && !std::filesystem::is_regular_file(status)) {
      return make_error("--allow-exec: " + entry + ": neither a file nor a directory");
    }
    policy.entries_.push_back(Entry{std::move(canonical), directory});
  }
  return policy;
}

std::optional<ExecPolicy::Refused> ExecPolicy::check(const std::string& executable) const {
  if (!restricted()) return std::nullopt;
  std::string error;
  const std::string resolved = resolve_executable(executable, error);
  if (resolved.empty()) return Refused{Refusal::kNotFound, executable + ": " + error};
  std::error_code ec;
  const auto canonical = std::filesystem::canonical(resolved, ec);
  if (ec) {
    return Refused{Refusal::kNotFound, resolved + ": " + ec.message()};
  }
  const bool allowed = std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) {
    return e.directory ? is_under(canonical, e.path) : canonical == e.path;
  });
  if (allowed) return std::nullopt;
  std::string shown = resolved;
  if (canonical != std::filesystem::path(resolved))
    shown += " (resolves to " + canonical.string() + ")";
  return Refused{Refusal::kNotAllowed, shown + ": not under --allow-exec (" + describe() + ")"};
}

std::string ExecPolicy::describe() const {
  if (!restricted()) return "anything";
  std::string out;
  for (const auto& entry : entries_) {
    if (!out.empty()) out += ", ";
    out += entry.path.string();
  }
  return out;
}

const char* to_string(ExecPolicy::Refusal reason) {
  switch (reason) {
    case ExecPolicy::Refusal::kNotAllowed:
      return "not_allowed";
    case ExecPolicy::Refusal::kNotFound:
      return "not_found";
  }
  return "unknown";
}

}  // namespace evald::worker
