// Device-agnostic op layer: validation, output allocation, dispatch, autograd recording.
// Backward closures capture what they need by value (tensors are refcounted handles) and add
// into their inputs' gradient slots; see engine/autograd.h for the accumulation rule.
#include "engine/ops.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/cuda_ops.h"
#include "engine/profile.h"
#include "kernels/cpu/conv.h"
#include "kernels/cpu/nn.h"
#include "kernels/cpu/pointwise.h"

#ifdef MIRA_HAS_CUDA
#define MIRA_ON_CUDA(call) call
#else
#define MIRA_ON_CUDA(call) MIRA_FAIL("this build has no CUDA backend")
#endif

// Runs `body` with T = float or double for a CPU tensor of that dtype.
#define MIRA_CPU_FLOAT(dtype, what, ...)                                                  \
  do {                                                                                    \
    if ((dtype) == ::mira::DType::F32) {                                                  \
      using T = float;                                                                    \
      __VA_ARGS__;                                                                        \
    } else if ((dtype) == ::mira::DType::F64) {                                           \
      using T = double;                                                                   \
      __VA_ARGS__;                                                                        \
    } else {                                                                              \
      MIRA_FAIL(what, ": CPU tensors must be f32 or f64, got ", ::mira::dtype_name(dtype)); \
    }                                                                                     \
  } while (0)

