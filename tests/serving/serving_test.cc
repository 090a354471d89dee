// serving/: .npy files (exact bytes, round trip, damage); a bundle written by WriteBundle and
// read back by Bundle (top-k, errors naming the file); deltas (WriteBundleDelta, WithDelta); the
// request protocol; the batching Server; live samples cut as prepare and the reader cut them.
// (Agreement of serving with evaluation on trained models: tests/trainer/serving_agreement_test.cc.)
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <google/protobuf/text_format.h>

#include "absl/strings/str_cat.h"
#include "common/sealed_folder.h"
#include "absl/strings/str_split.h"
#include "configs/config_loader.h"
#include "configs/job_options.h"
#include "embedding/initializer.h"
#include "model/model.h"
#include "serving/bundle.h"
#include "serving/bundle_writer.h"
#include "serving/npy.h"
#include "serving/protocol.h"
#include "serving/server.h"
#include "data/live_sample.h"
#include "data/user_profiles.h"

namespace t2d::serving {
namespace {

namespace fs = std::filesystem;

// The data set manifest a bundle carries: timestamps, LAST_K sessions of `session_len`.
data::DatasetManifest Dataset(int window, int session_len) {
  data::DatasetManifest m;
  m.set_window(window);
  m.set_session_len(session_len);
  m.set_session_mode("LAST_K");
  m.set_has_timestamps(true);
  m.set_max_tags_per_item(1);
  m.set_sequence_order("TIME");
  return m;
}

// A query of `items` at times 100, 200, ... (owning its arrays).
ParsedQuery Q(std::vector<int64_t> items, int k, uint64_t seed) {
  ParsedQuery q;
  q.items = std::move(items);
  for (size_t i = 0; i < q.items.size(); ++i) q.times.push_back(100 * static_cast<int64_t>(i + 1));
  q.k = k;
  q.seed = seed;
  return q;
}

class ServingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (fs::path(::testing::TempDir()) / (std::string("t2d_serving_") + info->name() + "_" +
                                              std::to_string(::getpid()))).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  std::string dir_;
};

TEST_F(ServingTest, NpyBytesAsNumpyWritesThem) {
  const std::string path = dir_ + "/a.npy";
  ASSERT_TRUE(WriteNpy(path, std::vector<int64_t>{1, -2, 3}, {3}).ok());
  const std::string bytes = Read(path);
  // magic, version 1.0, header length (little-endian), the dict padded with spaces to a
  // 64-byte boundary and ended by '\n', then the data.
  const std::string dict = "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }";
  // 10 + 57 + '\n' = 68 bytes pad to 128.
  ASSERT_EQ(bytes.size(), 128u + 3 * 8);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_EQ(static_cast<unsigned char>(bytes[8]) + 256 * static_cast<unsigned char>(bytes[9]), 128 - 10);
  EXPECT_EQ(bytes.substr(10, dict.size()), dict);
  EXPECT_EQ(bytes.substr(10 + dict.size(), 128 - 11 - dict.size()), std::string(128 - 11 - dict.size(), ' '));
  EXPECT_EQ(bytes[127], '\n');
  int64_t second;
  std::memcpy(&second, bytes.data() + 128 + 8, 8);
  EXPECT_EQ(second, -2);
}

TEST_F(ServingTest, NpyRoundTripAndDamage) {
  const std::string path = dir_ + "/v.npy";
  std::vector<float> v(12);
  std::iota(v.begin(), v.end(), 0.5f);
  ASSERT_TRUE(WriteNpy(path, v, {4, 3}).ok());
  auto back = ReadNpyFloat(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape, (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(back->data, v);
  // Wrong dtype, truncation and a bad magic are errors naming the file.
  auto wrong = ReadNpyInt64(path);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("v.npy"), std::string::npos) << wrong.status();
  const std::string bytes = Read(path);
  std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() - 5);
  auto cut = ReadNpyFloat(path);
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.status().message().find("v.npy"), std::string::npos) << cut.status();
  std::ofstream(path, std::ios::binary) << "NUMPY!" << bytes.substr(6);
  EXPECT_FALSE(ReadNpyFloat(path).ok());
  EXPECT_FALSE(ReadNpyFloat(dir_ + "/none.npy").ok());
}

