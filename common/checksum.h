#pragma once
// Checksums over byte ranges. Pure functions and single-owner objects; thread-compatible.
//
// CRC-32 (zlib polynomial) checks every chunk of the project's on-disk formats (embedding shards,
// sample files, dense state files): it catches torn and flipped bytes inside one file.
// SHA-256 (OpenSSL's libcrypto) is what sealed folders (common/sealed_folder.h) record per file
// and what run identities are made of: a file that ends with its own CRC-32 has the same
// whole-file CRC as every other such file, so only a cryptographic digest tells two of them apart.

#include <cstddef>
#include <cstdint>
#include <string>

struct evp_md_ctx_st;  // OpenSSL's EVP_MD_CTX, kept out of this header

namespace t2d {

// Extends `crc` (0 for a fresh checksum) with `n` bytes at `data`.
uint32_t Crc32(const void* data, size_t n, uint32_t crc = 0);

// Incremental SHA-256, for files read in pieces.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t n);
  // The digest of everything passed to Update, as 64 lowercase hex digits. Call once; the object
  // is not usable afterwards.
  std::string HexDigest();

 private:
  evp_md_ctx_st* ctx_;
};

// SHA-256 of `n` bytes at `data`, as 64 lowercase hex digits.
std::string Sha256Hex(const void* data, size_t n);

}  // namespace t2d
