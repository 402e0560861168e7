// labels: cpu
// End-to-end runs of mira_features, mira_knn and mira_linear on a small IDX dataset written
// here, their error messages on bad input, the live NumPy reference (tools/knn_reference.py)
// on the same features when /usr/bin/python3 has numpy, and the raw-pixel k-NN on real
// Fashion-MNIST test (k = 20, T = 0.07) against the per-image predictions the reference
// produced (tests/data/knn/, see docs/evaluation.md): equal to the last image. Without the
// Fashion-MNIST download the last case says SKIPPED (exit 77).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/common/eval_data.h"
#include "apps/common/eval_transform.h"
#include "apps/common/features.h"
#include "apps/common/knn.h"
#include "data/dataset.h"
#include "engine/npy.h"
#include "engine/rng.h"
#include "models/checkpoint.h"
#include "testing.h"

using namespace mira;
using namespace mira::apps;
namespace fs = std::filesystem;

namespace {

const fs::path& workdir() {
  static const fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("mira_eval_apps_" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return d;
}

std::string app(const std::string& name) {
  return std::string(MIRA_BINARY_DIR) + "/apps/" + name;
}

struct Run {
  int rc;
  std::string out;
};
Run run(const std::string& cmd) {
  const std::string log = (workdir() / "log.txt").string();
  const int st = std::system((cmd + " >" + log + " 2>&1").c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, testing::slurp_text(log)};
}

void write_be32(std::ofstream& f, uint32_t v) {
  const unsigned char b[4] = {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
  f.write(reinterpret_cast<const char*>(b), 4);
}

// An IDX directory with 3 classes of 28x28 images (a bright square at a class-dependent place).
std::string small_idx() {
  const fs::path d = workdir() / "idx";
  if (fs::exists(d)) return d.string();
  fs::create_directories(d);
  for (const auto& [split, n] : {std::pair<std::string, int>{"train", 150}, {"t10k", 45}}) {
    std::ofstream im(d / (split + "-images-idx3-ubyte"), std::ios::binary),
        lb(d / (split + "-labels-idx1-ubyte"), std::ios::binary);
    write_be32(im, 0x803);
    write_be32(im, n);
    write_be32(im, 28);
    write_be32(im, 28);
    write_be32(lb, 0x801);
    write_be32(lb, n);
    for (int i = 0; i < n; ++i) {
      const int y = i % 3;
      for (int r = 0; r < 28; ++r)
        for (int c = 0; c < 28; ++c) {
          const bool in = r >= 4 + 7 * y && r < 12 + 7 * y && c >= 6 && c < 20;
          const double noise = philox_uniform(split == "train" ? 1 : 2, (i * 28 + r) * 28 + c);
          const uint8_t v = static_cast<uint8_t>((in ? 160 : 20) + 90 * noise);
          im.write(reinterpret_cast<const char*>(&v), 1);
        }
      const uint8_t l = static_cast<uint8_t>(y);
      lb.write(reinterpret_cast<const char*>(&l), 1);
    }
  }
  return d.string();
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  REQUIRE(f.good());
  return nlohmann::json::parse(f);
}

std::string path(const std::string& name) {
  return (workdir() / name).string();
}

}  // namespace

TEST_CASE("mira_features -> mira_knn / mira_linear on .npy, and the same from datasets directly") {
  const std::string data = small_idx();
  for (const std::string split : {"train", "test"}) {
    const Run r =
        run(app("mira_features") + " --random-init --arch resnet_tiny --seed 4 --device cpu --batch 64 --data " + data +
            " --split " + split + " --out " + path(split + "_f.npy") + " --labels-out " + path(split + "_l.npy"));
    INFO(r.out);
    REQUIRE(r.rc == 0);
  }
  const Tensor ftr = npy_read_tensor(path("train_f.npy")), fte = npy_read_tensor(path("test_f.npy"));
  CHECK(ftr.shape() == Shape({150, 128}));
  CHECK(fte.shape() == Shape({45, 128}));
  const std::vector<int64_t> ytr = read_labels_npy(path("train_l.npy")), yte = read_labels_npy(path("test_l.npy"));
  CHECK(ytr.size() == 150);

  const std::string npy_args = " --train-features " + path("train_f.npy") + " --train-labels " + path("train_l.npy") +
                               " --test-features " + path("test_f.npy") + " --test-labels " + path("test_l.npy");
  Run r = run(app("mira_knn") + npy_args + " --k 5,20 --device cpu --json " + path("knn.json") + " --predictions-out " +
              path("knn_pred.npy"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  const nlohmann::json j = read_json(workdir() / "knn.json");
  REQUIRE(j["results"].size() == 2);
  KnnConfig cfg;
  cfg.ks = {5, 20};
  const KnnResult ref = knn_classify(ftr, ytr, fte, yte, cfg);
  for (int i = 0; i < 2; ++i) {
    CHECK(j["results"][i]["k"] == cfg.ks[i]);
    CHECK(j["results"][i]["top1"].get<double>() == doctest::Approx(ref.scores[i].top1));
    CHECK(j["results"][i]["top5"].get<double>() == doctest::Approx(ref.scores[i].top5));
  }
  // A full disk while writing --json (no file may grow: RLIMIT_FSIZE 0, SIGXFSZ ignored, so
  // writes fail with EFBIG): the app fails naming the option, the earlier file stays whole and
  // no temp file is left. The output goes through a pipe, which the limit does not cover.
  auto full_disk = [&](const std::string& cmd, const std::string& json) {
    const std::string before = testing::slurp_text(path(json));
    const Run f =
        run("( trap '' XFSZ; ulimit -f 0; " + cmd + " --json " + path(json) + "; echo \"rc=$?\" ) 2>&1 | cat");
    INFO(f.out);
    CHECK(f.out.find("rc=1") != std::string::npos);
    CHECK(f.out.find("--json: cannot write '" + path(json) + "'") != std::string::npos);
    CHECK(testing::slurp_text(path(json)) == before);
    for (const auto& e : fs::directory_iterator(workdir()))
      CHECK_MESSAGE(e.path().filename().string().find(".tmp.") == std::string::npos, e.path());
  };
  full_disk(app("mira_knn") + npy_args + " --k 5 --device cpu", "knn.json");

  // Straight from the datasets with the same random init: the same numbers.
  r = run(app("mira_knn") + " --random-init --arch resnet_tiny --seed 4 --device cpu --train-data " + data +
          " --test-data " + data + " --k 5,20 --json " + path("knn2.json"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(read_json(workdir() / "knn2.json")["results"] == j["results"]);

  // The --npy path of mira_features: images already transformed give the same features.
  auto test_ds = open_split(data, "auto", data::Split::Test, "test");
  std::vector<int64_t> all(test_ds->size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  npy_write_tensor(path("images.npy"), eval_transform_batch(*test_ds, EvalTransform::for_dataset(*test_ds), all));
  r = run(app("mira_features") + " --random-init --arch resnet_tiny --seed 4 --device cpu --npy " + path("images.npy") +
          " --out " + path("test_f2.npy"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(npy_read_tensor(path("test_f2.npy")).to_vector() == fte.to_vector());

  // Linear probe on cached features: the normalised pixels (saved by mira_knn), on which the
  // three classes are linearly separable; then on augmented views for one epoch.
  r = run(app("mira_knn") + " --features pixels --device cpu --train-data " + data + " --test-data " + data +
          " --k 5 --save-features " + path("pix"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  r = run(app("mira_linear") + " --train-features " + path("pix_train_features.npy") + " --train-labels " +
          path("pix_train_labels.npy") + " --test-features " + path("pix_test_features.npy") + " --test-labels " +
          path("pix_test_labels.npy") + " --epochs 10 --batch 32 --lr 0.5 --device cpu --json " + path("lin.json"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  const nlohmann::json l = read_json(workdir() / "lin.json");
  CHECK(l["per_epoch"].size() == 10);
  CHECK(l["top1"].get<double>() >= 95.0);
  full_disk(app("mira_linear") + " --train-features " + path("pix_train_features.npy") + " --train-labels " +
                path("pix_train_labels.npy") + " --test-features " + path("pix_test_features.npy") + " --test-labels " +
                path("pix_test_labels.npy") + " --epochs 1 --batch 32 --device cpu",
            "lin.json");
  r = run(app("mira_linear") + " --random-init --arch resnet_tiny --device cpu --train-data " + data + " --test-data " +
          data + " --epochs 1 --batch 64 --train-fraction 0.2 --json " + path("lin2.json"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  CHECK(read_json(workdir() / "lin2.json")["n_train"] == 30);

  // The live NumPy reference on the same features, image by image.
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0) {
    r = run("/usr/bin/python3 " + std::string(MIRA_SOURCE_DIR) + "/tools/knn_reference.py" + npy_args +
            " --k 5,20 --predictions-out " + path("ref_pred.npy"));
    INFO(r.out);
    REQUIRE(r.rc == 0);
    CHECK(npy_read_tensor(path("ref_pred.npy")).to_vector() == npy_read_tensor(path("knn_pred.npy")).to_vector());
  } else {
    MESSAGE("live NumPy reference not run: /usr/bin/python3 has no numpy (apt-get install python3-numpy)");
  }
}

TEST_CASE("the apps reject bad input with clear errors") {
  const std::string data = small_idx();
  // Feature / label count mismatch.
  npy_write_tensor(path("bad_f.npy"), Tensor::randn({10, 8}, 1));
  write_labels_npy(path("bad_l.npy"), std::vector<int64_t>(9, 0));
  const std::string args = " --train-features " + path("bad_f.npy") + " --train-labels " + path("bad_l.npy") +
                           " --test-features " + path("bad_f.npy") + " --test-labels " + path("bad_l.npy");
  Run r = run(app("mira_knn") + args + " --k 2");
  CHECK(r.rc == 1);
  CHECK(r.out.find("error: ") != std::string::npos);
  CHECK(r.out.find("holds 10 features but") != std::string::npos);
  r = run(app("mira_linear") + args + " --epochs 1");
  CHECK(r.rc == 1);
  CHECK(r.out.find("holds 10 features but") != std::string::npos);
  // Missing files.
  r = run(app("mira_knn") + " --train-features " + path("nope.npy") + " --train-labels x --test-features y " +
          "--test-labels z");
  CHECK(r.rc == 1);
  CHECK(r.out.find("does not exist") != std::string::npos);
  r = run(app("mira_features") + " --checkpoint " + path("nope.safetensors") + " --data " + data + " --out " +
          path("x.npy"));
  CHECK(r.rc == 1);
  CHECK(r.out.find("does not exist") != std::string::npos);
  r = run(app("mira_knn") + " --features pixels --train-data " + path("no_such_dir") + " --test-data " + data);
  CHECK(r.rc == 1);
  CHECK(r.out.find("does not exist") != std::string::npos);
  // Wrong architecture for a checkpoint.
  Backbone net(models::ResNetConfig::tiny(), Device::cpu());
  net.init(1);
  models::NamedTensors st;
  models::append_state(st, net.params(), net.net().batch_norms(), "", "ema.backbone.");
  save_safetensors(path("tiny.safetensors"), st);
  r = run(app("mira_knn") + " --checkpoint " + path("tiny.safetensors") +
          " --arch resnet50 --device cpu --train-data " + data + " --test-data " + data);
  CHECK(r.rc == 1);
  CHECK(r.out.find("not a resnet50") != std::string::npos);
  r = run(app("mira_features") + " --checkpoint " + path("tiny.safetensors") + " --which online --data " + data +
          " --out " + path("x.npy"));
  CHECK(r.rc == 1);
  CHECK(r.out.find("no online backbone") != std::string::npos);
  // Bad settings and outputs that cannot be written fail before any feature is computed (no
  // progress line "... features: n/150 (p%)" shows).
  const std::string ds = " --random-init --arch resnet_tiny --device cpu --train-data " + data + " --test-data " + data;
  const std::string no_dir = path("no_such_dir") + "/out";
  const std::pair<std::string, std::string> early[] = {
      {app("mira_knn") + ds + " --k abc", "--k: 'abc' is not an integer"},
      {app("mira_knn") + ds + " --k 5,0", "--k: each k must be a positive integer, got 0"},
      {app("mira_knn") + ds + " --k 151", "--k: k = 151 but --train-data has only 150 images"},
      {app("mira_knn") + ds + " --temperature 0", "temperature must be positive"},
      {app("mira_knn") + ds + " --json " + no_dir + ".json", "--json: cannot write '" + no_dir + ".json': its folder"},
      {app("mira_knn") + ds + " --predictions-out " + workdir().string(),
       "--predictions-out: '" + workdir().string() + "' is a folder"},
      {app("mira_knn") + ds + " --save-features " + no_dir, "--save-features: cannot write"},
      {app("mira_linear") + ds + " --cached-features --epochs 0", "epochs must be >= 1"},
      {app("mira_linear") + ds + " --cached-features --optimizer adam", "optimizer must be sgd or lars"},
      {app("mira_linear") + ds + " --cached-features --transfer --l2-grid 0,-1",
       "--l2-grid: coefficients must be >= 0"},
      {app("mira_linear") + ds + " --cached-features --transfer --val-fraction 1", "--val-fraction must be in (0, 1)"},
      {app("mira_linear") + ds + " --cached-features --json " + no_dir + ".json", "its folder"},
      {app("mira_features") + " --random-init --arch resnet_tiny --device cpu --data " + data + " --out " + no_dir +
           ".npy",
       "--out: cannot write"},
      {app("mira_features") + " --random-init --arch resnet_tiny --device cpu --data " + data + " --out " +
           path("f.npy") + " --labels-out " + no_dir + ".npy",
       "--labels-out: cannot write"},
  };
  for (const auto& [cmd, says] : early) {
    r = run(cmd);
    INFO(cmd);
    INFO(r.out);
    CHECK(r.rc == 1);
    CHECK(r.out.find(says) != std::string::npos);
    CHECK(r.out.find("%)") == std::string::npos);
  }
  // Unknown options, --help.
  r = run(app("mira_linear") + " --epoch 3");
  CHECK(r.rc == 1);
  CHECK(r.out.find("unknown option --epoch") != std::string::npos);
  r = run(app("mira_knn") + " --help");
  CHECK(r.rc == 0);
  CHECK(r.out.find("--temperature") != std::string::npos);
}

TEST_CASE("ImageNet eval transform == torchvision Resize(256, bicubic, antialias) + CenterCrop(224)") {
  if (std::system("/usr/bin/python3 -c 'import torch, torchvision, numpy' >/dev/null 2>&1") != 0) {
    MESSAGE("torchvision comparison not run: /usr/bin/python3 lacks torch/torchvision (python3-torchvision)");
    return;
  }
  // 300 x 400: resized to 256 x 341, so the centre crop's left offset is round(58.5) = 58 (Python
  // rounds halves to even). A smooth image plus noise exercises the filter.
  const int H = 300, W = 400;
  std::vector<uint8_t> img(H * W * 3);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < 3; ++c)
        img[(y * W + x) * 3 + c] = static_cast<uint8_t>(std::clamp(
            127.5 + 100 * std::sin(0.05 * x + c) * std::cos(0.03 * y) + 25 * (philox_uniform(3, y * W + x) - 0.5), 0.0,
            255.0));
  npy_write(path("img.npy"), NpyType::U8, {H, W, 3}, img.data());
  {
    std::ofstream py(path("tv.py"));
    py << "import sys, numpy as np, torch\n"
          "import torchvision.transforms as T\n"
          "from torchvision.transforms import InterpolationMode as I\n"
          "x = torch.from_numpy(np.load(sys.argv[1])).permute(2, 0, 1).float() / 255.0\n"
          "y = T.CenterCrop(224)(T.Resize(256, interpolation=I.BICUBIC, antialias=True)(x)).clamp(0, 1)\n"
          "y = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(y)\n"
          "np.save(sys.argv[2], y.permute(1, 2, 0).contiguous().numpy())\n";
  }
  const Run r = run("/usr/bin/python3 " + path("tv.py") + " " + path("img.npy") + " " + path("tv.npy"));
  INFO(r.out);
  REQUIRE(r.rc == 0);
  const Tensor ref = npy_read_tensor(path("tv.npy"));
  REQUIRE(ref.shape() == Shape({224, 224, 3}));
  std::vector<float> got(224 * 224 * 3), scratch;
  eval_transform_image(img.data(), H, W, 3, EvalTransform::imagenet(), got.data(), scratch);
  // f32 resampling with differently ordered sums: agreement to ~1e-5 in [0, 1] units, ~5e-5 after
  // dividing by std ~0.22.
  CHECK(mira::testing::allclose(std::vector<double>(got.begin(), got.end()), ref.to_vector(), {1e-4, 1e-4},
                                "eval transform vs torchvision"));
}

// Why an f32 prediction may differ from the f64 reference's, from f64 (pixels normalised as
// `mira_knn --features pixels` does, then to unit length): an f32 cosine of 784-d unit vectors
// is within ~784 * 2^-24 = 4.7e-5 of its exact value, so two neighbours whose similarities are
// within 1e-4 can trade places, and a weight exp(s / 0.07) moves by up to 7e-4 of itself, so two
// class scores within 1.4e-3 of the larger can. Returns the image's gap at the k boundary
// (similarity k minus k + 1) and the relative margin of its two best class scores.
static std::pair<double, double> f64_knn_margins(const data::InMemoryDataset& train, const data::InMemoryDataset& test,
                                                 int64_t t, int k) {
  const int64_t d = train.height() * train.width();
  auto features = [d](const uint8_t* px) {
    std::vector<double> f(static_cast<size_t>(d));
    double n = 0;
    for (int64_t i = 0; i < d; ++i) {
      f[i] = (px[i] / 255.0 - 0.2860) / 0.3530;
      n += f[i] * f[i];
    }
    for (double& v : f) v /= std::sqrt(n);
    return f;
  };
  const std::vector<double> q = features(test.image(t));
  std::vector<std::pair<double, int64_t>> sim;
  for (int64_t j = 0; j < train.size(); ++j) {
    const std::vector<double> x = features(train.image(j));
    double s = 0;
    for (int64_t i = 0; i < d; ++i) s += q[i] * x[i];
    sim.emplace_back(-s, j);
  }
  std::partial_sort(sim.begin(), sim.begin() + k + 1, sim.end());
  std::vector<double> score(static_cast<size_t>(train.num_classes()), 0.0);
  for (int i = 0; i < k; ++i) score[train.label(sim[i].second)] += std::exp(-sim[i].first / 0.07);
  std::sort(score.rbegin(), score.rend());
  return {sim[k].first - sim[k - 1].first, (score[0] - score[1]) / score[0]};
}

TEST_CASE("Fashion-MNIST raw-pixel k-NN (k = 20, T = 0.07) == the NumPy reference, image by image") {
  const std::string dir = std::string(MIRA_SOURCE_DIR) + "/data_cache/fashion-mnist";
  const int rc = std::system(
      ("bash " + std::string(MIRA_SOURCE_DIR) + "/tools/fetch_fashion_mnist.sh " + dir + " >/dev/null").c_str());
  if (rc != 0) {
    std::printf("SKIPPED: Fashion-MNIST not available (tools/fetch_fashion_mnist.sh exit %d)\n", rc);
    fs::remove_all(workdir());
    std::exit(77);
  }
  const Tensor want =
      npy_read_tensor(std::string(MIRA_TEST_DATA_DIR) + "/knn/fashion_mnist_pixels_k20_predictions.npy");
  const std::vector<double> w = want.to_vector();
  auto predictions = [&](const std::string& precision) {
    const Run r =
        run(app("mira_knn") + " --features pixels --device cpu --precision " + precision + " --train-data " + dir +
            " --test-data " + dir + " --k 20 --json " + path("fm.json") + " --predictions-out " + path("fm_pred.npy"));
    INFO(r.out);
    REQUIRE(r.rc == 0);
    const Tensor got = npy_read_tensor(path("fm_pred.npy"));
    REQUIRE(got.numel() == 10000);
    return got.to_vector();
  };
  // The f64 path is the reference's arithmetic: the same prediction for every image.
  const std::vector<double> g64 = predictions("f64");
  int64_t diff = 0;
  for (size_t i = 0; i < g64.size(); ++i) diff += g64[i] != w[i];
  CHECK(diff == 0);
  // f32 (OpenBLAS, whose kernels and summation order depend on the CPU): the same, except on an
  // image whose f64 neighbours or class scores are closer than f32 rounding can separate.
  const std::vector<double> g = predictions("f32");
  std::vector<int64_t> differ;
  for (size_t i = 0; i < g.size(); ++i)
    if (g[i] != w[i]) differ.push_back(static_cast<int64_t>(i));
  CHECK(differ.size() <= 5);
  if (!differ.empty() && differ.size() <= 5) {
    const auto train = data::read_idx(dir + "/train-images-idx3-ubyte.gz", dir + "/train-labels-idx1-ubyte.gz");
    const auto test = data::read_idx(dir + "/t10k-images-idx3-ubyte.gz", dir + "/t10k-labels-idx1-ubyte.gz");
    for (const int64_t t : differ) {
      const auto [gap, margin] = f64_knn_margins(*train, *test, t, 20);
      CAPTURE(t);
      CAPTURE(gap);
      CAPTURE(margin);
      MESSAGE("f32 k-NN: test image ", t, " predicted ", g[t], ", the reference ", w[t], " (f64 gap at k ", gap,
              ", class-score margin ", margin, ")");
      CHECK((gap < 1e-4 || margin < 1.4e-3));
    }
  }
  const nlohmann::json j = read_json(workdir() / "fm.json");
  CHECK(j["results"][0]["top1"].get<double>() == doctest::Approx(85.69).epsilon(1e-4));
  CHECK(j["results"][0]["top5"].get<double>() == doctest::Approx(99.06).epsilon(1e-4));
  fs::remove_all(workdir());
}
