// Tests of the model library's tensor side: stop-gradient, padding invariance, reverse-process
// determinism, shapes, noising statistics, losses, learning smoke tests, error paths, and the
// dense parameter registry.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <cstring>
#include <cstdio>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "model/dense_optimizer.h"
#include "model/fused_ops.h"
#include "model/model.h"
#include "model/parameters.h"
#include "model/unet_kernel.h"

namespace t2d::model {
namespace {

using config::ModelConfig;

ModelConfig Config(ModelConfig::Kind kind) {
  ModelConfig c;
  c.set_kind(kind);
  return c;
}

ModelDims Dims(int64_t id_dim = 2, int64_t tag_dim = 2, int64_t k = 3) {
  ModelDims d;
  d.id_dim = id_dim;
  d.tag_dim = tag_dim;
  d.session_len = k;
  return d;
}

std::unique_ptr<Model> MakeModel(const ModelConfig& c, const ModelDims& d) {
  auto m = Model::Create(c, d);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(m).value() : nullptr;
}

const ModelConfig::Kind kAllKinds[] = {ModelConfig::T2DIFF, ModelConfig::TWO_TOWER_MEAN, ModelConfig::SASREC,
                                       ModelConfig::T2DIFF_NO_DIFFUSION, ModelConfig::T2DIFF_NO_DRIFT};

// A synthetic batch over `num_items` items (item i has tag i % num_tags); every item is a
// candidate, item i at candidate index i.
struct Problem {
  Batch batch;
  Candidates candidates;
  Rows rows;
};

void AddItem(ItemSlots* s, int64_t item, int64_t num_tags, bool tags) {
  if (tags) {
    s->Add(item, {item % num_tags});
  } else {
    s->id_rows.push_back(item);
  }
}

// histories[b] lists sample b's behaviours, oldest first; n >= every length.
Batch MakeBatch(const std::vector<std::vector<int64_t>>& histories, const std::vector<int64_t>& targets, int64_t n,
                int64_t num_tags, bool tags) {
  Batch b;
  b.batch_size = static_cast<int64_t>(histories.size());
  b.seq_len = n;
  for (size_t i = 0; i < histories.size(); ++i) {
    const auto& h = histories[i];
    b.lengths.push_back(static_cast<int64_t>(h.size()));
    for (int64_t j = 0; j < n - static_cast<int64_t>(h.size()); ++j) {
      if (tags) {
        b.history.AddPadding();
      } else {
        b.history.id_rows.push_back(-1);
      }
    }
    for (int64_t item : h) AddItem(&b.history, item, num_tags, tags);
    AddItem(&b.targets, targets[i], num_tags, tags);
    b.target_candidates.push_back(targets[i]);
    b.target_log_q.push_back(std::log(0.05f));
    for (int64_t j = 0; j < n; ++j) b.time_lags.push_back(static_cast<float>(60 * (n - j)));
  }
  return b;
}

Candidates AllItems(int64_t num_items, int64_t num_tags, bool tags) {
  Candidates c;
  for (int64_t i = 0; i < num_items; ++i) {
    AddItem(&c.items, i, num_tags, tags);
    c.log_q.push_back(std::log(1.f / static_cast<float>(num_items)));
  }
  return c;
}

Rows MakeRows(int64_t num_items, int64_t num_tags, const ModelDims& d, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Rows r;
  r.id_rows = (at::randn({num_items, d.id_dim}, gen, at::kFloat) * 0.5).requires_grad_(true);
  if (d.tag_dim > 0) r.tag_rows = (at::randn({num_tags, d.tag_dim}, gen, at::kFloat) * 0.5).requires_grad_(true);
  return r;
}

Problem RandomProblem(int64_t bsz, int64_t n, int64_t num_items, const ModelDims& d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int64_t>> hist;
  std::vector<int64_t> targets;
  for (int64_t b = 0; b < bsz; ++b) {
    const int64_t len = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
    std::vector<int64_t> h;
    for (int64_t j = 0; j < len; ++j) h.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(num_items)));
    hist.push_back(h);
    targets.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(num_items)));
  }
  Problem p;
  const bool tags = d.tag_dim > 0;
  p.batch = MakeBatch(hist, targets, n, 4, tags);
  p.candidates = AllItems(num_items, 4, tags);
  p.rows = MakeRows(num_items, 4, d, seed + 1);
  return p;
}

double MaxAbs(const at::Tensor& t) { return t.defined() ? t.abs().max().item<double>() : 0.0; }

void ExpectClose(const at::Tensor& a, const at::Tensor& b, double tol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  EXPECT_LE((a - b).abs().max().item<double>(), tol) << what;
}

// ---------------------------------------------------------------------------------------------

TEST(ModelTest, StopGradientSeparatesDiffusionFromTowers) {
  for (auto kind : {ModelConfig::T2DIFF, ModelConfig::T2DIFF_NO_DRIFT}) {
    for (auto loss : {ModelConfig::SQUARED, ModelConfig::NORM}) {
      SCOPED_TRACE(ModelConfig::Kind_Name(kind) + " " + ModelConfig::DiffusionLoss_Name(loss));
      ModelConfig c = Config(kind);
      c.set_diffusion_loss(loss);
      c.set_diffusion_loss_weight(10.f);
      c.set_time_lag_feature(true);
      auto model = MakeModel(c, Dims());
      Problem p = RandomProblem(8, 7, 12, Dims(), 3);

      // lambda * L_KL alone: only the U-Net gets gradient.
      model->ZeroGradients();
      auto out = model->Forward(p.batch, p.rows, p.candidates, 11);
      ASSERT_TRUE(out.ok()) << out.status();
      (out->diffusion_loss * c.diffusion_loss_weight()).backward();
      EXPECT_EQ(MaxAbs(p.rows.id_rows.grad()), 0.0);
      EXPECT_EQ(MaxAbs(p.rows.tag_rows.grad()), 0.0);
      bool unet_nonzero = false;
      for (size_t i = 0; i < model->Parameters().size(); ++i) {
        const ParameterInfo& info = model->Parameters()[i];
        const double g = MaxAbs(model->ParameterTensor(i).grad());
        if (info.diffusion) {
          unet_nonzero |= g > 0;
        } else {
          EXPECT_EQ(g, 0.0) << info.name;
        }
      }
      EXPECT_TRUE(unet_nonzero);

      // L_tower alone: the U-Net gets nothing, the rows and the towers do.
      model->ZeroGradients();
      Problem q = RandomProblem(8, 7, 12, Dims(), 3);
      out = model->Forward(q.batch, q.rows, q.candidates, 11);
      ASSERT_TRUE(out.ok()) << out.status();
      out->tower_loss.backward();
      EXPECT_GT(MaxAbs(q.rows.id_rows.grad()), 0.0);
      EXPECT_GT(MaxAbs(q.rows.tag_rows.grad()), 0.0);
      bool tower_nonzero = false;
      for (size_t i = 0; i < model->Parameters().size(); ++i) {
        const ParameterInfo& info = model->Parameters()[i];
        const double g = MaxAbs(model->ParameterTensor(i).grad());
        if (info.diffusion) {
          EXPECT_EQ(g, 0.0) << info.name;
        } else {
          tower_nonzero |= g > 0;
        }
      }
      EXPECT_TRUE(tower_nonzero);
    }
  }
}

TEST(ModelTest, PaddedSequenceEqualsUnpadded) {
  const ModelDims d = Dims(2, 2, 3);
  const std::vector<std::vector<int64_t>> hist = {{1, 2, 3, 4, 5, 6, 7}, {8, 9}};
  const std::vector<int64_t> targets = {3, 10};
  for (auto kind : kAllKinds) {
    for (bool lag : {false, true}) {
      SCOPED_TRACE(ModelConfig::Kind_Name(kind) + (lag ? " time lag" : ""));
      ModelConfig c = Config(kind);
      c.set_time_lag_feature(lag);
      auto model = MakeModel(c, d);
      const Rows rows = MakeRows(12, 4, d, 5);
      const Candidates cands = AllItems(12, 4, true);
      Batch b7 = MakeBatch(hist, targets, 7, 4, true);
      Batch b10 = MakeBatch(hist, targets, 10, 4, true);
      // Same time lags on the valid slots.
      for (int64_t i = 0; i < 2; ++i) {
        for (int64_t j = 0; j < 7; ++j) b10.time_lags[static_cast<size_t>(i * 10 + 3 + j)] = b7.time_lags[static_cast<size_t>(i * 7 + j)];
      }
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(9);
      TrainNoise n7, n10;
      n7.steps = at::tensor(std::vector<int64_t>{5, 40});
      n7.eps = at::randn({2, 7, 4}, gen, at::kFloat);
      n10.steps = n7.steps;
      // Garbage noise on the padding must not matter.
      n10.eps = at::cat({at::randn({2, 3, 4}, gen, at::kFloat) * 100, n7.eps}, 1);
      auto o7 = model->Forward(b7, rows, cands, 1, &n7);
      auto o10 = model->Forward(b10, rows, cands, 1, &n10);
      ASSERT_TRUE(o7.ok()) << o7.status();
      ASSERT_TRUE(o10.ok()) << o10.status();
      ExpectClose(o7->user_vectors, o10->user_vectors, 1e-5, "e_u");
      ExpectClose(o7->target_vectors, o10->target_vectors, 1e-6, "e_i");
      ExpectClose(o7->tower_loss, o10->tower_loss, 1e-5, "tower loss");
      ExpectClose(o7->diffusion_loss, o10->diffusion_loss, 1e-4, "diffusion loss");
      if (o7->x_hat.defined()) ExpectClose(o7->x_hat, o10->x_hat, 1e-5, "x_hat");

      if (kind == ModelConfig::TWO_TOWER_MEAN || kind == ModelConfig::SASREC ||
          kind == ModelConfig::T2DIFF_NO_DIFFUSION) {
        auto u7 = model->UserVectors(b7, rows, {});
        auto u10 = model->UserVectors(b10, rows, {});
        ASSERT_TRUE(u7.ok() && u10.ok());
        ExpectClose(*u7, *u10, 1e-5, "inference e_u");
        ExpectClose(*u7, o7->user_vectors.detach(), 1e-5, "inference e_u vs training e_u");
      }
    }
  }
}

// model.diffusion_window = k: the diffusion module of a history of n slots computes exactly what
// it computes on the newest k slots alone (loss, training token and reverse process), while the
// towers still see all n.
TEST(ModelTest, DiffusionWindowSeesTheNewestPositionsOnly) {
  const ModelDims d = Dims(2, 2, 3);
  for (auto kind : {ModelConfig::T2DIFF, ModelConfig::T2DIFF_NO_DRIFT}) {
    for (auto loss : {ModelConfig::SQUARED, ModelConfig::NORM}) {
      SCOPED_TRACE(ModelConfig::Kind_Name(kind) + " " + ModelConfig::DiffusionLoss_Name(loss));
      ModelConfig windowed = Config(kind);
      windowed.set_diffusion_loss(loss);
      windowed.set_diffusion_window(4);
      ModelConfig plain = windowed;
      plain.set_diffusion_window(0);
      auto mw = MakeModel(windowed, d);
      auto m0 = MakeModel(plain, d);
      const Rows rows = MakeRows(12, 4, d, 5);
      const Candidates cands = AllItems(12, 4, true);
      const Batch b7 = MakeBatch({{1, 2, 3, 4, 5, 6, 7}, {8, 9}}, {3, 10}, 7, 4, true);
      const Batch b4 = MakeBatch({{4, 5, 6, 7}, {8, 9}}, {3, 10}, 4, 4, true);
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(9);
      TrainNoise n7, n4;
      n7.steps = at::tensor(std::vector<int64_t>{5, 40});
      n7.eps = at::randn({2, 7, 4}, gen, at::kFloat);
      n4.steps = n7.steps;
      n4.eps = n7.eps.narrow(1, 3, 4).contiguous();
      auto ow = mw->Forward(b7, rows, cands, 1, &n7);
      auto o0 = m0->Forward(b4, rows, cands, 1, &n4);
      ASSERT_TRUE(ow.ok() && o0.ok()) << ow.status() << o0.status();
      ExpectClose(ow->diffusion_loss, o0->diffusion_loss, 1e-6, "diffusion loss");
      ExpectClose(ow->x_hat, o0->x_hat, 1e-6, "x_hat");
      // The plain model on all seven slots sees more positions: another loss.
      auto full = m0->Forward(b7, rows, cands, 1, &n7);
      ASSERT_TRUE(full.ok());
      EXPECT_GT(std::abs(full->diffusion_loss.item<double>() - ow->diffusion_loss.item<double>()), 1e-6);
      for (bool tensor_ops : {false, true}) {
        InferenceOptions o;
        o.seed = 11;
        o.force_tensor_ops = tensor_ops;
        auto gw = mw->GenerateNextItem(b7, rows, o);
        auto g0 = m0->GenerateNextItem(b4, rows, o);
        ASSERT_TRUE(gw.ok() && g0.ok());
        ExpectClose(*gw, *g0, 1e-6, "reverse process");
      }
    }
  }
}

