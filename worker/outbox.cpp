#include "worker/outbox.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include "common/json_limits.hpp"

namespace evald::worker {
namespace {

constexpr std::string_view kResultSuffix = ".result";
constexpr std::string_view kTmpSuffix = ".tmp";
constexpr std::string_view kCorruptSuffix = ".corrupt";
// A stored result is one frame; anything bigger than the protocol allows is not ours.
constexpr uintmax_t kMaxFileBytes = uintmax_t{256} << 20;

std::string errno_text() {
  return std::strerror(errno);
}

Status write_file_synced(const std::filesystem::path& path, const std::string& bytes) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid())
    return make_error("outbox: cannot create " + path.string() + ": " + errno_text());
  size_t written = 0;
  while (written < bytes.size()) {
    const auto n = ::write(fd.get(), bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error("outbox: cannot write " + path.string() + ": " + errno_text());
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) {
    return make_error("outbox: cannot fsync " + path.string() + ": " + errno_text());
  }
  return Ok{};
}

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

Result<protocol::ShardResult> read_result_file(const std::filesystem::path& path,
                                               uint64_t expected_attempt_id) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return make_error("cannot stat: " + ec.message());
  if (size > kMaxFileBytes) return make_error("file larger than 256 MiB");
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("cannot open");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  auto decoded = protocol::decode(bytes.str());
  if (!decoded.ok()) return make_error("does not decode: " + decoded.error().message);
  auto* results = std::get_if<protocol::Results>(&decoded.value());
  if (results == nullptr) return make_error("holds a message that is not RESULTS");
  if (results->results.size() != 1) {
    return make_error("holds " + std::to_string(results->results.size()) + " results, not 1");
  }
  if (results->results.front().attempt_id != expected_attempt_id) {
    return make_error("holds attempt " + std::to_string(results->results.front().attempt_id) +
                      ", not the one its name says");
  }
  // The samples were bounded when the runner's stdout was parsed; a file that holds deeper ones
  // was not written by us, and they would be sent on to the coordinator as they are.
  if (auto deep = check_json_depth(results->results.front().samples_json)) {
    return make_error("holds samples that " + deep->message);
  }
  return std::move(results->results.front());
}

}  // namespace

Result<Outbox> Outbox::open(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error("outbox: cannot create " + dir.string() + ": " + ec.message());
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd.valid())
    return make_error("outbox: cannot open " + dir.string() + ": " + errno_text());
  return Outbox(dir, std::move(dir_fd));
}

std::filesystem::path Outbox::path_of(uint64_t attempt_id) const {
  return dir_ / (std::to_string(attempt_id) + std::string(kResultSuffix));
}

Status Outbox::write(const std::vector<const protocol::ShardResult*>& results) {
  if (results.empty()) return Ok{};
  // All data first, then all renames, then one directory fsync: a batch costs one fsync per file
  // plus one, instead of two per file.
  for (const auto* result : results) {
    const auto final_path = path_of(result->attempt_id);
    auto tmp_path = final_path;
    tmp_path += kTmpSuffix;
    auto status = write_file_synced(tmp_path, protocol::encode(protocol::Results{{*result}}));
    if (!status.ok()) {
      std::error_code ignored;
      std::filesystem::remove(tmp_path, ignored);
      return status;
    }
  }
  for (const auto* result : results) {
    const auto final_path = path_of(result->attempt_id);
    auto tmp_path = final_path;
    tmp_path += kTmpSuffix;
    if (::rename(tmp_path.c_str(), final_path.c_str()) != 0) {
      return make_error("outbox: cannot rename " + tmp_path.string() + ": " + errno_text());
    }
  }
  if (::fsync(dir_fd_.get()) != 0) {
    return make_error("outbox: cannot fsync " + dir_.string() + ": " + errno_text());
  }
  return Ok{};
}

void Outbox::remove(uint64_t attempt_id) {
  const auto path = path_of(attempt_id);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    spdlog::warn("outbox_remove_failed attempt_id={} path={} error=\"{}\"", attempt_id,
                 path.string(), errno_text());
  }
}

LoadedOutbox Outbox::load() {
  LoadedOutbox loaded;
  std::error_code ec;
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    files.push_back(entry.path());
  }
  if (ec) {
    spdlog::error("outbox_unreadable dir={} error=\"{}\"", dir_.string(), ec.message());
    return loaded;
  }
  for (const auto& path : files) {
    const std::string name = path.filename().string();
    if (ends_with(name, kTmpSuffix)) {
      // Written but never renamed into place, hence never sent: not a result we hold.
      std::filesystem::remove(path, ec);
      continue;
    }
    if (!ends_with(name, kResultSuffix)) continue;  // .corrupt files and anything else stay put
    const auto stem = std::string_view(name).substr(0, name.size() - kResultSuffix.size());
    uint64_t attempt_id = 0;
    const auto [end, err] = std::from_chars(stem.data(), stem.data() + stem.size(), attempt_id);
    Result<protocol::ShardResult> result = make_error("name is not <attempt_id>.result");
    if (err == std::errc{} && end == stem.data() + stem.size() && !stem.empty()) {
      result = read_result_file(path, attempt_id);
    }
    if (result.ok()) {
      loaded.results.push_back(std::move(result.value()));
      continue;
    }
    auto aside = path;
    aside += kCorruptSuffix;
    ++loaded.corrupt;
    if (::rename(path.c_str(), aside.c_str()) != 0) {
      spdlog::error("outbox_corrupt_file path={} reason=\"{}\" moved=false error=\"{}\"",
                    path.string(), result.error().message, errno_text());
    } else {
      spdlog::error("outbox_corrupt_file path={} reason=\"{}\" moved_to={}", path.string(),
                    result.error().message, aside.string());
    }
  }
  std::sort(loaded.results.begin(), loaded.results.end(),
            [](const auto& a, const auto& b) { return a.attempt_id < b.attempt_id; });
  return loaded;
}

}  // namespace evald::worker
