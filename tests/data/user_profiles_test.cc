// User profile fields: keys, the user file layouts, sample records that carry them, prepare and
// the generator.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "data/generator.h"
#include "data/prepare.h"
#include "data/sample_file.h"
#include "data/shard_set.h"
#include "data/sample_reader.h"
#include "data/user_profiles.h"
#include "tests/data/test_util.h"

namespace t2d::data {
namespace {

using config::DataConfig;
using testing::TempDir;
using testing::WriteText;

TEST(UserFeatureKeyTest, StableNonZeroAndPerField) {
  // The key is part of the data sets on disk and of serving: it must never change.
  EXPECT_EQ(UserFeatureKey("gender", "M"), int64_t{13926115658420367});
  EXPECT_EQ(UserFeatureKey("gender", ""), 0);
  EXPECT_EQ(UserFeatureKey("gender", "  \t"), 0);
  EXPECT_EQ(UserFeatureKey("gender", " M "), UserFeatureKey("gender", "M"));
  EXPECT_NE(UserFeatureKey("gender", "M"), UserFeatureKey("gender", "F"));
  EXPECT_NE(UserFeatureKey("age", "1"), UserFeatureKey("occupation", "1"));  // fields share a table
  std::set<int64_t> keys;
  for (int v = 0; v < 10000; ++v) {
    const int64_t k = UserFeatureKey("zip", std::to_string(v));
    EXPECT_GT(k, 0);
    keys.insert(k);
  }
  EXPECT_EQ(keys.size(), 10000u);
}

DataConfig UserFileConfig(DataConfig::SourceKind source, const std::string& path) {
  DataConfig c;
  c.set_source(source);
  c.set_user_path(path);
  return c;
}

TEST(UserProfilesTest, MovieLensLayouts) {
  TempDir dir;
  BadLines bad;
  auto ml1m = UserProfiles::Read(
      UserFileConfig(DataConfig::MOVIELENS_DAT,
                     WriteText(dir.File("users.dat"), "2::M::56::16::70072\n1::F::1::10::48067\n3::M::25::15::\n")),
      &bad);
  ASSERT_TRUE(ml1m.ok()) << ml1m.status();
  EXPECT_EQ(ml1m->fields(), (std::vector<std::string>{"gender", "age", "occupation", "zip"}));
  EXPECT_EQ(ml1m->num_users(), 3);
  const int64_t* u1 = ml1m->Find(1);
  ASSERT_NE(u1, nullptr);
  EXPECT_EQ(std::vector<int64_t>(u1, u1 + 4),
            (std::vector<int64_t>{UserFeatureKey("gender", "F"), UserFeatureKey("age", "1"),
                                  UserFeatureKey("occupation", "10"), UserFeatureKey("zip", "48067")}));
  const int64_t* u3 = ml1m->Find(3);
  ASSERT_NE(u3, nullptr);
  EXPECT_EQ(u3[3], 0) << "an empty field is a missing value";
  EXPECT_EQ(ml1m->Find(4), nullptr);
  EXPECT_EQ(ml1m->Find(0), nullptr);

  auto ml100k = UserProfiles::Read(
      UserFileConfig(DataConfig::MOVIELENS_100K, WriteText(dir.File("u.user"), "1|24|M|technician|85711\n")), &bad);
  ASSERT_TRUE(ml100k.ok()) << ml100k.status();
  EXPECT_EQ(ml100k->fields(), (std::vector<std::string>{"age", "gender", "occupation", "zip"}));
  EXPECT_EQ(ml100k->Find(1)[1], UserFeatureKey("gender", "M"));
  EXPECT_EQ(bad.count, 0);
}

TEST(UserProfilesTest, CsvColumnsByName) {
  TempDir dir;
  DataConfig c = UserFileConfig(DataConfig::CSV, WriteText(dir.File("users.csv"), "region,uid,tier\neu,7,gold\n\"us,east\",5,\n"));
  c.mutable_csv()->set_user_file_id_column("uid");
  c.mutable_csv()->add_user_feature_columns("tier");
  c.mutable_csv()->add_user_feature_columns("region");
  BadLines bad;
  auto p = UserProfiles::Read(c, &bad);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->fields(), (std::vector<std::string>{"tier", "region"}));
  EXPECT_EQ(std::vector<int64_t>(p->Find(5), p->Find(5) + 2),
            (std::vector<int64_t>{0, UserFeatureKey("region", "us,east")}));
  EXPECT_EQ(p->Find(7)[0], UserFeatureKey("tier", "gold"));
}

TEST(UserProfilesTest, ErrorsNameTheFileLineOrField) {
  TempDir dir;
  BadLines bad;
  const std::string path = WriteText(dir.File("users.dat"), "1::F::1::10::48067\n2::M::56\n");
  auto short_line = UserProfiles::Read(UserFileConfig(DataConfig::MOVIELENS_DAT, path), &bad);
  ASSERT_FALSE(short_line.ok());
  EXPECT_NE(short_line.status().message().find(path + ":2:"), std::string::npos) << short_line.status();

  DataConfig skip = UserFileConfig(DataConfig::MOVIELENS_DAT, path);
  skip.set_skip_bad_lines(true);
  auto skipped = UserProfiles::Read(skip, &bad);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_EQ(skipped->num_users(), 1);
  EXPECT_EQ(bad.count, 1);

  auto twice = UserProfiles::Read(
      UserFileConfig(DataConfig::MOVIELENS_DAT, WriteText(dir.File("twice.dat"), "1::F::1::10::1\n1::M::1::10::1\n")), &bad);
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.status().message().find("user 1 is listed twice"), std::string::npos) << twice.status();