// model.unet_channels = C sets the U-Net's width apart from D. Counted by hand for D = 4, L = 2,
// C = 3: down0 conv 24x3 + 3, norm 6; down1 conv 9x6 + 6, norm 12; up0 proj 6x3 + 3, conv 18x3 + 3,
// norm 6; out 3x4 + 4: 253 parameters, against 5,112 for the default C = D = 4, L = 4.
TEST(ModelTest, UnetChannelsSetTheUnetWidth) {
  const ModelDims d = Dims(2, 2, 3);
  ModelConfig narrow = Config(ModelConfig::T2DIFF);
  narrow.set_unet_levels(2);
  narrow.set_unet_channels(3);
  auto a = Model::DenseParameterCount(narrow, d);
  auto b = Model::DenseParameterCount(Config(ModelConfig::T2DIFF), d);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a - *b, 253 - 5112);
}

TEST(ModelTest, ReverseProcessIsSeededAndKernelMatchesTensorOps) {
  const ModelDims d = Dims(2, 2, 3);
  for (auto update : {ModelConfig::PAPER, ModelConfig::AUTHORS, ModelConfig::DDIM}) {
    for (auto kind : {ModelConfig::T2DIFF, ModelConfig::T2DIFF_NO_DRIFT}) {
      SCOPED_TRACE(ModelConfig::Kind_Name(kind) + " " + ModelConfig::ReverseUpdate_Name(update));
      ModelConfig c = Config(kind);
      c.set_reverse_update(update);
      auto model = MakeModel(c, d);
      const Rows rows = MakeRows(12, 4, d, 5);
      const Batch one = MakeBatch({{1, 2, 3, 4, 5}}, {6}, 9, 4, true);
      InferenceOptions o;
      o.seed = 7;
      auto a = model->GenerateNextItem(one, rows, o);
      auto b = model->GenerateNextItem(one, rows, o);
      ASSERT_TRUE(a.ok() && b.ok()) << a.status();
      EXPECT_TRUE(at::equal(*a, *b));
      o.seed = 8;
      auto other = model->GenerateNextItem(one, rows, o);
      ASSERT_TRUE(other.ok());
      EXPECT_FALSE(at::equal(*a, *other));
      for (int samples : {1, 3}) {
        for (int steps : {0, 7}) {
          InferenceOptions k;
          k.seed = 21;
          k.num_samples = samples;
          k.reverse_steps = steps;
          InferenceOptions t = k;
          t.force_tensor_ops = true;
          auto by_kernel = model->GenerateNextItem(one, rows, k);
          auto by_tensor = model->GenerateNextItem(one, rows, t);
          ASSERT_TRUE(by_kernel.ok() && by_tensor.ok());
          EXPECT_EQ(by_kernel->sizes(), at::IntArrayRef({1, 4}));
          ExpectClose(*by_kernel, *by_tensor, 1e-4, "kernel vs tensor ops");
          auto e1 = model->UserVectors(one, rows, k);
          auto e2 = model->UserVectors(one, rows, t);
          ASSERT_TRUE(e1.ok() && e2.ok());
          ExpectClose(*e1, *e2, 1e-4, "user vector kernel vs tensor ops");
        }
      }
      // A batch is reproducible too.
      const Batch two = MakeBatch({{1, 2, 3}, {4, 5, 6, 7, 8}}, {6, 7}, 9, 4, true);
      InferenceOptions s;
      s.seed = 3;
      s.num_samples = 2;
      auto x = model->UserVectors(two, rows, s);
      auto y = model->UserVectors(two, rows, s);
      ASSERT_TRUE(x.ok() && y.ok());
      EXPECT_TRUE(at::equal(*x, *y));
      EXPECT_FALSE(x->requires_grad());
    }
  }
}

// The kernel runs every batch with D <= 16: it must agree with tensor ops for batches with
// padding, both update rules, both kinds, D up to 16, U-Net depths 1..4, shared and per-sample
// generators and several samples per request.
TEST(ModelTest, KernelMatchesTensorOpsOnBatches) {
  struct Case {
    int64_t id_dim, tag_dim;
    int levels;
    int channels = 0;  // model.unet_channels
    int window = 0;    // model.diffusion_window
  };
  const Case cases[] = {{2, 2, 4}, {2, 2, 1}, {3, 0, 2}, {5, 2, 3}, {8, 8, 4}, {16, 0, 2},
                        {2, 2, 4, 3}, {8, 8, 3, 5, 6}, {5, 2, 2, 0, 4}};
  for (const Case& cs : cases) {
    for (auto update : {ModelConfig::PAPER, ModelConfig::AUTHORS}) {
      for (auto kind : {ModelConfig::T2DIFF, ModelConfig::T2DIFF_NO_DRIFT}) {
        SCOPED_TRACE(ModelConfig::Kind_Name(kind) + " " + ModelConfig::ReverseUpdate_Name(update) + " D=" +
                     std::to_string(cs.id_dim + cs.tag_dim) + " levels=" + std::to_string(cs.levels) +
                     " channels=" + std::to_string(cs.channels) + " window=" + std::to_string(cs.window));
        const ModelDims d = Dims(cs.id_dim, cs.tag_dim, 3);
        ModelConfig c = Config(kind);
        c.set_reverse_update(update);
        c.set_unet_levels(cs.levels);
        c.set_unet_channels(cs.channels);
        c.set_diffusion_window(cs.window);
        c.set_attention_heads(1);  // divides every D
        auto model = MakeModel(c, d);
        ASSERT_NE(model, nullptr);
        const Problem p = RandomProblem(5, 11, 12, d, 17);  // lengths 1..11: padding in most rows
        for (bool per_sample : {false, true}) {
          InferenceOptions k;
          k.seed = 5;
          k.num_samples = per_sample ? 1 : 2;
          k.reverse_steps = update == ModelConfig::PAPER ? 0 : 9;
          if (per_sample) k.sample_seeds = {1, 2, 3, 4, 5};
          InferenceOptions t = k;
          t.force_tensor_ops = true;
          auto by_kernel = model->GenerateNextItem(p.batch, p.rows, k);
          auto by_tensor = model->GenerateNextItem(p.batch, p.rows, t);
          ASSERT_TRUE(by_kernel.ok() && by_tensor.ok()) << by_kernel.status() << by_tensor.status();
          EXPECT_EQ(by_kernel->sizes(), at::IntArrayRef({5, cs.id_dim + cs.tag_dim}));
          ExpectClose(*by_kernel, *by_tensor, 1e-4, "kernel vs tensor ops");
        }
      }
    }
  }
}

// Training runs the U-Net's forward and backward in the plain-C++ kernel for D <= 16 with at
// most 8 channels at level 0 (every case below): its loss,
// x_hat and every gradient (the U-Net's and, through the towers, the rest) must agree with the
// tensor ops' autograd on batches with padding, both losses and kinds, U-Net depths 1..4, widths
// apart from D, and a diffusion window.
TEST(ModelTest, TrainingKernelMatchesTensorOps) {
  struct Case {
    int64_t id_dim, tag_dim;
    int levels;
    int channels = 0;  // model.unet_channels
    int window = 0;    // model.diffusion_window
    int64_t n = 11;    // positions: 37 gives levels of 37, 19, 10 and 5, several vectors of 8 at the top two
  };
  const Case cases[] = {{2, 2, 4},       {2, 2, 1},    {3, 0, 2},       {5, 2, 3},         {8, 8, 4, 8},
                        {16, 0, 2, 7},   {2, 2, 4, 3}, {8, 8, 3, 5, 6}, {5, 2, 2, 0, 4}, {2, 2, 4, 0, 0, 37}};
  for (const Case& cs : cases) {
    for (auto loss : {ModelConfig::SQUARED, ModelConfig::NORM}) {
      for (auto kind : {ModelConfig::T2DIFF, ModelConfig::T2DIFF_NO_DRIFT}) {
        SCOPED_TRACE(ModelConfig::Kind_Name(kind) + " " + ModelConfig::DiffusionLoss_Name(loss) + " D=" +
                     std::to_string(cs.id_dim + cs.tag_dim) + " levels=" + std::to_string(cs.levels) +
                     " channels=" + std::to_string(cs.channels) + " window=" + std::to_string(cs.window) +
                     " n=" + std::to_string(cs.n));
        const ModelDims d = Dims(cs.id_dim, cs.tag_dim, 3);
        const int64_t dim = cs.id_dim + cs.tag_dim, bsz = 21, n = cs.n;
        ModelConfig c = Config(kind);
        c.set_diffusion_loss(loss);
        c.set_unet_levels(cs.levels);
        c.set_unet_channels(cs.channels);
        c.set_diffusion_window(cs.window);
        c.set_attention_heads(1);
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
        TrainNoise noise;
        noise.steps = at::randint(1, 51, {bsz}, gen, at::kLong);
        noise.eps = at::randn({bsz, n, dim}, gen, at::kFloat);
        std::vector<std::vector<float>> dense;
        std::vector<ForwardOutput> outs;
        std::vector<at::Tensor> row_grads;
        for (bool tensor_ops : {false, true}) {
          auto model = MakeModel(c, d);
          ASSERT_NE(model, nullptr);
          Problem p = RandomProblem(bsz, n, n + 1, d, 17);  // lengths 1..n: padding in most rows; 2 chunks
          noise.force_tensor_ops = tensor_ops;
          model->ZeroGradients();
          auto out = model->Forward(p.batch, p.rows, p.candidates, 1, &noise);
          ASSERT_TRUE(out.ok()) << out.status();
          out->total_loss.backward();
          outs.push_back(*out);
          dense.emplace_back(model->DenseGradients().begin(), model->DenseGradients().end());
          row_grads.push_back(p.rows.id_rows.grad().clone());
        }
        EXPECT_GT(outs[0].diffusion_loss.item<double>(), 0);
        ExpectClose(outs[0].diffusion_loss, outs[1].diffusion_loss, 1e-5 * outs[1].diffusion_loss.item<double>(),
                    "diffusion loss");
        ExpectClose(outs[0].x_hat, outs[1].x_hat, 1e-5, "x_hat");
        ExpectClose(outs[0].total_loss, outs[1].total_loss, 1e-5 * outs[1].total_loss.item<double>(), "total loss");
        ASSERT_EQ(dense[0].size(), dense[1].size());
        const at::Tensor kernel_grad = at::tensor(dense[0]), tensor_grad = at::tensor(dense[1]);
        EXPECT_GT(MaxAbs(tensor_grad), 0);
        // Sums in a different order: float rounding differs (measured up to 2e-5 of the largest).
        ExpectClose(kernel_grad, tensor_grad, 1e-4 * std::max(1.0, MaxAbs(tensor_grad)), "dense gradients");
        ExpectClose(row_grads[0], row_grads[1], 1e-5, "row gradients");
      }
    }
  }
}

