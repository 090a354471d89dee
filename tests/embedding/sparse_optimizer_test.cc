// Optimizer arithmetic against values computed by hand (see the comments) for 2-3 steps.
#include <gtest/gtest.h>

#include <vector>

#include "embedding/embedding_table.h"
#include "tests/embedding/test_tables.h"

namespace t2d::embedding {
namespace {

using config::SparseOptimizerConfig;
using testing::Spec;

std::vector<float> Row(EmbeddingTable& t, int64_t id) {
  std::vector<float> out(static_cast<size_t>(t.dim()));
  EXPECT_TRUE(t.Lookup({id}, absl::MakeSpan(out)).ok());
  return out;
}

void Step(EmbeddingTable& t, int64_t id, std::vector<float> g) {
  ASSERT_TRUE(t.ApplyGradients({id}, g).ok());
}

std::unique_ptr<EmbeddingTable> Make(SparseOptimizerConfig::Kind kind) {
  auto spec = Spec("t", 2, kind, 0.1f);
  spec.mutable_optimizer()->set_epsilon(1e-8f);
  return *EmbeddingTable::Create(spec);
}

TEST(SparseOptimizer, Sgd) {
  auto t = Make(SparseOptimizerConfig::SGD);
  Step(*t, 7, {1, -2});  // w = 0 - 0.1 * g
  EXPECT_FLOAT_EQ(Row(*t, 7)[0], -0.1f);
  EXPECT_FLOAT_EQ(Row(*t, 7)[1], 0.2f);
  Step(*t, 7, {0.5f, 0.5f});
  EXPECT_FLOAT_EQ(Row(*t, 7)[0], -0.15f);
  EXPECT_FLOAT_EQ(Row(*t, 7)[1], 0.15f);
  Step(*t, 7, {-1, 0});
  EXPECT_FLOAT_EQ(Row(*t, 7)[0], -0.05f);
  EXPECT_FLOAT_EQ(Row(*t, 7)[1], 0.15f);
}

TEST(SparseOptimizer, Adagrad) {
  auto t = Make(SparseOptimizerConfig::ADAGRAD);
  Step(*t, 1, {1, -2});  // acc = [1, 4]; w = -0.1 * [1/1, -2/2] = [-0.1, 0.1]
  EXPECT_NEAR(Row(*t, 1)[0], -0.1, 1e-6);
  EXPECT_NEAR(Row(*t, 1)[1], 0.1, 1e-6);
  Step(*t, 1, {1, 2});  // acc = [2, 8]; w -= 0.1 * [1/sqrt(2), 2/sqrt(8)]
  EXPECT_NEAR(Row(*t, 1)[0], -0.1707107, 1e-6);
  EXPECT_NEAR(Row(*t, 1)[1], 0.0292893, 1e-6);
  Step(*t, 1, {0, -1});  // acc = [2, 9]; w -= 0.1 * [0, -1/3]
  EXPECT_NEAR(Row(*t, 1)[0], -0.1707107, 1e-6);
  EXPECT_NEAR(Row(*t, 1)[1], 0.0626227, 1e-6);
}

TEST(SparseOptimizer, AdagradInitialAccumulator) {
  auto spec = Spec("t", 1, SparseOptimizerConfig::ADAGRAD, 0.1f);
  spec.mutable_optimizer()->set_initial_accumulator(3.0f);
  spec.mutable_optimizer()->set_epsilon(0.0f);
  auto t = *EmbeddingTable::Create(spec);
  Step(*t, 1, {1});  // acc = 3 + 1 = 4; w = -0.1 * 1 / 2
  EXPECT_NEAR(Row(*t, 1)[0], -0.05, 1e-7);
}

TEST(SparseOptimizer, RowwiseAdagrad) {
  auto t = Make(SparseOptimizerConfig::ROWWISE_ADAGRAD);
  Step(*t, 3, {1, -2});  // acc = (1 + 4) / 2 = 2.5; w = -0.1 / sqrt(2.5) * g
  EXPECT_NEAR(Row(*t, 3)[0], -0.0632456, 1e-6);
  EXPECT_NEAR(Row(*t, 3)[1], 0.1264911, 1e-6);
  Step(*t, 3, {3, 1});  // acc = 2.5 + 5 = 7.5; w -= 0.1 / sqrt(7.5) * g
  EXPECT_NEAR(Row(*t, 3)[0], -0.1727901, 1e-6);
  EXPECT_NEAR(Row(*t, 3)[1], 0.0899763, 1e-6);
}

TEST(SparseOptimizer, Adam) {
  auto t = Make(SparseOptimizerConfig::ADAM);
  // t=1: m = 0.1 g, v = 0.001 g^2, bias-corrected m/sqrt(v) = sign(g): w = -0.1 * sign(g)
  Step(*t, 5, {1, -2});
  EXPECT_NEAR(Row(*t, 5)[0], -0.1, 1e-6);
  EXPECT_NEAR(Row(*t, 5)[1], 0.1, 1e-6);
  // t=2: m = [0.19, -0.18], v = [0.001999, 0.003996], bc1 = 0.19, bc2 = 0.001999
  Step(*t, 5, {1, 0});
  EXPECT_NEAR(Row(*t, 5)[0], -0.2, 1e-6);
  EXPECT_NEAR(Row(*t, 5)[1], 0.1670058, 1e-6);
  Step(*t, 5, {0.5f, 0.5f});
  EXPECT_NEAR(Row(*t, 5)[0], -0.2941813, 1e-5);
  EXPECT_NEAR(Row(*t, 5)[1], 0.2017440, 1e-5);
}

TEST(SparseOptimizer, AdamStepCountIsPerRow) {
  auto t = Make(SparseOptimizerConfig::ADAM);
  Step(*t, 1, {1, -2});
  Step(*t, 2, {9, 9});  // another row's update must not advance row 1's bias correction
  Step(*t, 1, {1, 0});  // row 1's second update: t = 2, same as in the Adam test above
  EXPECT_NEAR(Row(*t, 1)[0], -0.2, 1e-6);
  EXPECT_NEAR(Row(*t, 1)[1], 0.1670058, 1e-6);
}

TEST(SparseOptimizer, RepeatedIdsAreSummedBeforeOneUpdate) {
  auto t = Make(SparseOptimizerConfig::ADAGRAD);
  // Two occurrences of id 4 sum to [1, -2]: one Adagrad step, as in the Adagrad test.
  ASSERT_TRUE(t->ApplyGradients({4, 9, 4}, {0.25f, -1.5f, 1, 1, 0.75f, -0.5f}).ok());
  EXPECT_NEAR(Row(*t, 4)[0], -0.1, 1e-6);
  EXPECT_NEAR(Row(*t, 4)[1], 0.1, 1e-6);
  EXPECT_NEAR(Row(*t, 9)[0], -0.1, 1e-6);
  EXPECT_EQ(t->step(), 1);
  EXPECT_EQ(t->size(), 2);
}

}  // namespace
}  // namespace t2d::embedding
