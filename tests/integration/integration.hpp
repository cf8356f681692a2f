// Shared pieces of the integration tests: a Cluster that prints the daemons' logs when the test
// fails, campaign spec builders for the evald-test-runner script, and the expected leaderboard
// computed from the runner's formula with exact integer counts.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tests/support/cluster.hpp"

namespace evald::testing {

// Failed assertions so far in this process (counted by the listener in test_harness.cpp).
size_t failed_assertions();

// A Cluster that prints the tails of every daemon log to stderr if an assertion failed (or an
// exception escaped) while it was alive, so a red test shows what the coordinator and the
// workers said; EVALD_TEST_SHOW_LOGS=1 prints them always, EVALD_TEST_LOG_BYTES=N sets how much.
// Its destructor runs before Cluster's, while the logs still exist.
class TestCluster : public Cluster {
 public:
  explicit TestCluster(ClusterOptions options = {})
      : Cluster(std::move(options)), failures_at_start_(failed_assertions()) {}
  ~TestCluster() override {
    const char* show = std::getenv("EVALD_TEST_SHOW_LOGS");
    if (failed_assertions() > failures_at_start_ || std::uncaught_exceptions() > 0 ||
        (show != nullptr && std::string(show) == "1")) {
      std::cerr << "---- daemon logs (" << dir().string() << ") ----\n"
                << log_tails(log_bytes()) << "---- end of daemon logs ----\n";
      logs_shown_ = true;
    }
  }

 private:
  // EVALD_TEST_LOG_BYTES=N shows more of each log (default 6000 bytes from the end).
  static size_t log_bytes() {
    const char* bytes = std::getenv("EVALD_TEST_LOG_BYTES");
    return bytes != nullptr ? std::strtoull(bytes, nullptr, 10) : 6000;
  }

  size_t failures_at_start_;
};

// --- campaign specs for evald-test-runner -----------------------------------------------------

// A model as evald-test-runner sees it: example i is correct iff (i * mult + offset) % 7 < k.
struct TestModel {
  std::string name;
  int mult = 1;
  int k = 4;
  nlohmann::json extra = nlohmann::json::object();  // more params: fault injection
};

struct TestBenchmark {
  std::string name;
  int64_t examples = 10;
  int64_t shard_size = 10;
  int offset = 0;
  std::string metric = "accuracy";  // or "error_rate" (with higher_is_better false)
  bool higher_is_better = true;
  nlohmann::json extra = nlohmann::json::object();

