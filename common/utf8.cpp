#include "common/utf8.hpp"

#include <algorithm>

namespace evald::utf8 {
namespace {

bool is_continuation(unsigned char byte) {
  return (byte & 0xC0) == 0x80;
}

}  // namespace

size_t sequence_length(std::string_view text, size_t i) {
  if (i >= text.size()) return 0;
  const auto lead = static_cast<unsigned char>(text[i]);
  if (lead < 0x80) return 1;
  size_t length = 0;
  char32_t min_code = 0;
  char32_t code = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    min_code = 0x80;
    code = lead & 0x1Fu;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    min_code = 0x800;
    code = lead & 0x0Fu;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    min_code = 0x10000;
    code = lead & 0x07u;
  } else {
    return 0;  // a continuation byte, or 0xF8..0xFF
  }
  if (text.size() - i < length) return 0;  // truncated
  for (size_t k = 1; k < length; ++k) {
    const auto next = static_cast<unsigned char>(text[i + k]);
    if (!is_continuation(next)) return 0;
    code = (code << 6) | (next & 0x3Fu);
  }
  if (code < min_code) return 0;                   // overlong
  if (code > 0x10FFFF) return 0;                   // beyond Unicode
  if (code >= 0xD800 && code <= 0xDFFF) return 0;  // surrogate
  return length;
}

char32_t next_code_point(std::string_view text, size_t& i) {
  const size_t length = sequence_length(text, i);
  if (length == 0) {
    ++i;
    return kReplacementCodePoint;
  }
  const auto lead = static_cast<unsigned char>(text[i]);
  char32_t code = length == 1 ? lead : lead & (0x7Fu >> length);
  for (size_t k = 1; k < length; ++k) {
    code = (code << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3Fu);
  }
  i += length;
  return code;
}

bool is_valid(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t length = sequence_length(text, i);
    if (length == 0) return false;
    i += length;
  }
  return true;
}

std::string sanitize(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t length = sequence_length(text, i);
    if (length == 0) {
      out.append(kReplacement);
      ++i;
    } else {
      out.append(text.substr(i, length));
      i += length;
    }
  }
  return out;
}

std::string sanitize_tail(std::string_view text) {
  size_t skip = 0;
  while (skip < text.size() && skip < 3 &&
         is_continuation(static_cast<unsigned char>(text[skip]))) {
    ++skip;
  }
  return sanitize(text.substr(skip));
}

std::string_view truncate(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t cut = max_bytes;
  while (cut > 0 && is_continuation(static_cast<unsigned char>(text[cut]))) --cut;
  return text.substr(0, cut);
}

std::string sanitize_bounded(std::string_view text, size_t max_bytes) {
  // Sanitizing at most 3 bytes per input byte, only the part that can survive is looked at, so a
  // 64 MiB error costs no more than a short one.
  std::string clean = sanitize(text.substr(0, std::min(text.size(), max_bytes + 4)));
  if (clean.size() <= max_bytes && text.size() <= max_bytes) return clean;
  constexpr std::string_view kCut = "...";
  std::string out(truncate(clean, max_bytes > kCut.size() ? max_bytes - kCut.size() : 0));
  out.append(kCut);
  return out;
}

}  // namespace evald::utf8
