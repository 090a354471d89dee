#pragma once
// Eight-float vectors (GCC vector extensions) and the few vector functions the plain-C++
// kernels share (model/unet_kernel.cc, model/fused_ops.cc). Internal to model/. Everything is
// always_inline so that it compiles into each caller's target_clones version (AVX2 or baseline
// x86-64). Pure functions.

#include <algorithm>
#include <cstdint>

// GCC 12 reports the accumulators of the kernels, set from a __builtin_shuffle (Splat), as maybe
// uninitialised in the AVX2 clone (a false positive: every element is assigned first).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace t2d::model::simd {

constexpr int64_t kW = 8;  // floats per vector

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
// Positions 0, 2, .., 14 and 1, 3, .., 15 of the 16 floats lo, hi (stride-2 pairs).
T2D_INLINE V Evens(V lo, V hi) { return __builtin_shuffle(lo, hi, VI{0, 2, 4, 6, 8, 10, 12, 14}); }
T2D_INLINE V Odds(V lo, V hi) { return __builtin_shuffle(lo, hi, VI{1, 3, 5, 7, 9, 11, 13, 15}); }
// Each element twice: of the first half of x (0, 0, 1, 1, .., 3, 3) and of the second (4, 4, .., 7, 7).
T2D_INLINE V DupLow(V x) { return __builtin_shuffle(x, VI{0, 0, 1, 1, 2, 2, 3, 3}); }
T2D_INLINE V DupHigh(V x) { return __builtin_shuffle(x, VI{4, 4, 5, 5, 6, 6, 7, 7}); }
T2D_INLINE VI DupLow(VI x) { return __builtin_shuffle(x, VI{0, 0, 1, 1, 2, 2, 3, 3}); }
T2D_INLINE VI DupHigh(VI x) { return __builtin_shuffle(x, VI{4, 4, 5, 5, 6, 6, 7, 7}); }
// All ones in the lanes i with j0 + i < len.
T2D_INLINE VI Below(int64_t j0, int64_t len) {
  const VI lane{0, 1, 2, 3, 4, 5, 6, 7};
  return lane < static_cast<int32_t>(std::min<int64_t>(len - j0, kW));
}
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

}  // namespace t2d::model::simd
