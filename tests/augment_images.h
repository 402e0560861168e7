// Synthetic source images for the augmentation tests (test_augment_gpu, tests/cuda_emu's
// test_kernels_emu): smooth colour waves with noise, of random sizes, RGB HWC back to back.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mira::testing {

struct Images {
  std::vector<uint8_t> bytes;  // all images, RGB HWC, back to back
  std::vector<int64_t> offset;
  std::vector<int> h, w;
};

// n images of min_side .. min_side + spread - 1 pixels a side.
inline Images make_images(int n, uint32_t seed, int min_side = 40, int spread = 200) {
  Images im;
  uint32_t s = seed;
  auto rnd = [&] { return (s = s * 1664525u + 1013904223u) >> 8; };
  for (int i = 0; i < n; ++i) {
    const int h = min_side + static_cast<int>(rnd() % spread), w = min_side + static_cast<int>(rnd() % spread);
    im.offset.push_back(static_cast<int64_t>(im.bytes.size()));
    im.h.push_back(h);
    im.w.push_back(w);
    const float fx = 0.02f + (rnd() % 100) * 0.002f, fy = 0.02f + (rnd() % 100) * 0.002f;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c)
          im.bytes.push_back(static_cast<uint8_t>(
              std::min(255.f, std::max(0.f, 128 + 90 * std::sin(fx * x * (c + 1) + fy * y) + (rnd() % 40) - 20.f))));
  }
  return im;
}

}  // namespace mira::testing