namespace mira::ops {

namespace {

void check_same(const Tensor& a, const Tensor& b, const char* op) {
  MIRA_CHECK(a.defined() && b.defined(), op, ": undefined input");
  MIRA_CHECK(a.device() == b.device(), op, ": inputs on ", a.device().str(), " and ", b.device().str());
  MIRA_CHECK(a.dtype() == b.dtype(), op, ": inputs of dtype ", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()));
}

void check_float(const Tensor& x, const char* op) {
  MIRA_CHECK(x.defined(), op, ": undefined input");
  MIRA_CHECK(dtype_is_float(x.dtype()), op, ": needs a floating-point tensor, got ", x.str());
}

// Rows x channels view of an NHWC image or (N, C) features.
int64_t rows_of(const Tensor& x) { return x.numel() / x.dim(-1); }

// SyncBN's forward: the statistics of every rank's rows for each of G groups (per-group mean
// and biased variance over M local rows each, in place), from one all-reduce of 2 C G sums (in
// f64, on the statistics' device: no device-to-host copy, so no device sync on the GPU; one
// collective per call, not per group). The row count over all ranks is M * world when the
// caller vouches that every rank normalises the same number of rows (the trainer checks it once
// per step), else one host scalar reduction.
double sync_bn_stats(std::vector<Tensor>& means, std::vector<Tensor>& vars, int64_t M, Communicator& comm,
                     bool equal_rows) {
  const int G = static_cast<int>(means.size());
  const int C = static_cast<int>(means[0].numel());
  double count = static_cast<double>(M);
  if (equal_rows)
    count *= comm.world_size();
  else
    comm.allreduce_sum(&count, 1);
  const int64_t n = 2 * static_cast<int64_t>(C) * G;
  if (means[0].is_cuda()) {
    Tensor sums = Tensor::empty({n * static_cast<int64_t>(sizeof(double))}, DType::U8, means[0].device());
    [[maybe_unused]] double* base = static_cast<double*>(sums.raw());  // used on CUDA builds
    for (int g = 0; g < G; ++g) MIRA_ON_CUDA(cuda::bn_pack_sums(means[g], vars[g], double(M), base + 2 * C * g));
    comm.allreduce_sum(sums.raw(), n, DType::F64, means[0].device());
    for (int g = 0; g < G; ++g) MIRA_ON_CUDA(cuda::bn_unpack_sums(base + 2 * C * g, count, means[g], vars[g]));
  } else {
    Tensor sums = Tensor::empty({n}, DType::F64);
    double* base = sums.data<double>();
    for (int g = 0; g < G; ++g)
      MIRA_CPU_FLOAT(means[g].dtype(), "batch_norm",
                     cpu::bn_pack_sums<T>(means[g].data<T>(), vars[g].data<T>(), double(M), C, base + 2 * C * g));
    comm.allreduce_sum(sums);
    for (int g = 0; g < G; ++g)
      MIRA_CPU_FLOAT(means[g].dtype(), "batch_norm",
                     cpu::bn_unpack_sums<T>(base + 2 * C * g, count, C, means[g].data<T>(), vars[g].data<T>()));
  }
  return count;
}

std::string conv_profile_name(const char* what, const ConvShape& s, DType t) {
  return detail::concat(what, " ", s.R, "x", s.S, "/", s.stride, " ", s.C, ">", s.K, " ", s.H, "px N", s.N, " ",
                        dtype_name(t));
}

// "batch_norm fwd 56px C64 N64 bf16" (images) or "batch_norm fwd rows 128 C2048 f32".
std::string bn_profile_name(const char* what, const Tensor& x) {
  if (x.ndim() == 4)
    return detail::concat(what, " ", x.dim(1), "px C", x.dim(3), " N", x.dim(0), " ", dtype_name(x.dtype()));
  return detail::concat(what, " rows ", x.numel() / std::max<int64_t>(x.dim(-1), 1), " C", x.dim(-1), " ",
                        dtype_name(x.dtype()));
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& w, int stride, int pad) {
  check_same(x, w, "conv2d");
  check_float(x, "conv2d");
  MIRA_CHECK(x.ndim() == 4 && w.ndim() == 4, "conv2d: x must be (N, H, W, C) and w (K, R, S, C), got ", x.str(),
             " and ", w.str());
  MIRA_CHECK(x.dim(3) == w.dim(3), "conv2d: input has ", x.dim(3), " channels, filters expect ", w.dim(3));
  MIRA_CHECK(stride >= 1 && pad >= 0, "conv2d: stride ", stride, " pad ", pad);
  const ConvShape s = ConvShape::make(int(x.dim(0)), int(x.dim(1)), int(x.dim(2)), int(x.dim(3)), int(w.dim(0)),
                                      int(w.dim(1)), int(w.dim(2)), stride, pad);
  MIRA_CHECK(s.P > 0 && s.Q > 0, "conv2d: ", x.str(), " is too small for a ", s.R, "x", s.S, " filter");
  Tensor y = Tensor::empty({s.N, s.P, s.Q, s.K}, x.dtype(), x.device());
  prof::Scope scope([&] { return conv_profile_name("conv2d fwd", s, x.dtype()); }, x.device());
  if (x.is_cuda()) {
    MIRA_ON_CUDA(cuda::conv2d_fwd(s, x, w, y));
  } else {
    MIRA_CPU_FLOAT(x.dtype(), "conv2d", {
      Tensor ws = Tensor::empty({cpu::conv2d_workspace_elems(s)}, x.dtype());
      cpu::conv2d_fwd<T>(s, x.data<T>(), w.data<T>(), y.data<T>(), ws.data<T>());
    });
  }
  if (needs_grad({&x, &w})) {
    record("conv2d", y, {&x, &w}, [x, w, s](const Tensor& dy) {
      if (x.requires_grad()) {
        GradSlot dx = grad_slot(x);
        prof::Scope scope([&] { return conv_profile_name("conv2d bwd-data", s, x.dtype()); }, x.device());
        if (x.is_cuda()) {
          MIRA_ON_CUDA(cuda::conv2d_bwd_data(s, dy, w, dx.grad, dx.accumulate));
        } else {
          MIRA_CPU_FLOAT(x.dtype(), "conv2d", {
            Tensor ws = Tensor::empty({cpu::conv2d_workspace_elems(s)}, x.dtype());
            cpu::conv2d_bwd_data<T>(s, dy.data<T>(), w.data<T>(), dx.grad.data<T>(), ws.data<T>(), dx.accumulate);
          });
        }
      }
      if (w.requires_grad()) {
        GradSlot dw = grad_slot(w);
        prof::Scope scope([&] { return conv_profile_name("conv2d bwd-filter", s, x.dtype()); }, x.device());
        if (x.is_cuda()) {
          MIRA_ON_CUDA(cuda::conv2d_bwd_filter(s, dy, x, dw.grad, dw.accumulate));
        } else {
          MIRA_CPU_FLOAT(x.dtype(), "conv2d", {
            Tensor ws = Tensor::empty({cpu::conv2d_bwd_filter_workspace_elems(s)}, x.dtype());
            cpu::conv2d_bwd_filter<T>(s, dy.data<T>(), x.data<T>(), dw.grad.data<T>(), ws.data<T>(), dw.accumulate);
          });
        }
      }
    });
  }
  return y;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  prof::Scope prof_scope("linear", x.device());
  check_same(x, w, "linear");
  check_float(x, "linear");
  MIRA_CHECK(x.ndim() == 2 && w.ndim() == 2 && x.dim(1) == w.dim(1), "linear: x (N, I) and w (O, I) expected, got ",
             x.str(), " and ", w.str());
  if (b.defined()) {
    check_same(x, b, "linear");
    MIRA_CHECK(b.ndim() == 1 && b.dim(0) == w.dim(0), "linear: bias ", b.str(), " for ", w.dim(0), " outputs");
  }
  const int N = int(x.dim(0)), I = int(x.dim(1)), O = int(w.dim(0));
  Tensor y = Tensor::empty({N, O}, x.dtype(), x.device());
  if (x.is_cuda()) {
    MIRA_ON_CUDA(cuda::linear_fwd(x, w, b, y));
  } else {
    MIRA_CPU_FLOAT(x.dtype(), "linear", cpu::linear_fwd<T>(x.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr,
                                                          y.data<T>(), N, I, O));
  }
  if (needs_grad({&x, &w, &b})) {
    record("linear", y, {&x, &w, &b}, [x, w, b, N, I, O](const Tensor& dy) {
      if (x.requires_grad()) {
        GradSlot dx = grad_slot(x);
        if (x.is_cuda()) {
          MIRA_ON_CUDA(cuda::linear_bwd_data(dy, w, dx.grad, dx.accumulate));
        } else {
          MIRA_CPU_FLOAT(x.dtype(), "linear",
                         cpu::linear_bwd_data<T>(dy.data<T>(), w.data<T>(), dx.grad.data<T>(), N, I, O, dx.accumulate));
        }
      }
      const bool need_w = w.requires_grad(), need_b = b.defined() && b.requires_grad();
      if (!need_w && !need_b) return;
      // The kernel writes dw and db together with one accumulate flag; a side that is not
      // wanted gets a scratch buffer.
      GradSlot dw = need_w ? grad_slot(w) : GradSlot{Tensor::empty(w.shape(), w.dtype(), w.device()), false};
      GradSlot db{Tensor(), dw.accumulate};
      if (need_b) {
        db = grad_slot(b);
        if (db.accumulate != dw.accumulate) {  // rare: make both accumulate into zeroed buffers
          if (!dw.accumulate) dw.grad.zero_();
          if (!db.accumulate) db.grad.zero_();
          dw.accumulate = db.accumulate = true;
        }
      }
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::linear_bwd_weight(dy, x, dw.grad, db.grad, dw.accumulate));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "linear",
                       cpu::linear_bwd_weight<T>(dy.data<T>(), x.data<T>(), dw.grad.data<T>(),
                                                 db.grad.defined() ? db.grad.data<T>() : nullptr, N, I, O, dw.accumulate));
      }
    });
  }
  return y;
}

