#include "model/fused_ops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <limits>

namespace t2d::model {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr float kEps = 1e-5f;

struct XentFunction : public torch::autograd::Function<XentFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& logits, const Tensor& labels) {
    const Tensor x = logits.contiguous();
    const Tensor mx = std::get<0>(x.max(1, true));
    Tensor p = (x - mx).exp_();                   // one B x C buffer, kept for backward
    const Tensor s = p.sum(1, true);
    const Tensor picked = x.gather(1, labels.view({-1, 1}));
    const Tensor loss = (s.log() + mx - picked).mean();
    p.div_(s);
    ctx->save_for_backward({p, labels});
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& p = saved[0];
    const Tensor& labels = saved[1];
    const Tensor scale = grad_out[0] / static_cast<double>(p.size(0));
    Tensor g = p * scale;
    g.scatter_add_(1, labels.view({-1, 1}), (-scale).expand({p.size(0), 1}));
    return {g, Tensor()};
  }
};

struct SoftmaxLossFunction : public torch::autograd::Function<SoftmaxLossFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& users, const Tensor& items, const Tensor& labels,
                        const Tensor& bias, const Tensor& exclude) {
    const Tensor items_t = items.t().contiguous();
    Tensor p = at::mm(users, items_t);  // logits, then probabilities, then the gradient
    if (bias.numel() > 0) p.sub_(bias.view({1, -1}));
    if (exclude.numel() > 0) p.masked_fill_(exclude, -std::numeric_limits<float>::infinity());
    const Tensor lab = labels.view({-1, 1});
    const Tensor picked = p.gather(1, lab);
    const Tensor mx = std::get<0>(p.max(1, true));
    p.sub_(mx).exp_();
    const Tensor s = p.sum(1, true);
    p.div_(s);
    ctx->save_for_backward({users, items, p, labels});
    return (s.log() + mx - picked).mean();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &users = saved[0], &items = saved[1], &labels = saved[3];
    Tensor g = saved[2];
    const Tensor scale = grad_out[0] / static_cast<double>(g.size(0));
    g.mul_(scale);
    g.scatter_add_(1, labels.view({-1, 1}), (-scale).expand({g.size(0), 1}));
    return {at::mm(g, items), at::mm(g.t(), users), Tensor(), Tensor(), Tensor()};
  }
};

// out = (LN(swish(y)) * gamma + beta) * mask, row by row. When `sig`/`xhat`/`rstd` are not null
// they receive sigmoid(y), the normalised activations and 1/std for the backward pass.
void SwishNormMaskRows(const Tensor& y, const Tensor& gamma, const Tensor& beta, const Tensor& mask, Tensor* out,
                       Tensor* sig, Tensor* xhat, Tensor* rstd) {
  const int64_t c = y.size(-1), rows = y.numel() / c;
  TORCH_CHECK(mask.numel() == rows && gamma.numel() == c && beta.numel() == c);
  const float* yp = y.data_ptr<float>();
  const float* gp = gamma.data_ptr<float>();
  const float* bp = beta.data_ptr<float>();
  const float* mp = mask.data_ptr<float>();
  float* op = out->data_ptr<float>();
  float* sp = sig != nullptr ? sig->data_ptr<float>() : nullptr;
  float* xp = xhat != nullptr ? xhat->data_ptr<float>() : nullptr;
  float* rp = rstd != nullptr ? rstd->data_ptr<float>() : nullptr;
  at::parallel_for(0, rows, 256, [&](int64_t lo, int64_t hi) {
    std::vector<float> a(static_cast<size_t>(c)), sg(static_cast<size_t>(c));
    for (int64_t r = lo; r < hi; ++r) {
      float* o = op + r * c;
      if (mp[r] == 0.f) {
        std::fill(o, o + c, 0.f);
        if (sp != nullptr) {
          std::fill(sp + r * c, sp + (r + 1) * c, 0.f);
          std::fill(xp + r * c, xp + (r + 1) * c, 0.f);
          rp[r] = 0.f;
        }
        continue;
      }
      const float* yr = yp + r * c;
      float mu = 0;
      for (int64_t k = 0; k < c; ++k) {
        const float s = 1.f / (1.f + std::exp(-yr[k]));
        sg[static_cast<size_t>(k)] = s;
        a[static_cast<size_t>(k)] = yr[k] * s;
        mu += a[static_cast<size_t>(k)];
      }
      mu /= static_cast<float>(c);
      float var = 0;
      for (int64_t k = 0; k < c; ++k) var += (a[static_cast<size_t>(k)] - mu) * (a[static_cast<size_t>(k)] - mu);
      const float inv = 1.f / std::sqrt(var / static_cast<float>(c) + kEps);
      const float m = mp[r];
      for (int64_t k = 0; k < c; ++k) {
        const float xh = (a[static_cast<size_t>(k)] - mu) * inv;
        o[k] = (xh * gp[k] + bp[k]) * m;
        if (sp != nullptr) {
          sp[r * c + k] = sg[static_cast<size_t>(k)];
          xp[r * c + k] = xh;
        }
      }
      if (rp != nullptr) rp[r] = inv;
    }
  });
}

