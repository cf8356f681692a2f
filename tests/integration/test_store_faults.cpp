// Storage failures on the real coordinator (docs/reliability.md), made with the test-only fault
// seam (the hidden --test-store-fault flag, coordinator/store_faults.hpp): a store commit that
// fails in RocksDB's write-ahead log, a WAL sync that fails, and a meta read that fails. Each
// time the coordinator must stop without telling anybody anything of the failed turn (no ACK to a
// worker, no 201 to a client), and a plain restart on the same data dir must recover exactly:
// every result counted once, the leaderboard exact, no attempt id handed out twice.
#include <catch2/catch.hpp>
#include <memory>
#include <regex>

#include "tests/integration/integration.hpp"

#ifdef EVALD_FAULT_INJECTION

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;

const std::vector<TestModel> kModels = {
    {"m-alpha", 1, 5, {{"sleep_ms", 30}}},
    {"m-beta", 2, 3, {{"sleep_ms", 30}}},
};
const std::vector<TestBenchmark> kBenchmarks = {
    {"b-one", 60, 10, 1, "accuracy", true, {}},
    {"b-two", 33, 8, 4, "accuracy", true, {}},
};

WorkerOptions named(const std::string& name) {
  WorkerOptions options;
  options.name = name;
  return options;
}

ClusterOptions with_fault(const std::string& fault) {
  ClusterOptions options;
  options.coordinator.extra_args = {"--test-store-fault=" + fault};
  return options;
}

// Waits for the coordinator to stop on the fault: exit code 1 and one critical line that names
// the injected error.
void expect_fail_stop(TestCluster& cluster, const std::string& injected) {
  const auto code = cluster.coordinator().process().wait_exit(30s);
  REQUIRE(code.has_value());
  CHECK(*code == 1);
  const auto log = read_file(cluster.log_dir() / "coordinator.log");
  INFO(file_tail(cluster.log_dir() / "coordinator.log", 3000));
  CHECK(log.find("test_store_fault_armed") != std::string::npos);
  CHECK(log.find("store_commit_failed action=stop_without_acknowledging") != std::string::npos);
  CHECK(log.find(injected) != std::string::npos);
}

// The coordinator started again on the same data dir, without the fault (its log next to the
// cluster's, so a failure report shows it), and workers on their old work dirs that connect to
// it.
struct Restarted {
  Restarted(TestCluster& cluster, const std::vector<std::string>& worker_names)
      : coordinator(cluster.coordinator().data_dir(), cluster.log_dir() / "coordinator-2.log"),
        api(coordinator.http_url()) {
    for (const auto& name : worker_names) {
      workers.push_back(
          std::make_unique<Worker>(coordinator.bind_endpoint(), cluster.dir() / ("work-" + name),
                                   cluster.log_dir() / ("worker-" + name + "-2.log"), named(name)));
    }
    api.wait_for_workers(workers.size());
  }
  ~Restarted() {
    for (auto& worker : workers) worker->terminate();
    coordinator.terminate();
  }
  Coordinator coordinator;
  Api api;
  std::vector<std::unique_ptr<Worker>> workers;
};

int64_t field_of(const std::string& line, const std::string& key) {
  std::smatch match;
  const std::regex pattern("\\b" + key + "=([0-9]+)");
  if (!std::regex_search(line, match, pattern)) return -1;
  return std::stoll(match[1].str());
}

void check_counted_once(const Api& api, const std::string& id) {
  const int64_t total = total_shards(kModels, kBenchmarks);
  const auto done = api.wait_for_state(id, "succeeded", 45s);
  CHECK(done.at("shards").at("succeeded") == total);
  check_results(api.results(id), kModels, kBenchmarks);
  const auto shards = api.shards(id);
  for (const auto& s : shards.at("shards")) {
    INFO("shard " << s.dump());
    CHECK(s.at("count") == s.at("end").get<int64_t>() - s.at("start").get<int64_t>());
  }
  // The durable per-cell shard counts add up to the campaign's shards exactly: a result the
  // failed turn may have left in the log and the worker's re-sent copy of it count once.
  const auto succeeded = [&] {
    return api.metric("evald_benchmark_shards", {{"campaign", id}, {"kind", "succeeded"}});
  };
  CHECK(wait_until([&] { return succeeded() >= static_cast<double>(total); }, 10s));
  CHECK(succeeded() == static_cast<double>(total));
}

// The first turn that counts a result fails to commit. No worker ever got an ACK (every result
// of that turn is still in its worker's outbox), and after restarts the campaign ends exact.
void fail_first_counted_result(const std::string& fault, const std::string& injected) {
  TestCluster cluster(with_fault(fault));
  const auto api = cluster.api();
  const auto id = api.submit(
      make_spec("store-fault-" + fault.substr(0, fault.find('@')), kModels, kBenchmarks));
  expect_fail_stop(cluster, injected);

  // The workers noticed nothing but silence. Stopped now, each says what it sent and how much of
  // it was ever ACKed, and keeps the rest in its outbox.
  int64_t sent = 0;
  for (size_t i = 0; i < cluster.worker_count(); ++i) {
    auto& worker = cluster.worker(i);
    CHECK(worker.terminate() == 0);
    const auto log = read_file(cluster.log_dir() / ("worker-" + worker.name() + ".log"));
    const auto stopped = log.rfind("worker_stopped");
    REQUIRE(stopped != std::string::npos);
    const auto line = log.substr(stopped, log.find('\n', stopped) - stopped);
    INFO(line);
    CHECK(field_of(line, "acked") == 0);
    const int64_t unacked = field_of(line, "unacked");
    CHECK(unacked == field_of(line, "results_sent"));
    size_t files = 0;
    for (const auto& entry : std::filesystem::directory_iterator(
             cluster.dir() / ("work-" + worker.name()) / "outbox")) {
      files += entry.path().extension() == ".result" ? 1 : 0;
    }
    CHECK(static_cast<int64_t>(files) == unacked);
    sent += field_of(line, "results_sent");
  }
  CHECK(sent >= 1);  // the failed turn had a result to count

  // The workers come back on their work dirs, load their outboxes and re-send.
  Restarted restarted(cluster, {"w1", "w2"});
  check_counted_once(restarted.api, id);
}

