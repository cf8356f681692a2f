// A reader for safetensors checkpoints: one `.safetensors` file, or a directory holding
// `model.safetensors.index.json` and the shards it names (or a lone `model.safetensors`).
// Headers are read and validated up front; tensor data is mapped one tensor at a time and
// converted to float, so memory stays near the size of the tensors being compared, not the model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace evald::independence {

enum class DType { kF32, kF16, kBF16, kOther };

struct TensorInfo {
  std::string name;
  std::string dtype_name;  // as the header spells it ("BF16", "I64", ...)
  DType dtype = DType::kOther;
  std::vector<int64_t> shape;
  std::filesystem::path file;
  uint64_t offset = 0;  // absolute byte offset of the data in `file`
  uint64_t bytes = 0;
};

// A dense row-major float matrix.
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;
  const float* row(int64_t r) const { return data.data() + r * cols; }
};

struct Checkpoint {
  std::filesystem::path path;
  std::map<std::string, TensorInfo> tensors;  // by name
};

// Upper bound on a header's size: real headers are a few MB even for very large models.
inline constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Headers are flat (name -> {dtype, shape, data_offsets}); anything deeper is malformed.
inline constexpr int kMaxHeaderDepth = 4;

// Reads and validates every header of a checkpoint (a file or a directory). The error names the
// file and the problem.
Result<Checkpoint> open_checkpoint(const std::filesystem::path& path);

// Parses one safetensors header (the JSON text) for a file whose data section is `data_bytes`
// long starting at `data_start`. Exposed for tests.
Result<std::vector<TensorInfo>> parse_header(const std::string& header,
                                             const std::filesystem::path& file, uint64_t data_start,
                                             uint64_t data_bytes);

// Maps the tensor's bytes, converts them to float and unmaps. A 2-D tensor only; the error says
// why it cannot be read (I/O, unsupported dtype, non-finite values).
Result<Matrix> load_matrix(const TensorInfo& tensor);

// IEEE half and bfloat16 to float, exact (subnormals, infinities and NaN included).
float half_to_float(uint16_t bits);
float bf16_to_float(uint16_t bits);

}  // namespace evald::independence
