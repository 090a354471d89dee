#include "model/user_tower.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/fused_ops.h"
#include "model/layers.h"

namespace t2d::model {
namespace {

using at::Tensor;
using config::ModelConfig;

constexpr float kMasked = -1e30f;  // additive attention bias of a forbidden key

// E unless the tower fixes it: config.output_dim, 0 meaning 2D.
int64_t ConfiguredOutputDim(const ModelConfig& config, int64_t d) {
  return config.output_dim() > 0 ? config.output_dim() : 2 * d;
}

// e_u = FFN(mean of the valid history) (YouTube-DNN style).
class MeanPoolTower : public UserTower {
 public:
  MeanPoolTower(const ModelConfig& config, int64_t d, ParameterRegistry& params)
      : e_(ConfiguredOutputDim(config, d)),
        ffn1_(Linear::Register(params, "user.ffn1", d, config.user_ffn_hidden(), true, false)),
        ffn2_(Linear::Register(params, "user.ffn2", config.user_ffn_hidden(), e_, true, false)) {}

  int64_t output_dim() const override { return e_; }

  Tensor Forward(const Tensor& x, const Tensor& /*x_hat*/, const Tensor& mask, const Batch& /*batch*/) const override {
    Tensor count = mask.sum(1, true).clamp_min(1.0);
    Tensor mean = x.sum(1) / count;
    return ffn2_(Elu(ffn1_(mean)));
  }

 private:
  int64_t e_;
  Linear ffn1_, ffn2_;
};

// Causal Transformer over the whole sequence; e_u = Linear(output at the newest position).
class SasRecTower : public UserTower {
 public:
  SasRecTower(const ModelConfig& config, int64_t d, ParameterRegistry& params) : e_(ConfiguredOutputDim(config, d)) {
    position_ = params.Add("sasrec.position", {config.sasrec_max_len(), d}, Init::kNormal, 0.02, false);
    for (int l = 0; l < config.sasrec_layers(); ++l) {
      layers_.push_back(EncoderLayer::Register(params, absl::StrCat("sasrec.layer", l), d, config.attention_heads(),
                                               config.ffn_hidden()));
    }
    out_ = Linear::Register(params, "sasrec.out", d, e_, true, false);
  }

  int64_t output_dim() const override { return e_; }

  Tensor Forward(const Tensor& x, const Tensor& /*x_hat*/, const Tensor& mask, const Batch& batch) const override {
    const int64_t n = batch.seq_len;
    // Learned positions counted from the newest behaviour, so padding does not shift them.
    Tensor pos = position_.tensor().narrow(0, 0, n).flip({0});
    Tensor h = (x + pos.unsqueeze(0)) * mask.unsqueeze(2);
    const Tensor bias = CausalBias(batch);
    for (const EncoderLayer& l : layers_) h = l(h, bias);
    return out_(h.select(1, n - 1));
  }

 private:
  // [B, 1, n, n]: causal + key padding; a query with no allowed key (padding) attends to itself.
  static Tensor CausalBias(const Batch& batch) {
    const int64_t b = batch.batch_size, n = batch.seq_len;
    std::vector<float> bias(static_cast<size_t>(b * n * n), kMasked);
    for (int64_t i = 0; i < b; ++i) {
      const int64_t first = n - batch.lengths[static_cast<size_t>(i)];
      for (int64_t q = 0; q < n; ++q) {
        for (int64_t key = q < first ? q : first; key <= q; ++key) bias[static_cast<size_t>((i * n + q) * n + key)] = 0.f;
      }
    }
    return FloatTensor(bias, {b, 1, n, n});
  }

  int64_t e_;
  ParameterRef position_;
  std::vector<EncoderLayer> layers_;
  Linear out_;
};

// Mixed attention (spec section 4): h_s = mean of a Transformer layer's outputs over the session
// tokens (+ x_hat), h_l = target attention of h_s over the history; e_u = FFN(h_l, h_s) or the
// concatenation itself.
class MixedAttentionTower : public UserTower {
 public:
  MixedAttentionTower(const ModelConfig& config, int64_t d, int64_t session_len, ParameterRegistry& params)
      : config_(config),
        d_(d),
        k_(session_len),
        e_(config.user_vector() == ModelConfig::CONCAT ? 2 * d : ConfiguredOutputDim(config, d)) {
    session_ = EncoderLayer::Register(params, "session.layer0", d, config.attention_heads(), config.ffn_hidden());
    const int64_t unit_in = (config.time_lag_feature() ? 5 : 4) * d;
    unit1_ = Linear::Register(params, "target_attention.unit1", unit_in, config.attention_unit_hidden(), true, false);
    unit2_ = Linear::Register(params, "target_attention.unit2", config.attention_unit_hidden(), 1, true, false);
    if (config.time_lag_feature()) {
      lag_emb_ = params.Add("target_attention.time_lag", {config.time_lag_buckets(), d}, Init::kNormal, 0.1, false);
    }
    if (config.user_vector() == ModelConfig::FFN) {
      ffn1_ = Linear::Register(params, "user.ffn1", 2 * d, config.user_ffn_hidden(), true, false);
      ffn2_ = Linear::Register(params, "user.ffn2", config.user_ffn_hidden(), e_, true, false);
    }
  }

