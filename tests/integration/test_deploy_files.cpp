// The deployment files under deploy/, checked the way their tools read them, since no Docker
// engine or Kubernetes cluster is at hand: every YAML file parses (PyYAML, through python3, is
// the parser; the checks are here), the Kubernetes objects carry what evald needs (a PVC for the
// store, probes on /healthz, a GPU limit, non-root, a grace period that covers the drain),
// compose runs a coordinator, two workers and a Prometheus that scrapes them, the Dockerfile
// builds in one stage and runs non-root in another, the systemd units pass `systemd-analyze
// verify` and a hardening threshold, the real daemons report READY=1 and STOPPING=1 to a
// notify socket, and the Slurm script refuses to run outside a job. Each deployment also shows
// the secure setup: keys, the worker allowlist, token hashes and TLS files are passed by file from
// read-only secret stores (Kubernetes Secrets, compose secrets, systemd credentials, a node-local
// key directory), never inline, and every worker pins the coordinator's key.
// tests/integration/slurm and tests/integration/netns run the Slurm script and a multi-namespace
// cluster for real.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <csignal>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tests/support/cluster.hpp"
#include "tests/support/process.hpp"
#include "tests/support/test_support.hpp"

namespace {

using namespace evald::testing;
using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

fs::path deploy_dir() {
  return fs::path(EVALD_SOURCE_DIR) / "deploy";
}

// An executable by name: PATH first, then the usual system dirs (ctest may run with a short
// PATH). Empty if there is none.
fs::path find_program(const std::string& name) {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream list(path);
    for (std::string dir; std::getline(list, dir, ':');) dirs.push_back(dir);
  }
  for (const char* dir : {"/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"}) {
    dirs.emplace_back(dir);
  }
  for (const auto& dir : dirs) {
    auto candidate = fs::path(dir) / name;
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

// Debian's python3 first: scripts/setup.sh installs PyYAML for it as python3-yaml, while a
// python3 earlier on PATH (pyenv, a venv) may not have it.
fs::path python_with_yaml() {
  for (const fs::path& candidate : {fs::path("/usr/bin/python3"), find_program("python3")}) {
    if (candidate.empty() || ::access(candidate.c_str(), X_OK) != 0) continue;
    if (run_command(candidate, {"-c", "import yaml"}, 30s).exit_code == 0) return candidate;
  }
  FAIL("no python3 with PyYAML found; install python3-yaml (scripts/setup.sh does)");
  return {};
}

// Every document of a YAML file, as JSON. A parse error fails the test with PyYAML's message,
// which names the line.
json load_yaml(const fs::path& file) {
  static const fs::path kPython = python_with_yaml();
  const auto result =
      run_command(kPython,
                  {"-c",
                   "import json, sys, yaml\n"
                   "docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n"
                   "json.dump(docs, sys.stdout)\n",
                   file.string()},
                  30s);
  INFO(file.string() << ": " << result.err);
  REQUIRE(result.exit_code == 0);
  return json::parse(result.out);
}

std::vector<fs::path> yaml_files_under(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    const auto ext = entry.path().extension();
    if (entry.is_regular_file() && (ext == ".yaml" || ext == ".yml")) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// All Kubernetes objects of deploy/k8s, from every manifest file.
std::vector<json> k8s_objects() {
  std::vector<json> objects;
  for (const auto& file : yaml_files_under(deploy_dir() / "k8s")) {
    for (const auto& doc : load_yaml(file)) {
      if (doc.value("kind", "") != "Kustomization") objects.push_back(doc);
    }
  }
  return objects;
}

const json& find_object(const std::vector<json>& objects, const std::string& kind,
                        const std::string& name) {
  for (const auto& object : objects) {
    if (object.value("kind", "") == kind && object["metadata"].value("name", "") == name) {
      return object;
    }
  }
  FAIL("deploy/k8s has no " << kind << " named " << name);
  throw std::logic_error("unreachable");
}

// "--flag=value" or "--flag value" in an argument list.
std::optional<std::string> flag_value(const json& args, const std::string& flag) {
  for (size_t i = 0; i < args.size(); ++i) {
    const auto arg = args[i].get<std::string>();
    if (arg.rfind(flag + "=", 0) == 0) return arg.substr(flag.size() + 1);
    if (arg == flag && i + 1 < args.size()) return args[i + 1].get<std::string>();
  }
  return std::nullopt;
}

// The container's named port for a probe's port (a name or a number).
int64_t probe_port(const json& container, const json& probe) {
  const auto& port = probe.at("httpGet").at("port");
  if (port.is_number()) return port.get<int64_t>();
  for (const auto& p : container.at("ports")) {
    if (p.value("name", "") == port.get<std::string>()) return p.at("containerPort");
  }
  FAIL("probe port " << port.dump() << " is not a port of container " << container["name"]);
  return -1;
}

void check_non_root(const json& pod_spec, const json& container) {
  INFO("container " << container["name"]);
  const auto& pod = pod_spec.at("securityContext");
  CHECK(pod.at("runAsNonRoot") == true);
  CHECK(pod.at("runAsUser").get<int64_t>() > 0);
  const auto& own = container.at("securityContext");
  CHECK(own.at("allowPrivilegeEscalation") == false);
  CHECK(own.at("capabilities").at("drop") == json::array({"ALL"}));
}

// Both probes are HTTP GETs of /healthz on the given container port.
void check_healthz_probes(const json& container, int64_t port) {
  for (const char* probe : {"readinessProbe", "livenessProbe"}) {
    INFO(container["name"] << " " << probe);
    REQUIRE(container.contains(probe));
    CHECK(container[probe].at("httpGet").at("path") == "/healthz");
    CHECK(probe_port(container, container[probe]) == port);
  }
}

// Shell-style match with '*' as the only wildcard, as Prometheus' file_sd patterns use it.
bool glob_match(std::string_view pattern, std::string_view name) {
  if (pattern.empty()) return name.empty();
  if (pattern.front() == '*') {
    for (size_t skip = 0; skip <= name.size(); ++skip) {
      if (glob_match(pattern.substr(1), name.substr(skip))) return true;
    }
    return false;
  }
  return !name.empty() && pattern.front() == name.front() &&
         glob_match(pattern.substr(1), name.substr(1));
}

int64_t port_of(const std::string& host_port) {
  return std::stoll(host_port.substr(host_port.rfind(':') + 1));
}

// "330s", "5m30s", "30" (seconds) as used by compose.
int64_t duration_s(const std::string& text) {
  static const std::regex kPart("([0-9]+)(h|m|s)?");
  int64_t total = 0;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), kPart);
       it != std::sregex_iterator(); ++it) {
    const int64_t n = std::stoll((*it)[1]);
    const auto unit = (*it)[2].str();
    total += unit == "h" ? n * 3600 : unit == "m" ? n * 60 : n;
  }
  return total;
}

