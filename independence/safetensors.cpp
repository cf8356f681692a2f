#include "independence/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>

namespace evald::independence {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// An open file descriptor, closed on every path out.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// A read-only mapping of part of a file, unmapped on destruction.
class Mapping {
 public:
  Mapping(void* address, size_t length) : address_(address), length_(length) {}
  ~Mapping() {
    if (address_ != MAP_FAILED) ::munmap(address_, length_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  bool ok() const { return address_ != MAP_FAILED; }
  const unsigned char* bytes() const { return static_cast<const unsigned char*>(address_); }

 private:
  void* address_;
  size_t length_;
};

std::string errno_text() {
  return std::strerror(errno);
}

bool read_exact(int fd, void* buffer, size_t length, uint64_t offset) {
  auto* out = static_cast<char*>(buffer);
  while (length > 0) {
    const ssize_t got = ::pread(fd, out, length, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    out += got;
    length -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

DType dtype_from(const std::string& name, size_t& element_size) {
  if (name == "F32") {
    element_size = 4;
    return DType::kF32;
  }
  if (name == "F16") {
    element_size = 2;
    return DType::kF16;
  }
  if (name == "BF16") {
    element_size = 2;
    return DType::kBF16;
  }
  // Other dtypes are legal in a checkpoint (integer buffers, F64, F8); they are listed and
  // skipped, and their byte size is checked when known.
  static const std::map<std::string, size_t> kSizes = {
      {"F64", 8}, {"I64", 8}, {"U64", 8}, {"I32", 4},  {"U32", 4},     {"I16", 2},
      {"U16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  const auto it = kSizes.find(name);
  element_size = it == kSizes.end() ? 0 : it->second;
  return DType::kOther;
}

Result<std::vector<TensorInfo>> read_file_header(const fs::path& file) {
  const int raw = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) return make_error("cannot open '" + file.string() + "': " + errno_text());
  const Fd fd(raw);
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0) {
    return make_error("cannot stat '" + file.string() + "': " + errno_text());
  }
  if (!S_ISREG(info.st_mode)) return make_error("'" + file.string() + "' is not a regular file");
  const auto size = static_cast<uint64_t>(info.st_size);
  if (size < 8) return make_error(file.string() + ": too short for a safetensors file");
  unsigned char prefix[8];
  if (!read_exact(fd.get(), prefix, 8, 0)) {
    return make_error("cannot read '" + file.string() + "': " + errno_text());
  }
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | prefix[i];
  if (header_bytes > kMaxHeaderBytes) {
    return make_error(file.string() + ": header length " + std::to_string(header_bytes) +
                      " exceeds the " + std::to_string(kMaxHeaderBytes) + "-byte limit");
  }
  if (header_bytes > size - 8) {
    return make_error(file.string() + ": header length " + std::to_string(header_bytes) +
                      " runs past the end of the file (" + std::to_string(size) + " bytes)");
  }
  std::string header(header_bytes, '\0');
  if (!read_exact(fd.get(), header.data(), header.size(), 8)) {
    return make_error("cannot read the header of '" + file.string() + "': " + errno_text());
  }
  return parse_header(header, file, 8 + header_bytes, size - 8 - header_bytes);
}

Result<json> parse_bounded_json(const std::string& text, const std::string& what) {
  bool too_deep = false;
  const json::parser_callback_t limit_depth = [&](int depth, json::parse_event_t, json&) {
    if (depth > kMaxHeaderDepth) too_deep = true;
    return !too_deep;
  };
  json parsed = json::parse(text, limit_depth, /*allow_exceptions=*/false);
  if (too_deep) {
    return make_error(what + ": JSON nested deeper than " + std::to_string(kMaxHeaderDepth) +
                      " levels");
  }
  if (parsed.is_discarded()) return make_error(what + ": not valid JSON");
  if (!parsed.is_object()) return make_error(what + ": not a JSON object");
  return parsed;
}

Result<Checkpoint> open_directory(const fs::path& dir) {
  Checkpoint checkpoint{dir, {}};
  const fs::path index_path = dir / kIndexName;
  std::error_code ec;
  if (!fs::exists(index_path, ec)) {
    if (fs::exists(dir / kSingleName, ec)) {
      auto tensors = read_file_header(dir / kSingleName);
      if (!tensors) return tensors.error();
      for (auto& t : *tensors) checkpoint.tensors.emplace(t.name, std::move(t));
      return checkpoint;
    }
    return make_error("'" + dir.string() + "' has neither " + kIndexName + " nor " + kSingleName);
  }
  std::ifstream in(index_path, std::ios::binary);
  if (!in) return make_error("cannot read '" + index_path.string() + "': " + errno_text());
  in.seekg(0, std::ios::end);
  const auto length = static_cast<uint64_t>(std::max<std::streamoff>(in.tellg(), 0));
  if (length > kMaxHeaderBytes) {
    return make_error(index_path.string() + ": larger than the " + std::to_string(kMaxHeaderBytes) +
                      "-byte limit");
  }
  in.seekg(0);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto index = parse_bounded_json(text, index_path.string());
  if (!index) return index.error();
  const auto map = index->find("weight_map");
  if (map == index->end() || !map->is_object()) {
    return make_error(index_path.string() + ": no \"weight_map\" object");
  }
  // Shards are read once each, in name order; the index decides which shard owns a tensor.
  std::map<std::string, std::map<std::string, TensorInfo>> shards;
  for (const auto& [name, value] : map->items()) {
    if (!value.is_string()) {
      return make_error(index_path.string() + ": weight_map[\"" + name + "\"] is not a string");
    }
    const std::string shard = value.get<std::string>();
    // A shard is a plain file name beside the index: never a path out of the directory.
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      return make_error(index_path.string() + ": weight_map[\"" + name + "\"]: shard '" + shard +
                        "' is not a file name in the checkpoint directory");
    }
    shards.emplace(shard, std::map<std::string, TensorInfo>{});
  }
  for (auto& [shard, tensors] : shards) {
    auto read = read_file_header(dir / shard);
    if (!read) return read.error();
    for (auto& t : *read) tensors.emplace(t.name, std::move(t));
  }
  for (const auto& [name, value] : map->items()) {
    auto& tensors = shards.at(value.get<std::string>());
    const auto it = tensors.find(name);
    if (it == tensors.end()) {
      return make_error(index_path.string() + ": tensor '" + name + "' is not in shard '" +
                        value.get<std::string>() + "'");
    }
    checkpoint.tensors.emplace(name, it->second);
  }
  return checkpoint;
}

}  // namespace

Result<std::vector<TensorInfo>> parse_header(const std::string& header, const fs::path& file,
                                             uint64_t data_start, uint64_t data_bytes) {
  auto parsed = parse_bounded_json(header, file.string() + ": header");
  if (!parsed) return parsed.error();
  std::vector<TensorInfo> tensors;
  for (const auto& [name, entry] : parsed->items()) {
    if (name == "__metadata__") continue;
    const std::string where = file.string() + ": tensor '" + name + "'";
    if (!entry.is_object()) return make_error(where + ": not an object");
    const auto dtype = entry.find("dtype");
    const auto shape = entry.find("shape");
    const auto offsets = entry.find("data_offsets");
    if (dtype == entry.end() || !dtype->is_string()) return make_error(where + ": no dtype");
    if (shape == entry.end() || !shape->is_array()) return make_error(where + ": no shape");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
      return make_error(where + ": data_offsets must be two non-negative integers");
    }
    TensorInfo tensor;
    tensor.name = name;
    tensor.dtype_name = dtype->get<std::string>();
    size_t element_size = 0;
    tensor.dtype = dtype_from(tensor.dtype_name, element_size);
    uint64_t elements = 1;
    for (const auto& dim : *shape) {
      if (!dim.is_number_unsigned()) return make_error(where + ": shape must be non-negative");
      const uint64_t d = dim.get<uint64_t>();
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (d != 0 && elements > std::numeric_limits<uint64_t>::max() / d)) {
        return make_error(where + ": shape too large");
      }
      elements *= d;
      tensor.shape.push_back(static_cast<int64_t>(d));
    }
    const uint64_t begin = (*offsets)[0].get<uint64_t>();
    const uint64_t end = (*offsets)[1].get<uint64_t>();
    if (begin > end || end > data_bytes) {
      return make_error(where + ": data_offsets [" + std::to_string(begin) + ", " +
                        std::to_string(end) + "] lie outside the " + std::to_string(data_bytes) +
                        "-byte data section");
    }
    if (element_size != 0) {
      if (elements > std::numeric_limits<uint64_t>::max() / element_size ||
          elements * element_size != end - begin) {
        return make_error(where + ": " + std::to_string(end - begin) + " bytes do not hold a " +
                          tensor.dtype_name + " tensor of that shape");
      }
    }
    tensor.file = file;
    tensor.offset = data_start + begin;
    tensor.bytes = end - begin;
    tensors.push_back(std::move(tensor));
  }
  return tensors;
}

Result<Checkpoint> open_checkpoint(const fs::path& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) {
    return make_error("cannot read '" + path.string() + "': No such file or directory");
  }
  if (fs::is_directory(status)) return open_directory(path);
  auto tensors = read_file_header(path);
  if (!tensors) return tensors.error();
  Checkpoint checkpoint{path, {}};
  for (auto& t : *tensors) checkpoint.tensors.emplace(t.name, std::move(t));
  return checkpoint;
}

float half_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  const uint32_t mantissa = bits & 0x3FFu;
  float magnitude = 0.0f;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // zero or subnormal
  } else if (exponent == 31) {
    magnitude = mantissa == 0 ? std::numeric_limits<float>::infinity()
                              : std::numeric_limits<float>::quiet_NaN();
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  }
  return sign != 0 ? -magnitude : magnitude;
}

