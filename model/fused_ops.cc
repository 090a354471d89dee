#include "model/fused_ops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "model/simd.h"

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

constexpr int64_t kLossChunks = 8;  // fixed row chunks of the blocked softmax loss (see SoftmaxLossRows)
constexpr int64_t kLossRows = 4;    // rows computed together, sharing each load of the item matrix
constexpr int64_t kBlockedLossMaxDim = 32;  // widest E for the blocked loss (BLAS wins above)
constexpr int64_t kLossGradBlock = 256;     // columns of a block of the gradient products (4 KB of 4 rows)

// Rows r0 .. r1 - 1 of the blocked softmax loss. it [E][n8] is the item matrix transposed, its
// n items padded to n8 (a multiple of 8) with zero columns. kLossRows rows at a time: their
// logits (minus bias, -inf where excluded or padding) in buf [kLossRows][n8], then exp(logit -
// max) in place, a row's loss log(sum exp) + max - logit[label] into row_loss, and with `grad`
// the products of its gradient g = scale * (softmax - onehot(label)) (the normalisation and the
// label folded into the products, not applied to buf): gu[row] = g . items (written) and
// git += g^T users (added: the chunk's partial, [E][n8]). Everything a row needs stays in
// L1/L2: the B x N logit matrix is never formed. The x86-64-v3 clone (AVX2 + FMA) contracts
// multiply-adds: the loss need not give the same bits on every machine.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void SoftmaxLossRows(
    const float* users, int64_t e, const float* it, int64_t n, int64_t n8, const float* bias, const bool* exclude,
    const int64_t* labels, int64_t r0, int64_t r1, float scale, bool grad, double* row_loss, float* gu, float* git,
    float* buf) {
  using namespace simd;  // NOLINT
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t r = r0; r < r1; r += kLossRows) {
    const int64_t rows = std::min(kLossRows, r1 - r);
    const float* u[kLossRows];
    for (int64_t q = 0; q < kLossRows; ++q) u[q] = users + std::min(r + q, r1 - 1) * e;  // spare lanes: a copy
    // Two vectors of columns at a time, so that each broadcast of a user value serves both.
    int64_t jl = 0;
    for (; jl + 2 * kW <= n8; jl += 2 * kW) {
      const int64_t j0 = jl;
      V acc[kLossRows], acc2[kLossRows];
      for (int64_t q = 0; q < kLossRows; ++q) acc[q] = acc2[q] = Splat(0.f);
      for (int64_t k = 0; k < e; ++k) {
        const V iv = Load(it + k * n8 + j0), iv2 = Load(it + k * n8 + j0 + kW);
        for (int64_t q = 0; q < kLossRows; ++q) {
          const V uv = Splat(u[q][k]);
          acc[q] = acc[q] + uv * iv;
          acc2[q] = acc2[q] + uv * iv2;
        }
      }
      for (int64_t q = 0; q < kLossRows; ++q) {
        Store(buf + q * n8 + j0, acc[q]);
        Store(buf + q * n8 + j0 + kW, acc2[q]);
      }
    }
    for (; jl < n8; jl += kW) {
      const int64_t j0 = jl;
      V acc[kLossRows];
      for (int64_t q = 0; q < kLossRows; ++q) acc[q] = Splat(0.f);
      for (int64_t k = 0; k < e; ++k) {
        const V iv = Load(it + k * n8 + j0);
        for (int64_t q = 0; q < kLossRows; ++q) acc[q] = acc[q] + Splat(u[q][k]) * iv;
      }
      for (int64_t q = 0; q < kLossRows; ++q) Store(buf + q * n8 + j0, acc[q]);
    }
    float norm[kLossRows] = {};
    for (int64_t q = 0; q < rows; ++q) {
      const int64_t row = r + q;
      float* l = buf + q * n8;
      if (bias != nullptr) {
        for (int64_t j = 0; j < n; ++j) l[j] -= bias[j];
      }
      if (exclude != nullptr) {
        const bool* ex = exclude + row * n;
        for (int64_t j = 0; j < n; ++j) l[j] = ex[j] ? -inf : l[j];
      }
      for (int64_t j = n; j < n8; ++j) l[j] = -inf;
      const float picked = l[labels[row]];
      // The maximum in four independent chains (a max is exact: any order gives the same).
      V mv[4] = {Splat(-inf), Splat(-inf), Splat(-inf), Splat(-inf)};
      int64_t jm = 0;
      for (; jm + 4 * kW <= n8; jm += 4 * kW) {
        for (int c = 0; c < 4; ++c) {
          const V x = Load(l + jm + c * kW);
          mv[c] = x > mv[c] ? x : mv[c];
        }
      }
      for (; jm < n8; jm += kW) {
        const V x = Load(l + jm);
        mv[0] = x > mv[0] ? x : mv[0];
      }
      float m = -inf;
      for (int c = 0; c < 4; ++c) {
        for (int k = 0; k < kW; ++k) m = std::max(m, mv[c][k]);
      }
      V sv = Splat(0.f);
      for (int64_t j0 = 0; j0 < n8; j0 += kW) {
        const V x = Load(l + j0);
        const V p = Masked(Exp(x - Splat(m)), x > Splat(-inf));  // excluded: exactly 0
        Store(l + j0, p);
        sv = sv + p;
      }
      float sum = 0;
      for (int k = 0; k < kW; ++k) sum += sv[k];
      row_loss[row] = std::log(static_cast<double>(sum)) + m - picked;
      norm[q] = scale / sum;  // g = norm * p - scale * onehot(label), applied below without a pass
    }
    if (!grad) continue;
    // The gradient products, column blocks outer and E inner, so that a block of the rows'
    // exp(logit - max) stays in L1 across all E (row-major over buf, it would come from L2 2E
    // times). Each lane sums the same terms in the same order as a pass per k would.
    float ukf[kLossRows][kBlockedLossMaxDim];
    alignas(32) float lanes[kLossRows][kBlockedLossMaxDim][kW] = {};
    for (int64_t q = 0; q < kLossRows; ++q) {
      for (int64_t k = 0; k < e; ++k) ukf[q][k] = q < rows ? norm[q] * u[q][k] : 0.f;
    }
    for (int64_t jb = 0; jb < n8; jb += kLossGradBlock) {
      const int64_t je = std::min(n8, jb + kLossGradBlock);
      for (int64_t k = 0; k < e; ++k) {
        const float* itk = it + k * n8;
        float* gk = git + k * n8;
        V acc[kLossRows], uk[kLossRows];
        for (int64_t q = 0; q < kLossRows; ++q) {
          acc[q] = Load(lanes[q][k]);
          uk[q] = Splat(ukf[q][k]);
        }
        for (int64_t j0 = jb; j0 < je; j0 += kW) {
          const V iv = Load(itk + j0);
          V a = Load(gk + j0);
          for (int64_t q = 0; q < kLossRows; ++q) {
            const V p = Load(buf + q * n8 + j0);
            acc[q] = acc[q] + p * iv;
            a = a + p * uk[q];
          }
          Store(gk + j0, a);
        }
        for (int64_t q = 0; q < kLossRows; ++q) Store(lanes[q][k], acc[q]);
      }
    }
    for (int64_t k = 0; k < e; ++k) {
      for (int64_t q = 0; q < rows; ++q) {
        float v = 0;
        for (int lane = 0; lane < kW; ++lane) v += lanes[q][k][lane];
        gu[(r + q) * e + k] = norm[q] * v - scale * it[k * n8 + labels[r + q]];
      }
      float* gk = git + k * n8;
      for (int64_t q = 0; q < rows; ++q) gk[labels[r + q]] -= scale * u[q][k];
    }
  }
}