// The training kernel splits a batch into fixed chunks of sequences: its loss and gradient are
// bit-identical on one thread and on two; under no-grad it computes the loss alone.
TEST(ModelTest, TrainingKernelIsBitIdenticalAcrossThreadCounts) {
  const int threads = at::get_num_threads();
  std::vector<std::vector<float>> dense;
  std::vector<double> losses;
  for (int t : {1, 2}) {
    at::set_num_threads(t);
    auto model = MakeModel(Config(ModelConfig::T2DIFF), Dims());
    Problem p = RandomProblem(70, 9, 30, Dims(), 5);
    model->ZeroGradients();
    auto l = model->ForwardBackward(p.batch, p.rows, p.candidates, 7, false);
    ASSERT_TRUE(l.ok()) << l.status();
    losses.push_back(l->diffusion);
    dense.emplace_back(model->DenseGradients().begin(), model->DenseGradients().end());
    at::NoGradGuard no_grad;
    auto eval = model->Forward(p.batch, p.rows, p.candidates, 7);
    ASSERT_TRUE(eval.ok()) << eval.status();
    EXPECT_EQ(eval->diffusion_loss.item<double>(), l->diffusion);
  }
  at::set_num_threads(threads);
  EXPECT_EQ(losses[0], losses[1]);
  ASSERT_EQ(dense[0].size(), dense[1].size());
  EXPECT_EQ(std::memcmp(dense[0].data(), dense[1].data(), dense[0].size() * sizeof(float)), 0);
}

// A sample's output is a function of its seed and history only: bit-identical alone, inside a
// batch, and wherever it sits in the batch (any batch split over threads as well).
TEST(ModelTest, KernelSampleIsBitIdenticalAloneAndInABatch) {
  const ModelDims d = Dims(2, 2, 3);
  auto model = MakeModel(Config(ModelConfig::T2DIFF), d);
  const Problem p = RandomProblem(6, 10, 12, d, 23);
  InferenceOptions all;
  all.sample_seeds = {10, 20, 30, 40, 50, 60};
  all.num_samples = 3;
  auto batch = model->GenerateNextItem(p.batch, p.rows, all);
  ASSERT_TRUE(batch.ok()) << batch.status();
  for (int64_t i = 0; i < 6; ++i) {
    SCOPED_TRACE("sample " + std::to_string(i));
    std::vector<int64_t> hist;
    for (int64_t j = 10 - p.batch.lengths[static_cast<size_t>(i)]; j < 10; ++j) {
      hist.push_back(p.batch.history.id_rows[static_cast<size_t>(i * 10 + j)]);
    }
    // Alone (same n: the noise tensor's shape, hence its values, depend on n).
    const Batch one = MakeBatch({hist}, {0}, 10, 4, true);
    InferenceOptions o = all;
    o.sample_seeds = {all.sample_seeds[static_cast<size_t>(i)]};
    auto alone = model->GenerateNextItem(one, p.rows, o);
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_TRUE(at::equal(*alone, batch->narrow(0, i, 1))) << *alone << batch->narrow(0, i, 1);
  }
  // Several threads split the batch differently: same bits.
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  auto two_threads = model->GenerateNextItem(p.batch, p.rows, all);
  at::set_num_threads(threads);
  ASSERT_TRUE(two_threads.ok());
  EXPECT_TRUE(at::equal(*two_threads, *batch));
}

// UnetKernel::TrainLast computes only the positions that the last output depends on; its output
// must be TrainLoss's `last` bit for bit, for every level count (1 to 8), width and length (lengths that
// cut the levels into one, several or partial vectors), with left padding and empty sequences.
TEST(ModelTest, KernelTrainLastEqualsTrainLoss) {
  struct Case {
    int64_t d, channels;
    int levels;
  };
  const Case cases[] = {{2, 2, 1}, {2, 2, 4}, {4, 4, 4}, {4, 8, 3}, {4, 4, 5},
                        {8, 8, 2}, {3, 5, 4}, {4, 4, 6}, {2, 2, 7}, {2, 1, 8}};
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  int64_t compared = 0;
  for (const Case& cs : cases) {
    // A layout over a flat buffer of random parameters, in the model's shapes (docs/model.md).
    UnetKernelLayout layout;
    layout.d = cs.d;
    layout.channels = cs.channels;
    layout.levels = cs.levels;
    std::vector<float> params;
    auto take = [&](int64_t count, float mean, float sd) {
      const int64_t at = static_cast<int64_t>(params.size());
      for (int64_t i = 0; i < count; ++i) params.push_back(mean + sd * normal(rng));
      return at;
    };
    int64_t in = 2 * cs.d;
    for (int l = 0; l < cs.levels; ++l) {
      const int64_t c = cs.channels << l;
      const float sd = 1.f / std::sqrt(static_cast<float>(3 * in));
      layout.down.push_back({take(c * 3 * in, 0, sd), take(c, 0, 0.1f), take(c, 1, 0.1f), take(c, 0, 0.1f)});
      in = c;
    }
    for (int l = 0; l + 1 < cs.levels; ++l) {
      const int64_t c = cs.channels << l;
      const float sp = 1.f / std::sqrt(static_cast<float>(2 * c)), sc = 1.f / std::sqrt(static_cast<float>(6 * c));
      layout.up.push_back({take(c * 2 * c, 0, sp), take(c, 0, 0.1f), take(c * 3 * 2 * c, 0, sc), take(c, 0, 0.1f),
                           take(c, 1, 0.1f), take(c, 0, 0.1f)});
    }
    layout.out_w = take(cs.d * cs.channels, 0, 0.5f);
    layout.out_b = take(cs.d, 0, 0.1f);
    for (int64_t n : {1, 2, 7, 8, 9, 13, 37, 50, 64, 100}) {
      SCOPED_TRACE("D=" + std::to_string(cs.d) + " C=" + std::to_string(cs.channels) +
                   " levels=" + std::to_string(cs.levels) + " n=" + std::to_string(n));
      const int64_t seqs = 5;
      std::vector<float> input(static_cast<size_t>(seqs * n * 2 * cs.d)), target(static_cast<size_t>(seqs * n * cs.d));
      std::vector<float> mask(static_cast<size_t>(seqs * n), 0.f);
      for (float& v : input) v = normal(rng);
      for (float& v : target) v = normal(rng);
      for (int64_t s = 0; s < seqs; ++s) {
        // Lengths n, 0, and random ones: right-aligned valid positions.
        const int64_t len = s == 0 ? n : s == 1 ? 0 : static_cast<int64_t>(rng() % static_cast<uint32_t>(n + 1));
        for (int64_t j = n - len; j < n; ++j) mask[static_cast<size_t>(s * n + j)] = 1.f;
      }
      std::vector<double> seq_loss(static_cast<size_t>(seqs));
      std::vector<float> want(static_cast<size_t>(seqs * cs.d)), got(static_cast<size_t>(seqs * cs.d), -1.f);
      UnetKernel full(layout, params.data());
      full.TrainLoss(seqs, n, input.data(), mask.data(), target.data(), UnetLoss::kSquared, 1.f, seq_loss.data(),
                     want.data(), nullptr);
      UnetKernel last(layout, params.data());
      last.TrainLast(seqs, n, input.data(), mask.data(), got.data());
      EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0);
      // A kernel reused across calls and layouts (its planes are zeroed once per layout and its
      // gradient lanes as they are flushed) gives the bits of a fresh one: gradient calls one
      // after another, TrainLast after TrainLoss, and a gradient call after that.
      const size_t total = params.size();
      std::vector<std::vector<float>> grads(4, std::vector<float>(total, 0.f));
      std::vector<float> last_scratch(want.size());
      auto gradient = [&](UnetKernel& k, std::vector<float>& g) {
        k.TrainLoss(seqs, n, input.data(), mask.data(), target.data(), UnetLoss::kNorm, 0.5f, seq_loss.data(),
                    last_scratch.data(), g.data());
      };
      UnetKernel fresh(layout, params.data());
      gradient(fresh, grads[0]);
      gradient(full, grads[1]);
      gradient(full, grads[2]);
      std::vector<float> got_reused(want.size(), -1.f);
      full.TrainLast(seqs, n, input.data(), mask.data(), got_reused.data());
      EXPECT_EQ(std::memcmp(want.data(), got_reused.data(), want.size() * sizeof(float)), 0);
      gradient(full, grads[3]);
      for (int i = 1; i < 4; ++i) EXPECT_EQ(std::memcmp(grads[0].data(), grads[i].data(), total * sizeof(float)), 0) << i;
      // A sequence with its last position valid has a nonzero output; an empty one has zeros.
      EXPECT_NE(want[0], 0.f);
      EXPECT_EQ(got[static_cast<size_t>(cs.d)], 0.f);
      ++compared;
    }
  }
  EXPECT_EQ(compared, 100);
}

// The kernel's vectorised exp against std::exp, and swish at the extremes.
TEST(ModelTest, KernelExpMatchesStdExp) {
  std::vector<float> x;
  for (double v = -120; v <= 120; v += 0.0137) x.push_back(static_cast<float>(v));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-88.f, 88.f);
  for (int i = 0; i < 200000; ++i) x.push_back(u(rng));
  for (float v : {0.f, -0.f, 1e-30f, -1e-30f, 88.72f, -87.33f, -103.9f, 88.7228f}) x.push_back(v);
  std::vector<float> e(x.size());
  UnetKernel::ExpForTest(x.data(), static_cast<int64_t>(x.size()), e.data());
  double max_rel = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = std::exp(x[i]);
    ASSERT_FALSE(std::isnan(e[i])) << x[i];
    ASSERT_GE(e[i], 0.f) << x[i];
    if (std::isfinite(want)) {
      ASSERT_TRUE(std::isfinite(e[i])) << x[i];
    }
    if (want >= 1.17549435e-38f && std::isfinite(want)) {
      max_rel = std::max(max_rel, std::abs(static_cast<double>(e[i]) - want) / want);
    } else if (std::isfinite(want)) {
      EXPECT_LE(e[i], 1.2e-38f) << x[i];  // denormal or zero results: absolute error only
    }
  }
  EXPECT_LT(max_rel, 2e-7);  // about 2 ulp (the header's claim)
  std::printf("kernel exp: max relative error %.3g over %zu points\n", max_rel, x.size());
  const std::vector<float> sx = {-100.f, -20.f, -1.f, 0.f, 1.f, 20.f, 100.f};
  std::vector<float> sw(sx.size());
  UnetKernel::SwishForTest(sx.data(), static_cast<int64_t>(sx.size()), sw.data());
  for (size_t i = 0; i < sx.size(); ++i) {
    const double want = sx[i] / (1.0 + std::exp(-static_cast<double>(sx[i])));
    EXPECT_NEAR(sw[i], want, 1e-6 * std::max(1.0, std::abs(want))) << sx[i];
    EXPECT_TRUE(std::isfinite(sw[i]));
  }
  EXPECT_EQ(sw[6], 100.f);
  EXPECT_LE(std::abs(sw[0]), 1e-30f);
}

// With the U-Net's output layer zeroed, the reverse process ends in z_0 = 0, so T2Diff's token
// x_hat = x_n + z_0[n] is exactly the newest behaviour: inference_token = LAST_BEHAVIOUR must give
// the same user vectors. With the trained (non-zero) layer the two differ, and LAST_BEHAVIOUR does
// not depend on the noise seed.
TEST(ModelTest, LastBehaviourTokenEqualsAGeneratedZeroDrift) {
  const ModelDims d = Dims(2, 2, 3);
  ModelConfig generated = Config(ModelConfig::T2DIFF);
  ModelConfig last = generated;
  last.set_inference_token(ModelConfig::LAST_BEHAVIOUR);
  auto g = MakeModel(generated, d);
  auto l = MakeModel(last, d);
  const Rows rows = MakeRows(12, 4, d, 5);
  const Batch two = MakeBatch({{1, 2, 3}, {4, 5, 6, 7, 8}}, {6, 7}, 9, 4, true);
  InferenceOptions o;
  o.seed = 3;
  auto eg = g->UserVectors(two, rows, o);
  auto el = l->UserVectors(two, rows, o);
  ASSERT_TRUE(eg.ok() && el.ok()) << eg.status() << el.status();
  EXPECT_GT(MaxAbs(*eg - *el), 1e-4) << "a random U-Net should generate something else than x_n";
  o.seed = 4;
  auto el4 = l->UserVectors(two, rows, o);
  ASSERT_TRUE(el4.ok());
  EXPECT_TRUE(at::equal(*el, *el4));
  // Zero unet.out in both models (same init seed, so every other parameter is equal).
  for (Model* m : {g.get(), l.get()}) {
    for (const ParameterInfo& p : m->Parameters()) {
      if (p.name.rfind("unet.out", 0) == 0) {
        std::fill_n(m->DenseParameters().begin() + p.offset, p.numel, 0.f);
      }
    }
  }
  auto zg = g->UserVectors(two, rows, o);
  auto zl = l->UserVectors(two, rows, o);
  ASSERT_TRUE(zg.ok() && zl.ok());
  ExpectClose(*zg, *zl, 1e-6, "zero drift vs last behaviour");
}

