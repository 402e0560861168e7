// Row-wise top-k selection for k-NN evaluation (twin of kernels/cuda/topk.cuh).
//
// Order: a total order on (value, index) pairs, larger value first, then smaller index first,
// so ties are resolved the same way on every backend and by any reference that sorts stably.
// Values are compared through an order-preserving integer key of their bits (topk_key): -0.0
// counts as +0.0, and the result never depends on how the comparison is scheduled.
//
// Streaming over column chunks: with `merge`, the k pairs already in (out_val, out_idx) of a
// row take part in the selection as candidates, so calling topk_rows on consecutive column
// chunks of a (R, N) matrix (col_offset = first column of the chunk) leaves the top-k of the
// whole row, exactly as one call on the whole row would.
#pragma once

#include <cstdint>
#include <cstring>

namespace mira::cpu {

constexpr int kTopkMaxK = 1024;  // the CUDA twin sorts its k winners in shared memory

inline uint32_t topk_key(float v) {
  v += 0.0f;  // -0.0 -> +0.0
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline uint64_t topk_key(double v) {
  v += 0.0;
  uint64_t u;
  std::memcpy(&u, &v, 8);
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// x: (R, N) values with row stride ldx. Column j of row r has index col_offset + j.
// out_val, out_idx: (R, k), each row best first. Without merge they are overwritten; with
// merge they must hold a previous result (k valid pairs per row) and are replaced by the top-k
// of their union with the row. 1 <= k <= N (+ k when merging).
template <typename T>
void topk_rows(const T* x, int64_t R, int64_t N, int64_t ldx, int64_t col_offset, int k, T* out_val, int64_t* out_idx,
               bool merge);

}  // namespace mira::cpu