struct LossParts {
  Tensor loss;    // scalar: the mean over rows
  Tensor gusers;  // [B, E] d(loss) / d(users); undefined without grad
  Tensor gitems;  // [N, E]
};

// The softmax loss and (with `grad`) its gradient, rows split into kLossChunks fixed chunks run
// in parallel; the chunks' item-gradient partials are added in chunk order, so the result does
// not depend on the thread count.
LossParts BlockedSoftmaxLoss(const Tensor& users_in, const Tensor& items, const Tensor& labels_in, const Tensor& bias_in,
                             const Tensor& exclude_in, bool grad) {
  const Tensor users = users_in.contiguous(), labels = labels_in.contiguous();
  const Tensor bias = bias_in.numel() > 0 ? bias_in.contiguous() : Tensor();
  const Tensor exclude = exclude_in.numel() > 0 ? exclude_in.contiguous() : Tensor();
  const int64_t b = users.size(0), e = users.size(1), n = items.size(0), n8 = (n + 7) / 8 * 8;
  TORCH_CHECK(items.size(1) == e && labels.numel() == b, "SoftmaxLoss: shapes");
  Tensor it = at::zeros({e, n8}, at::kFloat);
  it.narrow(1, 0, n).copy_(items.t());
  const int64_t per_chunk = (b + kLossChunks - 1) / kLossChunks, chunks = (b + per_chunk - 1) / per_chunk;
  std::vector<double> row_loss(static_cast<size_t>(b));
  LossParts out;
  Tensor partial;
  if (grad) {
    out.gusers = at::empty({b, e}, at::kFloat);
    partial = at::zeros({chunks, e, n8}, at::kFloat);
  }
  const float* up = users.data_ptr<float>();
  const float* ip = it.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const bool* ep = exclude.defined() ? exclude.data_ptr<bool>() : nullptr;
  const int64_t* lp = labels.data_ptr<int64_t>();
  float* gup = grad ? out.gusers.data_ptr<float>() : nullptr;
  float* pp = grad ? partial.data_ptr<float>() : nullptr;
  const float scale = 1.f / static_cast<float>(b);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> buf(static_cast<size_t>(kLossRows * n8));
    for (int64_t c = c0; c < c1; ++c) {
      SoftmaxLossRows(up, e, ip, n, n8, bp, ep, lp, c * per_chunk, std::min(b, (c + 1) * per_chunk), scale, grad,
                      row_loss.data(), gup, grad ? pp + c * e * n8 : nullptr, buf.data());
    }
  });
  double sum = 0;
  for (double v : row_loss) sum += v;
  out.loss = at::scalar_tensor(sum / static_cast<double>(b), at::kFloat);
  if (grad) {
    Tensor git = partial[0];
    for (int64_t c = 1; c < chunks; ++c) git.add_(partial[c]);
    out.gitems = git.narrow(1, 0, n).t().contiguous();
  }
  return out;
}

// The softmax loss through the whole B x N logit matrix and BLAS: for wide vectors (E > 32),
// where the products are compute-bound and BLAS beats the blocked rows.
struct SoftmaxLossMatrixFunction : public torch::autograd::Function<SoftmaxLossMatrixFunction> {
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

// The loss and its gradient are computed together in forward (the logits never leave cache);
// backward scales the saved gradient.
struct SoftmaxLossFunction : public torch::autograd::Function<SoftmaxLossFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& users, const Tensor& items, const Tensor& labels,
                        const Tensor& bias, const Tensor& exclude) {
    RECORD_FUNCTION("BlockedSoftmaxLoss", std::vector<c10::IValue>());
    LossParts parts = BlockedSoftmaxLoss(users, items, labels, bias, exclude, true);
    ctx->save_for_backward({parts.gusers, parts.gitems});
    return parts.loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    return {saved[0] * grad_out[0], saved[1] * grad_out[0], Tensor(), Tensor(), Tensor()};
  }
};

