#include "models/mira_trainer.h"

#include <algorithm>
#include <cmath>

#include "engine/ops.h"
#include "engine/profile.h"
#include "models/mira_loss.h"

namespace mira::models {

MiraTrainer::MiraTrainer(MiraModel& model, const OptimConfig& optim, const MiraStepConfig& cfg, Communicator& comm)
    : model_(model), optimizer_(model.student(), optim), cfg_(cfg), comm_(comm) {
  model_.set_comm(&comm_, /*equal_rows=*/true);  // checked at every step
  if (comm_.world_size() > 1)
    grad_sync_ = std::make_unique<GradSync>(model_.student(), comm_, cfg_.bucket_bytes, cfg_.first_bucket_bytes);
}

namespace {

// The tensors (no gradient: the crops) one after the other along the first dimension.
Tensor concat_batch(const std::vector<Tensor>& parts) {
  Shape shape = parts.at(0).shape();
  int64_t n = 0;
  for (const Tensor& p : parts) n += p.dim(0);
  shape[0] = n;
  Tensor out = Tensor::empty(shape, parts[0].dtype(), parts[0].device());
  int64_t at = 0;
  for (const Tensor& p : parts) {
    out.slice_batch(at, at + p.dim(0)).copy_(p);
    at += p.dim(0);
  }
  return out;
}

// Prototypes that are the argmax of at least one row, over all ranks.
int count_clusters(const Tensor& targets, Communicator& comm) {
  const int64_t N = targets.dim(0), K = targets.dim(1);
  std::vector<double> t = targets.to_vector();
  std::vector<double> used(static_cast<size_t>(K), 0.0);
  for (int64_t i = 0; i < N; ++i) {
    int64_t best = 0;
    for (int64_t j = 1; j < K; ++j)
      if (t[i * K + j] > t[i * K + best]) best = j;
    used[best] = 1.0;
  }
  comm.allreduce_max(used.data(), K);
  int n = 0;
  for (double u : used) n += u > 0;
  return n;
}

}  // namespace

void check_finite(const ParamStore& ps, bool grads) {
  const Tensor flat = grads ? ps.flat_grads() : ps.flat_params();
  double total;
  {
    NoGradGuard ng;
    total = ops::sum(flat).item();
  }
  if (std::isfinite(total)) return;
  const std::vector<double> v = flat.to_vector();
  for (const ParamStore::Entry& e : ps.entries()) {
    if (e.kind != ParamStore::Kind::Param) continue;
    for (int64_t i = 0; i < e.shape.numel(); ++i) {
      const double x = v[static_cast<size_t>(e.offset + i)];
      if (!std::isfinite(x)) {
        MIRA_FAIL(grads ? "non-finite gradient " : "non-finite parameter after the update ", x, " in '", e.name,
                  "' (element ", i, ")", grads ? "" : ": the learning rate is too large for this run");
      }
    }
  }
  MIRA_FAIL(grads ? "the gradients" : "the parameters", " sum to ", total, " (overflow)");
}

MiraStepStats MiraTrainer::step(const std::vector<Tensor>& views, const MiraStepSchedule& s, bool full_stats) {
  MIRA_CHECK(views.size() >= 2, "a MIRA step needs at least the two global crops, got ", views.size());
  if (comm_.world_size() > 1) {
    // SyncBN counts a layer's rows as local rows x world, and group_crops makes one collective
    // per crop of a group: every rank must hold the same batch of every crop, at the same size.
    std::vector<double> dims;  // per crop: max and -min over ranks of N, H, W
    for (const Tensor& v : views) {
      for (int d = 0; d < 3; ++d) {
        const double x = v.ndim() > d ? static_cast<double>(v.dim(d)) : 1.0;
        dims.push_back(x);
        dims.push_back(-x);
      }
    }
    comm_.allreduce_max(dims.data(), static_cast<int64_t>(dims.size()));
    for (size_t i = 0; i < views.size(); ++i)
      for (size_t d = 0; d < 3; ++d) {
        const size_t k = 6 * i + 2 * d;
        MIRA_CHECK(dims[k] == -dims[k + 1], "crop ", i, " has ", d == 0 ? "a batch" : d == 1 ? "a height" : "a width",
                   " of ", -dims[k + 1], " to ", dims[k],
                   " on different ranks: data parallel training needs the same per-rank batch and crop size on "
                   "every rank");
      }
  }
  if (s.freeze_prototypes != frozen_) {
    optimizer_.set_frozen("prototypes.", s.freeze_prototypes);
    frozen_ = s.freeze_prototypes;
  }
  const Device dev = views[0].device();
  std::vector<Tensor> teacher, targets, student;
  std::vector<AssignStats> astats;
  {
    prof::Scope phase("step/1 ema update", dev);
    model_.ema_update(s.ema_momentum);
  }
  {
    prof::Scope phase("step/2 teacher forward", dev);
    if (cfg_.group_crops && views[0].shape() == views[1].shape()) {
      const int64_t B = views[0].dim(0);
      const Tensor t = model_.teacher_logits(concat_batch({views[0], views[1]}), 2);
      teacher = {t.slice_batch(0, B), t.slice_batch(B, 2 * B)};
    } else {
      teacher = {model_.teacher_logits(views[0]), model_.teacher_logits(views[1])};
    }
  }
  {
    prof::Scope phase("step/3 assignment", dev);
    // Statistics cost extra passes (and a device sync on CUDA): only on logged steps.
    targets = mira_assign(teacher, cfg_.tau_t, s.beta, cfg_.iters, comm_, full_stats ? &astats : nullptr, cfg_.assign);
  }
  Tensor loss;
  {
    prof::Scope phase("step/4 student forward + loss", dev);
    student.reserve(views.size());
    for (size_t i = 0; i < views.size();) {
      size_t j = i + 1;  // [i, j): a run of crops of one shape, grouped when asked
      while (cfg_.group_crops && j < views.size() && views[j].shape() == views[i].shape()) ++j;
      if (j - i == 1) {
        student.push_back(model_.student_logits(views[i]));
      } else {
        const Tensor l = model_.student_logits(
            concat_batch(std::vector<Tensor>(views.begin() + static_cast<std::ptrdiff_t>(i),
                                             views.begin() + static_cast<std::ptrdiff_t>(j))),
            static_cast<int>(j - i));
        const int64_t B = views[i].dim(0);
        for (size_t k = 0; k < j - i; ++k)
          student.push_back(ops::slice_batch(l, static_cast<int64_t>(k) * B, static_cast<int64_t>(k + 1) * B));
      }
      i = j;
    }
    loss = mira_loss(student, targets[0], targets[1], cfg_.tau_s);
  }

  // The loss is a local mean; the reported loss and the gradients are averaged over ranks.
  comm_.drain();  // device reductions so far (SyncBN, MIRA) completed, or a peer's failure reported
  double loss_sum = loss.item();
  comm_.allreduce_sum(&loss_sum, 1);
  const int world = comm_.world_size();
  MiraStepStats st;
  st.loss = loss_sum / world;
  if (!std::isfinite(st.loss)) {
    clear_tape();
    MIRA_FAIL("the loss is ", st.loss, ": training diverged (parameters left at the previous step)");
  }
  {
    prof::Scope phase("step/5 backward", dev);
    model_.student().zero_grad();
    if (grad_sync_) {
      grad_sync_->begin();
      backward(loss, Tensor(), grad_sync_->hook());
      grad_sync_->finish();  // the mean over ranks
    } else {
      backward(loss);
    }
  }
  {
    prof::Scope phase("step/6 optimiser + finite checks", dev);
    check_finite(model_.student(), true);
    optimizer_.step(s.lr);
    check_finite(model_.student(), false);
  }

  if (full_stats) {
    st.target_entropy = 0.5 * (astats[0].target_entropy + astats[1].target_entropy);
    st.marginal_entropy = 0.5 * (astats[0].marginal_entropy + astats[1].marginal_entropy);
    st.kkt_residual = std::max(astats[0].kkt_residual, astats[1].kkt_residual);
    st.clusters_in_use = count_clusters(targets[0], comm_);
  }
  return st;
}

}  // namespace mira::models
