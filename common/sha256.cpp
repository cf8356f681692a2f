#include "common/sha256.hpp"

#include <openssl/evp.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

namespace evald {
namespace {

struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

std::string to_hex(const unsigned char* bytes, unsigned int size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(size_t{size} * 2, '0');
  for (unsigned int i = 0; i < size; ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0x0f];
  }
  return out;
}

// Only allocation failure makes EVP fail here; that is not an input error but a broken process.
MdCtx new_sha256_ctx() {
  MdCtx ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) std::abort();
  return ctx;
}

std::string finish(EVP_MD_CTX* ctx) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(ctx, digest.data(), &size) != 1) std::abort();
  return to_hex(digest.data(), size);
}

}  // namespace

std::string sha256_hex(std::string_view data) {
  auto ctx = new_sha256_ctx();
  if (EVP_DigestUpdate(ctx.get(), data.data(), data.size()) != 1) std::abort();
  return finish(ctx.get());
}

Result<std::string> sha256_file_hex(const std::filesystem::path& path) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) return make_error("cannot open " + path.string() + ": " + std::strerror(errno));
  auto ctx = new_sha256_ctx();
  std::vector<char> buffer(size_t{1} << 20);
  while (true) {
    const size_t n = std::fread(buffer.data(), 1, buffer.size(), file.get());
    if (n > 0 && EVP_DigestUpdate(ctx.get(), buffer.data(), n) != 1) std::abort();
    if (n < buffer.size()) {
      if (std::ferror(file.get())) {
        return make_error("cannot read " + path.string() + ": " + std::strerror(errno));
      }
      break;
    }
  }
  return finish(ctx.get());
}

bool is_sha256_hex(std::string_view text) {
  if (text.size() != 64) return false;
  for (const char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace evald
