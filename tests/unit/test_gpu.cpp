// Worker flags: GPU discovery from nvidia-smi's CSV, --gpus, --labels and the rest of the config.
#include <catch2/catch.hpp>

#include "worker/gpu.hpp"
#include "worker/worker_config.hpp"

using evald::worker::GpuInfo;
using evald::worker::GpuMode;

namespace {

evald::po::variables_map parse_worker_flags(std::vector<std::string> args) {
  args.insert(args.begin(), "evald-worker");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  auto options = evald::worker::worker_options();
  return evald::parse_args(static_cast<int>(argv.size()), argv.data(), options).values;
}

}  // namespace

TEST_CASE("nvidia-smi CSV is parsed into GPUs", "[unit][gpu]") {
  const auto gpus = evald::worker::parse_nvidia_smi_csv(
      "0, NVIDIA H100 80GB HBM3, 81559\n"
      "1, NVIDIA H100 80GB HBM3, 81559\r\n"
      "\n"
      "2, NVIDIA A100-SXM4-40GB, [N/A]\n");
  REQUIRE(gpus.ok());
  REQUIRE(gpus->size() == 3);
  CHECK(gpus->at(0) == GpuInfo{0, "NVIDIA H100 80GB HBM3", 81559, {}});
  CHECK(gpus->at(1).index == 1);
  CHECK(gpus->at(2).name == "NVIDIA A100-SXM4-40GB");
  CHECK_FALSE(gpus->at(2).memory_mib.has_value());

  const auto json = evald::worker::to_json(gpus.value());
  CHECK(json[0] ==
        nlohmann::json{{"index", 0}, {"name", "NVIDIA H100 80GB HBM3"}, {"memory_mib", 81559}});
  CHECK_FALSE(json[2].contains("memory_mib"));

  // No GPUs at all is an empty answer, not an error.
  const auto none = evald::worker::parse_nvidia_smi_csv("");
  REQUIRE(none.ok());
  CHECK(none->empty());
}

TEST_CASE("broken nvidia-smi output names the line", "[unit][gpu]") {
  auto bad_index = evald::worker::parse_nvidia_smi_csv("0, H100, 81559\nx, H100, 81559\n");
  REQUIRE_FALSE(bad_index.ok());
  CHECK(bad_index.error().message == "nvidia-smi line 2: index 'x' is not a number");

  auto too_few = evald::worker::parse_nvidia_smi_csv("No devices were found\n");
  REQUIRE_FALSE(too_few.ok());
  CHECK_THAT(too_few.error().message, Catch::StartsWith("nvidia-smi line 1: expected"));

  auto bad_memory = evald::worker::parse_nvidia_smi_csv("0, H100, lots\n");
  REQUIRE_FALSE(bad_memory.ok());
  CHECK_THAT(bad_memory.error().message, Catch::Contains("memory.total 'lots'"));
}

TEST_CASE("the gpus flag selects auto, none or a list", "[unit][gpu]") {
  CHECK(evald::worker::parse_gpu_selection("auto")->mode == GpuMode::kAuto);
  CHECK(evald::worker::parse_gpu_selection("none")->mode == GpuMode::kNone);
  const auto list = evald::worker::parse_gpu_selection("0, 1,3");
  REQUIRE(list.ok());
  CHECK(list->mode == GpuMode::kList);
  CHECK(list->indexes == std::vector<uint32_t>{0, 1, 3});

  // Listed GPUs have an index and nothing else we could honestly claim.
  const auto gpus = evald::worker::resolve_gpus(list.value());
  REQUIRE(gpus.size() == 3);
  CHECK(evald::worker::to_json(gpus)[2] == nlohmann::json{{"index", 3}});
  CHECK(evald::worker::resolve_gpus(evald::worker::parse_gpu_selection("none").value()).empty());

  auto dup = evald::worker::parse_gpu_selection("0,0");
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.error().message == "--gpus: index 0 is listed twice");
  auto word = evald::worker::parse_gpu_selection("all");
  REQUIRE_FALSE(word.ok());
  CHECK_THAT(word.error().message, Catch::StartsWith("--gpus: 'all' is not a GPU index"));
  CHECK_FALSE(evald::worker::parse_gpu_selection("0,").ok());
  CHECK_FALSE(evald::worker::parse_gpu_selection("-1").ok());
}

