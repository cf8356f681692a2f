// The worker's delivery guarantee: results in the on-disk outbox (round trip, corrupt files), and
// the real Worker talking to a stand-in coordinator (a ROUTER socket in this test) over TCP:
// held results are delivered after WELCOME and forgotten on ACK, exec results are on disk before
// they are sent and survive a restart, bad assignments come back as failed results, CANCEL
// reports nothing.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <deque>
#include <fstream>
#include <map>
#include <thread>
#include <zmq.hpp>

#include "common/clock.hpp"
#include "common/protocol.hpp"
#include "tests/support/test_support.hpp"
#include "worker/outbox.hpp"
#include "worker/worker.hpp"

using evald::protocol::Message;
using evald::protocol::ShardResult;
using evald::testing::TempDir;
using evald::worker::Outbox;
using namespace std::chrono_literals;
namespace protocol = evald::protocol;

namespace {

ShardResult sample_result(uint64_t attempt_id) {
  ShardResult r;
  r.attempt_id = attempt_id;
  r.campaign = 3;
  r.model = 1;
  r.benchmark = 2;
  r.shard = static_cast<uint32_t>(attempt_id % 100);
  r.ok = attempt_id % 2 == 0;
  r.count = 500;
  r.metrics = {{"accuracy", 0.61}, {"f1", 0.5}};
  r.error = r.ok ? "" : "exit code 1: boom";
  r.duration_ms = 1234;
  r.samples_json = R"([{"i":1}])";
  return r;
}

void check_same(const ShardResult& a, const ShardResult& b) {
  CHECK(a.attempt_id == b.attempt_id);
  CHECK(a.campaign == b.campaign);
  CHECK(a.model == b.model);
  CHECK(a.benchmark == b.benchmark);
  CHECK(a.shard == b.shard);
  CHECK(a.ok == b.ok);
  CHECK(a.count == b.count);
  CHECK(a.metrics == b.metrics);
  CHECK(a.error == b.error);
  CHECK(a.duration_ms == b.duration_ms);
  CHECK(a.samples_json == b.samples_json);
}

std::vector<std::string> file_names(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Stands in for the coordinator: a ROUTER on a free loopback port.
class FakeCoordinator {
 public:
  FakeCoordinator() : router_(context_, zmq::socket_type::router) {
    router_.set(zmq::sockopt::linger, 0);
    // A restarted worker reconnects under the same name before the old connection is noticed gone.
    router_.set(zmq::sockopt::router_handover, 1);
    router_.bind("tcp://127.0.0.1:*");
    endpoint_ = router_.get(zmq::sockopt::last_endpoint);
  }

  const std::string& endpoint() const { return endpoint_; }

  // The first message of type T from the worker, in arrival order; other messages wait in a
  // backlog for later expect() calls. nullopt if none arrives in time.
  template <typename T>
  std::optional<T> expect(std::chrono::milliseconds timeout = 4000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      for (auto it = backlog_.begin(); it != backlog_.end(); ++it) {
        if (auto* m = std::get_if<T>(&*it)) {
          T found = std::move(*m);
          backlog_.erase(it);
          return found;
        }
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      zmq::pollitem_t item{router_.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, left);
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      zmq::message_t identity;
      zmq::message_t body;
      REQUIRE(router_.recv(identity));
      REQUIRE(router_.recv(body));
      identity_ = identity.to_string();
      auto decoded = protocol::decode(body.to_string_view());
      REQUIRE(decoded.ok());
      if (std::holds_alternative<protocol::Heartbeat>(decoded.value())) continue;
      backlog_.push_back(std::move(decoded.value()));
    }
  }

  // Results from RESULTS messages until `n` distinct attempts were seen (or the time is up).
  std::map<uint64_t, ShardResult> results(size_t n, std::chrono::milliseconds timeout = 4000ms) {
    std::map<uint64_t, ShardResult> by_attempt;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (by_attempt.size() < n) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      auto message = expect<protocol::Results>(std::max(left, 0ms));
      if (!message) break;
      for (auto& r : message->results) by_attempt[r.attempt_id] = std::move(r);
    }
    return by_attempt;
  }

  void send(const Message& message) {
    router_.send(zmq::buffer(identity_), zmq::send_flags::sndmore);
    router_.send(zmq::buffer(protocol::encode(message)));
  }

  // HELLO, answered with WELCOME.
  protocol::Hello greet() {
    auto hello = expect<protocol::Hello>();
    REQUIRE(hello);
    send(protocol::Welcome{100, 1000, 1});
    return *hello;
  }

  std::deque<Message>& backlog() { return backlog_; }

 private:
  zmq::context_t context_{1};
  zmq::socket_t router_;
  std::string endpoint_;
  std::string identity_;
  std::deque<Message> backlog_;
};

// A Worker running on its own thread, stopped like SIGTERM would stop it.
class RunningWorker {
 public:
  explicit RunningWorker(evald::worker::WorkerConfig config) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0);
    stop_read_.reset(fds[0]);
    stop_write_.reset(fds[1]);
    auto created = evald::worker::Worker::create(std::move(config), clock_);
    INFO((created.ok() ? std::string() : created.error().message));
    REQUIRE(created.ok());
    worker_ = std::move(created.value());
    thread_ = std::thread([this] { exit_code_ = worker_->run(stop_read_.get()); });
  }
  ~RunningWorker() {
    if (thread_.joinable()) {
      stop_now();
      thread_.join();
    }
  }
  RunningWorker(const RunningWorker&) = delete;
  RunningWorker& operator=(const RunningWorker&) = delete;

  // Graceful stop (drain), as on SIGTERM; returns the exit code.
  int stop() {
    signal_stop();
    thread_.join();
    return exit_code_;
  }
  // After signal_stop(): waits for the drain to end by itself; returns the exit code.
  int wait() {
    thread_.join();
    return exit_code_;
  }
  void signal_stop() {
    const unsigned char signal_number = SIGTERM;
    REQUIRE(::write(stop_write_.get(), &signal_number, 1) == 1);
  }
  const evald::worker::WorkerStats& stats() const { return worker_->stats(); }  // after stop()
  void interrupt(int signal_number) { ::pthread_kill(thread_.native_handle(), signal_number); }

 private:
  void stop_now() {
    const unsigned char twice[2] = {SIGTERM, SIGTERM};
    [[maybe_unused]] auto n = ::write(stop_write_.get(), twice, 2);
  }

  evald::SystemClock clock_;
  evald::worker::UniqueFd stop_read_;
  evald::worker::UniqueFd stop_write_;
  std::unique_ptr<evald::worker::Worker> worker_;
  std::thread thread_;
  int exit_code_ = -1;
};