  DataConfig csv = UserFileConfig(DataConfig::CSV, WriteText(dir.File("u.csv"), "user_id,tier\n1,gold\n"));
  auto no_columns = UserProfiles::Read(csv, &bad);
  ASSERT_FALSE(no_columns.ok());
  EXPECT_NE(no_columns.status().message().find("data.csv.user_feature_columns"), std::string::npos);
  csv.mutable_csv()->add_user_feature_columns("region");
  auto unknown = UserProfiles::Read(csv, &bad);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown column \"region\""), std::string::npos) << unknown.status();

  auto no_layout = UserProfiles::Read(UserFileConfig(DataConfig::MOVIETWEETINGS, path), &bad);
  ASSERT_FALSE(no_layout.ok());
  EXPECT_NE(no_layout.status().message().find("data.user_path"), std::string::npos);

  auto missing = UserProfiles::Read(UserFileConfig(DataConfig::MOVIELENS_DAT, dir.File("absent.dat")), &bad);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("absent.dat"), std::string::npos);
}

TEST(UserProfilesTest, RealMovieLensUserFiles) {
  const std::string shared = testing::SharedDataDir();
  if (shared.empty()) GTEST_SKIP() << "../shared/data is absent";
  BadLines bad;
  auto ml1m = UserProfiles::Read(UserFileConfig(DataConfig::MOVIELENS_DAT, shared + "/ml-1m/users.dat"), &bad);
  ASSERT_TRUE(ml1m.ok()) << ml1m.status();
  EXPECT_EQ(ml1m->num_users(), 6040);
  ASSERT_NE(ml1m->Find(1), nullptr);
  EXPECT_EQ(ml1m->Find(1)[0], UserFeatureKey("gender", "F"));  // "1::F::1::10::48067"
  auto ml100k = UserProfiles::Read(UserFileConfig(DataConfig::MOVIELENS_100K, shared + "/ml-100k/u.user"), &bad);
  ASSERT_TRUE(ml100k.ok()) << ml100k.status();
  EXPECT_EQ(ml100k->num_users(), 943);
  EXPECT_EQ(bad.count, 0);
}

TEST(SampleFileProfileTest, RecordsCarryTheKeysAndReadBack) {
  TempDir dir;
  SampleFileHeader h;
  h.set_kind(SampleFileHeader::SAMPLES);
  h.set_user_fields(2);
  const std::string path = dir.File("p.t2ds");
  auto w = SampleFileWriter::Create(path, h, 64);  // small chunks: records span several
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<int64_t> items = {5, 6, 7}, times = {1, 2, 3};
  const std::vector<absl::Span<const int64_t>> tags(3);
  const std::vector<TargetRef> targets = {{2, 0}};
  for (int64_t u = 1; u <= 5; ++u) {
    const std::vector<int64_t> keys = {u * 10, u * 10 + 1};
    ASSERT_TRUE((*w)->AddUser(u, items, times, tags, targets, u == 3 ? absl::Span<const int64_t>() : keys).ok());
  }
  const std::vector<int64_t> three = {1, 2, 3};
  EXPECT_FALSE((*w)->AddUser(9, items, times, tags, targets, three).ok()) << "three keys for two fields";
  ASSERT_TRUE((*w)->Finish().ok());

  auto r = SampleFileReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->header().user_fields(), 2);
  std::map<int64_t, std::vector<int64_t>> got;
  for (int i = 0; i < (*r)->num_chunks(); ++i) {
    DecodedChunk c;
    ASSERT_TRUE((*r)->ReadChunk(i, &c).ok());
    ASSERT_EQ(c.user_features.size(), 2 * c.user_ids.size());
    for (size_t k = 0; k < c.user_ids.size(); ++k) {
      got[c.user_ids[k]] = {c.user_features[2 * k], c.user_features[2 * k + 1]};
      EXPECT_EQ(c.items.size(), 3 * c.user_ids.size());
    }
  }
  ASSERT_EQ(got.size(), 5u);
  EXPECT_EQ(got[2], (std::vector<int64_t>{20, 21}));
  EXPECT_EQ(got[3], (std::vector<int64_t>{0, 0})) << "no keys given: every field missing";
}

