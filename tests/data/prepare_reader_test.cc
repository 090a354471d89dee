#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "data/generator.h"
#include "data/prepare.h"
#include "data/sample_reader.h"
#include "tests/data/test_util.h"

namespace t2d::data {
namespace {

using config::DataConfig;
using testing::TempDir;
using testing::WriteText;

// user 1: six items an hour apart (times 100..600 s); user 2: two sessions; user 3: one item;
// user 4: two items.
DataConfig FixtureConfig(const TempDir& dir) {
  DataConfig job;
  DataConfig* c = &job;
  c->set_source(DataConfig::MOVIELENS_DAT);
  c->add_input_paths(WriteText(dir.File("ratings.dat"),
                               "1::16::5::600\n1::11::5::100\n1::12::4::200\n1::13::4::300\n1::14::3::400\n1::15::3::500\n"
                               "2::21::5::10\n2::22::5::20\n2::23::5::5000\n2::24::5::5010\n"
                               "3::31::5::1\n"
                               "4::41::5::1\n4::42::5::2\n"));
  c->set_item_path(WriteText(dir.File("movies.dat"), "11::A::Drama\n12::B::Comedy|Drama\n13::C::Comedy\n14::D::War\n"
                                                     "15::E::Drama|War\n16::F::Comedy|Drama|War\n"));
  c->set_dataset_dir(dir.File("out"));
  c->set_max_seq_len(3);
  c->set_session_len(2);
  c->set_num_shards(2);
  return job;
}

struct Sample {
  int64_t user, target;
  std::vector<int64_t> history, times, tag_counts;
  std::vector<float> lags;
  int session_begin;
  bool operator<(const Sample& o) const { return std::tie(user, target) < std::tie(o.user, o.target); }
};

std::vector<Sample> Unpack(const SampleBatch& b) {
  std::vector<Sample> out;
  for (int i = 0; i < b.size; ++i) {
    Sample s;
    s.user = b.user_id[i];
    s.target = b.target_id[i];
    s.session_begin = b.session_begin[i];
    for (int j = 0; j < b.max_seq_len; ++j) {
      const size_t k = static_cast<size_t>(i) * b.max_seq_len + j;
      if (j < b.history_len[i]) {
        s.history.push_back(b.history_id[k]);
        s.times.push_back(b.history_time[k]);
        s.lags.push_back(b.time_lag[k]);
        s.tag_counts.push_back(b.history_tag_count[k]);
      } else {
        EXPECT_EQ(b.history_id[k], 0) << "padding must be zero";
        EXPECT_EQ(b.history_tag_count[k], 0);
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<Sample> ReadAll(const std::string& dir, ReaderOptions o) {
  auto r = SampleReader::Open(dir, o);
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return {};
  std::vector<Sample> all;
  SampleBatch b;
  while (true) {
    auto more = (*r)->Next(&b);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    for (auto& s : Unpack(b)) all.push_back(std::move(s));
  }
  return all;
}

TEST(PrepareTest, FixtureSummaryAndSamples) {
  TempDir dir;
  DataConfig job = FixtureConfig(dir);
  auto summary = Prepare(job, false);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->input_users(), 4);
  EXPECT_EQ(summary->input_items(), 13);
  EXPECT_EQ(summary->input_interactions(), 13);
  EXPECT_EQ(summary->one_item_users(), 1);
  EXPECT_EQ(summary->short_users_dropped(), 1);
  EXPECT_EQ(summary->users(), 3);
  EXPECT_EQ(summary->items(), 12);
  EXPECT_EQ(summary->users_too_short_for_split(), 1);  // user 4 under LAST_ITEM
  EXPECT_EQ(summary->train_samples(), 4);
  EXPECT_EQ(summary->valid_samples(), 2);
  EXPECT_EQ(summary->test_samples(), 2);
  EXPECT_FALSE(FormatSummary(*summary).empty());

  auto manifest = ReadManifest(job.dataset_dir());
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->max_tags_per_item(), 3);
  EXPECT_EQ(manifest->tag_names_size(), 3);  // Comedy, Drama, War
  EXPECT_TRUE(manifest->has_timestamps());

  ReaderOptions o;
  o.split = "test";
  o.batch_size = 4;
  auto test = ReadAll(job.dataset_dir(), o);
  std::sort(test.begin(), test.end());
  ASSERT_EQ(test.size(), 2u);
  // User 1's last item: history = the 3 before it, session = the last 2 of them.
  EXPECT_EQ(test[0].user, 1);
  EXPECT_EQ(test[0].target, 16);
  EXPECT_EQ(test[0].history, (std::vector<int64_t>{13, 14, 15}));
  EXPECT_EQ(test[0].times, (std::vector<int64_t>{300, 400, 500}));
  EXPECT_EQ(test[0].lags, (std::vector<float>{300, 200, 100}));
  EXPECT_EQ(test[0].tag_counts, (std::vector<int64_t>{1, 1, 2}));
  EXPECT_EQ(test[0].session_begin, 1);
  EXPECT_EQ(test[1].user, 2);
  EXPECT_EQ(test[1].history, (std::vector<int64_t>{21, 22, 23}));

  o.split = "train";
  auto train = ReadAll(job.dataset_dir(), o);
  std::sort(train.begin(), train.end());
  ASSERT_EQ(train.size(), 4u);
  EXPECT_EQ(train[0].target, 12);
  EXPECT_EQ(train[0].history, (std::vector<int64_t>{11}));
  EXPECT_EQ(train[0].session_begin, 0);
  EXPECT_EQ(train[3].user, 2);
  EXPECT_EQ(train[3].target, 22);

  // The items file: the kept catalogue with tags, each item counted as a training target only
  // (16 is user 1's test target, 15 its validation target: not counted; 12 is a training target).
  auto items_file = SampleFileReader::Open(job.dataset_dir() + "/" + kItemsFile);
  ASSERT_TRUE(items_file.ok());
  auto items = (*items_file)->ReadAllItems();
  ASSERT_TRUE(items.ok());
  ASSERT_EQ(items->size(), 12u);
  EXPECT_EQ((*items)[5].id, 16);
  EXPECT_EQ((*items)[5].tags.size(), 3u);
  EXPECT_EQ((*items)[5].count, 0);
  EXPECT_EQ((*items)[4].id, 15);
  EXPECT_EQ((*items)[4].count, 0);
  EXPECT_EQ((*items)[1].id, 12);
  EXPECT_EQ((*items)[1].count, 1);
  int64_t total = 0;
  for (const auto& item : *items) total += item.count;
  EXPECT_EQ(total, summary->train_samples());
}

TEST(PrepareTest, TimeGapSessionsAndOtherSplits) {
  TempDir dir;
  DataConfig job = FixtureConfig(dir);
  job.set_session_mode(DataConfig::TIME_GAP);
  job.set_session_gap_s(1800);
  ASSERT_TRUE(Prepare(job, false).ok());
  ReaderOptions o;
  o.split = "test";
  auto test = ReadAll(job.dataset_dir(), o);
  std::sort(test.begin(), test.end());
  ASSERT_EQ(test.size(), 2u);
  // User 2: history 21(10) 22(20) 23(5000); the gap before 23 starts the session.
  EXPECT_EQ(test[1].session_begin, 2);
  // User 1: gaps of 100 s, so the session is capped at k = 2.
  EXPECT_EQ(test[0].session_begin, 1);

  job.set_split(DataConfig::GLOBAL_TIME);
  job.set_valid_time_fraction(0.25);
  job.set_test_time_fraction(0.25);
  auto s = Prepare(job, true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train_samples() + s->valid_samples() + s->test_samples(), 5 + 3 + 1);
  EXPECT_GT(s->test_samples(), 0);

  job.set_split(DataConfig::PAPER);
  job.set_train_user_fraction(0.5);
  s = Prepare(job, true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train_users() + s->test_users(), 3);
}

TEST(PrepareTest, RefusesToOverwriteWithoutForce) {
  TempDir dir;
  DataConfig job = FixtureConfig(dir);
  ASSERT_TRUE(Prepare(job, false).ok());
  WriteText(job.dataset_dir() + "/notes.txt", "keep me");
  auto again = Prepare(job, false);
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(absl::IsAlreadyExists(again.status()));
  EXPECT_NE(again.status().message().find("--force"), std::string::npos);
  job.set_num_shards(1);
  ASSERT_TRUE(Prepare(job, true).ok());
  // Old shards are gone, foreign files are kept.
  EXPECT_FALSE(std::filesystem::exists(job.dataset_dir() + "/train-00001-of-00002.t2ds"));
  EXPECT_TRUE(std::filesystem::exists(job.dataset_dir() + "/train-00000-of-00001.t2ds"));
  EXPECT_TRUE(std::filesystem::exists(job.dataset_dir() + "/notes.txt"));
}

TEST(PrepareTest, FileOrderIsKeptAndLabelled) {
  TempDir dir;
  DataConfig job = FixtureConfig(dir);
  job.set_sequence_order(DataConfig::FILE);
  ASSERT_TRUE(Prepare(job, false).ok());
  auto m = ReadManifest(job.dataset_dir());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->sequence_order(), "FILE");
  ReaderOptions o;
  o.split = "test";
  auto test = ReadAll(job.dataset_dir(), o);
  std::sort(test.begin(), test.end());
  ASSERT_EQ(test.size(), 2u);
  // User 1 in file order: 16 11 12 13 14 15 -> the last item is 15.
  EXPECT_EQ(test[0].target, 15);
  EXPECT_EQ(test[0].history, (std::vector<int64_t>{12, 13, 14}));
  job.set_session_mode(DataConfig::TIME_GAP);
  EXPECT_FALSE(Prepare(job, true).ok());
}

TEST(PrepareTest, SkippedBadLinesAreReportedInTheSummary) {
  TempDir dir;
  DataConfig job = FixtureConfig(dir);
  job.set_input_paths(
      0, WriteText(dir.File("bad.dat"), "1::11::5::100\n1::12::5::200\nbroken line\n1::13::5::300\n1::14::five::400\n"));
  auto s = Prepare(job, false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("bad.dat:3:"), std::string::npos) << s.status();
  job.set_skip_bad_lines(true);
  s = Prepare(job, true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->bad_lines(), 2);
  ASSERT_EQ(s->bad_line_examples_size(), 2);
  EXPECT_NE(s->bad_line_examples(1).find("bad.dat:5:"), std::string::npos);
  EXPECT_EQ(s->interactions(), 3);
  EXPECT_NE(FormatSummary(*s).find("bad line: "), std::string::npos);
}

// Nothing in the output folder that a later prepare (without --force) would take for a data set.
bool LeftNoDataSet(const std::string& dir) {
  if (!std::filesystem::exists(dir)) return true;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name == kManifestFile || name.find(".t2ds") != std::string::npos) return false;
  }
  return true;
}

// An input with no data rows used to prepare 0 users with success and fail later in training.
TEST(PrepareTest, EmptyOrHeaderOnlyInputIsAnErrorNamingIt) {
  TempDir dir;
  DataConfig job = FixtureConfig(dir);
  job.clear_item_path();
  job.set_input_paths(0, WriteText(dir.File("empty.dat"), ""));
  auto s = Prepare(job, false);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  EXPECT_NE(s.status().message().find("empty.dat"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("nothing usable was read"), std::string::npos) << s.status();
  EXPECT_TRUE(LeftNoDataSet(job.dataset_dir()));

  // Only bad lines, skipped: nothing usable either, and the message says how many were skipped.
  job.set_skip_bad_lines(true);
  job.set_input_paths(0, WriteText(dir.File("bad.dat"), "broken\nalso broken\n"));
  s = Prepare(job, false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("bad.dat"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("2 bad lines skipped"), std::string::npos) << s.status();

  // A CSV with a header and no rows.
  job.set_source(DataConfig::CSV);
  job.mutable_csv()->set_user_column("u");
  job.mutable_csv()->set_item_column("i");
  job.mutable_csv()->set_time_column("t");
  job.set_input_paths(0, WriteText(dir.File("header.csv"), "u,i,t\n"));
  s = Prepare(job, false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("header.csv"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("nothing usable was read"), std::string::npos) << s.status();
  EXPECT_TRUE(LeftNoDataSet(job.dataset_dir()));
}

// Rows were read, but every user is filtered out (no positives, too short, too short for the
// split): an error that names the input and says where the users went.
TEST(PrepareTest, EveryUserFilteredOutIsAnErrorNamingTheInput) {
  TempDir dir;
  DataConfig job = FixtureConfig(dir);
  job.set_min_rating(6);  // no positives
  auto s = Prepare(job, false);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(s.status())) << s.status();
  EXPECT_NE(s.status().message().find("ratings.dat"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("no user is left"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("13 rows filtered"), std::string::npos) << s.status();
  EXPECT_TRUE(LeftNoDataSet(job.dataset_dir()));

  job = FixtureConfig(dir);
  job.set_min_seq_len(7);  // longer than every user
  s = Prepare(job, false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("no user is left"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("4 with fewer than min_seq_len 7"), std::string::npos) << s.status();
  EXPECT_TRUE(LeftNoDataSet(job.dataset_dir()));

  // Users of two items pass min_seq_len 2 but are too short for LAST_ITEM's three.
  job = FixtureConfig(dir);
  job.set_input_paths(0, WriteText(dir.File("pairs.dat"), "1::11::5::1\n1::12::5::2\n2::11::5::1\n2::13::5::2\n"));
  s = Prepare(job, false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("pairs.dat"), std::string::npos) << s.status();
  EXPECT_NE(s.status().message().find("2 too short for the LAST_ITEM split"), std::string::npos) << s.status();
  EXPECT_TRUE(LeftNoDataSet(job.dataset_dir()));
}

// Timestamps at the ends of the int64 range: the session gap and the time lags used to overflow
// (a wrapped gap kept the session together, a wrapped lag was negative). The data set has no
// item file, so no item has tags (empty copies from an empty tag array).
TEST(PrepareTest, ExtremeTimestampsAndDataWithoutTags) {
  TempDir dir;
  DataConfig job = FixtureConfig(dir);
  job.clear_item_path();
  job.set_session_mode(DataConfig::TIME_GAP);
  job.set_session_gap_s(1800);
  job.set_num_shards(1);
  job.set_input_paths(0, WriteText(dir.File("extreme.dat"), "1::11::5::-9223372036854775808\n1::12::5::0\n"
                                                            "1::13::5::9223372036854775807\n"));
  auto s = Prepare(job, false);
  ASSERT_TRUE(s.ok()) << s.status();
  auto manifest = ReadManifest(job.dataset_dir());
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->max_tags_per_item(), 0);
  ReaderOptions o;
  o.split = "test";
  auto test = ReadAll(job.dataset_dir(), o);
  ASSERT_EQ(test.size(), 1u);
  EXPECT_EQ(test[0].target, 13);
  EXPECT_EQ(test[0].history, (std::vector<int64_t>{11, 12}));
  EXPECT_EQ(test[0].tag_counts, (std::vector<int64_t>{0, 0}));
  // The gap of 2^63 s before item 12 starts the session.
  EXPECT_EQ(test[0].session_begin, 1);
  // Lags are the differences as floats: 2^64 - 1 and 2^63 - 1 s, positive.
  EXPECT_EQ(test[0].lags, (std::vector<float>{18446744073709551615.0f, 9223372036854775807.0f}));
}

TEST(PrepareTest, ConfigErrors) {
  TempDir dir;
  DataConfig job = FixtureConfig(dir);
  job.set_source(DataConfig::SOURCE_UNSET);
  EXPECT_FALSE(Prepare(job, false).ok());
  job = FixtureConfig(dir);
  job.clear_dataset_dir();
  EXPECT_FALSE(Prepare(job, false).ok());
  // Sequence files have no timestamps: TIME_GAP and GLOBAL_TIME are refused.
  job = FixtureConfig(dir);
  job.set_source(DataConfig::ML1M_SEQUENCES);
  job.set_input_paths(0, WriteText(dir.File("seq.txt"), "1 5 6 7\n"));
  job.clear_item_path();
  job.set_session_mode(DataConfig::TIME_GAP);
  auto s = Prepare(job, true);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("TIME_GAP"), std::string::npos);
}

// A small synthetic data set for the reader tests.
DataConfig SyntheticConfig(const TempDir& dir, int64_t users) {
  DataConfig job;
  DataConfig* c = &job;
  c->set_source(DataConfig::SYNTHETIC);
  c->set_dataset_dir(dir.File("syn"));
  c->set_num_shards(4);
  c->set_chunk_bytes(4096);
  c->set_max_seq_len(8);
  c->set_session_len(3);
  c->mutable_generator()->set_num_users(users);
  c->mutable_generator()->set_num_items(500);
  c->mutable_generator()->set_num_interests(10);
  c->mutable_generator()->set_mean_seq_len(12);
  c->mutable_generator()->set_num_threads(2);
  return job;
}

std::vector<std::pair<int64_t, int64_t>> Keys(const std::vector<Sample>& v) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& s : v) out.emplace_back(s.user, s.target * 1000 + static_cast<int64_t>(s.history.size()));
  return out;
}

TEST(SampleReaderTest, DeterministicShuffledAndCursorRoundTrip) {
  TempDir dir;
  DataConfig job = SyntheticConfig(dir, 300);
  auto summary = Prepare(job, false);
  ASSERT_TRUE(summary.ok()) << summary.status();
  const std::string ds = job.dataset_dir();
  ReaderOptions o;
  o.batch_size = 7;
  o.shuffle_buffer = 50;
  o.epochs = 2;
  o.seed = 5;
  const auto full = Keys(ReadAll(ds, o));
  ASSERT_EQ(static_cast<int64_t>(full.size()), 2 * summary->train_samples());
  EXPECT_EQ(full, Keys(ReadAll(ds, o))) << "same seed, same order";
  // Each epoch is a permutation of the split, and the two epochs differ in order.
  std::vector<std::pair<int64_t, int64_t>> e0(full.begin(), full.begin() + full.size() / 2),
      e1(full.begin() + full.size() / 2, full.end());
  EXPECT_NE(e0, e1);
  auto s0 = e0, s1 = e1;
  std::sort(s0.begin(), s0.end());
  std::sort(s1.begin(), s1.end());
  EXPECT_EQ(s0, s1);
  o.seed = 6;
  EXPECT_NE(full, Keys(ReadAll(ds, o)));
  o.seed = 5;

  // Stop after k batches, save the cursor text, and resume in a new reader.
  for (int k : {0, 3, 20, static_cast<int>(summary->train_samples() / 7) + 1}) {
    auto r = SampleReader::Open(ds, o);
    ASSERT_TRUE(r.ok());
    SampleBatch b;
    std::vector<Sample> seen;
    for (int i = 0; i < k; ++i) {
      ASSERT_TRUE(*(*r)->Next(&b));
      for (auto& s : Unpack(b)) seen.push_back(std::move(s));
    }
    const std::string saved = (*r)->cursor().SerializeAsString();
    auto r2 = SampleReader::Open(ds, o);
    ASSERT_TRUE(r2.ok());
    ReaderCursor cursor;
    ASSERT_TRUE(cursor.ParseFromString(saved));
    ASSERT_TRUE((*r2)->Restore(cursor).ok());
    while (*(*r2)->Next(&b)) {
      for (auto& s : Unpack(b)) seen.push_back(std::move(s));
    }
    EXPECT_EQ(Keys(seen), full) << "resumed after " << k << " batches (" << cursor.ShortDebugString() << ")";
  }

  // A cursor from another configuration is refused.
  auto r = SampleReader::Open(ds, o);
  ASSERT_TRUE(r.ok());
  ReaderCursor c = (*r)->cursor();
  c.set_seed(99);
  EXPECT_TRUE(absl::IsFailedPrecondition((*r)->Restore(c)));
  c = (*r)->cursor();
  c.set_position(-1);
  EXPECT_TRUE(absl::IsInvalidArgument((*r)->Restore(c)));
}

TEST(SampleReaderTest, RanksPartitionTheSplit) {
  TempDir dir;
  DataConfig job = SyntheticConfig(dir, 300);
  ASSERT_TRUE(Prepare(job, false).ok());
  const std::string ds = job.dataset_dir();
  ReaderOptions o;
  o.batch_size = 16;
  o.shuffle_buffer = 0;
  o.equal_epochs = false;
  auto all = Keys(ReadAll(ds, o));
  std::vector<std::pair<int64_t, int64_t>> merged;
  o.world_size = 3;
  for (int rank = 0; rank < 3; ++rank) {
    o.rank = rank;
    auto part = Keys(ReadAll(ds, o));
    merged.insert(merged.end(), part.begin(), part.end());
  }
  std::sort(all.begin(), all.end());
  std::sort(merged.begin(), merged.end());
  EXPECT_EQ(all, merged);
  // equal_epochs: every rank produces the same count.
  o.equal_epochs = true;
  std::set<int64_t> counts;
  for (int rank = 0; rank < 3; ++rank) {
    o.rank = rank;
    auto r = SampleReader::Open(ds, o);
    ASSERT_TRUE(r.ok());
    counts.insert((*r)->samples_per_epoch());
    EXPECT_EQ(static_cast<int64_t>(ReadAll(ds, o).size()), (*r)->samples_per_epoch());
  }
  EXPECT_EQ(counts.size(), 1u);
  o.world_size = 5;  // more workers than shards
  o.rank = 0;
  auto r = SampleReader::Open(ds, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("num_shards"), std::string::npos);
}


TEST(SampleReaderTest, MissingOrDamagedShardNamesTheFile) {
  TempDir dir;
  DataConfig job = SyntheticConfig(dir, 100);
  ASSERT_TRUE(Prepare(job, false).ok());
  const std::string ds = job.dataset_dir();
  ReaderOptions o;
  std::filesystem::remove(ds + "/train-00002-of-00004.t2ds");
  auto r = SampleReader::Open(ds, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("train-00002-of-00004.t2ds"), std::string::npos);
  std::filesystem::copy_file(ds + "/valid-00002-of-00004.t2ds", ds + "/train-00002-of-00004.t2ds");
  r = SampleReader::Open(ds, o);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsDataLoss(r.status())) << r.status();
  r = SampleReader::Open(dir.File("nothing"), o);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsNotFound(r.status()));
}

