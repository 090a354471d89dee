#include "model/diffusion.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "model/fused_ops.h"
#include "model/unet_kernel.h"

namespace t2d::model {
namespace {

using at::Tensor;
using config::ModelConfig;

constexpr int64_t kKernelMaxDim = 16;  // largest D for which the U-Net runs in the plain-C++ kernel
constexpr int64_t kTrainChunk = 16;    // sequences a training-kernel call (a fixed split: see Diffusion::Train)
// Widest level-0 U-Net width trained by the kernel. Wider U-Nets (their deepest level has 8x the
// channels) are faster through BLAS: in a hand A/B of two builds differing only in this limit
// (t2diff train on ML-1M, 20-40 steps, alternating), the tensor path trained D = 16 1.3-1.5x
// faster, and the kernel D = 8 1.04-1.11x faster.
constexpr int64_t kTrainKernelMaxChannels = 8;

class KernelPass;

// What UnetLossFunction needs besides tensors. The pointers are the Diffusion's and the model's,
// which outlive the step's autograd graph.
struct KernelCall {
  const UnetKernelLayout* layout;
  const float* params;  // the model's flat parameter values
  int64_t total;        // their count
  const std::vector<ParameterRef>* unet;  // the U-Net's parameters, as passed to apply()
  UnetLoss loss;
  double scale;    // the loss is scale * sum of per-position losses
  bool want_grad;  // compute the gradient (training under grad mode)
  bool deferred;   // compute the gradient in backward (see UnetLossFunction)
  KernelPass* pass;  // deferred: the pass the backward finishes (owned by the TrainOutput)
};

// The U-Net's gradient in the flat parameter layout: the chunks' partial sums (chunk c at
// partial + c * total) added in chunk order, so the result does not depend on which thread ran
// which chunk.
Tensor SumChunks(const KernelCall& call, const std::vector<float>& partial, int64_t chunks) {
  const int64_t total = call.total;
  Tensor flat = at::zeros({total}, at::kFloat);
  float* fp = flat.data_ptr<float>();
  for (const ParameterRef& p : *call.unet) {
    const int64_t off = p.offset(), numel = p.tensor().numel();
    for (int64_t c = 0; c < chunks; ++c) {
      const float* src = partial.data() + c * total + off;
      for (int64_t i = 0; i < numel; ++i) fp[off + i] += src[i];
    }
  }
  return flat;
}

// Runs UnetKernel::TrainLoss over the batch in fixed chunks of kTrainChunk sequences, in
// parallel; writes the loss and z0_hat's last position, and with `grad` returns the U-Net's
// gradient (flat parameter layout), the chunks' partial sums added in chunk order.
Tensor RunTrainKernel(const KernelCall& call, const Tensor& input, const Tensor& mask, const Tensor& z0, bool grad,
                      Tensor* loss, Tensor* last) {
  const int64_t b = input.size(0), w = input.size(1), d = z0.size(2), total = call.total;
  const int64_t chunks = (b + kTrainChunk - 1) / kTrainChunk;
  std::vector<double> seq_loss(static_cast<size_t>(b));
  Tensor z0_last = at::empty({b, d}, at::kFloat);
  std::vector<float> partial(grad ? static_cast<size_t>(chunks * total) : 0);
  const float* in = input.data_ptr<float>();
  const float* mk = mask.data_ptr<float>();
  const float* tg = z0.data_ptr<float>();
  float* lp = z0_last.data_ptr<float>();
  auto run = [&](int64_t begin, int64_t end) {
    UnetKernel kernel(*call.layout, call.params);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t s0 = c * kTrainChunk, count = std::min(kTrainChunk, b - s0);
      kernel.TrainLoss(count, w, in + s0 * w * 2 * d, mk + s0 * w, tg + s0 * w * d, call.loss,
                       static_cast<float>(call.scale), seq_loss.data() + s0, lp + s0 * d,
                       grad ? partial.data() + c * total : nullptr);
    }
  };
  at::parallel_for(0, chunks, 1, run);
  double sum = 0;
  for (double v : seq_loss) sum += v;
  if (loss != nullptr) *loss = at::scalar_tensor(sum * call.scale, at::kFloat);
  if (last != nullptr) *last = z0_last;
  if (!grad) return Tensor();
  return SumChunks(call, partial, chunks);
}

// The deferred pass of one step (DeferredDiffusionPass): RunTrainKernel's chunks with the
// gradient, claimed one at a time by the loss's backward (Finish) and by any thread that calls
// Help; SumChunks adds the chunks' slots in chunk order and Loss the sequences' losses in
// sequence order, as RunTrainKernel does.
class KernelPass final : public DeferredDiffusionPass {
 public:
  KernelPass(const KernelCall& call, Tensor input, Tensor mask, Tensor z0)
      : call_(call), input_(std::move(input)), mask_(std::move(mask)), z0_(std::move(z0)) {
    const int64_t b = input_.size(0);
    chunks_ = (b + kTrainChunk - 1) / kTrainChunk;
    partial_.resize(static_cast<size_t>(chunks_ * call_.total));
    seq_loss_.resize(static_cast<size_t>(b));
    last_.resize(static_cast<size_t>(b * z0_.size(2)));
  }

