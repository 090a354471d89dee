#include "model/unet_kernel.h"

#include <algorithm>
#include <cstring>

// GCC 12 reports the accumulators of ConvOut, set from a __builtin_shuffle, as maybe
// uninitialised in the AVX2 clone (a false positive: every element is assigned first).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace t2d::model {
namespace {

// Activations are channel planes: channel c of a level with `len` positions lives at
// plane + c * stride + kPad + position, stride = kPad + RoundUp8(len) + kPad. The kPad zeros on
// each side are the convolutions' zero padding (a block of 8 positions reads one position to
// either side) and positions len .. RoundUp8(len) - 1 are kept zero (masked outputs), so every
// load is a full unaligned vector of 8 with no edge cases.
constexpr int64_t kW = 8;    // positions per vector
constexpr int64_t kPad = 8;  // zero floats before position 0 (keeps position 0 8-aligned in the plane)
constexpr int kMaxLevels = 8;  // ModelConfig.unet_levels max

int64_t RoundUp8(int64_t x) { return (x + kW - 1) / kW * kW; }
int64_t Stride(int64_t len) { return kPad + RoundUp8(len) + kPad; }

typedef float V __attribute__((vector_size(32)));
typedef int32_t VI __attribute__((vector_size(32)));

#define T2D_INLINE inline __attribute__((always_inline))

T2D_INLINE V Load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
T2D_INLINE VI LoadBits(const uint32_t* p) {
  VI v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
T2D_INLINE void Store(float* p, V v) { __builtin_memcpy(p, &v, sizeof v); }
// (Written as a shuffle: GCC turns it into one vbroadcastss, the initializer {x, x, ...} into
// a chain of inserts.)
T2D_INLINE V Splat(float x) { return __builtin_shuffle(V{x}, VI{}); }
// x where the mask word is all ones, +0 where it is zero: x * mask for 0/1 masks, without -0.
T2D_INLINE V Masked(V x, VI bits) { return reinterpret_cast<V>(reinterpret_cast<VI>(x) & bits); }
T2D_INLINE V Sqrt(V x) {
  V r;
  for (int i = 0; i < kW; ++i) r[i] = __builtin_sqrtf(x[i]);  // becomes one sqrtps
  return r;
}

// exp(x), Cephes' expf scheme: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n * C1 is
// exact), e^r by a degree-7 polynomial, times 2^n built in the exponent field. 2^n is applied as
// 2^(n/2) * 2^(n - n/2), so n from -150 to 128 needs no special case (gradual underflow near
// -104, FLT_MAX near 88.72). Maximum relative error measured against std::exp: see the header.
T2D_INLINE V Exp(V x) {
  const V hi = Splat(88.7228f), lo = Splat(-104.f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  // Round x / ln2 to nearest: adding 1.5 * 2^23 leaves n in the low mantissa bits.
  const V magic = Splat(12582912.f);
  const V k = x * Splat(1.44269504088896341f) + magic;
  const V n = k - magic;
  V r = x - n * Splat(0.693359375f);
  r = r - n * Splat(-2.12194440e-4f);
  V p = Splat(1.9875691500e-4f);
  p = p * r + Splat(1.3981999507e-3f);
  p = p * r + Splat(8.3334519073e-3f);
  p = p * r + Splat(4.1665795894e-2f);
  p = p * r + Splat(1.6666665459e-1f);
  p = p * r + Splat(5.0000001201e-1f);
  p = p * (r * r) + r + Splat(1.f);
  const VI ni = reinterpret_cast<VI>(k) - 0x4B400000;
  const VI n1 = ni >> 1, n2 = ni - n1;
  const V s1 = reinterpret_cast<V>((n1 + 127) << 23), s2 = reinterpret_cast<V>((n2 + 127) << 23);
  return p * s1 * s2;
}

T2D_INLINE V Swish(V x) { return x / (Splat(1.f) + Exp(-x)); }

struct ConvRef {
  const float* w;  // [taps * in][out]
  const float* b;  // [out]
  int64_t in, out, taps;
};
struct NormRef {
  const float* g;
  const float* b;
};

// Output channels o0 .. o0 + K - 1 of positions j0 .. j0 + 7:
// y = b + sum over taps t and input channels c of w[t][c][o] h[c][j - taps / 2 + t], summed in
// that order (the same order for every position, so the result of a position does not depend
// on its place in the vector). With `sum`, y = swish(y) and *sum += y in channel order.
template <int K>
T2D_INLINE void ConvOut(const float* h, int64_t hs, const ConvRef& cv, int64_t o0, float* y, int64_t ys, int64_t j0,
                        V* sum) {
  V acc[K];
  for (int k = 0; k < K; ++k) acc[k] = Splat(cv.b[o0 + k]);
  const int64_t half = cv.taps / 2;
  for (int64_t t = 0; t < cv.taps; ++t) {
    const float* ht = h + kPad + j0 + t - half;
    const float* wt = cv.w + t * cv.in * cv.out + o0;
    for (int64_t c = 0; c < cv.in; ++c) {
      const V hv = Load(ht + c * hs);
      const float* wc = wt + c * cv.out;
      for (int k = 0; k < K; ++k) acc[k] = acc[k] + Splat(wc[k]) * hv;
    }
  }
  if (sum != nullptr) {
    for (int k = 0; k < K; ++k) {
      acc[k] = Swish(acc[k]);
      *sum = *sum + acc[k];
    }
  }
  for (int k = 0; k < K; ++k) Store(y + (o0 + k) * ys + kPad + j0, acc[k]);
}

// Output channels of the block of positions j0 .. j0 + 7 (see ConvOut).
T2D_INLINE void ConvBlock(const float* h, int64_t hs, const ConvRef& cv, float* y, int64_t ys, int64_t j0, V* sum) {
  int64_t o = 0;
  for (; o + 8 <= cv.out; o += 8) ConvOut<8>(h, hs, cv, o, y, ys, j0, sum);
  for (; o + 4 <= cv.out; o += 4) ConvOut<4>(h, hs, cv, o, y, ys, j0, sum);
  for (; o < cv.out; ++o) ConvOut<1>(h, hs, cv, o, y, ys, j0, sum);
}

// y [out planes, stride ys] = conv(h [in planes, stride hs]) at positions 0 .. RoundUp8(len) - 1.
T2D_INLINE void Conv(const float* h, int64_t hs, const ConvRef& cv, float* y, int64_t ys, int64_t len) {
  for (int64_t j0 = 0; j0 < len; j0 += kW) ConvBlock(h, hs, cv, y, ys, j0, nullptr);
}

// A block of the U-Net: y [out planes] = mask * LayerNorm(swish(conv(h))) over the channels
// (eps 1e-5), one block of 8 positions at a time while it is in L1. Positions >= len are masked
// (zero bits), which keeps the planes' tails zero.
T2D_INLINE void ConvSwishNormMask(const float* h, int64_t hs, const ConvRef& cv, const NormRef& nm,
                                  const uint32_t* mask, float* y, int64_t ys, int64_t len) {
  const int64_t c = cv.out;
  const V cf = Splat(static_cast<float>(c));
  for (int64_t j0 = 0; j0 < len; j0 += kW) {
    V mean = Splat(0.f);
    ConvBlock(h, hs, cv, y, ys, j0, &mean);
    float* yj = y + kPad + j0;
    mean = mean / cf;
    V var = Splat(0.f);
    for (int64_t o = 0; o < c; ++o) {
      const V dv = Load(yj + o * ys) - mean;
      var = var + dv * dv;
    }
    const V inv = Splat(1.f) / Sqrt(var / cf + Splat(1e-5f));
    const VI bits = LoadBits(mask + j0);
    for (int64_t o = 0; o < c; ++o) {
      const V v = (Load(yj + o * ys) - mean) * inv * Splat(nm.g[o]) + Splat(nm.b[o]);
      Store(yj + o * ys, Masked(v, bits));
    }
  }
}

// The scratch planes of one call (all sequences have the same n).
struct Level {
  int64_t len = 0, stride = 0, ch = 0;  // positions, plane stride, channels C << l
  float* pool = nullptr;  // l > 0: the max-pooled output of level l - 1 (its channels)
  float* down = nullptr;  // down-path block output (the skip), ch planes
  float* proj = nullptr;  // l < levels - 1: conv1 of the level below's output, ch planes at stride of l + 1
  float* cat = nullptr;   // l < levels - 1: upsampled proj and skip, 2 ch planes
  float* up = nullptr;    // l < levels - 1: up-path block output, ch planes
  const uint32_t* mask = nullptr;  // RoundUp8(len) words
};
struct Net {
  int64_t d = 0, n = 0, left = 0;
  int levels = 0;
  float* x = nullptr;    // level-0 input, 2D planes
  float* out = nullptr;  // z0_hat, D planes at level 0
  float* out_u = nullptr;  // guidance: the unconditional z0_hat, D planes at level 0
  float guidance = 0;      // w: z0_hat = (1 + w) U(z, X) - w U(z, 0); 0 runs the conditional U-Net only
  float* zt = nullptr;   // the sequence's z_r as D planes at level 0 (left padding and tail zero)
  float* ct = nullptr;   // its condition X_{1..n}, D planes
  float* et = nullptr;   // the step's noise, D planes
  Level lv[kMaxLevels];
  ConvRef down_conv[kMaxLevels], up_proj[kMaxLevels], up_conv[kMaxLevels], out_conv;
  NormRef down_norm[kMaxLevels], up_norm[kMaxLevels];
};

// The U-Net of docs/model.md on (z_r + emb, cond + emb) into `out` (D planes at level 0);
// `conditioned` false: the condition is 0 (guidance's unconditional pass).
T2D_INLINE void UnetPass(const Net& net, const float* emb, bool conditioned, float* out) {
  const int64_t d = net.d, d2 = 2 * d;
  const int levels = net.levels;
  const Level& l0 = net.lv[0];
  const int64_t s0 = l0.stride, blocks0 = RoundUp8(l0.len);
  {
    // U-Net input (z + emb, cond + emb), zero at masked positions and on the padding.
    for (int64_t c = 0; c < d2; ++c) {
      const float* src = (c < d ? net.zt + c * s0 : net.ct + (c - d) * s0) + kPad;
      float* xc = net.x + c * s0 + kPad;
      const V e = Splat(emb[c]);
      if (c >= d && !conditioned) {
        for (int64_t j0 = 0; j0 < blocks0; j0 += kW) Store(xc + j0, Masked(Splat(0.f) + e, LoadBits(l0.mask + j0)));
        continue;
      }
      for (int64_t j0 = 0; j0 < blocks0; j0 += kW) Store(xc + j0, Masked(Load(src + j0) + e, LoadBits(l0.mask + j0)));
    }
    const float* h = net.x;
    int64_t hs = l0.stride;
    for (int l = 0; l < levels; ++l) {
      const Level& lv = net.lv[l];
      if (l > 0) {  // max-pool 2; a pooled position is masked only if both inputs were (and are 0)
        const int64_t ch = net.down_conv[l].in;
        for (int64_t c = 0; c < ch; ++c) {
          const float* a = h + c * hs + kPad;
          float* p = lv.pool + c * lv.stride + kPad;
          for (int64_t j = 0; j < lv.len; ++j) p[j] = a[2 * j] < a[2 * j + 1] ? a[2 * j + 1] : a[2 * j];
        }
        h = lv.pool;
        hs = lv.stride;
      }
      ConvSwishNormMask(h, hs, net.down_conv[l], net.down_norm[l], lv.mask, lv.down, lv.stride, lv.len);
      h = lv.down;
      hs = lv.stride;
    }
    for (int l = levels - 2; l >= 0; --l) {
      const Level& lv = net.lv[l];
      const Level& below = net.lv[l + 1];
      const int64_t c = lv.ch;
      // conv1 before the nearest upsample (they commute), then [upsampled, skip] masked.
      Conv(h, hs, net.up_proj[l], lv.proj, below.stride, below.len);
      for (int64_t o = 0; o < c; ++o) {
        const float* p = lv.proj + o * below.stride + kPad;
        float* dst = lv.cat + o * lv.stride + kPad;
        for (int64_t j = 0; j < below.len; ++j) dst[2 * j] = dst[2 * j + 1] = p[j];
        for (int64_t j0 = 0; j0 < lv.len; j0 += kW) Store(dst + j0, Masked(Load(dst + j0), LoadBits(lv.mask + j0)));
      }
      std::memcpy(lv.cat + c * lv.stride, lv.down, static_cast<size_t>(c * lv.stride) * sizeof(float));
      ConvSwishNormMask(lv.cat, lv.stride, net.up_conv[l], net.up_norm[l], lv.mask, lv.up, lv.stride, lv.len);
      h = lv.up;
      hs = lv.stride;
    }
    Conv(h, hs, net.out_conv, out, l0.stride, l0.len);
  }
}

// One sequence's whole reverse process.
__attribute__((target_clones("avx2", "default"))) void ReverseSequence(
    const Net& net, const ReverseStep* plan, int64_t steps, const float* step_emb, const float* cond,
    const float* noise, int64_t noise_stride, float* z) {
  const int64_t d = net.d, d2 = 2 * d, n = net.n, left = net.left;
  const Level& l0 = net.lv[0];
  const int64_t s0 = l0.stride, blocks0 = RoundUp8(l0.len);
  // z and the condition as channel planes, for the whole process.
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t j = 0; j < n; ++j) {
      net.zt[c * s0 + kPad + left + j] = z[j * d + c];
      net.ct[c * s0 + kPad + left + j] = cond[j * d + c];
    }
  }
  for (int64_t i = 0; i < steps; ++i) {
    const ReverseStep& st = plan[i];
    const float* emb = step_emb + st.step * d2;
    UnetPass(net, emb, true, net.out);
    if (net.guidance != 0.f) {
      // Classifier-free guidance, as the tensor path: U(z, X) * (1 + w) - U(z, 0) * w.
      UnetPass(net, emb, false, net.out_u);
      const V a = Splat(1.f + net.guidance), w = Splat(net.guidance);
      for (int64_t c = 0; c < d; ++c) {
        float* o = net.out + c * s0 + kPad;
        const float* u = net.out_u + c * s0 + kPad;
        for (int64_t j0 = 0; j0 < blocks0; j0 += kW) Store(o + j0, Load(o + j0) * a - Load(u + j0) * w);
      }
    }
    // The update; z0_hat is masked like the tensor path's output. Values of z at masked
    // positions do not matter (the input masks them); on the padding they stay zero.
    const float* eps = noise + i * noise_stride;
    if (st.prev != 0) {
      for (int64_t c = 0; c < d; ++c) {
        for (int64_t j = 0; j < n; ++j) net.et[c * s0 + kPad + left + j] = eps[j * d + c];
      }
    }
    const V c0 = Splat(static_cast<float>(st.c0)), c1 = Splat(static_cast<float>(st.c1));
    const V sg = Splat(static_cast<float>(st.sigma));
    for (int64_t c = 0; c < d; ++c) {
      const float* o = net.out + c * s0 + kPad;
      float* zc = net.zt + c * s0 + kPad;
      const float* ec = net.et + c * s0 + kPad;
      for (int64_t j0 = 0; j0 < blocks0; j0 += kW) {
        const V z0 = Masked(Load(o + j0), LoadBits(l0.mask + j0));
        Store(zc + j0, st.prev == 0 ? z0 : z0 * c0 + Load(zc + j0) * c1 + Load(ec + j0) * sg);
      }
    }
  }
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t j = 0; j < n; ++j) z[j * d + c] = net.zt[c * s0 + kPad + left + j];
  }
}

