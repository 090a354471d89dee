// Throughput and latency of the model (issue: "The T2Diff model and its baselines"):
//   1. forward+backward samples/s of T2Diff at the authors' size (D = 4, n = 50, k = 10,
//      batch 512, full softmax over 3,706 items) and at an industrial size (D = 64, n = 200,
//      batch 1024, sampled softmax with 4,096 shared negatives), with 1 and 2 torch threads,
//      and at the authors' size two threads against one in alternating rounds (TwoThreadRounds);
//   2. user-tower inference latency per request (batch 1, T = 50 reverse steps) p50/p99 with
//      1 and 2 threads, and the share of the reverse process in it;
//      each training line is followed by its roofline: FLOPs of the step counted from the
//      model's parameter shapes (StepFlops), achieved GFLOP/s, and the share of the machine's
//      single-precision GEMM peak measured in the same run at the same thread count;
//   3. with --latency-only, only the serving targets (issue 13, item 5) on one thread: batch-1
//      p50/p99 (target p99 <= 1 ms) and batch-256 requests/s (target >= 2,000), for the
//      plain-C++ U-Net kernel and for tensor ops in the same run, and batch 1024 (evaluation).
// Synthetic data (random histories of full length); prints figures, asserts nothing.
// Usage: OMP_WAIT_POLICY=PASSIVE bench_model [--quick] [--no-industrial] [--latency-only]
//        [--profile trace.json]
// (libgomp's default spinning makes 2-thread runs 30x slower when the other core is busy.)
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>

#include <time.h>

#include <sys/resource.h>

#include "absl/container/flat_hash_map.h"
#include "bench/bench_util.h"
#include "model/dense_optimizer.h"
#include "model/malloc_tuning.h"
#include "model/model.h"

