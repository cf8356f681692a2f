// Aggregation: example-weighted means, and the leaderboard's ranks, firsts and JSON, each with the
// expected numbers worked out by hand in the comments.
#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "common/aggregation.hpp"

using evald::BenchmarkColumn;
using evald::CellAggregate;
using evald::compute_leaderboard;
using evald::LeaderboardRow;
using nlohmann::json;

namespace {

// A cell whose every shard succeeded with a single shard scoring `value` on `metric` over
// `count` examples. The mean is value * count / count, which is `value` again for count 1.
CellAggregate scored(double value, const std::string& metric = "accuracy", int64_t count = 1) {
  CellAggregate cell;
  cell.shards_total = 1;
  cell.add({{metric, value}}, count);
  return cell;
}

// A cell where no shard succeeded.
CellAggregate unscored() {
  CellAggregate cell;
  cell.shards_total = 1;
  return cell;
}

std::vector<BenchmarkColumn> accuracy_columns(size_t n) {
  std::vector<BenchmarkColumn> columns;
  for (size_t i = 0; i < n; ++i) {
    columns.push_back({"bench" + std::to_string(i), "accuracy", true});
  }
  return columns;
}

const LeaderboardRow& row_of(const std::vector<LeaderboardRow>& rows, const std::string& model) {
  for (const auto& row : rows) {
    if (row.model == model) return row;
  }
  FAIL("no row for " << model);
  return rows.front();
}

std::vector<std::string> order_of(const std::vector<LeaderboardRow>& rows) {
  std::vector<std::string> names;
  for (const auto& row : rows) names.push_back(row.model);
  return names;
}

}  // namespace

TEST_CASE("a cell's mean is weighted by examples, uneven last shard included",
          "[unit][aggregation]") {
  CellAggregate cell;
  cell.shards_total = 3;
  // 1001 examples in shards of 500, 500 and 1.
  cell.add({{"accuracy", 0.6}, {"f1", 0.5}}, 500);
  cell.add({{"accuracy", 0.8}, {"f1", 0.7}}, 500);
  cell.add({{"accuracy", 0.0}}, 1);

  CHECK(cell.examples_scored == 1001);
  CHECK(cell.shards_succeeded == 3);
  CHECK(cell.complete());
  // accuracy: (0.6*500 + 0.8*500 + 0.0*1) / 1001 = 700 / 1001 = 0.699300699...;
  // a plain mean of the three shards would be 0.4666.
  REQUIRE(cell.mean("accuracy"));
  CHECK(*cell.mean("accuracy") == Approx(700.0 / 1001).epsilon(1e-12));
  CHECK(cell.metrics.at("accuracy").weight == 1001);
  // f1 was reported by the first two shards only: (0.5*500 + 0.7*500) / 1000 = 0.6.
  REQUIRE(cell.mean("f1"));
  CHECK(*cell.mean("f1") == Approx(0.6).epsilon(1e-12));
  CHECK(cell.metrics.at("f1").weight == 1000);
}

TEST_CASE("a metric no shard scored has no mean", "[unit][aggregation]") {
  CellAggregate cell;
  CHECK_FALSE(cell.mean("accuracy"));
  CHECK_FALSE(cell.complete());  // no shards at all is not complete

  cell.shards_total = 2;
  cell.add({{"accuracy", 0.9}}, 10);
  CHECK_FALSE(cell.mean("bleu"));
  CHECK_FALSE(cell.complete());  // 1 of 2 shards

  // A shard that scored 0 examples adds no weight: 0 / 0 is no score, not NaN.
  CellAggregate empty;
  empty.add({{"accuracy", 0.5}}, 0);
  CHECK_FALSE(empty.mean("accuracy"));
  CHECK(empty.shards_succeeded == 1);

  // A NaN from a broken runner does not poison the sum.
  CellAggregate poisoned;
  poisoned.add({{"accuracy", std::nan("")}, {"f1", 0.25}}, 4);
  CHECK_FALSE(poisoned.mean("accuracy"));
  CHECK(*poisoned.mean("f1") == 0.25);
}

TEST_CASE("equal averages share a rank: 1, 1, 3", "[unit][aggregation]") {
  // One benchmark; averages are the scores themselves.
  const auto columns = accuracy_columns(1);
  const auto rows = compute_leaderboard({"carol", "bob", "alice"}, columns,
                                        {{scored(0.5)}, {scored(0.8)}, {scored(0.8)}});
  CHECK(order_of(rows) == std::vector<std::string>{"alice", "bob", "carol"});
  CHECK(row_of(rows, "alice").rank == 1);
  CHECK(row_of(rows, "bob").rank == 1);
  CHECK(row_of(rows, "carol").rank == 3);
  CHECK(*row_of(rows, "carol").average == 0.5);
}

TEST_CASE("summation-order noise does not break a tie", "[unit][aggregation]") {
  // zulu scores (0.1, 0.2, 0.3) and alpha (0.3, 0.2, 0.1): both average 0.2, but in doubles
  // (0.1 + 0.2 + 0.3) / 3 and (0.3 + 0.2 + 0.1) / 3 differ in the last bits.
  REQUIRE((0.1 + 0.2 + 0.3) / 3 != (0.3 + 0.2 + 0.1) / 3);
  const auto columns = accuracy_columns(3);
  const auto rows = compute_leaderboard({"zulu", "alpha", "mike", "bravo"}, columns,
                                        {{scored(0.1), scored(0.2), scored(0.3)},
                                         {scored(0.3), scored(0.2), scored(0.1)},
                                         {scored(0.9), scored(0.9), scored(0.9)},
                                         {scored(0.1), scored(0.1), scored(0.1)}});
  // mike 0.9 -> 1; alpha and zulu 0.2 -> 2, 2 (by name); bravo 0.1 -> 4.
  CHECK(order_of(rows) == std::vector<std::string>{"mike", "alpha", "zulu", "bravo"});
  CHECK(rows[0].rank == 1);
  CHECK(rows[1].rank == 2);
  CHECK(rows[2].rank == 2);
  CHECK(rows[3].rank == 4);
  // mike is best on all three benchmarks: 3 firsts, everyone else 0.
  CHECK(rows[0].firsts == 3);
  CHECK(rows[1].firsts == 0);
}