// A bundle of 5 items with E-dimensional vectors chosen by hand and a freshly initialised model.
TEST_F(ServingTest, BundleTopKScoresTheCatalogueExactly) {
  auto job = config::ParseJobConfig(absl::StrCat(R"(
      tables { name: "item_id" dim: 2 } tables { name: "item_tag" dim: 2 }
      data { dataset_dir: ")", dir_, R"(/data" max_seq_len: 6 session_len: 3 }
      model { diffusion_steps: 4 })"), "bundle.textproto");
  ASSERT_TRUE(job.ok()) << job.status();
  auto dims = config::ModelDimsOf(*job);
  ASSERT_TRUE(dims.ok()) << dims.status();
  auto model = model::Model::Create(job->model(), *dims);
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t e = (*model)->output_dim();
  const std::vector<int64_t> ids = {10, 20, 30, 40, 50};
  std::vector<float> vectors(ids.size() * static_cast<size_t>(e));
  for (size_t i = 0; i < vectors.size(); ++i) vectors[i] = static_cast<float>((i * 7) % 11) - 5.0f;
  const std::vector<int64_t> id_keys = {10, 20};
  const std::vector<float> id_rows = {0.1f, 0.2f, 0.3f, 0.4f};
  const std::vector<int64_t> tag_keys = {1};
  const std::vector<float> tag_rows = {0.5f, -0.5f};
  const data::DatasetManifest dataset = Dataset(6, 3);
  BundleContents c;
  c.job = &*job;
  c.dataset = &dataset;
  c.model = model->get();
  c.step = 42;
  c.item_ids = ids;
  c.item_vectors = vectors;
  c.vector_dim = e;
  c.id_keys = id_keys;
  c.id_rows = id_rows;
  c.id_dim = 2;
  c.tag_keys = tag_keys;
  c.tag_rows = tag_rows;
  c.tag_dim = 2;
  c.item_tag_offsets = {0, 1, 1, 1, 1, 1};
  c.item_tags = {1};
  const std::string dir = dir_ + "/bundle";
  ASSERT_TRUE(WriteBundle(dir, c).ok());

  auto bundle = Bundle::Load(dir);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  EXPECT_EQ((*bundle)->num_items(), 5);
  EXPECT_EQ((*bundle)->step(), 42);
  auto r = (*bundle)->TopK(Q({10, 20, 30}, 3, 7).View());  // 30: no exported row, reads its initial row
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->items.size(), 3u);
  // The scores are the item vectors' dot products with one user vector: recover it from the
  // returned scores' consistency (descending, and each equal to a catalogue dot product).
  EXPECT_TRUE(std::is_sorted(r->scores.rbegin(), r->scores.rend()));
  auto again = (*bundle)->TopK(Q({10, 20, 30}, 3, 7).View());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->items, r->items);  // same seed, same answer
  EXPECT_EQ(again->scores, r->scores);
  auto all = (*bundle)->TopK(Q({10}, 50, 7).View());  // k beyond the catalogue: all of it
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->items.size(), 5u);

  // A damaged file is refused, naming it.
  std::ofstream(dir + "/item_vectors.npy", std::ios::app) << "x";
  auto damaged = Bundle::Load(dir);
  ASSERT_FALSE(damaged.ok());
  EXPECT_NE(damaged.status().message().find("item_vectors.npy"), std::string::npos) << damaged.status();
}

// A bundle of 3 items without a tag table; `vectors` replaces the item vectors when not empty.
absl::Status WriteTinyBundle(const std::string& root, const std::string& dir, std::vector<float> vectors = {}) {
  auto job = config::ParseJobConfig(absl::StrCat(R"(
      tables { name: "item_id" dim: 2 }
      data { dataset_dir: ")", root, R"(/data" max_seq_len: 4 session_len: 2 }
      model { diffusion_steps: 2 item_tag_table: "" })"), "tiny.textproto");
  if (!job.ok()) return job.status();
  auto dims = config::ModelDimsOf(*job);
  if (!dims.ok()) return dims.status();
  auto model = model::Model::Create(job->model(), *dims);
  if (!model.ok()) return model.status();
  const int64_t e = (*model)->output_dim();
  const std::vector<int64_t> ids = {1, 2, 3};
  if (vectors.empty()) vectors.assign(ids.size() * static_cast<size_t>(e), 0.25f);
  const std::vector<int64_t> id_keys = {1};
  const std::vector<float> id_rows = {0.1f, 0.2f};
  const data::DatasetManifest dataset = Dataset(4, 2);
  BundleContents c;
  c.job = &*job;
  c.dataset = &dataset;
  c.model = model->get();
  c.item_ids = ids;
  c.item_vectors = vectors;
  c.vector_dim = e;
  c.id_keys = id_keys;
  c.id_rows = id_rows;
  c.id_dim = 2;
  c.item_tag_offsets = {0, 0, 0, 0};
  return WriteBundle(dir, c);
}

TEST_F(ServingTest, BundleManifestMustListEveryFile) {
  const std::string dir = dir_ + "/bundle";
  ASSERT_TRUE(WriteTinyBundle(dir_, dir).ok());
  ASSERT_TRUE(Bundle::Load(dir).ok());
  // The header alone (no `files` entries) must not verify a bundle.
  std::string header;
  const std::vector<std::string> lines = absl::StrSplit(Read(dir + "/MANIFEST"), '\n', absl::SkipEmpty());
  for (const std::string& line : lines) {
    if (line[0] != ' ' && line.rfind("files", 0) != 0 && line != "}") absl::StrAppend(&header, line, "\n");
  }
  std::ofstream(dir + "/MANIFEST", std::ios::trunc) << header;
  auto loaded = Bundle::Load(dir);
  ASSERT_FALSE(loaded.ok()) << "a bundle with a header-only manifest was loaded";
  EXPECT_NE(loaded.status().message().find(dir), std::string::npos) << loaded.status();
}

// Non-finite item vectors are refused by the writer, and by the reader in a bundle whose
// manifest was (re)sealed over them.
TEST_F(ServingTest, BundleWithNonFiniteItemVectorsIsRefused) {
  const std::string dir = dir_ + "/bundle";
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto probe = WriteTinyBundle(dir_, dir);
    ASSERT_TRUE(probe.ok()) << probe;
    auto good = ReadNpyFloat(dir + "/item_vectors.npy");
    std::vector<float> vectors(good->data.size(), 0.5f);
    vectors[vectors.size() / 2] = bad;
    EXPECT_FALSE(WriteTinyBundle(dir_, dir_ + "/refused", vectors).ok()) << "the writer took " << bad;
    ASSERT_TRUE(WriteNpy(dir + "/item_vectors.npy", vectors, good->shape).ok());
    FolderManifest m;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(Read(dir + "/MANIFEST"), &m));
    std::vector<std::string> files;
    for (const auto& f : m.files()) files.push_back(f.name());
    m.clear_files();
    ASSERT_TRUE(SealFolder(dir, m, files).ok());
    auto loaded = Bundle::Load(dir);
    ASSERT_FALSE(loaded.ok()) << "item vectors holding " << bad << " were loaded";
    EXPECT_NE(loaded.status().message().find(dir + "/item_vectors.npy: non-finite"), std::string::npos) << loaded.status();
  }
}

