// Api: the coordinator's HTTP API on top of the Scheduler. It runs on the core thread, which owns
// the scheduler, so it reads and changes state without locks.
// Mutating requests (submit, rerun, cancel) are handled before the turn's commit and answered
// after it; read requests are handled after the commit, so they never show uncommitted state.
//
// Access (docs/security.md): with API tokens every route but /healthz needs a bearer token, and
// the token's role must allow the action (auth.hpp). check_access() runs for every request before
// the turn's commit, so a refusal is in the audit log before the client hears of it; handle()
// then serves what passed. Without tokens everything is open (loopback development mode).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/composite.hpp"
#include "common/http_server.hpp"
#include "coordinator/audit.hpp"
#include "coordinator/auth.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/sample_stats.hpp"
#include "coordinator/scheduler.hpp"

namespace evald::coordinator {

// GET /v1/workers pages: workers by name, `limit` per page (default and cap), so that the answer
// (rendered on the core thread) stays small however big the fleet is.
inline constexpr size_t kWorkersPageDefault = 1000;
inline constexpr size_t kWorkersPageMax = 10000;

// A query parameter that must be an unsigned integer: `fallback` when it is absent or empty,
// nullopt when it is not a number.
std::optional<uint64_t> unsigned_query_param(const std::map<std::string, std::string>& params,
                                             const char* key, uint64_t fallback);

struct ApiOptions {
  // nullptr: no authentication (everything open, submitted_by null).
  std::shared_ptr<const TokenTable> tokens;
  // A submit that would take its principal's pending + running shards above this is refused
  // (429). 10M shards is about 200 MiB of coordinator memory, and still fits the largest real
  // campaigns (hundreds of models x dozens of benchmarks x thousands of shards).
  int64_t max_pending_shards_per_user = 10'000'000;
  size_t max_spec_bytes = 1u << 20;  // a larger spec text gets 413
};

class Api {
 public:
  Api(Scheduler& scheduler, Metrics& metrics, ApiOptions options = {});

  static bool is_mutation(const HttpRequest& request) { return request.method == "POST"; }
  // The refusal (401/403) of a request its sender may not make, already staged in the audit log;
  // nullopt when it may go on to handle(). Core thread, before the turn's commit.
  std::optional<HttpResponse> check_access(const HttpRequest& request);
  HttpResponse handle(const HttpRequest& request);

 private:
  struct Access;
  Access access_for(const HttpRequest& request) const;
  std::optional<HttpResponse> access_refusal(const HttpRequest& request);
  HttpResponse route(const HttpRequest& request, std::string& route_name);
  HttpResponse submit(const HttpRequest& request);
  HttpResponse audit(const std::string& query);
  HttpResponse list_campaigns();
  HttpResponse get_campaign(const Campaign& c);
  HttpResponse get_shards(const Campaign& c, const std::string& query);
  HttpResponse get_results(const Campaign& c);
  // Per-example samples and the paired comparison (api_stats.cpp); `params` is the query.
  using QueryParams = std::map<std::string, std::string>;
  HttpResponse get_samples(const Campaign& c, const QueryParams& params);
  HttpResponse get_compare(const Campaign& c, const QueryParams& params);
  HttpResponse rerun(const Campaign& c, const HttpRequest& request);
  // Quotas (--max-pending-shards-per-user) are kept per token name, or per client address
  // without tokens; a campaign's pending and running shards count against who submitted it.
  static std::string quota_owner(const std::optional<std::string>& token_name,
                                 const std::string& address);
  int64_t unfinished_shards_of(const std::string& owner) const;
  HttpResponse cancel(const Campaign& c, const HttpRequest& request);
  HttpResponse list_workers(const std::string& query);
  nlohmann::json campaign_json(const Campaign& c) const;

  // Results you can defend (api_defend.cpp).
  void add_spec(const Campaign& c, nlohmann::json& out) const;
  HttpResponse get_provenance(const Campaign& c);
  HttpResponse post_scores(const Campaign& c, const HttpRequest& request);
  // The results' models array with "composite" and re-ranked, when the spec has scoring.
  nlohmann::json with_composite(const Campaign& c, nlohmann::json models) const;
  void load_imported_scores();

  std::optional<Principal> principal_of(const HttpRequest& request) const;
  HttpResponse refuse(const HttpRequest& request, const std::optional<Principal>& principal,
                      int status, const std::string& reason, const std::string& metric_reason);

  Scheduler& scheduler_;
  Metrics& metrics_;
  ApiOptions options_;
  AuditLog audit_;
  SampleStats sample_stats_;
  // Imported composite components per campaign key, loaded from the store at start and kept in
  // step with every import (written in the import's batch).
  std::map<uint32_t, ImportedScores> imported_scores_;
};

}  // namespace evald::coordinator
