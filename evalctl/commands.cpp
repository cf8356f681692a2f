// Parsing is two-pass: the global flags are taken from anywhere on the line (so
// `evalctl results ID --json` works), everything else is handed, in order, to the subcommand's
// own parser, which knows its flags and positional arguments.
#include "evalctl/commands.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>
#include <thread>

#include "common/cli_options.hpp"
#include "common/curve_keys.hpp"
#include "common/http_client.hpp"
#include "common/json_fields.hpp"
#include "common/json_limits.hpp"
#include "common/spec.hpp"
#include "common/time_format.hpp"
#include "common/version.hpp"
#include "common/yaml.hpp"
#include "evalctl/bundle.hpp"
#include "evalctl/format.hpp"
#include "evalctl/report.hpp"
#include "independence/check.hpp"

namespace evald::evalctl {
namespace {

using nlohmann::json;

constexpr const char* kDefaultServer = "http://127.0.0.1:8080";
// Options must be spelled out: with guessing, a subcommand flag could be taken for a prefix of a
// global one.
constexpr int kParseStyle =
    po::command_line_style::unix_style ^ po::command_line_style::allow_guessing;
// `watch` rides out a coordinator restart (docs/results.md) for this long before giving up.
constexpr auto kWatchReconnectWindow = std::chrono::seconds(60);
constexpr const char* kShardStates[] = {"pending", "running", "succeeded", "failed", "cancelled"};

struct CommandInfo {
  const char* name;
  const char* usage;
  const char* summary;
};

constexpr CommandInfo kCommands[] = {
    {"submit", "submit FILE",
     "validate a campaign spec (JSON, or YAML for .yaml/.yml), submit it, print its id"},
    {"status", "status [ID]", "one campaign's shard counts and ETA, or all campaigns"},
    {"watch", "watch ID [--interval-ms MS]", "live progress; exit 0 only if every shard succeeded"},
    {"results", "results ID [--format table|json|csv|markdown]", "the campaign's leaderboard"},
    {"shards", "shards ID [--state STATE]", "shards: attempts, worker, duration, last error"},
    {"samples", "samples ID --model M --benchmark B",
     "per-example scores of counted results, one JSON object per line"},
    {"compare", "compare ID MODEL_A MODEL_B",
     "paired comparison per benchmark: difference, 95% interval, p-value (Holm-adjusted)"},
    {"report", "report ID -o FILE.html", "write a self-contained HTML report of the results"},
    {"rerun", "rerun ID [--failed|--all] [--model M] [--benchmark B]",
     "queue failed (or selected) shards again"},
    {"cancel", "cancel ID", "stop a campaign; running shards are told to stop"},
    {"workers", "workers", "connected workers: slots, GPUs, heartbeat, shards"},
    {"independence", "independence A B [--alpha P]",
     "is one safetensors checkpoint derived from another? (local files, no server)"},
    {"keygen", "keygen PREFIX [--force]",
     "write a CURVE key pair for the worker socket: PREFIX.secret (0600) and PREFIX.public"},
    {"audit", "audit [--since SEQ] [--limit N]",
     "who submitted, reran and cancelled what, and refused requests (admin)"},
    {"export", "export ID DIR",
     "write spec, results, provenance and samples to DIR with a MANIFEST.sha256"},
    {"scores", "scores import ID COMPONENT FILE.csv",
     "import 0-100 scores per model ('model,score' lines) for the composite score"},
};

const CommandInfo* find_command(const std::string& name) {
  for (const auto& command : kCommands) {
    if (name == command.name) return &command;
  }
  return nullptr;
}

po::options_description global_options() {
  po::options_description options("Global options");
  options.add_options()("server", po::value<std::string>()->value_name("URL"),
                        "coordinator API (default: $EVALD_SERVER, else http://127.0.0.1:8080)")(
      "json", "print the server's JSON on stdout (for scripts)")(
      "token", po::value<std::string>()->value_name("TOKEN"),
      "API bearer token (default: $EVALD_TOKEN)")(
      "cacert", po::value<std::string>()->value_name("FILE"),
      "PEM CA certificate(s) to trust for an https:// server (default: $EVALD_CACERT, else the "
      "system's)")("client-cert", po::value<std::string>()->value_name("FILE"),
                   "PEM client certificate, for a server that requires one")(
      "client-key", po::value<std::string>()->value_name("FILE"),
      "PEM key of --client-cert (default: read from the --client-cert file)")(
      "config", po::value<std::string>()->value_name("FILE"),
      "JSON file whose keys mirror the global long flags")(
      "help,h", "show help; after a command, that command's options")("version",
                                                                      "print the version and exit");
  return options;
}

std::string main_help() {
  std::ostringstream text;
  text
      << "Usage: evalctl [--server URL] [--token TOKEN] [--cacert FILE] [--json] COMMAND [ARGS]\n\n"
         "Client for the evald coordinator's HTTP API.\n\nCommands:\n";
  size_t width = 0;
  for (const auto& command : kCommands) width = std::max(width, std::strlen(command.usage));
  for (const auto& command : kCommands) {
    text << "  " << command.usage << std::string(width - std::strlen(command.usage) + 2, ' ')
         << command.summary << "\n";
  }
  text << "\n"
       << global_options() << "\n"
       << "Run 'evalctl COMMAND --help' for a command's options.\n"
          "Exit codes: 0 ok, 1 runtime failure, 2 usage error.\n";
  return text.str();
}

// A subcommand's flags (shown in its help) and its positional arguments (named in its usage).
struct CommandSpec {
  po::options_description visible{"Options"};
  po::options_description hidden;
  po::positional_options_description positional;
};

void describe_command(const std::string& name, CommandSpec& spec) {
  if (name == "submit") {
    spec.hidden.add_options()("file", po::value<std::string>(), "");
    spec.positional.add("file", 1);
    return;
  }
  if (name == "workers") return;
  if (name == "independence") {
    spec.hidden.add_options()("a", po::value<std::string>(), "")("b", po::value<std::string>(), "");
    spec.positional.add("a", 1).add("b", 1);
    spec.visible.add_options()("alpha",
                               po::value<double>()->default_value(0.01, "0.01")->value_name("P"),
                               "significance level: 'dependent' means p-value < P")(
        "max-units", po::value<int64_t>()->default_value(256)->value_name("N"),
        "hidden units of A sampled per tensor and matched against all units of B (more: slower, "
        "more power)")("threads", po::value<unsigned>()->default_value(2)->value_name("T"),
                       "threads for the matching");
    return;
  }
  if (name == "keygen") {
    spec.hidden.add_options()("prefix", po::value<std::string>(), "");
    spec.positional.add("prefix", 1);
    spec.visible.add_options()("force", "replace existing key files (the old key stops working)");
    return;
  }
  if (name == "audit") {
    spec.visible.add_options()("since", po::value<uint64_t>()->default_value(0)->value_name("SEQ"),
                               "only events after this sequence number")(
        "limit", po::value<uint64_t>()->value_name("N"),
        "at most N events (default: all, fetched page by page)");
    return;
  }
  if (name == "scores") {
    spec.hidden.add_options()("action", po::value<std::string>(), "")(
        "id", po::value<std::string>(), "")("component", po::value<std::string>(), "")(
        "file", po::value<std::string>(), "");
    spec.positional.add("action", 1).add("id", 1).add("component", 1).add("file", 1);
    return;
  }
  spec.hidden.add_options()("id", po::value<std::string>(), "");
  spec.positional.add("id", 1);
  if (name == "samples") {
    spec.visible.add_options()("model", po::value<std::string>()->value_name("M"), "the model")(
        "benchmark", po::value<std::string>()->value_name("B"), "the benchmark");
  } else if (name == "compare") {
    spec.hidden.add_options()("a", po::value<std::string>(), "")("b", po::value<std::string>(), "");
    spec.positional.add("a", 1).add("b", 1);
  } else if (name == "report") {
    spec.visible.add_options()("output,o", po::value<std::string>()->value_name("FILE"),
                               "where to write the HTML file");
  }
  if (name == "export") {
    spec.hidden.add_options()("dir", po::value<std::string>(), "");
    spec.positional.add("dir", 1);
  } else if (name == "watch") {
    spec.visible.add_options()("interval-ms",
                               po::value<int>()->default_value(500)->value_name("MS"),
                               "how often to ask the server, in milliseconds");
  } else if (name == "results") {
    spec.visible.add_options()(
        "format", po::value<std::string>()->default_value("table")->value_name("FORMAT"),
        "table, json, csv or markdown (--json is --format json)");
  } else if (name == "shards") {
    spec.visible.add_options()("state", po::value<std::string>()->value_name("STATE"),
                               "only shards in this state: pending, running, succeeded, failed, "
                               "cancelled");
  } else if (name == "rerun") {
    spec.visible.add_options()("failed", "select the failed shards (the default)")(
        "all",
        "select every finished shard, succeeded ones included (they are evaluated again and "
        "leave the leaderboard until then)")("model", po::value<std::string>()->value_name("M"),
                                             "only shards of this model")(
        "benchmark", po::value<std::string>()->value_name("B"), "only shards of this benchmark");
  }
}

std::string command_help(const CommandInfo& info, const CommandSpec& spec) {
  std::ostringstream text;
  std::string summary = info.summary;
  summary.front() = static_cast<char>(std::toupper(static_cast<unsigned char>(summary.front())));
  text << "Usage: evalctl " << info.usage << "\n\n" << summary << ".\n";
  if (!spec.visible.options().empty()) text << "\n" << spec.visible;
  text << "\nGlobal options (--server URL, --json) work with every command; see 'evalctl "
          "--help'.\n";
  return text.str();
}

po::variables_map parse_command_args(const CommandInfo& info, const CommandSpec& spec,
                                     const std::vector<std::string>& args) {
  po::options_description all;
  all.add(spec.visible).add(spec.hidden);
  po::variables_map values;
  try {
    po::store(po::command_line_parser(args)
                  .options(all)
                  .positional(spec.positional)
                  .style(kParseStyle)
                  .run(),
              values);
    po::notify(values);
  } catch (const po::error& e) {
    throw UsageError(std::string(info.name) + ": " + e.what());
  }
  return values;
}

std::string require_positional(const CommandInfo& info, const po::variables_map& values,
                               const char* key, const char* what) {
  if (values.count(key) == 0) {
    throw UsageError(std::string(info.name) + ": missing " + what + " (usage: evalctl " +
                     info.usage + ")");
  }
  return values[key].as<std::string>();
}

// Percent-encodes everything but RFC 3986 unreserved characters, for a path segment or a query
// value.
std::string url_encode(const std::string& text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string encoded;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (std::isalnum(byte) != 0 || c == '-' || c == '.' || c == '_' || c == '~') {
      encoded += c;
    } else {
      encoded += '%';
      encoded += kHex[byte >> 4];
      encoded += kHex[byte & 0xF];
    }
  }
  return encoded;
}

struct Context {
  HttpUrl server;
  HttpClientOptions client;
  bool json_output = false;
  bool tty = false;
  std::ostream& out;
  std::ostream& err;
};

int fail(const Context& context, const std::string& message) {
  context.err << "evalctl: " << message << "\n";
  return kExitFailure;
}

// One API call: transport failures, HTTP errors and non-JSON answers all become the message
// to show.
Result<json> call(const Context& context, const std::string& method, const std::string& target,
                  const std::string& body = "") {
  auto response = http_request(context.server, context.client, method, target, body);
  if (!response) return response.error();
  if (response->status < 200 || response->status >= 300) {
    return make_error(http_error_message(response->status, response->body));
  }
  auto parsed = parse_json_bounded(response->body);
  if (!parsed) {
    return make_error("unexpected answer to " + method + " " + target + ": it " +
                      parsed.error().message);
  }
  if (!parsed->is_object()) {
    return make_error("unexpected answer to " + method + " " + target + ": not a JSON object");
  }
  return std::move(parsed).value();
}

void print_json(const Context& context, const json& value) {
  context.out << value.dump(2) << "\n";
}

int submit(const Context& context, const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) {
    return fail(context, "cannot read campaign spec '" + path + "': No such file or directory");
  }
  if (std::filesystem::is_directory(status)) {
    return fail(context, "cannot read campaign spec '" + path + "': is a directory");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return fail(context, "cannot read campaign spec '" + path + "': " + std::strerror(errno));
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return fail(context, "cannot read campaign spec '" + path + "': read error");

  // Refused locally with the field named, so nothing half-valid reaches the coordinator. A YAML
  // spec is sent as the JSON value it denotes: the coordinator only ever sees JSON.
  const bool yaml = is_yaml_path(path);
  const auto spec = yaml ? parse_campaign_spec_yaml(text) : parse_campaign_spec_text(text);
  if (!spec) return fail(context, path + ": " + spec.error().message);
  std::string body = text;
  if (yaml) {
    auto converted = yaml_to_json(text);
    if (!converted) return fail(context, path + ": spec " + converted.error().message);
    body = converted->dump();
  }

  const auto reply = call(context, "POST", "/v1/campaigns", body);
  if (!reply) return fail(context, reply.error().message);
  if (context.json_output) {
    print_json(context, *reply);
  } else {
    const std::string id = string_field(*reply, "id").value_or("");
    if (id.empty()) return fail(context, "unexpected answer to submit: no campaign id");
    context.out << id << "\n";
  }
  return kExitOk;
}

int status(const Context& context, const std::optional<std::string>& id) {
  const auto reply = id ? call(context, "GET", "/v1/campaigns/" + url_encode(*id))
                        : call(context, "GET", "/v1/campaigns");
  if (!reply) return fail(context, reply.error().message);
  if (context.json_output) {
    print_json(context, *reply);
  } else {
    context.out << (id ? format_campaign(*reply) : format_campaigns(*reply));
  }
  return kExitOk;
}

int watch(const Context& context, const std::string& id, std::chrono::milliseconds interval) {
  const std::string target = "/v1/campaigns/" + url_encode(id);
  std::optional<json> last;
  std::optional<std::chrono::steady_clock::time_point> failing_since;
  bool line_open = false;  // a progress line drawn with \r and not yet ended
  const auto end_line = [&] {
    if (line_open) context.out << "\n" << std::flush;
    line_open = false;
  };
  std::string state;
  for (;;) {
    auto response = http_request(context.server, context.client, "GET", target);
    if (!response) {
      // The coordinator may be restarting; keep asking for a while before giving up.
      const auto now = std::chrono::steady_clock::now();
      if (!failing_since) {
        failing_since = now;
        end_line();
        context.err << "evalctl: " << response.error().message << " (retrying)\n";
      } else if (now - *failing_since > kWatchReconnectWindow) {
        return fail(context, response.error().message);
      }
      std::this_thread::sleep_for(interval);
      continue;
    }
    failing_since.reset();
    if (response->status < 200 || response->status >= 300) {
      end_line();
      return fail(context, http_error_message(response->status, response->body));
    }
    auto parsed = parse_json_bounded(response->body);
    json campaign = parsed ? std::move(parsed).value() : json();
    state = campaign.is_object() ? string_field(campaign, "state").value_or("") : std::string();
    if (state.empty()) {
      end_line();
      return fail(context, "unexpected answer to GET " + target + ": no campaign state");
    }
    const bool changed = !last || watch_counts_changed(*last, campaign);
    if (context.json_output) {
      if (changed) context.out << campaign.dump() << "\n" << std::flush;
    } else if (context.tty) {
      // \r returns to the line start, ESC[K clears what a longer previous line left behind.
      context.out << "\r" << format_watch_line(campaign) << "\x1b[K" << std::flush;
      line_open = true;
    } else if (changed) {
      context.out << format_watch_line(campaign) << "\n" << std::flush;
    }
    last = std::move(campaign);
    if (state != "running") break;
    std::this_thread::sleep_for(interval);
  }
  end_line();
  if (!context.json_output) context.out << "campaign " << id << " " << state << "\n";
  return state == "succeeded" ? kExitOk : kExitFailure;
}

int results(const Context& context, const std::string& id, ResultsFormat format) {
  const auto reply = call(context, "GET", "/v1/campaigns/" + url_encode(id) + "/results");
  if (!reply) return fail(context, reply.error().message);
  context.out << format_results(*reply, format);
  return kExitOk;
}

int shards(const Context& context, const std::string& id, const std::optional<std::string>& state) {
  std::string target = "/v1/campaigns/" + url_encode(id) + "/shards";
  if (state) target += "?state=" + url_encode(*state);
  const auto reply = call(context, "GET", target);
  if (!reply) return fail(context, reply.error().message);
  if (context.json_output) {
    print_json(context, *reply);
  } else {
    context.out << format_shards(*reply);
  }
  return kExitOk;
}

// Pages through GET .../samples and prints each sample as one line of JSON, in index order.
int samples(const Context& context, const std::string& id, const std::string& model,
            const std::string& benchmark) {
  const std::string base = "/v1/campaigns/" + url_encode(id) +
                           "/samples?model=" + url_encode(model) +
                           "&benchmark=" + url_encode(benchmark);
  std::optional<int64_t> cursor = 0;
  while (cursor) {
    const auto reply = call(context, "GET", base + "&cursor=" + std::to_string(*cursor));
    if (!reply) return fail(context, reply.error().message);
    const auto list = reply->find("samples");
    if (list == reply->end() || !list->is_array()) {
      return fail(context, "unexpected answer: no \"samples\" array");
    }
    for (const auto& sample : *list) {
      context.out << sample.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    }
    const auto next = integer_field(*reply, "next_cursor");
    // A cursor that does not move forward would loop forever; the server never sends one.
    if (next && *next <= *cursor) return fail(context, "unexpected answer: cursor went back");
    cursor = next;
  }
  return kExitOk;
}

int compare(const Context& context, const std::string& id, const std::string& a,
            const std::string& b) {
  const auto reply = call(
      context, "GET",
      "/v1/campaigns/" + url_encode(id) + "/compare?a=" + url_encode(a) + "&b=" + url_encode(b));
  if (!reply) return fail(context, reply.error().message);
  if (context.json_output) {
    print_json(context, *reply);
  } else {
    context.out << format_compare(*reply);
  }
  return kExitOk;
}

// The provenance endpoint may be missing (an older coordinator) or empty: the report says so
// instead of failing.
int report(const Context& context, const std::string& id, const std::string& path) {
  const std::string base = "/v1/campaigns/" + url_encode(id);
  const auto results_reply = call(context, "GET", base + "/results");
  if (!results_reply) return fail(context, results_reply.error().message);
  json provenance = nullptr;
  std::string note;
  auto response = http_request(context.server, context.client, "GET", base + "/provenance", "");
  if (!response) {
    return fail(context, response.error().message);
  }
  if (response->status == 404) {
    note = "no provenance recorded";
  } else if (response->status < 200 || response->status >= 300) {
    note = "provenance could not be read: " + http_error_message(response->status, response->body);
  } else if (auto parsed = parse_json_bounded(response->body); parsed && parsed->is_object()) {
    provenance = std::move(parsed).value();
  } else {
    note = "provenance could not be read: the answer is not a JSON object";
  }
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::system_clock::now().time_since_epoch());
  const std::string stamp = rfc3339_seconds(now_ms.count());
  const std::string html = render_report_html(*results_reply, provenance, note, stamp);
  // Written next to the target and renamed, so a reader never sees half a report.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << html;
    out.close();
    if (!out) {
      std::filesystem::remove(tmp);
      return fail(context, "cannot write report '" + path + "': " + std::strerror(errno));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    return fail(context, "cannot write report '" + path + "': " + ec.message());
  }
  if (context.json_output) {
    print_json(context, {{"report", path}, {"bytes", html.size()}});
  } else {
    context.out << "wrote " << path << " (" << html.size() << " bytes)\n";
  }
  return kExitOk;
}