  void Help() override {
    std::optional<UnetKernel> kernel;  // built on the first chunk claimed
    for (int64_t c = next_.fetch_add(1); c < chunks_; c = next_.fetch_add(1)) {
      bool ok = true;
      try {
        if (!kernel) kernel.emplace(*call_.layout, call_.params);
        RunChunk(*kernel, c);
      } catch (...) {  // std::bad_alloc only (TrainLoss does not throw otherwise); counted as done all the same
        ok = false;
      }
      std::lock_guard<std::mutex> lock(mu_);
      failed_ = failed_ || !ok;
      if (++done_ == chunks_) done_cv_.notify_all();
    }
  }

  Tensor Loss() override {
    WaitAll();
    double sum = 0;
    for (double v : seq_loss_) sum += v;
    return at::scalar_tensor(sum * call_.scale, at::kFloat);
  }

  // The loss's backward: the flat gradient.
  Tensor Finish() {
    WaitAll();
    return SumChunks(call_, partial_, chunks_);
  }

 private:
  void WaitAll() {
    Help();
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return done_ == chunks_; });
    if (failed_) throw std::runtime_error("the deferred U-Net pass ran out of memory");
  }

  void RunChunk(UnetKernel& kernel, int64_t c) {
    const int64_t b = input_.size(0), w = input_.size(1), d = z0_.size(2);
    const int64_t s0 = c * kTrainChunk, count = std::min(kTrainChunk, b - s0);
    kernel.TrainLoss(count, w, input_.data_ptr<float>() + s0 * w * 2 * d, mask_.data_ptr<float>() + s0 * w,
                     z0_.data_ptr<float>() + s0 * w * d, call_.loss, static_cast<float>(call_.scale),
                     seq_loss_.data() + s0, last_.data() + s0 * d, partial_.data() + c * call_.total);
  }

  const KernelCall call_;
  const Tensor input_, mask_, z0_;
  int64_t chunks_ = 0;
  std::vector<float> partial_;    // chunk c's gradient at c * total (zero-filled: TrainLoss adds)
  std::vector<double> seq_loss_;  // per sequence
  std::vector<float> last_;       // written by TrainLoss, not read (the forward computed x_hat)
  std::atomic<int64_t> next_{0};
  std::mutex mu_;
  std::condition_variable done_cv_;
  int64_t done_ = 0;  // chunks finished, under mu_
  bool failed_ = false;
};