// A bundle of 3 items (10, 20, 30) with a tag table; only item 10 has a tag. `keys` are the
// item ids with exported id rows: 10's row is chosen by hand, any other key gets its initial
// value, the row an id outside the bundle reads as.
absl::Status WriteTaggedBundle(const std::string& root, const std::string& dir, const std::vector<int64_t>& keys) {
  auto job = config::ParseJobConfig(absl::StrCat(R"(
      tables { name: "item_id" dim: 2 } tables { name: "item_tag" dim: 2 }
      data { dataset_dir: ")", root, R"(/data" max_seq_len: 4 session_len: 2 }
      model { diffusion_steps: 2 })"), "tagged.textproto");
  if (!job.ok()) return job.status();
  auto dims = config::ModelDimsOf(*job);
  if (!dims.ok()) return dims.status();
  auto model = model::Model::Create(job->model(), *dims);
  if (!model.ok()) return model.status();
  const int64_t e = (*model)->output_dim();
  std::vector<float> vectors(3 * static_cast<size_t>(e));
  for (size_t i = 0; i < vectors.size(); ++i) vectors[i] = static_cast<float>((i * 5) % 7) - 3.0f;
  std::vector<float> id_rows(2 * keys.size());
  const embedding::RowInitializer init(job->tables(0).initializer());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i] == 10) {
      id_rows[2 * i] = 0.1f;
      id_rows[2 * i + 1] = 0.2f;
    } else {
      init.Fill(keys[i], absl::MakeSpan(id_rows).subspan(2 * i, 2));
    }
  }
  const std::vector<int64_t> item_ids = {10, 20, 30}, tag_keys = {1};
  const std::vector<float> tag_rows = {0.5f, -0.5f};
  const data::DatasetManifest dataset = Dataset(4, 2);
  BundleContents c;
  c.job = &*job;
  c.dataset = &dataset;
  c.model = model->get();
  c.item_ids = item_ids;
  c.item_vectors = vectors;
  c.vector_dim = e;
  c.id_keys = keys;
  c.id_rows = id_rows;
  c.id_dim = 2;
  c.tag_keys = tag_keys;
  c.tag_rows = tag_rows;
  c.tag_dim = 2;
  c.item_tag_offsets = {0, 1, 1, 1};
  c.item_tags = {1};
  return WriteBundle(dir, c);
}

// k < 1, an empty history and an item outside the catalogue are InvalidArgument naming the
// field, for that query alone. Catalogue items without exported rows (or tags) read as their
// initial rows, exactly as if the bundle held those rows.
TEST_F(ServingTest, BundleRefusesBadQueriesAndReadsMissingRowsAsInitial) {
  const std::string dir = dir_ + "/bundle";
  ASSERT_TRUE(WriteTaggedBundle(dir_, dir, {10}).ok());
  auto bundle = Bundle::Load(dir);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  for (int k : {0, -1, std::numeric_limits<int>::min()}) {
    auto r = (*bundle)->TopK(Q({10}, k, 7).View());
    ASSERT_FALSE(r.ok()) << "k = " << k;
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
    EXPECT_NE(r.status().message().find("k"), std::string::npos) << r.status();
  }
  auto empty = (*bundle)->TopK(Q({}, 3, 7).View());
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("empty history"), std::string::npos) << empty.status();
  // One bad query among good ones fails alone.
  const ParsedQuery good = Q({10, 20}, 2, 7), unknown = Q({20, 99}, 2, 7);
  auto answers = (*bundle)->Search({good.View(), unknown.View(), good.View()});
  ASSERT_EQ(answers.size(), 3u);
  ASSERT_TRUE(answers[0].ok() && answers[2].ok());
  EXPECT_EQ(answers[0]->items, answers[2]->items);
  ASSERT_FALSE(answers[1].ok());
  EXPECT_EQ(answers[1].status().message(), "items[1] = 99: not in the model's catalogue");

  const ParsedQuery untagged = Q({20, 30}, 3, 7);  // catalogue items without tags or rows
  auto initial = (*bundle)->TopK(untagged.View());
  ASSERT_TRUE(initial.ok()) << initial.status();
  EXPECT_EQ(initial->items.size(), 3u);
  // The same query against a bundle that exports 20's and 30's initial rows: the same answer.
  const std::string with_rows = dir_ + "/with_rows";
  ASSERT_TRUE(WriteTaggedBundle(dir_, with_rows, {10, 20, 30}).ok());
  auto explicit_rows = Bundle::Load(with_rows);
  ASSERT_TRUE(explicit_rows.ok()) << explicit_rows.status();
  auto same = (*explicit_rows)->TopK(untagged.View());
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->items, initial->items);
  EXPECT_EQ(same->scores, initial->scores);
}

