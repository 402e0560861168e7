#include "apps/common/knn.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "engine/cuda_backend.h"
#include "engine/ops.h"
#include "kernels/cpu/topk.h"

#ifdef MIRA_HAS_CUDA
#include "engine/cuda/context.h"
#include "kernels/cuda/topk.cuh"
#endif

namespace mira::apps {

void knn_neighbours(const Tensor& train_in, const Tensor& test_in, int kmax, const KnnConfig& cfg,
                    std::vector<double>& sims, std::vector<int64_t>& idx) {
  NoGradGuard ng;
  MIRA_CHECK(train_in.ndim() == 2 && test_in.ndim() == 2, "k-NN: features must be (N, D), got train ", train_in.str(),
             " and test ", test_in.str());
  MIRA_CHECK(train_in.dim(1) == test_in.dim(1), "k-NN: train features have ", train_in.dim(1),
             " dimensions, test features ", test_in.dim(1));
  MIRA_CHECK(train_in.dtype() == test_in.dtype() && train_in.device() == test_in.device(),
             "k-NN: train and test features differ in dtype or device: ", train_in.str(), " vs ", test_in.str());
  const DType dt = train_in.dtype();
  MIRA_CHECK(dt == DType::F32 || (dt == DType::F64 && !train_in.is_cuda()),
             "k-NN: features must be f32 (CPU or CUDA) or f64 (CPU), got ", train_in.str());
  const int64_t ntr = train_in.dim(0), nte = test_in.dim(0);
  MIRA_CHECK(kmax >= 1 && kmax <= ntr, "k-NN: k = ", kmax, " but the train set has ", ntr, " features");
  MIRA_CHECK(kmax <= cpu::kTopkMaxK, "k-NN: k = ", kmax, " above the supported ", cpu::kTopkMaxK);
  const Tensor train = ops::l2_normalize(train_in);
  const Tensor test = ops::l2_normalize(test_in);
  const Device dev = train.device();
  const size_t es = dtype_size(dt);

  // A chunk holds at least kmax rows, so the first one fills every row's top-k.
  int64_t chunk = cfg.train_chunk > 0 ? cfg.train_chunk : 131072;
  chunk = std::min(std::max<int64_t>(chunk, kmax), ntr);
  int64_t block = cfg.test_block;
  if (block <= 0) block = std::clamp<int64_t>(static_cast<int64_t>(cfg.tile_bytes / (chunk * es)), 1, 8192);
  block = std::min(block, std::max<int64_t>(nte, 1));

  sims.assign(static_cast<size_t>(nte) * kmax, 0.0);
  idx.assign(static_cast<size_t>(nte) * kmax, 0);
  Tensor vals = Tensor::empty({block, kmax}, dt, dev);
  Tensor inds = Tensor::empty({block, kmax}, DType::I64, dev);
  for (int64_t b = 0; b < nte; b += block) {
    const int64_t e = std::min(nte, b + block), rows = e - b;
    const Tensor q = test.slice_batch(b, e);
    for (int64_t c = 0; c < ntr; c += chunk) {
      const int64_t ce = std::min(ntr, c + chunk);
      const Tensor s = ops::linear(q, train.slice_batch(c, ce));  // (rows, ce - c)
      const bool merge = c > 0;
      if (dev.is_cuda()) {
#ifdef MIRA_HAS_CUDA
        gpu::topk_rows(s.data<float>(), rows, ce - c, ce - c, c, kmax, vals.data<float>(), inds.data<int64_t>(), merge,
                       cuda::CudaContext::get().stream());
#else
        MIRA_FAIL("k-NN: CUDA features in a build without CUDA");
#endif
      } else if (dt == DType::F32) {
        cpu::topk_rows(s.data<float>(), rows, ce - c, ce - c, c, kmax, vals.data<float>(), inds.data<int64_t>(), merge);
      } else {
        cpu::topk_rows(s.data<double>(), rows, ce - c, ce - c, c, kmax, vals.data<double>(), inds.data<int64_t>(),
                       merge);
      }
    }
    const std::vector<double> v = vals.slice_batch(0, rows).to_vector();
    const Tensor ih = inds.slice_batch(0, rows).to(Device::cpu());
    std::copy(v.begin(), v.end(), sims.begin() + b * kmax);
    std::copy(ih.data<int64_t>(), ih.data<int64_t>() + rows * kmax, idx.begin() + b * kmax);
  }
}

KnnResult knn_vote(const std::vector<double>& sims, const std::vector<int64_t>& idx, int kmax,
                   const std::vector<int64_t>& train_labels, const std::vector<int64_t>& test_labels,
                   const KnnConfig& cfg) {
  const int64_t nte = static_cast<int64_t>(test_labels.size());
  MIRA_CHECK(sims.size() == static_cast<size_t>(nte) * kmax && idx.size() == sims.size(),
             "k-NN vote: neighbour arrays do not match the test labels");
  const int C = cfg.num_classes;
  KnnResult r;
  r.n_test = nte;
  r.n_train = static_cast<int64_t>(train_labels.size());
  r.num_classes = C;
  std::vector<double> score(C);
  std::vector<int> order(C);
  for (int k : cfg.ks) {
    MIRA_CHECK(k >= 1 && k <= kmax, "k-NN vote: k = ", k, " outside [1, ", kmax, "]");
    KnnScore s;
    s.k = k;
    std::vector<int32_t> pred(nte);
    const int top5 = std::min({5, k, C});
    for (int64_t i = 0; i < nte; ++i) {
      std::fill(score.begin(), score.end(), 0.0);
      for (int j = 0; j < k; ++j) {
        const int64_t t = idx[i * kmax + j];
        score[train_labels[t]] += std::exp(sims[i * kmax + j] / cfg.temperature);
      }
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
      pred[i] = order[0];
      const int64_t y = test_labels[i];
      if (order[0] == y) ++s.correct1;
      for (int j = 0; j < top5; ++j)
        if (order[j] == y) ++s.correct5;
    }
    s.top1 = nte ? 100.0 * s.correct1 / nte : 0.0;
    s.top5 = nte ? 100.0 * s.correct5 / nte : 0.0;
    r.scores.push_back(s);
    r.predicted.push_back(std::move(pred));
  }
  return r;
}

KnnResult knn_classify(const Tensor& train, const std::vector<int64_t>& train_labels, const Tensor& test,
                       const std::vector<int64_t>& test_labels, const KnnConfig& cfg_in) {
  MIRA_CHECK(train.ndim() == 2 && test.ndim() == 2, "k-NN: features must be (N, D), got train ", train.str(),
             " and test ", test.str());
  MIRA_CHECK(static_cast<int64_t>(train_labels.size()) == train.dim(0), "k-NN: ", train.dim(0), " train features but ",
             train_labels.size(), " train labels");
  MIRA_CHECK(static_cast<int64_t>(test_labels.size()) == test.dim(0), "k-NN: ", test.dim(0), " test features but ",
             test_labels.size(), " test labels");
  check_knn_config(cfg_in);
  KnnConfig cfg = cfg_in;
  int64_t maxlabel = -1;
  for (int64_t y : train_labels) {
    MIRA_CHECK(y >= 0, "k-NN: negative train label ", y);
    maxlabel = std::max(maxlabel, y);
  }
  for (int64_t y : test_labels) {
    MIRA_CHECK(y >= 0, "k-NN: negative test label ", y);
    maxlabel = std::max(maxlabel, y);
  }
  if (cfg.num_classes <= 0) cfg.num_classes = static_cast<int>(maxlabel + 1);
  MIRA_CHECK(maxlabel < cfg.num_classes, "k-NN: label ", maxlabel, " outside the ", cfg.num_classes, " classes");
  const int kmax = *std::max_element(cfg.ks.begin(), cfg.ks.end());
  MIRA_CHECK(kmax <= train.dim(0), "k-NN: k = ", kmax, " but the train set has only ", train.dim(0), " features");
  std::vector<double> sims;
  std::vector<int64_t> idx;
  knn_neighbours(train, test, kmax, cfg, sims, idx);
  return knn_vote(sims, idx, kmax, train_labels, test_labels, cfg);
}

void check_knn_config(const KnnConfig& cfg) {
  MIRA_CHECK(!cfg.ks.empty(), "k-NN: no k given");
  for (int k : cfg.ks) MIRA_CHECK(k >= 1, "k-NN: k must be positive, got ", k);
  MIRA_CHECK(cfg.temperature > 0 && std::isfinite(cfg.temperature), "k-NN: temperature must be positive, got ",
             cfg.temperature);
  MIRA_CHECK(cfg.num_classes >= 0, "k-NN: num_classes must be >= 0 (0: from the labels), got ", cfg.num_classes);
  MIRA_CHECK(cfg.test_block >= 0 && cfg.train_chunk >= 0, "k-NN: tile sizes must be >= 0 (0: automatic)");
}

std::string knn_summary(const KnnResult& r) {
  std::string out;
  char buf[128];
  for (const KnnScore& s : r.scores) {
    std::snprintf(buf, sizeof buf, "k=%d top1 %.2f top5 %.2f\n", s.k, s.top1, s.top5);
    out += buf;
  }
  return out;
}

}  // namespace mira::apps
