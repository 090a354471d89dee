#pragma once
// A plain-C++ evaluation of the model's U-Net (the same function as the tensor version in
// diffusion.cc, docs/model.md), used by the reverse process at inference (serving and
// evaluation, any batch size, D <= kKernelMaxDim) and, with its backward pass, by training
// (TrainLoss; narrow U-Nets only, see Diffusion::Train). With tensor ops each of the T reverse
// steps is ~90 tiny ops whose per-op overhead dominates, and a training step's U-Net ~300; the
// kernel runs one sequence at a time, with the weights hot in cache, vectorised over 8 positions
// of the sequence. Training accumulates each weight's gradient in 8 lanes (one per position of
// a vector) and sums them at the end of a call, so a call's gradient depends on its sequences
// only.
//
// Determinism: every output value of a sequence is computed by the same sequence of IEEE float
// operations whatever the other sequences of the call are (no cross-sequence arithmetic), so a
// sample's result does not depend on its batch. The hot loops are compiled for AVX2 and for
// baseline x86-64 and picked at run time (GCC target_clones). The reverse process's AVX2 version
// is x86-64-v3 (AVX2 with FMA) and fuses a * b + c into FMAs (1.1-1.3x in a hand A/B of `t2diff
// eval` at D = 16, where the convolutions bound it): its results equal on every machine that runs it (every AVX2 CPU has
// FMA), so evaluation on one such machine equals serving on another, and differ from the baseline
// version's at float rounding. The training pass is not fused (FMAs gave it nothing).
//
// The kernel reads the weights from the model's flat parameter buffer through the offsets in
// UnetKernelLayout and copies them into loop-friendly (transposed) order at construction, so
// it sees a snapshot: rebuild it after a parameter update. Not thread-safe (owns scratch
// buffers); build one per thread. Masks must hold 0 or 1 (as MakeSequenceMask builds them).
// Torch-free.

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
  int64_t channels = 0;  // C: level l has C << l channels
  int levels = 0;
  std::vector<Down> down;  // level 0 .. levels - 1
  std::vector<Up> up;      // level 0 .. levels - 2
  int64_t out_w = 0, out_b = 0;  // [D, C], [D]
};

// The diffusion loss of UnetKernel::TrainLoss: per valid position j of a sequence,
// ||z0_hat_j - z0_j||^2 (kSquared) or ||z0_hat_j - z0_j|| (kNorm).
enum class UnetLoss { kSquared, kNorm };

struct UnetPlanes;  // the scratch planes of one call (unet_kernel.cc)

class UnetKernel {
 public:
  UnetKernel(const UnetKernelLayout& layout, const float* params);

  // The reverse process of `sequences` independent sequences of length n, in place on
  // z [sequences, n, D] (initially pure noise). cond [sequences, n, D] is X_{1..n};
  // mask [sequences, n]; step_emb [(T + 1), 2D] already scaled by w. The fresh noise [n, D] of
  // sequence s at plan step i is at noise[s] + i * noise_step_stride (so per-sample generators'
  // tensors need no concatenation). plan[i].prev == 0 takes z = z0_hat, others
  // z = c0 z0_hat + c1 z + sigma eps, as the tensor path. guidance w > 0: classifier-free
  // guidance, z0_hat = (1 + w) U(z, X) - w U(z, 0) (two U-Net passes a step).
  void Reverse(const std::vector<ReverseStep>& plan, const float* step_emb, int64_t sequences, int64_t n,
               const float* mask, const float* cond, const float* const* noise, int64_t noise_step_stride,
               float* z, float guidance = 0);

  // Training: the diffusion loss of `sequences` independent sequences of length n and its gradient
  // with respect to the U-Net's parameters, one sequence at a time (forward, loss, backward while
  // its activations are in cache). input [sequences, n, 2D] is the U-Net's input before masking
  // (z_r and the condition, each plus the step embedding), mask [sequences, n], target
  // [sequences, n, D] is z_0 (zero at masked positions). Writes seq_loss[s] (the sequence's sum of
  // per-position losses) and last [sequences, D] (z0_hat at position n - 1). With `grad` non-null,
  // ADDS d(grad_scale * sum_s seq_loss[s]) / d(parameter) into grad, indexed like the model's flat
  // parameter buffer (the layout's offsets); gradient lanes are summed in a fixed order, so the
  // result depends only on the sequences of this call. The gradient of ||.|| is 0 where the norm
  // is 0 (as torch's).
  void TrainLoss(int64_t sequences, int64_t n, const float* input, const float* mask, const float* target,
                 UnetLoss loss, float grad_scale, double* seq_loss, float* last, float* grad);

  // TrainLoss's `last` alone (the same bits), computing only the positions that z0_hat at
  // position n - 1 depends on: about 60% of the forward's work at n = 50 with 4 levels (the
  // deepest levels, a vector or two long, cost the most and are not cut). The model's parallel
  // branches compute x_hat with it while the gradient pass runs elsewhere.
  void TrainLast(int64_t sequences, int64_t n, const float* input, const float* mask, float* last);

  // Tested against std::exp (model_test): exp(x) for float vectors, relative error below 2e-7
  // (about 2 ulp) where the result is a normal float (-87.3 < x < 88.72); denormal results are
  // computed with gradual underflow, below -104 the result is 0 and above 88.7228 it saturates
  // at ~3.4e38 instead of overflowing. Swish(x) = x / (1 + exp(-x)) with it. Exposed for tests.
  static void ExpForTest(const float* x, int64_t count, float* out);
  static void SwishForTest(const float* x, int64_t count, float* out);

 private:
  // The weights of one convolution, transposed so that the output channels of one block (12, 8,
  // 4 or 1 of them, unet_kernel.cc) are adjacent for each input, and a block's weights contiguous
  // (the inner loop broadcasts them in order).
  struct Conv {
    int64_t in = 0, out = 0, taps = 0;
    std::vector<float> w, b;
    std::vector<float> wb;  // [taps][out][in], for the input gradient
    int64_t w_off = 0, b_off = 0;  // in the flat parameter buffer ([out][taps * in] there)
  };
  struct Norm {
    std::vector<float> g, b;
    int64_t g_off = 0, b_off = 0;
  };
  static Conv MakeConv(const float* params, int64_t w_off, int64_t b_off, int64_t in, int64_t out, int64_t taps);
  static Norm MakeNorm(const float* params, int64_t g_off, int64_t b_off, int64_t c);
  // Lays out the scratch planes (and, with `training`, the pre-activation and gradient planes)
  // for sequences of length n and points `net` at them.
  void Bind(int64_t n, bool training, UnetPlanes* net);

  int64_t d_ = 0, c_ = 0;  // D, and C (channels of level 0)
  int levels_ = 0;
  std::vector<Conv> down_conv_, up_conv_, up_proj_;
  std::vector<Norm> down_norm_, up_norm_;
  Conv out_;
  std::vector<float> scratch_;      // activation planes, see unet_kernel.cc
  std::vector<uint32_t> mask_bits_;  // per-level masks as all-ones / zero words
  std::vector<float> lanes_;         // training: gradient accumulators, 8 lanes a parameter
  int64_t bound_n_ = -1;             // the layout the buffers were zeroed for (Bind), -1: none
  bool bound_training_ = false;
};

}  // namespace t2d::model
