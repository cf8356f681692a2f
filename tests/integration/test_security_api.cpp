// People and the HTTP API: bearer tokens and roles, submitted_by, the audit log, quotas and spec
// size, protected mode, HTTPS (with and without client certificates) and connection caps, all on
// the real evald-coordinator (and evalctl, evald-worker) on 127.0.0.1.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <thread>

#include "tests/integration/integration.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using evald::HttpClientOptions;
using nlohmann::json;

std::string sha256_hex(const std::string& text) {
  unsigned char digest[32];
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < length; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 0xF];
  }
  return out;
}

// Token text per principal; the file holds only their hashes.
const std::vector<std::pair<std::string, std::string>> kPrincipals = {{"rita", "reader"},
                                                                      {"sam", "submitter"},
                                                                      {"sue", "submitter"},
                                                                      {"olga", "operator"},
                                                                      {"ada", "admin"}};

std::string token_of(const std::string& name) {
  return "tok-" + name + "-0123456789abcdef";
}

HttpClientOptions bearer(const std::string& token) {
  HttpClientOptions client;
  client.bearer_token = token;
  return client;
}

std::filesystem::path write_token_file(const std::filesystem::path& dir) {
  const auto path = dir / "api-tokens";
  std::ofstream out(path);
  out << "# name role sha256(token)\n";
  for (const auto& [name, role] : kPrincipals) {
    out << name << " " << role << " " << sha256_hex(token_of(name)) << "\n";
  }
  return path;
}

struct SecureCluster {
  TempDir dir{"evald-sec"};
  std::filesystem::path tokens = write_token_file(dir.path());
  std::unique_ptr<TestCluster> cluster;

  explicit SecureCluster(std::vector<std::string> extra = {}, std::optional<int> nofile = {}) {
    ClusterOptions options;
    options.workers = 0;
    options.wait_for_workers = false;
    options.coordinator.extra_args = {"--api-tokens", tokens.string()};
    options.coordinator.extra_args.insert(options.coordinator.extra_args.end(), extra.begin(),
                                          extra.end());
    options.coordinator.open_files_limit = nofile;
    cluster = std::make_unique<TestCluster>(std::move(options));
  }
  Api as(const std::string& name) const {
    return Api(cluster->coordinator().http_url(), bearer(token_of(name)));
  }
  Api anonymous() const { return Api(cluster->coordinator().http_url()); }
};

json small_spec(const std::string& name, int64_t shards = 2) {
  return make_spec(name, {{"m1", 1, 4, {}}}, {{"b1", shards * 10, 10, 0, "accuracy", true, {}}},
                   noop_runner());
}

std::string submit_as(const Api& api, const std::string& name, int64_t shards = 2) {
  return api.submit(small_spec(name, shards));
}

json audit_events(const Api& admin) {
  return admin.get("/v1/audit").at("events");
}

bool has_event(const json& events, const std::string& action, const std::string& needle) {
  for (const auto& e : events) {
    if (e.at("action") == action && e.dump().find(needle) != std::string::npos) return true;
  }
  return false;
}

TEST_CASE("api auth: no or unknown token gets 401 with WWW-Authenticate everywhere but /healthz",
          "[integration][security]") {
  SecureCluster s;
  const auto id = submit_as(s.as("sam"), "auth-401");
  const Api anonymous = s.anonymous();
  const Api stranger(s.cluster->coordinator().http_url(), bearer("not-a-token"));
  const std::vector<std::pair<std::string, std::string>> routes = {
      {"GET", "/v1/campaigns"},
      {"POST", "/v1/campaigns"},
      {"GET", "/v1/campaigns/" + id},
      {"GET", "/v1/campaigns/" + id + "/shards"},
      {"GET", "/v1/campaigns/" + id + "/results"},
      {"POST", "/v1/campaigns/" + id + "/rerun"},
      {"POST", "/v1/campaigns/" + id + "/cancel"},
      {"GET", "/v1/workers"},
      {"GET", "/v1/audit"},
      {"GET", "/metrics"},
      {"GET", "/no/such/route"}};
  for (const auto& [method, target] : routes) {
    for (const Api* api : {&anonymous, &stranger}) {
      INFO(method << " " << target << " token=" << api->client().bearer_token);
      const auto response = api->request(method, target, method == "POST" ? "{}" : "");
      CHECK(response.status == 401);
      CHECK(response.body.find("\"error\"") != std::string::npos);
      bool challenged = false;
      for (const auto& [field, value] : response.headers) {
        if (field == "WWW-Authenticate" && value.rfind("Bearer", 0) == 0) challenged = true;
      }
      CHECK(challenged);
    }
  }
  CHECK(anonymous.request("GET", "/healthz").status == 200);
  // Any valid token reads /metrics; the refusals above were counted.
  CHECK(s.as("rita").metric("evald_http_refused_total") >= 2.0 * routes.size());
  // Nothing was changed by the refused POSTs.
  CHECK(s.as("rita").campaign(id).at("state") == "running");
}

