// labels: cpu
// The multi-crop loader: batches are bit-identical for 1, 2 and 3 threads and equal to the
// single-sample path; drop_last and the last short batch; the Fashion-MNIST recipe on gray data;
// ImageFolder with bad files (empty, truncated, random bytes, PNG named .jpg) skipped with one
// warning each and counted; a dataset with no readable image is an error naming its path; DCT
// downscaled decoding stays close to full-size decoding; staging a sample without its pixels
// draws the same decisions; GPU augmentation where there is no CUDA is a clear error.
#include "loader_fixtures.h"

using namespace mira;
using namespace mira::data;
using namespace mira::testing;
namespace fs = std::filesystem;

TEST_CASE("loader: identical batches for any thread count, equal to the single-sample path") {
  auto ds = random_dataset(50, 32, 32, 3);
  const MultiCropRecipe r = MultiCropRecipe::cifar();
  LoaderConfig cfg;
  cfg.batch_size = 8;
  cfg.sampler.seed = 11;
  cfg.quiet = true;
  std::vector<EpochData> runs;
  for (int threads : {1, 2, 3}) {
    cfg.threads = threads;
    cfg.prefetch = threads == 3 ? 2 : 3;
    Loader L(*ds, r, cfg);
    EpochData e0 = run_epoch(L, 0);
    EpochData e1 = run_epoch(L, 1);
    CHECK(e0.batches == 6);  // drop_last: 50 / 8
    CHECK(e0.samples != e1.samples);
    runs.push_back(e0);
  }
  for (int k = 1; k < 3; ++k) {
    CHECK(runs[k].samples == runs[0].samples);
    CHECK(runs[k].labels == runs[0].labels);
    for (size_t v = 0; v < 2; ++v) CHECK(runs[k].views[v] == runs[0].views[v]);
  }
  // the sample order is the sampler's, the labels the dataset's, the pixels load_sample's
  SamplerConfig sc = cfg.sampler;
  sc.batch_size = 8;
  const auto order = epoch_indices(50, 0, sc);
  SampleScratch scratch;
  std::vector<float> v0(32 * 32 * 3), v1(32 * 32 * 3);
  for (size_t i = 0; i < runs[0].samples.size(); ++i) {
    REQUIRE(runs[0].samples[i] == order[i]);
    CHECK(runs[0].labels[i] == ds->label(order[i]));
    if (i % 7 == 0) {
      load_sample(*ds, r, order[i], 11, 0, cfg, {v0.data(), v1.data()}, scratch);
      CHECK(std::equal(v0.begin(), v0.end(), runs[0].views[0].begin() + i * v0.size()));
      CHECK(std::equal(v1.begin(), v1.end(), runs[0].views[1].begin() + i * v1.size()));
    }
  }
  // the two views of one sample differ (independent draws)
  CHECK(!std::equal(v0.begin(), v0.end(), v1.begin()));
}

TEST_CASE("loader: drop_last off keeps a short last batch; epochs can be abandoned") {
  auto ds = random_dataset(21, 32, 32, 3);
  LoaderConfig cfg;
  cfg.batch_size = 8;
  cfg.threads = 2;
  cfg.sampler.drop_last = false;
  Loader L(*ds, MultiCropRecipe::cifar(), cfg);
  L.start_epoch(0);
  Batch b;
  std::vector<int64_t> sizes;
  while (L.next(b)) sizes.push_back(b.labels.numel());
  CHECK(sizes == std::vector<int64_t>{8, 8, 5});
  // abandon an epoch after one batch, then a full one still works
  L.start_epoch(1);
  REQUIRE(L.next(b));
  L.start_epoch(2);
  int n = 0;
  while (L.next(b)) ++n;
  CHECK(n == 3);
}

TEST_CASE("loader: Fashion-MNIST recipe on 28x28 gray images") {
  auto ds = random_dataset(16, 28, 28, 1);
  LoaderConfig cfg;
  cfg.batch_size = 4;
  cfg.threads = 2;
  Loader L(*ds, MultiCropRecipe::fashion_mnist(), cfg);
  L.start_epoch(0);
  Batch b;
  REQUIRE(L.next(b));
  REQUIRE(b.views.size() == 2);
  CHECK(b.views[0].shape() == Shape{4, 32, 32, 3});
  // gray in, gray out: the three channels agree (jitter's saturation and hue keep gray gray,
  // and the normalisation is the same on every channel)
  const float* p = b.views[0].data<float>();
  double max_diff = 0;
  for (int64_t i = 0; i < b.views[0].numel(); i += 3)
    max_diff = std::max({max_diff, std::fabs(double(p[i]) - p[i + 1]), std::fabs(double(p[i]) - p[i + 2])});
  CHECK(max_diff < 1e-5);
}

