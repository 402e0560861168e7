// labels: gpu
// mira_features, mira_knn and mira_linear end to end with --device cuda, against the same runs
// with --device cpu, on write_synthetic_idx's images (4 classes; its train split copied as the
// test split): the GPU features equal the CPU ones to cuDNN's f32 rounding (no TF32), k-NN on
// them agrees to within one image, and the linear probe on the normalised pixels separates the
// classes on the GPU as on the CPU.
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/npy.h"
#include "testing.h"

using namespace mira;
namespace fs = std::filesystem;

namespace {

std::string app(const std::string& name) { return std::string(MIRA_BINARY_DIR) + "/apps/" + name; }

struct Apps : mira::testing::SyntheticRunDir {
  Apps() : SyntheticRunDir("mira_eval_apps_gpu_test", 200) {
    for (const char* f : {"images-idx3-ubyte", "labels-idx1-ubyte"})
      fs::copy_file(dir / "data" / (std::string("train-") + f), dir / "data" / (std::string("t10k-") + f));
  }
  std::string data() const { return (dir / "data").string(); }
  std::string path(const std::string& name) const { return (dir / name).string(); }
  // Runs a command; returns its exit status, the output in `out`.
  int run(const std::string& cmd, std::string* out) const {
    const std::string log = path("log.txt");
    const int st = std::system((cmd + " >" + log + " 2>&1").c_str());
    std::ifstream f(log);
    std::stringstream ss;
    ss << f.rdbuf();
    *out = ss.str();
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
  nlohmann::json json(const std::string& name) const {
    std::ifstream f(path(name));
    REQUIRE(f.good());
    return nlohmann::json::parse(f);
  }
};

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

}  // namespace

TEST_CASE("the evaluation apps on CUDA give the CPU's features, k-NN and linear-probe results") {
  Apps a;
  std::string out;
  for (const std::string dev : {"cpu", "cuda"}) {
    CAPTURE(dev);
    REQUIRE_MESSAGE(a.run(app("mira_features") + " --random-init --arch resnet_tiny --seed 4 --batch 64 --device " +
                              dev + " --data " + a.data() + " --split train --out " + a.path("f_" + dev + ".npy"),
                          &out) == 0,
                    out);
    REQUIRE_MESSAGE(a.run(app("mira_knn") + " --random-init --arch resnet_tiny --seed 4 --device " + dev +
                              " --train-data " + a.data() + " --test-data " + a.data() + " --k 5,20 --json " +
                              a.path("knn_" + dev + ".json"),
                          &out) == 0,
                    out);
    REQUIRE_MESSAGE(a.run(app("mira_knn") + " --features pixels --device " + dev + " --train-data " + a.data() +
                              " --test-data " + a.data() + " --k 5 --save-features " + a.path("pix_" + dev),
                          &out) == 0,
                    out);
    const std::string p = a.path("pix_" + dev);
    REQUIRE_MESSAGE(a.run(app("mira_linear") + " --train-features " + p + "_train_features.npy --train-labels " + p +
                              "_train_labels.npy --test-features " + p + "_test_features.npy --test-labels " + p +
                              "_test_labels.npy --epochs 10 --batch 32 --lr 0.5 --device " + dev + " --json " +
                              a.path("lin_" + dev + ".json"),
                          &out) == 0,
                    out);
    REQUIRE_MESSAGE(a.run(app("mira_linear") + " --random-init --arch resnet_tiny --device " + dev + " --train-data " +
                              a.data() + " --test-data " + a.data() + " --epochs 1 --batch 64 --json " +
                              a.path("lin2_" + dev + ".json"),
                          &out) == 0,
                    out);
  }
  // Features: cuDNN sums in another order than the CPU's im2col + GEMM (f32, no TF32).
  const std::vector<double> fc = npy_read_tensor(a.path("f_cpu.npy")).to_vector(),
                            fg = npy_read_tensor(a.path("f_cuda.npy")).to_vector();
  REQUIRE(fc.size() == fg.size());
  REQUIRE(fc.size() == 200u * 128u);
  const double scale = max_abs(fc);
  double worst = 0;
  for (size_t i = 0; i < fc.size(); ++i) worst = std::max(worst, std::fabs(fg[i] - fc[i]));
  CHECK_MESSAGE(worst <= 1e-4 * scale, "features: max |GPU - CPU| " << worst << " of max " << scale);
  // k-NN: the same neighbours up to near-ties, hence top-1 within one image of 200 (0.5 points).
  const nlohmann::json kc = a.json("knn_cpu.json"), kg = a.json("knn_cuda.json");
  REQUIRE(kc["results"].size() == 2);
  REQUIRE(kg["results"].size() == 2);
  for (int i = 0; i < 2; ++i)
    CHECK(std::fabs(kg["results"][i]["top1"].get<double>() - kc["results"][i]["top1"].get<double>()) <= 0.5);
  // Linear probe on the pixels: the classes are separable, on both devices.
  CHECK(a.json("lin_cpu.json")["top1"].get<double>() >= 95.0);
  CHECK(a.json("lin_cuda.json")["top1"].get<double>() >= 95.0);
  CHECK(a.json("lin2_cuda.json")["per_epoch"].size() == 1);
}
