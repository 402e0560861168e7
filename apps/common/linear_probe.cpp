#include "apps/common/linear_probe.h"

#include "apps/common/eval_data.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <thread>

#include "data/augment.h"
#include "data/jpeg.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/param_store.h"
#include "engine/schedule.h"

namespace mira::apps {

namespace {

int classes_of(const std::vector<int64_t>& a, const std::vector<int64_t>& b, int given) {
  int64_t m = -1;
  for (int64_t y : a) {
    MIRA_CHECK(y >= 0, "linear probe: negative label ", y);
    m = std::max(m, y);
  }
  for (int64_t y : b) {
    MIRA_CHECK(y >= 0, "linear probe: negative label ", y);
    m = std::max(m, y);
  }
  if (given > 0) {
    MIRA_CHECK(m < given, "linear probe: label ", m, " outside the ", given, " classes");
    return given;
  }
  return static_cast<int>(m + 1);
}

Tensor one_hot(const std::vector<int64_t>& y, const std::vector<int64_t>& rows, int C, Device dev) {
  std::vector<double> v(rows.size() * C, 0.0);
  for (size_t i = 0; i < rows.size(); ++i) v[i * C + y[rows[i]]] = 1.0;
  return Tensor::from_vector(v, {static_cast<int64_t>(rows.size()), C}, DType::F32, dev);
}

// The classifier: fc.weight (C, F) ~ N(0, 0.01^2), fc.bias 0, in its own store.
struct Classifier {
  ParamStore ps;
  int w, b;
  Classifier(int F, int C, uint64_t seed, Device dev) : ps(dev, DType::F32) {
    w = ps.declare("fc.weight", {C, F});
    b = ps.declare("fc.bias", {C});
    ps.finalize();
    ps.get(w).copy_(Tensor::randn({C, F}, seed, 0.0, 0.01));
  }
  Tensor forward(const Tensor& x) { return ops::linear(x, ps.get(w), ps.get(b)); }
};

OptimConfig optim_config(const LinearProbeConfig& cfg) {
  MIRA_CHECK(cfg.optimizer == "sgd" || cfg.optimizer == "lars", "optimizer must be sgd or lars, not '", cfg.optimizer,
             "'");
  OptimConfig o;
  o.name = cfg.optimizer;
  o.momentum = cfg.momentum;
  o.weight_decay = cfg.weight_decay;
  o.eta = cfg.lars_eta;
  return o;
}

void log_epoch(const LinearProbeConfig& cfg, const EpochLog& e) {
  if (!cfg.verbose) return;
  if (e.top1 >= 0)
    std::printf("epoch %d/%d loss %.4f lr %.4g top1 %.2f top5 %.2f\n", e.epoch + 1, cfg.epochs, e.loss, e.lr, e.top1,
                e.top5);
  else
    std::printf("epoch %d/%d loss %.4f lr %.4g\n", e.epoch + 1, cfg.epochs, e.loss, e.lr);
  std::fflush(stdout);
}

}  // namespace

void topk_accuracy(const Tensor& logits_in, const std::vector<int64_t>& labels, double& top1, double& top5) {
  const Tensor logits = logits_in.is_cuda() ? logits_in.to(Device::cpu()) : logits_in;
  const std::vector<double> z = logits.to_vector();
  const int64_t N = logits.dim(0);
  const int C = static_cast<int>(logits.dim(1));
  MIRA_CHECK(static_cast<int64_t>(labels.size()) == N, "accuracy: ", N, " rows but ", labels.size(), " labels");
  int64_t c1 = 0, c5 = 0;
  std::vector<int> order(C);
  const int t5 = std::min(5, C);
  for (int64_t i = 0; i < N; ++i) {
    std::iota(order.begin(), order.end(), 0);
    const double* row = z.data() + i * C;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
    c1 += order[0] == labels[i];
    for (int j = 0; j < t5; ++j) c5 += order[j] == labels[i];
  }
  top1 = N ? 100.0 * c1 / N : 0;
  top5 = N ? 100.0 * c5 / N : 0;
}

void check_linear_probe_config(const LinearProbeConfig& cfg) {
  MIRA_CHECK(cfg.epochs >= 1, "linear probe: epochs must be >= 1");
  MIRA_CHECK(cfg.batch >= 1, "linear probe: batch must be >= 1");
  MIRA_CHECK(cfg.base_lr > 0, "linear probe: lr must be positive");
  MIRA_CHECK(cfg.backbone_base_lr >= 0, "linear probe: backbone lr must be >= 0 (0: frozen)");
  MIRA_CHECK(cfg.eval_every >= 1, "linear probe: eval_every must be >= 1");
  MIRA_CHECK(cfg.optimizer == "sgd" || cfg.optimizer == "lars", "optimizer must be sgd or lars, not '", cfg.optimizer,
             "'");
}

LinearProbeResult linear_probe_features(const Tensor& train_x, const std::vector<int64_t>& train_y,
                                        const Tensor& test_x, const std::vector<int64_t>& test_y,
                                        const LinearProbeConfig& cfg, Device device) {
  check_linear_probe_config(cfg);
  MIRA_CHECK(train_x.ndim() == 2 && test_x.ndim() == 2 && train_x.dim(1) == test_x.dim(1),
             "linear probe: features must be (N, F) with the same F, got ", train_x.str(), " and ", test_x.str());
  MIRA_CHECK(static_cast<int64_t>(train_y.size()) == train_x.dim(0), "linear probe: ", train_x.dim(0),
             " train features but ", train_y.size(), " labels");
  MIRA_CHECK(static_cast<int64_t>(test_y.size()) == test_x.dim(0), "linear probe: ", test_x.dim(0),
             " test features but ", test_y.size(), " labels");
  const int C = classes_of(train_y, test_y, cfg.num_classes);
  const int64_t N = train_x.dim(0), F = train_x.dim(1);
  const Tensor xtr = train_x.to(device, DType::F32), xte = test_x.to(device, DType::F32);
  Classifier fc(static_cast<int>(F), C, cfg.seed, device);
  Optimizer opt(fc.ps, optim_config(cfg));
  const int64_t steps = (N + cfg.batch - 1) / cfg.batch;
  LrSchedule sched;
  sched.base_lr = cfg.base_lr * cfg.batch / 256.0;
  sched.steps_per_epoch = steps;
  sched.total_steps = steps * cfg.epochs;
  data::SamplerConfig sc;
  sc.seed = cfg.seed;
  sc.drop_last = false;
  LinearProbeResult res;
  Tensor xb = Tensor::empty({std::min(cfg.batch, N), F}, DType::F32, Device::cpu());
  const Tensor xtr_host = train_x.dtype() == DType::F32 ? train_x : train_x.to(DType::F32);
  for (int e = 0; e < cfg.epochs; ++e) {
    const std::vector<int64_t> order = data::epoch_indices(N, e, sc);
    double loss_sum = 0;
    double lr = 0;
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t b0 = s * cfg.batch, b1 = std::min(N, b0 + cfg.batch);
      std::vector<int64_t> rows(order.begin() + b0, order.begin() + b1);
      // Gather on the host (features are f32 rows), then one copy to the device.
      Tensor xh = xb.slice_batch(0, b1 - b0);
      const float* src = xtr_host.data<float>();
      float* dst = xh.data<float>();
      for (size_t i = 0; i < rows.size(); ++i) std::copy(src + rows[i] * F, src + (rows[i] + 1) * F, dst + i * F);
      const Tensor x = device.is_cuda() ? xh.to(device) : xh;
      fc.ps.zero_grad();
      Tensor loss = ops::soft_cross_entropy(fc.forward(x), one_hot(train_y, rows, C, device));
      backward(loss);
      lr = sched.at(e * steps + s);
      opt.step(lr);
      loss_sum += loss.item();
    }
    EpochLog log;
    log.epoch = e;
    log.loss = loss_sum / steps;
    log.lr = lr;
    if ((e + 1) % cfg.eval_every == 0 || e + 1 == cfg.epochs) {
      NoGradGuard ng;
      topk_accuracy(fc.forward(xte), test_y, log.top1, log.top5);
      res.top1 = log.top1;
      res.top5 = log.top5;
    }
    log_epoch(cfg, log);
    res.epochs.push_back(log);
  }
  res.weight = fc.ps.get(fc.w).to(Device::cpu()).clone();
  res.bias = fc.ps.get(fc.b).to(Device::cpu()).clone();
  return res;
}

