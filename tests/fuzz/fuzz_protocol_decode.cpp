// Fuzz target: the wire decoder (protocol::decode), which reads every frame a worker or the
// coordinator receives. Besides "no crash, no UB, no leak", whatever decodes must round-trip:
// encoding it and decoding that again gives a message that encodes to the same bytes.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/protocol.hpp"
#include "tests/fuzz/fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace evald;
  const std::string_view frame(reinterpret_cast<const char*>(data), size);
  auto decoded = protocol::decode(frame);
  if (!decoded.ok()) {
    fuzz::check(!decoded.error().message.empty(), "decode error without a message");
    return 0;
  }
  const std::string encoded = protocol::encode(decoded.value());
  auto again = protocol::decode(encoded);
  if (!again.ok()) fuzz::fail("re-encoded message does not decode: " + again.error().message);
  fuzz::check(protocol::type_of(again.value()) == protocol::type_of(decoded.value()),
              "message type changed in a round trip");
  fuzz::check(protocol::encode(again.value()) == encoded, "encode(decode(encode(m))) != encode(m)");
  return 0;
}
