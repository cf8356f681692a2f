// The simulation: the real Scheduler, a ManualClock and simulated workers, in one thread.
//
// Event loop. Every simulated worker says HELLO with its GPUs (index, memory) and as many slots as
// GPUs. Each turn is the coordinator core's turn, Scheduler::run_turn: tick, dispatch, stage the
// aggregate cells, commit the batch to a scratch RocksDB, drain the outgoing messages. Every ASSIGN
// becomes a completion event at the time the shard will finish. Then the clock jumps to the
// earliest completion, every shard finishing at that millisecond is reported in one RESULTS per
// worker, every worker sends a HEARTBEAT (so a jump of hours does not make the scheduler declare it
// lost; its timeouts stay the production defaults), and the next turn runs. The campaign is done
// when the scheduler says it has succeeded. When nothing runs and shards are still pending, the
// clock moves in 1 s steps so the scheduler's own timers can act; after 2 minutes of that the
// campaign is stuck (a model no worker can run, for instance) and the run fails.
//
// Cost model. Each worker keeps the weights of ONE model warm: the model of the last shard it
// started. A shard whose model is not the worker's warm model pays that model's load time first
// and counts as one load; shards of the warm model that start while it is still loading wait
// for the load to finish. Busy GPU time runs from the ASSIGN to the result, so it includes the
// load and the wait. Why per worker rather than per GPU: an evald-worker runs on a node (or a GPU
// group) and in practice serves one model at a time (one inference server spanning its GPUs,
// weights fetched once from shared storage into the node's memory); swapping the model means
// restarting that server. It is also exactly what the scheduler's affinity believes
// (WorkerInfo::last_model), so the simulation charges the scheduler for precisely the switches it
// decided to make. It is pessimistic for a worker that runs two models side by side on disjoint
// GPUs (each alternation is charged as a load), which is why the scheduler should avoid that.
//
// The simulation also checks what the scheduler promises: a worker never gets more shards than
// its slots, a shard gets as many GPUs as its model needs, and never a GPU that is busy. A broken
// promise ends the run as a failure.
#include "tools/makespan-sim/simulator.hpp"

#include <fmt/format.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <system_error>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/clock.hpp"
#include "common/protocol.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/placement.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/store.hpp"

namespace evald::sim {
namespace {

using coordinator::Campaign;
using coordinator::CampaignState;
using coordinator::Scheduler;
using coordinator::ShardState;
using coordinator::Store;

// The scratch store: a fresh directory, removed with everything in it when the run ends.
class ScratchDir {
 public:
  static constexpr const char* kShm = "/dev/shm";

  static Result<std::unique_ptr<ScratchDir>> create(const std::filesystem::path& parent) {
    std::error_code ec;
    std::filesystem::path base = parent;
    if (base.empty()) {
      // A tmpfs makes the per-turn fsync free: on a disk it is most of the run time.
      base = std::filesystem::is_directory(kShm, ec) && ::access(kShm, W_OK) == 0
                 ? std::filesystem::path(kShm)
                 : std::filesystem::temp_directory_path(ec);
      if (ec) return make_error("no temp directory: " + ec.message());
    }
    std::string pattern = (base / "evald-makespan-sim-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return make_error("cannot create a scratch directory under '" + base.string() +
                        "': " + std::generic_category().message(errno));
    }
    return std::unique_ptr<ScratchDir>(new ScratchDir(pattern));
  }
  ~ScratchDir() {
    std::error_code ignored;  // best effort; a leftover temp dir is not worth failing over
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  explicit ScratchDir(std::filesystem::path path) : path_(std::move(path)) {}
  std::filesystem::path path_;
};

// Longer than the scheduler's longest retry backoff (60 s), so only a campaign that can never
// progress is called stuck.
constexpr int64_t kStuckAfterMs = 120'000;
constexpr int64_t kIdleStepMs = 1'000;

struct SimWorker {
  std::string name;
  uint32_t slots = 0;
  std::vector<bool> gpu_busy;
  uint32_t running = 0;
  std::optional<uint32_t> warm_model;
  int64_t ready_at_ms = 0;  // when the warm model's load is done
  const WorkerGroup* group = nullptr;
};

struct Completion {
  int64_t finish_ms = 0;
  uint64_t seq = 0;  // ties resolved in start order, so runs are reproducible
  uint32_t worker = 0;
  protocol::Assignment assignment;
  int64_t started_ms = 0;