namespace {

Tensor batch_norm_impl(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormState& st, bool training,
                       double momentum, double eps, bool relu);

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormState& st, bool training,
                  double momentum, double eps) {
  return batch_norm_impl(x, gamma, beta, st, training, momentum, eps, false);
}

Tensor batch_norm_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormState& st, bool training,
                       double momentum, double eps) {
  return batch_norm_impl(x, gamma, beta, st, training, momentum, eps, true);
}

namespace {

Tensor batch_norm_impl(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormState& st, bool training,
                       double momentum, double eps, bool relu) {
  prof::Scope prof_scope([&] { return bn_profile_name("batch_norm fwd", x); }, x.device());
  check_float(x, "batch_norm");
  check_same(gamma, beta, "batch_norm");
  if (!x.is_cuda() && x.dtype() != gamma.dtype()) {
    // Mixed precision on the CPU (f32 activations under f64 parameters): the CPU kernels take
    // one dtype, so normalise a copy in the parameters' dtype, as the CUDA kernels compute the
    // statistics of bf16 activations in f32.
    return cast(batch_norm_impl(cast(x, gamma.dtype()), gamma, beta, st, training, momentum, eps, relu), x.dtype());
  }
  MIRA_CHECK(x.ndim() == 2 || x.ndim() == 4, "batch_norm: x must be (N, C) or (N, H, W, C), got ", x.str());
  const int C = int(x.dim(-1));
  const int G = training ? st.groups : 1;
  MIRA_CHECK(G >= 1 && x.dim(0) % G == 0, "batch_norm: ", x.dim(0), " samples do not split into ", st.groups,
             " equal groups");
  const int64_t n = x.dim(0) / G;  // samples per group
  const int64_t M = rows_of(x) / G;  // rows per group
  MIRA_CHECK(gamma.numel() == C && beta.numel() == C, "batch_norm: gamma/beta of ", gamma.numel(), " for ", C,
             " channels");
  MIRA_CHECK(st.running_mean.defined() && st.running_var.defined() && st.running_mean.numel() == C &&
                 st.running_var.numel() == C,
             "batch_norm: running statistics must be (", C, ")");
  MIRA_CHECK(!training || M > 1, "batch_norm: training mode needs more than one value per channel",
             G > 1 ? " and group" : "", ", got ", x.str());
  const Device dev = x.device();
  // Statistics are in the parameters' dtype: f32 on CUDA (also for bf16 x), T on the CPU.
  const DType st_t = gamma.dtype();
  MIRA_CHECK(st.running_mean.dtype() == st_t && st.running_mean.device() == dev, "batch_norm: running statistics ",
             st.running_mean.str(), " do not match gamma ", gamma.str());
  // Group g's samples [g n, (g + 1) n) of a tensor shaped like x (the tensor itself for one group).
  auto part = [G, n](const Tensor& t, int g) { return G == 1 ? t : t.slice_batch(g * n, (g + 1) * n); };
  Communicator* comm = (st.comm && st.comm->world_size() > 1) ? st.comm : nullptr;
  std::vector<Tensor> means(G), vars(G), invstds(G);
  std::vector<double> counts(G, double(M));  // rows over all ranks
  Tensor y = Tensor::empty(x.shape(), x.dtype(), dev);
  Tensor none;
  if (training) {
    // Each group's statistics, then (SyncBN) one collective for all of them.
    for (int g = 0; g < G; ++g) {
      const Tensor xg = part(x, g);
      means[g] = Tensor::empty({C}, st_t, dev);
      vars[g] = Tensor::empty({C}, st_t, dev);
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::bn_stats(xg, means[g], vars[g]));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "batch_norm",
                       cpu::bn_stats<T>(xg.data<T>(), M, C, means[g].data<T>(), vars[g].data<T>()));
      }
    }
    if (comm) std::fill(counts.begin(), counts.end(), sync_bn_stats(means, vars, M, *comm, st.equal_rows));
  }
  for (int g = 0; g < G; ++g) {
    const Tensor xg = part(x, g);
    Tensor yg = part(y, g);
    Tensor& mean = means[g];
    Tensor invstd = Tensor::empty({C}, st_t, dev);
    if (training) {
      if (x.is_cuda()) {
        MIRA_ON_CUDA(
            cuda::bn_finalize(mean, vars[g], invstd, st.running_mean, st.running_var, momentum, eps, counts[g]));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "batch_norm",
                       cpu::bn_finalize<T>(mean.data<T>(), vars[g].data<T>(), invstd.data<T>(),
                                           st.running_mean.data<T>(), st.running_var.data<T>(), C, momentum, eps,
                                           counts[g]));
      }
      ++st.num_batches_tracked;
    } else {
      mean = st.running_mean.clone();
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::bn_finalize(st.running_mean, st.running_var, invstd, none, none, momentum, eps, double(M)));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "batch_norm",
                       cpu::bn_finalize<T>(st.running_mean.data<T>(), st.running_var.data<T>(), invstd.data<T>(),
                                           nullptr, nullptr, C, momentum, eps, double(M)));
      }
    }
    if (x.is_cuda()) {
      MIRA_ON_CUDA(cuda::bn_fwd_apply(xg, mean, invstd, gamma, beta, yg, relu));
    } else {
      MIRA_CPU_FLOAT(x.dtype(), "batch_norm",
                     cpu::bn_fwd_apply<T>(xg.data<T>(), mean.data<T>(), invstd.data<T>(), gamma.data<T>(),
                                          beta.data<T>(), yg.data<T>(), M, C, relu));
    }
    invstds[g] = invstd;
  }
  if (needs_grad({&x, &gamma, &beta})) {
    // With the ReLU fused, the node keeps its output (for the mask) instead of the normalised
    // values an unfused ReLU would have kept: one activation less alive until backward.
    const Tensor yd = relu ? y.detach() : Tensor();
    record(relu ? "batch_norm_relu" : "batch_norm", y, {&x, &gamma, &beta},
           [x, gamma, beta, means, invstds, training, M, C, comm, counts, yd, part, G](const Tensor& dy_all) {
      prof::Scope prof_scope([&] { return bn_profile_name("batch_norm bwd", x); }, x.device());
      // With the fused ReLU, the backward passes read dy_out only where the output yd is > 0
      // (no masked copy); the CPU kernels mask with a bitwise AND that vectorises (the select
      // they had once stayed scalar and made a masked copy first the faster choice).
      const Device dev = x.device();
      GradSlot dx{}, dgamma{}, dbeta{};
      if (x.requires_grad()) dx = grad_slot(x);
      if (gamma.requires_grad()) dgamma = grad_slot(gamma);
      if (beta.requires_grad()) dbeta = grad_slot(beta);
      // Every group's two sums in one buffer (group g: sum_dy at [2 C g, 2 C g + C), then
      // sum_dy_xhat), so SyncBN reduces all of them in one collective.
      Tensor sums = Tensor::empty({2 * C * static_cast<int64_t>(G)}, gamma.dtype(), dev);
      auto sum_part = [C](const Tensor& t, int g, int k) { return t.slice_batch((2 * g + k) * C, (2 * g + k + 1) * C); };
      // The fused ReLU's output per group (undefined without the ReLU).
      std::vector<Tensor> ry(G);
      if (yd.defined())
        for (int g = 0; g < G; ++g) ry[g] = part(yd, g);
      for (int g = 0; g < G; ++g) {
        const Tensor dy = part(dy_all, g), xg = part(x, g);
        Tensor sum_dy = sum_part(sums, g, 0), sum_dy_xhat = sum_part(sums, g, 1);
        if (x.is_cuda()) {
          MIRA_ON_CUDA(cuda::bn_bwd_reduce(dy, xg, means[g], invstds[g], sum_dy, sum_dy_xhat, ry[g]));
        } else {
          MIRA_CPU_FLOAT(x.dtype(), "batch_norm",
                         cpu::bn_bwd_reduce<T>(dy.data<T>(), xg.data<T>(), means[g].data<T>(), invstds[g].data<T>(),
                                               M, C, sum_dy.data<T>(), sum_dy_xhat.data<T>(),
                                               ry[g].defined() ? ry[g].data<T>() : nullptr));
        }
      }
      // SyncBN: the input gradient needs the sums over every rank's rows. The parameter
      // gradients stay local: the trainer averages every gradient over ranks afterwards.
      Tensor local = sums;
      if (comm && training) {
        local = sums.clone();
        comm->allreduce_sum(sums);
      }
      for (int g = 0; g < G; ++g) {
        const Tensor dy = part(dy_all, g), xg = part(x, g);
        const Tensor& mean = means[g];
        const Tensor& invstd = invstds[g];
        const Tensor sum_dy = sum_part(sums, g, 0), sum_dy_xhat = sum_part(sums, g, 1);
        const Tensor local_sum_dy = sum_part(local, g, 0), local_sum_dy_xhat = sum_part(local, g, 1);
        if (x.requires_grad()) {
          // The groups' rows are disjoint: each writes (or adds to) its own part of dx.
          Tensor dxg = part(dx.grad, g);
          Tensor none;
          const Tensor& a = training ? sum_dy : none;
          const Tensor& b = training ? sum_dy_xhat : none;
          if (x.is_cuda()) {
            MIRA_ON_CUDA(cuda::bn_bwd_apply(dy, xg, mean, invstd, gamma, a, b, counts[g], dxg, dx.accumulate, ry[g]));
          } else {
            MIRA_CPU_FLOAT(x.dtype(), "batch_norm",
                           cpu::bn_bwd_apply<T>(dy.data<T>(), xg.data<T>(), mean.data<T>(), invstd.data<T>(),
                                                gamma.data<T>(), a.defined() ? a.data<T>() : nullptr,
                                                b.defined() ? b.data<T>() : nullptr, counts[g], dxg.data<T>(), M, C,
                                                dx.accumulate, ry[g].defined() ? ry[g].data<T>() : nullptr));
          }
        }
        // dgamma = sum(dy * xhat), dbeta = sum(dy): already reduced above; the groups add up.
        const bool first = g == 0;
        for (auto [slot, sum] : {std::pair<GradSlot*, const Tensor*>{&dgamma, &local_sum_dy_xhat},
                                 std::pair<GradSlot*, const Tensor*>{&dbeta, &local_sum_dy}}) {
          if (!slot->grad.defined()) continue;  // the parameter needs no gradient
          if (slot->grad.is_cuda()) {
            MIRA_ON_CUDA(cuda::axpy(1.0, *sum, slot->grad, slot->accumulate || !first));
          } else {
            MIRA_CPU_FLOAT(slot->grad.dtype(), "batch_norm",
                           cpu::axpy<T>(T(1), sum->data<T>(), slot->grad.data<T>(), C, slot->accumulate || !first));
          }
        }
      }
    });
  }
  return y;
}

}  // namespace