// systemd's end of Type=notify: a datagram socket at a path that receives the notifications.
class NotifySocket {
 public:
  explicit NotifySocket(fs::path path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    REQUIRE(path_.string().size() < sizeof(address.sun_path));
    std::memcpy(address.sun_path, path_.c_str(), path_.string().size());
    REQUIRE(::bind(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0);
  }
  ~NotifySocket() { ::close(fd_); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  // The next datagram, or "" if none arrives within `timeout`.
  std::string receive(std::chrono::milliseconds timeout) const {
    pollfd item{fd_, POLLIN, 0};
    if (::poll(&item, 1, static_cast<int>(timeout.count())) != 1) return "";
    std::array<char, 4096> buffer{};
    const auto n = ::recv(fd_, buffer.data(), buffer.size(), 0);
    return n > 0 ? std::string(buffer.data(), static_cast<size_t>(n)) : "";
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  int fd_ = -1;
};

// --- systemd unit files -----------------------------------------------------------------------

using UnitFile = std::map<std::string, std::multimap<std::string, std::string>>;

UnitFile parse_unit(const std::string& text) {
  UnitFile unit;
  std::string section;
  std::stringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = line.substr(1, line.size() - 2);
      continue;
    }
    const auto eq = line.find('=');
    REQUIRE(eq != std::string::npos);
    unit[section].emplace(line.substr(0, eq), line.substr(eq + 1));
  }
  return unit;
}

std::string unit_value(const UnitFile& unit, const std::string& section, const std::string& key) {
  const auto s = unit.find(section);
  if (s == unit.end()) return "";
  const auto [first, last] = s->second.equal_range(key);
  return first == last ? "" : std::prev(last)->second;  // the last assignment wins
}

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::stringstream in(text);
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

// A copy of a unit whose ExecStart runs the binaries of this build, as installing them would.
fs::path installed_copy(const TempDir& dir, const std::string& unit_name) {
  auto text = read_file(deploy_dir() / "systemd" / unit_name);
  const std::string from = "/usr/local/bin/";
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at)) {
    text.replace(at, from.size(), bin_dir().string() + "/");
    at += bin_dir().string().size() + 1;
  }
  auto path = dir.path() / unit_name;
  std::ofstream(path) << text;
  return path;
}

}  // namespace

TEST_CASE("every YAML file under deploy/k8s and deploy/docker parses", "[integration]") {
  std::vector<fs::path> files = yaml_files_under(deploy_dir() / "k8s");
  const auto docker = yaml_files_under(deploy_dir() / "docker");
  files.insert(files.end(), docker.begin(), docker.end());
  REQUIRE(files.size() >= 5);
  for (const auto& file : files) {
    INFO(file.string());
    const auto docs = load_yaml(file);
    CHECK_FALSE(docs.empty());
    if (file.parent_path().filename() != "k8s") continue;
    for (const auto& doc : docs) {
      INFO(doc.dump().substr(0, 200));
      CHECK(doc.value("apiVersion", "") != "");
      CHECK(doc.value("kind", "") != "");
      if (doc.value("kind", "") != "Kustomization") {
        CHECK(doc.at("metadata").value("name", "") != "");
      }
    }
  }
}

TEST_CASE("the kustomization applies every Kubernetes manifest", "[integration]") {
  const auto dir = deploy_dir() / "k8s";
  const auto kustomization = load_yaml(dir / "kustomization.yaml").at(0);
  CHECK(kustomization.at("apiVersion") == "kustomize.config.k8s.io/v1beta1");
  CHECK(kustomization.at("kind") == "Kustomization");
  std::set<std::string> listed;
  for (const auto& resource : kustomization.at("resources")) {
    listed.insert(resource.get<std::string>());
    CHECK(fs::exists(dir / resource.get<std::string>()));
  }
  for (const auto& file : yaml_files_under(dir)) {
    if (file.filename() == "kustomization.yaml") continue;
    // Optional components, added by choice (checked by the autoscaling test below).
    if (*fs::relative(file, dir).begin() == "autoscaling") continue;
    INFO(file.filename().string() << " is not in kustomization.yaml's resources");
    CHECK(listed.count(fs::relative(file, dir).string()) == 1);
  }
}

TEST_CASE("the coordinator is one StatefulSet pod with its store on a PVC, probed on /healthz",
          "[integration]") {
  const auto objects = k8s_objects();
  const auto& set = find_object(objects, "StatefulSet", "evald-coordinator");
  CHECK(set.at("apiVersion") == "apps/v1");
  const auto& spec = set.at("spec");
  // One writer per RocksDB store.
  CHECK(spec.at("replicas") == 1);
  const auto& pod = spec.at("template").at("spec");
  REQUIRE(pod.at("containers").size() == 1);
  const auto& container = pod["containers"][0];
  const auto& args = container.at("args");

  // The store is on the claim template's volume.
  REQUIRE(spec.at("volumeClaimTemplates").size() == 1);
  const auto& claim = spec["volumeClaimTemplates"][0];
  CHECK(claim.at("spec").at("accessModes") == json::array({"ReadWriteOnce"}));
  CHECK(claim["spec"].at("resources").at("requests").at("storage").get<std::string>() != "");
  const auto data_dir = flag_value(args, "--data-dir");
  REQUIRE(data_dir);
  bool store_on_claim = false;
  for (const auto& mount : container.at("volumeMounts")) {
    store_on_claim = store_on_claim || (mount.at("name") == claim.at("metadata").at("name") &&
                                        mount.at("mountPath") == *data_dir);
  }
  CHECK(store_on_claim);

  // Ports: ZeroMQ for workers and HTTP for the API, both reachable from outside the pod.
  const auto bind = flag_value(args, "--bind");
  const auto http = flag_value(args, "--http");
  REQUIRE(bind);
  REQUIRE(http);
  CHECK(bind->rfind("tcp://0.0.0.0:", 0) == 0);
  CHECK(http->rfind("0.0.0.0:", 0) == 0);
  std::map<std::string, int64_t> ports;
  for (const auto& p : container.at("ports")) ports[p.at("name")] = p.at("containerPort");
  CHECK(ports.at("zmq") == port_of(*bind));
  CHECK(ports.at("http") == port_of(*http));
  check_healthz_probes(container, port_of(*http));
  check_non_root(pod, container);

  // The Service gives both ports a stable name and selects this pod.
  const auto& service = find_object(objects, "Service", "evald-coordinator");
  const auto& labels = spec.at("template").at("metadata").at("labels");
  for (const auto& [key, value] : service.at("spec").at("selector").items()) {
    INFO("Service selector " << key);
    CHECK(labels.value(key, "") == value);
  }
  std::map<std::string, json> service_ports;
  for (const auto& p : service["spec"].at("ports")) service_ports[p.at("name")] = p;
  REQUIRE(service_ports.count("zmq") == 1);
  REQUIRE(service_ports.count("http") == 1);
  CHECK(service_ports["zmq"].at("targetPort") == "zmq");
  CHECK(service_ports["http"].at("targetPort") == "http");
  CHECK(find_object(objects, "Service", spec.at("serviceName").get<std::string>())
            .at("spec")
            .at("clusterIP") == "None");
}