// z0_hat at the last position [B, D] for the deferred forward (UnetKernel::TrainLast), the
// chunks split between this thread and a helper: the two cores are otherwise idle here.
Tensor RunLastKernel(const KernelCall& call, const Tensor& input, const Tensor& mask, int64_t d) {
  const int64_t b = input.size(0), w = input.size(1);
  const int64_t chunks = (b + kTrainChunk - 1) / kTrainChunk;
  Tensor last = at::empty({b, d}, at::kFloat);
  const float* in = input.data_ptr<float>();
  const float* mk = mask.data_ptr<float>();
  float* lp = last.data_ptr<float>();
  auto run = [&](int64_t begin, int64_t end) {
    UnetKernel kernel(*call.layout, call.params);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t s0 = c * kTrainChunk, count = std::min(kTrainChunk, b - s0);
      kernel.TrainLast(count, w, in + s0 * w * 2 * d, mk + s0 * w, lp + s0 * d);
    }
  };
  if (chunks > 1) {
    // TrainLast throws std::bad_alloc at most: carried over to this thread after the join.
    std::exception_ptr helper_error;
    std::thread helper([&] {
      try {
        run(chunks / 2, chunks);
      } catch (...) {
        helper_error = std::current_exception();
      }
    });
    std::exception_ptr own_error;
    try {
      run(0, chunks / 2);
    } catch (...) {
      own_error = std::current_exception();
    }
    helper.join();
    if (own_error) std::rethrow_exception(own_error);
    if (helper_error) std::rethrow_exception(helper_error);
  } else {
    run(0, chunks);
  }
  return last;
}

// The diffusion loss through UnetKernel::TrainLoss. forward(unet parameters, input [B, w, 2D],
// mask [B, w], z0 [B, w, D], call) -> {loss (scalar), z0_hat at the last position [B, D] (not
// differentiable)}. Only the parameters get a gradient (the inputs are constants:
// stop-gradient). Normally the kernel computes the gradient along with the loss in forward and
// backward scales it by the incoming gradient. Deferred (the model's parallel branches),
// forward computes z0_hat's last position alone (the towers wait only for x_hat; the loss it
// returns is a stand-in) and backward, on the diffusion branch's thread, finishes the KernelPass
// (the whole kernel in the same chunks, so the same bits), which also gives the loss.
struct UnetLossFunction : public torch::autograd::Function<UnetLossFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::TensorList unet,
                                                const Tensor& input, const Tensor& mask, const Tensor& z0,
                                                const KernelCall& call) {
    RECORD_FUNCTION("UnetTrainKernel", std::vector<c10::IValue>());
    (void)unet;
    Tensor loss, last, flat;
    if (call.deferred) {
      // x_hat alone; the pass computes the loss and the gradient in backward.
      last = RunLastKernel(call, input, mask, z0.size(2));
      loss = at::full({}, std::numeric_limits<float>::quiet_NaN(), at::kFloat);
    } else {
      flat = RunTrainKernel(call, input, mask, z0, call.want_grad, &loss, &last);
    }
    ctx->mark_non_differentiable({last});
    if (call.want_grad) {
      // The call's pointers (not owned; see KernelCall) travel as integers.
      ctx->saved_data["layout"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(call.layout));
      ctx->saved_data["params"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(call.params));
      ctx->saved_data["unet"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(call.unet));
      ctx->saved_data["total"] = call.total;
      ctx->saved_data["loss"] = static_cast<int64_t>(call.loss);
      ctx->saved_data["scale"] = call.scale;
      if (call.deferred) {
        ctx->saved_data["pass"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(call.pass));
      } else {
        ctx->saved_data["flat"] = flat;
      }
    }
    return {loss, last};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto& sd = ctx->saved_data;
    KernelCall call{};
    call.layout = reinterpret_cast<const UnetKernelLayout*>(static_cast<intptr_t>(sd["layout"].toInt()));
    call.params = reinterpret_cast<const float*>(static_cast<intptr_t>(sd["params"].toInt()));
    call.unet = reinterpret_cast<const std::vector<ParameterRef>*>(static_cast<intptr_t>(sd["unet"].toInt()));
    call.total = sd["total"].toInt();
    call.loss = static_cast<UnetLoss>(sd["loss"].toInt());
    call.scale = sd["scale"].toDouble();
    Tensor flat;
    if (sd.count("flat") > 0) {
      flat = sd["flat"].toTensor();
    } else {
      RECORD_FUNCTION("UnetTrainKernel (deferred)", std::vector<c10::IValue>());
      flat = reinterpret_cast<KernelPass*>(static_cast<intptr_t>(sd["pass"].toInt()))->Finish();
    }
    torch::autograd::variable_list result;
    for (const ParameterRef& p : *call.unet) {
      result.push_back(flat.narrow(0, p.offset(), p.tensor().numel()).view(p.tensor().sizes()) * grad_out[0]);
    }
    for (int i = 0; i < 4; ++i) result.emplace_back();  // input, mask, z0, call
    return result;
  }
};

}  // namespace

