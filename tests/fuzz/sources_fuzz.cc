// Fuzzes the raw-data readers (data/sources.h ReadSource). Input layout, so one corpus covers
// every format: byte 0 picks the source (low 3 bits) and flags (skip_bad_lines, first_tag_only,
// tab delimiter for CSV); the rest is the interactions file, optionally followed by
// kItemsMarker and the items file (movies.dat, u.item, the CSV items file).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/sources.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/seed_specs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  using t2d::config::DataConfig;
  const uint8_t selector = data[0];
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const size_t marker = rest.find(t2d::fuzz::kItemsMarker);
  const std::string interactions = rest.substr(0, marker);
  DataConfig config;
  config.set_source(t2d::fuzz::SourceKinds()[selector % t2d::fuzz::SourceKinds().size()]);
  config.set_skip_bad_lines((selector & 0x10) != 0);
  config.set_first_tag_only((selector & 0x20) != 0);
  // KuaiRand keeps its click default (min_rating 1); the rating sources keep >= 3.
  if (config.source() != DataConfig::KUAIRAND) config.set_min_rating(3);
  if (config.source() == DataConfig::CSV) t2d::fuzz::SetCsvColumns(config.mutable_csv(), (selector & 0x40) != 0);
  // Names matter: ML-100k finds u.genre next to u.item.
  config.add_input_paths(t2d::fuzz::WriteInput(
      "ratings", reinterpret_cast<const uint8_t*>(interactions.data()), interactions.size()));
  if (marker != std::string::npos) {
    const std::string items = rest.substr(marker + t2d::fuzz::kItemsMarker.size());
    const char* name = config.source() == DataConfig::MOVIELENS_100K ? "u.item" : "items";
    config.set_item_path(t2d::fuzz::WriteInput(name, reinterpret_cast<const uint8_t*>(items.data()), items.size()));
  }
  (void)t2d::data::ReadSource(config);

  // The quoting splitter on its own, with both delimiters.
  std::vector<absl::string_view> fields;
  std::vector<std::string> storage;
  (void)t2d::data::SplitCsvLine(rest, ',', &fields, &storage);
  (void)t2d::data::SplitCsvLine(rest, '\t', &fields, &storage);
  return 0;
}