namespace t2d::model {
namespace {

using Clock = std::chrono::steady_clock;
using config::ModelConfig;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// CPU time of the whole process: on a shared machine wall time includes waiting for a core.
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// The machine's single-precision peak as this process can reach it: the best of a few large
// GEMMs (2048^3, the BLAS that torch calls) at the current thread count, in GFLOP/s.
double GemmPeakGflops(int reps) {
  const int64_t n = 2048;
  const at::Tensor a = at::randn({n, n}, at::kFloat), b = at::randn({n, n}, at::kFloat);
  at::Tensor c = at::matmul(a, b);  // warm-up: page in the output, start the threads
  double best = 1e9;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    c = at::matmul(a, b);
    best = std::min(best, Seconds(t0, Clock::now()));
  }
  return 2.0 * static_cast<double>(n * n * n) / best * 1e-9;
}
double g_peak_gflops[3] = {0, 0, 0};  // by thread count (1, 2), measured in main

struct Setup {
  int64_t id_dim, tag_dim, n, k, batch, catalogue, negatives, tags;
  bool sampled;
};

// Builds a batch over a catalogue of `catalogue` items (items have 1-3 of `tags` tags) and the
// per-batch unique rows, as the trainer would after pulling them.
struct Workload {
  Batch batch;
  Candidates candidates;
  Rows rows;
};

Workload MakeWorkload(const Setup& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  absl::flat_hash_map<int64_t, int64_t> row_of;  // item id -> row
  std::vector<std::vector<int64_t>> item_tags;
  auto row = [&](int64_t item) {
    auto [it, inserted] = row_of.try_emplace(item, static_cast<int64_t>(row_of.size()));
    if (inserted) {
      std::vector<int64_t> t;
      const int64_t count = 1 + static_cast<int64_t>(item % 3);
      for (int64_t j = 0; j < count; ++j) t.push_back((item * 7 + j * 5) % s.tags);
      item_tags.push_back(t);
    }
    return it->second;
  };
  auto draw = [&]() { return static_cast<int64_t>(rng() % static_cast<uint64_t>(s.catalogue)); };
  Workload w;
  Batch& b = w.batch;
  b.batch_size = s.batch;
  b.seq_len = s.n;
  if (!s.sampled) {  // full softmax: the catalogue is the candidate set, rows 0..C-1
    for (int64_t i = 0; i < s.catalogue; ++i) row(i);
  }
  auto add = [&](ItemSlots* slots, int64_t item) {
    const int64_t r = row(item);
    slots->Add(r, item_tags[static_cast<size_t>(r)]);
  };
  for (int64_t i = 0; i < s.batch; ++i) {
    b.lengths.push_back(s.n);
    for (int64_t j = 0; j < s.n; ++j) add(&b.history, draw());
    const int64_t target = draw();
    add(&b.targets, target);
    b.target_candidates.push_back(s.sampled ? 0 : target);
    b.target_log_q.push_back(-std::log(static_cast<float>(s.catalogue)));
  }
  if (s.sampled) {
    for (int64_t i = 0; i < s.negatives; ++i) {
      add(&w.candidates.items, draw());
      w.candidates.log_q.push_back(-std::log(static_cast<float>(s.catalogue)));
    }
  } else {
    for (int64_t i = 0; i < s.catalogue; ++i) add(&w.candidates.items, i);
  }
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  w.rows.id_rows = (at::randn({static_cast<int64_t>(row_of.size()), s.id_dim}, gen, at::kFloat) * 0.1).requires_grad_(true);
  w.rows.tag_rows = (at::randn({s.tags, s.tag_dim}, gen, at::kFloat) * 0.1).requires_grad_(true);
  return w;
}

// FLOPs of one training step (forward + backward), in four parts. Counting rule:
//   - every weight matrix W [out, in] costs 2 * rows * numel(W) in the forward pass, rows being
//     the positions it is applied to; a kernel-3 convolution is stored as [out, 3 * in], so this
//     is 2 * positions * in * out * taps. The shapes come from Model::Parameters(); the name
//     says where a matrix is applied (the registrations in model/*.cc);
//   - parameter-free matmuls are added in closed form: per attention layer 2 * B * T^2 * D for
//     the scores and again for their weighted sum; the target attention's pooling 2 * B * nh * D;
//     the logits 2 * B * columns * E (columns: the catalogue, or B + S with sampled negatives);
//   - backward of a matmul is two matmuls of the same size (gradient of the input, of the
//     weight), so a step is 3x the forward (slightly over: the U-Net's detached input and
//     the embedding rows need no input gradient of their first matmul);
//   - elementwise work (LayerNorm, activations, the softmax's exp, Adam) is not counted: it is
//     memory traffic, not work a GEMM peak can be compared with.
struct StepFlops {
  double item = 0, user = 0, unet = 0, softmax = 0;  // forward
  double Total() const { return 3 * (item + user + unet + softmax); }
};

StepFlops CountStepFlops(const Model& model, const Setup& s) {
  const ModelConfig& c = model.config();
  const double b = static_cast<double>(s.batch), n = static_cast<double>(s.n);
  const double d = static_cast<double>(model.input_dim()), e = static_cast<double>(model.output_dim());
  const double ks = static_cast<double>(std::min(s.k, s.n)), nh = n - ks;
  const bool diffusion = c.kind() == ModelConfig::T2DIFF || c.kind() == ModelConfig::T2DIFF_NO_DRIFT;
  const double tokens = ks + (diffusion ? 1 : 0);  // session Transformer tokens (+ x_hat)
  // The U-Net left-pads n to a multiple of 2^(L-1); level l runs on n' / 2^l positions.
  // With model.diffusion_window = k it runs on the newest k slots only.
  const int64_t grid = int64_t{1} << (c.unet_levels() - 1);
  const int64_t nd = c.diffusion_window() > 0 ? std::min<int64_t>(c.diffusion_window(), s.n) : s.n;
  const double padded = static_cast<double>((nd + grid - 1) / grid * grid);
  const double columns = static_cast<double>(s.sampled ? s.batch + s.negatives : s.catalogue);
  StepFlops f;
  for (const ParameterInfo& p : model.Parameters()) {
    const std::string& name = p.name;
    if (p.shape.size() != 2 || name.size() < 7 || name.compare(name.size() - 7, 7, ".weight") != 0) continue;
    const double per_row = 2.0 * static_cast<double>(p.numel);
    auto level = [&](size_t at) { return std::atoi(name.c_str() + at); };  // "unet.down3" -> 3
    if (name.rfind("item.", 0) == 0) {
      f.item += per_row * (b + static_cast<double>(s.sampled ? s.negatives : s.catalogue));  // targets + candidates
    } else if (name.rfind("unet.down", 0) == 0) {
      f.unet += per_row * b * padded / std::ldexp(1.0, level(9));
    } else if (name.rfind("unet.up", 0) == 0) {
      // proj runs before the upsample, on level l + 1's positions.
      const int l = level(7) + (name.find(".proj.") != std::string::npos ? 1 : 0);
      f.unet += per_row * b * padded / std::ldexp(1.0, l);
    } else if (name.rfind("unet.", 0) == 0) {
      f.unet += per_row * b * padded;  // unet.out
    } else if (name.rfind("session.", 0) == 0) {
      f.user += per_row * b * tokens;
      if (name.find(".qkv.") != std::string::npos) f.user += 4 * b * tokens * tokens * d;
    } else if (name.rfind("sasrec.layer", 0) == 0) {
      f.user += per_row * b * n;
      if (name.find(".qkv.") != std::string::npos) f.user += 4 * b * n * n * d;
    } else if (name.rfind("target_attention.", 0) == 0) {
      f.user += per_row * b * nh;
      if (name.find(".unit2.") != std::string::npos) f.user += 2 * b * nh * d;  // softmax-weighted history
    } else {
      f.user += per_row * b;  // user.ffn*, sasrec.out: once per sample
    }
  }
  f.softmax = 2 * b * columns * e;
  return f;
}

std::unique_ptr<Model> MakeModel(const Setup& s, ModelConfig c) {
  ModelDims d;
  d.id_dim = s.id_dim;
  d.tag_dim = s.tag_dim;
  d.session_len = s.k;
  c.set_loss(s.sampled ? ModelConfig::SAMPLED_SOFTMAX : ModelConfig::FULL_SOFTMAX);
  c.set_num_negatives(static_cast<int32_t>(s.negatives));
  auto m = Model::Create(c, d);
  if (!m.ok()) {
    std::fprintf(stderr, "model: %s\n", std::string(m.status().message()).c_str());
    std::exit(1);
  }
  return std::move(m).value();
}

// The mean samples/s of the last Train call.
double g_last_samples_per_s = 0;

// One forward+backward step of `model` on the workload (gradients cleared first); exits on an
// error, as a benchmark with a broken model has nothing to print.
void Step(Model& model, Workload& w, int i, bool branches) {
  model.ZeroGradients();
  w.rows.id_rows.mutable_grad() = at::Tensor();
  w.rows.tag_rows.mutable_grad() = at::Tensor();
  auto losses = model.ForwardBackward(w.batch, w.rows, w.candidates, static_cast<uint64_t>(i), branches);
  if (!losses.ok()) {
    std::fprintf(stderr, "forward: %s\n", std::string(losses.status().message()).c_str());
    std::exit(1);
  }
}

// Returns the share of the GEMM peak achieved (0 when the peak was not measured). branches:
// Model::ForwardBackward's parallel_branches (the diffusion backward on a second thread; run
// with one intra-op thread, it is a two-thread step).
double Train(const char* label, const Setup& s, const ModelConfig& c, int warmup, int steps, bool branches = false) {
  Workload w = MakeWorkload(s, 1);
  auto model = MakeModel(s, c);
  DenseAdam adam(model->DenseParameters().size(), {});
  double fb = 0, opt = 0, cpu = 0, best = 1e9;
  long faults = 0;
  for (int i = 0; i < warmup + steps; ++i) {
    rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    const auto t0 = Clock::now();
    const double c0 = ProcessCpuSeconds();
    Step(*model, w, i, branches);
    const double c1 = ProcessCpuSeconds();
    const auto t1 = Clock::now();
    adam.Step(model->DenseParameters(), model->DenseGradients());
    const auto t2 = Clock::now();
    getrusage(RUSAGE_SELF, &ru1);
    if (i >= warmup) {
      faults += ru1.ru_minflt - ru0.ru_minflt;
      cpu += c1 - c0;
      best = std::min(best, Seconds(t0, t1));
      fb += Seconds(t0, t1);
      opt += Seconds(t1, t2);
    }
  }
  const int threads = at::get_num_threads() + (branches ? 1 : 0);
  g_last_samples_per_s = s.batch * steps / fb;
  std::printf("%-44s threads=%d%s  fwd+bwd mean %7.1f ms/step = %7.0f samples/s, best step %7.1f ms = %7.0f samples/s  (CPU %.1f ms/step; +dense Adam %.2f ms; %zu dense params, U=%lld rows; %ld page faults/step)\n",
              label, threads, branches ? " (1 intra-op + the diffusion branch)" : "", 1e3 * fb / steps, s.batch * steps / fb, 1e3 * best, s.batch / best, 1e3 * cpu / steps, 1e3 * opt / steps,
              model->DenseParameters().size(), static_cast<long long>(w.rows.id_rows.size(0)), faults / steps);
  const StepFlops f = CountStepFlops(*model, s);
  const double achieved = f.Total() / (fb / steps) * 1e-9;
  const double peak = threads >= 1 && threads <= 2 ? g_peak_gflops[threads] : 0;
  std::printf("%-44s   roofline: %.3f GFLOP/step (3 x forward; forward MFLOP: item tower %.1f, user tower %.1f, "
              "U-Net %.1f, softmax %.1f) -> %.1f GFLOP/s",
              "", f.Total() * 1e-9, f.item * 1e-6, f.user * 1e-6, f.unet * 1e-6, f.softmax * 1e-6, achieved);
  if (peak > 0) std::printf(" = %.1f%% of the GEMM peak %.1f GFLOP/s at %d thread(s)", 100 * achieved / peak, peak, threads);
  std::printf("\n");
  return peak > 0 ? achieved / peak : 0;
}

using t2d::bench::Percentile;

// Two threads against one for T2Diff at the authors' size, in alternating rounds on one model
// and batch: `steps` steps on one thread, then `steps` with the diffusion branch on a second
// thread (Model::ForwardBackward's parallel_branches), `rounds` times. Load from other jobs
// drifts over seconds on a shared machine; alternating lets it hit both sides alike, where the
// lines above time one thread and two minutes apart. Prints each round's ratio of samples/s and
// their median against the target.
void TwoThreadRounds(const Setup& s, const ModelConfig& c, int rounds, int steps) {
  at::set_num_threads(1);
  Workload w = MakeWorkload(s, 1);
  auto model = MakeModel(s, c);
  auto seconds = [&](bool branches, int n) {
    double total = 0;
    for (int i = 0; i < n; ++i) {
      const auto t0 = Clock::now();
      Step(*model, w, i, branches);
      total += Seconds(t0, Clock::now());
    }
    return total;
  };
  seconds(false, 2);  // warm-up of both paths
  seconds(true, 2);
  std::vector<double> ratios;
  std::string list;
  for (int r = 0; r < rounds; ++r) {
    const double one = seconds(false, steps);
    const double two = seconds(true, steps);
    ratios.push_back(one / two);  // same steps on each side: the ratio of samples/s
    list += (r > 0 ? ", " : "") + std::to_string(ratios.back()).substr(0, 4);
  }
  const double median = t2d::bench::Median(ratios);
  std::printf("%-44s   two branches against one thread, %d alternating rounds of %d steps: %s; median %.2fx "
              "(target >= 1.6x: %s)\n",
              "", rounds, steps, list.c_str(), median, median >= 1.6 ? "met" : "missed");
}

void Latency(const char* label, const Setup& s, const ModelConfig& c, int requests) {
  Setup one = s;
  one.batch = 1;
  auto model = MakeModel(one, c);
  std::vector<Workload> reqs;
  for (int i = 0; i < 16; ++i) reqs.push_back(MakeWorkload(one, 100 + static_cast<uint64_t>(i)));
  std::vector<double> total, gen, rest;
  // The rest of the user tower, timed on the same tower without the diffusion token (the
  // difference of two timings of ~1 ms noise is unusable when the reverse process takes 100 ms).
  ModelConfig no_diff = c;
  no_diff.set_kind(ModelConfig::T2DIFF_NO_DIFFUSION);
  auto rest_model = MakeModel(one, no_diff);
  for (int i = 0; i < requests + 5; ++i) {
    const Workload& w = reqs[static_cast<size_t>(i) % reqs.size()];
    InferenceOptions o;
    o.seed = static_cast<uint64_t>(i);
    const auto t0 = Clock::now();
    auto e = model->UserVectors(w.batch, w.rows, o);
    const auto t1 = Clock::now();
    auto x = model->GenerateNextItem(w.batch, w.rows, o);
    const auto t2 = Clock::now();
    auto r = rest_model->UserVectors(w.batch, w.rows, o);
    const auto t3 = Clock::now();
    if (!e.ok() || !x.ok() || !r.ok()) {
      std::fprintf(stderr, "inference failed\n");
      std::exit(1);
    }
    if (i >= 5) {
      total.push_back(1e3 * Seconds(t0, t1));
      gen.push_back(1e3 * Seconds(t1, t2));
      rest.push_back(1e3 * Seconds(t2, t3));
    }
  }
  const double p50 = Percentile(total, 0.5), p99 = Percentile(total, 0.99), g50 = Percentile(gen, 0.5);
  const double r50 = Percentile(rest, 0.5);
  std::printf("%-44s threads=%d  user tower p50 %.3f ms  p99 %.3f ms  | reverse process p50 %.3f ms, rest of the "
              "tower (no-diffusion tower) p50 %.3f ms: ratio %.1f : 1 (%d requests)\n",
              label, at::get_num_threads(), p50, p99, g50, r50, g50 / r50, requests);
}

// The serving targets (issue 13, item 5) on ONE thread: the user tower with all T reverse steps
// at batch 1 (p50/p99 over `requests` requests) and at batch 256 (requests/s), for the plain-C++
// kernel and for the tensor ops it replaced (force_tensor_ops), measured in the same run; batch
// 1024 (evaluation) is timed too, as the kernel serves evaluation as well. Each request carries
// its own sample seed, as in serving and evaluation.
void ServingTargets(const Setup& s, const ModelConfig& c, int requests, int big_batches) {
  at::set_num_threads(1);
  Setup one = s;
  one.batch = 1;
  auto model = MakeModel(one, c);
  std::vector<Workload> reqs;
  for (int i = 0; i < 16; ++i) reqs.push_back(MakeWorkload(one, 100 + static_cast<uint64_t>(i)));
  struct Result {
    double p50 = 0, p99 = 0, gen50 = 0, rps256 = 0, rps1024 = 0;
  } res[2];
  for (int path = 0; path < 2; ++path) {
    const bool tensor = path == 1;
    const int count = tensor ? std::max(100, requests / 5) : requests;
    std::vector<double> total, gen;
    for (int i = 0; i < count + 20; ++i) {
      const Workload& w = reqs[static_cast<size_t>(i) % reqs.size()];
      InferenceOptions o;
      o.sample_seeds = {static_cast<uint64_t>(i)};
      o.force_tensor_ops = tensor;
      const auto t0 = Clock::now();
      auto e = model->UserVectors(w.batch, w.rows, o);
      const auto t1 = Clock::now();
      auto x = model->GenerateNextItem(w.batch, w.rows, o);
      const auto t2 = Clock::now();
      if (!e.ok() || !x.ok()) {
        std::fprintf(stderr, "inference failed\n");
        std::exit(1);
      }
      if (i >= 20) {
        total.push_back(1e3 * Seconds(t0, t1));
        gen.push_back(1e3 * Seconds(t1, t2));
      }
    }
    Result& r = res[path];
    r.p50 = Percentile(total, 0.5);
    r.p99 = Percentile(total, 0.99);
    r.gen50 = Percentile(gen, 0.5);
    const char* name = tensor ? "tensor ops (force_tensor_ops)" : "plain-C++ kernel";
    std::printf("T2Diff user tower, authors' size, T=50, %-30s threads=%d  batch 1: p50 %.3f ms  p99 %.3f ms "
                "(reverse process p50 %.3f ms; %d requests)  target p99 <= 1 ms: %s\n",
                name, at::get_num_threads(), r.p50, r.p99, r.gen50, count, r.p99 <= 1.0 ? "met" : "missed");
    for (int64_t bsz : {int64_t{256}, int64_t{1024}}) {
      Setup many = s;
      many.batch = bsz;
      const Workload w = MakeWorkload(many, 7);
      InferenceOptions o;
      for (int64_t i = 0; i < bsz; ++i) o.sample_seeds.push_back(static_cast<uint64_t>(i));
      o.force_tensor_ops = tensor;
      const int reps = bsz == 256 ? big_batches : 1;
      double best = 1e9;
      for (int i = 0; i < reps + 1; ++i) {
        const auto t0 = Clock::now();
        auto e = model->UserVectors(w.batch, w.rows, o);
        const auto t1 = Clock::now();
        if (!e.ok()) {
          std::fprintf(stderr, "inference failed: %s\n", std::string(e.status().message()).c_str());
          std::exit(1);
        }
        if (i > 0 || reps == 0) best = std::min(best, Seconds(t0, t1));
      }
      const double rps = static_cast<double>(bsz) / best;
      if (bsz == 256) {
        r.rps256 = rps;
        std::printf("T2Diff user tower, authors' size, T=50, %-30s threads=%d  batch 256: %.0f requests/s "
                    "(%.3f ms per request, best of %d batches)  target >= 2000 req/s: %s\n",
                    name, at::get_num_threads(), rps, 1e3 / rps, reps, rps >= 2000 ? "met" : "missed");
      } else {
        r.rps1024 = rps;
        std::printf("T2Diff user tower, authors' size, T=50, %-30s threads=%d  batch 1024 (evaluation): %.0f "
                    "requests/s\n", name, at::get_num_threads(), rps);
      }
    }
  }
  std::printf("speed-up of the kernel over tensor ops (same run): batch 1 p50 %.1fx, p99 %.1fx; batch 256 %.1fx; "
              "batch 1024 %.1fx\n", res[1].p50 / res[0].p50, res[1].p99 / res[0].p99, res[0].rps256 / res[1].rps256,
              res[0].rps1024 / res[1].rps1024);
}

}  // namespace
}  // namespace t2d::model

