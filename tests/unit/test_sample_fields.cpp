// coordinator/sample_stats: reading the stored samples of a shard. The streaming reader must read
// every blob the way parsing it into a document would (score, index, cluster key), skip what is
// not a sample, fall back to the document for clusters it does not read, and refuse what is not
// an array.
#include <catch2/catch.hpp>

#include "coordinator/sample_stats.hpp"

using evald::coordinator::read_sample_fields;

TEST_CASE("sample fields: scores, indexes and clusters of every object", "[unit][samples]") {
  const auto fields = read_sample_fields(
      R"([{"index": 3, "score": 1, "cluster": "p1", "pred": {"text": [1, 2, {"score": 9}]}},
          {"score": 0.25, "index": 18446744073709551615, "cluster": 7},
          {"index": -2, "score": true, "cluster": "7"},
          {"index": 4.5, "score": "1", "cluster": null},
          5, "text", [1, {"score": 3}], null,
          {"cluster": 2.5, "score": false}])");
  REQUIRE(fields);
  REQUIRE(fields->size() == 5);
  const auto& f = *fields;
  CHECK(f[0].index == 3);
  CHECK(f[0].score == 1.0);  // the nested "score": 9 is not the sample's
  CHECK(f[0].cluster == "sp1");
  CHECK_FALSE(f[1].index);  // beyond int64
  CHECK(f[1].score == 0.25);
  CHECK(f[1].cluster == "u7");
  CHECK(f[2].index == -2);
  CHECK(f[2].score == 1.0);
  CHECK(f[2].cluster == "s7");  // the string "7" is another cluster than the number 7
  CHECK_FALSE(f[3].index);
  CHECK_FALSE(f[3].score);
  CHECK_FALSE(f[3].cluster);
  CHECK(f[4].score == 0.0);
  CHECK(f[4].cluster == "j2.5");
}

TEST_CASE("sample fields: object clusters fall back to the document", "[unit][samples]") {
  const auto fields = read_sample_fields(
      R"([{"index": 0, "score": 1, "cluster": {"doc": 1}},
          {"index": 1, "score": 0, "cluster": {"doc": 1}},
          {"index": 2, "score": 0, "cluster": ["a", 1]},
          {"index": 3, "score": 1, "cluster": "x"}])");
  REQUIRE(fields);
  REQUIRE(fields->size() == 4);
  CHECK((*fields)[0].cluster == (*fields)[1].cluster);
  CHECK((*fields)[0].cluster != (*fields)[2].cluster);
  CHECK((*fields)[3].cluster == "sx");
  CHECK((*fields)[2].index == 2);
}

TEST_CASE("sample fields: a blob that is not a JSON array is refused", "[unit][samples]") {
  CHECK_FALSE(read_sample_fields(R"({"index": 0, "score": 1})"));
  CHECK_FALSE(read_sample_fields("3"));
  CHECK_FALSE(read_sample_fields("[{\"score\": 1}"));
  CHECK_FALSE(read_sample_fields(""));
  const auto empty = read_sample_fields("[]");
  REQUIRE(empty);
  CHECK(empty->empty());
}
