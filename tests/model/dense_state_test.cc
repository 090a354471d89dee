#include "model/dense_state.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/checksum.h"
#include "common/file_util.h"
#include "gtest/gtest.h"

namespace t2d::model {
namespace {

using config::ModelConfig;

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("t2d_model_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

std::unique_ptr<Model> Make(ModelConfig::Kind kind, uint64_t seed = 1) {
  ModelConfig c;
  c.set_kind(kind);
  c.set_init_seed(seed);
  ModelDims d;
  d.id_dim = 2;
  d.tag_dim = 2;
  d.session_len = 3;
  auto m = Model::Create(c, d);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(m).value();
}

TEST(DenseStateTest, RoundTripWithOptimizer) {
  auto a = Make(ModelConfig::T2DIFF, 1);
  auto b = Make(ModelConfig::T2DIFF, 2);
  DenseAdam opt_a(a->DenseParameters().size(), {});
  std::vector<float> grads(opt_a.size(), 0.5f);
  opt_a.Step(a->DenseParameters(), grads);
  opt_a.Step(a->DenseParameters(), grads);
  const std::string path = TempPath("roundtrip");
  ASSERT_TRUE(SaveDenseState(path, *a, &opt_a).ok());
  DenseAdam opt_b(b->DenseParameters().size(), {});
  ASSERT_TRUE(LoadDenseState(path, b.get(), &opt_b).ok());
  const auto pa = a->DenseParameters(), pb = b->DenseParameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) ASSERT_EQ(pa[i], pb[i]);
  EXPECT_EQ(opt_b.step(), 2);
  EXPECT_EQ(opt_b.first_moment(), opt_a.first_moment());
  EXPECT_EQ(opt_b.second_moment(), opt_a.second_moment());
  // Parameters only, loaded without optimizer.
  auto c = Make(ModelConfig::T2DIFF, 3);
  ASSERT_TRUE(LoadDenseState(path, c.get(), nullptr).ok());
  EXPECT_EQ(c->DenseParameters()[5], pa[5]);
  std::remove(path.c_str());
}

TEST(DenseStateTest, ClearErrors) {
  auto a = Make(ModelConfig::T2DIFF);
  const std::string path = TempPath("errors");
  ASSERT_TRUE(SaveDenseState(path, *a, nullptr).ok());
  // Missing optimizer state.
  DenseAdam opt(a->DenseParameters().size(), {});
  absl::Status s = LoadDenseState(path, a.get(), &opt);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("optimizer"), std::string::npos) << s;
  // Another model kind.
  auto other = Make(ModelConfig::SASREC);
  s = LoadDenseState(path, other.get(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("sasrec"), std::string::npos) << s;
  // Same parameter names, other shape.
  ModelConfig wide;
  wide.set_ffn_hidden(32);
  ModelDims d;
  d.id_dim = 2;
  d.tag_dim = 2;
  d.session_len = 3;
  auto w = Model::Create(wide, d);
  ASSERT_TRUE(w.ok());
  s = LoadDenseState(path, w->get(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("shape"), std::string::npos) << s;
  // A model with fewer parameters than the file.
  ModelConfig concat;
  concat.set_user_vector(ModelConfig::CONCAT);
  auto cm = Model::Create(concat, d);
  ASSERT_TRUE(cm.ok());
  s = LoadDenseState(path, cm->get(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("user.ffn1"), std::string::npos) << s;

  auto bytes = ReadFileToString(path);
  ASSERT_TRUE(bytes.ok());
  // Flipped byte -> checksum.
  std::string corrupt = *bytes;
  corrupt[corrupt.size() / 2] ^= 0x40;
  ASSERT_TRUE(WriteFileAtomic(path, corrupt).ok());
  s = LoadDenseState(path, a.get(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("checksum"), std::string::npos) << s;
  EXPECT_NE(s.message().find(path), std::string::npos) << s;
  // Truncated.
  ASSERT_TRUE(WriteFileAtomic(path, bytes->substr(0, bytes->size() - 9)).ok());
  EXPECT_EQ(LoadDenseState(path, a.get(), nullptr).code(), absl::StatusCode::kDataLoss);
  // Not a dense state file.
  ASSERT_TRUE(WriteFileAtomic(path, "hello world, not a model").ok());
  s = LoadDenseState(path, a.get(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("magic"), std::string::npos) << s;
  std::remove(path.c_str());
  EXPECT_EQ(LoadDenseState(path, a.get(), nullptr).code(), absl::StatusCode::kNotFound);
  // A valid checksum over a bad body (wrong version) is still rejected.
  std::vector<DenseArray> arrays = {{"x", {2}, false, {1.f, 2.f}, {}}};
  std::string enc = EncodeDenseState(arrays);
  auto dec = DecodeDenseState(enc, "mem");
  ASSERT_TRUE(dec.ok());
  EXPECT_EQ((*dec)[0].f32, std::vector<float>({1.f, 2.f}));
  enc[8] = 9;  // version
  enc.resize(enc.size() - 4);
  const uint32_t crc = Crc32(enc.data(), enc.size());
  enc.append(reinterpret_cast<const char*>(&crc), 4);
  dec = DecodeDenseState(enc, "mem");
  ASSERT_FALSE(dec.ok());
  EXPECT_NE(dec.status().message().find("version"), std::string::npos);
}

TEST(DenseStateTest, AdamMatchesHandComputation) {
  DenseAdamOptions o;
  o.learning_rate = 0.1f;
  DenseAdam adam(2, o);
  std::vector<float> p = {1.f, -1.f}, g = {0.5f, -2.f};
  adam.Step(absl::MakeSpan(p), g);
  // Step 1: m_hat = g, v_hat = g^2, update = lr * g / (|g| + eps) = lr * sign(g).
  EXPECT_NEAR(p[0], 0.9f, 1e-6);
  EXPECT_NEAR(p[1], -0.9f, 1e-6);
  o.clip_norm = 1.f;
  DenseAdam clipped(2, o);
  std::vector<float> q = {0.f, 0.f};
  const double norm = clipped.Step(absl::MakeSpan(q), {3.f, 4.f});
  EXPECT_NEAR(norm, 5.0, 1e-9);
  EXPECT_NEAR(clipped.first_moment()[0], 0.1f * 0.6f, 1e-7);  // (1 - beta1) * 3 / 5
}


}  // namespace
}  // namespace t2d::model