// Classifier-free guidance: with one reverse step (z = z0_hat) the guided token is
// (1 + w) U(z, X) - w U(z, 0), where U(z, 0) is what the unguided model generates for the same
// batch with all-zero embeddings (T2DIFF_NO_DRIFT: nothing is added back).
TEST(ModelTest, GuidanceCombinesConditionalAndUnconditionalPasses) {
  const ModelDims d = Dims(2, 2, 3);
  ModelConfig plain = Config(ModelConfig::T2DIFF_NO_DRIFT);
  ModelConfig guided = plain;
  guided.set_guidance_weight(2.f);
  auto p = MakeModel(plain, d);
  auto g = MakeModel(guided, d);
  const Rows rows = MakeRows(12, 4, d, 5);
  Rows zero;
  zero.id_rows = at::zeros_like(rows.id_rows);
  zero.tag_rows = at::zeros_like(rows.tag_rows);
  const Batch two = MakeBatch({{1, 2, 3}, {4, 5, 6, 7, 8}}, {6, 7}, 9, 4, true);
  InferenceOptions o;
  o.seed = 5;
  o.reverse_steps = 1;
  o.force_tensor_ops = true;
  auto cond = p->GenerateNextItem(two, rows, o);
  auto uncond = p->GenerateNextItem(two, zero, o);
  auto mixed_tensor = g->GenerateNextItem(two, rows, o);
  o.force_tensor_ops = false;  // the kernel runs both passes itself
  auto mixed = g->GenerateNextItem(two, rows, o);
  ASSERT_TRUE(cond.ok() && uncond.ok() && mixed.ok() && mixed_tensor.ok());
  EXPECT_GT(MaxAbs(*cond - *uncond), 1e-4);
  ExpectClose(*mixed_tensor, *cond * 3.0 - *uncond * 2.0, 1e-5, "guided token (tensor ops)");
  ExpectClose(*mixed, *cond * 3.0 - *uncond * 2.0, 1e-5, "guided token (kernel)");
  // Every step of the reverse process, with a per-sample seed: the kernel agrees with tensor
  // ops, and reproducibly.
  o.reverse_steps = 0;
  o.sample_seeds = {1, 2};
  auto a = g->UserVectors(two, rows, o);
  auto b = g->UserVectors(two, rows, o);
  o.force_tensor_ops = true;
  auto t = g->UserVectors(two, rows, o);
  ASSERT_TRUE(a.ok() && b.ok() && t.ok());
  EXPECT_TRUE(at::equal(*a, *b));
  ExpectClose(*a, *t, 1e-4, "guided user vectors, kernel against tensor ops");
}

// train_generated_token_fraction: the towers' token of a chosen sample comes from the reverse
// process, so it no longer depends on the sample's target; the others keep the spec's token; the
// diffusion loss is unchanged. guidance_drop_fraction changes the loss, and 0 changes nothing.
TEST(ModelTest, TrainingTokenFromTheReverseProcessCarriesNoLabel) {
  const ModelDims d = Dims(2, 2, 3);
  Problem p = RandomProblem(64, 7, 12, d, 3);
  Problem q = p;  // the same histories, every target moved to another item
  q.batch.targets = ItemSlots();
  q.batch.target_candidates.clear();
  for (int64_t b = 0; b < p.batch.batch_size; ++b) {
    const int64_t t = (p.batch.target_candidates[static_cast<size_t>(b)] + 5) % 12;
    AddItem(&q.batch.targets, t, 4, true);
    q.batch.target_candidates.push_back(t);
  }
  auto token = [&](float fraction, const Problem& pr, at::Tensor* loss) {
    ModelConfig c = Config(ModelConfig::T2DIFF);
    c.set_train_generated_token_fraction(fraction);
    auto m = MakeModel(c, d);
    auto out = m->Forward(pr.batch, pr.rows, pr.candidates, 17);
    EXPECT_TRUE(out.ok()) << out.status();
    if (loss != nullptr) *loss = out->diffusion_loss.detach();
    return out->x_hat;
  };
  at::Tensor loss0, loss1, loss_half;
  const at::Tensor spec_p = token(0, p, &loss0), spec_q = token(0, q, nullptr);
  const at::Tensor gen_p = token(1, p, &loss1), gen_q = token(1, q, nullptr);
  EXPECT_GT(MaxAbs(spec_p - spec_q), 1e-3) << "the spec's token follows the target";
  EXPECT_TRUE(at::equal(gen_p, gen_q)) << "a generated token cannot see the target";
  EXPECT_TRUE(at::equal(loss0, loss1));
  const at::Tensor half = token(0.5f, p, &loss_half);
  EXPECT_TRUE(at::equal(loss0, loss_half));
  int from_spec = 0, generated = 0;
  for (int64_t b = 0; b < 64; ++b) {
    const bool s = at::equal(half[b], spec_p[b]), g = at::allclose(half[b], gen_p[b], 1e-5, 1e-6);
    EXPECT_TRUE(s || g) << "sample " << b;
    from_spec += s;
    generated += g && !s;
  }
  EXPECT_GT(from_spec, 16);
  EXPECT_GT(generated, 16);

  ModelConfig c = Config(ModelConfig::T2DIFF);
  c.set_guidance_drop_fraction(0.f);
  auto none = MakeModel(c, d)->Forward(p.batch, p.rows, p.candidates, 17);
  c.set_guidance_drop_fraction(1.f);
  auto all = MakeModel(c, d)->Forward(p.batch, p.rows, p.candidates, 17);
  ASSERT_TRUE(none.ok() && all.ok());
  EXPECT_TRUE(at::equal(none->diffusion_loss, loss0));
  EXPECT_FALSE(at::equal(all->diffusion_loss, loss0));
  EXPECT_TRUE(std::isfinite(all->diffusion_loss.item<double>()));
}

TEST(ModelTest, ShapesForSeveralSizes) {
  struct Case {
    int64_t n, k, id_dim, tag_dim;
    int heads;
  };
  for (const Case& cs : {Case{1, 1, 2, 2, 2}, Case{7, 10, 4, 0, 1}, Case{50, 10, 2, 2, 2}, Case{13, 4, 6, 2, 4}}) {
    for (auto kind : kAllKinds) {
      for (auto uv : {ModelConfig::FFN, ModelConfig::CONCAT}) {
        SCOPED_TRACE(::testing::Message() << ModelConfig::Kind_Name(kind) << " n=" << cs.n << " k=" << cs.k
                                          << " D=" << cs.id_dim << "+" << cs.tag_dim << " " << uv);
        ModelConfig c = Config(kind);
        c.set_attention_heads(cs.heads);
        c.set_user_vector(uv);
        c.set_unet_levels(3);
        const ModelDims d = Dims(cs.id_dim, cs.tag_dim, cs.k);
        auto model = MakeModel(c, d);
        ASSERT_NE(model, nullptr);
        const int64_t dd = cs.id_dim + cs.tag_dim;
        EXPECT_EQ(model->input_dim(), dd);
        EXPECT_EQ(model->output_dim(), 2 * dd);
        Problem p = RandomProblem(5, cs.n, 9, d, 17);
        auto out = model->Forward(p.batch, p.rows, p.candidates, 2);
        ASSERT_TRUE(out.ok()) << out.status();
        EXPECT_EQ(out->user_vectors.sizes(), at::IntArrayRef({5, 2 * dd}));
        EXPECT_EQ(out->target_vectors.sizes(), at::IntArrayRef({5, 2 * dd}));
        EXPECT_EQ(out->tower_loss.dim(), 0);
        EXPECT_TRUE(std::isfinite(out->total_loss.item<double>()));
        auto u = model->UserVectors(p.batch, p.rows, {});
        ASSERT_TRUE(u.ok()) << u.status();
        EXPECT_EQ(u->sizes(), at::IntArrayRef({5, 2 * dd}));
        EXPECT_TRUE(at::isfinite(*u).all().item<bool>());
        auto items = model->ItemVectors(p.candidates.items, p.rows);
        ASSERT_TRUE(items.ok());
        EXPECT_EQ(items->sizes(), at::IntArrayRef({9, 2 * dd}));
      }
    }
  }
  ModelConfig c = Config(ModelConfig::T2DIFF);
  c.set_output_dim(5);
  auto model = MakeModel(c, Dims());
  EXPECT_EQ(model->output_dim(), 5);
}

TEST(ModelTest, ForwardNoisingStatistics) {
  auto model = MakeModel(Config(ModelConfig::T2DIFF), Dims());
  const int64_t rows = 20000, width = 16;
  const at::Tensor z0 = at::full({rows, width}, 2.0, at::kFloat);
  for (int r : {1, 10, 25, 50}) {
    const at::Tensor zr = model->ForwardNoise(z0, at::full({rows}, r, at::kLong), 100 + static_cast<uint64_t>(r));
    // alpha_bar_r of the default schedule, by hand.
    double abr = 1;
    for (int s = 1; s <= r; ++s) abr *= 1 - 0.01 * std::exp(4.5 * s / 50);
    const double mean = zr.mean().item<double>(), var = zr.var().item<double>();
    // 320k draws: standard error of the mean <= 0.002, of the variance <= 0.003.
    EXPECT_NEAR(mean, 2.0 * std::sqrt(abr), 0.01) << "r=" << r;
    EXPECT_NEAR(var, 1.0 - abr, 0.015) << "r=" << r;
  }
  // Per-row steps: rows with r = 1 and r = 50 mixed.
  at::Tensor steps = at::cat({at::full({rows / 2}, 1, at::kLong), at::full({rows / 2}, 50, at::kLong)});
  const at::Tensor zr = model->ForwardNoise(z0, steps, 5);
  EXPECT_NEAR(zr.narrow(0, 0, rows / 2).mean().item<double>(), 2.0 * std::sqrt(1 - 0.01 * std::exp(0.09)), 0.01);
  EXPECT_NEAR(zr.narrow(0, rows / 2, rows / 2).mean().item<double>(), 0.0, 0.01);
  EXPECT_NEAR(zr.narrow(0, rows / 2, rows / 2).var().item<double>(), 1.0, 0.015);
}

TEST(ModelTest, SampledSoftmaxMatchesHandComputation) {
  ModelConfig c = Config(ModelConfig::T2DIFF_NO_DIFFUSION);
  c.set_loss(ModelConfig::SAMPLED_SOFTMAX);
  const ModelDims d = Dims();
  auto model = MakeModel(c, d);
  const Rows rows = MakeRows(12, 4, d, 5);
  // Targets 3, 3, 7: the two 3s must not be each other's negatives; negative 7 equals sample 2's
  // positive and must be masked for it.
  Batch b = MakeBatch({{1, 2}, {4, 5, 6}, {9}}, {3, 3, 7}, 4, 4, true);
  b.target_log_q = {-1.f, -1.f, -2.f};
  Candidates negs;
  for (int64_t i : {0, 7, 11}) AddItem(&negs.items, i, 4, true);
  negs.log_q = {-3.f, -2.f, -0.5f};
  auto out = model->Forward(b, rows, negs, 1);
  ASSERT_TRUE(out.ok()) << out.status();
  const at::Tensor eu = out->user_vectors.detach();
  Candidates all;
  for (int64_t i : {3, 3, 7, 0, 7, 11}) AddItem(&all.items, i, 4, true);
  auto ei = model->ItemVectors(all.items, rows);
  ASSERT_TRUE(ei.ok());
  const std::vector<int64_t> ids = {3, 3, 7, 0, 7, 11};
  const std::vector<float> logq = {-1, -1, -2, -3, -2, -0.5};
  double expected = 0;
  for (int64_t i = 0; i < 3; ++i) {
    std::vector<double> logits;
    double pos = 0;
    for (int64_t j = 0; j < 6; ++j) {
      const double s = (eu[i] * (*ei)[j]).sum().item<double>() - logq[static_cast<size_t>(j)];
      if (j == i) {
        pos = s;
        logits.push_back(s);
      } else if (ids[static_cast<size_t>(j)] != ids[static_cast<size_t>(i)]) {
        logits.push_back(s);
      }
    }
    double mx = -1e300, sum = 0;
    for (double l : logits) mx = std::max(mx, l);
    for (double l : logits) sum += std::exp(l - mx);
    expected += -(pos - mx - std::log(sum));
  }
  expected /= 3;
  EXPECT_NEAR(out->tower_loss.item<double>(), expected, 1e-5);
  EXPECT_EQ(out->diffusion_loss.item<double>(), 0.0);
}

