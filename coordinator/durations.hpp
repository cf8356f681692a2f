// Durations: how long a shard of a model x benchmark is expected to run, learned online from the
// attempts that finished (and, while none has, from how long running ones have already run). The
// scheduler weighs work by these estimates (docs/scheduling.md, "Expected GPU time"): a model
// whose shards run 12 times longer weighs 12 times more than its shard count says.
//
// Pure code over plain inputs, so it is tested on its own; the scheduler owns one DurationSamples
// per model x benchmark and calls expected_shard_seconds() once per gauge interval.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace evald::coordinator {

// What the scheduler assumes of a full shard it knows nothing about (no result anywhere in the
// campaign yet): one minute. With every group at the same guess, work is weighed by shard count
// x GPUs, which is what the scheduler did before it learned durations.
inline constexpr double kDefaultShardSeconds = 60.0;
// No estimate is below this, so work that takes no measurable time is still weighed by its count.
inline constexpr double kMinShardSeconds = 0.001;

// The per-example seconds of one model x benchmark's finished attempts: the most recent kKept of
// each kind, whose median is the estimate, so one slow node or one retried shard moves nothing
// and the estimate follows a model that gets faster or slower. "Cold" attempts started before the
// worker had finished any shard of the model, so they include (some of) its load; they are used
// only while no warm attempt has finished.
class DurationSamples {
 public:
  static constexpr size_t kKept = 31;

  void add(double seconds_per_example, bool cold);
  // The median of the warm samples, else of the cold ones; nothing before any attempt finished.
  std::optional<double> median() const;
  size_t warm_count() const { return warm_.size(); }
  size_t cold_count() const { return cold_.size(); }

 private:
  struct Ring {
    std::vector<float> values;
    size_t next = 0;
    void add(float v);
    size_t size() const { return values.size(); }
  };
  Ring warm_;
  Ring cold_;
};

// What is known of one model x benchmark (group index = model * benchmarks + benchmark).
struct GroupTimes {
  std::optional<double> finished_per_example;  // DurationSamples::median()
  // The longest-running current attempt's elapsed seconds per example: a shard running for 10
  // minutes takes at least 10. 0 when none runs.
  double running_per_example = 0;
  uint32_t shard_size = 1;  // examples of a full shard
};

// The expected seconds of a full shard of every group. A group with finished attempts uses their
// median. Otherwise it borrows from the rest of the campaign, which shares benchmarks and models:
// per-example time ~ model factor x benchmark time, where a benchmark's time is the median over
// the models that finished some of it and a model's factor is its median ratio to those; failing
// that, the model's own median full-shard time on other benchmarks, then the campaign's, then
// kDefaultShardSeconds. A group with no finished attempt never expects less than its running ones
// have already taken, and that also raises the model's factor for its other benchmarks.
//
// `from_finished` (if given) receives, per group, the estimate from finished attempts alone: the
// group's own median, or what it borrows from the same benchmark's other models or the same
// model's other benchmarks, without the floor its running attempts put under it; nullopt when
// neither has finished anything. A shard running far past it is a straggler (backup copies,
// docs/scheduling.md rule 10); against the floored estimate no running shard could ever be one.
std::vector<double> expected_shard_seconds(
    uint32_t models, uint32_t benchmarks, const std::vector<GroupTimes>& groups,
    std::vector<std::optional<double>>* from_finished = nullptr);

}  // namespace evald::coordinator