TEST(SampleReaderTest, ChecksumMismatchSurfacesFromNext) {
  TempDir dir;
  DataConfig job = SyntheticConfig(dir, 200);
  ASSERT_TRUE(Prepare(job, false).ok());
  const std::string shard = job.dataset_dir() + "/train-00001-of-00004.t2ds";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);  // inside the first chunk's payload
    const char junk[4] = {1, 2, 3, 4};
    f.write(junk, 4);
  }
  ReaderOptions o;
  o.shuffle_buffer = 0;
  auto r = SampleReader::Open(job.dataset_dir(), o);
  ASSERT_TRUE(r.ok()) << r.status();
  SampleBatch b;
  absl::Status status;
  while (true) {
    auto more = (*r)->Next(&b);
    if (!more.ok()) {
      status = more.status();
      break;
    }
    if (!*more) break;
  }
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::IsDataLoss(status)) << status;
  EXPECT_NE(status.message().find("train-00001-of-00004.t2ds"), std::string::npos) << status;
}

TEST(GeneratorTest, OtherSplitProtocolsAndSessions) {
  TempDir dir;
  DataConfig job = SyntheticConfig(dir, 400);
  job.set_split(DataConfig::GLOBAL_TIME);
  job.set_session_mode(DataConfig::TIME_GAP);
  auto s = Prepare(job, false);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_GT(s->train_samples(), s->test_samples());
  EXPECT_GT(s->test_samples(), 0);
  EXPECT_GT(s->valid_samples(), 0);
  ReaderOptions o;
  o.shuffle_buffer = 0;
  int cut_by_gap = 0;
  for (const auto& x : ReadAll(job.dataset_dir(), o)) {
    ASSERT_LE(static_cast<int>(x.history.size()) - x.session_begin, 3);  // capped at k
    if (x.session_begin > 0 && static_cast<int>(x.history.size()) - x.session_begin < 3) {
      ++cut_by_gap;
      EXPECT_GT(x.times[x.session_begin] - x.times[x.session_begin - 1], 1800);
    }
  }
  EXPECT_GT(cut_by_gap, 0);
  job.set_split(DataConfig::PAPER);
  s = Prepare(job, true);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_NEAR(static_cast<double>(s->train_users()) / 400, 0.8, 0.08);
  EXPECT_EQ(s->train_users() + s->test_users(), 400);
}

