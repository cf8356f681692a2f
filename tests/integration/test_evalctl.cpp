// evalctl, the binary, against a live cluster: what a user types and what a script parses (exit
// codes, ids, the csv/markdown/json leaderboards, the failed-shard listing, the worker list).
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>
#include <fstream>
#include <regex>
#include <sstream>

#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;

const std::vector<TestModel> kModels = {
    {"m-alpha", 1, 5, {}},
    {"m-beta", 2, 3, {}},
    {"m-gamma", 3, 4, {}},
};
const std::vector<TestBenchmark> kBenchmarks = {
    {"b-one", 40, 15, 0, "accuracy", true, {}},
    {"b-two", 33, 10, 3, "accuracy", true, {}},
};

CommandResult evalctl(const std::vector<std::string>& args,
                      const std::vector<std::pair<std::string, std::string>>& env = {}) {
  return run_command(bin_dir() / "evalctl", args, 30s, env);
}

std::filesystem::path write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

std::vector<std::string> split(const std::string& line, char separator) {
  std::vector<std::string> fields;
  std::istringstream in(line);
  for (std::string field; std::getline(in, field, separator);) fields.push_back(field);
  return fields;
}

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(' ');
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(' ') - first + 1);
}

TEST_CASE("evalctl: submit, watch and the leaderboard in every format", "[integration]") {
  TestCluster cluster;
  const auto api = cluster.api();
  const std::string server = cluster.coordinator().http_url();
  const auto spec_file =
      write_file(cluster.dir() / "spec.json", make_spec("cli", kModels, kBenchmarks).dump(2));

  const auto submitted = evalctl({"--server", server, "submit", spec_file.string()});
  INFO("submit stdout: " << submitted.out << " stderr: " << submitted.err);
  REQUIRE(submitted.exit_code == 0);
  REQUIRE(std::regex_match(submitted.out, std::regex("c[0-9]{6}\n")));
  const std::string id = submitted.out.substr(0, submitted.out.size() - 1);

  const auto watched = evalctl({"--server", server, "watch", id, "--interval-ms", "50"});
  INFO("watch stdout: " << watched.out << " stderr: " << watched.err);
  CHECK(watched.exit_code == 0);
  CHECK_THAT(watched.out, Catch::Contains("campaign " + id + " succeeded"));
  CHECK(api.campaign(id).at("state") == "succeeded");

  const auto expected = expected_leaderboard(kModels, kBenchmarks);

  SECTION("csv: the header and one line per model, in rank order, exact values") {
    const auto csv = evalctl({"--server", server, "results", id, "--format", "csv"});
    INFO("csv: " << csv.out << csv.err);
    REQUIRE(csv.exit_code == 0);
    const auto lines = lines_of(csv.out);
    REQUIRE(lines.size() == 1 + kModels.size());
    CHECK(lines[0] == "rank,model,average,firsts,b-one,b-two");
    for (size_t i = 0; i < expected.size(); ++i) {
      const auto fields = split(lines[i + 1], ',');
      REQUIRE(fields.size() == 4 + kBenchmarks.size());
      CHECK(fields[0] == std::to_string(expected[i].rank));
      CHECK(fields[1] == expected[i].model);
      CHECK(std::stod(fields[2]) == Approx(expected[i].average).epsilon(1e-12));
      CHECK(fields[3] == std::to_string(expected[i].firsts));
      CHECK(std::stod(fields[4]) == Approx(expected[i].scores.at("b-one")).epsilon(1e-12));
      CHECK(std::stod(fields[5]) == Approx(expected[i].scores.at("b-two")).epsilon(1e-12));
    }
  }

  SECTION("markdown: a GitHub table with one row per model") {
    const auto md = evalctl({"--server", server, "results", id, "--format", "markdown"});
    INFO("markdown: " << md.out << md.err);
    REQUIRE(md.exit_code == 0);
    const auto lines = lines_of(md.out);
    REQUIRE(lines.size() == 2 + kModels.size());
    CHECK(lines[0] == "| rank | model | average | firsts | b-one | b-two |");
    CHECK(lines[1].find("---") != std::string::npos);
    for (size_t i = 0; i < expected.size(); ++i) {
      const auto cells = split(lines[i + 2], '|');
      REQUIRE(cells.size() >= 5);
      CHECK(trim(cells[1]) == std::to_string(expected[i].rank));
      CHECK(trim(cells[2]) == expected[i].model);
    }
  }

  SECTION("--json is the API's JSON; the table names every model") {
    const auto as_json = evalctl({"--server", server, "--json", "results", id});
    REQUIRE(as_json.exit_code == 0);
    const auto parsed = json::parse(as_json.out, nullptr, false);
    REQUIRE_FALSE(parsed.is_discarded());
    CHECK(parsed == api.results(id));

    const auto table = evalctl({"--server", server, "results", id});
    REQUIRE(table.exit_code == 0);
    for (const auto& m : kModels) CHECK_THAT(table.out, Catch::Contains(m.name));

    const auto status = evalctl({"--server", server, "--json", "status", id});
    REQUIRE(status.exit_code == 0);
    CHECK(json::parse(status.out).at("state") == "succeeded");
    // $EVALD_SERVER is the default server.
    const auto from_env = evalctl({"status"}, {{"EVALD_SERVER", server}});
    CHECK(from_env.exit_code == 0);
    CHECK_THAT(from_env.out, Catch::Contains(id));
  }

  SECTION("workers lists both workers") {
    const auto workers = evalctl({"--server", server, "workers"});
    INFO("workers: " << workers.out << workers.err);
    REQUIRE(workers.exit_code == 0);
    CHECK_THAT(workers.out, Catch::Contains("w1"));
    CHECK_THAT(workers.out, Catch::Contains("w2"));
    CHECK_THAT(workers.out, Catch::Contains("connected"));
    const auto as_json = evalctl({"--server", server, "--json", "workers"});
    REQUIRE(as_json.exit_code == 0);
    CHECK(json::parse(as_json.out).at("workers").size() == 2);
  }
}