NoisingProcess::NoisingProcess(const NoiseSchedule& schedule) {
  const int64_t t = schedule.steps();
  std::vector<float> sab(static_cast<size_t>(t) + 1), s1(static_cast<size_t>(t) + 1);
  for (int64_t r = 0; r <= t; ++r) {
    const double ab = schedule.alpha_bar(static_cast<int>(r));
    sab[static_cast<size_t>(r)] = static_cast<float>(std::sqrt(ab));
    s1[static_cast<size_t>(r)] = static_cast<float>(std::sqrt(1.0 - ab));
  }
  sqrt_ab_ = FloatTensor(sab, {t + 1});
  sqrt_1m_ab_ = FloatTensor(s1, {t + 1});
}

Tensor NoisingProcess::Apply(const Tensor& z0, const Tensor& r, const Tensor& eps) const {
  std::vector<int64_t> shape(static_cast<size_t>(z0.dim()), 1);
  shape[0] = z0.size(0);
  return z0 * sqrt_ab_.index_select(0, r).view(shape) + eps * sqrt_1m_ab_.index_select(0, r).view(shape);
}

std::unique_ptr<Diffusion> Diffusion::Create(const ModelConfig& config, int64_t d, const NoiseSchedule& schedule,
                                             ParameterRegistry& params) {
  if (config.kind() != ModelConfig::T2DIFF && config.kind() != ModelConfig::T2DIFF_NO_DRIFT) return nullptr;
  return std::unique_ptr<Diffusion>(new Diffusion(config, d, schedule, params));
}

Diffusion::Diffusion(const ModelConfig& config, int64_t d, const NoiseSchedule& schedule, ParameterRegistry& params)
    : config_(config),
      d_(d),
      drift_(config.kind() == ModelConfig::T2DIFF),
      schedule_(schedule),
      noising_(schedule),
      params_(params) {
  const int64_t t = schedule.steps(), d2 = 2 * d;
  std::vector<float> emb(static_cast<size_t>((t + 1) * d2));
  for (int64_t r = 0; r <= t; ++r) {
    for (int64_t f = 0; f < d2; ++f) {
      emb[static_cast<size_t>(r * d2 + f)] = static_cast<float>(
          config.step_embedding_weight() * std::sin(static_cast<double>(r) / std::ldexp(1.0, static_cast<int>(f))));
    }
  }
  step_emb_ = FloatTensor(emb, {t + 1, d2});

  // Registration order: the down path, the up path from the deepest level, the output layer.
  const int levels = config.unet_levels();
  const int64_t c0 = config.unet_channels() > 0 ? config.unet_channels() : d;
  int64_t in = 2 * d;
  for (int l = 0; l < levels; ++l) {
    const int64_t c = c0 << l;
    ConvBlock b;
    b.conv = Linear::Register(params, absl::StrCat("unet.down", l, ".conv"), 3 * in, c, true, true);
    b.norm = Norm::Register(params, absl::StrCat("unet.down", l, ".norm"), c, true);
    down_.push_back(b);
    in = c;
  }
  up_.resize(static_cast<size_t>(levels - 1));
  for (int l = levels - 2; l >= 0; --l) {
    const int64_t c = c0 << l;
    UpLevel& u = up_[static_cast<size_t>(l)];
    u.proj = Linear::Register(params, absl::StrCat("unet.up", l, ".proj"), 2 * c, c, true, true);
    u.block.conv = Linear::Register(params, absl::StrCat("unet.up", l, ".conv"), 3 * 2 * c, c, true, true);
    u.block.norm = Norm::Register(params, absl::StrCat("unet.up", l, ".norm"), c, true);
  }
  out_ = Linear::Register(params, "unet.out", c0, d, true, true);

  // Offsets are fixed at registration: the plain-C++ kernel's layout is known now.
  kernel_layout_.d = d;
  kernel_layout_.channels = c0;
  kernel_layout_.levels = levels;
  for (const ConvBlock& b : down_) {
    kernel_layout_.down.push_back({b.conv.w.offset(), b.conv.b.offset(), b.norm.g.offset(), b.norm.b.offset()});
  }
  for (const UpLevel& u : up_) {
    kernel_layout_.up.push_back({u.proj.w.offset(), u.proj.b.offset(), u.block.conv.w.offset(),
                                 u.block.conv.b.offset(), u.block.norm.g.offset(), u.block.norm.b.offset()});
  }
  kernel_layout_.out_w = out_.w.offset();
  kernel_layout_.out_b = out_.b.offset();
  for (const ConvBlock& b : down_) unet_params_.insert(unet_params_.end(), {b.conv.w, b.conv.b, b.norm.g, b.norm.b});
  for (const UpLevel& u : up_) {
    unet_params_.insert(unet_params_.end(), {u.proj.w, u.proj.b, u.block.conv.w, u.block.conv.b, u.block.norm.g,
                                             u.block.norm.b});
  }
  unet_params_.insert(unet_params_.end(), {out_.w, out_.b});
}

