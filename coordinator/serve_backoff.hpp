// ServeBackoff: which models the scheduler does not place on which workers for now, because their
// model server failed to start there again and again (docs/served-models.md, "Back-off").
//
// A worker tells the coordinator that an attempt failed because the model's server failed to
// start (protocol::FailureKind::kServerStart); one failed start fails every attempt that waited
// for it, so starts are counted by the worker's id of the start, once each. After `failures`
// starts in a row have failed for one (worker, model, serve spec), that model is not placed on
// that worker until the back-off ends: `base` the first time, doubled for each further failed
// start after it (the model is tried again once the back-off ends), at most `max`. A server of the
// model that becomes ready there ends it all. Two campaigns that spell the model's server the same
// way share the bookkeeping, as they share the server on the worker; a fixed serve spec starts
// clean.
//
// State is in memory only: a restarted coordinator places every model everywhere again (a
// server that still fails is backed off after `failures` more tries).
//
// Threads: the core thread only, like the Scheduler that owns it.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/spec.hpp"

namespace evald::coordinator {

struct ServeBackoffOptions {
  uint32_t failures = 3;  // failed starts in a row before the model is backed off; 0 = never
  std::chrono::milliseconds base{std::chrono::minutes(5)};
  std::chrono::milliseconds max{std::chrono::hours(1)};
};

// A model that is not placed on a worker now, for the campaign API.
struct NotPlaced {
  std::string model;
  std::string worker;
  std::string reason;  // the server's last stderr line at its last failed start
  uint32_t failures = 0;
  int64_t until_ms = 0;  // wall clock, Unix ms
};

class ServeBackoff {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  // `backoffs` is evald_model_server_backoffs_total{model}; it must outlive this object.
  ServeBackoff(ServeBackoffOptions options, prometheus::Family<prometheus::Counter>& backoffs);

  // A failed start of `model`'s server on `worker` (instance: the worker process's, from its
  // HELLO; server_start: the worker's id of that start). Repeats of one start are ignored.
  // `now_wall_ms` is only for the `until` shown to people.
  void record_failure(const std::string& worker, const std::string& instance,
                      const ModelSpec& model, uint64_t server_start, const std::string& reason,
                      TimePoint now, int64_t now_wall_ms);
  // A server of `model` became ready on `worker`: its back-off, if any, is over.
  void record_load(const std::string& worker, const ModelSpec& model);

  // May a shard of `model` be placed on `worker` now? The dispatch check; cheap when nothing is
  // backed off.
  bool allows(const std::string& worker, const ModelSpec& model, TimePoint now) const {
    return active_ == 0 || !model.serve || !blocked(worker, model, now);
  }

  // The back-offs in force now for `model`, by worker name.
  std::vector<NotPlaced> not_placed(const ModelSpec& model, TimePoint now) const;

 private:
  struct Entry {
    ServeSpec serve;
    uint32_t failures = 0;      // failed starts in a row
    std::string instance;       // of the last counted failure
    uint64_t server_start = 0;  // of the last counted failure
    std::string reason;
    TimePoint last_failure{};
    TimePoint until{};  // backed off while now < until
    int64_t until_ms = 0;
    bool backed_off = false;  // until was set by this entry's failures (counted in active_)
  };
  // worker name, model name -> one entry per serve spec seen failing
  using Key = std::pair<std::string, std::string>;

  bool blocked(const std::string& worker, const ModelSpec& model, TimePoint now) const;
  // Drops entries that neither block nor matter for the next doubling any more.
  void prune(TimePoint now);

  ServeBackoffOptions options_;
  prometheus::Family<prometheus::Counter>& backoffs_;
  std::map<Key, std::vector<Entry>> entries_;
  size_t active_ = 0;  // entries with backed_off set (their until may have passed)
};

}  // namespace evald::coordinator