TEST_CASE("evalctl: a failing shard makes watch exit 1 and shows in shards --state failed",
          "[integration]") {
  TestCluster cluster;
  const std::string server = cluster.coordinator().http_url();
  auto benchmarks = kBenchmarks;
  benchmarks[1].extra = {{"fail_shards", {2}}};
  const auto spec_file =
      write_file(cluster.dir() / "failing.json",
                 make_spec("failing", kModels, benchmarks, exec_runner(), 2).dump());
  const auto submitted = evalctl({"--server", server, "submit", spec_file.string()});
  REQUIRE(submitted.exit_code == 0);
  const std::string id = trim(submitted.out.substr(0, submitted.out.find('\n')));

  const auto watched = evalctl({"--server", server, "watch", id, "--interval-ms", "50"});
  INFO("watch stdout: " << watched.out << " stderr: " << watched.err);
  CHECK(watched.exit_code == 1);
  CHECK_THAT(watched.out, Catch::Contains("campaign " + id + " failed"));

  const auto failed = evalctl({"--server", server, "shards", id, "--state", "failed"});
  INFO("shards: " << failed.out << failed.err);
  REQUIRE(failed.exit_code == 0);
  const auto lines = lines_of(failed.out);
  // The header and one row per model: shard 2 of b-two fails for every model.
  REQUIRE(lines.size() == 1 + kModels.size());
  for (size_t i = 1; i < lines.size(); ++i) {
    CHECK_THAT(lines[i], Catch::Contains("b-two"));
    CHECK_THAT(lines[i], Catch::Contains("failed"));
    CHECK_THAT(lines[i], Catch::Contains("exit code 3"));
    CHECK_THAT(lines[i], Catch::Contains("injected failure"));
  }
  const auto as_json = evalctl({"--server", server, "--json", "shards", id, "--state", "failed"});
  REQUIRE(as_json.exit_code == 0);
  const auto failed_shards = json::parse(as_json.out);
  for (const auto& s : failed_shards.at("shards")) {
    CHECK(s.at("index") == 2);
    CHECK(s.at("attempts") == 2);
    CHECK_THAT(s.at("last_error").get<std::string>(), Catch::Contains("always fails"));
  }
}

