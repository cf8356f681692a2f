#include "coordinator/api.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <map>

#include "common/json_limits.hpp"
#include "common/time_format.hpp"

namespace evald::coordinator {
namespace {

HttpResponse json_response(int status, const nlohmann::json& body) {
  // Error messages may quote what a client sent (a request target, a parse error's bytes), which
  // need not be UTF-8: replace such bytes with U+FFFD rather than let dump() throw (a 500).
  return HttpResponse{status, "application/json",
                      body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

HttpResponse error_response(int status, const std::string& message) {
  return json_response(status, {{"error", message}});
}

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t slash = path.find('/', start);
    const size_t end = slash == std::string_view::npos ? path.size() : slash;
    if (end > start) parts.emplace_back(path.substr(start, end - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return parts;
}

std::string percent_decode(std::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size()) {
      const auto hex = std::string(in.substr(i + 1, 2));
      char* end = nullptr;
      const long v = std::strtol(hex.c_str(), &end, 16);
      if (end == hex.c_str() + 2) {
        out.push_back(static_cast<char>(v));
        i += 2;
        continue;
      }
    }
    out.push_back(in[i] == '+' ? ' ' : in[i]);
  }
  return out;
}

std::map<std::string, std::string> parse_query(std::string_view query) {
  std::map<std::string, std::string> out;
  size_t start = 0;
  while (start < query.size()) {
    size_t amp = query.find('&', start);
    if (amp == std::string_view::npos) amp = query.size();
    const auto item = query.substr(start, amp - start);
    const auto eq = item.find('=');
    if (!item.empty()) {
      out[percent_decode(item.substr(0, eq))] =
          eq == std::string_view::npos ? "" : percent_decode(item.substr(eq + 1));
    }
    start = amp + 1;
  }
  return out;
}

nlohmann::json optional_number(std::optional<double> v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

// What a request needs: open (no role), or a role; rerun and cancel of a campaign also pass for
// a submitter that submitted it.
struct Api::Access {
  std::string route_name = "unknown";
  std::optional<Role> role;
  std::string action;  // for "role R may not ACTION"
  std::optional<std::string> own_campaign;
};

Api::Api(Scheduler& scheduler, Metrics& metrics, ApiOptions options)
    : scheduler_(scheduler),
      metrics_(metrics),
      options_(std::move(options)),
      audit_(scheduler.store(), metrics),
      sample_stats_(scheduler.store(), metrics) {
  load_imported_scores();
}

Api::Access Api::access_for(const HttpRequest& request) const {
  const std::string path = request.target.substr(0, request.target.find('?'));
  const auto parts = split_path(path);
  Access access;
  access.role = Role::kReader;
  access.action = "read " + printable(path, 200);
  if (parts.size() == 1 && parts[0] == "healthz") {
    access.route_name = "/healthz";
    access.role.reset();
    return access;
  }
  if (parts.size() == 1 && parts[0] == "metrics") {
    access.route_name = "/metrics";
    access.action = "read metrics";
    return access;
  }
  if (parts.size() == 2 && parts[0] == "v1" && parts[1] == "audit") {
    access.route_name = "/v1/audit";
    access.role = Role::kAdmin;
    access.action = "read the audit log";
    return access;
  }
  if (request.method != "POST" || parts.size() < 2 || parts[0] != "v1" || parts[1] != "campaigns") {
    return access;
  }
  if (parts.size() == 2) {
    access.route_name = "/v1/campaigns";
    access.role = Role::kSubmitter;
    access.action = "submit";
  } else if (parts.size() == 4 &&
             (parts[3] == "rerun" || parts[3] == "cancel" || parts[3] == "scores")) {
    access.route_name = "/v1/campaigns/{id}/" + parts[3];
    access.role = Role::kSubmitter;
    access.action = parts[3];
    access.own_campaign = parts[2];
  }
  return access;
}

std::optional<Principal> Api::principal_of(const HttpRequest& request) const {
  if (!options_.tokens) return std::nullopt;
  const auto token = bearer_token(request.authorization);
  if (!token) return std::nullopt;
  return options_.tokens->authenticate(*token);
}

HttpResponse Api::refuse(const HttpRequest& request, const std::optional<Principal>& principal,
                         int status, const std::string& reason, const std::string& metric_reason) {
  const std::string path = printable(request.target.substr(0, request.target.find('?')), 200);
  const std::string detail = printable(request.method, 16) + " " + path + ": " + reason;
  audit_.record_refusal(scheduler_.batch(), scheduler_.clock().wall_ms(),
                        AuditEntry{principal ? std::optional(principal->name) : std::nullopt,
                                   request.peer_address, "refused", "", detail});
  metrics_.http_refused.Add({{"reason", metric_reason}}).Increment();
  spdlog::info("http_refused peer={} principal={} status={} reason=\"{}\"", request.peer_address,
               principal ? principal->name : "-", status, detail);
  auto response = error_response(status, reason);
  if (status == 401) {
    response.headers.emplace_back("WWW-Authenticate",
                                  reason == "unknown token"
                                      ? R"(Bearer realm="evald", error="invalid_token")"
                                      : R"(Bearer realm="evald")");
  }
  return response;
}

std::optional<HttpResponse> Api::check_access(const HttpRequest& request) {
  auto refusal = access_refusal(request);
  if (refusal) {
    // handle() counts the requests it serves; these never get there.
    metrics_.http_requests
        .Add({{"route", access_for(request).route_name},
              {"status", std::to_string(refusal->status)}})
        .Increment();
  }
  return refusal;
}

std::optional<HttpResponse> Api::access_refusal(const HttpRequest& request) {
  if (!options_.tokens) return std::nullopt;
  const Access access = access_for(request);
  if (!access.role) return std::nullopt;
  const auto token = bearer_token(request.authorization);
  if (!token) {
    return refuse(request, std::nullopt, 401,
                  "authentication required: send Authorization: Bearer TOKEN", "unauthenticated");
  }
  const auto principal = options_.tokens->authenticate(*token);
  if (!principal) return refuse(request, std::nullopt, 401, "unknown token", "unauthenticated");
  if (principal->role < *access.role) {
    return refuse(request, principal, 403,
                  std::string("role ") + to_string(principal->role) + " may not " + access.action +
                      " (needs " + to_string(*access.role) + ")",
                  "forbidden");
  }
  if (access.own_campaign && principal->role < Role::kOperator) {
    const Campaign* c = scheduler_.find_campaign(*access.own_campaign);
    if (c != nullptr && c->submitted_by != principal->name) {
      return refuse(request, principal, 403,
                    std::string("role ") + to_string(principal->role) + " may not " +
                        access.action + " campaign " + c->id + " of " +
                        (c->submitted_by ? "'" + *c->submitted_by + "'" : "nobody known") +
                        " (needs operator, or to have submitted it)",
                    "forbidden");
    }
  }
  return std::nullopt;
}

HttpResponse Api::handle(const HttpRequest& request) {
  std::string route_name = "unknown";
  HttpResponse response;
  try {
    response = route(request, route_name);
  } catch (const std::exception& e) {
    // A bug in our own rendering must not take the coordinator down with it: answer 500 and log.
    spdlog::error("http_handler_failed method={} target={} error=\"{}\"", request.method,
                  request.target, e.what());
    response = error_response(500, std::string("internal error: ") + e.what());
  }
  metrics_.http_requests.Add({{"route", route_name}, {"status", std::to_string(response.status)}})
      .Increment();
  return response;
}

HttpResponse Api::route(const HttpRequest& request, std::string& route_name) {
  const auto qmark = request.target.find('?');
  const std::string path = request.target.substr(0, qmark);
  const std::string query = qmark == std::string::npos ? "" : request.target.substr(qmark + 1);
  const auto parts = split_path(path);
  const auto& method = request.method;
  auto wrong_method = [&](const char* allowed) {
    return error_response(
        405, "method " + method + " not allowed on " + path + " (use " + allowed + ")");
  };

  if (parts.size() == 1 && parts[0] == "healthz") {
    route_name = "/healthz";
    return json_response(200, {{"status", "ok"}});
  }
  if (parts.size() == 1 && parts[0] == "metrics") {
    // Served here only when the HTTP thread passed it on (to have a refusal audited).
    route_name = "/metrics";
    if (method != "GET") return wrong_method("GET");
    return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", metrics_.serialize()};
  }
  if (parts.size() == 2 && parts[0] == "v1" && parts[1] == "audit") {
    route_name = "/v1/audit";
    if (method != "GET") return wrong_method("GET");
    return audit(query);
  }
  if (parts.size() >= 2 && parts[0] == "v1" && parts[1] == "workers" && parts.size() == 2) {
    route_name = "/v1/workers";
    if (method != "GET") return wrong_method("GET");
    return list_workers(query);
  }
  if (parts.size() >= 2 && parts[0] == "v1" && parts[1] == "campaigns") {
    if (parts.size() == 2) {
      route_name = "/v1/campaigns";
      if (method == "POST") return submit(request);
      if (method == "GET") return list_campaigns();
      return wrong_method("GET or POST");
    }
    const Campaign* c = scheduler_.find_campaign(parts[2]);
    if (parts.size() == 3) {
      route_name = "/v1/campaigns/{id}";
      if (method != "GET") return wrong_method("GET");
      if (c == nullptr) return error_response(404, "unknown campaign '" + parts[2] + "'");
      return get_campaign(*c);
    }
    if (parts.size() == 4) {
      const std::string& action = parts[3];
      route_name = "/v1/campaigns/{id}/" + action;
      const bool is_get = action == "shards" || action == "results" || action == "samples" ||
                          action == "compare" || action == "provenance";
      const bool is_post = action == "rerun" || action == "cancel" || action == "scores";
      if (!is_get && !is_post) {
        route_name = "unknown";
        return error_response(404, "no route for " + method + " " + path);
      }
      if (is_get && method != "GET") return wrong_method("GET");
      if (is_post && method != "POST") return wrong_method("POST");
      if (c == nullptr) return error_response(404, "unknown campaign '" + parts[2] + "'");
      if (action == "shards") return get_shards(*c, query);
      if (action == "results") return get_results(*c);
      if (action == "samples") return get_samples(*c, parse_query(query));
      if (action == "compare") return get_compare(*c, parse_query(query));
      if (action == "provenance") return get_provenance(*c);
      if (action == "scores") return post_scores(*c, request);
      if (action == "rerun") return rerun(*c, request);
      return cancel(*c, request);
    }
  }
  return error_response(404, "no route for " + method + " " + path);
}

HttpResponse Api::submit(const HttpRequest& request) {
  const auto principal = principal_of(request);
  if (request.body.empty())
    return error_response(400, "request body is empty; expected a campaign spec");
  if (request.body.size() > options_.max_spec_bytes) {
    return refuse(request, principal, 413,
                  "campaign spec of " + std::to_string(request.body.size()) +
                      " bytes exceeds the limit of " + std::to_string(options_.max_spec_bytes) +
                      " bytes (--max-spec-bytes)",
                  "spec_too_large");
  }
  auto spec = parse_campaign_spec_text(request.body);
  if (!spec.ok()) return error_response(400, spec.error().message);

  const std::optional<std::string> name = principal ? std::optional(principal->name) : std::nullopt;
  const std::string owner = quota_owner(name, request.peer_address);
  int64_t shards = 0;
  for (const auto& benchmark : spec.value().benchmarks) shards += benchmark.shard_count();
  shards *= static_cast<int64_t>(spec.value().models.size());
  const int64_t unfinished = unfinished_shards_of(owner);
  if (unfinished + shards > options_.max_pending_shards_per_user) {
    return refuse(request, principal, 429,
                  "quota exceeded: " + owner + " has " + std::to_string(unfinished) +
                      " pending or running shards and this campaign adds " +
                      std::to_string(shards) + ", over the limit of " +
                      std::to_string(options_.max_pending_shards_per_user) +
                      " (--max-pending-shards-per-user)",
                  "quota");
  }
  auto id = scheduler_.submit(spec.value(), Submitter{name, request.peer_address});
  if (!id.ok()) return error_response(400, id.error().message);
  audit_.record(scheduler_.batch(), scheduler_.clock().wall_ms(),
                AuditEntry{name, request.peer_address, "submit", id.value(),
                           "name=" + spec.value().name + " shards=" + std::to_string(shards)});
  return json_response(201, {{"id", id.value()}});
}

std::optional<uint64_t> unsigned_query_param(const std::map<std::string, std::string>& params,
                                             const char* key, uint64_t fallback) {
  const auto it = params.find(key);
  if (it == params.end() || it->second.empty()) return fallback;
  uint64_t value = 0;
  const auto* begin = it->second.data();
  const auto* end = begin + it->second.size();
  const auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

HttpResponse Api::audit(const std::string& query) {
  const auto params = parse_query(query);
  const auto since = unsigned_query_param(params, "since", 0);
  if (!since) return error_response(400, "since: must be a non-negative integer (an event seq)");
  const auto limit = unsigned_query_param(params, "limit", kAuditDefaultLimit);
  if (!limit || *limit == 0) return error_response(400, "limit: must be a positive integer");
  auto page = audit_.page(*since, std::min<uint64_t>(*limit, kAuditMaxLimit));
  if (!page.ok()) return error_response(500, page.error().message);
  return json_response(200, page.value());
}

nlohmann::json Api::campaign_json(const Campaign& c) const {
  nlohmann::json shards = nlohmann::json::object();
  for (size_t s = 0; s < kShardStateCount; ++s) {
    shards[to_string(static_cast<ShardState>(s))] = c.counts[s];
  }
  const auto now = scheduler_.clock().now();
  std::optional<double> eta;
  if (c.state == CampaignState::kRunning) {
    eta = c.eta_seconds(now);
  } else {
    eta = 0.0;
  }
  nlohmann::json out = {
      {"id", c.id},
      {"name", c.spec.name},
      {"state", to_string(c.state)},
      {"created_at", rfc3339_seconds(c.created_at_ms)},
      {"submitted_by", c.submitted_by ? nlohmann::json(*c.submitted_by) : nlohmann::json(nullptr)},
      {"finished_at", c.finished_at_ms > 0 ? nlohmann::json(rfc3339_seconds(c.finished_at_ms))
                                           : nlohmann::json(nullptr)},
      {"shards", shards},
      {"total", c.total},
      {"progress",
       c.total == 0 ? 1.0 : static_cast<double>(c.finished()) / static_cast<double>(c.total)},
      {"eta_s", optional_number(eta)},
      {"priority", c.spec.priority},
      {"max_attempts", c.spec.max_attempts},
      {"models", c.spec.models.size()},
      {"benchmarks", c.spec.benchmarks.size()},
  };
  if (!c.model_loads.empty()) out["model_loads"] = c.model_loads;
  if (!c.unschedulable.empty()) {
    std::string reasons;
    nlohmann::json models = nlohmann::json::array();
    for (const auto& [model, reason] : c.unschedulable) {
      reasons += (reasons.empty() ? "" : "; ") + reason;
      models.push_back({{"model", c.spec.models[model].name}, {"reason", reason}});
    }
    out["unschedulable"] = reasons;
    out["unschedulable_models"] = models;
  }
  // Served models backed off on a worker (their server failed to start there again and again):
  // why this campaign's shards of them wait, or run elsewhere.
  if (c.state == CampaignState::kRunning) {
    nlohmann::json held = nlohmann::json::array();
    for (const auto& model : c.spec.models) {
      for (const auto& entry : scheduler_.serve_backoff().not_placed(model, now)) {
        held.push_back({{"model", entry.model},
                        {"worker", entry.worker},
                        {"reason", entry.reason},
                        {"failures", entry.failures},
                        {"until", rfc3339_seconds(entry.until_ms)}});
      }
    }
    if (!held.empty()) out["not_placed"] = std::move(held);
  }
  return out;
}

HttpResponse Api::list_campaigns() {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& [key, c] : scheduler_.campaigns()) list.push_back(campaign_json(*c));
  return json_response(200, {{"campaigns", list}});
}

HttpResponse Api::get_campaign(const Campaign& c) {
  auto out = campaign_json(c);
  add_spec(c, out);
  return json_response(200, out);
}

HttpResponse Api::get_shards(const Campaign& c, const std::string& query) {
  const auto params = parse_query(query);
  std::optional<ShardState> filter;
  if (auto it = params.find("state"); it != params.end() && !it->second.empty()) {
    ShardState s{};
    if (!parse_shard_state(it->second, s)) {
      return error_response(400,
                            "unknown state '" + it->second +
                                "'; expected pending, running, succeeded, failed or cancelled");
    }
    filter = s;
  }
  // Details live in the store (rendered after this turn's commit, so it matches memory).
  std::map<std::pair<uint32_t, uint32_t>, ShardRecord> records;
  auto status = scheduler_.store().scan_shards(c.key, [&](const ShardKey& k, const ShardRecord& r) {
    if (!filter || r.state == *filter) records.emplace(std::make_pair(k.group, k.shard), r);
  });
  if (!status.ok()) return error_response(500, status.error().message);
  std::map<std::pair<uint32_t, uint32_t>, nlohmann::json> history;
  status = scheduler_.store().scan_attempts(
      c.key, [&](const ShardKey& k, uint64_t attempt_id, const AttemptRecord& a) {
        auto& list = history[{k.group, k.shard}];
        list.push_back({{"attempt_id", attempt_id},
                        {"attempt", a.attempt},
                        {"outcome", to_string(a.outcome)},
                        {"worker", a.worker},
                        {"ended_at", rfc3339_seconds(a.ended_at_ms)},
                        {"duration_s", a.duration_ms / 1000.0},
                        {"error", a.error}});
      });
  if (!status.ok()) return error_response(500, status.error().message);

  nlohmann::json shards = nlohmann::json::array();
  const auto workers = scheduler_.workers();
  for (uint32_t gi = 0; gi < c.groups.size(); ++gi) {
    const Group& g = c.groups[gi];
    const auto& bench = c.spec.benchmarks[g.benchmark];
    for (uint32_t i = 0; i < g.shards.size(); ++i) {
      const Shard& s = g.shards[i];
      if (filter && s.state != *filter) continue;
      const auto range = shard_range(bench, i);
      nlohmann::json item = {{"model", c.spec.models[g.model].name},
                             {"benchmark", bench.name},
                             {"index", i},
                             {"start", range.start},
                             {"end", range.end},
                             {"state", to_string(s.state)},
                             {"attempts", s.attempts},
                             {"total_attempts", s.total_attempts},
                             {"worker", nullptr},
                             {"duration_s", nullptr},
                             {"last_error", nullptr}};
      if (auto it = records.find({gi, i}); it != records.end()) {
        const ShardRecord& r = it->second;
        if (!r.worker.empty()) item["worker"] = r.worker;
        if (r.state == ShardState::kSucceeded) {
          item["duration_s"] = r.duration_ms / 1000.0;
          item["count"] = r.count;
          nlohmann::json metrics = nlohmann::json::object();
          for (const auto& [name, value] : r.metrics) metrics[name] = value;
          item["metrics"] = metrics;
          if (!r.reused_from_campaign.empty()) {
            item["reused_from"] = {{"campaign", r.reused_from_campaign},
                                   {"attempt_id", r.reused_from_attempt}};
          }
        }
        if (r.state == ShardState::kRunning) item["attempt_id"] = r.attempt_id;
        // Waiting for its model server to become ready (docs/served-models.md).
        if (s.state == ShardState::kRunning) {
          for (const WorkerInfo* w : workers) {
            if (w == nullptr || w->index != s.worker) continue;
            if (w->loading.contains(s.attempt_id)) item["phase"] = "loading";
            // Leased ahead, waiting for a slot of its worker (docs/scheduling.md, rule 11).
            if (w->is_queued(s.attempt_id)) item["phase"] = "queued";
          }
        }
      }
      if (const auto& err = scheduler_.last_error(c, gi, i); !err.empty()) item["last_error"] = err;
      if (auto h = history.find({gi, i}); h != history.end()) item["history"] = h->second;
      shards.push_back(std::move(item));
    }
  }
  return json_response(200, {{"campaign", c.id}, {"shards", shards}});
}

HttpResponse Api::get_results(const Campaign& c) {
  std::vector<std::string> models;
  for (const auto& m : c.spec.models) models.push_back(m.name);
  std::vector<BenchmarkColumn> columns;
  nlohmann::json bench_names = nlohmann::json::array();
  for (const auto& b : c.spec.benchmarks) {
    columns.push_back({b.name, b.metric, b.higher_is_better});
    bench_names.push_back(b.name);
  }
  std::vector<std::vector<CellAggregate>> cells(models.size());
  for (const auto& g : c.groups) cells[g.model].push_back(g.cell);
  const auto rows = compute_leaderboard(models, columns, cells);
  auto models_json = leaderboard_to_json(rows, columns);
  sample_stats_.annotate_results(c, models_json);
  return json_response(200, {{"campaign", c.id},
                             {"name", c.spec.name},
                             {"state", to_string(c.state)},
                             {"benchmarks", bench_names},
                             {"models", with_composite(c, std::move(models_json))}});
}

std::string Api::quota_owner(const std::optional<std::string>& token_name,
                             const std::string& address) {
  // The quota principal: the token's name, or the client address without tokens.
  return token_name ? "token " + *token_name : "address " + address;
}

int64_t Api::unfinished_shards_of(const std::string& owner) const {
  int64_t unfinished = 0;
  for (const auto& [key, c] : scheduler_.campaigns()) {
    if (quota_owner(c->submitted_by, c->submitted_from) != owner) continue;
    unfinished += c->count(ShardState::kPending) + c->count(ShardState::kRunning);
  }
  return unfinished;
}

HttpResponse Api::rerun(const Campaign& c, const HttpRequest& request) {
  RerunSelector selector;
  if (!request.body.empty()) {
    auto body = parse_json_bounded(request.body);
    if (!body) return error_response(400, "rerun body " + body.error().message);
    if (!body->is_object()) {
      return error_response(400, "rerun body must be a JSON object like {\"failed\": true}");
    }
    for (const auto& [key, value] : body->items()) {
      if (key == "failed") {
        if (!value.is_boolean()) return error_response(400, "failed: must be true or false");
        selector.failed_only = value.get<bool>();
      } else if (key == "model" || key == "benchmark") {
        if (!value.is_string()) return error_response(400, key + ": must be a string");
        (key == "model" ? selector.model : selector.benchmark) = value.get<std::string>();
      } else {
        return error_response(400, key + ": unknown field");
      }
    }
  }
  if (c.state == CampaignState::kCancelled) {
    return error_response(409,
                          "campaign " + c.id + " is cancelled; a cancelled campaign is not rerun");
  }
  // A rerun puts shards back in the queue of the campaign's owner, so it counts against the same
  // quota as a submit; otherwise submit, finish, rerun would grow the queue without bound.
  int64_t selected = 0;
  for (const auto& g : c.groups) {
    if (selector.model && c.spec.models[g.model].name != *selector.model) continue;
    if (selector.benchmark && c.spec.benchmarks[g.benchmark].name != *selector.benchmark) continue;
    for (const auto& shard : g.shards) {
      selected += selector.failed_only ? shard.state == ShardState::kFailed : is_final(shard.state);
    }
  }
  const std::string owner = quota_owner(c.submitted_by, c.submitted_from);
  if (const int64_t unfinished = unfinished_shards_of(owner);
      selected > 0 && unfinished + selected > options_.max_pending_shards_per_user) {
    return refuse(request, principal_of(request), 429,
                  "quota exceeded: " + owner + " has " + std::to_string(unfinished) +
                      " pending or running shards and this rerun adds " + std::to_string(selected) +
                      ", over the limit of " +
                      std::to_string(options_.max_pending_shards_per_user) +
                      " (--max-pending-shards-per-user)",
                  "quota");
  }
  auto requeued = scheduler_.rerun(c.id, selector);
  if (!requeued.ok()) return error_response(400, requeued.error().message);
  const auto principal = principal_of(request);
  std::string detail = "requeued " + std::to_string(requeued.value()) + " shards (" +
                       (selector.failed_only ? "failed" : "all finished");
  if (selector.model) detail += ", model=" + *selector.model;
  if (selector.benchmark) detail += ", benchmark=" + *selector.benchmark;
  audit_.record(scheduler_.batch(), scheduler_.clock().wall_ms(),
                AuditEntry{principal ? std::optional(principal->name) : std::nullopt,
                           request.peer_address, "rerun", c.id, detail + ")"});
  return json_response(200, {{"requeued", requeued.value()}});
}

HttpResponse Api::cancel(const Campaign& c, const HttpRequest& request) {
  if (c.state != CampaignState::kRunning) {
    return error_response(409, "campaign " + c.id + " is already " + to_string(c.state));
  }
  auto cancelled = scheduler_.cancel(c.id);
  if (!cancelled.ok()) return error_response(409, cancelled.error().message);
  const auto principal = principal_of(request);
  audit_.record(
      scheduler_.batch(), scheduler_.clock().wall_ms(),
      AuditEntry{principal ? std::optional(principal->name) : std::nullopt, request.peer_address,
                 "cancel", c.id, "cancelled " + std::to_string(cancelled.value()) + " shards"});
  return json_response(200, {{"cancelled", cancelled.value()}});
}

HttpResponse Api::list_workers(const std::string& query) {
  const auto params = parse_query(query);
  const auto asked = unsigned_query_param(params, "limit", kWorkersPageDefault);
  if (!asked || *asked == 0) return error_response(400, "limit: must be a positive integer");
  const auto limit = static_cast<size_t>(std::min<uint64_t>(*asked, kWorkersPageMax));
  const auto after_it = params.find("after");
  const std::string after = after_it == params.end() ? "" : after_it->second;
  const auto now = scheduler_.clock().now();
  const auto& campaigns = scheduler_.campaigns();
  nlohmann::json list = nlohmann::json::array();
  nlohmann::json next_after = nullptr;
  const auto workers = scheduler_.workers();  // by name
  auto it =
      std::upper_bound(workers.begin(), workers.end(), after,
                       [](const std::string& name, const WorkerInfo* w) { return name < w->name; });
  for (; it != workers.end(); ++it) {
    const WorkerInfo* w = *it;
    if (list.size() == limit) {
      next_after = list.back().at("name");
      break;
    }
    nlohmann::json current = nlohmann::json::array();
    for (const auto& [attempt_id, key] : w->leases) {
      nlohmann::json item = {
          {"attempt_id", attempt_id}, {"shard", key.shard}, {"queued", w->is_queued(attempt_id)}};
      if (auto found = campaigns.find(key.campaign); found != campaigns.end()) {
        const Campaign& c = *found->second;
        const Group& g = c.groups[key.group];
        item["campaign"] = c.id;
        item["model"] = c.spec.models[g.model].name;
        item["benchmark"] = c.spec.benchmarks[g.benchmark].name;
      }
      current.push_back(std::move(item));
    }
    list.push_back({{"name", w->name},
                    {"state", to_string(w->state)},
                    {"slots", w->slots},
                    {"running", w->running()},
                    {"queued", w->queued.size()},
                    {"queue_ahead", w->queue_ahead},
                    {"gpus", w->gpus},
                    {"labels", w->labels},
                    {"last_heartbeat_s", std::chrono::duration<double>(now - w->last_seen).count()},
                    {"shards", current}});
  }
  return json_response(200, {{"workers", list}, {"next_after", next_after}});
}

}  // namespace evald::coordinator