TEST_CASE("api auth: roles decide who may submit, rerun, cancel and read the audit log",
          "[integration][security]") {
  SecureCluster s;
  const Api rita = s.as("rita");
  const Api sam = s.as("sam");
  const Api sue = s.as("sue");
  const Api olga = s.as("olga");
  const Api ada = s.as("ada");

  // A reader reads but may not change anything.
  const auto refused = rita.request("POST", "/v1/campaigns", small_spec("by-rita").dump());
  CHECK(refused.status == 403);
  CHECK(refused.body.find("role reader may not submit") != std::string::npos);
  CHECK(rita.get("/v1/campaigns").at("campaigns").empty());

  const auto sams = submit_as(sam, "by-sam");
  const auto sues = submit_as(sue, "by-sue");
  CHECK(rita.campaign(sams).at("submitted_by") == "sam");
  CHECK(rita.campaign(sues).at("submitted_by") == "sue");
  CHECK(rita.request("POST", "/v1/campaigns/" + sams + "/cancel", "{}").status == 403);
  CHECK(rita.request("POST", "/v1/campaigns/" + sams + "/rerun", "{}").status == 403);

  // A submitter may not touch another submitter's campaign, but may its own.
  const auto cross_cancel = sam.request("POST", "/v1/campaigns/" + sues + "/cancel", "{}");
  CHECK(cross_cancel.status == 403);
  CHECK(cross_cancel.body.find("needs operator") != std::string::npos);
  CHECK(sam.request("POST", "/v1/campaigns/" + sues + "/rerun", "{}").status == 403);
  CHECK(rita.campaign(sues).at("state") == "running");
  CHECK(sam.request("POST", "/v1/campaigns/" + sams + "/rerun", "{}").status == 200);
  CHECK(sam.request("POST", "/v1/campaigns/" + sams + "/cancel", "{}").status == 200);
  CHECK(rita.campaign(sams).at("state") == "cancelled");

  // An operator may cancel anybody's.
  CHECK(olga.request("POST", "/v1/campaigns/" + sues + "/rerun", "{}").status == 200);
  CHECK(olga.request("POST", "/v1/campaigns/" + sues + "/cancel", "{}").status == 200);
  CHECK(rita.campaign(sues).at("state") == "cancelled");

  // Only an admin reads the audit log.
  for (const Api* api : {&rita, &sam, &olga}) {
    CHECK(api->request("GET", "/v1/audit").status == 403);
  }
  const auto events = audit_events(ada);
  INFO(events.dump(2));
  CHECK(has_event(events, "refused", "POST /v1/campaigns: role reader may not submit"));
  CHECK(has_event(events, "refused", "\"principal\":\"rita\""));
  CHECK(has_event(events, "refused", "POST /v1/campaigns/" + sues + "/cancel: role submitter"));
  CHECK(has_event(events, "refused", "GET /v1/audit: role operator may not read the audit log"));
  CHECK(has_event(events, "submit", "\"principal\":\"sam\""));
  CHECK(has_event(events, "rerun", "\"campaign\":\"" + sams + "\""));
  CHECK(has_event(events, "cancel", "\"principal\":\"olga\""));
  // Oldest first, with increasing sequence numbers, every field present.
  for (size_t i = 0; i < events.size(); ++i) {
    for (const char* field : {"at", "principal", "action", "campaign", "detail", "seq"}) {
      CHECK(events[i].contains(field));
    }
    if (i > 0) CHECK(events[i].at("seq") > events[i - 1].at("seq"));
  }
  // Paging.
  const auto first = ada.get("/v1/audit?limit=2");
  REQUIRE(first.at("events").size() == 2);
  CHECK(first.at("more") == true);
  const auto rest = ada.get("/v1/audit?since=" + first.at("next_since").dump());
  CHECK(rest.at("events").size() == events.size() - 2);
  CHECK(rest.at("events").at(0).at("seq") == events.at(2).at("seq"));
  CHECK(ada.request("GET", "/v1/audit?limit=abc").status == 400);
}

