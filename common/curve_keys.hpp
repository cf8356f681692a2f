// CURVE keys for the worker socket: reading and checking key files, the coordinator's allowlist
// of worker keys, generating key pairs (evalctl keygen), and the loopback test behind protected
// mode. Used by evald-coordinator, evald-worker and evalctl at start-up, never on a hot path.
//
// A key file holds one Z85 key (40 characters, ZeroMQ's text form of a 32-byte key), optionally
// followed by a newline. Errors name the flag and the file, so main() can print them as they are.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>

#include "common/result.hpp"

namespace evald {

inline constexpr size_t kCurveKeyZ85Chars = 40;

// True if `text` is a 40-character Z85 string that decodes to 32 bytes.
bool is_z85_key(std::string_view text);

// Reads the key in `path` for `flag` ("--curve-secret"). A secret key file readable by group or
// others is accepted with a warning in the log (the key is as good as published).
Result<std::string> read_key_file(const std::string& path, std::string_view flag, bool secret);

// The public key of a Z85 secret key.
Result<std::string> curve_public_key(const std::string& secret_z85);

struct CurveKeyPair {
  std::string public_z85;
  std::string secret_z85;
};
CurveKeyPair generate_curve_key_pair();

// Writes PREFIX.secret (mode 0600, created exclusively so an existing key is never replaced
// unless `force`) and PREFIX.public (0644), each the Z85 key and a newline.
Status write_key_pair(const std::string& prefix, const CurveKeyPair& keys, bool force);

// The coordinator's allowlist: public key (Z85) -> worker name.
struct WorkerKeys {
  std::unordered_map<std::string, std::string> name_by_key;
};

// Parses a --worker-keys file: one `NAME PUBLIC_KEY_Z85` per line, `#` starts a comment, blank
// lines are ignored. A malformed line, a name or key listed twice is an error naming file:line.
Result<WorkerKeys> read_worker_keys(const std::string& path);
Result<WorkerKeys> parse_worker_keys(std::string_view text, const std::string& source);

// A ZeroMQ endpoint that only this host can reach: tcp:// on 127.0.0.0/8, ::1 or localhost,
// ipc:// and inproc://. Everything else (0.0.0.0, a host name, an interface) is exposed.
bool is_loopback_endpoint(std::string_view endpoint);

}  // namespace evald