  bool operator>(const Completion& other) const {
    return finish_ms != other.finish_ms ? finish_ms > other.finish_ms : seq > other.seq;
  }
};

class Simulation {
 public:
  Simulation(const Scenario& scenario, const SimOptions& options, Store& store, SimReport& report)
      : scenario_(scenario),
        options_(options),
        report_(report),
        scheduler_(store, clock_, metrics_, coordinator::SchedulerOptions{}) {}

  Status run() {
    if (auto s = scheduler_.recover(); !s.ok()) return s;
    connect_workers();
    auto id = scheduler_.submit(scenario_.campaign);
    if (!id) return make_error("the scheduler refused the campaign: " + id.error().message);
    const Campaign* campaign = scheduler_.find_campaign(id.value());
    campaign_ = campaign;
    report_.shards = campaign->total;
    int64_t idle_since_ms = -1;
    while (true) {
      if (auto s = turn(); !s.ok()) return s;
      if (!report_.failure.empty()) return Ok{};
      if (campaign->state != CampaignState::kRunning) break;
      drop_cancelled();
      if (!events_.empty()) {
        idle_since_ms = -1;
        advance_to(events_.top().finish_ms);
        continue;
      }
      // Nothing runs, yet shards are pending. The scheduler's timers (retry backoff, the
      // unschedulable report) run on its clock, so give them time before calling it stuck.
      if (idle_since_ms < 0) idle_since_ms = now_ms_;
      if (now_ms_ - idle_since_ms >= kStuckAfterMs) {
        report_.failure = stuck_reason(*campaign);
        return Ok{};
      }
      advance_to(now_ms_ + kIdleStepMs);
    }
    report_.makespan_ms = now_ms_;
    report_.completed = campaign->state == CampaignState::kSucceeded;
    if (!report_.completed) {
      report_.failure = fmt::format("campaign ended {} with {} of {} shards succeeded",
                                    to_string(campaign->state),
                                    campaign->count(ShardState::kSucceeded), campaign->total);
    }
    return Ok{};
  }

 private:
  void connect_workers() {
    for (const WorkerGroup& group : scenario_.cluster) {
      for (uint32_t i = 1; i <= group.workers; ++i) {
        SimWorker w;
        w.name = fmt::format("{}-{}", group.name, i);
        w.slots = group.gpus_per_worker;
        w.gpu_busy.assign(group.gpus_per_worker, false);
        w.group = &group;
        protocol::Hello hello;
        hello.name = w.name;
        hello.instance = "sim";
        hello.slots = w.slots;
        // A node of "80 GB" GPUs reports at least what an 80 GB request needs (vendor GB).
        const int64_t memory_mib = coordinator::required_gpu_memory_mib(group.gpu_memory_gb);
        for (uint32_t g = 0; g < group.gpus_per_worker; ++g) {
          hello.gpus.push_back({{"index", g}, {"name", "simulated"}, {"memory_mib", memory_mib}});
        }
        hello.labels = group.labels;
        scheduler_.on_message(w.name, std::move(hello));
        index_by_name_[w.name] = static_cast<uint32_t>(workers_.size());
        WorkerReport wr;
        wr.name = w.name;
        wr.gpus = static_cast<int>(group.gpus_per_worker);
        report_.worker_reports.push_back(std::move(wr));
        workers_.push_back(std::move(w));
      }
    }
  }

  // One event-loop turn, as the coordinator's core runs it.
  Status turn() {
    ++report_.turns;
    auto committed =
        scheduler_.run_turn([&](const std::string& who, const protocol::Message& message) {
          if (const auto* assign = std::get_if<protocol::Assign>(&message)) {
            for (const auto& a : assign->assignments) start(who, a);
          } else if (const auto* cancel = std::get_if<protocol::Cancel>(&message)) {
            for (uint64_t id : cancel->attempt_ids) stop(who, id);
          }
          // WELCOME, CAMPAIGN, ACK and HEARTBEAT change nothing a simulated worker models.
        });
    if (!committed.ok()) {
      return make_error("commit to the scratch store failed: " + committed.error().message);
    }
    return Ok{};
  }

  void violation(const std::string& what) {
    if (report_.failure.empty()) report_.failure = "scheduler invariant broken: " + what;
  }

