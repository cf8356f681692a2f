// Store: records round-trip through a real RocksDB directory and survive reopening.
#include <rocksdb/db.h>

#include <catch2/catch.hpp>

#include "coordinator/store.hpp"
#include "tests/support/test_support.hpp"

using namespace evald;
using namespace evald::coordinator;

TEST_CASE("records round-trip through RocksDB and survive reopen", "[unit][store]") {
  testing::TempDir dir;
  {
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    Store& store = *opened.value();
    Store::Batch batch;
    batch.put_meta_u64("epoch", 7);
    batch.put_campaign(3, R"({"id":"c000003"})");
    ShardRecord rec;
    rec.state = ShardState::kSucceeded;
    rec.attempts = 2;
    rec.total_attempts = 3;
    rec.attempt_id = (7ULL << 32) | 99;
    rec.worker = "node-1";
    rec.duration_ms = 1500;
    rec.count = 500;
    rec.metrics = {{"accuracy", 0.625}};
    rec.last_error = "exit code 3: boom";
    batch.put_shard(ShardKey{3, 1, 2}, rec);
    batch.put_shard(ShardKey{3, 0, 300}, ShardRecord{});
    batch.put_shard(ShardKey{4, 0, 0}, ShardRecord{});
    AttemptRecord attempt;
    attempt.outcome = AttemptOutcome::kStale;
    attempt.worker = "node-2";
    attempt.result_ok = true;
    attempt.count = 10;
    batch.put_attempt(ShardKey{3, 1, 2}, 42, attempt);
    CellAggregate cell;
    cell.add({{"accuracy", 0.5}}, 100);
    batch.put_cell(3, 1, cell);
    batch.put_samples(ShardKey{3, 1, 2}, R"([{"id":1}])");
    REQUIRE(batch.size() == 8);
    REQUIRE(store.commit(batch).ok());
    CHECK(batch.empty());
  }
  auto reopened = Store::open(dir.path() / "db");
  REQUIRE(reopened.ok());
  Store& store = *reopened.value();
  CHECK(store.get_meta_u64("epoch").value() == 7u);
  REQUIRE(store.get_meta_u64("missing").ok());
  CHECK_FALSE(store.get_meta_u64("missing").value().has_value());
  CHECK(store.get_samples(ShardKey{3, 1, 2}) == std::string(R"([{"id":1}])"));

  std::vector<std::pair<ShardKey, ShardRecord>> shards;
  REQUIRE(store
              .scan_shards(
                  3u, [&](const ShardKey& k, const ShardRecord& r) { shards.emplace_back(k, r); })
              .ok());
  // Keys sort big-endian: group 0 shard 300 before group 1 shard 2; campaign 4 is excluded.
  REQUIRE(shards.size() == 2);
  CHECK(shards[0].first == ShardKey{3, 0, 300});
  CHECK(shards[1].first == ShardKey{3, 1, 2});
  const ShardRecord& got = shards[1].second;
  CHECK(got.state == ShardState::kSucceeded);
  CHECK(got.attempts == 2);
  CHECK(got.total_attempts == 3);
  CHECK(got.attempt_id == ((7ULL << 32) | 99));
  CHECK(got.worker == "node-1");
  CHECK(got.count == 500);
  CHECK(got.metrics == std::vector<std::pair<std::string, double>>{{"accuracy", 0.625}});
  CHECK(got.last_error == "exit code 3: boom");

  int all = 0;
  REQUIRE(
      store.scan_shards(std::nullopt, [&](const ShardKey&, const ShardRecord&) { ++all; }).ok());
  CHECK(all == 3);

  int attempts = 0;
  REQUIRE(store
              .scan_attempts(3,
                             [&](const ShardKey& k, uint64_t id, const AttemptRecord& a) {
                               ++attempts;
                               CHECK(k == ShardKey{3, 1, 2});
                               CHECK(id == 42);
                               CHECK(a.outcome == AttemptOutcome::kStale);
                               CHECK(a.result_ok);
                               CHECK(a.worker == "node-2");
                             })
              .ok());
  CHECK(attempts == 1);

  int cells = 0;
  REQUIRE(store
              .scan_cells([&](uint32_t c, uint32_t g, const CellAggregate& cell) {
                ++cells;
                CHECK(c == 3);
                CHECK(g == 1);
                CHECK(cell.examples_scored == 100);
                CHECK(cell.mean("accuracy") == Approx(0.5));
              })
              .ok());
  CHECK(cells == 1);
  int campaigns = 0;
  REQUIRE(store
              .scan_campaigns([&](uint32_t key, std::string_view json) {
                ++campaigns;
                CHECK(key == 3);
                CHECK(json == R"({"id":"c000003"})");
              })
              .ok());
  CHECK(campaigns == 1);
}