Tensor relu(const Tensor& x) {
  prof::Scope prof_scope("relu", x.device());
  check_float(x, "relu");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.is_cuda()) {
    MIRA_ON_CUDA(cuda::relu_fwd(x, y));
  } else {
    MIRA_CPU_FLOAT(x.dtype(), "relu", cpu::relu_fwd<T>(x.data<T>(), y.data<T>(), x.numel()));
  }
  if (needs_grad({&x})) {
    Tensor yd = y.detach();
    record("relu", y, {&x}, [x, yd](const Tensor& dy) {
      GradSlot dx = grad_slot(x);
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::relu_bwd(dy, yd, dx.grad, dx.accumulate));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "relu",
                       cpu::relu_bwd<T>(dy.data<T>(), yd.data<T>(), dx.grad.data<T>(), x.numel(), dx.accumulate));
      }
    });
  }
  return y;
}

namespace {
// dst (+)= alpha * src, on either device.
void add_scaled_into(const Tensor& t, const Tensor& src, double alpha) {
  GradSlot g = grad_slot(t);
  if (t.is_cuda()) {
    MIRA_ON_CUDA(cuda::axpy(alpha, src, g.grad, g.accumulate));
  } else {
    MIRA_CPU_FLOAT(t.dtype(), "grad", cpu::axpy<T>(T(alpha), src.data<T>(), g.grad.data<T>(), t.numel(), g.accumulate));
  }
}
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  prof::Scope prof_scope("add", a.device());
  check_same(a, b, "add");
  check_float(a, "add");
  MIRA_CHECK(a.shape() == b.shape(), "add: shapes ", a.shape().str(), " and ", b.shape().str());
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
  if (a.is_cuda()) {
    MIRA_ON_CUDA(cuda::add_fwd(a, b, y));
  } else {
    MIRA_CPU_FLOAT(a.dtype(), "add", cpu::add_fwd<T>(a.data<T>(), b.data<T>(), y.data<T>(), a.numel()));
  }
  if (needs_grad({&a, &b})) {
    record("add", y, {&a, &b}, [a, b](const Tensor& dy) {
      if (a.requires_grad()) add_scaled_into(a, dy, 1.0);
      if (b.requires_grad()) add_scaled_into(b, dy, 1.0);
    });
  }
  return y;
}

