#include "data/catalogue.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "data/prepare.h"
#include "data/sample_file.h"

namespace t2d::data {

absl::StatusOr<std::unique_ptr<Catalogue>> Catalogue::Load(const std::string& dataset_dir) {
  auto reader = data::SampleFileReader::Open(dataset_dir + "/" + data::kItemsFile);
  if (!reader.ok()) return reader.status();
  auto items = (*reader)->ReadAllItems();
  if (!items.ok()) return items.status();
  if (items->empty()) return absl::FailedPreconditionError(absl::StrCat(dataset_dir, "/", data::kItemsFile, ": no items"));
  std::unique_ptr<Catalogue> c(new Catalogue);
  for (auto& item : *items) {
    c->ids_.push_back(item.id);
    c->tags_.push_back(std::move(item.tags));
    c->counts_.push_back(item.count);
  }
  c->Finish();
  return c;
}

std::unique_ptr<Catalogue> Catalogue::FromItems(std::vector<int64_t> ids, std::vector<std::vector<int64_t>> tags,
                                                std::vector<int64_t> counts) {
  std::unique_ptr<Catalogue> c(new Catalogue);
  c->ids_ = std::move(ids);
  c->tags_ = std::move(tags);
  c->counts_ = std::move(counts);
  c->tags_.resize(c->ids_.size());
  c->counts_.resize(c->ids_.size(), 1);
  c->Finish();
  return c;
}

void Catalogue::SetCounts(std::vector<int64_t> counts) {
  counts_ = std::move(counts);
  counts_.resize(ids_.size());
  Finish();
}

void Catalogue::Finish() {
  index_.clear();
  log_share_.clear();
  cdf_.clear();
  all_tags_.clear();
  double total = 0;
  for (int64_t c : counts_) total += static_cast<double>(std::max<int64_t>(c, 1));
  double acc = 0;
  for (size_t i = 0; i < ids_.size(); ++i) {
    index_[ids_[i]] = static_cast<int64_t>(i);
    const double share = static_cast<double>(std::max<int64_t>(counts_[i], 1)) / total;
    log_share_.push_back(static_cast<float>(std::log(share)));
    cdf_.push_back(acc += share);
    all_tags_.insert(all_tags_.end(), tags_[i].begin(), tags_[i].end());
  }
  std::sort(all_tags_.begin(), all_tags_.end());
  all_tags_.erase(std::unique(all_tags_.begin(), all_tags_.end()), all_tags_.end());
}

int64_t Catalogue::SampleByPopularity(double u) const {
  const double target = u * cdf_.back();
  const auto it = std::upper_bound(cdf_.begin(), cdf_.end(), target);
  return std::min<int64_t>(static_cast<int64_t>(it - cdf_.begin()), size() - 1);
}

std::vector<int64_t> Catalogue::ByPopularity() const {
  std::vector<int64_t> order(ids_.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const auto ca = counts_[static_cast<size_t>(a)], cb = counts_[static_cast<size_t>(b)];
    return ca != cb ? ca > cb : ids_[static_cast<size_t>(a)] < ids_[static_cast<size_t>(b)];
  });
  return order;
}

}  // namespace t2d::data