// A delta carries exactly the rows that changed; applied to its base it answers as the full
// bundle it was taken from; the base is left as it was; another base is refused.
TEST_F(ServingTest, DeltaAppliesToItsBaseOnly) {
  auto job = config::ParseJobConfig(absl::StrCat(R"(
      tables { name: "item_id" dim: 2 } tables { name: "item_tag" dim: 2 }
      data { dataset_dir: ")", dir_, R"(/data" max_seq_len: 4 session_len: 2 }
      model { diffusion_steps: 2 })"), "delta.textproto");
  ASSERT_TRUE(job.ok()) << job.status();
  auto model = model::Model::Create(job->model(), *config::ModelDimsOf(*job));
  ASSERT_TRUE(model.ok());
  const int64_t e = (*model)->output_dim();
  const std::vector<int64_t> item_ids = {10, 20, 30}, id_keys = {10, 20, 30}, tag_keys = {1};
  std::vector<float> vectors(3 * static_cast<size_t>(e));
  for (size_t i = 0; i < vectors.size(); ++i) vectors[i] = static_cast<float>((i * 5) % 7) - 3.0f;
  std::vector<float> id_rows = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f}, tag_rows = {0.5f, -0.5f};
  const data::DatasetManifest dataset = Dataset(4, 2);
  BundleContents c;
  c.job = &*job;
  c.dataset = &dataset;
  c.model = model->get();
  c.step = 10;
  c.item_ids = item_ids;
  c.item_vectors = vectors;
  c.vector_dim = e;
  c.id_keys = id_keys;
  c.id_rows = id_rows;
  c.id_dim = 2;
  c.tag_keys = tag_keys;
  c.tag_rows = tag_rows;
  c.tag_dim = 2;
  c.item_tag_offsets = {0, 1, 1, 1};
  c.item_tags = {1};
  ASSERT_TRUE(WriteBundle(dir_ + "/base", c).ok());
  // Training moves on: item 30's vector, item 20's row and a dense parameter change.
  vectors[2 * static_cast<size_t>(e)] += 1.0f;
  id_rows[2] = -0.9f;
  (*model)->DenseParameters()[0] += 0.5f;
  c.step = 20;
  ASSERT_TRUE(WriteBundle(dir_ + "/full", c).ok());
  auto stats = WriteBundleDelta(dir_ + "/delta", c, dir_ + "/base");
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->items_changed, 1);
  EXPECT_EQ(stats->items_total, 3);
  EXPECT_EQ(stats->id_rows_changed, 1);
  EXPECT_EQ(stats->tag_rows_changed, 0);
  EXPECT_EQ(ReadNpyInt64(dir_ + "/delta/item_rows.npy")->data, std::vector<int64_t>{2});

  auto base = Bundle::Load(dir_ + "/base");
  auto full = Bundle::Load(dir_ + "/full");
  ASSERT_TRUE(base.ok() && full.ok());
  const ParsedQuery q = Q({20, 10, 30}, 3, 5);
  auto before = (*base)->TopK(q.View());
  auto updated = (*base)->WithDelta(dir_ + "/delta");
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ((*updated)->step(), 20);
  EXPECT_EQ((*updated)->version(), (*base)->version());
  EXPECT_FALSE((*updated)->delta_version().empty());
  auto after = (*updated)->TopK(q.View());
  auto expected = (*full)->TopK(q.View());
  ASSERT_TRUE(before.ok() && after.ok() && expected.ok());
  EXPECT_EQ(after->items, expected->items);
  EXPECT_EQ(after->scores, expected->scores);
  EXPECT_NE(after->scores, before->scores);
  auto unchanged = (*base)->TopK(q.View());
  EXPECT_EQ(unchanged->scores, before->scores);  // the base bundle is left as it was
  // The delta names its base: the full bundle of step 20 is another base.
  auto wrong = (*full)->WithDelta(dir_ + "/delta");
  ASSERT_FALSE(wrong.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(wrong.status())) << wrong.status();
  EXPECT_NE(wrong.status().message().find("not of the bundle being served"), std::string::npos) << wrong.status();
  // A damaged delta is refused naming the file.
  std::ofstream(dir_ + "/delta/id_rows.npy", std::ios::app) << "x";
  auto damaged = (*base)->WithDelta(dir_ + "/delta");
  ASSERT_FALSE(damaged.ok());
  EXPECT_NE(damaged.status().message().find("id_rows.npy"), std::string::npos) << damaged.status();
}

// A catalogue of 2,000 items (ids 1..2000, no tags) with seeded random vectors, written as a
// bundle of step `step` with `serving` as the job's serving section.
absl::Status WriteLargeBundle(const std::string& root, const std::string& dir, const std::string& serving,
                              uint64_t seed, int64_t step, const std::vector<int64_t>& changed = {}) {
  auto job = config::ParseJobConfig(absl::StrCat(R"(
      tables { name: "item_id" dim: 4 }
      data { dataset_dir: ")", root, R"(/data" max_seq_len: 4 session_len: 2 }
      model { diffusion_steps: 2 item_tag_table: "" } serving { )", serving, " }"), "large.textproto");
  if (!job.ok()) return job.status();
  auto model = model::Model::Create(job->model(), *config::ModelDimsOf(*job));
  if (!model.ok()) return model.status();
  const int64_t e = (*model)->output_dim(), n = 2000;
  std::vector<int64_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 1);
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::normal_distribution<float> normal;
  std::vector<float> vectors(static_cast<size_t>(n * e));
  for (float& v : vectors) v = normal(rng);
  std::mt19937 other(99);
  for (int64_t row : changed) {
    for (int64_t j = 0; j < e; ++j) vectors[static_cast<size_t>(row * e + j)] = 3 * normal(other);
  }
  const std::vector<int64_t> id_keys = {1};
  const std::vector<float> id_rows = {0.1f, 0.2f, 0.3f, 0.4f};
  const data::DatasetManifest dataset = Dataset(4, 2);
  BundleContents c;
  c.job = &*job;
  c.dataset = &dataset;
  c.model = model->get();
  c.step = step;
  c.item_ids = ids;
  c.item_vectors = vectors;
  c.vector_dim = e;
  c.id_keys = id_keys;
  c.id_rows = id_rows;
  c.id_dim = 4;
  c.item_tag_offsets.assign(static_cast<size_t>(n + 1), 0);
  return WriteBundle(dir, c);
}

double Recall(const std::vector<int64_t>& found, const std::vector<int64_t>& truth) {
  int64_t hit = 0;
  for (int64_t id : truth) hit += std::count(found.begin(), found.end(), id);
  return static_cast<double>(hit) / static_cast<double>(truth.size());
}

