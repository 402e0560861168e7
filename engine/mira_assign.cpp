// Tensor-level assignment ops: argument checks, dispatch on the device, the loop over passes
// with the communicator between them (multi-process CUDA), and the statistics.
#include "engine/mira_assign.h"

#include <climits>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "engine/error.h"
#include "kernels/cpu/mira_assign.h"

#ifdef MIRA_HAS_CUDA
#include "engine/cuda/context.h"
#include "engine/cuda_backend.h"
#include "kernels/cuda/mira_assign.cuh"
#endif

namespace mira {

namespace {

// The communicator as the CPU kernels' reduction hook; null members for one process.
cpu::AssignReduce make_reduce(Communicator& comm) {
  cpu::AssignReduce r;
  if (comm.world_size() == 1) return r;
  r.sum = [](double* d, int64_t n, void* ctx) { static_cast<Communicator*>(ctx)->allreduce_sum(d, n); };
  r.max = [](double* d, int64_t n, void* ctx) { static_cast<Communicator*>(ctx)->allreduce_max(d, n); };
  r.ctx = &comm;
  return r;
}

void check_logits(const Tensor& logits, const char* op) {
  MIRA_CHECK(logits.defined(), op, ": undefined logits");
  MIRA_CHECK(logits.ndim() == 2, op, ": logits must be (N, K), got ", logits.shape().str());
  MIRA_CHECK(logits.dim(0) > 0 && logits.dim(1) > 0, op, ": empty input, logits ", logits.shape().str());
  MIRA_CHECK(dtype_is_float(logits.dtype()), op, ": logits must be f32, f64 or bf16, got ", dtype_name(logits.dtype()));
  MIRA_CHECK(logits.device().is_cpu() || logits.dtype() != DType::F64, op, ": f64 logits run on the CPU only");
}

void check_mira_args(double tau_t, double beta, int iters) {
  MIRA_CHECK(std::isfinite(tau_t) && tau_t > 0, "mira_assign: tau_t must be a positive finite number, got ", tau_t);
  MIRA_CHECK(beta >= 0 && beta < 1, "mira_assign: beta must be in [0, 1), got ", beta);
  MIRA_CHECK(std::isfinite(1.0 / (tau_t * (1.0 - beta))), "mira_assign: tau_t * (1 - beta) = ", tau_t * (1.0 - beta),
             " is too small");
  MIRA_CHECK(iters >= 0, "mira_assign: iters must be >= 0, got ", iters);
}

void check_sinkhorn_args(double eps, int iters) {
  MIRA_CHECK(std::isfinite(eps) && eps > 0 && std::isfinite(1.0 / eps),
             "sinkhorn_assign: eps must be a positive finite number, got ", eps);
  MIRA_CHECK(iters >= 1, "sinkhorn_assign: iters must be >= 1, got ", iters);
}

// ---- CPU

// logits: f32 or f64 on the CPU. mira = false: Sinkhorn (no KKT residual).
void stats_cpu(const Tensor& logits, const Tensor& targets, bool mira, double tau_t, double beta, Communicator& comm,
               AssignStats* stats) {
  const int64_t N = targets.dim(0), K = targets.dim(1);
  std::vector<double> wbar(static_cast<size_t>(K)), work(static_cast<size_t>(cpu::assign_stats_work_size(N, K)));
  cpu::AssignStatsOut out;
  const cpu::AssignReduce red = make_reduce(comm);
  if (targets.dtype() == DType::F64) {
    cpu::assign_stats<double>(mira ? logits.data<double>() : nullptr, targets.data<double>(), N, K, tau_t, beta,
                              wbar.data(), work.data(), &out, &red);
  } else {
    cpu::assign_stats<float>(mira ? logits.data<float>() : nullptr, targets.data<float>(), N, K, tau_t, beta,
                             wbar.data(), work.data(), &out, &red);
  }
  stats->wbar = Tensor::from_vector(wbar, Shape{K}, DType::F64, Device::cpu());
  stats->kkt_residual = out.kkt_residual;
  stats->target_entropy = out.target_entropy;
  stats->marginal_entropy = out.marginal_entropy;
}

cpu::MiraNumerics cpu_numerics(const AssignOptions& opts) {
  cpu::MiraNumerics num;
  num.copy = opts.working_copy == AssignWorkingCopy::BF16  ? cpu::WorkingCopy::BF16
             : opts.working_copy == AssignWorkingCopy::F16 ? cpu::WorkingCopy::F16
                                                           : cpu::WorkingCopy::Exact;
  num.exact_passes = opts.exact_passes;
  return num;
}

Tensor mira_cpu(const Tensor& logits, double tau_t, double beta, int iters, Communicator& comm, AssignStats* stats,
                const AssignOptions& opts) {
  const cpu::MiraNumerics num = cpu_numerics(opts);
  const Tensor x = logits.dtype() == DType::BF16 ? logits.to(DType::F32) : logits;
  const int64_t N = x.dim(0), K = x.dim(1);
  Tensor out = Tensor::empty(Shape{N, K}, x.dtype(), Device::cpu());
  std::vector<double> work(static_cast<size_t>(cpu::mira_assign_work_size(N, K)));
  const cpu::AssignReduce red = make_reduce(comm);
  if (x.dtype() == DType::F64) {
    cpu::mira_assign_fwd<double>(x.data<double>(), out.data<double>(), N, K, tau_t, beta, iters, work.data(), &red,
                                 num);
  } else {
    cpu::mira_assign_fwd<float>(x.data<float>(), out.data<float>(), N, K, tau_t, beta, iters, work.data(), &red, num);
  }
  if (stats) stats_cpu(x, out, true, tau_t, beta, comm, stats);
  return out;
}

Tensor sinkhorn_cpu(const Tensor& logits, double eps, int iters, Communicator& comm, AssignStats* stats) {
  const Tensor x = logits.dtype() == DType::BF16 ? logits.to(DType::F32) : logits;
  const int64_t N = x.dim(0), K = x.dim(1);
  Tensor out = Tensor::empty(Shape{N, K}, x.dtype(), Device::cpu());
  std::vector<double> work(static_cast<size_t>(cpu::sinkhorn_assign_work_size(N, K)));
  const cpu::AssignReduce red = make_reduce(comm);
  if (x.dtype() == DType::F64) {
    cpu::sinkhorn_assign_fwd<double>(x.data<double>(), out.data<double>(), N, K, eps, iters, work.data(), &red);
  } else {
    cpu::sinkhorn_assign_fwd<float>(x.data<float>(), out.data<float>(), N, K, eps, iters, work.data(), &red);
  }
  if (stats) stats_cpu(x, out, false, 0, 0, comm, stats);
  return out;
}

#ifdef MIRA_HAS_CUDA

// Plans depend only on the shape, the iteration count (the plan model's cost), the options the
// op sets and the device; computing one queries the device and the kernel's occupancy, so they
// are kept per key for the life of the process. Every MiraPlanOptions field the op sets is in
// the key: a plan cached for one setting must never serve another.
cuda::MiraPlan cached_plan(const cuda::MiraProblem& p, cuda::MiraVariant variant, const cuda::MiraPlanOptions& o,
                           int device) {
  using Key = std::tuple<int, int, int, int, int, bool, int, int, int, bool, bool, bool>;
  static std::mutex mu;
  static std::map<Key, cuda::MiraPlan> plans;
  const int cache = static_cast<int>(o.cache);
  const Key key{
      device,         p.V,       p.N,           p.K,       p.iters, p.logits_bf16, static_cast<int>(variant), cache,
      o.exact_passes, o.cluster, o.cluster_mma, o.mma_rows};
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, cuda::mira_plan(p, variant, o)).first;
  return it->second;
}

float read_device_float(const float* p, Device dev) {
  float v = 0;
  cuda::copy(&v, Device::cpu(), p, dev, sizeof(float), false);
  return v;
}

void stats_cuda(const Tensor& logits, const Tensor& targets, bool mira, double tau_t, double beta, Communicator& comm,
                AssignStats* stats) {
  const Device dev = targets.device();
  const cudaStream_t stream = cuda::CudaContext::get().stream();
  const int N = static_cast<int>(targets.dim(0)), K = static_cast<int>(targets.dim(1));
  Tensor scratch = Tensor::empty(Shape{static_cast<int64_t>(cuda::assign_stats_scratch_bytes(N, K))}, DType::U8, dev);
  // f64 tensors do not exist on CUDA; the sums are raw doubles in a byte tensor.
  Tensor sums = Tensor::empty(Shape{2 * static_cast<int64_t>(K) * 8}, DType::U8, dev);
  double* dsums = static_cast<double*>(sums.raw());
  cuda::assign_stats_sums_cuda(targets.data<float>(), N, K, dsums, scratch.raw(), stream);
  comm.allreduce_sum(dsums, 2 * static_cast<int64_t>(K), DType::F64, dev);
  double n_global = N;
  comm.allreduce_sum(&n_global, 1);
  std::vector<double> host(2 * static_cast<size_t>(K));
  comm.drain();
  cuda::copy(host.data(), Device::cpu(), dsums, dev, host.size() * sizeof(double), false);
  std::vector<double> wbar(static_cast<size_t>(K));
  double ht = 0, hm = 0;
  for (int j = 0; j < K; ++j) {
    wbar[j] = host[j] / n_global;
    ht += host[K + j];
    if (wbar[j] > 0) hm -= wbar[j] * std::log(wbar[j]);
  }
  stats->wbar = Tensor::from_vector(wbar, Shape{K}, DType::F64, Device::cpu());
  stats->target_entropy = ht / n_global;
  stats->marginal_entropy = hm;
  stats->kkt_residual = NAN;
  if (!mira) return;
  std::vector<double> w(static_cast<size_t>(K));
  cpu::mira_weights_from_mass(wbar.data(), w.data(), K, -beta / (1.0 - beta), cpu::mira_weight_log2_cap(K, 124.0));
  const Tensor wd = Tensor::from_vector(w, Shape{K}, DType::F32, dev);
  Tensor out = Tensor::empty(Shape{1}, DType::F32, dev);
  cuda::mira_kkt_cuda(logits.raw(), logits.dtype() == DType::BF16, targets.data<float>(), wd.data<float>(), N, K,
                      static_cast<float>(tau_t), static_cast<float>(beta), out.data<float>(), stream);
  double kkt = read_device_float(out.data<float>(), dev);
  comm.allreduce_max(&kkt, 1);
  stats->kkt_residual = kkt;
}

// Up to kMiraMaxViews views of the same shape in one plan.
void mira_cuda_group(const std::vector<Tensor>& views, const std::vector<Tensor>& outs, double tau_t, double beta,
                     int iters, Communicator& comm, const AssignOptions& opts) {
  const Device dev = views[0].device();
  auto& ctx = cuda::CudaContext::get();
  const cudaStream_t stream = ctx.stream();
  cuda::MiraProblem p;
  p.V = static_cast<int>(views.size());
  p.N = static_cast<int>(views[0].dim(0));
  p.K = static_cast<int>(views[0].dim(1));
  p.logits_bf16 = views[0].dtype() == DType::BF16;
  p.tau_t = static_cast<float>(tau_t);
  p.beta = static_cast<float>(beta);
  p.iters = iters;
  for (int v = 0; v < p.V; ++v) {
    p.logits[v] = views[v].raw();
    p.targets[v] = outs[v].data<float>();
  }
  const bool multi = comm.world_size() > 1;
  cuda::MiraVariant variant = cuda::MiraVariant::Unfused;
  switch (opts.kernel) {
    case AssignKernel::Auto:
      variant = !cuda::mira_fused_supports(p.K) ? cuda::MiraVariant::Unfused
                : multi                         ? cuda::MiraVariant::PerPass
                                                : cuda::MiraVariant::Fused;
      break;
    case AssignKernel::Fused:
      variant = cuda::MiraVariant::Fused;
      break;
    case AssignKernel::PerPass:
      variant = cuda::MiraVariant::PerPass;
      break;
    case AssignKernel::Unfused:
      variant = cuda::MiraVariant::Unfused;
      break;
  }
  MIRA_CHECK(!multi || variant == cuda::MiraVariant::PerPass,
             "mira_assign: several processes need the PerPass kernel (K <= 12288)");
  cuda::MiraPlanOptions po;
  po.cache = opts.working_copy == AssignWorkingCopy::BF16  ? cuda::MiraCache::BF16
             : opts.working_copy == AssignWorkingCopy::F16 ? cuda::MiraCache::F16
                                                           : cuda::MiraCache::F32;
  po.exact_passes = opts.exact_passes;
  po.cluster = opts.cluster_plan;
  po.cluster_mma = opts.cluster_mma;
  // The tensor-core updates only where every SM gets a row tile (below, the default kernel is
  // faster: cuda::mira_mma_rows_fill).
  po.mma_rows = opts.mma_rows && cuda::mira_mma_rows_fill(p, ctx.device());
  const cuda::MiraPlan plan = cached_plan(p, variant, po, ctx.device());
  Tensor ws = Tensor::empty(Shape{static_cast<int64_t>(plan.workspace_bytes)}, DType::U8, dev);
  const float* flag = cuda::mira_nonfinite_count(plan, ws.raw());
  auto check_flag = [&] {
    if (!opts.check_finite) return;
    comm.drain();  // the flag's reduction has completed (or a peer's failure is reported)
    const float bad = read_device_float(flag, dev);
    MIRA_CHECK(bad == 0, "mira_assign: the logits contain NaN or Inf (", bad, " values over all ranks)");
  };
  if (variant != cuda::MiraVariant::PerPass) {
    cuda::mira_assign_cuda(p, plan, ws.raw(), stream);
    check_flag();
    return;
  }
  for (int pass = 0; pass <= iters + 1; ++pass) {
    cuda::mira_assign_pass_cuda(p, plan, pass, ws.raw(), stream);
    if (pass > iters) break;
    comm.allreduce_sum(cuda::mira_reduce_buffer(plan, ws.raw()), cuda::mira_reduce_len(p, plan, pass), DType::F32, dev);
    if (pass == 0) check_flag();  // the count is global now: every rank throws, or none
  }
}

std::vector<Tensor> mira_cuda(const std::vector<Tensor>& views, double tau_t, double beta, int iters,
                              Communicator& comm, std::vector<AssignStats>* stats, const AssignOptions& opts) {
  const int64_t N = views[0].dim(0), K = views[0].dim(1);
  MIRA_CHECK(N <= INT_MAX / 2 && K <= INT_MAX / 2, "mira_assign: shape too large for the CUDA kernels");
  if (comm.world_size() > 1 && !cuda::mira_fused_supports(static_cast<int>(K))) {
    // Several processes and K beyond the per-pass kernel: run on the host (slow, but exact:
    // E in f32, as the unfused kernels a single process gets here keep it).
    AssignOptions exact = opts;
    exact.working_copy = AssignWorkingCopy::F32;
    exact.exact_passes = 0;
    std::vector<Tensor> host;
    for (const Tensor& v : views) host.push_back(v.to(Device::cpu()));
    std::vector<Tensor> out;
    for (size_t v = 0; v < host.size(); ++v) {
      AssignStats* s = stats ? &(*stats)[v] : nullptr;
      out.push_back(mira_cpu(host[v], tau_t, beta, iters, comm, s, exact).to(views[v].device()));
    }
    return out;
  }
  std::vector<Tensor> outs;
  for (size_t v = 0; v < views.size(); ++v) outs.push_back(Tensor::empty(Shape{N, K}, DType::F32, views[v].device()));
  for (size_t v0 = 0; v0 < views.size(); v0 += cuda::kMiraMaxViews) {
    const size_t v1 = std::min(views.size(), v0 + cuda::kMiraMaxViews);
    mira_cuda_group(std::vector<Tensor>(views.begin() + v0, views.begin() + v1),
                    std::vector<Tensor>(outs.begin() + v0, outs.begin() + v1), tau_t, beta, iters, comm, opts);
  }
  if (stats)
    for (size_t v = 0; v < views.size(); ++v) stats_cuda(views[v], outs[v], true, tau_t, beta, comm, &(*stats)[v]);
  return outs;
}

Tensor sinkhorn_cuda(const Tensor& logits, double eps, int iters, Communicator& comm, AssignStats* stats,
                     const AssignOptions& opts) {
  const Device dev = logits.device();
  const cudaStream_t stream = cuda::CudaContext::get().stream();
  MIRA_CHECK(logits.dim(0) <= INT_MAX / 2 && logits.dim(1) <= INT_MAX / 2, "sinkhorn_assign: shape too large");
  const int N = static_cast<int>(logits.dim(0)), K = static_cast<int>(logits.dim(1));
  const bool bf16 = logits.dtype() == DType::BF16;
  const float inv_eps = static_cast<float>(1.0 / eps);
  const bool multi = comm.world_size() > 1;
  Tensor out = Tensor::empty(Shape{N, K}, DType::F32, dev);
  Tensor buf = Tensor::zeros(Shape{static_cast<int64_t>(N) + 4 * static_cast<int64_t>(K) + 1}, DType::F32, dev);
  Tensor scratch = Tensor::empty(Shape{static_cast<int64_t>(cuda::sinkhorn_scratch_bytes(N, K))}, DType::U8, dev);
  float* f = buf.data<float>();
  float* g = f + N;
  float* lse = g + K;
  float* M = lse + K;
  float* e = M + K;
  float* bad = e + K;

  // g = -(column LSE over all ranks of x + f).
  auto column_step = [&](const float* fi, float* nonfinite) {
    if (!multi) {
      cuda::sinkhorn_col_lse_cuda(logits.raw(), bf16, fi, g, nullptr, true, N, K, inv_eps, nonfinite, scratch.raw(),
                                  stream);
      return;
    }
    cuda::sinkhorn_col_lse_cuda(logits.raw(), bf16, fi, lse, M, false, N, K, inv_eps, nonfinite, scratch.raw(), stream);
    comm.allreduce_max(M, K, DType::F32, dev);
    cuda::sinkhorn_lse_shift_cuda(lse, M, e, K, stream);
    comm.allreduce_sum(e, K, DType::F32, dev);
    cuda::sinkhorn_lse_finish_cuda(M, e, g, K, stream);
  };

  column_step(nullptr, bad);
  if (opts.check_finite) {
    comm.allreduce_sum(bad, 1, DType::F32, dev);
    comm.drain();
    const float count = read_device_float(bad, dev);
    MIRA_CHECK(count == 0, "sinkhorn_assign: the logits contain NaN or Inf (", count, " values over all ranks)");
  }
  for (int it = 1; it < iters; ++it) {
    cuda::sinkhorn_row_cuda(logits.raw(), bf16, g, f, N, K, inv_eps, stream);
    column_step(f, nullptr);
  }
  cuda::sinkhorn_targets_cuda(logits.raw(), bf16, g, out.data<float>(), N, K, inv_eps, stream);
  if (stats) stats_cuda(logits, out, false, 0, 0, comm, stats);
  return out;
}

#endif  // MIRA_HAS_CUDA

}  // namespace

