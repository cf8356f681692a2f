#include "common/cli_options.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/json_limits.hpp"

namespace evald {
namespace {

std::string flag_text(const std::string& key, const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_number()) return value.dump();
  if (value.is_array()) {
    std::string joined;
    for (const auto& item : value) {
      if (!joined.empty()) joined += ',';
      joined += item.is_string() ? item.get<std::string>() : item.dump();
    }
    return joined;
  }
  if (value.is_object()) {
    std::string joined;
    for (const auto& [k, v] : value.items()) {
      if (!joined.empty()) joined += ',';
      joined += k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
    }
    return joined;
  }
  throw UsageError("config key '" + key + "': null is not a value");
}

}  // namespace

void store_config_file(const std::string& path, const po::options_description& options,
                       po::variables_map& values) {
  std::ifstream in(path);
  if (!in) throw UsageError("config file '" + path + "': cannot be opened");
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = parse_json_bounded(text.str());
  if (!parsed) throw UsageError("config file '" + path + "' " + parsed.error().message);
  const auto& json = parsed.value();
  if (!json.is_object()) throw UsageError("config file '" + path + "': must be a JSON object");

  std::vector<std::string> args{"config"};
  for (const auto& [key, value] : json.items()) {
    if (key == "config") throw UsageError("config file '" + path + "': 'config' cannot nest");
    const auto* option = options.find_nothrow(key, /*approx=*/false);
    if (option == nullptr)
      throw UsageError("config file '" + path + "': unknown key '" + key + "'");
    // A repeatable flag given as a list: one argument per entry. Flags on the command line
    // replace the file's list rather than add to it, as they replace any other value.
    if (value.is_array() && option->semantic()->is_composing()) {
      if (values.count(key) > 0 && !values[key].defaulted()) continue;
      for (const auto& item : value) {
        args.push_back("--" + key + "=" +
                       (item.is_string() ? item.get<std::string>() : item.dump()));
      }
      continue;
    }
    const bool is_switch = option->semantic()->max_tokens() == 0;
    if (is_switch) {
      if (!value.is_boolean()) throw UsageError("config key '" + key + "': must be true or false");
      if (value.get<bool>()) args.push_back("--" + key);
      continue;
    }
    args.push_back("--" + key + "=" + flag_text(key, value));
  }
  std::vector<const char*> argv;
  argv.reserve(args.size());
  for (const auto& a : args) argv.push_back(a.c_str());
  try {
    // po::store never overwrites a value that is already stored, so flags parsed earlier win.
    po::store(po::command_line_parser(static_cast<int>(argv.size()), argv.data())
                  .options(options)
                  .style(po::command_line_style::unix_style)
                  .run(),
              values);
  } catch (const po::error& e) {
    throw UsageError("config file '" + path + "': " + e.what());
  }
}

ParsedArgs parse_args(int argc, const char* const* argv, po::options_description& options,
                      bool allow_positional) {
  options.add_options()("help,h", "print this help and exit")(
      "version", "print the version and exit")("config", po::value<std::string>(),
                                               "JSON file whose keys mirror the long flags");
  ParsedArgs parsed;
  // The parser keeps references to these, so they live as long as it does.
  po::options_description hidden;
  hidden.add_options()("positional", po::value<std::vector<std::string>>(), "");
  po::options_description all;
  all.add(options).add(hidden);
  po::positional_options_description pos;
  pos.add("positional", -1);
  try {
    auto parser = po::command_line_parser(argc, argv).options(options);
    if (allow_positional) parser = po::command_line_parser(argc, argv).options(all).positional(pos);
    po::store(parser.run(), parsed.values);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  parsed.help = parsed.values.count("help") > 0;
  parsed.version = parsed.values.count("version") > 0;
  if (parsed.help || parsed.version) return parsed;
  if (parsed.values.count("config") > 0) {
    store_config_file(parsed.values["config"].as<std::string>(), options, parsed.values);
  }
  try {
    po::notify(parsed.values);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  if (allow_positional && parsed.values.count("positional") > 0) {
    parsed.positional = parsed.values["positional"].as<std::vector<std::string>>();
  }
  return parsed;
}

}  // namespace evald