// ELU (alpha 1): x where x > 0, else expm1(x): a degree-9 Taylor polynomial where |x| < 0.5
// (exp(x) - 1 would lose the low bits there), exp(x) - 1 beyond. (A function, not a lambda: a
// lambda would be compiled for the baseline target and take its vectors through memory.)
T2D_INLINE simd::V EluVector(simd::V v) {
  using namespace simd;  // NOLINT
  V p = Splat(2.7557319e-6f);
  p = p * v + Splat(2.4801587e-5f);
  p = p * v + Splat(1.9841270e-4f);
  p = p * v + Splat(1.3888889e-3f);
  p = p * v + Splat(8.3333333e-3f);
  p = p * v + Splat(4.1666667e-2f);
  p = p * v + Splat(1.6666667e-1f);
  p = p * v + Splat(0.5f);
  const V small = v + v * v * p;
  const V large = Exp(v) - Splat(1.f);
  const V half = Splat(0.5f);
  const V m1 = (v < half) & (v > -half) ? small : large;
  return v > Splat(0.f) ? v : m1;
}

// EluVector over `count` floats in place.
__attribute__((target_clones("avx2", "default"))) void EluInPlace(float* x, int64_t count) {
  using namespace simd;  // NOLINT
  int64_t i = 0;
  for (; i + kW <= count; i += kW) Store(x + i, EluVector(Load(x + i)));
  if (i < count) {
    float t[kW] = {};
    std::copy(x + i, x + count, t);
    Store(t, EluVector(Load(t)));
    std::copy(t, t + (count - i), x + i);
  }
}

// The ELU's input gradient from its output: dx = g where out > 0 (there out = x), else
// g * exp(x) = g * (out + 1).
__attribute__((target_clones("avx2", "default"))) void EluGrad(const float* out, const float* g, int64_t count,
                                                                float* dx) {
  using namespace simd;  // NOLINT
  const V zero = Splat(0.f), one = Splat(1.f);
  int64_t i = 0;
  for (; i + kW <= count; i += kW) {
    const V o = Load(out + i);
    Store(dx + i, Load(g + i) * (o > zero ? one : o + one));
  }
  for (; i < count; ++i) dx[i] = g[i] * (out[i] > 0.f ? 1.f : out[i] + 1.f);
}

struct EluFunction : public torch::autograd::Function<EluFunction> {
  static Tensor Compute(const Tensor& x) {
    Tensor out = x.contiguous().clone();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, out.numel(), 16384, [&](int64_t lo, int64_t hi) { EluInPlace(op + lo, hi - lo); });
    return out;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& x) {
    Tensor out = Compute(x);
    ctx->save_for_backward({out});
    return out;
  }
  // d elu / dx = 1 where x > 0 (there out = x > 0), else exp(x) = out + 1.
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const Tensor out = ctx->get_saved_variables()[0];
    const Tensor g = grad_out[0].contiguous();
    Tensor dx = at::empty_like(out);
    const float* op = out.data_ptr<float>();
    const float* gp = g.data_ptr<float>();
    float* dp = dx.data_ptr<float>();
    at::parallel_for(0, out.numel(), 16384, [&](int64_t lo, int64_t hi) { EluGrad(op + lo, gp + lo, hi - lo, dp + lo); });
    return {dx};
  }
};

// The sum of a vector's lanes, in lane order.
T2D_INLINE float LaneSum(simd::V v) {
  float s = v[0];
  for (int k = 1; k < simd::kW; ++k) s += v[k];
  return s;
}

// Attention's sizes (see Attention in fused_ops.h); keys are padded to tp, a multiple of 8.
struct AttentionShape {
  int64_t b, t, tp, d, heads, dh;
  float scale;
};

// The scratch of one sample: a head's K and V transposed ([dh][tp] each, padded keys zero), their
// gradients, one row of score gradients, and the sample's bias with padded keys -inf ([t][tp]).
struct AttentionScratch {
  explicit AttentionScratch(const AttentionShape& sh)
      : kt(static_cast<size_t>(sh.dh * sh.tp)), vt(kt.size()), dkt(kt.size()), dvt(kt.size()),
        ds(static_cast<size_t>(sh.tp)), bias(static_cast<size_t>(sh.t * sh.tp), -std::numeric_limits<float>::infinity()) {}
  std::vector<float> kt, vt, dkt, dvt, ds, bias;
};

// Head h's K and V of the sample x [t][3d] into the scratch, transposed.
void LoadKeys(const AttentionShape& sh, const float* x, int64_t h, AttentionScratch* s) {
  const int64_t row = 3 * sh.d;
  for (int64_t j = 0; j < sh.t; ++j) {
    const float* k = x + j * row + sh.d + h * sh.dh;
    const float* v = k + sh.d;
    for (int64_t e = 0; e < sh.dh; ++e) {
      s->kt[static_cast<size_t>(e * sh.tp + j)] = k[e];
      s->vt[static_cast<size_t>(e * sh.tp + j)] = v[e];
    }
  }
}

