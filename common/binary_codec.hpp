// BinaryWriter / BinaryReader: the little-endian, length-prefixed encoding used by the wire
// protocol's hot messages and by the coordinator's store records. The reader never trusts its
// input: every read is bounds-checked and a short or inconsistent buffer becomes an error value.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace evald {

class BinaryWriter {
 public:
  explicit BinaryWriter(std::string& out) : out_(out) {}

  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u32(uint32_t v) { append_le(v); }
  void u64(uint64_t v) { append_le(v); }
  void i64(int64_t v) { append_le(static_cast<uint64_t>(v)); }
  void f64(double v) {
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof bits);
    append_le(bits);
  }
  void str(std::string_view s) {
    u32(static_cast<uint32_t>(s.size()));
    out_.append(s.data(), s.size());
  }

 private:
  template <typename T>
  void append_le(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string& out_;
};

class BinaryReader {
 public:
  explicit BinaryReader(std::string_view in) : in_(in) {}

  // Each read returns false (and leaves the reader failed) if the buffer is too short.
  bool u8(uint8_t& v) {
    if (!need(1)) return false;
    v = static_cast<uint8_t>(in_[pos_++]);
    return true;
  }
  bool u32(uint32_t& v) { return read_le(v); }
  bool u64(uint64_t& v) { return read_le(v); }
  bool i64(int64_t& v) {
    uint64_t u = 0;
    if (!read_le(u)) return false;
    v = static_cast<int64_t>(u);
    return true;
  }
  bool f64(double& v) {
    uint64_t bits = 0;
    if (!read_le(bits)) return false;
    std::memcpy(&v, &bits, sizeof v);
    return true;
  }
  bool str(std::string& s) {
    uint32_t n = 0;
    if (!u32(n) || !need(n)) return false;
    s.assign(in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  // A count of items that each take at least min_item_bytes; refuses counts the remaining bytes
  // cannot hold, so a hostile count cannot make us reserve gigabytes.
  bool count(uint32_t& n, size_t min_item_bytes) {
    if (!u32(n)) return false;
    if (min_item_bytes > 0 && static_cast<size_t>(n) > remaining() / min_item_bytes) {
      failed_ = true;
      return false;
    }
    return true;
  }

  size_t remaining() const { return in_.size() - pos_; }
  bool at_end() const { return pos_ == in_.size(); }
  bool failed() const { return failed_; }

 private:
  bool need(size_t n) {
    if (failed_ || remaining() < n) {
      failed_ = true;
      return false;
    }
    return true;
  }
  template <typename T>
  bool read_le(T& v) {
    if (!need(sizeof(T))) return false;
    T out = 0;
    for (size_t i = 0; i < sizeof(T); ++i)
      out |= static_cast<T>(static_cast<uint8_t>(in_[pos_ + i])) << (8 * i);
    pos_ += sizeof(T);
    v = out;
    return true;
  }
  std::string_view in_;
  size_t pos_ = 0;
  bool failed_ = false;
};

}  // namespace evald
