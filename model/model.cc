// The torch side of model/model.h. All dense parameters are views into one flat buffer; every
// activation is channel-last ([B, positions, channels]) so that LayerNorm over channels and the
// position-wise Linear layers need no transposes, and convolutions are one gather (three shifted
// views concatenated) plus one matmul. Masks and attention biases are built in plain C++ from
// the batch lengths, which costs less than building them with tensor ops.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "glog/logging.h"
#include "model/fused_ops.h"
#include "model/model.h"
#include "model/schedule.h"
#include "model/unet_kernel.h"

namespace t2d::model {
namespace {

using at::Tensor;
using config::ModelConfig;

constexpr float kMasked = -1e30f;  // additive attention bias of a forbidden key
constexpr int64_t kKernelMaxDim = 16;  // largest D for which one request uses the plain-C++ U-Net

Tensor LongTensor(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {static_cast<int64_t>(v.size())}, at::kLong).clone();
}
Tensor FloatTensor(const std::vector<float>& v, at::IntArrayRef shape) {
  return at::from_blob(const_cast<float*>(v.data()), shape, at::kFloat).clone();
}

// Gathers item slots of several lists into one index set, so that the rows of a whole batch
// are read with one index_select and one embedding_bag.
struct SlotGather {
  std::vector<int64_t> id;  // -1: padding
  std::vector<int64_t> tag_rows;
  std::vector<int64_t> tag_offsets{0};

  void Append(const ItemSlots& s, bool with_tags) {
    for (int64_t i = 0; i < s.size(); ++i) {
      const int64_t r = s.id_rows[static_cast<size_t>(i)];
      id.push_back(r);
      if (with_tags) {
        const size_t lo = static_cast<size_t>(s.tag_offsets[static_cast<size_t>(i)]);
        const size_t hi = static_cast<size_t>(s.tag_offsets[static_cast<size_t>(i) + 1]);
        tag_rows.insert(tag_rows.end(), s.tag_rows.begin() + static_cast<std::ptrdiff_t>(lo),
                        s.tag_rows.begin() + static_cast<std::ptrdiff_t>(hi));
        tag_offsets.push_back(static_cast<int64_t>(tag_rows.size()));
      }
    }
  }
};

struct Linear {
  int w = -1, b = -1;
};
struct Norm {
  int g = -1, b = -1;
};
struct ConvBlock {  // kernel-3 "same" conv + swish + LayerNorm over channels
  Linear conv;
  Norm norm;
};
struct UpLevel {
  Linear proj;  // kernel-1 conv applied before the nearest upsample (they commute)
  ConvBlock block;
};
struct EncoderLayer {
  Linear qkv, out, ff1, ff2;
  Norm norm1, norm2;
};

}  // namespace

struct Model::Impl {
  ModelConfig config;
  ModelDims dims;
  int64_t d = 0;  // D
  int64_t e = 0;  // E
  int64_t k = 0;  // session length cap
  bool diffusion = false;
  bool drift = false;
  int64_t steps = 0;
  NoiseSchedule schedule = *NoiseSchedule::Create(ModelConfig::EXPONENTIAL, 1, 0.01, 0.0);
  Tensor sqrt_ab, sqrt_1m_ab;  // [T + 1]
  Tensor step_emb;             // [T + 1, 2D], already multiplied by w

  // Parameters.
  struct Spec {
    ParameterInfo info;
    int init = 0;  // 0 uniform(+-1/sqrt(fan_in)), 1 ones, 2 zeros, 3 normal(0, scale)
    double scale = 0;
  };
  std::vector<Spec> specs;
  std::vector<ParameterInfo> infos;
  std::vector<Tensor> params;
  Tensor flat, grad_flat;

  std::vector<ConvBlock> down;
  std::vector<UpLevel> up;
  Linear unet_out;
  std::vector<EncoderLayer> encoders;
  Linear unit1, unit2;
  int lag_emb = -1;
  Linear ffn1, ffn2;
  Linear sasrec_out;
  int pos_emb = -1;
  Linear item;
  Norm item_norm;
  UnetKernelLayout kernel_layout;

  int Add(const std::string& name, std::vector<int64_t> shape, int init, double scale, bool diff) {
    Spec s;
    s.info.name = name;
    s.info.shape = std::move(shape);
    s.info.diffusion = diff;
    s.init = init;
    s.scale = scale;
    specs.push_back(std::move(s));
    return static_cast<int>(specs.size()) - 1;
  }
  Linear AddLinear(const std::string& name, int64_t in, int64_t out, bool bias, bool diff) {
    Linear l;
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    l.w = Add(name + ".weight", {out, in}, 0, bound, diff);
    if (bias) l.b = Add(name + ".bias", {out}, 0, bound, diff);
    return l;
  }
  Norm AddNorm(const std::string& name, int64_t c, bool diff) {
    Norm n;
    n.g = Add(name + ".weight", {c}, 1, 0, diff);
    n.b = Add(name + ".bias", {c}, 2, 0, diff);
    return n;
  }
  EncoderLayer AddEncoder(const std::string& name) {
    EncoderLayer l;
    l.qkv = AddLinear(name + ".qkv", d, 3 * d, true, false);
    l.out = AddLinear(name + ".out", d, d, true, false);
    l.norm1 = AddNorm(name + ".norm1", d, false);
    l.ff1 = AddLinear(name + ".ff1", d, config.ffn_hidden(), true, false);
    l.ff2 = AddLinear(name + ".ff2", config.ffn_hidden(), d, true, false);
    l.norm2 = AddNorm(name + ".norm2", d, false);
    return l;
  }

