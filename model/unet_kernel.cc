#include "model/unet_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/simd.h"

namespace t2d::model {
namespace {

using namespace simd;  // NOLINT: the kernel is written in these vector helpers

// Activations are channel planes: channel c of a level with `len` positions lives at
// plane + c * stride + kPad + position, stride = kPad + RoundUp8(len) + kPad. The kPad zeros on
// each side are the convolutions' zero padding (a block of 8 positions reads one position to
// either side) and positions len .. RoundUp8(len) - 1 are kept zero (masked outputs), so every
// load is a full unaligned vector of 8 with no edge cases.
constexpr int64_t kPad = 8;  // zero floats before position 0 (keeps position 0 8-aligned in the plane)
constexpr int kMaxLevels = 8;  // ModelConfig.unet_levels max

int64_t RoundUp8(int64_t x) { return (x + kW - 1) / kW * kW; }
int64_t Stride(int64_t len) { return kPad + RoundUp8(len) + kPad; }

// Output channels are computed in blocks (ConvBlock): of 12 where a convolution has at least
// kWideConv outputs (12 accumulators are FMA chains enough to hide the multiply-add's latency),
// then of 8, 4 and 1 (narrower convolutions ran no faster with blocks of 12: 16 as 12 + 4, 32 as
// 12 + 12 + 8). A block's weights are contiguous, so that its pass streams through them in order.
constexpr int64_t kWideConv = 64;
int BlockWidth(int64_t out, int64_t o) {
  return out >= kWideConv && o + 12 <= out ? 12 : o + 8 <= out ? 8 : o + 4 <= out ? 4 : 1;
}

struct ConvRef {
  const float* w;  // per block of outputs o0 .. o0 + K - 1 (BlockWidth), at o0 * taps * in: [taps * in][K]
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
// on its place in the vector). With `sum`, y = swish(y) and *sum += y in channel order; with
// `pre` (training), the value before the swish is also stored there (same plane layout as y).
template <int K>
T2D_INLINE void ConvOut(const float* h, int64_t hs, const ConvRef& cv, int64_t o0, float* y, int64_t ys, int64_t j0,
                        V* sum, float* pre) {
  V acc[K];
  for (int k = 0; k < K; ++k) acc[k] = Splat(cv.b[o0 + k]);
  const int64_t half = cv.taps / 2;
  for (int64_t t = 0; t < cv.taps; ++t) {
    const float* ht = h + kPad + j0 + t - half;
    const float* wt = cv.w + o0 * cv.taps * cv.in + t * cv.in * K;
    for (int64_t c = 0; c < cv.in; ++c) {
      const V hv = Load(ht + c * hs);
      const float* wc = wt + c * K;
      for (int k = 0; k < K; ++k) acc[k] = acc[k] + Splat(wc[k]) * hv;
    }
  }
  if (pre != nullptr) {
    for (int k = 0; k < K; ++k) Store(pre + (o0 + k) * ys + kPad + j0, acc[k]);
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
T2D_INLINE void ConvBlock(const float* h, int64_t hs, const ConvRef& cv, float* y, int64_t ys, int64_t j0, V* sum,
                          float* pre = nullptr) {
  // The blocks of BlockWidth, the layout MakeConv stored the weights in.
  for (int64_t o = 0; o < cv.out;) {
    const int k = BlockWidth(cv.out, o);
    switch (k) {
      case 12: ConvOut<12>(h, hs, cv, o, y, ys, j0, sum, pre); break;
      case 8: ConvOut<8>(h, hs, cv, o, y, ys, j0, sum, pre); break;
      case 4: ConvOut<4>(h, hs, cv, o, y, ys, j0, sum, pre); break;
      default: ConvOut<1>(h, hs, cv, o, y, ys, j0, sum, pre); break;
    }
    o += k;
  }
}

// y [out planes, stride ys] = conv(h [in planes, stride hs]) at positions from .. RoundUp8(len) - 1
// (`from` a multiple of 8).
T2D_INLINE void Conv(const float* h, int64_t hs, const ConvRef& cv, float* y, int64_t ys, int64_t from, int64_t len) {
  for (int64_t j0 = from; j0 < len; j0 += kW) ConvBlock(h, hs, cv, y, ys, j0, nullptr);
}

// A block of the U-Net: y [out planes] = mask * LayerNorm(swish(conv(h))) over the channels
// (eps 1e-5), one block of 8 positions at a time while it is in L1. Positions >= len are masked
// (zero bits), which keeps the planes' tails zero. `pre` (training): the convolution's output
// before the swish, kept for the backward pass. Positions before `from` (a multiple of 8) are
// not computed.
T2D_INLINE void ConvSwishNormMask(const float* h, int64_t hs, const ConvRef& cv, const NormRef& nm,
                                  const uint32_t* mask, float* y, int64_t ys, int64_t len, float* pre,
                                  int64_t from = 0) {
  const int64_t c = cv.out;
  const V cf = Splat(static_cast<float>(c));
  for (int64_t j0 = from; j0 < len; j0 += kW) {
    V mean = Splat(0.f);
    ConvBlock(h, hs, cv, y, ys, j0, &mean, pre);
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

// The scratch planes of one level.
struct Level {
  int64_t len = 0, stride = 0, ch = 0;  // positions, plane stride, channels C << l
  // The forward computes positions from .. len - 1 of every plane of the level (a multiple of 8;
  // 0 but for UnetKernel::TrainLast, see LastOnlyStarts).
  int64_t from = 0;
  float* pool = nullptr;  // l > 0: the max-pooled output of level l - 1 (its channels)
  float* down = nullptr;  // down-path block output (the skip), ch planes
  float* proj = nullptr;  // l < levels - 1: conv1 of the level below's output, ch planes at stride of l + 1
  float* cat = nullptr;   // l < levels - 1: upsampled proj and skip, 2 ch planes
  float* up = nullptr;    // l < levels - 1: up-path block output, ch planes
  uint32_t* mask = nullptr;  // RoundUp8(len) words
  // Training only: the blocks' convolution outputs before the swish, and the gradient planes
  // (d* of the plane of the same name; dy of a block's pre-activation, dpool of the pooled input).
  float *pre_down = nullptr, *pre_up = nullptr;
  float *ddown = nullptr, *dup = nullptr, *dy = nullptr, *dcat = nullptr, *dproj = nullptr, *dpool = nullptr;
};

// A convolution's (or norm's) gradient accumulators: 8 lanes (one per position of a vector) a
// parameter, in the kernel's transposed order; summed across lanes at the end of a call.
struct ConvLanes {
  float* w = nullptr;  // [taps * in * out][8]
  float* b = nullptr;  // [out][8]
};

}  // namespace

struct UnetPlanes {
  int64_t d = 0, n = 0, left = 0;
  int levels = 0;
  float* x = nullptr;    // level-0 input, 2D planes
  float* out = nullptr;  // z0_hat, D planes at level 0
  float* out_u = nullptr;  // guidance: the unconditional z0_hat, D planes at level 0
  float guidance = 0;      // w: z0_hat = (1 + w) U(z, X) - w U(z, 0); 0 runs the conditional U-Net only
  float* zt = nullptr;   // the sequence's z_r as D planes at level 0 (left padding and tail zero)
  float* ct = nullptr;   // its condition X_{1..n}, D planes
  float* et = nullptr;   // the step's noise, D planes
  float* dout = nullptr;   // training: the loss's gradient with respect to out (before its mask)
  Level lv[kMaxLevels];
  ConvRef down_conv[kMaxLevels], up_proj[kMaxLevels], up_conv[kMaxLevels], out_conv;
  NormRef down_norm[kMaxLevels], up_norm[kMaxLevels];
  // Training: the transposed weights for input gradients ([taps][out][in]) and the lanes.
  const float *down_wb[kMaxLevels] = {}, *up_proj_wb[kMaxLevels] = {}, *up_wb[kMaxLevels] = {}, *out_wb = nullptr;
  ConvLanes down_g[kMaxLevels], up_proj_g[kMaxLevels], up_g[kMaxLevels], out_g;
  ConvLanes down_norm_g[kMaxLevels], up_norm_g[kMaxLevels];  // w: gain, b: bias ([c][8] each)
};

namespace {

using Net = UnetPlanes;

// The U-Net's layers from the input planes net.x to `out` (D planes at level 0, not masked).
// Training (the levels' pre_* planes set) also keeps the blocks' pre-activations.
T2D_INLINE void UnetLayers(const Net& net, float* out) {
  const int levels = net.levels;
  const Level& l0 = net.lv[0];
  {
    const float* h = net.x;
    int64_t hs = l0.stride;
    for (int l = 0; l < levels; ++l) {
      const Level& lv = net.lv[l];
      if (l > 0) {  // max-pool 2; a pooled position is masked only if both inputs were (and are 0)
        const int64_t ch = net.down_conv[l].in;
        for (int64_t c = 0; c < ch; ++c) {
          const float* a = h + c * hs + kPad;
          float* p = lv.pool + c * lv.stride + kPad;
          // Positions len .. RoundUp8(len) - 1 pool the zero tail (2 RoundUp8(len) <= the row's
          // RoundUp8 + kPad), so they stay zero.
          for (int64_t j0 = lv.from; j0 < lv.len; j0 += kW) {
            const V lo = Load(a + 2 * j0), hi = Load(a + 2 * j0 + kW);
            const V ev = Evens(lo, hi), od = Odds(lo, hi);
            Store(p + j0, ev < od ? od : ev);
          }
        }
        h = lv.pool;
        hs = lv.stride;
      }
      ConvSwishNormMask(h, hs, net.down_conv[l], net.down_norm[l], lv.mask, lv.down, lv.stride, lv.len, lv.pre_down,
                        lv.from);
      h = lv.down;
      hs = lv.stride;
    }
    for (int l = levels - 2; l >= 0; --l) {
      const Level& lv = net.lv[l];
      const Level& below = net.lv[l + 1];
      const int64_t c = lv.ch;
      // conv1 before the nearest upsample (they commute), then [upsampled, skip] masked.
      Conv(h, hs, net.up_proj[l], lv.proj, below.stride, below.from, below.len);
      // Masked as written; the second half of the last block may lie beyond RoundUp8(len) (the
      // zero padding), where nothing is written.
      const int64_t blocks = RoundUp8(lv.len);
      for (int64_t o = 0; o < c; ++o) {
        const float* p = lv.proj + o * below.stride + kPad;
        float* dst = lv.cat + o * lv.stride + kPad;
        for (int64_t j0 = below.from; j0 < below.len; j0 += kW) {
          const V pv = Load(p + j0);
          Store(dst + 2 * j0, Masked(DupLow(pv), LoadBits(lv.mask + 2 * j0)));
          if (2 * j0 + kW < blocks) Store(dst + 2 * j0 + kW, Masked(DupHigh(pv), LoadBits(lv.mask + 2 * j0 + kW)));
        }
      }
      std::memcpy(lv.cat + c * lv.stride, lv.down, static_cast<size_t>(c * lv.stride) * sizeof(float));
      ConvSwishNormMask(lv.cat, lv.stride, net.up_conv[l], net.up_norm[l], lv.mask, lv.up, lv.stride, lv.len, lv.pre_up,
                        lv.from);
      h = lv.up;
      hs = lv.stride;
    }
    Conv(h, hs, net.out_conv, out, l0.stride, l0.from, l0.len);
  }
}

// The U-Net of docs/model.md on (z_r + emb, cond + emb) into `out` (D planes at level 0);
// `conditioned` false: the condition is 0 (guidance's unconditional pass).
T2D_INLINE void UnetPass(const Net& net, const float* emb, bool conditioned, float* out) {
  const int64_t d = net.d, d2 = 2 * d;
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
  }
  UnetLayers(net, out);
}

// One sequence's whole reverse process. The x86-64-v3 version fuses multiply-adds (unet_kernel.h).
__attribute__((target_clones("arch=x86-64-v3", "default"))) void ReverseSequence(
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

// Adds the vector `acc` to the 8 lanes at p.
T2D_INLINE void AddLanes(float* p, V acc) { Store(p, Load(p) + acc); }

// The masks of every level for one sequence (mask [n], 0/1) as all-ones / zero words; the left
// padding and the tails stay zero.
void SetMasks(const Net& net, const float* mask) {
  uint32_t* m0 = net.lv[0].mask;
  for (int64_t j = 0; j < net.n; ++j) m0[net.left + j] = mask[j] != 0.f ? ~0u : 0u;
  for (int l = 1; l < net.levels; ++l) {
    const uint32_t* prev = net.lv[l - 1].mask;
    uint32_t* cur = net.lv[l].mask;
    for (int64_t j = 0; j < net.lv[l].len; ++j) cur[j] = prev[2 * j] | prev[2 * j + 1];
  }
}

// Weight gradient of output channels o0 .. o0 + K - 1 for one (tap, input channel): the lanes
// gw[o] += sum over blocks of dy[o][j] * h[j + tap - taps / 2] (ht is already shifted).
template <int K>
T2D_INLINE void ConvWeightGrad(const float* ht, const float* dy, int64_t ys, int64_t blocks, int64_t o0, float* gw) {
  V acc[K];
  for (int k = 0; k < K; ++k) acc[k] = Splat(0.f);
  for (int64_t j0 = 0; j0 < blocks; j0 += kW) {
    const V hv = Load(ht + j0);
    for (int k = 0; k < K; ++k) acc[k] = acc[k] + Load(dy + (o0 + k) * ys + kPad + j0) * hv;
  }
  for (int k = 0; k < K; ++k) AddLanes(gw + (o0 + k) * kW, acc[k]);
}

// Input gradient of channels c0 .. c0 + K - 1 at positions j0 .. j0 + 7:
// dh[c][j] = sum over taps t and outputs o of w[o][t][c] dy[o][j + taps / 2 - t].
template <int K>
T2D_INLINE void ConvInputGrad(const float* dy, int64_t ys, const ConvRef& cv, const float* wb, int64_t c0, float* dh,
                              int64_t hs, int64_t j0) {
  V acc[K];
  for (int k = 0; k < K; ++k) acc[k] = Splat(0.f);
  const int64_t half = cv.taps / 2;
  for (int64_t t = 0; t < cv.taps; ++t) {
    const float* dyt = dy + kPad + j0 + half - t;
    const float* wt = wb + t * cv.out * cv.in + c0;
    for (int64_t o = 0; o < cv.out; ++o) {
      const V dv = Load(dyt + o * ys);
      const float* wo = wt + o * cv.in;
      for (int k = 0; k < K; ++k) acc[k] = acc[k] + Splat(wo[k]) * dv;
    }
  }
  for (int k = 0; k < K; ++k) Store(dh + (c0 + k) * hs + kPad + j0, acc[k]);
}

// Backward of y = conv(h) (ConvBlock without the swish) over positions 0 .. RoundUp8(len) - 1.
// dy [out planes, stride ys] must be zero beyond len and on the padding. Adds the weight and
// bias gradients to the lanes; with dh, WRITES the input's gradient there ([in planes], stride
// hs, positions 0 .. RoundUp8(len) - 1; values beyond len are meaningless, consumers mask them).
// wb: the weights as [taps][out][in].
T2D_INLINE void ConvBackward(const float* h, int64_t hs, const ConvRef& cv, const float* wb, const float* dy, int64_t ys,
                             int64_t len, const ConvLanes& g, float* dh) {
  const int64_t blocks = RoundUp8(len), half = cv.taps / 2;
  for (int64_t o = 0; o < cv.out; ++o) {
    V acc = Splat(0.f);
    for (int64_t j0 = 0; j0 < blocks; j0 += kW) acc = acc + Load(dy + o * ys + kPad + j0);
    AddLanes(g.b + o * kW, acc);
  }
  for (int64_t t = 0; t < cv.taps; ++t) {
    for (int64_t c = 0; c < cv.in; ++c) {
      const float* ht = h + c * hs + kPad + t - half;
      float* gw = g.w + (t * cv.in + c) * cv.out * kW;
      int64_t o = 0;
      for (; o + 8 <= cv.out; o += 8) ConvWeightGrad<8>(ht, dy, ys, blocks, o, gw);
      for (; o + 4 <= cv.out; o += 4) ConvWeightGrad<4>(ht, dy, ys, blocks, o, gw);
      for (; o < cv.out; ++o) ConvWeightGrad<1>(ht, dy, ys, blocks, o, gw);
    }
  }
  if (dh == nullptr) return;
  for (int64_t j0 = 0; j0 < blocks; j0 += kW) {
    int64_t c = 0;
    for (; c + 8 <= cv.in; c += 8) ConvInputGrad<8>(dy, ys, cv, wb, c, dh, hs, j0);
    for (; c + 4 <= cv.in; c += 4) ConvInputGrad<4>(dy, ys, cv, wb, c, dh, hs, j0);
    for (; c < cv.in; ++c) ConvInputGrad<1>(dy, ys, cv, wb, c, dh, hs, j0);
  }
}

// Backward of out = mask * (LayerNorm_c(swish(pre)) * gain + bias) (ConvSwishNormMask): dout
// [c planes] -> dy [c planes], the gradient of pre (zero at masked positions and beyond len);
// the gain and bias gradients go to g.w and g.b. The statistics are recomputed from pre with the
// forward's operations.
T2D_INLINE void SwishNormMaskBackward(const float* pre, int64_t ys, int64_t c, const NormRef& nm,
                                      const uint32_t* mask, const float* dout, int64_t len, float* dy,
                                      const ConvLanes& g) {
  const V cf = Splat(static_cast<float>(c)), one = Splat(1.f);
  for (int64_t j0 = 0; j0 < len; j0 += kW) {
    const VI bits = LoadBits(mask + j0);
    const float* pj = pre + kPad + j0;
    const float* gj = dout + kPad + j0;
    float* dj = dy + kPad + j0;  // holds swish(pre) until the last loop
    V mean = Splat(0.f);
    for (int64_t o = 0; o < c; ++o) {
      const V a = Swish(Load(pj + o * ys));
      Store(dj + o * ys, a);
      mean = mean + a;
    }
    mean = mean / cf;
    V var = Splat(0.f);
    for (int64_t o = 0; o < c; ++o) {
      const V dv = Load(dj + o * ys) - mean;
      var = var + dv * dv;
    }
    const V inv = one / Sqrt(var / cf + Splat(1e-5f));
    V m1 = Splat(0.f), m2 = Splat(0.f);
    for (int64_t o = 0; o < c; ++o) {
      const V nrm = (Load(dj + o * ys) - mean) * inv;
      const V dn = Masked(Load(gj + o * ys), bits);
      AddLanes(g.w + o * kW, dn * nrm);
      AddLanes(g.b + o * kW, dn);
      const V dnrm = dn * Splat(nm.g[o]);
      m1 = m1 + dnrm;
      m2 = m2 + dnrm * nrm;
    }
    m1 = m1 / cf;
    m2 = m2 / cf;
    for (int64_t o = 0; o < c; ++o) {
      const V nrm = (Load(dj + o * ys) - mean) * inv;
      const V dnrm = Masked(Load(gj + o * ys), bits) * Splat(nm.g[o]);
      const V da = (dnrm - m1 - nrm * m2) * inv;
      const V y = Load(pj + o * ys);
      const V sg = one / (one + Exp(-y));  // d swish / dy = s (1 + y (1 - s))
      Store(dj + o * ys, Masked(da * sg * (one + y * (one - sg)), bits));
    }
  }
}

// The training forward of one sequence (masks already set): the input [n, 2D] into the level-0
// planes (masked), then the U-Net's layers into net.out. Shared by TrainSequence and
// LastSequence, so that both run the same operations (inlined into each one's target clones).
T2D_INLINE void TrainForward(const Net& net, const float* input) {
  const int64_t d2 = 2 * net.d, n = net.n, left = net.left;
  const Level& l0 = net.lv[0];
  const int64_t s0 = l0.stride;
  for (int64_t j = 0; j < n; ++j) {
    const bool on = l0.mask[left + j] != 0;
    for (int64_t c = 0; c < d2; ++c) net.x[c * s0 + kPad + left + j] = on ? input[j * d2 + c] : 0.f;
  }
  UnetLayers(net, net.out);
}

// z0_hat at the last position [D] (0 where that position is masked).
T2D_INLINE void ReadLast(const Net& net, float* last) {
  const Level& l0 = net.lv[0];
  const int64_t at = kPad + net.left + net.n - 1;
  const bool on = l0.mask[net.left + net.n - 1] != 0;
  for (int64_t c = 0; c < net.d; ++c) last[c] = on ? net.out[c * l0.stride + at] : 0.f;
}

// One sequence of UnetKernel::TrainLoss (masks already set): forward, the loss, z0_hat at the
// last position, and with `backward` the parameter gradients into the lanes. Returns the
// sequence's loss.
__attribute__((target_clones("avx2", "default"))) double TrainSequence(const Net& net, const float* input,
                                                                       const float* target, bool squared,
                                                                       float scale, bool backward, float* last) {
  const int64_t d = net.d, n = net.n, left = net.left;
  const int levels = net.levels;
  const Level& l0 = net.lv[0];
  const int64_t s0 = l0.stride;
  TrainForward(net, input);
  double total = 0;
  for (int64_t j = 0; j < n; ++j) {
    const bool on = l0.mask[left + j] != 0;
    const float* tj = target + j * d;
    float sq = 0;
    for (int64_t c = 0; c < d; ++c) {
      const float diff = (on ? net.out[c * s0 + kPad + left + j] : 0.f) - tj[c];
      sq += diff * diff;
    }
    const float norm = squared ? 0.f : std::sqrt(sq);
    total += squared ? sq : norm;
    // The gradient of the position's loss times `scale` with respect to the unmasked output.
    const float k = squared ? 2.f * scale : (norm > 0.f ? scale / norm : 0.f);
    for (int64_t c = 0; c < d; ++c) {
      const float o = net.out[c * s0 + kPad + left + j];
      net.dout[c * s0 + kPad + left + j] = on ? ((o - tj[c]) * k) : 0.f;
    }
  }
  ReadLast(net, last);
  if (!backward) return total;

  ConvBackward(levels > 1 ? l0.up : l0.down, s0, net.out_conv, net.out_wb, net.dout, s0, l0.len, net.out_g,
               levels > 1 ? l0.dup : l0.ddown);
  // The up path from level 0 (the last one run forward) to the deepest.
  for (int l = 0; l + 1 < levels; ++l) {
    const Level& lv = net.lv[l];
    const Level& below = net.lv[l + 1];
    const int64_t c = lv.ch;
    SwishNormMaskBackward(lv.pre_up, lv.stride, c, net.up_norm[l], lv.mask, lv.dup, lv.len, lv.dy, net.up_norm_g[l]);
    ConvBackward(lv.cat, lv.stride, net.up_conv[l], net.up_wb[l], lv.dy, lv.stride, lv.len, net.up_g[l], lv.dcat);
    // The skip half goes to the down block's output; the upsampled half, masked, back to proj.
    std::memcpy(lv.ddown, lv.dcat + c * lv.stride, static_cast<size_t>(c * lv.stride) * sizeof(float));
    const int64_t blocks = RoundUp8(lv.len);
    for (int64_t o = 0; o < c; ++o) {
      const float* src = lv.dcat + o * lv.stride + kPad;
      float* dp = lv.dproj + o * below.stride + kPad;
      for (int64_t j0 = 0; j0 < below.len; j0 += kW) {
        const V lo = Masked(Load(src + 2 * j0), LoadBits(lv.mask + 2 * j0));
        // Beyond RoundUp8(len) every position is masked: +0, as its mask word would give.
        const V hi = 2 * j0 + kW < blocks ? Masked(Load(src + 2 * j0 + kW), LoadBits(lv.mask + 2 * j0 + kW)) : Splat(0.f);
        Store(dp + j0, Masked(Evens(lo, hi) + Odds(lo, hi), Below(j0, below.len)));
      }
    }
    const bool deeper_up = l + 2 < levels;  // the proj's input: the level below's up block or its down block
    ConvBackward(deeper_up ? below.up : below.down, below.stride, net.up_proj[l], net.up_proj_wb[l], lv.dproj,
                 below.stride, below.len, net.up_proj_g[l], deeper_up ? below.dup : below.ddown);
  }
  // The down path from the deepest level; max-pool sends its gradient to the larger input of
  // each pair (the first on ties), added to that level's skip gradient.
  for (int l = levels - 1; l >= 0; --l) {
    const Level& lv = net.lv[l];
    SwishNormMaskBackward(lv.pre_down, lv.stride, lv.ch, net.down_norm[l], lv.mask, lv.ddown, lv.len, lv.dy,
                          net.down_norm_g[l]);
    ConvBackward(l > 0 ? lv.pool : net.x, lv.stride, net.down_conv[l], net.down_wb[l], lv.dy, lv.stride, lv.len,
                 net.down_g[l], l > 0 ? lv.dpool : nullptr);
    if (l == 0) break;
    const Level& prev = net.lv[l - 1];
    for (int64_t c = 0; c < prev.ch; ++c) {
      const float* a = prev.down + c * prev.stride + kPad;
      const float* dp = lv.dpool + c * lv.stride + kPad;
      float* dd = prev.ddown + c * prev.stride + kPad;
      // Pairs in dd's layout, 4 pooled positions a vector: an even lane takes the gradient unless
      // its partner is larger, an odd lane only if it is larger than its partner.
      const VI odd_lane{0, -1, 0, -1, 0, -1, 0, -1};
      for (int64_t j0 = 0; j0 < lv.len; j0 += kW) {
        const V g = Load(dp + j0);
        const VI valid = Below(j0, lv.len);
        for (int half = 0; half < 2; ++half) {
          float* ddh = dd + 2 * j0 + half * kW;
          const V av = Load(a + 2 * j0 + half * kW);
          const V partner = __builtin_shuffle(av, VI{1, 0, 3, 2, 5, 4, 7, 6});
          const VI larger = av < partner;  // even lane: the partner wins; odd lane: this one loses or ties
          const VI wins = (~larger & ~odd_lane) | ((partner < av) & odd_lane);
          const VI on = wins & (half == 0 ? DupLow(valid) : DupHigh(valid));
          const V gh = half == 0 ? DupLow(g) : DupHigh(g);
          const V cur = Load(ddh);
          Store(ddh, on ? cur + gh : cur);
        }
      }
    }
  }
  return total;
}

// z0_hat at the last position only, from the planes LastOnlyStarts restricted: the same
// operations as TrainSequence's forward (same target clones, no FMA), so the same bits as its
// `last`.
__attribute__((target_clones("avx2", "default"))) void LastSequence(const Net& net, const float* input,
                                                                    float* last) {
  TrainForward(net, input);
  ReadLast(net, last);
}

// Sets each level's `from` so that the forward computes what the last position's output depends
// on and little more. Working back from that position, need* is the first position of a plane
// that some needed value reads: a 3-tap convolution reads one position to its left, a 1x1 reads
// its own, pooling position p reads 2p and 2p + 1 below, the upsampled half of the concatenation
// at p reads p / 2 of the level below. A level computes all of its planes from the smallest of
// its needs rounded down to a vector; positions it computes before a plane's need may be wrong
// (they read positions this pass does not compute), but nothing needed reads them.
void LastOnlyStarts(Net& net) {
  const int levels = net.levels;
  const int64_t np = net.lv[0].len;
  int64_t need_h[kMaxLevels], need_cat[kMaxLevels], need_down[kMaxLevels], need_pool[kMaxLevels];
  need_h[0] = np - 1;  // the level's output: up (down at the deepest level)
  for (int l = 0; l + 1 < levels; ++l) {
    need_cat[l] = std::max<int64_t>(0, need_h[l] - 1);  // up = conv3(cat)
    need_h[l + 1] = need_cat[l] / 2;                     // cat's upsampled half = proj(h below), 1x1
  }
  need_down[levels - 1] = need_h[levels - 1];
  need_pool[levels - 1] = std::max<int64_t>(0, need_down[levels - 1] - 1);
  for (int l = levels - 2; l >= 0; --l) {
    need_down[l] = std::min(need_cat[l], 2 * need_pool[l + 1]);  // the skip, and pooled below
    need_pool[l] = std::max<int64_t>(0, need_down[l] - 1);       // down = conv3(pool or input)
  }
  for (int l = 0; l < levels; ++l) {
    int64_t first = std::min(need_h[l], need_down[l]);
    if (l > 0) first = std::min(first, need_pool[l]);
    if (l + 1 < levels) first = std::min(first, need_cat[l]);
    net.lv[l].from = first / kW * kW;
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

UnetKernel::Conv UnetKernel::MakeConv(const float* params, int64_t w_off, int64_t b_off, int64_t in, int64_t out,
                                      int64_t taps) {
  const float* w = params + w_off;
  Conv c;
  c.in = in;
  c.out = out;
  c.taps = taps;
  c.w_off = w_off;
  c.b_off = b_off;
  c.w.resize(static_cast<size_t>(taps * in * out));
  c.wb.resize(static_cast<size_t>(taps * in * out));
  for (int64_t o0 = 0; o0 < out;) {
    const int k = BlockWidth(out, o0);
    for (int64_t i = 0; i < taps * in; ++i) {
      for (int64_t o = o0; o < o0 + k; ++o) c.w[static_cast<size_t>(o0 * taps * in + i * k + o - o0)] = w[o * taps * in + i];
    }
    o0 += k;
  }
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t i = 0; i < in; ++i) c.wb[static_cast<size_t>((t * out + o) * in + i)] = w[o * taps * in + t * in + i];
    }
  }
  c.b.assign(params + b_off, params + b_off + out);
  return c;
}

UnetKernel::Norm UnetKernel::MakeNorm(const float* params, int64_t g_off, int64_t b_off, int64_t c) {
  Norm n;
  n.g.assign(params + g_off, params + g_off + c);
  n.b.assign(params + b_off, params + b_off + c);
  n.g_off = g_off;
  n.b_off = b_off;
  return n;
}

UnetKernel::UnetKernel(const UnetKernelLayout& layout, const float* params)
    : d_(layout.d), c_(layout.channels > 0 ? layout.channels : layout.d), levels_(layout.levels) {
  int64_t in = 2 * d_;
  for (int l = 0; l < levels_; ++l) {
    const auto& s = layout.down[static_cast<size_t>(l)];
    const int64_t c = c_ << l;
    down_conv_.push_back(MakeConv(params, s.w, s.b, in, c, 3));
    down_norm_.push_back(MakeNorm(params, s.g, s.beta, c));
    in = c;
  }
  for (int l = 0; l + 1 < levels_; ++l) {
    const auto& s = layout.up[static_cast<size_t>(l)];
    const int64_t c = c_ << l;
    up_proj_.push_back(MakeConv(params, s.pw, s.pb, 2 * c, c, 1));
    up_conv_.push_back(MakeConv(params, s.w, s.b, 2 * c, c, 3));
    up_norm_.push_back(MakeNorm(params, s.g, s.beta, c));
  }
  out_ = MakeConv(params, layout.out_w, layout.out_b, c_, d_, 1);
}

void UnetKernel::Bind(int64_t n, bool training, UnetPlanes* net_ptr) {
  UnetPlanes& net = *net_ptr;
  const int64_t d = d_;
  const int64_t p = int64_t{1} << (levels_ - 1);
  const int64_t np = (n + p - 1) / p * p;
  auto ref = [](const Conv& c) { return ConvRef{c.w.data(), c.b.data(), c.in, c.out, c.taps}; };
  auto nref = [](const Norm& m) { return NormRef{m.g.data(), m.b.data()}; };
  net.d = d;
  net.n = n;
  net.left = np - n;
  net.levels = levels_;
  // Offsets first (the vectors may reallocate), pointers after. Float offsets of planes:
  int64_t floats = 0, words = 0, lanes = 0;
  auto take = [&floats](int64_t count) {
    const int64_t at = floats;
    floats += count;
    return at;
  };
  auto lane = [&lanes](int64_t params) {
    const int64_t at = lanes;
    lanes += params * kW;
    return at;
  };
  struct Offsets {
    int64_t pool = -1, down = -1, proj = -1, cat = -1, up = -1, mask = 0;
    int64_t pre_down = -1, pre_up = -1, ddown = -1, dup = -1, dy = -1, dcat = -1, dproj = -1, dpool = -1;
  } off[kMaxLevels];
  const int64_t s0 = Stride(np);
  const int64_t x_off = take(2 * d * s0);
  const int64_t out_off = take(2 * d * s0);  // out, out_u
  const int64_t zt_off = take(3 * d * s0);   // zt, ct, et
  const int64_t dout_off = training ? take(d * s0) : -1;
  for (int l = 0; l < levels_; ++l) {
    Level& lv = net.lv[l];
    lv.len = np >> l;
    lv.stride = Stride(lv.len);
    lv.ch = c_ << l;
    const int64_t plane = lv.ch * lv.stride;
    const bool has_up = l + 1 < levels_;
    if (l > 0) off[l].pool = take(net.lv[l - 1].ch * lv.stride);
    off[l].down = take(plane);
    if (has_up) {
      off[l].proj = take(lv.ch * Stride(lv.len / 2));
      off[l].cat = take(2 * plane);
      off[l].up = take(plane);
    }
    if (training) {
      off[l].pre_down = take(plane);
      off[l].ddown = take(plane);
      off[l].dy = take(plane);
      if (l > 0) off[l].dpool = take(net.lv[l - 1].ch * lv.stride);
      if (has_up) {
        off[l].pre_up = take(plane);
        off[l].dup = take(plane);
        off[l].dcat = take(2 * plane);
        off[l].dproj = take(lv.ch * Stride(lv.len / 2));
      }
    }
    off[l].mask = words;
    words += RoundUp8(lv.len);
  }
  // Lanes: every convolution's weights and biases, every norm's gains and biases.
  struct LaneOffsets {
    int64_t w = 0, b = 0;
  };
  LaneOffsets down_l[kMaxLevels], down_n[kMaxLevels], proj_l[kMaxLevels], up_l[kMaxLevels], up_n[kMaxLevels], out_l;
  if (training) {
    for (int l = 0; l < levels_; ++l) {
      const Conv& cv = down_conv_[static_cast<size_t>(l)];
      down_l[l] = {lane(cv.taps * cv.in * cv.out), lane(cv.out)};
      down_n[l] = {lane(cv.out), lane(cv.out)};
      if (l + 1 < levels_) {
        const Conv& pj = up_proj_[static_cast<size_t>(l)];
        const Conv& uc = up_conv_[static_cast<size_t>(l)];
        proj_l[l] = {lane(pj.in * pj.out), lane(pj.out)};
        up_l[l] = {lane(uc.taps * uc.in * uc.out), lane(uc.out)};
        up_n[l] = {lane(uc.out), lane(uc.out)};
      }
    }
    out_l = {lane(out_.in * out_.out), lane(out_.out)};
  }
  // Zero once per layout: the padding and tails are never written (or only with masked zeros),
  // every other value is written before it is read (as between the sequences of one call), and
  // TrainLoss leaves the lanes zero. A call that stops early unbinds (bound_n_ = -1).
  if (n != bound_n_ || training != bound_training_) {
    if (training) lanes_.assign(static_cast<size_t>(lanes), 0.f);
    scratch_.assign(static_cast<size_t>(floats), 0.f);
    mask_bits_.assign(static_cast<size_t>(words), 0u);
    bound_n_ = n;
    bound_training_ = training;
  }
  float* base = scratch_.data();
  auto at = [base](int64_t o) { return o < 0 ? nullptr : base + o; };
  net.x = at(x_off);
  net.out = at(out_off);
  net.out_u = net.out + d * s0;
  net.zt = at(zt_off);
  net.ct = net.zt + d * s0;
  net.et = net.ct + d * s0;
  net.dout = at(dout_off);
  float* lb = lanes_.data();
  auto lanes_at = [lb](const LaneOffsets& o) { return ConvLanes{lb + o.w, lb + o.b}; };
  for (int l = 0; l < levels_; ++l) {
    Level& lv = net.lv[l];
    const Offsets& o = off[l];
    lv.pool = at(o.pool);
    lv.down = at(o.down);
    lv.proj = at(o.proj);
    lv.cat = at(o.cat);
    lv.up = at(o.up);
    lv.pre_down = at(o.pre_down);
    lv.pre_up = at(o.pre_up);
    lv.ddown = at(o.ddown);
    lv.dup = at(o.dup);
    lv.dy = at(o.dy);
    lv.dcat = at(o.dcat);
    lv.dproj = at(o.dproj);
    lv.dpool = at(o.dpool);
    lv.mask = mask_bits_.data() + o.mask;
    net.down_conv[l] = ref(down_conv_[static_cast<size_t>(l)]);
    net.down_norm[l] = nref(down_norm_[static_cast<size_t>(l)]);
    net.down_wb[l] = down_conv_[static_cast<size_t>(l)].wb.data();
    if (training) {
      net.down_g[l] = lanes_at(down_l[l]);
      net.down_norm_g[l] = lanes_at(down_n[l]);
    }
    if (l + 1 < levels_) {
      net.up_proj[l] = ref(up_proj_[static_cast<size_t>(l)]);
      net.up_conv[l] = ref(up_conv_[static_cast<size_t>(l)]);
      net.up_norm[l] = nref(up_norm_[static_cast<size_t>(l)]);
      net.up_proj_wb[l] = up_proj_[static_cast<size_t>(l)].wb.data();
      net.up_wb[l] = up_conv_[static_cast<size_t>(l)].wb.data();
      if (training) {
        net.up_proj_g[l] = lanes_at(proj_l[l]);
        net.up_g[l] = lanes_at(up_l[l]);
        net.up_norm_g[l] = lanes_at(up_n[l]);
      }
    }
  }
  net.out_conv = ref(out_);
  net.out_wb = out_.wb.data();
  if (training) net.out_g = lanes_at(out_l);
}

void UnetKernel::Reverse(const std::vector<ReverseStep>& plan, const float* step_emb, int64_t sequences, int64_t n,
                         const float* mask, const float* cond, const float* const* noise, int64_t noise_step_stride,
                         float* z, float guidance) {
  const int64_t seq = n * d_;
  UnetPlanes net;
  Bind(n, false, &net);
  net.guidance = guidance;
  for (int64_t s = 0; s < sequences; ++s) {
    // The masks of every level, once per sequence (the same for all of its steps).
    SetMasks(net, mask + s * n);
    ReverseSequence(net, plan.data(), static_cast<int64_t>(plan.size()), step_emb, cond + s * seq, noise[s],
                    noise_step_stride, z + s * seq);
  }
}

namespace {

// Adds the lanes of a convolution's gradient to the flat gradient buffer, in the model's
// parameter order ([out][taps * in] weights, then [out] biases); lanes are summed 0 .. 7, and
// zeroed for the next call.
float SumLanes(float* l) {
  float acc = l[0];
  for (int64_t k = 1; k < kW; ++k) acc += l[k];
  std::fill(l, l + kW, 0.f);
  return acc;
}

}  // namespace

void UnetKernel::TrainLast(int64_t sequences, int64_t n, const float* input, const float* mask, float* last) {
  UnetPlanes net;
  Bind(n, false, &net);
  LastOnlyStarts(net);
  for (int64_t s = 0; s < sequences; ++s) {
    SetMasks(net, mask + s * n);
    LastSequence(net, input + s * n * 2 * d_, last + s * d_);
  }
}

void UnetKernel::TrainLoss(int64_t sequences, int64_t n, const float* input, const float* mask, const float* target,
                           UnetLoss loss, float grad_scale, double* seq_loss, float* last, float* grad) {
  UnetPlanes net;
  Bind(n, true, &net);
  bound_n_ = -1;  // until the lanes are flushed (zeroed) below
  const int64_t d2 = 2 * d_;
  for (int64_t s = 0; s < sequences; ++s) {
    SetMasks(net, mask + s * n);
    seq_loss[s] = TrainSequence(net, input + s * n * d2, target + s * n * d_, loss == UnetLoss::kSquared, grad_scale,
                                grad != nullptr, last + s * d_);
  }
  if (grad == nullptr) {
    bound_n_ = n;  // no lane was written
    return;
  }
  auto flush_conv = [grad](const Conv& cv, const ConvLanes& g) {
    for (int64_t t = 0; t < cv.taps; ++t) {
      for (int64_t c = 0; c < cv.in; ++c) {
        for (int64_t o = 0; o < cv.out; ++o) {
          grad[cv.w_off + o * cv.taps * cv.in + t * cv.in + c] += SumLanes(g.w + ((t * cv.in + c) * cv.out + o) * kW);
        }
      }
    }
    for (int64_t o = 0; o < cv.out; ++o) grad[cv.b_off + o] += SumLanes(g.b + o * kW);
  };
  auto flush_norm = [grad](const Norm& nm, const ConvLanes& g) {
    for (size_t o = 0; o < nm.g.size(); ++o) {
      grad[nm.g_off + static_cast<int64_t>(o)] += SumLanes(g.w + static_cast<int64_t>(o) * kW);
      grad[nm.b_off + static_cast<int64_t>(o)] += SumLanes(g.b + static_cast<int64_t>(o) * kW);
    }
  };
  for (int l = 0; l < levels_; ++l) {
    flush_conv(down_conv_[static_cast<size_t>(l)], net.down_g[l]);
    flush_norm(down_norm_[static_cast<size_t>(l)], net.down_norm_g[l]);
    if (l + 1 < levels_) {
      flush_conv(up_proj_[static_cast<size_t>(l)], net.up_proj_g[l]);
      flush_conv(up_conv_[static_cast<size_t>(l)], net.up_g[l]);
      flush_norm(up_norm_[static_cast<size_t>(l)], net.up_norm_g[l]);
    }
  }
  flush_conv(out_, net.out_g);
  bound_n_ = n;
}

}  // namespace t2d::model