TEST_CASE("evalctl: usage errors exit 2, an invalid spec exits 1 without a request",
          "[integration]") {
  TempDir dir("evald-evalctl");
  // A listening socket nobody accepts on: any connection attempt would sit in its backlog.
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor listener(
      io, boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  const std::string server = "http://127.0.0.1:" + std::to_string(listener.local_endpoint().port());

  auto spec = make_spec("broken", kModels, kBenchmarks);
  spec["benchmarks"][1]["shard_size"] = -5;
  const auto broken = write_file(dir.path() / "broken.json", spec.dump());
  const auto refused = evalctl({"--server", server, "submit", broken.string()});
  CHECK(refused.exit_code == 1);
  CHECK_THAT(refused.err, Catch::Contains("benchmarks[1].shard_size"));
  CHECK(refused.out.empty());
  listener.non_blocking(true);
  boost::system::error_code ec;
  boost::asio::ip::tcp::socket peer(io);
  listener.accept(peer, ec);
  CHECK(ec == boost::asio::error::would_block);  // evalctl never connected

  const auto missing = evalctl({"--server", server, "submit", (dir.path() / "none.json").string()});
  CHECK(missing.exit_code == 1);
  CHECK_THAT(missing.err, Catch::Contains("none.json"));

  CHECK(evalctl({"--no-such-flag", "status"}).exit_code == 2);
  CHECK(evalctl({"--server", server, "frobnicate"}).exit_code == 2);
  CHECK(evalctl({"--server", server, "results", "c000001", "--format", "xml"}).exit_code == 2);
  CHECK(evalctl({"--server", server, "shards", "c000001", "--state", "bogus"}).exit_code == 2);
  CHECK(evalctl({"--server", server, "watch"}).exit_code == 2);
  CHECK(evalctl({}).exit_code == 2);
  const auto help = evalctl({"--help"});
  CHECK(help.exit_code == 0);
  CHECK_THAT(help.out, Catch::Contains("submit"));
}

TEST_CASE("evalctl: cancel stops a running campaign", "[integration]") {
  TestCluster cluster;
  const auto api = cluster.api();
  const std::string server = cluster.coordinator().http_url();
  auto benchmarks = kBenchmarks;
  benchmarks[0].extra = {{"hang_shards", {0, 1}}};
  const auto id = api.submit(make_spec("hanging", kModels, benchmarks));
  // Wait until the hanging shards hold slots, then cancel them.
  REQUIRE(wait_until(
      [&] { return api.campaign(id).at("shards").at("running").get<int64_t>() >= 2; }, 20s));
  const auto cancelled = evalctl({"--server", server, "cancel", id});
  INFO("cancel: " << cancelled.out << cancelled.err);
  CHECK(cancelled.exit_code == 0);
  CHECK_THAT(cancelled.out, Catch::Contains("cancelled"));
  const auto state = api.wait_for_state(id, "cancelled", 10s);
  CHECK(state.at("shards").at("running") == 0);
  CHECK(state.at("shards").at("pending") == 0);
  // The workers got their slots back: a new campaign runs to completion.
  const auto next = api.submit(make_spec("after-cancel", kModels, kBenchmarks));
  api.wait_for_state(next, "succeeded", 30s);
  check_results(api.results(next), kModels, kBenchmarks);
  // A second cancel does not fit the campaign's state.
  CHECK(evalctl({"--server", server, "cancel", id}).exit_code == 1);
}

TEST_CASE("evalctl: status says why a model's shards cannot run on any connected worker",
          "[integration]") {
  TestCluster cluster;  // two workers without GPUs
  const auto api = cluster.api();
  const std::string server = cluster.coordinator().http_url();
  json spec = make_spec("needs-gpus", kModels, kBenchmarks);
  spec["models"][1]["resources"] = {{"gpus", 2}, {"labels", {{"gpu", "h100"}}}};
  const auto id = api.submit(spec);
  // The other models finish; m-beta's shards stay pending, and the campaign says why.
  const int64_t beta_shards = total_shards({kModels[1]}, kBenchmarks);
  REQUIRE(wait_until(
      [&] {
        const json c = api.campaign(id);
        return c.at("shards").at("pending") == beta_shards && c.at("shards").at("running") == 0 &&
               c.contains("unschedulable");
      },
      30s));
  const auto status = evalctl({"--server", server, "status", id});
  INFO("status: " << status.out << status.err);
  REQUIRE(status.exit_code == 0);
  CHECK_THAT(status.out, Catch::Contains("unschedulable"));
  CHECK_THAT(status.out, Catch::Contains("m-beta needs 2 GPUs"));
  CHECK_THAT(status.out, Catch::Contains("gpu=h100"));
  const auto listed = evalctl({"--server", server, "status"});
  INFO("status (all): " << listed.out << listed.err);
  REQUIRE(listed.exit_code == 0);
  CHECK_THAT(listed.out, Catch::Contains("m-beta needs 2 GPUs"));
  CHECK(api.campaign(id).at("state") == "running");
}

}  // namespace
