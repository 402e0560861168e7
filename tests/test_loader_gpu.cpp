// labels: gpu
// The loader with GPU augmentation against the CPU loader, same seed: the same samples, labels
// and decisions (drawn on the CPU either way), pixels within the tolerance of
// tests/test_augment_gpu.cpp (2e-4 in normalised units for f32 output, bf16's resolution for
// bf16, as there). Covers a GPU-resident in-memory dataset (CIFAR recipe; gray 28x28 with the
// Fashion-MNIST recipe), an ImageFolder of JPEGs staged through pinned buffers with DCT
// downscaling, a short last batch, several epochs (the ring of slots reused), threads 1 and 3,
// and an abandoned epoch.
#include "loader_fixtures.h"

using namespace mira;
using namespace mira::data;
using namespace mira::testing;

namespace {

void compare(const EpochData& gpu, const EpochData& cpu, Tol tol, const std::string& what) {
  CHECK_MESSAGE(gpu.batches == cpu.batches, what);
  CHECK_MESSAGE(gpu.samples == cpu.samples, what);
  CHECK_MESSAGE(gpu.labels == cpu.labels, what);
  REQUIRE(gpu.views.size() == cpu.views.size());
  for (size_t v = 0; v < gpu.views.size(); ++v) {
    const std::vector<double> got(gpu.views[v].begin(), gpu.views[v].end());
    const std::vector<double> want(cpu.views[v].begin(), cpu.views[v].end());
    CHECK(allclose(got, want, tol, what + ", view " + std::to_string(v)));
  }
}

void run_both(const Dataset& ds, const MultiCropRecipe& r, LoaderConfig cfg, DType dtype, const char* what) {
  cfg.quiet = true;
  Loader cpu(ds, r, cfg);
  cfg.gpu_augment = true;
  cfg.gpu_dtype = dtype;
  Loader gpu(ds, r, cfg);
  // test_augment_gpu's tolerances: f32 2e-4 absolute; bf16 also 2^-7 relative
  const Tol tol = dtype == DType::BF16 ? Tol{2e-4, 1.0 / 128} : Tol{2e-4, 0};
  for (int64_t epoch : {0, 1, 2})
    compare(run_epoch(gpu, epoch), run_epoch(cpu, epoch), tol, std::string(what) + ", epoch " + std::to_string(epoch));
  // abandon an epoch after one batch; the next one is still right
  Batch b;
  gpu.start_epoch(3);
  REQUIRE(gpu.next(b));
  compare(run_epoch(gpu, 4), run_epoch(cpu, 4), tol, std::string(what) + ", epoch 4 after an abandoned one");
}

}  // namespace

TEST_CASE("GPU loader: in-memory datasets live on the GPU") {
  LoaderConfig cfg;
  cfg.batch_size = 8;
  cfg.sampler.seed = 3;
  cfg.sampler.drop_last = false;  // 21 = 8 + 8 + 5
  for (int threads : {1, 3}) {
    cfg.threads = threads;
    auto cifar = random_dataset(21, 32, 32, 3);
    run_both(*cifar, MultiCropRecipe::cifar(), cfg, DType::F32, "cifar f32");
    auto gray = random_dataset(21, 28, 28, 1);
    run_both(*gray, MultiCropRecipe::fashion_mnist(), cfg, DType::F32, "fashion-mnist f32");
  }
  auto cifar = random_dataset(21, 32, 32, 3);
  run_both(*cifar, MultiCropRecipe::cifar(), cfg, DType::BF16, "cifar bf16");
}

TEST_CASE("GPU loader: ImageFolder JPEGs staged through pinned buffers") {
  TempDir d;
  int n = 0;
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 9; ++i, ++n)  // sizes vary so DCT scales and arena offsets vary
      write_file(d.path / ("class" + std::to_string(c)) / ("img" + std::to_string(i) + ".jpg"),
                 make_jpeg(120 + 37 * (n % 5), 100 + 53 * (n % 4), n));
  auto ds = open_dataset(d.path.string());
  LoaderConfig cfg;
  cfg.batch_size = 4;
  cfg.threads = 3;
  cfg.prefetch = 2;
  cfg.sampler.seed = 9;
  const MultiCropRecipe r = MultiCropRecipe::imagenet_2x224_6x96();
  run_both(*ds, r, cfg, DType::F32, "imagenet multi-crop f32");
  run_both(*ds, r, cfg, DType::BF16, "imagenet multi-crop bf16");
}