Tensor add_relu(const Tensor& a, const Tensor& b) {
  prof::Scope prof_scope("add_relu", a.device());
  check_same(a, b, "add_relu");
  check_float(a, "add_relu");
  MIRA_CHECK(a.shape() == b.shape(), "add_relu: shapes ", a.shape().str(), " and ", b.shape().str());
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
  if (a.is_cuda()) {
    MIRA_ON_CUDA(cuda::add_relu_fwd(a, b, y));
  } else {
    MIRA_CPU_FLOAT(a.dtype(), "add_relu", cpu::add_relu_fwd<T>(a.data<T>(), b.data<T>(), y.data<T>(), a.numel()));
  }
  if (needs_grad({&a, &b})) {
    const Tensor yd = y.detach();
    record("add_relu", y, {&a, &b}, [a, b, yd](const Tensor& dy) {
      // The mask applied while writing each gradient: two passes over dy and y, no masked
      // temporary (same bits as masking first and adding).
      for (const Tensor* t : {&a, &b}) {
        if (!t->requires_grad()) continue;
        GradSlot g = grad_slot(*t);
        if (dy.is_cuda()) {
          MIRA_ON_CUDA(cuda::relu_bwd(dy, yd, g.grad, g.accumulate));
        } else {
          MIRA_CPU_FLOAT(dy.dtype(), "add_relu",
                         cpu::relu_bwd<T>(dy.data<T>(), yd.data<T>(), g.grad.data<T>(), dy.numel(), g.accumulate));
        }
      }
    });
  }
  return y;
}

