// How model servers are run; the contract is in model_server.hpp.
//
// Every server lives in servers_ (manager thread only) and goes kWaitingForGpus -> kStarting ->
// kReady -> kStopping -> gone. kWaitingForGpus exists because a server on GPUs that another
// model's idle server holds must wait until that one has exited and freed the memory. A server
// is erased only in on_exit, when its process has been reaped, so a pidfile and the gauge of
// servers up always match a process that exists.
#include "worker/model_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cmath>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "common/http_client.hpp"
#include "worker/placeholders.hpp"
#include "worker/process.hpp"
#include "worker/serve_metrics.hpp"
#include "worker/unique_fd.hpp"

namespace evald::worker {
namespace {

namespace asio = boost::asio;
using std::chrono::milliseconds;

constexpr milliseconds kHealthRequestTimeout{1000};
constexpr size_t kServerStderrTailBytes = 8192;

milliseconds to_ms(double seconds) {
  constexpr double kMaxSeconds = 365.0 * 24 * 3600;
  return milliseconds(std::llround(std::min(seconds, kMaxSeconds) * 1000));
}

std::string join_gpus(const std::vector<uint32_t>& gpus) {
  std::string out;
  for (const uint32_t gpu : gpus) {
    if (!out.empty()) out += ',';
    out += std::to_string(gpu);
  }
  return out;
}

// A free loopback port: bound to 127.0.0.1:0 and released again for the server to take. Another
// process could take it in between; the server then fails to bind and exits, which is reported
// like any failed start.
Result<uint16_t> free_loopback_port() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return make_error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    return make_error(std::string("bind 127.0.0.1:0: ") + std::strerror(errno));
  }
  socklen_t length = sizeof address;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return make_error(std::string("getsockname: ") + std::strerror(errno));
  }
  return ntohs(address.sin_port);
}

// Field 22 of /proc/PID/stat (start time in clock ticks since boot): with the pid it names one
// process for ever, so a pidfile cannot make us kill a stranger that got a recycled pid.
std::optional<uint64_t> process_start_time(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');  // the command name may contain spaces and ')'
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  // Fields after the name start at 3 (state); the start time is field 22.
  for (int i = 3; i <= 22; ++i) {
    if (!(fields >> field)) return std::nullopt;
  }
  try {
    return std::stoull(field);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

std::string substitute_serve_placeholders(std::string_view text, uint16_t port,
                                          const std::string& model, const std::string& gpus,
                                          size_t gpu_count, const std::string& work_dir) {
  return substitute_braced(text, [&](std::string_view name) -> std::optional<std::string> {
    if (name == "port") return std::to_string(port);
    if (name == "model") return model;
    if (name == "gpus") return gpus;
    if (name == "gpu_count") return std::to_string(gpu_count);
    if (name == "work_dir") return work_dir;
    return std::nullopt;
  });
}

std::string last_lines(std::string_view text, size_t lines, size_t max_bytes) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  size_t start = text.size();
  size_t found = 0;
  while (start > 0 && found < lines) {
    const auto newline = text.rfind('\n', start - 1);
    if (newline == std::string_view::npos) {
      start = 0;
      break;
    }
    start = newline;
    ++found;
    if (found < lines) continue;
    ++start;  // skip the newline itself
  }
  text = text.substr(start);
  if (!text.empty() && text.front() == '\n') text.remove_prefix(1);
  if (text.size() > max_bytes) text = text.substr(text.size() - max_bytes);
  return std::string(text);
}

class ModelServers::Impl {
 public:
  Impl(ModelServersOptions options, const Clock& clock, ServeMetrics* metrics)
      : options_(std::move(options)),
        clock_(clock),
        metrics_(metrics),
        base_env_(current_environment()),
        wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
        work_(asio::make_work_guard(io_)) {
    std::error_code ec;
    std::filesystem::create_directories(options_.dir, ec);
    thread_ = std::thread([this] {
      ScopedSigpipeBlock no_sigpipe;
      io_.run();
    });
  }