LinearProbeResult linear_probe_images(Backbone& net, const data::Dataset& train, const std::vector<int64_t>& train_idx,
                                      const data::Dataset& test, const EvalTransform& t, const LinearProbeConfig& cfg) {
  check_linear_probe_config(cfg);
  const Device device = net.device();
  const std::vector<int64_t> ytr_all = dataset_labels(train), yte = dataset_labels(test);
  const int C = classes_of(ytr_all, yte, cfg.num_classes);
  const int64_t N = static_cast<int64_t>(train_idx.size());
  MIRA_CHECK(N > 0, "linear probe: empty train set");
  const bool finetune = cfg.backbone_base_lr > 0;

  // The train view: RandomResizedCrop(S, scale (0.08, 1)) + flip, normalised as the eval view.
  int S, ow;
  if (train.in_memory())
    t.out_size(train.height(), train.width(), S, ow);
  else
    S = t.crop;
  data::ViewSpec v;
  v.size = S;
  v.scale_min = 0.08f;
  v.interp = data::Interp::Bilinear;
  v.p_jitter = 0;
  v.p_gray = 0;
  v.p_blur = 0;
  v.p_solarize = 0;
  data::MultiCropRecipe recipe;
  recipe.name = "linear_eval";
  recipe.views = {v};
  recipe.mean = t.mean;
  recipe.std = t.std;
  recipe.antialias = t.antialias;
  recipe.pad = t.pad;

  Classifier fc(net.feature_dim(), C, cfg.seed, device);
  Optimizer opt(fc.ps, optim_config(cfg));
  std::unique_ptr<Optimizer> bopt;
  if (finetune) bopt = std::make_unique<Optimizer>(net.params(), optim_config(cfg));
  const int64_t steps = (N + cfg.batch - 1) / cfg.batch;
  LrSchedule sched;
  sched.base_lr = cfg.base_lr * cfg.batch / 256.0;
  sched.steps_per_epoch = steps;
  sched.total_steps = steps * cfg.epochs;
  const double bscale = cfg.backbone_base_lr / cfg.base_lr;
  data::SamplerConfig sc;
  sc.seed = cfg.seed;
  sc.drop_last = false;
  const int threads = static_cast<int>(std::max(1u, std::min(8u, std::thread::hardware_concurrency())));

  Tensor test_feats;  // frozen backbone: computed once
  LinearProbeResult res;
  for (int e = 0; e < cfg.epochs; ++e) {
    const std::vector<int64_t> order = data::epoch_indices(N, e, sc);
    double loss_sum = 0, lr = 0;
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t b0 = s * cfg.batch, b1 = std::min(N, b0 + cfg.batch), B = b1 - b0;
      std::vector<int64_t> rows(B);
      for (int64_t i = 0; i < B; ++i) rows[i] = train_idx[order[b0 + i]];
      Tensor xh = Tensor::empty({B, S, S, 3});
      float* dst = xh.data<float>();
      std::vector<std::string> errors(threads);
      std::vector<std::thread> pool;
      for (int w = 0; w < threads; ++w) {
        pool.emplace_back([&, w] {
          try {
            data::AugScratch scratch;
            std::vector<uint8_t> rgb;
            for (int64_t i = w; i < B; i += threads) {
              const int64_t smp = rows[i];
              int H, W;
              if (train.in_memory()) {
                const size_t img = static_cast<size_t>(train.height()) * train.width() * train.channels();
                data::to_rgb_padded(train.pixels() + smp * img, train.height(), train.width(), train.channels(), t.pad,
                                    rgb);
                H = train.height() + 2 * t.pad;
                W = train.width() + 2 * t.pad;
              } else {
                const auto& folder = dynamic_cast<const data::ImageFolderDataset&>(train);
                data::Decoded d = data::decode_image_file(folder.file(smp));
                data::to_rgb_padded(d.image.pixels.data(), d.image.h, d.image.w, d.image.c, t.pad, rgb);
                H = d.image.h + 2 * t.pad;
                W = d.image.w + 2 * t.pad;
              }
              const data::ViewParams vp = data::sample_view_params(v, H, W, cfg.seed, e, smp, 0);
              data::augment_view(rgb.data(), H, W, H, W, vp, v, recipe, dst + i * S * S * 3, scratch);
            }
          } catch (const std::exception& ex) {
            errors[w] = ex.what();
          }
        });
      }
      for (auto& th : pool) th.join();
      for (const auto& err : errors) MIRA_CHECK(err.empty(), err);
      std::vector<int64_t> pos(B);
      std::iota(pos.begin(), pos.end(), 0);
      std::vector<int64_t> yb(B);
      for (int64_t i = 0; i < B; ++i) yb[i] = ytr_all[rows[i]];
      Tensor feats;
      if (finetune) {
        net.params().zero_grad();
        feats = net.net().forward(xh.to(device), true);
      } else {
        feats = net.features(xh);
      }
      fc.ps.zero_grad();
      Tensor loss = ops::soft_cross_entropy(fc.forward(feats), one_hot(yb, pos, C, device));
      backward(loss);
      lr = sched.at(e * steps + s);
      opt.step(lr);
      if (bopt) bopt->step(lr * bscale);
      loss_sum += loss.item();
    }
    EpochLog log;
    log.epoch = e;
    log.loss = loss_sum / steps;
    log.lr = lr;
    if ((e + 1) % cfg.eval_every == 0 || e + 1 == cfg.epochs) {
      if (finetune || !test_feats.defined())
        test_feats = extract_features(net, test, t, std::max<int64_t>(cfg.batch, 256), "");
      NoGradGuard ng;
      topk_accuracy(fc.forward(test_feats.to(device)), yte, log.top1, log.top5);
      res.top1 = log.top1;
      res.top5 = log.top5;
    }
    log_epoch(cfg, log);
    res.epochs.push_back(log);
  }
  res.weight = fc.ps.get(fc.w).to(Device::cpu()).clone();
  res.bias = fc.ps.get(fc.b).to(Device::cpu()).clone();
  return res;
}