// One sample, forward: the probabilities p [heads][t][tp] (padded keys exactly 0) and out [t][d].
// Vectorised over keys; each query's scores, softmax and output in one pass.
__attribute__((target_clones("avx2", "default"))) void AttentionSampleForward(const AttentionShape& sh, const float* x,
                                                                               const float* bias, AttentionScratch* s,
                                                                               float* p, float* out) {
  using namespace simd;  // NOLINT
  const int64_t t = sh.t, tp = sh.tp, dh = sh.dh, row = 3 * sh.d;
  const float* kt = s->kt.data();
  const float* vt = s->vt.data();
  const V lo = Splat(-87.f);  // exp(-87) is still a normal float
  for (int64_t i = 0; i < t; ++i) std::copy(bias + i * t, bias + (i + 1) * t, s->bias.data() + i * tp);
  for (int64_t h = 0; h < sh.heads; ++h) {
    LoadKeys(sh, x, h, s);
    for (int64_t i = 0; i < t; ++i) {
      float* pi = p + (h * t + i) * tp;
      const float* qi = x + i * row + h * dh;
      const float* bi = s->bias.data() + i * tp;
      V mv = Splat(-std::numeric_limits<float>::infinity());
      for (int64_t j0 = 0; j0 < tp; j0 += kW) {
        V acc = Splat(0.f);
        for (int64_t e = 0; e < dh; ++e) acc = acc + Splat(qi[e] * sh.scale) * Load(kt + e * tp + j0);
        acc = acc + Load(bi + j0);
        Store(pi + j0, acc);
        mv = acc > mv ? acc : mv;
      }
      float m = mv[0];
      for (int k = 1; k < kW; ++k) m = std::max(m, mv[k]);
      V sum = Splat(0.f);
      for (int64_t j0 = 0; j0 < tp; j0 += kW) {
        // Exactly 0 for forbidden and padded keys and for scores more than 87 below the maximum,
        // whose exp is taken of -87 (below, it would be a denormal, each a microcode assist) and
        // dropped; a NaN score stays NaN, so that the row's output and the loss are NaN as with
        // the stock ops.
        const V v = Load(pi + j0) - Splat(m);
        const V ev = v > lo ? Exp(v > lo ? v : lo) : (v == v ? Splat(0.f) : v);
        Store(pi + j0, ev);
        sum = sum + ev;
      }
      const V inv = Splat(1.f / LaneSum(sum));
      for (int64_t j0 = 0; j0 < tp; j0 += kW) Store(pi + j0, Load(pi + j0) * inv);
      float* oi = out + i * sh.d + h * dh;
      for (int64_t e = 0; e < dh; ++e) {
        V acc = Splat(0.f);
        for (int64_t j0 = 0; j0 < tp; j0 += kW) acc = acc + Load(pi + j0) * Load(vt + e * tp + j0);
        oi[e] = LaneSum(acc);
      }
    }
  }
}

// One sample, backward: with go = d loss / d out [t][d], writes dx [t][3d]:
// dv_j = sum_i p_ij go_i; dp_ij = go_i . v_j; ds_ij = p_ij (dp_ij - sum_j' p_ij' dp_ij');
// dq_i = scale sum_j ds_ij k_j; dk_j = sum_i ds_ij (scale q_i).
__attribute__((target_clones("avx2", "default"))) void AttentionSampleBackward(const AttentionShape& sh, const float* x,
                                                                                const float* p, const float* go,
                                                                                AttentionScratch* s, float* dx) {
  using namespace simd;  // NOLINT
  const int64_t t = sh.t, tp = sh.tp, dh = sh.dh, row = 3 * sh.d;
  const float* kt = s->kt.data();
  const float* vt = s->vt.data();
  float* dkt = s->dkt.data();
  float* dvt = s->dvt.data();
  float* ds = s->ds.data();
  for (int64_t h = 0; h < sh.heads; ++h) {
    LoadKeys(sh, x, h, s);
    std::fill(s->dkt.begin(), s->dkt.end(), 0.f);
    std::fill(s->dvt.begin(), s->dvt.end(), 0.f);
    for (int64_t i = 0; i < t; ++i) {
      const float* pi = p + (h * t + i) * tp;
      const float* gi = go + i * sh.d + h * dh;
      const float* qi = x + i * row + h * dh;
      V dot = Splat(0.f);
      for (int64_t j0 = 0; j0 < tp; j0 += kW) {
        const V pv = Load(pi + j0);
        V dp = Splat(0.f);
        for (int64_t e = 0; e < dh; ++e) {
          const V ge = Splat(gi[e]);
          dp = dp + ge * Load(vt + e * tp + j0);
          Store(dvt + e * tp + j0, Load(dvt + e * tp + j0) + pv * ge);
        }
        Store(ds + j0, dp);
        dot = dot + pv * dp;
      }
      const V dotv = Splat(LaneSum(dot));
      for (int64_t j0 = 0; j0 < tp; j0 += kW) {
        const V dsv = Load(pi + j0) * (Load(ds + j0) - dotv);
        Store(ds + j0, dsv);
        for (int64_t e = 0; e < dh; ++e) {
          Store(dkt + e * tp + j0, Load(dkt + e * tp + j0) + dsv * Splat(qi[e] * sh.scale));
        }
      }
      float* dqi = dx + i * row + h * dh;
      for (int64_t e = 0; e < dh; ++e) {
        V acc = Splat(0.f);
        for (int64_t j0 = 0; j0 < tp; j0 += kW) acc = acc + Load(ds + j0) * Load(kt + e * tp + j0);
        dqi[e] = sh.scale * LaneSum(acc);
      }
    }
    for (int64_t j = 0; j < t; ++j) {
      float* dk = dx + j * row + sh.d + h * dh;
      float* dv = dk + sh.d;
      for (int64_t e = 0; e < dh; ++e) {
        dk[e] = dkt[e * tp + j];
        dv[e] = dvt[e * tp + j];
      }
    }
  }
}