Tensor scale(const Tensor& x, double alpha) {
  prof::Scope prof_scope("scale", x.device());
  check_float(x, "scale");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.is_cuda()) {
    MIRA_ON_CUDA(cuda::axpy(alpha, x, y, false));
  } else {
    MIRA_CPU_FLOAT(x.dtype(), "scale", cpu::axpy<T>(T(alpha), x.data<T>(), y.data<T>(), x.numel(), false));
  }
  if (needs_grad({&x})) {
    record("scale", y, {&x}, [x, alpha](const Tensor& dy) { add_scaled_into(x, dy, alpha); });
  }
  return y;
}

Tensor max_pool2d(const Tensor& x, int k, int s, int p) {
  prof::Scope prof_scope("max_pool2d", x.device());
  check_float(x, "max_pool2d");
  MIRA_CHECK(x.ndim() == 4, "max_pool2d: x must be (N, H, W, C), got ", x.str());
  MIRA_CHECK(k >= 1 && s >= 1 && p >= 0 && 2 * p <= k, "max_pool2d: window ", k, " stride ", s, " pad ", p);
  const int N = int(x.dim(0)), H = int(x.dim(1)), W = int(x.dim(2)), C = int(x.dim(3));
  const int P = (H + 2 * p - k) / s + 1, Q = (W + 2 * p - k) / s + 1;
  MIRA_CHECK(P > 0 && Q > 0, "max_pool2d: ", x.str(), " is smaller than the window");
  Tensor y = Tensor::empty({N, P, Q, C}, x.dtype(), x.device());
  if (x.is_cuda()) {
    MIRA_ON_CUDA(cuda::maxpool_fwd(x, y, k, s, p));
  } else {
    MIRA_CPU_FLOAT(x.dtype(), "max_pool2d", cpu::maxpool_fwd<T>(x.data<T>(), y.data<T>(), N, H, W, C, k, s, p, P, Q));
  }
  if (needs_grad({&x})) {
    record("max_pool2d", y, {&x}, [x, k, s, p, N, H, W, C, P, Q](const Tensor& dy) {
      GradSlot dx = grad_slot(x);
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::maxpool_bwd(dy, x, dx.grad, k, s, p, dx.accumulate));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "max_pool2d",
                       cpu::maxpool_bwd<T>(dy.data<T>(), x.data<T>(), dx.grad.data<T>(), N, H, W, C, k, s, p, P, Q,
                                           dx.accumulate));
      }
    });
  }
  return y;
}

