// Fuzz target: the coordinator's HTTP request path. Raw bytes go through Beast's request parser
// with the limits the server sets (common/http_server.cpp), and every request that parses goes to
// the real Api (coordinator/api.cpp) on a real Scheduler and RocksDB Store, handled the way the
// core thread does: mutations before the turn's commit, reads after it. An input may hold several
// pipelined requests, as a keep-alive connection does.
//
// Why in-process and not through HttpServer: the server's own code is sockets and timers; the
// parsing and everything after it is what untrusted bytes reach, and calling it directly runs
// thousands of requests a second instead of tens.
//
// Checks: the Api never answers 500 (that is a bug or a missing validation), every JSON response
// is valid JSON, and every status is one HTTP knows.
#include <spdlog/spdlog.h>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.hpp"
#include "common/http_server.hpp"
#include "common/spec.hpp"
#include "coordinator/api.hpp"
#include "coordinator/metrics.hpp"
#include "coordinator/scheduler.hpp"
#include "coordinator/server.hpp"
#include "coordinator/store.hpp"
#include "tests/fuzz/fuzz_support.hpp"

namespace {

namespace http = boost::beast::http;

// Mirrors kHeaderLimitBytes in common/http_server.cpp (file-local there).
constexpr uint32_t kHeaderLimitBytes = 64 * 1024;
// More pipelined requests than this in one input add nothing the first ones did not cover.
constexpr int kMaxRequestsPerInput = 8;

// The coordinator for the whole run (see LLVMFuzzerInitialize). State carries over between
// inputs, as in a real coordinator: a campaign submitted by one input can be read by the next.
struct Coordinator {
  evald::fuzz::ScratchDir dir{"evald-fuzz-http"};
  evald::ManualClock clock;
  evald::coordinator::Metrics metrics;
  std::unique_ptr<evald::coordinator::Store> store;
  std::unique_ptr<evald::coordinator::Scheduler> scheduler;
  std::unique_ptr<evald::coordinator::Api> api;

  // The end of a core turn (the HTTP requests of this input are the turn's operations).
  void commit() {
    // No worker is connected; what would be sent to one is dropped.
    auto committed =
        scheduler->end_turn([](const std::string&, const evald::protocol::Message&) {});
    if (!committed.ok()) evald::fuzz::fail("store commit failed: " + committed.error().message);
    scheduler->check_invariants();  // throws, which the fuzzer reports, when one is broken
  }
};
Coordinator* instance = nullptr;

void check_response(const evald::HttpRequest& request, const evald::HttpResponse& response) {
  using evald::fuzz::check;
  if (response.status == 500) {
    evald::fuzz::fail("Api answered 500 to " + request.method + " " + request.target + ": " +
                      response.body);
  }
  check(response.status >= 200 && response.status <= 599, "status out of range");
  if (response.content_type == "application/json") {
    check(nlohmann::json::accept(response.body), "a JSON response is not JSON");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  using namespace evald;
  using namespace evald::coordinator;
  spdlog::set_level(spdlog::level::off);
  instance = new Coordinator;
  auto opened = Store::open(instance->dir.path() / "db");
  if (!opened.ok()) fuzz::fail("cannot open the store: " + opened.error().message);
  instance->store = std::move(opened.value());
  instance->scheduler = std::make_unique<Scheduler>(*instance->store, instance->clock,
                                                    instance->metrics, SchedulerOptions{});
  if (auto recovered = instance->scheduler->recover(); !recovered.ok()) {
    fuzz::fail("recovery failed: " + recovered.error().message);
  }
  instance->api = std::make_unique<Api>(*instance->scheduler, instance->metrics);

  // One campaign exists from the start (id c000001), so the per-campaign routes find something.
  std::ifstream in(EVALD_SOURCE_DIR "/configs/campaigns/demo.json");
  std::stringstream text;
  text << in.rdbuf();
  auto spec = parse_campaign_spec_text(text.str());
  if (!spec.ok()) fuzz::fail("demo spec does not parse: " + spec.error().message);
  if (!instance->scheduler->submit(spec.value()).ok()) fuzz::fail("demo submit failed");
  instance->commit();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace evald;
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  const size_t max_body_bytes = coordinator::CoordinatorConfig{}.max_body_bytes;

  std::vector<HttpRequest> mutations;
  std::vector<HttpRequest> reads;
  for (int n = 0; n < kMaxRequestsPerInput && !rest.empty(); ++n) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(max_body_bytes);
    parser.header_limit(kHeaderLimitBytes);
    parser.eager(true);
    boost::beast::error_code ec;
    while (!rest.empty() && !parser.is_done()) {
      const size_t used = parser.put(boost::asio::buffer(rest.data(), rest.size()), ec);
      rest.remove_prefix(used);
      if (ec || used == 0) break;
    }
    if (ec == http::error::need_more || (!ec && !parser.is_done())) {
      parser.put_eof(ec);  // the client stopped sending: a complete message or an error
    }
    if (ec || !parser.is_done()) break;  // the server answers 400/413/431 and closes
    auto& message = parser.get();
    HttpRequest request{std::string(message.method_string()), std::string(message.target()),
                        std::move(message.body())};
    (coordinator::Api::is_mutation(request) ? mutations : reads).push_back(std::move(request));
  }

  // One core turn: mutations are handled before the commit, reads after it.
  for (const auto& request : mutations) check_response(request, instance->api->handle(request));
  instance->commit();
  for (const auto& request : reads) check_response(request, instance->api->handle(request));
  return 0;
}
