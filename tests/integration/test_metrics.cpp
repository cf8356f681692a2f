// /metrics of the real binaries: the coordinator's and a worker's (--metrics) pages pass
// `promtool check metrics` during a live campaign, and afterwards count exactly what happened
// (shards, attempts, exit codes, ACKs, slots). A worker cut off from its coordinator shows the
// results it holds in its outbox, and its reconnection, in its own metrics.
#include <catch2/catch.hpp>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "common/http_client.hpp"
#include "common/http_server.hpp"
#include "tests/integration/integration.hpp"

using evald::testing::ClusterOptions;
using evald::testing::TestBenchmark;
using evald::testing::TestCluster;
using evald::testing::TestModel;
using evald::testing::wait_until;
using namespace std::chrono_literals;

namespace {

const std::filesystem::path kPromtool = "/usr/bin/promtool";

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses the sample lines of a Prometheus text exposition: name{k="v",...} value.
std::vector<Sample> parse_samples(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample sample;
    size_t i = line.find_first_of("{ ");
    sample.name = line.substr(0, i);
    if (i != std::string::npos && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const auto eq = line.find('=', i);
        const auto key = line.substr(i, eq - i);
        std::string value;
        size_t j = eq + 2;  // past ="
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        sample.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // past }
    }
    sample.value = std::stod(line.substr(line.find_first_not_of(' ', i)));
    out.push_back(std::move(sample));
  }
  return out;
}

// The sum of every sample of `name` whose labels include `labels` (0 if none matches).
double sum(const std::vector<Sample>& samples, const std::string& name,
           const std::map<std::string, std::string>& labels = {}) {
  double total = 0;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      const auto it = s.labels.find(k);
      match = match && it != s.labels.end() && it->second == v;
    }
    if (match) total += s.value;
  }
  return total;
}

bool has(const std::vector<Sample>& samples, const std::string& name,
         const std::map<std::string, std::string>& labels) {
  for (const auto& s : samples) {
    if (s.name == name && s.labels == labels) return true;
  }
  return false;
}

std::string scrape(const std::string& address, const std::string& target = "/metrics") {
  auto url = evald::parse_http_url("http://" + address);
  REQUIRE(url.ok());
  const auto response = evald::http_request(url.value(), "GET", target, "", 10s);
  INFO("GET http://" << address << target);
  REQUIRE(response.ok());
  REQUIRE(response->status == 200);
  return response->body;
}

// `promtool check metrics` on a page: exit 0 and no lint complaint.
void check_with_promtool(const std::string& page, const std::filesystem::path& file) {
  std::ofstream(file) << page;
  const auto result = evald::testing::run_command(
      "/bin/sh", {"-c", kPromtool.string() + " check metrics < '" + file.string() + "'"}, 30s);
  INFO("promtool check metrics " << file.filename().string() << ":\n"
                                 << result.out << result.err << "\npage:\n"
                                 << page);
  CHECK(result.exit_code == 0);
  CHECK(result.out + result.err == "");
}

}  // namespace

