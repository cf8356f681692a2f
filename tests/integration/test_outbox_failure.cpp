// A worker whose outbox cannot be written (docs/reliability.md): the results are sent anyway,
// counted in evald_worker_outbox_write_failures_total, and the campaign ends exact. The failure is
// real: the outbox directory is removed under the running worker, so every create in it fails.
#include <catch2/catch.hpp>
#include <regex>

#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;

TEST_CASE("outbox: a failed outbox write is counted and the result still counts exactly once",
          "[integration][faults]") {
  ClusterOptions options;
  options.workers = 0;
  TestCluster cluster(options);
  auto defaults = cluster.worker_defaults();
  defaults.extra_args = {"--metrics", "127.0.0.1:0"};
  auto& worker = cluster.add_worker(defaults);
  const auto api = cluster.api();
  api.wait_for_workers(1);
  const auto log_file = cluster.log_dir() / ("worker-" + worker.name() + ".log");
  std::string address;
  REQUIRE(wait_until(
      [&] {
        std::smatch match;
        const auto log = read_file_or_empty(log_file);
        static const std::regex pattern("metrics_listening address=([0-9.:]+)");
        if (!std::regex_search(log, match, pattern)) return false;
        address = match[1].str();
        return true;
      },
      10s));
  const Api worker_page("http://" + address);

  // The worker opened its outbox at start; from now on nothing can be created in it.
  const auto outbox = cluster.dir() / ("work-" + worker.name()) / "outbox";
  REQUIRE(std::filesystem::is_directory(outbox));
  std::filesystem::remove_all(outbox);

  const std::vector<TestModel> models = {{"m-a", 1, 4, {}}, {"m-b", 3, 2, {}}};
  const std::vector<TestBenchmark> benchmarks = {{"b-x", 30, 10, 0}, {"b-y", 12, 6, 5}};
  const int64_t total = total_shards(models, benchmarks);
  const auto id = api.submit(make_spec("outbox-failure", models, benchmarks));
  const auto done = api.wait_for_state(id, "succeeded", 30s);
  CHECK(done.at("shards").at("succeeded") == total);
  check_results(api.results(id), models, benchmarks);
  const auto shards = api.shards(id);
  for (const auto& s : shards.at("shards")) {
    INFO(s.dump());
    CHECK(s.at("attempts") == 1);  // nothing was held back or run twice
  }
  // Every result failed its write and was ACKed all the same.
  CHECK(wait_until(
      [&] {
        return worker_page.metric("evald_worker_results_acked_total") == static_cast<double>(total);
      },
      10s));
  CHECK(worker_page.metric("evald_worker_outbox_write_failures_total") ==
        static_cast<double>(total));
  CHECK(read_file(log_file).find("outbox_write_failed") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(outbox));
}

}  // namespace