// Above serving.exact_max_items the bundle searches its approximate index (IVF: rows replaced
// by a delta; HNSW: the delta ships a whole index), finding what exact search finds.
TEST_F(ServingTest, ApproximateIndexAnswersAndTakesDeltas) {
  for (const std::string kind : {"IVF", "HNSW"}) {
    SCOPED_TRACE(kind);
    const std::string approx = "exact_max_items: 100 index_kind: " + kind;
    const std::string d = dir_ + "/" + kind;
    ASSERT_TRUE(WriteLargeBundle(dir_, d + "/base", approx, 1, 10).ok());
    ASSERT_TRUE(WriteLargeBundle(dir_, d + "/exact", "", 1, 10).ok());
    auto base = Bundle::Load(d + "/base");
    auto exact = Bundle::Load(d + "/exact");
    ASSERT_TRUE(base.ok() && exact.ok()) << base.status() << exact.status();
    EXPECT_EQ((*base)->search_kind(), kind == "IVF" ? "ivf" : "hnsw");
    EXPECT_EQ((*exact)->search_kind(), "exact");
    std::vector<ParsedQuery> queries;
    for (int64_t i = 1; i <= 20; ++i) queries.push_back(Q({i, 2 * i, 3 * i}, 10, static_cast<uint64_t>(i)));
    auto check = [&](const Bundle& a, const Bundle& b, const char* what) {
      double recall = 0;
      for (const ParsedQuery& q : queries) {
        auto x = a.TopK(q.View());
        auto y = b.TopK(q.View());
        ASSERT_TRUE(x.ok() && y.ok()) << x.status() << y.status();
        ASSERT_EQ(x->items.size(), 10u);
        recall += Recall(x->items, y->items) / static_cast<double>(queries.size());
      }
      EXPECT_GE(recall, 0.95) << what;
    };
    check(**base, **exact, "approximate vs exact");
    // The next export: 50 items moved. The delta against the approximate base holds 50 rows.
    std::vector<int64_t> moved;
    for (int64_t r = 0; r < 2000; r += 40) moved.push_back(r);
    ASSERT_TRUE(WriteLargeBundle(dir_, d + "/full_exact", "", 1, 20, moved).ok());
    auto job = config::LoadJobConfig(d + "/base/job.textproto");
    auto model = model::Model::Create(job->model(), *config::ModelDimsOf(*job));
    auto vectors = ReadNpyFloat(d + "/full_exact/item_vectors.npy");
    auto ids = ReadNpyInt64(d + "/full_exact/item_ids.npy");
    const data::DatasetManifest dataset = Dataset(4, 2);
    const std::vector<int64_t> id_keys = {1};
    const std::vector<float> id_rows = {0.1f, 0.2f, 0.3f, 0.4f};
    BundleContents c;
    c.job = &*job;
    c.dataset = &dataset;
    c.model = model->get();
    c.step = 20;
    c.item_ids = ids->data;
    c.item_vectors = vectors->data;
    c.vector_dim = vectors->shape[1];
    c.id_keys = id_keys;
    c.id_rows = id_rows;
    c.id_dim = 4;
    c.item_tag_offsets.assign(2001, 0);
    auto stats = WriteBundleDelta(d + "/delta", c, d + "/base");
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->items_changed, 50);
    EXPECT_EQ(fs::exists(d + "/delta/item_index.faiss"), kind == "HNSW");
    auto updated = (*base)->WithDelta(d + "/delta");
    ASSERT_TRUE(updated.ok()) << updated.status();
    auto full = Bundle::Load(d + "/full_exact");
    ASSERT_TRUE(full.ok());
    check(**updated, **full, "approximate after the delta vs exact of the new vectors");
  }
}

TEST(ProtocolTest, BadRequestsAreNamed) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "request: not valid JSON"},
      {"[1, 2]", "request: not a JSON object"},
      {R"({"items": [1], "colour": 3})", "colour: unknown field"},
      {R"({"items": "1 2"})", "items: not an array of integers"},
      {R"({"items": [1, 2.5]})", "items[1]: not an integer"},
      {R"({"items": [1, 18446744073709551615]})", "items[1]: out of the int64 range"},
      {R"({"items": []})", "items: empty history"},
      {R"({"times": [1]})", "items: missing"},
      {R"({"items": [1], "k": 0})", "k: 0 is outside 1..10000"},
      {R"({"items": [1], "k": 10001})", "k: 10001 is outside 1..10000"},
      {R"({"items": [1], "seed": -1})", "seed: not a non-negative integer"},
      {R"({"items": [1], "user": "x"})", "user: not an integer"},
      {R"({"queries": []})", "queries: not a non-empty array"},
      {R"({"queries": [{"items": [1]}, {"items": [1], "x": 1}]})", "queries[1].x: unknown field"},
      {R"({"queries": [{"items": [1]}], "k": 3})", "queries: a request with \"queries\" has no other fields"},
      {R"({"update": 3})", "update: not a folder path"},
      {R"({"update": "/x", "items": [1]})", "update: a request with \"update\" has no other fields"},
      {R"({"info": false})", "info: not true"},
      {R"({"id": [[1]], "items": [1]})", "id: not a number, string, boolean or null"},
  };
  for (const auto& [line, message] : cases) {
    auto r = ParseRequest(line);
    ASSERT_FALSE(r.ok()) << line;
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << line;
    EXPECT_NE(r.status().message().find(message), std::string::npos) << line << " -> " << r.status();
  }
  std::string many = R"({"queries": [)";
  for (int i = 0; i <= kMaxQueriesPerRequest; ++i) absl::StrAppend(&many, i ? "," : "", R"({"items": [1]})");
  EXPECT_NE(ParseRequest(many + "]}").status().message().find("more than the limit of 1024"), std::string::npos);
  // The results a request asks for are bounded (a reply's memory): 11 queries of k = 10,000.
  std::string greedy = R"({"queries": [)";
  for (int i = 0; i < 11; ++i) absl::StrAppend(&greedy, i ? "," : "", R"({"items": [1], "k": 10000})");
  EXPECT_NE(ParseRequest(greedy + "]}").status().message().find("110000 results in all, more than the limit of 100000"),
            std::string::npos) << ParseRequest(greedy + "]}").status();
  // A deeply nested id is refused before it is echoed, and the error reply's id is null.
  const std::string deep = R"({"id":)" + std::string(100000, '[') + std::string(100000, ']') + R"(,"items":[1]})";
  EXPECT_EQ(RequestIdJson(deep), "null");
  EXPECT_FALSE(ParseRequest(deep).ok());
  auto ok = ParseRequest(R"({"id": "a-1", "user": 7, "items": [3, 4], "times": [10, 20], "time": 30, "k": 5, "seed": 9})");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->id_json, R"("a-1")");
  ASSERT_EQ(ok->queries.size(), 1u);
  const ParsedQuery& q = ok->queries[0];
  EXPECT_EQ(q.user, 7);
  EXPECT_EQ(q.items, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(q.times, (std::vector<int64_t>{10, 20}));
  EXPECT_EQ(*q.time, 30);
  EXPECT_EQ(q.k, 5);
  EXPECT_EQ(*q.seed, 9u);
  EXPECT_EQ(RequestIdJson(R"({"id": "r7", "items": )"), "null");  // unparsable: no id
  EXPECT_EQ(ErrorReply(R"("r7")", "bad"), R"({"error":"bad","id":"r7"})");
}