evald::worker::WorkerConfig worker_config(const FakeCoordinator& coordinator,
                                          const std::filesystem::path& work_dir,
                                          uint32_t slots = 2) {
  evald::worker::WorkerConfig config;
  config.coordinator = coordinator.endpoint();
  config.name = "worker-under-test";
  config.slots = slots;
  config.gpu_selection.mode = evald::worker::GpuMode::kNone;
  config.labels = {{"zone", "test"}};
  config.work_dir = work_dir;
  config.heartbeat = 100ms;
  config.drain_timeout = 3000ms;
  return config;
}

// Installs a do-nothing handler without SA_RESTART, so the signal interrupts blocking calls.
class ScopedInterruptingSignal {
 public:
  explicit ScopedInterruptingSignal(int signal_number) : signal_number_(signal_number) {
    struct sigaction action {};
    action.sa_handler = [](int) {};
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;
    ::sigaction(signal_number_, &action, &old_);
  }
  ~ScopedInterruptingSignal() { ::sigaction(signal_number_, &old_, nullptr); }
  ScopedInterruptingSignal(const ScopedInterruptingSignal&) = delete;
  ScopedInterruptingSignal& operator=(const ScopedInterruptingSignal&) = delete;

 private:
  int signal_number_;
  struct sigaction old_ {};
};

protocol::CampaignInfo campaign(uint32_t key, const std::string& id, nlohmann::json runner) {
  nlohmann::json spec = {
      {"name", id},
      {"models", {{{"name", "model-a"}}}},
      {"benchmarks",
       {{{"name", "kmmlu"}, {"examples", 1000}, {"shard_size", 100}, {"metric", "em"}}}},
      {"runner", std::move(runner)}};
  REQUIRE(evald::parse_campaign_spec(spec).ok());
  return protocol::CampaignInfo{key, id, spec.dump()};
}

protocol::Assignment shard(uint64_t attempt_id, uint32_t campaign_key, uint32_t index = 0) {
  return protocol::Assignment{.attempt_id = attempt_id,
                              .campaign = campaign_key,
                              .model = 0,
                              .benchmark = 0,
                              .shard = index,
                              .start = index * 100,
                              .end = index * 100 + 100,
                              .attempt = 1,
                              .gpus = {}};
}