  ~Impl() {
    std::promise<void> stopped;
    auto done = stopped.get_future();
    asio::post(io_, [this, &stopped] {
      shutting_down_ = true;
      shutdown_done_ = &stopped;
      for (const uint64_t id : server_ids()) {
        if (auto* server = find(id)) stop_server(*server, "worker stopping");
      }
      finish_shutdown_if_done();
    });
    done.wait();
    work_.reset();
    io_.stop();
    thread_.join();
  }

  void acquire(ServeRequest request) {
    asio::post(io_,
               [this, request = std::move(request)]() mutable { on_acquire(std::move(request)); });
  }
  void release(uint64_t attempt_id) {
    asio::post(io_, [this, attempt_id] { on_release(attempt_id); });
  }
  void stop_idle() {
    asio::post(io_, [this] {
      for (const uint64_t id : server_ids()) {
        auto* server = find(id);
        if (server != nullptr && server->users.empty() && server->waiting.empty()) {
          stop_server(*server, "worker draining");
        }
      }
    });
  }
  int wake_fd() const { return wake_fd_.get(); }
  std::vector<ServeEvent> take_events() {
    uint64_t ignored = 0;
    [[maybe_unused]] auto n = ::read(wake_fd_.get(), &ignored, sizeof ignored);
    const std::lock_guard<std::mutex> lock(mutex_);
    std::vector<ServeEvent> out;
    out.swap(events_);
    return out;
  }
  std::vector<WarmServer> warm() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return snapshot_;
  }

 private:
  enum class State { kWaitingForGpus, kStarting, kReady, kStopping };
  struct Server {
    explicit Server(asio::io_context& io) : timer(io), deadline(io) {}
    uint64_t id = 0;
    std::string key;
    std::string model;
    ServeSpec serve;
    std::vector<uint32_t> gpus;
    State state = State::kWaitingForGpus;
    uint16_t port = 0;
    std::optional<ChildProcess> child;
    pid_t pid = -1;
    std::filesystem::path pidfile;
    std::set<uint64_t> waiting;  // attempts waiting for it to become ready
    std::set<uint64_t> users;    // attempts told it is ready
    std::chrono::steady_clock::time_point started;
    std::chrono::milliseconds load_time{0};
    asio::steady_timer timer;     // health polls, then keep-warm, then the stop grace
    asio::steady_timer deadline;  // ready_timeout_s
    std::string failure;          // why we killed it, when it was not our choice to stop it
    std::string stop_reason;
  };

  static std::string key_of(const ServeRequest& request) {
    // Two campaigns that spell the same model's server the same way share it.
    std::string key = request.model + '\n' + join_gpus(request.gpus) + '\n';
    for (const auto& argument : request.serve.command) key += argument + '\x1f';
    key += '\n' + request.serve.health + '\n' + request.serve.env.dump() + '\n' +
           request.serve.model_id;
    return key;
  }

  std::string endpoint_of(const Server& server) const {
    return "http://127.0.0.1:" + std::to_string(server.port) + "/v1";
  }

  void emit(ServeEvent event) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      events_.push_back(std::move(event));
    }
    const uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_.get(), &one, sizeof one);
  }

  void publish_snapshot() {
    std::vector<WarmServer> snapshot;
    for (const auto& [id, server] : servers_) {
      if (server->state == State::kStopping || server->state == State::kWaitingForGpus) continue;
      snapshot.push_back(WarmServer{server->model, server->gpus, server->state == State::kReady,
                                    static_cast<uint32_t>(server->users.size()),
                                    server->load_time});
    }
    const std::lock_guard<std::mutex> lock(mutex_);
    snapshot_ = std::move(snapshot);
  }

  void on_acquire(ServeRequest request) {
    if (shutting_down_) {
      emit(ServeEvent{request.attempt_id, false, "", "the worker is stopping"});
      return;
    }
    const std::string key = key_of(request);
    for (auto& [id, server] : servers_) {
      if (server->key != key || server->state == State::kStopping) continue;
      attempt_server_[request.attempt_id] = id;
      if (server->state == State::kReady) {
        server->timer.cancel();  // no longer idle
        server->users.insert(request.attempt_id);
        emit(ServeEvent{request.attempt_id, true, endpoint_of(*server), ""});
        publish_snapshot();
      } else {
        server->waiting.insert(request.attempt_id);
      }
      return;
    }
    auto server = std::make_unique<Server>(io_);
    server->id = ++next_id_;
    server->key = key;
    server->model = request.model;
    server->serve = std::move(request.serve);
    server->gpus = std::move(request.gpus);
    server->waiting.insert(request.attempt_id);
    attempt_server_[request.attempt_id] = server->id;
    auto& ref = *server;
    servers_.emplace(server->id, std::move(server));
    try_start(ref);
  }

  bool shares_gpus(const Server& a, const Server& b) const {
    for (const uint32_t gpu : a.gpus) {
      if (std::find(b.gpus.begin(), b.gpus.end(), gpu) != b.gpus.end()) return true;
    }
    return false;
  }

  // Starts `server` unless another model's server still holds one of its GPUs; an idle one is
  // asked to stop (a model switch), and on_exit tries again once it is gone.
  void try_start(Server& server) {
    if (server.state != State::kWaitingForGpus) return;
    bool blocked = false;
    for (auto& [id, other] : servers_) {
      if (id == server.id || !shares_gpus(server, *other)) continue;
      if (other->state == State::kWaitingForGpus) continue;
      if (other->users.empty() && other->waiting.empty()) {
        stop_server(*other, "model switch: GPUs " + join_gpus(server.gpus) + " are needed for " +
                                server.model);
        blocked = true;
      } else if (other->state == State::kStopping) {
        blocked = true;
      } else {
        // The coordinator books GPUs per shard, so a busy server on our GPUs means its shards
        // and ours overlap in time on purpose (or the booking is off); sharing beats deadlock.
        spdlog::warn("model_server_gpus_shared model={} other_model={} gpus={}", server.model,
                     other->model, join_gpus(server.gpus));
      }
    }
    if (!blocked) launch(server);
  }

  void launch(Server& server) {
    server.state = State::kStarting;
    server.started = clock_.now();
    const auto port = free_loopback_port();
    if (!port) return fail_start(server, "no free loopback port: " + port.error().message);
    server.port = port.value();
    const auto work_dir = options_.dir / (server.model + "-" + std::to_string(server.id));
    std::error_code ec;
    std::filesystem::create_directories(work_dir, ec);
    if (ec) return fail_start(server, "cannot create " + work_dir.string() + ": " + ec.message());

    const std::string gpus = join_gpus(server.gpus);
    ProcessSpec spec;
    const auto substitute = [&](const std::string& text) {
      return substitute_serve_placeholders(text, server.port, server.model, gpus,
                                           server.gpus.size(), work_dir.string());
    };
    spec.executable = substitute(server.serve.command.front());
    for (size_t i = 1; i < server.serve.command.size(); ++i) {
      spec.args.push_back(substitute(server.serve.command[i]));
    }
    std::map<std::string, std::string> env(base_env_.begin(), base_env_.end());
    for (const auto& [name, value] : server.serve.env.items()) {
      env[name] = value.is_string() ? value.get<std::string>() : value.dump();
    }
    env["CUDA_VISIBLE_DEVICES"] = gpus;
    env["EVALD_MODEL"] = server.model;
    env["EVALD_SERVE_PORT"] = std::to_string(server.port);
    spec.environment.assign(env.begin(), env.end());
    spec.working_dir = work_dir;
    spec.stdout_limit_bytes = 0;  // a server logs for hours; only stderr's tail is kept
    spec.stderr_tail_bytes = kServerStderrTailBytes;
    spec.kill_with_parent = true;

    const uint64_t id = server.id;
    server.child = ChildProcess::start(
        io_, std::move(spec), [this, id](ProcessOutcome outcome) { on_exit(id, outcome); });
    server.pid = server.child->pid();
    if (server.pid > 0) {
      write_pidfile(server);
      if (metrics_ != nullptr) metrics_->server_up(server.model, +1);
      spdlog::info("model_server_starting model={} pid={} port={} gpus={} ready_timeout_s={}",
                   server.model, server.pid, server.port, gpus, server.serve.ready_timeout_s);
    }
    server.deadline.expires_after(to_ms(server.serve.ready_timeout_s));
    server.deadline.async_wait([this, id](const boost::system::error_code& e) {
      if (e) return;
      auto* s = find(id);
      if (s == nullptr || s->state != State::kStarting) return;
      s->failure = fmt::format(
          "model server for {} was not ready after {} s (GET http://127.0.0.1:{}{} never answered "
          "200)",
          s->model, s->serve.ready_timeout_s, s->port, s->serve.health);
      spdlog::warn("model_server_not_ready model={} pid={} ready_timeout_s={}", s->model, s->pid,
                   s->serve.ready_timeout_s);
      if (s->child) s->child->kill();
    });
    publish_snapshot();
    schedule_health(server, milliseconds(0));
  }

  // Before a process exists (no port, no directory): the waiting attempts fail at once.
  void fail_start(Server& server, const std::string& why) {
    spdlog::error("model_server_start_failed model={} error=\"{}\"", server.model, why);
    if (metrics_ != nullptr) metrics_->count_server_failure(server.model, "spawn_failed");
    const std::string error = "model server for " + server.model + " not started: " + why;
    for (const uint64_t attempt : server.waiting) {
      attempt_server_.erase(attempt);
      emit(ServeEvent{attempt, false, "", error, true, server.id, why});
    }
    servers_.erase(server.id);
    publish_snapshot();
  }

  void write_pidfile(Server& server) {
    server.pidfile = options_.dir / (std::to_string(server.pid) + ".pid");
    const auto start_time = process_start_time(server.pid);
    std::ofstream out(server.pidfile, std::ios::trunc);
    out << server.pid << ' ' << start_time.value_or(0) << ' ' << server.model << '\n';
    if (!out) {
      spdlog::warn("model_server_pidfile_failed path={} pid={}", server.pidfile.string(),
                   server.pid);
    }
  }

  void schedule_health(Server& server, milliseconds after) {
    const uint64_t id = server.id;
    server.timer.expires_after(after);
    server.timer.async_wait([this, id](const boost::system::error_code& e) {
      if (e) return;
      auto* s = find(id);
      if (s != nullptr && s->state == State::kStarting) check_health(*s);
    });
  }

  void check_health(Server& server) {
    HttpUrl url;
    url.host = "127.0.0.1";
    url.port = server.port;
    const auto response = http_request(url, "GET", server.serve.health, "", kHealthRequestTimeout);
    if (!response || response->status != 200) {
      return schedule_health(server, options_.health_interval);
    }
    server.state = State::kReady;
    server.deadline.cancel();
    server.load_time = std::chrono::duration_cast<milliseconds>(clock_.now() - server.started);
    const double seconds = std::chrono::duration<double>(clock_.now() - server.started).count();
    if (metrics_ != nullptr) metrics_->count_load(server.model, seconds);
    spdlog::info("model_server_ready model={} pid={} port={} load_seconds={:.3f} waiting={}",
                 server.model, server.pid, server.port, seconds, server.waiting.size());
    for (const uint64_t attempt : server.waiting) {
      server.users.insert(attempt);
      emit(ServeEvent{attempt, true, endpoint_of(server), ""});
    }
    server.waiting.clear();
    if (server.users.empty()) arm_keep_warm(server);
    publish_snapshot();
  }

  void on_release(uint64_t attempt_id) {
    const auto it = attempt_server_.find(attempt_id);
    if (it == attempt_server_.end()) return;
    auto* server = find(it->second);
    attempt_server_.erase(it);
    if (server == nullptr) return;
    server->waiting.erase(attempt_id);
    server->users.erase(attempt_id);
    if (server->state == State::kReady && server->users.empty()) arm_keep_warm(*server);
    if (server->state == State::kWaitingForGpus && server->waiting.empty()) {
      servers_.erase(server->id);  // nobody wants it any more, and it never ran
    }
    publish_snapshot();
  }

  void arm_keep_warm(Server& server) {
    const uint64_t id = server.id;
    server.timer.expires_after(to_ms(server.serve.keep_warm_s));
    server.timer.async_wait([this, id](const boost::system::error_code& e) {
      if (e) return;
      auto* s = find(id);
      if (s == nullptr || s->state != State::kReady || !s->users.empty()) return;
      stop_server(*s, fmt::format("idle for keep_warm_s={}", s->serve.keep_warm_s));
    });
  }

  void stop_server(Server& server, const std::string& reason) {
    if (server.state == State::kStopping) return;
    const bool running = server.state != State::kWaitingForGpus;
    server.state = State::kStopping;
    server.stop_reason = reason;
    server.deadline.cancel();
    server.timer.cancel();
    if (!running || !server.child) {
      for (const uint64_t attempt : server.waiting) {
        attempt_server_.erase(attempt);
        emit(ServeEvent{attempt, false, "",
                        "model server for " + server.model + " not started: " + reason});
      }
      servers_.erase(server.id);
      publish_snapshot();
      return;
    }
    spdlog::info("model_server_stopping model={} pid={} reason=\"{}\" grace_ms={}", server.model,
                 server.pid, reason, options_.stop_grace.count());
    server.child->terminate();
    const uint64_t id = server.id;
    server.timer.expires_after(options_.stop_grace);
    server.timer.async_wait([this, id](const boost::system::error_code& e) {
      if (e) return;
      auto* s = find(id);
      if (s == nullptr || !s->child) return;
      spdlog::warn("model_server_kill model={} pid={} reason=\"no exit {} ms after SIGTERM\"",
                   s->model, s->pid, options_.stop_grace.count());
      s->child->kill();
    });
    publish_snapshot();
  }

  void on_exit(uint64_t id, const ProcessOutcome& outcome) {
    auto* server = find(id);
    if (server == nullptr) return;
    if (server->pid > 0) {
      if (metrics_ != nullptr) metrics_->server_up(server->model, -1);
      std::error_code ec;
      std::filesystem::remove(server->pidfile, ec);
    }
    server->timer.cancel();
    server->deadline.cancel();
    const bool asked = server->state == State::kStopping && server->failure.empty();
    std::string how;
    if (outcome.end == ProcessEnd::kSpawnFailed) {
      how = "could not be started: " + outcome.spawn_error;
    } else if (outcome.signal != 0) {
      how = "was killed by " + signal_name(outcome.signal);
    } else {
      how = "exited with code " + std::to_string(outcome.exit_code);
    }
    const std::string tail = last_lines(outcome.stderr_tail);
    if (asked) {
      spdlog::info("model_server_stopped model={} pid={} reason=\"{}\"", server->model, server->pid,
                   server->stop_reason);
    } else {
      const std::string reason = outcome.end == ProcessEnd::kSpawnFailed ? "spawn_failed"
                                 : !server->failure.empty()              ? "not_ready"
                                                                         : "exited";
      if (metrics_ != nullptr) metrics_->count_server_failure(server->model, reason);
      // One log line per event: the tail's newlines become " | ".
      std::string flat = tail;
      for (size_t at = flat.find('\n'); at != std::string::npos; at = flat.find('\n', at + 3)) {
        flat.replace(at, 1, " | ");
      }
      spdlog::error("model_server_failed model={} pid={} reason={} how=\"{}\" stderr_tail=\"{}\"",
                    server->model, server->pid, reason, how, flat);
    }
    std::string error;
    if (!server->failure.empty()) {
      error = server->failure;
    } else if (asked) {
      error = "model server for " + server->model + " was stopped (" + server->stop_reason + ")";
    } else {
      error = "model server for " + server->model + " (pid " + std::to_string(server->pid) + ") " +
              how + (server->state == State::kReady ? " while serving" : " before it was ready");
    }
    if (!tail.empty()) error += "; its stderr ends with: " + tail;
    // A start that failed (not one we stopped, nor a crash while serving) is told as such, with
    // the server's own last words, so the coordinator can stop placing a model that keeps
    // failing here.
    const bool start_failed = !asked && server->state != State::kReady;
    std::string reason = last_lines(outcome.stderr_tail, 1, 512);
    if (reason.empty()) reason = !server->failure.empty() ? server->failure : how;
    for (const uint64_t attempt : server->waiting) {
      attempt_server_.erase(attempt);
      emit(ServeEvent{attempt, false, "", error, start_failed, server->id, reason});
    }
    for (const uint64_t attempt : server->users) {
      attempt_server_.erase(attempt);
      emit(ServeEvent{attempt, false, "", error});
    }
    servers_.erase(id);
    publish_snapshot();
    // GPUs may have been freed for a server that waits for them.
    std::vector<uint64_t> waiting_ids;
    for (const auto& [other_id, other] : servers_) {
      if (other->state == State::kWaitingForGpus) waiting_ids.push_back(other_id);
    }
    for (const uint64_t other_id : waiting_ids) {
      if (auto* other = find(other_id)) try_start(*other);
    }
    finish_shutdown_if_done();
  }

  void finish_shutdown_if_done() {
    if (!shutting_down_ || !servers_.empty() || shutdown_done_ == nullptr) return;
    auto* done = shutdown_done_;
    shutdown_done_ = nullptr;
    done->set_value();
  }

  // stop_server may erase a server: loops that stop servers walk a copy of the ids.
  std::vector<uint64_t> server_ids() const {
    std::vector<uint64_t> ids;
    for (const auto& [id, server] : servers_) ids.push_back(id);
    return ids;
  }

  Server* find(uint64_t id) {
    const auto it = servers_.find(id);
    return it == servers_.end() ? nullptr : it->second.get();
  }

  // First member: destroyed last, after every timer and process handle bound to it.
  asio::io_context io_{1};
  ModelServersOptions options_;
  const Clock& clock_;
  ServeMetrics* metrics_;
  std::vector<std::pair<std::string, std::string>> base_env_;
  UniqueFd wake_fd_;

  // Manager thread only.
  std::map<uint64_t, std::unique_ptr<Server>> servers_;
  std::unordered_map<uint64_t, uint64_t> attempt_server_;
  uint64_t next_id_ = 0;
  bool shutting_down_ = false;
  std::promise<void>* shutdown_done_ = nullptr;

  mutable std::mutex mutex_;  // guards events_ and snapshot_
  std::vector<ServeEvent> events_;
  std::vector<WarmServer> snapshot_;

  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread thread_;
};

