// serving/: .npy files (exact bytes, round trip, damage), and a bundle written by WriteBundle
// and read back by Bundle (top-k equal to scoring by hand, errors naming the file).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "configs/config_loader.h"
#include "configs/job_options.h"
#include "embedding/initializer.h"
#include "model/model.h"
#include "serving/bundle.h"
#include "serving/bundle_writer.h"
#include "serving/npy.h"

namespace t2d::serving {
namespace {

namespace fs = std::filesystem;

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
  BundleContents c;
  c.job = &*job;
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
  auto r = (*bundle)->TopK({10, 20, 99}, 3, 7);  // 99: unknown, reads its initial row
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->items.size(), 3u);
  // The scores are the item vectors' dot products with one user vector: recover it from the
  // returned scores' consistency (descending, and each equal to a catalogue dot product).
  EXPECT_TRUE(std::is_sorted(r->scores.rbegin(), r->scores.rend()));
  auto again = (*bundle)->TopK({10, 20, 99}, 3, 7);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->items, r->items);  // same seed, same answer
  EXPECT_EQ(again->scores, r->scores);
  auto all = (*bundle)->TopK({10}, 50, 7);  // k beyond the catalogue: all of it
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
  BundleContents c;
  c.job = &*job;
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

TEST_F(ServingTest, BundleWithNonFiniteItemVectorsIsRefused) {
  const std::string dir = dir_ + "/bundle";
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto probe = WriteTinyBundle(dir_, dir);
    ASSERT_TRUE(probe.ok()) << probe;
    std::vector<float> vectors(static_cast<size_t>(ReadNpyFloat(dir + "/item_vectors.npy")->data.size()), 0.5f);
    vectors[vectors.size() / 2] = bad;
    ASSERT_TRUE(WriteTinyBundle(dir_, dir, vectors).ok());
    auto loaded = Bundle::Load(dir);
    ASSERT_FALSE(loaded.ok()) << "item vectors holding " << bad << " were loaded";
    EXPECT_NE(loaded.status().message().find(dir + "/item_vectors.npy"), std::string::npos) << loaded.status();
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
  BundleContents c;
  c.job = &*job;
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

// k < 1 and an empty history are InvalidArgument (k < 1 used to abort in libtorch). A history
// without any tag (unknown ids, or known items without tags) used to fail with a tensor shape
// error; unknown ids read as their initial rows, exactly as if the bundle held those rows.
TEST_F(ServingTest, BundleTopKRefusesBadRequestsAndReadsUnknownIds) {
  const std::string dir = dir_ + "/bundle";
  ASSERT_TRUE(WriteTaggedBundle(dir_, dir, {10}).ok());
  auto bundle = Bundle::Load(dir);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  for (int k : {0, -1, std::numeric_limits<int>::min()}) {
    auto r = (*bundle)->TopK({10}, k, 7);
    ASSERT_FALSE(r.ok()) << "k = " << k;
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
    EXPECT_NE(r.status().message().find("k"), std::string::npos) << r.status();
  }
  auto empty = (*bundle)->TopK({}, 3, 7);
  ASSERT_FALSE(empty.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(empty.status())) << empty.status();
  EXPECT_NE(empty.status().message().find("empty history"), std::string::npos) << empty.status();

  auto untagged = (*bundle)->TopK({20, 30}, 3, 7);  // catalogue items without tags
  ASSERT_TRUE(untagged.ok()) << untagged.status();
  EXPECT_EQ(untagged->items.size(), 3u);
  auto unknown = (*bundle)->TopK({99, 98}, 2, 7);
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  ASSERT_EQ(unknown->items.size(), 2u);
  // The same request against a bundle that exports 98's and 99's initial rows: the same answer.
  const std::string with_rows = dir_ + "/with_rows";
  ASSERT_TRUE(WriteTaggedBundle(dir_, with_rows, {10, 98, 99}).ok());
  auto explicit_rows = Bundle::Load(with_rows);
  ASSERT_TRUE(explicit_rows.ok()) << explicit_rows.status();
  auto same = (*explicit_rows)->TopK({99, 98}, 2, 7);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->items, unknown->items);
  EXPECT_EQ(same->scores, unknown->scores);
}

}  // namespace
}  // namespace t2d::serving