TEST(GeneratorTest, ZipfSamplerMatchesTheDistribution) {
  ZipfSampler z(1000, 1.0);
  SplitMix64 rng(1);
  std::vector<int> counts(1001, 0);
  const int draws = 200000;
  for (int i = 0; i < draws; ++i) {
    const int64_t k = z.Sample(&rng);
    ASSERT_GE(k, 1);
    ASSERT_LE(k, 1000);
    ++counts[k];
  }
  double harmonic = 0;
  for (int k = 1; k <= 1000; ++k) harmonic += 1.0 / k;
  EXPECT_NEAR(counts[1] / static_cast<double>(draws), 1.0 / harmonic, 0.005);
  EXPECT_NEAR(counts[2] / static_cast<double>(draws), 0.5 / harmonic, 0.004);
  ZipfSampler huge(100000000000LL, 1.1);  // 1e11 items cost nothing
  EXPECT_GE(huge.Sample(&rng), 1);
}

TEST(GeneratorTest, UsersAreDeterministicWithSessionsAndCorrelatedTags) {
  config::GeneratorConfig g;
  SyntheticWorld w(g, 1800, 3);
  UserSequence a, b;
  w.GenerateUser(17, &a);
  w.GenerateUser(17, &b);
  EXPECT_EQ(a.items, b.items);
  EXPECT_EQ(a.times, b.times);
  ASSERT_GE(a.items.size(), static_cast<size_t>(g.min_seq_len()));
  int sessions = 1;
  for (size_t i = 1; i < a.times.size(); ++i) {
    EXPECT_GE(a.times[i], a.times[i - 1]);
    sessions += a.times[i] - a.times[i - 1] > 1800;
  }
  EXPECT_GT(sessions, 1);
  // Items of one cluster share most tags; successors stay in the cluster.
  std::vector<int64_t> t1, t2;
  int shared = 0;
  for (int64_t item = 1; item <= 200; ++item) {
    w.ItemTags(item, &t1);
    w.ItemTags(item + w.num_clusters(), &t2);
    shared += t1 == t2;
    EXPECT_EQ(w.ClusterOf(w.Successor(item, 1)), w.ClusterOf(item));
  }
  EXPECT_GT(shared, 100);
}