// Learning smoke test: histories are runs of consecutive items (mod 20), the target is the next
// item. Every kind must halve its training loss with a fixed seed.
double TrainChain(const ModelConfig& c, int steps, double* first) {
  const ModelDims d = Dims(4, 2, 3);
  auto model = MakeModel(c, d);
  const int64_t items = 20, tags = 4, n = 6, bsz = 32;
  Rows rows = MakeRows(items, tags, d, 2);
  DenseAdamOptions ao;
  ao.learning_rate = 0.01f;
  ao.clip_norm = 5.f;
  DenseAdam dense(model->DenseParameters().size(), ao);
  DenseAdam id_opt(static_cast<size_t>(rows.id_rows.numel()), ao), tag_opt(static_cast<size_t>(rows.tag_rows.numel()), ao);
  std::mt19937_64 rng(4);
  const Candidates cands = AllItems(items, tags, true);
  double head = 0, tail = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<std::vector<int64_t>> hist;
    std::vector<int64_t> targets;
    for (int64_t b = 0; b < bsz; ++b) {
      const int64_t start = static_cast<int64_t>(rng() % items), len = 3 + static_cast<int64_t>(rng() % 4);
      std::vector<int64_t> h;
      for (int64_t j = 0; j < len; ++j) h.push_back((start + j) % items);
      hist.push_back(h);
      targets.push_back((start + len) % items);
    }
    Batch batch = MakeBatch(hist, targets, n, tags, true);
    model->ZeroGradients();
    if (rows.id_rows.grad().defined()) rows.id_rows.mutable_grad().zero_();
    if (rows.tag_rows.grad().defined()) rows.tag_rows.mutable_grad().zero_();
    auto losses = model->ForwardBackward(batch, rows, cands, static_cast<uint64_t>(step));
    EXPECT_TRUE(losses.ok()) << losses.status();
    if (!losses.ok()) return 1e9;
    if (step < 10) head += losses->total / 10;
    if (step >= steps - 10) tail += losses->total / 10;
    dense.Step(model->DenseParameters(), model->DenseGradients());
    at::NoGradGuard no_grad;
    id_opt.Step(absl::Span<float>(rows.id_rows.data_ptr<float>(), static_cast<size_t>(rows.id_rows.numel())),
                absl::Span<const float>(rows.id_rows.grad().data_ptr<float>(), static_cast<size_t>(rows.id_rows.numel())));
    tag_opt.Step(absl::Span<float>(rows.tag_rows.data_ptr<float>(), static_cast<size_t>(rows.tag_rows.numel())),
                 absl::Span<const float>(rows.tag_rows.grad().data_ptr<float>(), static_cast<size_t>(rows.tag_rows.numel())));
  }
  *first = head;
  return tail;
}

TEST(ModelTest, EveryKindHalvesItsLossOnASyntheticProblem) {
  std::vector<ModelConfig> configs;
  for (auto kind : kAllKinds) configs.push_back(Config(kind));
  ModelConfig sampled = Config(ModelConfig::T2DIFF);
  sampled.set_loss(ModelConfig::SAMPLED_SOFTMAX);
  sampled.set_logq_correction(false);
  ModelConfig variants = Config(ModelConfig::T2DIFF);
  variants.set_diffusion_loss(ModelConfig::NORM);
  variants.set_user_vector(ModelConfig::CONCAT);
  variants.set_schedule(ModelConfig::LINEAR);
  for (const ModelConfig& c : configs) {
    SCOPED_TRACE(ModelConfig::Kind_Name(c.kind()));
    double first = 0;
    const double last = TrainChain(c, 150, &first);
    EXPECT_LE(last, 0.5 * first) << "first " << first << " last " << last;
  }
  double first = 0;
  double last = TrainChain(variants, 150, &first);
  EXPECT_LE(last, 0.5 * first) << "variants: first " << first << " last " << last;
}

