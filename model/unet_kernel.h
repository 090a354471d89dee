#pragma once
// A plain-C++ evaluation of the model's U-Net (the same function as the tensor version in
// diffusion.cc, docs/model.md), used by the reverse process at serving time. One request runs the
// U-Net T times on a [n, 2D] input; with tensor ops that is ~90 tiny ops per step, whose
// per-op overhead dominates (several ms per request). Plain loops over channel-last arrays
// cost a fraction of that.
//
// The kernel reads the weights from the model's flat parameter buffer through the offsets in
// UnetKernelLayout and copies them into loop-friendly (transposed) order at construction, so
// it sees a snapshot: rebuild it after a parameter update. Not thread-safe (owns scratch
// buffers); build one per thread. Torch-free.

#include <cstdint>
#include <vector>

#include "model/schedule.h"

namespace t2d::model {

struct UnetKernelLayout {
  struct Down {
    int64_t w = 0, b = 0, g = 0, beta = 0;  // conv [c, 3 * in], bias [c], LayerNorm [c], [c]
  };
  struct Up {
    int64_t pw = 0, pb = 0, w = 0, b = 0, g = 0, beta = 0;  // proj [c, 2c], conv [c, 3 * 2c], LayerNorm
  };
  int64_t d = 0;
  int levels = 0;
  std::vector<Down> down;  // level 0 .. levels - 1
  std::vector<Up> up;      // level 0 .. levels - 2
  int64_t out_w = 0, out_b = 0;  // [D, D], [D]
};

class UnetKernel {
 public:
  UnetKernel(const UnetKernelLayout& layout, const float* params);

  // z0_hat [n, D] = U-Net(in [n, 2D]) for one sequence with validity mask [n] (1 valid, 0 pad).
  void Forward(int64_t n, const float* mask, const float* in, float* out);

  // The reverse process for `samples` sequences, in place on z [samples, n, D] (initially pure
  // noise). cond [samples, n, D] is X_{1..n}; mask [samples, n]; step_emb [(T + 1), 2D] already
  // scaled by w; noise [plan.size(), samples, n, D] holds the fresh noise of each update.
  void Reverse(const std::vector<ReverseStep>& plan, const float* step_emb, int64_t samples, int64_t n,
               const float* mask, const float* cond, const float* noise, float* z);

 private:
  struct Conv {  // weights transposed to [taps * in][out]
    int64_t in = 0, out = 0, taps = 0;
    std::vector<float> w, b;
  };
  struct Norm {
    std::vector<float> g, b;
  };
  static Conv MakeConv(const float* w, const float* b, int64_t in, int64_t out, int64_t taps);
  static Norm MakeNorm(const float* g, const float* b, int64_t c);
  // Conv (+ swish + LayerNorm + mask) over len positions; h [len, in] already masked.
  void Block(const float* h, int64_t len, const Conv& conv, const Norm& norm, const float* mask, float* out);

  int64_t d_ = 0;
  int levels_ = 0;
  std::vector<Conv> down_conv_, up_conv_, up_proj_;
  std::vector<Norm> down_norm_, up_norm_;
  Conv out_;
  std::vector<std::vector<float>> masks_, skips_;
  std::vector<float> a_, b_, tmp_, in_, z0_;
};

}  // namespace t2d::model
