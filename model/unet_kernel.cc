#include "model/unet_kernel.h"

#include <algorithm>
#include <cmath>

namespace t2d::model {

UnetKernel::Conv UnetKernel::MakeConv(const float* w, const float* b, int64_t in, int64_t out, int64_t taps) {
  Conv c;
  c.in = in;
  c.out = out;
  c.taps = taps;
  c.w.resize(static_cast<size_t>(taps * in * out));
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < taps * in; ++i) c.w[static_cast<size_t>(i * out + o)] = w[o * taps * in + i];
  }
  c.b.assign(b, b + out);
  return c;
}

UnetKernel::Norm UnetKernel::MakeNorm(const float* g, const float* b, int64_t c) {
  Norm n;
  n.g.assign(g, g + c);
  n.b.assign(b, b + c);
  return n;
}

UnetKernel::UnetKernel(const UnetKernelLayout& layout, const float* params) : d_(layout.d), levels_(layout.levels) {
  int64_t in = 2 * d_;
  for (int l = 0; l < levels_; ++l) {
    const auto& s = layout.down[static_cast<size_t>(l)];
    const int64_t c = d_ << l;
    down_conv_.push_back(MakeConv(params + s.w, params + s.b, in, c, 3));
    down_norm_.push_back(MakeNorm(params + s.g, params + s.beta, c));
    in = c;
  }
  for (int l = 0; l + 1 < levels_; ++l) {
    const auto& s = layout.up[static_cast<size_t>(l)];
    const int64_t c = d_ << l;
    up_proj_.push_back(MakeConv(params + s.pw, params + s.pb, 2 * c, c, 1));
    up_conv_.push_back(MakeConv(params + s.w, params + s.b, 2 * c, c, 3));
    up_norm_.push_back(MakeNorm(params + s.g, params + s.beta, c));
  }
  out_ = MakeConv(params + layout.out_w, params + layout.out_b, d_, d_, 1);
  masks_.resize(static_cast<size_t>(levels_));
  skips_.resize(static_cast<size_t>(levels_));
}

namespace {

// out[j] = b + sum_t sum_c W[t * in + c] h[j - taps/2 + t][c], zero outside [0, len).
void ConvApply(const float* h, int64_t len, int64_t in, int64_t out, int64_t taps, const float* w, const float* b,
               float* y) {
  const int64_t half = taps / 2;
  for (int64_t j = 0; j < len; ++j) {
    float* yj = y + j * out;
    std::copy(b, b + out, yj);
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t src = j - half + t;
      if (src < 0 || src >= len) continue;
      const float* hs = h + src * in;
      const float* wt = w + t * in * out;
      for (int64_t c = 0; c < in; ++c) {
        const float v = hs[c];
        if (v == 0.f) continue;
        const float* wc = wt + c * out;
        for (int64_t o = 0; o < out; ++o) yj[o] += v * wc[o];
      }
    }
  }
}

}  // namespace

void UnetKernel::Block(const float* h, int64_t len, const Conv& conv, const Norm& norm, const float* mask,
                       float* out) {
  ConvApply(h, len, conv.in, conv.out, conv.taps, conv.w.data(), conv.b.data(), out);
  const int64_t c = conv.out;
  for (int64_t j = 0; j < len; ++j) {
    float* y = out + j * c;
    if (mask[j] == 0.f) {
      std::fill(y, y + c, 0.f);
      continue;
    }
    float mean = 0;
    for (int64_t o = 0; o < c; ++o) {
      y[o] = y[o] / (1.f + std::exp(-y[o]));
      mean += y[o];
    }
    mean /= static_cast<float>(c);
    float var = 0;
    for (int64_t o = 0; o < c; ++o) var += (y[o] - mean) * (y[o] - mean);
    const float inv = 1.f / std::sqrt(var / static_cast<float>(c) + 1e-5f);
    for (int64_t o = 0; o < c; ++o) y[o] = ((y[o] - mean) * inv * norm.g[static_cast<size_t>(o)] + norm.b[static_cast<size_t>(o)]) * mask[j];
  }
}