TEST_CASE("worker flags resolve into a config, bad ones name the flag", "[unit][gpu]") {
  const auto config = evald::worker::worker_config_from(parse_worker_flags(
      {"--coordinator", "tcp://127.0.0.1:5555", "--name", "gpu-node-1", "--slots", "8", "--gpus",
       "0,1", "--labels", "gpu=h100, zone=a", "--heartbeat-ms", "250"}));
  REQUIRE(config.ok());
  CHECK(config->name == "gpu-node-1");
  CHECK(config->slots == 8);
  CHECK(config->gpu_selection.indexes == std::vector<uint32_t>{0, 1});
  CHECK(config->labels == nlohmann::json{{"gpu", "h100"}, {"zone", "a"}});
  CHECK(config->work_dir == "evald-worker-gpu-node-1");
  CHECK(config->heartbeat == std::chrono::milliseconds(250));
  CHECK(config->drain_timeout == std::chrono::milliseconds(30000));
  CHECK(config->queue_ahead == 32);  // 4 x --slots by default

  const auto defaults =
      evald::worker::worker_config_from(parse_worker_flags({"--coordinator", "tcp://h:1"}));
  REQUIRE(defaults.ok());
  CHECK(defaults->slots == 1);
  CHECK(defaults->queue_ahead == 4);
  CHECK(defaults->gpu_selection.mode == GpuMode::kAuto);
  CHECK(defaults->name.find('-') != std::string::npos);  // hostname-pid

  auto missing = evald::worker::worker_config_from(parse_worker_flags({}));
  REQUIRE_FALSE(missing.ok());
  CHECK_THAT(missing.error().message, Catch::StartsWith("--coordinator: required"));

  auto zero_slots = evald::worker::worker_config_from(
      parse_worker_flags({"--coordinator", "tcp://h:1", "--slots", "0"}));
  REQUIRE_FALSE(zero_slots.ok());
  CHECK(zero_slots.error().message == "--slots: must be between 1 and 65536, got 0");

  // --queue-ahead: 4 x --slots up to 256 unless given; 0 turns it off.
  auto queue_of = [](std::vector<std::string> extra) {
    std::vector<std::string> args = {"--coordinator", "tcp://h:1"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto parsed = evald::worker::worker_config_from(parse_worker_flags(args));
    REQUIRE(parsed.ok());
    return parsed->queue_ahead;
  };
  CHECK(queue_of({"--slots", "32"}) == 128);
  CHECK(queue_of({"--slots", "64"}) == 256);
  CHECK(queue_of({"--slots", "512"}) == 256);
  CHECK(queue_of({"--slots", "8", "--queue-ahead", "0"}) == 0);
  CHECK(queue_of({"--slots", "8", "--queue-ahead", "1000"}) == 1000);
  auto bad_queue = evald::worker::worker_config_from(
      parse_worker_flags({"--coordinator", "tcp://h:1", "--queue-ahead", "-1"}));
  REQUIRE_FALSE(bad_queue.ok());
  CHECK(bad_queue.error().message == "--queue-ahead: must be between 0 and 65536, got -1");

  auto bad_labels = evald::worker::worker_config_from(
      parse_worker_flags({"--coordinator", "tcp://h:1", "--labels", "gpu=h100,oops"}));
  REQUIRE_FALSE(bad_labels.ok());
  CHECK(bad_labels.error().message == "--labels: 'oops' is not key=value");

  auto bad_name = evald::worker::worker_config_from(
      parse_worker_flags({"--coordinator", "tcp://h:1", "--name", "a b"}));
  REQUIRE_FALSE(bad_name.ok());
  CHECK_THAT(bad_name.error().message, Catch::StartsWith("--name:"));

  auto bad_endpoint =
      evald::worker::worker_config_from(parse_worker_flags({"--coordinator", "localhost:5555"}));
  REQUIRE_FALSE(bad_endpoint.ok());
  CHECK_THAT(bad_endpoint.error().message, Catch::StartsWith("--coordinator:"));

  CHECK_THROWS_AS(parse_worker_flags({"--slots", "many"}), evald::UsageError);
}
