// Times the independence check on one tensor pair of a real model's size (default 11008 x 4096
// BF16, a 7B model's MLP projection): writes A (random) and B (A plus noise, or an independent
// draw with --independent) as safetensors files in a temp directory, runs the check, prints the
// seconds it took and the verdict. Run it under `/usr/bin/time -v` for the peak RSS.
//   evald-independence-bench [ROWS COLS] [--independent] [--max-units N] [--threads T]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>

#include "independence/check.hpp"
#include "independence/stats.hpp"

namespace {

namespace fs = std::filesystem;
using evald::independence::CheckOptions;

uint16_t to_bf16(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

void write_tensor(const fs::path& file, const std::string& name, int64_t rows, int64_t cols,
                  uint64_t seed, uint64_t noise_seed, float noise) {
  const std::string header = "{\"" + name + "\":{\"dtype\":\"BF16\",\"shape\":[" +
                             std::to_string(rows) + "," + std::to_string(cols) +
                             "],\"data_offsets\":[0," + std::to_string(rows * cols * 2) + "]}}";
  std::ofstream out(file, std::ios::binary);
  const uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((length >> (8 * i)) & 0xFF));
  out << header;
  std::mt19937_64 base(seed);
  std::mt19937_64 jitter(noise_seed);
  // One distribution per engine: a distribution object caches half of each pair it draws.
  std::normal_distribution<float> weight(0.0f, 0.02f);
  std::normal_distribution<float> perturbation(0.0f, 0.02f);
  std::vector<uint16_t> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) {
      v = to_bf16(weight(base) + (noise > 0 ? noise * perturbation(jitter) : 0.0f));
    }
    out.write(reinterpret_cast<const char*>(row.data()),
              static_cast<std::streamsize>(row.size() * sizeof(uint16_t)));
  }
}

}  // namespace

int main(int argc, char** argv) {
  int64_t rows = 11008;
  int64_t cols = 4096;
  bool independent = false;
  CheckOptions options;
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--independent") {
      independent = true;
    } else if (arg == "--max-units" && i + 1 < argc) {
      options.max_units = std::stoll(argv[++i]);
    } else if (arg == "--threads" && i + 1 < argc) {
      options.threads = static_cast<unsigned>(std::stoul(argv[++i]));
    } else if (positional == 0) {
      rows = std::stoll(arg);
      ++positional;
    } else {
      cols = std::stoll(arg);
      ++positional;
    }
  }
  const fs::path dir =
      fs::temp_directory_path() / ("evald-indep-bench-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string name = "model.layers.0.mlp.gate_proj.weight";
  write_tensor(dir / "a.safetensors", name, rows, cols, 1, 0, 0.0f);
  // B: the same draw plus noise at half the weights' scale (a heavy fine-tune), or a new draw.
  write_tensor(dir / "b.safetensors", name, rows, cols, independent ? 2 : 1, 3,
               independent ? 0.0f : 0.5f);
  const auto start = std::chrono::steady_clock::now();
  const std::clock_t cpu_start = std::clock();
  auto report = evald::independence::check_independence(dir / "a.safetensors",
                                                        dir / "b.safetensors", options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu_seconds = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  fs::remove_all(dir);
  if (!report) {
    std::cerr << "bench: " << report.error().message << "\n";
    return 1;
  }
  const auto& t = report->tensors.at(0);
  std::printf(
      "%lld x %lld BF16, %lld sampled units, %u threads: %.2f s wall, %.2f s CPU, matched "
      "%lld/%lld, "
      "log10 p = %s, verdict %s\n",
      static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(t.sampled),
      options.threads, seconds, cpu_seconds, static_cast<long long>(t.matched),
      static_cast<long long>(t.sampled),
      evald::independence::report_json(*report)["tensors"][0]["log10_p_value"].dump().c_str(),
      report->dependent() ? "dependent" : "independent");
  return 0;
}