  void Build() {
    const auto kind = config.kind();
    if (diffusion) {
      int64_t in = 2 * d;
      for (int l = 0; l < config.unet_levels(); ++l) {
        const int64_t c = d << l;
        ConvBlock b;
        b.conv = AddLinear(absl::StrCat("unet.down", l, ".conv"), 3 * in, c, true, true);
        b.norm = AddNorm(absl::StrCat("unet.down", l, ".norm"), c, true);
        down.push_back(b);
        in = c;
      }
      up.resize(static_cast<size_t>(config.unet_levels() - 1));
      for (int l = config.unet_levels() - 2; l >= 0; --l) {
        const int64_t c = d << l;
        UpLevel& u = up[static_cast<size_t>(l)];
        u.proj = AddLinear(absl::StrCat("unet.up", l, ".proj"), 2 * c, c, true, true);
        u.block.conv = AddLinear(absl::StrCat("unet.up", l, ".conv"), 3 * 2 * c, c, true, true);
        u.block.norm = AddNorm(absl::StrCat("unet.up", l, ".norm"), c, true);
      }
      unet_out = AddLinear("unet.out", d, d, true, true);
    }
    if (kind == ModelConfig::SASREC) {
      pos_emb = Add("sasrec.position", {config.sasrec_max_len(), d}, 3, 0.02, false);
      for (int l = 0; l < config.sasrec_layers(); ++l) encoders.push_back(AddEncoder(absl::StrCat("sasrec.layer", l)));
      sasrec_out = AddLinear("sasrec.out", d, e, true, false);
    } else if (kind == ModelConfig::TWO_TOWER_MEAN) {
      ffn1 = AddLinear("user.ffn1", d, config.user_ffn_hidden(), true, false);
      ffn2 = AddLinear("user.ffn2", config.user_ffn_hidden(), e, true, false);
    } else {
      encoders.push_back(AddEncoder("session.layer0"));
      const int64_t unit_in = (config.time_lag_feature() ? 5 : 4) * d;
      unit1 = AddLinear("target_attention.unit1", unit_in, config.attention_unit_hidden(), true, false);
      unit2 = AddLinear("target_attention.unit2", config.attention_unit_hidden(), 1, true, false);
      if (config.time_lag_feature()) lag_emb = Add("target_attention.time_lag", {config.time_lag_buckets(), d}, 3, 0.1, false);
      if (config.user_vector() == ModelConfig::FFN) {
        ffn1 = AddLinear("user.ffn1", 2 * d, config.user_ffn_hidden(), true, false);
        ffn2 = AddLinear("user.ffn2", config.user_ffn_hidden(), e, true, false);
      }
    }
    item = AddLinear("item.linear", d, e, false, false);
    item_norm = AddNorm("item.norm", e, false);

    // One flat buffer for values, one for gradients; parameters are leaf views into them.
    int64_t total = 0;
    for (auto& s : specs) {
      s.info.offset = total;
      s.info.numel = 1;
      for (int64_t x : s.info.shape) s.info.numel *= x;
      total += s.info.numel;
    }
    flat = at::zeros({total}, at::kFloat);
    grad_flat = at::zeros({total}, at::kFloat);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(config.init_seed());
    for (auto& s : specs) {
      Tensor v = flat.narrow(0, s.info.offset, s.info.numel).view(s.info.shape);
      {
        at::NoGradGuard no_grad;
        if (s.init == 0) v.uniform_(-s.scale, s.scale, gen);
        if (s.init == 1) v.fill_(1.0);
        if (s.init == 3) v.normal_(0.0, s.scale, gen);
      }
      Tensor p = v.detach().requires_grad_(true);
      p.mutable_grad() = grad_flat.narrow(0, s.info.offset, s.info.numel).view(s.info.shape);
      params.push_back(p);
      infos.push_back(s.info);
    }
    if (diffusion) BuildKernelLayout();
  }

  void BuildKernelLayout() {
    kernel_layout.d = d;
    kernel_layout.levels = config.unet_levels();
    auto off = [&](int idx) { return specs[static_cast<size_t>(idx)].info.offset; };
    for (const ConvBlock& b : down) {
      kernel_layout.down.push_back({off(b.conv.w), off(b.conv.b), off(b.norm.g), off(b.norm.b)});
    }
    for (const UpLevel& u : up) {
      kernel_layout.up.push_back({off(u.proj.w), off(u.proj.b), off(u.block.conv.w), off(u.block.conv.b),
                                  off(u.block.norm.g), off(u.block.norm.b)});
    }
    kernel_layout.out_w = off(unet_out.w);
    kernel_layout.out_b = off(unet_out.b);
  }

  const Tensor& P(int i) const { return params[static_cast<size_t>(i)]; }
  Tensor Lin(const Tensor& x, const Linear& l) const {
    return l.b >= 0 ? at::linear(x, P(l.w), P(l.b)) : at::linear(x, P(l.w));
  }
  Tensor LN(const Tensor& x, const Norm& n) const {
    return LayerNormLastDim(x, P(n.g), P(n.b));
  }

