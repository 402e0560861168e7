// Input-pipeline benchmark: images/s for decode + full multi-crop augmentation on real photos.
//   cpu mode: the Loader (decode + augment on CPU threads) for each thread count;
//   gpu mode: decode on CPU threads, augmentation by the CUDA kernels (data/augment_cuda.h);
//   decode-only mode: the libjpeg-turbo-only baseline of docs/performance.md, every image
//   decoded at full size (no DCT downscaling, no augmentation) on the same threads.
// Prints one JSON object per line. Photos: any tree of .jpg files (default: the libdlib19.1 /
// hugin-data photos that tests/test_jpeg.cpp fetches into data_cache/photos).
//
//   bench_loader [--data DIR] [--recipe imagenet|cifar] [--threads 1,2,4] [--images N]
//                [--batch B] [--epochs E] [--gpu] [--decode-only]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "data/augment_cuda.h"
#include "data/loader.h"
#include "engine/cuda_backend.h"

using namespace mira;
using namespace mira::data;
namespace fs = std::filesystem;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::unique_ptr<ImageFolderDataset> photo_dataset(const std::string& dir, int64_t limit) {
  std::vector<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    std::string ext = e.path().extension().string();
    for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (e.is_regular_file() && (ext == ".jpg" || ext == ".jpeg")) files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  MIRA_CHECK(!files.empty(), "no .jpg files under ", dir, " (run test_jpeg once to fetch the photos)");
  // repeat the list up to `limit` images so short trees still give a stable measurement
  std::vector<std::string> use;
  for (int64_t i = 0; i < std::max<int64_t>(limit, 1); ++i) use.push_back(files[i % files.size()]);
  std::vector<int64_t> labels(use.size(), 0);
  return std::make_unique<ImageFolderDataset>(dir, std::vector<std::string>{"all"}, std::move(use), std::move(labels));
}

// The loader settings both benchmarks share.
LoaderConfig bench_config(int threads, int64_t batch) {
  LoaderConfig cfg;
  cfg.batch_size = batch;
  cfg.threads = threads;
  cfg.prefetch = 3;
  cfg.quiet = true;
  return cfg;
}

void bench_cpu(const Dataset& ds, const MultiCropRecipe& r, int threads, int64_t batch, int epochs) {
  Loader L(ds, r, bench_config(threads, batch));
  // warm-up: one epoch (page cache, allocator)
  Batch b;
  L.start_epoch(0);
  while (L.next(b)) {
  }
  int64_t images = 0;
  const double t0 = now_s();
  for (int e = 1; e <= epochs; ++e) {
    L.start_epoch(e);
    while (L.next(b)) images += b.labels.numel();
  }
  const double dt = now_s() - t0;
  std::printf(
      "{\"bench\": \"loader\", \"mode\": \"cpu\", \"recipe\": \"%s\", \"views\": %zu, \"threads\": %d, "
      "\"batch\": %lld, \"images\": %lld, \"seconds\": %.3f, \"images_per_s\": %.1f, \"skipped\": %lld}\n",
      r.name.c_str(), r.views.size(), threads, static_cast<long long>(batch), static_cast<long long>(images), dt,
      images / dt, static_cast<long long>(L.skipped_files()));
  std::fflush(stdout);
}

// libjpeg-turbo alone: full-size decodes (accurate integer DCT, fancy upsampling: djpeg's
// defaults) of the same files, threads taking images round robin; the first pass warms up.
void bench_decode_only(const ImageFolderDataset& ds, int threads, int epochs) {
  int64_t images = 0;
  double megapixels = 0, t0 = 0;
  for (int e = 0; e <= epochs; ++e) {
    if (e == 1) t0 = now_s();
    std::vector<double> mp(threads, 0.0);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        for (int64_t i = t; i < ds.size(); i += threads) {
          const Decoded d = decode_image_file(ds.file(i));
          mp[t] += double(d.image.h) * d.image.w / 1e6;
        }
      });
    for (std::thread& th : pool) th.join();
    if (e > 0) {
      images += ds.size();
      for (double m : mp) megapixels += m;
    }
  }
  const double dt = now_s() - t0;
  std::printf(
      "{\"bench\": \"loader\", \"mode\": \"libjpeg_turbo_decode_only\", \"threads\": %d, \"images\": %lld, "
      "\"seconds\": %.3f, \"images_per_s\": %.1f, \"megapixels_per_s\": %.1f}\n",
      threads, static_cast<long long>(images), dt, images / dt, megapixels / dt);
  std::fflush(stdout);
}

// The GPU loader: CPU decode threads, pinned staging, copies and augmentation on the loader's
// data stream (data/loader.h), bf16 views on the device. The consumer does nothing but take
// batches, so this is the pipeline's ceiling; the first epoch warms up.
void bench_gpu(const Dataset& ds, const MultiCropRecipe& r, int threads, int64_t batch, int epochs) {
  LoaderConfig cfg = bench_config(threads, batch);
  cfg.gpu_augment = true;
  cfg.gpu_dtype = DType::BF16;
  Loader L(ds, r, cfg);
  Batch b;
  L.start_epoch(0);
  while (L.next(b)) {
  }
  cuda::synchronize();
  int64_t images = 0;
  const double t0 = now_s();
  for (int e = 1; e <= epochs; ++e) {
    L.start_epoch(e);
    while (L.next(b)) images += b.labels.numel();
  }
  cuda::synchronize();
  const double dt = now_s() - t0;
  std::printf(
      "{\"bench\": \"loader\", \"mode\": \"cpu_decode_gpu_augment\", \"recipe\": \"%s\", \"views\": %zu, "
      "\"threads\": %d, \"batch\": %lld, \"images\": %lld, \"seconds\": %.3f, \"images_per_s\": %.1f}\n",
      r.name.c_str(), r.views.size(), threads, static_cast<long long>(batch), static_cast<long long>(images), dt,
      images / dt);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data = std::string(MIRA_BENCH_SOURCE_DIR) + "/data_cache/photos/x";
  std::string recipe = "imagenet", thread_list;
  int64_t images = 512, batch = 32;
  int epochs = 2;
  bool gpu = false, decode_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--data")
      data = val();
    else if (a == "--recipe")
      recipe = val();
    else if (a == "--threads")
      thread_list = val();
    else if (a == "--images")
      images = std::stoll(val());
    else if (a == "--batch")
      batch = std::stoll(val());
    else if (a == "--epochs")
      epochs = std::stoi(val());
    else if (a == "--gpu")
      gpu = true;
    else if (a == "--decode-only")
      decode_only = true;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  try {
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    std::vector<int> threads;
    if (thread_list.empty()) {
      for (int t = 1; t < hw; t *= 2) threads.push_back(t);
      threads.push_back(hw);
    } else {
      std::stringstream ss(thread_list);
      for (std::string tok; std::getline(ss, tok, ',');) threads.push_back(std::stoi(tok));
    }
    auto ds = photo_dataset(data, images);
    const MultiCropRecipe r = MultiCropRecipe::by_name(recipe);
    if (decode_only) {
      for (int t : threads) bench_decode_only(*ds, t, epochs);
      return 0;
    }
    for (int t : threads) bench_cpu(*ds, r, t, batch, epochs);
    if (gpu) {
      if (!augment_cuda_available()) {
        std::printf("{\"bench\": \"loader\", \"mode\": \"cpu_decode_gpu_augment\", \"skipped\": \"no CUDA device\"}\n");
      } else {
        bench_gpu(*ds, r, threads.back(), batch, epochs);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_loader: %s\n", e.what());
    return 1;
  }
  return 0;
}