// The prepare fixture of prepare_reader_test (users 1 and 2 kept) with a user file that lists
// user 1 only.
TEST(PrepareProfileTest, SamplesCarryTheUsersProfile) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::MOVIELENS_DAT);
  c.add_input_paths(WriteText(dir.File("ratings.dat"), "1::11::5::100\n1::12::4::200\n1::13::4::300\n1::14::3::400\n"
                                                       "2::21::5::10\n2::22::5::20\n2::23::5::30\n"));
  c.set_user_path(WriteText(dir.File("users.dat"), "1::F::25::3::12345\n9::M::1::1::1\n"));
  c.set_dataset_dir(dir.File("out"));
  c.set_max_seq_len(3);
  c.set_session_len(2);
  c.set_num_shards(2);
  auto summary = Prepare(c, false);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->profile_users(), 2);
  EXPECT_EQ(summary->users_without_profile(), 1);
  EXPECT_NE(FormatSummary(*summary).find("1 users with samples are not in it"), std::string::npos);
  auto m = ReadManifest(c.dataset_dir());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(std::vector<std::string>(m->user_feature_names().begin(), m->user_feature_names().end()),
            (std::vector<std::string>{"gender", "age", "occupation", "zip"}));
  for (const char* split : {"train", "valid", "test"}) {
    ReaderOptions o;
    o.split = split;
    o.batch_size = 16;
    auto r = SampleReader::Open(c.dataset_dir(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    SampleBatch b;
    auto more = (*r)->Next(&b);
    ASSERT_TRUE(more.ok() && *more);
    ASSERT_EQ(b.user_fields, 4);
    ASSERT_EQ(b.user_feature.size(), static_cast<size_t>(b.size) * 4);
    for (int i = 0; i < b.size; ++i) {
      const std::vector<int64_t> keys(b.user_feature.begin() + 4 * i, b.user_feature.begin() + 4 * (i + 1));
      if (b.user_id[i] == 1) {
        EXPECT_EQ(keys, (std::vector<int64_t>{UserFeatureKey("gender", "F"), UserFeatureKey("age", "25"),
                                              UserFeatureKey("occupation", "3"), UserFeatureKey("zip", "12345")}));
      } else {
        EXPECT_EQ(keys, (std::vector<int64_t>{0, 0, 0, 0})) << "user 2 is not in the user file";
      }
    }
  }
  // The user file is part of the data set's identity.
  DataConfig other = c;
  other.set_user_path(dir.File("other.dat"));
  EXPECT_NE(DatasetId(c), DatasetId(other));
}

// Without a user file, the profile columns are read from the interaction file: the last
// non-empty value of each user's rows wins.
TEST(PrepareProfileTest, ProfileColumnsOfTheInteractionFile) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::CSV);
  c.add_input_paths(WriteText(dir.File("log.csv"), "user_id,item_id,timestamp,tier,region\n"
                                                   "1,11,100,silver,eu\n1,12,200,gold,\n1,13,300,,\n"
                                                   "2,21,10,,us\n2,22,20,,\n2,23,30,,\n"));
  c.mutable_csv()->add_user_feature_columns("tier");
  c.mutable_csv()->add_user_feature_columns("region");
  c.set_dataset_dir(dir.File("out"));
  c.set_num_shards(1);
  auto summary = Prepare(c, false);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->users_without_profile(), 0);
  ReaderOptions o;
  o.split = "test";
  auto r = SampleReader::Open(c.dataset_dir(), o);
  ASSERT_TRUE(r.ok()) << r.status();
  SampleBatch b;
  auto more = (*r)->Next(&b);
  ASSERT_TRUE(more.ok() && *more);
  ASSERT_EQ(b.size, 2);
  ASSERT_EQ(b.user_fields, 2);
  std::map<int64_t, std::vector<int64_t>> got;
  for (int i = 0; i < b.size; ++i) got[b.user_id[i]] = {b.user_feature[2 * i], b.user_feature[2 * i + 1]};
  EXPECT_EQ(got[1], (std::vector<int64_t>{UserFeatureKey("tier", "gold"), UserFeatureKey("region", "eu")}));
  EXPECT_EQ(got[2], (std::vector<int64_t>{0, UserFeatureKey("region", "us")}));

  c.mutable_csv()->add_user_feature_columns("age");
  auto unknown = Prepare(c, true);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown column \"age\""), std::string::npos) << unknown.status();
}

