#include "coordinator/serve_backoff.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/utf8.hpp"

namespace evald::coordinator {
namespace {

// What a worker may make us keep per back-off: one line of a server's stderr.
constexpr size_t kMaxReasonBytes = 512;

}  // namespace

ServeBackoff::ServeBackoff(ServeBackoffOptions options,
                           prometheus::Family<prometheus::Counter>& backoffs)
    : options_(options), backoffs_(backoffs) {}

void ServeBackoff::record_failure(const std::string& worker, const std::string& instance,
                                  const ModelSpec& model, uint64_t server_start,
                                  const std::string& reason, TimePoint now, int64_t now_wall_ms) {
  if (!model.serve) return;
  prune(now);
  auto& list = entries_[Key{worker, model.name}];
  auto it = std::find_if(list.begin(), list.end(),
                         [&](const Entry& e) { return e.serve == *model.serve; });
  if (it == list.end()) {
    list.emplace_back().serve = *model.serve;
    it = std::prev(list.end());
  }
  Entry& e = *it;
  // The other attempts that waited for the same start: already counted.
  if (e.failures > 0 && e.server_start == server_start && e.instance == instance) return;
  ++e.failures;
  e.instance = instance;
  e.server_start = server_start;
  e.reason = utf8::sanitize_bounded(reason, kMaxReasonBytes);
  e.last_failure = now;
  if (options_.failures == 0 || e.failures < options_.failures) {
    spdlog::info("model_server_start_failed worker={} model={} failures={} reason=\"{}\"", worker,
                 model.name, e.failures, e.reason);
    return;
  }
  // base, doubled for every failed start after the one that started the back-off, capped.
  auto delay = options_.base;
  for (uint32_t extra = e.failures - options_.failures; extra > 0 && delay < options_.max;
       --extra) {
    delay *= 2;
  }
  delay = std::min(delay, options_.max);
  e.until = now + delay;
  e.until_ms = now_wall_ms + delay.count();
  if (!e.backed_off) {
    e.backed_off = true;
    ++active_;
  }
  backoffs_.Add({{"model", model.name}}).Increment();
  spdlog::warn("model_server_backoff worker={} model={} failures={} backoff_s={} reason=\"{}\"",
               worker, model.name, e.failures,
               std::chrono::duration_cast<std::chrono::seconds>(delay).count(), e.reason);
}

void ServeBackoff::record_load(const std::string& worker, const ModelSpec& model) {
  if (!model.serve) return;
  const auto it = entries_.find(Key{worker, model.name});
  if (it == entries_.end()) return;
  auto& list = it->second;
  const auto e = std::find_if(list.begin(), list.end(),
                              [&](const Entry& entry) { return entry.serve == *model.serve; });
  if (e == list.end()) return;
  if (e->backed_off) --active_;
  spdlog::info("model_server_backoff_reset worker={} model={} failures={}", worker, model.name,
               e->failures);
  list.erase(e);
  if (list.empty()) entries_.erase(it);
}

bool ServeBackoff::blocked(const std::string& worker, const ModelSpec& model, TimePoint now) const {
  const auto it = entries_.find(Key{worker, model.name});
  if (it == entries_.end()) return false;
  for (const Entry& e : it->second) {
    if (e.serve == *model.serve) return e.backed_off && now < e.until;
  }
  return false;
}

std::vector<NotPlaced> ServeBackoff::not_placed(const ModelSpec& model, TimePoint now) const {
  std::vector<NotPlaced> out;
  if (active_ == 0 || !model.serve) return out;
  for (const auto& [key, list] : entries_) {
    if (key.second != model.name) continue;
    for (const Entry& e : list) {
      if (e.serve != *model.serve || !e.backed_off || now >= e.until) continue;
      out.push_back(NotPlaced{model.name, key.first, e.reason, e.failures, e.until_ms});
    }
  }
  return out;
}

void ServeBackoff::prune(TimePoint now) {
  // Nothing for longer than the longest back-off (no failed start, no back-off in force since):
  // the next failure starts counting again. Counted from the end of the last back-off, so a model
  // that fails again right after a capped back-off stays at the cap. This also bounds the table.
  for (auto it = entries_.begin(); it != entries_.end();) {
    auto& list = it->second;
    std::erase_if(list, [&](const Entry& e) {
      const bool stale = now >= e.until && now - std::max(e.last_failure, e.until) > options_.max;
      if (stale && e.backed_off) --active_;
      return stale;
    });
    it = list.empty() ? entries_.erase(it) : std::next(it);
  }
}

}  // namespace evald::coordinator
