// Fuzz target: the decoders of the coordinator's store records (coordinator/records.hpp), which
// recovery runs over everything on disk. A damaged or foreign value must come back as an error,
// never as a crash; what decodes must round-trip through encode. The first byte picks the record
// kind, so one corpus covers all three.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "coordinator/records.hpp"
#include "tests/fuzz/fuzz_support.hpp"

namespace {

template <typename Record, typename Decode>
void round_trip(std::string_view bytes, Decode decode) {
  auto decoded = decode(bytes);
  if (!decoded.ok()) {
    evald::fuzz::check(!decoded.error().message.empty(), "record error without a message");
    return;
  }
  const std::string encoded = evald::coordinator::encode(decoded.value());
  auto again = decode(encoded);
  if (!again.ok()) evald::fuzz::fail("re-encoded record does not decode: " + again.error().message);
  evald::fuzz::check(evald::coordinator::encode(again.value()) == encoded,
                     "encode(decode(encode(r))) != encode(r)");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace evald::coordinator;
  if (size == 0) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      round_trip<ShardRecord>(bytes, decode_shard_record);
      break;
    case 1:
      round_trip<AttemptRecord>(bytes, decode_attempt_record);
      break;
    default:
      round_trip<evald::CellAggregate>(bytes, decode_cell);
      break;
  }
  return 0;
}
