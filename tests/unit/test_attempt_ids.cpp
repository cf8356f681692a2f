// Attempt ids never repeat: not when the 32-bit sequence of an epoch wraps, and not when the
// stored epoch cannot be read (a restart must not start again at epoch 1).
#include <rocksdb/db.h>

#include <catch2/catch.hpp>
#include <set>

#include "common/clock.hpp"
#include "coordinator/scheduler.hpp"
#include "tests/support/test_support.hpp"
#include "tests/unit/scheduler_turn.hpp"

using namespace evald;
using namespace evald::coordinator;
using namespace std::chrono_literals;

namespace {

CampaignSpec noop_spec(int shards) {
  auto spec = parse_campaign_spec(
      nlohmann::json{{"name", "ids"},
                     {"models", {{{"name", "m"}}}},
                     {"benchmarks", {{{"name", "b"}, {"examples", shards}, {"shard_size", 1}}}},
                     {"runner", {{"type", "noop"}}}});
  REQUIRE(spec.ok());
  return spec.value();
}

struct Node {
  testing::TempDir dir;
  ManualClock clock;
  Metrics metrics;
  SchedulerOptions options;
  std::unique_ptr<Store> store;
  std::unique_ptr<Scheduler> scheduler;

  explicit Node(uint32_t first_seq) { options.first_attempt_seq = first_seq; }

  Status open() {
    scheduler.reset();
    store.reset();
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    store = std::move(opened.value());
    scheduler = std::make_unique<Scheduler>(*store, clock, metrics, options);
    return scheduler->recover();
  }

  void close() {
    scheduler.reset();
    store.reset();
  }

  // Runs every shard on one worker with one slot, one lease per turn; returns the attempt ids.
  std::vector<uint64_t> run_all(int shards) {
    REQUIRE(scheduler->submit(noop_spec(shards)).ok());
    protocol::Hello hello;
    hello.name = "w1";
    hello.instance = "i1";
    scheduler->on_message("w1", hello);
    std::vector<uint64_t> ids;
    for (int turn = 0; turn < shards + 2; ++turn) {
      for (const auto& a : testing::run_turn(*scheduler)) {
        ids.push_back(a.attempt_id);
        scheduler->on_message("w1", protocol::Results{{testing::noop_success(a)}});
      }
    }
    return ids;
  }
};

}  // namespace

TEST_CASE("the attempt sequence never wraps into ids already used", "[unit][scheduler][ids]") {
  Node node(UINT32_MAX - 2);  // two ids left in the first epoch
  REQUIRE(node.open().ok());
  const auto ids = node.run_all(5);
  REQUIRE(ids.size() == 5);
  const std::set<uint64_t> unique(ids.begin(), ids.end());
  CHECK(unique.size() == ids.size());
  for (size_t i = 1; i < ids.size(); ++i) CHECK(ids[i] > ids[i - 1]);
  // Each epoch has two ids left here (the sequence starts near its end in every epoch): the
  // five ids span epochs 1, 1, 2, 2, 3.
  CHECK(ids[0] >> 32 == 1);
  CHECK(ids[1] >> 32 == 1);
  CHECK(ids[2] >> 32 == 2);
  CHECK(ids[3] >> 32 == 2);
  CHECK(ids[4] >> 32 == 3);
  // Every new epoch was committed with the lease that first used it: a restart starts above the
  // last epoch used, not above the one stored at the previous start.
  node.close();
  REQUIRE(node.open().ok());
  const auto after = node.run_all(1);
  REQUIRE(after.size() == 1);
  CHECK(after[0] >> 32 == 4);
}

TEST_CASE("an unreadable stored epoch stops recovery instead of restarting at 1",
          "[unit][scheduler][ids]") {
  Node node(0);
  REQUIRE(node.open().ok());
  node.close();
  {
    // Corrupt the stored epoch (a value of the wrong size), as a torn or foreign write would.
    rocksdb::DB* raw = nullptr;
    rocksdb::Options options;
    REQUIRE(rocksdb::DB::Open(options, (node.dir.path() / "db").string(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    REQUIRE(db->Put(rocksdb::WriteOptions(), "mepoch", "abc").ok());
  }
  const auto recovered = node.open();
  REQUIRE_FALSE(recovered.ok());
  CHECK_THAT(recovered.error().message, Catch::Contains("epoch"));
  CHECK_THAT(recovered.error().message, Catch::Contains("3 bytes"));
}