std::filesystem::path write_script(const std::filesystem::path& dir, const std::string& body) {
  const auto path = dir / "runner.sh";
  std::ofstream(path) << "#!/bin/bash\n" << body;
  std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  return path;
}

}  // namespace

TEST_CASE("outbox stores, loads and forgets results", "[unit][outbox]") {
  TempDir dir("evald-outbox");
  auto outbox = Outbox::open(dir.path() / "outbox");
  REQUIRE(outbox.ok());
  const auto a = sample_result(10);
  const auto b = sample_result(11);
  const auto c = sample_result(12);
  REQUIRE(outbox->write({&c, &a, &b}).ok());
  CHECK(file_names(dir.path() / "outbox") ==
        std::vector<std::string>{"10.result", "11.result", "12.result"});

  // A second Outbox on the same directory is what a restarted worker sees.
  auto reopened = Outbox::open(dir.path() / "outbox");
  REQUIRE(reopened.ok());
  auto loaded = reopened->load();
  CHECK(loaded.corrupt == 0);
  REQUIRE(loaded.results.size() == 3);
  check_same(loaded.results[0], a);
  check_same(loaded.results[1], b);
  check_same(loaded.results[2], c);

  reopened->remove(11);
  reopened->remove(99);  // never stored: not an error
  loaded = reopened->load();
  REQUIRE(loaded.results.size() == 2);
  CHECK(loaded.results[0].attempt_id == 10);
  CHECK(loaded.results[1].attempt_id == 12);

  // Overwriting a result (the same attempt finished again after a restart) keeps one file.
  auto changed = sample_result(10);
  changed.count = 7;
  REQUIRE(reopened->write(changed).ok());
  loaded = reopened->load();
  REQUIRE(loaded.results.size() == 2);
  CHECK(loaded.results[0].count == 7);
}

TEST_CASE("corrupt outbox files are moved aside, never fatal", "[unit][outbox]") {
  TempDir dir("evald-outbox");
  auto outbox = Outbox::open(dir.path());
  REQUIRE(outbox.ok());
  const auto good = sample_result(5);
  REQUIRE(outbox->write(good).ok());
  std::ofstream(dir.path() / "7.result") << "not a frame at all";
  // A valid frame under the wrong name: it would be delivered and deleted as the wrong attempt.
  std::ofstream(dir.path() / "8.result", std::ios::binary)
      << protocol::encode(protocol::Results{{sample_result(9)}});
  std::ofstream(dir.path() / "junk.result") << "x";
  // Truncated mid-write by a crash: never renamed into place, so never sent; just deleted.
  std::ofstream(dir.path() / "10.result.tmp") << "EV";
  std::ofstream(dir.path() / "notes.txt") << "left alone";

  auto loaded = outbox->load();
  REQUIRE(loaded.results.size() == 1);
  check_same(loaded.results[0], good);
  CHECK(loaded.corrupt == 3);
  CHECK(file_names(dir.path()) == std::vector<std::string>{"5.result", "7.result.corrupt",
                                                           "8.result.corrupt",
                                                           "junk.result.corrupt", "notes.txt"});
  // Once moved aside they are not reported again.
  CHECK(outbox->load().corrupt == 0);
}

TEST_CASE("worker delivers outbox results after WELCOME and deletes them on ACK",
          "[unit][outbox][worker]") {
  TempDir dir("evald-worker");
  const auto work_dir = dir.path() / "work";
  {
    auto outbox = Outbox::open(work_dir / "outbox");
    REQUIRE(outbox.ok());
    REQUIRE(outbox->write(sample_result(77)).ok());
  }
  FakeCoordinator coordinator;
  RunningWorker worker(worker_config(coordinator, work_dir));

  // The work dir belongs to one worker at a time.
  evald::SystemClock clock;
  auto second = evald::worker::Worker::create(worker_config(coordinator, work_dir), clock);
  REQUIRE_FALSE(second.ok());
  CHECK_THAT(second.error().message, Catch::Contains("in use by another running worker"));

  const auto hello = coordinator.greet();
  CHECK(hello.name == "worker-under-test");
  CHECK(hello.slots == 2);
  CHECK(hello.instance.size() == 16);
  CHECK(hello.labels == nlohmann::json{{"zone", "test"}});
  CHECK(hello.gpus == nlohmann::json::array());
  CHECK(hello.running == std::vector<uint64_t>{77});

  auto delivered = coordinator.results(1);
  REQUIRE(delivered.count(77) == 1);
  check_same(delivered[77], sample_result(77));
  CHECK(std::filesystem::exists(work_dir / "outbox" / "77.result"));

  coordinator.send(protocol::Ack{{77}});
  CHECK(evald::testing::wait_until(
      [&] { return !std::filesystem::exists(work_dir / "outbox" / "77.result"); }, 3000ms));
  CHECK(worker.stop() == 0);
  CHECK(coordinator.expect<protocol::Drain>().has_value());
  CHECK(file_names(work_dir / "outbox").empty());
}

