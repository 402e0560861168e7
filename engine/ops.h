// The engine's differentiable ops. Each checks its arguments, allocates its output on the
// input's device, runs the CPU kernel (f32/f64) or the CUDA one (f32/bf16), and records its
// backward on the tape when an input requires grad (see engine/autograd.h for the rule on
// accumulation). Images are NHWC; conv weights OHWI (K, R, S, C); features (N, C).
#pragma once

#include "engine/autograd.h"
#include "engine/comm.h"
#include "engine/tensor.h"

namespace mira::ops {

// x (N, H, W, C), w (K, R, S, C) -> (N, P, Q, K)
Tensor conv2d(const Tensor& x, const Tensor& w, int stride, int pad);
// x (N, I), w (O, I), b (O) or undefined -> (N, O)
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());

struct BatchNormState {
  Tensor running_mean;  // (C), updated in training mode
  Tensor running_var;   // (C)
  int64_t num_batches_tracked = 0;
  // Synchronised BatchNorm (as torch.nn.SyncBatchNorm): with a communicator of several ranks,
  // training-mode statistics are over the batch of every rank, and so are the backward sums.
  Communicator* comm = nullptr;
  // The caller guarantees every rank normalises the same number of rows (saves a reduction).
  bool equal_rows = false;
  // Training mode: x holds `groups` batches of equal size, consecutive along its first
  // dimension, each normalised with its own statistics; the running statistics are updated once
  // per group, in order: the same as `groups` separate calls, in one op (several crops of one
  // size through one forward, each crop keeping its own batch statistics).
  int groups = 1;
};
// x (N, H, W, C) or (N, C). Training: batch statistics (biased variance in the normalisation),
// running statistics updated as PyTorch does (momentum 0.1, unbiased variance); eval: running
// statistics. gamma, beta: (C).
Tensor batch_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormState& state, bool training,
                  double momentum = 0.1, double eps = 1e-5);
// relu(batch_norm(...)) in one pass over the activations: the same values (bit for bit) and
// gradients, one memory pass less forward, and the normalised values are never stored.
Tensor batch_norm_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormState& state,
                       bool training, double momentum = 0.1, double eps = 1e-5);

Tensor relu(const Tensor& x);
Tensor add(const Tensor& a, const Tensor& b);
// relu(a + b) in one pass (a residual block's output): bit for bit the unfused values and
// gradients, and the sum is never stored.
Tensor add_relu(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double alpha);
// Max pool with window k, stride s, padding p (ResNet: 3, 2, 1). x (N, H, W, C)
Tensor max_pool2d(const Tensor& x, int k = 3, int s = 2, int p = 1);
// (N, H, W, C) -> (N, C)
Tensor global_avg_pool(const Tensor& x);
// Rows of (N, D) divided by max(||row||, eps) (torch.nn.functional.normalize).
Tensor l2_normalize(const Tensor& x, double eps = 1e-12);
// Weight-normalised linear without bias: W_k = gain * v_k / ||v_k|| (torch weight_norm, dim 0),
// gain fixed (not trained). x (N, I), v (K, I) -> (N, K) cosine similarities when gain is 1
// and x has unit rows.
Tensor wn_linear(const Tensor& x, const Tensor& v, double gain = 1.0);
// Rows of (N, K).
Tensor log_softmax(const Tensor& x);
// mean_i [ -sum_j t_ij log_softmax(z)_ij ]; targets carry no gradient. -> scalar
Tensor soft_cross_entropy(const Tensor& logits, const Tensor& targets);
Tensor sum(const Tensor& x);   // -> scalar
Tensor mean(const Tensor& x);  // -> scalar
// x converted to dtype (x itself when it already has it); the gradient flows back converted to
// x's dtype. Mixed precision: f32 parameters cast to bf16 for the convolutions and GEMMs.
Tensor cast(const Tensor& x, DType dtype);
// Autograd-aware reshape (a view of the same storage).
Tensor reshape(const Tensor& x, const Shape& shape);
// Autograd-aware x[begin:end] along the first dimension (a view of the same storage); the
// gradient goes to those samples of x (the others get 0 from it).
Tensor slice_batch(const Tensor& x, int64_t begin, int64_t end);

}  // namespace mira::ops