TEST(ModelTest, FusedOpsMatchReference) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (int64_t c : {1, 4, 37}) {
    const at::Tensor y0 = at::randn({3, 5, c}, gen, at::kFloat) * 2;
    const at::Tensor g0 = at::randn({c}, gen, at::kFloat), b0 = at::randn({c}, gen, at::kFloat);
    const at::Tensor mask = (at::rand({3, 5, 1}, gen, at::kFloat) > 0.3).to(at::kFloat);
    const at::Tensor dout = at::randn({3, 5, c}, gen, at::kFloat);
    at::Tensor y1 = y0.clone().requires_grad_(true), g1 = g0.clone().requires_grad_(true), b1 = b0.clone().requires_grad_(true);
    at::Tensor y2 = y0.clone().requires_grad_(true), g2 = g0.clone().requires_grad_(true), b2 = b0.clone().requires_grad_(true);
    const at::Tensor fused = SwishNormMask(y1, g1, b1, mask);
    const at::Tensor ref = at::layer_norm(at::silu(y2), {c}, g2, b2, 1e-5, false) * mask;
    ExpectClose(fused, ref, 1e-5, "swish-norm forward");
    (fused * dout).sum().backward();
    (ref * dout).sum().backward();
    ExpectClose(y1.grad(), y2.grad(), 1e-4, "swish-norm dy");
    ExpectClose(g1.grad(), g2.grad(), 1e-4, "swish-norm dgamma");
    ExpectClose(b1.grad(), b2.grad(), 1e-4, "swish-norm dbeta");

    at::Tensor y3 = y0.clone().requires_grad_(true), g3 = g0.clone().requires_grad_(true), b3 = b0.clone().requires_grad_(true);
    at::Tensor y4 = y0.clone().requires_grad_(true), g4 = g0.clone().requires_grad_(true), b4 = b0.clone().requires_grad_(true);
    const at::Tensor ln = LayerNormLastDim(y3, g3, b3);
    const at::Tensor ln_ref = at::layer_norm(y4, {c}, g4, b4, 1e-5, false);
    ExpectClose(ln, ln_ref, 1e-5, "layer norm forward");
    (ln * dout).sum().backward();
    (ln_ref * dout).sum().backward();
    ExpectClose(y3.grad(), y4.grad(), 1e-4, "layer norm dy");
    ExpectClose(g3.grad(), g4.grad(), 1e-4, "layer norm dgamma");
    ExpectClose(b3.grad(), b4.grad(), 1e-4, "layer norm dbeta");
  }
  const at::Tensor l0 = at::randn({6, 9}, gen, at::kFloat) * 3;
  const at::Tensor labels = at::tensor(std::vector<int64_t>{0, 8, 3, 3, 1, 5});
  at::Tensor l1 = l0.clone().requires_grad_(true), l2 = l0.clone().requires_grad_(true);
  const at::Tensor fused = SoftmaxCrossEntropy(l1, labels);
  const at::Tensor ref = at::cross_entropy_loss(l2, labels);
  ExpectClose(fused, ref, 1e-5, "xent forward");
  (fused * 1.7).backward();
  (ref * 1.7).backward();
  ExpectClose(l1.grad(), l2.grad(), 1e-6, "xent grad");

  // GatherItems against index_select + embedding_bag(mean) + padding mask.
  {
    const at::Tensor ids0 = at::randn({5, 2}, gen, at::kFloat), tags0 = at::randn({3, 3}, gen, at::kFloat);
    const at::Tensor idx = at::tensor(std::vector<int64_t>{4, -1, 0, 4, 2});
    const at::Tensor off = at::tensor(std::vector<int64_t>{0, 2, 2, 3, 3, 6});
    const at::Tensor tix = at::tensor(std::vector<int64_t>{0, 2, 1, 2, 2, 0});
    at::Tensor a1 = ids0.clone().requires_grad_(true), t1 = tags0.clone().requires_grad_(true);
    at::Tensor a2 = ids0.clone().requires_grad_(true), t2 = tags0.clone().requires_grad_(true);
    const at::Tensor gathered = GatherItems(a1, t1, idx, off, tix);
    const at::Tensor mask = (idx >= 0).to(at::kFloat).unsqueeze(1);
    const at::Tensor expected = at::cat({at::index_select(a2, 0, idx.clamp_min(0)) * mask,
                                    std::get<0>(at::embedding_bag(t2, tix, off, false, 1, false, c10::nullopt, true))},
                                   1);
    ExpectClose(gathered, expected, 1e-6, "gather forward");
    const at::Tensor w = at::randn({5, 5}, gen, at::kFloat);
    (gathered * w).sum().backward();
    (expected * w).sum().backward();
    ExpectClose(a1.grad(), a2.grad(), 1e-6, "gather d id rows");
    ExpectClose(t1.grad(), t2.grad(), 1e-6, "gather d tag rows");
    // No slot has a tag (a batch or a query of untagged items): tag rows [0, 3] still give 3
    // zero tag columns (the width used to be taken from numel, giving a [5, 2] output that the
    // next layer refused), and a [0, 3] gradient.
    at::Tensor none = at::empty({0, 3}, at::kFloat).requires_grad_(true);
    const at::Tensor untagged = GatherItems(a1, none, idx, at::zeros({6}, at::kLong), at::empty({0}, at::kLong));
    ASSERT_EQ(untagged.sizes(), (std::vector<int64_t>{5, 5}));
    ExpectClose(untagged.narrow(1, 2, 3), at::zeros({5, 3}), 0, "untagged gather");
    untagged.sum().backward();
    ASSERT_EQ(none.grad().sizes(), (std::vector<int64_t>{0, 3}));
  }

  // Conv3Columns against pad + shifted slices.
  {
    const at::Tensor h0 = at::randn({2, 5, 3}, gen, at::kFloat);
    at::Tensor h1 = h0.clone().requires_grad_(true), h2 = h0.clone().requires_grad_(true);
    const at::Tensor cols = Conv3Columns(h1);
    const at::Tensor hp = at::constant_pad_nd(h2, {0, 0, 1, 1});
    const at::Tensor want = at::cat({hp.narrow(1, 0, 5), hp.narrow(1, 1, 5), hp.narrow(1, 2, 5)}, 2);
    ExpectClose(cols, want, 0, "conv columns");
    const at::Tensor w = at::randn({2, 5, 9}, gen, at::kFloat);
    (cols * w).sum().backward();
    (want * w).sum().backward();
    ExpectClose(h1.grad(), h2.grad(), 1e-6, "conv columns grad");
  }

  // UpsampleConcatColumns against upsample + mask + cat + Conv3Columns.
  {
    const at::Tensor low0 = at::randn({2, 3, 2}, gen, at::kFloat), skip0 = at::randn({2, 6, 2}, gen, at::kFloat);
    const at::Tensor mk = at::tensor(std::vector<float>{0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1}).view({2, 6, 1});
    at::Tensor lo1 = low0.clone().requires_grad_(true), sk1 = skip0.clone().requires_grad_(true);
    at::Tensor lo2 = low0.clone().requires_grad_(true), sk2 = skip0.clone().requires_grad_(true);
    const at::Tensor cols = UpsampleConcatColumns(lo1, sk1, mk);
    const at::Tensor up = lo2.unsqueeze(2).expand({2, 3, 2, 2}).reshape({2, 6, 2}) * mk;
    const at::Tensor want = Conv3Columns(at::cat({up, sk2}, 2));
    ExpectClose(cols, want, 0, "up columns");
    const at::Tensor w = at::randn({2, 6, 12}, gen, at::kFloat);
    (cols * w).sum().backward();
    (want * w).sum().backward();
    ExpectClose(lo1.grad(), lo2.grad(), 1e-6, "up columns d low");
    ExpectClose(sk1.grad(), sk2.grad(), 1e-6, "up columns d skip");
  }

  // PoolConv3Columns against max-pool + Conv3Columns.
  {
    at::Tensor h0 = at::randn({2, 6, 3}, gen, at::kFloat);
    h0[0][1][2] = h0[0][0][2].item<float>();  // a tie goes to the first element
    at::Tensor p1 = h0.clone().requires_grad_(true), p2 = h0.clone().requires_grad_(true);
    const at::Tensor cols = PoolConv3Columns(p1);
    const at::Tensor want = Conv3Columns(std::get<0>(p2.view({2, 3, 2, 3}).max(2)));
    ExpectClose(cols, want, 0, "pool columns");
    const at::Tensor w = at::randn({2, 3, 9}, gen, at::kFloat);
    (cols * w).sum().backward();
    (want * w).sum().backward();
    ExpectClose(p1.grad(), p2.grad(), 1e-6, "pool columns grad");
  }

  // Attention against the stock ops (permute, matmul, softmax, matmul), with masked keys, a
  // query that allows only itself, one and two heads, t = 1, 11 and 50.
  for (const auto& [t, heads] : std::vector<std::pair<int64_t, int64_t>>{{1, 2}, {11, 2}, {11, 1}, {50, 2}}) {
    SCOPED_TRACE("attention t = " + std::to_string(t) + ", heads " + std::to_string(heads));
    const int64_t b = 3, d = 4, dh = d / heads;
    const at::Tensor x0 = at::randn({b, t, 3 * d}, gen, at::kFloat) * 2;
    at::Tensor bias = at::zeros({b, 1, t, t}, at::kFloat);
    if (t > 1) {
      bias[0][0].narrow(1, 0, t / 2).fill_(-1e30f);  // sample 0: the older half of the keys is forbidden
      bias[0][0].narrow(0, 0, t / 2).fill_(-1e30f);
      for (int64_t q = 0; q < t / 2; ++q) bias[0][0][q][q] = 0.f;  // ... and its padded queries attend to themselves
      bias[2][0] = at::triu(at::full({t, t}, -1e30f), 1);  // sample 2: causal
    }
    at::Tensor x1 = x0.clone().requires_grad_(true), x2 = x0.clone().requires_grad_(true);
    const at::Tensor got = Attention(x1, bias, heads);
    const at::Tensor qkv = x2.view({b, t, 3, heads, dh}).permute({2, 0, 3, 1, 4});
    const at::Tensor q = qkv.select(0, 0) * (1.0 / std::sqrt(static_cast<double>(dh)));
    const at::Tensor p = at::softmax(at::matmul(q, qkv.select(0, 1).transpose(-2, -1)) + bias, -1);
    const at::Tensor want = at::matmul(p, qkv.select(0, 2)).transpose(1, 2).reshape({b, t, d});
    ExpectClose(got, want, 1e-5, "attention forward");
    const at::Tensor w = at::randn({b, t, d}, gen, at::kFloat);
    (got * w).sum().backward();
    (want * w).sum().backward();
    ExpectClose(x1.grad(), x2.grad(), 1e-5, "attention d qkv");
    at::NoGradGuard no_grad;
    ExpectClose(Attention(x0, bias, heads), got, 0, "attention without grad");
  }
  {
    // By hand: t = 2, one head of width 1 (scale 1), q = (0, 1), k = (1, ln 3), v = (2, 6):
    // query 0 scores (0, 0) -> p = (1/2, 1/2), out 4; query 1 scores (1, ln 3) -> p proportional
    // to (e, 3), out (2e + 18) / (e + 3). Key 1 forbidden for query 0: out 2.
    const float l3 = std::log(3.f), e1 = std::exp(1.f);
    const at::Tensor x = at::tensor(std::vector<float>{0.f, 1.f, 2.f, 1.f, l3, 6.f}).view({1, 2, 3});
    ExpectClose(Attention(x, at::zeros({1, 1, 2, 2}), 1).view({2}),
                at::tensor(std::vector<float>{4.f, (2 * e1 + 18) / (e1 + 3)}), 1e-6, "attention by hand");
    const at::Tensor masked = at::tensor(std::vector<float>{0.f, -1e30f, 0.f, 0.f}).view({1, 1, 2, 2});
    EXPECT_EQ(Attention(x, masked, 1)[0][0][0].item<float>(), 2.f);
    EXPECT_THROW(Attention(x, masked, 2), c10::Error);  // 2 heads do not divide d = 1
    // A NaN in a query or key reaches the output (the loss's finiteness check must see it).
    at::Tensor bad = x.clone();
    bad[0][1][1] = std::numeric_limits<float>::quiet_NaN();  // key 1
    const at::Tensor out = Attention(bad, at::zeros({1, 1, 2, 2}), 1);
    EXPECT_TRUE(std::isnan(out[0][0][0].item<float>()));
    EXPECT_TRUE(std::isnan(out[0][1][0].item<float>()));
  }

  // Elu against at::elu, over every branch: large negative, |x| < 0.5 (the polynomial), the
  // boundary, positive; 1003 elements (a partial last vector).
  {
    at::Tensor x0 = at::randn({1003}, gen, at::kFloat) * 3;
    x0[0] = -200.f;
    x0[1] = 0.f;
    x0[2] = -0.5f;
    x0[3] = 0.5f;
    x0[4] = -1e-6f;
    at::Tensor x1 = x0.clone().requires_grad_(true), x2 = x0.clone().requires_grad_(true);
    const at::Tensor y = Elu(x1), want = at::elu(x2);
    ExpectClose(y, want, 1e-6, "elu forward");
    // Relative accuracy near 0, where exp(x) - 1 would keep only a few bits.
    EXPECT_NEAR(y[4].item<float>(), -1e-6f, 1e-12);
    EXPECT_EQ(y[0].item<float>(), -1.f);
    EXPECT_NEAR(Elu(at::tensor(std::vector<float>{-std::log(2.f)}))[0].item<float>(), -0.5f, 1e-7);
    EXPECT_TRUE(std::isnan(Elu(at::tensor(std::vector<float>{std::numeric_limits<float>::quiet_NaN()}))[0].item<float>()));
    const at::Tensor w = at::randn({1003}, gen, at::kFloat);
    (y * w).sum().backward();
    (want * w).sum().backward();
    ExpectClose(x1.grad(), x2.grad(), 1e-6, "elu grad");
  }

  // SoftmaxLoss with a bias row and excluded entries.
  const at::Tensor u0 = at::randn({4, 3}, gen, at::kFloat), i0 = at::randn({7, 3}, gen, at::kFloat);
  const at::Tensor bias = at::randn({7}, gen, at::kFloat);
  at::Tensor exclude = at::zeros({4, 7}, at::kBool);
  exclude[0][3] = true;
  exclude[2][6] = true;
  const at::Tensor lab = at::tensor(std::vector<int64_t>{0, 1, 2, 3});
  at::Tensor u1 = u0.clone().requires_grad_(true), i1 = i0.clone().requires_grad_(true);
  at::Tensor u2 = u0.clone().requires_grad_(true), i2 = i0.clone().requires_grad_(true);
  const at::Tensor f = SoftmaxLoss(u1, i1, lab, bias, exclude);
  const at::Tensor r = at::cross_entropy_loss((at::mm(u2, i2.t()) - bias).masked_fill(exclude, -1e30), lab);
  ExpectClose(f, r, 1e-5, "softmax loss forward");
  f.backward();
  r.backward();
  ExpectClose(u1.grad(), u2.grad(), 1e-5, "softmax loss d users");
  ExpectClose(i1.grad(), i2.grad(), 1e-5, "softmax loss d items");

  // Blocked (E <= 32): several row chunks, a last block of fewer than 4 rows, items not a
  // multiple of 8 (and 300 of them: more than one block of the gradient products, and the
  // column loops' wide and narrow steps), a scaled upstream gradient, and the same loss without
  // grad; and E = 40, which takes the B x N matrix path.
  for (const auto& [e, n] : std::vector<std::pair<int64_t, int64_t>>{{5, 23}, {5, 300}, {40, 23}}) {
    SCOPED_TRACE("E = " + std::to_string(e) + ", items " + std::to_string(n));
    const int64_t b = 37;
    const at::Tensor u = at::randn({b, e}, gen, at::kFloat), items = at::randn({n, e}, gen, at::kFloat);
    const at::Tensor targets = at::randint(0, n, {b}, gen, at::kLong);
    at::Tensor ua = u.clone().requires_grad_(true), ia = items.clone().requires_grad_(true);
    at::Tensor ub = u.clone().requires_grad_(true), ib = items.clone().requires_grad_(true);
    const at::Tensor fa = SoftmaxLoss(ua, ia, targets, at::Tensor(), at::Tensor());
    const at::Tensor fb = at::cross_entropy_loss(at::mm(ub, ib.t()), targets);
    ExpectClose(fa, fb, 1e-5, "blocked softmax loss");
    (fa * 3).backward();
    (fb * 3).backward();
    ExpectClose(ua.grad(), ub.grad(), 1e-5, "blocked d users");
    ExpectClose(ia.grad(), ib.grad(), 1e-5, "blocked d items");
    at::NoGradGuard no_grad;
    EXPECT_NEAR(SoftmaxLoss(u, items, targets, at::Tensor(), at::Tensor()).item<float>(), fa.item<float>(), 1e-6);
  }
}

TEST(ModelTest, ForwardBackwardAccumulatesIntoFlatGradients) {
  auto model = MakeModel(Config(ModelConfig::T2DIFF), Dims());
  Problem p = RandomProblem(4, 6, 10, Dims(), 1);
  model->ZeroGradients();
  ASSERT_TRUE(model->ForwardBackward(p.batch, p.rows, p.candidates, 1).ok());
  std::vector<float> once(model->DenseGradients().begin(), model->DenseGradients().end());
  double norm = 0;
  for (float g : once) norm += g * g;
  EXPECT_GT(norm, 0);
  Problem q = RandomProblem(4, 6, 10, Dims(), 1);
  ASSERT_TRUE(model->ForwardBackward(q.batch, q.rows, q.candidates, 1).ok());
  const auto twice = model->DenseGradients();
  for (size_t i = 0; i < once.size(); ++i) ASSERT_NEAR(twice[i], 2 * once[i], 1e-5 + 1e-4 * std::fabs(once[i]));
  model->ZeroGradients();
  for (float g : model->DenseGradients()) ASSERT_EQ(g, 0.f);
  // Parameter tensors view the flat buffer.
  const ParameterInfo& p0 = model->Parameters()[0];
  model->DenseParameters()[static_cast<size_t>(p0.offset)] = 42.f;
  EXPECT_EQ(model->ParameterTensor(0).flatten()[0].item<float>(), 42.f);
}

// parallel_branches: the diffusion loss's backward on a second thread gives the single-threaded
// step's losses and gradients bit for bit (dense and row gradients), also with the consistency
// options that reach into the diffusion branch; an error in the batch is still reported.
TEST(ModelTest, ParallelBranchesGiveTheSameGradients) {
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  ModelConfig generated = Config(ModelConfig::T2DIFF);
  generated.set_train_generated_token_fraction(0.5f);
  generated.set_guidance_drop_fraction(0.3f);
  ModelConfig two_levels = Config(ModelConfig::T2DIFF);
  two_levels.set_unet_levels(2);
  // Batch and length: one kernel chunk of 16 sequences, or several (the pass's chunks shared
  // between the threads) at lengths that cut the levels into several vectors.
  struct Shape {
    int64_t batch, n;
  };
  const std::vector<std::pair<ModelConfig, Shape>> runs = {
      {Config(ModelConfig::T2DIFF), {16, 8}},  {Config(ModelConfig::T2DIFF_NO_DRIFT), {16, 8}}, {generated, {16, 8}},
      {Config(ModelConfig::T2DIFF), {70, 37}}, {two_levels, {45, 50}}};
  for (const auto& [config, shape] : runs) {
    SCOPED_TRACE(config.ShortDebugString() + " batch " + std::to_string(shape.batch) + " n " + std::to_string(shape.n));
    std::vector<std::vector<float>> dense;
    std::vector<at::Tensor> row_grads;
    std::vector<Model::Losses> losses;
    for (bool parallel : {false, true}) {
      auto model = MakeModel(config, Dims());
      Problem p = RandomProblem(shape.batch, shape.n, 30, Dims(), 5);
      model->ZeroGradients();
      auto l = model->ForwardBackward(p.batch, p.rows, p.candidates, 7, parallel);
      ASSERT_TRUE(l.ok()) << l.status();
      losses.push_back(*l);
      dense.emplace_back(model->DenseGradients().begin(), model->DenseGradients().end());
      ASSERT_TRUE(p.rows.id_rows.grad().defined());
      row_grads.push_back(p.rows.id_rows.grad().clone());
    }
    EXPECT_EQ(losses[0].total, losses[1].total);
    EXPECT_EQ(losses[0].diffusion, losses[1].diffusion);
    EXPECT_GT(losses[1].diffusion, 0);
    ASSERT_EQ(dense[0].size(), dense[1].size());
    EXPECT_EQ(std::memcmp(dense[0].data(), dense[1].data(), dense[0].size() * sizeof(float)), 0);
    EXPECT_TRUE(at::equal(row_grads[0], row_grads[1]));
  }
  // A bad batch: the error, and no thread left running.
  auto model = MakeModel(Config(ModelConfig::T2DIFF), Dims());
  Problem bad = RandomProblem(4, 6, 10, Dims(), 1);
  bad.batch.target_candidates[0] = 999;
  EXPECT_FALSE(model->ForwardBackward(bad.batch, bad.rows, bad.candidates, 1, true).ok());
  at::set_num_threads(threads);
}