TEST_CASE("exec results are on disk before they are sent and survive a worker restart",
          "[unit][outbox][worker]") {
  TempDir dir("evald-worker");
  const auto work_dir = dir.path() / "work";
  const auto script =
      write_script(dir.path(),
                   "cat > /dev/null\necho '{\"metrics\": {\"em\": 0.75}, \"count\": "
                   "100}'\n");
  FakeCoordinator coordinator;
  {
    RunningWorker worker(worker_config(coordinator, work_dir));
    coordinator.greet();
    coordinator.send(campaign(1, "c-exec", {{"type", "exec"}, {"command", {script.string()}}}));
    coordinator.send(campaign(2, "c-noop", {{"type", "noop"}}));
    coordinator.send(protocol::Assign{{shard(100, 1), shard(101, 2, 4)}});

    const auto outbox_dir = work_dir / "outbox";
    std::map<uint64_t, ShardResult> got;
    while (got.size() < 2) {
      auto message = coordinator.expect<protocol::Results>();
      REQUIRE(message);
      for (auto& r : message->results) {
        // Written before it was sent, so it is there when it arrives.
        if (r.attempt_id == 100) CHECK(std::filesystem::exists(outbox_dir / "100.result"));
        got[r.attempt_id] = r;
      }
    }
    INFO(got[100].error);
    CHECK(got[100].ok);
    CHECK(got[100].count == 100);
    CHECK(got[100].metrics == std::vector<std::pair<std::string, double>>{{"em", 0.75}});
    CHECK(got[101].ok);
    CHECK(got[101].count == 100);
    CHECK(got[101].metrics == std::vector<std::pair<std::string, double>>{{"em", 1.0}});
    CHECK_FALSE(std::filesystem::exists(outbox_dir / "101.result"));  // noop: memory only

    // No ACK: a graceful stop writes every unACKed result to the outbox.
    CHECK(worker.stop() == 0);
    CHECK(coordinator.expect<protocol::Drain>().has_value());
    CHECK(file_names(outbox_dir) == std::vector<std::string>{"100.result", "101.result"});
  }
  coordinator.backlog().clear();

  // A new worker process on the same work dir holds the results and delivers them.
  RunningWorker restarted(worker_config(coordinator, work_dir));
  const auto hello = coordinator.greet();
  CHECK(hello.running == std::vector<uint64_t>{100, 101});
  auto redelivered = coordinator.results(2);
  REQUIRE(redelivered.size() == 2);
  CHECK(redelivered[100].metrics == std::vector<std::pair<std::string, double>>{{"em", 0.75}});
  CHECK(redelivered[101].count == 100);
  coordinator.send(protocol::Ack{{100, 101}});
  CHECK(
      evald::testing::wait_until([&] { return file_names(work_dir / "outbox").empty(); }, 3000ms));
  CHECK(restarted.stop() == 0);
}

