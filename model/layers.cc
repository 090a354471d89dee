#include "model/layers.h"

#include <ATen/ATen.h>

#include "model/fused_ops.h"

namespace t2d::model {

at::Tensor LongTensor(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {static_cast<int64_t>(v.size())}, at::kLong).clone();
}
at::Tensor FloatTensor(const std::vector<float>& v, at::IntArrayRef shape) {
  return at::from_blob(const_cast<float*>(v.data()), shape, at::kFloat).clone();
}

SequenceMask MakeSequenceMask(const Batch& batch) {
  const int64_t b = batch.batch_size, n = batch.seq_len;
  SequenceMask out;
  std::vector<float> mask(static_cast<size_t>(b * n));
  for (int64_t i = 0; i < b; ++i) {
    const int64_t len = batch.lengths[static_cast<size_t>(i)];
    out.valid += len;
    for (int64_t j = 0; j < n; ++j) mask[static_cast<size_t>(i * n + j)] = j >= n - len ? 1.f : 0.f;
  }
  out.mask = FloatTensor(mask, {b, n});
  return out;
}

Linear Linear::Register(ParameterRegistry& params, const std::string& name, int64_t in, int64_t out, bool bias,
                        bool diffusion) {
  Linear l;
  const double fan_in = static_cast<double>(in);
  l.w = params.Add(name + ".weight", {out, in}, Init::kUniformFanIn, fan_in, diffusion);
  if (bias) l.b = params.Add(name + ".bias", {out}, Init::kUniformFanIn, fan_in, diffusion);
  return l;
}

at::Tensor Linear::operator()(const at::Tensor& x) const {
  return b.present() ? at::linear(x, w.tensor(), b.tensor()) : at::linear(x, w.tensor());
}

Norm Norm::Register(ParameterRegistry& params, const std::string& name, int64_t channels, bool diffusion) {
  Norm n;
  n.g = params.Add(name + ".weight", {channels}, Init::kOnes, 0, diffusion);
  n.b = params.Add(name + ".bias", {channels}, Init::kZeros, 0, diffusion);
  return n;
}

at::Tensor Norm::operator()(const at::Tensor& x) const { return LayerNormLastDim(x, g.tensor(), b.tensor()); }

EncoderLayer EncoderLayer::Register(ParameterRegistry& params, const std::string& name, int64_t d, int64_t heads,
                                    int64_t ffn_hidden) {
  EncoderLayer l;
  l.d = d;
  l.heads = heads;
  l.qkv = Linear::Register(params, name + ".qkv", d, 3 * d, true, false);
  l.out = Linear::Register(params, name + ".out", d, d, true, false);
  l.norm1 = Norm::Register(params, name + ".norm1", d, false);
  l.ff1 = Linear::Register(params, name + ".ff1", d, ffn_hidden, true, false);
  l.ff2 = Linear::Register(params, name + ".ff2", ffn_hidden, d, true, false);
  l.norm2 = Norm::Register(params, name + ".norm2", d, false);
  return l;
}

at::Tensor EncoderLayer::operator()(const at::Tensor& x_in, const at::Tensor& bias) const {
  const at::Tensor o = out(Attention(qkv(x_in), bias, heads));
  const at::Tensor x = norm1(x_in + o);
  return norm2(x + ff2(at::relu(ff1(x))));
}

ItemTower ItemTower::Register(ParameterRegistry& params, int64_t d, int64_t e) {
  ItemTower t;
  t.linear = Linear::Register(params, "item.linear", d, e, false, false);
  t.norm = Norm::Register(params, "item.norm", e, false);
  return t;
}

at::Tensor ItemTower::operator()(const at::Tensor& x) const { return norm(Elu(linear(x))); }

}  // namespace t2d::model