absl::StatusOr<Diffusion::TrainOutput> Diffusion::Train(const Tensor& x, const Tensor& targets,
                                                        const SequenceMask& mask, uint64_t noise_seed,
                                                        const TrainNoise* noise, bool defer_gradient,
                                                        const DrawnNoise* drawn) const {
  const int64_t b = x.size(0), n = x.size(1), w = Window(n);
  // Stop-gradient at the module's inputs (spec section 6).
  const Tensor xd = x.detach();
  const Tensor td = targets.detach();
  const Tensor next = at::cat({xd.narrow(1, 1, n - 1), td.unsqueeze(1)}, 1);
  // With model.diffusion_window the module sees the newest w positions only.
  const Tensor xw = w < n ? xd.narrow(1, n - w, w) : xd;
  const Tensor mw = w < n ? mask.mask.narrow(1, n - w, w) : mask.mask;
  const Tensor nw = w < n ? next.narrow(1, n - w, w) : next;
  const int64_t valid = w < n ? static_cast<int64_t>(mw.sum().item<double>()) : mask.valid;
  const Tensor z0 = (drift_ ? nw - xw : nw) * mw.unsqueeze(2);
  Tensor r, eps;
  if (noise != nullptr) {
    r = noise->steps.to(at::kLong).view({b});
    eps = noise->eps.to(at::kFloat);
    if (w < n) eps = eps.narrow(1, n - w, w);
    if (r.min().item<int64_t>() < 1 || r.max().item<int64_t>() > schedule_.steps()) {
      return absl::InvalidArgumentError(absl::StrCat("TrainNoise.steps must lie in 1..", schedule_.steps()));
    }
  } else {
    DrawnNoise own;
    if (drawn == nullptr) own = DrawNoise(b, n, noise_seed);
    const DrawnNoise& dn = drawn != nullptr ? *drawn : own;
    if (dn.steps.sizes() != at::IntArrayRef({b}) || dn.eps.sizes() != at::IntArrayRef({b, w, d_})) {
      return absl::InternalError("Diffusion::Train: the drawn noise has another shape than the batch");
    }
    r = dn.steps;
    eps = dn.eps;
  }
  const Tensor zr = noising_.Apply(z0, r, eps);
  // Draws of the consistency options come from their own generator, so that the spec's noise
  // (above) is the same with and without them; made only when an option is on.
  const float drop = config_.guidance_drop_fraction(), generated_fraction = config_.train_generated_token_fraction();
  std::optional<at::Generator> extra;
  if (drop > 0 || generated_fraction > 0) extra = at::make_generator<at::CPUGeneratorImpl>(noise_seed ^ 0x6775696465ULL);
  Tensor cond = xw;
  if (drop > 0) {
    // Classifier-free guidance: some samples learn z_0 without the history condition.
    const Tensor keep = (at::rand({b}, *extra, at::kFloat) >= drop).to(at::kFloat);
    cond = xw * keep.view({b, 1, 1});
  }
  const Tensor input = UnetInput(zr, cond, step_emb_.index_select(0, r).unsqueeze(1));
  const bool squared = config_.diffusion_loss() == ModelConfig::SQUARED;
  const double scale = 1.0 / static_cast<double>(squared ? b : std::max<int64_t>(1, valid));
  TrainOutput out;
  Tensor z0_last;  // z0_hat at the newest position [B, D]
  if (d_ <= kKernelMaxDim && kernel_layout_.channels <= kTrainKernelMaxChannels &&
      (noise == nullptr || !noise->force_tensor_ops)) {
    std::vector<Tensor> unet;
    bool want_grad = at::GradMode::is_enabled();
    for (const ParameterRef& p : unet_params_) {
      unet.push_back(p.tensor());
      want_grad = want_grad && p.tensor().requires_grad();
    }
    KernelCall call{&kernel_layout_, params_.values().data_ptr<float>(), params_.values().numel(),
                    &unet_params_, squared ? UnetLoss::kSquared : UnetLoss::kNorm, scale, want_grad,
                    defer_gradient && want_grad, nullptr};
    const Tensor in = input.contiguous(), mf = mw.to(at::kFloat).contiguous(), zc = z0.contiguous();
    if (call.deferred) {
      auto pass = std::make_shared<KernelPass>(call, in, mf, zc);
      call.pass = pass.get();
      out.deferred = std::move(pass);
    }
    torch::autograd::variable_list outs = UnetLossFunction::apply(at::TensorList(unet), in, mf, zc, call);
    out.loss = outs[0];
    z0_last = outs[1];
  } else {
    const Tensor z0_hat = Unet(input, mw);
    const Tensor diff = z0_hat - z0;
    if (squared) {
      out.loss = diff.pow(2).sum() * scale;
    } else {
      out.loss = at::linalg_vector_norm(diff, 2, {2}).sum() * scale;
    }
    z0_last = z0_hat.select(1, w - 1);
  }
  // Stop-gradient at the output: x_hat is a constant for the towers.
  out.x_hat = (drift_ ? xd.select(1, n - 1) + z0_last : z0_last).detach();
  if (generated_fraction > 0) {
    // Some samples' towers see the token of the reverse process from pure noise (what inference
    // gives them) instead of the one rebuilt from the noised target.
    const Tensor pick = (at::rand({b}, *extra, at::kFloat) < generated_fraction).nonzero().view({-1});
    if (pick.numel() > 0) {
      // Per-sample generators: a sample's token does not depend on which others were picked.
      InferenceOptions io;
      const int64_t* rows = pick.data_ptr<int64_t>();
      for (int64_t i = 0; i < pick.numel(); ++i) {
        io.sample_seeds.push_back(HashCombine(noise_seed ^ 0x746f6b656eULL, static_cast<uint64_t>(rows[i])));
      }
      at::NoGradGuard no_grad;
      const Tensor generated = Generate(xd.index_select(0, pick), mask.mask.index_select(0, pick), io);
      out.x_hat = out.x_hat.index_copy(0, pick, generated);
    }
  }
  return out;
}

