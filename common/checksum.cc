#include "common/checksum.h"

#include <glog/logging.h>
#include <openssl/evp.h>
#include <zlib.h>

#include <algorithm>
#include <limits>

namespace t2d {
namespace {

std::string Hex(const unsigned char* digest, unsigned int n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (unsigned int i = 0; i < n; ++i) {
    out[2 * i] = kDigits[digest[i] >> 4];
    out[2 * i + 1] = kDigits[digest[i] & 15];
  }
  return out;
}

}  // namespace

uint32_t Crc32(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  while (n > 0) {  // zlib takes uInt lengths; feed very large ranges in pieces.
    const size_t piece = std::min<size_t>(n, std::numeric_limits<uInt>::max());
    c = crc32(c, p, static_cast<uInt>(piece));
    p += piece;
    n -= piece;
  }
  return static_cast<uint32_t>(c);
}

// libcrypto fails here only when it cannot allocate or has no SHA-256 at all: nothing a caller
// could recover from, hence CHECK.
Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  CHECK(ctx_ != nullptr && EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) == 1) << "libcrypto: no SHA-256";
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::Update(const void* data, size_t n) { CHECK_EQ(EVP_DigestUpdate(ctx_, data, n), 1) << "libcrypto: SHA-256 update"; }

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  CHECK_EQ(EVP_DigestFinal_ex(ctx_, digest, &n), 1) << "libcrypto: SHA-256 final";
  return Hex(digest, n);
}

std::string Sha256Hex(const void* data, size_t n) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  CHECK_EQ(EVP_Digest(data, n, digest, &len, EVP_sha256(), nullptr), 1) << "libcrypto: SHA-256";
  return Hex(digest, len);
}

}  // namespace t2d