Tensor global_avg_pool(const Tensor& x) {
  prof::Scope prof_scope("global_avg_pool", x.device());
  check_float(x, "global_avg_pool");
  MIRA_CHECK(x.ndim() == 4, "global_avg_pool: x must be (N, H, W, C), got ", x.str());
  const int N = int(x.dim(0)), HW = int(x.dim(1) * x.dim(2)), C = int(x.dim(3));
  Tensor y = Tensor::empty({N, C}, x.dtype(), x.device());
  if (x.is_cuda()) {
    MIRA_ON_CUDA(cuda::avgpool_fwd(x, y));
  } else {
    MIRA_CPU_FLOAT(x.dtype(), "global_avg_pool", cpu::avgpool_fwd<T>(x.data<T>(), y.data<T>(), N, HW, C));
  }
  if (needs_grad({&x})) {
    record("global_avg_pool", y, {&x}, [x, N, HW, C](const Tensor& dy) {
      GradSlot dx = grad_slot(x);
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::avgpool_bwd(dy, dx.grad, dx.accumulate));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "global_avg_pool",
                       cpu::avgpool_bwd<T>(dy.data<T>(), dx.grad.data<T>(), N, HW, C, dx.accumulate));
      }
    });
  }
  return y;
}

Tensor l2_normalize(const Tensor& x, double eps) {
  prof::Scope prof_scope("l2_normalize", x.device());
  check_float(x, "l2_normalize");
  MIRA_CHECK(x.ndim() == 2, "l2_normalize: x must be (N, D), got ", x.str());
  const int N = int(x.dim(0)), D = int(x.dim(1));
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor norm = Tensor::empty({N}, x.dtype() == DType::BF16 ? DType::F32 : x.dtype(), x.device());
  if (x.is_cuda()) {
    MIRA_ON_CUDA(cuda::l2norm_fwd(x, y, norm, eps));
  } else {
    MIRA_CPU_FLOAT(x.dtype(), "l2_normalize", cpu::l2norm_fwd<T>(x.data<T>(), y.data<T>(), norm.data<T>(), N, D, eps));
  }
  if (needs_grad({&x})) {
    Tensor yd = y.detach();
    record("l2_normalize", y, {&x}, [x, yd, norm, N, D, eps](const Tensor& dy) {
      GradSlot dx = grad_slot(x);
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::l2norm_bwd(dy, yd, norm, dx.grad, eps, dx.accumulate));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "l2_normalize",
                       cpu::l2norm_bwd<T>(dy.data<T>(), yd.data<T>(), norm.data<T>(), dx.grad.data<T>(), N, D, eps,
                                          dx.accumulate));
      }
    });
  }
  return y;
}

Tensor wn_linear(const Tensor& x, const Tensor& v, double gain) {
  // torch's weight_norm divides by the plain norm; eps = 1e-12 only differs for an all-zero row.
  Tensor w = l2_normalize(v, 1e-12);
  if (gain != 1.0) w = scale(w, gain);
  return linear(x, w);
}

Tensor log_softmax(const Tensor& x) {
  prof::Scope prof_scope("log_softmax", x.device());
  check_float(x, "log_softmax");
  MIRA_CHECK(x.ndim() == 2, "log_softmax: x must be (N, K), got ", x.str());
  const int N = int(x.dim(0)), K = int(x.dim(1));
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.is_cuda()) {
    MIRA_ON_CUDA(cuda::log_softmax_fwd(x, y));
  } else {
    MIRA_CPU_FLOAT(x.dtype(), "log_softmax", cpu::log_softmax_fwd<T>(x.data<T>(), y.data<T>(), N, K));
  }
  if (needs_grad({&x})) {
    Tensor yd = y.detach();
    record("log_softmax", y, {&x}, [x, yd, N, K](const Tensor& dy) {
      GradSlot dx = grad_slot(x);
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::log_softmax_bwd(dy, yd, dx.grad, dx.accumulate));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "log_softmax",
                       cpu::log_softmax_bwd<T>(dy.data<T>(), yd.data<T>(), dx.grad.data<T>(), N, K, dx.accumulate));
      }
    });
  }
  return y;
}