// rerun and cancel: a POST whose answer is one count.
int post_count(const Context& context, const std::string& target, const json& body,
               const char* count_key, const char* verb) {
  const auto reply = call(context, "POST", target, body.dump());
  if (!reply) return fail(context, reply.error().message);
  if (context.json_output) {
    print_json(context, *reply);
    return kExitOk;
  }
  const auto count = integer_field(*reply, count_key);
  if (!count)
    return fail(context, std::string("unexpected answer: no \"") + count_key + "\" count");
  context.out << verb << " " << *count << " shards\n";
  return kExitOk;
}

int independence(const po::variables_map& values, bool json_output, std::ostream& out,
                 std::ostream& err) {
  const CommandInfo& info = *find_command("independence");
  independence::CheckOptions options;
  options.alpha = values["alpha"].as<double>();
  options.max_units = values["max-units"].as<int64_t>();
  options.threads = values["threads"].as<unsigned>();
  if (!(options.alpha > 0.0 && options.alpha < 1.0)) {
    throw UsageError("independence: --alpha must be between 0 and 1");
  }
  if (options.max_units < 1) throw UsageError("independence: --max-units must be at least 1");
  if (options.threads < 1) throw UsageError("independence: --threads must be at least 1");
  const std::string a = require_positional(info, values, "a", "checkpoint A");
  const std::string b = require_positional(info, values, "b", "checkpoint B");
  const auto report = independence::check_independence(a, b, options);
  if (!report) {
    err << "evalctl: independence: " << report.error().message << "\n";
    return kExitFailure;
  }
  if (json_output) {
    out << independence::report_json(*report).dump(2) << "\n";
  } else {
    out << independence::report_table(*report);
  }
  return kExitOk;
}

