// common/time_format: the RFC 3339 writer every JSON time goes through, against the C library.

#include <catch2/catch.hpp>
#include <cstdio>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "common/time_format.hpp"

namespace {

struct Reference {
  std::string ms;        // gmtime_r + "%04d-...%03dZ", what the provenance records used before
  std::string seconds;   // the same without the fraction
  std::string strftime;  // gmtime_r + strftime("%Y-%m-%dT%H:%M:%SZ"), what the API used before;
                         // %Y does not pad years before 1000, which RFC 3339 writes with 4 digits
};

Reference reference(int64_t epoch_ms) {
  // Floor division: -1 ms is 1969-12-31T23:59:59.999Z.
  int64_t seconds = epoch_ms / 1000;
  int64_t ms = epoch_ms % 1000;
  if (ms < 0) {
    ms += 1000;
    --seconds;
  }
  const auto t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  REQUIRE(gmtime_r(&t, &tm) != nullptr);
  Reference out;
  char text[64];
  std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  out.ms = text;
  out.seconds = out.ms.substr(0, out.ms.size() - 5) + "Z";
  REQUIRE(std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm) > 0);
  out.strftime = text;
  return out;
}

std::string with_ms(int64_t epoch_ms) {
  std::string out = "prefix:";  // appends, never overwrites
  evald::append_rfc3339_ms(out, epoch_ms);
  REQUIRE(out.starts_with("prefix:"));
  return out.substr(7);
}

}  // namespace

TEST_CASE("time format: the same text as gmtime_r and printf/strftime", "[unit][time]") {
  std::vector<int64_t> times = {
      0,
      1,  // 1970-01-01T00:00:00.001Z
      999,
      1000,
      -1,     // 1969-12-31T23:59:59.999Z
      -1000,  // 1969-12-31T23:59:59.000Z
      -1001,  // 1969-12-31T23:59:58.999Z
      -86'400'000,
      -62'135'596'800'000,  // 0001-01-01T00:00:00.000Z
      86'399'999,
      86'400'000,
      951'782'399'999,    // 2000-02-28T23:59:59.999Z
      951'782'400'000,    // 2000-02-29, a leap day of a 400-year
      951'868'800'000,    // 2000-03-01
      4'107'542'399'999,  // 2100-02-28 (2100 is no leap year)
      4'107'542'400'000,  // 2100-03-01
      1'709'164'800'000,  // 2024-02-29
      1'764'666'000'123,
      253'402'300'799'999,    // 9999-12-31T23:59:59.999Z
      253'402'300'800'000,    // 10000-01-01: five digits, as %Y and %04d print
      4'102'444'800'000'000,  // year 131,971
  };
  std::mt19937_64 random(20261204);
  std::uniform_int_distribution<int64_t> any_time(-62'135'596'800'000, 253'402'300'799'999);
  for (int i = 0; i < 200'000; ++i) times.push_back(any_time(random));
  // Every millisecond around each day boundary of a few months, leap days included.
  for (int64_t day = 11'016; day < 11'100; ++day) {  // 2000-02-28 onwards, about 12 weeks
    for (const int64_t offset : {int64_t{-1}, int64_t{0}, int64_t{1}}) {
      times.push_back(day * 86'400'000 + offset);
    }
  }
  size_t mismatches = 0;
  for (const int64_t t : times) {
    const Reference expected = reference(t);
    const std::string ms = with_ms(t);
    const std::string seconds = evald::rfc3339_seconds(t);
    constexpr int64_t kYear1000 = -30'610'224'000'000;  // 1000-01-01T00:00:00Z
    if (ms != expected.ms || seconds != expected.seconds ||
        (t >= kYear1000 && seconds != expected.strftime)) {
      if (++mismatches <= 5) {
        FAIL_CHECK(t << ": " << ms << " / " << seconds << " != " << expected.ms << " / "
                     << expected.seconds);
      }
    }
  }
  CHECK(mismatches == 0);
  CHECK(with_ms(951'782'400'000) == "2000-02-29T00:00:00.000Z");
  CHECK(evald::rfc3339_seconds(1'764'666'000'999) == "2025-12-02T09:00:00Z");
  CHECK(evald::rfc3339_seconds(-1) == "1969-12-31T23:59:59Z");
  CHECK(evald::rfc3339_seconds(-62'135'596'800'000) == "0001-01-01T00:00:00Z");
}
