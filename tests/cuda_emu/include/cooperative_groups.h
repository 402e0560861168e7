// tests/cuda_emu's stand-in for the toolkit's cooperative_groups.h: thread-block clusters and
// the grid of a cooperative launch, as the emulator runs them (cuda_emu.h).
#pragma once

#include "tests/cuda_emu/cuda_emu.h"

namespace cooperative_groups {

class cluster_group {
 public:
  void sync() const { ::mira::emu::cluster_sync(); }
  unsigned block_rank() const { return ::mira::emu::cluster_rank(); }
  unsigned num_blocks() const { return ::mira::emu::cluster_size(); }
  template <typename T>
  T* map_shared_rank(T* p, unsigned rank) const {
    return static_cast<T*>(::mira::emu::map_shared(p, rank));
  }
};
inline cluster_group this_cluster() {
  return {};
}

class grid_group {
 public:
  void sync() const { ::mira::emu::grid_sync(); }
};
inline grid_group this_grid() {
  return {};
}

}  // namespace cooperative_groups