__attribute__((target_clones("avx2", "default"))) void ExpOrSwish(const float* x, int64_t count, bool swish,
                                                                   float* out) {
  for (int64_t i = 0; i < count; i += kW) {
    float in[kW] = {};
    const int64_t m = std::min<int64_t>(kW, count - i);
    for (int64_t k = 0; k < m; ++k) in[k] = x[i + k];
    const V v = Load(in);
    float res[kW];
    Store(res, swish ? Swish(v) : Exp(v));
    for (int64_t k = 0; k < m; ++k) out[i + k] = res[k];
  }
}

}  // namespace

void UnetKernel::ExpForTest(const float* x, int64_t count, float* out) { ExpOrSwish(x, count, false, out); }
void UnetKernel::SwishForTest(const float* x, int64_t count, float* out) { ExpOrSwish(x, count, true, out); }

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

UnetKernel::UnetKernel(const UnetKernelLayout& layout, const float* params)
    : d_(layout.d), c_(layout.channels > 0 ? layout.channels : layout.d), levels_(layout.levels) {
  int64_t in = 2 * d_;
  for (int l = 0; l < levels_; ++l) {
    const auto& s = layout.down[static_cast<size_t>(l)];
    const int64_t c = c_ << l;
    down_conv_.push_back(MakeConv(params + s.w, params + s.b, in, c, 3));
    down_norm_.push_back(MakeNorm(params + s.g, params + s.beta, c));
    in = c;
  }
  for (int l = 0; l + 1 < levels_; ++l) {
    const auto& s = layout.up[static_cast<size_t>(l)];
    const int64_t c = c_ << l;
    up_proj_.push_back(MakeConv(params + s.pw, params + s.pb, 2 * c, c, 1));
    up_conv_.push_back(MakeConv(params + s.w, params + s.b, 2 * c, c, 3));
    up_norm_.push_back(MakeNorm(params + s.g, params + s.beta, c));
  }
  out_ = MakeConv(params + layout.out_w, params + layout.out_b, c_, d_, 1);
}

