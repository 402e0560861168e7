#include "models/mira_loss.h"

#include "engine/ops.h"

namespace mira::models {

Tensor mira_loss(const std::vector<Tensor>& q, const Tensor& t0, const Tensor& t1, double tau_s) {
  MIRA_CHECK(q.size() >= 2, "mira_loss: needs the two global views, got ", q.size(), " views");
  MIRA_CHECK(tau_s > 0, "mira_loss: tau_s must be positive, got ", tau_s);
  for (const Tensor& v : q) {
    MIRA_CHECK(v.shape() == q[0].shape(), "mira_loss: views of shapes ", q[0].shape().str(), " and ",
               v.shape().str(), " (every crop batch must have the same size)");
  }
  const Tensor* targets[2] = {&t0, &t1};
  // The official code concatenates the predicting views and takes one mean over all rows;
  // with equal batch sizes that is the mean of the per-view means, then the two targets are
  // averaged: every (target, view) pair has weight 1 / (2 (V - 1)).
  const double w = 1.0 / (2.0 * static_cast<double>(q.size() - 1));
  // Each view's logits / tau_s once, shared by the two targets it predicts.
  std::vector<Tensor> scaled;
  scaled.reserve(q.size());
  for (const Tensor& v : q) scaled.push_back(ops::scale(v, 1.0 / tau_s));
  Tensor total;
  for (int t = 0; t < 2; ++t) {
    for (size_t v = 0; v < q.size(); ++v) {
      if (static_cast<int>(v) == t) continue;
      Tensor ce = ops::soft_cross_entropy(scaled[v], *targets[t]);
      total = total.defined() ? ops::add(total, ce) : ce;
    }
  }
  return ops::scale(total, w);
}

}  // namespace mira::models
