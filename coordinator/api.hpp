// Api: the coordinator's HTTP API (SPEC.md "HTTP API") on top of the Scheduler. It runs on the
// core thread, which owns the scheduler, so it reads and changes state without locks.
// Mutating requests (submit, rerun, cancel) are handled before the turn's commit and answered
// after it; read requests are handled after the commit, so they never show uncommitted state.
#pragma once

#include <string>

#include "common/http_server.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/scheduler.hpp"

namespace evald::coordinator {

class Api {
 public:
  Api(Scheduler& scheduler, Metrics& metrics);

  static bool is_mutation(const HttpRequest& request) { return request.method == "POST"; }
  HttpResponse handle(const HttpRequest& request);

 private:
  HttpResponse route(const HttpRequest& request, std::string& route_name);
  HttpResponse submit(const HttpRequest& request);
  HttpResponse list_campaigns();
  HttpResponse get_campaign(const Campaign& c);
  HttpResponse get_shards(const Campaign& c, const std::string& query);
  HttpResponse get_results(const Campaign& c);
  HttpResponse rerun(const Campaign& c, const HttpRequest& request);
  HttpResponse cancel(const Campaign& c);
  HttpResponse list_workers();
  nlohmann::json campaign_json(const Campaign& c) const;

  Scheduler& scheduler_;
  Metrics& metrics_;
};

// "2026-11-25T06:00:00Z" for milliseconds since the epoch.
std::string rfc3339_utc(int64_t epoch_ms);

}  // namespace evald::coordinator