// The turn that stores a submit fails to commit: the client gets no 201.
void fail_submit(const std::string& fault, const std::string& injected) {
  TestCluster cluster(with_fault(fault));
  const auto api = cluster.api();
  const auto spec = make_spec("store-fault-submit", kModels, kBenchmarks);
  try {
    const auto response = api.request("POST", "/v1/campaigns", spec.dump());
    INFO("status " << response.status << " body " << response.body);
    CHECK((response.status < 200 || response.status >= 300));
  } catch (const std::runtime_error& e) {
    // The usual outcome: the connection closes without an answer.
    INFO(e.what());
    SUCCEED("no answer to the submit");
  }
  expect_fail_stop(cluster, injected);
  for (size_t i = 0; i < cluster.worker_count(); ++i) CHECK(cluster.worker(i).terminate() == 0);
  Restarted restarted(cluster, {"w1", "w2"});
  const auto campaigns = restarted.api.get("/v1/campaigns").at("campaigns");
  INFO(campaigns.dump());
  if (fault.starts_with("commit")) {
    // The log append failed: the submit never existed.
    CHECK(campaigns.empty());
  } else {
    // The append reached the file before its sync failed, so recovery may find it. The client
    // was told nothing either way; a campaign that exists is whole and runs to the exact result.
    REQUIRE(campaigns.size() <= 1);
    if (!campaigns.empty()) {
      check_counted_once(restarted.api, campaigns.at(0).at("id").get<std::string>());
    }
  }
}

TEST_CASE("store faults: a failed commit of the first counted results acknowledges none of them",
          "[integration][faults]") {
  fail_first_counted_result("commit@cell", "injected WAL append fault");
}

TEST_CASE("store faults: a failed WAL sync of the first counted results acknowledges none of them",
          "[integration][faults]") {
  fail_first_counted_result("sync@cell", "injected WAL sync fault");
}

TEST_CASE("store faults: a submit whose commit fails gets no 201 and does not exist after restart",
          "[integration][faults]") {
  fail_submit("commit@campaign", "injected WAL append fault");
}

TEST_CASE("store faults: a submit whose WAL sync fails gets no 201", "[integration][faults]") {
  fail_submit("sync@campaign", "injected WAL sync fault");
}

TEST_CASE("store faults: an unreadable epoch stops the start, and the next start takes a new epoch",
          "[integration][faults]") {
  TempDir dir;
  const auto data_dir = dir.path() / "store";
  std::filesystem::create_directories(dir.path() / "logs");
  // One good start, one faulted, one good: the faulted one must neither serve nor reuse nor
  // advance the epoch, so the last start's epoch (what its WELCOME tells the worker) is the first
  // start's + 1.
  int run = 0;
  const auto epoch_of_a_start = [&]() -> int64_t {
    ++run;
    const auto worker_log = dir.path() / "logs" / ("w-" + std::to_string(run) + ".log");
    Coordinator coordinator(data_dir, dir.path() / "logs" / "coordinator.log");
    Worker worker(coordinator.bind_endpoint(), dir.path() / "work", worker_log, named("w1"));
    Api(coordinator.http_url()).wait_for_workers(1);
    REQUIRE(wait_until(
        [&] { return read_file_or_empty(worker_log).find("welcome epoch=") != std::string::npos; },
        10s));
    CHECK(worker.terminate() == 0);
    CHECK(coordinator.terminate() == 0);
    return field_of(read_file(worker_log), "epoch");
  };
  const int64_t first_epoch = epoch_of_a_start();
  REQUIRE(first_epoch >= 1);
  const auto refused = run_command(bin_dir() / "evald-coordinator",
                                   {"--data-dir", data_dir.string(), "--bind", "tcp://127.0.0.1:0",
                                    "--http", "127.0.0.1:0", "--test-store-fault=meta-read@epoch"},
                                   30s);
  INFO("stdout: " << refused.out << "\nstderr: " << refused.err);
  CHECK(refused.exit_code == 1);
  CHECK(refused.out.find("\"http\"") == std::string::npos);  // it never served
  CHECK(refused.err.find("recovery_failed") != std::string::npos);
  CHECK(refused.err.find("reading meta key 'epoch'") != std::string::npos);
  CHECK(refused.err.find("injected meta read fault") != std::string::npos);
  CHECK(epoch_of_a_start() == first_epoch + 1);
}

}  // namespace

#endif  // EVALD_FAULT_INJECTION
