// The store's pipelined commit (Store::write + WalSyncer, coordinator/store.hpp) on a real RocksDB
// directory: a written batch is readable at once and durable once the sync thread says so; the
// sync thread does not hold up writers while it syncs; a failed sync is reported, final, and
// reports nothing after it as durable; and the sync fault of the seam fires in the sync that
// covers its batch, not in an earlier one.
#include <poll.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "coordinator/store.hpp"
#include "tests/support/test_support.hpp"

using namespace evald;
using namespace evald::coordinator;
using namespace std::chrono_literals;

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

void write_campaign(Store& store, uint32_t key) {
  Store::Batch batch;
  batch.put_campaign(key, R"({"id":"c)" + std::to_string(key) + R"("})");
  REQUIRE(store.write(batch).ok());
}

// Whether the syncer's eventfd is readable within `timeout`.
bool readable(const WalSyncer& syncer, std::chrono::milliseconds timeout) {
  pollfd item{syncer.fd(), POLLIN, 0};
  return ::poll(&item, 1, static_cast<int>(timeout.count())) == 1;
}

}  // namespace

TEST_CASE("store fault specs take a sync delay, and slow-sync needs one", "[unit][store][faults]") {
  for (const std::string text :
       {"sync@cell,delay_ms=1500", "slow-sync@campaign,delay_ms=700", "sync@3,delay_ms=1"}) {
    CHECK(describe(fault_of(text)) == text);
  }
  CHECK(fault_of("sync@cell,delay_ms=1500").delay == 1500ms);
  CHECK(fault_of("slow-sync@2,delay_ms=9").kind == StoreFault::Kind::kSlowSync);
  CHECK(fault_of("slow-sync@2,delay_ms=9").commit_number == 2);
  for (const std::string bad : {"slow-sync@cell", "commit@cell,delay_ms=5", "sync@cell,delay_ms=0",
                                "sync@cell,delay_ms=", "sync@cell,delay=5",
                                "meta-read@epoch,delay_ms=5", "sync@cell,delay_ms=700000"}) {
    INFO("'" << bad << "'");
    CHECK_FALSE(parse_store_fault(bad).ok());
  }
}

TEST_CASE("a written batch is readable at once and durable once the sync thread says so",
          "[unit][store][pipeline]") {
  testing::TempDir dir;
  {
    auto opened = Store::open(dir.path() / "db");
    REQUIRE(opened.ok());
    Store& store = *opened.value();
    Store::Batch batch;
    batch.put_meta_u64("epoch", 7);
    REQUIRE(store.commit(batch).ok());
    REQUIRE(store.writes() == 1);
    WalSyncer syncer(store, store.writes());
    CHECK_FALSE(readable(syncer, 0ms));

    batch.put_meta_u64("epoch", 8);
    REQUIRE(store.write(batch).ok());
    CHECK(batch.empty());
    CHECK(store.writes() == 2);
    // Visible to reads before any sync: the scheduler's next turn reads what this one wrote.
    CHECK(store.get_meta_u64("epoch").value() == 8u);
    // An empty batch is no write.
    REQUIRE(store.write(batch).ok());
    CHECK(store.writes() == 2);

    syncer.request(2);
    REQUIRE(readable(syncer, 10s));
    const auto progress = syncer.take();
    CHECK(progress.durable == 2);
    CHECK_FALSE(progress.failure);
    CHECK(progress.syncs == 1);
    CHECK_FALSE(readable(syncer, 0ms));  // take() cleared it

    // Many writes while syncs run: each sync covers whatever was written before it started.
    for (uint32_t key = 1; key <= 200; ++key) {
      write_campaign(store, key);
      syncer.request(store.writes());
    }
    const auto all = syncer.wait_for(store.writes());
    CHECK(all.durable == store.writes());
    CHECK_FALSE(all.failure);
    CHECK(all.syncs >= 2);
    CHECK(all.syncs <= 201);
  }
  auto reopened = Store::open(dir.path() / "db");
  REQUIRE(reopened.ok());
  CHECK(campaigns_in(*reopened.value()).size() == 200);
  CHECK(reopened.value()->get_meta_u64("epoch").value() == 8u);
}