TEST(GeneratorProfileTest, FieldsFollowTheInterestAndLeaveTheSequencesAlone) {
  config::GeneratorConfig g;
  g.set_num_users(400);
  g.set_num_items(1000);
  g.set_num_interests(20);
  g.set_interests_per_user(1);
  g.set_drift_prob(0);
  g.set_follow_prob(0);
  g.set_user_profile_fields(2);
  g.set_user_profile_values(50);  // more values than interests: a signal value is the interest
  g.set_user_profile_signal(1.0);
  const SyntheticWorld world(g, 1800, 1);
  EXPECT_EQ(world.ProfileFields(), (std::vector<std::string>{"p1", "p2"}));
  UserSequence s, plain;
  std::vector<int64_t> profile;
  for (int64_t u = 1; u <= 50; ++u) {
    world.GenerateUser(u, &s, &profile);
    world.GenerateUser(u, &plain);
    EXPECT_EQ(s.items, plain.items) << "the fields do not change the sequence";
    ASSERT_EQ(profile.size(), 2u);
    // One interest and no drift: every item is in the interest's cluster.
    const int64_t cluster = world.ClusterOf(s.items[0]);
    EXPECT_EQ(profile[0], UserFeatureKey("p1", std::to_string(cluster + 1)));
    EXPECT_EQ(profile[1], UserFeatureKey("p2", std::to_string(cluster + 1)));
  }
  // Without signal the value is uniform: it matches the cluster about 1 time in 50.
  g.set_user_profile_signal(0.0);
  const SyntheticWorld noise(g, 1800, 1);
  int matches = 0;
  for (int64_t u = 1; u <= 400; ++u) {
    noise.GenerateUser(u, &s, &profile);
    matches += profile[0] == UserFeatureKey("p1", std::to_string(noise.ClusterOf(s.items[0]) + 1)) ? 1 : 0;
  }
  EXPECT_LT(matches, 30);  // expected 8
}

TEST(GeneratorProfileTest, GeneratedDataSetCarriesTheFields) {
  TempDir dir;
  DataConfig c;
  c.set_source(DataConfig::SYNTHETIC);
  c.set_dataset_dir(dir.File("syn"));
  c.set_num_shards(2);
  c.mutable_generator()->set_num_users(60);
  c.mutable_generator()->set_num_items(200);
  c.mutable_generator()->set_user_profile_fields(3);
  c.mutable_generator()->set_num_threads(1);
  auto summary = Prepare(c, false);
  ASSERT_TRUE(summary.ok()) << summary.status();
  auto m = ReadManifest(c.dataset_dir());
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(m->user_feature_names_size(), 3);
  const SyntheticWorld world(c.generator(), c.session_gap_s(), c.seed());
  ReaderOptions o;
  o.batch_size = 8;
  auto r = SampleReader::Open(c.dataset_dir(), o);
  ASSERT_TRUE(r.ok()) << r.status();
  SampleBatch b;
  auto more = (*r)->Next(&b);
  ASSERT_TRUE(more.ok() && *more);
  UserSequence s;
  std::vector<int64_t> profile;
  for (int i = 0; i < b.size; ++i) {
    world.GenerateUser(b.user_id[i], &s, &profile);
    EXPECT_EQ(std::vector<int64_t>(b.user_feature.begin() + 3 * i, b.user_feature.begin() + 3 * (i + 1)), profile);
  }
}

}  // namespace
}  // namespace t2d::data