// Multi-head attention from packed projections (see Attention in fused_ops.h), one sample at a
// time; the probabilities are kept for backward ([B, heads, t, tp]).
struct AttentionFunction : public torch::autograd::Function<AttentionFunction> {
  static AttentionShape ShapeOf(const Tensor& qkv, int64_t heads) {
    TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % 3 == 0 && qkv.scalar_type() == at::kFloat, "Attention: qkv [B, t, 3d]");
    const int64_t d = qkv.size(2) / 3;
    TORCH_CHECK(heads >= 1 && d % heads == 0, "Attention: ", heads, " heads do not divide d = ", d);
    const int64_t dh = d / heads, t = qkv.size(1);
    return {qkv.size(0), t, (t + simd::kW - 1) / simd::kW * simd::kW, d, heads, dh,
            static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)))};
  }
  static int64_t Grain(const AttentionShape& sh) { return std::max<int64_t>(1, 4096 / (sh.t * sh.tp * sh.heads)); }
  // out [B, t, d] and the probabilities p [B, heads, t, tp].
  static void Run(const AttentionShape& sh, const float* qkv, const float* bias, float* out, float* p) {
    at::parallel_for(0, sh.b, Grain(sh), [&](int64_t lo, int64_t hi) {
      AttentionScratch scratch(sh);
      for (int64_t b = lo; b < hi; ++b) {
        AttentionSampleForward(sh, qkv + b * sh.t * 3 * sh.d, bias + b * sh.t * sh.t, &scratch,
                               p + b * sh.heads * sh.t * sh.tp, out + b * sh.t * sh.d);
      }
    });
  }
  static Tensor Compute(const Tensor& qkv_in, const Tensor& bias_in, int64_t heads, Tensor* p) {
    const Tensor qkv = qkv_in.contiguous(), bias = bias_in.contiguous();
    const AttentionShape sh = ShapeOf(qkv, heads);
    TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.numel() == sh.b * sh.t * sh.t,
                "Attention: bias must hold B x t x t floats");
    Tensor out = at::empty({sh.b, sh.t, sh.d}, qkv.options());
    *p = at::empty({sh.b, sh.heads, sh.t, sh.tp}, qkv.options());
    Run(sh, qkv.data_ptr<float>(), bias.data_ptr<float>(), out.data_ptr<float>(), p->data_ptr<float>());
    return out;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& qkv_in, const Tensor& bias, int64_t heads) {
    const Tensor qkv = qkv_in.contiguous();
    Tensor p;
    Tensor out = Compute(qkv, bias, heads, &p);
    ctx->save_for_backward({qkv, p});
    ctx->saved_data["heads"] = heads;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &qkv = saved[0], &p = saved[1];
    const AttentionShape sh = ShapeOf(qkv, ctx->saved_data["heads"].toInt());
    const Tensor go = grad_out[0].contiguous();
    Tensor dqkv = at::empty_like(qkv);
    const float* xp = qkv.data_ptr<float>();
    const float* pp = p.data_ptr<float>();
    const float* gp = go.data_ptr<float>();
    float* dp = dqkv.data_ptr<float>();
    at::parallel_for(0, sh.b, Grain(sh), [&](int64_t lo, int64_t hi) {
      AttentionScratch scratch(sh);
      for (int64_t b = lo; b < hi; ++b) {
        AttentionSampleBackward(sh, xp + b * sh.t * 3 * sh.d, pp + b * sh.heads * sh.t * sh.tp, gp + b * sh.t * sh.d,
                                &scratch, dp + b * sh.t * 3 * sh.d);
      }
    });
    return {dqkv, Tensor(), Tensor()};
  }
};

// out = (LN(swish(y)) * gamma + beta) * mask, row by row. When `sig`/`xhat`/`rstd` are not null
// they receive sigmoid(y), the normalised activations and 1/std for the backward pass.
void SwishNormMaskRows(const Tensor& y, const Tensor& gamma, const Tensor& beta, const Tensor& mask, bool swish,
                       Tensor* out, Tensor* sig, Tensor* xhat, Tensor* rstd) {
  const int64_t c = y.size(-1), rows = y.numel() / c;
  TORCH_CHECK((mask.numel() == rows || mask.numel() == 0) && gamma.numel() == c && beta.numel() == c);
  const float* yp = y.data_ptr<float>();
  const float* gp = gamma.data_ptr<float>();
  const float* bp = beta.data_ptr<float>();
  const float* mp = mask.numel() > 0 ? mask.data_ptr<float>() : nullptr;
  float* op = out->data_ptr<float>();
  float* sp = sig != nullptr ? sig->data_ptr<float>() : nullptr;
  float* xp = xhat != nullptr ? xhat->data_ptr<float>() : nullptr;
  float* rp = rstd != nullptr ? rstd->data_ptr<float>() : nullptr;
  at::parallel_for(0, rows, 256, [&](int64_t lo, int64_t hi) {
    std::vector<float> a(static_cast<size_t>(c)), sg(static_cast<size_t>(c));
    for (int64_t r = lo; r < hi; ++r) {
      float* o = op + r * c;
      const float m = mp != nullptr ? mp[r] : 1.f;
      if (m == 0.f) {
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
        const float s = swish ? 1.f / (1.f + std::exp(-yr[k])) : 1.f;
        sg[static_cast<size_t>(k)] = s;
        a[static_cast<size_t>(k)] = swish ? yr[k] * s : yr[k];
        mu += a[static_cast<size_t>(k)];
      }
      mu /= static_cast<float>(c);
      float var = 0;
      for (int64_t k = 0; k < c; ++k) var += (a[static_cast<size_t>(k)] - mu) * (a[static_cast<size_t>(k)] - mu);
      const float inv = 1.f / std::sqrt(var / static_cast<float>(c) + kEps);
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
                        const Tensor& mask_in, bool swish) {
    const Tensor y = y_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
    const int64_t rows = y.numel() / y.size(-1);
    const Tensor mask = mask_in.numel() > 0 ? mask_in.contiguous() : at::ones({rows}, y.options());
    Tensor out = at::empty_like(y), sig = at::empty_like(y), xhat = at::empty_like(y);
    Tensor rstd = at::empty({rows}, y.options());
    SwishNormMaskRows(y, gamma, beta, mask, swish, &out, &sig, &xhat, &rstd);
    ctx->save_for_backward({y, gamma, mask, sig, xhat, rstd});
    ctx->saved_data["swish"] = swish;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &y = saved[0], &gamma = saved[1], &mask = saved[2], &sig = saved[3], &xhat = saved[4];
    const Tensor& rstd = saved[5];
    const bool swish = ctx->saved_data["swish"].toBool();
    const Tensor dout = grad_out[0].contiguous();
    const int64_t c = y.size(-1), rows = y.numel() / c;
    // dgamma and dbeta (column sums of dout * mask * xhat and dout * mask) are accumulated in the
    // same pass, one partial sum per worker thread.
    const int64_t workers = at::get_num_threads();
    Tensor partial = at::zeros({workers, 2, c}, y.options());
    float* pp = partial.data_ptr<float>();
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
      const int64_t tid = std::min<int64_t>(at::get_thread_num(), workers - 1);
      float* dg = pp + tid * 2 * c;
      float* db = dg + c;
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
          dg[k] += d[k] * m * xr[k];
          db[k] += d[k] * m;
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
          dyr[k] = swish ? da * sr[k] * (1.f + yr[k] * (1.f - sr[k])) : da;
        }
      }
    });
    const Tensor sums = partial.sum(0);
    return {dy, sums[0], sums[1], Tensor(), Tensor()};
  }
};

