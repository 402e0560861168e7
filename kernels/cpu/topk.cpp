// One bounded heap per row: the first k candidates fill it, after which a candidate costs one
// comparison against the current worst unless it enters. Rows are independent (blocks of them
// run on the CPU thread pool).
#include "kernels/cpu/topk.h"

#include <algorithm>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/parallel.h"

namespace mira::cpu {

namespace {
template <typename T>
struct Cand {
  decltype(topk_key(T())) key;
  int64_t idx;
  T val;
};
// a ranks before b
template <typename T>
inline bool better(const Cand<T>& a, const Cand<T>& b) {
  return a.key > b.key || (a.key == b.key && a.idx < b.idx);
}
}  // namespace

template <typename T>
void topk_rows(const T* x, int64_t R, int64_t N, int64_t ldx, int64_t col_offset, int k, T* out_val, int64_t* out_idx,
               bool merge) {
  MIRA_CHECK(k >= 1 && k <= kTopkMaxK, "topk_rows: k = ", k, " outside [1, ", kTopkMaxK, "]");
  MIRA_CHECK(N + (merge ? k : 0) >= k, "topk_rows: k = ", k, " exceeds the ", N, " candidates of a row");
  auto cmp = [](const Cand<T>& a, const Cand<T>& b) { return better(a, b); };  // front = worst
  // Rows in blocks of 16 on the thread pool (each row by itself: the same bits).
  parallel_chunks(R, 16, [&](int64_t, int64_t r0, int64_t r1) {
    std::vector<Cand<T>> heap;
    heap.reserve(k);
    for (int64_t r = r0; r < r1; ++r) {
      heap.clear();
      auto offer = [&](T v, int64_t idx) {
        Cand<T> c{topk_key(v), idx, v};
        if (static_cast<int>(heap.size()) < k) {
          heap.push_back(c);
          if (static_cast<int>(heap.size()) == k) std::make_heap(heap.begin(), heap.end(), cmp);
        } else if (better(c, heap.front())) {
          std::pop_heap(heap.begin(), heap.end(), cmp);
          heap.back() = c;
          std::push_heap(heap.begin(), heap.end(), cmp);
        }
      };
      T* ov = out_val + r * k;
      int64_t* oi = out_idx + r * k;
      if (merge)
        for (int j = 0; j < k; ++j) offer(ov[j], oi[j]);
      const T* row = x + r * ldx;
      for (int64_t j = 0; j < N; ++j) offer(row[j], col_offset + j);
      std::sort(heap.begin(), heap.end(), cmp);
      for (int j = 0; j < k; ++j) {
        ov[j] = heap[j].val;
        oi[j] = heap[j].idx;
      }
    }
  });
}

template void topk_rows<float>(const float*, int64_t, int64_t, int64_t, int64_t, int, float*, int64_t*, bool);
template void topk_rows<double>(const double*, int64_t, int64_t, int64_t, int64_t, int, double*, int64_t*, bool);

}  // namespace mira::cpu