// "user_features" maps field names to value texts: numbers are their decimal text, null no value;
// anything else is refused naming the field.
TEST(ProtocolTest, ParsesUserFeatures) {
  auto ok = ParseRequest(R"({"items": [1], "user_features": {"gender": "M", "age": 25, "zip": null}})");
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->queries.size(), 1u);
  const std::vector<UserFeatureValue> want = {{"age", "25"}, {"gender", "M"}, {"zip", ""}};  // by name
  EXPECT_EQ(ok->queries[0].user_features, want);
  const Query view = ok->queries[0].View();
  ASSERT_EQ(view.user_features.size(), 3u);
  EXPECT_EQ(view.user_features[1].second, "M");
  auto batched = ParseRequest(R"({"queries": [{"items": [1]}, {"items": [2], "user_features": {"age": "18-24"}}]})");
  ASSERT_TRUE(batched.ok()) << batched.status();
  EXPECT_TRUE(batched->queries[0].user_features.empty());
  EXPECT_EQ(batched->queries[1].user_features, (std::vector<UserFeatureValue>{{"age", "18-24"}}));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"items": [1], "user_features": ["M"]})", "user_features: not an object of profile field names to values"},
      {R"({"items": [1], "user_features": {"gender": true}})", "user_features.gender: not a string or number"},
      {R"({"items": [1], "user_features": {"gender": {"x": 1}}})", "user_features.gender: not a string or number"},
      {R"({"items": [1], "user_features": {"": "M"}})", "user_features: an empty field name"},
      {R"({"queries": [{"items": [1], "user_features": {"a": [1]}}]})", "queries[0].user_features.a: not a string"},
  };
  for (const auto& [line, message] : cases) {
    auto r = ParseRequest(line);
    ASSERT_FALSE(r.ok()) << line;
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << line;
    EXPECT_NE(r.status().message().find(message), std::string::npos) << line << " -> " << r.status();
  }
}