TEST_CASE("a slow WAL sync does not hold up the writes of the next turns",
          "[unit][store][pipeline]") {
  testing::TempDir dir;
  // A long hang, so that a busy machine (CI, ASan) cannot make 8 unsynced writes look slow.
  auto opened = Store::open(dir.path() / "db", fault_of("slow-sync@2,delay_ms=2000"));
  REQUIRE(opened.ok());
  Store& store = *opened.value();
  WalSyncer syncer(store, 0);
  write_campaign(store, 1);
  REQUIRE(syncer.wait_for(1).durable == 1);  // write 1's sync is not the slow one
  write_campaign(store, 2);                  // the slow sync covers this one
  syncer.request(2);
  const auto start = std::chrono::steady_clock::now();
  // Give the sync thread time to enter the slow sync, then write while it hangs there.
  std::this_thread::sleep_for(100ms);
  for (uint32_t key = 3; key <= 10; ++key) write_campaign(store, key);
  const auto writes_took = std::chrono::steady_clock::now() - start;
  CHECK(writes_took < 1500ms);  // the writes did not wait for the 2 s sync
  CHECK(syncer.take().durable == 1);
  CHECK(campaigns_in(store).size() == 10);  // and they are readable
  const auto done = syncer.wait_for(10);
  CHECK(done.durable == 10);
  CHECK_FALSE(done.failure);
  CHECK(std::chrono::steady_clock::now() - start >= 1900ms);
  CHECK(store.injected_faults() == 1);
}

TEST_CASE("a failed WAL sync is final: neither its writes nor later ones are reported durable",
          "[unit][store][pipeline][faults]") {
  testing::TempDir dir;
  {
    auto opened = Store::open(dir.path() / "db", fault_of("sync@cell,delay_ms=300"));
    REQUIRE(opened.ok());
    Store& store = *opened.value();
    WalSyncer syncer(store, 0);
    write_campaign(store, 1);
    REQUIRE(syncer.wait_for(1).durable == 1);

    Store::Batch batch;
    batch.put_campaign(2, R"({"id":"c2"})");
    CellAggregate cell;
    cell.add({{"accuracy", 0.5}}, 10);
    batch.put_cell(2, 0, cell);
    REQUIRE(store.write(batch).ok());  // the write itself succeeds: only its sync will fail
    syncer.request(2);
    std::this_thread::sleep_for(50ms);
    write_campaign(store, 3);  // a second turn, written while the failing sync runs
    syncer.request(3);

    REQUIRE(readable(syncer, 10s));
    const auto failed = syncer.wait_for(3);
    REQUIRE(failed.failure);
    CHECK(failed.failure->find("store WAL sync failed") != std::string::npos);
    CHECK(failed.failure->find("injected WAL sync fault") != std::string::npos);
    CHECK(failed.durable == 1);
    CHECK(store.injected_faults() == 1);
    // Final: asking again syncs nothing and reports the same.
    syncer.request(4);
    const auto again = syncer.take();
    CHECK(again.durable == 1);
    CHECK(again.failure == failed.failure);
  }
  // The failed sync's batches reached the file, so recovery may replay them, but only as a
  // prefix of the log: batch 3 never survives without batch 2.
  auto reopened = Store::open(dir.path() / "db");
  REQUIRE(reopened.ok());
  const auto campaigns = campaigns_in(*reopened.value());
  INFO(campaigns.size());
  CHECK((campaigns == std::vector<uint32_t>{1} || campaigns == std::vector<uint32_t>{1, 2} ||
         campaigns == std::vector<uint32_t>{1, 2, 3}));
}

TEST_CASE("after a failed write no WAL sync runs, and the sync thread stops without a failure",
          "[unit][store][pipeline][faults]") {
  // RocksDB asserts (aborts the process) when it syncs a log whose last append failed; the
  // coordinator must stop with the write's error instead.
  testing::TempDir dir;
  auto opened = Store::open(dir.path() / "db", fault_of("commit@cell"));
  REQUIRE(opened.ok());
  Store& store = *opened.value();
  WalSyncer syncer(store, 0);
  write_campaign(store, 1);
  REQUIRE(syncer.wait_for(1).durable == 1);

  Store::Batch batch;
  CellAggregate cell;
  cell.add({{"accuracy", 0.5}}, 10);
  batch.put_cell(1, 0, cell);
  const auto written = store.write(batch);
  REQUIRE_FALSE(written.ok());
  CHECK(written.error().message.find("store write failed") != std::string::npos);
  CHECK(store.injected_faults() == 1);

  const auto direct = store.sync_wal(store.writes());
  REQUIRE(direct.ok());
  CHECK_FALSE(direct.value());  // not run

  syncer.request(store.writes());
  syncer.stop_syncing();  // returns once no sync is in flight
  const auto after = syncer.take();
  CHECK(after.durable == 1);
  CHECK_FALSE(after.failure);  // the write's error is the cause, not a sync's
  CHECK(syncer.wait_for(store.writes()).durable == 1);  // does not block once stopped
}