void UnetKernel::Forward(int64_t n, const float* mask, const float* in, float* out) {
  const int64_t p = int64_t{1} << (levels_ - 1);
  const int64_t np = (n + p - 1) / p * p, left = np - n;
  masks_[0].assign(static_cast<size_t>(np), 0.f);
  std::copy(mask, mask + n, masks_[0].begin() + left);
  for (int l = 1; l < levels_; ++l) {
    const auto& prev = masks_[static_cast<size_t>(l) - 1];
    auto& cur = masks_[static_cast<size_t>(l)];
    cur.resize(prev.size() / 2);
    for (size_t i = 0; i < cur.size(); ++i) cur[i] = std::max(prev[2 * i], prev[2 * i + 1]);
  }
  // Level-0 input, zero on the left padding and at masked positions.
  const int64_t d2 = 2 * d_;
  a_.assign(static_cast<size_t>(np * d2), 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const float mj = mask[j];
    for (int64_t c = 0; c < d2; ++c) a_[static_cast<size_t>((left + j) * d2 + c)] = in[j * d2 + c] * mj;
  }
  int64_t len = np, ch = d2;
  for (int l = 0; l < levels_; ++l) {
    if (l > 0) {  // max-pool 2 (h = a_)
      tmp_.resize(static_cast<size_t>(len / 2 * ch));
      for (int64_t i = 0; i < len / 2; ++i) {
        for (int64_t c = 0; c < ch; ++c) {
          tmp_[static_cast<size_t>(i * ch + c)] =
              std::max(a_[static_cast<size_t>(2 * i * ch + c)], a_[static_cast<size_t>((2 * i + 1) * ch + c)]);
        }
      }
      len /= 2;
      a_.swap(tmp_);
      const auto& mk = masks_[static_cast<size_t>(l)];
      for (int64_t i = 0; i < len; ++i) {
        if (mk[static_cast<size_t>(i)] == 0.f) std::fill(a_.begin() + i * ch, a_.begin() + (i + 1) * ch, 0.f);
      }
    }
    const Conv& conv = down_conv_[static_cast<size_t>(l)];
    b_.resize(static_cast<size_t>(len * conv.out));
    Block(a_.data(), len, conv, down_norm_[static_cast<size_t>(l)], masks_[static_cast<size_t>(l)].data(), b_.data());
    ch = conv.out;
    if (l + 1 < levels_) skips_[static_cast<size_t>(l)] = b_;
    a_.swap(b_);
  }
  for (int l = levels_ - 2; l >= 0; --l) {
    const Conv& proj = up_proj_[static_cast<size_t>(l)];
    const int64_t c = proj.out;
    tmp_.resize(static_cast<size_t>(len * c));
    ConvApply(a_.data(), len, proj.in, c, 1, proj.w.data(), proj.b.data(), tmp_.data());
    // Nearest upsample, concatenated with the skip, masked.
    const int64_t up_len = 2 * len;
    const auto& mk = masks_[static_cast<size_t>(l)];
    const auto& skip = skips_[static_cast<size_t>(l)];
    b_.assign(static_cast<size_t>(up_len * 2 * c), 0.f);
    for (int64_t j = 0; j < up_len; ++j) {
      if (mk[static_cast<size_t>(j)] == 0.f) continue;
      float* dst = b_.data() + j * 2 * c;
      std::copy(tmp_.begin() + (j / 2) * c, tmp_.begin() + (j / 2 + 1) * c, dst);
      std::copy(skip.begin() + j * c, skip.begin() + (j + 1) * c, dst + c);
    }
    len = up_len;
    a_.resize(static_cast<size_t>(len * c));
    Block(b_.data(), len, up_conv_[static_cast<size_t>(l)], up_norm_[static_cast<size_t>(l)], mk.data(), a_.data());
  }
  tmp_.resize(static_cast<size_t>(len * d_));
  ConvApply(a_.data(), len, d_, d_, 1, out_.w.data(), out_.b.data(), tmp_.data());
  for (int64_t j = 0; j < n; ++j) {
    const float mj = mask[j];
    for (int64_t c = 0; c < d_; ++c) out[j * d_ + c] = tmp_[static_cast<size_t>((left + j) * d_ + c)] * mj;
  }
}

void UnetKernel::Reverse(const std::vector<ReverseStep>& plan, const float* step_emb, int64_t samples, int64_t n,
                         const float* mask, const float* cond, const float* noise, float* z) {
  const int64_t d2 = 2 * d_, seq = n * d_;
  in_.resize(static_cast<size_t>(n * d2));
  z0_.resize(static_cast<size_t>(seq));
  for (int64_t s = 0; s < samples; ++s) {
    float* zs = z + s * seq;
    const float* cs = cond + s * seq;
    const float* ms = mask + s * n;
    for (size_t i = 0; i < plan.size(); ++i) {
      const ReverseStep& st = plan[i];
      const float* emb = step_emb + st.step * d2;
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < d_; ++c) {
          in_[static_cast<size_t>(j * d2 + c)] = zs[j * d_ + c] + emb[c];
          in_[static_cast<size_t>(j * d2 + d_ + c)] = cs[j * d_ + c] + emb[d_ + c];
        }
      }
      Forward(n, ms, in_.data(), z0_.data());
      if (st.prev == 0) {
        std::copy(z0_.begin(), z0_.end(), zs);
      } else {
        const float c0 = static_cast<float>(st.c0), c1 = static_cast<float>(st.c1), sg = static_cast<float>(st.sigma);
        const float* eps = noise + (static_cast<int64_t>(i) * samples + s) * seq;
        for (int64_t x = 0; x < seq; ++x) zs[x] = z0_[static_cast<size_t>(x)] * c0 + zs[x] * c1 + eps[x] * sg;
      }
    }
  }
}

}  // namespace t2d::model