Tensor Diffusion::UnetInput(const Tensor& z, const Tensor& cond, const Tensor& emb) const {
  return at::cat({z, cond}, 2) + emb;
}

// Every convolution's input is zero at masked positions (zero padding inside the batch and at
// the edges): the input is masked once, block outputs are masked by SwishNormMask, pooling keeps
// zeros, and the up path masks the upsampled half.
Tensor Diffusion::Unet(Tensor x, Tensor m) const {
  const int64_t bsz = x.size(0), n = x.size(1);
  const int levels = config_.unet_levels();
  const int64_t p = int64_t{1} << (levels - 1);
  const int64_t padded = (n + p - 1) / p * p;
  const int64_t left = padded - n;
  if (left > 0) {
    x = at::constant_pad_nd(x, {0, 0, left, 0});
    m = at::constant_pad_nd(m, {left, 0});
  }
  std::vector<Tensor> masks{m.unsqueeze(2)};
  for (int l = 1; l < levels; ++l) {
    const Tensor& prev = masks.back();
    masks.push_back(std::get<0>(prev.view({bsz, prev.size(1) / 2, 2, 1}).max(2)));
  }
  std::vector<Tensor> skips;
  Tensor h = x * masks[0];
  for (int l = 0; l < levels; ++l) {
    // Max-pool 2 (l > 0) fused with the convolution's columns. A pooled position is masked only
    // if both inputs were, and those are zero: no re-masking.
    const ConvBlock& blk = down_[static_cast<size_t>(l)];
    const Tensor cols = l > 0 ? PoolConv3Columns(h) : Conv3Columns(h);
    h = SwishNormMask(blk.conv(cols), blk.norm.g.tensor(), blk.norm.b.tensor(), masks[static_cast<size_t>(l)]);
    if (l + 1 < levels) skips.push_back(h);
  }
  for (int l = levels - 2; l >= 0; --l) {
    const UpLevel& u = up_[static_cast<size_t>(l)];
    const Tensor& mk = masks[static_cast<size_t>(l)];
    const Tensor cols = UpsampleConcatColumns(u.proj(h), skips[static_cast<size_t>(l)], mk);
    h = SwishNormMask(u.block.conv(cols), u.block.norm.g.tensor(), u.block.norm.b.tensor(), mk);
  }
  h = out_(h) * masks[0];
  return left > 0 ? h.narrow(1, left, n) : h;
}

