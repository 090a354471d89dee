// Fuzzes the .t2ds reader (data/sample_file.h): open, then decode every chunk of a SAMPLES
// file or every record of an ITEMS file. Damage must come back as a Status, never a crash.

#include <cstddef>
#include <cstdint>

#include "data/sample_file.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

void ReadAll(const std::string& bytes) {
  const std::string path =
      t2d::fuzz::WriteInput("input.t2ds", reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  auto reader = t2d::data::SampleFileReader::Open(path);
  if (!reader.ok()) return;
  t2d::data::SampleFileReader& r = **reader;
  if (r.header().kind() == t2d::data::SampleFileHeader::ITEMS) {
    (void)r.ReadAllItems();
    return;
  }
  for (int c = 0; c < r.num_chunks(); ++c) {
    t2d::data::DecodedChunk chunk;
    if (!r.ReadChunk(c, &chunk).ok()) break;
  }
}

}  // namespace

// Once as given (the checksum checks), once with the checksums made right (the decoders).
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  ReadAll(bytes);
  const std::string fixed = t2d::fuzz::FixChunkCrcs(bytes, /*num_counts=*/2);
  if (fixed != bytes) ReadAll(fixed);
  return 0;
}