ModelServers::ModelServers(ModelServersOptions options, const Clock& clock, ServeMetrics* metrics)
    : impl_(std::make_unique<Impl>(std::move(options), clock, metrics)) {}
ModelServers::~ModelServers() = default;

size_t ModelServers::reap_stale(const std::filesystem::path& dir) {
  size_t killed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".pid") continue;
    std::ifstream in(entry.path());
    long long pid = 0;
    unsigned long long start_time = 0;
    std::string model;
    in >> pid >> start_time >> model;
    // Never ourselves or our own group, whatever a pidfile says.
    if (in && pid > 1 && pid != ::getpid() && pid != ::getpgrp()) {
      const auto now_start = process_start_time(static_cast<pid_t>(pid));
      if (now_start && *now_start == start_time) {
        // The group leader is still the server we started: take the whole group down.
        ::kill(-static_cast<pid_t>(pid), SIGKILL);
        ::kill(static_cast<pid_t>(pid), SIGKILL);
        ++killed;
        spdlog::warn("model_server_reaped pid={} model={} reason=\"left by a previous worker\"",
                     pid, model);
      }
    }
    std::filesystem::remove(entry.path(), ec);
  }
  return killed;
}

void ModelServers::acquire(ServeRequest request) {
  impl_->acquire(std::move(request));
}
void ModelServers::release(uint64_t attempt_id) {
  impl_->release(attempt_id);
}
void ModelServers::stop_idle() {
  impl_->stop_idle();
}
int ModelServers::wake_fd() const {
  return impl_->wake_fd();
}
std::vector<ServeEvent> ModelServers::take_events() {
  return impl_->take_events();
}
std::vector<WarmServer> ModelServers::warm() const {
  return impl_->warm();
}

}  // namespace evald::worker