  int64_t shard_count() const { return (examples + shard_size - 1) / shard_size; }
};

inline nlohmann::json exec_runner(double timeout_s = 60) {
  return {{"type", "exec"},
          {"command", {"evald-test-runner", "{model}", "{benchmark}", "{shard}"}},
          {"timeout_s", timeout_s}};
}

inline nlohmann::json noop_runner() {
  return {{"type", "noop"}};
}

inline nlohmann::json make_spec(const std::string& name, const std::vector<TestModel>& models,
                                const std::vector<TestBenchmark>& benchmarks,
                                const nlohmann::json& runner = exec_runner(),
                                int max_attempts = 3) {
  nlohmann::json spec = {{"name", name},
                         {"models", nlohmann::json::array()},
                         {"benchmarks", nlohmann::json::array()},
                         {"runner", runner},
                         {"max_attempts", max_attempts}};
  for (const auto& m : models) {
    nlohmann::json params = m.extra;
    params["mult"] = m.mult;
    params["k"] = m.k;
    spec["models"].push_back({{"name", m.name}, {"params", params}});
  }
  for (const auto& b : benchmarks) {
    nlohmann::json params = b.extra;
    params["offset"] = b.offset;
    spec["benchmarks"].push_back({{"name", b.name},
                                  {"examples", b.examples},
                                  {"shard_size", b.shard_size},
                                  {"metric", b.metric},
                                  {"higher_is_better", b.higher_is_better},
                                  {"params", params}});
  }
  return spec;
}

// --- the expected leaderboard -----------------------------------------------------------------

// evald-test-runner's formula (keep in step with tests/integration/runners/evald-test-runner).
inline int64_t expected_correct(const TestModel& m, const TestBenchmark& b, int64_t start,
                                int64_t end) {
  int64_t correct = 0;
  for (int64_t i = start; i < end; ++i) correct += (i * m.mult + b.offset) % 7 < m.k ? 1 : 0;
  return correct;
}

// The example-weighted mean over all shards = correct examples / examples, whatever the shard
// boundaries: the exact value the coordinator's sum(metric_i * count_i) / sum(count_i) must give.
inline double expected_score(const TestModel& m, const TestBenchmark& b) {
  const double accuracy =
      static_cast<double>(expected_correct(m, b, 0, b.examples)) / static_cast<double>(b.examples);
  return b.metric == "error_rate" ? 1.0 - accuracy : accuracy;
}

struct ExpectedRow {
  std::string model;
  int rank = 0;
  double average = 0;
  int firsts = 0;
  std::map<std::string, double> scores;
};

// Rows in leaderboard order (rank, then name). Ties are compared with a tolerance so that the
// expectation does not depend on summation order; tests pick parameters without near-ties.
inline std::vector<ExpectedRow> expected_leaderboard(const std::vector<TestModel>& models,
                                                     const std::vector<TestBenchmark>& benchmarks) {
  constexpr double kTie = 1e-12;
  std::vector<ExpectedRow> rows;
  for (const auto& m : models) {
    ExpectedRow row{m.name, 0, 0, 0, {}};
    for (const auto& b : benchmarks) {
      row.scores[b.name] = expected_score(m, b);
      row.average += row.scores[b.name];
    }
    row.average /= static_cast<double>(benchmarks.size());
    rows.push_back(row);
  }
  for (const auto& b : benchmarks) {
    double best = rows.front().scores.at(b.name);
    for (const auto& r : rows) {
      const double v = r.scores.at(b.name);
      best = b.higher_is_better ? std::max(best, v) : std::min(best, v);
    }
    for (auto& r : rows) r.firsts += std::abs(r.scores[b.name] - best) <= kTie ? 1 : 0;
  }
  for (auto& r : rows) {
    r.rank = 1;
    for (const auto& other : rows) r.rank += other.average > r.average + kTie ? 1 : 0;
  }
  std::sort(rows.begin(), rows.end(), [](const ExpectedRow& a, const ExpectedRow& b) {
    return a.rank != b.rank ? a.rank < b.rank : a.model < b.model;
  });
  return rows;
}

// Checks GET /v1/campaigns/ID/results against the expectation: order, rank, average, firsts,
// and every score's metric, value (to 1e-12), count (= examples) and complete flag.
inline void check_results(const nlohmann::json& results, const std::vector<TestModel>& models,
                          const std::vector<TestBenchmark>& benchmarks) {
  const auto expected = expected_leaderboard(models, benchmarks);
  INFO("results: " << results.dump());
  REQUIRE(results.at("models").size() == expected.size());
  std::vector<std::string> names;
  names.reserve(benchmarks.size());
  for (const auto& b : benchmarks) names.push_back(b.name);
  CHECK(results.at("benchmarks") == nlohmann::json(names));
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto& row = results["models"][i];
    const auto& want = expected[i];
    INFO("row " << i << " expected model " << want.model);
    CHECK(row.at("name") == want.model);
    CHECK(row.at("rank") == want.rank);
    CHECK(row.at("firsts") == want.firsts);
    REQUIRE(row.at("average").is_number());
    CHECK(row["average"].get<double>() == Approx(want.average).epsilon(1e-12));
    for (const auto& b : benchmarks) {
      INFO("benchmark " << b.name);
      const auto& score = row.at("scores").at(b.name);
      CHECK(score.at("metric") == b.metric);
      REQUIRE(score.at("value").is_number());
      CHECK(score["value"].get<double>() == Approx(want.scores.at(b.name)).epsilon(1e-12));
      CHECK(score.at("count") == b.examples);
      CHECK(score.at("complete") == true);
    }
  }
}

// Every shard of the campaign is succeeded after exactly `attempts` attempts.
inline void check_all_shards_succeeded(const Api& api, const std::string& id,
                                       int64_t expected_total, int attempts = 1) {
  const auto shards = api.shards(id).at("shards");
  REQUIRE(static_cast<int64_t>(shards.size()) == expected_total);
  for (const auto& s : shards) {
    INFO("shard " << s.dump());
    CHECK(s.at("state") == "succeeded");
    CHECK(s.at("attempts") == attempts);
  }
}

inline int64_t total_shards(const std::vector<TestModel>& models,
                            const std::vector<TestBenchmark>& benchmarks) {
  int64_t per_model = 0;
  for (const auto& b : benchmarks) per_model += b.shard_count();
  return per_model * static_cast<int64_t>(models.size());
}

// The worker's {"metrics": "HOST:PORT"} line. Cluster workers write stdout into their log.
inline std::string worker_metrics_address(Worker& worker) {
  std::string address;
  const bool found = wait_until(
      [&] {
        std::ifstream log(worker.process().log_file());
        std::string line;
        while (std::getline(log, line)) {
          if (line.rfind("{\"metrics\":", 0) != 0) continue;
          address = nlohmann::json::parse(line).at("metrics").get<std::string>();
          return true;
        }
        return false;
      },
      std::chrono::seconds(10));
  INFO("log of " << worker.name() << ": " << worker.process().log_file());
  REQUIRE(found);
  return address;
}

// A worker that serves its own /metrics on a free port.
inline Worker& add_metrics_worker(Cluster& cluster) {
  auto options = cluster.worker_defaults();
  options.extra_args = {"--metrics", "127.0.0.1:0"};
  return cluster.add_worker(options);
}

}  // namespace evald::testing
