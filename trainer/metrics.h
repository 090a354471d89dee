#pragma once
// Ranking metrics with one target per query, over the full item catalogue.
//
// rank = 1 + number of catalogue items scored strictly higher than the target (ties count in
// the target's favour, as the paper's protocol does). For each cut-off K:
//   Recall@K = [rank <= K]      MRR@K = [rank <= K] / rank      NDCG@K = [rank <= K] / log2(rank + 1)
// averaged over queries. Sums are kept so that workers can allreduce them and every rank reads
// the same averages.
//
// Thread-safety: not thread-safe; one accumulator per thread, merged with Merge/FromSums.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"

namespace t2d::trainer {

// 1 + number of scores strictly greater than scores[target].
int64_t RankOfTarget(absl::Span<const float> scores, int64_t target);

class RankingMetrics {
 public:
  explicit RankingMetrics(std::vector<int> ks);

  void Add(int64_t rank);
  void Merge(const RankingMetrics& other);

  // [count, then recall, mrr, ndcg sums for each K]: the vector workers allreduce.
  std::vector<double> Sums() const;
  void SetSums(absl::Span<const double> sums);

  const std::vector<int>& ks() const { return ks_; }
  int64_t count() const { return count_; }
  double Recall(int k) const;
  double Mrr(int k) const;
  double Ndcg(int k) const;
  // "Recall@2=0.0774 MRR@2=0.0608 NDCG@2=... Recall@20=..."
  std::string ToString() const;

 private:
  size_t IndexOf(int k) const;

  std::vector<int> ks_;
  int64_t count_ = 0;
  std::vector<double> recall_, mrr_, ndcg_;
};

}  // namespace t2d::trainer
