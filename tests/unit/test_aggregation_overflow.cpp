// Aggregates of huge but finite values: no finite metric value and no count a shard can have
// turns a score into "missing" (which would drop the model to unranked), in memory or after the
// cell went through the store.
#include <catch2/catch.hpp>
#include <cfloat>
#include <cmath>
#include <limits>
#include <string>

#include "common/aggregation.hpp"
#include "common/binary_codec.hpp"
#include "coordinator/records.hpp"

using evald::BenchmarkColumn;
using evald::CellAggregate;
using evald::compute_leaderboard;

namespace {
constexpr int64_t kHugeCount = 9'000'000'000'000'000'000;
}

TEST_CASE("a cell's mean of huge values stays finite", "[unit][aggregation]") {
  CellAggregate cell;
  for (int i = 0; i < 1000; ++i) cell.add({{"accuracy", 1e308}}, kHugeCount / 1000);
  const auto mean = cell.mean("accuracy");
  REQUIRE(mean);
  CHECK(*mean == Approx(1e308));

  CellAggregate extremes;
  extremes.add({{"m", DBL_MAX}}, 1);
  extremes.add({{"m", DBL_MAX}}, 1);
  extremes.add({{"m", -DBL_MAX}}, 2);
  REQUIRE(extremes.mean("m"));
  CHECK(*extremes.mean("m") == 0.0);

  // Beyond any real benchmark (the coordinator caps a count at its shard's size): the count sums
  // saturate instead of wrapping negative.
  CellAggregate both;
  both.add({{"m", 0.5}}, kHugeCount);
  both.add({{"m", 0.5}}, kHugeCount);
  CHECK(both.examples_scored == std::numeric_limits<int64_t>::max());
  CHECK(both.metrics.at("m").weight == std::numeric_limits<int64_t>::max());
}

TEST_CASE("negative counts and non-finite values never reach a sum", "[unit][aggregation]") {
  CellAggregate cell;
  cell.add({{"m", 0.5}}, -5);
  cell.add({{"m", std::numeric_limits<double>::infinity()}}, 3);
  cell.add({{"m", 0.25}}, 4);
  REQUIRE(cell.mean("m"));
  CHECK(*cell.mean("m") == 0.25);
  CHECK(cell.examples_scored == 7);
  CHECK(cell.shards_succeeded == 2);
}

TEST_CASE("an average of scores near DBL_MAX still ranks", "[unit][aggregation]") {
  std::vector<std::vector<CellAggregate>> cells(2, std::vector<CellAggregate>(2));
  for (auto& cell : cells[0]) cell.add({{"accuracy", DBL_MAX}}, 10);
  for (auto& cell : cells[1]) cell.add({{"accuracy", 0.5}}, 10);
  const std::vector<BenchmarkColumn> columns = {{"b1", "accuracy", true}, {"b2", "accuracy", true}};
  const auto rows = compute_leaderboard({"huge", "half"}, columns, cells);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].model == "huge");
  CHECK(rows[0].rank == 1);
  REQUIRE(rows[0].average);
  CHECK(std::isfinite(*rows[0].average));
  CHECK(rows[1].rank == 2);
}

TEST_CASE("cell records keep huge sums through the store, and old records still read",
          "[unit][aggregation][store]") {
  CellAggregate cell;
  cell.add({{"accuracy", 1e308}, {"f1", 0.5}}, 1'000'000);
  cell.add({{"accuracy", 1e308}, {"f1", 0.25}}, 3'000'000);
  auto decoded = evald::coordinator::decode_cell(evald::coordinator::encode(cell));
  REQUIRE(decoded.ok());
  CHECK(decoded->examples_scored == 4'000'000);
  CHECK(decoded->shards_succeeded == 2);
  REQUIRE(decoded->mean("accuracy"));
  CHECK(*decoded->mean("accuracy") == Approx(1e308));
  CHECK(*decoded->mean("f1") == Approx(0.3125));

  // Version 1 stored the sum itself.
  std::string v1;
  evald::BinaryWriter w(v1);
  w.u8(1);
  w.i64(10);  // examples scored
  w.i64(1);   // shards succeeded
  w.u32(1);
  w.str("accuracy");
  w.f64(7.5);  // sum(value * count)
  w.i64(10);
  auto old = evald::coordinator::decode_cell(v1);
  REQUIRE(old.ok());
  REQUIRE(old->mean("accuracy"));
  CHECK(*old->mean("accuracy") == 0.75);
}