AssignWorkingCopy parse_assign_working_copy(const std::string& name) {
  if (name == "f32") return AssignWorkingCopy::F32;
  if (name == "bf16") return AssignWorkingCopy::BF16;
  MIRA_CHECK(name == "f16", "the assignment's working copy is f32, bf16 or f16, got '", name, "'");
  return AssignWorkingCopy::F16;
}

std::vector<Tensor> mira_assign(const std::vector<Tensor>& views, double tau_t, double beta, int iters,
                                Communicator& comm, std::vector<AssignStats>* stats, const AssignOptions& opts) {
  MIRA_CHECK(!views.empty(), "mira_assign: no views");
  for (const Tensor& v : views) {
    check_logits(v, "mira_assign");
    MIRA_CHECK(v.shape() == views[0].shape() && v.dtype() == views[0].dtype() && v.device() == views[0].device(),
               "mira_assign: views differ in shape, dtype or device (", v.str(), " vs ", views[0].str(), ")");
  }
  check_mira_args(tau_t, beta, iters);
  MIRA_CHECK(opts.exact_passes >= 0, "mira_assign: exact_passes must be >= 0, got ", opts.exact_passes);
  if (stats) stats->assign(views.size(), AssignStats{});
  if (views[0].device().is_cuda()) {
#ifdef MIRA_HAS_CUDA
    return mira_cuda(views, tau_t, beta, iters, comm, stats, opts);
#else
    MIRA_FAIL("mira_assign: CUDA tensor in a build without CUDA");
#endif
  }
  std::vector<Tensor> out;
  for (size_t v = 0; v < views.size(); ++v)
    out.push_back(mira_cpu(views[v], tau_t, beta, iters, comm, stats ? &(*stats)[v] : nullptr, opts));
  return out;
}

Tensor mira_assign(const Tensor& logits, double tau_t, double beta, int iters, Communicator& comm, AssignStats* stats,
                   const AssignOptions& opts) {
  std::vector<AssignStats> s;
  std::vector<Tensor> out =
      mira_assign(std::vector<Tensor>{logits}, tau_t, beta, iters, comm, stats ? &s : nullptr, opts);
  if (stats) *stats = std::move(s[0]);
  return out[0];
}

Tensor sinkhorn_assign(const Tensor& logits, double eps, int iters, Communicator& comm, AssignStats* stats,
                       const AssignOptions& opts) {
  check_logits(logits, "sinkhorn_assign");
  check_sinkhorn_args(eps, iters);
  if (logits.device().is_cuda()) {
#ifdef MIRA_HAS_CUDA
    return sinkhorn_cuda(logits, eps, iters, comm, stats, opts);
#else
    MIRA_FAIL("sinkhorn_assign: CUDA tensor in a build without CUDA");
#endif
  }
  (void)opts;
  return sinkhorn_cpu(logits, eps, iters, comm, stats);
}

}  // namespace mira
