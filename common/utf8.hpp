// UTF-8: the one set of rules for text that comes from outside (runner output, worker messages,
// metric names) before it is stored, rendered as JSON or put on the /metrics page.
//
// A sequence is valid when it is the shortest encoding of a code point in U+0000..U+10FFFF that
// is not a surrogate (U+D800..U+DFFF). Anything else is invalid byte by byte: each byte that does
// not start a valid sequence becomes one U+FFFD, so the same input always gives the same output
// and a single bad byte never swallows the good text after it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace evald::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
inline constexpr char32_t kReplacementCodePoint = 0xFFFD;

// Length (1-4) of the valid sequence that starts at text[i], or 0 if none starts there.
size_t sequence_length(std::string_view text, size_t i);

// The code point at text[i], advancing i past it; an invalid byte yields U+FFFD and advances 1.
char32_t next_code_point(std::string_view text, size_t& i);

bool is_valid(std::string_view text);

// `text` with every invalid byte replaced by U+FFFD.
std::string sanitize(std::string_view text);

// Like sanitize, for the end of a longer text (a stderr tail): up to 3 continuation bytes at the
// start are the rest of a character that was cut off, not an error, and are dropped.
std::string sanitize_tail(std::string_view text);

// The longest prefix of valid UTF-8 `text` that has at most max_bytes bytes and does not split a
// character.
std::string_view truncate(std::string_view text, size_t max_bytes);

// sanitize() then truncate(), with "..." marking a cut; the result has at most max_bytes bytes
// (max_bytes >= 3).
std::string sanitize_bounded(std::string_view text, size_t max_bytes);

}  // namespace evald::utf8