// The built-in data set must reward sequence models: a first-order transition model fitted on
// the training split beats popularity clearly on the test split.
TEST(GeneratorTest, DefaultSetIsLearnableBeyondPopularity) {
  TempDir dir;
  DataConfig job;
  DataConfig* c = &job;
  c->set_source(DataConfig::SYNTHETIC);
  c->set_dataset_dir(dir.File("syn"));
  c->set_num_shards(2);
  c->mutable_generator()->set_num_users(3000);  // the default catalogue, fewer users
  auto s = Prepare(job, false);
  ASSERT_TRUE(s.ok()) << s.status();
  ReaderOptions o;
  o.batch_size = 256;
  o.shuffle_buffer = 0;
  auto train = ReadAll(c->dataset_dir(), o);
  o.split = "test";
  auto test = ReadAll(c->dataset_dir(), o);
  ASSERT_GT(test.size(), 2000u);
  absl::flat_hash_map<int64_t, absl::flat_hash_map<int64_t, int>> next;
  absl::flat_hash_map<int64_t, int> pop;
  for (const auto& x : train) {
    ++pop[x.target];
    if (!x.history.empty()) ++next[x.history.back()][x.target];
  }
  auto top = [](const absl::flat_hash_map<int64_t, int>& m, size_t k) {
    std::vector<std::pair<int, int64_t>> v;
    for (const auto& [id, n] : m) v.emplace_back(-n, id);
    std::sort(v.begin(), v.end());
    std::vector<int64_t> out;
    for (size_t i = 0; i < std::min(k, v.size()); ++i) out.push_back(v[i].second);
    return out;
  };
  const auto popular = top(pop, 10);
  int hit_pop = 0, hit_seq = 0;
  for (const auto& x : test) {
    hit_pop += std::count(popular.begin(), popular.end(), x.target) > 0;
    auto it = next.find(x.history.back());
    const auto cand = it == next.end() ? popular : top(it->second, 10);
    hit_seq += std::count(cand.begin(), cand.end(), x.target) > 0;
  }
  const double recall_pop = static_cast<double>(hit_pop) / test.size();
  const double recall_seq = static_cast<double>(hit_seq) / test.size();
  RecordProperty("recall10_popularity", std::to_string(recall_pop));
  RecordProperty("recall10_transitions", std::to_string(recall_seq));
  EXPECT_GT(recall_seq, 3 * recall_pop) << "popularity " << recall_pop << ", transitions " << recall_seq;
  EXPECT_GT(recall_seq, 0.3);
}