  // ---- Embedding ----
  Tensor Embed(const SlotGather& g, const Rows& rows) const {
    const bool tags = dims.tag_dim > 0;
    return GatherItems(rows.id_rows, tags ? rows.tag_rows : Tensor(), LongTensor(g.id),
                       tags ? LongTensor(g.tag_offsets) : at::empty({0}, at::kLong),
                       tags ? LongTensor(g.tag_rows) : at::empty({0}, at::kLong));
  }

  // ---- U-Net (docs/model.md) ----
  // Every convolution's input is zero at masked positions (zero padding inside the batch and at
  // the edges): the input is masked once, block outputs are masked by SwishNormMask, pooling keeps
  // zeros, and the up path masks the upsampled half.
  // x [B, n, 2D] -> [B, n, D]; m [B, n] float validity.
  Tensor Unet(Tensor x, Tensor m) const {
    const int64_t bsz = x.size(0), n = x.size(1);
    const int levels = config.unet_levels();
    const int64_t p = int64_t{1} << (levels - 1);
    const int64_t padded = (n + p - 1) / p * p;
    const int64_t left = padded - n;
    if (left > 0) {
      x = at::constant_pad_nd(x, {0, 0, left, 0});
      m = at::constant_pad_nd(m, {left, 0});
    }
    std::vector<Tensor> masks{m.unsqueeze(2)};
    for (int l = 1; l < levels; ++l) {
      const Tensor& prev = masks.back();
      masks.push_back(std::get<0>(prev.view({bsz, prev.size(1) / 2, 2, 1}).max(2)));
    }
    std::vector<Tensor> skips;
    Tensor h = x * masks[0];
    for (int l = 0; l < levels; ++l) {
      // Max-pool 2 (l > 0) fused with the convolution's columns. A pooled position is masked only
      // if both inputs were, and those are zero: no re-masking.
      const ConvBlock& blk = down[static_cast<size_t>(l)];
      const Tensor cols = l > 0 ? PoolConv3Columns(h) : Conv3Columns(h);
      h = SwishNormMask(Lin(cols, blk.conv), P(blk.norm.g), P(blk.norm.b), masks[static_cast<size_t>(l)]);
      if (l + 1 < levels) skips.push_back(h);
    }
    for (int l = levels - 2; l >= 0; --l) {
      const UpLevel& u = up[static_cast<size_t>(l)];
      const Tensor& mk = masks[static_cast<size_t>(l)];
      const Tensor cols = UpsampleConcatColumns(Lin(h, u.proj), skips[static_cast<size_t>(l)], mk);
      h = SwishNormMask(Lin(cols, u.block.conv), P(u.block.norm.g), P(u.block.norm.b), mk);
    }
    h = Lin(h, unet_out) * masks[0];
    return left > 0 ? h.narrow(1, left, n) : h;
  }

  // ---- Transformer encoder layer (post-LN, ReLU FFN, no dropout) ----
  Tensor Encode(Tensor x, const EncoderLayer& l, const Tensor& bias) const {
    const int64_t bsz = x.size(0), t = x.size(1);
    const int64_t heads = config.attention_heads(), dh = d / heads;
    Tensor qkv = Lin(x, l.qkv).view({bsz, t, 3, heads, dh}).permute({2, 0, 3, 1, 4});
    Tensor q = qkv.select(0, 0) * (1.0 / std::sqrt(static_cast<double>(dh)));
    Tensor scores = at::matmul(q, qkv.select(0, 1).transpose(-2, -1)) + bias;  // bias [B, 1, t, t]
    Tensor o = at::matmul(at::softmax(scores, -1), qkv.select(0, 2));
    o = Lin(o.transpose(1, 2).reshape({bsz, t, d}), l.out);
    x = LN(x + o, l.norm1);
    return LN(x + Lin(at::relu(Lin(x, l.ff1)), l.ff2), l.norm2);
  }

  // ---- Layout helpers computed on the CPU from the lengths ----
  struct Layout {
    int64_t b = 0, n = 0, ks = 0, nh = 0;  // session tokens ks = min(k, n), history nh = n - ks
    Tensor mask;          // [B, n] float
    Tensor session_bias;  // [B, 1, T, T]
    Tensor session_mean;  // [B, 1, T], valid/count
    Tensor history_bias;  // [B, nh]
    Tensor history_any;   // [B, 1]: 1 if the sample has any history slot (per-sample sessions only)
    int64_t valid = 0;    // valid positions in the batch
  };