TEST_CASE("coordinator and worker /metrics pass promtool and count a campaign exactly",
          "[integration][metrics]") {
  if (!std::filesystem::exists(kPromtool)) {
    FAIL(kPromtool.string() << " is missing (apt-get install prometheus; scripts/setup.sh does)");
  }
  ClusterOptions options;
  options.workers = 0;
  options.dir_prefix = "evald-metrics";
  TestCluster cluster(options);
  auto& w1 = add_metrics_worker(cluster);
  auto& w2 = add_metrics_worker(cluster);
  const auto api = cluster.api();
  api.wait_for_workers(2);
  const std::vector<std::string> worker_pages = {worker_metrics_address(w1),
                                                 worker_metrics_address(w2)};
  const auto coordinator = cluster.coordinator().http_address();

  // 8 + 4 shards; shard 1 of b2 exits 3 on both of its attempts.
  const std::vector<TestModel> models = {{"m1"}};
  const std::vector<TestBenchmark> benchmarks = {
      {"b1", 80, 10, 0, "accuracy", true, {{"sleep_ms", 300}}},
      {"b2",
       40,
       10,
       0,
       "accuracy",
       true,
       {{"sleep_ms", 300}, {"fail_shards", nlohmann::json::array({1})}}}};
  const auto id = api.submit(
      evald::testing::make_spec("metrics", models, benchmarks, evald::testing::exec_runner(), 2));

  // While it runs: both kinds of page are valid Prometheus text, lint included.
  REQUIRE(wait_until(
      [&] {
        const auto c = api.campaign(id);
        return c.at("state") == "running" && c.at("shards").at("running").get<int>() > 0 &&
               c.at("shards").at("succeeded").get<int>() > 0;
      },
      20s));
  check_with_promtool(scrape(coordinator), cluster.dir() / "coordinator.prom");
  // Scrapers may add a query string (Prometheus' `params:`); it does not change the page.
  CHECK_THAT(scrape(coordinator, "/metrics?format=text"), Catch::Contains("evald_shards"));
  check_with_promtool(scrape(worker_pages[0]), cluster.dir() / "worker-1.prom");
  check_with_promtool(scrape(worker_pages[1]), cluster.dir() / "worker-2.prom");

  api.wait_for_state(id, "failed", 60s);
  // Gauges refresh a few times a second and the last ACKs may still be on their way: poll.
  std::vector<Sample> c;
  std::vector<Sample> w;
  const bool settled = wait_until(
      [&] {
        c = parse_samples(scrape(coordinator));
        w = parse_samples(scrape(worker_pages[0]));
        const auto second = parse_samples(scrape(worker_pages[1]));
        w.insert(w.end(), second.begin(), second.end());
        return sum(c, "evald_campaign_shards", {{"campaign", id}, {"state", "succeeded"}}) == 11 &&
               sum(c, "evald_worker_slots", {{"kind", "used"}}) == 0 &&
               sum(c, "evald_slots", {{"kind", "used"}}) == 0 &&
               sum(c, "evald_workers_busy") == 0 &&
               sum(w, "evald_worker_results_acked_total") == 13;
      },
      10s);
  INFO("coordinator:\n" << scrape(coordinator));
  CHECK(settled);

  const std::map<std::string, std::string> b1 = {
      {"campaign", id}, {"model", "m1"}, {"benchmark", "b1"}};
  const std::map<std::string, std::string> b2 = {
      {"campaign", id}, {"model", "m1"}, {"benchmark", "b2"}};
  CHECK(sum(c, "evald_shards_completed_total", b1) == 8);
  CHECK(sum(c, "evald_shards_completed_total", b2) == 3);
  CHECK(sum(c, "evald_shard_attempts_failed_total", b1) == 0);
  CHECK(sum(c, "evald_shard_attempts_failed_total", b2) == 2);
  CHECK(sum(c, "evald_shards_retried_total", b2) == 1);
  CHECK(sum(c, "evald_shards_failed_total", b2) == 1);
  auto with_kind = [](std::map<std::string, std::string> labels, const char* kind) {
    labels["kind"] = kind;
    return labels;
  };
  CHECK(sum(c, "evald_benchmark_shards", with_kind(b1, "total")) == 8);
  CHECK(sum(c, "evald_benchmark_shards", with_kind(b1, "succeeded")) == 8);
  CHECK(sum(c, "evald_benchmark_shards", with_kind(b2, "total")) == 4);
  CHECK(sum(c, "evald_benchmark_shards", with_kind(b2, "succeeded")) == 3);
  CHECK(sum(c, "evald_campaign_shards", {{"campaign", id}, {"state", "failed"}}) == 1);
  CHECK(sum(c, "evald_campaign_shards", {{"campaign", id}, {"state", "pending"}}) == 0);
  CHECK(sum(c, "evald_campaign_shards", {{"campaign", id}, {"state", "running"}}) == 0);
  CHECK(sum(c, "evald_campaign_progress_ratio", {{"campaign", id}}) == 1);
  CHECK(
      has(c, "evald_campaign_info", {{"campaign", id}, {"name", "metrics"}, {"state", "failed"}}));
  CHECK(sum(c, "evald_campaign_info", {{"campaign", id}, {"state", "failed"}}) == 1);
  CHECK(sum(c, "evald_campaign_info", {{"campaign", id}, {"state", "running"}}) == 0);
  // Succeeded attempts only; every lease (12 shards + 1 retry) was dispatched once.
  CHECK(sum(c, "evald_shard_duration_seconds_count", {{"benchmark", "b1"}}) == 8);
  CHECK(sum(c, "evald_shard_duration_seconds_count", {{"benchmark", "b2"}}) == 3);
  CHECK(sum(c, "evald_dispatch_latency_seconds_count") == 13);
  CHECK(sum(c, "evald_workers", {{"state", "connected"}}) == 2);
  CHECK(sum(c, "evald_workers", {{"state", "lost"}}) == 0);
  for (const auto* name : {"w1", "w2"}) {
    INFO("worker " << name);
    CHECK(sum(c, "evald_worker_slots", {{"worker", name}, {"kind", "total"}}) == 2);
    CHECK(sum(c, "evald_worker_slots", {{"worker", name}, {"kind", "free"}}) == 2);
    CHECK(sum(c, "evald_worker_slots", {{"worker", name}, {"kind", "used"}}) == 0);
    CHECK(has(c, "evald_worker_last_heartbeat_age_seconds", {{"worker", name}}));
  }
  // The fleet-wide gauges (they count workers beyond --max-worker-series too).
  CHECK(sum(c, "evald_slots", {{"kind", "total"}}) == 4);
  CHECK(sum(c, "evald_slots", {{"kind", "free"}}) == 4);
  CHECK(sum(c, "evald_slots", {{"kind", "used"}}) == 0);
  CHECK(sum(c, "evald_workers_busy") == 0);
  CHECK(sum(c, "evald_workers_idle") == 2);
  CHECK(sum(c, "evald_workers_without_series") == 0);
  CHECK(sum(c, "evald_worker_losses_total") == 0);
  CHECK(sum(c, "evald_http_requests_total", {{"route", "/v1/campaigns"}, {"status", "201"}}) == 1);
  CHECK(sum(c, "evald_messages_received_total", {{"type", "hello"}}) == 2);
  CHECK(sum(c, "evald_messages_received_total", {{"type", "results"}}) >= 1);
  CHECK(sum(c, "evald_messages_sent_total", {{"type", "assign"}}) >= 1);
  CHECK(sum(c, "evald_messages_malformed_total") == 0);
  CHECK(sum(c, "evald_store_commits_total") > 0);
  CHECK(sum(c, "evald_store_size_bytes") > 0);

  // Both workers together: what they received, how their runners ended, what was ACKed.
  CHECK(sum(w, "evald_worker_shards_received_total") == 13);
  CHECK(sum(w, "evald_worker_runner_exits_total", {{"code", "0"}}) == 11);
  CHECK(sum(w, "evald_worker_runner_exits_total", {{"code", "3"}}) == 2);
  CHECK(sum(w, "evald_worker_runner_exits_total") == 13);
  CHECK(sum(w, "evald_worker_results_sent_total", {{"outcome", "succeeded"}}) == 11);
  CHECK(sum(w, "evald_worker_results_sent_total", {{"outcome", "failed"}}) == 2);
  CHECK(sum(w, "evald_worker_results_acked_total") == 13);
  CHECK(sum(w, "evald_worker_running_shards") == 0);
  CHECK(sum(w, "evald_worker_unacked_results") == 0);
  CHECK(sum(w, "evald_worker_outbox_files") == 0);
  CHECK(sum(w, "evald_worker_outbox_bytes") == 0);
  CHECK(sum(w, "evald_worker_coordinator_connected") == 2);
  CHECK(sum(w, "evald_worker_connections_total") == 2);
  CHECK(sum(w, "evald_worker_reconnects_total") == 0);
  CHECK(sum(w, "evald_worker_bad_messages_total") == 0);
  CHECK(sum(w, "evald_worker_slots_configured") == 4);
  CHECK(sum(w, "evald_worker_gpus") == 0);  // --gpus none
  const auto first = parse_samples(scrape(worker_pages[0]));
  CHECK(has(first, "evald_worker_info", {{"worker", "w1"}, {"version", "0.1.0"}}));
}