TEST_CASE("api auth: submitted_by and the audit log survive a coordinator restart",
          "[integration][security]") {
  SecureCluster s;
  const auto id = submit_as(s.as("sam"), "survivor");
  CHECK(s.as("rita").request("POST", "/v1/campaigns/" + id + "/cancel", "{}").status == 403);
  const auto before = audit_events(s.as("ada"));
  s.cluster->coordinator().kill();
  s.cluster->coordinator().restart();
  CHECK(s.as("rita").campaign(id).at("submitted_by") == "sam");
  const auto after = audit_events(s.as("ada"));
  REQUIRE(after.size() >= before.size());
  for (size_t i = 0; i < before.size(); ++i) CHECK(after[i] == before[i]);
  // The sequence continues after the restart instead of overwriting old events.
  CHECK(s.as("sam").request("POST", "/v1/campaigns/" + id + "/cancel", "{}").status == 200);
  const auto later = audit_events(s.as("ada"));
  REQUIRE(later.size() == after.size() + 1);
  CHECK(later.back().at("action") == "cancel");
  CHECK(later.back().at("seq") > after.back().at("seq"));
}

TEST_CASE("api auth: /metrics is open with --public-metrics, without tokens submitted_by is null",
          "[integration][security]") {
  {
    SecureCluster s({"--public-metrics"});
    const auto response = s.anonymous().request("GET", "/metrics");
    CHECK(response.status == 200);
    CHECK(response.body.find("evald_http_requests_total") != std::string::npos);
    CHECK(s.anonymous().request("GET", "/v1/campaigns").status == 401);
  }
  ClusterOptions open_options;
  open_options.workers = 0;
  open_options.wait_for_workers = false;
  TestCluster open_cluster(std::move(open_options));
  const auto api = open_cluster.api();
  const auto id = api.submit(small_spec("open"));
  CHECK(api.campaign(id).at("submitted_by").is_null());
  const auto events = api.get("/v1/audit").at("events");
  REQUIRE(events.size() == 1);
  CHECK(events[0].at("action") == "submit");
  CHECK(events[0].at("principal").is_null());
  CHECK(events[0].at("address") == "127.0.0.1");
}

TEST_CASE("api limits: the pending-shards quota and the spec size cap", "[integration][security]") {
  SecureCluster s({"--max-pending-shards-per-user", "10", "--max-spec-bytes", "4096"});
  const Api sam = s.as("sam");
  submit_as(sam, "quota-1", 6);
  const auto over = sam.request("POST", "/v1/campaigns", small_spec("quota-2", 6).dump());
  CHECK(over.status == 429);
  CHECK(over.body.find("--max-pending-shards-per-user") != std::string::npos);
  // The quota is per principal: somebody else still may.
  submit_as(s.as("sue"), "quota-3", 6);
  // And it counts unfinished shards only: after a cancel, sam may again.
  const auto mine = s.as("rita").get("/v1/campaigns").at("campaigns");
  for (const auto& c : mine) {
    if (c.at("submitted_by") == "sam") {
      CHECK(s.as("olga")
                .request("POST", "/v1/campaigns/" + c.at("id").get<std::string>() + "/cancel", "{}")
                .status == 200);
    }
  }
  submit_as(sam, "quota-4", 6);

  std::string big = small_spec("too-big").dump();
  big.insert(1, std::string(5000, ' '));
  const auto too_big = sam.request("POST", "/v1/campaigns", big);
  CHECK(too_big.status == 413);
  CHECK(too_big.body.find("--max-spec-bytes") != std::string::npos);
  const auto events = audit_events(s.as("ada"));
  CHECK(has_event(events, "refused", "quota exceeded"));
  CHECK(has_event(events, "refused", "exceeds the limit of 4096 bytes"));
}

