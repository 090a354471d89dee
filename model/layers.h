#pragma once
// Building blocks shared by the model's modules (model.cc, diffusion.h, user_tower.h): tensors
// from host vectors, the batch's validity mask, and the parametrised layers Linear, LayerNorm,
// the Transformer encoder layer and the item tower. Activations are channel-last
// ([B, positions, channels]), so LayerNorm over channels and position-wise Linear layers need no
// transposes.
//
// A layer's Register() adds its parameters to a ParameterRegistry in a fixed order (part of the
// model's definition, see parameters.h) and returns handles; its forward reads the registry's
// tensors, so it is usable once the registry is allocated. Layers are small values holding
// handles; forwards are const and thread-safe. Errors: shape mismatches throw c10::Error, caught
// at the Model boundary.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/batch.h"
#include "model/parameters.h"

namespace t2d::model {

// Copies of host vectors as tensors (the vector may be discarded afterwards).
at::Tensor LongTensor(const std::vector<int64_t>& v);
at::Tensor FloatTensor(const std::vector<float>& v, at::IntArrayRef shape);

// Which history slots of a batch hold behaviours (sequences are right-aligned, model/batch.h).
struct SequenceMask {
  at::Tensor mask;     // [B, n] float, 1 valid, 0 padding
  int64_t valid = 0;   // valid slots in the batch
};
SequenceMask MakeSequenceMask(const Batch& batch);

// y = x W^T + b over the last dimension; W [out, in] and b [out] initialised U(+-1/sqrt(in)).
struct Linear {
  ParameterRef w, b;  // b absent: no bias

  // Registers "<name>.weight" (and "<name>.bias").
  static Linear Register(ParameterRegistry& params, const std::string& name, int64_t in, int64_t out, bool bias,
                         bool diffusion);
  at::Tensor operator()(const at::Tensor& x) const;
};

// LayerNorm over the last dimension (eps 1e-5), gain 1 and bias 0 at initialisation.
struct Norm {
  ParameterRef g, b;

  // Registers "<name>.weight" and "<name>.bias" [channels].
  static Norm Register(ParameterRegistry& params, const std::string& name, int64_t channels, bool diffusion);
  at::Tensor operator()(const at::Tensor& x) const;
};

// Transformer encoder layer: post-LN, ReLU feed-forward, no dropout; width d, `heads` heads.
struct EncoderLayer {
  Linear qkv, out, ff1, ff2;
  Norm norm1, norm2;
  int64_t d = 0, heads = 1;

  // Registers, in order, <name>.qkv, .out, .norm1, .ff1, .ff2, .norm2.
  static EncoderLayer Register(ParameterRegistry& params, const std::string& name, int64_t d, int64_t heads,
                               int64_t ffn_hidden);
  // x [B, t, d]; bias [B, 1, t, t] is added to the attention scores (masking).
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& bias) const;
};

// The item tower of every model kind: e_i = LayerNorm(elu(W x)), x [S, D] -> [S, E].
struct ItemTower {
  Linear linear;
  Norm norm;

  // Registers "item.linear" (no bias) and "item.norm".
  static ItemTower Register(ParameterRegistry& params, int64_t d, int64_t e);
  at::Tensor operator()(const at::Tensor& x) const;
};

}  // namespace t2d::model
