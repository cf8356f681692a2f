// The one UTF-8 module: what counts as valid, what replaces the rest, and where text is cut.
#include <catch2/catch.hpp>
#include <string>

#include "common/utf8.hpp"

namespace utf8 = evald::utf8;
using namespace std::string_literals;

namespace {
const std::string kFffd = "\xEF\xBF\xBD";
}

TEST_CASE("valid UTF-8 passes unchanged", "[unit][utf8]") {
  for (const std::string& text :
       {""s, "plain ascii"s, "한국어 평가"s, "\x7F"s, "\xC2\x80"s, "\xDF\xBF"s, "\xE0\xA0\x80"s,
        "\xED\x9F\xBF"s /* U+D7FF */, "\xEE\x80\x80"s /* U+E000 */, "\xEF\xBF\xBF"s,
        "\xF0\x90\x80\x80"s, "\xF4\x8F\xBF\xBF"s /* U+10FFFF */, "nul\0inside"s}) {
    INFO(text);
    CHECK(utf8::is_valid(text));
    CHECK(utf8::sanitize(text) == text);
  }
}

TEST_CASE("invalid bytes become one U+FFFD each", "[unit][utf8]") {
  struct Case {
    std::string input;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"a\xFF"s
       "b",
       "a" + kFffd + "b"},
      {"\x80"s, kFffd},                                                  // lone continuation
      {"\xC0\x80"s, kFffd + kFffd},                                      // overlong NUL
      {"\xC1\xBF"s, kFffd + kFffd},                                      // overlong 2-byte
      {"\xE0\x80\xAF"s, kFffd + kFffd + kFffd},                          // overlong '/'
      {"\xF0\x80\x80\xAF"s, kFffd + kFffd + kFffd + kFffd},              // overlong 4-byte
      {"\xED\xA0\x80"s, kFffd + kFffd + kFffd},                          // U+D800, a surrogate
      {"\xED\xBF\xBF"s, kFffd + kFffd + kFffd},                          // U+DFFF
      {"\xF4\x90\x80\x80"s, kFffd + kFffd + kFffd + kFffd},              // U+110000, beyond Unicode
      {"\xF8\x88\x80\x80\x80"s, kFffd + kFffd + kFffd + kFffd + kFffd},  // 5-byte form
      {"\xE4\xB8"s, kFffd + kFffd},                                      // truncated at the end
      {"\xE4\xB8z"s, kFffd + kFffd + "z"},                               // truncated in the middle
      {"\xF0\x9F\x98"s
       "ok",
       kFffd + kFffd + kFffd + "ok"},
  };
  for (const auto& c : cases) {
    INFO(c.input);
    CHECK_FALSE(utf8::is_valid(c.input));
    const std::string out = utf8::sanitize(c.input);
    CHECK(out == c.expected);
    CHECK(utf8::is_valid(out));
  }
}

TEST_CASE("next_code_point decodes and steps over bad bytes", "[unit][utf8]") {
  const std::string text = "a\xED\x95\x9C\xFF\xF0\x9F\x98\x80"s;
  size_t i = 0;
  CHECK(utf8::next_code_point(text, i) == U'a');
  CHECK(utf8::next_code_point(text, i) == U'\uD55C');  // 한
  CHECK(utf8::next_code_point(text, i) == utf8::kReplacementCodePoint);
  CHECK(i == 5);
  CHECK(utf8::next_code_point(text, i) == U'\U0001F600');
  CHECK(i == text.size());
}

TEST_CASE("a tail cut inside a character drops the fragment", "[unit][utf8]") {
  // "한" is ED 95 9C; a tail that starts after its lead byte starts with two continuations.
  CHECK(utf8::sanitize_tail("\x95\x9C ok"s) == " ok");
  CHECK(utf8::sanitize_tail("한국어") == "한국어");
  // More than 3 continuation bytes cannot be one character's rest: the 4th is an error.
  CHECK(utf8::sanitize_tail("\x80\x80\x80\x80x"s) == kFffd + "x");
}

TEST_CASE("truncate never splits a character", "[unit][utf8]") {
  const std::string text = "a한b";  // 1 + 3 + 1 bytes
  CHECK(utf8::truncate(text, 10) == text);
  CHECK(utf8::truncate(text, 5) == text);
  CHECK(utf8::truncate(text, 4) == "a한");
  CHECK(utf8::truncate(text, 3) == "a");
  CHECK(utf8::truncate(text, 2) == "a");
  CHECK(utf8::truncate(text, 1) == "a");
  CHECK(utf8::truncate(text, 0).empty());
}

TEST_CASE("sanitize_bounded caps size and marks the cut", "[unit][utf8]") {
  CHECK(utf8::sanitize_bounded("short", 16) == "short");
  const std::string cut = utf8::sanitize_bounded(std::string(1000, 'x'), 16);
  CHECK(cut == std::string(13, 'x') + "...");
  // Replacements triple invalid bytes; the bound holds for the output, not the input.
  const std::string bad = utf8::sanitize_bounded(std::string(10, '\xFF'), 16);
  CHECK(bad.size() <= 16);
  CHECK(utf8::is_valid(bad));
  CHECK(bad.ends_with("..."));
  // A multi-byte character at the cut is dropped whole.
  const std::string korean = utf8::sanitize_bounded("한국어한국어한국어", 10);
  CHECK(korean == "한국...");
  // Large inputs: only the part that survives is looked at.
  const std::string huge(64 << 20, '\xC3');
  const std::string capped = utf8::sanitize_bounded(huge, 4096);
  CHECK(capped.size() <= 4096);
  CHECK(utf8::is_valid(capped));
}
