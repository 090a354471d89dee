#pragma once
// Shared by the fuzz targets: the parsers under test read files by path, so each input is
// written to one scratch file per process (fuzz jobs run in separate processes).

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "common/checksum.h"

namespace t2d::fuzz {

// The chunk-file formats (common/chunk_file.h) checksum the header and every payload, so a
// random mutation almost never gets past the CRC check into the decoders. This returns `bytes`
// with every checksum that lies within the buffer recomputed; the framing walk stops at the
// first length that runs past the end. num_counts: u32 counts per chunk header of the format.
inline std::string FixChunkCrcs(std::string bytes, int num_counts) {
  auto get = [&](size_t at) {
    uint32_t v = 0;
    std::memcpy(&v, bytes.data() + at, 4);
    return v;
  };
  auto put = [&](size_t at, uint32_t v) { std::memcpy(bytes.data() + at, &v, 4); };
  size_t at = 8 + 4;  // magic, version
  if (bytes.size() < at + 4) return bytes;
  const uint64_t header_bytes = get(at);
  at += 4;
  if (bytes.size() < at + header_bytes + 4) return bytes;
  put(at + header_bytes, Crc32(bytes.data() + at, header_bytes));
  at += header_bytes + 4;
  const size_t chunk_head = 4 * (2 + static_cast<size_t>(num_counts) + 2);  // magic, kind, counts, size, crc
  while (bytes.size() >= at + chunk_head) {
    const uint64_t payload_bytes = get(at + chunk_head - 8);
    if (bytes.size() < at + chunk_head + payload_bytes) break;
    put(at + chunk_head - 4, Crc32(bytes.data() + at + chunk_head, payload_bytes));
    at += chunk_head + payload_bytes;
  }
  return bytes;
}

// "<TMPDIR>/t2d-fuzz-<pid>-<name>", overwritten with `data` on every call.
inline std::string WriteInput(const std::string& name, const uint8_t* data, size_t size) {
  const char* tmp = std::getenv("TMPDIR");
  std::string path = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/t2d-fuzz-" +
                     std::to_string(getpid()) + "-" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

}  // namespace t2d::fuzz
