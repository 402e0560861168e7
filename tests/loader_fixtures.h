// Fixtures shared by the loader tests (CPU and GPU): an in-memory dataset of noise on a ramp,
// one epoch collected from a Loader, synthetic JPEGs and files (TempDir: testing.h).
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include "data/loader.h"
#include "jpeg_fixtures.h"
#include "testing.h"

namespace mira::testing {

using namespace mira::data;
namespace fs = std::filesystem;

// Views are copied to the host as f32 whatever their device and dtype.

inline std::unique_ptr<InMemoryDataset> random_dataset(int n, int h, int w, int c) {
  std::vector<uint8_t> px(static_cast<size_t>(n) * h * w * c);
  uint32_t s = 7;
  for (size_t i = 0; i < px.size(); ++i) {
    s = s * 1664525u + 1013904223u;
    px[i] = static_cast<uint8_t>((s >> 24) / 2 + (i / c) % 97);  // noise on a ramp
  }
  std::vector<int64_t> labels(n);
  for (int i = 0; i < n; ++i) labels[i] = i % 10;
  return std::make_unique<InMemoryDataset>("mem", DataFormat::Cifar10, h, w, c, 10, std::move(px), std::move(labels));
}

struct EpochData {
  std::vector<std::vector<float>> views;  // per view, concatenated over batches
  std::vector<int64_t> labels, samples;
  int batches = 0;
};

inline EpochData run_epoch(Loader& L, int64_t epoch) {
  EpochData e;
  L.start_epoch(epoch);
  Batch b;
  while (L.next(b)) {
    CHECK(b.index == e.batches);
    ++e.batches;
    e.views.resize(b.views.size());
    for (size_t v = 0; v < b.views.size(); ++v) {
      const Tensor host = b.views[v].to(Device::cpu(), DType::F32);
      const float* p = host.data<float>();
      e.views[v].insert(e.views[v].end(), p, p + host.numel());
    }
    const int64_t* l = b.labels.data<int64_t>();
    e.labels.insert(e.labels.end(), l, l + b.labels.numel());
    e.samples.insert(e.samples.end(), b.samples.begin(), b.samples.end());
  }
  return e;
}

inline std::vector<uint8_t> make_jpeg(int w, int h, int phase, double freq = 0.02) {
  return mira::testing::encode_jpeg(w, h, {}, [&](int x, int y, int k) {
    return static_cast<uint8_t>(128 + 100 * std::sin(freq * (x * (k + 1) + 1.5 * y) + phase));
  });
}

inline void write_file(const fs::path& p, const std::vector<uint8_t>& b) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace mira::testing
