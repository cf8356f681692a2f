#include "coordinator/auth.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cctype>
#include <fstream>
#include <iterator>
#include <sstream>

namespace evald::coordinator {
namespace {

constexpr size_t kMaxNameBytes = 64;

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  for (const char c : name) {
    const auto byte = static_cast<unsigned char>(c);
    if (std::isalnum(byte) == 0 && c != '-' && c != '_' && c != '.' && c != '@') return false;
  }
  return true;
}

std::optional<Sha256> parse_hex_hash(std::string_view text) {
  if (text.size() != 64) return std::nullopt;
  Sha256 out{};
  for (size_t i = 0; i < 32; ++i) {
    unsigned value = 0;
    for (size_t j = 0; j < 2; ++j) {
      const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(text[2 * i + j])));
      value <<= 4;
      if (c >= '0' && c <= '9') {
        value |= static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        value |= static_cast<unsigned>(c - 'a' + 10);
      } else {
        return std::nullopt;
      }
    }
    out[i] = static_cast<unsigned char>(value);
  }
  return out;
}

}  // namespace

const char* to_string(Role role) {
  switch (role) {
    case Role::kReader:
      return "reader";
    case Role::kSubmitter:
      return "submitter";
    case Role::kOperator:
      return "operator";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

std::optional<Role> parse_role(std::string_view text) {
  for (const Role role : {Role::kReader, Role::kSubmitter, Role::kOperator, Role::kAdmin}) {
    if (text == to_string(role)) return role;
  }
  return std::nullopt;
}

Sha256 sha256(std::string_view data) {
  Sha256 out{};
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), out.data(), &length, EVP_sha256(), nullptr);
  return out;
}

Result<TokenTable> TokenTable::load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return make_error("cannot read API token file " + file.string());
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return make_error("cannot read API token file " + file.string());
  return parse(text, file.string());
}

Result<TokenTable> TokenTable::parse(std::string_view text, const std::string& source) {
  TokenTable table;
  size_t line_number = 0;
  std::istringstream lines{std::string(text)};
  std::string line;
  while (std::getline(lines, line)) {
    ++line_number;
    const auto at = [&](const std::string& why) {
      return make_error(source + ":" + std::to_string(line_number) + ": " + why +
                        " (expected NAME ROLE SHA256_HEX)");
    };
    if (const auto hash_mark = line.find('#'); hash_mark != std::string::npos) {
      line.erase(hash_mark);
    }
    std::istringstream fields(line);
    std::string name;
    std::string role_text;
    std::string hash_text;
    std::string extra;
    if (!(fields >> name)) continue;  // blank or comment
    if (!(fields >> role_text >> hash_text)) return at("missing fields");
    if (fields >> extra) return at("unexpected text '" + extra + "' after the hash");
    if (!valid_name(name)) {
      return at("invalid name '" + name + "' (1-64 of A-Z a-z 0-9 - _ . @)");
    }
    const auto role = parse_role(role_text);
    if (!role) {
      return at("unknown role '" + role_text + "' (reader, submitter, operator or admin)");
    }
    const auto hash = parse_hex_hash(hash_text);
    if (!hash) return at("the hash must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)");
    for (const auto& entry : table.entries_) {
      if (entry.principal.name == name) return at("duplicate name '" + name + "'");
      if (entry.hash == *hash) return at("the same token is listed twice");
    }
    table.entries_.push_back(Entry{Principal{name, *role}, *hash});
  }
  if (table.entries_.empty())
    return make_error(source + ": no tokens (expected NAME ROLE SHA256_HEX lines)");
  return table;
}

std::optional<Principal> TokenTable::authenticate(std::string_view token) const {
  if (token.empty()) return std::nullopt;
  const Sha256 presented = sha256(token);
  // Every entry is compared, whatever matched, so the time taken does not depend on which one
  // (if any) did.
  const Entry* match = nullptr;
  for (const auto& entry : entries_) {
    const bool equal = CRYPTO_memcmp(entry.hash.data(), presented.data(), presented.size()) == 0;
    if (equal) match = &entry;
  }
  if (match == nullptr) return std::nullopt;
  return match->principal;
}

std::optional<std::string_view> bearer_token(std::string_view authorization) {
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size()) return std::nullopt;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kScheme[i]) {
      return std::nullopt;
    }
  }
  auto token = authorization.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.remove_suffix(1);
  if (token.empty()) return std::nullopt;
  return token;
}

}  // namespace evald::coordinator
