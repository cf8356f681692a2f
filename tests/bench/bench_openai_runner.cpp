// evald-bench-openai-runner: the built-in openai runner's requests/s against the test
// OpenAI-compatible server (tests/support/openai_test_server.py), next to what that server can
// do at all, measured in the same run by a plain load generator: C++ threads sending the same
// requests, --concurrency at a time, and nothing else; each thread keeps one connection open
// (HttpConnection), as the runner's request lanes do, so that is the server's capacity. The
// load generator also runs once with a new connection per request (http_request), which is what
// the runner did before it kept connections alive. The runner's
// number includes everything it does per request (building the body, parsing the answer,
// scoring, samples); the target is to be within 10% of the server's capacity. Also prints the
// runner's CPU time per 1,000 requests (getrusage of this process: only the runner runs in it
// during its phase; the server is another process).
//
// Not a ctest test: the numbers depend on the machine and its load. Run it by hand:
//   build/bin/evald-bench-openai-runner --requests 4000 --concurrency 64 --rounds 3
#include <poll.h>
#include <sys/resource.h>

#include <atomic>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/http_client.hpp"
#include "common/http_connection.hpp"
#include "tests/support/process.hpp"
#include "tests/support/test_support.hpp"
#include "worker/openai_runner.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double cpu_seconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

std::string prompt_of(int64_t i) {
  return "Question " + std::to_string(i) + ": what is " + std::to_string(i % 97) + "+" +
         std::to_string(i % 89) + "?\nAnswer:";
}

// The server's capacity: `concurrency` threads, each sending the runner's request shape, on a
// connection it keeps open (keep_alive) or on a new connection per request.
double capacity(const evald::HttpUrl& url, int64_t requests, int concurrency, bool keep_alive) {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> failed{0};
  const auto started = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&] {
      evald::HttpConnection connection(url);
      while (true) {
        const int64_t i = next.fetch_add(1);
        if (i >= requests) return;
        const json body = {
            {"model", "bench"}, {"prompt", prompt_of(i)}, {"max_tokens", 16}, {"temperature", 0}};
        auto response = keep_alive ? connection.request("POST", "/completions", body.dump(),
                                                        std::chrono::seconds(60))
                                   : evald::http_request(url, "POST", "/completions", body.dump(),
                                                         std::chrono::seconds(60));
        if (!response || response->status != 200) ++failed;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  if (failed > 0) std::cerr << "load generator: " << failed << " requests failed\n";
  return static_cast<double>(requests) / seconds;
}

struct RunnerRun {
  double requests_per_s = 0;
  double cpu_ms_per_1000 = 0;
  bool ok = false;
};

RunnerRun runner(const std::string& endpoint, const std::filesystem::path& data, int64_t requests,
                 int concurrency) {
  evald::worker::OpenAiRunner runner(nullptr);
  evald::worker::OpenAiJob job;
  job.identity.attempt_id = 1;
  job.endpoint = endpoint;
  job.model = "bench";
  job.start = 0;
  job.end = requests;
  job.params = {
      {"data", data.string()}, {"format", "generate"}, {"match", "number"}, {"max_tokens", 16}};
  job.max_concurrency = concurrency;
  job.request_timeout_s = 60;
  const double cpu_before = cpu_seconds();
  const auto started = Clock::now();
  runner.start(std::move(job));
  std::vector<evald::protocol::ShardResult> finished;
  while (finished.empty()) {
    pollfd fd{runner.wake_fd(), POLLIN, 0};
    ::poll(&fd, 1, 1000);
    finished = runner.take_finished();
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  const double cpu = cpu_seconds() - cpu_before;
  if (!finished[0].ok) std::cerr << "runner failed: " << finished[0].error << "\n";
  return RunnerRun{static_cast<double>(requests) / seconds,
                   cpu * 1000.0 / static_cast<double>(requests) * 1000.0, finished[0].ok};
}

}  // namespace

int main(int argc, char** argv) {
  namespace po = boost::program_options;
  int64_t requests = 4000;
  int concurrency = 64;
  int rounds = 3;
  po::options_description options("evald-bench-openai-runner");
  options.add_options()("requests", po::value(&requests)->default_value(4000),
                        "requests per phase")(
      "concurrency", po::value(&concurrency)->default_value(64), "requests in flight")(
      "rounds", po::value(&rounds)->default_value(3), "capacity/runner pairs");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, options), vm);
  po::notify(vm);

  evald::testing::TempDir dir("evald-bench-openai");
  const auto data = dir.path() / "data.jsonl";
  {
    std::ofstream out(data);
    for (int64_t i = 0; i < requests; ++i) {
      out << json{{"prompt", prompt_of(i)}, {"answer", std::to_string(i % 97 + i % 89)}}.dump()
          << "\n";
    }
  }
  evald::testing::ProcessOptions server_options;
  server_options.executable = "/usr/bin/python3";
  const int port = evald::testing::free_loopback_port();
  server_options.args = {evald::testing::openai_test_server_script().string(), "--port",
                         std::to_string(port), "--model", "bench"};
  server_options.log_file = dir.path() / "server.log";
  evald::testing::ChildProcess server(server_options);
  evald::HttpUrl url;
  url.host = "127.0.0.1";
  url.port = static_cast<unsigned short>(port);
  url.base_path = "/v1";
  for (int i = 0; i < 100; ++i) {
    evald::HttpUrl health = url;
    health.base_path = "";
    auto response = evald::http_request(health, "GET", "/health", "", std::chrono::seconds(1));
    if (response && response->status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::printf("requests=%lld concurrency=%d (test server, one Python process)\n",
              static_cast<long long>(requests), concurrency);
  for (int round = 0; round < rounds; ++round) {
    const double server_rps = capacity(url, requests, concurrency, /*keep_alive=*/true);
    const double fresh_rps = capacity(url, requests, concurrency, /*keep_alive=*/false);
    const auto run =
        runner("http://127.0.0.1:" + std::to_string(port) + "/v1", data, requests, concurrency);
    std::printf(
        "round %d: server capacity %.0f req/s (a new connection per request: %.0f), runner %.0f "
        "req/s (%.1f%% of capacity), runner CPU %.0f ms per 1000 requests%s\n",
        round + 1, server_rps, fresh_rps, run.requests_per_s,
        100.0 * run.requests_per_s / server_rps, run.cpu_ms_per_1000,
        run.ok ? "" : " (runner FAILED)");
  }
  return 0;
}