int workers(const Context& context) {
  // The coordinator answers a page of workers at a time (by name); gather them all.
  json all = {{"workers", json::array()}};
  std::string target = "/v1/workers";
  for (;;) {
    const auto reply = call(context, "GET", target);
    if (!reply) return fail(context, reply.error().message);
    const auto list = reply->find("workers");
    if (list == reply->end() || !list->is_array()) {
      return fail(context, "unexpected answer to GET /v1/workers: no workers");
    }
    for (const auto& w : *list) all["workers"].push_back(w);
    const auto next = reply->find("next_after");
    if (next == reply->end() || !next->is_string()) break;
    target = "/v1/workers?after=" + url_encode(next->get<std::string>());
  }
  if (context.json_output) {
    print_json(context, all);
  } else {
    context.out << format_workers(all);
  }
  return kExitOk;
}

int audit(const Context& context, uint64_t since, std::optional<uint64_t> limit) {
  json events = json::array();
  // Page through everything after `since` (or up to --limit events), oldest first.
  for (;;) {
    uint64_t page = 1000;
    if (limit) page = std::min<uint64_t>(page, *limit - events.size());
    if (page == 0) break;
    const auto reply =
        call(context, "GET",
             "/v1/audit?since=" + std::to_string(since) + "&limit=" + std::to_string(page));
    if (!reply) return fail(context, reply.error().message);
    const auto it = reply->find("events");
    if (it == reply->end() || !it->is_array()) {
      return fail(context, "unexpected answer to GET /v1/audit: no events");
    }
    for (const auto& event : *it) events.push_back(event);
    const auto next = integer_field(*reply, "next_since");
    const auto more = reply->find("more");
    if (it->empty() || !next || more == reply->end() || !more->is_boolean() || !more->get<bool>()) {
      break;
    }
    since = static_cast<uint64_t>(*next);
  }
  if (context.json_output) {
    print_json(context, json{{"events", events}});
  } else {
    context.out << format_audit(json{{"events", events}});
  }
  return kExitOk;
}