Tensor soft_cross_entropy(const Tensor& z, const Tensor& t) {
  prof::Scope prof_scope("soft_cross_entropy", z.device());
  check_float(z, "soft_cross_entropy");
  MIRA_CHECK(z.ndim() == 2 && t.shape() == z.shape(), "soft_cross_entropy: logits ", z.str(), " and targets ",
             t.str(), " must both be (N, K)");
  MIRA_CHECK(z.device() == t.device(), "soft_cross_entropy: logits on ", z.device().str(), ", targets on ",
             t.device().str());
  const int N = int(z.dim(0)), K = int(z.dim(1));
  MIRA_CHECK(N > 0, "soft_cross_entropy: empty batch");
  const DType acc_t = z.dtype() == DType::BF16 ? DType::F32 : z.dtype();
  Tensor tt = t.dtype() == z.dtype() ? t.detach() : t.to(z.dtype());
  Tensor rows = Tensor::empty({N}, acc_t, z.device()), lse = Tensor::empty({N}, acc_t, z.device());
  Tensor loss = Tensor::empty({}, acc_t, z.device());
  if (z.is_cuda()) {
    MIRA_ON_CUDA(cuda::soft_ce_fwd(z, tt, rows, lse));
    MIRA_ON_CUDA(cuda::sum(rows, 1.0 / N, loss));
  } else {
    MIRA_CPU_FLOAT(z.dtype(), "soft_cross_entropy", {
      cpu::soft_ce_fwd<T>(z.data<T>(), tt.data<T>(), rows.data<T>(), lse.data<T>(), N, K);
      loss.data<T>()[0] = static_cast<T>(cpu::sum<T>(rows.data<T>(), N) / N);
    });
  }
  if (needs_grad({&z})) {
    record("soft_cross_entropy", loss, {&z}, [z, tt, lse, N, K](const Tensor& dloss) {
      GradSlot dz = grad_slot(z);
      if (z.is_cuda()) {
        MIRA_ON_CUDA(cuda::soft_ce_bwd(z, tt, lse, dloss, 1.0 / N, dz.grad, dz.accumulate));
      } else {
        MIRA_CPU_FLOAT(z.dtype(), "soft_cross_entropy",
                       cpu::soft_ce_bwd<T>(z.data<T>(), tt.data<T>(), lse.data<T>(), dloss.data<T>(), T(1) / T(N),
                                           dz.grad.data<T>(), N, K, dz.accumulate));
      }
    });
  }
  return loss;
}

namespace {
Tensor reduce_all(const Tensor& x, double alpha, const char* name) {
  check_float(x, name);
  Tensor y = Tensor::empty({}, x.dtype(), x.device());
  if (x.is_cuda()) {
    MIRA_ON_CUDA(cuda::sum(x, alpha, y));
  } else {
    MIRA_CPU_FLOAT(x.dtype(), name, y.data<T>()[0] = static_cast<T>(alpha * cpu::sum<T>(x.data<T>(), x.numel())));
  }
  if (needs_grad({&x})) {
    record(name, y, {&x}, [x, alpha, name](const Tensor& dy) {
      GradSlot dx = grad_slot(x);
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::broadcast_scalar_bwd(dy, alpha, dx.grad, dx.accumulate));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), name,
                       cpu::broadcast_scalar_bwd<T>(dy.data<T>(), T(alpha), dx.grad.data<T>(), x.numel(), dx.accumulate));
      }
    });
  }
  return y;
}
}  // namespace

Tensor sum(const Tensor& x) { return reduce_all(x, 1.0, "sum"); }

Tensor mean(const Tensor& x) {
  MIRA_CHECK(x.numel() > 0, "mean of an empty tensor");
  return reduce_all(x, 1.0 / double(x.numel()), "mean");
}

Tensor cast(const Tensor& x, DType dtype) {
  prof::Scope prof_scope("cast", x.device());
  check_float(x, "cast");
  MIRA_CHECK(dtype_is_float(dtype), "cast: to a floating-point dtype only, got ", dtype_name(dtype));
  if (x.dtype() == dtype) return x;
  Tensor y = x.detach().to(dtype);
  if (needs_grad({&x})) {
    record("cast", y, {&x}, [x](const Tensor& dy) { add_scaled_into(x, dy.to(x.dtype()), 1.0); });
  }
  return y;
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  Tensor y = x.detach().reshape(shape);
  if (needs_grad({&x})) {
    record("reshape", y, {&x}, [x](const Tensor& dy) { add_scaled_into(x, dy.reshape(x.shape()), 1.0); });
  }
  return y;
}

Tensor slice_batch(const Tensor& x, int64_t begin, int64_t end) {
  MIRA_CHECK(x.ndim() >= 1 && begin >= 0 && begin <= end && end <= x.dim(0), "slice_batch: [", begin, ", ", end,
             ") of ", x.str());
  Tensor y = x.detach().slice_batch(begin, end);
  if (needs_grad({&x})) {
    record("slice_batch", y, {&x}, [x, begin, end](const Tensor& dy) {
      GradSlot g = grad_slot(x);
      if (!g.accumulate) g.grad.zero_();  // the samples outside [begin, end) get no gradient from here
      Tensor part = g.grad.slice_batch(begin, end);
      if (x.is_cuda()) {
        MIRA_ON_CUDA(cuda::axpy(1.0, dy, part, true));
      } else {
        MIRA_CPU_FLOAT(x.dtype(), "slice_batch", cpu::axpy<T>(T(1), dy.data<T>(), part.data<T>(), dy.numel(), true));
      }
    });
  }
  return y;
}

}  // namespace mira::ops
