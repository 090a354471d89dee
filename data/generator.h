#pragma once
// The streaming synthetic data set (DataConfig.source = SYNTHETIC, GeneratorConfig).
//
// Model: items 1..I fall into C interest clusters (item i in cluster (i - 1) % C) and are
// Zipf-popular inside their cluster (rank r is item c + 1 + (r - 1) * C). A user has a few
// active interests; each session picks one of them, and between sessions an interest may be
// replaced (drift). Inside a session the next item is, with probability follow_prob, one of
// the previous item's few fixed successors (the learnable signal), else a Zipf draw from the
// session's interest. Sessions are separated by gaps above DataConfig.session_gap_s, so
// TIME_GAP recovers them. Item tags are the cluster's tags with some noise.
//
// Everything is a pure function of (config, seed, user id / item id): users are generated one
// at a time and written straight to the shards, so memory does not grow with the number of
// users, items or interactions (10^8 items / 10^9 interactions only cost disk).
//
// Thread-safety: SyntheticWorld is immutable after construction; its methods are const and
// may be called from several threads.

#include <chrono>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/hash.h"
#include "data/data_config.pb.h"
#include "data/dataset.pb.h"
#include "data/sequences.h"

namespace t2d::data {

// Zipf(n, s) over ranks 1..n by rejection-inversion (Hoermann and Derflinger 1996): O(1) per
// draw and memory for any n.
class ZipfSampler {
 public:
  ZipfSampler(int64_t n, double exponent);
  int64_t Sample(SplitMix64* rng) const;
  int64_t n() const { return n_; }

 private:
  double H(double x) const;
  double HInverse(double x) const;
  double h(double x) const;
  int64_t n_;
  double s_, h_x1_, h_n_, threshold_;
};

class SyntheticWorld {
 public:
  // session_gap_s: DataConfig.session_gap_s (the generator keeps session gaps above it).
  SyntheticWorld(const config::GeneratorConfig& config, double session_gap_s, uint64_t seed);

  int64_t num_clusters() const { return clusters_; }
  int64_t ClusterOf(int64_t item) const { return (item - 1) % clusters_; }
  // The j-th fixed successor of `item` (same cluster), j in [0, successors).
  int64_t Successor(int64_t item, int j) const;
  void ItemTags(int64_t item, std::vector<int64_t>* tags) const;
  // The user's whole time-ordered sequence; with `profile`, also the user's profile keys
  // (GeneratorConfig.user_profile_fields of them; UserFeatureKey of field "p<f+1>").
  void GenerateUser(int64_t user, UserSequence* out, std::vector<int64_t>* profile = nullptr) const;
  // The profile field names ("p1", "p2", ...).
  std::vector<std::string> ProfileFields() const;

 private:
  int64_t ClusterSize(int64_t c) const { return (items_ - 1 - c) / clusters_ + 1; }
  int64_t DrawInCluster(int64_t c, SplitMix64* rng) const;

  config::GeneratorConfig config_;
  double session_gap_s_;
  uint64_t seed_;
  int64_t items_, clusters_;
  // Clusters have floor(I / C) or that + 1 items.
  ZipfSampler big_, small_;
};

// Generates the data set of `config` into config.dataset_dir (already checked and emptied by
// Prepare) and returns its summary. Called by Prepare.
absl::StatusOr<PrepareSummary> GenerateDataset(const config::DataConfig& config,
                                               std::chrono::steady_clock::time_point start);

}  // namespace t2d::data
