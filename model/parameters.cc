#include "model/parameters.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <utility>

#include "glog/logging.h"

namespace t2d::model {

const at::Tensor& ParameterRef::tensor() const { return registry_->tensor(index_); }
int64_t ParameterRef::offset() const { return registry_->infos()[index_].offset; }

ParameterRef ParameterRegistry::Add(const std::string& name, std::vector<int64_t> shape, Init init, double arg,
                                    bool diffusion) {
  CHECK(!values_.defined()) << "parameter " << name << " registered after Allocate()";
  ParameterInfo info;
  info.name = name;
  info.shape = std::move(shape);
  info.diffusion = diffusion;
  info.offset = total_;
  info.numel = 1;
  for (int64_t x : info.shape) info.numel *= x;
  total_ += info.numel;
  infos_.push_back(std::move(info));
  rules_.push_back({init, arg});
  return ParameterRef(this, infos_.size() - 1);
}

void ParameterRegistry::Allocate(uint64_t seed) {
  CHECK(!values_.defined()) << "Allocate() called twice";
  values_ = at::zeros({total_}, at::kFloat);
  gradients_ = at::zeros({total_}, at::kFloat);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (size_t i = 0; i < infos_.size(); ++i) {
    const ParameterInfo& info = infos_[i];
    at::Tensor v = values_.narrow(0, info.offset, info.numel).view(info.shape);
    {
      at::NoGradGuard no_grad;
      switch (rules_[i].init) {
        case Init::kUniformFanIn: {
          const double bound = 1.0 / std::sqrt(rules_[i].arg);
          v.uniform_(-bound, bound, gen);
          break;
        }
        case Init::kOnes:
          v.fill_(1.0);
          break;
        case Init::kZeros:  // the buffer starts zeroed
          break;
        case Init::kNormal:
          v.normal_(0.0, rules_[i].arg, gen);
          break;
      }
    }
    at::Tensor p = v.detach().requires_grad_(true);
    p.mutable_grad() = gradients_.narrow(0, info.offset, info.numel).view(info.shape);
    tensors_.push_back(std::move(p));
  }
}

const at::Tensor& ParameterRegistry::tensor(size_t i) const {
  CHECK(values_.defined()) << "parameter read before Allocate()";
  return tensors_.at(i);
}

}  // namespace t2d::model