TEST_CASE("a worker's own metrics show results held in its outbox while the coordinator is down",
          "[integration][metrics]") {
  ClusterOptions options;
  options.workers = 0;
  options.dir_prefix = "evald-metrics-outbox";
  // The worker's reconnection backoff grows while the coordinator is down (up to 5 s); a
  // restarted coordinator must wait that long for it before it gives its leases away.
  options.coordinator.worker_timeout_ms = 10000;
  TestCluster cluster(options);
  auto& worker = add_metrics_worker(cluster);
  const auto api = cluster.api();
  api.wait_for_workers(1);
  const auto address = worker_metrics_address(worker);

  const auto id = api.submit(evald::testing::make_spec(
      "outbox", {{"m1"}}, {{"b1", 20, 10, 0, "accuracy", true, {{"sleep_ms", 1500}}}}));
  REQUIRE(wait_until(
      [&] { return sum(parse_samples(scrape(address)), "evald_worker_running_shards") == 2; },
      10s));
  cluster.coordinator().kill();

  // Both shards finish with nobody to ACK them: they wait on disk.
  std::vector<Sample> held;
  REQUIRE(wait_until(
      [&] {
        held = parse_samples(scrape(address));
        return sum(held, "evald_worker_outbox_files") == 2 &&
               sum(held, "evald_worker_coordinator_connected") == 0;
      },
      10s));
  uint64_t bytes_on_disk = 0;
  size_t files_on_disk = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(cluster.dir() / "work-w1" / "outbox")) {
    if (entry.path().extension() != ".result") continue;
    bytes_on_disk += entry.file_size();
    ++files_on_disk;
  }
  CHECK(files_on_disk == 2);
  CHECK(sum(held, "evald_worker_outbox_bytes") == static_cast<double>(bytes_on_disk));
  CHECK(bytes_on_disk > 0);
  CHECK(sum(held, "evald_worker_unacked_results") == 2);
  CHECK(sum(held, "evald_worker_running_shards") == 0);
  CHECK(sum(held, "evald_worker_runner_exits_total", {{"code", "0"}}) == 2);
  CHECK(sum(held, "evald_worker_results_acked_total") == 0);
  CHECK(sum(held, "evald_worker_reconnects_total") == 0);

  // The coordinator comes back on the same ports: the worker reconnects and delivers.
  cluster.coordinator().restart();
  std::vector<Sample> after;
  const bool delivered = wait_until(
      [&] {
        after = parse_samples(scrape(address));
        return sum(after, "evald_worker_results_acked_total") == 2;
      },
      15s);
  REQUIRE(delivered);
  CHECK(sum(after, "evald_worker_outbox_files") == 0);
  CHECK(sum(after, "evald_worker_outbox_bytes") == 0);
  CHECK(sum(after, "evald_worker_unacked_results") == 0);
  CHECK(sum(after, "evald_worker_reconnects_total") == 1);
  CHECK(sum(after, "evald_worker_connections_total") == 2);
  CHECK(sum(after, "evald_worker_coordinator_connected") == 1);
  CHECK(sum(after, "evald_worker_shards_received_total") == 2);  // nothing dispatched twice
  api.wait_for_state(id, "succeeded", 20s);
}