struct SwishNormMaskFunction : public torch::autograd::Function<SwishNormMaskFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& y_in, const Tensor& gamma_in, const Tensor& beta_in,
                        const Tensor& mask_in) {
    const Tensor y = y_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
    const Tensor mask = mask_in.contiguous();
    Tensor out = at::empty_like(y), sig = at::empty_like(y), xhat = at::empty_like(y);
    Tensor rstd = at::empty({y.numel() / y.size(-1)}, y.options());
    SwishNormMaskRows(y, gamma, beta, mask, &out, &sig, &xhat, &rstd);
    ctx->save_for_backward({y, gamma, mask, sig, xhat, rstd});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &y = saved[0], &gamma = saved[1], &mask = saved[2], &sig = saved[3], &xhat = saved[4];
    const Tensor& rstd = saved[5];
    const Tensor dout = grad_out[0].contiguous();
    const int64_t c = y.size(-1), rows = y.numel() / c;
    // dgamma and dbeta: column sums of dout * mask * xhat and dout * mask (xhat is 0 on masked rows).
    const Tensor dm = dout.view({rows, c}) * mask.view({rows, 1});
    const Tensor dgamma = (dm * xhat.view({rows, c})).sum(0);
    const Tensor dbeta = dm.sum(0);
    Tensor dy = at::empty_like(y);
    const float* yp = y.data_ptr<float>();
    const float* gp = gamma.data_ptr<float>();
    const float* mp = mask.data_ptr<float>();
    const float* dp = dout.data_ptr<float>();
    const float* sp = sig.data_ptr<float>();
    const float* xp = xhat.data_ptr<float>();
    const float* rp = rstd.data_ptr<float>();
    float* dyp = dy.data_ptr<float>();
    at::parallel_for(0, rows, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const float m = mp[r];
        float* dyr = dyp + r * c;
        if (m == 0.f) {
          std::fill(dyr, dyr + c, 0.f);
          continue;
        }
        const float* d = dp + r * c;
        const float* xr = xp + r * c;
        float mean_dx = 0, mean_dx_xhat = 0;
        for (int64_t k = 0; k < c; ++k) {
          const float v = d[k] * m * gp[k];
          mean_dx += v;
          mean_dx_xhat += v * xr[k];
        }
        mean_dx /= static_cast<float>(c);
        mean_dx_xhat /= static_cast<float>(c);
        const float* yr = yp + r * c;
        const float* sr = sp + r * c;
        for (int64_t k = 0; k < c; ++k) {
          const float da = rp[r] * (d[k] * m * gp[k] - mean_dx - xr[k] * mean_dx_xhat);
          dyr[k] = da * sr[k] * (1.f + yr[k] * (1.f - sr[k]));
        }
      }
    });
    return {dy, dgamma, dbeta, Tensor()};
  }
};

}  // namespace

Tensor SoftmaxCrossEntropy(const Tensor& logits, const Tensor& labels) { return XentFunction::apply(logits, labels); }

Tensor SoftmaxLoss(const Tensor& users, const Tensor& items, const Tensor& labels, const Tensor& bias,
                   const Tensor& exclude) {
  // Custom functions take no undefined tensors: "none" travels as an empty tensor.
  return SoftmaxLossFunction::apply(users, items, labels, bias.defined() ? bias : at::empty({0}, users.options()),
                                    exclude.defined() ? exclude : at::empty({0}, at::kBool));
}

Tensor SwishNormMask(const Tensor& y, const Tensor& gamma, const Tensor& beta, const Tensor& mask) {
  if (!at::GradMode::is_enabled() || !(y.requires_grad() || gamma.requires_grad() || beta.requires_grad())) {
    const Tensor yc = y.contiguous();
    Tensor out = at::empty_like(yc);
    SwishNormMaskRows(yc, gamma.contiguous(), beta.contiguous(), mask.contiguous(), &out, nullptr, nullptr, nullptr);
    return out;
  }
  return SwishNormMaskFunction::apply(y, gamma, beta, mask);
}

}  // namespace t2d::model