// Plain loops without loop-distribute-patterns: std::fill and std::copy, or GCC's pattern
// recognition, would make each slot's few floats a memset and a memmove call.
__attribute__((optimize("no-tree-loop-distribute-patterns"))) void GatherForward(
    const Tensor& id_rows, const Tensor& tag_rows, const Tensor& id_index, const Tensor& tag_offsets,
    const Tensor& tag_index, Tensor* out) {
  const int64_t di = id_rows.size(1), dt = tag_rows.size(1), d = di + dt;
  const int64_t slots = id_index.numel();
  const float* ip = id_rows.data_ptr<float>();
  const float* tp = dt > 0 ? tag_rows.data_ptr<float>() : nullptr;
  const int64_t* idx = id_index.data_ptr<int64_t>();
  const int64_t* off = dt > 0 ? tag_offsets.data_ptr<int64_t>() : nullptr;
  const int64_t* tix = dt > 0 ? tag_index.data_ptr<int64_t>() : nullptr;
  float* op = out->data_ptr<float>();
  at::parallel_for(0, slots, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t s = lo; s < hi; ++s) {
      float* o = op + s * d;
      for (int64_t c = 0; c < d; ++c) o[c] = 0.f;
      if (idx[s] < 0) continue;
      const float* src = ip + idx[s] * di;
      for (int64_t c = 0; c < di; ++c) o[c] = src[c];
      if (dt == 0 || off[s + 1] == off[s]) continue;
      for (int64_t k = off[s]; k < off[s + 1]; ++k) {
        const float* t = tp + tix[k] * dt;
        for (int64_t c = 0; c < dt; ++c) o[di + c] += t[c];
      }
      const float inv = 1.f / static_cast<float>(off[s + 1] - off[s]);
      for (int64_t c = 0; c < dt; ++c) o[di + c] *= inv;
    }
  });
}

struct GatherFunction : public torch::autograd::Function<GatherFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& id_rows_in, const Tensor& tag_rows_in,
                        const Tensor& id_index, const Tensor& tag_offsets, const Tensor& tag_index) {
    const Tensor id_rows = id_rows_in.contiguous(), tag_rows = tag_rows_in.contiguous();
    const int64_t dt = tag_rows.size(1);
    Tensor out = at::empty({id_index.numel(), id_rows.size(1) + dt}, id_rows.options());
    GatherForward(id_rows, tag_rows, id_index, tag_offsets, tag_index, &out);
    ctx->save_for_backward({id_index, tag_offsets, tag_index});
    ctx->saved_data["shape"] = std::vector<int64_t>{id_rows.size(0), id_rows.size(1), tag_rows.size(0), dt};
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> shape = ctx->saved_data["shape"].toIntVector();
    const int64_t u = shape[0], di = shape[1], ut = shape[2], dt = shape[3], d = di + dt;
    const Tensor g = grad_out[0].contiguous();
    Tensor gid = at::zeros({u, di}, g.options());
    Tensor gtag = dt > 0 ? at::zeros({ut, dt}, g.options()) : Tensor();
    const int64_t* idx = saved[0].data_ptr<int64_t>();
    const int64_t* off = dt > 0 ? saved[1].data_ptr<int64_t>() : nullptr;
    const int64_t* tix = dt > 0 ? saved[2].data_ptr<int64_t>() : nullptr;
    const float* gp = g.data_ptr<float>();
    float* gi = gid.data_ptr<float>();
    float* gt = dt > 0 ? gtag.data_ptr<float>() : nullptr;
    const int64_t slots = saved[0].numel();
    for (int64_t s = 0; s < slots; ++s) {
      if (idx[s] < 0) continue;
      const float* gs = gp + s * d;
      float* dst = gi + idx[s] * di;
      for (int64_t c = 0; c < di; ++c) dst[c] += gs[c];
      if (dt == 0 || off[s + 1] == off[s]) continue;
      const float inv = 1.f / static_cast<float>(off[s + 1] - off[s]);
      for (int64_t k = off[s]; k < off[s + 1]; ++k) {
        float* t = gt + tix[k] * dt;
        for (int64_t c = 0; c < dt; ++c) t[c] += gs[di + c] * inv;
      }
    }
    return {gid, gtag, Tensor(), Tensor(), Tensor()};
  }
};

