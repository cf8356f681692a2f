#include "common/curve_keys.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unordered_set>

namespace evald {
namespace {

// Key files are tiny; anything bigger is not a key file, and we do not read it whole.
constexpr std::streamsize kMaxKeyFileBytes = 4096;
constexpr size_t kMaxWorkerKeysFileBytes = size_t{16} << 20;

Status write_file(const std::string& path, const std::string& text, mode_t mode, bool exclusive) {
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (exclusive ? O_EXCL : O_TRUNC);
  const int fd = ::open(path.c_str(), flags, mode);
  if (fd < 0) {
    if (errno == EEXIST) {
      return make_error(path + " already exists (use --force to replace it)");
    }
    return make_error("cannot create " + path + ": " + std::strerror(errno));
  }
  // O_CREAT applies the umask, and an existing file keeps its mode under --force: set it.
  bool ok = ::fchmod(fd, mode) == 0;
  size_t written = 0;
  while (ok && written < text.size()) {
    const auto n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) written += static_cast<size_t>(n);
  }
  if (ok) ok = ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  if (!ok) return make_error("cannot write " + path + ": " + std::strerror(saved));
  return Ok{};
}

}  // namespace

bool is_z85_key(std::string_view text) {
  if (text.size() != kCurveKeyZ85Chars) return false;
  const std::string terminated(text);  // zmq_z85_decode wants a C string
  std::array<uint8_t, 32> bytes{};
  return zmq_z85_decode(bytes.data(), terminated.c_str()) != nullptr;
}

Result<std::string> read_key_file(const std::string& path, std::string_view flag, bool secret) {
  const std::string where = std::string(flag) + ": " + path;
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(where + ": cannot read: " + std::strerror(errno));
  std::string text(kMaxKeyFileBytes + 1, '\0');
  in.read(text.data(), kMaxKeyFileBytes + 1);
  text.resize(static_cast<size_t>(in.gcount()));
  if (in.bad()) return make_error(where + ": cannot read");
  if (text.ends_with('\n')) text.pop_back();
  if (text.ends_with('\r')) text.pop_back();
  if (!is_z85_key(text)) {
    return make_error(where +
                      ": not a CURVE key (expected 40 Z85 characters and an optional "
                      "newline; create keys with 'evalctl keygen')");
  }
  if (secret) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
      spdlog::warn("secret_key_readable_by_others flag={} path={} mode={:o}", flag, path,
                   st.st_mode & 0777);
    }
  }
  return text;
}

Result<std::string> curve_public_key(const std::string& secret_z85) {
  std::array<char, kCurveKeyZ85Chars + 1> public_z85{};
  if (zmq_curve_public(public_z85.data(), secret_z85.c_str()) != 0) {
    return make_error(std::string("cannot derive the public key: ") + zmq_strerror(zmq_errno()));
  }
  return std::string(public_z85.data());
}

CurveKeyPair generate_curve_key_pair() {
  std::array<char, kCurveKeyZ85Chars + 1> public_z85{};
  std::array<char, kCurveKeyZ85Chars + 1> secret_z85{};
  if (zmq_curve_keypair(public_z85.data(), secret_z85.data()) != 0) {
    // Only a libzmq built without CURVE fails here; Debian's has it.
    throw std::runtime_error(std::string("zmq_curve_keypair: ") + zmq_strerror(zmq_errno()));
  }
  return CurveKeyPair{public_z85.data(), secret_z85.data()};
}

Status write_key_pair(const std::string& prefix, const CurveKeyPair& keys, bool force) {
  const std::string secret_path = prefix + ".secret";
  const std::string public_path = prefix + ".public";
  if (!force) {
    // Checked for both first, so a refusal leaves nothing half-written.
    for (const auto& path : {secret_path, public_path}) {
      struct stat st {};
      if (::lstat(path.c_str(), &st) == 0) {
        return make_error(path + " already exists (use --force to replace it)");
      }
    }
  }
  if (force) ::unlink(secret_path.c_str());  // recreated below with O_EXCL and mode 0600
  if (auto status = write_file(secret_path, keys.secret_z85 + "\n", 0600, true); !status.ok()) {
    return status;
  }
  return write_file(public_path, keys.public_z85 + "\n", 0644, !force);
}

Result<WorkerKeys> parse_worker_keys(std::string_view text, const std::string& source) {
  WorkerKeys keys;
  std::unordered_set<std::string> names;
  size_t line_no = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    // '#' is a Z85 character, so it starts a comment only where a name or a third field would
    // start: at the beginning of a line or of the field after the key.
    std::istringstream fields{std::string(line)};
    std::string name;
    std::string key;
    std::string extra;
    if (!(fields >> name) || name.starts_with('#')) continue;  // blank or comment only
    const std::string where = source + ":" + std::to_string(line_no);
    if (!(fields >> key) || key.starts_with('#') ||
        ((fields >> extra) && !extra.starts_with('#'))) {
      return make_error(where + ": expected 'NAME PUBLIC_KEY_Z85'");
    }
    if (!is_z85_key(key)) {
      return make_error(where + ": '" + key + "' is not a CURVE public key (40 Z85 characters)");
    }
    if (!names.insert(name).second) {
      return make_error(where + ": worker '" + name + "' is listed twice");
    }
    if (!keys.name_by_key.emplace(key, name).second) {
      return make_error(where + ": the key of '" + name + "' is already listed for worker '" +
                        keys.name_by_key[key] + "'");
    }
  }
  return keys;
}

Result<WorkerKeys> read_worker_keys(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("--worker-keys: " + path + ": cannot read: " + std::strerror(errno));
  std::string text;
  std::array<char, 65536> chunk{};
  while (in.read(chunk.data(), chunk.size()) || in.gcount() > 0) {
    text.append(chunk.data(), static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxWorkerKeysFileBytes) {
      return make_error("--worker-keys: " + path + ": larger than 16 MiB");
    }
  }
  if (in.bad()) return make_error("--worker-keys: " + path + ": cannot read");
  auto parsed = parse_worker_keys(text, path);
  if (!parsed.ok()) return make_error("--worker-keys: " + parsed.error().message);
  return parsed;
}

bool is_loopback_endpoint(std::string_view endpoint) {
  if (endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://")) return true;
  if (!endpoint.starts_with("tcp://")) return false;
  std::string_view host = endpoint.substr(6);
  // tcp://[::1]:5555, tcp://127.0.0.1:5555, tcp://localhost:5555; a "source;" prefix is for
  // connects only and not a bind.
  if (host.starts_with('[')) {
    const auto close = host.find(']');
    if (close == std::string_view::npos) return false;
    return host.substr(1, close - 1) == "::1";
  }
  const auto colon = host.rfind(':');
  if (colon == std::string_view::npos) return false;
  host = host.substr(0, colon);
  if (host == "localhost") return true;
  // 127.0.0.0/8, written as a dotted quad: four numbers, the first 127.
  if (!host.starts_with("127.")) return false;
  int parts = 0;
  size_t i = 0;
  while (i <= host.size()) {
    size_t dot = host.find('.', i);
    if (dot == std::string_view::npos) dot = host.size();
    const auto part = host.substr(i, dot - i);
    if (part.empty() || part.size() > 3) return false;
    int value = 0;
    for (char ch : part) {
      if (ch < '0' || ch > '9') return false;
      value = value * 10 + (ch - '0');
    }
    if (value > 255) return false;
    ++parts;
    i = dot + 1;
  }
  return parts == 4;
}

}  // namespace evald
