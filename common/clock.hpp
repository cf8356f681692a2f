// Clock: the seam for time, so lease expiry, heartbeats and backoff can be tested without sleeping.
// The coordinator's scheduler and the worker take a Clock&; production passes SystemClock.
#pragma once

#include <chrono>
#include <cstdint>

namespace evald {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic time for deadlines and durations.
  virtual std::chrono::steady_clock::time_point now() const = 0;
  // Wall-clock milliseconds since the Unix epoch, for timestamps shown to people.
  virtual int64_t wall_ms() const = 0;
};

class SystemClock final : public Clock {
 public:
  std::chrono::steady_clock::time_point now() const override {
    return std::chrono::steady_clock::now();
  }
  int64_t wall_ms() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

// A clock that only moves when a test says so.
class ManualClock final : public Clock {
 public:
  std::chrono::steady_clock::time_point now() const override { return now_; }
  int64_t wall_ms() const override {
    return wall_base_ms_ +
           std::chrono::duration_cast<std::chrono::milliseconds>(now_.time_since_epoch()).count();
  }
  void advance(std::chrono::milliseconds by) { now_ += by; }

 private:
  std::chrono::steady_clock::time_point now_{};
  int64_t wall_base_ms_ = 1'700'000'000'000;
};

}  // namespace evald