HttpUrl resolve_server(const po::variables_map& values, const Environment& environment) {
  std::string source = "--server";
  std::string url = kDefaultServer;
  if (values.count("server") > 0) {
    url = values["server"].as<std::string>();
  } else if (environment.server) {
    url = *environment.server;
    source = "EVALD_SERVER";
  }
  auto parsed = parse_http_url(url);
  if (!parsed) throw UsageError(source + ": " + parsed.error().message);
  return parsed.value();
}

// Local only: a key pair for `--curve-secret` / `--worker-keys` / `--coordinator-key`.
int keygen(const std::string& prefix, bool force, bool as_json, std::ostream& out,
           std::ostream& err) {
  const auto keys = generate_curve_key_pair();
  if (auto written = write_key_pair(prefix, keys, force); !written.ok()) {
    err << "evalctl: keygen: " << written.error().message << "\n";
    return kExitFailure;
  }
  const std::string name = std::filesystem::path(prefix).filename().string();
  if (as_json) {
    out << json{{"public_key", keys.public_z85},
                {"secret_file", prefix + ".secret"},
                {"public_file", prefix + ".public"}}
               .dump()
        << "\n";
    return kExitOk;
  }
  out << keys.public_z85 << "\n\n"
      << "Wrote " << prefix << ".secret (mode 0600; give it only to the daemon it belongs to) and "
      << prefix << ".public.\n"
      << "For a worker, add this line to the coordinator's --worker-keys file (NAME must be the "
         "worker's --name):\n  "
      << name << " " << keys.public_z85 << "\n"
      << "For the coordinator, give " << prefix
      << ".public to every worker as --coordinator-key.\n";
  return kExitOk;
}

