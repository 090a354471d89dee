#include "model/schedule.h"

#include <cmath>

#include "gtest/gtest.h"

namespace t2d::model {
namespace {

using config::ModelConfig;

void ExpectRel(double actual, double expected, double rel) {
  EXPECT_LE(std::fabs(actual - expected), rel * std::fabs(expected)) << actual << " vs " << expected;
}

TEST(ScheduleTest, ExponentialMatchesCheckValues) {
  auto s = NoiseSchedule::Create(ModelConfig::EXPONENTIAL, 50, 0.01, 4.5);
  ASSERT_TRUE(s.ok()) << s.status();
  // Exact values (double precision, computed independently): the spec's check table prints
  // them rounded (0.01094, 0.84271, 0.55001, 0.00974, 1.77e-7), which agrees to the printed
  // digits but not to 1e-4 relative for beta_1, alpha_bar_40 and alpha_bar_50.
  ExpectRel(s->beta(1), 0.010941742837052104, 1e-4);
  ExpectRel(s->alpha_bar(10), 0.8427051433443917, 1e-4);
  ExpectRel(s->alpha_bar(20), 0.5500060963527351, 1e-4);
  ExpectRel(s->alpha_bar(40), 0.00974377418089905, 1e-4);
  ExpectRel(s->alpha_bar(50), 1.768530797500272e-07, 1e-4);
  // The spec's rounded table, to half a unit of its last printed digit.
  EXPECT_NEAR(s->beta(1), 0.01094, 0.5e-5);
  EXPECT_NEAR(s->alpha_bar(10), 0.84271, 0.5e-5);
  EXPECT_NEAR(s->alpha_bar(20), 0.55001, 0.5e-5);
  EXPECT_NEAR(s->alpha_bar(40), 0.00974, 0.5e-5);
  EXPECT_NEAR(s->alpha_bar(50), 1.77e-7, 0.5e-9);
  EXPECT_EQ(s->alpha_bar(0), 1.0);
  EXPECT_EQ(s->steps(), 50);
}

TEST(ScheduleTest, LinearAndLogShareEndPoints) {
  auto lin = NoiseSchedule::Create(ModelConfig::LINEAR, 50, 0.01, 4.5);
  auto log = NoiseSchedule::Create(ModelConfig::LOG, 50, 0.01, 4.5);
  ASSERT_TRUE(lin.ok() && log.ok());
  const double first = 0.01 * std::exp(4.5 / 50), last = 0.01 * std::exp(4.5);
  ExpectRel(lin->beta(1), first, 1e-12);
  ExpectRel(lin->beta(50), last, 1e-12);
  ExpectRel(log->beta(1), first, 1e-12);
  ExpectRel(log->beta(50), last, 1e-12);
  ExpectRel(lin->beta(25), 0.44648275679697014, 1e-9);
  ExpectRel(log->beta(25), 0.7426142207853224, 1e-9);
}

TEST(ScheduleTest, RejectsBetaOutsideUnitInterval) {
  auto s = NoiseSchedule::Create(ModelConfig::EXPONENTIAL, 50, 0.02, 4.5);  // 0.02 e^4.5 = 1.8
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("schedule_a"), std::string::npos) << s.status();
  EXPECT_FALSE(NoiseSchedule::Create(ModelConfig::EXPONENTIAL, 0, 0.01, 4.5).ok());
}

TEST(ScheduleTest, PosteriorCoefficientsByHand) {
  auto s = NoiseSchedule::Create(ModelConfig::EXPONENTIAL, 50, 0.01, 4.5);
  ASSERT_TRUE(s.ok());
  // Step r = 2 by hand: beta_1 = 0.01 e^0.09, beta_2 = 0.01 e^0.18,
  // ab_1 = 1 - beta_1 = 0.98905826, ab_2 = ab_1 (1 - beta_2) = 0.97721708.
  const double b1 = 0.01 * std::exp(0.09), b2 = 0.01 * std::exp(0.18);
  const double ab1 = 1 - b1, ab2 = ab1 * (1 - b2);
  const double c0 = std::sqrt(ab1) * b2 / (1 - ab2);
  const double c1 = std::sqrt(1 - b2) * (1 - ab1) / (1 - ab2);
  const double bt = b2 * (1 - ab1) / (1 - ab2);
  // Literal values from a separate computation.
  ExpectRel(c0, 0.5226061998827097, 1e-12);
  ExpectRel(c1, 0.47737723619522127, 1e-12);

  const auto paper = s->ReverseSteps(0, ModelConfig::PAPER);
  ASSERT_EQ(paper.size(), 50u);
  EXPECT_EQ(paper.front().step, 50);
  const ReverseStep& p2 = paper[48];
  EXPECT_EQ(p2.step, 2);
  EXPECT_EQ(p2.prev, 1);
  ExpectRel(p2.c0, c0, 1e-9);
  ExpectRel(p2.c1, c1, 1e-9);
  ExpectRel(p2.sigma, std::sqrt(bt), 1e-9);
  ExpectRel(p2.sigma, 0.07582720746401797, 1e-9);
  EXPECT_EQ(paper.back().step, 1);
  EXPECT_EQ(paper.back().prev, 0);
  EXPECT_EQ(paper.back().c0, 1.0);
  EXPECT_EQ(paper.back().c1, 0.0);

  const auto authors = s->ReverseSteps(0, ModelConfig::AUTHORS);
  const ReverseStep& a2 = authors[48];
  ExpectRel(a2.c0, c0, 1e-9);
  ExpectRel(a2.c1, std::sqrt(ab2) * (1 - ab1) / (1 - ab2), 1e-9);
  ExpectRel(a2.c1, 0.4747583833103713, 1e-9);
  ExpectRel(a2.sigma, bt, 1e-9);
}

TEST(ScheduleTest, ShortenedReverseProcess) {
  auto s = NoiseSchedule::Create(ModelConfig::EXPONENTIAL, 50, 0.01, 4.5);
  ASSERT_TRUE(s.ok());
  const auto plan = s->ReverseSteps(5, ModelConfig::PAPER);
  ASSERT_EQ(plan.size(), 5u);
  EXPECT_EQ(plan[0].step, 50);
  EXPECT_EQ(plan[4].step, 1);
  for (size_t i = 0; i + 1 < plan.size(); ++i) EXPECT_EQ(plan[i].prev, plan[i + 1].step);
  // Multi-step posterior from t to s: alpha_eff = ab_t / ab_s.
  const ReverseStep& st = plan[1];
  const double abt = s->alpha_bar(st.step), abs_ = s->alpha_bar(st.prev);
  const double beff = 1 - abt / abs_;
  ExpectRel(st.c0, std::sqrt(abs_) * beff / (1 - abt), 1e-12);
  ExpectRel(st.c1, std::sqrt(abt / abs_) * (1 - abs_) / (1 - abt), 1e-12);
  EXPECT_EQ(s->ReverseSteps(1, ModelConfig::PAPER).size(), 1u);
  EXPECT_EQ(s->ReverseSteps(500, ModelConfig::PAPER).size(), 50u);
}

// DDIM (eta = 0): no noise, and a z_t that is exactly sqrt(ab_t) z0 + sqrt(1 - ab_t) eps lands,
// given the true z0, exactly on sqrt(ab_s) z0 + sqrt(1 - ab_s) eps (the same eps).
TEST(ScheduleTest, DdimStepIsDeterministicAndKeepsTheNoiseDirection) {
  auto s = NoiseSchedule::Create(ModelConfig::EXPONENTIAL, 50, 0.01, 4.5);
  ASSERT_TRUE(s.ok());
  const auto plan = s->ReverseSteps(6, ModelConfig::DDIM);
  ASSERT_EQ(plan.size(), 6u);
  const double z0 = 0.7, eps = -1.3;
  for (const ReverseStep& st : plan) {
    EXPECT_EQ(st.sigma, 0.0);
    if (st.prev == 0) {
      EXPECT_EQ(st.c0, 1.0);
      EXPECT_EQ(st.c1, 0.0);
      continue;
    }
    const double abt = s->alpha_bar(st.step), abs_ = s->alpha_bar(st.prev);
    ExpectRel(st.c1, std::sqrt((1 - abs_) / (1 - abt)), 1e-12);
    const double zt = std::sqrt(abt) * z0 + std::sqrt(1 - abt) * eps;
    const double zs = st.c0 * z0 + st.c1 * zt;
    EXPECT_NEAR(zs, std::sqrt(abs_) * z0 + std::sqrt(1 - abs_) * eps, 1e-12) << st.step << " -> " << st.prev;
  }
  // Step 50 -> 40 by hand: ab = prod(1 - 0.01 exp(4.5 s / 50)).
  double ab50 = 1, ab40 = 1;
  for (int r = 1; r <= 50; ++r) {
    const double a = 1 - 0.01 * std::exp(4.5 * r / 50);
    ab50 *= a;
    if (r <= 40) ab40 *= a;
  }
  const auto two = s->ReverseSteps(50, ModelConfig::DDIM);
  ASSERT_EQ(two[0].step, 50);
  ASSERT_EQ(two[0].prev, 49);
  double ab49 = ab40;
  for (int r = 41; r <= 49; ++r) ab49 *= 1 - 0.01 * std::exp(4.5 * r / 50);
  ExpectRel(two[0].c1, std::sqrt((1 - ab49) / (1 - ab50)), 1e-9);
  ExpectRel(two[0].c0, std::sqrt(ab49) - std::sqrt(ab50) * std::sqrt((1 - ab49) / (1 - ab50)), 1e-9);
}

}  // namespace
}  // namespace t2d::model
