// Fuzzes the embedding shard file reader (embedding/shard_file.h): the header alone, then a
// full load into tables of the spec the seeds were written with and of a second optimizer
// kind (a different per-row state size), re-partitioned and not.

#include <cstddef>
#include <cstdint>
#include <string>

#include "embedding/embedding_table.h"
#include "embedding/shard_file.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/seed_specs.h"

namespace {

void Load(const std::string& bytes) {
  const std::string path = t2d::fuzz::WriteInput("t.shard-00000-of-00001.t2demb",
                                                 reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  (void)t2d::embedding::ReadShardHeader(path);
  for (const auto& spec : {t2d::fuzz::ShardSpec(t2d::config::SparseOptimizerConfig::ADAGRAD),
                           t2d::fuzz::ShardSpec(t2d::config::SparseOptimizerConfig::ADAM)}) {
    for (int num_shards : {1, 2}) {
      auto table = t2d::embedding::EmbeddingTable::Create(spec);
      if (!table.ok()) return;
      (void)t2d::embedding::LoadShardFiles({path}, 0, num_shards, table->get());
    }
  }
}

}  // namespace

// Once as given (the checksum checks), once with the checksums made right (the decoders).
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  Load(bytes);
  const std::string fixed = t2d::fuzz::FixChunkCrcs(bytes, /*num_counts=*/1);
  if (fixed != bytes) Load(fixed);
  return 0;
}