DrawnNoise Diffusion::DrawNoise(int64_t b, int64_t n, uint64_t noise_seed) const {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(noise_seed);
  DrawnNoise out;
  out.steps = at::randint(1, schedule_.steps() + 1, {b}, gen, at::kLong);
  out.eps = at::randn({b, Window(n), d_}, gen, at::kFloat);
  return out;
}

int64_t Diffusion::Window(int64_t n) const {
  const int64_t k = config_.diffusion_window();
  return k > 0 && k < n ? k : n;
}

Tensor Diffusion::Generate(const Tensor& x_in, const Tensor& mask_full, const InferenceOptions& opt) const {
  // With model.diffusion_window the reverse process runs on the newest positions only.
  const int64_t w = Window(x_in.size(1));
  const Tensor x = w < x_in.size(1) ? x_in.narrow(1, x_in.size(1) - w, w) : x_in;
  const Tensor mask_in = w < x_in.size(1) ? mask_full.narrow(1, x_in.size(1) - w, w) : mask_full;
  const int samples = opt.num_samples > 0 ? opt.num_samples : config_.inference_samples();
  const int rsteps = opt.reverse_steps >= 0 ? opt.reverse_steps : config_.inference_reverse_steps();
  const std::vector<ReverseStep> plan = schedule_.ReverseSteps(rsteps, config_.reverse_update());
  const int64_t b = x.size(0), n = x.size(1), bs = b * samples, d = d_;
  const double guidance = config_.guidance_weight();
  const bool by_kernel = d <= kKernelMaxDim && !opt.force_tensor_ops;
  Tensor z, noise;
  std::vector<Tensor> noises;  // per-sample generators: [plan, samples, n, D] each
  if (opt.sample_seeds.empty()) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(opt.seed);
    z = at::randn({bs, n, d}, gen, at::kFloat);
    noise = at::randn({static_cast<int64_t>(plan.size()), bs, n, d}, gen, at::kFloat);
  } else {
    // One generator per sample: a sample's output does not depend on the batch it is in.
    std::vector<Tensor> zs;
    for (int64_t i = 0; i < b; ++i) {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(opt.sample_seeds[static_cast<size_t>(i)]);
      zs.push_back(at::randn({samples, n, d}, gen, at::kFloat));
      noises.push_back(at::randn({static_cast<int64_t>(plan.size()), samples, n, d}, gen, at::kFloat));
    }
    z = at::cat(zs, 0);
    if (!by_kernel) noise = at::cat(noises, 1);
  }
  const Tensor xc = x.contiguous();
  const Tensor cond = samples > 1 ? xc.repeat_interleave(samples, 0) : xc;
  const Tensor mask = (samples > 1 ? mask_in.repeat_interleave(samples, 0) : mask_in).contiguous();
  if (by_kernel) {
    // The plain-C++ U-Net (model/unet_kernel.h), for serving and evaluation alike: tensor ops
    // would spend ~90 tiny ops per step. At larger D the convolutions are big enough for BLAS.
    z = z.contiguous();
    const int64_t seq = n * d;
    std::vector<const float*> noise_of(static_cast<size_t>(bs));
    int64_t noise_stride = 0;
    if (noises.empty()) {
      const float* base = noise.data_ptr<float>();
      for (int64_t s = 0; s < bs; ++s) noise_of[static_cast<size_t>(s)] = base + s * seq;
      noise_stride = bs * seq;
    } else {
      for (int64_t i = 0; i < b; ++i) {
        const float* base = noises[static_cast<size_t>(i)].data_ptr<float>();
        for (int64_t k = 0; k < samples; ++k) noise_of[static_cast<size_t>(i * samples + k)] = base + k * seq;
      }
      noise_stride = samples * seq;
    }
    float* zp = z.data_ptr<float>();
    const float* cp = cond.data_ptr<float>();
    const float* mp = mask.data_ptr<float>();
    const float* params = params_.values().data_ptr<float>();
    const float* emb = step_emb_.data_ptr<float>();
    // Sequences are independent: any split over threads gives the same numbers.
    at::parallel_for(0, bs, 4, [&](int64_t begin, int64_t end) {
      UnetKernel kernel(kernel_layout_, params);
      kernel.Reverse(plan, emb, end - begin, n, mp + begin * n, cp + begin * seq, noise_of.data() + begin,
                     noise_stride, zp + begin * seq, static_cast<float>(guidance));
    });
    // x_hat: the newest position (+ x_n for the drift), averaged over the samples in a fixed
    // order, so that a sample's value does not depend on the batch's shape.
    Tensor out = at::empty({b, d}, at::kFloat);
    float* op = out.data_ptr<float>();
    const float* xp = xc.data_ptr<float>();
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t c = 0; c < d; ++c) {
        float acc = 0;
        for (int64_t k = 0; k < samples; ++k) {
          float v = zp[((i * samples + k) * n + n - 1) * d + c];
          if (drift_) v = v + xp[(i * n + n - 1) * d + c];
          acc = k == 0 ? v : acc + v;
        }
        op[i * d + c] = samples > 1 ? acc / static_cast<float>(samples) : acc;
      }
    }
    return out;
  }
  const Tensor no_cond = guidance > 0 ? at::zeros_like(cond) : Tensor();
  for (size_t i = 0; i < plan.size(); ++i) {
    const ReverseStep& st = plan[i];
    const Tensor emb = step_emb_[st.step].view({1, 1, 2 * d});
    Tensor z0 = Unet(UnetInput(z, cond, emb), mask);
    if (guidance > 0) z0 = z0 * (1.0 + guidance) - Unet(UnetInput(z, no_cond, emb), mask) * guidance;
    if (st.prev == 0) {
      z = z0;
    } else {
      z = z0 * st.c0 + z * st.c1 + noise[static_cast<int64_t>(i)] * st.sigma;
    }
  }
  Tensor last = z.select(1, n - 1);
  if (drift_) last = last + cond.select(1, n - 1);
  return samples > 1 ? last.view({b, samples, d}).mean(1) : last;
}

}  // namespace t2d::model