// A model with profile fields (model.user_feature_table) over a data set with fields gender and
// age: the bundle holds the profile table's rows; a query's "user_features" become keys
// UserFeatureKey(field, value) in the data set's field order, a value the bundle does not hold
// reads the table's initial row, and e_u moves by exactly W_feat p. An unknown field name is an
// error for that query (and the server's reply); a delta carries changed profile rows.
TEST_F(ServingTest, BundleTurnsProfileValuesIntoKeys) {
  auto job = config::ParseJobConfig(absl::StrCat(R"(
      tables { name: "item_id" dim: 2 } tables { name: "profile" dim: 2 }
      data { dataset_dir: ")", dir_, R"(/data" max_seq_len: 4 session_len: 2 }
      model { kind: TWO_TOWER_MEAN item_tag_table: "" user_feature_table: "profile" })"), "profile.textproto");
  ASSERT_TRUE(job.ok()) << job.status();
  data::DatasetManifest dataset = Dataset(4, 2);
  dataset.add_user_feature_names("gender");
  dataset.add_user_feature_names("age");
  EXPECT_FALSE(config::ModelDimsOf(*job, Dataset(4, 2)).ok());  // a data set without fields
  auto dims = config::ModelDimsOf(*job, dataset);
  ASSERT_TRUE(dims.ok()) << dims.status();
  auto model = model::Model::Create(job->model(), *dims);
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t e = (*model)->output_dim();
  // E items with unit vectors: item j + 1's score is e_u[j].
  std::vector<int64_t> ids;
  std::vector<float> vectors(static_cast<size_t>(e * e), 0.0f);
  for (int64_t j = 0; j < e; ++j) {
    ids.push_back(j + 1);
    vectors[static_cast<size_t>(j * e + j)] = 1.0f;
  }
  const std::vector<int64_t> id_keys = {1};
  const std::vector<float> id_rows = {0.1f, 0.2f};
  const int64_t male = data::UserFeatureKey("gender", "M"), age = data::UserFeatureKey("age", "25");
  ASSERT_NE(male, 0);
  ASSERT_NE(male, age);
  const std::vector<int64_t> profile_keys = {male};
  std::vector<float> profile_rows = {0.75f, -1.25f};
  BundleContents c;
  c.job = &*job;
  c.dataset = &dataset;
  c.model = model->get();
  c.item_ids = ids;
  c.item_vectors = vectors;
  c.vector_dim = e;
  c.id_keys = id_keys;
  c.id_rows = id_rows;
  c.id_dim = 2;
  c.user_feature_keys = profile_keys;
  c.user_feature_rows = profile_rows;
  c.user_feature_dim = 2;
  c.item_tag_offsets.assign(static_cast<size_t>(e + 1), 0);
  ASSERT_TRUE(WriteBundle(dir_ + "/base", c).ok());
  const auto files = BundleFiles(*job);
  EXPECT_NE(std::find(files.begin(), files.end(), "user_feature_rows.npy"), files.end());
  auto bundle = Bundle::Load(dir_ + "/base");
  ASSERT_TRUE(bundle.ok()) << bundle.status();

  // e_u of a query, from the scores of the unit items.
  auto user_vector = [&](const Bundle& b, const std::vector<UserFeatureValue>& features) {
    ParsedQuery q = Q({1, 2}, static_cast<int>(e), 7);
    q.user_features = features;
    auto r = b.TopK(q.View());
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<double> u(static_cast<size_t>(e), 0.0);
    for (size_t i = 0; r.ok() && i < r->items.size(); ++i) u[static_cast<size_t>(r->items[i] - 1)] = r->scores[i];
    return u;
  };
  const std::vector<double> none = user_vector(**bundle, {});
  const std::vector<double> both = user_vector(**bundle, {{"age", "25"}, {"gender", "M"}});
  // p = [row of M (exported), row of age 25 (not exported: its initial row)].
  std::vector<float> p = {0.75f, -1.25f, 0.0f, 0.0f};
  embedding::RowInitializer(job->tables(1).initializer()).Fill(age, absl::MakeSpan(p).subspan(2, 2));
  const at::Tensor w = (*model)->ParameterTensor((*model)->Parameters().size() - 1).contiguous();
  ASSERT_EQ(w.size(1), 4);
  double total = 0;
  for (int64_t j = 0; j < e; ++j) {
    double moved = 0;
    for (int64_t k = 0; k < 4; ++k) moved += w[j][k].item<double>() * p[static_cast<size_t>(k)];
    EXPECT_NEAR(both[static_cast<size_t>(j)] - none[static_cast<size_t>(j)], moved, 1e-5) << "dim " << j;
    total += std::abs(moved);
  }
  EXPECT_GT(total, 1e-3);
  // A number is its decimal text; the order of the fields in the request does not matter.
  const std::vector<double> number = user_vector(**bundle, {{"gender", "M"}, {"age", "25"}});
  for (int64_t j = 0; j < e; ++j) EXPECT_NEAR(number[static_cast<size_t>(j)], both[static_cast<size_t>(j)], 1e-6);
  auto parsed = ParseRequest(R"({"items": [1, 2], "times": [100, 200], "k": 4, "seed": 7,
                                 "user_features": {"age": 25, "gender": "M"}})");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto from_json = (*bundle)->TopK(parsed->queries[0].View());
  ASSERT_TRUE(from_json.ok()) << from_json.status();
  for (size_t i = 0; i < from_json->items.size(); ++i) {
    EXPECT_NEAR(from_json->scores[i], both[static_cast<size_t>(from_json->items[i] - 1)], 1e-6);
  }
  // An unknown field: an error for its query alone.
  ParsedQuery good = Q({1}, 2, 7), bad = Q({1}, 2, 7);
  bad.user_features = {{"zip", "10115"}};
  auto answers = (*bundle)->Search({good.View(), bad.View()});
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_TRUE(answers[0].ok()) << answers[0].status();
  ASSERT_FALSE(answers[1].ok());
  EXPECT_EQ(answers[1].status().message(),
            "user_features.zip: unknown profile field (this model's data set has: gender, age)");

  // A delta carries the changed profile row; applied, it answers as the full bundle.
  profile_rows[0] = -2.0f;
  ASSERT_TRUE(WriteBundle(dir_ + "/full", c).ok());
  auto stats = WriteBundleDelta(dir_ + "/delta", c, dir_ + "/base");
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->user_feature_rows_changed, 1);
  EXPECT_EQ(stats->id_rows_changed, 0);
  auto updated = (*bundle)->WithDelta(dir_ + "/delta");
  auto full = Bundle::Load(dir_ + "/full");
  ASSERT_TRUE(updated.ok() && full.ok()) << updated.status() << full.status();
  EXPECT_EQ(user_vector(**updated, {{"gender", "M"}}), user_vector(**full, {{"gender", "M"}}));
  EXPECT_NE(user_vector(**updated, {{"gender", "M"}}), user_vector(**bundle, {{"gender", "M"}}));

  // Through the server: the unknown field's message is the reply's error.
  Server server(std::move(*bundle), ServerOptions());
  const std::string reply = server.Handle(R"({"id": 1, "items": [1], "times": [5], "user_features": {"zip": "1"}})");
  EXPECT_NE(reply.find("user_features.zip: unknown profile field (this model's data set has: gender, age)"),
            std::string::npos) << reply;
}