  void start(const std::string& who, const protocol::Assignment& a) {
    auto it = index_by_name_.find(who);
    if (it == index_by_name_.end()) return violation("an ASSIGN for unknown worker " + who);
    SimWorker& w = workers_[it->second];
    WorkerReport& wr = report_.worker_reports[it->second];
    if (a.model >= scenario_.gpus.size() || a.benchmark >= scenario_.campaign.benchmarks.size()) {
      return violation(fmt::format("{} got a shard of model {} benchmark {}, which do not exist",
                                   who, a.model, a.benchmark));
    }
    if (w.running >= w.slots) {
      return violation(fmt::format("{} got more shards than its {} slots", who, w.slots));
    }
    const int need = scenario_.gpus[a.model];
    if (static_cast<int>(a.gpus.size()) != need) {
      return violation(fmt::format("{} got {} GPUs for a shard of {}, which needs {}", who,
                                   a.gpus.size(), scenario_.campaign.models[a.model].name, need));
    }
    for (uint32_t g : a.gpus) {
      if (g >= w.gpu_busy.size() || w.gpu_busy[g]) {
        return violation(
            fmt::format("{} was given GPU {}, which is busy or does not exist", who, g));
      }
      w.gpu_busy[g] = true;
    }
    ++w.running;
    if (w.warm_model != a.model) {
      w.warm_model = a.model;
      // One load at a time per worker: a switch made while the previous model still loads
      // starts after it (the node fetches one model's weights into one server).
      w.ready_at_ms = std::max(now_ms_, w.ready_at_ms) + scenario_.load_ms[a.model];
      ++wr.loads;
      ++report_.models[a.model].loads;
      ++report_.loads;
      if (options_.timeline) wr.timeline.push_back(ModelLoad{now_ms_, a.model});
    }
    const int64_t compute_ms =
        w.group->compute_ms(scenario_.shard_ms(a.model, a.benchmark, a.shard));
    const int64_t finish_ms = std::max(now_ms_, w.ready_at_ms) + compute_ms;
    const int64_t held_gpu_ms = (finish_ms - now_ms_) * need;
    wr.busy_gpu_ms += held_gpu_ms;
    report_.busy_gpu_ms += held_gpu_ms;
    report_.load_gpu_ms += (std::max(now_ms_, w.ready_at_ms) - now_ms_) * need;
    busy_gpus_ += need;
    ++report_.models[a.model].shards;
    // A second copy of a running shard: a backup copy of a straggler.
    if (copies_[shard_id(a)]++ > 0) ++report_.backup_copies;
    running_[a.attempt_id] = Running{it->second, finish_ms, a};
    events_.push(Completion{finish_ms, next_seq_++, it->second, a, now_ms_});
  }

  static std::tuple<uint32_t, uint32_t, uint32_t> shard_id(const protocol::Assignment& a) {
    return {a.model, a.benchmark, a.shard};
  }

  // A copy of a shard stopped running (finished or cancelled).
  void ended(const protocol::Assignment& a) {
    running_.erase(a.attempt_id);
    auto it = copies_.find(shard_id(a));
    if (it != copies_.end() && --it->second == 0) copies_.erase(it);
  }

  // A CANCEL: the scheduler stops a copy of a shard whose other copy finished first (a backup
  // copy, docs/scheduling.md). Its GPUs are free at once and the time it would have run is not
  // busy time; its completion event is skipped. A CANCEL for an attempt that already finished
  // (both copies ended in the same millisecond) changes nothing, as on a real worker.
  void stop(const std::string& who, uint64_t attempt_id) {
    auto it = running_.find(attempt_id);
    if (it == running_.end()) return;
    const Running r = it->second;
    if (workers_[r.worker].name != who) {
      return violation(
          fmt::format("{} was told to cancel attempt {}, which it does not run", who, attempt_id));
    }
    ended(r.assignment);
    cancelled_.insert(attempt_id);
    SimWorker& w = workers_[r.worker];
    for (uint32_t g : r.assignment.gpus) w.gpu_busy[g] = false;
    --w.running;
    const auto gpus = static_cast<int64_t>(r.assignment.gpus.size());
    busy_gpus_ -= gpus;
    const int64_t unused_gpu_ms = (r.finish_ms - now_ms_) * gpus;
    report_.worker_reports[r.worker].busy_gpu_ms -= unused_gpu_ms;
    report_.busy_gpu_ms -= unused_gpu_ms;
    ++report_.copies_cancelled;
  }