void UnetKernel::Reverse(const std::vector<ReverseStep>& plan, const float* step_emb, int64_t sequences, int64_t n,
                         const float* mask, const float* cond, const float* const* noise, int64_t noise_step_stride,
                         float* z, float guidance) {
  const int64_t d = d_, seq = n * d;
  const int64_t p = int64_t{1} << (levels_ - 1);
  const int64_t np = (n + p - 1) / p * p;
  auto ref = [](const Conv& c) { return ConvRef{c.w.data(), c.b.data(), c.in, c.out, c.taps}; };
  auto nref = [](const Norm& m) { return NormRef{m.g.data(), m.b.data()}; };
  Net net;
  net.d = d;
  net.n = n;
  net.left = np - n;
  net.levels = levels_;
  // Scratch offsets first (the vector may reallocate), pointers after.
  int64_t floats = 0, words = 0;
  struct Offsets {
    int64_t pool = 0, down = 0, proj = 0, cat = 0, up = 0, mask = 0;
  } off[kMaxLevels];
  const int64_t x_off = floats;
  floats += 2 * d * Stride(np);
  const int64_t out_off = floats;
  floats += 2 * d * Stride(np);  // out, out_u
  const int64_t zt_off = floats;
  floats += 3 * d * Stride(np);  // zt, ct, et
  for (int l = 0; l < levels_; ++l) {
    Level& lv = net.lv[l];
    lv.len = np >> l;
    lv.stride = Stride(lv.len);
    lv.ch = c_ << l;
    if (l > 0) {
      off[l].pool = floats;
      floats += net.lv[l - 1].ch * lv.stride;
    }
    off[l].down = floats;
    floats += lv.ch * lv.stride;
    if (l + 1 < levels_) {
      off[l].proj = floats;
      floats += lv.ch * Stride(lv.len / 2);
      off[l].cat = floats;
      floats += 2 * lv.ch * lv.stride;
      off[l].up = floats;
      floats += lv.ch * lv.stride;
    }
    off[l].mask = words;
    words += RoundUp8(lv.len);
  }
  // Zero once: the padding and tails are never written (or only with masked zeros).
  scratch_.assign(static_cast<size_t>(floats), 0.f);
  mask_bits_.assign(static_cast<size_t>(words), 0u);
  net.x = scratch_.data() + x_off;
  net.out = scratch_.data() + out_off;
  net.out_u = net.out + d * Stride(np);
  net.guidance = guidance;
  net.zt = scratch_.data() + zt_off;
  net.ct = net.zt + d * Stride(np);
  net.et = net.ct + d * Stride(np);
  for (int l = 0; l < levels_; ++l) {
    Level& lv = net.lv[l];
    if (l > 0) lv.pool = scratch_.data() + off[l].pool;
    lv.down = scratch_.data() + off[l].down;
    if (l + 1 < levels_) {
      lv.proj = scratch_.data() + off[l].proj;
      lv.cat = scratch_.data() + off[l].cat;
      lv.up = scratch_.data() + off[l].up;
    }
    lv.mask = mask_bits_.data() + off[l].mask;
    net.down_conv[l] = ref(down_conv_[static_cast<size_t>(l)]);
    net.down_norm[l] = nref(down_norm_[static_cast<size_t>(l)]);
    if (l + 1 < levels_) {
      net.up_proj[l] = ref(up_proj_[static_cast<size_t>(l)]);
      net.up_conv[l] = ref(up_conv_[static_cast<size_t>(l)]);
      net.up_norm[l] = nref(up_norm_[static_cast<size_t>(l)]);
    }
  }
  net.out_conv = ref(out_);
  for (int64_t s = 0; s < sequences; ++s) {
    // The masks of every level, once per sequence (the same for all of its steps).
    const float* ms = mask + s * n;
    uint32_t* m0 = mask_bits_.data() + off[0].mask;
    for (int64_t j = 0; j < n; ++j) m0[net.left + j] = ms[j] != 0.f ? ~0u : 0u;
    for (int l = 1; l < levels_; ++l) {
      const uint32_t* prev = mask_bits_.data() + off[l - 1].mask;
      uint32_t* cur = mask_bits_.data() + off[l].mask;
      for (int64_t j = 0; j < net.lv[l].len; ++j) cur[j] = prev[2 * j] | prev[2 * j + 1];
    }
    ReverseSequence(net, plan.data(), static_cast<int64_t>(plan.size()), step_emb, cond + s * seq, noise[s],
                    noise_step_stride, z + s * seq);
  }
}

}  // namespace t2d::model