TEST_CASE("api startup: protected mode, --insecure and a malformed token file",
          "[integration][security]") {
  TempDir dir("evald-sec-start");
  const auto coordinator = bin_dir() / "evald-coordinator";
  const std::vector<std::string> base = {"--data-dir", (dir.path() / "data").string(), "--bind",
                                         "tcp://127.0.0.1:0"};
  auto args = base;
  args.insert(args.end(), {"--http", "0.0.0.0:0"});
  const auto refused = run_command(coordinator, args, 20s);
  CHECK(refused.exit_code == 2);
  CHECK(refused.err.find("--api-tokens") != std::string::npos);
  CHECK(refused.err.find("--insecure") != std::string::npos);

  // A malformed token file is a startup error that names the line.
  const auto bad = dir.path() / "tokens";
  std::ofstream(bad) << "# ok\nalice reader " << sha256_hex("x") << "\nbob superuser "
                     << sha256_hex("y") << "\n";
  args = base;
  args.insert(args.end(), {"--http", "127.0.0.1:0", "--api-tokens", bad.string()});
  const auto malformed = run_command(coordinator, args, 20s);
  CHECK(malformed.exit_code == 1);
  CHECK(malformed.err.find(bad.string() + ":3: unknown role 'superuser'") != std::string::npos);

  // --insecure starts anyway and says so. Nothing is ever sent to the wildcard address.
  ProcessOptions process;
  process.executable = coordinator;
  process.args = base;
  process.args.insert(process.args.end(), {"--http", "0.0.0.0:0", "--insecure"});
  process.log_file = dir.path() / "insecure.log";
  process.pipe_stdout = true;
  ChildProcess insecure(std::move(process));
  REQUIRE(insecure.read_line(10s).has_value());
  CHECK(insecure.terminate() == 0);
  CHECK(file_tail(dir.path() / "insecure.log", 100000).find("insecure_mode http=") !=
        std::string::npos);
}

// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with the
// openssl CLI.
struct Pki {
  std::filesystem::path dir;
  explicit Pki(std::filesystem::path where) : dir(std::move(where)) {
    const std::string d = dir.string();
    const std::string script =
        "set -e; cd '" + d +
        "'\n"
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=evald-test-ca "
        "-keyout ca.key -out ca.pem 2>/dev/null\n"
        "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key "
        "-out server.csr 2>/dev/null\n"
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext\n"
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-extfile server.ext -out server.pem 2>/dev/null\n"
        "openssl req -newkey rsa:2048 -nodes -subj /CN=evalctl -keyout client.key "
        "-out client.csr 2>/dev/null\n"
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-out client.pem 2>/dev/null\n"
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca "
        "-keyout other.key -out other.pem 2>/dev/null\n";
    const auto made = run_command("/bin/sh", {"-c", script}, 60s);
    if (made.exit_code != 0) throw std::runtime_error("openssl failed: " + made.err);
  }
  std::string file(const char* name) const { return (dir / name).string(); }
};

