#include "data/generator.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "data/prepare.h"
#include "data/shard_set.h"
#include "data/user_profiles.h"

namespace t2d::data {
namespace {

constexpr double kUserStartSpreadS = 30 * 86400.0;  // users start within 30 days

double Uniform(SplitMix64* rng) { return rng->NextDouble(); }
// Geometric on {0, 1, ...} with the given mean.
int64_t Geometric(double mean, SplitMix64* rng) {
  if (mean <= 0) return 0;
  const double p = 1.0 / (1.0 + mean);
  const double u = 1.0 - rng->NextDouble();  // (0, 1]
  return static_cast<int64_t>(std::floor(std::log(u) / std::log1p(-p)));
}
double Exponential(double mean, SplitMix64* rng) { return -mean * std::log(1.0 - rng->NextDouble()); }

double Helper1(double x) { return std::abs(x) > 1e-8 ? std::log1p(x) / x : 1 - x * (0.5 - x * (1.0 / 3 - 0.25 * x)); }
double Helper2(double x) { return std::abs(x) > 1e-8 ? std::expm1(x) / x : 1 + x * 0.5 * (1 + x / 3 * (1 + 0.25 * x)); }

}  // namespace

ZipfSampler::ZipfSampler(int64_t n, double exponent) : n_(std::max<int64_t>(n, 1)), s_(exponent) {
  h_x1_ = H(1.5) - 1.0;
  h_n_ = H(static_cast<double>(n_) + 0.5);
  threshold_ = 2.0 - HInverse(H(2.5) - h(2.0));
}

double ZipfSampler::h(double x) const { return std::exp(-s_ * std::log(x)); }
double ZipfSampler::H(double x) const {
  const double lx = std::log(x);
  return Helper2((1.0 - s_) * lx) * lx;
}
double ZipfSampler::HInverse(double x) const {
  double t = x * (1.0 - s_);
  if (t < -1.0) t = -1.0;
  return std::exp(Helper1(t) * x);
}

int64_t ZipfSampler::Sample(SplitMix64* rng) const {
  if (n_ == 1) return 1;
  while (true) {
    const double u = h_n_ + rng->NextDouble() * (h_x1_ - h_n_);
    const double x = HInverse(u);
    int64_t k = static_cast<int64_t>(x + 0.5);
    if (k < 1) k = 1;
    if (k > n_) k = n_;
    if (static_cast<double>(k) - x <= threshold_ || u >= H(static_cast<double>(k) + 0.5) - h(static_cast<double>(k))) {
      return k;
    }
  }
}

SyntheticWorld::SyntheticWorld(const config::GeneratorConfig& config, double session_gap_s, uint64_t seed)
    : config_(config),
      session_gap_s_(session_gap_s),
      seed_(seed),
      items_(config.num_items()),
      clusters_(std::min<int64_t>(config.num_interests(), config.num_items())),
      big_((config.num_items() + clusters_ - 1) / clusters_, config.zipf_exponent()),
      small_(std::max<int64_t>(config.num_items() / clusters_, 1), config.zipf_exponent()) {}

int64_t SyntheticWorld::DrawInCluster(int64_t c, SplitMix64* rng) const {
  const int64_t size = ClusterSize(c);
  const int64_t rank = size == big_.n() ? big_.Sample(rng) : small_.Sample(rng);
  return c + 1 + (rank - 1) * clusters_;
}

int64_t SyntheticWorld::Successor(int64_t item, int j) const {
  const int64_t c = ClusterOf(item);
  const uint64_t h = HashCombine(seed_ ^ 0x73756363ULL, static_cast<uint64_t>(item) * 1024 + static_cast<uint64_t>(j));
  const int64_t rank = static_cast<int64_t>(h % static_cast<uint64_t>(ClusterSize(c))) + 1;
  return c + 1 + (rank - 1) * clusters_;
}

void SyntheticWorld::ItemTags(int64_t item, std::vector<int64_t>* tags) const {
  tags->clear();
  const uint64_t c = static_cast<uint64_t>(ClusterOf(item));
  const uint64_t num_tags = static_cast<uint64_t>(config_.num_tags());
  for (int j = 0; j < config_.tags_per_item(); ++j) {
    const uint64_t noise = HashCombine(seed_ ^ 0x6e6f6973ULL, static_cast<uint64_t>(item) * 16 + j);
    const bool random = static_cast<double>(noise >> 11) * (1.0 / 9007199254740992.0) < config_.tag_noise();
    const uint64_t h = random ? Mix64(noise) : HashCombine(seed_ ^ 0x74616773ULL, c * 16 + j);
    const int64_t tag = static_cast<int64_t>(h % num_tags) + 1;
    if (std::find(tags->begin(), tags->end(), tag) == tags->end()) tags->push_back(tag);
  }
}

std::vector<std::string> SyntheticWorld::ProfileFields() const {
  std::vector<std::string> fields;
  for (int f = 0; f < config_.user_profile_fields(); ++f) fields.push_back(absl::StrCat("p", f + 1));
  return fields;
}

void SyntheticWorld::GenerateUser(int64_t user, UserSequence* out, std::vector<int64_t>* profile) const {
  SplitMix64 rng(HashCombine(seed_ ^ 0x75736572ULL, static_cast<uint64_t>(user)));
  out->user = user;
  out->items.clear();
  out->times.clear();
  const int64_t len = std::min<int64_t>(
      config_.max_seq_len(),
      config_.min_seq_len() + Geometric(config_.mean_seq_len() - config_.min_seq_len(), &rng));
  std::vector<int64_t> interests(static_cast<size_t>(config_.interests_per_user()));
  for (auto& c : interests) c = static_cast<int64_t>(rng.Next() % static_cast<uint64_t>(clusters_));
  if (profile != nullptr) {
    // From a generator of its own, so that the sequences do not depend on the fields.
    SplitMix64 prng(HashCombine(seed_ ^ 0x70726f66ULL, static_cast<uint64_t>(user)));
    const uint64_t values = static_cast<uint64_t>(config_.user_profile_values());
    profile->clear();
    for (int f = 0; f < config_.user_profile_fields(); ++f) {
      const bool signal = prng.NextDouble() < config_.user_profile_signal();
      const uint64_t r = prng.Next();
      const uint64_t value = signal ? static_cast<uint64_t>(interests[static_cast<size_t>(f) % interests.size()]) % values
                                    : r % values;
      profile->push_back(UserFeatureKey(absl::StrCat("p", f + 1), absl::StrCat(value + 1)));
    }
  }
  double t = static_cast<double>(config_.start_time()) + Uniform(&rng) * kUserStartSpreadS;
  const double in_gap_cap = session_gap_s_ > 0 ? session_gap_s_ : 1e300;
  bool first_session = true;
  while (static_cast<int64_t>(out->items.size()) < len) {
    if (!first_session) {
      if (Uniform(&rng) < config_.drift_prob()) {
        interests[rng.Next() % interests.size()] = static_cast<int64_t>(rng.Next() % static_cast<uint64_t>(clusters_));
      }
      t += 2.0 * session_gap_s_ + 1.0 + Exponential(config_.session_gap_mean_s(), &rng);
    }
    first_session = false;
    const int64_t c = interests[rng.Next() % interests.size()];
    const int64_t session = 1 + Geometric(config_.mean_session_len() - 1.0, &rng);
    int64_t prev = -1;
    for (int64_t j = 0; j < session && static_cast<int64_t>(out->items.size()) < len; ++j) {
      if (j > 0) t += std::min(Exponential(config_.in_session_gap_s(), &rng), in_gap_cap);
      int64_t item;
      if (prev > 0 && Uniform(&rng) < config_.follow_prob()) {
        item = Successor(prev, static_cast<int>(rng.Next() % static_cast<uint64_t>(config_.successors())));
      } else {
        item = DrawInCluster(c, &rng);
      }
      out->items.push_back(item);
      out->times.push_back(static_cast<int64_t>(t));
      prev = item;
    }
  }
}

absl::StatusOr<PrepareSummary> GenerateDataset(const config::DataConfig& c, std::chrono::steady_clock::time_point start) {
  const config::GeneratorConfig& g = c.generator();
  if (g.min_seq_len() > g.max_seq_len()) {
    return absl::InvalidArgumentError("data.generator.min_seq_len: exceeds data.generator.max_seq_len");
  }
  const SyntheticWorld world(g, c.session_gap_s(), c.seed());
  SplitOptions options = MakeSplitOptions(c);
  if (c.split() == config::DataConfig::GLOBAL_TIME) {
    // Cut-offs from the time quantiles of a prefix of the users (every user is an independent
    // draw, so a few thousand estimate the quantiles well).
    std::vector<int64_t> times;
    UserSequence s;
    for (int64_t u = 1; u <= std::min<int64_t>(g.num_users(), 2000); ++u) {
      world.GenerateUser(u, &s);
      times.insert(times.end(), s.times.begin(), s.times.end());
    }
    std::sort(times.begin(), times.end());
    auto q = [&](double f) { return times[std::min(times.size() - 1, static_cast<size_t>(f * times.size()))]; };
    options.valid_cut = q(1.0 - c.valid_time_fraction() - c.test_time_fraction());
    options.test_cut = q(1.0 - c.test_time_fraction());
  }
  const uint64_t dataset_id = DatasetId(c);
  T2D_ASSIGN_OR_RETURN(auto out, ShardSetWriter::Create(c, dataset_id, g.user_profile_fields()));
  const int num_shards = c.num_shards();
  int threads = g.num_threads() > 0 ? g.num_threads() : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = std::min(threads, num_shards);

  struct Partial {
    PrepareSummary summary;
    std::array<int64_t, kNumSplits> users{0, 0, 0};
    int64_t too_short = 0, interactions = 0, kept = 0, kept_interactions = 0, min_len = -1, max_len = 0, dropped = 0, one_item = 0;
    std::vector<int32_t> train_targets;  // per item (id - 1): its training targets, for the items file
    absl::Status status;
  };
  std::vector<Partial> partial(static_cast<size_t>(threads));
  auto work = [&](int k) {
    Partial& p = partial[k];
    p.train_targets.assign(static_cast<size_t>(g.num_items()), 0);
    UserSequence s;
    std::vector<int64_t> profile;
    std::vector<int64_t>* want_profile = g.user_profile_fields() > 0 ? &profile : nullptr;
    std::vector<std::vector<int64_t>> tag_store;
    std::vector<absl::Span<const int64_t>> tags;
    std::array<std::vector<TargetRef>, kNumSplits> targets;
    for (int shard = k; shard < num_shards && p.status.ok(); shard += threads) {
      for (int64_t u = shard + 1; u <= g.num_users(); u += num_shards) {
        world.GenerateUser(u, &s, want_profile);
        const int64_t len = static_cast<int64_t>(s.items.size());
        p.interactions += len;
        if (len == 1) ++p.one_item;
        if (len < c.min_seq_len()) {
          ++p.dropped;
          continue;
        }
        ++p.kept;
        p.kept_interactions += len;
        AddToHistogram(len, &p.summary);
        p.min_len = p.min_len < 0 ? len : std::min(p.min_len, len);
        p.max_len = std::max(p.max_len, len);
        const Split group = PaperGroupOfUser(u, c.train_user_fraction(), c.valid_user_fraction(), c.seed());
        if (!UserTargets(options, u, group, s.times, &targets)) {
          ++p.too_short;
          continue;
        }
        if (tag_store.size() < s.items.size()) tag_store.resize(s.items.size());
        tags.clear();
        for (size_t i = 0; i < s.items.size(); ++i) {
          world.ItemTags(s.items[i], &tag_store[i]);
          tags.emplace_back(tag_store[i]);
        }
        for (const TargetRef& t : targets[kTrain]) ++p.train_targets[static_cast<size_t>(s.items[t.target] - 1)];
        for (int sp = 0; sp < kNumSplits; ++sp) {
          if (targets[sp].empty()) continue;
          ++p.users[sp];
          auto w = out->writer(static_cast<Split>(sp), shard);
          p.status = w.ok() ? WriteUserTargets(*w, u, s.items, s.times, tags, targets[sp], c.max_seq_len(), profile)
                           : w.status();
          if (!p.status.ok()) return;
        }
      }
      p.status = out->FinishShard(shard);
    }
  };
  std::vector<std::thread> pool;
  for (int k = 1; k < threads; ++k) pool.emplace_back(work, k);
  work(0);
  for (auto& th : pool) th.join();
  for (const auto& p : partial) T2D_RETURN_IF_ERROR(p.status);

  // Each item's count is its training targets (what the trainer's popularity sampling and logQ
  // read), summed over the workers here, so training needs no pass over the samples to count them.
  std::vector<int64_t> tags;
  int max_tags = 0;
  for (int64_t item = 1; item <= g.num_items(); ++item) {
    world.ItemTags(item, &tags);
    max_tags = std::max(max_tags, static_cast<int>(tags.size()));
    int64_t count = 0;
    for (const auto& p : partial) count += p.train_targets[static_cast<size_t>(item - 1)];
    T2D_RETURN_IF_ERROR(out->items()->AddItem(item, tags, count));
  }

  PrepareSummary summary;
  summary.set_source("SYNTHETIC");
  int64_t users = 0, interactions = 0, kept_interactions = 0, min_len = -1, max_len = 0, dropped = 0, one_item = 0,
          too_short = 0;
  std::array<int64_t, kNumSplits> split_users{0, 0, 0};
  for (const auto& b : EmptyLengthHistogram()) *summary.add_seq_len_histogram() = b;
  for (const auto& p : partial) {
    users += p.kept;
    kept_interactions += p.kept_interactions;
    interactions += p.interactions;
    dropped += p.dropped;
    one_item += p.one_item;
    too_short += p.too_short;
    if (p.min_len >= 0) min_len = min_len < 0 ? p.min_len : std::min(min_len, p.min_len);
    max_len = std::max(max_len, p.max_len);
    for (int sp = 0; sp < kNumSplits; ++sp) split_users[sp] += p.users[sp];
    for (int b = 0; b < p.summary.seq_len_histogram_size(); ++b) {
      auto* dst = summary.mutable_seq_len_histogram(b);
      dst->set_count(dst->count() + p.summary.seq_len_histogram(b).count());
    }
  }
  DatasetManifest manifest;
  FillManifestOptions(c, dataset_id, &manifest);
  manifest.set_has_timestamps(true);
  manifest.set_max_tags_per_item(max_tags);
  for (const auto& f : world.ProfileFields()) manifest.add_user_feature_names(f);
  T2D_RETURN_IF_ERROR(out->Finish(&manifest));
  summary.set_rows_read(interactions);
  summary.set_input_users(g.num_users());
  summary.set_input_items(g.num_items());
  summary.set_input_interactions(interactions);
  summary.set_one_item_users(one_item);
  summary.set_short_users_dropped(dropped);
  summary.set_users(users);
  summary.set_items(g.num_items());
  summary.set_interactions(kept_interactions);
  summary.set_min_seq_len(std::max<int64_t>(min_len, 0));
  summary.set_max_seq_len(max_len);
  summary.set_mean_seq_len(users > 0 ? static_cast<double>(kept_interactions) / users : 0.0);
  summary.set_users_too_short_for_split(too_short);
  summary.set_train_samples(manifest.splits(kTrain).samples());
  summary.set_valid_samples(manifest.splits(kValid).samples());
  summary.set_test_samples(manifest.splits(kTest).samples());
  summary.set_train_users(split_users[kTrain]);
  summary.set_valid_users(split_users[kValid]);
  summary.set_test_users(split_users[kTest]);
  summary.set_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  *manifest.mutable_summary() = summary;
  T2D_RETURN_IF_ERROR(WriteManifest(c.dataset_dir(), manifest));
  return summary;
}

}  // namespace t2d::data
