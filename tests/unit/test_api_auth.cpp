// The API token file and bearer-token parsing (coordinator/auth.hpp).
#include <catch2/catch.hpp>
#include <cctype>

#include "coordinator/auth.hpp"

namespace {

using namespace evald::coordinator;

std::string hex(const Sha256& hash) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (const unsigned char byte : hash) {
    out += kHex[byte >> 4];
    out += kHex[byte & 0xF];
  }
  return out;
}

}  // namespace

TEST_CASE("sha256 matches sha256sum", "[unit][auth]") {
  // printf %s abc | sha256sum
  CHECK(hex(sha256("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("token table: parses names, roles and hashes, authenticates by token", "[unit][auth]") {
  const std::string text = "# who role hash\n\nalice reader " + hex(sha256("a-token")) +
                           "  # trailing comment\nbob admin " + hex(sha256("b-token")) + "\n";
  auto table = TokenTable::parse(text, "tokens");
  REQUIRE(table.ok());
  CHECK(table->size() == 2);
  const auto alice = table->authenticate("a-token");
  REQUIRE(alice);
  CHECK(alice->name == "alice");
  CHECK(alice->role == Role::kReader);
  const auto bob = table->authenticate("b-token");
  REQUIRE(bob);
  CHECK(bob->role == Role::kAdmin);
  CHECK_FALSE(table->authenticate("a-token "));
  CHECK_FALSE(table->authenticate(""));
  CHECK_FALSE(table->authenticate(hex(sha256("a-token"))));  // the hash is not the token
  // Uppercase hex is the same hash.
  std::string upper = hex(sha256("c"));
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto upper_table = TokenTable::parse("carol operator " + upper + "\n", "t");
  REQUIRE(upper_table.ok());
  CHECK(upper_table->authenticate("c"));
}

TEST_CASE("token table: a malformed line is an error naming file and line", "[unit][auth]") {
  const std::string good = "alice reader " + hex(sha256("x")) + "\n";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {good + "bob root " + hex(sha256("y")), "tokens:2: unknown role 'root'"},
      {good + "bob reader abc", "tokens:2: the hash must be 64 hex digits"},
      {good + "bob reader", "tokens:2: missing fields"},
      {good + "bob reader " + hex(sha256("y")) + " extra", "tokens:2: unexpected text 'extra'"},
      {good + "alice admin " + hex(sha256("y")), "tokens:2: duplicate name 'alice'"},
      {good + "bob admin " + hex(sha256("x")), "tokens:2: the same token is listed twice"},
      {"b/ad reader " + hex(sha256("y")), "tokens:1: invalid name 'b/ad'"},
      {"# nothing\n", "tokens: no tokens"},
      {good + "bob reader " + std::string(63, 'a') + "g", "tokens:2: the hash must be"},
  };
  for (const auto& [text, message] : bad) {
    INFO(text);
    const auto table = TokenTable::parse(text, "tokens");
    REQUIRE_FALSE(table.ok());
    CHECK(table.error().message.rfind(message, 0) == 0);
  }
  CHECK_FALSE(TokenTable::load("/nonexistent/evald-tokens").ok());
}

TEST_CASE("bearer_token: the scheme is case-insensitive, other schemes are not tokens",
          "[unit][auth]") {
  CHECK(bearer_token("Bearer abc") == std::optional<std::string_view>("abc"));
  CHECK(bearer_token("bearer  abc ") == std::optional<std::string_view>("abc"));
  CHECK_FALSE(bearer_token(""));
  CHECK_FALSE(bearer_token("Bearer "));
  CHECK_FALSE(bearer_token("Basic YWxhZGRpbjpvcGVuc2VzYW1l"));
  CHECK_FALSE(bearer_token("Bearerabc"));
}

TEST_CASE("roles are ordered and parse from their names", "[unit][auth]") {
  CHECK(Role::kReader < Role::kSubmitter);
  CHECK(Role::kSubmitter < Role::kOperator);
  CHECK(Role::kOperator < Role::kAdmin);
  for (const Role role : {Role::kReader, Role::kSubmitter, Role::kOperator, Role::kAdmin}) {
    CHECK(parse_role(to_string(role)) == role);
  }
  CHECK_FALSE(parse_role("Admin"));
}
