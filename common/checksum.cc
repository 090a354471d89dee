#include "common/checksum.h"

#include <zlib.h>

#include <algorithm>
#include <limits>

namespace t2d {

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

}  // namespace t2d