  int64_t output_dim() const override { return e_; }

  Tensor Forward(const Tensor& x, const Tensor& x_hat, const Tensor& /*mask*/, const Batch& batch) const override {
    const Layout lay = MakeLayout(batch, x_hat.defined());
    Tensor tokens = x.narrow(1, lay.n - lay.ks, lay.ks);
    if (x_hat.defined()) tokens = at::cat({tokens, x_hat.unsqueeze(1)}, 1);
    Tensor enc = session_(tokens, lay.session_bias);
    Tensor hs = at::bmm(lay.session_mean, enc).squeeze(1);  // mean over valid tokens [B, D]
    Tensor hl;
    if (lay.nh > 0) {
      Tensor hist = x.narrow(1, 0, lay.nh);
      Tensor hse = hs.unsqueeze(1).expand({lay.b, lay.nh, d_});
      std::vector<Tensor> feats{hist, hist - hse, hist * hse, hse};
      if (config_.time_lag_feature()) feats.push_back(at::embedding(lag_emb_.tensor(), TimeLagBuckets(batch, lay)));
      Tensor u = unit2_(Elu(unit1_(at::cat(feats, 2)))).squeeze(2) + lay.history_bias;
      hl = at::bmm(at::softmax(u, 1).unsqueeze(1), hist).squeeze(1);
      // With per-sample sessions an empty history would attend over session slots; zero it as
      // an all-padding history is zero.
      if (lay.history_any.defined()) hl = hl * lay.history_any;
    } else {
      hl = at::zeros_like(hs);
    }
    Tensor both = at::cat({hl, hs}, 1);
    if (config_.user_vector() == ModelConfig::CONCAT) return both;
    return ffn2_(Elu(ffn1_(both)));
  }

 private:
  struct Layout {
    int64_t b = 0, n = 0, ks = 0, nh = 0;  // session tokens ks = min(k, n), history nh (see MakeLayout)
    Tensor session_bias;  // [B, 1, T, T], T = ks (+ 1 with the generated token)
    Tensor session_mean;  // [B, 1, T], valid/count
    Tensor history_bias;  // [B, nh]
    Tensor history_any;   // [B, 1]: 1 if the sample has any history slot (per-sample sessions only)
  };

  Layout MakeLayout(const Batch& batch, bool with_token) const {
    Layout lay;
    lay.b = batch.batch_size;
    lay.n = batch.seq_len;
    lay.ks = std::min<int64_t>(k_, lay.n);
    // Sessions cut by time gaps can be shorter than k: the slots between such a session and the
    // last k then belong to the history, so the history attention spans all n slots.
    const bool per_sample_sessions = !batch.session_lengths.empty();
    lay.nh = per_sample_sessions ? lay.n : lay.n - lay.ks;
    const int64_t b = lay.b, n = lay.n;
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
          if (valid[static_cast<size_t>(key)] && !(config_.self_mask() && key == q)) {
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

  // [B, nh] bucket = min(floor(log2(1 + lag)), buckets - 1) of each history slot.
  Tensor TimeLagBuckets(const Batch& batch, const Layout& lay) const {
    std::vector<int64_t> buckets(static_cast<size_t>(lay.b * lay.nh), 0);
    const int64_t max_bucket = config_.time_lag_buckets() - 1;
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

  const ModelConfig config_;
  int64_t d_, k_, e_;
  EncoderLayer session_;
  Linear unit1_, unit2_;
  ParameterRef lag_emb_;
  Linear ffn1_, ffn2_;
};

}  // namespace

std::unique_ptr<UserTower> UserTower::Create(const ModelConfig& config, int64_t d, int64_t session_len,
                                             ParameterRegistry& params) {
  switch (config.kind()) {
    case ModelConfig::TWO_TOWER_MEAN:
      return std::make_unique<MeanPoolTower>(config, d, params);
    case ModelConfig::SASREC:
      return std::make_unique<SasRecTower>(config, d, params);
    case ModelConfig::T2DIFF:
    case ModelConfig::T2DIFF_NO_DIFFUSION:
    case ModelConfig::T2DIFF_NO_DRIFT:
      break;
  }
  return std::make_unique<MixedAttentionTower>(config, d, session_len, params);
}

}  // namespace t2d::model
