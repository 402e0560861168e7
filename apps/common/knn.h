// Weighted k-NN classification, DINO's protocol (eval_knn.py): features L2-normalised, cosine
// similarity to every train feature, the k most similar train features vote for their class
// with weight exp(sim / T) (T = 0.07), class score = sum of weights; classes ranked by score.
//
// Tie rules (DINO leaves them to torch.topk / torch.sort): among equal similarities the lower
// train index is the nearer neighbour; among equal class scores (zero scores included) the
// lower class index ranks first, as a stable descending sort. top-5 counts a hit among the
// first min(5, k, classes) ranks, as DINO's `narrow(1, 0, min(5, k))`.
//
// Memory: the similarity matrix is never formed whole. Test rows go in blocks, train rows in
// chunks; each (block x chunk) similarity tile is one GEMM (OpenBLAS on the CPU, cuBLAS f32
// without TF32 on the GPU) followed by a top-k that merges into the block's running top-k
// (kernels/cpu/topk.h, kernels/cuda/topk.cuh), so any chunking gives the same neighbours.
// Voting runs on the host in double.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace mira::apps {

struct KnnConfig {
  std::vector<int> ks{20};
  double temperature = 0.07;
  int num_classes = 0;                    // 0: 1 + the largest label
  int64_t test_block = 0;                 // test rows per tile (0: from the memory budget)
  int64_t train_chunk = 0;                // train rows per tile (0: min(all, 131072))
  size_t tile_bytes = size_t(512) << 20;  // similarity tile budget when test_block is 0
};

// Throws mira::Error for a config knn_classify would refuse whatever the data (no k, k < 1,
// temperature not positive, negative tile sizes): apps call it before extracting features.
void check_knn_config(const KnnConfig& cfg);

struct KnnScore {
  int k = 0;
  double top1 = 0, top5 = 0;  // percent
  int64_t correct1 = 0, correct5 = 0;
};

struct KnnResult {
  std::vector<KnnScore> scores;                 // one per k, in KnnConfig::ks order
  std::vector<std::vector<int32_t>> predicted;  // per k: top-1 class of every test row
  int64_t n_test = 0, n_train = 0;
  int num_classes = 0;
};

// Neighbours only: for every test row its kmax most similar train rows, best first.
// train (Ntr, D), test (Nte, D): f32 on the CPU or one CUDA device, or f64 on the CPU;
// normalised here. sims, idx: (Nte * kmax) on the host.
void knn_neighbours(const Tensor& train, const Tensor& test, int kmax, const KnnConfig& cfg, std::vector<double>& sims,
                    std::vector<int64_t>& idx);

// Class scores and ranking for every k from the neighbours (host only).
KnnResult knn_vote(const std::vector<double>& sims, const std::vector<int64_t>& idx, int kmax,
                   const std::vector<int64_t>& train_labels, const std::vector<int64_t>& test_labels,
                   const KnnConfig& cfg);

// knn_neighbours + knn_vote, with the argument checks (label counts, label range, k).
KnnResult knn_classify(const Tensor& train, const std::vector<int64_t>& train_labels, const Tensor& test,
                       const std::vector<int64_t>& test_labels, const KnnConfig& cfg);

// "k=20 top1 85.71 top5 99.12" lines.
std::string knn_summary(const KnnResult& r);

}  // namespace mira::apps