TEST_CASE("api https: evalctl with --cacert, and client certificates with --tls-client-ca",
          "[integration][security]") {
  TempDir pki_dir("evald-pki");
  const Pki pki(pki_dir.path());
  const auto evalctl = bin_dir() / "evalctl";
  {
    SecureCluster s({"--tls-cert", pki.file("server.pem"), "--tls-key", pki.file("server.key")});
    const std::string url = "https://" + s.cluster->coordinator().http_address();
    const auto spec = pki_dir.path() / "spec.json";
    std::ofstream(spec) << small_spec("over-tls").dump();
    const auto submitted =
        run_command(evalctl, {"--server", url, "--cacert", pki.file("ca.pem"), "--token",
                              token_of("sam"), "submit", spec.string()});
    INFO(submitted.err);
    CHECK(submitted.exit_code == 0);
    // The token may come from the environment too.
    const auto status =
        run_command(evalctl, {"--server", url, "--json", "status"}, 30s,
                    {{"EVALD_TOKEN", token_of("rita")}, {"EVALD_CACERT", pki.file("ca.pem")}});
    CHECK(status.exit_code == 0);
    CHECK(status.out.find("\"submitted_by\": \"sam\"") != std::string::npos);
    // A certificate from another CA is not trusted.
    const auto untrusted = run_command(evalctl, {"--server", url, "--cacert", pki.file("other.pem"),
                                                 "--token", token_of("rita"), "status"});
    CHECK(untrusted.exit_code == 1);
    CHECK(untrusted.err.find("TLS handshake") != std::string::npos);
    // No token over TLS: a clear 401 message.
    const auto no_token =
        run_command(evalctl, {"--server", url, "--cacert", pki.file("ca.pem"), "status"});
    CHECK(no_token.exit_code == 1);
    CHECK(no_token.err.find("not authenticated (HTTP 401)") != std::string::npos);
    CHECK(no_token.err.find("EVALD_TOKEN") != std::string::npos);
    // Plain HTTP to the HTTPS port is not served.
    auto plain_url = evald::parse_http_url(s.cluster->coordinator().http_url());
    REQUIRE(plain_url.ok());
    const auto plain = evald::http_request(plain_url.value(), "GET", "/healthz", "", 5s);
    CHECK_FALSE(plain.ok());
  }
  {
    SecureCluster s({"--tls-cert", pki.file("server.pem"), "--tls-key", pki.file("server.key"),
                     "--tls-client-ca", pki.file("ca.pem")});
    const std::string url = "https://" + s.cluster->coordinator().http_address();
    const auto without = run_command(evalctl, {"--server", url, "--cacert", pki.file("ca.pem"),
                                               "--token", token_of("rita"), "workers"});
    CHECK(without.exit_code == 1);
    const auto with =
        run_command(evalctl, {"--server", url, "--cacert", pki.file("ca.pem"), "--token",
                              token_of("rita"), "--client-cert", pki.file("client.pem"),
                              "--client-key", pki.file("client.key"), "workers"});
    INFO(with.err);
    CHECK(with.exit_code == 0);
    const auto wrong_client =
        run_command(evalctl, {"--server", url, "--cacert", pki.file("ca.pem"), "--token",
                              token_of("rita"), "--client-cert", pki.file("other.pem"),
                              "--client-key", pki.file("other.key"), "workers"});
    CHECK(wrong_client.exit_code == 1);
  }
}

// An fd that closes itself.
struct Socket {
  int fd = -1;
  explicit Socket(int f) : fd(f) {}
  Socket(Socket&& other) noexcept : fd(other.fd) { other.fd = -1; }
  Socket(const Socket&) = delete;
  ~Socket() {
    if (fd >= 0) ::close(fd);
  }
};

TEST_CASE("api bounds: 1,100 idle sockets lock out neither a worker nor a client with a token",
          "[integration][security]") {
  // This test holds 1,100 sockets itself.
  rlimit limit{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &limit) == 0);
  if (limit.rlim_cur < 2048 && limit.rlim_max > limit.rlim_cur) {
    limit.rlim_cur = std::min<rlim_t>(limit.rlim_max, 4096);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &limit) == 0);
  }
  REQUIRE(limit.rlim_cur >= 1200);
  // The coordinator gets 256 file descriptors: without caps, the idle sockets would take them all.
  SecureCluster s({}, 256);
  const auto [host, port] = evald::split_host_port(s.cluster->coordinator().http_address());
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  REQUIRE(::inet_pton(AF_INET, "127.0.0.1", &address.sin_addr) == 1);
  std::vector<Socket> idle;
  for (int i = 0; i < 1100; ++i) {
    Socket socket(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(socket.fd >= 0);
    REQUIRE(::connect(socket.fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
    idle.push_back(std::move(socket));
  }
  std::this_thread::sleep_for(200ms);
  // A worker still connects and runs a campaign; a client with a token is served throughout.
  s.cluster->add_worker();
  const Api sam = s.as("sam");
  sam.wait_for_workers(1, 20s);
  const auto id = submit_as(sam, "after-flood", 4);
  sam.wait_for_state(id, "succeeded", 30s);
  CHECK(sam.metric("evald_http_refused_total") > 0);
  CHECK(s.cluster->coordinator().running());
}

}  // namespace