// The registry lays parameters out in registration order, draws initial values in that order
// from one seed, and hands out leaf views whose gradients are views of the gradient buffer.
TEST(ParameterRegistryTest, LaysOutInitialisesAndViewsInRegistrationOrder) {
  auto build = [](uint64_t seed, std::vector<ParameterRef>* refs) {
    auto reg = std::make_unique<ParameterRegistry>();
    refs->push_back(reg->Add("a.weight", {3, 4}, Init::kUniformFanIn, 4, false));
    refs->push_back(reg->Add("a.gain", {3}, Init::kOnes, 0, true));
    refs->push_back(reg->Add("a.bias", {3}, Init::kZeros, 0, true));
    refs->push_back(reg->Add("emb", {50, 2}, Init::kNormal, 0.1, false));
    reg->Allocate(seed);
    return reg;
  };
  std::vector<ParameterRef> refs;
  auto reg = build(7, &refs);
  const std::vector<ParameterInfo>& infos = reg->infos();
  ASSERT_EQ(infos.size(), 4u);
  EXPECT_EQ(infos[1].name, "a.gain");
  EXPECT_EQ(infos[3].offset, 18);
  EXPECT_EQ(infos[3].numel, 100);
  EXPECT_TRUE(infos[2].diffusion);
  EXPECT_FALSE(infos[3].diffusion);
  EXPECT_EQ(reg->values().numel(), 118);
  EXPECT_LE(MaxAbs(refs[0].tensor()), 0.5);
  EXPECT_EQ(refs[1].tensor().sum().item<float>(), 3.f);
  EXPECT_EQ(MaxAbs(refs[2].tensor()), 0.0);
  const double sd = refs[3].tensor().std().item<double>();
  EXPECT_GT(sd, 0.07);
  EXPECT_LT(sd, 0.13);
  for (size_t i = 0; i < infos.size(); ++i) {
    const at::Tensor& t = reg->tensor(i);
    EXPECT_TRUE(t.is_leaf() && t.requires_grad()) << infos[i].name;
    EXPECT_EQ(t.data_ptr<float>(), reg->values().data_ptr<float>() + infos[i].offset) << infos[i].name;
    EXPECT_EQ(t.grad().data_ptr<float>(), reg->gradients().data_ptr<float>() + infos[i].offset) << infos[i].name;
  }
  // The same seed gives the same values; another seed other values.
  std::vector<ParameterRef> refs2, refs3;
  EXPECT_TRUE(build(7, &refs2)->values().equal(reg->values()));
  EXPECT_FALSE(build(8, &refs3)->values().equal(reg->values()));
}

// A user feature (model.user_id_table): e_u gains W_user e_user, the projection registered after
// every other parameter, so the rest of the model is the one without the feature, value for
// value. Checked for every kind against a hand-computed product, with the row gradients (only
// the rows a sample names get one) and the errors of a batch that does not fit the feature.
TEST(ModelTest, UserFeatureAddsTheProjectedUserRow) {
  ModelDims with = Dims();
  with.user_dim = 3;
  for (ModelConfig::Kind kind : kAllKinds) {
    SCOPED_TRACE(ModelConfig::Kind_Name(kind));
    auto plain = MakeModel(Config(kind), Dims());
    auto user = MakeModel(Config(kind), with);
    ASSERT_TRUE(plain && user);
    const auto& infos = user->Parameters();
    ASSERT_EQ(infos.size(), plain->Parameters().size() + 1);
    EXPECT_EQ(infos.back().name, "user_feature.linear.weight");
    const int64_t e = user->output_dim();
    ASSERT_EQ(infos.back().shape, (std::vector<int64_t>{e, 3}));
    for (size_t i = 0; i + 1 < infos.size(); ++i) {
      ASSERT_TRUE(user->ParameterTensor(i).equal(plain->ParameterTensor(i))) << infos[i].name;
    }
    Problem p = RandomProblem(4, 5, 10, Dims(), 3);
    Batch b = p.batch;
    b.user_rows = {2, 0, 2, 1};
    Rows rows = p.rows;
    const std::vector<float> u = {0.5f, -1.f, 2.f, 0.f, 0.25f, -0.5f, 1.5f, 1.f, -2.f, 3.f, 3.f, 3.f};  // row 3: unused
    rows.user_rows = at::tensor(u, at::kFloat).view({4, 3}).clone().requires_grad_(true);
    InferenceOptions io;
    io.seed = 7;
    auto got = user->UserVectors(b, rows, io);
    auto base = plain->UserVectors(p.batch, p.rows, io);
    ASSERT_TRUE(got.ok() && base.ok()) << got.status() << base.status();
    const at::Tensor w = user->ParameterTensor(infos.size() - 1).contiguous();
    const float* wp = w.data_ptr<float>();
    for (int64_t s = 0; s < 4; ++s) {
      for (int64_t j = 0; j < e; ++j) {
        double want = (*base)[s][j].item<double>();
        for (int64_t c = 0; c < 3; ++c) want += wp[j * 3 + c] * u[static_cast<size_t>(b.user_rows[static_cast<size_t>(s)] * 3 + c)];
        EXPECT_NEAR((*got)[s][j].item<double>(), want, 1e-5) << "sample " << s << " dim " << j;
      }
    }
    // Training: the tower loss reaches the named user rows, not the unused one.
    user->ZeroGradients();
    ASSERT_TRUE(user->ForwardBackward(b, rows, p.candidates, 1).ok());
    ASSERT_TRUE(rows.user_rows.grad().defined());
    for (int64_t r = 0; r < 3; ++r) EXPECT_GT(rows.user_rows.grad()[r].abs().sum().item<double>(), 0) << "row " << r;
    EXPECT_EQ(rows.user_rows.grad()[3].abs().sum().item<double>(), 0);
    // Batches that do not fit.
    auto error_of = [&](const Model& m, const Batch& batch, const Rows& r) {
      auto out = m.UserVectors(batch, r, io);
      EXPECT_FALSE(out.ok());
      return out.ok() ? std::string() : std::string(out.status().message());
    };
    EXPECT_NE(error_of(*user, p.batch, rows).find("batch.user_rows has 0 entries, expected 4"), std::string::npos);
    Batch far = b;
    far.user_rows[1] = 4;
    EXPECT_NE(error_of(*user, far, rows).find("batch.user_rows[1] = 4 is outside [0, 4)"), std::string::npos);
    EXPECT_NE(error_of(*user, b, p.rows).find("rows.user_rows must be a float [U_user, 3] tensor"), std::string::npos);
    EXPECT_NE(error_of(*plain, b, p.rows).find("the model has no user feature"), std::string::npos);
  }
}

// User profile fields (model.user_feature_table): e_u gains W_feat p, p the F = 2 value rows side
// by side with a zero vector for a missing value (row -1), the projection registered after every
// other parameter. Checked for every kind against a hand-computed product; the tower loss
// reaches the named value rows and W_feat, and a field missing in every sample leaves W_feat's
// columns of that field without gradient. With a user-id table too, the profile projection
// comes after the user-id one.
TEST(ModelTest, UserProfileFieldsAddTheProjectedValueRows) {
  constexpr int64_t kF = 2, kDf = 2;
  ModelDims with = Dims();
  with.user_feature_dim = kDf;
  with.user_fields = kF;
  for (ModelConfig::Kind kind : kAllKinds) {
    SCOPED_TRACE(ModelConfig::Kind_Name(kind));
    auto plain = MakeModel(Config(kind), Dims());
    auto profiled = MakeModel(Config(kind), with);
    ASSERT_TRUE(plain && profiled);
    const auto& infos = profiled->Parameters();
    ASSERT_EQ(infos.size(), plain->Parameters().size() + 1);
    EXPECT_EQ(infos.back().name, "user_profile.linear.weight");
    const int64_t e = profiled->output_dim();
    ASSERT_EQ(infos.back().shape, (std::vector<int64_t>{e, kF * kDf}));
    for (size_t i = 0; i + 1 < infos.size(); ++i) {
      ASSERT_TRUE(profiled->ParameterTensor(i).equal(plain->ParameterTensor(i))) << infos[i].name;
    }
    Problem p = RandomProblem(4, 5, 10, Dims(), 3);
    Batch b = p.batch;
    // Sample 1 has no value for field 0, sample 2 none for field 1, sample 3 none at all.
    b.user_feature_rows = {0, 2, -1, 1, 2, -1, -1, -1};
    Rows rows = p.rows;
    const std::vector<float> v = {0.5f, -1.f, 2.f, 0.25f, -1.5f, 1.f, 3.f, 3.f};  // row 3: unused
    rows.user_feature_rows = at::tensor(v, at::kFloat).view({4, kDf}).clone().requires_grad_(true);
    InferenceOptions io;
    io.seed = 7;
    auto got = profiled->UserVectors(b, rows, io);
    auto base = plain->UserVectors(p.batch, p.rows, io);
    ASSERT_TRUE(got.ok() && base.ok()) << got.status() << base.status();
    const at::Tensor w = profiled->ParameterTensor(infos.size() - 1).contiguous();
    const float* wp = w.data_ptr<float>();
    for (int64_t s = 0; s < 4; ++s) {
      // p by hand: [F * D_f], zeros for a missing value.
      std::vector<double> pv(kF * kDf, 0.0);
      for (int64_t f = 0; f < kF; ++f) {
        const int64_t r = b.user_feature_rows[static_cast<size_t>(s * kF + f)];
        for (int64_t c = 0; r >= 0 && c < kDf; ++c) pv[static_cast<size_t>(f * kDf + c)] = v[static_cast<size_t>(r * kDf + c)];
      }
      for (int64_t j = 0; j < e; ++j) {
        double want = (*base)[s][j].item<double>();
        for (int64_t c = 0; c < kF * kDf; ++c) want += wp[j * kF * kDf + c] * pv[static_cast<size_t>(c)];
        EXPECT_NEAR((*got)[s][j].item<double>(), want, 1e-5) << "sample " << s << " dim " << j;
      }
    }
    // A sample without any value gets e_u unchanged.
    for (int64_t j = 0; j < e; ++j) EXPECT_EQ((*got)[3][j].item<float>(), (*base)[3][j].item<float>());

    // Training: the tower loss reaches the named value rows and W_feat, not the unused row.
    profiled->ZeroGradients();
    ASSERT_TRUE(profiled->ForwardBackward(b, rows, p.candidates, 1).ok());
    ASSERT_TRUE(rows.user_feature_rows.grad().defined());
    for (int64_t r = 0; r < 3; ++r) {
      EXPECT_GT(rows.user_feature_rows.grad()[r].abs().sum().item<double>(), 0) << "row " << r;
    }
    EXPECT_EQ(rows.user_feature_rows.grad()[3].abs().sum().item<double>(), 0);
    const ParameterInfo& wi = infos.back();
    auto w_grad = [&](int64_t j, int64_t c) {
      return profiled->DenseGradients()[static_cast<size_t>(wi.offset + j * kF * kDf + c)];
    };
    double field0 = 0, field1 = 0;
    for (int64_t j = 0; j < e; ++j) {
      for (int64_t c = 0; c < kDf; ++c) {
        field0 += std::abs(w_grad(j, c));
        field1 += std::abs(w_grad(j, kDf + c));
      }
    }
    EXPECT_GT(field0, 0);
    EXPECT_GT(field1, 0);
    // Field 1 missing in every sample: its slot of p is zero, so are W_feat's columns for it.
    Batch missing = b;
    missing.user_feature_rows = {0, -1, 2, -1, 1, -1, -1, -1};
    Rows fresh = p.rows;
    fresh.user_feature_rows = at::tensor(v, at::kFloat).view({4, kDf}).clone().requires_grad_(true);
    profiled->ZeroGradients();
    ASSERT_TRUE(profiled->ForwardBackward(missing, fresh, p.candidates, 1).ok());
    field0 = field1 = 0;
    for (int64_t j = 0; j < e; ++j) {
      for (int64_t c = 0; c < kDf; ++c) {
        field0 += std::abs(w_grad(j, c));
        field1 += std::abs(w_grad(j, kDf + c));
      }
    }
    EXPECT_GT(field0, 0);
    EXPECT_EQ(field1, 0);
    EXPECT_EQ(fresh.user_feature_rows.grad()[3].abs().sum().item<double>(), 0);

    // Batches that do not fit.
    auto error_of = [&](const Model& m, const Batch& batch, const Rows& r) {
      auto out = m.UserVectors(batch, r, io);
      EXPECT_FALSE(out.ok());
      return out.ok() ? std::string() : std::string(out.status().message());
    };
    EXPECT_NE(error_of(*profiled, p.batch, rows).find("batch.user_feature_rows has 0 entries, expected 4 samples x 2"),
              std::string::npos);
    Batch far = b;
    far.user_feature_rows[5] = 4;
    EXPECT_NE(error_of(*profiled, far, rows).find("batch.user_feature_rows[5] = 4 is outside [-1, 4)"), std::string::npos);
    far.user_feature_rows[5] = -2;
    EXPECT_NE(error_of(*profiled, far, rows).find("batch.user_feature_rows[5] = -2"), std::string::npos);
    EXPECT_NE(error_of(*profiled, b, p.rows).find("rows.user_feature_rows must be a float [U_f, 2] tensor"),
              std::string::npos);
    EXPECT_NE(error_of(*plain, b, p.rows).find("the model has no profile fields"), std::string::npos);
  }
  // With a user-id table too: W_user, then W_feat, after everything else.
  ModelDims both = with;
  both.user_dim = 3;
  auto model = MakeModel(Config(ModelConfig::T2DIFF), both);
  ASSERT_TRUE(model);
  const auto& infos = model->Parameters();
  ASSERT_GE(infos.size(), 2u);
  EXPECT_EQ(infos[infos.size() - 2].name, "user_feature.linear.weight");
  EXPECT_EQ(infos.back().name, "user_profile.linear.weight");
  // Profile dims must come in pairs.
  ModelDims half = Dims();
  half.user_feature_dim = 2;
  auto bad = Model::Create(Config(ModelConfig::T2DIFF), half);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("model.user_feature_table"), std::string::npos) << bad.status();
}