// Real data (skipped when ../shared/data is absent).
TEST(RealDataTest, MovieLens100kCounts) {
  const std::string root = testing::SharedDataDir();
  if (root.empty()) GTEST_SKIP() << "../shared/data is absent";
  TempDir dir;
  DataConfig job;
  DataConfig* c = &job;
  c->set_source(DataConfig::MOVIELENS_100K);
  c->add_input_paths(root + "/ml-100k/u.data");
  c->set_item_path(root + "/ml-100k/u.item");
  c->set_dataset_dir(dir.File("ml100k"));
  c->set_num_shards(2);
  auto s = Prepare(job, false);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->input_users(), 943);
  EXPECT_EQ(s->input_items(), 1682);
  EXPECT_EQ(s->input_interactions(), 100000);
  EXPECT_EQ(s->test_samples(), 943);
  auto m = ReadManifest(c->dataset_dir());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->tag_names_size(), 19);
  std::printf("ML-100k: %s\n", FormatSummary(*s).c_str());
}

TEST(RealDataTest, MovieLens1mSequenceCounts) {
  const std::string root = testing::SharedDataDir();
  if (root.empty()) GTEST_SKIP() << "../shared/data is absent";
  TempDir dir;
  DataConfig job;
  DataConfig* c = &job;
  c->set_source(DataConfig::ML1M_SEQUENCES);
  c->add_input_paths(root + "/ml-1m/ml-1m_sequences.txt.gz");
  c->set_item_path(root + "/ml-1m/movies.dat");
  c->set_dataset_dir(dir.File("ml1m"));
  c->set_num_shards(4);
  auto s = Prepare(job, false);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->input_users(), 6040);
  EXPECT_EQ(s->input_items(), 3706);
  EXPECT_EQ(s->input_interactions(), 1000209);
  EXPECT_EQ(s->min_seq_len(), 20);
  EXPECT_EQ(s->max_seq_len(), 2314);
  EXPECT_EQ(s->test_samples(), 6040);
  EXPECT_EQ(s->train_samples(), 1000209 - 3 * 6040);
  std::printf("ML-1M: %s\n", FormatSummary(*s).c_str());
}

TEST(RealDataTest, MovieLens1mRatingsWithTimestamps) {
  const std::string root = testing::SharedDataDir();
  if (root.empty()) GTEST_SKIP() << "../shared/data is absent";
  DataConfig c;
  c.set_source(DataConfig::MOVIELENS_DAT);
  c.add_input_paths(root + "/ml-1m/ratings_users1-2999.dat.gz");
  auto log = ReadSource(c);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(log->interactions.size(), 487650u);
}

}  // namespace
}  // namespace t2d::data