  Layout MakeLayout(const Batch& batch, bool with_token) const {
    Layout lay;
    lay.b = batch.batch_size;
    lay.n = batch.seq_len;
    lay.ks = std::min<int64_t>(k, lay.n);
    // Sessions cut by time gaps can be shorter than k: the slots between such a session and the
    // last k then belong to the history, so the history attention spans all n slots.
    const bool per_sample_sessions = !batch.session_lengths.empty();
    lay.nh = per_sample_sessions ? lay.n : lay.n - lay.ks;
    const int64_t b = lay.b, n = lay.n;
    std::vector<float> mask(static_cast<size_t>(b * n));
    for (int64_t i = 0; i < b; ++i) {
      const int64_t len = batch.lengths[static_cast<size_t>(i)];
      lay.valid += len;
      for (int64_t j = 0; j < n; ++j) mask[static_cast<size_t>(i * n + j)] = j >= n - len ? 1.f : 0.f;
    }
    lay.mask = FloatTensor(mask, {b, n});
    if (config.kind() == ModelConfig::SASREC) {
      // Causal + key padding; a query with no allowed key (padding) attends to itself.
      std::vector<float> bias(static_cast<size_t>(b * n * n), kMasked);
      for (int64_t i = 0; i < b; ++i) {
        const int64_t first = n - batch.lengths[static_cast<size_t>(i)];
        for (int64_t q = 0; q < n; ++q) {
          for (int64_t key = q < first ? q : first; key <= q; ++key) bias[static_cast<size_t>((i * n + q) * n + key)] = 0.f;
        }
      }
      lay.session_bias = FloatTensor(bias, {b, 1, n, n});
      return lay;
    }
    if (config.kind() == ModelConfig::TWO_TOWER_MEAN) return lay;
    const int64_t t = lay.ks + (with_token ? 1 : 0);
    std::vector<float> bias(static_cast<size_t>(b * t * t), kMasked), mean(static_cast<size_t>(b * t), 0.f);
    std::vector<float> hist(static_cast<size_t>(b * lay.nh), 0.f);
    std::vector<float> has_history(static_cast<size_t>(b), 0.f);
    for (int64_t i = 0; i < b; ++i) {
      const int64_t len = batch.lengths[static_cast<size_t>(i)];
      std::vector<char> valid(static_cast<size_t>(t));
      int64_t count = 0;
      // Session tokens: the newest `sl` slots of the last ks (all of them without per-sample
      // sessions), plus the generated token.
      const int64_t sl = per_sample_sessions
                             ? std::min<int64_t>(lay.ks, batch.session_lengths[static_cast<size_t>(i)])
                             : lay.ks;
      for (int64_t s = 0; s < t; ++s) {
        valid[static_cast<size_t>(s)] = s >= lay.ks || ((n - lay.ks + s) >= n - len && s >= lay.ks - sl);
        count += valid[static_cast<size_t>(s)];
      }
      for (int64_t s = 0; s < t; ++s) {
        if (valid[static_cast<size_t>(s)]) mean[static_cast<size_t>(i * t + s)] = 1.f / static_cast<float>(count);
      }
      for (int64_t q = 0; q < t; ++q) {
        bool any = false;
        for (int64_t key = 0; key < t; ++key) {
          if (valid[static_cast<size_t>(key)] && !(config.self_mask() && key == q)) {
            bias[static_cast<size_t>((i * t + q) * t + key)] = 0.f;
            any = true;
          }
        }
        if (!any) bias[static_cast<size_t>((i * t + q) * t + q)] = 0.f;
      }
      // History: valid slots before the session.
      const int64_t history_end = n - sl;
      for (int64_t j = 0; j < lay.nh; ++j) {
        hist[static_cast<size_t>(i * lay.nh + j)] = j >= n - len && j < history_end ? 0.f : kMasked;
      }
      has_history[static_cast<size_t>(i)] = history_end > n - len ? 1.f : 0.f;
    }
    lay.session_bias = FloatTensor(bias, {b, 1, t, t});
    lay.session_mean = FloatTensor(mean, {b, 1, t});
    lay.history_bias = FloatTensor(hist, {b, lay.nh});
    if (per_sample_sessions) lay.history_any = FloatTensor(has_history, {b, 1});
    return lay;
  }

  Tensor TimeLagBuckets(const Batch& batch, const Layout& lay) const {
    std::vector<int64_t> buckets(static_cast<size_t>(lay.b * lay.nh), 0);
    const int64_t max_bucket = config.time_lag_buckets() - 1;
    if (!batch.time_lags.empty()) {
      for (int64_t i = 0; i < lay.b; ++i) {
        for (int64_t j = 0; j < lay.nh; ++j) {
          const float lag = batch.time_lags[static_cast<size_t>(i * lay.n + j)];
          const double v = lag > 0 ? std::floor(std::log2(1.0 + static_cast<double>(lag))) : 0.0;
          buckets[static_cast<size_t>(i * lay.nh + j)] = std::min<int64_t>(static_cast<int64_t>(v), max_bucket);
        }
      }
    }
    return LongTensor(buckets).view({lay.b, lay.nh});
  }