TEST_CASE("corrupt records are refused with the key named", "[unit][store]") {
  CHECK_FALSE(decode_shard_record("").ok());
  CHECK_FALSE(decode_shard_record("\x09").ok());
  const auto bytes = encode(ShardRecord{});
  for (size_t n = 0; n < bytes.size(); ++n)
    CHECK_FALSE(decode_shard_record(bytes.substr(0, n)).ok());
  CHECK(decode_shard_record(bytes).ok());
  CHECK_FALSE(decode_attempt_record("junk").ok());
  CHECK_FALSE(decode_cell("junk").ok());
}

TEST_CASE("a corrupt record found by a scan is named by its key", "[unit][store]") {
  evald::testing::TempDir dir("evald-store-keys");
  {
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    Store::Batch batch;
    batch.put_shard(ShardKey{1, 2, 3}, ShardRecord{});
    batch.put_cell(1, 2, CellAggregate{});
    REQUIRE(opened.value()->commit(batch).ok());
  }
  {
    // The layout says: 's' + campaign + group + shard, 'g' + campaign + group, big-endian u32s.
    // Overwrite exactly those keys with junk; if the key naming were wrong these writes would
    // land elsewhere and the scans below would still succeed.
    rocksdb::DB* raw = nullptr;
    REQUIRE(rocksdb::DB::Open(rocksdb::Options(), (dir.path() / "db").string(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    const std::string shard_key("s\0\0\0\x01\0\0\0\x02\0\0\0\x03", 13);
    const std::string cell_key("g\0\0\0\x01\0\0\0\x02", 9);
    REQUIRE(db->Put(rocksdb::WriteOptions(), shard_key, "\x09junk").ok());
    REQUIRE(db->Put(rocksdb::WriteOptions(), cell_key, "junk").ok());
  }
  auto opened = Store::open(dir.path() / "db");
  REQUIRE(opened.ok());
  const auto shards = opened.value()->scan_shards(std::nullopt, [](auto&, auto&) {});
  REQUIRE_FALSE(shards.ok());
  CHECK_THAT(shards.error().message, Catch::Contains("at key 73000000010000000200000003"));
  const auto cells = opened.value()->scan_cells([](auto, auto, auto&) {});
  REQUIRE_FALSE(cells.ok());
  CHECK_THAT(cells.error().message, Catch::Contains("at key 670000000100000002"));
}

TEST_CASE("shard records keep hand-backs, version 1 records still decode", "[unit][store]") {
  ShardRecord rec;
  rec.state = ShardState::kPending;
  rec.attempt_id = 42;
  rec.hand_backs = 2;
  auto decoded = decode_shard_record(encode(rec));
  REQUIRE(decoded.ok());
  CHECK(decoded.value().hand_backs == 2);
  CHECK(decoded.value().attempt_id == 42);
  // A version 1 record is the version 2 encoding without the trailing u32 and with byte 0 = 1.
  std::string v1 = encode(rec);
  v1.resize(v1.size() - 4);
  v1[0] = 1;
  auto old = decode_shard_record(v1);
  REQUIRE(old.ok());
  CHECK(old.value().hand_backs == 0);
  CHECK(old.value().attempt_id == 42);
}

TEST_CASE("a data dir that cannot be created is a clear error", "[unit][store]") {
  auto opened = Store::open("/proc/evald-cannot-create-this/db");
  REQUIRE_FALSE(opened.ok());
  CHECK_THAT(opened.error().message, Catch::Contains("/proc/evald-cannot-create-this"));
}