struct Conv3ColumnsFunction : public torch::autograd::Function<Conv3ColumnsFunction> {
  static Tensor Columns(const Tensor& h_in) {
    const Tensor h = h_in.contiguous();
    const int64_t b = h.size(0), len = h.size(1), c = h.size(2);
    Tensor cols = at::empty({b, len, 3 * c}, h.options());
    const float* hp = h.data_ptr<float>();
    float* cp = cols.data_ptr<float>();
    at::parallel_for(0, b, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const float* hs = hp + i * len * c;
        float* cs = cp + i * len * 3 * c;
        for (int64_t j = 0; j < len; ++j) {
          float* dst = cs + j * 3 * c;
          if (j > 0) {
            std::copy(hs + (j - 1) * c, hs + j * c, dst);
          } else {
            std::fill(dst, dst + c, 0.f);
          }
          std::copy(hs + j * c, hs + (j + 1) * c, dst + c);
          if (j + 1 < len) {
            std::copy(hs + (j + 1) * c, hs + (j + 2) * c, dst + 2 * c);
          } else {
            std::fill(dst + 2 * c, dst + 3 * c, 0.f);
          }
        }
      }
    });
    return cols;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& h) {
    ctx->saved_data["c"] = h.size(2);
    return Columns(h);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const Tensor g = grad_out[0].contiguous();
    const int64_t b = g.size(0), len = g.size(1), c = ctx->saved_data["c"].toInt();
    Tensor gh = at::empty({b, len, c}, g.options());
    const float* gp = g.data_ptr<float>();
    float* hp = gh.data_ptr<float>();
    at::parallel_for(0, b, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const float* gs = gp + i * len * 3 * c;
        float* hs = hp + i * len * c;
        for (int64_t j = 0; j < len; ++j) {
          float* dst = hs + j * c;
          const float* mid = gs + j * 3 * c + c;  // h[j] as the centre tap of column j
          for (int64_t k = 0; k < c; ++k) dst[k] = mid[k];
          if (j + 1 < len) {  // h[j] as the left tap of column j + 1
            const float* left = gs + (j + 1) * 3 * c;
            for (int64_t k = 0; k < c; ++k) dst[k] += left[k];
          }
          if (j > 0) {  // h[j] as the right tap of column j - 1
            const float* right = gs + (j - 1) * 3 * c + 2 * c;
            for (int64_t k = 0; k < c; ++k) dst[k] += right[k];
          }
        }
      }
    });
    return {gh};
  }
};

struct PoolColumnsFunction : public torch::autograd::Function<PoolColumnsFunction> {
  static Tensor Pool(const Tensor& h) {
    const int64_t b = h.size(0), len = h.size(1), c = h.size(2);
    TORCH_CHECK(len % 2 == 0);
    Tensor p = at::empty({b, len / 2, c}, h.options());
    const float* hp = h.data_ptr<float>();
    float* pp = p.data_ptr<float>();
    at::parallel_for(0, b * (len / 2), 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const float* a = hp + 2 * r * c;
        const float* e = a + c;
        float* o = pp + r * c;
        for (int64_t k = 0; k < c; ++k) o[k] = e[k] > a[k] ? e[k] : a[k];
      }
    });
    return p;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& h_in) {
    const Tensor h = h_in.contiguous();
    ctx->save_for_backward({h});
    ctx->saved_data["c"] = h.size(2);
    return Conv3ColumnsFunction::Columns(Pool(h));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const Tensor h = ctx->get_saved_variables()[0];
    const Tensor gp = Conv3ColumnsFunction::backward(ctx, grad_out)[0];
    const int64_t b = h.size(0), len = h.size(1), c = h.size(2);
    Tensor gh = at::empty_like(h);
    const float* hp = h.data_ptr<float>();
    const float* g = gp.data_ptr<float>();
    float* out = gh.data_ptr<float>();
    at::parallel_for(0, b * (len / 2), 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const float* a = hp + 2 * r * c;
        const float* e = a + c;
        float* ga = out + 2 * r * c;
        float* ge = ga + c;
        const float* gr = g + r * c;
        for (int64_t k = 0; k < c; ++k) {
          const bool second = e[k] > a[k];
          ga[k] = second ? 0.f : gr[k];
          ge[k] = second ? gr[k] : 0.f;
        }
      }
    });
    return {gh};
  }
};

struct UpsampleConcatFunction : public torch::autograd::Function<UpsampleConcatFunction> {
  static Tensor Build(const Tensor& low_in, const Tensor& skip_in, const Tensor& mask_in) {
    const Tensor low = low_in.contiguous(), skip = skip_in.contiguous(), mask = mask_in.contiguous();
    const int64_t b = skip.size(0), len = skip.size(1), c = skip.size(2);
    TORCH_CHECK(low.size(0) == b && low.size(1) * 2 == len && low.size(2) == c && mask.numel() == b * len);
    Tensor u = at::empty({b, len, 2 * c}, skip.options());
    const float* lp = low.data_ptr<float>();
    const float* sp = skip.data_ptr<float>();
    const float* mp = mask.data_ptr<float>();
    float* up = u.data_ptr<float>();
    at::parallel_for(0, b * len, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t i = r / len, j = r % len;
        float* dst = up + r * 2 * c;
        const float m = mp[r];
        const float* src = lp + (i * (len / 2) + j / 2) * c;
        for (int64_t k = 0; k < c; ++k) dst[k] = src[k] * m;
        std::copy(sp + r * c, sp + (r + 1) * c, dst + c);
      }
    });
    return Conv3ColumnsFunction::Columns(u);
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& low, const Tensor& skip, const Tensor& mask) {
    ctx->save_for_backward({mask});
    ctx->saved_data["c"] = 2 * skip.size(2);  // channels of u, read by Conv3ColumnsFunction::backward
    return Build(low, skip, mask);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const Tensor mask = ctx->get_saved_variables()[0].contiguous();
    // Gradient of the columns w.r.t. u, then split u's gradient into low and skip.
    Tensor gu = Conv3ColumnsFunction::backward(ctx, grad_out)[0];
    const int64_t b = gu.size(0), len = gu.size(1), c = gu.size(2) / 2;
    Tensor glow = at::zeros({b, len / 2, c}, gu.options());
    Tensor gskip = at::empty({b, len, c}, gu.options());
    const float* gp = gu.data_ptr<float>();
    const float* mp = mask.data_ptr<float>();
    float* lp = glow.data_ptr<float>();
    float* sp = gskip.data_ptr<float>();
    at::parallel_for(0, b, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        for (int64_t j = 0; j < len; ++j) {
          const int64_t r = i * len + j;
          const float* g = gp + r * 2 * c;
          const float m = mp[r];
          float* dl = lp + (i * (len / 2) + j / 2) * c;
          if (m != 0.f) {
            for (int64_t k = 0; k < c; ++k) dl[k] += g[k] * m;
          }
          std::copy(g + c, g + 2 * c, sp + r * c);
        }
      }
    });
    return {glow, gskip, Tensor()};
  }
};

}  // namespace