HttpClientOptions resolve_client(const po::variables_map& values, const Environment& environment) {
  HttpClientOptions client;
  if (values.count("token") > 0) {
    client.bearer_token = values["token"].as<std::string>();
  } else if (environment.token) {
    client.bearer_token = *environment.token;
  }
  if (values.count("cacert") > 0) {
    client.ca_file = values["cacert"].as<std::string>();
  } else if (environment.cacert) {
    client.ca_file = *environment.cacert;
  }
  if (values.count("client-cert") > 0)
    client.client_cert_file = values["client-cert"].as<std::string>();
  if (values.count("client-key") > 0) {
    if (client.client_cert_file.empty()) throw UsageError("--client-key needs --client-cert");
    client.client_key_file = values["client-key"].as<std::string>();
  }
  return client;
}

int run_command(const CommandInfo& info, const std::vector<std::string>& args,
                const po::variables_map& global, bool help, std::ostream& out, std::ostream& err,
                const Environment& environment) {
  CommandSpec spec;
  describe_command(info.name, spec);
  if (help) {
    out << command_help(info, spec);
    return kExitOk;
  }
  const auto values = parse_command_args(info, spec, args);
  const std::string name = info.name;
  // Local work on files: no server to resolve.
  if (name == "independence") return independence(values, global.count("json") > 0, out, err);
  if (name == "keygen") {
    return keygen(require_positional(info, values, "prefix", "PREFIX"), values.count("force") > 0,
                  global.count("json") > 0, out, err);
  }
  Context context{resolve_server(global, environment),
                  resolve_client(global, environment),
                  global.count("json") > 0,
                  environment.stdout_is_tty,
                  out,
                  err};

  if (name == "submit") return submit(context, require_positional(info, values, "file", "FILE"));
  if (name == "workers") return workers(context);
  if (name == "audit") {
    std::optional<uint64_t> limit;
    if (values.count("limit") > 0) {
      limit = values["limit"].as<uint64_t>();
      if (*limit == 0) throw UsageError("audit: --limit must be a positive integer");
    }
    return audit(context, values["since"].as<uint64_t>(), limit);
  }
  if (name == "status") {
    std::optional<std::string> id;
    if (values.count("id") > 0) id = values["id"].as<std::string>();
    return status(context, id);
  }
  const ApiCall api = [&context](const std::string& method, const std::string& target,
                                 const std::string& body) {
    return call(context, method, target, body);
  };
  if (name == "scores") {
    const auto action = require_positional(info, values, "action", "action (import)");
    if (action != "import") throw UsageError("scores: unknown action '" + action + "' (import)");
    return import_scores(api, require_positional(info, values, "id", "campaign ID"),
                         require_positional(info, values, "component", "COMPONENT"),
                         require_positional(info, values, "file", "FILE.csv"), context.json_output,
                         out, err);
  }
  const std::string id = require_positional(info, values, "id", "campaign ID");
  if (name == "export") {
    return export_bundle(api, id, require_positional(info, values, "dir", "DIR"), out, err);
  }
  if (name == "watch") {
    const int interval_ms = values["interval-ms"].as<int>();
    if (interval_ms <= 0) throw UsageError("watch: --interval-ms must be a positive integer");
    return watch(context, id, std::chrono::milliseconds(interval_ms));
  }
  if (name == "results") {
    auto format = parse_results_format(values["format"].as<std::string>());
    if (!format) throw UsageError("results: " + format.error().message);
    return results(context, id, context.json_output ? ResultsFormat::kJson : format.value());
  }
  if (name == "samples") {
    if (values.count("model") == 0 || values.count("benchmark") == 0) {
      throw UsageError("samples: --model and --benchmark are required (usage: evalctl " +
                       std::string(info.usage) + ")");
    }
    return samples(context, id, values["model"].as<std::string>(),
                   values["benchmark"].as<std::string>());
  }
  if (name == "compare") {
    return compare(context, id, require_positional(info, values, "a", "MODEL_A"),
                   require_positional(info, values, "b", "MODEL_B"));
  }
  if (name == "report") {
    if (values.count("output") == 0) throw UsageError("report: -o FILE is required");
    return report(context, id, values["output"].as<std::string>());
  }
  if (name == "shards") {
    std::optional<std::string> state;
    if (values.count("state") > 0) {
      state = values["state"].as<std::string>();
      if (std::find(std::begin(kShardStates), std::end(kShardStates), *state) ==
          std::end(kShardStates)) {
        throw UsageError("shards: --state: '" + *state +
                         "' is not one of pending, running, succeeded, failed, cancelled");
      }
    }
    return shards(context, id, state);
  }
  if (name == "rerun") {
    json body = json::object();
    if (values.count("failed") > 0 && values.count("all") > 0) {
      context.err << "evalctl: rerun: --failed and --all cannot be used together\n";
      return kExitUsage;
    }
    if (values.count("failed") > 0) body["failed"] = true;
    if (values.count("all") > 0) body["failed"] = false;
    if (values.count("model") > 0) body["model"] = values["model"].as<std::string>();
    if (values.count("benchmark") > 0) body["benchmark"] = values["benchmark"].as<std::string>();
    return post_count(context, "/v1/campaigns/" + url_encode(id) + "/rerun", body, "requeued",
                      "requeued");
  }
  // cancel: the body is empty JSON so that a server which parses every POST body is content.
  return post_count(context, "/v1/campaigns/" + url_encode(id) + "/cancel", json::object(),
                    "cancelled", "cancelled");
}

