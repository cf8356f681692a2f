// gpu_memory_gb is in the vendor's gigabytes: what nvidia-smi really reports on the cards people
// buy as "40 GB", "80 GB" and "141 GB" must satisfy a request for that many GB, and no more.
#include <catch2/catch.hpp>

#include "coordinator/placement.hpp"
#include "worker/gpu.hpp"

using namespace evald;
using namespace evald::coordinator;

namespace {

// `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits` as these cards
// print it (memory.total in MiB, below the nominal size: the driver reserves some).
constexpr const char* kA100_40 = "0, NVIDIA A100-SXM4-40GB, 40960\n";
constexpr const char* kA100_80 = "0, NVIDIA A100-SXM4-80GB, 81920\n";
constexpr const char* kA100_80_PCIE = "0, NVIDIA A100 80GB PCIe, 81251\n";
constexpr const char* kH100_80 = "0, NVIDIA H100 80GB HBM3, 81559\n";
constexpr const char* kH200_141 = "0, NVIDIA H200, 143771\n";

bool fits(const char* nvidia_smi_csv, double gpu_memory_gb) {
  auto gpus = worker::parse_nvidia_smi_csv(nvidia_smi_csv);
  REQUIRE(gpus.ok());
  REQUIRE(gpus->size() == 1);
  const auto slots = parse_worker_gpus(worker::to_json(gpus.value()));
  REQUIRE(slots.size() == 1);
  ResourceSpec need;
  need.gpus = 1;
  need.gpu_memory_gb = gpu_memory_gb;
  return place_shard(need, nlohmann::json::object(), slots, false).has_value();
}

}  // namespace

TEST_CASE("a request for N GB fits the cards sold as N GB", "[unit][placement][gpu]") {
  CHECK(fits(kA100_40, 40));
  CHECK(fits(kA100_80, 80));
  CHECK(fits(kA100_80_PCIE, 80));
  CHECK(fits(kH100_80, 80));
  CHECK(fits(kH200_141, 141));
}

TEST_CASE("a request for more than a card has does not fit it", "[unit][placement][gpu]") {
  CHECK_FALSE(fits(kA100_40, 48));
  CHECK_FALSE(fits(kA100_40, 80));
  CHECK_FALSE(fits(kH100_80, 94));  // the 94 GB H100 NVL is another card
  CHECK_FALSE(fits(kH100_80, 141));
  CHECK_FALSE(fits(kH200_141, 160));
}

TEST_CASE("GB are 10^9 bytes, converted to MiB rounding up", "[unit][placement][gpu]") {
  CHECK(required_gpu_memory_mib(0) == 0);
  CHECK(required_gpu_memory_mib(80) == 76294);  // 80e9 / 2^20 = 76293.95
  CHECK(required_gpu_memory_mib(40) == 38147);
  CHECK(required_gpu_memory_mib(141) == 134469);
}

TEST_CASE("a HELLO from an older worker (memory_mb) is still understood", "[unit][placement]") {
  const auto slots = parse_worker_gpus(
      nlohmann::json::array({{{"index", 0}, {"name", "H100"}, {"memory_mb", 81559}}}));
  REQUIRE(slots.size() == 1);
  CHECK(slots[0].memory_mib == 81559);
}