TEST_CASE("firsts count ties for each tied model and respect higher_is_better",
          "[unit][aggregation]") {
  const std::vector<BenchmarkColumn> columns = {
      {"kmmlu", "accuracy", true},
      {"wiki", "perplexity", false},
      {"gsm8k", "accuracy", true},
  };
  // kmmlu:  a 0.9, b 0.9, c 0.5          -> best 0.9: a, b
  // wiki:   a 12,  b 10,  c 10 (lower)   -> best 10:  b, c
  // gsm8k:  a -,   b 0.4, c 0.6          -> best 0.6: c
  // firsts: a 1, b 2, c 2.
  // averages: a null (no gsm8k score); b (0.9 + 10 + 0.4) / 3 = 3.7667; c (0.5 + 10 + 0.6) / 3 =
  // 3.7. Ranks: b 1, c 2, a 3.
  const auto rows = compute_leaderboard({"a", "b", "c"}, columns,
                                        {{scored(0.9), scored(12, "perplexity"), unscored()},
                                         {scored(0.9), scored(10, "perplexity"), scored(0.4)},
                                         {scored(0.5), scored(10, "perplexity"), scored(0.6)}});
  CHECK(order_of(rows) == std::vector<std::string>{"b", "c", "a"});
  CHECK(row_of(rows, "a").firsts == 1);
  CHECK(row_of(rows, "b").firsts == 2);
  CHECK(row_of(rows, "c").firsts == 2);
  CHECK(*row_of(rows, "b").average == Approx(11.3 / 3).epsilon(1e-12));
  CHECK(*row_of(rows, "c").average == Approx(11.1 / 3).epsilon(1e-12));
  CHECK_FALSE(row_of(rows, "a").average);
  CHECK(row_of(rows, "b").rank == 1);
  CHECK(row_of(rows, "c").rank == 2);
  CHECK(row_of(rows, "a").rank == 3);
}

TEST_CASE("a missing score never raises a model's standing", "[unit][aggregation]") {
  const auto columns = accuracy_columns(2);
  // top:   0.99 and no score on bench1 -> average null, even though 0.99 beats everyone.
  // gap:   no score anywhere             -> average null.
  // steady 0.6, 0.6 -> 0.6, rank 1; weak 0.2, 0.4 -> 0.3, rank 2.
  // Models without an average share rank 2 + 1 = 3, ordered by name.
  const auto rows = compute_leaderboard({"top", "weak", "gap", "steady"}, columns,
                                        {{scored(0.99), unscored()},
                                         {scored(0.2), scored(0.4)},
                                         {unscored(), unscored()},
                                         {scored(0.6), scored(0.6)}});
  CHECK(order_of(rows) == std::vector<std::string>{"steady", "weak", "gap", "top"});
  CHECK(row_of(rows, "steady").rank == 1);
  CHECK(row_of(rows, "weak").rank == 2);
  CHECK(row_of(rows, "gap").rank == 3);
  CHECK(row_of(rows, "top").rank == 3);
  CHECK_FALSE(row_of(rows, "top").average);
  CHECK(*row_of(rows, "top").scores[0].value == 0.99);
  CHECK_FALSE(row_of(rows, "top").scores[1].value);
  // Its real score still wins bench0; bench1 goes to steady, the best of those scored.
  CHECK(row_of(rows, "top").firsts == 1);
  CHECK(row_of(rows, "steady").firsts == 1);
  CHECK(row_of(rows, "gap").firsts == 0);
}

TEST_CASE("the leaderboard JSON has the documented shape", "[unit][aggregation]") {
  const std::vector<BenchmarkColumn> columns = {{"kmmlu", "accuracy", true}};
  // m1: 2 of 3 shards succeeded: accuracy (0.6*500 + 0.8*500) / 1000 = 0.7; f1 only in the
  // first shard: 0.5. m2: no shard succeeded.
  CellAggregate m1;
  m1.shards_total = 3;
  m1.add({{"accuracy", 0.6}, {"f1", 0.5}}, 500);
  m1.add({{"accuracy", 0.8}}, 500);
  CellAggregate m2;
  m2.shards_total = 3;
  const auto rows = compute_leaderboard({"m2", "m1"}, columns, {{m2}, {m1}});
  const json expected = json::parse(R"([
    {"name": "m1", "rank": 1, "average": 0.7, "firsts": 1,
     "scores": {"kmmlu": {"metric": "accuracy", "value": 0.7, "count": 1000, "complete": false,
                          "metrics": {"accuracy": 0.7, "f1": 0.5}}}},
    {"name": "m2", "rank": 2, "average": null, "firsts": 0,
     "scores": {"kmmlu": {"metric": "accuracy", "value": null, "count": 0, "complete": false,
                          "metrics": {}}}}
  ])");
  CHECK(evald::leaderboard_to_json(rows, columns) == expected);
}