  // ---- User towers ----
  // x [B, n, D] (masked), x_hat [B, D] or undefined; returns e_u [B, E].
  Tensor UserTower(const Tensor& x, const Tensor& x_hat, const Layout& lay, const Batch& batch) const {
    const auto kind = config.kind();
    if (kind == ModelConfig::TWO_TOWER_MEAN) {
      Tensor count = lay.mask.sum(1, true).clamp_min(1.0);
      Tensor mean = x.sum(1) / count;
      return Lin(at::elu(Lin(mean, ffn1)), ffn2);
    }
    if (kind == ModelConfig::SASREC) {
      // Learned positions counted from the newest behaviour, so padding does not shift them.
      Tensor pos = P(pos_emb).narrow(0, 0, lay.n).flip({0});
      Tensor h = (x + pos.unsqueeze(0)) * lay.mask.unsqueeze(2);
      for (const EncoderLayer& l : encoders) h = Encode(h, l, lay.session_bias);
      return Lin(h.select(1, lay.n - 1), sasrec_out);
    }
    // Mixed attention.
    Tensor tokens = x.narrow(1, lay.n - lay.ks, lay.ks);
    if (x_hat.defined()) tokens = at::cat({tokens, x_hat.unsqueeze(1)}, 1);
    Tensor enc = Encode(tokens, encoders[0], lay.session_bias);
    Tensor hs = at::bmm(lay.session_mean, enc).squeeze(1);  // mean over valid tokens [B, D]
    Tensor hl;
    if (lay.nh > 0) {
      Tensor hist = x.narrow(1, 0, lay.nh);
      Tensor hse = hs.unsqueeze(1).expand({lay.b, lay.nh, d});
      std::vector<Tensor> feats{hist, hist - hse, hist * hse, hse};
      if (config.time_lag_feature()) feats.push_back(at::embedding(P(lag_emb), TimeLagBuckets(batch, lay)));
      Tensor u = Lin(at::elu(Lin(at::cat(feats, 2), unit1)), unit2).squeeze(2) + lay.history_bias;
      hl = at::bmm(at::softmax(u, 1).unsqueeze(1), hist).squeeze(1);
      // With per-sample sessions an empty history would attend over session slots; zero it as
      // an all-padding history is zero.
      if (lay.history_any.defined()) hl = hl * lay.history_any;
    } else {
      hl = at::zeros_like(hs);
    }
    Tensor both = at::cat({hl, hs}, 1);
    if (config.user_vector() == ModelConfig::CONCAT) return both;
    return Lin(at::elu(Lin(both, ffn1)), ffn2);
  }

  Tensor ItemTower(const Tensor& x) const { return LN(at::elu(Lin(x, item)), item_norm); }

  // ---- Diffusion ----
  Tensor Noised(const Tensor& z0, const Tensor& r, const Tensor& eps) const {
    std::vector<int64_t> shape(static_cast<size_t>(z0.dim()), 1);
    shape[0] = z0.size(0);
    return z0 * sqrt_ab.index_select(0, r).view(shape) + eps * sqrt_1m_ab.index_select(0, r).view(shape);
  }
  Tensor UnetInput(const Tensor& z, const Tensor& cond, const Tensor& emb) const {
    return at::cat({z, cond}, 2) + emb;
  }