// Live samples are cut as prepare + the reader cut a user's sequence: the data set's window,
// the TIME_GAP session, the history window of n, time lags from the request time.
TEST(LiveSampleTest, CutsSessionsAndLagsAsTheReader) {
  auto catalogue = data::Catalogue::FromItems({1, 2, 3, 4, 5, 6}, {{7}, {}, {7, 8}, {}, {}, {}}, {});
  data::DatasetManifest m = Dataset(5, 3);
  m.set_session_mode("TIME_GAP");
  m.set_session_gap_s(100);
  m.set_max_tags_per_item(2);
  const data::LiveSampleBuilder live(m, catalogue.get(), 4, 1);  // n = 4, T = 1
  data::SampleBatch batch;
  live.Reset(2, &batch);
  // 6 behaviours; gaps 10, 10, 500, 10, 20: the current session is the last 3 (times 600..630).
  const std::vector<int64_t> items = {1, 2, 3, 4, 5, 6}, times = {0, 10, 20, 520, 530, 550};
  data::LiveRequest r;
  r.user = 42;
  r.items = items;
  r.times = times;
  r.time = 600;
  ASSERT_TRUE(live.Fill(r, 1, &batch).ok());
  EXPECT_EQ(batch.user_id[1], 42);
  EXPECT_EQ(batch.history_len[1], 4);  // n = 4 of the window of 5
  EXPECT_EQ(std::vector<int64_t>(batch.history_id.begin() + 4, batch.history_id.end()), (std::vector<int64_t>{3, 4, 5, 6}));
  EXPECT_EQ(batch.session_begin[1], 1);  // items 4, 5, 6 (times 520, 530, 550): after the gap of 500
  EXPECT_EQ(std::vector<float>(batch.time_lag.begin() + 4, batch.time_lag.end()), (std::vector<float>{580, 80, 70, 50}));
  EXPECT_EQ(batch.history_tag_count[4], 1);  // item 3 has 2 tags, capped at T = 1
  EXPECT_EQ(batch.history_tag[4], 7);
  EXPECT_EQ(batch.target_time[1], 600);
  // Errors name the field and position.
  const std::vector<int64_t> backwards = {0, 10, 5, 520, 530, 550};
  r.times = backwards;
  EXPECT_EQ(live.Fill(r, 0, &batch).message(), "times[2] = 5 is before times[1] = 10 (behaviours are oldest first, in time order)");
  r.times = times;
  r.time = 549;
  EXPECT_EQ(live.Fill(r, 0, &batch).message(), "time 549 is before the newest behaviour's time 550");
  r.time.reset();
  const std::vector<int64_t> short_times = {1};
  r.times = short_times;
  EXPECT_EQ(live.Fill(r, 0, &batch).message(), "times: 1 values for 6 items");
  r.times = {};
  EXPECT_NE(live.Fill(r, 0, &batch).message().find("times: missing"), std::string::npos);
  const std::vector<int64_t> unknown = {1, 77, 3, 4, 5, 6};
  r.items = unknown;
  r.times = times;
  EXPECT_EQ(live.Fill(r, 0, &batch).message(), "items[1] = 77: not in the model's catalogue");
  // Without timestamps, time is the position: lags n - j, and times are refused.
  m.set_has_timestamps(false);
  m.set_session_mode("LAST_K");
  const data::LiveSampleBuilder positions(m, catalogue.get(), 4, 1);
  r.items = items;
  r.times = {};
  ASSERT_TRUE(positions.Fill(r, 0, &batch).ok());
  EXPECT_EQ(std::vector<float>(batch.time_lag.begin(), batch.time_lag.begin() + 4), (std::vector<float>{4, 3, 2, 1}));
  EXPECT_EQ(batch.session_begin[0], 1);  // LAST_K with k = 3
  r.times = times;
  EXPECT_NE(positions.Fill(r, 0, &batch).message().find("has no timestamps"), std::string::npos);
}

// The Server batches concurrent callers' queries, answers each with its own result or error, and
// swaps in an update without failing a request.
TEST_F(ServingTest, ServerAnswersConcurrentCallersAndUpdates) {
  ASSERT_TRUE(WriteTaggedBundle(dir_, dir_ + "/a", {10}).ok());
  ASSERT_TRUE(WriteTaggedBundle(dir_, dir_ + "/b", {10, 20}).ok());
  auto bundle = Bundle::Load(dir_ + "/a");
  ASSERT_TRUE(bundle.ok());
  Server server(std::move(*bundle), ServerOptions());
  const std::string good = R"({"id": 1, "items": [10, 20], "times": [1, 2], "k": 2, "seed": 3})";
  const std::string reply = server.Handle(good);
  EXPECT_EQ(reply.rfind(R"({"id":1,"items":[)", 0), 0u) << reply;
  EXPECT_NE(server.Handle("nonsense").find(R"("error":"request: not valid JSON")"), std::string::npos);
  const std::string mixed = server.Handle(R"({"id": 2, "queries": [{"items": [10], "times": [1]}, {"items": [5], "times": [1]}]})");
  EXPECT_NE(mixed.find(R"("results":[{"items":)"), std::string::npos) << mixed;
  EXPECT_NE(mixed.find(R"({"error":"items[0] = 5: not in the model's catalogue"})"), std::string::npos) << mixed;
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        if (server.Handle(good).find(R"("items":[)") == std::string::npos) ++failures;
      }
    });
  }
  const std::string update = server.Handle(absl::StrCat(R"({"id": "u", "update": ")", dir_, R"(/b"})"));
  for (auto& t : clients) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_NE(update.find(R"("updates":1)"), std::string::npos) << update;
  EXPECT_EQ(server.stats().queries, 1 + 2 + 100);
  EXPECT_NE(server.Handle(R"({"update": "/nonexistent"})").find("error"), std::string::npos);
  ServerOptions no_updates;
  no_updates.allow_updates = false;
  Server closed(*Bundle::Load(dir_ + "/a"), no_updates);
  EXPECT_NE(closed.Handle(absl::StrCat(R"({"update": ")", dir_, R"(/b"})")).find("updates off"), std::string::npos);
}

}  // namespace
}  // namespace t2d::serving
