#include "common/time_format.hpp"

namespace evald {
namespace {

constexpr int64_t kMsPerDay = 86'400'000;

// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant, "chrono-Compatible
// Low-Level Date Algorithms", civil_from_days): exact for every int64 day, no table, no tz.
// std::chrono::year_month_day is the same algorithm, but its year stops at 32,767, and the times
// formatted here include what a worker reports (any non-negative int64 passes the provenance
// check), so the text must be right for every input rather than wrap.
struct CivilDate {
  int64_t year;
  unsigned month;  // 1-12
  unsigned day;    // 1-31
};

CivilDate civil_from_days(int64_t days) {
  days += 719468;  // day 0 becomes 0000-03-01, so a leap day ends its "year"
  const int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const auto day_of_era = static_cast<unsigned>(days - era * 146097);
  const unsigned year_of_era =
      (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
  const unsigned day_of_year =
      day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
  const unsigned shifted_month = (5 * day_of_year + 2) / 153;  // 0 = March
  const unsigned day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
  const unsigned month = shifted_month < 10 ? shifted_month + 3 : shifted_month - 9;
  return {static_cast<int64_t>(year_of_era) + era * 400 + (month <= 2 ? 1 : 0), month, day};
}

void append_digits(std::string& out, unsigned value, size_t width) {
  char digits[4];
  for (size_t i = width; i-- > 0;) {
    digits[i] = static_cast<char>('0' + value % 10);
    value /= 10;
  }
  out.append(digits, width);
}

// Appends the date and time up to the seconds; returns the milliseconds left over.
unsigned append_date_time(std::string& out, int64_t epoch_ms) {
  // Floor division, so a time before 1970 falls on the day it is in.
  int64_t day_count = epoch_ms / kMsPerDay;
  int64_t rest = epoch_ms % kMsPerDay;
  if (rest < 0) {
    rest += kMsPerDay;
    --day_count;
  }
  auto ms_of_day = static_cast<unsigned>(rest);
  const CivilDate date = civil_from_days(day_count);
  if (date.year >= 0 && date.year < 10000) {
    append_digits(out, static_cast<unsigned>(date.year), 4);
  } else {
    out += std::to_string(date.year);  // as strftime's %Y prints it
  }
  out.push_back('-');
  append_digits(out, date.month, 2);
  out.push_back('-');
  append_digits(out, date.day, 2);
  out.push_back('T');
  append_digits(out, ms_of_day / 3'600'000, 2);
  ms_of_day %= 3'600'000;
  out.push_back(':');
  append_digits(out, ms_of_day / 60'000, 2);
  ms_of_day %= 60'000;
  out.push_back(':');
  append_digits(out, ms_of_day / 1000, 2);
  return ms_of_day % 1000;
}

}  // namespace

void append_rfc3339_ms(std::string& out, int64_t epoch_ms) {
  const unsigned ms = append_date_time(out, epoch_ms);
  out.push_back('.');
  append_digits(out, ms, 3);
  out.push_back('Z');
}

std::string rfc3339_seconds(int64_t epoch_ms) {
  std::string out;
  out.reserve(20);
  append_date_time(out, epoch_ms);
  out.push_back('Z');
  return out;
}

}  // namespace evald
