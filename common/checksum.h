#pragma once
// CRC-32 (zlib polynomial) over byte ranges, used to checksum every chunk of the project's
// on-disk formats (embedding shards, sample files, checkpoints). Pure functions; thread-safe.

#include <cstddef>
#include <cstdint>

namespace t2d {

// Extends `crc` (0 for a fresh checksum) with `n` bytes at `data`.
uint32_t Crc32(const void* data, size_t n, uint32_t crc = 0);

}  // namespace t2d