Tensor PoolConv3Columns(const Tensor& h) {
  if (!at::GradMode::is_enabled() || !h.requires_grad()) {
    return Conv3ColumnsFunction::Columns(PoolColumnsFunction::Pool(h.contiguous()));
  }
  return PoolColumnsFunction::apply(h);
}

Tensor UpsampleConcatColumns(const Tensor& low, const Tensor& skip, const Tensor& mask) {
  if (!at::GradMode::is_enabled() || !(low.requires_grad() || skip.requires_grad())) {
    return UpsampleConcatFunction::Build(low, skip, mask);
  }
  return UpsampleConcatFunction::apply(low, skip, mask);
}

Tensor Conv3Columns(const Tensor& h) {
  if (!at::GradMode::is_enabled() || !h.requires_grad()) return Conv3ColumnsFunction::Columns(h);
  return Conv3ColumnsFunction::apply(h);
}

Tensor GatherItems(const Tensor& id_rows, const Tensor& tag_rows, const Tensor& id_index, const Tensor& tag_offsets,
                   const Tensor& tag_index) {
  const Tensor tags = tag_rows.defined() ? tag_rows : at::empty({0, 0}, id_rows.options());
  if (!at::GradMode::is_enabled() || !(id_rows.requires_grad() || tags.requires_grad())) {
    const int64_t dt = tags.size(1);
    Tensor out = at::empty({id_index.numel(), id_rows.size(1) + dt}, id_rows.options());
    GatherForward(id_rows.contiguous(), tags.contiguous(), id_index, tag_offsets, tag_index, &out);
    return out;
  }
  return GatherFunction::apply(id_rows, tags, id_index, tag_offsets, tag_index);
}

Tensor SoftmaxCrossEntropy(const Tensor& logits, const Tensor& labels) { return XentFunction::apply(logits, labels); }

Tensor SoftmaxLoss(const Tensor& users, const Tensor& items, const Tensor& labels, const Tensor& bias,
                   const Tensor& exclude) {
  if (users.size(1) > kBlockedLossMaxDim) {
    return SoftmaxLossMatrixFunction::apply(users, items, labels,
                                            bias.defined() ? bias : at::empty({0}, users.options()),
                                            exclude.defined() ? exclude : at::empty({0}, at::kBool));
  }
  if (!at::GradMode::is_enabled() || !(users.requires_grad() || items.requires_grad())) {
    return BlockedSoftmaxLoss(users, items, labels, bias.defined() ? bias : at::empty({0}),
                              exclude.defined() ? exclude : at::empty({0}, at::kBool), false)
        .loss;
  }
  // Custom functions take no undefined tensors: "none" travels as an empty tensor.
  return SoftmaxLossFunction::apply(users, items, labels, bias.defined() ? bias : at::empty({0}, users.options()),
                                    exclude.defined() ? exclude : at::empty({0}, at::kBool));
}

namespace {

Tensor NormRows(const Tensor& y, const Tensor& gamma, const Tensor& beta, const Tensor& mask, bool swish) {
  if (!at::GradMode::is_enabled() || !(y.requires_grad() || gamma.requires_grad() || beta.requires_grad())) {
    const Tensor yc = y.contiguous();
    Tensor out = at::empty_like(yc);
    SwishNormMaskRows(yc, gamma.contiguous(), beta.contiguous(), mask.contiguous(), swish, &out, nullptr, nullptr,
                      nullptr);
    return out;
  }
  return SwishNormMaskFunction::apply(y, gamma, beta, mask, swish);
}

}  // namespace

Tensor Attention(const Tensor& qkv, const Tensor& bias, int64_t heads) {
  if (!at::GradMode::is_enabled() || !qkv.requires_grad()) {
    Tensor p;
    return AttentionFunction::Compute(qkv, bias, heads, &p);
  }
  return AttentionFunction::apply(qkv, bias, heads);
}

Tensor Elu(const Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "Elu: float tensor");
  if (!at::GradMode::is_enabled() || !x.requires_grad()) return EluFunction::Compute(x);
  return EluFunction::apply(x);
}

Tensor SwishNormMask(const Tensor& y, const Tensor& gamma, const Tensor& beta, const Tensor& mask) {
  return NormRows(y, gamma, beta, mask, true);
}

Tensor LayerNormLastDim(const Tensor& y, const Tensor& gamma, const Tensor& beta) {
  return NormRows(y, gamma, beta, at::empty({0}, y.options()), false);
}

}  // namespace t2d::model