int main(int argc, char** argv) {
  using namespace t2d::model;
  bool quick = false, industrial = true, latency_only = false;
  const bool tuned = ConfigureMallocForTensors();
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--profile") == 0 && i + 1 < argc) {
      // Chrome trace of a few training steps at the authors' size (op-level time breakdown).
      const Setup authors{2, 2, 50, 10, 512, 3706, 0, 18, false};
      at::set_num_threads(1);
      Train("warm-up", authors, ModelConfig(), 1, 10);
      torch::autograd::profiler::RecordProfile guard(argv[i + 1]);
      Train("profiled", authors, ModelConfig(), 0, 12);
      return 0;
    }
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--no-industrial") == 0) {
      industrial = false;
    } else if (std::strcmp(argv[i], "--latency-only") == 0) {
      latency_only = true;
    } else {
      // A mistyped flag would otherwise start the whole run (minutes) with the defaults.
      std::fprintf(stderr,
                   "bench_model: unknown argument '%s'\nusage: OMP_WAIT_POLICY=PASSIVE bench_model [--quick] "
                   "[--no-industrial] [--latency-only] [--profile trace.json]\n",
                   argv[i]);
      return 2;
    }
  }
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::printf("machine: %s; malloc tuned: %s; OMP_WAIT_POLICY=%s\n", t2d::bench::MachineDescription().c_str(),
              tuned ? "yes" : "no",
              wait_policy != nullptr ? wait_policy : "(unset: spinning OpenMP threads, slow when cores are shared)");
  if (!latency_only) {
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      g_peak_gflops[threads] = GemmPeakGflops(quick ? 3 : 5);
    }
    std::printf("peak: single-precision GEMM 2048x2048x2048 (at::matmul, best of %d): %.1f GFLOP/s on 1 thread, "
                "%.1f GFLOP/s on 2 threads\n", quick ? 3 : 5, g_peak_gflops[1], g_peak_gflops[2]);
  }
  const Setup authors{2, 2, 50, 10, 512, 3706, 0, 18, false};
  const Setup big{32, 32, 200, 10, 1024, 1000000, 4096, 1000, true};
  ModelConfig t2diff;  // defaults: T2DIFF, T = 50, 4 U-Net levels, 2 heads
  if (latency_only) {
    ServingTargets(authors, t2diff, quick ? 1000 : 3000, quick ? 3 : 10);
    return 0;
  }
  ModelConfig no_diff;
  no_diff.set_kind(ModelConfig::T2DIFF_NO_DIFFUSION);
  ModelConfig mean;
  mean.set_kind(ModelConfig::TWO_TOWER_MEAN);
  ModelConfig sasrec;
  sasrec.set_kind(ModelConfig::SASREC);
  double one_thread = 0;
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    Train("T2Diff, authors' size (D=4 n=50 B=512 C=3706)", authors, t2diff, 2, quick ? 5 : 15);
    if (threads == 1) one_thread = g_last_samples_per_s;
    if (threads == 2) {
      const double intra = g_last_samples_per_s;
      // The same two cores used as two branches of the step instead of two intra-op threads.
      at::set_num_threads(1);
      Train("T2Diff, authors' size (D=4 n=50 B=512 C=3706)", authors, t2diff, 2, quick ? 5 : 15, true);
      at::set_num_threads(2);
      std::printf("%-44s   two threads against one (same run): intra-op %.2fx, two branches %.2fx\n", "",
                  intra / one_thread, g_last_samples_per_s / one_thread);
      TwoThreadRounds(authors, t2diff, quick ? 5 : 7, quick ? 10 : 15);
    }
    if (threads == 1 && !quick) {
      ModelConfig shallow;
      shallow.set_unet_levels(2);
      Train("  T2Diff with a 2-level U-Net, same size", authors, shallow, 2, 10);
      Train("  no diffusion, same size", authors, no_diff, 2, 10);
      Train("  two-tower mean, same size", authors, mean, 2, 10);
      Train("  SASRec, same size", authors, sasrec, 2, 10);
    }
    if (industrial) {
      const double share = Train("T2Diff, industrial (D=64 n=200 B=1024 S=4096)", big, t2diff, 1, 1);
      std::printf("%-44s   target >= 40%% of the GEMM peak at the same thread count: %s\n", "", share >= 0.4 ? "met" : "missed");
      const double paper_layout = g_last_samples_per_s;
      // What a deployment would run at this size (docs/model.md): a U-Net of width 16 instead of
      // D, diffusing the newest 50 of the 200 slots.
      ModelConfig lean = t2diff;
      lean.set_unet_channels(16);
      lean.set_diffusion_window(50);
      Train("  industrial, unet_channels 16, diffusion_window 50", big, lean, 1, 1);
      std::printf("%-44s   %.2fx the samples/s of the paper's layout at this size (same run)\n", "",
                  g_last_samples_per_s / paper_layout);
    }
    Latency("T2Diff inference, authors' size, T=50", authors, t2diff, quick ? 100 : 1000);
    if (industrial) {
      Setup big1 = big;
      Latency("T2Diff inference, industrial size, T=50", big1, t2diff, quick ? 5 : 10);
      ModelConfig lean = t2diff;
      lean.set_unet_channels(16);
      lean.set_diffusion_window(50);
      lean.set_inference_reverse_steps(10);
      lean.set_reverse_update(ModelConfig::DDIM);
      Latency("  industrial, unet_channels 16, window 50, 10 DDIM steps", big1, lean, quick ? 5 : 10);
    }
  }
  return 0;
}
