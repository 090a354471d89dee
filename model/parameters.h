#pragma once
// The model's dense parameters: named tensors registered by the modules (diffusion, towers), laid
// out in ONE flat float buffer with a parallel gradient buffer (model/model.h says why), and
// initialised from one seed.
//
// Two phases. Modules first Add() their parameters; offsets are fixed at registration, so a
// module may record them at once (the plain-C++ U-Net reads weights by offset). Allocate() then
// creates both buffers and draws the initial values from one generator IN REGISTRATION ORDER:
// the order of Add() calls is part of the model's definition (parameter order in the buffer and
// in checkpoints, and the initial values of a seed). Each parameter is then a leaf tensor
// viewing the value buffer, whose .grad() is the matching view of the gradient buffer, so
// backward accumulates straight into the flat gradient buffer.
//
// Ownership: the registry owns the buffers; ParameterRef handles point at the registry, which
// must therefore outlive them and never move (not copyable or movable). Thread-safety: Add and
// Allocate are not thread-safe; afterwards reading tensors is, writing values or gradients follows
// the Model's rules. Errors: misuse (Add after Allocate, reading before it) is a programming
// error and CHECK-fails.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace t2d::model {

// How a parameter's initial value is drawn.
enum class Init {
  kUniformFanIn,  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch.nn.Linear's default (weights and biases)
  kOnes,          // LayerNorm gains
  kZeros,         // LayerNorm biases
  kNormal,        // N(0, std^2), embedding tables
};

class ParameterRegistry;

// A registered parameter: valid from registration, its tensor from Allocate() on. A
// default-constructed handle is "absent" (e.g. the bias of a Linear without one).
class ParameterRef {
 public:
  ParameterRef() = default;
  bool present() const { return registry_ != nullptr; }
  const at::Tensor& tensor() const;  // the leaf view [shape]
  int64_t offset() const;            // in floats, into the flat buffers

 private:
  friend class ParameterRegistry;
  ParameterRef(const ParameterRegistry* registry, size_t index) : registry_(registry), index_(index) {}
  const ParameterRegistry* registry_ = nullptr;
  size_t index_ = 0;
};

class ParameterRegistry {
 public:
  ParameterRegistry() = default;
  ParameterRegistry(const ParameterRegistry&) = delete;
  ParameterRegistry& operator=(const ParameterRegistry&) = delete;

  // Registers `name` with `shape`. `arg` is the fan-in for kUniformFanIn and the standard
  // deviation for kNormal (unused otherwise). `diffusion` marks the diffusion module's
  // parameters (ParameterInfo::diffusion).
  ParameterRef Add(const std::string& name, std::vector<int64_t> shape, Init init, double arg, bool diffusion);

  // Creates the buffers (gradients zero) and initialises every parameter from a generator
  // seeded with `seed`, in registration order. Once. Throws c10::Error on allocation failure.
  void Allocate(uint64_t seed);

  const std::vector<ParameterInfo>& infos() const { return infos_; }
  const at::Tensor& tensor(size_t i) const;  // leaf view of parameter i (after Allocate)
  const at::Tensor& values() const { return values_; }        // [total] float
  const at::Tensor& gradients() const { return gradients_; }  // [total] float

 private:
  struct InitRule {
    Init init;
    double arg;
  };
  std::vector<ParameterInfo> infos_;
  std::vector<InitRule> rules_;
  int64_t total_ = 0;
  at::Tensor values_, gradients_;
  std::vector<at::Tensor> tensors_;
};

}  // namespace t2d::model