float bf16_to_float(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value = 0.0f;
  std::memcpy(&value, &widened, sizeof value);
  return value;
}

Result<Matrix> load_matrix(const TensorInfo& tensor) {
  if (tensor.shape.size() != 2) return make_error("not a 2-D tensor");
  if (tensor.dtype == DType::kOther) return make_error("unsupported dtype " + tensor.dtype_name);
  Matrix matrix;
  matrix.rows = tensor.shape[0];
  matrix.cols = tensor.shape[1];
  const auto elements = static_cast<size_t>(matrix.rows) * static_cast<size_t>(matrix.cols);
  matrix.data.resize(elements);
  if (elements == 0) return matrix;

  const int raw = ::open(tensor.file.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) return make_error("cannot open '" + tensor.file.string() + "': " + errno_text());
  const Fd fd(raw);
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0 ||
      static_cast<uint64_t>(info.st_size) < tensor.offset + tensor.bytes) {
    return make_error("'" + tensor.file.string() + "' is shorter than its header says");
  }
  // mmap wants a page-aligned offset: map from the page holding the first byte.
  const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t aligned = tensor.offset - tensor.offset % page;
  const size_t length = static_cast<size_t>(tensor.offset + tensor.bytes - aligned);
  const Mapping mapping(
      ::mmap(nullptr, length, PROT_READ, MAP_PRIVATE, fd.get(), static_cast<off_t>(aligned)),
      length);
  if (!mapping.ok())
    return make_error("cannot map '" + tensor.file.string() + "': " + errno_text());
  const unsigned char* bytes = mapping.bytes() + (tensor.offset - aligned);
  float* out = matrix.data.data();
  // memcpy per element: the data is little-endian and need not be aligned in the file.
  switch (tensor.dtype) {
    case DType::kF32:
      std::memcpy(out, bytes, elements * sizeof(float));
      break;
    case DType::kF16:
    case DType::kBF16: {
      const bool half = tensor.dtype == DType::kF16;
      for (size_t i = 0; i < elements; ++i) {
        uint16_t bits = 0;
        std::memcpy(&bits, bytes + 2 * i, sizeof bits);
        out[i] = half ? half_to_float(bits) : bf16_to_float(bits);
      }
      break;
    }
    case DType::kOther:
      break;
  }
  for (size_t i = 0; i < elements; ++i) {
    if (!std::isfinite(out[i])) return make_error("holds non-finite values (NaN or infinity)");
  }
  return matrix;
}

}  // namespace evald::independence