TEST_CASE("workers request a GPU, are probed on /healthz and may finish their drain",
          "[integration]") {
  const auto objects = k8s_objects();
  // A StatefulSet: stable pod names, because each worker's key is bound to its name.
  const auto& workers = find_object(objects, "StatefulSet", "evald-worker");
  CHECK(workers.at("apiVersion") == "apps/v1");
  CHECK(find_object(objects, "Service", workers.at("spec").at("serviceName").get<std::string>())
            .at("spec")
            .at("clusterIP") == "None");
  const auto& pod = workers.at("spec").at("template").at("spec");
  REQUIRE(pod.at("containers").size() == 1);
  const auto& container = pod["containers"][0];
  const auto& args = container.at("args");

  CHECK(container.at("resources").at("limits").at("nvidia.com/gpu").get<int64_t>() >= 1);

  // The worker connects to the coordinator Service's ZeroMQ port.
  const auto coordinator = flag_value(args, "--coordinator");
  REQUIRE(coordinator);
  const auto& service = find_object(objects, "Service", "evald-coordinator");
  int64_t zmq_port = 0;
  for (const auto& p : service.at("spec").at("ports")) {
    if (p.at("name") == "zmq") zmq_port = p.at("port");
  }
  CHECK(*coordinator == "tcp://evald-coordinator:" + std::to_string(zmq_port));

  // Probes on the metrics server's /healthz.
  const auto metrics = flag_value(args, "--metrics");
  REQUIRE(metrics);
  CHECK(metrics->rfind("0.0.0.0:", 0) == 0);
  check_healthz_probes(container, port_of(*metrics));
  check_non_root(pod, container);

  // SIGKILL must not cut a drain short: the grace period covers the drain and a margin for the
  // last results and ACKs.
  const auto drain_ms = flag_value(args, "--drain-timeout-ms");
  REQUIRE(drain_ms);
  const int64_t grace_s = pod.at("terminationGracePeriodSeconds");
  CHECK(grace_s * 1000 >= std::stoll(*drain_ms) + 10'000);
}

TEST_CASE("compose runs a coordinator, two workers and Prometheus scraping it", "[integration]") {
  const auto compose_file = deploy_dir() / "docker" / "compose.yaml";
  const auto compose = load_yaml(compose_file).at(0);
  const auto& services = compose.at("services");

  const auto& coordinator = services.at("coordinator");
  CHECK(coordinator.at("build").at("target") == "coordinator");
  CHECK(fs::exists(compose_file.parent_path() /
                   coordinator["build"].at("context").get<std::string>() /
                   coordinator["build"].at("dockerfile").get<std::string>()));
  const auto bind = flag_value(coordinator.at("command"), "--bind");
  REQUIRE(bind);
  // Published on the host's loopback only: the API has no authentication.
  for (const auto& port : coordinator.at("ports")) {
    CHECK(port.get<std::string>().rfind("127.0.0.1:", 0) == 0);
  }

  std::set<std::string> worker_names;
  for (const auto& [name, service] : services.items()) {
    if (!service.contains("build") || service["build"].value("target", "") != "worker") continue;
    INFO("service " << name);
    const auto& command = service.at("command");
    CHECK(flag_value(command, "--coordinator") ==
          std::optional<std::string>("tcp://coordinator:" + std::to_string(port_of(*bind))));
    const auto worker_name = flag_value(command, "--name");
    REQUIRE(worker_name);
    worker_names.insert(*worker_name);
    const auto drain_ms = flag_value(command, "--drain-timeout-ms");
    REQUIRE(drain_ms);
    CHECK(duration_s(service.at("stop_grace_period").get<std::string>()) * 1000 >=
          std::stoll(*drain_ms) + 10'000);
  }
  CHECK(worker_names.size() == 2);

  // Prometheus runs the shared config of deploy/prometheus/, and what it scrapes, as the
  // container sees it through the compose mounts, is the coordinator's HTTP port and every
  // worker's --metrics port.
  const auto& prometheus = services.at("prometheus");
  std::vector<std::pair<std::string, fs::path>> mounts;  // container path -> host path
  for (const auto& volume : prometheus.at("volumes")) {
    const auto text = volume.get<std::string>();
    const auto colon = text.find(':');
    if (text.rfind("./", 0) != 0 && text.rfind("../", 0) != 0) continue;  // a named volume
    auto target = text.substr(colon + 1);
    target = target.substr(0, target.find(':'));
    mounts.emplace_back(target, compose_file.parent_path() / text.substr(0, colon));
  }
  // The host file behind a container path: the mount with the longest matching prefix wins.
  const auto host_path = [&mounts](const std::string& path) -> fs::path {
    const std::pair<std::string, fs::path>* best = nullptr;
    for (const auto& mount : mounts) {
      if ((path == mount.first || path.rfind(mount.first + "/", 0) == 0) &&
          (best == nullptr || mount.first.size() > best->first.size())) {
        best = &mount;
      }
    }
    if (best == nullptr) return {};
    return best->second / path.substr(std::min(path.size(), best->first.size() + 1));
  };
  const auto config_file = flag_value(prometheus.at("command"), "--config.file");
  REQUIRE(config_file);
  const auto config_host = host_path(*config_file);
  INFO("Prometheus config " << *config_file << " = " << config_host.string());
  CHECK(fs::weakly_canonical(config_host) ==
        fs::weakly_canonical(deploy_dir() / "prometheus" / "prometheus.yml"));
  REQUIRE(fs::exists(config_host));

  std::set<std::string> targets;
  const auto config_dir = fs::path(*config_file).parent_path().string();
  const auto config = load_yaml(config_host).at(0);
  for (const auto& job : config.at("scrape_configs")) {
    for (const auto& group : job.value("static_configs", json::array())) {
      for (const auto& t : group.at("targets")) targets.insert(t.get<std::string>());
    }
    for (const auto& sd : job.value("file_sd_configs", json::array())) {
      for (const auto& pattern : sd.at("files")) {
        // Relative to the config file; a '*' in the file name matches any run of characters.
        auto path = pattern.get<std::string>();
        if (path.front() != '/') path.insert(0, config_dir + "/");
        const auto dir = host_path(fs::path(path).parent_path().string());
        const auto name_pattern = fs::path(path).filename().string();
        if (dir.empty() || !fs::is_directory(dir)) continue;
        for (const auto& entry : fs::directory_iterator(dir)) {
          if (!glob_match(name_pattern, entry.path().filename().string())) continue;
          for (const auto& group : json::parse(read_file(entry.path()))) {
            for (const auto& t : group.at("targets")) targets.insert(t.get<std::string>());
          }
        }
      }
    }
  }
  INFO("scrape targets: " << json(targets).dump());
  CHECK(targets.count("coordinator:" + std::to_string(port_of(*flag_value(coordinator.at("command"),
                                                                          "--http")))) == 1);
  for (const auto& [name, service] : services.items()) {
    if (!service.contains("build") || service["build"].value("target", "") != "worker") continue;
    const auto metrics = flag_value(service.at("command"), "--metrics");
    REQUIRE(metrics);
    CHECK(targets.count(name + ":" + std::to_string(port_of(*metrics))) == 1);
  }
}

TEST_CASE("the Dockerfile builds in one stage and runs non-root in another, one target per binary",
          "[integration]") {
  const auto text = read_file(deploy_dir() / "docker" / "Dockerfile");
  // Stages in order: name -> (base, instructions).
  struct Stage {
    std::string name;
    std::string base;
    std::vector<std::string> lines;  // instructions with continuation lines joined
  };
  std::vector<Stage> stages;
  std::map<std::string, std::string> args;
  std::stringstream in(text);
  std::string pending;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    pending += line;
    if (!pending.empty() && pending.back() == '\\') {
      pending.pop_back();
      continue;
    }
    const auto words = split_words(pending);
    if (words.at(0) == "ARG" && stages.empty()) {
      const auto eq = words.at(1).find('=');
      args[words[1].substr(0, eq)] = eq == std::string::npos ? "" : words[1].substr(eq + 1);
    } else if (words.at(0) == "FROM") {
      std::string base = words.at(1);
      if (base.rfind("${", 0) == 0) base = args[base.substr(2, base.size() - 3)];
      REQUIRE(words.size() == 4);
      CHECK(words[2] == "AS");
      stages.push_back({words[3], base, {}});
    } else {
      REQUIRE_FALSE(stages.empty());
      stages.back().lines.push_back(pending);
    }
    pending.clear();
  }
  std::map<std::string, const Stage*> by_name;
  for (const auto& stage : stages) by_name[stage.name] = &stage;
  const auto joined = [](const Stage& stage) {
    std::string all;
    for (const auto& l : stage.lines) all += l + "\n";
    return all;
  };

  REQUIRE(by_name.count("build") == 1);
  REQUIRE(by_name.count("runtime") == 1);
  CHECK(by_name["build"]->base == "debian:bookworm");
  CHECK(by_name["runtime"]->base == "debian:bookworm");
  const auto build = joined(*by_name["build"]);
  CHECK(build.find("librocksdb-dev") != std::string::npos);
  CHECK(build.find("cmake -S") != std::string::npos);
  // The runtime stage installs shared libraries only, and creates the user it runs as.
  const auto runtime = joined(*by_name["runtime"]);
  INFO(runtime);
  CHECK_FALSE(std::regex_search(runtime, std::regex("[a-z0-9+.]-dev\\b")));
  CHECK(runtime.find("useradd") != std::string::npos);
  CHECK(runtime.find("COPY --from=build") != std::string::npos);

  for (const std::string target : {"coordinator", "worker"}) {
    INFO("target " << target);
    REQUIRE(by_name.count(target) == 1);
    // The user in effect at the end of the target, through the stages it is built on.
    std::string user;
    std::string entrypoint;
    std::vector<const Stage*> chain;
    for (const Stage* s = by_name[target]; s != nullptr;
         s = by_name.count(s->base) ? by_name[s->base] : nullptr) {
      chain.insert(chain.begin(), s);
    }
    for (const Stage* s : chain) {
      for (const auto& l : s->lines) {
        const auto words = split_words(l);
        if (words[0] == "USER") user = words.at(1);
        if (words[0] == "ENTRYPOINT") entrypoint = l.substr(l.find('['));
      }
    }
    CHECK(chain.front()->base == "debian:bookworm");
    CHECK_FALSE(user.empty());
    CHECK(user.substr(0, user.find(':')) != "root");
    CHECK(user.substr(0, user.find(':')) != "0");
    REQUIRE_FALSE(entrypoint.empty());
    const auto command = json::parse(entrypoint);
    CHECK(command.back() == "/usr/local/bin/evald-" + target);
  }
}

TEST_CASE("the Prometheus configs and alert rules pass promtool", "[integration]") {
  const auto promtool = find_program("promtool");
  if (promtool.empty()) FAIL("promtool not found; install prometheus (scripts/setup.sh does)");
  const auto dir = deploy_dir() / "prometheus";
  // check config also checks the rule files it names (alerts.yml) and needs the file_sd files.
  for (const auto* config : {"prometheus.yml", "prometheus-static.yml"}) {
    const auto checked = run_command(promtool, {"check", "config", (dir / config).string()}, 60s);
    INFO("promtool check config " << config << ": exit " << checked.exit_code << "\n"
                                  << checked.out << checked.err);
    CHECK(checked.exit_code == 0);
    CHECK_THAT(checked.out + checked.err,
               Catch::Contains("is valid prometheus config file syntax"));
  }
  const auto rules = run_command(promtool, {"check", "rules", (dir / "alerts.yml").string()}, 60s);
  INFO("promtool check rules alerts.yml: exit " << rules.exit_code << "\n"
                                                << rules.out << rules.err);
  CHECK(rules.exit_code == 0);
  CHECK_THAT(rules.out + rules.err, Catch::Contains("SUCCESS"));
}

TEST_CASE("the systemd units pass systemd-analyze verify and stay hardened", "[integration]") {
  const auto analyze = find_program("systemd-analyze");
  if (analyze.empty()) FAIL("systemd-analyze not found; install systemd (scripts/setup.sh does)");
  TempDir dir("evald-systemd");
  const auto coordinator = installed_copy(dir, "evald-coordinator.service");
  const auto worker = installed_copy(dir, "evald-worker.service");

  // No output at all: verify prints warnings (an unknown key, a typo in a section) without
  // failing, so silence is the real pass.
  const auto verify = run_command(analyze, {"verify", coordinator.string(), worker.string()}, 60s);
  INFO("systemd-analyze verify: exit " << verify.exit_code << "\n" << verify.out << verify.err);
  CHECK(verify.exit_code == 0);
  CHECK(verify.out.empty());
  CHECK(verify.err.empty());

  // The overall exposure score, shown as 0.0 (locked down) to 10.0 (unprotected) and compared
  // with --threshold on a 0 to 100 scale: at most 2.0 for the coordinator, 4.0 for the worker,
  // which runs the campaigns' runners (GPUs, JIT memory, more system calls).
  for (const auto& [unit, threshold] :
       std::vector<std::pair<fs::path, int>>{{coordinator, 20}, {worker, 40}}) {
    const auto security =
        run_command(analyze,
                    {"security", "--offline=yes", "--threshold=" + std::to_string(threshold),
                     "--no-pager", unit.string()},
                    60s);
    // The verdict is the last line: "Overall exposure level for UNIT: 1.3 OK".
    INFO(unit.filename().string() << ": exit " << security.exit_code << "\n"
                                  << security.out.substr(security.out.size() -
                                                         std::min<size_t>(security.out.size(), 300))
                                  << security.err);
    CHECK(security.exit_code == 0);
  }

  for (const auto& name : {"evald-coordinator.service", "evald-worker.service"}) {
    INFO(name);
    const auto unit = parse_unit(read_file(deploy_dir() / "systemd" / name));
    CHECK(unit_value(unit, "Service", "Type") == "notify");
    CHECK(unit_value(unit, "Service", "Restart") == "on-failure");
    CHECK(unit_value(unit, "Service", "ProtectSystem") == "strict");
    CHECK(unit_value(unit, "Service", "NoNewPrivileges") == "yes");
    CHECK(unit_value(unit, "Service", "User") == "evald");
    // The state dir is the one writable place, and the daemon is told to use it.
    const auto state = "/var/lib/" + unit_value(unit, "Service", "StateDirectory");
    CHECK(unit_value(unit, "Service", "ReadWritePaths") == state);
    CHECK(unit_value(unit, "Service", "ExecStart").find(" " + state) != std::string::npos);
  }

  // The worker's stop: SIGTERM to the worker alone (it drains and kills its runners itself),
  // and SIGKILL no earlier than the drain timeout plus a margin.
  const auto unit = parse_unit(read_file(deploy_dir() / "systemd" / "evald-worker.service"));
  CHECK(unit_value(unit, "Service", "KillMode") == "mixed");
  const auto exec = split_words(unit_value(unit, "Service", "ExecStart"));
  const auto drain_ms = flag_value(json(exec), "--drain-timeout-ms");
  REQUIRE(drain_ms);
  CHECK(duration_s(unit_value(unit, "Service", "TimeoutStopSec")) * 1000 >=
        std::stoll(*drain_ms) + 10'000);
}

TEST_CASE("the Slurm script is valid bash and refuses to run outside a job", "[integration]") {
  const auto script = deploy_dir() / "slurm" / "evald-workers.sbatch";
  const auto bash = find_program("bash");
  REQUIRE_FALSE(bash.empty());
  const auto syntax = run_command(bash, {"-n", script.string()}, 30s);
  INFO(syntax.err);
  CHECK(syntax.exit_code == 0);

  // What makes workers leave cleanly: SIGTERM ahead of the end, requeue on preemption, one
  // worker's exit does not end the step, and the task is the worker itself.
  const auto text = read_file(script);
  CHECK(std::regex_search(text, std::regex("#SBATCH --signal=TERM@[0-9]+")));
  CHECK(text.find("#SBATCH --requeue") != std::string::npos);
  CHECK(text.find("srun --kill-on-bad-exit=0") != std::string::npos);
  CHECK(text.find("exec \"${EVALD_WORKER_BIN}\"") != std::string::npos);

  // Outside a job it says so and exits 2, instead of starting a worker named after nothing.
  const auto outside =
      run_command(bash, {script.string(), "tcp://127.0.0.1:1"}, 30s, {{"SLURM_JOB_ID", ""}});
  CHECK(outside.exit_code == 2);
  CHECK(outside.err.find("not in a Slurm job") != std::string::npos);
}

TEST_CASE("under Type=notify both daemons say when they are ready and when they stop",
          "[integration]") {
  TempDir dir("evald-notify");
  NotifySocket notify(dir.path() / "notify");
  fs::create_directories(dir.path() / "logs");
  const std::vector<std::pair<std::string, std::string>> env = {
      {"NOTIFY_SOCKET", notify.path().string()}};

  SECTION("the coordinator, once it serves") {
    ChildProcess coordinator(
        ProcessOptions{bin_dir() / "evald-coordinator",
                       {"--data-dir", (dir.path() / "store").string(), "--bind",
                        "tcp://127.0.0.1:0", "--http", "127.0.0.1:0"},
                       dir.path() / "logs" / "coordinator.log",
                       false,
                       env});
    const auto ready = notify.receive(10s);
    INFO("coordinator log: " << file_tail(coordinator.log_file(), 4000));
    CHECK(ready == "READY=1\nSTATUS=serving");
    coordinator.signal(SIGTERM);
    CHECK(coordinator.wait_exit(10s) == std::optional<int>(0));
    CHECK(notify.receive(1s) == "STOPPING=1");
  }
  SECTION("the worker, without a coordinator") {
    // Nobody listens on port 1: the worker is ready all the same, it reconnects by itself.
    ChildProcess worker(
        ProcessOptions{bin_dir() / "evald-worker",
                       {"--coordinator", "tcp://127.0.0.1:1", "--name", "notify-test", "--gpus",
                        "none", "--work-dir", (dir.path() / "work").string()},
                       dir.path() / "logs" / "worker.log",
                       false,
                       env});
    const auto ready = notify.receive(10s);
    INFO("worker log: " << file_tail(worker.log_file(), 4000));
    CHECK(ready == "READY=1\nSTATUS=running, coordinator tcp://127.0.0.1:1");
    worker.signal(SIGTERM);
    CHECK(worker.wait_exit(10s) == std::optional<int>(0));
    CHECK(notify.receive(1s) == "STOPPING=1");
  }
}

// --- the secure setup in every deployment ------------------------------------------------------

namespace {

// The flags that name a secret or what authenticates a peer, and so must come from a protected
// file, never from anything written in a manifest.
const std::vector<std::string> kCoordinatorSecretFlags = {
    "--curve-secret", "--worker-keys", "--api-tokens", "--tls-cert", "--tls-key"};
const std::vector<std::string> kWorkerSecretFlags = {"--curve-secret", "--coordinator-key"};

// A secret value written out: a PEM key or certificate, or a SHA-256 in hex (a token hash).
void check_no_inline_secret(const fs::path& file) {
  const auto text = read_file(file);
  INFO(file.string());
  CHECK(text.find("-----BEGIN") == std::string::npos);
  CHECK_FALSE(std::regex_search(text, std::regex("\\b[0-9a-fA-F]{64}\\b")));
}

// The Secret volume behind a file path of a container: the path must lie in a read-only mount
// of a `secret` volume whose files are at most 0440 (owner and the pod's group may read; no
// one may write), and, where the volume lists items, be one of them.
void check_from_secret_volume(const json& pod, const json& container, const std::string& path) {
  INFO("file " << path << " of container " << container["name"]);
  const json* mount = nullptr;
  for (const auto& m : container.at("volumeMounts")) {
    const auto dir = m.at("mountPath").get<std::string>();
    if (path.rfind(dir + "/", 0) == 0) mount = &m;
  }
  REQUIRE(mount != nullptr);
  CHECK(mount->value("readOnly", false) == true);
  const json* volume = nullptr;
  for (const auto& v : pod.at("volumes")) {
    if (v.at("name") == mount->at("name")) volume = &v;
  }
  REQUIRE(volume != nullptr);
  REQUIRE(volume->contains("secret"));
  const auto& secret = volume->at("secret");
  CHECK(secret.value("secretName", "") != "");
  // PyYAML reads 0440 as octal, as Kubernetes does.
  REQUIRE(secret.contains("defaultMode"));
  CHECK((secret.at("defaultMode").get<int64_t>() & ~int64_t{0440}) == 0);
  if (secret.contains("items")) {
    const auto file = path.substr(mount->at("mountPath").get<std::string>().size() + 1);
    bool listed = false;
    for (const auto& item : secret["items"]) listed = listed || item.at("path") == file;
    CHECK(listed);
  }
}

// The LoadCredential= lines of a unit: credential id -> source file.
std::map<std::string, std::string> credentials(const UnitFile& unit) {
  std::map<std::string, std::string> ids;
  const auto service = unit.find("Service");
  if (service == unit.end()) return ids;
  const auto [first, last] = service->second.equal_range("LoadCredential");
  for (auto it = first; it != last; ++it) {
    const auto colon = it->second.find(':');
    REQUIRE(colon != std::string::npos);
    ids[it->second.substr(0, colon)] = it->second.substr(colon + 1);
  }
  return ids;
}

}  // namespace

TEST_CASE("the Kubernetes manifests take every key, token and certificate from read-only Secrets",
          "[integration]") {
  const auto objects = k8s_objects();
  // Secrets are created from files out of band (deploy/k8s/README.md), never shipped with a
  // value, and no environment variable carries one.
  for (const auto& object : objects) {
    CHECK(object.value("kind", "") != "Secret");
  }
  for (const auto& file : yaml_files_under(deploy_dir() / "k8s")) check_no_inline_secret(file);

  const auto& coordinator_set = find_object(objects, "StatefulSet", "evald-coordinator");
  const auto& worker_set = find_object(objects, "StatefulSet", "evald-worker");
  for (const auto* set : {&coordinator_set, &worker_set}) {
    const auto& pod = set->at("spec").at("template").at("spec");
    for (const auto& container : pod.at("containers")) {
      for (const auto& variable : container.value("env", json::array())) {
        INFO("env " << variable.dump());
        CHECK_FALSE((variable.contains("value") &&
                     std::regex_search(variable.at("name").get<std::string>(),
                                       std::regex("TOKEN|SECRET|KEY|PASSWORD"))));
      }
      CHECK(std::find(container.at("args").begin(), container.at("args").end(), "--insecure") ==
            container.at("args").end());
    }
  }

  SECTION("the coordinator: CURVE, the allowlist, tokens and TLS; probes speak HTTPS") {
    const auto& pod = coordinator_set.at("spec").at("template").at("spec");
    const auto& container = pod.at("containers").at(0);
    for (const auto& flag : kCoordinatorSecretFlags) {
      INFO(flag);
      const auto path = flag_value(container.at("args"), flag);
      REQUIRE(path);
      check_from_secret_volume(pod, container, *path);
    }
    for (const char* probe : {"startupProbe", "readinessProbe", "livenessProbe"}) {
      INFO(probe);
      CHECK(container.at(probe).at("httpGet").value("scheme", "HTTP") == "HTTPS");
    }
    CHECK(coordinator_set.at("spec")
              .at("template")
              .at("metadata")
              .at("annotations")
              .value("prometheus.io/scheme", "") == "https");
  }

  SECTION("each worker: its own key, named after its pod, and the coordinator's key pinned") {
    const auto& pod = worker_set.at("spec").at("template").at("spec");
    const auto& container = pod.at("containers").at(0);
    const auto& args = container.at("args");
    for (const auto& flag : kWorkerSecretFlags) {
      INFO(flag);
      const auto path = flag_value(args, flag);
      REQUIRE(path);
      check_from_secret_volume(pod, container, *path);
    }
    // The name the coordinator binds the key to is the pod's name, and so is the key file's.
    CHECK(flag_value(args, "--name") == std::optional<std::string>("$(POD_NAME)"));
    CHECK(fs::path(*flag_value(args, "--curve-secret")).filename() == "$(POD_NAME).secret");
    bool pod_name_from_metadata = false;
    for (const auto& variable : container.at("env")) {
      pod_name_from_metadata =
          pod_name_from_metadata ||
          (variable.at("name") == "POD_NAME" &&
           variable.at("valueFrom").at("fieldRef").at("fieldPath") == "metadata.name");
    }
    CHECK(pod_name_from_metadata);
    CHECK(flag_value(args, "--allow-exec").has_value());
  }
}

TEST_CASE("compose passes keys and tokens as secrets, each worker only its own key",
          "[integration]") {
  const auto compose_file = deploy_dir() / "docker" / "compose.yaml";
  check_no_inline_secret(compose_file);
  const auto compose = load_yaml(compose_file).at(0);
  const auto& secrets = compose.at("secrets");
  // Every secret is a file under ./secrets/, which git ignores, so no key is ever committed.
  for (const auto& [name, secret] : secrets.items()) {
    INFO("secret " << name);
    REQUIRE(secret.contains("file"));
    CHECK(secret.at("file").get<std::string>().rfind("./secrets/", 0) == 0);
  }
  CHECK(read_file(fs::path(EVALD_SOURCE_DIR) / ".gitignore").find("/deploy/docker/secrets/") !=
        std::string::npos);

  // A secret flag reads /run/secrets/NAME of a secret that the service mounts.
  const auto secret_of = [&](const std::string& service_name, const json& service,
                             const std::string& flag) -> std::string {
    INFO("service " << service_name << " " << flag);
    const auto path = flag_value(service.at("command"), flag);
    REQUIRE(path);
    const std::string prefix = "/run/secrets/";
    REQUIRE(path->rfind(prefix, 0) == 0);
    const auto name = path->substr(prefix.size());
    CHECK(secrets.contains(name));
    const auto& mounted = service.value("secrets", json::array());
    CHECK(std::find(mounted.begin(), mounted.end(), name) != mounted.end());
    return name;
  };

  const auto& services = compose.at("services");
  const auto& coordinator = services.at("coordinator");
  for (const auto& flag : {"--curve-secret", "--worker-keys", "--api-tokens"}) {
    secret_of("coordinator", coordinator, flag);
  }
  size_t workers = 0;
  for (const auto& [name, service] : services.items()) {
    CHECK_FALSE(service.value("environment", json::object()).contains("EVALD_TOKEN"));
    const auto command = service.value("command", json::array());
    if (std::find(command.begin(), command.end(), "--insecure") != command.end()) {
      FAIL("service " << name << " runs with --insecure");
    }
    if (!service.contains("build") || service["build"].value("target", "") != "worker") continue;
    ++workers;
    INFO("service " << name);
    const auto own = secret_of(name, service, "--curve-secret");
    secret_of(name, service, "--coordinator-key");
    CHECK(flag_value(service.at("command"), "--allow-exec").has_value());
    // The key is the one made for this worker's --name, and no other worker key is mounted.
    const auto worker_name = *flag_value(service.at("command"), "--name");
    CHECK(secrets.at(own).at("file") == "./secrets/workers/" + worker_name + ".secret");
    for (const auto& mounted : service.at("secrets")) {
      const auto file = secrets.at(mounted.get<std::string>()).at("file").get<std::string>();
      if (file.rfind("./secrets/workers/", 0) == 0) CHECK(mounted == own);
      CHECK(file != "./secrets/coordinator.secret");
    }
  }
  CHECK(workers == 2);
}

TEST_CASE("the systemd units load keys, tokens and TLS files as credentials", "[integration]") {
  for (const auto& [name, flags] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"evald-coordinator.service", kCoordinatorSecretFlags},
           {"evald-worker.service", kWorkerSecretFlags}}) {
    INFO(name);
    const auto file = deploy_dir() / "systemd" / name;
    check_no_inline_secret(file);
    const auto unit = parse_unit(read_file(file));
    const auto ids = credentials(unit);
    const auto exec = json(split_words(unit_value(unit, "Service", "ExecStart")));
    CHECK(std::find(exec.begin(), exec.end(), "--insecure") == exec.end());
    for (const auto& flag : flags) {
      INFO(flag);
      // %d is the service's private credentials directory ($CREDENTIALS_DIRECTORY).
      const auto value = flag_value(exec, flag);
      REQUIRE(value);
      REQUIRE(value->rfind("%d/", 0) == 0);
      const auto id = value->substr(3);
      REQUIRE(ids.count(id) == 1);
      CHECK(ids.at(id).rfind("/etc/evald/", 0) == 0);
    }
    if (name == "evald-worker.service") {
      // The worker's name is the host's, and so is its key's: the coordinator binds the two.
      CHECK(flag_value(exec, "--name") == std::optional<std::string>("%l"));
      CHECK(ids.at(flag_value(exec, "--curve-secret")->substr(3)) == "/etc/evald/keys/%l.secret");
      CHECK(flag_value(exec, "--allow-exec").has_value());
    }
  }
}

