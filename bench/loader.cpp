// Input-pipeline benchmark: images/s for decode + full multi-crop augmentation on real photos.
//   cpu mode: the Loader (decode + augment on CPU threads) for each thread count;
//   gpu mode: decode on CPU threads, augmentation by the CUDA kernels (data/augment_cuda.h).
// Prints one JSON object per line. Photos: any tree of .jpg files (default: the libdlib19.1 /
// hugin-data photos that tests/test_jpeg.cpp fetches into data_cache/photos).
//
//   bench_loader [--data DIR] [--recipe imagenet|cifar] [--threads 1,2,4] [--images N]
//                [--batch B] [--epochs E] [--gpu]
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

void bench_cpu(const Dataset& ds, const MultiCropRecipe& r, int threads, int64_t batch, int epochs) {
  LoaderConfig cfg;
  cfg.batch_size = batch;
  cfg.threads = threads;
  cfg.prefetch = 3;
  cfg.quiet = true;
  Loader L(ds, r, cfg);
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

// CPU decode (threads) + GPU augmentation, one batch at a time (no overlap between decode and
// kernels yet: a lower bound for the pipelined loader).
void bench_gpu(const ImageFolderDataset& ds, const MultiCropRecipe& r, int threads, int64_t batch, int epochs) {
  const int nv = static_cast<int>(r.views.size());
  std::vector<GpuAugmenter> aug(nv);
  std::vector<Tensor> outs;
  for (const ViewSpec& v : r.views)
    outs.push_back(Tensor::empty({batch, v.size, v.size, 3}, DType::BF16, Device::cuda()));
  int64_t images = 0;
  double t0 = 0;
  for (int e = 0; e <= epochs; ++e) {
    if (e == 1) {
      cuda::synchronize();
      t0 = now_s();
    }
    const std::vector<int64_t> order = epoch_indices(ds.size(), e, SamplerConfig{});
    for (size_t b0 = 0; b0 + batch <= order.size(); b0 += batch) {
      std::vector<Decoded> dec(batch);
      std::vector<std::vector<ViewParams>> params(batch, std::vector<ViewParams>(nv));
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
          for (int64_t i = t; i < batch; i += threads) {
            const int64_t idx = order[b0 + i];
            dec[i] = decode_image_file(ds.file(idx), {}, [&](int oh, int ow) {
              double needed = 0;
              for (int v = 0; v < nv; ++v) {
                params[i][v] = sample_view_params(r.views[v], oh, ow, 0, e, idx, v);
                needed = std::max({needed, double(r.views[v].size) / params[i][v].width,
                                   double(r.views[v].size) / params[i][v].height});
              }
              return jpeg_scale_num_for(needed);
            });
          }
        });
      for (std::thread& th : pool) th.join();
      int64_t total = 0;
      std::vector<int64_t> off(batch);
      for (int64_t i = 0; i < batch; ++i) {
        off[i] = total;
        total += static_cast<int64_t>(dec[i].image.pixels.size());
      }
      Tensor host = Tensor::empty({total}, DType::U8);
      for (int64_t i = 0; i < batch; ++i)
        std::memcpy(host.data<uint8_t>() + off[i], dec[i].image.pixels.data(), dec[i].image.pixels.size());
      Tensor dev = host.to(Device::cuda());
      for (int v = 0; v < nv; ++v) {
        std::vector<GpuViewJob> jobs(batch);
        for (int64_t i = 0; i < batch; ++i)
          jobs[i] = make_gpu_job(params[i][v], r.views[v], off[i], dec[i].image.h, dec[i].image.w, dec[i].orig_h,
                                 dec[i].orig_w);
        aug[v].run(static_cast<const uint8_t*>(dev.raw()), jobs, r.views[v], r, outs[v].raw(), DType::BF16);
      }
      cuda::synchronize();  // `dev` is freed at the end of the iteration
      if (e > 0) images += batch;
    }
  }
  const double dt = now_s() - t0;
  std::printf(
      "{\"bench\": \"loader\", \"mode\": \"cpu_decode_gpu_augment\", \"recipe\": \"%s\", \"views\": %d, "
      "\"threads\": %d, \"batch\": %lld, \"images\": %lld, \"seconds\": %.3f, \"images_per_s\": %.1f}\n",
      r.name.c_str(), nv, threads, static_cast<long long>(batch), static_cast<long long>(images), dt, images / dt);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data = std::string(MIRA_BENCH_SOURCE_DIR) + "/data_cache/photos/x";
  std::string recipe = "imagenet", thread_list;
  int64_t images = 512, batch = 32;
  int epochs = 2;
  bool gpu = false;
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
