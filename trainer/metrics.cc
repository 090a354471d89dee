#include "trainer/metrics.h"

#include <glog/logging.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace t2d::trainer {

int64_t RankOfTarget(absl::Span<const float> scores, int64_t target) {
  const float t = scores[static_cast<size_t>(target)];
  int64_t higher = 0;
  for (float s : scores) higher += s > t ? 1 : 0;
  return 1 + higher;
}

RankingMetrics::RankingMetrics(std::vector<int> ks)
    : ks_(std::move(ks)), recall_(ks_.size()), mrr_(ks_.size()), ndcg_(ks_.size()) {}

void RankingMetrics::Add(int64_t rank) {
  ++count_;
  for (size_t i = 0; i < ks_.size(); ++i) {
    if (rank > ks_[i]) continue;
    recall_[i] += 1.0;
    mrr_[i] += 1.0 / static_cast<double>(rank);
    ndcg_[i] += 1.0 / std::log2(static_cast<double>(rank) + 1.0);
  }
}

void RankingMetrics::Merge(const RankingMetrics& other) {
  CHECK(other.ks_ == ks_) << "merging metrics with different cut-offs";
  count_ += other.count_;
  for (size_t i = 0; i < ks_.size(); ++i) {
    recall_[i] += other.recall_[i];
    mrr_[i] += other.mrr_[i];
    ndcg_[i] += other.ndcg_[i];
  }
}

std::vector<double> RankingMetrics::Sums() const {
  std::vector<double> s{static_cast<double>(count_)};
  for (size_t i = 0; i < ks_.size(); ++i) {
    s.push_back(recall_[i]);
    s.push_back(mrr_[i]);
    s.push_back(ndcg_[i]);
  }
  return s;
}

void RankingMetrics::SetSums(absl::Span<const double> sums) {
  CHECK_EQ(sums.size(), 1 + 3 * ks_.size());
  count_ = static_cast<int64_t>(std::llround(sums[0]));
  for (size_t i = 0; i < ks_.size(); ++i) {
    recall_[i] = sums[1 + 3 * i];
    mrr_[i] = sums[2 + 3 * i];
    ndcg_[i] = sums[3 + 3 * i];
  }
}

size_t RankingMetrics::IndexOf(int k) const {
  const auto it = std::find(ks_.begin(), ks_.end(), k);
  CHECK(it != ks_.end()) << "no metrics kept for K=" << k;
  return static_cast<size_t>(it - ks_.begin());
}

double RankingMetrics::Recall(int k) const { return count_ == 0 ? 0.0 : recall_[IndexOf(k)] / static_cast<double>(count_); }
double RankingMetrics::Mrr(int k) const { return count_ == 0 ? 0.0 : mrr_[IndexOf(k)] / static_cast<double>(count_); }
double RankingMetrics::Ndcg(int k) const { return count_ == 0 ? 0.0 : ndcg_[IndexOf(k)] / static_cast<double>(count_); }

std::string RankingMetrics::ToString() const {
  std::string out;
  for (int k : ks_) {
    absl::StrAppendFormat(&out, "%sRecall@%d=%.4f MRR@%d=%.4f NDCG@%d=%.4f", out.empty() ? "" : " ", k, Recall(k), k,
                          Mrr(k), k, Ndcg(k));
  }
  return out;
}

}  // namespace t2d::trainer