TEST(ModelTest, RejectsBadInputs) {
  const ModelDims d = Dims();
  auto model = MakeModel(Config(ModelConfig::T2DIFF), d);
  Problem p = RandomProblem(3, 5, 10, d, 1);
  auto expect_error = [&](const Batch& b, const Candidates& c, const std::string& needle) {
    auto out = model->Forward(b, p.rows, c, 1);
    ASSERT_FALSE(out.ok()) << needle;
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(out.status().message().find(needle), std::string::npos) << out.status();
  };
  Batch b = p.batch;
  b.lengths[1] = 9;
  expect_error(b, p.candidates, "batch.lengths[1]");
  b = p.batch;
  b.history.id_rows[static_cast<size_t>(b.seq_len - 1)] = 99;
  expect_error(b, p.candidates, "batch.history.id_rows");
  b = p.batch;
  b.lengths[0] = b.lengths[0] == 1 ? 2 : b.lengths[0] - 1;
  expect_error(b, p.candidates, "right-aligned");
  b = p.batch;
  b.targets.id_rows[0] = -1;
  expect_error(b, p.candidates, "batch.targets.id_rows[0]");
  b = p.batch;
  b.target_candidates[2] = (b.target_candidates[2] + 1) % 10;
  expect_error(b, p.candidates, "another id row");
  b = p.batch;
  b.target_candidates.pop_back();
  expect_error(b, p.candidates, "target_candidates");
  b = p.batch;
  b.history.tag_rows[0] = 77;
  expect_error(b, p.candidates, "tag_rows");
  b = p.batch;
  b.history.tag_offsets.pop_back();
  expect_error(b, p.candidates, "tag_offsets");
  b = p.batch;
  b.time_lags.resize(2);
  expect_error(b, p.candidates, "time_lags");
  b = p.batch;
  b.seq_len = 0;
  expect_error(b, p.candidates, "seq_len");
  Candidates none;
  expect_error(p.batch, none, "non-empty");

  Rows bad = p.rows;
  bad.id_rows = at::zeros({10, 3});
  auto out = model->Forward(p.batch, bad, p.candidates, 1);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("rows.id_rows"), std::string::npos);
  EXPECT_FALSE(model->UserVectors(p.batch, bad, {}).ok());
  TrainNoise noise;
  noise.steps = at::full({3}, 51, at::kLong);
  noise.eps = at::zeros({3, 5, 4});
  out = model->Forward(p.batch, p.rows, p.candidates, 1, &noise);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("1..50"), std::string::npos) << out.status();

  ModelConfig lag = Config(ModelConfig::T2DIFF);
  lag.set_time_lag_feature(true);
  auto lag_model = MakeModel(lag, d);
  b = p.batch;
  b.time_lags.clear();
  out = lag_model->Forward(b, p.rows, p.candidates, 1);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("time_lags"), std::string::npos);
  EXPECT_FALSE(lag_model->UserVectors(b, p.rows, {}).ok());

  ModelConfig sampled = Config(ModelConfig::SASREC);
  sampled.set_loss(ModelConfig::SAMPLED_SOFTMAX);
  auto sm = MakeModel(sampled, d);
  b = p.batch;
  b.target_log_q.clear();
  out = sm->Forward(b, p.rows, p.candidates, 1);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("target_log_q"), std::string::npos);
  auto base = MakeModel(Config(ModelConfig::TWO_TOWER_MEAN), d);
  EXPECT_EQ(base->GenerateNextItem(p.batch, p.rows, {}).status().code(), absl::StatusCode::kFailedPrecondition);
  ItemSlots pad;
  pad.AddPadding();
  EXPECT_FALSE(model->ItemVectors(pad, p.rows).ok());
}

TEST(ModelTest, ValidatesConfig) {
  ModelConfig c = Config(ModelConfig::T2DIFF);
  c.set_attention_heads(3);
  auto m = Model::Create(c, Dims());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("model.attention_heads"), std::string::npos) << m.status();
  c = Config(ModelConfig::TWO_TOWER_MEAN);
  c.set_attention_heads(3);  // no Transformer: heads do not matter
  EXPECT_TRUE(Model::Create(c, Dims()).ok());
  c = Config(ModelConfig::T2DIFF);
  c.set_schedule_a(0.5);
  m = Model::Create(c, Dims());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("schedule_a"), std::string::npos);
  c = Config(ModelConfig::T2DIFF);
  c.set_user_vector(ModelConfig::CONCAT);
  c.set_output_dim(3);
  EXPECT_FALSE(Model::Create(c, Dims()).ok());
  c = Config(ModelConfig::T2DIFF);
  c.set_inference_reverse_steps(60);
  EXPECT_FALSE(Model::Create(c, Dims()).ok());
  EXPECT_FALSE(Model::Create(Config(ModelConfig::T2DIFF), Dims(0, 2, 3)).ok());
  EXPECT_FALSE(Model::Create(Config(ModelConfig::T2DIFF), Dims(2, 2, 0)).ok());
}

}  // namespace
}  // namespace t2d::model

namespace t2d::model {
namespace {

// Sessions cut by time gaps (Batch::session_lengths): a full-length session (k) gives the same
// user vectors as the default last-k split; a shorter session moves the slots before it into
// the history and changes them; a sample whose whole sequence is its session has no history.
TEST(ModelTest, PerSampleSessionLengths) {
  const ModelDims d = Dims(2, 2, 3);
  const std::vector<std::vector<int64_t>> hist = {{1, 2, 3, 4, 5, 6, 7}, {8, 9}};
  for (auto kind : {ModelConfig::T2DIFF, ModelConfig::T2DIFF_NO_DIFFUSION}) {
    for (bool lag : {false, true}) {
      SCOPED_TRACE(ModelConfig::Kind_Name(kind) + (lag ? " time lag" : ""));
      ModelConfig c = Config(kind);
      c.set_time_lag_feature(lag);
      auto model = MakeModel(c, d);
      const Rows rows = MakeRows(12, 4, d, 5);
      const Candidates cands = AllItems(12, 4, true);
      Batch last_k = MakeBatch(hist, {3, 10}, 8, 4, true);
      Batch full = last_k;
      full.session_lengths = {3, 2};
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(9);
      TrainNoise noise;
      noise.steps = at::tensor(std::vector<int64_t>{5, 40});
      noise.eps = at::randn({2, 8, 4}, gen, at::kFloat);
      auto a = model->Forward(last_k, rows, cands, 1, &noise);
      auto b = model->Forward(full, rows, cands, 1, &noise);
      ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
      ExpectClose(a->user_vectors, b->user_vectors, 1e-5, "session = last k");
      Batch shorter = last_k;
      shorter.session_lengths = {1, 2};
      auto s = model->Forward(shorter, rows, cands, 1, &noise);
      ASSERT_TRUE(s.ok()) << s.status();
      EXPECT_GT(MaxAbs(s->user_vectors.narrow(0, 0, 1) - a->user_vectors.narrow(0, 0, 1)), 1e-4);
      ExpectClose(s->user_vectors.narrow(0, 1, 1), a->user_vectors.narrow(0, 1, 1), 1e-5, "unchanged sample");
    }
  }
  auto model = MakeModel(Config(ModelConfig::T2DIFF), d);
  Batch bad = MakeBatch(hist, {3, 10}, 8, 4, true);
  bad.session_lengths = {0, 2};
  EXPECT_EQ(model->Forward(bad, MakeRows(12, 4, d, 5), AllItems(12, 4, true), 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad.session_lengths = {1};
  EXPECT_NE(model->Forward(bad, MakeRows(12, 4, d, 5), AllItems(12, 4, true), 1).status().message().find("session_lengths"),
            std::string::npos);
}

}  // namespace
}  // namespace t2d::model

namespace t2d::model {
namespace {

// Per-sample seeds: a sample's generated token does not depend on the batch it is in, and the
// seed count must match the batch.
TEST(ModelTest, PerSampleSeedsMakeSamplesIndependentOfTheirBatch) {
  const ModelDims d = Dims(2, 2, 3);
  auto model = MakeModel(Config(ModelConfig::T2DIFF), d);
  const Rows rows = MakeRows(12, 4, d, 5);
  const Batch both = MakeBatch({{1, 2, 3, 4}, {8, 9}}, {3, 10}, 6, 4, true);
  const Batch second = MakeBatch({{8, 9}}, {10}, 6, 4, true);
  InferenceOptions o2, o1;
  o2.sample_seeds = {11, 22};
  o1.sample_seeds = {22};
  auto a = model->GenerateNextItem(both, rows, o2);
  auto b = model->GenerateNextItem(second, rows, o1);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  ExpectClose(a->narrow(0, 1, 1), *b, 1e-5, "sample 1 alone vs in a batch");
  auto bad = model->UserVectors(both, rows, o1);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("1 sample seeds for a batch of 2"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace t2d::model