TransferResult transfer_logreg(const Tensor& train_x, const std::vector<int64_t>& train_y, const Tensor& test_x,
                               const std::vector<int64_t>& test_y, const std::vector<double>& l2_grid,
                               double val_fraction, const LinearProbeConfig& cfg_in, Device device) {
  MIRA_CHECK(!l2_grid.empty(), "transfer: empty grid of L2 coefficients");
  MIRA_CHECK(val_fraction > 0 && val_fraction < 1, "transfer: held-out fraction must be in (0, 1)");
  MIRA_CHECK(static_cast<int64_t>(train_y.size()) == train_x.dim(0), "transfer: ", train_x.dim(0),
             " train features but ", train_y.size(), " labels");
  const int C = classes_of(train_y, test_y, cfg_in.num_classes);
  LinearProbeConfig cfg = cfg_in;
  cfg.num_classes = C;
  cfg.optimizer = "sgd";
  cfg.verbose = false;
  cfg.eval_every = cfg.epochs;
  const std::vector<int64_t> fit = select_subset(train_y, 1.0 - val_fraction, cfg.seed + 1, "");
  std::vector<int64_t> held;
  {
    std::vector<char> in(train_y.size(), 0);
    for (int64_t i : fit) in[i] = 1;
    for (size_t i = 0; i < in.size(); ++i)
      if (!in[i]) held.push_back(static_cast<int64_t>(i));
  }
  MIRA_CHECK(!held.empty(), "transfer: the held-out split is empty (train set too small)");
  const Tensor xf = take_rows(train_x, fit), xh = take_rows(train_x, held);
  const std::vector<int64_t> yf = take(train_y, fit), yh = take(train_y, held);
  TransferResult res;
  double best = -1;
  for (double l2 : l2_grid) {
    MIRA_CHECK(l2 >= 0, "transfer: negative L2 coefficient ", l2);
    cfg.weight_decay = l2;
    const LinearProbeResult r = linear_probe_features(xf, yf, xh, yh, cfg, device);
    res.val_top1.emplace_back(l2, r.top1);
    if (cfg_in.verbose) std::printf("transfer: l2 %g held-out top1 %.2f\n", l2, r.top1);
    if (r.top1 > best || (r.top1 == best && l2 > res.best_l2)) {
      best = r.top1;
      res.best_l2 = l2;
    }
  }
  cfg.weight_decay = res.best_l2;
  res.final_fit = linear_probe_features(train_x, train_y, test_x, test_y, cfg, device);
  if (cfg_in.verbose)
    std::printf("transfer: refit with l2 %g on all %lld train samples: top1 %.2f top5 %.2f\n", res.best_l2,
                static_cast<long long>(train_x.dim(0)), res.final_fit.top1, res.final_fit.top5);
  return res;
}

}  // namespace mira::apps