TEST_CASE("the Slurm script names each worker after a node-local key and pins the coordinator's",
          "[integration]") {
  const auto script = deploy_dir() / "slurm" / "evald-workers.sbatch";
  const auto text = read_file(script);
  check_no_inline_secret(script);
  CHECK(text.find("--curve-secret \"${key}\" --coordinator-key "
                  "\"${EVALD_KEY_DIR}/coordinator.public\"") != std::string::npos);
  CHECK(text.find("name=\"$(basename \"${key}\" .secret)\"") != std::string::npos);
  // The key stays locked by the worker for its lifetime, so two jobs never share a name.
  CHECK(text.find("flock --nonblock") != std::string::npos);

  // A key directory without the coordinator's key stops the job before any worker starts,
  // rather than starting workers the coordinator would refuse.
  const auto bash = find_program("bash");
  REQUIRE_FALSE(bash.empty());
  TempDir keys("evald-slurm-keys");
  const auto result = run_command(bash, {script.string(), "tcp://127.0.0.1:1"}, 30s,
                                  {{"SLURM_JOB_ID", "1"}, {"EVALD_KEY_DIR", keys.path().string()}});
  CHECK(result.exit_code == 2);
  CHECK(result.err.find("has no coordinator.public") != std::string::npos);
}

// --- autoscaling (docs/autoscaling.md) ---------------------------------------------------------

