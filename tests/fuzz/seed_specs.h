#pragma once
// Specs shared by the seed generator and the fuzz targets, so seeds parse past the checks
// that compare a file with the table or config it is loaded for.

#include "embedding/table_config.pb.h"

namespace t2d::fuzz {

inline config::TableConfig ShardSpec(config::SparseOptimizerConfig::Kind kind) {
  config::TableConfig t;
  t.set_name("t");
  t.set_dim(4);
  t.mutable_initializer()->set_kind(config::InitializerConfig::ZEROS);
  t.mutable_optimizer()->set_kind(kind);
  t.mutable_optimizer()->set_learning_rate(0.1f);
  return t;
}

}  // namespace t2d::fuzz

#include <array>
#include <string_view>

#include "data/data_config.pb.h"

namespace t2d::fuzz {

// sources_fuzz: separates the interactions file from the items file in one input.
inline constexpr std::string_view kItemsMarker = "\n#ITEMS#\n";

// sources_fuzz: byte 0 % size() picks one of these.
inline const std::array<config::DataConfig::SourceKind, 6>& SourceKinds() {
  static const std::array<config::DataConfig::SourceKind, 6> kinds = {
      config::DataConfig::MOVIELENS_DAT,  config::DataConfig::MOVIELENS_100K, config::DataConfig::ML1M_SEQUENCES,
      config::DataConfig::MOVIETWEETINGS, config::DataConfig::KUAIRAND,       config::DataConfig::CSV};
  return kinds;
}

// sources_fuzz: the generic CSV layout the seeds use (every optional column present).
inline void SetCsvColumns(config::CsvFormat* csv, bool tab) {
  if (tab) csv->set_delimiter("\t");
  csv->set_user_column("u");
  csv->set_item_column("i");
  csv->set_time_column("t");
  csv->set_label_column("r");
  csv->set_tags_column("g");
  csv->set_item_id_column("i");
  csv->set_item_tags_column("g");
}

}  // namespace t2d::fuzz
