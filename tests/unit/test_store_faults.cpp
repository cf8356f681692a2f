// The store fault seam (coordinator/store_faults.hpp) on a real RocksDB directory: a commit fault
// and a sync fault fail exactly the chosen batch, from inside RocksDB's own write path; a meta
// read fault fails the read; and a reopen without the seam finds every earlier commit intact.
#include <catch2/catch.hpp>

#include "coordinator/store.hpp"
#include "tests/support/test_support.hpp"

using namespace evald;
using namespace evald::coordinator;

namespace {

StoreFault fault_of(const std::string& text) {
  auto parsed = parse_store_fault(text);
  INFO(text);
  REQUIRE(parsed.ok());
  return parsed.value();
}

std::vector<uint32_t> campaigns_in(Store& store) {
  std::vector<uint32_t> keys;
  REQUIRE(store.scan_campaigns([&](uint32_t key, std::string_view) { keys.push_back(key); }).ok());
  return keys;
}

}  // namespace

TEST_CASE("store fault specs parse, print back and refuse what they do not know",
          "[unit][store][faults]") {
  for (const std::string text : {"commit@cell", "commit@campaign", "sync@shard", "sync@audit",
                                 "commit@1", "sync@17", "meta-read@epoch"}) {
    CHECK(describe(fault_of(text)) == text);
  }
  CHECK(fault_of("commit@cell").record_kinds == static_cast<uint32_t>(RecordKind::kCell));
  CHECK(fault_of("sync@3").commit_number == 3);
  CHECK(fault_of("sync@3").kind == StoreFault::Kind::kSync);
  CHECK(fault_of("meta-read@epoch").meta_key == "epoch");
  for (const std::string bad : {"", "commit", "commit@", "commit@0", "commit@-1", "commit@3x",
                                "commit@cells", "write@cell", "meta-read@"}) {
    INFO("'" << bad << "'");
    const auto parsed = parse_store_fault(bad);
    REQUIRE_FALSE(parsed.ok());
    // The refusal says what would be accepted.
    CHECK(parsed.error().message.find("commit@WHEN, sync@WHEN or meta-read@KEY") !=
          std::string::npos);
  }
}

TEST_CASE("a commit fault fails the first batch that writes the chosen record kind, in RocksDB",
          "[unit][store][faults]") {
  testing::TempDir dir;
  {
    auto opened = Store::open(dir.path() / "db", fault_of("commit@cell"));
    REQUIRE(opened.ok());
    Store& store = *opened.value();
    Store::Batch batch;
    batch.put_meta_u64("epoch", 1);
    batch.put_campaign(1, R"({"id":"c000001"})");
    CHECK_FALSE(batch.writes(RecordKind::kCell));
    REQUIRE(store.commit(batch).ok());
    CHECK(store.injected_faults() == 0);

    batch.put_campaign(2, R"({"id":"c000002"})");
    CellAggregate cell;
    cell.add({{"accuracy", 0.5}}, 10);
    batch.put_cell(2, 0, cell);
    CHECK(batch.writes(RecordKind::kCell));
    const auto failed = store.commit(batch);
    REQUIRE_FALSE(failed.ok());
    CHECK(failed.error().message.find("store commit failed") != std::string::npos);
    CHECK(failed.error().message.find("injected WAL append fault") != std::string::npos);
    CHECK(store.injected_faults() == 1);
    CHECK(batch.empty());
    CHECK_FALSE(batch.writes(RecordKind::kCell));  // clear() forgets the kinds too

    // RocksDB itself now refuses writes (its background error), so nothing after the fault can
    // become durable behind the caller's back either.
    batch.put_campaign(3, R"({"id":"c000003"})");
    CHECK_FALSE(store.commit(batch).ok());
    CHECK(store.injected_faults() == 1);  // that one was RocksDB's own refusal, not the seam
  }
  auto reopened = Store::open(dir.path() / "db");
  REQUIRE(reopened.ok());
  Store& store = *reopened.value();
  // The committed batch survived; the failed one never reached the log.
  CHECK(campaigns_in(store) == std::vector<uint32_t>{1});
  CHECK(store.get_meta_u64("epoch").value() == 1u);
  size_t cells = 0;
  REQUIRE(store.scan_cells([&](uint32_t, uint32_t, const CellAggregate&) { ++cells; }).ok());
  CHECK(cells == 0);
}

TEST_CASE("a sync fault fails the chosen commit, the write is in the log or absent, never torn",
          "[unit][store][faults]") {
  testing::TempDir dir;
  {
    auto opened = Store::open(dir.path() / "db", fault_of("sync@2"));
    REQUIRE(opened.ok());
    Store& store = *opened.value();
    Store::Batch batch;
    batch.put_campaign(1, R"({"id":"c000001"})");
    REQUIRE(store.commit(batch).ok());
    batch.put_campaign(2, R"({"id":"c000002"})");
    batch.put_shard(ShardKey{2, 0, 0}, ShardRecord{});
    const auto failed = store.commit(batch);
    REQUIRE_FALSE(failed.ok());
    CHECK(failed.error().message.find("injected WAL sync fault") != std::string::npos);
    CHECK(store.injected_faults() == 1);
  }
  auto reopened = Store::open(dir.path() / "db");
  REQUIRE(reopened.ok());
  Store& store = *reopened.value();
  // The appended bytes reached the file before the sync failed, so recovery may replay them:
  // the caller told nobody about batch 2, and it must be all there or not at all.
  const auto campaigns = campaigns_in(store);
  size_t shards = 0;
  REQUIRE(
      store.scan_shards(std::nullopt, [&](const ShardKey&, const ShardRecord&) { ++shards; }).ok());
  if (campaigns.size() == 2) {
    CHECK(shards == 1);
  } else {
    CHECK(campaigns == std::vector<uint32_t>{1});
    CHECK(shards == 0);
  }
}

TEST_CASE("a commit fault by number fails exactly that commit", "[unit][store][faults]") {
  testing::TempDir dir;
  auto opened = Store::open(dir.path() / "db", fault_of("commit@3"));
  REQUIRE(opened.ok());
  Store& store = *opened.value();
  Store::Batch batch;
  for (uint32_t i = 1; i <= 2; ++i) {
    batch.put_campaign(i, "{}");
    REQUIRE(store.commit(batch).ok());
  }
  // An empty batch is no commit: it neither counts nor fails.
  REQUIRE(store.commit(batch).ok());
  batch.put_campaign(3, "{}");
  CHECK_FALSE(store.commit(batch).ok());
  CHECK(store.injected_faults() == 1);
}

TEST_CASE("a meta read fault is an error, never 'not stored'", "[unit][store][faults]") {
  testing::TempDir dir;
  {
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    Store::Batch batch;
    batch.put_meta_u64("epoch", 4);
    batch.put_meta_u64("next_campaign", 9);
    REQUIRE(opened.value()->commit(batch).ok());
  }
  auto opened = Store::open(dir.path() / "db", fault_of("meta-read@epoch"));
  REQUIRE(opened.ok());
  Store& store = *opened.value();
  const auto epoch = store.get_meta_u64("epoch");
  REQUIRE_FALSE(epoch.ok());
  CHECK(epoch.error().message.find("reading meta key 'epoch'") != std::string::npos);
  CHECK(epoch.error().message.find("injected meta read fault") != std::string::npos);
  // Other keys read normally, and so does the faulted key without the seam.
  CHECK(store.get_meta_u64("next_campaign").value() == 9u);
  Store::Batch batch;
  batch.put_campaign(1, "{}");
  CHECK(store.commit(batch).ok());  // a read fault is no write fault
}