TEST_CASE("assignments the worker cannot run come back as failed results",
          "[unit][outbox][worker]") {
  TempDir dir("evald-worker");
  FakeCoordinator coordinator;
  RunningWorker worker(worker_config(coordinator, dir.path() / "work", /*slots=*/2));
  coordinator.greet();

  coordinator.send(protocol::Assign{{shard(1, 5)}});
  auto unknown = coordinator.results(1);
  REQUIRE(unknown.count(1) == 1);
  CHECK_FALSE(unknown[1].ok);
  CHECK(unknown[1].error == "worker has no spec for campaign 5");

  coordinator.send(campaign(1, "c-noop", {{"type", "noop"}}));
  auto bad_index = shard(2, 1);
  bad_index.model = 3;
  coordinator.send(protocol::Assign{{bad_index}});
  auto bad = coordinator.results(1);
  REQUIRE(bad.count(2) == 1);
  CHECK_THAT(bad[2].error, Catch::StartsWith("assignment names model 3"));

  // Three at once on two slots: the third is refused, the others run.
  coordinator.send(protocol::Assign{{shard(3, 1, 0), shard(4, 1, 1), shard(5, 1, 2)}});
  auto over = coordinator.results(3);
  REQUIRE(over.size() == 3);
  CHECK(over[3].ok);
  CHECK(over[4].ok);
  CHECK_FALSE(over[5].ok);
  CHECK_THAT(over[5].error, Catch::StartsWith("worker over capacity"));

  // A coordinator that forgot us asks for HELLO again; results not yet ACKed follow WELCOME.
  coordinator.send(protocol::ReHello{});
  const auto hello = coordinator.greet();
  CHECK(hello.running == std::vector<uint64_t>{1, 2, 3, 4, 5});
  auto resent = coordinator.results(5);
  CHECK(resent.size() == 5);
  coordinator.send(protocol::Ack{{1, 2, 3, 4, 5}});

  CHECK(worker.stop() == 0);
  CHECK(worker.stats().assigned == 5);
  CHECK(worker.stats().results_sent == 5);
  CHECK(worker.stats().results_failed == 3);
  CHECK(worker.stats().acked == 5);
}

TEST_CASE("CANCEL kills an exec attempt and nothing is reported for it", "[unit][outbox][worker]") {
  TempDir dir("evald-worker");
  const auto pid_file = dir.path() / "child.pid";
  const auto script = write_script(dir.path(), "cat > /dev/null\necho $$ > '" + pid_file.string() +
                                                   ".tmp'\nmv '" + pid_file.string() + ".tmp' '" +
                                                   pid_file.string() + "'\nexec sleep 1000\n");
  FakeCoordinator coordinator;
  RunningWorker worker(worker_config(coordinator, dir.path() / "work"));
  coordinator.greet();
  coordinator.send(campaign(1, "c-exec", {{"type", "exec"}, {"command", {script.string()}}}));
  coordinator.send(campaign(2, "c-noop", {{"type", "noop"}}));
  coordinator.send(protocol::Assign{{shard(50, 1)}});
  REQUIRE(evald::testing::wait_until([&] { return std::filesystem::exists(pid_file); }, 3000ms));
  pid_t child = 0;
  std::ifstream(pid_file) >> child;
  REQUIRE(child > 0);

  coordinator.send(protocol::Cancel{{50}});
  CHECK(
      evald::testing::wait_until([&] { return ::kill(child, 0) != 0 && errno == ESRCH; }, 3000ms));
  // The slot is free again, and the next result is the only one that arrives.
  coordinator.send(protocol::Assign{{shard(51, 2), shard(52, 2, 1)}});
  auto results = coordinator.results(2);
  CHECK(results.size() == 2);
  CHECK(results.count(50) == 0);
  coordinator.send(protocol::Ack{{51, 52}});
  CHECK(worker.stop() == 0);
  CHECK(worker.stats().cancelled == 1);
  CHECK(file_names(dir.path() / "work" / "outbox").empty());
}

TEST_CASE("a signal that interrupts the worker's poll does not stop it", "[unit][outbox][worker]") {
  // SIGTERM reaches the real worker through a SignalPipe, but its handler still interrupts
  // zmq_poll with EINTR on whichever thread it lands; that must be just another turn.
  const ScopedInterruptingSignal usr1(SIGUSR1);
  TempDir dir("evald-worker");
  FakeCoordinator coordinator;
  RunningWorker worker(worker_config(coordinator, dir.path() / "work"));
  coordinator.greet();
  coordinator.send(campaign(1, "c-noop", {{"type", "noop"}}));
  for (uint64_t attempt = 1; attempt <= 5; ++attempt) {
    worker.interrupt(SIGUSR1);
    coordinator.send(protocol::Assign{{shard(attempt, 1)}});
    auto results = coordinator.results(1);
    REQUIRE(results.count(attempt) == 1);
    CHECK(results[attempt].ok);
    coordinator.send(protocol::Ack{{attempt}});
    worker.interrupt(SIGUSR1);
  }
  CHECK(worker.stop() == 0);
  CHECK(worker.stats().acked == 5);
}