  // Cancelled completions at the head of the queue are dropped, so the clock never jumps to the
  // end of a copy that no longer runs.
  void drop_cancelled() {
    while (!events_.empty() && cancelled_.contains(events_.top().assignment.attempt_id)) {
      cancelled_.erase(events_.top().assignment.attempt_id);
      events_.pop();
    }
  }

  void advance_to(int64_t t_ms) {
    // Idle GPU time up to t_ms, split by whether the scheduler left GPUs idle although shards were
    // waiting (a choice, or GPUs too few for the next shard) or had nothing left to give.
    const int64_t idle_gpu_ms = (report_.total_gpus - busy_gpus_) * (t_ms - now_ms_);
    if (campaign_->count(ShardState::kPending) > 0) {
      report_.idle_pending_gpu_ms += idle_gpu_ms;
    } else {
      report_.idle_drain_gpu_ms += idle_gpu_ms;
    }
    clock_.advance(std::chrono::milliseconds(t_ms - now_ms_));
    now_ms_ = t_ms;
    std::vector<protocol::Results> results(workers_.size());
    std::vector<uint32_t> order;  // workers with results, in the order they finished
    while (!events_.empty() && events_.top().finish_ms == t_ms) {
      const Completion& done = events_.top();
      if (cancelled_.erase(done.assignment.attempt_id) > 0) {
        events_.pop();
        continue;
      }
      ended(done.assignment);
      SimWorker& w = workers_[done.worker];
      for (uint32_t g : done.assignment.gpus) w.gpu_busy[g] = false;
      busy_gpus_ -= static_cast<int64_t>(done.assignment.gpus.size());
      --w.running;
      const auto& a = done.assignment;
      protocol::ShardResult r = protocol::result_for(a);
      r.ok = true;
      r.count = a.end - a.start;
      // The benchmark's primary metric: the coordinator refuses a success without it.
      r.metrics = {{campaign_->spec.benchmarks[a.benchmark].metric, 1.0}};
      r.duration_ms = static_cast<uint32_t>(std::min<int64_t>(t_ms - done.started_ms, UINT32_MAX));
      if (results[done.worker].results.empty()) order.push_back(done.worker);
      results[done.worker].results.push_back(std::move(r));
      events_.pop();
    }
    for (uint32_t i : order) scheduler_.on_message(workers_[i].name, std::move(results[i]));
    for (const SimWorker& w : workers_) scheduler_.on_message(w.name, protocol::Heartbeat{});
  }

  std::string stuck_reason(const Campaign& c) const {
    std::string why = fmt::format("stuck at {:.1f} s: {} shards pending, none running for {} s",
                                  static_cast<double>(now_ms_) / 1000.0,
                                  c.count(ShardState::kPending), kStuckAfterMs / 1000);
    for (const auto& [model, reason] : c.unschedulable) why += "; " + reason;
    return why;
  }

