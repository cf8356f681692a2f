// API tokens and roles: who a request comes from and what it may do. The token file
// (--api-tokens) has one token per line, "NAME ROLE SHA256_HEX", where the hash is that of the
// token text (`printf %s "$TOKEN" | sha256sum`); '#' starts a comment. Only hashes are stored, so
// the file does not let its reader act as anybody; a presented token is hashed and compared with
// every entry in constant time, so timing tells nothing about how close a guess was.
//
// Thread safety: a TokenTable is immutable after load; the HTTP thread (/metrics) and the core
// thread (the API) use it at the same time.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace evald::coordinator {

// Each role includes the ones before it.
enum class Role : uint8_t {
  kReader = 0,     // every GET
  kSubmitter = 1,  // submit; rerun and cancel of its own campaigns
  kOperator = 2,   // rerun and cancel of any campaign, imports of scores
  kAdmin = 3,      // the audit log
};
const char* to_string(Role role);
std::optional<Role> parse_role(std::string_view text);

struct Principal {
  std::string name;
  Role role = Role::kReader;
};

using Sha256 = std::array<unsigned char, 32>;
Sha256 sha256(std::string_view data);

class TokenTable {
 public:
  // Parses the file; an error names FILE:LINE and what is wrong (unknown role, a hash that is not
  // 64 hex digits, a duplicate name or hash, a bad name). A file without tokens is an error too.
  static Result<TokenTable> load(const std::filesystem::path& file);
  static Result<TokenTable> parse(std::string_view text, const std::string& source);

  // The principal whose token this is, or nullopt.
  std::optional<Principal> authenticate(std::string_view token) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Principal principal;
    Sha256 hash;
  };
  std::vector<Entry> entries_;
};

// The token of an "Authorization: Bearer TOKEN" header value (scheme case-insensitive), or
// nullopt when the header is absent or of another scheme.
std::optional<std::string_view> bearer_token(std::string_view authorization);

}  // namespace evald::coordinator