TEST_CASE("a worker whose coordinator is down waits quietly", "[unit][outbox][worker]") {
  TempDir dir("evald-worker");
  FakeCoordinator unused;
  auto config = worker_config(unused, dir.path() / "work");
  config.coordinator = "tcp://127.0.0.1:1";  // nobody listens: refused, retried with backoff
  config.heartbeat = 50ms;
  RunningWorker worker(config);
  // An observation window, not a wait for a condition: the point is that nothing happens in it
  // (12 heartbeat intervals, enough for every timer to have come due and been rescheduled).
  std::this_thread::sleep_for(600ms);
  CHECK(worker.stop() == 0);
  // About two turns per heartbeat interval; a timer that fails to reschedule spins by millions.
  CHECK(worker.stats().loop_turns < 200);
  CHECK(worker.stats().results_sent == 0);
}

TEST_CASE("queue ahead: assignments beyond the slots start in order as slots free",
          "[unit][outbox][worker][queue]") {
  TempDir dir("evald-worker");
  // Each attempt marks its shard as started, then runs until the test writes go-<shard>.
  const auto started = dir.path() / "started";
  std::filesystem::create_directories(started);
  const auto script = write_script(
      dir.path(), "cat > /dev/null\ntouch '" + started.string() + "/'\"$1\"\nwhile [ ! -e '" +
                      dir.path().string() + "/go-'\"$1\" ]; do sleep 0.01; done\n" +
                      "echo '{\"metrics\": {\"em\": 1}, \"count\": 100}'\n");
  auto is_started = [&](int shard) {
    return std::filesystem::exists(started / std::to_string(shard));
  };
  auto go = [&](int shard) { std::ofstream(dir.path() / ("go-" + std::to_string(shard))) << ""; };
  FakeCoordinator coordinator;
  auto config = worker_config(coordinator, dir.path() / "work", /*slots=*/1);
  config.queue_ahead = 3;
  config.drain_timeout = 20000ms;  // the running shard ends when the test says so
  RunningWorker worker(std::move(config));
  CHECK(coordinator.greet().queue_ahead == 3);
  coordinator.send(
      campaign(1, "c-exec", {{"type", "exec"}, {"command", {script.string(), "{shard}"}}}));

  // One slot, a queue of three: the first runs, three wait; a fifth is beyond both.
  coordinator.send(
      protocol::Assign{{shard(1, 1, 0), shard(2, 1, 1), shard(3, 1, 2), shard(4, 1, 3)}});
  REQUIRE(evald::testing::wait_until([&] { return is_started(0); }, 3000ms));
  coordinator.send(protocol::Assign{{shard(5, 1, 4)}});
  auto over = coordinator.results(1);
  REQUIRE(over.count(5) == 1);
  CHECK_THAT(over[5].error, Catch::StartsWith("worker over capacity"));
  CHECK_FALSE(is_started(1));  // its slot is taken; the answer above came after the ASSIGN

  // A queued attempt cancelled never starts and reports nothing. The HELLO that a REHELLO asks
  // for is written after the CANCEL was read (one socket, read in order), so it proves the
  // cancel before the slot frees: it lists the running attempt and the two still queued.
  coordinator.send(protocol::Ack{{5}});
  coordinator.send(protocol::Cancel{{2}});
  coordinator.send(protocol::ReHello{});
  CHECK(coordinator.greet().running == std::vector<uint64_t>{1, 3, 4});
  go(0);
  auto first = coordinator.results(1);
  REQUIRE(first.count(1) == 1);
  CHECK(first[1].ok);
  REQUIRE(evald::testing::wait_until([&] { return is_started(2); }, 3000ms));
  CHECK_FALSE(is_started(1));
  CHECK_FALSE(is_started(3));
  coordinator.send(protocol::Ack{{1}});

  // A HELLO lists the queued attempts with the running ones, so a restarted coordinator keeps
  // both; on a drain the queued ones go back at once, unstarted, and the running one finishes.
  coordinator.send(protocol::ReHello{});
  CHECK(coordinator.greet().running == std::vector<uint64_t>{3, 4});
  worker.signal_stop();
  const auto handed_back = coordinator.expect<protocol::HandBack>();
  REQUIRE(handed_back);
  CHECK(handed_back->attempt_ids == std::vector<uint64_t>{4});
  go(2);
  auto last = coordinator.results(1);
  REQUIRE(last.count(3) == 1);
  CHECK(last[3].ok);
  coordinator.send(protocol::Ack{{3}});
  CHECK(worker.wait() == 0);
  CHECK_FALSE(is_started(3));
  CHECK(worker.stats().cancelled == 1);
  CHECK(worker.stats().results_sent == 3);
}
