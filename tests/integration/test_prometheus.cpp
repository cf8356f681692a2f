// The shipped observability files against a real Prometheus (the Debian package's
// /usr/bin/prometheus): it scrapes a live coordinator and two workers every second while a
// campaign runs, loads deploy/prometheus/alerts.yml, and then every query of the Grafana
// dashboard (deploy/grafana/dashboards/evald.json) must parse and return series, every alert
// expression must parse, and the template variables must offer the campaign and its models.
// Fails, naming the package, where Prometheus is not installed (scripts/setup.sh installs it).
#include <catch2/catch.hpp>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "common/http_client.hpp"
#include "tests/integration/integration.hpp"

using evald::testing::ClusterOptions;
using evald::testing::TestBenchmark;
using evald::testing::TestCluster;
using evald::testing::TestModel;
using evald::testing::wait_until;
using namespace std::chrono_literals;

namespace {

const std::filesystem::path kPrometheus = "/usr/bin/prometheus";
// What the test puts in for Grafana's interval variables: ten 1 s scrapes.
constexpr const char* kRateInterval = "10s";

std::filesystem::path source_path(const std::string& relative) {
  return std::filesystem::path(EVALD_SOURCE_DIR) / relative;
}

std::string url_encode(const std::string& text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const unsigned char c : text) {
    if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// A Prometheus server on 127.0.0.1 with a temp TSDB, killed (with its children) on destruction.
class Prometheus {
 public:
  Prometheus(const std::filesystem::path& config, const std::filesystem::path& dir) {
    constexpr int kAttempts = 5;
    for (int attempt = 1; attempt <= kAttempts; ++attempt) {
      port_ = evald::testing::free_loopback_port();  // Prometheus refuses port 0
      const auto data = dir / ("tsdb-" + std::to_string(attempt));
      log_ = dir / ("prometheus-" + std::to_string(attempt) + ".log");
      evald::testing::ProcessOptions options;
      options.executable = kPrometheus;
      options.args = {"--config.file=" + config.string(), "--storage.tsdb.path=" + data.string(),
                      "--web.listen-address=127.0.0.1:" + std::to_string(port_),
                      "--log.level=warn"};
      options.log_file = log_;
      process_ = std::make_unique<evald::testing::ChildProcess>(std::move(options));
      const bool ready = wait_until(
          [&] {
            if (!process_->running()) return true;
            const auto r = get("/-/ready");
            return r.has_value() && r->status == 200;
          },
          20s, 50ms);
      if (ready && process_->running()) return;
      const auto log = evald::testing::file_tail(log_, 4000);
      if (log.find("address already in use") == std::string::npos || attempt == kAttempts) {
        FAIL("prometheus did not become ready (port " << port_ << "):\n" << log);
      }
      process_->kill();  // the port was taken meanwhile: try another
    }
  }

  std::optional<evald::HttpResponse> get(const std::string& target) const {
    const evald::HttpUrl url{"127.0.0.1", static_cast<unsigned short>(port_), ""};
    auto response = evald::http_request(url, "GET", target, "", 10s);
    if (!response.ok()) return std::nullopt;
    return response.value();
  }

  // GET an API path; the JSON body, whatever the status (errors come back as JSON too).
  nlohmann::json api(const std::string& target) const {
    const auto response = get(target);
    INFO("GET " << target);
    REQUIRE(response.has_value());
    auto body = nlohmann::json::parse(response->body, nullptr, false);
    INFO("status " << response->status << " body " << response->body);
    REQUIRE(body.is_object());
    return body;
  }

  nlohmann::json query(const std::string& expr) const {
    return api("/api/v1/query?query=" + url_encode(expr));
  }

  // The value of a query that yields one series.
  double scalar(const std::string& expr) const {
    const auto reply = query(expr);
    INFO(expr << " -> " << reply.dump());
    REQUIRE(reply.at("status") == "success");
    REQUIRE(reply.at("data").at("result").size() == 1);
    return std::stod(reply["data"]["result"][0]["value"][1].get<std::string>());
  }

  std::string log_tail() const { return evald::testing::file_tail(log_, 4000); }

 private:
  int port_ = 0;
  std::filesystem::path log_;
  std::unique_ptr<evald::testing::ChildProcess> process_;
};

// Grafana's variables as the test sets them; a '$' left over is a variable the test does not
// know, which the dashboard must not use.
std::string substitute(std::string expr, const std::string& campaign, const std::string& model) {
  const std::vector<std::pair<std::string, std::string>> variables = {
      {"${campaign}", campaign},
      {"$campaign", campaign},
      {"${model}", model},
      {"$model", model},
      {"$__rate_interval", kRateInterval},
      {"$__interval", "5s"},
      {"$__range", "1m"}};
  for (const auto& [name, value] : variables) {
    for (auto at = expr.find(name); at != std::string::npos; at = expr.find(name, at)) {
      expr.replace(at, name.size(), value);
      at += value.size();
    }
  }
  return expr;
}

struct DashboardQuery {
  std::string panel;
  std::string ref;
  std::string expr;
};

void collect_queries(const nlohmann::json& panels, std::vector<DashboardQuery>& out) {
  for (const auto& panel : panels) {
    for (const auto& target : panel.value("targets", nlohmann::json::array())) {
      out.push_back({panel.value("title", "?"), target.value("refId", "?"),
                     target.at("expr").get<std::string>()});
    }
    if (panel.contains("panels")) collect_queries(panel["panels"], out);  // collapsed rows
  }
}

struct QueryProblems {
  std::string errors;  // queries Prometheus refused: these never get better
  std::string empty;   // queries that returned no series (yet)
};

QueryProblems check_queries(const Prometheus& prometheus,
                            const std::vector<DashboardQuery>& queries, const std::string& campaign,
                            const std::string& model) {
  QueryProblems problems;
  for (const auto& q : queries) {
    const auto expr = substitute(q.expr, campaign, model);
    const auto reply = prometheus.query(expr);
    const auto where = "panel '" + q.panel + "' " + q.ref + ": " + expr;
    if (reply.value("status", "") != "success") {
      problems.errors += where + " -> " + reply.dump() + "\n";
    } else if (reply.at("data").at("result").empty()) {
      problems.empty += where + " -> no series\n";
    }
  }
  return problems;
}

}  // namespace

TEST_CASE("Prometheus scrapes the cluster and every dashboard query and alert evaluates",
          "[integration][prometheus]") {
  if (!std::filesystem::exists(kPrometheus)) {
    FAIL(kPrometheus.string() << " is missing (apt-get install prometheus; scripts/setup.sh does)");
  }
  const auto dashboard = nlohmann::json::parse(
      evald::testing::read_file(source_path("deploy/grafana/dashboards/evald.json")));
  const auto alerts_file = source_path("deploy/prometheus/alerts.yml");
  std::vector<DashboardQuery> queries;
  collect_queries(dashboard.at("panels"), queries);
  REQUIRE(queries.size() >= 20);
  for (const auto& q : queries) {
    INFO("panel '" << q.panel << "' " << q.ref << ": " << q.expr);
    CHECK(substitute(q.expr, "c", "m").find('$') == std::string::npos);
  }

  ClusterOptions options;
  options.workers = 0;
  options.dir_prefix = "evald-prometheus";
  TestCluster cluster(options);
  std::vector<std::string> worker_targets;
  for (int i = 0; i < 2; ++i) {
    const std::string address =
        evald::testing::worker_metrics_address(evald::testing::add_metrics_worker(cluster));
    worker_targets.push_back(address);
  }
  const auto api = cluster.api();
  api.wait_for_workers(2);

  const auto config = cluster.dir() / "prometheus.yml";
  std::ofstream(config) << "global:\n"
                        << "  scrape_interval: 1s\n"
                        << "  scrape_timeout: 1s\n"
                        << "  evaluation_interval: 1s\n"
                        << "rule_files:\n"
                        << "  - " << alerts_file.string() << "\n"
                        << "scrape_configs:\n"
                        << "  - job_name: evald-coordinator\n"
                        << "    static_configs:\n"
                        << "      - targets: ['" << cluster.coordinator().http_address() << "']\n"
                        << "  - job_name: evald-worker\n"
                        << "    static_configs:\n"
                        << "      - targets: ['" << worker_targets[0] << "', '" << worker_targets[1]
                        << "']\n";
  Prometheus prometheus(config, cluster.dir());

  // 2 models x 2 benchmarks x 15 shards of 1.5 s on 4 slots: ~22 s, much longer than the
  // checks take (the campaign is cancelled after them). Shard 0 of b1 fails at once, twice per
  // model (max_attempts 2), so the failure series have something to show.
  const nlohmann::json sleepy = {
      {"sleep_ms", 1500}, {"sleep_ms_shards", {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}}};
  auto failing = sleepy;
  failing["fail_shards"] = nlohmann::json::array({0});
  const std::vector<TestModel> models = {{"m1"}, {"m2"}};
  const std::vector<TestBenchmark> benchmarks = {{"b1", 150, 10, 0, "accuracy", true, failing},
                                                 {"b2", 150, 10, 0, "accuracy", true, sleepy}};
  const auto id = api.submit(
      evald::testing::make_spec("observed", models, benchmarks, evald::testing::exec_runner(), 2));

  // Wait until Prometheus has several scrapes of all three targets and the campaign has both
  // successes and failures in it; then every panel must show something.
  const bool scraped = wait_until(
      [&] {
        const auto up =
            prometheus.query("count(up == 1) == 3 and min(count_over_time(up[1m])) >= 4");
        const auto done =
            prometheus.query("sum(evald_shards_completed_total{campaign=\"" + id +
                             "\"}) > 0 and sum(evald_shard_attempts_failed_total) > 0");
        return !up["data"]["result"].empty() && !done["data"]["result"].empty();
      },
      25s, 200ms);
  INFO("prometheus log:\n" << prometheus.log_tail());
  REQUIRE(scraped);

  // Every dashboard query parses; all return series once the rate windows have filled.
  QueryProblems problems;
  wait_until(
      [&] {
        problems = check_queries(prometheus, queries, id, "m1");
        return !problems.errors.empty() || problems.empty.empty();
      },
      15s, 500ms);
  CHECK(problems.errors == "");
  CHECK(problems.empty == "");
  // ... and that was while the campaign was running, as a dashboard user would see it.
  CHECK(api.campaign(id).at("state") == "running");

  // Numbers Prometheus holds must be the cluster's.
  CHECK(prometheus.scalar("sum(evald_benchmark_shards{campaign=\"" + id + "\",kind=\"total\"})") ==
        60);
  CHECK(prometheus.scalar("count(up{job=\"evald-worker\"} == 1)") == 2);
  CHECK(prometheus.scalar("count(up{job=\"evald-coordinator\"} == 1)") == 1);
  CHECK(prometheus.scalar("sum(evald_worker_slots_configured)") == 4);

  // Template variables: label_values(SELECTOR, LABEL) must offer this campaign and its models.
  const std::regex label_values(R"(^label_values\((.*),\s*(\w+)\)$)");
  size_t variables = 0;
  for (const auto& variable : dashboard.at("templating").at("list")) {
    const auto& q = variable.at("query");
    const std::string text =
        q.is_object() ? q.at("query").get<std::string>() : q.get<std::string>();
    std::smatch match;
    INFO("variable " << variable.value("name", "?") << ": " << text);
    REQUIRE(std::regex_match(text, match, label_values));
    const auto selector = substitute(match[1].str(), id, "m1");
    const auto reply = prometheus.api("/api/v1/label/" + match[2].str() +
                                      "/values?match[]=" + url_encode(selector));
    INFO(reply.dump());
    REQUIRE(reply.at("status") == "success");
    const auto& values = reply.at("data");
    if (variable.at("name") == "campaign") {
      CHECK(std::find(values.begin(), values.end(), id) != values.end());
    } else if (variable.at("name") == "model") {
      CHECK(values == nlohmann::json::array({"m1", "m2"}));
    }
    ++variables;
  }
  CHECK(variables == 2);

  // Every alert of alerts.yml was loaded, evaluates without error, and its expression parses.
  const auto alert_count = [&] {
    const auto text = evald::testing::read_file(alerts_file);
    size_t count = 0;
    for (auto at = text.find("- alert:"); at != std::string::npos;
         at = text.find("- alert:", at + 1)) {
      ++count;
    }
    return count;
  }();
  REQUIRE(alert_count >= 5);
  nlohmann::json rules = nlohmann::json::array();
  const bool evaluated = wait_until(
      [&] {
        rules = nlohmann::json::array();
        const auto reply = prometheus.api("/api/v1/rules");
        for (const auto& group : reply.at("data").at("groups")) {
          for (const auto& rule : group.at("rules")) rules.push_back(rule);
        }
        return std::all_of(rules.begin(), rules.end(),
                           [](const nlohmann::json& r) { return r.value("health", "") == "ok"; });
      },
      10s, 200ms);
  INFO("rules: " << rules.dump());
  CHECK(evaluated);
  CHECK(rules.size() == alert_count);
  for (const auto& rule : rules) {
    INFO("alert " << rule.value("name", "?"));
    CHECK(rule.value("type", "") == "alerting");
    const auto reply = prometheus.query(rule.at("query").get<std::string>());
    INFO(reply.dump());
    CHECK(reply.value("status", "") == "success");
  }

  // Stop the campaign rather than wait for it: the test has seen what it needs.
  api.post("/v1/campaigns/" + id + "/cancel", nlohmann::json::object());
  api.wait_for_state(id, "cancelled", 20s);
}