namespace {

// The components' files, and what each must hold.
const fs::path kKedaDir = fs::path("k8s") / "autoscaling" / "keda";
const fs::path kHpaDir = fs::path("k8s") / "autoscaling" / "hpa";

// A kustomize Component that adds its resources (which exist) and hands the replica count of the
// worker StatefulSet to the autoscaler.
void check_autoscaling_component(const fs::path& dir, const std::vector<json>& base) {
  INFO(dir.string());
  const auto component = load_yaml(dir / "kustomization.yaml").at(0);
  CHECK(component.at("apiVersion") == "kustomize.config.k8s.io/v1alpha1");
  CHECK(component.at("kind") == "Component");
  for (const auto& resource : component.at("resources")) {
    CHECK(fs::exists(dir / resource.get<std::string>()));
  }
  REQUIRE(component.at("patches").size() == 1);
  const auto& patch = component["patches"][0];
  CHECK(patch.at("target").at("kind") == "StatefulSet");
  const auto& workers =
      find_object(base, "StatefulSet", patch["target"].at("name").get<std::string>());
  // The patch removes what the base sets: the op applies, and `kubectl apply` no longer resets
  // what the autoscaler chose.
  CHECK(workers.at("spec").contains("replicas"));
  CHECK_THAT(patch.at("patch").get<std::string>(),
             Catch::Contains("op: remove") && Catch::Contains("path: /spec/replicas"));
}

// The pool label of the worker StatefulSet's --labels ("node=$(NODE_NAME),pool=k8s" -> "k8s").
std::string worker_pool_label(const json& worker_set) {
  const auto labels =
      flag_value(worker_set["spec"]["template"]["spec"]["containers"][0].at("args"), "--labels");
  REQUIRE(labels);
  std::smatch match;
  REQUIRE(std::regex_search(*labels, match, std::regex("(^|,)pool=([^,]+)")));
  return match[2];
}

// The samples of `family` in a /metrics page, as "name{labels}" -> value.
std::map<std::string, double> scraped_samples(const std::string& page, const std::string& family) {
  std::map<std::string, double> samples;
  std::istringstream lines(page);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(family + "{", 0) != 0 && line.rfind(family + " ", 0) != 0) continue;
    const auto space = line.rfind(' ');
    samples[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return samples;
}

// Runs `promtool test rules` with the given input series and expression tests (YAML text);
// returns promtool's output on failure, "" when every test passed.
std::string promtool_eval(const TempDir& dir, const std::string& tests_yaml) {
  const auto promtool = find_program("promtool");
  if (promtool.empty()) FAIL("promtool not found; install prometheus (scripts/setup.sh does)");
  std::ofstream(dir.path() / "empty-rules.yml") << "groups: []\n";
  const auto file = dir.path() / "autoscaling-test.yml";
  std::ofstream(file) << "rule_files: [empty-rules.yml]\nevaluation_interval: 1m\ntests:\n"
                      << tests_yaml;
  const auto result = run_command(promtool, {"test", "rules", file.string()}, 60s);
  if (result.exit_code == 0) return "";
  return "promtool exit " + std::to_string(result.exit_code) + ": " + result.out + result.err +
         "\n--- " + file.string() + ":\n" + read_file(file);
}

// A PromQL string as a YAML double-quoted scalar.
std::string yaml_quoted(const std::string& text) {
  return json(text).dump();
}

}  // namespace

