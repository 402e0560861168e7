#include "kernels/cpu/mira_plan_model.h"

#include <algorithm>
#include <cmath>

namespace mira::plan_model {

namespace {

long long ceil_div(long long a, long long b) {
  return (a + b - 1) / b;
}

}  // namespace

// Update-pass rates measured on an H200: 8 columns per thread at 2 blocks of 384 per SM ~12.1 G
// elements/s per SM (f32 and f16 copies alike), 4 columns at 1 block of 768 ~8.7 G. Lone blocks
// wait on their own row reductions; two per SM overlap them. Rows beyond shared memory: 4
// columns per thread keep half the bytes in flight (~0.75 of the rate: 33 us per pass with 76
// MB from HBM, against 22 us for 78 MB at 8).
Shape column_shape(int cpt, int block, int Kp, int batch_rows) {
  Shape s;
  s.cpt = cpt, s.block = block, s.Kp = Kp, s.batch_rows = batch_rows;
  s.rate_1 = 8.7e9, s.rate_2 = 12.1e9;
  s.offchip = cpt >= 8 ? 1.0 : 0.75;
  return s;
}

// Not measured yet: a prediction (bench/assign_predictions.json). Per 16 x 16 tile one 16-byte
// load, two mma and four movmatrix against ~1800 instructions on the fused multiply-adds, so
// the rows should go at shared memory's and L2's pace, ~5x the default kernel's element rate.
// Rows past shared memory come as whole 512-byte tiles, 12 loads in flight per warp.
Shape mma_row_shape(int block, int Kp) {
  Shape s;
  s.cpt = Kp / block, s.block = block, s.Kp = Kp, s.batch_rows = 16, s.row_tile = 16;
  s.rate_1 = s.rate_2 = 60e9;
  s.offchip = 1.0;
  return s;
}

Choice choose(const Problem& p, const Device& d, const std::vector<Shape>& shapes, const Occupancy& occupancy) {
  auto evaluate = [&](int si, int vpg, int bps, bool use_smem) {
    const Shape& sh = shapes[static_cast<size_t>(si)];
    const long long row_bytes = static_cast<long long>(sh.Kp) * p.cache_bytes;
    Choice c;
    c.shape = si, c.vpg = vpg, c.bps = bps;
    // No more blocks than rows (or than max_bpv): idle blocks would only add to the barriers
    // and the partials.
    c.bpv = static_cast<int>(
        std::max<long long>(1, std::min<long long>(d.sms * bps / vpg, sh.max_bpv > 0 ? sh.max_bpv : p.N)));
    c.rpb = static_cast<int>(ceil_div(p.N, c.bpv));
    const int stored = stored_rows(sh, c.rpb);
    if (use_smem) {
      // Shared memory per SM is shared by its blocks; keep 1 KB per block for the system.
      const long long dyn_max = std::max(0, d.smem_optin - sh.smem_static);
      const long long per_block = std::min<long long>(dyn_max, d.smem_sm / bps - sh.smem_static - 1024) - sh.smem_extra;
      c.smem_rows = static_cast<int>(std::min<long long>(stored, per_block > 0 ? per_block / row_bytes : 0));
      // Row batches (R rows; R / 2 in the first and last passes) must not straddle shared
      // memory and the workspace.
      if (c.smem_rows < stored) c.smem_rows = c.smem_rows / sh.batch_rows * sh.batch_rows;
      if (occupancy(si, c.smem_rows * row_bytes + sh.smem_extra) < bps) {
        c.cost = INFINITY;
        return c;
      }
    }
    // Per pass of a group of views, fitted to an H200's traces at N 64, 256 and 4096, K 3000
    // (bench/RESULTS.md, 2026-11-27; 3-17 % under each of the 15 launches measured there, whose
    // first and last passes do more than this counts):
    // - the rows, bound by the blocks' element rate or by where the rows that miss shared
    //   memory come from (L2 ~5 TB/s while they fill at most half of it, else HBM ~3 TB/s),
    //   whichever is slower;
    // - the boundary (grid barriers, column reduction, weights): 4.6 us + 0.8 us per block on
    //   an SM + 0.6 us for blocks of 8 or more columns per thread (fewer threads to reduce the
    //   columns) + 0.3 us per extra view side by side + a tenth of the rows' time (the wait for
    //   the slowest block).
    const long long groups = ceil_div(p.V, vpg);
    const long long grid = static_cast<long long>(vpg) * c.bpv;
    const long long used_bps = ceil_div(grid, d.sms);
    const double off = static_cast<double>(vpg) * c.bpv * (stored - c.smem_rows) * static_cast<double>(row_bytes);
    const double elems = static_cast<double>(vpg) * p.N * p.K;
    const double rate = (used_bps >= 2 ? sh.rate_2 : sh.rate_1) * d.sms;
    const double rows = std::max(elems / rate, off / (sh.offchip * (off <= 0.5 * d.l2 ? 5e12 : 3e12)));
    const double boundary =
        4.6e-6 + 0.8e-6 * static_cast<double>(used_bps) + (sh.cpt >= 8 ? 0.6e-6 : 0) + 0.3e-6 * (vpg - 1) + 0.1 * rows;
    c.cost = static_cast<double>(groups) * (p.iters + 2) * (rows + boundary);
    return c;
  };

  Choice best;
  best.cost = INFINITY;
  for (int si = 0; si < static_cast<int>(shapes.size()); ++si) {
    const Shape& sh = shapes[static_cast<size_t>(si)];
    const int occ_max = std::min(sh.occ0, 8);
    if (occ_max < 1) continue;
    if (p.per_pass) {
      const Choice c = evaluate(si, p.V, occ_max, false);  // E cannot stay on chip between launches
      if (c.cost < best.cost) best = c;
      continue;
    }
    for (int vpg : {p.V, 1}) {
      if (vpg != p.V && (p.V == 1 || !p.may_one_by_one)) continue;
      if (vpg == p.V && p.V > 1 && !p.may_side_by_side) continue;
      for (int bps = 1; bps <= occ_max; ++bps) {
        if (sh.bps_fixed > 0 && bps != std::min(sh.bps_fixed, occ_max)) continue;
        const Choice c = evaluate(si, vpg, bps, true);
        if (c.cost < best.cost) best = c;
      }
    }
  }
  if (!(best.cost < INFINITY)) best.shape = -1;
  return best;
}

int mma_chunks(int col_tiles, int row_tiles) {
  int best = 1;
  long long best_cost = -1;
  for (int kc = 1; kc <= std::max(1, row_tiles); ++kc) {
    const long long cost = ceil_div(static_cast<long long>(col_tiles) * kc, kClusterWarps) * ceil_div(row_tiles, kc);
    if (best_cost < 0 || cost < best_cost) best = kc, best_cost = cost;
  }
  return best;
}

ClusterShape cluster_layout(int rows, int K, int size, int te_bytes, int groups, bool mma) {
  ClusterShape s;
  s.size = size;
  s.rows = rows;
  s.groups = groups;
  s.cols = static_cast<int>(ceil_div(ceil_div(K, size), 4) * 4);
  const int quads = s.cols / 4;
  s.subsets = cluster_subsets(quads, rows);
  mma = mma && te_bytes == 2;
  // E (rows x cols, 16-byte aligned), then the row partials, row maxima (both read by the
  // cluster), row inverses and row maxima (rows each, rounded up to 16 bytes), the weights
  // (cols) and the column sums of the subsets or the groups (max(subsets, groups) x cols).
  // The tensor-core layout: E (rows16 x ld), the four row arrays of rows16, the weights and
  // max(subsets, groups, chunks) rows of the column sums over cols16, then the halves of the
  // B operands: the weights' hi and lo (cols16 each), the row inverses' (rows16 each).
  const long long r4 = cluster_rows_padded(rows, mma);
  const long long c16 = cluster_cols_padded(s.cols, mma);
  s.ld = mma ? static_cast<int>(c16) + kMmaRowPad : s.cols;
  s.mma_chunks = mma ? mma_chunks(static_cast<int>(c16 / kMmaTile), static_cast<int>(r4 / kMmaTile)) : 0;
  const long long e_bytes = ceil_div((mma ? r4 : rows) * s.ld * te_bytes, 16) * 16;
  const long long red_rows = cluster_red_rows(s.subsets, groups, s.mma_chunks);
  s.smem = e_bytes + 4 * (4 * r4 + c16 + red_rows * c16) + (mma ? 2 * (2 * c16 + 2 * r4) : 0);
  return s;
}

ClusterShape cluster_shape(int N, int K, int V, int te_bytes, int max_size, int smem_optin, int smem_static,
                           const ClusterActive& active, int asked, bool mma) {
  auto fits = [&](const ClusterShape& s) { return s.cols <= kClusterMaxCols && s.smem + smem_static <= smem_optin; };
  if (asked > max_size) return ClusterShape{};
  // No more blocks than column quads: a block without columns would only wait at the barriers.
  int quads_cap = 1;
  while (quads_cap * 2 <= max_size && 4LL * quads_cap * 2 <= ceil_div(K, 4) * 4) quads_cap *= 2;
  const int lo = asked > 0 ? asked : 1, hi = asked > 0 ? asked : quads_cap;
  auto finish = [&](ClusterShape s) {
    const int n = active(s.size, s.smem);
    if (n < s.groups) return ClusterShape{};
    s.views_side_by_side = n >= V * s.groups ? V : 1;
    return s;
  };
  // One cluster per view.
  for (int size = lo; size <= hi; size *= 2) {
    const ClusterShape s = cluster_layout(N, K, size, te_bytes, 1, mma);
    if (fits(s) &&
        (static_cast<long long>(N) * s.cols <= static_cast<long long>(kClusterWork) * kClusterBlock || 2 * size > hi))
      return finish(s);
  }
  // Row groups: the largest size, the fewest groups.
  for (int size = hi; size >= lo; size /= 2) {
    for (int groups = 2; groups <= N; ++groups) {
      const int rows = static_cast<int>(ceil_div(N, groups));
      const int g = static_cast<int>(ceil_div(N, rows));  // no empty group
      const ClusterShape s = cluster_layout(rows, K, size, te_bytes, g, mma);
      if (!fits(s)) continue;
      const ClusterShape f = finish(s);
      if (f.size > 0) return f;
      break;  // more groups of this size will not run at once either
    }
  }
  return ClusterShape{};
}

Barrier auto_barrier(const BarrierCase& c) {
  if (!c.default_kernel || c.vpg < 2 || c.cpt != 8 || c.batch_rows != 2) return Barrier::Cooperative;
  if (c.cache_bytes == 4) return Barrier::ViewCounterStagger;
  return c.f16 && c.exact_passes == 0 ? Barrier::ViewCounter : Barrier::Cooperative;
}

}  // namespace mira::plan_model