// `command` is set once the subcommand is known, so a usage error can point at its help.
int run_checked(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
                const Environment& environment, const CommandInfo*& command_seen) {
  const po::options_description global = global_options();
  po::variables_map values;
  std::vector<std::string> rest;
  try {
    const auto parsed =
        po::command_line_parser(args).options(global).style(kParseStyle).allow_unregistered().run();
    po::store(parsed, values);
    rest = po::collect_unrecognized(parsed.options, po::include_positional);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  const bool help = values.count("help") > 0;
  if (values.count("version") > 0) {
    out << "evalctl " << kVersion << "\n";
    return kExitOk;
  }
  if (values.count("config") > 0 && !help) {
    store_config_file(values["config"].as<std::string>(), global, values);
  }
  try {
    po::notify(values);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }

  if (rest.empty()) {
    if (help) {
      out << main_help();
      return kExitOk;
    }
    err << "evalctl: a command is required\n\n" << main_help();
    return kExitUsage;
  }
  const std::string command = rest.front();
  rest.erase(rest.begin());
  if (!command.empty() && command.front() == '-') {
    throw UsageError("unrecognised option '" + command + "'");
  }
  const CommandInfo* info = find_command(command);
  if (info == nullptr) throw UsageError("unknown command '" + command + "'");
  command_seen = info;
  return run_command(*info, rest, values, help, out, err, environment);
}

}  // namespace

int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
        const Environment& environment) {
  const CommandInfo* command = nullptr;
  try {
    return run_checked(args, out, err, environment, command);
  } catch (const UsageError& e) {
    const std::string help = command != nullptr
                                 ? "evalctl " + std::string(command->name) + " --help"
                                 : std::string("evalctl --help");
    err << "evalctl: " << e.what() << "\nRun '" << help << "' for usage.\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    // Only our own bugs land here; the command's failures are already reported as values.
    err << "evalctl: internal error: " << e.what() << "\n";
    return kExitFailure;
  }
}

}  // namespace evald::evalctl