TEST_CASE("the autoscaling components size the worker StatefulSet within sane bounds",
          "[integration]") {
  const auto base = k8s_objects();
  const auto& workers = find_object(base, "StatefulSet", "evald-worker");
  const auto& pod = workers.at("spec").at("template").at("spec");
  const auto& container = pod.at("containers").at(0);
  const int64_t gpus_per_pod = container.at("resources").at("limits").at("nvidia.com/gpu");
  const std::string pool = worker_pool_label(workers);
  check_autoscaling_component(deploy_dir() / kKedaDir, base);
  check_autoscaling_component(deploy_dir() / kHpaDir, base);

  // Every query: this pool's busy workers and pending work, by the pool's label, and the pod's
  // GPUs in the divisor, "(TARGET_DRAIN_S * GPUS)".
  const auto check_query = [&](const std::string& query) {
    INFO("query: " << query);
    // The pool's busy workers, by its label (not per-worker series: those stop at
    // --max-worker-series).
    CHECK_THAT(query,
               Catch::Contains("evald_workers_busy{labels=~\"(.*,)?pool=" + pool + "(,.*)?\""));
    CHECK_THAT(query, Catch::Contains("pool=" + pool + "(,.*)?\""));
    CHECK_THAT(query, Catch::Contains("labels=\"all\""));
    std::smatch divisor;
    REQUIRE(std::regex_search(query, divisor, std::regex(R"(/ \(([0-9]+) \* ([0-9]+)\))")));
    const int64_t drain_s = std::stoll(divisor[1]);
    CHECK(drain_s >= 60);
    CHECK(drain_s <= 86'400);
    CHECK(std::stoll(divisor[2]) == gpus_per_pod);
  };
  // Scale-down drains busy pods: slow, and never faster than a drain can finish.
  const auto check_behavior = [&](const json& behavior) {
    const int64_t window = behavior.at("scaleDown").at("stabilizationWindowSeconds");
    CHECK(window >= 300);
    for (const auto& policy : behavior["scaleDown"].at("policies")) {
      CHECK(policy.at("type") == "Pods");
      CHECK(policy.at("value") == 1);
      CHECK(policy.at("periodSeconds").get<int64_t>() >= 60);
    }
    CHECK(pod.at("terminationGracePeriodSeconds").get<int64_t>() * 1000 >=
          std::stoll(*flag_value(container.at("args"), "--drain-timeout-ms")) + 10'000);
  };

  SECTION("KEDA: a ScaledObject with a Prometheus trigger on the coordinator's gauges") {
    const auto objects = load_yaml(deploy_dir() / kKedaDir / "scaledobject.yaml");
    REQUIRE(objects.size() == 1);
    const auto& scaled = objects[0];
    CHECK(scaled.at("apiVersion") == "keda.sh/v1alpha1");
    CHECK(scaled.at("kind") == "ScaledObject");
    const auto& spec = scaled.at("spec");
    CHECK(spec.at("scaleTargetRef") ==
          json({{"apiVersion", "apps/v1"}, {"kind", "StatefulSet"}, {"name", "evald-worker"}}));
    const int64_t min = spec.at("minReplicaCount");
    const int64_t max = spec.at("maxReplicaCount");
    CHECK(min >= 0);
    CHECK(min <= max);
    CHECK(max >= 1);
    CHECK(max <= 64);
    CHECK(spec.at("cooldownPeriod").get<int64_t>() >= 300);
    check_behavior(spec.at("advanced").at("horizontalPodAutoscalerConfig").at("behavior"));
    REQUIRE(spec.at("triggers").size() == 1);
    const auto& trigger = spec["triggers"][0];
    CHECK(trigger.at("type") == "prometheus");
    CHECK(trigger.at("metricType") == "AverageValue");
    CHECK(trigger.at("metadata").at("threshold") == "1");
    // KEDA's default turns an empty query answer into 0, which would drain busy workers.
    CHECK(trigger.at("metadata").at("ignoreNullValues") == "false");
    check_query(trigger["metadata"].at("query"));
  }

  SECTION("HPA: an external metric that prometheus-adapter's rule serves") {
    const auto objects = load_yaml(deploy_dir() / kHpaDir / "hpa.yaml");
    REQUIRE(objects.size() == 1);
    const auto& hpa = objects[0];
    CHECK(hpa.at("apiVersion") == "autoscaling/v2");
    CHECK(hpa.at("kind") == "HorizontalPodAutoscaler");
    const auto& spec = hpa.at("spec");
    CHECK(spec.at("scaleTargetRef") ==
          json({{"apiVersion", "apps/v1"}, {"kind", "StatefulSet"}, {"name", "evald-worker"}}));
    CHECK(spec.at("minReplicas").get<int64_t>() >= 1);
    CHECK(spec.at("minReplicas") <= spec.at("maxReplicas"));
    CHECK(spec.at("maxReplicas").get<int64_t>() <= 64);
    check_behavior(spec.at("behavior"));
    REQUIRE(spec.at("metrics").size() == 1);
    const auto& external = spec["metrics"][0].at("external");
    CHECK(external.at("target") == json({{"type", "AverageValue"}, {"averageValue", "1"}}));

    const auto values = load_yaml(deploy_dir() / kHpaDir / "prometheus-adapter-values.yaml");
    REQUIRE(values.size() == 1);
    CHECK(values[0].at("rules").at("default") == false);
    REQUIRE(values[0]["rules"].at("external").size() == 1);
    const auto& rule = values[0]["rules"]["external"][0];
    CHECK(rule.at("name").at("as") == external.at("metric").at("name"));
    check_query(rule.at("metricsQuery"));
  }
}

TEST_CASE("the autoscaling queries compute the wanted workers from a real coordinator's gauges",
          "[integration]") {
  const auto scaled = load_yaml(deploy_dir() / kKedaDir / "scaledobject.yaml").at(0);
  const std::string keda_query = scaled["spec"]["triggers"][0]["metadata"].at("query");
  const auto values = load_yaml(deploy_dir() / kHpaDir / "prometheus-adapter-values.yaml").at(0);
  std::string adapter_query = values["rules"]["external"][0].at("metricsQuery");
  // The adapter fills <<.LabelMatchers>> with the HPA's namespace.
  for (size_t at; (at = adapter_query.find("<<.LabelMatchers>>")) != std::string::npos;) {
    adapter_query.replace(at, std::string("<<.LabelMatchers>>").size(), "namespace=\"evald\"");
  }

  // A coordinator with two pods of the StatefulSet's pool (one per node, as worker.yaml labels
  // them) and a worker of another pool; every shard hangs, so each worker runs one and the rest
  // stays pending.
  ClusterOptions options;
  options.workers = 0;
  Cluster cluster(options);
  for (const auto& [name, labels] :
       std::vector<std::pair<std::string, std::string>>{{"evald-worker-0", "node=n1,pool=k8s"},
                                                        {"evald-worker-1", "node=n2,pool=k8s"},
                                                        {"slurm-7-0", "pool=slurm"}}) {
    WorkerOptions worker = cluster.worker_defaults();
    worker.name = name;
    worker.labels = labels;
    worker.slots = 1;
    worker.extra_args = {"--drain-timeout-ms", "0"};  // the hung shards end with the test
    cluster.add_worker(worker);
  }
  const auto api = cluster.api();
  api.wait_for_workers(3);
  // 40 shards: with nothing learned yet a shard is expected to take a minute, so the 37 pending
  // are about 2,220 GPU-seconds per kind: enough that summing the pool's two kinds instead of
  // taking the larger, or counting every busy worker, would change the answer.
  json hang = json::array();
  for (int shard = 0; shard < 40; ++shard) hang.push_back(shard);
  json spec = {{"name", "autoscale-probe"},
               {"models", {{{"name", "m"}, {"params", {{"hang_shards", hang}}}}}},
               {"benchmarks",
                {{{"name", "b"}, {"examples", 400}, {"shard_size", 10}, {"metric", "accuracy"}}}},
               {"runner",
                {{"type", "exec"},
                 {"command", {"evald-test-runner", "{model}", "{benchmark}", "{shard}"}},
                 {"timeout_s", 600}}}};
  api.submit(spec);
  // Three shards run (one per worker), 37 are pending; the gauges refresh every 250 ms.
  REQUIRE(wait_until(
      [&] {
        return api.metric_if_declared("evald_workers_busy").value_or(0) == 3.0 &&
               api.metric("evald_pending_gpu_seconds", {{"labels", "node=n1,pool=k8s"}}) > 0;
      },
      20s));
  const auto page = api.request("GET", "/metrics").body;

  // Every series the queries read is one the coordinator exports, under these names.
  const std::vector<std::string> families = {"evald_workers_busy", "evald_pending_gpu_seconds"};
  for (const auto& family : families) {
    CHECK_THAT(page, Catch::Contains("# TYPE " + family + " gauge"));
    CHECK_THAT(keda_query, Catch::Contains(family + "{"));
    CHECK_THAT(adapter_query, Catch::Contains(family + "{"));
  }
  std::string keda_series;
  std::string adapter_series;
  for (const auto& family : families) {
    for (const auto& [series, value] : scraped_samples(page, family)) {
      const auto line = "        values: '" + std::to_string(value) + "x5'\n";
      keda_series += "      - series: " + yaml_quoted(series) + "\n" + line;
      auto with_namespace = series;
      with_namespace.insert(with_namespace.size() - 1, ",namespace=\"evald\"");
      adapter_series += "      - series: " + yaml_quoted(with_namespace) + "\n" + line;
    }
  }
  // Wanted: the two busy pods of the set (not the other pool's worker) plus the pods that would
  // run the pool's pending work (the larger of its two kinds) in the target drain time.
  const auto pending = scraped_samples(page, "evald_pending_gpu_seconds");
  const double pool_pending =
      std::max(pending.at("evald_pending_gpu_seconds{labels=\"node=n1,pool=k8s\"}"),
               pending.at("evald_pending_gpu_seconds{labels=\"node=n2,pool=k8s\"}"));
  std::smatch divisor;
  REQUIRE(std::regex_search(keda_query, divisor, std::regex(R"(/ \(([0-9]+) \* ([0-9]+)\))")));
  const double per_pod = std::stod(divisor[1]) * std::stod(divisor[2]);
  const double wanted = 2 + std::ceil(pool_pending / per_pod);
  INFO("pool pending " << pool_pending << " GPU-s; " << page.size() << " bytes of /metrics");
  CHECK(pool_pending > 0);

  // At zero the pool has no kind yet: all pending work counts.
  const double all_pending = pending.at("evald_pending_gpu_seconds{labels=\"all\"}");
  const std::string zero_series =
      "      - series: 'evald_pending_gpu_seconds{labels=\"all\"}'\n"
      "        values: '" +
      std::to_string(all_pending) + "x5'\n";
  const std::string zero_series_ns =
      "      - series: 'evald_pending_gpu_seconds{labels=\"all\",namespace=\"evald\"}'\n"
      "        values: '" +
      std::to_string(all_pending) + "x5'\n";
  const double wanted_from_zero = std::ceil(all_pending / per_pod);
  CHECK(wanted_from_zero >= 1);

  const auto test = [](const std::string& series, const std::string& query, double expected) {
    return "  - interval: 1m\n    input_series:\n" + series +
           "    promql_expr_test:\n      - expr: " + yaml_quoted(query) +
           "\n        eval_time: 2m\n        exp_samples:\n          - labels: '{}'\n"
           "            value: " +
           std::to_string(expected) + "\n";
  };
  TempDir dir("evald-autoscale-promql");
  const auto failure = promtool_eval(
      dir, test(keda_series, keda_query, wanted) + test(adapter_series, adapter_query, wanted) +
               test(zero_series, keda_query, wanted_from_zero) +
               test(zero_series_ns, adapter_query, wanted_from_zero));
  INFO(failure);
  CHECK(failure.empty());
}