  const Scenario& scenario_;
  const SimOptions& options_;
  SimReport& report_;
  ManualClock clock_;
  coordinator::Metrics metrics_;
  Scheduler scheduler_;
  std::vector<SimWorker> workers_;
  std::unordered_map<std::string, uint32_t> index_by_name_;
  std::priority_queue<Completion, std::vector<Completion>, std::greater<>> events_;
  struct Running {
    uint32_t worker = 0;
    int64_t finish_ms = 0;
    protocol::Assignment assignment;
  };
  std::unordered_map<uint64_t, Running> running_;  // attempt id -> its copy
  std::unordered_set<uint64_t> cancelled_;         // attempts whose completion is skipped
  std::map<std::tuple<uint32_t, uint32_t, uint32_t>, int> copies_;  // running copies per shard
  const Campaign* campaign_ = nullptr;
  uint64_t next_seq_ = 0;
  int64_t now_ms_ = 0;
  int64_t busy_gpus_ = 0;
};

std::string hours(int64_t ms) {
  return fmt::format("{:.1f} s ({:.2f} h)", static_cast<double>(ms) / 1000.0,
                     static_cast<double>(ms) / 3.6e6);
}

}  // namespace

namespace {

// Which worker groups could ever run a shard of model m: the real placement rules
// (coordinator/placement.hpp) against a worker of the group as its HELLO describes it.
uint64_t eligible_groups(const Scenario& scenario, uint32_t m) {
  uint64_t mask = 0;
  for (size_t g = 0; g < scenario.cluster.size() && g < 64; ++g) {
    const WorkerGroup& group = scenario.cluster[g];
    std::vector<coordinator::GpuSlot> gpus(group.gpus_per_worker);
    for (uint32_t i = 0; i < group.gpus_per_worker; ++i) {
      gpus[i].index = i;
      gpus[i].memory_mib = coordinator::required_gpu_memory_mib(group.gpu_memory_gb);
    }
    if (coordinator::place_shard(scenario.campaign.models[m].resources, group.labels, gpus, true)) {
      mask |= uint64_t{1} << g;
    }
  }
  return mask;
}

// The sets of worker groups the placement component looks at: every set when there are few
// groups, else the sets some model is confined to and their unions with the whole cluster.
std::vector<uint64_t> group_sets(size_t groups, const std::vector<uint64_t>& eligible) {
  std::vector<uint64_t> sets;
  if (groups <= 12) {
    for (uint64_t s = 1; s < (uint64_t{1} << groups); ++s) sets.push_back(s);
  } else {
    for (uint64_t e : eligible) {
      if (e != 0) sets.push_back(e);
    }
    std::sort(sets.begin(), sets.end());
    sets.erase(std::unique(sets.begin(), sets.end()), sets.end());
  }
  return sets;
}

// What the bound needs of each worker group: how fast it computes, as GPUs of reference speed.
struct GroupCapacity {
  int64_t gpus = 0;        // all its workers' GPUs
  double slowdown = 1.0;   // a shard computes this many times its reference time there
  int64_t longest_ms = 0;  // the longest shard any model computes there, at its speed
  double rate() const { return static_cast<double>(gpus) / slowdown; }
};

int64_t ceil_ms(double ms) {
  return static_cast<int64_t>(std::ceil(ms - 1e-9));
}

}  // namespace

std::string LowerBound::binding() const {
  const int64_t v = value_ms();
  if (v == work_ms) return "work";
  if (v == placement_ms) return "placement";
  if (v == chain_ms) return "chain";
  return "longest";
}

// Every component is in reference GPU-ms (a shard's time as the scenario gives it) over the
// reference GPUs that do it per ms: a group whose shards compute 3 times longer counts for a third
// of its GPUs. Time a group loses (loading) is divided by its slowdown the same way, so a group
// loses no less than it could have computed in that time.
LowerBound lower_bound(const Scenario& scenario) {
  LowerBound bound;
  const auto& c = scenario.campaign;
  const size_t groups = std::min<size_t>(scenario.cluster.size(), 64);
  std::vector<uint64_t> eligible(c.models.size());
  for (uint32_t m = 0; m < c.models.size(); ++m) eligible[m] = eligible_groups(scenario, m);
  auto runs_on = [&](uint32_t m, size_t g) { return (eligible[m] & (uint64_t{1} << g)) != 0; };

  std::vector<int64_t> model_gpu_ms(c.models.size(), 0);  // its shards x its GPUs
  std::vector<int64_t> model_ms(c.models.size(), 0);      // its shards
  std::vector<int64_t> model_longest(c.models.size(), 0);
  for (uint32_t m = 0; m < c.models.size(); ++m) {
    for (uint32_t b = 0; b < c.benchmarks.size(); ++b) {
      const auto shards = static_cast<uint32_t>(c.benchmarks[b].shard_count());
      for (uint32_t i = 0; i < shards; ++i) {
        const int64_t ms = scenario.shard_ms(m, b, i);
        model_gpu_ms[m] += ms * scenario.gpus[m];
        model_ms[m] += ms;
        model_longest[m] = std::max(model_longest[m], ms);
      }
    }
  }
  std::vector<GroupCapacity> capacity(groups);
  for (size_t g = 0; g < groups; ++g) {
    const WorkerGroup& group = scenario.cluster[g];
    capacity[g].gpus = int64_t{group.workers} * group.gpus_per_worker;
    capacity[g].slowdown = group.slowdown;
    for (uint32_t m = 0; m < c.models.size(); ++m) {
      if (runs_on(m, g)) {
        capacity[g].longest_ms =
            std::max(capacity[g].longest_ms, group.compute_ms(model_longest[m]));
      }
    }
  }

  // The work one load of each model costs at least, in reference GPU-ms. A worker holds one model
  // at a time and loads one at a time (the cost model above), so while a model loads on a worker
  // of G GPUs none of them computes, except for shards started before the load: those hold at
  // most G - (the model's GPUs) of them (its first shard got free GPUs), each for at most the
  // longest shard the worker runs. So a load loses G x load - (G - its GPUs) x min(load, longest
  // shard) of the worker's GPU time; each model is loaded at least once, on the eligible group
  // where that costs least.
  std::vector<double> model_work(c.models.size(), 0);
  double work = 0;
  for (uint32_t m = 0; m < c.models.size(); ++m) {
    const int64_t load = scenario.load_ms[m];
    const int64_t need = scenario.gpus[m];
    std::optional<double> least;
    for (size_t g = 0; g < groups; ++g) {
      if (!runs_on(m, g)) continue;
      const int64_t node = scenario.cluster[g].gpus_per_worker;
      const int64_t lost = node * load - (node - need) * std::min(load, capacity[g].longest_ms);
      least = std::min(least.value_or(static_cast<double>(lost) / capacity[g].slowdown),
                       static_cast<double>(lost) / capacity[g].slowdown);
    }
    // A model no group can run never completes; count its own GPUs so the bound stays defined.
    model_work[m] =
        static_cast<double>(model_gpu_ms[m]) + least.value_or(static_cast<double>(load * need));
    work += model_work[m];
  }
  double rate = 0;
  for (const auto& g : capacity) rate += g.rate();
  if (rate > 0) bound.work_ms = ceil_ms(work / rate);

  // Placement: models confined to a set of groups must do their work on those groups' GPUs.
  for (uint64_t set : group_sets(scenario.cluster.size(), eligible)) {
    double set_rate = 0;
    std::string names;
    for (size_t g = 0; g < groups; ++g) {
      if ((set & (uint64_t{1} << g)) == 0) continue;
      set_rate += capacity[g].rate();
      names += (names.empty() ? "" : "+") + scenario.cluster[g].name;
    }
    double confined = 0;
    for (uint32_t m = 0; m < c.models.size(); ++m) {
      if (eligible[m] != 0 && (eligible[m] & ~set) == 0) confined += model_work[m];
    }
    if (set_rate == 0 || confined == 0) continue;
    const int64_t ms = ceil_ms(confined / set_rate);
    if (ms > bound.placement_ms) {
      bound.placement_ms = ms;
      bound.placement_groups = names;
    }
  }

  // Chain: a model's shards run at most `lanes` at once (each worker fits GPUs / its GPUs of
  // them, a slow worker's lane counting for its speed), and none of them before the model is
  // loaded. Longest: its longest shard on the fastest group that can run it, after its load.
  for (uint32_t m = 0; m < c.models.size(); ++m) {
    double lanes = 0;
    std::optional<int64_t> longest;
    for (size_t g = 0; g < groups; ++g) {
      if (!runs_on(m, g)) continue;
      const WorkerGroup& group = scenario.cluster[g];
      lanes += static_cast<double>(int64_t{group.workers} *
                                   (group.gpus_per_worker / std::max(1, scenario.gpus[m]))) /
               group.slowdown;
      longest = std::min(longest.value_or(group.compute_ms(model_longest[m])),
                         group.compute_ms(model_longest[m]));
    }
    if (lanes == 0 || !longest) continue;
    bound.longest_ms = std::max(bound.longest_ms, *longest + scenario.load_ms[m]);
    const int64_t ms =
        scenario.load_ms[m] + std::max(*longest, ceil_ms(static_cast<double>(model_ms[m]) / lanes));
    if (ms > bound.chain_ms) {
      bound.chain_ms = ms;
      bound.chain_model = c.models[m].name;
    }
  }
  return bound;
}

double SimReport::ratio() const {
  const int64_t lb = bound.value_ms();
  return lb == 0 ? 0 : static_cast<double>(makespan_ms) / static_cast<double>(lb);
}

double SimReport::gpu_utilisation() const {
  const double capacity = static_cast<double>(total_gpus) * static_cast<double>(makespan_ms);
  return capacity == 0 ? 0 : static_cast<double>(busy_gpu_ms) / capacity;
}

Result<SimReport> simulate(const Scenario& scenario, const SimOptions& options) {
  const auto started = std::chrono::steady_clock::now();
  SimReport report;
  report.scenario = scenario.name;
  report.total_gpus = scenario.total_gpus();
  report.workers = scenario.total_workers();
  report.benchmarks = scenario.campaign.benchmarks.size();
  report.bound = lower_bound(scenario);
  report.min_loads = static_cast<int64_t>(scenario.campaign.models.size());
  for (size_t m = 0; m < scenario.campaign.models.size(); ++m) {
    ModelReport mr;
    mr.name = scenario.campaign.models[m].name;
    mr.gpus = scenario.gpus[m];
    for (uint32_t b = 0; b < scenario.campaign.benchmarks.size(); ++b) {
      const auto shards = static_cast<uint32_t>(scenario.campaign.benchmarks[b].shard_count());
      for (uint32_t i = 0; i < shards; ++i) {
        mr.shard_gpu_ms += scenario.shard_ms(static_cast<uint32_t>(m), b, i) * mr.gpus;
      }
    }
    report.models.push_back(std::move(mr));
  }

  auto scratch = ScratchDir::create(options.scratch_parent);
  if (!scratch) return scratch.error();
  auto store = Store::open(scratch.value()->path() / "db");
  if (!store) return store.error();
  {
    Simulation simulation(scenario, options, *store.value(), report);
    if (auto s = simulation.run(); !s.ok()) return s.error();
  }
  report.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return report;
}

std::vector<std::string> check_targets(const SimReport& report, const Targets& targets) {
  std::vector<std::string> misses;
  if (!report.completed) {
    misses.push_back("the campaign did not complete: " + report.failure);
    return misses;
  }
  if (report.ratio() > targets.max_ratio) {
    const double allowed = targets.max_ratio * static_cast<double>(report.bound.value_ms());
    misses.push_back(
        fmt::format("makespan {:.1f} s is {:.3f} x the lower bound {:.1f} s; target <= {:.2f} x "
                    "({:.1f} s too long)",
                    static_cast<double>(report.makespan_ms) / 1000.0, report.ratio(),
                    static_cast<double>(report.bound.value_ms()) / 1000.0, targets.max_ratio,
                    (static_cast<double>(report.makespan_ms) - allowed) / 1000.0));
  }
  const double allowed_loads = targets.max_load_factor * static_cast<double>(report.min_loads);
  if (static_cast<double>(report.loads) > allowed_loads) {
    misses.push_back(fmt::format("{} model loads; target <= {:g} ({:g} x the minimum {})",
                                 report.loads, allowed_loads, targets.max_load_factor,
                                 report.min_loads));
  }
  return misses;
}

std::string format_report(const SimReport& r, const Targets& targets) {
  std::string out;
  auto line = [&out](const std::string& text) { out += text + '\n'; };
  line(
      fmt::format("scenario:        {} ({} workers, {} GPUs; {} models x {} benchmarks = {} "
                  "shards)",
                  r.scenario, r.workers, r.total_gpus, r.models.size(), r.benchmarks, r.shards));
  if (!r.completed) line("NOT COMPLETED:   " + r.failure);
  line("makespan:        " + hours(r.makespan_ms));
  const auto& b = r.bound;
  line(fmt::format("lower bound:     {}  (binding: {})", hours(b.value_ms()), b.binding()));
  line(fmt::format(
      "  work / GPUs {:.1f} s; placement {:.1f} s{}; chain {:.1f} s{}; longest shard + "
      "load {:.1f} s",
      static_cast<double>(b.work_ms) / 1000.0, static_cast<double>(b.placement_ms) / 1000.0,
      b.placement_groups.empty() ? "" : " (" + b.placement_groups + ")",
      static_cast<double>(b.chain_ms) / 1000.0,
      b.chain_model.empty() ? "" : " (" + b.chain_model + ")",
      static_cast<double>(b.longest_ms) / 1000.0));
  line(fmt::format("ratio:           {:.3f}  (target <= {:.2f})", r.ratio(), targets.max_ratio));
  line(fmt::format("GPU utilisation: {:.1f} %  (busy GPU time incl. loads / GPUs x makespan)",
                   100.0 * r.gpu_utilisation()));
  const double capacity = static_cast<double>(r.total_gpus) * static_cast<double>(r.makespan_ms);
  auto share = [capacity](int64_t gpu_ms) {
    return capacity == 0 ? 0.0 : 100.0 * static_cast<double>(gpu_ms) / capacity;
  };
  line(
      fmt::format("  GPU time:      {:.1f} % loading, {:.1f} % idle while shards were pending, "
                  "{:.1f} % idle with nothing left to start",
                  share(r.load_gpu_ms), share(r.idle_pending_gpu_ms), share(r.idle_drain_gpu_ms)));
  line(fmt::format(
      "model loads:     {}  (minimum {}, {:.2f} x; target <= {:g} x)", r.loads, r.min_loads,
      r.min_loads == 0 ? 0.0 : static_cast<double>(r.loads) / static_cast<double>(r.min_loads),
      targets.max_load_factor));
  if (r.backup_copies > 0) {
    line(fmt::format("backup copies:   {} started, {} copies cancelled (the other finished first)",
                     r.backup_copies, r.copies_cancelled));
  }
  line(fmt::format("  {:<24} {:>4} {:>7} {:>6} {:>10}", "model", "gpus", "shards", "loads",
                   "GPU-h"));
  for (const auto& m : r.models) {
    line(fmt::format("  {:<24} {:>4} {:>7} {:>6} {:>10.1f}", m.name, m.gpus, m.shards, m.loads,
                     static_cast<double>(m.shard_gpu_ms) / 3.6e6));
  }
  for (const auto& w : r.worker_reports) {
    if (w.timeline.empty()) continue;
    std::string loads;
    for (const auto& l : w.timeline) {
      loads +=
          fmt::format(" {}@{:.0f}s", r.models[l.model].name, static_cast<double>(l.at_ms) / 1000.0);
    }
    line(fmt::format("  {:<12} busy {:5.1f} % loads:{}", w.name,
                     r.makespan_ms == 0
                         ? 0.0
                         : 100.0 * static_cast<double>(w.busy_gpu_ms) /
                               (static_cast<double>(w.gpus) * static_cast<double>(r.makespan_ms)),
                     loads));
  }
  line(fmt::format("simulated in {:.2f} s ({} shards, {} scheduler turns)", r.wall_s, r.shards,
                   r.turns));
  return out;
}

nlohmann::json to_json(const SimReport& r) {
  nlohmann::json models = nlohmann::json::array();
  for (const auto& m : r.models) {
    models.push_back({{"name", m.name},
                      {"gpus", m.gpus},
                      {"shards", m.shards},
                      {"loads", m.loads},
                      {"shard_gpu_s", static_cast<double>(m.shard_gpu_ms) / 1000.0}});
  }
  nlohmann::json workers = nlohmann::json::array();
  for (const auto& w : r.worker_reports) {
    nlohmann::json timeline = nlohmann::json::array();
    for (const auto& l : w.timeline) {
      timeline.push_back(
          {{"at_s", static_cast<double>(l.at_ms) / 1000.0}, {"model", r.models[l.model].name}});
    }
    workers.push_back({{"name", w.name},
                       {"gpus", w.gpus},
                       {"loads", w.loads},
                       {"busy_gpu_s", static_cast<double>(w.busy_gpu_ms) / 1000.0},
                       {"timeline", timeline}});
  }
  return {{"scenario", r.scenario},
          {"completed", r.completed},
          {"failure", r.failure},
          {"worker_count", r.workers},
          {"gpus", r.total_gpus},
          {"shards", r.shards},
          {"makespan_s", static_cast<double>(r.makespan_ms) / 1000.0},
          {"lower_bound_s", static_cast<double>(r.bound.value_ms()) / 1000.0},
          {"lower_bound_work_s", static_cast<double>(r.bound.work_ms) / 1000.0},
          {"lower_bound_longest_s", static_cast<double>(r.bound.longest_ms) / 1000.0},
          {"lower_bound_placement_s", static_cast<double>(r.bound.placement_ms) / 1000.0},
          {"lower_bound_placement_groups", r.bound.placement_groups},
          {"lower_bound_chain_s", static_cast<double>(r.bound.chain_ms) / 1000.0},
          {"lower_bound_chain_model", r.bound.chain_model},
          {"lower_bound_binding", r.bound.binding()},
          {"ratio", r.ratio()},
          {"gpu_utilisation", r.gpu_utilisation()},
          {"load_gpu_s", static_cast<double>(r.load_gpu_ms) / 1000.0},
          {"idle_pending_gpu_s", static_cast<double>(r.idle_pending_gpu_ms) / 1000.0},
          {"idle_drain_gpu_s", static_cast<double>(r.idle_drain_gpu_ms) / 1000.0},
          {"loads", r.loads},
          {"min_loads", r.min_loads},
          {"backup_copies", r.backup_copies},
          {"copies_cancelled", r.copies_cancelled},
          {"turns", r.turns},
          {"wall_s", r.wall_s},
          {"models", models},
          {"workers", workers}};
}

}  // namespace evald::sim
