// Fuzz target: the worker's outbox loader (worker/outbox.hpp), which reads result files back after
// a restart; a torn or foreign file must be set aside, never crash the worker. Each input is
// written as one outbox file through the real filesystem and read back with Outbox::load(). The
// file is named after the attempt the input decodes to (when it decodes), so the accepting path
// is reached too. Checks: exactly the files holding one RESULTS frame with one result for the
// named attempt are loaded, and that result is the one encoded; every other file is counted as
// corrupt and moved aside.
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <variant>

#include "common/protocol.hpp"
#include "tests/fuzz/fuzz_support.hpp"
#include "worker/outbox.hpp"

namespace {

// libFuzzer calls LLVMFuzzerTestOneInput millions of times in one process; the scratch directory
// and the open outbox are made once and live for the whole run.
struct State {
  evald::fuzz::ScratchDir dir{"evald-fuzz-outbox"};
  std::unique_ptr<evald::worker::Outbox> outbox;
};
State* state = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  spdlog::set_level(spdlog::level::off);  // one error line per corrupt file would drown the log
  state = new State;
  auto opened = evald::worker::Outbox::open(state->dir.path() / "outbox");
  if (!opened.ok()) evald::fuzz::fail("cannot open the outbox: " + opened.error().message);
  state->outbox = std::make_unique<evald::worker::Outbox>(std::move(opened.value()));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace evald;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);

  // What the loader should conclude, worked out with the wire decoder alone.
  uint64_t attempt_id = 1;
  bool loadable = false;
  if (auto decoded = protocol::decode(bytes); decoded.ok()) {
    if (auto* results = std::get_if<protocol::Results>(&decoded.value());
        results != nullptr && results->results.size() == 1) {
      attempt_id = results->results.front().attempt_id;
      loadable = true;
    }
  }

  auto& outbox = *state->outbox;
  {
    std::ofstream out(outbox.path_of(attempt_id), std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) fuzz::fail("cannot write the outbox file");
  }
  const auto loaded = outbox.load();
  if (loadable) {
    fuzz::check(loaded.corrupt == 0 && loaded.results.size() == 1, "a valid file was not loaded");
    fuzz::check(loaded.results.front().attempt_id == attempt_id, "loaded the wrong attempt");
    fuzz::check(
        protocol::encode(protocol::Results{{loaded.results.front()}}) ==
            protocol::encode(protocol::Results{
                {std::get<protocol::Results>(protocol::decode(bytes).value()).results.front()}}),
        "the loaded result differs from the stored one");
  } else {
    fuzz::check(loaded.corrupt == 1 && loaded.results.empty(), "a bad file was not set aside");
  }

  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(outbox.dir(), ec)) {
    std::filesystem::remove(entry.path(), ec);
  }
  return 0;
}