TEST_CASE("evald-worker --metrics: a bad address is a usage error, a taken port a failure",
          "[integration][metrics]") {
  evald::testing::TempDir dir("evald-metrics-flags");
  const auto worker = evald::testing::bin_dir() / "evald-worker";
  const std::vector<std::string> base = {
      "--coordinator", "tcp://127.0.0.1:1",         "--gpus", "none",
      "--work-dir",    (dir.path() / "w").string(), "--name", "flags"};

  auto args = base;
  args.insert(args.end(), {"--metrics", "9101"});
  const auto bad = evald::testing::run_command(worker, args, 20s);
  CHECK(bad.exit_code == 2);
  CHECK(bad.err.find("--metrics: invalid address '9101'") != std::string::npos);
  CHECK(bad.out.empty());

  evald::HttpServer taken(
      "127.0.0.1:0", 1024,
      [](const evald::HttpRequest&, const evald::HttpRespond& respond) { respond({}); });
  args = base;
  args.insert(args.end(), {"--metrics", taken.local_address()});
  const auto busy = evald::testing::run_command(worker, args, 20s);
  INFO(busy.err);
  CHECK(busy.exit_code == 1);
  CHECK(busy.err.find("--metrics: cannot listen on " + taken.local_address()) != std::string::npos);
  CHECK(busy.out.empty());
}