  // Reverse process: x_hat [B, D] from pure noise, averaged over samples.
  Tensor Generate(const Tensor& x, const Layout& lay, const InferenceOptions& opt) const {
    const int samples = opt.num_samples > 0 ? opt.num_samples : config.inference_samples();
    const int rsteps = opt.reverse_steps >= 0 ? opt.reverse_steps : config.inference_reverse_steps();
    const std::vector<ReverseStep> plan = schedule.ReverseSteps(rsteps, config.reverse_update());
    const int64_t bs = lay.b * samples, n = lay.n;
    Tensor z, noise;
    if (opt.sample_seeds.empty()) {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(opt.seed);
      z = at::randn({bs, n, d}, gen, at::kFloat);
      noise = at::randn({static_cast<int64_t>(plan.size()), bs, n, d}, gen, at::kFloat);
    } else {
      // One generator per sample: a sample's output does not depend on the batch it is in.
      std::vector<Tensor> zs, noises;
      for (int64_t b = 0; b < lay.b; ++b) {
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(opt.sample_seeds[static_cast<size_t>(b)]);
        zs.push_back(at::randn({samples, n, d}, gen, at::kFloat));
        noises.push_back(at::randn({static_cast<int64_t>(plan.size()), samples, n, d}, gen, at::kFloat));
      }
      z = at::cat(zs, 0);
      noise = at::cat(noises, 1);
    }
    Tensor cond = samples > 1 ? x.repeat_interleave(samples, 0) : x;
    Tensor mask = samples > 1 ? lay.mask.repeat_interleave(samples, 0) : lay.mask;
    if (lay.b == 1 && d <= kKernelMaxDim && !opt.force_tensor_ops) {
      // Serving path (one request, small D): the plain-C++ U-Net avoids ~90 tensor ops per step.
      // At larger D the convolutions are big enough for BLAS to win.
      z = z.contiguous();
      cond = cond.contiguous();
      mask = mask.contiguous();
      UnetKernel kernel(kernel_layout, flat.data_ptr<float>());
      kernel.Reverse(plan, step_emb.data_ptr<float>(), samples, n, mask.data_ptr<float>(), cond.data_ptr<float>(),
                     noise.data_ptr<float>(), z.data_ptr<float>());
    } else {
      for (size_t i = 0; i < plan.size(); ++i) {
        const ReverseStep& st = plan[i];
        Tensor z0 = Unet(UnetInput(z, cond, step_emb[st.step].view({1, 1, 2 * d})), mask);
        if (st.prev == 0) {
          z = z0;
        } else {
          z = z0 * st.c0 + z * st.c1 + noise[static_cast<int64_t>(i)] * st.sigma;
        }
      }
    }
    Tensor last = z.select(1, n - 1);
    if (drift) last = last + cond.select(1, n - 1);
    return samples > 1 ? last.view({lay.b, samples, d}).mean(1) : last;
  }
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const ModelConfig& config, const ModelDims& dims) {
  T2D_RETURN_IF_ERROR(ValidateModelConfig(config, dims));
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->dims = dims;
  impl->d = dims.id_dim + dims.tag_dim;
  impl->k = dims.session_len;
  impl->e = config.user_vector() == ModelConfig::CONCAT &&
                    (config.kind() == ModelConfig::T2DIFF || config.kind() == ModelConfig::T2DIFF_NO_DIFFUSION ||
                     config.kind() == ModelConfig::T2DIFF_NO_DRIFT)
                ? 2 * impl->d
                : (config.output_dim() > 0 ? config.output_dim() : 2 * impl->d);
  impl->diffusion = config.kind() == ModelConfig::T2DIFF || config.kind() == ModelConfig::T2DIFF_NO_DRIFT;
  impl->drift = config.kind() == ModelConfig::T2DIFF;
  T2D_ASSIGN_OR_RETURN(impl->schedule, NoiseSchedule::FromConfig(config));
  impl->steps = config.diffusion_steps();
  try {
    const int64_t t = impl->steps, d2 = 2 * impl->d;
    std::vector<float> sab(static_cast<size_t>(t) + 1), s1(static_cast<size_t>(t) + 1);
    std::vector<float> emb(static_cast<size_t>((t + 1) * d2));
    for (int64_t r = 0; r <= t; ++r) {
      const double ab = impl->schedule.alpha_bar(static_cast<int>(r));
      sab[static_cast<size_t>(r)] = static_cast<float>(std::sqrt(ab));
      s1[static_cast<size_t>(r)] = static_cast<float>(std::sqrt(1.0 - ab));
      for (int64_t f = 0; f < d2; ++f) {
        emb[static_cast<size_t>(r * d2 + f)] = static_cast<float>(
            config.step_embedding_weight() * std::sin(static_cast<double>(r) / std::ldexp(1.0, static_cast<int>(f))));
      }
    }
    impl->sqrt_ab = FloatTensor(sab, {t + 1});
    impl->sqrt_1m_ab = FloatTensor(s1, {t + 1});
    impl->step_emb = FloatTensor(emb, {t + 1, d2});
    impl->Build();
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model: building the parameters failed: ", ex.what()));
  }
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

const ModelConfig& Model::config() const { return impl_->config; }
const ModelDims& Model::dims() const { return impl_->dims; }
int64_t Model::input_dim() const { return impl_->d; }
int64_t Model::output_dim() const { return impl_->e; }

namespace {

absl::Status CheckRows(const Rows& rows, const ModelDims& dims) {
  if (!rows.id_rows.defined() || rows.id_rows.dim() != 2 || rows.id_rows.size(1) != dims.id_dim ||
      rows.id_rows.scalar_type() != at::kFloat) {
    return absl::InvalidArgumentError(absl::StrCat("rows.id_rows must be a float [U, ", dims.id_dim, "] tensor"));
  }
  if (dims.tag_dim > 0 && (!rows.tag_rows.defined() || rows.tag_rows.dim() != 2 ||
                           rows.tag_rows.size(1) != dims.tag_dim || rows.tag_rows.scalar_type() != at::kFloat)) {
    return absl::InvalidArgumentError(absl::StrCat("rows.tag_rows must be a float [U_tag, ", dims.tag_dim, "] tensor"));
  }
  return absl::OkStatus();
}

int64_t TagRowCount(const Rows& rows, const ModelDims& dims) { return dims.tag_dim > 0 ? rows.tag_rows.size(0) : 0; }

}  // namespace

absl::StatusOr<ForwardOutput> Model::Forward(const Batch& batch, const Rows& rows, const Candidates& candidates,
                                             uint64_t noise_seed, const TrainNoise* noise) {
  const Impl& m = *impl_;
  T2D_RETURN_IF_ERROR(CheckRows(rows, m.dims));
  const int64_t u = rows.id_rows.size(0), ut = TagRowCount(rows, m.dims);
  T2D_RETURN_IF_ERROR(ValidateBatch(batch, u, ut));
  T2D_RETURN_IF_ERROR(ValidateSlots(candidates.items, "candidates.items", u, ut, false));
  const int64_t b = batch.batch_size, n = batch.seq_len, c = candidates.items.size();
  const bool full = m.config.loss() == ModelConfig::FULL_SOFTMAX;
  if (full) {
    if (c < 1) return absl::InvalidArgumentError("candidates: FULL_SOFTMAX needs a non-empty candidate set");
    if (static_cast<int64_t>(batch.target_candidates.size()) != b) {
      return absl::InvalidArgumentError(absl::StrCat("batch.target_candidates has ", batch.target_candidates.size(),
                                                     " entries, expected ", b, " (FULL_SOFTMAX)"));
    }
    for (int64_t i = 0; i < b; ++i) {
      const int64_t t = batch.target_candidates[static_cast<size_t>(i)];
      if (t < 0 || t >= c) {
        return absl::InvalidArgumentError(
            absl::StrCat("batch.target_candidates[", i, "] = ", t, " is outside [0, ", c, ")"));
      }
      if (candidates.items.id_rows[static_cast<size_t>(t)] != batch.targets.id_rows[static_cast<size_t>(i)]) {
        return absl::InvalidArgumentError(absl::StrCat("batch.target_candidates[", i, "] = ", t,
                                                       " names a candidate with another id row than the target"));
      }
    }
  } else if (m.config.logq_correction()) {
    if (static_cast<int64_t>(batch.target_log_q.size()) != b ||
        static_cast<int64_t>(candidates.log_q.size()) != c) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SAMPLED_SOFTMAX with logq_correction needs batch.target_log_q [", b, "] and candidates.log_q [", c,
          "]; got ", batch.target_log_q.size(), " and ", candidates.log_q.size()));
    }
  }
  if (m.config.time_lag_feature() && batch.time_lags.empty()) {
    return absl::InvalidArgumentError("batch.time_lags: model.time_lag_feature is on but the batch has no time lags");
  }
  if (noise != nullptr) {
    if (!noise->steps.defined() || noise->steps.numel() != b || !noise->eps.defined() ||
        noise->eps.sizes() != at::IntArrayRef({b, n, m.d})) {
      return absl::InvalidArgumentError("TrainNoise: steps must be [B] and eps [B, n, D]");
    }
  }
  try {
    SlotGather g;
    const bool tags = m.dims.tag_dim > 0;
    g.Append(batch.history, tags);
    g.Append(batch.targets, tags);
    g.Append(candidates.items, tags);
    const Tensor all = m.Embed(g, rows);
    const Tensor x = all.narrow(0, 0, b * n).view({b, n, m.d});
    const Tensor items = m.ItemTower(all.narrow(0, b * n, b + c));
    const Tensor target_vectors = items.narrow(0, 0, b);
    const Impl::Layout lay = m.MakeLayout(batch, m.diffusion);

    ForwardOutput out;
    Tensor x_hat;
    out.diffusion_loss = at::zeros({}, at::kFloat);
    if (m.diffusion) {
      // Stop-gradient at the module's inputs (spec section 6).
      const Tensor xd = x.detach();
      const Tensor td = all.narrow(0, b * n, b).detach();
      const Tensor mk = lay.mask.unsqueeze(2);
      const Tensor next = at::cat({xd.narrow(1, 1, n - 1), td.unsqueeze(1)}, 1);
      const Tensor z0 = (m.drift ? next - xd : next) * mk;
      Tensor r, eps;
      if (noise != nullptr) {
        r = noise->steps.to(at::kLong).view({b});
        eps = noise->eps.to(at::kFloat);
        if (r.min().item<int64_t>() < 1 || r.max().item<int64_t>() > m.steps) {
          return absl::InvalidArgumentError(absl::StrCat("TrainNoise.steps must lie in 1..", m.steps));
        }
      } else {
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(noise_seed);
        r = at::randint(1, m.steps + 1, {b}, gen, at::kLong);
        eps = at::randn({b, n, m.d}, gen, at::kFloat);
      }
      const Tensor zr = m.Noised(z0, r, eps);
      const Tensor z0_hat = m.Unet(m.UnetInput(zr, xd, m.step_emb.index_select(0, r).unsqueeze(1)), lay.mask);
      const Tensor diff = z0_hat - z0;
      if (m.config.diffusion_loss() == ModelConfig::SQUARED) {
        out.diffusion_loss = diff.pow(2).sum() / static_cast<double>(b);
      } else {
        out.diffusion_loss = at::linalg_vector_norm(diff, 2, {2}).sum() / static_cast<double>(std::max<int64_t>(1, lay.valid));
      }
      // Stop-gradient at the output: x_hat is a constant for the towers.
      x_hat = (m.drift ? xd.select(1, n - 1) + z0_hat.select(1, n - 1) : z0_hat.select(1, n - 1)).detach();
      out.x_hat = x_hat;
    }
    out.user_vectors = m.UserTower(x, x_hat, lay, batch);
    out.target_vectors = target_vectors;
    if (full) {
      out.tower_loss = SoftmaxLoss(out.user_vectors, items.narrow(0, b, c), LongTensor(batch.target_candidates),
                                   Tensor(), Tensor());
    } else {
      // Columns: the in-batch positives, then the shared negatives.
      Tensor logq;
      if (m.config.logq_correction()) {
        std::vector<float> q(batch.target_log_q);
        q.insert(q.end(), candidates.log_q.begin(), candidates.log_q.end());
        logq = FloatTensor(q, {b + c});
      }
      // Another copy of the positive item (a duplicate target or a negative equal to it) is not a
      // negative: exclude it.
      std::vector<int64_t> ids(batch.targets.id_rows);
      ids.insert(ids.end(), candidates.items.id_rows.begin(), candidates.items.id_rows.end());
      const Tensor id_t = LongTensor(ids);
      Tensor same = id_t.narrow(0, 0, b).unsqueeze(1).eq(id_t.unsqueeze(0));
      same.narrow(1, 0, b).diagonal().fill_(false);
      out.tower_loss = SoftmaxLoss(out.user_vectors, items, at::arange(b, at::kLong), logq, same);
    }
    out.total_loss = out.tower_loss + out.diffusion_loss * static_cast<double>(m.config.diffusion_loss_weight());
    return out;
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model forward: ", ex.what()));
  }
}