TEST_CASE("loader: ImageFolder with bad files skips each once, deterministically") {
  TempDir d;
  int good = 0;
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 5; ++i) {
      write_file(d.path / ("class" + std::to_string(c)) / ("img" + std::to_string(i) + ".jpg"),
                 make_jpeg(90 + 13 * i, 70 + 7 * c, i + 3 * c));
      ++good;
    }
  const std::vector<uint8_t> j = make_jpeg(64, 48, 0);
  write_file(d.path / "class0" / "bad_empty.jpg", {});
  write_file(d.path / "class0" / "bad_trunc.jpg", std::vector<uint8_t>(j.begin(), j.begin() + j.size() / 2));
  std::vector<uint8_t> noise(3000);
  for (size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<uint8_t>(i * 7919 % 251);
  write_file(d.path / "class1" / "bad_noise.jpg", noise);
  write_file(d.path / "class1" / "bad_png.jpg", {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13});
  auto ds = open_dataset(d.path.string());
  REQUIRE(ds->size() == 14);
  MultiCropRecipe r = MultiCropRecipe::imagenet_2x224_6x96();
  for (ViewSpec& v : r.views) v.size = v.size == 224 ? 48 : 24;  // keep the test fast
  LoaderConfig cfg;
  cfg.batch_size = 7;
  cfg.sampler.seed = 5;
  cfg.quiet = true;
  std::vector<EpochData> runs;
  for (int threads : {1, 2}) {
    cfg.threads = threads;
    Loader L(*ds, r, cfg);
    EpochData e = run_epoch(L, 0);
    CHECK(L.skipped_files() == 4);
    run_epoch(L, 1);
    CHECK(L.skipped_files() == 4);  // each bad file counted (and warned) once
    for (int64_t s : e.samples)
      CHECK(fs::path(static_cast<const ImageFolderDataset&>(*ds).file(s)).filename().string().rfind("bad", 0) ==
            std::string::npos);
    CHECK(e.batches == 2);
    runs.push_back(e);
  }
  CHECK(runs[0].samples == runs[1].samples);
  for (size_t v = 0; v < r.views.size(); ++v) CHECK(runs[0].views[v] == runs[1].views[v]);

  // nothing readable: an error naming the dataset
  TempDir bad;
  write_file(bad.path / "a" / "x.jpg", {});
  write_file(bad.path / "a" / "y.jpg", noise);
  auto bds = open_dataset(bad.path.string());
  LoaderConfig bc;
  bc.batch_size = 2;
  bc.threads = 2;
  bc.quiet = true;
  Loader BL(*bds, r, bc);
  BL.start_epoch(0);
  Batch b;
  try {
    BL.next(b);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(bad.path.string()) != std::string::npos);
    CHECK(std::string(e.what()).find("no readable image") != std::string::npos);
  }
}

TEST_CASE("loader: DCT-downscaled decoding stays close to the full-size result") {
  // A large, smooth JPEG and small views: the decoder may go down to 1/8; the views must match
  // the full-size decode closely (the crop box is mapped, not re-drawn).
  TempDir d;
  write_file(d.path / "c" / "big.jpg", make_jpeg(1200, 900, 1, 0.005));
  auto ds = open_dataset(d.path.string());
  const MultiCropRecipe r = MultiCropRecipe::cifar();
  LoaderConfig on, off;
  off.dct_downscale = false;
  SampleScratch s;
  std::vector<float> a0(32 * 32 * 3), a1(a0.size()), b0(a0.size()), b1(a0.size());
  double worst = 0;
  for (int epoch = 0; epoch < 4; ++epoch) {
    load_sample(*ds, r, 0, 3, epoch, on, {a0.data(), a1.data()}, s);
    load_sample(*ds, r, 0, 3, epoch, off, {b0.data(), b1.data()}, s);
    double sum = 0;
    for (size_t i = 0; i < a0.size(); ++i) sum += std::fabs(a0[i] - b0[i]) + std::fabs(a1[i] - b1[i]);
    worst = std::max(worst, sum / (2 * a0.size()));
  }
  // normalised units (std ~0.25 of [0, 1]): 0.03 is under 1/100 of the range
  MESSAGE("mean abs difference, DCT-scaled vs full decode: " << worst);
  CHECK(worst < 0.03);
  CHECK(worst > 0);  // it did decode at a reduced scale
}

TEST_CASE("loader: staging without pixels draws the same decisions; GPU mode without CUDA is an error") {
  auto ds = random_dataset(6, 28, 28, 1);
  const MultiCropRecipe r = MultiCropRecipe::fashion_mnist();
  LoaderConfig cfg;
  StagedSample with, without;
  std::vector<uint8_t> rgb;
  stage_sample(*ds, r, 3, 5, 2, cfg, with, rgb, true);
  stage_sample(*ds, r, 3, 5, 2, cfg, without, rgb, false);
  CHECK(without.pixels == nullptr);
  CHECK(with.pixels != nullptr);
  CHECK(with.h == without.h);
  CHECK(with.w == without.w);
  REQUIRE(with.params.size() == without.params.size());
  for (size_t v = 0; v < with.params.size(); ++v) {
    CHECK(with.params[v].top == without.params[v].top);
    CHECK(with.params[v].width == without.params[v].width);
    CHECK(with.params[v].flip == without.params[v].flip);
  }
  std::vector<float> out(32 * 32 * 3);
  AugScratch scratch;
  CHECK_THROWS_AS(augment_staged(without, r, {out.data(), out.data()}, scratch), Error);
  if (!augment_cuda_available()) {
    cfg.gpu_augment = true;
    try {
      Loader L(*ds, r, cfg);
      FAIL("GPU mode without CUDA was accepted");
    } catch (const Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find("GPU augmentation asked for") != std::string::npos, e.what());
    }
  }
}