absl::StatusOr<Model::Losses> Model::ForwardBackward(const Batch& batch, const Rows& rows,
                                                     const Candidates& candidates, uint64_t noise_seed) {
  T2D_ASSIGN_OR_RETURN(ForwardOutput out, Forward(batch, rows, candidates, noise_seed));
  try {
    out.total_loss.backward();
    Losses l;
    l.total = out.total_loss.item<double>();
    l.tower = out.tower_loss.item<double>();
    l.diffusion = out.diffusion_loss.item<double>();
    return l;
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model backward: ", ex.what()));
  }
}

namespace {

// Inference reads the history only: validate it against a dummy target list.
absl::Status ValidateInferenceBatch(const Batch& batch, const Rows& rows, const ModelDims& dims,
                                    const ModelConfig& config, const InferenceOptions& options) {
  T2D_RETURN_IF_ERROR(CheckRows(rows, dims));
  if (batch.batch_size < 1) return absl::InvalidArgumentError("batch: batch_size must be >= 1");
  if (!options.sample_seeds.empty() && static_cast<int64_t>(options.sample_seeds.size()) != batch.batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("inference: ", options.sample_seeds.size(),
                                                   " sample seeds for a batch of ", batch.batch_size));
  }
  Batch probe;
  probe.batch_size = batch.batch_size;
  probe.seq_len = batch.seq_len;
  probe.lengths = batch.lengths;
  probe.time_lags = batch.time_lags;
  probe.session_lengths = batch.session_lengths;
  probe.history = batch.history;
  for (int64_t i = 0; i < batch.batch_size; ++i) probe.targets.Add(0);
  if (dims.tag_dim == 0) probe.targets.tag_offsets.clear();
  T2D_RETURN_IF_ERROR(ValidateBatch(probe, std::max<int64_t>(1, rows.id_rows.size(0)), TagRowCount(rows, dims)));
  if (config.time_lag_feature() && batch.time_lags.empty()) {
    return absl::InvalidArgumentError("batch.time_lags: model.time_lag_feature is on but the batch has no time lags");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<at::Tensor> Model::GenerateNextItem(const Batch& batch, const Rows& rows,
                                                   const InferenceOptions& options) const {
  const Impl& m = *impl_;
  if (!m.diffusion) return absl::FailedPreconditionError("GenerateNextItem: the model has no diffusion module");
  T2D_RETURN_IF_ERROR(ValidateInferenceBatch(batch, rows, m.dims, m.config, options));
  try {
    c10::InferenceMode guard;
    SlotGather g;
    g.Append(batch.history, m.dims.tag_dim > 0);
    const Tensor x = m.Embed(g, rows).view({batch.batch_size, batch.seq_len, m.d});
    return m.Generate(x, m.MakeLayout(batch, true), options);
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model inference: ", ex.what()));
  }
}

absl::StatusOr<at::Tensor> Model::UserVectors(const Batch& batch, const Rows& rows,
                                              const InferenceOptions& options) const {
  const Impl& m = *impl_;
  T2D_RETURN_IF_ERROR(ValidateInferenceBatch(batch, rows, m.dims, m.config, options));
  try {
    c10::InferenceMode guard;
    SlotGather g;
    g.Append(batch.history, m.dims.tag_dim > 0);
    const Tensor x = m.Embed(g, rows).view({batch.batch_size, batch.seq_len, m.d});
    const Impl::Layout lay = m.MakeLayout(batch, m.diffusion);
    Tensor x_hat;
    if (m.diffusion) {
      // Sequences are right-aligned: position n - 1 is the newest behaviour.
      x_hat = m.config.inference_token() == ModelConfig::LAST_BEHAVIOUR ? x.select(1, lay.n - 1)
                                                                        : m.Generate(x, lay, options);
    }
    return m.UserTower(x, x_hat, lay, batch);
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model inference: ", ex.what()));
  }
}

absl::StatusOr<at::Tensor> Model::ItemVectors(const ItemSlots& items, const Rows& rows) const {
  const Impl& m = *impl_;
  T2D_RETURN_IF_ERROR(CheckRows(rows, m.dims));
  T2D_RETURN_IF_ERROR(ValidateSlots(items, "items", rows.id_rows.size(0), TagRowCount(rows, m.dims), false));
  try {
    c10::InferenceMode guard;
    SlotGather g;
    g.Append(items, m.dims.tag_dim > 0);
    return m.ItemTower(m.Embed(g, rows));
  } catch (const std::exception& ex) {
    return absl::InternalError(absl::StrCat("model inference: ", ex.what()));
  }
}

at::Tensor Model::ForwardNoise(const at::Tensor& z0, const at::Tensor& steps, uint64_t seed) const {
  at::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return impl_->Noised(z0, steps.to(at::kLong), at::randn(z0.sizes(), gen, at::kFloat));
}

absl::Span<float> Model::DenseParameters() {
  return absl::Span<float>(impl_->flat.data_ptr<float>(), static_cast<size_t>(impl_->flat.numel()));
}
absl::Span<const float> Model::DenseParameters() const {
  return absl::Span<const float>(impl_->flat.data_ptr<float>(), static_cast<size_t>(impl_->flat.numel()));
}
absl::Span<float> Model::DenseGradients() {
  return absl::Span<float>(impl_->grad_flat.data_ptr<float>(), static_cast<size_t>(impl_->grad_flat.numel()));
}
void Model::ZeroGradients() { impl_->grad_flat.zero_(); }
const std::vector<ParameterInfo>& Model::Parameters() const { return impl_->infos; }
at::Tensor Model::ParameterTensor(size_t i) const { return impl_->params.at(i); }

}  // namespace t2d::model
